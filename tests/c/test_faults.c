/* test_faults: fault injection in the in-process transport, and sg_host_crash.
 *
 * The transport part drives transport_local.c on its own, with a consumer that records every delivery
 * (message id, redelivered flag, the time it came) and acks it at once, and records every confirm:
 * the same seed twice gives the same deliveries in the same order (a different seed another order);
 * duplicate = 1 delivers each message twice, both fresh (redelivered 0); drop = 1 delivers each
 * message once, after a re-send 200..2000 ms later; a delay holds a message until the clock reaches
 * its due time (a poke before that releases nothing); every outbox id is confirmed exactly once
 * (duplicates, re-sends and a row published twice included); saga.events is never faulted.
 * Times are real here (sg_now_ms): the kit's virtual clock is not needed to test the transport.
 *
 * The host part runs a saga script (four steps, one compensation) on a temporary directory with
 * duplicates, reorders and small delays, crashes the host after the k-th loop iteration that leaves
 * a batch uncommitted (k = 0..12, two seeds each; a few runs with drops too), reopens it on the same database and runs it to the end: every acknowledged
 * saga is there in its right terminal status, each step phase recorded once (no doubled transition),
 * nothing left in the outbox or the timers; with k = 0 nothing was committed, so nothing is there.
 * The handlers' runs are counted: with faults on every call goes through the transport (so the
 * faults reach it), a handler runs once per message id (a duplicate is answered by the saga's
 * journal), and the reopened host runs none whose attempt had ended or whose answer was journaled
 * before the crash. With SG_FAULT_PG=postgres://user@host:port/ the crash runs are made on PostgreSQL
 * as well (a database sg_test_faults is dropped and created there; the statuses are read through the
 * store, the handler runs checked within each host). */
#include <ev.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine_int.h" /* the runner, to count the handlers' runs */
#include "host.h"
#include "transport.h"

/* ---- the transport alone ---- */

#define MAXD 512
struct rec {
  struct sg_transport *t;
  int n;                       /* deliveries */
  char ids[MAXD][16];
  int redelivered[MAXD];
  int64_t at[MAXD];            /* sg_now_ms() when it came */
  int nconf;
  int64_t conf[MAXD];          /* confirmed outbox ids, in order */
};

static void r_message(void *ud, const struct sg_msg *m, uint64_t tag, int redelivered) {
  struct rec *r = ud;
  if (r->n < MAXD) {
    snprintf(r->ids[r->n], sizeof r->ids[0], "%s", m->message_id);
    r->redelivered[r->n] = redelivered;
    r->at[r->n] = sg_now_ms();
    r->n++;
  }
  r->t->ops->ack(r->t, tag);
}
static void r_confirm(void *ud, int64_t id) {
  struct rec *r = ud;
  if (r->nconf < MAXD) r->conf[r->nconf++] = id;
}
static void r_reject(void *ud, int64_t id, const char *why) { (void)ud; (void)id; (void)why; }
static void r_ready(void *ud) { (void)ud; }

static struct sg_transport *tr_new(struct ev_loop *loop, struct rec *r) {
  memset(r, 0, sizeof *r);
  struct sg_transport_events ev = { r, r_message, r_confirm, r_reject, r_ready };
  r->t = sg_transport_local_new(loop, &ev);
  return r->t;
}

static void publish(struct sg_transport *t, int i, int64_t outbox_id, enum sg_msg_kind kind) {
  char id[16];
  snprintf(id, sizeof id, "m%d", i);
  struct sg_msg m = { .outbox_id = outbox_id, .message_id = id, .kind = kind, .service = "svc", .name = "Do",
                      .reply_to = "local", .body = "{}" };
  struct sg_error e = {0};
  CHECK(t->ops->publish(t, &m, &e) == 0);
}

/* Publishes n messages (outbox ids 1..n) within one millisecond, so that the due times of the run
 * depend only on the draws (a run whose publishes straddle a millisecond is done again). */
static void publish_n(struct sg_transport *t, int n) {
  int64_t t0 = sg_now_ms();
  while (sg_now_ms() == t0) {}
  for (int i = 1; i <= n; i++) publish(t, i, i, SG_MSG_COMMAND);
}

