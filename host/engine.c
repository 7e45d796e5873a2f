/* engine: the saga state machine, group commit, durable timers, outbox and inbox.
 *
 * Everything a saga does in one loop iteration is written into one open store transaction; the
 * ev_prepare watcher flushes the changed saga rows, commits, and only then publishes the outbox,
 * acks the deliveries whose effects were committed and answers the requests waiting for durability.
 * A crash at any point leaves the store at the last commit, from which sg_engine_recover resumes. */
#include "engine.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine_int.h"
#include "otel.h"

static const char *tm_names[] = {"", "sleep", "retry", "step_timeout", "saga_timeout", "call_timeout", "wait_timeout"};

static int tm_parse(const char *s) {
  for (int i = 1; i < (int)(sizeof tm_names / sizeof *tm_names); i++)
    if (strcmp(s, tm_names[i]) == 0) return i;
  return 0;
}

static void evict_idle(struct sg_engine *en, int64_t now);
static void commit_wait(struct sg_engine *en);
static void commit_failed(struct sg_engine *en, struct sg_error *e);
static void settle(struct sg_engine *en);
static void commit_go_on(struct sg_engine *en);
static int commit_check(struct sg_engine *en, int block);
static void on_reload_timer(struct ev_loop *loop, ev_timer *w, int revents);

void sg_run_out_clear(struct sg_run_out *o) {
  free(o->data); free(o->service); free(o->name); free(o->payload); free(o->key); free(o->error);
  memset(o, 0, sizeof *o);
}

static const char *const op_names[SG_OP__COUNT] = {
  [SG_OP_CALL] = "call", [SG_OP_SEND] = "send", [SG_OP_PUBLISH] = "publish",
  [SG_OP_SLEEP] = "sleep", [SG_OP_NOW] = "now", [SG_OP_UUID] = "uuid", [SG_OP_ALL] = "all",
  [SG_OP_WAIT] = "wait",
  [SG_OP_RUN] = "run", [SG_OP_CHILD_COMPENSATE] = "child_compensate",
};

const char *sg_op_name(enum sg_op op) { return op > SG_OP_NONE && op < SG_OP__COUNT ? op_names[op] : NULL; }

enum sg_op sg_op_from_name(const char *name) {
  if (!name) return SG_OP_NONE;
  for (int i = SG_OP_NONE + 1; i < SG_OP__COUNT; i++)
    if (op_names[i] && strcmp(op_names[i], name) == 0) return (enum sg_op)i;
  return SG_OP_NONE;
}

/* ---------------------------------------------------------------------------------------------- */
/* the batch */

/* A store failure inside the loop: the in-memory state can no longer be trusted to match the store,
 * so stop the loop; main exits non-zero and a restart recovers from the last commit. */
static void fatal_store(struct sg_engine *en, const char *what, struct sg_error *e) {
  sg_err("store failure (%s): %s; stopping so that a restart recovers from the last commit", what, e->msg);
  en->broken = 1;
  ev_break(en->loop, EVBREAK_ALL);
}

int eng_txn(struct sg_engine *en) {
  if (en->committing) settle(en); /* the next batch starts when the one on its way has ended */
  if (en->stalled) return -1; /* every way in waits while stalled; this is the backstop */
  if (en->in_txn) return 0;
  struct sg_error e = {0};
  if (en->store->ops->begin(en->store, &e) < 0) { fatal_store(en, "begin", &e); return -1; }
  en->in_txn = 1;
  return 0;
}

#define STORE(en, call, what) do {                               \
    struct sg_error e_ = {0};                                    \
    if (eng_txn(en) == 0 && (call) < 0) fatal_store((en), (what), &e_); \
  } while (0)
#define SE (&e_)

void eng_mark_dirty(struct sg_engine *en, struct sg_saga *s) {
  s->row.updated_at = sg_now_ms();
  if (s->dirty) return;
  s->dirty = 1;
  s->next_dirty = en->dirty;
  en->dirty = s;
}

static void journal_clear(struct sg_saga *s) {
  for (int i = 0; i < s->njournal; i++) {
    free(s->journal[i].result);
    free(s->journal[i].service);
    free(s->journal[i].cmd);
    free(s->journal[i].target);
  }
  s->njournal = 0;
}

static struct jent *journal_find(struct sg_saga *s, int seq) {
  for (int i = s->njournal - 1; i >= 0; i--)
    if (s->journal[i].seq == seq) return &s->journal[i];
  return NULL;
}

/* the journal's kind of an operation name read back from the store (static strings) */
static const char *kind_name(const char *k) {
  const char *name = sg_op_name(sg_op_from_name(k));
  return name ? name : "op";
}

static struct jent *journal_add(struct sg_saga *s, int seq, int done, int is_error, const char *result) {
  if (s->njournal == s->capjournal) {
    /* from 1: most attempts make one operation, and a parked saga keeps its journal (72 bytes an entry) */
    s->capjournal = s->capjournal ? s->capjournal * 2 : 1;
    s->journal = sg_xrealloc(s->journal, (size_t)s->capjournal * sizeof *s->journal);
  }
  struct jent *j = &s->journal[s->njournal++];
  j->seq = seq; j->done = done; j->is_error = is_error; j->result = sg_strdup(result); j->service = NULL;
  j->t0_us = 0; j->cmd = NULL; j->target = NULL;
  j->kind = "op"; j->dirty = 0;
  return j;
}

/* A journal row read back from the store: "call hotel.Book" is a call to that target. */
static struct jent *journal_add_row(struct sg_saga *s, const struct sg_journal_row *r) {
  struct jent *j = journal_add(s, r->seq, r->done, r->is_error, r->result);
  const char *sp = r->kind ? strchr(r->kind, ' ') : NULL;
  if (sp) {
    char kind[16];
    snprintf(kind, sizeof kind, "%.*s", (int)(sp - r->kind < 15 ? sp - r->kind : 15), r->kind);
    j->kind = kind_name(kind);
    j->target = sg_strdup(sp + 1);
  } else if (r->kind) {
    j->kind = kind_name(r->kind);
  }
  return j;
}

/* Journal writes are deferred to the commit: an attempt that ends within the batch that journaled
 * its operations needs none of them written (see flush_saga). */
static void journal_write(struct sg_engine *en, struct sg_saga *s, const char *kind, struct jent *j) {
  j->kind = kind_name(kind);
  j->dirty = 1;
  eng_mark_dirty(en, s);
}

/* A new timer is written at the commit (flush_saga) if it is still armed then: a step timeout that
 * the step beats within the batch never reaches the store. */
struct sg_timer *eng_timer_new(struct sg_engine *en, struct sg_saga *s, int kind, int64_t due, int64_t ref) {
  struct sg_timer *t = sg_xcalloc(1, sizeof *t);
  t->due = due; t->kind = kind; t->ref = ref; t->owner = s; t->idx = SIZE_MAX;
  sg_timers_add(en->timers, t);
  eng_mark_dirty(en, s);
  return t;
}

static void timer_flush(struct sg_engine *en, struct sg_saga *s, struct sg_timer *t) {
  if (!t || t->id) return;
  struct sg_timer_row r = { .saga_id = s->row.id, .due_at = t->due, .kind = tm_names[t->kind], .ref = t->ref };
  STORE(en, en->store->ops->timer_put(en->store, &r, SE), "timer");
  t->id = r.id;
}

/* Removes a timer from the heap and (if it was written) the store; *slot is cleared. */
void eng_timer_cancel(struct sg_engine *en, struct sg_timer **slot) {
  struct sg_timer *t = *slot;
  if (!t) return;
  sg_timers_remove(en->timers, t);
  if (t->id) STORE(en, en->store->ops->timer_del(en->store, t->id, SE), "timer delete");
  free(t);
  *slot = NULL;
}

static void msg_id_for(const struct sg_saga *s, int seq, char *out, size_t n) {
  /* "%s.%d.%c.%d.%d" by hand (one per durable operation): the id, then at most 4 * 12 bytes */
  size_t idn = strlen(s->row.id);
  if (idn + 50 > n) {
    snprintf(out, n, "%s.%d.%c.%d.%d", s->row.id, s->row.step,
             s->row.phase == SG_PH_ACTION ? 'a' : s->row.phase == SG_PH_PARTIAL ? 'p' : 'c', s->row.attempt, seq);
    return;
  }
  char *p = memcpy(out, s->row.id, idn);
  p += idn;
  *p++ = '.';
  p = sg_fmt_i64(p, s->row.step);
  *p++ = '.';
  *p++ = s->row.phase == SG_PH_ACTION ? 'a' : s->row.phase == SG_PH_PARTIAL ? 'p' : 'c';
  *p++ = '.';
  p = sg_fmt_i64(p, s->row.attempt);
  *p++ = '.';
  p = sg_fmt_i64(p, seq);
  *p = 0;
}

/* An operation's id as msg_id_for makes it, taken apart: "<saga id>.<step>.<a|p|c>.<attempt>.<seq>". */
struct op_ref {
  char sid[40];
  int step, attempt, seq;
  char ph; /* 'a', 'p' or 'c' (any other letter reads as compensate, as before) */
};

/* a decimal int (optional '-', at most 9 digits) at *p; 0 = read, *p moved past it */
static int op_num(const char **p, int *out) {
  const char *q = *p;
  int neg = *q == '-', v = 0, n = 0;
  if (neg) q++;
  for (; *q >= '0' && *q <= '9'; q++, n++) {
    if (n == 9) return -1;
    v = v * 10 + (*q - '0');
  }
  if (!n) return -1;
  *out = neg ? -v : v;
  *p = q;
  return 0;
}

/* 0 when id is an operation's id; *rest (if not NULL) is what follows it. Written out by hand: sscanf
 * was a visible share of the in-process path, which parses one per command and one per reply. */
static int op_ref_parse(const char *id, struct op_ref *r, const char **rest) {
  const char *dot = strchr(id, '.');
  if (!dot || dot == id || dot - id > 39) return -1;
  memcpy(r->sid, id, (size_t)(dot - id));
  r->sid[dot - id] = 0;
  const char *p = dot + 1;
  if (op_num(&p, &r->step) < 0 || *p++ != '.' || !*p) return -1;
  r->ph = *p++;
  if (*p++ != '.' || op_num(&p, &r->attempt) < 0 || *p++ != '.' || op_num(&p, &r->seq) < 0) return -1;
  if (rest) *rest = p;
  return 0;
}

static int op_ref_phase(const struct op_ref *r) {
  return r->ph == 'a' ? SG_PH_ACTION : r->ph == 'p' ? SG_PH_PARTIAL : SG_PH_COMPENSATE;
}

/* With tracing on: one call (seq) of the running attempt, or every call still waiting (seq 0), will get
 * no reply; their client spans end with why (a call without a span is invisible in the trace). */
static void trace_given_up(struct sg_engine *en, struct sg_saga *s, int seq, const char *why, const char *error) {
  if (!en->otel) return;
  for (int i = 0; i < s->njournal; i++) {
    struct jent *j = &s->journal[i];
    if (!j->service || (seq ? j->seq != seq : j->done)) continue;
    char id[160];
    msg_id_for(s, j->seq, id, sizeof id);
    char *msg = error ? sg_asprintf("%s: %s", why, error) : NULL;
    eng_trace_call_given_up(en, s, id, j->service, j->cmd, j->t0_us, msg ? msg : why);
    free(msg);
  }
}

/* Writes a message to the outbox; it is published after the commit. Takes ownership of m's strings.
 * In-process calls and their replies skip the outbox (durable = 0): they are delivered after the
 * commit too, and if a crash loses one, the replay of the waiting step re-issues the call under the
 * same message id and the handler's inbox answers it again. */
static void outbox_add(struct sg_engine *en, struct sg_msg *m, int durable) {
  m->created_at = sg_now_ms();
  if (durable || !en->tr->ops->in_process) STORE(en, en->store->ops->outbox_put(en->store, m, SE), "outbox");
  else eng_txn(en); /* published after this iteration's commit */
  PUSH(en->out, en->nout, en->capout, *m);
}

/* ---------------------------------------------------------------------------------------------- */
/* saga lifecycle */

const char *eng_step_name(const struct sg_saga *s) {
  if (!s->def || s->row.step < 0 || s->row.step >= s->def->nsteps) return "?";
  return s->def->steps[s->row.step].name;
}

void eng_drop_co(struct sg_engine *en, struct sg_saga *s) {
  s->preempted = 0;
  if (s->co) {
    en->runner.drop(en->runner.ud, s->co);
    s->co = 0;
    en->st.coroutines--;
  }
}

void eng_saga_free(struct sg_saga *s) {
  eng_signal_free(s); /* signals.c */
  free(s->idem_mkey);
  sg_run_out_clear(&s->parked_op);
  eng_fanout_clear(s); /* fan-out (fanout.c) */
  journal_clear(s);
  free(s->journal);
  sg_store_saga_row_free(&s->row);
  free(s->t_wait); free(s->t_retry); free(s->t_step); free(s->t_saga);
  free(s);
}

/* ---- lifecycle events ---- */

static const char *const ev_names[] = {
  "started", "attempt_started", "attempt_ended", "compensating", "terminal", "operator", "definition_loaded",
  "definition_failed",
};

const char *sg_event_name(int kind) {
  return kind >= 0 && kind < (int)(sizeof ev_names / sizeof ev_names[0]) ? ev_names[kind] : "unknown";
}

/* A saga leaves the map in committed(), after the commit that made it terminal, so one found here has
 * no terminal status committed (it may have one in the open batch: its event comes after that commit). */
int sg_engine_running_here(struct sg_engine *en, const char *id) {
  return !en->broken && !en->stopped && sg_map_get(&en->sagas, id) != NULL;
}

int sg_engine_observe(struct sg_engine *en, sg_event_cb cb, void *ud) {
  if (en->nobs == (int)(sizeof en->obs / sizeof en->obs[0])) return -1;
  en->obs[en->nobs].cb = cb;
  en->obs[en->nobs].ud = ud;
  en->nobs++;
  return 0;
}

/* ev into the batch (table events, read by GET /v1/events) and, when someone observes, to the observers
 * after the commit (copied) */
static void event_add(struct sg_engine *en, const struct sg_event *ev) {
  struct sg_event_row r = {
    .at = ev->at, .kind = sg_event_name(ev->kind), .saga_id = ev->saga_id, .type = ev->type,
    .status = ev->saga_id ? sg_status_name(ev->status) : NULL, .step = ev->step, .phase = ev->phase,
    .attempt = ev->attempt, .step_name = ev->step_name, .outcome = ev->outcome, .detail = ev->detail,
    .duration_ms = ev->duration_ms, .host_id = en->cfg.host_id,
  };
  STORE(en, en->store->ops->event_put(en->store, &r, SE), "event");
  if (!en->nobs) return;
  struct sg_event c = *ev;
  c.saga_id = sg_strdup(ev->saga_id);
  c.type = sg_strdup(ev->type);
  c.step_name = sg_strdup(ev->step_name);
  c.outcome = sg_strdup(ev->outcome);
  c.detail = sg_strdup(ev->detail);
  c.trace = sg_strdup(ev->trace); /* NULL with tracing off: nothing allocated */
  PUSH(en->pev, en->npev, en->cappev, c);
}

void eng_event(struct sg_engine *en, int kind, const struct sg_saga *s, const char *outcome, const char *detail,
               int64_t duration_ms) {
  struct sg_event ev = {
    .kind = kind, .saga_id = s->row.id, .type = s->row.type, .step = s->row.step, .phase = s->row.phase,
    .attempt = eng_shown_attempt(s), .step_name = eng_step_name(s), .outcome = outcome, .status = s->row.status,
    .detail = detail, .at = sg_now_ms(), .duration_ms = duration_ms, .trace = s->row.trace,
    .created_at = s->row.created_at,
  };
  event_add(en, &ev);
}

/* a definition's event: loaded (file, version) or failed (file, error) */
static void def_event(struct sg_engine *en, const char *file, const char *hash, const char *error) {
  struct sg_event ev = {
    .kind = error ? SG_EV_DEF_FAILED : SG_EV_DEF_LOADED, .step_name = file, .outcome = hash, .detail = error,
    .at = sg_now_ms(),
  };
  event_add(en, &ev);
}

