/* signals: named messages to one saga, kept until its ctx:wait takes them (see signals.h).
 *
 * A live saga's signals are held in its struct sigq: read from the store the first time the saga needs
 * them (its first wait, or the first signal to it on this host), then kept up to date by this host
 * (signals it receives) and by mail (signals other hosts stored: eng_signal_poke reads the store
 * again). A wait takes the first pending signal of its name; the take (signal_done) and the wait's
 * journal row are written in the same batch, so after a crash the replay finds the payload in the
 * journal and the signal no longer pending. A wait with nothing to take parks with its name in its
 * journal row's result (done = 0), the saga keeps no coroutine meanwhile, and a signal of that name
 * (or the wait's timeout, TM_WAIT_TIMEOUT) wakes it.
 *
 * A taken signal's journal result says which signal it was ({"signal": id, "name", "seq", "payload"},
 * lua/saga.lua returns the payload), so that an attempt that fails gives back what it took
 * (eng_signal_give_back): the retry's wait takes the same signal again. */
#include <inttypes.h>
#include <stdio.h>

#include <jansson.h>

#include "engine_int.h"
#include "signals.h"

/* One signal of a saga, as this host knows it. */
struct sig {
  char id[40];          /* the row's id */
  int64_t seq;          /* arrival order */
  char *name;           /* its name */
  char *payload;        /* JSON; NULL once taken */
  char *key;            /* idempotency key or NULL */
  int taken;            /* a wait took it (its row is marked in this batch or an earlier one) */
  int takes;            /* times a wait took it here (an attempt that failed gives it back) */
};

/* The signals of one live saga, in arrival order (taken ones stay: their keys answer repeats). */
struct sigq {
  struct sig *v;
  size_t n, cap;
};

int sg_signal_name_ok(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 100 || (name[0] >= '0' && name[0] <= '9') || name[0] == '-') return 0;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
      return 0;
  return 1;
}

/* Arrival order: microseconds since the epoch, made unique within this process. */
static int64_t next_seq(void) {
  static int64_t last;
  int64_t now = sg_now_ms() * 1000;
  if (now <= last) now = last + 1;
  last = now;
  return now;
}

/* ---- the queue ---- */

static void sig_clear(struct sig *g) {
  free(g->name);
  free(g->payload);
  free(g->key);
}

void eng_signal_free(struct sg_saga *s) {
  struct sigq *q = s->sigq;
  if (!q) return;
  for (size_t i = 0; i < q->n; i++) sig_clear(&q->v[i]);
  free(q->v);
  free(q);
  s->sigq = NULL;
}

/* a signal into the queue at its place in arrival order (the end, but for one given back) */
static struct sig *q_add(struct sigq *q, const char *id, int64_t seq, const char *name, const char *payload,
                         const char *key) {
  struct sig g = {0};
  if (id) snprintf(g.id, sizeof g.id, "%s", id);
  else sg_uuid(g.id);
  g.seq = seq;
  g.name = sg_strdup(name);
  g.payload = sg_strdup(payload);
  g.key = key ? sg_strdup(key) : NULL;
  PUSH(q->v, q->n, q->cap, g);
  size_t i = q->n - 1;
  for (; i > 0 && q->v[i - 1].seq > seq; i--) q->v[i] = q->v[i - 1];
  q->v[i] = g;
  return &q->v[i];
}

static struct sig *q_find_id(struct sigq *q, const char *id) {
  for (size_t i = 0; i < q->n; i++)
    if (!strcmp(q->v[i].id, id)) return &q->v[i];
  return NULL;
}

static int q_has_key(const struct sigq *q, const char *key) {
  for (size_t i = 0; q && key && i < q->n; i++)
    if (q->v[i].key && !strcmp(q->v[i].key, key)) return 1;
  return 0;
}

/* the first pending signal of that name, or -1 */
static long q_first(const struct sigq *q, const char *name) {
  for (size_t i = 0; i < q->n; i++)
    if (!q->v[i].taken && !strcmp(q->v[i].name, name)) return (long)i;
  return -1;
}

struct merge_ctx {
  struct sg_engine *en;
  struct sigq *q;
  int failed;
  struct sg_error e;
};