/* Runs the loop until the transport is idle (bounded: 5 s). */
static void run_idle(struct ev_loop *loop, struct sg_transport *t) {
  int64_t end = sg_now_ms() + 5000;
  while (!sg_transport_local_idle(t) && sg_now_ms() < end) ev_run(loop, EVRUN_ONCE);
  CHECK(sg_transport_local_idle(t));
}

/* Each of 1..n confirmed exactly once. */
static void check_confirmed_once(const struct rec *r, int n, const char *what) {
  int ok = r->nconf == n;
  for (int i = 1; i <= n && ok; i++) {
    int c = 0;
    for (int j = 0; j < r->nconf; j++) c += r->conf[j] == i;
    ok = c == 1;
  }
  if (!CHECK(ok)) fprintf(stderr, "  %s: %d confirms for %d outbox ids, not one each\n", what, r->nconf, n);
}

/* One run with these faults: the deliveries in r (the transport is closed). */
static void run_faults(struct rec *r, const struct sg_faults *f, int n, struct sg_fault_counts *c) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_transport *t;
  for (int tries = 0; tries < 5; tries++) {
    t = tr_new(loop, r);
    sg_transport_local_faults(t, f);
    int64_t t0 = sg_now_ms();
    publish_n(t, n);
    if (sg_now_ms() == t0 + 1 || tries == 4) break; /* all in one millisecond */
    t->ops->close(t);
  }
  run_idle(loop, t);
  sg_transport_local_counts(t, c);
  t->ops->close(t);
  ev_loop_destroy(loop);
}

static int same_deliveries(const struct rec *a, const struct rec *b) {
  if (a->n != b->n) return 0;
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->ids[i], b->ids[i]) != 0) return 0;
  return 1;
}

static void test_same_seed(void) {
  static struct rec a, b, c;
  struct sg_fault_counts ca, cb, cc;
  /* everything in one round: duplicates and the shuffle of the round */
  struct sg_faults f = { .duplicate = 0.5, .reorder = 1, .seed = 42 };
  run_faults(&a, &f, 40, &ca);
  run_faults(&b, &f, 40, &cb);
  CHECK(a.n > 40 && a.n < 80);
  if (!CHECK(same_deliveries(&a, &b))) fprintf(stderr, "  seed 42 (duplicate, reorder): two runs differ\n");
  CHECK(ca.duplicated == cb.duplicated && ca.reordered == cb.reordered && ca.reordered > 0);
  CHECK_EQ_INT(ca.delivered, a.n);
  check_confirmed_once(&a, 40, "duplicate+reorder");
  f.seed = 43;
  run_faults(&c, &f, 40, &cc);
  CHECK(!same_deliveries(&a, &c)); /* another seed, other faults */
  /* drops and delays (no reorder: the rounds depend on when the timer wakes in real time) */
  struct sg_faults g = { .duplicate = 0.3, .drop = 0.3, .delay_min_ms = 0, .delay_max_ms = 150, .seed = 7 };
  run_faults(&a, &g, 30, &ca);
  run_faults(&b, &g, 30, &cb);
  if (!CHECK(same_deliveries(&a, &b))) fprintf(stderr, "  seed 7 (drop, delay): two runs differ\n");
  CHECK(ca.dropped == cb.dropped && ca.dropped > 0 && ca.delayed == cb.delayed && ca.delayed > 0);
  CHECK_EQ_INT(a.n, 30 + ca.duplicated);
  check_confirmed_once(&a, 30, "drop+delay+duplicate");
}

static void test_duplicate_all(void) {
  static struct rec r;
  struct sg_fault_counts c;
  struct sg_faults f = { .duplicate = 1, .seed = 1 };
  run_faults(&r, &f, 20, &c);
  CHECK_EQ_INT(r.n, 40);
  CHECK_EQ_INT(c.duplicated, 20);
  for (int i = 1; i <= 20; i++) {
    char id[16];
    snprintf(id, sizeof id, "m%d", i);
    int got = 0;
    for (int j = 0; j < r.n; j++) got += strcmp(r.ids[j], id) == 0;
    if (!CHECK(got == 2)) fprintf(stderr, "  duplicate = 1: %s delivered %d times\n", id, got);
  }
  int redelivered = 0;
  for (int j = 0; j < r.n; j++) redelivered += r.redelivered[j];
  CHECK_EQ_INT(redelivered, 0); /* a message published twice is two fresh deliveries */
  check_confirmed_once(&r, 20, "duplicate = 1");
}