static void events_free(struct sg_engine *en) {
  for (size_t i = 0; i < en->npev; i++) {
    struct sg_event *ev = &en->pev[i];
    free((char *)ev->saga_id); free((char *)ev->type); free((char *)ev->step_name);
    free((char *)ev->outcome); free((char *)ev->detail); free((char *)ev->trace);
  }
  en->npev = 0;
}

/* after a commit: the batch's events to every observer, in order */
static void events_show(struct sg_engine *en) {
  for (size_t i = 0; i < en->npev; i++)
    for (int k = 0; k < en->nobs; k++) en->obs[k].cb(en->obs[k].ud, &en->pev[i]);
  events_free(en);
}

void sg_engine_live_by_type(struct sg_engine *en, void (*cb)(void *ud, const char *type, int64_t n), void *ud) {
  struct sg_map counts;
  sg_map_init(&counts);
  for (size_t i = 0; i < en->sagas.cap; i++) {
    if (!sg_map_live(&en->sagas, i)) continue;
    struct sg_saga *s = en->sagas.slots[i].val;
    if (s->terminal || SG_ST_TERMINAL(s->row.status)) continue;
    intptr_t n = (intptr_t)sg_map_get(&counts, s->row.type);
    sg_map_put(&counts, s->row.type, (void *)(n + 1)); /* keys: the sagas' own type strings */
  }
  for (size_t i = 0; i < counts.cap; i++)
    if (sg_map_live(&counts, i)) cb(ud, counts.slots[i].key, (int64_t)(intptr_t)counts.slots[i].val);
  sg_map_free(&counts);
}

/* An attempt's history row is written once, when it ends; while it runs, the saga row's
 * attempt_started_at says so (the API shows it as a running entry). */
static void hist_finish(struct sg_engine *en, struct sg_saga *s, const char *status, const char *error) {
  if (!s->row.attempt_started_at) return;
  eng_event(en, SG_EV_ATTEMPT_ENDED, s, status, error, sg_now_ms() - s->row.attempt_started_at);
  struct sg_hist_row h = { .saga_id = s->row.id, .step = s->row.step, .step_name = eng_step_name(s), .phase = s->row.phase,
                           .attempt = eng_shown_attempt(s), .status = status, .started_at = s->row.attempt_started_at,
                           .finished_at = sg_now_ms(), .error = error };
  STORE(en, en->store->ops->hist_insert(en->store, &h, SE), "history");
  s->row.attempt_started_at = 0;
  eng_mark_dirty(en, s);
}

/* A saga-level event in the history (timeouts, operator actions). */
void eng_hist_event(struct sg_engine *en, struct sg_saga *s, const char *event, const char *detail) {
  int64_t now = sg_now_ms();
  if (!strncmp(event, "operator_", 9)) eng_event(en, SG_EV_OPERATOR, s, event, detail, 0);
  struct sg_hist_row h = { .saga_id = s->row.id, .step = s->row.step, .step_name = eng_step_name(s), .phase = -1,
                           .attempt = eng_shown_attempt(s), .status = event, .started_at = now, .finished_at = now,
                           .error = detail };
  STORE(en, en->store->ops->hist_insert(en->store, &h, SE), "history");
}

void eng_finish(struct sg_engine *en, struct sg_saga *s, int status, const char *error) {
  eng_child_abandon(en, s, error ? error : sg_status_name(status)); /* children.c: a child it waits on gives up */
  eng_unpark(en, s);
  s->row.status = status;
  if (error) { free(s->row.error); s->row.error = sg_strdup(error); }
  eng_drop_co(en, s);
  eng_timer_cancel(en, &s->t_wait);
  eng_timer_cancel(en, &s->t_retry);
  eng_timer_cancel(en, &s->t_step);
  eng_timer_cancel(en, &s->t_saga);
  trace_given_up(en, s, 0, "no reply: the saga ended", sg_status_name(status));
  eng_fanout_clear(s); /* fan-out (fanout.c) */
  journal_clear(s);
  eng_mark_dirty(en, s);
  eng_event(en, SG_EV_TERMINAL, s, sg_status_name(status), error, 0);
  if (!s->terminal) {
    s->terminal = 1;
    PUSH(en->done, en->ndone, en->capdone, s);
  }
  sg_info("saga %s %s %s%s%s", s->row.type, s->row.id, sg_status_name(status), error ? ": " : "", error ? error : "");
  eng_child_finished(en, s); /* children.c: a parent waiting on it goes on (last: it may run the parent) */
}

/* Starts compensating from step `from` downwards (the completed steps, in reverse order). */
static void compensate_from(struct sg_engine *en, struct sg_saga *s, int from) {
  int j = from;
  while (j >= 0 && !s->def->steps[j].has_compensate && !eng_child_in_step(s->row.children, j)) j--; /* children.c */
  s->row.status = SG_ST_COMPENSATING;
  if (j < 0) { eng_finish(en, s, SG_ST_COMPENSATED, NULL); return; }
  s->row.step = j;
  s->row.phase = SG_PH_COMPENSATE;
  s->row.attempt = 1;
  s->row.attempt_base = 0;
  eng_mark_dirty(en, s);
  eng_begin_attempt(en, s);
}

/* ---- partial steps: an action attempt that failed or was aborted after some of its calls completed
 * gets its step's compensate function run for it (phase SG_PH_PARTIAL, ctx.partial and ctx.journal),
 * before the step is retried (the saga stays running) or the steps before it are compensated. Its
 * attempts are numbered from attempt_base = 1000 x the action attempt it undoes, so their journal
 * rows and message ids never meet those of another attempt's. */

/* an attempt as users see it (history, ctx.attempt): a partial compensation's count from 1 */
int eng_shown_attempt(const struct sg_saga *s) {
  return s->row.phase == SG_PH_PARTIAL ? s->row.attempt - s->row.attempt_base : s->row.attempt;
}

/* The ending action attempt's completed calls, as row.partial, if its step compensates them. */
static void partial_capture(struct sg_saga *s) {
  const struct sg_def_step *ds = &s->def->steps[s->row.step];
  int kids = eng_child_ran(s); /* children.c: a child of its own completed: compensated with the calls */
  if ((!ds->has_compensate && !kids) || !ds->compensate_partial || s->row.partial) return;
  struct sg_buf b = {0};
  int n = 0;
  for (int i = 0; i < s->njournal; i++) {
    const struct jent *j = &s->journal[i];
    if (strcmp(j->kind, "call") != 0 || !j->done || j->is_error || !j->result) continue;
    sg_buf_adds(&b, n++ ? "," : "[");
    sg_buf_printf(&b, "{\"seq\":%d", j->seq);
    const char *dot = j->target ? strchr(j->target, '.') : NULL;
    if (dot) {
      char svc[128];
      snprintf(svc, sizeof svc, "%.*s", (int)(dot - j->target < 127 ? dot - j->target : 127), j->target);
      sg_buf_adds(&b, ",\"service\":");
      sg_buf_add_json_str(&b, svc);
      sg_buf_adds(&b, ",\"command\":");
      sg_buf_add_json_str(&b, dot + 1);
    }
    sg_buf_adds(&b, ",\"result\":");
    sg_buf_adds(&b, j->result);
    sg_buf_adds(&b, "}");
  }
  if (!n && !kids) { free(b.data); return; }
  sg_buf_adds(&b, n ? "]" : "[]");
  s->row.partial = sg_asprintf("{\"attempt\":%d,\"base\":%d,\"journal\":%s}", s->row.attempt, s->row.attempt_base,
                               b.data);
  free(b.data);
}

/* Runs the step's compensate function for the action attempt row.partial names. */
static void partial_begin(struct sg_engine *en, struct sg_saga *s) {
  sg_info("saga %s %s: step %s attempt %d failed after some of its calls completed: compensating them", s->row.type,
          s->row.id, eng_step_name(s), s->row.attempt);
  s->row.phase = SG_PH_PARTIAL;
  s->row.attempt_base = s->row.attempt * 1000;
  s->row.attempt = s->row.attempt_base + 1;
  eng_mark_dirty(en, s);
  eng_begin_attempt(en, s);
}

static int64_t retry_delay(const struct sg_retry *p, int attempt);

/* The partial compensation completed: the step is retried (the saga still runs), or the steps
 * before it are compensated. */
static void partial_done(struct sg_engine *en, struct sg_saga *s) {
  int attempt = 1, base = 0;
  json_t *pj = s->row.partial ? json_loads(s->row.partial, 0, NULL) : NULL;
  if (pj) {
    attempt = (int)json_integer_value(json_object_get(pj, "attempt"));
    base = (int)json_integer_value(json_object_get(pj, "base"));
    json_decref(pj);
  }
  free(s->row.partial);
  s->row.partial = NULL;
  eng_mark_dirty(en, s);
  if (s->row.status == SG_ST_RUNNING) {
    s->row.phase = SG_PH_ACTION;
    s->row.attempt = attempt > 0 ? attempt : 1;
    s->row.attempt_base = base;
    const struct sg_retry *p = &s->def->steps[s->row.step].retry;
    s->t_retry = eng_timer_new(en, s, TM_RETRY, sg_now_ms() + retry_delay(p, s->row.attempt), s->row.attempt + 1);
    return;
  }
  compensate_from(en, s, s->row.step - 1);
}

/* The forward path gives up: compensate what completed (first what the failed attempt did). */
void eng_give_up(struct sg_engine *en, struct sg_saga *s, const char *why) {
  free(s->row.error);
  s->row.error = sg_asprintf("step %s: %s", eng_step_name(s), why);
  eng_timer_cancel(en, &s->t_saga);
  sg_info("saga %s %s gives up at step %s: %s; compensating", s->row.type, s->row.id, eng_step_name(s), why);
  s->row.status = SG_ST_COMPENSATING;
  eng_event(en, SG_EV_COMPENSATING, s, NULL, s->row.error, 0);
  if (s->row.phase == SG_PH_PARTIAL) { /* its partial compensation was interrupted: it runs again, to the end */
    s->row.attempt++;
    eng_mark_dirty(en, s);
    eng_begin_attempt(en, s);
    return;
  }
  if (s->row.partial) { partial_begin(en, s); return; }
  compensate_from(en, s, s->row.step - 1);
}

/* Jitter spreads the retries of many sagas that failed together. Its generator is seeded once per
 * process from the OS (rand() is seeded the same in every process unless someone calls srand, so
 * every host and every restart drew the same delays, which is what jitter is there to avoid). One
 * per process, not per engine: hosts of one process take turns on one thread. */
static struct sg_rand jitter_rng;
static int jitter_seeded;
static uint64_t jitter_gen;

static int64_t retry_delay(const struct sg_retry *p, int attempt) {
  double d = (double)p->initial_ms;
  if (p->exponential)
    for (int i = 1; i < attempt; i++) { d *= p->multiplier; if (d >= (double)p->max_ms) break; }
  if (d > (double)p->max_ms) d = (double)p->max_ms;
  if (!p->jitter) return (int64_t)d;
  if (!jitter_seeded || jitter_gen != sg_rand_generation()) { /* sg_rand_replay: seeded again */
    sg_rand_seed(&jitter_rng, sg_rand_os_seed());
    jitter_seeded = 1;
    jitter_gen = sg_rand_generation();
  }
  return sg_rand_jitter(&jitter_rng, (int64_t)d);
}

/* Ends the running attempt (history, timers, coroutine, journal); returns to a clean between-attempts state. */
void eng_end_attempt(struct sg_engine *en, struct sg_saga *s, const char *status, const char *error) {
  if (strcmp(status, "completed") != 0) eng_child_abandon(en, s, error ? error : status); /* children.c */
  eng_unpark(en, s);
  /* a cleanly finished step leaves its coroutine and ctx for the next step to reuse */
  if (strcmp(status, "completed") != 0) eng_drop_co(en, s);
  if (strcmp(status, "completed") != 0) eng_signal_give_back(en, s); /* signals.c: the retry takes them again */
  hist_finish(en, s, status, error);
  eng_timer_cancel(en, &s->t_step);
  eng_timer_cancel(en, &s->t_wait);
  if (strcmp(status, "completed") != 0) trace_given_up(en, s, 0, "no reply: the attempt ended", error ? error : status);
  if (s->row.phase == SG_PH_ACTION && strcmp(status, "completed") != 0) partial_capture(s);
  eng_fanout_clear(s); /* fan-out (fanout.c) */
  journal_clear(s);
  s->seq = 0;
  s->wait_seq = 0;
}

static void step_failed(struct sg_engine *en, struct sg_saga *s, const char *err, int retryable) {
  eng_end_attempt(en, s, "failed", err);
  const struct sg_def_step *ds = &s->def->steps[s->row.step];
  const struct sg_retry *p = s->row.phase == SG_PH_ACTION ? &ds->retry : &ds->comp_retry;
  sg_info("saga %s %s: %s %s attempt %d failed: %s", s->row.type, s->row.id, ds->name,
          sg_phase_name(s->row.phase), eng_shown_attempt(s), err);
  if (retryable && s->row.attempt - s->row.attempt_base < p->attempts) {
    if (s->row.phase == SG_PH_ACTION && s->row.partial) { partial_begin(en, s); return; } /* then the retry */
    int64_t delay = retry_delay(p, s->row.attempt);
    s->t_retry = eng_timer_new(en, s, TM_RETRY, sg_now_ms() + delay, s->row.attempt + 1);
    eng_mark_dirty(en, s);
    return;
  }
  if (s->row.phase == SG_PH_ACTION) {
    eng_give_up(en, s, err);
  } else if (s->row.phase == SG_PH_PARTIAL) {
    int of = s->row.attempt_base / 1000;
    char *why = sg_asprintf("compensation of step %s (for its failed attempt %d) failed after %d attempt(s): %s",
                            ds->name, of, eng_shown_attempt(s), err);
    eng_finish(en, s, SG_ST_COMPENSATION_FAILED, why);
    free(why);
  } else {
    char *why = sg_asprintf("compensation of step %s failed after %d attempt(s): %s", ds->name, s->row.attempt, err);
    eng_finish(en, s, SG_ST_COMPENSATION_FAILED, why);
    free(why);
  }
}

static void step_done(struct sg_engine *en, struct sg_saga *s, char *data) {
  eng_end_attempt(en, s, "completed", NULL);
  s->row.attempt_base = 0;
  if (data) {
    if (en->cfg.max_payload > 0 && (int64_t)strlen(data) > en->cfg.max_payload) {
      /* the step's work happened but its state cannot be kept: treat as a non-retryable failure */
      char *why = sg_asprintf("ctx.data is %zu bytes, over the limit of %" PRId64 " bytes", strlen(data), en->cfg.max_payload);
      free(data);
      eng_drop_co(en, s); /* its ctx holds the data that could not be kept */
      eng_give_up(en, s, why);
      free(why);
      return;
    }
    free(s->row.data);
    s->row.data = data;
  }
  eng_mark_dirty(en, s);
  if (s->row.phase == SG_PH_PARTIAL) { partial_done(en, s); return; }
  if (s->row.phase == SG_PH_ACTION) {
    if (s->row.step + 1 >= s->def->nsteps) { eng_finish(en, s, SG_ST_COMPLETED, NULL); return; }
    s->row.step++;
    s->row.attempt = 1;
    eng_begin_attempt(en, s);
  } else {
    compensate_from(en, s, s->row.step - 1);
  }
}

void eng_begin_attempt(struct sg_engine *en, struct sg_saga *s) {
  const struct sg_def_step *ds = &s->def->steps[s->row.step];
  int64_t now = sg_now_ms();
  s->row.attempt_started_at = now;
  eng_event(en, SG_EV_ATTEMPT_STARTED, s, NULL, NULL, 0);
  if (ds->timeout_ms > 0) s->t_step = eng_timer_new(en, s, TM_STEP_TIMEOUT, now + ds->timeout_ms, s->row.attempt);
  eng_fanout_clear(s); /* fan-out (fanout.c) */
  journal_clear(s);
  s->seq = 0;
  s->wait_seq = 0;
  eng_mark_dirty(en, s);
  struct sg_run_out out = {0};
  struct sg_error e = {0};
  int had = s->co != 0;
  int rc = en->runner.start(en->runner.ud, s->def, &s->row, &s->co, &out, &e);
  if (had && !s->co) en->st.coroutines--;
  if (!had && s->co) en->st.coroutines++;
  if (rc < 0) {
    step_failed(en, s, e.msg, 0);
    return;
  }
  eng_process(en, s, &out);
}

