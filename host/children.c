/* children: child sagas (ctx:run).
 *
 * A step's ctx:run(type, input [, {id = key}]) starts a saga of that type in the same batch as the
 * parent's journal entry that waits for it, under an idempotency key (the given one, or the parent's
 * "<id>.<step>.<a|c>.<attempt>.<seq>"), so a replay after a crash finds the entry (or the key) and never
 * starts a second child. While the child runs, the entry is pending with {"child": id, "op": "run"} as
 * its result and the parent keeps no coroutine for long (it is evicted like a call's). When the child
 * reaches a terminal status (eng_finish), the entry gets {"ok": true, "data": ...} or {"ok": false,
 * "error": ...} in the child's batch and the parent goes on; the Lua side turns a failure into an error.
 *
 * A parent remembers the children its completed action steps started (sagas.children, with the step):
 * compensating such a step first compensates its children in reverse order, as journaled operations
 * "child_compensate" of the compensation (lua/saga.lua wraps the step's compensate function): a
 * completed child is made live again and compensates its steps (completed -> compensating ->
 * compensated, recorded as "compensated by its parent saga <id>"); a running one gives up. A parent
 * that stops waiting on a running child (an operator compensates it, a timeout) makes that child give
 * up too.
 *
 * Waking: a child ending on this host wakes its waiters here, in its batch. A child owned by another
 * host (several hosts on PostgreSQL, after a takeover) is read every 2 s by the sweep, and when a
 * parent is loaded (restart, takeover) while it waits: a child that ended meanwhile wakes it then. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "engine_int.h"

/* A child's first steps run at once, inside its parent's operation (and its children's inside its):
 * a saga that starts itself without waiting in between would nest without end. */
#define NEST_MAX 32
static int nesting; /* children being started on the C stack now (one thread; hosts take turns on it) */

/* The child a pending entry waits on (into id) and whether for its compensation: 1, or 0 when j is
 * not such an entry. */
static int pending_child(const struct jent *j, char id[40], int *compensate) {
  if (j->done || !j->result || strncmp(j->result, "{\"child\":", 9) != 0) return 0;
  json_t *v = json_loads(j->result, 0, NULL);
  const char *cid = json_string_value(json_object_get(v, "child"));
  const char *op = json_string_value(json_object_get(v, "op"));
  int ok = cid && strlen(cid) < 40;
  if (ok) {
    snprintf(id, 40, "%s", cid);
    if (compensate) *compensate = op && strcmp(op, "compensate") == 0;
  }
  json_decref(v);
  return ok;
}

int eng_child_pending(const struct jent *j) {
  char id[40];
  return pending_child(j, id, NULL);
}

/* What a wait on child r gives: {"ok": true, "data": ctx.data, ...} when it completed (a run) or
 * compensated (a compensation), else {"ok": false, "error": why, ...}. Malloc'd. */
static char *outcome(const struct sg_saga_row *r, int compensate) {
  struct sg_buf b;
  sg_buf_init(&b);
  const char *st = sg_status_name(r->status);
  /* (resolved or terminated: an operator answered for it) */
  int ok = compensate ? r->status == SG_ST_COMPENSATED || r->status == SG_ST_RESOLVED || r->status == SG_ST_TERMINATED
                      : r->status == SG_ST_COMPLETED;
  sg_buf_adds(&b, ok ? "{\"ok\":true" : "{\"ok\":false");
  if (ok && !compensate) { sg_buf_adds(&b, ",\"data\":"); sg_buf_adds(&b, r->data && *r->data ? r->data : "{}"); }
  if (!ok) {
    char *msg = compensate
      ? sg_asprintf("child saga %s %s could not be compensated: it is %s%s%s", r->type, r->id, st, r->error ? ": " : "",
                    r->error ? r->error : "")
      : sg_asprintf("child saga %s %s ended %s%s%s", r->type, r->id, st, r->error ? ": " : "", r->error ? r->error : "");
    sg_buf_adds(&b, ",\"error\":");
    sg_buf_add_json_str(&b, msg);
    free(msg);
  }
  sg_buf_adds(&b, ",\"id\":"); sg_buf_add_json_str(&b, r->id);
  sg_buf_adds(&b, ",\"type\":"); sg_buf_add_json_str(&b, r->type);
  sg_buf_adds(&b, ",\"status\":"); sg_buf_add_json_str(&b, st);
  sg_buf_adds(&b, "}");
  return sg_buf_steal(&b);
}