static void test_drop_all(void) {
  static struct rec r;
  struct sg_fault_counts c;
  struct sg_faults f = { .drop = 1, .seed = 5 };
  int64_t t0 = sg_now_ms();
  run_faults(&r, &f, 20, &c);
  CHECK_EQ_INT(r.n, 20); /* each once: the re-send, never the lost one */
  CHECK_EQ_INT(c.dropped, 20);
  int64_t first = INT64_MAX, last = 0;
  for (int j = 0; j < r.n; j++) {
    if (r.at[j] < first) first = r.at[j];
    if (r.at[j] > last) last = r.at[j];
    int dup = 0;
    for (int k = 0; k < r.n; k++) dup += strcmp(r.ids[j], r.ids[k]) == 0;
    CHECK(dup == 1);
  }
  if (!CHECK(first >= t0 + 200)) fprintf(stderr, "  drop = 1: a message came %lld ms after the publish\n", (long long)(first - t0));
  CHECK(last <= t0 + 2000 + 1500); /* the re-send delay is at most 2 s (with room for a slow machine) */
  check_confirmed_once(&r, 20, "drop = 1");
}

static void break_cb(struct ev_loop *loop, ev_timer *w, int revents) { (void)w; (void)revents; ev_break(loop, EVBREAK_ONE); }

static void test_delay(void) {
  static struct rec r;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_transport *t = tr_new(loop, &r);
  struct sg_faults f = { .delay_min_ms = 300, .delay_max_ms = 300, .seed = 9 };
  sg_transport_local_faults(t, &f);
  CHECK_EQ_INT(sg_transport_local_next_due(t), -1);
  int64_t t0 = sg_now_ms();
  publish(t, 1, 1, SG_MSG_COMMAND);
  int64_t due = sg_transport_local_next_due(t);
  CHECK(due >= t0 + 300 && due <= t0 + 301);
  CHECK(!sg_transport_local_idle(t));
  /* 100 ms of loop: nothing comes; a poke before the due time releases nothing */
  ev_timer w;
  ev_timer_init(&w, break_cb, 0.1, 0.);
  ev_timer_start(loop, &w);
  ev_run(loop, 0);
  sg_transport_local_poke(t);
  ev_run(loop, EVRUN_NOWAIT);
  CHECK_EQ_INT(r.n, 0);
  run_idle(loop, t);
  CHECK_EQ_INT(r.n, 1);
  if (!CHECK(r.at[0] >= due)) fprintf(stderr, "  delay: delivered at %lld, due %lld\n", (long long)r.at[0], (long long)due);
  CHECK_EQ_INT(sg_transport_local_next_due(t), -1);
  struct sg_fault_counts c;
  sg_transport_local_counts(t, &c);
  CHECK_EQ_INT(c.delayed, 1);
  CHECK_EQ_INT(c.delivered, 1);
  /* faults off: at once again */
  sg_transport_local_faults(t, NULL);
  publish(t, 2, 2, SG_MSG_COMMAND);
  CHECK_EQ_INT(sg_transport_local_next_due(t), -1);
  ev_run(loop, EVRUN_NOWAIT);
  CHECK_EQ_INT(r.n, 2);
  check_confirmed_once(&r, 2, "delay");
  t->ops->close(t);
  ev_loop_destroy(loop);
}

/* Events are not faulted (confirmed at once, delivered to nobody); a row published twice while its
 * first delivery is queued is confirmed once; a message without an outbox row confirms nothing. */
static void test_confirm_once(void) {
  static struct rec r;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_transport *t = tr_new(loop, &r);
  struct sg_faults f = { .drop = 1, .duplicate = 1, .delay_min_ms = 10, .delay_max_ms = 20, .seed = 3 };
  sg_transport_local_faults(t, &f);
  publish(t, 1, 1, SG_MSG_EVENT);
  CHECK_EQ_INT(r.nconf, 1);
  CHECK_EQ_INT(sg_transport_local_next_due(t), -1);
  publish(t, 2, 2, SG_MSG_COMMAND);
  publish(t, 2, 2, SG_MSG_COMMAND); /* the outbox read at start sends a row again */
  publish(t, 3, 0, SG_MSG_REPLY);              /* an in-process reply: no row */
  run_idle(loop, t);
  CHECK_EQ_INT(r.n, 6); /* m2 twice, each duplicated; m3 and its copy */
  CHECK_EQ_INT(r.nconf, 2);
  CHECK(r.nconf == 2 && r.conf[0] == 1 && r.conf[1] == 2);
  t->ops->close(t);
  ev_loop_destroy(loop);
}