/* Re-runs the current attempt from its start; the journal answers what already happened. */
static void replay(struct sg_engine *en, struct sg_saga *s) {
  struct sg_run_out out = {0};
  struct sg_error e = {0};
  s->seq = 0;
  s->wait_seq = 0;
  eng_fanout_clear(s); /* fan-out (fanout.c) */
  eng_drop_co(en, s);
  if (en->runner.start(en->runner.ud, s->def, &s->row, &s->co, &out, &e) < 0) {
    step_failed(en, s, e.msg, 0);
    return;
  }
  en->st.coroutines++;
  eng_process(en, s, &out);
}

/* Continues a parked saga whose operation `seq` now has its result. */
static void wake(struct sg_engine *en, struct sg_saga *s, struct jent *j) {
  s->wait_seq = 0;
  eng_timer_cancel(en, &s->t_wait);
  if (!s->co) { replay(en, s); return; }
  struct sg_run_out out = {0};
  if (en->runner.resume(en->runner.ud, s->co, !j->is_error, j->result, &out) < 0) {
    step_failed(en, s, "the step's coroutine could not be resumed", 0);
    return;
  }
  eng_process(en, s, &out);
}

static void fill_saga_headers(struct sg_msg *m, const struct sg_saga *s) {
  m->saga_id = sg_strdup(s->row.id);
  m->saga_type = sg_strdup(s->row.type);
  m->step = s->row.step;
  m->attempt = s->row.attempt;
}

/* retention on a store whose statements need not block the loop (one of each kind at a time) */
static void on_pruned(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  int inbox = !strcmp(rd->a, "inbox"), events = !strcmp(rd->a, "events");
  en->pruning &= ~(inbox ? 1 : events ? 4 : 2);
  if (rd->rc < 0 && !en->stopped) sg_warn("%s retention: %s", rd->a, rd->err.msg);
  else if (events) sg_debug("event retention: %" PRId64 " events removed", rd->count);
  else if (rd->count && inbox) sg_debug("inbox retention: %" PRId64 " entries older than %" PRId64 " ms removed", rd->count,
                                        en->cfg.inbox_retention_ms);
  else if (rd->count) sg_info("saga retention: %" PRId64 " finished saga(s) older than the retention removed", rd->count);
  sg_read_free(rd);
}

static void prune_start(struct sg_engine *en, const char *what, int64_t before, int limit) {
  int bit = !strcmp(what, "inbox") ? 1 : !strcmp(what, "events") ? 4 : 2;
  if (en->pruning & bit) return;
  en->pruning |= bit;
  struct sg_read *rd = sg_read_new(SG_READ_PRUNE, what, NULL, on_pruned, en);
  rd->before = before;
  rd->limit = limit;
  sg_engine_read(en, rd);
}

/* Every 250 ms: open breakers whose wait is over go half-open and release one probe; every few
 * seconds, sagas past their deadline whose timeout did not fire (e.g. created by an older host
 * without the timer) are timed out. */
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_engine *en = w->data;
  if (en->broken || en->stalled || en->committing) return;
  int64_t now = sg_now_ms();
  eng_breakers_tick(en, now);
  evict_idle(en, now);
  eng_children_tick(en); /* children.c: children owned by other hosts */
  /* message ids older than the retention are forgotten: once a minute, or twice per retention if shorter */
  int64_t every = en->cfg.inbox_retention_ms / 2 / 250;
  if (every > 240) every = 240;
  if (every < 4) every = 4;
  if (++en->sweeps % every == 0 && en->cfg.inbox_retention_ms > 0 && en->read_conns) {
    prune_start(en, "inbox", now - en->cfg.inbox_retention_ms, 0);
  } else if (en->sweeps % every == 0 && en->cfg.inbox_retention_ms > 0 && eng_txn(en) == 0) {
    struct sg_error e = {0};
    int64_t gone = 0;
    if (en->store->ops->inbox_prune(en->store, now - en->cfg.inbox_retention_ms, &gone, &e) < 0)
      sg_warn("inbox retention: %s", e.msg);
    else if (gone)
      sg_debug("inbox retention: %" PRId64 " entries older than %" PRId64 " ms removed", gone, en->cfg.inbox_retention_ms);
  }
  /* finished sagas past their retention go, a bounded number per pass so the loop never stalls long */
  int64_t every_saga = en->cfg.saga_retention_ms / 2 / 250;
  if (every_saga > 240) every_saga = 240;
  if (every_saga < 4) every_saga = 4;
  if (en->cfg.saga_retention_ms > 0 && en->sweeps % every_saga == 0 && en->read_conns) {
    prune_start(en, "sagas", now - en->cfg.saga_retention_ms, 5000);
  } else if (en->cfg.saga_retention_ms > 0 && en->sweeps % every_saga == 0 && eng_txn(en) == 0) {
    struct sg_error e = {0};
    int64_t gone = 0;
    if (en->store->ops->saga_prune(en->store, now - en->cfg.saga_retention_ms, 5000, &gone, &e) < 0)
      sg_warn("saga retention: %s", e.msg);
    else if (gone)
      sg_info("saga retention: %" PRId64 " finished saga(s) older than the retention removed", gone);
  }
  /* lifecycle events past their retention, at most 20000 a pass: once a minute, or twice per retention if shorter */
  int64_t every_ev = en->cfg.event_retention_ms / 2 / 250;
  if (every_ev > 240) every_ev = 240;
  if (every_ev < 4) every_ev = 4;
  if (en->cfg.event_retention_ms > 0 && en->sweeps % every_ev == every_ev / 2) {
    if (en->read_conns) {
      prune_start(en, "events", now - en->cfg.event_retention_ms, 0);
    } else if (en->store->ops->event_prune && eng_txn(en) == 0) {
      struct sg_error e = {0};
      int64_t gone = 0;
      if (en->store->ops->event_prune(en->store, now - en->cfg.event_retention_ms, &gone, &e) < 0)
        sg_warn("event retention: %s", e.msg);
    }
  }
  if (en->sweeps % 20) return;
  struct sg_saga **stalled = NULL;
  size_t n = 0, cap = 0;
  for (size_t i = 0; i < en->sagas.cap; i++) {
    if (!sg_map_live(&en->sagas, i)) continue;
    struct sg_saga *s = en->sagas.slots[i].val;
    if (s->row.status == SG_ST_RUNNING && !s->terminal && s->row.deadline > 0 && s->row.deadline + 1000 < now && !s->t_saga)
      PUSH(stalled, n, cap, s);
  }
  for (size_t i = 0; i < n; i++) {
    struct sg_saga *s = stalled[i];
    sg_warn("saga %s is past its deadline without having timed out: applying the saga timeout", s->row.id);
    s->t_saga = eng_timer_new(en, s, TM_SAGA_TIMEOUT, now, 0);
  }
  free(stalled);
}

/* The durable operations, one handler each (ops[] below). A handler returns 1 if the saga parked,
 * 0 if *result holds an immediate result to resume with, 2 if an open breaker holds the call back,
 * -1 with *err if the step fails. */
typedef int (*op_handler)(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                          char **err);

/* now, uuid: a value journaled at once, so a replay sees the same one */
static int op_value(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                    char **err) {
  (void)err;
  char buf[64];
  if (op->op == SG_OP_NOW) snprintf(buf, sizeof buf, "%" PRId64, sg_now_ms());
  else { char u[37]; sg_uuid(u); snprintf(buf, sizeof buf, "\"%s\"", u); }
  struct jent *j = journal_add(s, seq, 1, 0, buf);
  journal_write(en, s, sg_op_name(op->op), j);
  *result = sg_strdup(buf);
  return 0;
}

/* call, send, publish: a message through the outbox (a call then waits for its reply) */
static int op_message(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                      char **err) {
  char idbuf[128];
  const char *kind = sg_op_name(op->op);
  int is_call = op->op == SG_OP_CALL, is_send = op->op == SG_OP_SEND;
  if (is_call && op->service) {
    int admitted = s->admitted || eng_breaker_admit(eng_breaker_get(en, op->service));
    s->admitted = 0;
    if (!admitted) return 2;
  }
  const char *payload = op->payload ? op->payload : "{}";
  if (en->cfg.max_payload > 0 && (int64_t)strlen(payload) > en->cfg.max_payload) {
    *err = sg_asprintf("ctx:%s %s.%s: payload is %zu bytes, over the limit of %" PRId64 " bytes", kind, op->service,
                       op->name, strlen(payload), en->cfg.max_payload);
    return -1;
  }
  msg_id_for(s, seq, idbuf, sizeof idbuf);
  struct sg_msg m = {0};
  m.message_id = sg_strdup(idbuf);
  m.correlation_id = sg_strdup(idbuf);
  m.kind = is_call || is_send ? SG_MSG_COMMAND : SG_MSG_EVENT;
  m.service = sg_strdup(op->service);
  m.name = sg_strdup(op->name);
  m.body = sg_strdup(payload);
  if (is_call) m.reply_to = sg_strdup(en->tr->ops->reply_queue(en->tr));
  fill_saga_headers(&m, s);
  if (en->otel) eng_trace_outgoing(en, s, &m, is_call);
  if (is_call || is_send) {
    struct sg_error e = {0};
    if (en->tr->ops->declare_service(en->tr, op->service, &e) < 0) sg_warn("declare %s: %s", op->service, e.msg);
  }
  if (is_call && en->tr->ops->in_process && !en->no_direct) {
    /* answered before this batch commits (run_chain): the handler's effect, the reply and the
     * saga's next steps commit together, with the saga's start when it is new in this batch. An
     * in-process handler has no effect outside the host's transaction (the sandbox has no io, no
     * os.execute), so a saga whose start is lost (a crash before the commit) takes every effect of
     * its handlers with it, and nothing of it was acknowledged: no start answer, no message */
    m.created_at = sg_now_ms();
    eng_txn(en);
    PUSH(en->chain, en->nchain, en->capchain, m);
  } else {
    outbox_add(en, &m, !is_call);
  }
  struct jent *j = journal_add(s, seq, !is_call, 0, is_call ? NULL : "null");
  if (is_call) {
    j->service = sg_strdup(op->service);
    j->target = sg_concat3(op->service, ".", op->name);
  }
  if (is_call && en->otel) { j->t0_us = sg_now_ms() * 1000; j->cmd = sg_strdup(op->name); }
  journal_write(en, s, kind, j);
  if (!is_call) { *result = sg_strdup("null"); return 0; }
  if (op->ms > 0) {
    /* after a restart the re-issued call keeps the timeout it had */
    if (s->t_wait && (s->t_wait->kind != TM_CALL_TIMEOUT || s->t_wait->ref != seq)) eng_timer_cancel(en, &s->t_wait);
    if (!s->t_wait) s->t_wait = eng_timer_new(en, s, TM_CALL_TIMEOUT, sg_now_ms() + op->ms, seq);
  }
  return 1;
}

static int op_sleep(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                    char **err) {
  (void)result; (void)err;
  struct jent *j = journal_add(s, seq, 0, 0, NULL);
  journal_write(en, s, sg_op_name(op->op), j);
  s->t_wait = eng_timer_new(en, s, TM_SLEEP, sg_now_ms() + op->ms, seq);
  return 1;
}

/* SG_OP_ALL (a fan-out round) is not here: it takes several operation numbers, eng_process hands it
 * to fanout.c */
static const op_handler ops[SG_OP__COUNT] = {
  [SG_OP_CALL] = op_message, [SG_OP_SEND] = op_message, [SG_OP_PUBLISH] = op_message,
  [SG_OP_SLEEP] = op_sleep, [SG_OP_NOW] = op_value, [SG_OP_UUID] = op_value,
  [SG_OP_WAIT] = eng_signal_wait, /* signals.c */
  [SG_OP_RUN] = eng_child_perform, [SG_OP_CHILD_COMPENSATE] = eng_child_perform, /* children.c */
};

/* Carries out one durable operation the step yielded (see op_handler for what it returns). */
static int perform(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                   char **err) {
  if (op->op <= SG_OP_NONE || op->op >= SG_OP__COUNT || !ops[op->op]) {
    *err = sg_asprintf("unknown durable operation %d", (int)op->op);
    return -1;
  }
  return ops[op->op](en, s, op, seq, result, err);
}

static void park_coroutine(struct sg_engine *en, struct sg_saga *s, const struct sg_run_out *op) {
  if (op->op == SG_OP_WAIT) { eng_drop_co(en, s); return; } /* a signal may never come: no coroutine meanwhile */
  if (op->op == SG_OP_SLEEP) {
    if (op->ms >= EVICT_SLEEP_MS) eng_drop_co(en, s);
    return;
  }
  if (en->nevict == en->capevict) {
    /* compact, then grow */
    if (en->evict_head) {
      memmove(en->evict, en->evict + en->evict_head, (en->nevict - en->evict_head) * sizeof *en->evict);
      en->nevict -= en->evict_head;
      en->evict_head = 0;
    }
    if (en->nevict == en->capevict) {
      en->capevict = en->capevict ? en->capevict * 2 : 256;
      en->evict = sg_xrealloc(en->evict, en->capevict * sizeof *en->evict);
    }
  }
  struct evict *ev = &en->evict[en->nevict++];
  memcpy(ev->id, s->row.id, sizeof ev->id);
  ev->seq = s->wait_seq;
  ev->attempt = s->row.attempt;
  ev->at = sg_now_ms();
}

/* Drops the coroutines of sagas that have waited on a reply for longer than EVICT_AFTER_MS. */
static void evict_idle(struct sg_engine *en, int64_t now) {
  while (en->evict_head < en->nevict && en->evict[en->evict_head].at + EVICT_AFTER_MS <= now) {
    struct evict *ev = &en->evict[en->evict_head++];
    struct sg_saga *s = sg_map_get(&en->sagas, ev->id);
    if (s && s->co && s->wait_seq == ev->seq && s->row.attempt == ev->attempt && !s->terminal) eng_drop_co(en, s);
  }
  if (en->evict_head == en->nevict) en->evict_head = en->nevict = 0;
}

/* Drives a saga with what its step run produced until it parks, finishes its step or fails. */
void eng_process(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out) {
  for (;;) {
    switch (out->result) {
    case SG_RUN_DONE: {
      char *data = out->data;
      out->data = NULL;
      sg_run_out_clear(out);
      step_done(en, s, data);
      return;
    }
    case SG_RUN_ERROR:
    case SG_RUN_FAIL: {
      char *err = out->error ? out->error : sg_strdup("step failed");
      out->error = NULL;
      int retryable = out->result == SG_RUN_ERROR && out->retryable;
      sg_run_out_clear(out);
      step_failed(en, s, err, retryable);
      free(err);
      return;
    }
    case SG_RUN_OP: {
      if (out->op == SG_OP_ALL) { /* fan-out (fanout.c): several calls at once, not in ops[] */
        if (eng_fanout_op(en, s, out)) return;
        break;
      }
      int seq = ++s->seq;
      struct jent *j = journal_find(s, seq);
      int ok = 1;
      char *result = NULL, *err = NULL;
      if (j && !j->done) { /* issued before (replay): keep waiting for it */
        s->wait_seq = seq;
        sg_run_out_clear(out);
        eng_child_waiting(en, s, j); /* children.c (last: it may wake s) */
        return;
      }
      if (j) {
        ok = !j->is_error;
        result = sg_strdup(j->result);
      } else {
        int r = perform(en, s, out, seq, &result, &err);
        if (r == 1) {
          s->wait_seq = seq;
          park_coroutine(en, s, out);
          sg_run_out_clear(out);
          return;
        }
        if (r == 2) { eng_park(en, s, out, seq); return; }
        if (r < 0) {
          sg_run_out_clear(out);
          step_failed(en, s, err, 0);
          free(err);
          return;
        }
      }
      sg_run_out_clear(out);
      int rc = en->runner.resume(en->runner.ud, s->co, ok, result ? result : "null", out);
      free(result);
      if (rc < 0) { step_failed(en, s, "the step's coroutine could not be resumed", 0); return; }
      break;
    }
    case SG_RUN_PREEMPTED:
      /* its slice is over: the loop serves others, the run queue continues it (runq.c) */
      sg_run_out_clear(out);
      eng_runq_saga(en, s);
      return;
    default:
      sg_run_out_clear(out);
      step_failed(en, s, "runner returned an unknown result", 0);
      return;
    }
  }
}