/* a pending row of the store: added unless known (by id); a repeat of a known key that another host
 * stored under another id (both hosts looked before either committed) is marked taken, never given */
static int merge_cb(void *ud, const struct sg_signal_row *r) {
  struct merge_ctx *mc = ud;
  if (q_find_id(mc->q, r->id)) return 0;
  if (r->idem_key && q_has_key(mc->q, r->idem_key)) {
    if (mc->en->store->ops->signal_done(mc->en->store, r->id, sg_now_ms(), &mc->e) < 0) { mc->failed = 1; return 1; }
    return 0;
  }
  q_add(mc->q, r->id, r->seq, r->name, r->payload, r->idem_key);
  return 0;
}

/* Reads the saga's pending signals from the store into its queue (made if needed). */
static int q_load(struct sg_engine *en, struct sg_saga *s, struct sg_error *e) {
  if (!s->sigq) s->sigq = sg_xcalloc(1, sizeof *s->sigq);
  if (!s->stored) return 0; /* started in this batch: nothing can be stored for it yet */
  if (eng_txn(en) < 0) return sg_errorf(e, SG_E_UNAVAILABLE, "the store cannot write now");
  struct merge_ctx mc = { .en = en, .q = s->sigq };
  if (en->store->ops->signal_each(en->store, s->row.id, merge_cb, &mc, e) < 0) return -1;
  if (mc.failed) {
    *e = mc.e;
    eng_store_failed(en, "signal", e);
    return -1;
  }
  return 0;
}

/* The saga's queue, read from the store the first time. NULL with e when the store cannot answer. */
static struct sigq *q_get(struct sg_engine *en, struct sg_saga *s, struct sg_error *e) {
  if (s->sigq) return s->sigq;
  if (q_load(en, s, e) < 0) {
    eng_signal_free(s);
    return NULL;
  }
  return s->sigq;
}

/* A wait of s takes signal i: marked in the store (this batch); its journal result (malloc'd) returned:
 * {"signal":"<id>","name":"<name>","seq":<seq>,"payload":<payload>}, in that form exactly (taken_parse) */
static char *q_take(struct sg_engine *en, struct sg_saga *s, struct sigq *q, size_t i) {
  struct sig *g = &q->v[i];
  struct sg_error e = {0};
  if (eng_txn(en) == 0 && en->store->ops->signal_done(en->store, g->id, sg_now_ms(), &e) < 0)
    eng_store_failed(en, "signal", &e);
  eng_hist_event(en, s, "signal_delivered", g->name);
  g->taken = 1;
  g->takes++;
  char *result = sg_asprintf("{\"signal\":\"%s\",\"name\":\"%s\",\"seq\":%" PRId64 ",\"payload\":%s}", g->id, g->name,
                             g->seq, g->payload);
  free(g->payload);
  g->payload = NULL;
  return result;
}

/* a taken signal's journal result read back (q_take's form): id, name (points into r, cut), seq, payload */
static int taken_parse(char *r, char id[40], char **name, int64_t *seq, char **payload) {
  static const char p1[] = "{\"signal\":\"", p2[] = "\",\"name\":\"", p3[] = "\",\"seq\":", p4[] = ",\"payload\":";
  if (!r || strncmp(r, p1, sizeof p1 - 1) != 0) return 0;
  char *at = r + sizeof p1 - 1, *end = strstr(at, p2);
  if (!end || end - at >= 40) return 0;
  memcpy(id, at, (size_t)(end - at));
  id[end - at] = 0;
  *name = end + sizeof p2 - 1;
  if (!(end = strstr(*name, p3))) return 0;
  *end = 0;
  *seq = strtoll(end + sizeof p3 - 1, &at, 10);
  if (strncmp(at, p4, sizeof p4 - 1) != 0) return 0;
  *payload = at + sizeof p4 - 1;
  size_t n = strlen(*payload);
  if (n < 2 || (*payload)[n - 1] != '}') return 0;
  (*payload)[n - 1] = 0;
  return 1;
}