static void await_add(struct sg_engine *en, const char *id) {
  if (sg_map_get(&en->awaited, id)) return;
  char *k = sg_strdup(id);
  sg_map_put(&en->awaited, k, k);
}

static void await_del(struct sg_engine *en, const char *id) {
  free(sg_map_del(&en->awaited, id));
}

/* Every saga here waiting on child r gets its outcome (written at the commit), and those parked on
 * it go on. */
static void waiters_go_on(struct sg_engine *en, const struct sg_saga_row *r) {
  struct waiter { char id[40]; int seq; } *w = NULL;
  size_t n = 0, cap = 0;
  if (eng_txn(en) < 0) return;
  for (size_t i = 0; i < en->sagas.cap; i++) {
    if (!sg_map_live(&en->sagas, i)) continue;
    struct sg_saga *s = en->sagas.slots[i].val;
    if (s->terminal || s->adopting) continue; /* (one being taken over looks when it goes on) */
    for (int k = 0; k < s->njournal; k++) {
      struct jent *j = &s->journal[k];
      char cid[40];
      int comp = 0;
      if (!pending_child(j, cid, &comp) || strcmp(cid, r->id) != 0) continue;
      free(j->result);
      j->result = outcome(r, comp);
      j->done = 1;
      j->is_error = 0; /* the outcome says: ctx:run raises it (lua/saga.lua) */
      eng_journal_write(en, s, comp ? "child_compensate" : "run", j);
      struct waiter x = { .seq = j->seq };
      memcpy(x.id, s->row.id, sizeof x.id);
      PUSH(w, n, cap, x);
    }
  }
  for (size_t i = 0; i < n; i++) { /* each wake may change any saga: look each up again */
    struct sg_saga *s = sg_map_get(&en->sagas, w[i].id);
    if (!s || s->terminal || s->wait_seq != w[i].seq) continue;
    struct jent *j = eng_journal_find(s, w[i].seq);
    if (j && j->done) eng_wake(en, s, j);
  }
  free(w);
}

void eng_child_finished(struct sg_engine *en, struct sg_saga *s) {
  if (!sg_map_get(&en->awaited, s->row.id)) return;
  await_del(en, s->row.id);
  waiters_go_on(en, &s->row);
}

/* ---- a child owned elsewhere, read from the store ---- */

static void on_child_read(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  en->child_polls--;
  int usable = rd->gen == en->st.fenced && !en->stopped && !en->broken && !en->stalled && !en->committing &&
               !en->reloading;
  if (usable && rd->rc >= 0 && !sg_map_get(&en->sagas, rd->a) && sg_map_get(&en->awaited, rd->a)) {
    if (rd->rc == 0) { /* gone (retention): say so rather than wait for ever */
      struct sg_saga_row gone = { .type = "?", .status = SG_ST_COMPENSATION_FAILED,
                                  .error = "it is no longer in the store" };
      snprintf(gone.id, sizeof gone.id, "%s", rd->a);
      await_del(en, rd->a);
      waiters_go_on(en, &gone);
    } else if (SG_ST_TERMINAL(rd->rows[0].status)) {
      await_del(en, rd->a);
      waiters_go_on(en, &rd->rows[0]);
    }
  }
  sg_read_free(rd);
}

static void read_child(struct sg_engine *en, const char *id) {
  struct sg_read *rd = sg_read_new(SG_READ_SAGA, id, NULL, on_child_read, en);
  rd->gen = en->st.fenced;
  en->child_polls++;
  sg_engine_read(en, rd);
}

