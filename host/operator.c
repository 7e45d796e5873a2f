/* operator: the verbs that finish what the engine cannot (compensate now, retry a failed
 * compensation, mark resolved) and the plan of what compensating would run. Every action is recorded
 * in the saga's history with who and why. */
#include <stdio.h>
#include <string.h>

#include "engine_int.h"


/* The live saga, or (for a terminal one) a saga loaded from the store and made live. */
static struct sg_saga *saga_for_operator(struct sg_engine *en, const char *id, struct sg_error *e) {
  if (en->stalled || en->reloading) { eng_refuse_stalled(en, e); return NULL; }
  struct sg_saga *s = sg_map_get(&en->sagas, id);
  if (s) {
    if (s->terminal) { sg_errorf(e, SG_E_CONFLICT, "saga %s just finished as %s", id, sg_status_name(s->row.status)); return NULL; }
    return s;
  }
  if (eng_txn(en) < 0) { sg_errorf(e, SG_E_INTERNAL, "store unavailable"); return NULL; }
  struct sg_saga_row r = {0};
  const struct sg_read *pre = en->op_pre; /* read already, without blocking (sg_engine_verb_cb) */
  int found;
  if (pre) {
    found = pre->rc;
    if (found == 1) sg_store_saga_row_copy(&r, &pre->rows[0]);
  } else {
    found = en->store->ops->saga_get(en->store, id, &r, e);
  }
  if (found < 0) return NULL;
  if (!found) { sg_errorf(e, SG_E_NOTFOUND, "no saga with id '%.60s'", id); return NULL; }
  if (!SG_ST_TERMINAL(r.status) && en->multi) {
    char owner[128];
    int alive = 0;
    struct sg_error oe = {0};
    int known = pre ? 1 : en->store->ops->saga_owner(en->store, id, owner, &alive, &oe);
    if (pre) { snprintf(owner, sizeof owner, "%s", pre->owner); alive = pre->owner_alive; }
    if (known > 0 && strcmp(owner, en->cfg.host_id) != 0) {
      sg_errorf(e, SG_E_ELSEWHERE, "saga %s is owned by host %s%s", id, owner[0] ? owner : "(none yet)",
                alive ? "" : " (its lease ran out: another host takes it over)");
      sg_store_saga_row_free(&r);
      return NULL;
    }
  }
  if (!SG_ST_TERMINAL(r.status)) {
    sg_errorf(e, SG_E_CONFLICT, "saga %s is %s but not loaded on this host (its definition failed to load?)", id,
              sg_status_name(r.status));
    sg_store_saga_row_free(&r);
    return NULL;
  }
  const struct sg_def *d = en->runner.def_get(en->runner.ud, r.type, r.def_hash, e);
  if (!d) { sg_store_saga_row_free(&r); return NULL; }
  s = eng_saga_new(&r);
  sg_store_saga_row_free(&r);
  s->def = d;
  sg_map_put(&en->sagas, s->row.id, s);
  en->st.live++;
  return s;
}

/* A saga loaded only to be refused goes back to the store's keeping. */
static void release_unused(struct sg_engine *en, struct sg_saga *s) {
  if (!SG_ST_TERMINAL(s->row.status) || s->dirty) return;
  sg_map_del(&en->sagas, s->row.id);
  en->st.live--;
  eng_saga_free(s);
}

int sg_engine_compensate(struct sg_engine *en, const char *id, const char *reason, const char *who, struct sg_error *e) {
  struct sg_saga *s = saga_for_operator(en, id, e);
  if (!s) return -1;
  if (s->row.status != SG_ST_RUNNING) {
    sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: only a running saga can be compensated", id, sg_status_name(s->row.status));
    release_unused(en, s);
    return -1;
  }
  char *detail = sg_asprintf("by %s: %s", who && *who ? who : "operator", reason && *reason ? reason : "no reason given");
  eng_hist_event(en, s, "operator_compensate", detail);
  eng_timer_cancel(en, &s->t_retry);
  char *why = sg_asprintf("compensated by operator %s", detail);
  eng_end_attempt(en, s, "failed", why);
  eng_give_up(en, s, why);
  free(why);
  free(detail);
  return 0;
}

