/* fanout: several durable calls of one step in flight at once (ctx:all, ctx:call_all).
 *
 * The runtime (lua/saga.lua) runs each branch of a ctx:all in a coroutine of its own; once every
 * branch that has not ended waits on a ctx:call, it yields ONE operation "all" whose argument is the
 * JSON list of those calls, in branch order: [{"s": service, "c": command, "p": payload JSON text,
 * "t": timeout ms or 0}, ...]. The engine gives the n calls the next n operation numbers of the
 * attempt (so each has its own journal entry and message id, the same ones on every replay), sends
 * those the journal does not answer yet, and resumes the step once every one of them has its result,
 * with [["ok"|"error", result JSON text], ...] in the same order. Branches that call again make a
 * further round.
 *
 * Call timeouts: one timer at a time (the saga's wait slot), for the earliest deadline among the calls
 * still out; it moves on to the next as calls end. Breakers: a batch goes out whole or waits whole; a
 * batch with a call whose breaker holds calls back parks the saga on that breaker (no call of the round
 * is sent), as one ctx:call does. */
#include <inttypes.h>
#include <stdio.h>

#include <jansson.h>

#include "engine_int.h"
#include "util.h"

struct fanout {
  int first, n;   /* the calls are the operations first .. first+n-1 of the attempt */
  int64_t *due;   /* per call: when it times out (ms), 0 = never */
};

void eng_fanout_clear(struct sg_saga *s) {
  if (!s->fan) return;
  free(s->fan->due);
  free(s->fan);
  s->fan = NULL;
}

/* One call of the list, NULL fields if malformed. */
static void call_at(json_t *root, size_t i, const char **svc, const char **cmd, const char **payload, int64_t *timeout) {
  json_t *c = json_array_get(root, i);
  *svc = json_string_value(json_object_get(c, "s"));
  *cmd = json_string_value(json_object_get(c, "c"));
  *payload = json_string_value(json_object_get(c, "p"));
  json_t *t = json_object_get(c, "t");
  *timeout = json_is_integer(t) ? (int64_t)json_integer_value(t) : json_is_number(t) ? (int64_t)json_number_value(t) : 0;
}

/* Would the breaker of this service let a call out now (eng_breaker_admit without its side effect)? */
static int would_admit(const struct breaker *b) {
  return b->state == BR_CLOSED || b->cfg.failure_rate <= 0 || (b->state == BR_HALF_OPEN && !b->probing);
}

static int all_done(struct sg_saga *s, int first, int n) {
  for (int i = 0; i < n; i++) {
    struct jent *j = eng_journal_find(s, first + i);
    if (!j || !j->done) return 0;
  }
  return 1;
}

/* [["ok"|"error", result], ...] of the calls first .. first+n-1 (all done) */
static char *results_json(struct sg_saga *s, int first, int n) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "[");
  for (int i = 0; i < n; i++) {
    struct jent *j = eng_journal_find(s, first + i);
    sg_buf_adds(&b, i ? ",[" : "[");
    sg_buf_adds(&b, j->is_error ? "\"error\"," : "\"ok\",");
    sg_buf_add_json_str(&b, j->result ? j->result : "null");
    sg_buf_adds(&b, "]");
  }
  sg_buf_adds(&b, "]");
  return sg_buf_steal(&b);
}

/* The call timeout timer (s->t_wait) for the earliest deadline among the calls still out. */
static void arm_timeout(struct sg_engine *en, struct sg_saga *s) {
  struct fanout *f = s->fan;
  int best = 0;
  int64_t due = 0;
  for (int i = 0; i < f->n; i++) {
    if (!f->due[i]) continue;
    struct jent *j = eng_journal_find(s, f->first + i);
    if (j && j->done) continue;
    if (!best || f->due[i] < due) { best = f->first + i; due = f->due[i]; }
  }
  if (s->t_wait && (s->t_wait->kind != TM_CALL_TIMEOUT || s->t_wait->ref != best)) eng_timer_cancel(en, &s->t_wait);
  if (best && !s->t_wait) s->t_wait = eng_timer_new(en, s, TM_CALL_TIMEOUT, due, best);
}

/* A round that waits for an open breaker: parked whole, nothing of it sent; released, it comes back
 * to eng_fanout_op (SG_OP_ALL, with the breaker's service). */
static void park_on_breaker(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out, const char *service,
                            const char *spec, int first) {
  struct sg_run_out p = {0};
  p.result = SG_RUN_OP;
  p.op = SG_OP_ALL;
  p.service = sg_strdup(service);
  p.payload = sg_strdup(spec);
  sg_run_out_clear(out);
  s->seq = first; /* release_parked steps back one: the round gets the same numbers again */
  eng_park(en, s, &p, first);
}