void eng_child_waiting(struct sg_engine *en, struct sg_saga *s, struct jent *j) {
  char cid[40];
  int comp = 0;
  if (!pending_child(j, cid, &comp)) return;
  await_add(en, cid);
  struct sg_saga *c = sg_map_get(&en->sagas, cid);
  if (c && !c->terminal && !SG_ST_TERMINAL(c->row.status)) return; /* it wakes s when it ends */
  if (c) { /* ended in this batch */
    struct sg_saga_row r = c->row;
    await_del(en, cid);
    waiters_go_on(en, &r);
    return;
  }
  (void)s;
  read_child(en, cid); /* another host's, or ended while s was not loaded */
}

void eng_children_tick(struct sg_engine *en) {
  if (!en->awaited.n || en->child_polls || en->sweeps % 8) return;
  /* the ids first: an answer may come at once (SQLite) and wake parents that change the map */
  char (*ids)[40] = NULL;
  size_t n = 0, cap = 0;
  for (size_t i = 0; i < en->awaited.cap; i++) {
    if (!sg_map_live(&en->awaited, i) || sg_map_get(&en->sagas, en->awaited.slots[i].key)) continue;
    if (n == cap) { cap = cap ? cap * 2 : 8; ids = sg_xrealloc(ids, cap * sizeof *ids); }
    snprintf(ids[n++], 40, "%s", en->awaited.slots[i].key);
  }
  for (size_t i = 0; i < n; i++) read_child(en, ids[i]);
  free(ids);
}

void eng_children_drop(struct sg_engine *en) {
  for (size_t i = 0; i < en->awaited.cap; i++)
    if (sg_map_live(&en->awaited, i)) free(en->awaited.slots[i].val);
  sg_map_free(&en->awaited);
}

/* ---- starting and waiting ---- */

/* s's action step started child id: remembered on s (compensated with the step) */
static void add_child(struct sg_engine *en, struct sg_saga *s, const char *id, const char *type, int keyed) {
  json_t *a = s->row.children ? json_loads(s->row.children, 0, NULL) : NULL;
  if (!json_is_array(a)) { json_decref(a); a = json_array(); }
  json_t *c = json_pack("{s:s, s:s, s:i}", "id", id, "type", type, "step", s->row.step);
  if (keyed) json_object_set_new(c, "key", json_true()); /* {id = key}: the step's retries share it */
  json_array_append_new(a, c);
  free(s->row.children);
  s->row.children = json_dumps(a, JSON_COMPACT);
  json_decref(a);
  eng_mark_dirty(en, s);
}

int eng_child_ran(const struct sg_saga *s) {
  if (!eng_child_in_step(s->row.children, s->row.step)) return 0; /* (a child it only attached to is not its own) */
  for (int k = 0; k < s->njournal; k++) { /* a child that completed (one that gave up undoes itself) */
    const struct jent *j = &s->journal[k];
    if (strcmp(j->kind, "run") == 0 && j->done && j->result && strncmp(j->result, "{\"ok\":true", 10) == 0) return 1;
  }
  return 0;
}

int eng_child_in_step(const char *children, int step) {
  if (!children) return 0;
  json_t *a = json_loads(children, 0, NULL);
  size_t i;
  json_t *c;
  int found = 0;
  json_array_foreach(a, i, c) if (json_integer_value(json_object_get(c, "step")) == step) found = 1;
  json_decref(a);
  return found;
}

/* The wait of s's operation seq on child id: its outcome now (0, *result) if the child has ended, else
 * a pending entry (1). kind: "run" or "child_compensate". */