int sg_engine_retry(struct sg_engine *en, const char *id, const char *who, struct sg_error *e) {
  struct sg_saga *s = saga_for_operator(en, id, e);
  if (!s) return -1;
  if (s->row.status != SG_ST_COMPENSATION_FAILED) {
    sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: only a compensation_failed saga can be retried", id,
              sg_status_name(s->row.status));
    release_unused(en, s);
    return -1;
  }
  char *detail = sg_asprintf("by %s: retry the compensation of step %s", who && *who ? who : "operator", eng_step_name(s));
  eng_hist_event(en, s, "operator_retry", detail);
  free(detail);
  /* the next attempt number keeps the journal of earlier attempts apart */
  s->row.status = SG_ST_COMPENSATING;
  if (s->row.phase != SG_PH_PARTIAL) s->row.phase = SG_PH_COMPENSATE; /* a partial compensation stays one */
  s->row.attempt++;
  if (s->row.phase != SG_PH_PARTIAL) s->row.attempt_base = s->row.attempt - 1;
  if (en->otel) eng_trace_retry(en, s);
  eng_mark_dirty(en, s);
  eng_begin_attempt(en, s);
  return 0;
}

int sg_engine_resolve(struct sg_engine *en, const char *id, const char *note, const char *who, struct sg_error *e) {
  if (!note || !*note) return sg_errorf(e, SG_E_INVALID, "a note is required to mark a saga resolved (say what was done by hand)");
  struct sg_saga *s = saga_for_operator(en, id, e);
  if (!s) return -1;
  if (s->row.status != SG_ST_COMPENSATION_FAILED) {
    sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: only a compensation_failed saga can be resolved", id,
              sg_status_name(s->row.status));
    release_unused(en, s);
    return -1;
  }
  char *detail = sg_asprintf("by %s: %s", who && *who ? who : "operator", note);
  eng_hist_event(en, s, "operator_resolve", detail);
  free(detail);
  eng_finish(en, s, SG_ST_RESOLVED, NULL);
  return 0;
}

int sg_engine_terminate(struct sg_engine *en, const char *id, const char *reason, const char *who, struct sg_error *e) {
  if (!reason || !*reason)
    return sg_errorf(e, SG_E_INVALID, "a reason is required to terminate a saga (it stops without compensating)");
  struct sg_saga *s = saga_for_operator(en, id, e);
  if (!s) return -1;
  if (s->row.status != SG_ST_RUNNING && s->row.status != SG_ST_COMPENSATING) {
    sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: only a running or compensating saga can be terminated%s", id,
              sg_status_name(s->row.status),
              s->row.status == SG_ST_COMPENSATION_FAILED ? " (mark it resolved instead)" : "");
    release_unused(en, s);
    return -1;
  }
  char *detail = sg_asprintf("by %s: %s", who && *who ? who : "operator", reason);
  eng_hist_event(en, s, "operator_terminate", detail);
  char *why = sg_asprintf("terminated %s", detail);
  eng_end_attempt(en, s, "failed", why);
  free(s->row.partial); /* nothing more is compensated */
  s->row.partial = NULL;
  eng_finish(en, s, SG_ST_TERMINATED, why);
  free(why);
  free(detail);
  return 0;
}

/* ---- upgrade: a saga moves to the current version of its type ---- */

/* Whether saga row r, on version `old`, can go on on version `cur`: the steps it ran or stands at keep
 * their names and, where it will compensate them, their compensate functions. 0, or -1 + e (conflict). */
static int upgrade_check(const struct sg_def *old, const struct sg_def *cur, const struct sg_saga_row *r,
                         struct sg_error *e) {
  if (r->status != SG_ST_RUNNING && r->status != SG_ST_COMPENSATING && r->status != SG_ST_COMPENSATION_FAILED)
    return sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: only a running, compensating or compensation_failed saga is "
                     "upgraded", r->id, sg_status_name(r->status));
  if (!strcmp(old->hash, cur->hash))
    return sg_errorf(e, SG_E_CONFLICT, "saga %s already runs on the current version %s of %s", r->id, cur->hash,
                     cur->type);
  if (r->step >= cur->nsteps)
    return sg_errorf(e, SG_E_CONFLICT, "saga %s stands at step %d (%s) but the current version %s of %s has only %d "
                     "step(s)", r->id, r->step + 1, old->steps[r->step].name, cur->hash, cur->type, cur->nsteps);
  for (int i = 0; i <= r->step && i < old->nsteps; i++) {
    if (strcmp(old->steps[i].name, cur->steps[i].name) != 0)
      return sg_errorf(e, SG_E_CONFLICT, "step %d is '%s' in the saga's version %s but '%s' in the current version %s: "
                       "a saga moves only when the steps up to where it stands keep their names", i + 1,
                       old->steps[i].name, old->hash, cur->steps[i].name, cur->hash);
    int compensates = r->status != SG_ST_RUNNING || i < r->step || r->phase == SG_PH_PARTIAL;
    if (compensates && old->steps[i].has_compensate && !cur->steps[i].has_compensate)
      return sg_errorf(e, SG_E_CONFLICT, "step '%s' has a compensate function in the saga's version %s but none in the "
                       "current version %s: what it did would not be undone", old->steps[i].name, old->hash, cur->hash);
  }
  return 0;
}