/* ---- fan-out (fanout.c): what it uses of this file ---- */
struct jent *eng_journal_find(struct sg_saga *s, int seq) { return journal_find(s, seq); }
int eng_perform(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result, char **err) {
  return perform(en, s, op, seq, result, err);
}
void eng_replay(struct sg_engine *en, struct sg_saga *s) { replay(en, s); }
void eng_park_co(struct sg_engine *en, struct sg_saga *s, const struct sg_run_out *op) { park_coroutine(en, s, op); }
void eng_step_failed(struct sg_engine *en, struct sg_saga *s, const char *err, int retryable) {
  step_failed(en, s, err, retryable);
}
/* ---- end fan-out ---- */

/* ---- for signals.c (a wait is journaled and woken like a sleep) ---- */

struct jent *eng_journal_add(struct sg_saga *s, int seq, int done, int is_error, const char *result) {
  return journal_add(s, seq, done, is_error, result);
}
void eng_journal_write(struct sg_engine *en, struct sg_saga *s, const char *kind, struct jent *j) {
  journal_write(en, s, kind, j);
}
void eng_wake(struct sg_engine *en, struct sg_saga *s, struct jent *j) { wake(en, s, j); }
void eng_store_failed(struct sg_engine *en, const char *what, struct sg_error *e) { fatal_store(en, what, e); }

/* ---------------------------------------------------------------------------------------------- */
/* timers */

static void on_timer_fire(void *ud, struct sg_timer *t) {
  struct sg_engine *en = ud;
  if (en->stalled || en->committing) { /* it fires when the store can write again (the heap stays stopped meanwhile) */
    sg_timers_add(en->timers, t);
    sg_timers_stop(en->timers);
    return;
  }
  if (t->kind == TM_NO_SAGA) { /* schedules: no saga, no row */
    struct sg_engine_timer *et = (struct sg_engine_timer *)t;
    if (!en->broken) et->cb(et->ud);
    return;
  }
  struct sg_saga *s = t->owner;
  /* the timer has left the heap; detach it from its saga and delete its row */
  struct sg_timer **slot = s->t_wait == t ? &s->t_wait : s->t_retry == t ? &s->t_retry
                         : s->t_step == t ? &s->t_step : s->t_saga == t ? &s->t_saga : NULL;
  int kind = t->kind;
  int64_t ref = t->ref;
  if (slot) eng_timer_cancel(en, slot); else free(t);
  if (s->terminal || en->broken) return;
  char buf[160];
  switch (kind) {
  case TM_SLEEP:
  case TM_CALL_TIMEOUT: {
    struct jent *j = journal_find(s, (int)ref);
    if (!j || j->done) return;
    j->done = 1;
    if (kind == TM_CALL_TIMEOUT) {
      trace_given_up(en, s, j->seq, "timed out waiting for the reply", NULL);
      eng_breaker_record(en, j->service, 1);
      j->is_error = 1;
      j->result = sg_strdup("{\"error\":\"timed out waiting for the reply\",\"retryable\":true}");
    } else {
      j->result = sg_strdup("null");
    }
    journal_write(en, s, kind == TM_SLEEP ? "sleep" : "call", j);
    if (s->wait_seq == (int)ref) wake(en, s, j);
    else eng_fanout_progress(en, s); /* fan-out (fanout.c): the round may be complete */
    return;
  }
  case TM_WAIT_TIMEOUT:
    eng_signal_timeout(en, s, (int)ref); /* signals.c */
    return;
  case TM_RETRY:
    s->row.attempt = (int)ref;
    eng_begin_attempt(en, s);
    return;
  case TM_STEP_TIMEOUT:
    if (s->row.attempt != (int)ref || s->t_retry) return;
    snprintf(buf, sizeof buf, "timeout: attempt took longer than %" PRId64 " ms",
             s->def->steps[s->row.step].timeout_ms);
    step_failed(en, s, buf, 1);
    return;
  case TM_SAGA_TIMEOUT:
    if (s->row.status != SG_ST_RUNNING) return;
    snprintf(buf, sizeof buf, "saga timed out after %" PRId64 " ms", s->def->timeout_ms);
    eng_hist_event(en, s, "saga_timeout", buf);
    eng_timer_cancel(en, &s->t_retry);
    eng_end_attempt(en, s, "failed", buf);
    eng_give_up(en, s, buf);
    return;
  }
}

/* ---------------------------------------------------------------------------------------------- */
/* messages */

static void park_delivery(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered) {
  struct parked_msg p = { .tag = tag, .redelivered = redelivered };
  sg_msg_copy(&p.m, m);
  PUSH(en->parked, en->nparked, en->capparked, p);
}

void eng_park_delivery(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered) {
  park_delivery(en, m, tag, redelivered);
}

static void ack_after_commit(struct sg_engine *en, uint64_t tag) {
  if (!tag) return; /* not a delivery (a reply applied in-process) */
  struct pending_ack a = { tag };
  eng_txn(en); /* an empty transaction still orders the ack after this iteration's commit */
  PUSH(en->acks, en->nacks, en->capacks, a);
}

static void on_reply(struct sg_engine *en, const struct sg_msg *m, uint64_t tag) {
  struct op_ref ref;
  if (!m->correlation_id || op_ref_parse(m->correlation_id, &ref, NULL) < 0) {
    sg_warn("reply with unknown correlation id '%s' dead-lettered", m->correlation_id ? m->correlation_id : "");
    en->tr->ops->nack(en->tr, tag, m, "reply correlation_id does not name a saga operation");
    return;
  }
  struct sg_saga *s = sg_map_get(&en->sagas, ref.sid);
  if (!s || s->terminal || s->row.step != ref.step || s->row.phase != op_ref_phase(&ref) ||
      s->row.attempt != ref.attempt) {
    sg_debug("stale reply %s ignored", m->correlation_id);
    ack_after_commit(en, tag);
    return;
  }
  struct jent *j = journal_find(s, ref.seq);
  if (!j || j->done) { ack_after_commit(en, tag); return; } /* duplicate */
  j->done = 1;
  j->is_error = !(m->status && strcmp(m->status, "ok") == 0);
  j->result = sg_strdup(m->body && *m->body ? m->body : "null");
  if (j->service) {
    int retryable = 1;
    if (j->is_error) {
      json_t *body = json_loads(j->result, 0, NULL);
      json_t *r = body ? json_object_get(body, "retryable") : NULL;
      if (r && json_is_false(r)) retryable = 0;
      json_decref(body);
    }
    eng_breaker_record(en, j->service, j->is_error && retryable);
  }
  if (en->otel) eng_trace_reply(en, s, m, j->service, j->t0_us, j->is_error);
  journal_write(en, s, "call", j);
  ack_after_commit(en, tag);
  if (s->wait_seq == ref.seq) wake(en, s, j);
  else eng_fanout_progress(en, s); /* fan-out (fanout.c): the round may be complete */
}

/* A call from a saga of this host to a handler of this host (in-process transport): its reply is
 * applied in the same transaction as the handler's effect. */
static int own_call(struct sg_engine *en, const struct sg_msg *m) {
  return en->tr->ops->in_process && !en->no_direct && m->reply_to && strcmp(m->reply_to, en->tr->ops->reply_queue(en->tr)) == 0;
}

/* tp: the traceparent of the handler's server span, or NULL */
static void reply_to_command(struct sg_engine *en, const struct sg_msg *cmd, const char *status, const char *body,
                             const char *tp) {
  struct sg_msg r = {0};
  r.kind = SG_MSG_REPLY;
  if (tp) {
    sg_msg_set_header(&r, SG_HDR_TRACEPARENT, tp);
    sg_msg_set_header(&r, SG_HDR_TRACESTATE, sg_msg_header(cmd, SG_HDR_TRACESTATE));
  }
  r.message_id = sg_concat3(cmd->message_id, ".reply", "");
  r.correlation_id = sg_strdup(cmd->message_id);
  r.reply_to = sg_strdup(cmd->reply_to);
  r.name = sg_strdup(cmd->name);
  r.status = sg_strdup(status);
  r.body = sg_strdup(body);
  r.saga_id = sg_strdup(cmd->saga_id);
  r.saga_type = sg_strdup(cmd->saga_type);
  r.step = cmd->step;
  r.attempt = cmd->attempt;
  if (own_call(en, cmd)) { /* no round trip through the next commit */
    on_reply(en, &r, 0);
    sg_msg_free(&r);
    return;
  }
  outbox_add(en, &r, 0);
}

static void commit_batch(struct sg_engine *en);

static void command_checked(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered, int chained,
                            int seen, char *status, char *body, const struct sg_error *re);
static void inbox_check_start(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered);

/* A call of a saga of this host that no longer waits for it: a second delivery of the command (a
 * duplicate, or its outbox row published again after a crash that came between the commit of the
 * handler's effect and the row's delete), whose answer is journaled or whose saga has moved on or
 * ended. Such a call has no inbox entry (eng_command_answered), so the saga's state answers it: its
 * handler must not run again (the reply would be ignored as stale, the effect would be a second one). */
static int own_call_answered(struct sg_engine *en, const struct sg_msg *m) {
  struct op_ref ref;
  if (op_ref_parse(m->message_id, &ref, NULL) < 0) return 0;
  struct sg_saga *s = sg_map_get(&en->sagas, ref.sid); /* NULL: it has ended (on_reply would ignore the reply) */
  if (!s || s->terminal || s->row.step != ref.step || s->row.phase != op_ref_phase(&ref) ||
      s->row.attempt != ref.attempt)
    return 1;
  struct jent *j = journal_find(s, ref.seq);
  return !j || j->done;
}

static void on_command(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered) {
  if (!m->message_id || !*m->message_id) {
    en->tr->ops->nack(en->tr, tag, m, "command without message_id");
    return;
  }
  int chained = own_call(en, m);
  if (chained && own_call_answered(en, m)) { ack_after_commit(en, tag); return; }
  if (!chained && en->store->ops->read_start) { inbox_check_start(en, m, tag, redelivered); return; }
  if (eng_txn(en) < 0) return;
  char *status = NULL, *body = NULL;
  struct sg_error e = {0};
  int seen = chained ? 0 : en->store->ops->inbox_get(en->store, m->message_id, &status, &body, &e);
  command_checked(en, m, tag, redelivered, chained, seen, status, body, &e);
}

/* The inbox has answered for the command (seen: 1 with the reply it had, 0 not seen, -1 failed: re);
 * takes status and body. */
static void command_checked(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered, int chained,
                            int seen, char *status, char *body, const struct sg_error *re) {
  struct sg_error e = *re;
  if (eng_txn(en) < 0) { free(status); free(body); return; }
  if (seen < 0 && e.code == SG_E_UNAVAILABLE) {
    /* the store cannot be read now (a lost database connection): the delivery waits, unacked */
    sg_warn("message %s: %s; handled when the store answers again", m->message_id, e.msg);
    park_delivery(en, m, tag, redelivered);
    if (!en->stalled) {
      ev_timer_stop(en->loop, &en->parked_timer);
      ev_timer_set(&en->parked_timer, 1.0, 0.);
      ev_timer_start(en->loop, &en->parked_timer);
    }
    return;
  }
  if (seen < 0) { fatal_store(en, "inbox", &e); return; }
  int deliveries = 0;
  if (seen && status && strcmp(status, "delivered") == 0) {
    /* not handled yet: an earlier delivery died with its host */
    deliveries = atoi(body ? body : "0");
    seen = 0;
    free(status); free(body);
    status = body = NULL;
  }
  if (!seen && redelivered) {
    /* A redelivery may mean the handler crashed its host: count deliveries durably before running
     * it again, and dead-letter the message once it has had its chances. */
    if (!deliveries) deliveries = 1; /* the first delivery, which died before anything was recorded */
    if (++deliveries > en->cfg.max_deliveries) {
      char why[200];
      snprintf(why, sizeof why, "poison message: not handled in %d deliveries (each ended with its host going down: "
               "does its handler crash the host?)", deliveries - 1);
      char what[300];
      sg_err("message %s (%s) dead-lettered: %s", m->message_id, sg_msg_what(m, what, sizeof what), why);
      en->tr->ops->nack(en->tr, tag, m, why);
      return;
    }
    char n[16];
    snprintf(n, sizeof n, "%d", deliveries);
    STORE(en, en->store->ops->inbox_put(en->store, m->message_id, "delivered", n, SE), "inbox");
    int64_t fenced = en->st.fenced;
    commit_batch(en); /* durable before the handler runs */
    if (en->st.fenced != fenced) return; /* everything was dropped; the delivery comes back */
    if (en->stalled || en->committing) { /* counted (in the held batch): run it once the store can write */
      park_delivery(en, m, tag, 0);
      return;
    }
    if (en->broken || eng_txn(en) < 0) return;
  }
  if (!seen) {
    struct pending_cmd *busy = sg_map_get(&en->inflight, m->message_id);
    if (busy) { /* delivered again while its handler is still running: one run answers both */
      PUSH(busy->extra_tags, busy->nextra, busy->capextra, tag);
      return;
    }
    if (en->mock) { /* the testing kit's mocked participants go before the scripts' handlers */
      int mr = en->mock(en->mock_ud, m, &status, &body);
      if (mr == 2) { /* taken and never answered: acked, nothing recorded, no reply */
        free(status); free(body);
        ack_after_commit(en, tag);
        return;
      }
      if (mr == 1) {
        eng_command_answered(en, m, tag, chained, 1, status ? status : "error", body ? body : "{}");
        free(status);
        free(body);
        return;
      }
      free(status); free(body);
      status = body = NULL;
    }
    int h = 0;
    if (en->otel) en->cmd_t0_us = sg_now_ms() * 1000;
    int rc = en->runner.handle(en->runner.ud, m, &h, &status, &body);
    if (rc < 0) {
      free(status); free(body);
      en->tr->ops->nack(en->tr, tag, m, "handler could not run");
      return;
    }
    if (rc == 1) { /* preempted: the run queue continues it and finishes the command */
      struct pending_cmd *pc = sg_xcalloc(1, sizeof *pc);
      sg_msg_copy(&pc->m, m);
      pc->tag = tag;
      pc->chained = chained;
      pc->handle = h;
      pc->t0_us = en->cmd_t0_us;
      sg_map_put(&en->inflight, pc->m.message_id, pc);
      eng_runq_command(en, pc);
      return;
    }
  }
  eng_command_answered(en, m, tag, chained, !seen, status, body);
  free(status);
  free(body);
}

/* The command's handler has answered (or its inbox entry had): record the answer unless it was
 * recorded already, reply, and ack the delivery after the commit. */
void eng_command_answered(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int chained, int record,
                          const char *status, const char *body) {
  if (eng_txn(en) < 0) return;
  char *too_large = NULL;
  if (body && en->cfg.max_payload > 0 && (int64_t)strlen(body) > en->cfg.max_payload) {
    /* the caller would refuse it (and only ever see its call time out): say why, at once */
    char what[300];
    sg_msg_what(m, what, sizeof what);
    char *why = sg_asprintf("%s: result too large: %zu bytes, over the limit of %" PRId64 " bytes (--max-payload)",
                            what, strlen(body), en->cfg.max_payload);
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"error\":");
    sg_buf_add_json_str(&b, why);
    sg_buf_adds(&b, ",\"retryable\":false}");
    too_large = sg_buf_steal(&b);
    free(why);
    sg_warn("command %s (%s): handler result of %zu bytes over --max-payload: answered with an error",
            m->message_id, what, strlen(body));
    status = "error";
    body = too_large;
  }
  /* A call from a saga of this host is answered in this transaction (reply_to_command): once that
   * commits the saga never re-issues it, so it needs no inbox entry. */
  if (record && !chained) STORE(en, en->store->ops->inbox_put(en->store, m->message_id, status, body, SE), "inbox");
  char tp[56] = "";
  if (en->otel && record) eng_trace_command(en, m, en->cmd_t0_us, status, body, tp);
  if (m->reply_to && *m->reply_to) reply_to_command(en, m, status ? status : "error", body ? body : "{}", tp[0] ? tp : NULL);
  ack_after_commit(en, tag);
  free(too_large);
}

/* ---- reads without waiting (a store with read_start) ---- */