static int wait_child(struct sg_engine *en, struct sg_saga *s, int seq, const char *id, int compensate, char **result,
                      char **err) {
  const char *kind = compensate ? "child_compensate" : "run";
  struct sg_saga *c = sg_map_get(&en->sagas, id);
  int ended = 0;
  if (c && (c->terminal || SG_ST_TERMINAL(c->row.status))) {
    *result = outcome(&c->row, compensate);
    ended = 1;
  } else if (!c) {
    struct sg_saga_row r = {0};
    struct sg_error e = {0};
    int found = en->store->ops->saga_get(en->store, id, &r, &e);
    if (found < 0) { *err = sg_asprintf("ctx:run: child saga %s: %s", id, e.msg); return -1; }
    if (!found && compensate) { *result = sg_strdup("{\"ok\":true,\"gone\":true}"); ended = 1; }
    else if (!found) { *err = sg_asprintf("ctx:run: child saga %s is not in the store", id); return -1; }
    else if (SG_ST_TERMINAL(r.status)) { *result = outcome(&r, compensate); ended = 1; }
    sg_store_saga_row_free(&r);
  }
  if (ended) {
    eng_journal_write(en, s, kind, eng_journal_add(s, seq, 1, 0, *result));
    return 0;
  }
  char *pending = sg_asprintf("{\"child\":\"%s\",\"op\":\"%s\"}", id, compensate ? "compensate" : "run");
  eng_journal_write(en, s, kind, eng_journal_add(s, seq, 0, 0, pending));
  free(pending);
  await_add(en, id);
  return 1;
}

static void forwarded(void *ud, const struct sg_error *e) {
  (void)ud;
  if (e) sg_warn("child saga: the compensation asked of its owner: %s", e->msg);
}

/* Several hosts: a running child another host owns is asked to give up, through its owner. */
static void ask_owner(struct sg_engine *en, const char *id, const char *why) {
  struct sg_error e = {0};
  if (en->multi && sg_engine_forward(en, id, "compensate", why, "parent saga", 30000, forwarded, NULL, &e) < 0)
    sg_warn("child saga %s: cannot ask its owner to compensate it: %s", id, e.msg);
}

/* a running child gives up: it compensates what it completed */
static void give_up(struct sg_engine *en, struct sg_saga *c, const char *why) {
  eng_hist_event(en, c, "parent_compensate", why);
  eng_timer_cancel(en, &c->t_retry);
  eng_end_attempt(en, c, "failed", why);
  eng_give_up(en, c, why);
}

/* a completed child compensates its steps (made live again if it was not) */
static void revive(struct sg_engine *en, struct sg_saga *c, const char *why) {
  if (c->terminal) { /* it completed in this batch: it is no longer done */
    for (size_t i = 0; i < en->ndone; i++)
      if (en->done[i] == c) { memmove(en->done + i, en->done + i + 1, (en->ndone - i - 1) * sizeof *en->done); en->ndone--; break; }
    c->terminal = 0;
  }
  eng_hist_event(en, c, "parent_compensate", why);
  free(c->row.error);
  c->row.error = sg_strdup(why);
  c->row.status = SG_ST_COMPENSATING;
  eng_event(en, SG_EV_COMPENSATING, c, NULL, why, 0);
  sg_info("saga %s %s: %s; compensating", c->row.type, c->row.id, why);
  eng_compensate_from(en, c, c->def->nsteps - 1);
}

static struct sg_saga *load(struct sg_engine *en, const struct sg_saga_row *r, char **err) {
  struct sg_error e = {0};
  const struct sg_def *d = en->runner.def_get(en->runner.ud, r->type, r->def_hash, &e);
  if (!d) { *err = sg_asprintf("child saga %s cannot be compensated: %s", r->id, e.msg); return NULL; }
  struct sg_saga *c = eng_saga_new(r);
  c->def = d;
  sg_map_put(&en->sagas, c->row.id, c);
  en->st.live++;
  return c;
}