/* ---- the host: crash and reopen ---- */

static const char *SCRIPT =
    "local saga = require 'saga'\n"
    "saga.handle('stock', 'Reserve', function(p) return { held = p.n } end)\n"
    "saga.handle('stock', 'Release', function(p) return { released = p.n } end)\n"
    "saga.handle('bank', 'Pay', function(p)\n"
    "  if p.n % 3 == 0 then error({ message = 'card declined', retryable = false }) end\n"
    "  return { paid = p.n } end)\n"
    "saga.define { name = 'Order', steps = {\n"
    "  { name = 'reserve', action = function(ctx) ctx.data.r = ctx:call('stock', 'Reserve', { n = ctx.input.n }) end,\n"
    "    compensate = function(ctx) ctx:call('stock', 'Release', { n = ctx.input.n }) end },\n"
    "  { name = 'pay', action = function(ctx) ctx.data.p = ctx:call('bank', 'Pay', { n = ctx.input.n }) end },\n"
    "  { name = 'nap', action = function(ctx) ctx:sleep('3ms') end },\n"
    "  { name = 'done', action = function(ctx) ctx.data.done = true end },\n"
    "} }\n";

/* The handlers' runs, counted through the engine's runner: a handler runs at most once per message id
 * in one host, and never in the reopened host for an attempt whose outcome was committed before the
 * crash (its call's answer is in the store: running it again would be a second effect). */
#define MAXRUNS 256
static struct {
  int (*real)(void *ud, const struct sg_msg *m, int *handle, char **status, char **body);
  int n;
  char ids[MAXRUNS][96];
} runs;

static int counting_handle(void *ud, const struct sg_msg *m, int *handle, char **status, char **body) {
  if (runs.n < MAXRUNS) snprintf(runs.ids[runs.n++], sizeof runs.ids[0], "%s", m->message_id);
  return runs.real(ud, m, handle, status, body);
}

static void count_runs(struct sg_host *h) {
  runs.n = 0;
  runs.real = h->en->runner.handle;
  h->en->runner.handle = counting_handle;
}

static int count(sqlite3 *db, const char *sql);

/* Each message id ran once at most; none of an attempt the store had ended (db: as at the reopen). */
static void check_runs(sqlite3 *db, const char *what) {
  for (int i = 0; i < runs.n; i++) {
    for (int j = 0; j < i; j++)
      if (!CHECK(strcmp(runs.ids[i], runs.ids[j]) != 0)) fprintf(stderr, "  %s: handler ran twice for %s\n", what, runs.ids[i]);
    if (!db) continue;
    char sid[40], ph;
    int step, attempt, seq;
    if (sscanf(runs.ids[i], "%39[^.].%d.%c.%d.%d", sid, &step, &ph, &attempt, &seq) != 5) continue;
    char q[300];
    snprintf(q, sizeof q, "SELECT count(*) FROM history WHERE saga_id = '%s' AND step = %d AND phase = %d AND attempt = %d",
             sid, step, ph == 'a' ? 0 : ph == 'c' ? 1 : 2, attempt);
    int ended = count(db, q);
    snprintf(q, sizeof q, "SELECT count(*) FROM journal WHERE saga_id = '%s' AND step = %d AND phase = %d AND attempt = %d"
             " AND seq = %d AND done = 1", sid, step, ph == 'a' ? 0 : ph == 'c' ? 1 : 2, attempt, seq);
    int answered = count(db, q);
    if (!CHECK(ended == 0 && answered == 0))
      fprintf(stderr, "  %s: handler ran again after the crash for %s, answered before it\n", what, runs.ids[i]);
  }
}

#define NSAGAS 6
struct hrun {
  struct sg_host h;
  int acked, nacked, waiting;
  char ids[NSAGAS][40];
  int n[NSAGAS];               /* input n of the acknowledged ones */
  char refused[NSAGAS][40];    /* answered -1 (the crash came before their commit; PostgreSQL: or during it) */
  int refused_n[NSAGAS];
  int nrefused;
};

struct start_ctx {
  struct hrun *r;
  char id[40];
  int n;
};