void eng_signal_give_back(struct sg_engine *en, struct sg_saga *s) {
  for (int k = 0; k < s->njournal; k++) {
    struct jent *j = &s->journal[k];
    if (!j->done || j->is_error || strcmp(j->kind, "wait") != 0 || !j->result) continue;
    char *r = sg_strdup(j->result), id[40], *name, *payload;
    int64_t seq;
    if (taken_parse(r, id, &name, &seq, &payload)) {
      struct sg_error e = {0};
      struct sigq *q = q_get(en, s, &e); /* (the other pending ones first: after a restart it is not read yet) */
      struct sig *g = q ? q_find_id(q, id) : NULL;
      if (g && g->taken) {
        g->taken = 0;
        g->payload = sg_strdup(payload);
      } else if (q && !g) {
        q_add(q, id, seq, name, payload, NULL);
      }
      if (!q) sg_warn("saga %s: its signals could not be read (%s): signal %s is given back in the store only", s->row.id,
                      e.msg, id);
      if (eng_txn(en) == 0 && en->store->ops->signal_done(en->store, id, 0, &e) < 0) eng_store_failed(en, "signal", &e);
      eng_hist_event(en, s, "signal_given_back", name);
    }
    free(r);
  }
}

/* ---- waits ---- */

int eng_signal_wait(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                    char **err) {
  const char *name = op->name;
  if (!sg_signal_name_ok(name)) {
    *err = sg_asprintf("ctx:wait: '%.100s' is not a signal name (1 to 100 letters, digits, '_' or '-', not starting with a digit or '-')",
                       name ? name : "");
    return -1;
  }
  struct sg_error e = {0};
  struct sigq *q = q_get(en, s, &e);
  if (!q) {
    *err = sg_asprintf("ctx:wait %s: the saga's signals could not be read: %s", name, e.msg);
    return -1;
  }
  long i = q_first(q, name);
  if (i >= 0) {
    char *payload = q_take(en, s, q, (size_t)i);
    struct jent *j = eng_journal_add(s, seq, 1, 0, payload);
    eng_journal_write(en, s, "wait", j);
    *result = payload;
    return 0;
  }
  /* parked: the journal row keeps the name (a restart or another host knows what it waits for) */
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_add_json_str(&b, name);
  struct jent *j = eng_journal_add(s, seq, 0, 0, b.data);
  sg_buf_free(&b);
  eng_journal_write(en, s, "wait", j);
  int64_t timeout_ms = op->ms;
  if (timeout_ms > 0) {
    eng_timer_cancel(en, &s->t_wait);
    s->t_wait = eng_timer_new(en, s, TM_WAIT_TIMEOUT, sg_now_ms() + timeout_ms, seq);
  }
  return 1;
}

/* the name a parked wait waits for (its journal result, a JSON string of a name: no escapes) */
static int waited_name(const struct jent *j, char out[128]) {
  const char *r = j->result;
  size_t n = r ? strlen(r) : 0;
  if (n < 3 || n - 2 >= 128 || r[0] != '"' || r[n - 1] != '"') return 0;
  memcpy(out, r + 1, n - 2);
  out[n - 2] = 0;
  return 1;
}

/* the wait s is parked on, or NULL */
static struct jent *parked_wait(struct sg_saga *s) {
  if (!s->wait_seq || s->terminal || s->adopting) return NULL;
  struct jent *j = eng_journal_find(s, s->wait_seq);
  return j && !j->done && !strcmp(j->kind, "wait") ? j : NULL;
}

void eng_signal_offer(struct sg_engine *en, struct sg_saga *s) {
  struct jent *j = parked_wait(s);
  char name[128];
  if (!j || !waited_name(j, name)) return;
  struct sg_error e = {0};
  struct sigq *q = q_get(en, s, &e);
  if (!q) {
    sg_warn("saga %s: its signals could not be read: %s (read again when the next one comes)", s->row.id, e.msg);
    return;
  }
  long i = q_first(q, name);
  if (i < 0) return;
  free(j->result);
  j->result = q_take(en, s, q, (size_t)i);
  j->done = 1;
  j->is_error = 0;
  eng_journal_write(en, s, "wait", j);
  eng_wake(en, s, j);
}