/* watches the store's reads' sockets for what each waits for */
static void read_arm(struct sg_engine *en) {
  const struct sg_store_ops *o = en->store->ops;
  for (int i = 0; i < en->read_conns; i++) {
    ev_io *w = &en->read_io[i];
    int want = o->read_wants(en->store, i);
    unsigned serial = 0;
    int fd = o->read_fd(en->store, i, &serial);
    int ev = (want & 1 ? EV_READ : 0) | (want & 2 ? EV_WRITE : 0);
    if (!ev || fd < 0) {
      ev_io_stop(en->loop, w);
      continue;
    }
    if (ev_is_active(w) && w->fd == fd && en->read_serial[i] == serial && (w->events & (EV_READ | EV_WRITE)) == ev)
      continue;
    ev_io_stop(en->loop, w);
    ev_io_set(w, fd, ev);
    en->read_serial[i] = serial;
    ev_io_start(en->loop, w);
  }
}

static void on_read_io(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_engine *en = w->data;
  en->store->ops->read_poll(en->store, (int)(w - en->read_io)); /* the finished reads' callbacks run here */
  read_arm(en);
}

void sg_engine_read(struct sg_engine *en, struct sg_read *rd) {
  if (en->stopped && en->read_conns) { /* its connections are being closed: nothing new goes out */
    rd->rc = -1;
    sg_errorf(&rd->err, SG_E_UNAVAILABLE, "the host is stopping");
    rd->done(rd);
    return;
  }
  sg_store_read(en->store, rd);
  read_arm(en);
}

static void on_inbox_read(struct sg_read *rd);

static void check_free(struct sg_engine *en, struct inbox_check *ck) {
  if (sg_map_get(&en->checking, ck->m.message_id) == ck) sg_map_del(&en->checking, ck->m.message_id);
  for (size_t i = 0; i < ck->nextra; i++) sg_msg_free(&ck->extra[i].m);
  free(ck->extra);
  sg_msg_free(&ck->m);
  sg_read_free(ck->rd);
  free(ck);
}

/* A command's inbox entry is read without blocking: the command goes on when the answer comes (in
 * on_inbox_read). Another delivery of the same message id meanwhile waits for it (it would read the
 * same "not seen" and run the handler twice); it is handled after, when the inbox has its answer. */
static void inbox_check_start(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered) {
  /* Its handler is running already (preempted, in the run queue): one run answers both, as in
   * command_checked. Not left to the read: the run could finish, and record its answer, after the
   * read has started and before it is back, and the read would say "not seen". */
  struct pending_cmd *busy = sg_map_get(&en->inflight, m->message_id);
  if (busy) {
    PUSH(busy->extra_tags, busy->nextra, busy->capextra, tag);
    return;
  }
  struct inbox_check *ck = sg_map_get(&en->checking, m->message_id);
  if (ck) {
    struct parked_msg x = { .tag = tag, .redelivered = redelivered };
    sg_msg_copy(&x.m, m);
    PUSH(ck->extra, ck->nextra, ck->capextra, x);
    return;
  }
  ck = sg_xcalloc(1, sizeof *ck);
  ck->en = en;
  sg_msg_copy(&ck->m, m);
  ck->tag = tag;
  ck->redelivered = redelivered;
  ck->gen = en->st.fenced;
  sg_map_put(&en->checking, ck->m.message_id, ck);
  if (en->checks_tail) en->checks_tail->next = ck;
  else en->checks = ck;
  en->checks_tail = ck;
  sg_engine_read(en, sg_read_new(SG_READ_INBOX, m->message_id, NULL, on_inbox_read, ck));
}

/* the command goes on with its inbox answer */
static void check_go_on(struct sg_engine *en, struct inbox_check *ck) {
  if (sg_map_get(&en->checking, ck->m.message_id) == ck) sg_map_del(&en->checking, ck->m.message_id);
  if (en->stalled || en->reloading) { /* read again when the store takes work again */
    park_delivery(en, &ck->m, ck->tag, ck->redelivered);
  } else {
    struct sg_read *rd = ck->rd;
    char *status = rd->status_s, *body = rd->body;
    rd->status_s = rd->body = NULL;
    command_checked(en, &ck->m, ck->tag, ck->redelivered, 0, rd->rc, status, body, &rd->err);
  }
  if (ck->nextra) { /* the same message delivered again meanwhile: it finds this one's answer */
    for (size_t i = 0; i < ck->nextra; i++) park_delivery(en, &ck->extra[i].m, ck->extra[i].tag, ck->extra[i].redelivered);
    if (!en->broken && !en->stalled && !en->reloading) eng_txn(en); /* its commit re-dispatches them */
  }
  check_free(en, ck);
}

/* the answered checks at the head of the delivery order go on */
static void checks_drain(struct sg_engine *en) {
  while (en->checks && en->checks->rd) {
    struct inbox_check *ck = en->checks;
    en->checks = ck->next;
    if (!en->checks) en->checks_tail = NULL;
    if (ck->gen != en->st.fenced || en->broken || en->stopped) check_free(en, ck); /* the delivery is void */
    else if (en->committing || en->nchecked) PUSH(en->checked, en->nchecked, en->capchecked, ck);
    else check_go_on(en, ck);
  }
}

static void on_inbox_read(struct sg_read *rd) {
  struct inbox_check *ck = rd->ud;
  ck->rd = rd;
  checks_drain(ck->en);
}

/* commands whose inbox answer came while a commit was on its way, in order. Each is taken off the list
 * before it goes on: going on may commit (a redelivered command is counted durably first), and that
 * commit's completion comes back here; it must find the rest of the list, not this one again. */
static void checked_go_on(struct sg_engine *en) {
  while (en->nchecked && !en->committing && !en->broken) {
    struct inbox_check *ck = en->checked[0];
    memmove(en->checked, en->checked + 1, (en->nchecked - 1) * sizeof *en->checked);
    en->nchecked--;
    if (ck->gen != en->st.fenced || en->stopped) check_free(en, ck);
    else check_go_on(en, ck);
  }
}

static void on_message(void *ud, const struct sg_msg *m, uint64_t tag, int redelivered) {
  struct sg_engine *en = ud;
  if (en->broken) return;
  if (en->stalled || en->reloading || en->committing) { park_delivery(en, m, tag, redelivered); return; }
  if (en->cfg.max_payload > 0 && m->body && (int64_t)strlen(m->body) > en->cfg.max_payload) {
    char why[160];
    snprintf(why, sizeof why, "message body is %zu bytes, over this host's limit of %" PRId64 " bytes (--max-payload)",
             strlen(m->body), en->cfg.max_payload);
    char what[300];
    sg_warn("message %s (%s) dead-lettered: %s", m->message_id ? m->message_id : "?", sg_msg_what(m, what, sizeof what), why);
    en->tr->ops->nack(en->tr, tag, m, why);
    return;
  }
  switch (m->kind) {
  case SG_MSG_SIGNAL: eng_signal_message(en, m, tag); return; /* signals.c */
  case SG_MSG_REPLY: on_reply(en, m, tag); return;
  case SG_MSG_COMMAND: on_command(en, m, tag, redelivered); return;
  case SG_MSG_EVENT: break;
  }
  /* hosts subscribe to no events: a transport that delivers one has mapped something wrongly */
  char what[300];
  sg_warn("message %s (%s): an event delivered to a host; dead-lettered", m->message_id ? m->message_id : "?",
          sg_msg_what(m, what, sizeof what));
  en->tr->ops->nack(en->tr, tag, m, "an event is not for a host: hosts consume commands, replies and signals");
}

static void on_confirm(void *ud, int64_t outbox_id) {
  struct sg_engine *en = ud;
  if (outbox_id <= 0) return; /* an in-process message that never had an outbox row */
  if (en->st.outbox > 0) en->st.outbox--; /* a row published twice (after a reconnect) is confirmed twice */
  if (!en->committing) eng_txn(en); /* while stalled or committing: deleted in the first batch after */
  PUSH(en->confirmed, en->nconfirmed, en->capconfirmed, outbox_id);
}

static void on_reject(void *ud, int64_t outbox_id, const char *why) {
  sg_warn("message (outbox %" PRId64 ") refused by the broker: %s; it stays in the outbox", outbox_id, why);
}

static void on_ready(void *ud) {
  struct sg_engine *en = ud;
  en->republish = 1;
  if (!en->committing) eng_txn(en); /* else after the commit on its way */
}

struct sg_transport_events sg_engine_transport_events(struct sg_engine *en) {
  struct sg_transport_events ev = { en, on_message, on_confirm, on_reject, on_ready };
  return ev;
}

/* ---------------------------------------------------------------------------------------------- */
/* group commit */

/* ---- fan-out: a command whose reply is already journaled is not sent again ---- */
/* An outbox row of a call whose reply this host has journaled for the attempt running now: its
 * publish was not confirmed (or the confirm not committed) before the host stopped, but the call is
 * over, so a re-send would only reach its participant twice (with fan-out the other calls of the
 * round keep the step waiting, which makes that window wider than for one ctx:call). */
static int call_answered(struct sg_engine *en, const struct sg_msg *m) {
  if (m->kind != SG_MSG_COMMAND || !m->reply_to || !m->message_id) return 0;
  struct op_ref ref;
  const char *rest;
  if (op_ref_parse(m->message_id, &ref, &rest) < 0 || *rest) return 0;
  struct sg_saga *s = sg_map_get(&en->sagas, ref.sid);
  if (!s || s->terminal || s->row.step != ref.step || s->row.attempt != ref.attempt ||
      s->row.phase != op_ref_phase(&ref))
    return 0;
  struct jent *j = journal_find(s, ref.seq);
  return j && j->done;
}
/* ---- end fan-out ---- */

/* an outbox row read back from the store goes out again (with tracing on, with its saga's traceparent);
 * a call already answered does not: its row goes as if the broker had confirmed it */
static void republish_one(struct sg_engine *en, const struct sg_msg *m) {
  if (m->outbox_id > 0 && call_answered(en, m)) { /* deleted with the next batch */
    if (en->st.outbox > 0) en->st.outbox--;
    PUSH(en->confirmed, en->nconfirmed, en->capconfirmed, m->outbox_id);
    return;
  }
  struct sg_error e = {0};
  struct sg_msg copy;
  int traced = en->otel && !sg_msg_header(m, SG_HDR_TRACEPARENT);
  if (traced) eng_trace_republish(en, m, &copy);
  if (en->tr->ops->publish(en->tr, traced ? &copy : m, &e) < 0) sg_warn("publish %s: %s", m->message_id, e.msg);
  if (traced) sg_msg_free(&copy);
}

/* the outbox, read without waiting after the transport (re)connected: all of it goes out (a row
 * confirmed meanwhile may go twice: its receiver's inbox answers the repeat) */
static void on_outbox_read(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  if (rd->rc < 0) {
    if (!en->stopped) { /* tried again after the next commit */
      sg_warn("outbox: %s; publishing it again after the next commit", rd->err.msg);
      en->republish = 1;
    }
  } else if (!en->stopped && !en->broken && rd->gen == en->st.fenced) { /* a fence reads it again */
    en->st.outbox = (int64_t)rd->nmsgs;
    for (size_t i = 0; i < rd->nmsgs; i++) republish_one(en, &rd->msgs[i]);
  }
  sg_read_free(rd);
}

static int republish_cb(void *ud, const struct sg_msg *m) {
  struct sg_engine *en = ud;
  en->st.outbox++;
  republish_one(en, m);
  return 0;
}

/* Writes what a saga deferred to the commit: the running attempt's history row, armed timers, and
 * the journal of the attempt if it is still running (completed operations and pending sleeps; a
 * pending call is not needed: a replay re-issues it under the same message id and the receiver's
 * inbox answers a repeat), then the saga row itself. */
static int flush_saga(struct sg_engine *en, struct sg_saga *s, struct sg_error *e) {
  if (s->terminal && s->journaled) {
    if (en->store->ops->journal_del(en->store, s->row.id, e) < 0) return -1;
    s->journaled = 0;
  }
  if (!s->terminal) {
    timer_flush(en, s, s->t_wait);
    timer_flush(en, s, s->t_retry);
    timer_flush(en, s, s->t_step);
    timer_flush(en, s, s->t_saga);
    for (int i = 0; i < s->njournal; i++) {
      struct jent *j = &s->journal[i];
      if (!j->dirty || (!j->done && strcmp(j->kind, "call") == 0)) continue;
      char kind[200];
      if (j->target) snprintf(kind, sizeof kind, "%s %s", j->kind, j->target);
      struct sg_journal_row r = {
        .saga_id = s->row.id, .step = s->row.step, .phase = s->row.phase, .attempt = s->row.attempt,
        .seq = j->seq, .kind = j->target ? kind : j->kind, .done = j->done, .is_error = j->is_error, .result = j->result,
      };
      if (en->store->ops->journal_put(en->store, &r, e) < 0) return -1;
      j->dirty = 0;
      s->journaled = 1;
    }
  }
  s->row.version++;
  s->row.same_status = s->row.status == s->stored_status;
  s->stored_status = s->row.status;
  if (!s->stored) {
    s->stored = 1;
    if (s->idem_mkey) { /* from now on the store answers for its idempotency key */
      sg_map_del(&en->idem, s->idem_mkey);
      free(s->idem_mkey);
      s->idem_mkey = NULL;
    }
    return en->store->ops->saga_insert(en->store, &s->row, e);
  }
  return en->store->ops->saga_update(en->store, &s->row, e);
}

static void committed(struct sg_engine *en);
static void stall(struct sg_engine *en, const struct sg_error *e);
static void redispatch_parked(struct sg_engine *en);
static void starts_refuse(struct sg_engine *en);

static void commit_batch(struct sg_engine *en) {
  struct sg_error e = {0};
  for (size_t i = 0; i < en->nconfirmed; i++)
    if (en->store->ops->outbox_del(en->store, en->confirmed[i], &e) < 0) { fatal_store(en, "outbox delete", &e); return; }
  en->nconfirmed = 0;
  for (struct sg_saga *s = en->dirty; s; s = s->next_dirty) {
    s->dirty = 0;
    if (flush_saga(en, s, &e) < 0) {
      /* several hosts: another host changed the saga (it took it over): this host lets go */
      if (en->multi && (e.code == SG_E_CONFLICT || e.code == SG_E_FENCED)) { eng_fenced(en, &e); return; }
      fatal_store(en, "saga flush", &e);
      return;
    }
    if (en->broken) return;
  }
  en->dirty = NULL;
  en->commit_t0 = sg_mono_ns();
  if (en->store->ops->commit_start) {
    if (en->store->ops->commit_start(en->store, &e) == 0) { commit_wait(en); return; }
  } else if (en->store->ops->commit(en->store, &e) == 0) {
    committed(en);
    return;
  }
  commit_failed(en, &e);
}