/* the saga's row (live or stored; *live set when it is the engine's own) and its and the current
 * versions, or -1 + e */
static int upgrade_load(struct sg_engine *en, const char *id, struct sg_saga_row *r, int *live,
                        const struct sg_def **old, const struct sg_def **cur, struct sg_error *e) {
  struct sg_saga *s = sg_map_get(&en->sagas, id);
  *live = s != NULL;
  if (s) {
    *r = s->row;
  } else {
    int found = en->store->ops->saga_get(en->store, id, r, e);
    if (found < 0) return -1;
    if (!found) return sg_errorf(e, SG_E_NOTFOUND, "no saga with id '%.60s'", id);
  }
  *old = s ? s->def : en->runner.def_get(en->runner.ud, r->type, r->def_hash, e);
  *cur = *old ? en->runner.def_get(en->runner.ud, r->type, NULL, e) : NULL;
  if (!*old || !*cur) {
    if (!*live) sg_store_saga_row_free(r);
    return -1;
  }
  return 0;
}

static void steps_json(struct sg_buf *b, const struct sg_def *d) {
  sg_buf_adds(b, "[");
  for (int i = 0; i < d->nsteps; i++) {
    sg_buf_adds(b, i ? ",{\"name\":" : "{\"name\":");
    sg_buf_add_json_str(b, d->steps[i].name);
    sg_buf_printf(b, ",\"compensate\":%s}", d->steps[i].has_compensate ? "true" : "false");
  }
  sg_buf_adds(b, "]");
}

char *sg_engine_upgrade_plan(struct sg_engine *en, const char *id, struct sg_error *e) {
  struct sg_saga_row r = {0};
  int live = 0;
  const struct sg_def *old = NULL, *cur = NULL;
  if (upgrade_load(en, id, &r, &live, &old, &cur, e) < 0) return NULL;
  char *out = NULL;
  if (upgrade_check(old, cur, &r, e) == 0) {
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"id\":");
    sg_buf_add_json_str(&b, r.id);
    sg_buf_adds(&b, ",\"dry_run\":true,\"type\":");
    sg_buf_add_json_str(&b, r.type);
    sg_buf_adds(&b, ",\"status\":");
    sg_buf_add_json_str(&b, sg_status_name(r.status));
    sg_buf_adds(&b, ",\"step\":");
    sg_buf_add_json_str(&b, old->steps[r.step].name);
    sg_buf_adds(&b, ",\"phase\":");
    sg_buf_add_json_str(&b, sg_phase_name(r.phase));
    sg_buf_adds(&b, ",\"from\":{\"version\":");
    sg_buf_add_json_str(&b, old->hash);
    sg_buf_adds(&b, ",\"file\":");
    sg_buf_add_json_str(&b, old->file);
    sg_buf_adds(&b, ",\"steps\":");
    steps_json(&b, old);
    sg_buf_adds(&b, "},\"to\":{\"version\":");
    sg_buf_add_json_str(&b, cur->hash);
    sg_buf_adds(&b, ",\"file\":");
    sg_buf_add_json_str(&b, cur->file);
    sg_buf_adds(&b, ",\"steps\":");
    steps_json(&b, cur);
    sg_buf_adds(&b, "},\"then\":");
    sg_buf_add_json_str(&b, r.status == SG_ST_COMPENSATION_FAILED
                                ? "it stays compensation_failed: retry runs its compensations on the new version"
                                : "its current step re-runs on the new version from its start; the journal answers "
                                  "what already happened (no call is sent again, a sleep keeps its due time)");
    sg_buf_adds(&b, "}");
    out = sg_buf_steal(&b);
  }
  if (!live) sg_store_saga_row_free(&r);
  return out;
}

int sg_engine_upgrade(struct sg_engine *en, const char *id, const char *who, struct sg_error *e) {
  struct sg_saga *s = saga_for_operator(en, id, e);
  if (!s) return -1;
  const struct sg_def *cur = en->runner.def_get(en->runner.ud, s->row.type, NULL, e);
  if (!cur || upgrade_check(s->def, cur, &s->row, e) < 0) { release_unused(en, s); return -1; }
  char *detail = sg_asprintf("by %s: from version %s to %s", who && *who ? who : "operator", s->def->hash, cur->hash);
  eng_hist_event(en, s, "operator_upgrade", detail);
  sg_info("saga %s %s upgraded %s", s->row.type, s->row.id, detail);
  free(detail);
  if (!s->row.interned) free(s->row.def_hash);
  s->row.def_hash = s->row.interned ? (char *)sg_intern(cur->hash) : sg_strdup(cur->hash);
  s->def = cur;
  s->stored_status = -1;  /* the next write is a full one: def_hash goes with the status */
  /* a step waiting on a call or a sleep replays on the new code when it wakes: the journal answers
   * what happened, so nothing is sent again and the sleep keeps its timer */
  eng_drop_co(en, s);
  eng_mark_dirty(en, s);
  return 0;
}