void eng_signal_timeout(struct sg_engine *en, struct sg_saga *s, int seq) {
  struct jent *j = eng_journal_find(s, seq);
  if (!j || j->done) return;
  char name[128];
  eng_hist_event(en, s, "signal_wait_timed_out", waited_name(j, name) ? name : NULL);
  free(j->result);
  j->result = sg_strdup("null");
  j->done = 1;
  j->is_error = 1; /* ctx:wait returns nil */
  eng_journal_write(en, s, "wait", j);
  if (s->wait_seq == seq) eng_wake(en, s, j);
}

int eng_signal_poke(struct sg_engine *en, const char *id, struct sg_error *e) {
  struct sg_saga *s = sg_map_get(&en->sagas, id);
  if (!s || s->terminal || SG_ST_TERMINAL(s->row.status)) return 0; /* finished, or not this host's: nothing waits */
  if (q_load(en, s, e) < 0) { eng_signal_free(s); return -1; }
  eng_signal_offer(en, s);
  return 0;
}

/* ---- arrivals ---- */

static int finished(struct sg_engine *en, const char *id, int status, const struct sigq *q, const char *key,
                    const char **outcome, struct sg_error *e) {
  if (key) { /* a repeat of a signal it had is answered as such, not refused */
    int f = q_has_key(q, key) ? 1 : en->store->ops->signal_find(en->store, id, key, e);
    if (f < 0) return -1;
    if (f) { *outcome = "duplicate"; return 0; }
  }
  return sg_errorf(e, SG_E_CONFLICT, "saga %s is %s: a finished saga takes no more signals", id, sg_status_name(status));
}

static int put(struct sg_engine *en, const char *sig_id, int64_t seq, const char *saga_id, const char *name,
               const char *payload, const char *key, struct sg_error *e) {
  int64_t now = sg_now_ms();
  struct sg_signal_row r = { .id = sig_id, .saga_id = saga_id, .name = name, .payload = payload, .idem_key = key,
                             .seq = seq, .received_at = now };
  if (en->store->ops->signal_put(en->store, &r, e) < 0) {
    eng_store_failed(en, "signal", e);
    return -1;
  }
  return 0;
}

static int arrive_live(struct sg_engine *en, struct sg_saga *s, const char *name, const char *payload, const char *key,
                       const char *via, const char **outcome, struct sg_error *e) {
  /* (a finished saga is live here only briefly: until the commit after its end, or an operator verb on it) */
  if (s->terminal || SG_ST_TERMINAL(s->row.status)) return finished(en, s->row.id, s->row.status, s->sigq, key, outcome, e);
  struct sigq *q = q_get(en, s, e);
  if (!q) return -1;
  if (key) {
    int f = q_has_key(q, key) ? 1 : en->store->ops->signal_find(en->store, s->row.id, key, e);
    if (f < 0) return -1;
    if (f) { *outcome = "duplicate"; return 0; }
  }
  struct sig *g = q_add(q, NULL, next_seq(), name, payload, key);
  char sig_id[40];
  snprintf(sig_id, sizeof sig_id, "%s", g->id);
  if (put(en, g->id, g->seq, s->row.id, name, payload, key, e) < 0) return -1;
  char *detail = sg_asprintf("%s (%s)", name, via);
  eng_hist_event(en, s, "signal_received", detail);
  free(detail);
  eng_signal_offer(en, s);
  g = q_find_id(q, sig_id);
  *outcome = g && g->takes ? "delivered" : "kept"; /* (taken, even if its attempt failed and gave it back) */
  return 0;
}

/* A saga this host does not hold: finished, another host's (several hosts), or one whose definition
 * failed to load here. A signal for a running one is stored; its owner (if another host) is woken. */