static void commit_failed(struct sg_engine *en, struct sg_error *e) {
  if (e->code == SG_E_UNAVAILABLE && en->store->ops->retry_commit) { stall(en, e); return; }
  if (en->multi && (e->code == SG_E_CONFLICT || e->code == SG_E_FENCED)) { eng_fenced(en, e); return; }
  fatal_store(en, "commit", e);
  for (size_t i = 0; i < en->ncbs; i++) en->cbs[i].cb(en->cbs[i].ud, -1);
  en->ncbs = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* a commit on its way (a store with commit_start: PostgreSQL)
 *
 * The loop does not wait for the database: it goes on serving sockets while the batch is on its way.
 * What would start the next batch waits meanwhile, as during a stall but only for one commit:
 * deliveries are parked, timers and preempted steps wait, the sweep skips a turn. A caller that must
 * write at once (a start, an operator verb, a reload: eng_txn) waits for the end of the commit
 * first (settle). */

static void commit_go_on(struct sg_engine *en) {
  if (en->broken || en->stalled || en->committing || en->reloading) return;
  redispatch_parked(en);
  if (en->stalled || en->broken || en->committing) return;
  if (en->nconfirmed || en->republish) eng_txn(en);
  sg_timers_run(en->timers, sg_now_ms());
  if (en->nrq) { ev_check_start(en->loop, &en->rq_check); ev_idle_start(en->loop, &en->rq_idle); }
}

/* 0 = finished (committed, or its failure handled), 1 = still on its way */
static int commit_check(struct sg_engine *en, int block) {
  struct sg_error e = {0};
  int ww = 0;
  int rc = en->store->ops->commit_poll(en->store, block, &ww, &e);
  if (rc == 1) {
    int want = EV_READ | (ww ? EV_WRITE : 0);
    if (!ev_is_active(&en->commit_io) || en->commit_io.events != want) {
      ev_io_stop(en->loop, &en->commit_io);
      ev_io_set(&en->commit_io, en->store->ops->note_fd(en->store), want);
      ev_io_start(en->loop, &en->commit_io);
    }
    return 1;
  }
  en->committing = 0;
  ev_io_stop(en->loop, &en->commit_io);
  if (rc == 0) committed(en);
  else commit_failed(en, &e);
  return 0;
}

static void commit_wait(struct sg_engine *en) {
  en->committing = 1;
  eng_runq_stop(en); /* its idle watcher would spin the loop meanwhile */
  sg_timers_stop(en->timers); /* what falls due meanwhile fires after the commit */
  if (commit_check(en, 0) == 0) commit_go_on(en);
}

static void on_commit_io(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_engine *en = w->data;
  if (en->committing && commit_check(en, 0) == 0) commit_go_on(en);
}

/* Waits for the commit on its way (callers that must write now). */
static void settle(struct sg_engine *en) {
  if (!en->committing) return;
  commit_check(en, 1);
  en->go_on_due = 1; /* what waited goes on at the next prepare, not inside this caller */
}

/* What follows a commit: publish, ack, free the finished sagas, answer who waited for it. */
static void on_outbox_read(struct sg_read *rd);

static void committed(struct sg_engine *en) {
  struct sg_error e = {0};
  en->in_txn = 0;
  en->st.commits++;
  en->last_commit_ms = sg_now_ms();
  if (en->on_commit) en->on_commit(en->on_commit_ud, (sg_mono_ns() - en->commit_t0) / 1000);

  /* commit, then publish */
  if (en->republish) {
    /* the whole outbox goes out, which includes this batch's rows; in-process messages without a
     * row stay in the list */
    en->republish = 0;
    size_t keep = 0;
    for (size_t i = 0; i < en->nout; i++) {
      if (en->out[i].outbox_id > 0) sg_msg_free(&en->out[i]);
      else en->out[keep++] = en->out[i];
    }
    en->nout = keep;
    if (en->read_conns) {
      struct sg_read *rd = sg_read_new(SG_READ_OUTBOX, NULL, NULL, on_outbox_read, en);
      rd->gen = en->st.fenced;
      sg_engine_read(en, rd);
    }
    else {
      en->st.outbox = 0; /* republish_cb counts the rows */
      if (en->store->ops->outbox_each(en->store, republish_cb, en, &e) < 0) sg_warn("outbox: %s", e.msg);
    }
  }
  for (size_t i = 0; i < en->nout; i++) {
    if (en->out[i].outbox_id > 0) en->st.outbox++;
    if (en->tr->ops->publish(en->tr, &en->out[i], &e) < 0) sg_warn("publish %s: %s", en->out[i].message_id, e.msg);
    sg_msg_free(&en->out[i]);
  }
  en->nout = 0;
  for (size_t i = 0; i < en->nacks; i++) en->tr->ops->ack(en->tr, en->acks[i].tag);
  en->nacks = 0;
  events_show(en);
  /* the answers that follow read what this commit made: one read snapshot for all of them */
  if (en->store->ops->read_hold && (en->ndone || en->ncbs)) en->store->ops->read_hold(en->store);
  for (size_t i = 0; i < en->ndone; i++) {
    struct sg_saga *s = en->done[i];
    sg_map_del(&en->sagas, s->row.id);
    en->st.live--;
    if (s->row.status == SG_ST_COMPLETED) en->st.completed++;
    else if (s->row.status == SG_ST_COMPENSATED) en->st.compensated++;
    else if (s->row.status == SG_ST_RESOLVED) en->st.resolved++;
    else if (s->row.status == SG_ST_TERMINATED) en->st.terminated++;
    else en->st.compensation_failed++;
    if (en->on_terminal) en->on_terminal(en->on_terminal_ud, s->row.id, s->row.status, s->row.created_at);
    eng_saga_free(s);
  }
  en->ndone = 0;
  /* callbacks may add new callbacks (a request that waits for the next commit): take the list */
  size_t n = en->ncbs;
  struct pending_cb *cbs = en->cbs;
  en->cbs = NULL; en->ncbs = en->capcbs = 0;
  for (size_t i = 0; i < n; i++) cbs[i].cb(cbs[i].ud, 0);
  free(cbs);
  if (en->store->ops->read_release) en->store->ops->read_release(en->store);
}

/* Answers the in-process calls issued in this batch, and the calls their sagas go on to issue, before
 * the commit. A time budget keeps one batch from growing without end: what is left goes out after
 * the commit like any other in-process message. */
#define CHAIN_BUDGET_MS 5
static void run_chain(struct sg_engine *en) {
  int64_t deadline = sg_mono_ns() / 1000000 + CHAIN_BUDGET_MS; /* real time, also under a virtual clock */
  while (en->nchain && !en->broken) {
    struct sg_msg *list = en->chain;
    size_t n = en->nchain;
    en->chain = NULL;
    en->nchain = en->capchain = 0;
    for (size_t i = 0; i < n; i++) {
      /* delivered after the commit instead; always while the in-process transport injects faults,
       * so that they reach every call */
      if (en->broken || sg_mono_ns() / 1000000 > deadline || sg_transport_local_faulty(en->tr)) {
        PUSH(en->out, en->nout, en->capout, list[i]);
        continue;
      }
      on_command(en, &list[i], 0, 0);
      sg_msg_free(&list[i]);
    }
    free(list);
  }
}

/* ---------------------------------------------------------------------------------------------- */
/* a store that cannot write (disk full, I/O errors)
 *
 * The store holds the refused batch (every write, in order) and the engine holds everything that was
 * to follow its commit: the replies to the requests that started sagas, the acks of deliveries, the
 * messages to publish. Nothing of the batch has been acknowledged, so nothing acknowledged can be
 * lost; and as the batch is written again as it was, nothing is applied twice. Meanwhile no new work
 * is taken (starts and operator verbs answer 503, deliveries and timers wait, preempted steps stay
 * where they are) and reads see the last commit. The commit is retried with backoff; when it goes
 * through, the held work goes on as if the commit had simply been slow. */

#define STALL_FIRST_S 0.05
#define STALL_MAX_S 5.0

static void on_stall_timer(struct ev_loop *loop, ev_timer *w, int revents);

static void stall(struct sg_engine *en, const struct sg_error *e) {
  int64_t now = sg_now_ms();
  snprintf(en->stall_error, sizeof en->stall_error, "%.250s", e->msg);
  if (!en->stalled) {
    en->stalled = 1;
    en->stall_since = now;
    en->stall_delay = STALL_FIRST_S;
    en->stall_tries = 0;
    en->st.store_failures++;
    sg_err("store: cannot commit: %s; holding the batch and retrying with backoff; new work is refused (503) "
           "until a commit succeeds, reads are answered from the last commit", e->msg);
    sg_timers_stop(en->timers);
    eng_runq_stop(en); /* the queue stays; continued after */
    starts_refuse(en); /* the starts that waited for the commit: new work, refused like the others */
    eng_verbs_refuse(en, 0, NULL);
  } else if (en->stall_tries % 10 == 0) {
    sg_warn("store: still cannot commit after %.1fs (%" PRId64 " retries): %s", (now - en->stall_since) / 1000.0,
            en->stall_tries, e->msg);
  }
  ev_timer_stop(en->loop, &en->stall_timer);
  ev_timer_set(&en->stall_timer, en->stall_delay, 0.);
  ev_timer_start(en->loop, &en->stall_timer);
  en->stall_delay = en->stall_delay * 2 > STALL_MAX_S ? STALL_MAX_S : en->stall_delay * 2;
}

/* The deliveries that waited (for a stall to end, or for the store to answer a read), in order; each
 * may open the next batch, or wait again. */
static void starts_go_on(struct sg_engine *en);
static void defs_go_on(struct sg_engine *en);
static void redispatch_parked(struct sg_engine *en) {
  defs_go_on(en);
  eng_owner_go_on(en);
  checked_go_on(en);
  starts_go_on(en);
  eng_verbs_go_on(en);
  if (en->committing) return; /* one of them committed at once (a redelivery's count): the rest after */
  struct parked_msg *list = en->parked;
  size_t n = en->nparked;
  en->parked = NULL;
  en->nparked = en->capparked = 0;
  for (size_t i = 0; i < n; i++) {
    if (!en->broken && !en->stalled && !en->reloading) on_message(en, &list[i].m, list[i].tag, list[i].redelivered);
    else if (!en->broken) park_delivery(en, &list[i].m, list[i].tag, list[i].redelivered);
    sg_msg_free(&list[i].m);
  }
  free(list);
}

void eng_redispatch_parked(struct sg_engine *en) { redispatch_parked(en); }

static void on_parked_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_engine *en = w->data;
  if (!en->stalled && !en->broken && !en->reloading && !en->committing) redispatch_parked(en); /* a stall re-dispatches them when it ends */
}

/* Leaves the stall after the held batch committed: what waited goes on. */
static void unstall(struct sg_engine *en) {
  sg_info("store: commit succeeded after %.1fs and %" PRId64 " retries; taking new work again",
          (sg_now_ms() - en->stall_since) / 1000.0, en->stall_tries);
  en->stalled = 0;
  en->stall_error[0] = 0;
  ev_timer_stop(en->loop, &en->stall_timer);
  committed(en);
  if (en->broken) return;
  redispatch_parked(en);
  if (en->stalled || en->broken) return;
  if (en->nconfirmed || en->republish) eng_txn(en);
  sg_timers_run(en->timers, sg_now_ms()); /* what fell due, then the heap is armed again */
  if (en->nrq) { ev_check_start(en->loop, &en->rq_check); ev_idle_start(en->loop, &en->rq_idle); }
}

static void on_stall_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_engine *en = w->data;
  if (!en->stalled || en->broken) return;
  struct sg_error e = {0};
  en->stall_tries++;
  if (en->store->ops->retry_commit(en->store, &e) == 0) { unstall(en); return; }
  if (e.code == SG_E_UNAVAILABLE) { stall(en, &e); return; }
  if (en->multi && (e.code == SG_E_CONFLICT || e.code == SG_E_FENCED)) {
    sg_info("store: the held batch cannot be written: %s", e.msg);
    en->stalled = 0;
    en->stall_error[0] = 0;
    ev_timer_stop(en->loop, &en->stall_timer);
    eng_fenced(en, &e);
    if (!en->reloading) eng_redispatch_parked(en);
    return;
  }
  fatal_store(en, "commit (retry)", &e);
  for (size_t i = 0; i < en->ncbs; i++) en->cbs[i].cb(en->cbs[i].ud, -1);
  en->ncbs = 0;
}

int sg_engine_stalled(struct sg_engine *en) { return en->stalled; }

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents) {
  struct sg_engine *en = w->data;
  if (en->committing) { /* a read may have finished it meanwhile */
    if (commit_check(en, 0) == 1) return;
    commit_go_on(en);
  } else if (en->go_on_due) {
    en->go_on_due = 0;
    commit_go_on(en);
  }
  if (en->broken || en->stalled || en->committing) return;
  if (en->nchain) run_chain(en);
  if (en->in_txn) commit_batch(en);
  /* several hosts: notes, and the reads of a takeover round or of mail, between batches */
  if (en->multi && !en->in_txn && !en->broken && !en->stalled && !en->reloading) eng_owner_prepare(en);
  if (en->in_txn || en->broken || en->stalled) return;
  if (en->ncbs) {
    size_t n = en->ncbs;
    struct pending_cb *cbs = en->cbs;
    en->cbs = NULL; en->ncbs = en->capcbs = 0;
    if (en->store->ops->read_hold) en->store->ops->read_hold(en->store); /* their reads: one snapshot */
    for (size_t i = 0; i < n; i++) cbs[i].cb(cbs[i].ud, 0);
    free(cbs);
    if (en->store->ops->read_release) en->store->ops->read_release(en->store);
  }
}

void sg_engine_after_commit(struct sg_engine *en, sg_committed_cb cb, void *ud) {
  if (en->stalled || en->stopped) { /* nothing new can be in a commit now: answer from the last one */
    cb(ud, 0);
    return;
  }
  struct pending_cb c = { cb, ud };
  PUSH(en->cbs, en->ncbs, en->capcbs, c);
}

/* ---------------------------------------------------------------------------------------------- */
/* public */

struct sg_engine *sg_engine_new(struct ev_loop *loop, struct sg_store *store, const struct sg_runner *runner,
                                const struct sg_engine_config *cfg) {
  struct sg_engine *en = sg_xcalloc(1, sizeof *en);
  en->loop = loop;
  en->store = store;
  en->runner = *runner;
  en->cfg = *cfg;
  en->timers = sg_timers_new(loop, on_timer_fire, en);
  sg_map_init(&en->sagas);
  ev_prepare_init(&en->prepare, on_prepare);
  en->prepare.data = en;
  ev_prepare_start(loop, &en->prepare);
  ev_unref(loop); /* the commit watcher alone must not keep the loop alive */
  sg_map_init(&en->breakers);
  sg_map_init(&en->idem);
  sg_map_init(&en->inflight);
  sg_map_init(&en->checking);
  sg_map_init(&en->idem_reads);
  en->read_conns = store->ops->read_start ? store->ops->read_conns : 0;
  if (en->read_conns > READ_CONNS_MAX) en->read_conns = READ_CONNS_MAX;
  for (int i = 0; i < READ_CONNS_MAX; i++) {
    ev_init(&en->read_io[i], on_read_io);
    en->read_io[i].data = en;
  }
  eng_runq_init(en);
  ev_init(&en->stall_timer, on_stall_timer);
  en->stall_timer.data = en;
  ev_init(&en->parked_timer, on_parked_timer);
  en->parked_timer.data = en;
  ev_init(&en->commit_io, on_commit_io);
  en->commit_io.data = en;
  ev_init(&en->reload_timer, on_reload_timer);
  en->reload_timer.data = en;
  eng_owner_init(en);
  ev_timer_init(&en->sweep, on_sweep, 0.25, 0.25);
  en->sweep.data = en;
  ev_timer_start(loop, &en->sweep);
  ev_unref(loop);
  return en;
}

void sg_engine_set_transport(struct sg_engine *en, struct sg_transport *t) {
  en->tr = t;
  if (t->ops->set_max_body) t->ops->set_max_body(t, en->cfg.max_payload);
}

void sg_engine_on_terminal(struct sg_engine *en, sg_terminal_cb cb, void *ud) {
  en->on_terminal = cb;
  en->on_terminal_ud = ud;
}

void sg_engine_on_commit(struct sg_engine *en, sg_commit_cb cb, void *ud) {
  en->on_commit = cb;
  en->on_commit_ud = ud;
}

struct sg_transport *sg_engine_transport(struct sg_engine *en) { return en->tr; }

int sg_engine_def_loaded(struct sg_engine *en, const char *hash, const char *file, const char *source, struct sg_error *e) {
  if (en->stalled)
    return sg_errorf(e, SG_E_UNAVAILABLE, "the store cannot write now (%s); the file is loaded again when it can",
                     en->stall_error);
  if (en->committing) { /* written in the first batch after the commit on its way (before any saga on it) */
    struct pending_def d = { sg_strdup(hash), sg_strdup(file), sg_strdup(source), NULL };
    PUSH(en->defs, en->ndefs, en->capdefs, d);
    return 0;
  }
  if (eng_txn(en) < 0) return sg_errorf(e, SG_E_INTERNAL, "store unavailable");
  if (en->store->ops->def_put(en->store, hash, file, source, e) < 0) return -1;
  def_event(en, file, hash, NULL);
  return 0;
}

void sg_engine_def_failed(struct sg_engine *en, const char *file, const char *error) {
  if (en->stalled || en->broken) return;
  if (en->committing) {
    struct pending_def d = { NULL, sg_strdup(file), NULL, sg_strdup(error) };
    PUSH(en->defs, en->ndefs, en->capdefs, d);
    return;
  }
  def_event(en, file, NULL, error);
}

/* the definitions loaded while a commit was on its way */
static void defs_go_on(struct sg_engine *en) {
  size_t i = 0;
  for (; i < en->ndefs && !en->committing && !en->stalled && !en->broken && eng_txn(en) == 0; i++) {
    struct sg_error e = {0};
    if (en->defs[i].error)
      def_event(en, en->defs[i].file, NULL, en->defs[i].error);
    else if (en->store->ops->def_put(en->store, en->defs[i].hash, en->defs[i].file, en->defs[i].source, &e) < 0)
      sg_warn("definition %s: %s", en->defs[i].hash, e.msg);
    else
      def_event(en, en->defs[i].file, en->defs[i].hash, NULL);
    free(en->defs[i].hash); free(en->defs[i].file); free(en->defs[i].source); free(en->defs[i].error);
  }
  if (i) memmove(en->defs, en->defs + i, (en->ndefs - i) * sizeof *en->defs);
  en->ndefs -= i;
}