/* ---- verbs without blocking the loop ---- */

static int verb_apply(struct sg_engine *en, const char *id, const char *verb, const char *arg, const char *who,
                      struct sg_error *e) {
  if (!strcmp(verb, "compensate")) return sg_engine_compensate(en, id, arg, who, e);
  if (!strcmp(verb, "retry")) return sg_engine_retry(en, id, who, e);
  if (!strcmp(verb, "resolve")) return sg_engine_resolve(en, id, arg, who, e);
  if (!strcmp(verb, "terminate")) return sg_engine_terminate(en, id, arg, who, e);
  if (!strcmp(verb, "upgrade")) return sg_engine_upgrade(en, id, who, e);
  if (!strcmp(verb, "signal")) return eng_signal_poke(en, id, e); /* mail from the host a signal reached */
  return sg_errorf(e, SG_E_INVALID, "unknown verb '%.15s'", verb);
}

static void verb_finish(struct verb_req *v, const struct sg_error *e) {
  v->cb(v->ud, e);
  free(v->arg);
  free(v->who);
  sg_read_free(v->rd);
  free(v);
}

static void verb_fail(struct verb_req *v, int code, const char *why) {
  struct sg_error e = {0};
  sg_errorf(&e, code, "%s", why);
  verb_finish(v, &e);
}

static void on_verb_read(struct sg_read *rd);

static void verb_go(struct sg_engine *en, struct verb_req *v) {
  struct sg_error e = {0};
  if (en->broken || en->stopped) { verb_fail(v, SG_E_UNAVAILABLE, "the host is stopping: the action did not happen; retry"); return; }
  if (en->stalled || en->reloading) { eng_refuse_stalled(en, &e); verb_finish(v, &e); return; }
  if (en->committing) { /* after it (the saga is read again then) */
    sg_read_free(v->rd);
    v->rd = NULL;
    PUSH(en->verbs, en->nverbs, en->capverbs, v);
    return;
  }
  int live = sg_map_get(&en->sagas, v->id) != NULL;
  /* a finished saga read before a commit that ended since: that commit may have changed it (a verb of
   * this host on it), and writing it from a stale row would be a version conflict: read it again */
  int stale = v->rd && v->rd->rc == 1 && SG_ST_TERMINAL(v->rd->rows[0].status) && en->st.commits != v->commits_at;
  if (!live && en->store->ops->read_start && (!v->rd || (stale && v->tries < 3))) {
    sg_read_free(v->rd);
    v->rd = NULL;
    v->gen = en->st.fenced;
    v->commits_at = en->st.commits;
    v->tries++;
    struct sg_read *rd = sg_read_new(SG_READ_SAGA, v->id, NULL, on_verb_read, v);
    rd->with_owner = en->multi;
    sg_engine_read(en, rd);
    return;
  }
  en->op_pre = live || stale ? NULL : v->rd; /* still stale after 3 reads: the blocking read */
  int rc = verb_apply(en, v->id, v->verb, v->arg, v->who, &e);
  en->op_pre = NULL;
  verb_finish(v, rc < 0 ? &e : NULL);
}

static void on_verb_read(struct sg_read *rd) {
  struct verb_req *v = rd->ud;
  struct sg_engine *en = v->en;
  v->rd = rd;
  if (v->gen != en->st.fenced && !en->stopped)
    verb_fail(v, SG_E_FENCED, "this host lost its sagas to another host (its lease ran out) before the action;"
              " it did not happen: retry");
  else if (rd->rc < 0) verb_finish(v, &rd->err);
  else verb_go(en, v);
}

void sg_engine_verb_cb(struct sg_engine *en, const char *id, const char *verb, const char *arg, const char *who,
                       sg_verb_cb cb, void *ud) {
  if (strlen(id) >= 40) {
    char msg[120];
    snprintf(msg, sizeof msg, "no saga with id '%.60s'", id);
    struct sg_error e = {0};
    sg_errorf(&e, SG_E_NOTFOUND, "%s", msg);
    cb(ud, &e);
    return;
  }
  struct verb_req *v = sg_xcalloc(1, sizeof *v);
  v->en = en;
  snprintf(v->id, sizeof v->id, "%s", id);
  snprintf(v->verb, sizeof v->verb, "%.15s", verb);
  v->arg = arg ? sg_strdup(arg) : NULL;
  v->who = who ? sg_strdup(who) : NULL;
  v->cb = cb;
  v->ud = ud;
  verb_go(en, v);
}