static int arrive_stored(struct sg_engine *en, const char *id, const char *name, const char *payload, const char *key,
                         const char *via, const char **outcome, struct sg_error *e) {
  struct sg_saga_row r = {0};
  int f = en->store->ops->saga_get(en->store, id, &r, e);
  if (f < 0) return -1;
  if (!f) return sg_errorf(e, SG_E_NOTFOUND, "no saga with id '%.60s'", id);
  int rc = 0;
  if (SG_ST_TERMINAL(r.status)) {
    rc = finished(en, id, r.status, NULL, key, outcome, e);
    goto out;
  }
  if (key && (f = en->store->ops->signal_find(en->store, id, key, e)) != 0) {
    if (f < 0) rc = -1;
    else *outcome = "duplicate";
    goto out;
  }
  char sig_id[40];
  sg_uuid(sig_id);
  if ((rc = put(en, sig_id, next_seq(), id, name, payload, key, e)) < 0) goto out;
  char *detail = sg_asprintf("%s (%s, kept for its owner)", name, via);
  int64_t now = sg_now_ms();
  struct sg_hist_row h = { .saga_id = id, .step = r.step, .step_name = sg_engine_step_name(en, &r), .phase = -1,
                           .attempt = r.attempt, .status = "signal_received", .started_at = now, .finished_at = now,
                           .error = detail };
  rc = en->store->ops->hist_insert(en->store, &h, e);
  free(detail);
  /* the owner takes it from the store when woken (owner.c reads the mail: the verb "signal") */
  if (rc == 0 && en->multi) rc = en->store->ops->mail_put(en->store, id, "verb", "{\"verb\":\"signal\"}", e);
  if (rc < 0) { eng_store_failed(en, "signal", e); goto out; }
  *outcome = "kept";
out:
  sg_store_saga_row_free(&r);
  return rc;
}

/* payload as stored: {} for none or null; NULL + e when it is not JSON or too big */
static char *payload_norm(struct sg_engine *en, const char *payload, struct sg_error *e) {
  if (!payload || !*payload) return sg_strdup("{}");
  json_error_t je;
  json_t *j = json_loads(payload, JSON_DECODE_ANY, &je);
  if (!j) {
    sg_errorf(e, SG_E_INVALID, "the signal's payload is not valid JSON: %s at line %d, column %d", je.text, je.line,
              je.column);
    return NULL;
  }
  int null = json_is_null(j);
  json_decref(j);
  if (en->cfg.max_payload > 0 && (int64_t)strlen(payload) > en->cfg.max_payload) {
    sg_errorf(e, SG_E_TOOBIG, "the signal's payload is %zu bytes, over the limit of %" PRId64 " bytes", strlen(payload),
              en->cfg.max_payload);
    return NULL;
  }
  return sg_strdup(null ? "{}" : payload);
}

static int arrive(struct sg_engine *en, const char *id, const char *name, const char *payload, const char *key,
                  const char *via, const char **outcome, struct sg_error *e) {
  if (!sg_signal_name_ok(name))
    return sg_errorf(e, SG_E_INVALID, "'%.100s' is not a signal name: use 1 to 100 letters, digits, '_' or '-', starting with a letter or '_'",
                     name ? name : "");
  if (key && (!*key || strlen(key) > 200)) return sg_errorf(e, SG_E_INVALID, "the idempotency key must be 1 to 200 characters");
  if (!id || strlen(id) >= 40) return sg_errorf(e, SG_E_NOTFOUND, "no saga with id '%.60s'", id ? id : "");
  if (en->broken || en->stopped) return sg_errorf(e, SG_E_UNAVAILABLE, "the host is stopping: the signal was not stored; send it again");
  if (en->stalled || en->reloading) return eng_refuse_stalled(en, e);
  char *pl = payload_norm(en, payload, e);
  if (!pl) return -1;
  int rc;
  if (eng_txn(en) < 0) rc = sg_errorf(e, SG_E_UNAVAILABLE, "the store cannot write now: the signal was not stored");
  else {
    struct sg_saga *s = sg_map_get(&en->sagas, id);
    rc = s && !s->adopting ? arrive_live(en, s, name, pl, key, via, outcome, e)
                           : arrive_stored(en, id, name, pl, key, via, outcome, e);
  }
  if (rc == 0)
    sg_info("saga %s: signal %s (%s%s%s): %s", id, name, via, key ? ", key " : "", key ? key : "", *outcome);
  free(pl);
  return rc;
}

/* answered once the signal is durable */
struct sent {
  sg_signal_sent_cb cb;
  void *ud;
  const char *outcome;       /* static */
};