struct sg_saga *eng_saga_new(const struct sg_saga_row *r) {
  struct sg_saga *s = sg_xcalloc(1, sizeof *s);
  /* the type and the definition hash are shared by every saga of that version: a parked saga's own
   * strings are its input and data (a million parked sagas: about 100 MB less) */
  struct sg_saga_row shallow = *r;
  shallow.type = shallow.def_hash = NULL;
  sg_store_saga_row_copy(&s->row, &shallow);
  s->row.type = (char *)sg_intern(r->type);
  s->row.def_hash = (char *)sg_intern(r->def_hash);
  s->row.interned = 1;
  s->stored_status = r->status;
  s->stored = 1;
  return s;
}

static int start_saga(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                      const char *trace, int looked_up, int64_t start_at, char id[40], int *existed,
                      struct sg_error *e);

int sg_engine_start(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                    char id[40], int *existed, struct sg_error *e) {
  char *trace = en->otel ? sg_otel_saga_trace_new(NULL, NULL) : NULL;
  int rc = start_saga(en, type, input_json, idem_key, trace, 0, 0, id, existed, e);
  free(trace);
  return rc;
}

/* looked_up: the store has been asked for idem_key already (it had no saga with it); trace: the new
 * saga's trace context (tracing on), or NULL */
static int start_saga(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                      const char *trace, int looked_up, int64_t start_at, char id[40], int *existed,
                      struct sg_error *e) {
  *existed = 0;
  if (en->broken) return sg_errorf(e, SG_E_INTERNAL, "the host is stopping after a store failure");
  if (en->stalled || en->reloading) return eng_refuse_stalled(en, e);
  if (en->cfg.max_payload > 0 && (int64_t)strlen(input_json) > en->cfg.max_payload)
    return sg_errorf(e, SG_E_TOOBIG, "input is %zu bytes, over the limit of %" PRId64 " bytes", strlen(input_json),
                     en->cfg.max_payload);
  if (eng_txn(en) < 0) {
    if (en->stalled || en->reloading) return eng_refuse_stalled(en, e);
    return sg_errorf(e, SG_E_INTERNAL, "store unavailable");
  }
  if (idem_key) {
    char *mk = sg_asprintf("%s\x1f%s", type, idem_key);
    struct sg_saga *pending = sg_map_get(&en->idem, mk);
    free(mk);
    if (pending) { /* started earlier in this batch */
      snprintf(id, 40, "%s", pending->row.id);
      *existed = 1;
      return 0;
    }
    struct sg_saga_row old = {0};
    int found = looked_up ? 0 : en->store->ops->saga_find_idem(en->store, type, idem_key, &old, e);
    if (found < 0) return -1;
    if (found) {
      snprintf(id, 40, "%s", old.id);
      sg_store_saga_row_free(&old);
      *existed = 1;
      return 0;
    }
  }
  const struct sg_def *d = en->runner.def_get(en->runner.ud, type, NULL, e);
  if (!d) return -1;
  char *biz_key = NULL; /* computed once, here: the saga keeps it */
  if (d->has_key && en->runner.key && en->runner.key(en->runner.ud, d, input_json, &biz_key, e) < 0) return -1;
  struct sg_saga_row r = {0};
  sg_uuid(r.id);
  r.type = (char *)type;
  r.def_hash = d->hash;
  r.status = SG_ST_RUNNING;
  r.input = (char *)input_json;
  r.data = "{}";
  r.idem_key = (char *)idem_key;
  r.biz_key = biz_key;
  r.trace = (char *)trace;
  /* the id's own time: listing by id is listing by created_at (GET /v1/sagas pages by id) */
  r.created_at = r.updated_at = sg_uuid_time_ms(r.id);
  int delayed = start_at > r.created_at; /* (schedules) its first step starts at start_at */
  r.deadline = d->timeout_ms > 0 ? (delayed ? start_at : r.created_at) + d->timeout_ms : 0;
  r.attempt = delayed ? 0 : 1;
  r.attempt_started_at = delayed ? start_at : 0;
  r.version = 0; /* inserted at the commit with version 1 */
  struct sg_saga *s = eng_saga_new(&r);
  free(biz_key);
  s->def = d;
  s->stored = 0;
  if (idem_key) {
    s->idem_mkey = sg_asprintf("%s\x1f%s", type, idem_key);
    sg_map_put(&en->idem, s->idem_mkey, s);
  }
  sg_map_put(&en->sagas, s->row.id, s);
  en->st.live++;
  en->st.started++;
  snprintf(id, 40, "%s", s->row.id);
  if (d->timeout_ms > 0) s->t_saga = eng_timer_new(en, s, TM_SAGA_TIMEOUT, r.deadline, 0);
  eng_event(en, SG_EV_STARTED, s, NULL, NULL, 0);
  if (delayed) s->t_retry = eng_timer_new(en, s, TM_RETRY, start_at, 1); /* (schedules) attempt 1 then */
  else eng_begin_attempt(en, s);
  return 0;
}

/* ---- for child sagas (children.c; the journal wrappers are signals.c's, above) ---- */

void eng_compensate_from(struct sg_engine *en, struct sg_saga *s, int from) { compensate_from(en, s, from); }
int eng_start_child(struct sg_engine *en, const char *type, const char *input_json, const char *key, int looked_up,
                    char id[40], int *existed, struct sg_error *e) {
  char *trace = en->otel ? sg_otel_saga_trace_new(NULL, NULL) : NULL;
  int rc = start_saga(en, type, input_json, key, trace, looked_up, 0, id, existed, e);
  free(trace);
  return rc;
}

/* ---- starts without waiting ---- */

static void start_req_free(struct start_req *r) {
  free(r->type); free(r->input); free(r->key); free(r->mkey); free(r->trace);
  free(r);
}

/* answers r and the starts that waited with it (they share its key: the same saga, found or started) */
static void start_answer(struct start_req *r, const char *id, int existed, const struct sg_error *e) {
  while (r) {
    struct start_req *next = r->same;
    r->cb(r->ud, id, existed, e);
    existed = 1;
    start_req_free(r);
    r = next;
  }
}

static void start_fail(struct start_req *r, int code, const char *msg) {
  struct sg_error e = {0};
  sg_errorf(&e, code, "%s", msg);
  start_answer(r, NULL, 0, &e);
}

static void on_idem_read(struct sg_read *rd);

static void start_go(struct sg_engine *en, struct start_req *r) {
  struct sg_error e = {0};
  if (en->broken || en->stopped) { start_fail(r, SG_E_UNAVAILABLE, "the host is stopping: the saga was not started; retry"); return; }
  if (en->stalled || en->reloading) { eng_refuse_stalled(en, &e); start_answer(r, NULL, 0, &e); return; }
  if (en->committing) { PUSH(en->starts, en->nstarts, en->capstarts, r); return; } /* after it */
  if (r->mkey) {
    struct sg_saga *pending = sg_map_get(&en->idem, r->mkey);
    if (pending) { start_answer(r, pending->row.id, 1, NULL); return; } /* started in this batch */
    if (!r->looked_up) {
      struct start_req *first = sg_map_get(&en->idem_reads, r->mkey);
      if (first) { /* its key is being read: the same answer */
        while (first->same) first = first->same;
        first->same = r;
        return;
      }
      r->gen = en->st.fenced;
      sg_map_put(&en->idem_reads, r->mkey, r);
      sg_engine_read(en, sg_read_new(SG_READ_IDEM, r->type, r->key, on_idem_read, r));
      return;
    }
  }
  char id[40];
  int existed = 0;
  if (start_saga(en, r->type, r->input, r->key, r->trace, r->looked_up, r->start_at, id, &existed, &e) < 0)
    start_answer(r, NULL, 0, &e);
  else start_answer(r, id, existed, NULL);
}

static void on_idem_read(struct sg_read *rd) {
  struct start_req *r = rd->ud;
  struct sg_engine *en = r->en;
  if (sg_map_get(&en->idem_reads, r->mkey) == r) sg_map_del(&en->idem_reads, r->mkey);
  if (r->gen != en->st.fenced && !en->stopped)
    start_fail(r, SG_E_FENCED, "this host lost its sagas to another host (its lease ran out) before the start;"
               " it did not happen: retry");
  else if (rd->rc < 0) start_answer(r, NULL, 0, &rd->err);
  else if (rd->rc == 1) start_answer(r, rd->rows[0].id, 1, NULL);
  else {
    r->looked_up = 1; /* no saga with the key: none can start meanwhile, its later starts wait on r */
    start_go(en, r);
  }
  sg_read_free(rd);
}

static void starts_refuse(struct sg_engine *en) {
  for (size_t i = 0; i < en->nstarts; i++) start_go(en, en->starts[i]); /* stalled: each is refused */
  en->nstarts = 0;
}

/* starts that came while a commit was on its way */
static void starts_go_on(struct sg_engine *en) {
  size_t i = 0;
  for (; i < en->nstarts && !en->committing; i++) start_go(en, en->starts[i]);
  if (i) memmove(en->starts, en->starts + i, (en->nstarts - i) * sizeof *en->starts);
  en->nstarts -= i;
}

void sg_engine_start_cb(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                        const char *traceparent, const char *tracestate, sg_started_cb cb, void *ud) {
  sg_engine_start_at_cb(en, type, input_json, idem_key, traceparent, tracestate, 0, cb, ud);
}

void sg_engine_start_at_cb(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                           const char *traceparent, const char *tracestate, int64_t start_at, sg_started_cb cb,
                           void *ud) {
  struct sg_error e = {0};
  char *trace = en->otel ? sg_otel_saga_trace_new(traceparent, tracestate) : NULL;
  if (!en->store->ops->read_start) { /* local reads: at once */
    char id[40];
    int existed = 0;
    if (start_saga(en, type, input_json, idem_key, trace, 0, start_at, id, &existed, &e) < 0) cb(ud, NULL, 0, &e);
    else cb(ud, id, existed, NULL);
    free(trace);
    return;
  }
  struct start_req *r = sg_xcalloc(1, sizeof *r); /* (an input over --max-payload is refused by start_saga) */
  r->en = en;
  r->trace = trace;
  r->type = sg_strdup(type);
  r->input = sg_strdup(input_json);
  if (idem_key) {
    r->key = sg_strdup(idem_key);
    r->mkey = sg_asprintf("%s\x1f%s", type, idem_key);
  }
  r->start_at = start_at;
  r->cb = cb;
  r->ud = ud;
  start_go(en, r);
}

/* ---------------------------------------------------------------------------------------------- */
/* schedules (schedule.c): timers without a saga, and fires */

void sg_engine_timer_arm(struct sg_engine *en, struct sg_engine_timer *et, int64_t due) {
  sg_timers_remove(en->timers, &et->t);
  et->t.due = due;
  et->t.kind = TM_NO_SAGA;
  et->t.owner = NULL;
  sg_timers_add(en->timers, &et->t);
}

void sg_engine_timer_disarm(struct sg_engine *en, struct sg_engine_timer *et) {
  sg_timers_remove(en->timers, &et->t);
}

struct sg_store *sg_engine_store(struct sg_engine *en) { return en->store; }