static void on_started(void *ud, int status) {
  struct start_ctx *c = ud;
  c->r->waiting--;
  if (status == 0) {
    memcpy(c->r->ids[c->r->acked], c->id, 40);
    c->r->n[c->r->acked++] = c->n;
  } else {
    c->r->refused_n[c->r->nrefused] = c->n;
    memcpy(c->r->refused[c->r->nrefused++], c->id, 40);
  }
  free(c);
}

static void start_sagas(struct hrun *r) {
  for (int i = 0; i < NSAGAS; i++) {
    struct start_ctx *c = calloc(1, sizeof *c);
    c->r = r;
    c->n = i + 1;
    char input[32];
    snprintf(input, sizeof input, "{\"n\":%d}", c->n);
    int existed = 0;
    struct sg_error e = {0};
    if (!CHECK(sg_engine_start(r->h.en, "Order", input, NULL, c->id, &existed, &e) == 0)) {
      fprintf(stderr, "start: %s\n", e.msg);
      free(c);
      continue;
    }
    r->waiting++;
    sg_engine_after_commit(r->h.en, on_started, c);
  }
}

static int64_t live(struct sg_host *h) {
  struct sg_engine_stats st;
  sg_engine_stats(h->en, &st);
  return st.live;
}

static void nop_cb(struct ev_loop *loop, ev_timer *w, int revents) { (void)loop; (void)w; (void)revents; }

/* Runs the loop until no saga is live and the transport is idle (bounded: 10 s). */
static int run_to_end(struct ev_loop *loop, struct sg_host *h) {
  ev_timer tick; /* the loop never blocks for long */
  ev_timer_init(&tick, nop_cb, 0.002, 0.002);
  ev_timer_start(loop, &tick);
  int64_t end = sg_now_ms() + 10000;
  while ((live(h) > 0 || !sg_transport_local_idle(h->tr)) && sg_now_ms() < end) ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &tick);
  return live(h) == 0;
}

static int count(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
  int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  sqlite3_finalize(st);
  return n;
}

static void check_db(const char *db, const struct hrun *r, const char *what) {
  sqlite3 *h;
  if (!CHECK(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)) return;
  char q[300];
  for (int i = 0; i < r->acked; i++) {
    int declined = r->n[i] % 3 == 0;
    snprintf(q, sizeof q, "SELECT count(*) FROM sagas WHERE id = '%s' AND status = '%s'", r->ids[i],
             declined ? "compensated" : "completed");
    if (!CHECK(count(h, q) == 1))
      fprintf(stderr, "  %s: saga %s (n = %d) is not %s\n", what, r->ids[i], r->n[i], declined ? "compensated" : "completed");
    /* the phases that ran: every action and compensation completed once */
    snprintf(q, sizeof q, "SELECT count(*) FROM history WHERE saga_id = '%s' AND status = 'completed' AND phase = 0", r->ids[i]);
    int actions = count(h, q);
    snprintf(q, sizeof q, "SELECT count(*) FROM history WHERE saga_id = '%s' AND status = 'completed' AND phase = 1", r->ids[i]);
    int comps = count(h, q);
    if (!CHECK(actions == (declined ? 1 : 4) && comps == (declined ? 1 : 0)))
      fprintf(stderr, "  %s: saga %s (n = %d): %d actions and %d compensations completed\n", what, r->ids[i], r->n[i],
              actions, comps);
  }
  for (int i = 0; i < r->nrefused; i++) {
    snprintf(q, sizeof q, "SELECT count(*) FROM sagas WHERE id = '%s'", r->refused[i]);
    if (!CHECK(count(h, q) == 0)) fprintf(stderr, "  %s: saga %s answered as not committed is there\n", what, r->refused[i]);
  }
  CHECK_EQ_INT(count(h, "SELECT count(*) FROM sagas"), r->acked);
  int doubled = count(h, "SELECT count(*) FROM (SELECT 1 FROM history GROUP BY saga_id, step, phase, attempt, status"
                         " HAVING count(*) > 1)");
  if (!CHECK(doubled == 0)) fprintf(stderr, "  %s: %d step outcome(s) recorded twice\n", what, doubled);
  int left = count(h, "SELECT count(*) FROM timers") + count(h, "SELECT count(*) FROM outbox");
  if (!CHECK(left == 0)) fprintf(stderr, "  %s: %d timer/outbox row(s) left behind\n", what, left);
  sqlite3_close(h);
}