static void on_sent_committed(void *ud, int status) {
  struct sent *r = ud;
  if (status == 0) {
    r->cb(r->ud, r->outcome, NULL);
  } else {
    struct sg_error e = {0};
    sg_errorf(&e, SG_E_UNAVAILABLE, "%s", status == -2 ? "this host lost its sagas to another host (its lease ran out)"
              " before the signal was committed; it was not stored: send it again"
              : "the store could not commit the signal; it was not stored: send it again");
    r->cb(r->ud, NULL, &e);
  }
  free(r);
}

void sg_engine_signal(struct sg_engine *en, const char *id, const char *name, const char *payload, const char *key,
                      const char *via, sg_signal_sent_cb cb, void *ud) {
  struct sg_error e = {0};
  const char *outcome = NULL;
  if (arrive(en, id, name, payload, key, via, &outcome, &e) < 0) {
    cb(ud, NULL, &e);
    return;
  }
  struct sent *r = sg_xcalloc(1, sizeof *r);
  r->cb = cb;
  r->ud = ud;
  r->outcome = outcome;
  sg_engine_after_commit(en, on_sent_committed, r);
}

/* ---- over AMQP ---- */

struct by_key {
  char id[40];
  int live;                  /* the one found is running or compensating */
};

/* the newest running or compensating saga with the key, else the newest finished one */
static int by_key_cb(void *ud, const struct sg_saga_row *r) {
  struct by_key *k = ud;
  if (!SG_ST_TERMINAL(r->status)) {
    snprintf(k->id, sizeof k->id, "%s", r->id);
    k->live = 1;
    return 1;
  }
  if (!k->id[0]) snprintf(k->id, sizeof k->id, "%s", r->id);
  return 0;
}

static void reject(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, const char *why) {
  sg_warn("signal message %s dead-lettered: %s", m->message_id ? m->message_id : "?", why);
  en->tr->ops->nack(en->tr, tag, m, why);
}

int eng_signal_message(struct sg_engine *en, const struct sg_msg *m, uint64_t tag) {
  if (m->kind != SG_MSG_SIGNAL) return 0;
  char why[400];
  const char *signal = sg_msg_header(m, SG_HDR_SIGNAL), *saga_key = sg_msg_header(m, SG_HDR_SAGA_KEY);
  if (!signal || !*signal) {
    reject(en, m, tag, "signal has no signal-name header: set it to the name the saga's ctx:wait waits for");
    return 1;
  }
  struct sg_error e = {0};
  struct by_key k = {0};
  if (m->saga_id && *m->saga_id) {
    snprintf(k.id, sizeof k.id, "%.39s", m->saga_id);
    if (strlen(m->saga_id) >= sizeof k.id) { /* no saga has such an id */
      snprintf(why, sizeof why, "no saga with id '%.60s'", m->saga_id);
      reject(en, m, tag, why);
      return 1;
    }
  } else if (m->saga_type && *m->saga_type && saga_key && *saga_key) {
    struct sg_saga_filter f = { .status = -1, .type = m->saga_type, .key = saga_key, .limit = 100, .desc = 1 };
    if (en->store->ops->saga_list(en->store, &f, by_key_cb, &k, &e) < 0) {
      sg_warn("signal message %s: finding its saga: %s (handled again later)", m->message_id, e.msg);
      eng_park_delivery(en, m, tag, 0);
      return 1;
    }
    if (!k.id[0]) {
      snprintf(why, sizeof why, "no saga of type '%.100s' with key '%.200s'", m->saga_type, saga_key);
      reject(en, m, tag, why);
      return 1;
    }
  } else {
    reject(en, m, tag, "signal names no saga: set the saga-id header, or the saga-type and saga-key headers");
    return 1;
  }
  const char *outcome = NULL;
  if (arrive(en, k.id, signal, m->body, m->message_id, en->tr->ops->name, &outcome, &e) < 0) {
    if (e.code == SG_E_UNAVAILABLE && !en->broken && !en->stopped) { eng_park_delivery(en, m, tag, 0); return 1; }
    if (e.code == SG_E_UNAVAILABLE) return 1; /* not acked: the broker delivers it again */
    reject(en, m, tag, e.msg);
    return 1;
  }
  struct pending_ack a = { tag };
  PUSH(en->acks, en->nacks, en->capacks, a); /* acked after the commit that holds it */
  return 1;
}