int sg_engine_fire(struct sg_engine *en, const char *schedule, int64_t at, const char *type, const char *input_json,
                   char id[40], struct sg_error *e) {
  id[0] = 0;
  if (en->broken || en->stopped) return sg_errorf(e, SG_E_UNAVAILABLE, "the host is stopping");
  if (en->stalled || en->reloading) return eng_refuse_stalled(en, e);
  if (!en->store->ops->schedule_claim) return sg_errorf(e, SG_E_INTERNAL, "the store keeps no schedules");
  const struct sg_def *d = NULL;
  char *biz_key = NULL, *idem = NULL, *trace = NULL;
  struct sg_saga_row r = {0};
  if (type) {
    if (en->cfg.max_payload > 0 && (int64_t)strlen(input_json) > en->cfg.max_payload)
      return sg_errorf(e, SG_E_TOOBIG, "input is %zu bytes, over the limit of %" PRId64 " bytes", strlen(input_json),
                       en->cfg.max_payload);
    if (!(d = en->runner.def_get(en->runner.ud, type, NULL, e))) return -1;
    if (d->has_key && en->runner.key && en->runner.key(en->runner.ud, d, input_json, &biz_key, e) < 0) return -1;
    idem = sg_asprintf("schedule:%s@%" PRId64, schedule, at);
    trace = en->otel ? sg_otel_saga_trace_new(NULL, NULL) : NULL;
    sg_uuid(r.id);
    r.type = (char *)type;
    r.def_hash = d->hash;
    r.status = SG_ST_RUNNING;
    r.input = (char *)input_json;
    r.data = "{}";
    r.idem_key = idem;
    r.biz_key = biz_key;
    r.trace = trace;
    r.created_at = r.updated_at = sg_uuid_time_ms(r.id);
    r.deadline = d->timeout_ms > 0 ? r.created_at + d->timeout_ms : 0;
    r.attempt = 0; /* a delayed start due now: its timer starts attempt 1 */
    r.attempt_started_at = r.created_at;
    r.version = 1; /* the claim inserts it */
  }
  int rc = eng_txn(en); /* SQLite writes the claim in the batch */
  if (rc == 0) rc = en->store->ops->schedule_claim(en->store, schedule, at, type ? &r : NULL, e);
  else sg_errorf(e, SG_E_UNAVAILABLE, "the store cannot write now");
  if (rc == 1 && type) {
    struct sg_saga *s = eng_saga_new(&r);
    s->def = d;
    sg_map_put(&en->sagas, s->row.id, s);
    en->st.live++;
    en->st.started++;
    snprintf(id, 40, "%s", s->row.id);
    if (d->timeout_ms > 0) s->t_saga = eng_timer_new(en, s, TM_SAGA_TIMEOUT, r.deadline, 0);
    eng_event(en, SG_EV_STARTED, s, NULL, NULL, 0);
    s->t_retry = eng_timer_new(en, s, TM_RETRY, r.attempt_started_at, 1);
  }
  free(biz_key); free(idem); free(trace);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* recovery */

struct recover_ctx {
  struct sg_engine *en;
  struct sg_saga **list;
  size_t n, cap;
};

static int recover_saga_cb(void *ud, const struct sg_saga_row *r) {
  struct recover_ctx *rc = ud;
  struct sg_error e = {0};
  const struct sg_def *d = rc->en->runner.def_get(rc->en->runner.ud, r->type, r->def_hash, &e);
  if (!d) {
    sg_err("saga %s (%s) cannot resume: %s", r->id, r->type, e.msg);
    return 0;
  }
  struct sg_saga *s = eng_saga_new(r);
  s->def = d;
  s->journaled = 1; /* rows of earlier attempts may be there */
  sg_map_put(&rc->en->sagas, s->row.id, s);
  rc->en->st.live++;
  PUSH(rc->list, rc->n, rc->cap, s);
  return 0;
}

static int recover_timer_cb(void *ud, const struct sg_timer_row *r) {
  struct sg_engine *en = ud;
  struct sg_saga *s = sg_map_get(&en->sagas, r->saga_id);
  int kind = tm_parse(r->kind);
  if (!s || !kind) return 0;
  struct sg_timer *t = sg_xcalloc(1, sizeof *t);
  t->due = r->due_at; t->id = r->id; t->kind = kind; t->ref = r->ref; t->owner = s; t->idx = SIZE_MAX;
  struct sg_timer **slot = kind == TM_SLEEP || kind == TM_CALL_TIMEOUT || kind == TM_WAIT_TIMEOUT ? &s->t_wait
                         : kind == TM_RETRY ? &s->t_retry : kind == TM_STEP_TIMEOUT ? &s->t_step : &s->t_saga;
  if (*slot) { free(t); return 0; }
  *slot = t;
  sg_timers_add(en->timers, t);
  return 0;
}

static int recover_journal_cb(void *ud, const struct sg_journal_row *r) {
  struct sg_saga *s = ud;
  journal_add_row(s, r);
  return 0;
}

/* a journal row of s (NULL: not loaded), kept if it is of its current attempt */
static void journal_load(struct sg_saga *s, const struct sg_journal_row *r) {
  if (s && r->step == s->row.step && r->phase == s->row.phase && r->attempt == s->row.attempt)
    journal_add_row(s, r);
}

/* a journal row of any saga being loaded */
static int recover_journal_any_cb(void *ud, const struct sg_journal_row *r) {
  struct sg_engine *en = ud;
  journal_load(sg_map_get(&en->sagas, r->saga_id), r);
  return 0;
}

/* Goes on with a saga loaded from the store: it waits for its retry, sleep or reply, or its attempt
 * runs again from its checkpoint. reissue: the saga was another host's, so a reply it waits for went
 * to that host's queue: its step runs again, which sends the pending call again under the same
 * message id (the participant's inbox answers a repeat with the reply it stored). 1 = it waits. */
static int resume_loaded(struct sg_engine *en, struct sg_saga *s, int reissue) {
  if (s->row.attempt == 0 && s->row.status == SG_ST_RUNNING && !s->t_retry) /* a delayed start (a fire's) */
    s->t_retry = eng_timer_new(en, s, TM_RETRY, s->row.attempt_started_at, 1);
  if (s->t_retry) return 1;
  struct jent *last = s->njournal ? &s->journal[s->njournal - 1] : NULL;
  int sleeping = s->t_wait && s->t_wait->kind == TM_SLEEP;
  int waiting = last && !strcmp(last->kind, "wait"); /* for a signal: nothing to send again */
  if (last && !last->done && (!reissue || sleeping || waiting || eng_child_pending(last))) {
    s->wait_seq = last->seq;
    if (waiting) eng_signal_offer(en, s); /* signals.c: one may have come meanwhile */
    eng_child_waiting(en, s, last); /* children.c: a child may have ended meanwhile */
    return 1;
  }
  replay(en, s);
  return 0;
}

/* Loads what this host owns (all active sagas with a one-host store) and sets it going. */
int eng_load_owned(struct sg_engine *en, struct sg_error *e) {
  struct recover_ctx rc = { en, NULL, 0, 0 };
  if (en->store->ops->saga_each_active(en->store, recover_saga_cb, &rc, e) < 0) goto fail;
  if (en->store->ops->timer_each(en->store, recover_timer_cb, en, e) < 0) goto fail;
  size_t resumed = 0, parked = 0;
  if (en->store->ops->journal_each_active) { /* one round trip or one scan for all */
    if (rc.n && en->store->ops->journal_each_active(en->store, recover_journal_any_cb, en, e) < 0) goto fail;
  } else {
    for (size_t i = 0; i < rc.n; i++) {
      struct sg_saga *s = rc.list[i];
      if (en->store->ops->journal_each(en->store, s->row.id, s->row.step, s->row.phase, s->row.attempt,
                                       recover_journal_cb, s, e) < 0) goto fail;
    }
  }
  for (size_t i = 0; i < rc.n; i++) {
    if (resume_loaded(en, rc.list[i], 0)) parked++;
    else resumed++;
  }
  sg_info("recovered %zu saga(s): %zu re-run from their last checkpoint, %zu waiting", rc.n, resumed, parked);
  free(rc.list);
  return 0;
fail:
  free(rc.list);
  return -1;
}

int sg_engine_register(struct sg_engine *en, struct sg_error *e) {
  return en->multi ? eng_owner_start(en, e) : 0;
}

int sg_engine_recover(struct sg_engine *en, struct sg_error *e) {
  return eng_load_owned(en, e);
}

struct sg_saga *eng_adopt(struct sg_engine *en, const struct sg_saga_row *r) {
  if (sg_map_get(&en->sagas, r->id)) return NULL;
  struct recover_ctx rc = { en, NULL, 0, 0 };
  recover_saga_cb(&rc, r);
  if (!rc.n) return NULL; /* its definition cannot be loaded (logged): it stays in the store */
  struct sg_saga *s = rc.list[0];
  free(rc.list);
  s->adopting = 1;
  return s;
}

void eng_adopt_timer(struct sg_engine *en, const struct sg_timer_row *r) {
  struct sg_saga *s = sg_map_get(&en->sagas, r->saga_id);
  if (s && s->adopting) recover_timer_cb(en, r);
}

void eng_adopt_journal(struct sg_engine *en, const struct sg_journal_row *r) {
  struct sg_saga *s = sg_map_get(&en->sagas, r->saga_id);
  if (s && s->adopting) journal_load(s, r);
}

void eng_adopt_done(struct sg_engine *en, struct sg_saga *s) {
  s->adopting = 0;
  en->st.taken_over++;
  resume_loaded(en, s, 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* fenced: another host took this host's sagas over (its lease ran out while it could not reach the
 * store, or it ran too slow to renew it). Nothing of the batch was committed, and nothing of it was
 * acknowledged: the sagas are dropped from memory, the deliveries come back from the broker (the
 * transport reconnects), and the host registers again and loads what it still owns. */

/* Frees every saga in memory (with its coroutine and timers), the preempted handlers and the
 * messages waiting to go out or to be handled; the maps and arrays stay (emptied). */
static void free_live(struct sg_engine *en) {
  eng_runq_free(en);
  sg_map_free(&en->inflight);
  sg_map_init(&en->inflight);
  for (size_t i = 0; i < en->sagas.cap; i++) {
    if (!sg_map_live(&en->sagas, i)) continue;
    struct sg_saga *s = en->sagas.slots[i].val;
    /* finished in a batch that never committed (a store failure, a fence): it is in en->done too,
     * and freed from there (freeing it here as well was the double free on a full disk) */
    if (s->terminal) continue;
    eng_drop_co(en, s);
    if (s->t_wait) sg_timers_remove(en->timers, s->t_wait);
    if (s->t_retry) sg_timers_remove(en->timers, s->t_retry);
    if (s->t_step) sg_timers_remove(en->timers, s->t_step);
    if (s->t_saga) sg_timers_remove(en->timers, s->t_saga);
    eng_saga_free(s);
  }
  for (size_t i = 0; i < en->ndone; i++) { eng_drop_co(en, en->done[i]); eng_saga_free(en->done[i]); }
  en->ndone = 0;
  sg_map_free(&en->sagas);
  sg_map_init(&en->sagas);
  sg_map_free(&en->idem); /* its keys belonged to the sagas */
  sg_map_init(&en->idem);
  eng_children_drop(en);
  for (size_t i = 0; i < en->nout; i++) sg_msg_free(&en->out[i]);
  en->nout = 0;
  for (size_t i = 0; i < en->nchain; i++) sg_msg_free(&en->chain[i]);
  en->nchain = 0;
  for (size_t i = 0; i < en->nparked; i++) sg_msg_free(&en->parked[i].m);
  en->nparked = 0;
}

/* the commands whose inbox answer waited and the starts that waited for a commit: a fence voids the
 * deliveries (they go back to the broker) and refuses the starts */
static void drop_waiting(struct sg_engine *en, int code, const char *why) {
  eng_owner_drop(en);
  for (size_t i = 0; i < en->nchecked; i++) check_free(en, en->checked[i]);
  en->nchecked = 0;
  size_t n = en->nstarts;
  struct start_req **st = en->starts;
  en->starts = NULL;
  en->nstarts = en->capstarts = 0;
  for (size_t i = 0; i < n; i++) start_fail(st[i], code, why);
  free(st);
  eng_verbs_refuse(en, code, code == SG_E_FENCED ? "this host lost its sagas to another host (its lease ran out)"
                   " before the action; it did not happen: retry" : "the host is stopping: the action did not happen; retry");
}

static void drop_all(struct sg_engine *en) {
  eng_runq_stop(en);
  events_free(en); /* nothing of the batch happened */
  drop_waiting(en, SG_E_FENCED, "this host lost its sagas to another host (its lease ran out) before the start;"
               " it did not happen: retry");
  free_live(en);
  en->dirty = NULL;
  en->st.live = 0;
  en->nevict = en->evict_head = 0;
  en->nacks = 0; /* never acked: they come back */
  eng_breakers_unpark_all(en);
  size_t n = en->ncbs;
  struct pending_cb *cbs = en->cbs;
  en->cbs = NULL; en->ncbs = en->capcbs = 0;
  for (size_t i = 0; i < n; i++) cbs[i].cb(cbs[i].ud, -2);
  free(cbs);
}

static void reload(struct sg_engine *en) {
  struct sg_error e = {0};
  if (eng_owner_start(en, &e) < 0 || eng_load_owned(en, &e) < 0) {
    sg_warn("fenced: cannot register again yet (%s); retrying in 1s", e.msg);
    drop_all(en); /* what a half-done load left */
    ev_timer_stop(en->loop, &en->reload_timer);
    ev_timer_set(&en->reload_timer, 1.0, 0.);
    ev_timer_start(en->loop, &en->reload_timer);
    return;
  }
  en->reloading = 0;
  sg_timers_run(en->timers, sg_now_ms());
  if (en->nrq) { ev_check_start(en->loop, &en->rq_check); ev_idle_start(en->loop, &en->rq_idle); }
  redispatch_parked(en);
}

static void on_reload_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_engine *en = w->data;
  if (en->reloading && !en->broken && !en->stopped) reload(en);
}

void eng_fenced(struct sg_engine *en, const struct sg_error *e) {
  struct sg_error re = {0};
  en->st.fenced++;
  sg_warn("fenced: %s; dropping the %" PRId64 " saga(s) in memory and the batch (nothing of it was acknowledged),"
          " then loading what this host still owns", e->msg, en->st.live);
  if (en->in_txn) en->store->ops->rollback(en->store, &re);
  en->in_txn = 0;
  drop_all(en);
  en->reloading = 1;
  if (en->tr->ops->reset) en->tr->ops->reset(en->tr, "this host was fenced: its deliveries go back to the broker");
  reload(en);
}

int eng_refuse_stalled(struct sg_engine *en, struct sg_error *e) {
  if (en->reloading)
    return sg_errorf(e, SG_E_UNAVAILABLE, "not accepted: this host lost its sagas to another host (its lease ran"
                     " out) and is loading what it owns again; retry later");
  return sg_errorf(e, SG_E_UNAVAILABLE, "not accepted: the store cannot write (%s); retry later", en->stall_error);
}

void sg_engine_stats(struct sg_engine *en, struct sg_engine_stats *st) {
  *st = en->st;
  st->stalled = en->stalled;
  st->stalled_ms = en->stalled ? sg_now_ms() - en->stall_since : 0;
  snprintf(st->stall_error, sizeof st->stall_error, "%s", en->stalled ? en->stall_error : "");
  st->commits = en->store->ops->commit_count(en->store);
  st->timers = (int64_t)sg_timers_count(en->timers);
  st->multi = en->multi;
  st->reloading = en->reloading;
  snprintf(st->host_id, sizeof st->host_id, "%s", en->cfg.host_id ? en->cfg.host_id : "");
}

int sg_engine_broken(struct sg_engine *en) { return en->broken; }

void sg_engine_stop(struct sg_engine *en) {
  if (!en || en->stopped) return;
  settle(en); /* the commit on its way */
  en->stopped = 1;
  /* reads on their way end now (their callers answer "stopping"), and what waited for a commit */
  if (en->store->ops->read_cancel) en->store->ops->read_cancel(en->store);
  for (int i = 0; i < READ_CONNS_MAX; i++) ev_io_stop(en->loop, &en->read_io[i]);
  drop_waiting(en, SG_E_UNAVAILABLE, "the host is stopping: the saga was not started; retry");
  if (en->stalled && !en->broken) { /* one last try; if the store still refuses, the batch is lost unacknowledged */
    struct sg_error e = {0};
    if (en->store->ops->retry_commit(en->store, &e) == 0) {
      unstall(en);
    } else {
      sg_err("store: stopping with a batch the store refused (%s): its sagas' last changes were never acknowledged; "
             "a restart goes on from the last commit", e.msg);
      en->broken = 1;
      for (size_t i = 0; i < en->ncbs; i++) en->cbs[i].cb(en->cbs[i].ud, -1);
      en->ncbs = 0;
    }
    ev_timer_stop(en->loop, &en->stall_timer);
  }
  if (!en->broken) on_prepare(en->loop, &en->prepare, 0); /* the last group commit and its callbacks */
  ev_timer_stop(en->loop, &en->reload_timer);
  settle(en); /* the last commit, if it went on its way */
  if (en->store->ops->read_cancel) en->store->ops->read_cancel(en->store); /* (none can have started since) */
  for (int i = 0; i < READ_CONNS_MAX; i++) ev_io_stop(en->loop, &en->read_io[i]);
  ev_io_stop(en->loop, &en->commit_io);
  eng_owner_stop(en); /* several hosts: the lease is released, so others take the sagas over at once */
  sg_timers_stop(en->timers);
  ev_ref(en->loop);
  ev_prepare_stop(en->loop, &en->prepare);
  ev_ref(en->loop);
  ev_timer_stop(en->loop, &en->sweep);
  ev_timer_stop(en->loop, &en->stall_timer);
  ev_timer_stop(en->loop, &en->parked_timer);
  eng_runq_stop(en);
}

void sg_engine_crash(struct sg_engine *en) {
  if (!en || en->stopped) return;
  en->committing = 0; /* a commit on its way is not waited for: it lands or not as the store closes */
  en->broken = 1;     /* no last commit, no lease release: the open batch is rolled back when the store closes */
  for (size_t i = 0; i < en->ncbs; i++) en->cbs[i].cb(en->cbs[i].ud, -1); /* not acknowledged */
  en->ncbs = 0;
  sg_engine_stop(en);
}

void sg_engine_free(struct sg_engine *en) {
  if (!en) return;
  free_live(en);
  sg_map_free(&en->inflight);
  sg_map_free(&en->checking);
  sg_map_free(&en->idem_reads);
  free(en->checked);
  free(en->starts);
  free(en->verbs);
  events_free(en);
  free(en->pev);
  for (size_t i = 0; i < en->ndefs; i++) { free(en->defs[i].hash); free(en->defs[i].file); free(en->defs[i].source); free(en->defs[i].error); }
  free(en->defs);
  free(en->chain);
  free(en->parked);
  sg_map_free(&en->sagas);
  eng_breakers_free(en);
  sg_map_free(&en->idem);
  sg_timers_free(en->timers);
  free(en->evict);
  eng_owner_free(en);
  free(en->done); free(en->out); free(en->acks); free(en->cbs); free(en->confirmed);
  free(en);
}

/* ---------------------------------------------------------------------------------------------- */
/* the testing kit (lmodule.c): mocked participants, a virtual clock */

void sg_engine_set_mock(struct sg_engine *en, sg_mock_cb cb, void *ud) {
  en->mock = cb;
  en->mock_ud = ud;
}

void sg_engine_set_direct_calls(struct sg_engine *en, int on) { en->no_direct = !on; }

int sg_engine_quiescent(struct sg_engine *en) {
  if (en->broken) return 1; /* nothing will run any more: the caller sees it in the stats */
  if (en->in_txn || en->committing || en->go_on_due || en->stalled || en->reloading) return 0;
  if (en->nrq || en->nchain || en->nout || en->ncbs || en->nacks || en->nparked || en->nchecked || en->checks ||
      en->nstarts || en->nverbs || en->ndefs || en->npev || en->nconfirmed || en->republish)
    return 0;
  if (en->pruning || en->child_polls || en->probing || en->mail_reading || en->taking) return 0;
  int64_t due = sg_engine_next_due(en);
  return due < 0 || due > sg_now_ms();
}

int64_t sg_engine_next_due(struct sg_engine *en) {
  struct sg_timer *t = sg_timers_peek(en->timers);
  int64_t due = t ? t->due : -1;
  for (size_t i = 0; i < en->breakers.cap; i++) { /* an open breaker's half-open time */
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *b = en->breakers.slots[i].val;
    if (b->state != BR_OPEN) continue;
    int64_t at = b->opened_at + b->cfg.open_ms;
    if (due < 0 || at < due) due = at;
  }
  return due;
}

void sg_engine_tick(struct sg_engine *en) {
  if (en->broken || en->stalled || en->committing || en->reloading) return;
  int64_t now = sg_now_ms();
  eng_breakers_tick(en, now);
  sg_timers_run(en->timers, now);
  if (en->nrq) { ev_check_start(en->loop, &en->rq_check); ev_idle_start(en->loop, &en->rq_idle); }
}