void eng_verbs_go_on(struct sg_engine *en) {
  size_t i = 0;
  for (; i < en->nverbs && !en->committing; i++) verb_go(en, en->verbs[i]);
  if (i) memmove(en->verbs, en->verbs + i, (en->nverbs - i) * sizeof *en->verbs);
  en->nverbs -= i;
}

void eng_verbs_refuse(struct sg_engine *en, int code, const char *why) {
  size_t n = en->nverbs;
  struct verb_req **list = en->verbs;
  en->verbs = NULL;
  en->nverbs = en->capverbs = 0;
  for (size_t i = 0; i < n; i++) {
    if (code) verb_fail(list[i], code, why);
    else verb_go(en, list[i]); /* stalled: refused as such */
  }
  free(list);
}

/* children: the saga's sagas.children (a step that started children is compensated for them too) */
static void plan_json(struct sg_buf *b, const struct sg_def *d, const char *children, int from, int include_from) {
  sg_buf_adds(b, "[");
  int first = 1;
  for (int j = from; j >= 0; j--) {
    if (!d->steps[j].has_compensate && !eng_child_in_step(children, j)) continue;
    if (j == from && !include_from) continue;
    sg_buf_printf(b, "%s{\"step\":%d,\"name\":", first ? "" : ",", j + 1);
    sg_buf_add_json_str(b, d->steps[j].name);
    sg_buf_adds(b, "}");
    first = 0;
  }
  sg_buf_adds(b, "]");
}

char *sg_engine_plan(struct sg_engine *en, const char *id, struct sg_error *e) {
  struct sg_saga_row r = {0};
  struct sg_saga *live = sg_map_get(&en->sagas, id);
  if (live) {
    r = live->row;
  } else {
    int found = en->store->ops->saga_get(en->store, id, &r, e);
    if (found < 0) return NULL;
    if (!found) { sg_errorf(e, SG_E_NOTFOUND, "no saga with id '%.60s'", id); return NULL; }
  }
  const struct sg_def *d = en->runner.def_get(en->runner.ud, r.type, r.def_hash, e);
  char *out = NULL;
  if (d) {
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"id\":");
    sg_buf_add_json_str(&b, r.id);
    sg_buf_adds(&b, ",\"status\":");
    sg_buf_add_json_str(&b, sg_status_name(r.status));
    /* abortable: what sg_engine_compensate accepts (a running saga); a compensating or compensation_failed
     * one shows the compensations still to run, but compensate answers 409 for it */
    int abortable = r.status == SG_ST_RUNNING;
    sg_buf_printf(&b, ",\"abortable\":%s,\"compensations\":", abortable ? "true" : "false");
    if (r.status == SG_ST_RUNNING) plan_json(&b, d, r.children, r.step, 0);          /* the completed steps */
    else if (r.status == SG_ST_COMPENSATING || r.status == SG_ST_COMPENSATION_FAILED)
      plan_json(&b, d, r.children, r.step, 1);                            /* the current one and below */
    else sg_buf_adds(&b, "[]");
    sg_buf_adds(&b, "}");
    out = sg_buf_steal(&b);
  }
  if (!live) sg_store_saga_row_free(&r);
  return out;
}

const char *sg_engine_step_name(struct sg_engine *en, const struct sg_saga_row *r) {
  struct sg_error e = {0};
  const struct sg_def *d = en->runner.def_get(en->runner.ud, r->type, r->def_hash, &e);
  return d && r->step >= 0 && r->step < d->nsteps ? d->steps[r->step].name : "?";
}

/* Remaining compensations of a saga (for the API's view of a compensation_failed saga). */
char *sg_engine_pending_compensations(struct sg_engine *en, const struct sg_saga_row *r) {
  if (r->status != SG_ST_COMPENSATION_FAILED && r->status != SG_ST_COMPENSATING) return NULL;
  struct sg_error e = {0};
  const struct sg_def *d = en->runner.def_get(en->runner.ud, r->type, r->def_hash, &e);
  if (!d) return NULL;
  struct sg_buf b;
  sg_buf_init(&b);
  plan_json(&b, d, r->children, r->step, 1);
  return sg_buf_steal(&b);
}