/* What to resume the step with, or -1 with *err set. */
static int send_round(struct sg_engine *en, struct sg_saga *s, json_t *root, int first, char **err) {
  size_t n = json_array_size(root);
  int admitted = s->admitted;
  s->admitted = 0;
  for (size_t i = 0; i < n; i++) {
    if (eng_journal_find(s, first + (int)i)) continue; /* answered before (a replay), or still out */
    const char *svc, *cmd, *payload;
    int64_t t;
    call_at(root, i, &svc, &cmd, &payload, &t);
    if (!admitted) eng_breaker_admit(eng_breaker_get(en, svc)); /* a half-open breaker: this is its probe */
    struct sg_run_out c = {0};
    c.op = SG_OP_CALL;
    c.service = (char *)svc;
    c.name = (char *)cmd;
    c.payload = (char *)payload; /* its timeout is the round's (arm_timeout), not the call's own timer */
    char *res = NULL;
    s->admitted = 1; /* admitted above, for the whole round */
    int r = eng_perform(en, s, &c, first + (int)i, &res, err);
    s->admitted = 0;
    free(res);
    if (r < 0) return -1;
  }
  return 0;
}

int eng_fanout_op(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out) {
  const char *spec = out->payload;
  json_t *root = spec ? json_loads(spec, 0, NULL) : NULL;
  size_t n = json_is_array(root) ? json_array_size(root) : 0;
  for (size_t i = 0; i < n; i++) {
    const char *svc, *cmd, *payload;
    int64_t t;
    call_at(root, i, &svc, &cmd, &payload, &t);
    if (!svc || !cmd || !payload) n = 0;
  }
  if (!n) {
    json_decref(root);
    sg_run_out_clear(out);
    eng_step_failed(en, s, "internal: ctx:all yielded a malformed list of calls", 0);
    return 1;
  }
  eng_fanout_clear(s);
  int first = s->seq + 1;
  s->seq += (int)n;
  /* what every call of the round needs before any goes out: its payload within the limit, its
   * breaker letting calls through */
  for (size_t i = 0; i < n; i++) {
    if (eng_journal_find(s, first + (int)i)) continue;
    const char *svc, *cmd, *payload;
    int64_t t;
    call_at(root, i, &svc, &cmd, &payload, &t);
    if (en->cfg.max_payload > 0 && (int64_t)strlen(payload) > en->cfg.max_payload) {
      char *why = sg_asprintf("ctx:all: call %zu of %zu (%s.%s): payload is %zu bytes, over the limit of %" PRId64
                              " bytes", i + 1, n, svc, cmd, strlen(payload), en->cfg.max_payload);
      json_decref(root);
      sg_run_out_clear(out);
      eng_step_failed(en, s, why, 0);
      free(why);
      return 1;
    }
    if (!s->admitted && !would_admit(eng_breaker_get(en, svc))) {
      char *copy = sg_strdup(spec);
      park_on_breaker(en, s, out, svc, copy, first);
      free(copy);
      json_decref(root);
      return 1;
    }
  }
  /* deadlines: a call re-sent after a restart keeps the one its timer has */
  int64_t now = sg_now_ms();
  struct fanout *f = sg_xcalloc(1, sizeof *f);
  f->first = first;
  f->n = (int)n;
  f->due = sg_xcalloc(n, sizeof *f->due);
  for (size_t i = 0; i < n; i++) {
    const char *svc, *cmd, *payload;
    int64_t t;
    call_at(root, i, &svc, &cmd, &payload, &t);
    if (t <= 0) continue;
    int seq = first + (int)i;
    f->due[i] = s->t_wait && s->t_wait->kind == TM_CALL_TIMEOUT && s->t_wait->ref == seq ? s->t_wait->due : now + t;
  }
  char *err = NULL;
  int rc = send_round(en, s, root, first, &err);
  json_decref(root);
  if (rc < 0) {
    free(f->due);
    free(f);
    sg_run_out_clear(out);
    eng_step_failed(en, s, err ? err : "ctx:all: a call could not be sent", 0);
    free(err);
    return 1;
  }
  if (all_done(s, first, (int)n)) { /* every call answered by the journal (a replay) */
    free(f->due);
    free(f);
    char *res = results_json(s, first, (int)n);
    sg_run_out_clear(out);
    int r = en->runner.resume(en->runner.ud, s->co, 1, res, out);
    free(res);
    if (r < 0) { eng_step_failed(en, s, "the step's coroutine could not be resumed", 0); return 1; }
    return 0;
  }
  s->fan = f;
  s->wait_seq = -first; /* parked on the round, not on one operation */
  arm_timeout(en, s);
  eng_park_co(en, s, out);
  sg_run_out_clear(out);
  return 1;
}

void eng_fanout_progress(struct sg_engine *en, struct sg_saga *s) {
  struct fanout *f = s->fan;
  if (!f || s->wait_seq != -f->first) return;
  if (!all_done(s, f->first, f->n)) { arm_timeout(en, s); return; }
  char *res = results_json(s, f->first, f->n);
  s->wait_seq = 0;
  eng_timer_cancel(en, &s->t_wait);
  eng_fanout_clear(s);
  if (!s->co) { /* evicted while it waited: the replay gets every result from the journal */
    free(res);
    eng_replay(en, s);
    return;
  }
  struct sg_run_out out = {0};
  int r = en->runner.resume(en->runner.ud, s->co, 1, res, &out);
  free(res);
  if (r < 0) { eng_step_failed(en, s, "the step's coroutine could not be resumed", 0); return; }
  eng_process(en, s, &out);
}