/* compensation of s's step: child id is compensated (op "child_compensate") */
static int compensate_child(struct sg_engine *en, struct sg_saga *s, const char *id, int seq, char **result, char **err) {
  if (!id || strlen(id) >= 40) { *err = sg_strdup("child_compensate: malformed child id"); return -1; }
  char *why = sg_asprintf("compensated by its parent saga %s", s->row.id);
  struct sg_saga *c = sg_map_get(&en->sagas, id);
  if (!c) {
    struct sg_saga_row r = {0};
    struct sg_error e = {0};
    int found = en->store->ops->saga_get(en->store, id, &r, &e);
    if (found < 0) { *err = sg_asprintf("child saga %s: %s", id, e.msg); free(why); return -1; }
    if (found && r.status == SG_ST_COMPLETED) c = load(en, &r, err);
    else if (found && !SG_ST_TERMINAL(r.status)) ask_owner(en, id, why);
    sg_store_saga_row_free(&r);
    if (found && !c && *err) { free(why); return -1; }
    if (c) revive(en, c, why);
  } else if (c->row.status == SG_ST_COMPLETED) {
    revive(en, c, why);
  } else if (!c->terminal && c->row.status == SG_ST_RUNNING) {
    give_up(en, c, why);
  }
  free(why);
  return wait_child(en, s, seq, id, 1, result, err);
}

int eng_child_perform(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                      char **err) {
  if (op->op == SG_OP_CHILD_COMPENSATE) return compensate_child(en, s, op->name, seq, result, err);
  const char *type = op->name, *input = op->payload ? op->payload : "{}", *key = op->key;
  if (!type || !*type) { *err = sg_strdup("ctx:run: no saga type"); return -1; }
  char own_key[160];
  if (!key) {
    snprintf(own_key, sizeof own_key, "%s.%d.%c.%d.%d", s->row.id, s->row.step,
             s->row.phase == SG_PH_ACTION ? 'a' : 'c', s->row.attempt, seq);
  }
  char id[40];
  int existed = 0;
  struct sg_error e = {0};
  if (nesting >= NEST_MAX) {
    *err = sg_asprintf("ctx:run %s: child sagas nested more than %d deep at once (does a saga start itself before"
                       " its first wait?)", type, NEST_MAX);
    return -1;
  }
  /* a key of the parent's own is new unless the journal has it: no look-up */
  nesting++;
  int rc = eng_start_child(en, type, input, key ? key : own_key, !key, id, &existed, &e);
  nesting--;
  if (rc < 0) {
    *err = sg_asprintf("ctx:run %s: %s", type, e.msg);
    return -1;
  }
  struct sg_saga *c = sg_map_get(&en->sagas, id);
  if (c && !existed) {
    c->row.parent = sg_strdup(s->row.id);
    eng_mark_dirty(en, c);
    if (s->row.phase == SG_PH_ACTION) add_child(en, s, id, type, key != NULL);
  }
  return wait_child(en, s, seq, id, 0, result, err);
}

void eng_child_abandon(struct sg_engine *en, struct sg_saga *s, const char *why) {
  char (*ids)[40] = NULL;
  size_t n = 0, cap = 0;
  for (int k = 0; k < s->njournal; k++) {
    struct jent *j = &s->journal[k];
    char cid[40];
    int comp = 0;
    if (!pending_child(j, cid, &comp) || comp) continue;
    /* s waits no more: a child that ends now must not wake it */
    free(j->result);
    j->result = sg_strdup("{\"ok\":false,\"error\":\"abandoned\"}");
    j->done = 1;
    if (n == cap) { cap = cap ? cap * 2 : 4; ids = sg_xrealloc(ids, cap * sizeof *ids); }
    memcpy(ids[n++], cid, 40);
  }
  if (!n) return;
  s->wait_seq = 0;
  char *msg = sg_asprintf("its parent saga %s gave up: %s", s->row.id, why);
  for (size_t i = 0; i < n; i++) {
    struct sg_saga *c = sg_map_get(&en->sagas, ids[i]);
    if (c && !c->terminal && c->row.status == SG_ST_RUNNING) give_up(en, c, msg);
    else if (!c) ask_owner(en, ids[i], msg);
  }
  free(msg);
  free(ids);
}