/* sagas acknowledged before a crash, live at a crash, crashes with a batch open, with a commit on its
 * way: the crashes hit running sagas and throw uncommitted work away */
static int crash_stats[4];

/* Starts the sagas, crashes after the k-th loop iteration that leaves a batch open, reopens and runs to the end. */
static const char *pg_base; /* SG_FAULT_PG: a PostgreSQL server URL (postgres://user@host:port/): the runs there too */

static void crash_run(const char *dir, int k, const struct sg_faults *f) {
  char db[600], cmd[2600];
  int pg = pg_base != NULL;
  if (pg) {
    snprintf(db, sizeof db, "%ssg_test_faults", pg_base);
    snprintf(cmd, sizeof cmd, "psql -q '%spostgres' -c 'DROP DATABASE IF EXISTS sg_test_faults' -c 'CREATE DATABASE sg_test_faults'"
             " >/dev/null 2>&1", pg_base);
  } else {
    snprintf(db, sizeof db, "%s/c.db", dir);
    snprintf(cmd, sizeof cmd, "rm -f %s %s-wal %s-shm %s.lock", db, db, db, db);
  }
  if (!CHECK(system(cmd) == 0)) return;
  struct sg_host_config cfg;
  sg_host_config_defaults(&cfg);
  cfg.db = db;
  cfg.dir = dir;
  cfg.host_id = "crash";
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  static struct hrun r;
  memset(&r, 0, sizeof r);
  struct sg_error e = {0};
  if (!CHECK(sg_host_open(&r.h, loop, &cfg, &e) == 0)) { fprintf(stderr, "open: %s\n", e.msg); ev_loop_destroy(loop); return; }
  sg_transport_local_faults(r.h.tr, f);
  count_runs(&r.h);
  start_sagas(&r);
  /* k > 0: once the starts are acknowledged, the crash comes at the k-th loop iteration after which
   * a batch is open (work done since the last commit), or when the sagas are over */
  ev_timer tick; /* the loop never blocks for long */
  ev_timer_init(&tick, nop_cb, 0.002, 0.002);
  ev_timer_start(loop, &tick);
  for (int i = 0; k > 0 && r.waiting && i < 5000; i++) ev_run(loop, EVRUN_ONCE);
  /* each turn waits for something to happen (at most the tick): counted in turns, not spins, so a
   * fast machine does not run out of turns while the next messages are still on their way */
  for (int seen = 0, i = 0; seen < k && i < 5000 && live(&r.h) > 0; i++) {
    ev_run(loop, EVRUN_ONCE);
    seen += r.h.en->in_txn;
  }
  ev_timer_stop(loop, &tick);
  int live_at_crash = (int)live(&r.h), acked_at_crash = r.acked;
  crash_stats[2] += r.h.en->in_txn; /* a batch open: the crash loses work done since the last commit */
  crash_stats[3] += r.h.en->committing; /* PostgreSQL: a commit on its way, left to land or not */
  sg_host_crash(&r.h);
  CHECK_EQ_INT(r.waiting, 0);
  if (k == 0) CHECK(r.acked == 0 && r.nrefused == NSAGAS); /* nothing committed yet: nothing there after */
  crash_stats[0] += acked_at_crash;
  crash_stats[1] += live_at_crash;
  if (getenv("SG_FAULT_VERBOSE"))
    printf("k = %d: %d acknowledged, %d refused, %d live at the crash\n", k, acked_at_crash, r.nrefused, live_at_crash);
  char what[64];
  snprintf(what, sizeof what, "crash at open batch %d, seed %llu", k, (unsigned long long)f->seed);
  check_runs(NULL, what);
  /* the store as the crash left it: what the reopened host must not run again */
  sqlite3 *snap = NULL;
  if (!pg && !CHECK(sqlite3_open_v2(db, &snap, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)) { ev_loop_destroy(loop); return; }
  /* the same database, a new host */
  if (!CHECK(sg_host_open(&r.h, loop, &cfg, &e) == 0)) {
    fprintf(stderr, "reopen: %s\n", e.msg);
    sqlite3_close(snap);
    ev_loop_destroy(loop);
    return;
  }
  sg_transport_local_faults(r.h.tr, f);
  count_runs(&r.h);
  if (snap) {
    sqlite3_exec(snap, "BEGIN", NULL, NULL, NULL);
    count(snap, "SELECT count(*) FROM sagas"); /* the read transaction holds the snapshot of the reopen */
  }
  if (!CHECK(run_to_end(loop, &r.h))) fprintf(stderr, "  %s: %lld saga(s) still live\n", what, (long long)live(&r.h));
  check_runs(snap, what);
  if (pg) { /* read through the store: every acknowledged saga ended, in its status; an unacknowledged
             * one whose commit was on its way at the crash may be there: then it ended too */
    for (int i = 0; i < r.acked + r.nrefused; i++) {
      int acked = i < r.acked, n = acked ? r.n[i] : r.refused_n[i - r.acked];
      const char *id = acked ? r.ids[i] : r.refused[i - r.acked];
      struct sg_saga_row row;
      memset(&row, 0, sizeof row);
      struct sg_error e2 = {0};
      int got = r.h.store->ops->saga_get(r.h.store, id, &row, &e2);
      const char *want = n % 3 == 0 ? "compensated" : "completed";
      if (!CHECK(got == 1 ? strcmp(sg_status_name(row.status), want) == 0 : got == 0 && !acked))
        fprintf(stderr, "  %s (PostgreSQL): saga %s is not %s\n", what, id, want);
      if (k == 0 && !CHECK(got == 0)) fprintf(stderr, "  %s (PostgreSQL): saga %s is there, never committed\n", what, id);
      if (got == 1) sg_store_saga_row_free(&row);
    }
  }
  struct sg_fault_counts fc;
  sg_transport_local_counts(r.h.tr, &fc);
  if (!CHECK(fc.delivered >= (uint64_t)runs.n)) /* each handler run came from a delivery */
    fprintf(stderr, "  %s: %d handler runs, %llu deliveries: calls went around the transport\n", what, runs.n,
            (unsigned long long)fc.delivered);
  if (snap) {
    sqlite3_exec(snap, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(snap);
  }
  sg_host_close(&r.h);
  ev_loop_destroy(loop);
  if (!pg) check_db(db, &r, what);
}

static void test_crash(void) {
  char dir[] = "/tmp/sg-faults-XXXXXX";
  if (!CHECK(mkdtemp(dir) != NULL)) return;
  char path[600];
  snprintf(path, sizeof path, "%s/order.lua", dir);
  FILE *f = fopen(path, "w");
  fputs(SCRIPT, f);
  fclose(f);
  memset(crash_stats, 0, sizeof crash_stats);
  struct sg_faults none = {0};
  crash_run(dir, 0, &none);
  for (int k = 1; k <= 24; k++) { /* the sagas take about 12 batches: crash points 1..12, two seeds each */
    struct sg_faults ff = { .duplicate = 0.3, .reorder = 1, .delay_min_ms = 0, .delay_max_ms = 5, .seed = (uint64_t)k };
    crash_run(dir, (k - 1) % 12 + 1, &ff);
  }
  for (int k = 3; k <= 12; k += 3) { /* with drops: re-sends come 200..2000 ms later */
    struct sg_faults ff = { .duplicate = 0.2, .drop = 0.2, .reorder = 1, .seed = (uint64_t)(100 + k) };
    crash_run(dir, k, &ff);
  }
  printf("crash runs: %d sagas acknowledged before their crash, %d of them still running at it\n", crash_stats[0],
         crash_stats[1]);
  CHECK(crash_stats[1] > NSAGAS); /* the crash points do fall in the middle of sagas */
  printf("%d crash(es) with an uncommitted batch, %d with a commit on its way\n", crash_stats[2], crash_stats[3]);
  CHECK(crash_stats[2] >= 14); /* of 29 crashes */
  snprintf(path, sizeof path, "rm -rf %s", dir);
  if (system(path) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
  sg_log_level = SG_LOG_ERROR + 1; /* a crash leaves warnings at the reopen; keep the output to the checks */
  if (getenv("SG_FAULT_VERBOSE")) sg_log_level = SG_LOG_INFO;
  test_same_seed();
  test_duplicate_all();
  test_drop_all();
  test_delay();
  test_confirm_once();
  test_crash();
  pg_base = getenv("SG_FAULT_PG");
  if (pg_base && *pg_base) {
    test_crash(); /* the same runs on PostgreSQL (its commits go on their way: sg_engine_crash waits for one) */
    printf("the crash runs on PostgreSQL (%s) too\n", pg_base);
  }
  return check_report();
}
