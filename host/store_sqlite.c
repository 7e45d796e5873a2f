/* store_sqlite: the embedded store on SQLite (WAL, synchronous=FULL).
 *
 * Every statement is prepared once at open and kept on the store; an op resets and rebinds it. Text
 * arguments are bound SQLITE_STATIC (the caller's strings outlive the step), so a write allocates
 * nothing of ours. Rows handed to callbacks point straight into SQLite's column buffers, which is why
 * they are only valid during the callback.
 *
 * A callback may call other ops of the store (including deleting the row it was handed), but not
 * the op that is iterating: that would reset the statement under the iteration. */
#include "store.h"
#include "walbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

/* Schema migrations, applied in order, each in its own transaction. Never edit a step that has
 * shipped: append a new one. schema_version holds one row per applied step. */
static const char *const migrations[] = {
  /* 1: initial schema */
  "CREATE TABLE definitions ("
  "  hash TEXT PRIMARY KEY, file TEXT NOT NULL, source TEXT NOT NULL, created_at INTEGER NOT NULL);"
  "CREATE TABLE sagas ("
  "  id TEXT PRIMARY KEY, type TEXT NOT NULL, def_hash TEXT NOT NULL, status TEXT NOT NULL,"
  "  step INTEGER NOT NULL, phase INTEGER NOT NULL, attempt INTEGER NOT NULL,"
  "  input TEXT, data TEXT, error TEXT, idem_key TEXT,"
  "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, deadline INTEGER NOT NULL,"
  "  version INTEGER NOT NULL);"
  "CREATE UNIQUE INDEX sagas_idem ON sagas(type, idem_key) WHERE idem_key IS NOT NULL;"
  "CREATE INDEX sagas_status ON sagas(status, id);"
  "CREATE INDEX sagas_type ON sagas(type, id);"
  "CREATE TABLE history ("
  /* no AUTOINCREMENT: history rows are never deleted, so max(id)+1 never reuses an id, and the
   * sqlite_sequence update per insert is saved */
  "  id INTEGER PRIMARY KEY, saga_id TEXT NOT NULL, step INTEGER NOT NULL,"
  "  step_name TEXT, phase INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,"
  "  started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL, error TEXT);"
  "CREATE INDEX history_saga ON history(saga_id, id);"
  "CREATE TABLE journal ("
  "  saga_id TEXT NOT NULL, step INTEGER NOT NULL, phase INTEGER NOT NULL, attempt INTEGER NOT NULL,"
  "  seq INTEGER NOT NULL, kind TEXT NOT NULL, done INTEGER NOT NULL, is_error INTEGER NOT NULL,"
  "  result TEXT, PRIMARY KEY (saga_id, step, phase, attempt, seq)) WITHOUT ROWID;"
  /* AUTOINCREMENT on timers and outbox: ids are held in memory (armed timers, unconfirmed
   * publishes), so an id must never be reused for a different row. */
  "CREATE TABLE timers ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT, saga_id TEXT NOT NULL, due_at INTEGER NOT NULL,"
  "  kind TEXT NOT NULL, ref INTEGER NOT NULL);"
  "CREATE INDEX timers_due ON timers(due_at, id);"
  "CREATE TABLE outbox ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, correlation_id TEXT,"
  "  exchange TEXT, routing_key TEXT, reply_to TEXT, type TEXT, saga_id TEXT, saga_type TEXT,"
  "  step INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT, body TEXT,"
  "  created_at INTEGER NOT NULL);"
  "CREATE TABLE inbox ("
  "  message_id TEXT PRIMARY KEY, reply_status TEXT, reply_body TEXT, received_at INTEGER NOT NULL);",
  /* 2: the running attempt's start lives on the saga row; history rows are written when an attempt ends */
  "ALTER TABLE sagas ADD COLUMN attempt_started_at INTEGER NOT NULL DEFAULT 0;",
  /* 3: attempts made before an operator's retry (the retry policy counts from there) */
  "ALTER TABLE sagas ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;",
  /* 4: the inbox is pruned by age */
  "CREATE INDEX inbox_received ON inbox(received_at);",
  /* 5: finished sagas are pruned by age */
  "CREATE INDEX sagas_finished ON sagas(status, updated_at);",
  /* 6: the business key of a saga (saga.define{key = ...}), found by GET /v1/sagas?key= */
  "ALTER TABLE sagas ADD COLUMN biz_key TEXT;"
  "CREATE INDEX sagas_key ON sagas(biz_key, id) WHERE biz_key IS NOT NULL;",
  /* 7: lifecycle events (GET /v1/events): one row per commit that made any, its events a line each;
   * one writer, so id order is commit order */
  "CREATE TABLE events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, n INTEGER NOT NULL, host_id TEXT,"
  "  body TEXT NOT NULL);",
  /* 8: the saga's trace context (otel.h: "<trace id>-<span id>[-<parent span id>][ <tracestate>]"),
   * NULL when it started with tracing off */
  "ALTER TABLE sagas ADD COLUMN trace TEXT;",
  /* 9: a step's compensation running for an action attempt that failed after some of its calls
   * completed (sg_saga_row.partial) */
  "ALTER TABLE sagas ADD COLUMN partial TEXT;",
  /* 10: signals sent to sagas (signals.c), kept until a ctx:wait takes them; a taken one stays (its
   * idempotency key answers a repeat) until its saga is pruned */
  "CREATE TABLE signals (id TEXT PRIMARY KEY, saga_id TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL,"
  "  idem_key TEXT, seq INTEGER NOT NULL, received_at INTEGER NOT NULL, delivered_at INTEGER NOT NULL DEFAULT 0)"
  "  WITHOUT ROWID;"
  "CREATE UNIQUE INDEX signals_idem ON signals(saga_id, idem_key) WHERE idem_key IS NOT NULL;"
  "CREATE INDEX signals_pending ON signals(saga_id, seq) WHERE delivered_at = 0;",
  /* 11: child sagas (ctx:run): a child names its parent; a parent lists the children its steps started */
  "ALTER TABLE sagas ADD COLUMN parent TEXT;"
  "ALTER TABLE sagas ADD COLUMN children TEXT;"
  "CREATE INDEX sagas_parent ON sagas(parent, id) WHERE parent IS NOT NULL;",
  /* 12: schedules (saga.schedule): the last fire time claimed for each, so a fire starts once */
  "CREATE TABLE schedules (name TEXT PRIMARY KEY, last_fire INTEGER NOT NULL);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

/* The cached statements, one per operation (saga_list has one per filter combination so each gets a
 * plan that uses its index: prepared when first used, see list_stmt). */
enum {
  ST_BEGIN, ST_BEGIN_READ, ST_COMMIT, ST_ROLLBACK,
  ST_DEF_PUT, ST_DEF_GET,
  ST_SAGA_INSERT, ST_SAGA_UPDATE, ST_SAGA_PROGRESS, ST_SAGA_GET, ST_SAGA_FIND_IDEM,
  ST_SAGA_COUNTS, ST_SAGA_COUNTS_TYPE, ST_SAGA_ACTIVE,
  ST_HIST_INSERT, ST_HIST_EACH,
  ST_JOURNAL_PUT, ST_JOURNAL_EACH, ST_JOURNAL_ALL,
  ST_TIMER_PUT, ST_TIMER_DEL, ST_TIMER_EACH,
  ST_OUTBOX_PUT, ST_OUTBOX_DEL, ST_OUTBOX_EACH,
  ST_INBOX_GET, ST_INBOX_PUT, ST_INBOX_PRUNE, ST_JOURNAL_DEL, ST_PRUNE_CLEAR, ST_PRUNE_MARK, ST_PRUNE_HIST, ST_PRUNE_SAGAS,
  ST_EVENT_PUT, ST_EVENT_AFTER, ST_EVENT_END, ST_EVENT_BEFORE, ST_EVENT_PRUNE,
  ST_SIGNAL_PUT, ST_SIGNAL_DONE, ST_SIGNAL_FIND, ST_SIGNAL_EACH, ST_PRUNE_SIGNALS,
  ST_SCHED_LAST, ST_SCHED_CLAIM,
  ST_COUNT
};

/* Column list shared by every saga SELECT, in the order saga_from_stmt reads it. */
#define SAGA_COLS "id, type, def_hash, status, step, phase, attempt, input, data, error, idem_key," \
                  " created_at, updated_at, deadline, version, attempt_started_at, attempt_base, biz_key, trace," \
                  " partial, parent, children"

static const char *const stmt_sql[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_BEGIN_READ] = "BEGIN DEFERRED",
  [ST_SCHED_LAST] = "SELECT last_fire FROM schedules WHERE name = ?1",
  [ST_SCHED_CLAIM] = "INSERT INTO schedules(name, last_fire) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE"
                     " SET last_fire = excluded.last_fire WHERE last_fire < excluded.last_fire",
  [ST_COMMIT] = "COMMIT",
  [ST_ROLLBACK] = "ROLLBACK",
  [ST_DEF_PUT] = "INSERT OR IGNORE INTO definitions(hash, file, source, created_at) VALUES (?1, ?2, ?3, ?4)",
  [ST_DEF_GET] = "SELECT file, source FROM definitions WHERE hash = ?1",
  [ST_SAGA_INSERT] = "INSERT INTO sagas(" SAGA_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
                     " ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
  [ST_SAGA_UPDATE] = "UPDATE sagas SET def_hash = ?2, status = ?3, step = ?4, phase = ?5, attempt = ?6,"
                     " data = ?7, error = ?8, updated_at = ?9, deadline = ?10, version = ?11,"
                     " attempt_started_at = ?12, attempt_base = ?13, trace = COALESCE(?14, trace), partial = ?15,"
                     " children = ?16"
                     " WHERE id = ?1 AND version = ?11 - 1",
  /* the same without status and def_hash: no status index maintenance for a step's progress */
  [ST_SAGA_PROGRESS] = "UPDATE sagas SET step = ?4, phase = ?5, attempt = ?6,"
                       " data = ?7, error = ?8, updated_at = ?9, deadline = ?10, version = ?11,"
                       " attempt_started_at = ?12, attempt_base = ?13, partial = ?15, children = ?16"
                       " WHERE id = ?1 AND version = ?11 - 1",
  [ST_SAGA_GET] = "SELECT " SAGA_COLS " FROM sagas WHERE id = ?1",
  [ST_SAGA_FIND_IDEM] = "SELECT " SAGA_COLS " FROM sagas WHERE type = ?1 AND idem_key = ?2",
  [ST_SAGA_COUNTS] = "SELECT status, count(*) FROM sagas GROUP BY status",
  [ST_SAGA_COUNTS_TYPE] = "SELECT status, count(*) FROM sagas WHERE type = ?1 GROUP BY status",
  [ST_SAGA_ACTIVE] = "SELECT " SAGA_COLS " FROM sagas WHERE status IN ('running', 'compensating') ORDER BY id",
  [ST_HIST_INSERT] = "INSERT INTO history(saga_id, step, step_name, phase, attempt, status, started_at,"
                     " finished_at, error, id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
  [ST_HIST_EACH] = "SELECT id, saga_id, step, step_name, phase, attempt, status, started_at, finished_at, error"
                   " FROM history WHERE saga_id = ?1 ORDER BY id",
  [ST_JOURNAL_PUT] = "INSERT OR REPLACE INTO journal(saga_id, step, phase, attempt, seq, kind, done, is_error,"
                     " result) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
  [ST_JOURNAL_EACH] = "SELECT saga_id, step, phase, attempt, seq, kind, done, is_error, result FROM journal"
                      " WHERE saga_id = ?1 AND step = ?2 AND phase = ?3 AND attempt = ?4 ORDER BY seq",
  /* the whole table in key order (it holds the journals of live sagas only: a saga's rows go when it ends) */
  [ST_JOURNAL_ALL] = "SELECT saga_id, step, phase, attempt, seq, kind, done, is_error, result FROM journal"
                     " ORDER BY saga_id, step, phase, attempt, seq",
  [ST_TIMER_PUT] = "INSERT INTO timers(saga_id, due_at, kind, ref, id) VALUES (?1, ?2, ?3, ?4, ?5)",
  [ST_TIMER_DEL] = "DELETE FROM timers WHERE id = ?1",
  [ST_TIMER_EACH] = "SELECT id, saga_id, due_at, kind, ref FROM timers ORDER BY due_at, id",
  [ST_OUTBOX_PUT] = "INSERT INTO outbox(message_id, correlation_id, exchange, routing_key, reply_to, type,"
                    " saga_id, saga_type, step, attempt, status, body, created_at, id)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
  [ST_OUTBOX_DEL] = "DELETE FROM outbox WHERE id = ?1",
  [ST_OUTBOX_EACH] = "SELECT id, message_id, correlation_id, exchange, routing_key, reply_to, type, saga_id,"
                     " saga_type, step, attempt, status, body, created_at FROM outbox ORDER BY id",
  [ST_INBOX_GET] = "SELECT reply_status, reply_body FROM inbox WHERE message_id = ?1",
  [ST_INBOX_PUT] = "INSERT OR REPLACE INTO inbox(message_id, reply_status, reply_body, received_at)"
                   " VALUES (?1, ?2, ?3, ?4)",
  [ST_INBOX_PRUNE] = "DELETE FROM inbox WHERE received_at < ?1",
  [ST_JOURNAL_DEL] = "DELETE FROM journal WHERE saga_id = ?1",
  /* retention in three steps inside the caller's transaction: pick, then delete history and sagas */
  [ST_PRUNE_CLEAR] = "DELETE FROM temp.prune",
  [ST_PRUNE_MARK] = "INSERT INTO temp.prune(id) SELECT id FROM sagas WHERE status IN ('completed', 'compensated',"
                    " 'resolved') AND updated_at < ?1 LIMIT ?2",
  [ST_PRUNE_HIST] = "DELETE FROM history WHERE saga_id IN (SELECT id FROM temp.prune)",
  [ST_PRUNE_SAGAS] = "DELETE FROM sagas WHERE id IN (SELECT id FROM temp.prune)",
  [ST_PRUNE_SIGNALS] = "DELETE FROM signals WHERE saga_id IN (SELECT id FROM temp.prune)",
  /* OR IGNORE: a repeat of an idempotency key (signals_idem) is not stored again */
  [ST_SIGNAL_PUT] = "INSERT OR IGNORE INTO signals(id, saga_id, name, payload, idem_key, seq, received_at, delivered_at)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
  [ST_SIGNAL_DONE] = "UPDATE signals SET delivered_at = ?2 WHERE id = ?1",
  [ST_SIGNAL_FIND] = "SELECT 1 FROM signals WHERE saga_id = ?1 AND idem_key = ?2",
  [ST_SIGNAL_EACH] = "SELECT id, saga_id, name, payload, idem_key, seq, received_at, delivered_at FROM signals"
                     " WHERE saga_id = ?1 AND delivered_at = 0 ORDER BY seq",
  [ST_EVENT_PUT] = "INSERT INTO events(id, at, n, host_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
  [ST_EVENT_AFTER] = "SELECT id, at, n, host_id, body FROM events WHERE id >= ?1 ORDER BY id LIMIT ?2",
  [ST_EVENT_END] = "SELECT coalesce(max(id), 0) FROM events",
  /* from the newest back (no index on at): cheap for a recent time */
  [ST_EVENT_BEFORE] = "SELECT coalesce((SELECT id FROM events WHERE at < ?1 ORDER BY id DESC LIMIT 1), 0)",
  /* by id (no index on at: one index less to write per event): the oldest before the first kept */
  [ST_EVENT_PRUNE] = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < coalesce((SELECT id FROM"
                     " events WHERE at >= ?1 ORDER BY id LIMIT 1), 9223372036854775807) ORDER BY id LIMIT ?2)",
};

/* One write of the open transaction, as bound: kept until the commit so that a transaction the
 * disk refused can be written again (retry_commit). Text lives in the store's arena. */
#define REDO_MAX_ARGS 18
struct redo_arg {
  int kind;    /* 0 = NULL (or unbound), 1 = integer, 2 = text */
  int64_t i;   /* the integer */
  size_t off;  /* the text: offset of its NUL-terminated copy in the arena */
};
struct redo {
  int st;                             /* the statement (ST_*) */
  int n;                              /* arguments bound: ?1 .. ?n */
  struct redo_arg a[REDO_MAX_ARGS];
};

/* The SQLite store; base comes first so a struct sg_store * is also a struct sqlite_store *. */
struct sqlite_store {
  struct sg_store base;         /* ops table */
  sqlite3 *db;                  /* the connection (one per store, used from the loop thread only) */
  sqlite3_stmt *st[ST_COUNT];   /* prepared once at open, finalized at close */
  sqlite3_stmt *list_st[32];    /* saga_list by filter combination (LIST_*), prepared when first used */
  int64_t commits;              /* successful COMMITs, for benchmarks and /healthz */
  int lock_fd;                  /* <path>.lock, flock'ed for the store's life (-1 = none, e.g. :memory:) */
  int in_txn;                   /* between begin and a commit that succeeded */
  int read_held;                /* a read transaction of read_hold is open (ended by any write) */
  int held;                     /* the transaction met a passing failure: its writes are kept, not run */
  char held_why[256];           /* that failure, for the commit's error */
  struct redo *redo;            /* the writes of the transaction, in order */
  size_t nredo, capredo;
  long cur;                     /* the redo entry being bound, -1 = none (no transaction) */
  struct sg_buf arena;          /* text arguments of redo */
  /* ids of new rows, assigned here (not by SQLite) so that a kept write gets the same id when it is
   * written again, and a write that was only kept still tells its caller the id */
  int64_t next_hist, next_timer, next_outbox, next_event;
  struct sg_buf evbody;      /* the open transaction's events (sg_event_line each), one row at the commit */
  int nev;
  int64_t ev_at;             /* the first one's time */
  char ev_host[128];         /* and host */
};

static struct sqlite_store *S(struct sg_store *s) { return (struct sqlite_store *)s; }

/* Fills e from the connection's last error. Call before resetting the statement that failed. */
static int db_fail(struct sqlite_store *s, struct sg_error *e, const char *what) {
  return sg_errorf(e, SG_E_INTERNAL, "sqlite: %s: %s", what, sqlite3_errmsg(s->db));
}

/* Takes a cached statement for a new use: the previous use may have stopped early. */
static sqlite3_stmt *stmt_use(struct sqlite_store *s, int id) {
  sqlite3_stmt *st = s->st[id];
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return st;
}

/* Ends a use: resetting releases the read snapshot a half-stepped SELECT would keep open. */
static void stmt_done(sqlite3_stmt *st) { sqlite3_reset(st); }

/* Binds text without copying (NULL binds SQL NULL). */
static void bind_text(sqlite3_stmt *st, int i, const char *v) { sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC); }
static void bind_i64(sqlite3_stmt *st, int i, int64_t v) { sqlite3_bind_int64(st, i, v); }

/* Runs a statement that returns no rows. */
static int stmt_exec(struct sqlite_store *s, sqlite3_stmt *st, struct sg_error *e, const char *what) {
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    db_fail(s, e, what);
    stmt_done(st);
    return -1;
  }
  stmt_done(st);
  return 0;
}

/* A failure that may pass by itself or by an operator's hand: a full disk, an I/O error, a lock held
 * past the busy timeout, a file that went read-only. Not: corruption, constraints, misuse. */
static int passing_failure(int rc) {
  switch (rc & 0xff) {
  case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_CANTOPEN: case SQLITE_NOMEM: case SQLITE_BUSY:
  case SQLITE_LOCKED: case SQLITE_PROTOCOL: case SQLITE_READONLY:
    return 1;
  default:
    return 0;
  }
}

/* The transaction cannot be made durable now: note why (call before resetting the statement that
 * failed, which may clear the message), then roll_back_held. */
static void hold_note(struct sqlite_store *s, const char *what) {
  if (!s->held) snprintf(s->held_why, sizeof s->held_why, "sqlite: %s: %s", what, sqlite3_errmsg(s->db));
  s->held = 1;
}

/* Rolls the held transaction back (SQLite may have done so already); its writes stay kept for
 * retry_commit. */
static void roll_back_held(struct sqlite_store *s) {
  if (sqlite3_get_autocommit(s->db)) return;
  sqlite3_stmt *rb = s->st[ST_ROLLBACK];
  sqlite3_reset(rb);
  sqlite3_step(rb); /* in WAL mode a rollback only drops pages; if it fails, retry_commit tries again */
  sqlite3_reset(rb);
}

/* read_hold: the reads that follow share one read transaction (BEGIN DEFERRED takes its snapshot at
 * the first read) until read_release or a write; without it each read statement locks and unlocks
 * the file and the WAL index on its own (fcntl calls, the WAL header read again). */
static void sq_read_hold(struct sg_store *base) {
  struct sqlite_store *s = S(base);
  if (s->read_held || s->in_txn || s->held || !sqlite3_get_autocommit(s->db)) return;
  sqlite3_stmt *st = stmt_use(s, ST_BEGIN_READ);
  if (sqlite3_step(st) == SQLITE_DONE) s->read_held = 1;
  stmt_done(st);
}

static void read_release(struct sqlite_store *s) {
  if (!s->read_held) return;
  s->read_held = 0;
  if (sqlite3_get_autocommit(s->db)) return;
  sqlite3_stmt *st = stmt_use(s, ST_COMMIT);
  int rc = sqlite3_step(st);
  stmt_done(st);
  if (rc != SQLITE_DONE && !sqlite3_get_autocommit(s->db)) { /* a read transaction ends in any case */
    sqlite3_stmt *rb = stmt_use(s, ST_ROLLBACK);
    sqlite3_step(rb);
    stmt_done(rb);
  }
}

static void sq_read_release(struct sg_store *base) { read_release(S(base)); }

/* Takes a statement for a write: inside a transaction the write is also recorded (wr_text/wr_i64
 * record each argument as it is bound). */
static sqlite3_stmt *wr_use(struct sqlite_store *s, int id) {
  read_release(s); /* a write is never part of a held read */
  sqlite3_stmt *st = stmt_use(s, id);
  if (!s->in_txn) { s->cur = -1; return st; }
  struct redo r = { .st = id };
  if (s->nredo == s->capredo) {
    s->capredo = s->capredo ? s->capredo * 2 : 64;
    s->redo = sg_xrealloc(s->redo, s->capredo * sizeof *s->redo);
  }
  s->redo[s->nredo] = r;
  s->cur = (long)s->nredo++;
  return st;
}

static struct redo_arg *wr_arg(struct sqlite_store *s, int i) {
  if (s->cur < 0 || i < 1 || i > REDO_MAX_ARGS) return NULL;
  struct redo *r = &s->redo[s->cur];
  if (i > r->n) r->n = i;
  return &r->a[i - 1];
}

static void wr_text(struct sqlite_store *s, sqlite3_stmt *st, int i, const char *v) {
  bind_text(st, i, v);
  struct redo_arg *a = wr_arg(s, i);
  if (!a) return;
  a->kind = v ? 2 : 0;
  if (v) {
    a->off = s->arena.len;
    sg_buf_add(&s->arena, v, strlen(v) + 1);
  }
}

static void wr_i64(struct sqlite_store *s, sqlite3_stmt *st, int i, int64_t v) {
  bind_i64(st, i, v);
  struct redo_arg *a = wr_arg(s, i);
  if (!a) return;
  a->kind = 1;
  a->i = v;
}

/* Runs a write. Inside a transaction a passing failure holds the store and counts as done (the
 * write is kept); once held, writes are only kept. 1 = it ran, 0 = only kept, -1 = failed. */
static int wr_exec(struct sqlite_store *s, sqlite3_stmt *st, struct sg_error *e, const char *what) {
  s->cur = -1;
  if (s->held) { stmt_done(st); return 0; }
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) { stmt_done(st); return 1; }
  if (s->in_txn && passing_failure(rc)) {
    hold_note(s, what);
    stmt_done(st);
    roll_back_held(s);
    sg_warn("%s (the transaction is kept and will be written again)", s->held_why);
    return 0;
  }
  /* a duplicate id or (type, idem_key) is a conflict the caller can act on, not a store failure */
  sg_errorf(e, (rc & 0xff) == SQLITE_CONSTRAINT ? SG_E_CONFLICT : SG_E_INTERNAL, "sqlite: %s: %s", what,
            sqlite3_errmsg(s->db));
  stmt_done(st);
  return -1;
}

/* wr_exec for an op that returns 0/-1 */
static int wr_done(struct sqlite_store *s, sqlite3_stmt *st, struct sg_error *e, const char *what) {
  return wr_exec(s, st, e, what) < 0 ? -1 : 0;
}

static const char *col_text(sqlite3_stmt *st, int i) { return (const char *)sqlite3_column_text(st, i); }
static char *col_dup(sqlite3_stmt *st, int i) { return sg_strdup(col_text(st, i)); }

/* ---- transactions ---- */

static void redo_clear(struct sqlite_store *s) {
  s->nredo = 0;
  s->cur = -1;
  s->arena.len = 0;
  s->nev = 0;
  s->evbody.len = 0;
}

static int sq_begin(struct sg_store *base, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  read_release(s);
  if (s->held)
    return sg_errorf(e, SG_E_UNAVAILABLE, "%s (a transaction is waiting to be written again)", s->held_why);
  redo_clear(s);
  sqlite3_stmt *st = stmt_use(s, ST_BEGIN);
  int rc = sqlite3_step(st);
  s->in_txn = 1;
  if (rc != SQLITE_DONE && !passing_failure(rc)) {
    s->in_txn = 0;
    db_fail(s, e, "begin");
    stmt_done(st);
    return -1;
  }
  if (rc == SQLITE_DONE) { stmt_done(st); return 0; }
  hold_note(s, "begin"); /* the writes are kept from the start, and written when it can */
  stmt_done(st);
  roll_back_held(s);
  return 0;
}

static int events_flush(struct sqlite_store *s, struct sg_error *e);

static int sq_commit(struct sg_store *base, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  if (!s->held && events_flush(s, e) < 0) return -1;
  if (s->held) return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  sqlite3_stmt *st = stmt_use(s, ST_COMMIT);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    if (!passing_failure(rc)) {
      db_fail(s, e, "commit");
      stmt_done(st);
      s->in_txn = 0;
      redo_clear(s);
      return -1;
    }
    hold_note(s, "commit");
    stmt_done(st);
    roll_back_held(s);
    return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  }
  stmt_done(st);
  s->in_txn = 0;
  redo_clear(s);
  s->commits++;
  return 0;
}

static int sq_rollback(struct sg_store *base, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  s->in_txn = s->held = s->read_held = 0;
  redo_clear(s);
  /* SQLite may already have rolled back on its own (e.g. after SQLITE_FULL); that is success. */
  if (sqlite3_get_autocommit(s->db)) return 0;
  return stmt_exec(s, stmt_use(s, ST_ROLLBACK), e, "rollback");
}

/* Writes the held transaction again: the same statements with the same arguments, from the same
 * committed state, so it yields the same rows (ids included) as the first time would have. */
static int sq_retry_commit(struct sg_store *base, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  if (!s->held) return 0;
  read_release(s);
  roll_back_held(s); /* in case the failure left it open */
  const char *what = "begin";
  sqlite3_stmt *st = stmt_use(s, ST_BEGIN);
  int rc = sqlite3_step(st);
  stmt_done(st);
  for (size_t k = 0; rc == SQLITE_DONE && k < s->nredo; k++) {
    const struct redo *r = &s->redo[k];
    what = stmt_sql[r->st];
    st = stmt_use(s, r->st);
    for (int i = 0; i < r->n; i++) {
      if (r->a[i].kind == 1) bind_i64(st, i + 1, r->a[i].i);
      else if (r->a[i].kind == 2) bind_text(st, i + 1, s->arena.data + r->a[i].off);
    }
    rc = sqlite3_step(st);
    stmt_done(st);
  }
  if (rc == SQLITE_DONE) {
    what = "commit";
    st = stmt_use(s, ST_COMMIT);
    rc = sqlite3_step(st);
    stmt_done(st);
  }
  if (rc != SQLITE_DONE) {
    int passing = passing_failure(rc);
    sg_errorf(e, passing ? SG_E_UNAVAILABLE : SG_E_INTERNAL, "sqlite: writing the held transaction again (%.60s): %s",
              what, sqlite3_errmsg(s->db));
    roll_back_held(s);
    return -1;
  }
  s->held = s->in_txn = 0;
  redo_clear(s);
  s->commits++;
  return 0;
}

static int64_t sq_commit_count(struct sg_store *base) { return S(base)->commits; }

/* ---- definitions ---- */

static int sq_def_put(struct sg_store *base, const char *hash, const char *file, const char *source,
                      struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_DEF_PUT);
  wr_text(s, st, 1, hash);
  wr_text(s, st, 2, file);
  wr_text(s, st, 3, source);
  wr_i64(s, st, 4, sg_now_ms());
  return wr_done(s, st, e, "def_put");
}

static int sq_def_get(struct sg_store *base, const char *hash, char **file, char **source, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_DEF_GET);
  bind_text(st, 1, hash);
  if (file) *file = NULL;
  *source = NULL;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    if (file) *file = col_dup(st, 0);
    *source = col_dup(st, 1);
  } else if (rc != SQLITE_DONE) {
    db_fail(s, e, "def_get");
    stmt_done(st);
    return -1;
  }
  stmt_done(st);
  return 0;
}

/* ---- sagas ---- */

/* A text column, copied (own) or borrowed from the statement (valid until the next step). */
static char *col_str(sqlite3_stmt *st, int i, int own) {
  return own ? col_dup(st, i) : (char *)col_text(st, i);
}

/* Reads a row selected with SAGA_COLS. own: the strings are copies the caller frees with
 * sg_store_saga_row_free; otherwise they are borrowed for a callback. */
static void saga_from_stmt(sqlite3_stmt *st, struct sg_saga_row *r, int own) {
  const char *id = col_text(st, 0);
  snprintf(r->id, sizeof r->id, "%s", id ? id : "");
  r->type = col_str(st, 1, own);
  r->def_hash = col_str(st, 2, own);
  r->status = sg_status_parse(col_text(st, 3));
  r->step = sqlite3_column_int(st, 4);
  r->phase = sqlite3_column_int(st, 5);
  r->attempt = sqlite3_column_int(st, 6);
  r->input = col_str(st, 7, own);
  r->data = col_str(st, 8, own);
  r->error = col_str(st, 9, own);
  r->idem_key = col_str(st, 10, own);
  r->created_at = sqlite3_column_int64(st, 11);
  r->updated_at = sqlite3_column_int64(st, 12);
  r->deadline = sqlite3_column_int64(st, 13);
  r->version = sqlite3_column_int64(st, 14);
  r->attempt_started_at = sqlite3_column_int64(st, 15);
  r->attempt_base = sqlite3_column_int(st, 16);
  r->biz_key = col_str(st, 17, own);
  r->trace = col_str(st, 18, own);
  r->partial = col_str(st, 19, own);
  r->parent = col_str(st, 20, own);
  r->children = col_str(st, 21, own);
}

static int sq_saga_insert(struct sg_store *base, const struct sg_saga_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_SAGA_INSERT);
  wr_text(s, st, 1, r->id);
  wr_text(s, st, 2, r->type);
  wr_text(s, st, 3, r->def_hash);
  wr_text(s, st, 4, sg_status_name(r->status));
  wr_i64(s, st, 5, r->step);
  wr_i64(s, st, 6, r->phase);
  wr_i64(s, st, 7, r->attempt);
  wr_text(s, st, 8, r->input);
  wr_text(s, st, 9, r->data);
  wr_text(s, st, 10, r->error);
  wr_text(s, st, 11, r->idem_key);
  wr_i64(s, st, 12, r->created_at);
  wr_i64(s, st, 13, r->updated_at);
  wr_i64(s, st, 14, r->deadline);
  wr_i64(s, st, 15, r->version);
  wr_i64(s, st, 16, r->attempt_started_at);
  wr_i64(s, st, 17, r->attempt_base);
  wr_text(s, st, 18, r->biz_key);
  wr_text(s, st, 19, r->trace);
  wr_text(s, st, 20, r->partial);
  wr_text(s, st, 21, r->parent);
  wr_text(s, st, 22, r->children);
  return wr_done(s, st, e, "saga_insert");
}

static int sq_saga_update(struct sg_store *base, const struct sg_saga_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, r->same_status ? ST_SAGA_PROGRESS : ST_SAGA_UPDATE);
  wr_text(s, st, 1, r->id);
  if (!r->same_status) {
    wr_text(s, st, 2, r->def_hash);
    wr_text(s, st, 3, sg_status_name(r->status));
  }
  wr_i64(s, st, 4, r->step);
  wr_i64(s, st, 5, r->phase);
  wr_i64(s, st, 6, r->attempt);
  wr_text(s, st, 7, r->data);
  wr_text(s, st, 8, r->error);
  wr_i64(s, st, 9, r->updated_at);
  wr_i64(s, st, 10, r->deadline);
  wr_i64(s, st, 11, r->version);
  wr_i64(s, st, 12, r->attempt_started_at);
  wr_i64(s, st, 13, r->attempt_base);
  if (!r->same_status) wr_text(s, st, 14, r->trace); /* an operator's retry changes it */
  wr_text(s, st, 15, r->partial);
  wr_text(s, st, 16, r->children);
  int ran = wr_exec(s, st, e, "saga_update");
  if (ran < 0) return -1;
  if (ran && sqlite3_changes(s->db) == 0)
    return sg_errorf(e, SG_E_CONFLICT,
                     "saga %s: version conflict: expected stored version %lld (changed by another writer, or gone)",
                     r->id, (long long)(r->version - 1));
  return 0;
}

/* Steps a saga SELECT expected to return at most one row into out (owned). */
static int saga_get_one(struct sqlite_store *s, sqlite3_stmt *st, struct sg_saga_row *out, struct sg_error *e,
                        const char *what) {
  int rc = sqlite3_step(st), found = 0;
  if (rc == SQLITE_ROW) {
    saga_from_stmt(st, out, 1);
    found = 1;
  } else if (rc != SQLITE_DONE) {
    db_fail(s, e, what);
    found = -1;
  }
  stmt_done(st);
  return found;
}

static int sq_saga_get(struct sg_store *base, const char *id, struct sg_saga_row *out, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_SAGA_GET);
  bind_text(st, 1, id);
  return saga_get_one(s, st, out, e, "saga_get");
}

static int sq_saga_find_idem(struct sg_store *base, const char *type, const char *key, struct sg_saga_row *out,
                             struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_SAGA_FIND_IDEM);
  bind_text(st, 1, type);
  bind_text(st, 2, key);
  return saga_get_one(s, st, out, e, "saga_find_idem");
}

/* The caller's typed callback with its argument, for each_row. */
struct row_sink {
  union {
    sg_saga_cb saga;
    sg_hist_cb hist;
    sg_journal_cb journal;
    sg_timer_cb timer;
    sg_msg_cb msg;
  } cb;     /* the one that matches the emit function */
  void *ud; /* its argument */
};
/* Reads the current row of st into its row type (borrowed strings) and hands it to the sink. */
typedef int (*row_emit)(sqlite3_stmt *st, const struct row_sink *sink);

/* Steps st, handing every row to emit, until the callback returns non-zero. */
static int each_row(struct sqlite_store *s, sqlite3_stmt *st, row_emit emit, const struct row_sink *sink,
                    struct sg_error *e, const char *what) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    if (emit(st, sink)) { rc = SQLITE_DONE; break; }
  if (rc != SQLITE_DONE) {
    db_fail(s, e, what);
    stmt_done(st);
    return -1;
  }
  stmt_done(st);
  return 0;
}

static int emit_saga(sqlite3_stmt *st, const struct row_sink *sink) {
  struct sg_saga_row r;
  saga_from_stmt(st, &r, 0);
  return sink->cb.saga(sink->ud, &r);
}

static int saga_iter(struct sqlite_store *s, sqlite3_stmt *st, sg_saga_cb cb, void *ud, struct sg_error *e,
                     const char *what) {
  struct row_sink sink = { .cb.saga = cb, .ud = ud };
  return each_row(s, st, emit_saga, &sink, e, what);
}

/* The filter combinations of saga_list: the columns it names (each has an index ending in id) and the
 * order. The id range and the created_at bounds are always bound (with values that let every row by). */
enum { LIST_KEY = 1, LIST_TYPE = 2, LIST_STATUS = 4, LIST_DESC = 8, LIST_PARENT = 16 };

static sqlite3_stmt *list_stmt(struct sqlite_store *s, int combo, struct sg_error *e) {
  if (s->list_st[combo]) return s->list_st[combo];
  char sql[768];
  snprintf(sql, sizeof sql, "SELECT " SAGA_COLS " FROM sagas WHERE %s%s%s%sid > ?4 AND id < ?5"
           " AND created_at >= ?6 AND created_at < ?7 ORDER BY id%s LIMIT ?8",
           combo & LIST_PARENT ? "parent = ?9 AND " : "",
           combo & LIST_KEY ? "biz_key = ?1 AND " : "", combo & LIST_TYPE ? "type = ?2 AND " : "",
           combo & LIST_STATUS ? "status = ?3 AND " : "", combo & LIST_DESC ? " DESC" : "");
  if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->list_st[combo], NULL) != SQLITE_OK) {
    db_fail(s, e, "saga_list: prepare");
    return NULL;
  }
  return s->list_st[combo];
}

static int sq_saga_list(struct sg_store *base, const struct sg_saga_filter *f, sg_saga_cb cb, void *ud,
                        struct sg_error *e) {
  struct sqlite_store *s = S(base);
  int combo = (f->key ? LIST_KEY : 0) | (f->type ? LIST_TYPE : 0) | (f->status >= 0 ? LIST_STATUS : 0) |
              (f->desc ? LIST_DESC : 0) | (f->parent ? LIST_PARENT : 0);
  sqlite3_stmt *st = list_stmt(s, combo, e);
  if (!st) return -1;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  char lo[40], hi[40];
  sg_saga_filter_id_range(f, lo, hi);
  if (f->key) bind_text(st, 1, f->key);
  if (f->type) bind_text(st, 2, f->type);
  if (f->status >= 0) bind_text(st, 3, sg_status_name(f->status));
  if (f->parent) bind_text(st, 9, f->parent);
  bind_text(st, 4, lo); /* every id sorts after "" */
  bind_text(st, 5, hi[0] ? hi : "\x7f"); /* and before DEL (ids are ASCII) */
  bind_i64(st, 6, f->since > 0 ? f->since : INT64_MIN);
  bind_i64(st, 7, f->until > 0 ? f->until : INT64_MAX);
  bind_i64(st, 8, f->limit > 0 ? f->limit : -1); /* LIMIT -1: no limit */
  return saga_iter(s, st, cb, ud, e, "saga_list");
}

static int sq_saga_counts(struct sg_store *base, const char *type, int64_t counts[SG_ST__COUNT],
                          struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, type ? ST_SAGA_COUNTS_TYPE : ST_SAGA_COUNTS);
  if (type) bind_text(st, 1, type);
  for (int i = 0; i < SG_ST__COUNT; i++) counts[i] = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int status = sg_status_parse(col_text(st, 0));
    if (status >= 0) counts[status] = sqlite3_column_int64(st, 1);
  }
  if (rc != SQLITE_DONE) {
    db_fail(s, e, "saga_counts");
    stmt_done(st);
    return -1;
  }
  stmt_done(st);
  return 0;
}

static int sq_saga_each_active(struct sg_store *base, sg_saga_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  return saga_iter(s, stmt_use(s, ST_SAGA_ACTIVE), cb, ud, e, "saga_each_active");
}

/* ---- history ---- */

static int sq_hist_insert(struct sg_store *base, struct sg_hist_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_HIST_INSERT);
  wr_text(s, st, 1, r->saga_id);
  wr_i64(s, st, 2, r->step);
  wr_text(s, st, 3, r->step_name);
  wr_i64(s, st, 4, r->phase);
  wr_i64(s, st, 5, r->attempt);
  wr_text(s, st, 6, r->status);
  wr_i64(s, st, 7, r->started_at);
  wr_i64(s, st, 8, r->finished_at);
  wr_text(s, st, 9, r->error);
  int64_t id = s->next_hist++;
  wr_i64(s, st, 10, id);
  if (wr_exec(s, st, e, "hist_insert") < 0) return -1;
  r->id = id;
  return 0;
}

static int emit_hist(sqlite3_stmt *st, const struct row_sink *sink) {
  struct sg_hist_row r = {
    .id = sqlite3_column_int64(st, 0),
    .saga_id = col_text(st, 1),
    .step = sqlite3_column_int(st, 2),
    .step_name = col_text(st, 3),
    .phase = sqlite3_column_int(st, 4),
    .attempt = sqlite3_column_int(st, 5),
    .status = col_text(st, 6),
    .started_at = sqlite3_column_int64(st, 7),
    .finished_at = sqlite3_column_int64(st, 8),
    .error = col_text(st, 9),
  };
  return sink->cb.hist(sink->ud, &r);
}

static int sq_hist_each(struct sg_store *base, const char *saga_id, sg_hist_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_HIST_EACH);
  bind_text(st, 1, saga_id);
  struct row_sink sink = { .cb.hist = cb, .ud = ud };
  return each_row(s, st, emit_hist, &sink, e, "hist_each");
}

/* ---- events ---- */

static int sq_event_put(struct sg_store *base, const struct sg_event_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  (void)e;
  if (!s->nev++) {
    s->ev_at = r->at;
    snprintf(s->ev_host, sizeof s->ev_host, "%s", r->host_id ? r->host_id : "");
  }
  sg_event_line(&s->evbody, r);
  return 0;
}

/* the transaction's events as one row, just before its COMMIT (kept in the redo like every write) */
static int events_flush(struct sqlite_store *s, struct sg_error *e) {
  if (!s->nev) return 0;
  sqlite3_stmt *st = wr_use(s, ST_EVENT_PUT);
  wr_i64(s, st, 1, s->next_event++);
  wr_i64(s, st, 2, s->ev_at);
  wr_i64(s, st, 3, s->nev);
  wr_text(s, st, 4, s->ev_host[0] ? s->ev_host : NULL);
  wr_text(s, st, 5, s->evbody.data);
  s->nev = 0;
  s->evbody.len = 0;
  return wr_done(s, st, e, "events");
}

/* positions are the ids: one writer, so id order is commit order */
static int sq_event_read(struct sg_store *base, struct sg_read *rd, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  if (!rd->a) {
    sqlite3_stmt *st = stmt_use(s, rd->before > 0 ? ST_EVENT_BEFORE : ST_EVENT_END);
    if (rd->before > 0) sqlite3_bind_int64(st, 1, rd->before);
    int rc = sqlite3_step(st);
    int64_t end = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW) return db_fail(s, e, "event_read");
    snprintf(rd->pos, sizeof rd->pos, "%" PRId64, end);
    return 0;
  }
  char *end;
  errno = 0;
  long long after = strtoll(rd->a, &end, 10);
  if (!*rd->a || *end || errno || after < 0)
    return sg_errorf(e, SG_E_INVALID, "malformed event id '%.60s': expected the id of an event of this store", rd->a);
  snprintf(rd->pos, sizeof rd->pos, "%lld", after);
  sqlite3_stmt *st = stmt_use(s, ST_EVENT_AFTER);
  sqlite3_bind_int64(st, 1, rd->incl ? after : after + 1);
  sqlite3_bind_int64(st, 2, rd->limit > 0 ? rd->limit : 16);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    char pos[48];
    snprintf(pos, sizeof pos, "%" PRId64, (int64_t)sqlite3_column_int64(st, 0));
    sg_read_add_events(rd, pos, sqlite3_column_int64(st, 1), sqlite3_column_int(st, 2), col_text(st, 4),
                       col_text(st, 3));
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return db_fail(s, e, "event_read");
  return 0;
}

static int sq_event_prune(struct sg_store *base, int64_t before, int64_t *deleted, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_EVENT_PRUNE);
  wr_i64(s, st, 1, before);
  wr_i64(s, st, 2, 20000);
  int ran = wr_exec(s, st, e, "event_prune");
  if (ran < 0) return -1;
  if (deleted) *deleted = ran ? sqlite3_changes(s->db) : 0;
  return 0;
}

/* ---- journal ---- */

static int sq_journal_put(struct sg_store *base, const struct sg_journal_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_JOURNAL_PUT);
  wr_text(s, st, 1, r->saga_id);
  wr_i64(s, st, 2, r->step);
  wr_i64(s, st, 3, r->phase);
  wr_i64(s, st, 4, r->attempt);
  wr_i64(s, st, 5, r->seq);
  wr_text(s, st, 6, r->kind);
  wr_i64(s, st, 7, r->done);
  wr_i64(s, st, 8, r->is_error);
  wr_text(s, st, 9, r->result);
  return wr_done(s, st, e, "journal_put");
}

static int emit_journal(sqlite3_stmt *st, const struct row_sink *sink) {
  struct sg_journal_row r = {
    .saga_id = col_text(st, 0),
    .step = sqlite3_column_int(st, 1),
    .phase = sqlite3_column_int(st, 2),
    .attempt = sqlite3_column_int(st, 3),
    .seq = sqlite3_column_int(st, 4),
    .kind = col_text(st, 5),
    .done = sqlite3_column_int(st, 6),
    .is_error = sqlite3_column_int(st, 7),
    .result = col_text(st, 8),
  };
  return sink->cb.journal(sink->ud, &r);
}

static int sq_journal_each(struct sg_store *base, const char *saga_id, int step, int phase, int attempt,
                           sg_journal_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_JOURNAL_EACH);
  bind_text(st, 1, saga_id);
  bind_i64(st, 2, step);
  bind_i64(st, 3, phase);
  bind_i64(st, 4, attempt);
  struct row_sink sink = { .cb.journal = cb, .ud = ud };
  return each_row(s, st, emit_journal, &sink, e, "journal_each");
}

/* Every journal row, by saga then seq, in one scan (the engine keeps those of each saga's current
 * attempt): a restart with a million parked sagas made a million point queries otherwise. */
static int sq_journal_each_active(struct sg_store *base, sg_journal_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  struct row_sink sink = { .cb.journal = cb, .ud = ud };
  return each_row(s, stmt_use(s, ST_JOURNAL_ALL), emit_journal, &sink, e, "journal_each_active");
}

/* ---- timers ---- */

static int sq_timer_put(struct sg_store *base, struct sg_timer_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_TIMER_PUT);
  wr_text(s, st, 1, r->saga_id);
  wr_i64(s, st, 2, r->due_at);
  wr_text(s, st, 3, r->kind);
  wr_i64(s, st, 4, r->ref);
  int64_t id = s->next_timer++;
  wr_i64(s, st, 5, id);
  if (wr_exec(s, st, e, "timer_put") < 0) return -1;
  r->id = id;
  return 0;
}

/* Deleting an id that is already gone succeeds: a timer may fire and be cancelled in one batch. */
static int sq_timer_del(struct sg_store *base, int64_t id, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_TIMER_DEL);
  wr_i64(s, st, 1, id);
  return wr_done(s, st, e, "timer_del");
}

static int emit_timer(sqlite3_stmt *st, const struct row_sink *sink) {
  struct sg_timer_row r = {
    .id = sqlite3_column_int64(st, 0),
    .saga_id = col_text(st, 1),
    .due_at = sqlite3_column_int64(st, 2),
    .kind = col_text(st, 3),
    .ref = sqlite3_column_int64(st, 4),
  };
  return sink->cb.timer(sink->ud, &r);
}

static int sq_timer_each(struct sg_store *base, sg_timer_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  struct row_sink sink = { .cb.timer = cb, .ud = ud };
  return each_row(s, stmt_use(s, ST_TIMER_EACH), emit_timer, &sink, e, "timer_each");
}

/* ---- outbox ---- */

static int sq_outbox_put(struct sg_store *base, struct sg_msg *m, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_OUTBOX_PUT);
  wr_text(s, st, 1, m->message_id);
  wr_text(s, st, 2, m->correlation_id);
  const char *exchange;
  char rk[1024];
  sg_msg_row_route(m, &exchange, rk, sizeof rk);
  wr_text(s, st, 3, exchange);
  wr_text(s, st, 4, rk);
  wr_text(s, st, 5, m->kind == SG_MSG_REPLY ? NULL : m->reply_to);
  wr_text(s, st, 6, m->name);
  wr_text(s, st, 7, m->saga_id);
  wr_text(s, st, 8, m->saga_type);
  wr_i64(s, st, 9, m->step);
  wr_i64(s, st, 10, m->attempt);
  wr_text(s, st, 11, m->status);
  wr_text(s, st, 12, m->body);
  wr_i64(s, st, 13, m->created_at);
  int64_t id = s->next_outbox++;
  wr_i64(s, st, 14, id);
  if (wr_exec(s, st, e, "outbox_put") < 0) return -1;
  m->outbox_id = id;
  return 0;
}

/* Like timer_del, a second delete (a duplicate confirm) is not an error. */
static int sq_outbox_del(struct sg_store *base, int64_t id, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_OUTBOX_DEL);
  wr_i64(s, st, 1, id);
  return wr_done(s, st, e, "outbox_del");
}

static int emit_outbox(sqlite3_stmt *st, const struct row_sink *sink) {
  /* sg_msg has non-const members because received messages own theirs; these are borrowed. */
  struct sg_msg m = {
    .outbox_id = sqlite3_column_int64(st, 0),
    .message_id = (char *)col_text(st, 1),
    .correlation_id = (char *)col_text(st, 2),
    .saga_id = (char *)col_text(st, 7),
    .saga_type = (char *)col_text(st, 8),
    .step = sqlite3_column_int(st, 9),
    .attempt = sqlite3_column_int(st, 10),
    .status = (char *)col_text(st, 11),
    .body = (char *)col_text(st, 12),
    .created_at = sqlite3_column_int64(st, 13),
  };
  char svc[256];
  sg_msg_from_row(&m, col_text(st, 3), col_text(st, 4), col_text(st, 6), col_text(st, 5), svc, sizeof svc);
  return sink->cb.msg(sink->ud, &m);
}

static int sq_outbox_each(struct sg_store *base, sg_msg_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  struct row_sink sink = { .cb.msg = cb, .ud = ud };
  return each_row(s, stmt_use(s, ST_OUTBOX_EACH), emit_outbox, &sink, e, "outbox_each");
}

/* ---- inbox ---- */

/* ---- schedules ---- */

static int sq_schedule_last(struct sg_store *base, const char *name, int64_t *last, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_SCHED_LAST);
  bind_text(st, 1, name);
  int rc = sqlite3_step(st), found = 0;
  if (rc == SQLITE_ROW) {
    *last = sqlite3_column_int64(st, 0);
    found = 1;
  } else if (rc != SQLITE_DONE) {
    db_fail(s, e, "schedule_last");
    found = -1;
  }
  stmt_done(st);
  return found;
}

/* one host per SQLite file: the claim and the saga are written in the batch (a held transaction
 * writes both again, and the claim holds again: no other host moves last_fire) */
static int sq_schedule_claim(struct sg_store *base, const char *name, int64_t at, const struct sg_saga_row *r,
                             struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_SCHED_CLAIM);
  wr_text(s, st, 1, name);
  wr_i64(s, st, 2, at);
  int ran = wr_exec(s, st, e, "schedule_claim");
  if (ran < 0) return -1;
  if (ran && sqlite3_changes(s->db) == 0) return 0;
  if (r && sq_saga_insert(base, r, e) < 0) return -1;
  return 1;
}

static int sq_inbox_get(struct sg_store *base, const char *message_id, char **reply_status, char **reply_body,
                        struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_INBOX_GET);
  bind_text(st, 1, message_id);
  if (reply_status) *reply_status = NULL;
  if (reply_body) *reply_body = NULL;
  int rc = sqlite3_step(st), found = 0;
  if (rc == SQLITE_ROW) {
    if (reply_status) *reply_status = col_dup(st, 0);
    if (reply_body) *reply_body = col_dup(st, 1);
    found = 1;
  } else if (rc != SQLITE_DONE) {
    db_fail(s, e, "inbox_get");
    found = -1;
  }
  stmt_done(st);
  return found;
}

static int sq_inbox_put(struct sg_store *base, const char *message_id, const char *reply_status,
                        const char *reply_body, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_INBOX_PUT);
  wr_text(s, st, 1, message_id);
  wr_text(s, st, 2, reply_status);
  wr_text(s, st, 3, reply_body);
  wr_i64(s, st, 4, sg_now_ms());
  return wr_done(s, st, e, "inbox_put");
}

/* ---- open / close ---- */

static void sq_close(struct sg_store *base) {
  struct sqlite_store *s = S(base);
  if (!s) return;
  for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(s->st[i]); /* NULL is a no-op */
  for (int i = 0; i < 32; i++) sqlite3_finalize(s->list_st[i]);
  sqlite3_close(s->db); /* rolls back an open transaction */
  /* released only after the connection is closed, so the next writer starts on a quiet file; the
   * file itself stays: unlinking it would let a late opener lock a file nobody else can see */
  if (s->lock_fd >= 0) close(s->lock_fd);
  free(s->redo);
  sg_buf_free(&s->arena);
  sg_buf_free(&s->evbody);
  free(s);
}

static int sq_inbox_prune(struct sg_store *base, int64_t before, int64_t *deleted, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_INBOX_PRUNE);
  wr_i64(s, st, 1, before);
  int ran = wr_exec(s, st, e, "inbox_prune");
  if (ran < 0) return -1;
  if (deleted) *deleted = ran ? sqlite3_changes(s->db) : 0;
  return 0;
}

static int sq_saga_prune(struct sg_store *base, int64_t before, int limit, int64_t *deleted, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  if (wr_exec(s, wr_use(s, ST_PRUNE_CLEAR), e, "saga_prune") < 0) return -1;
  sqlite3_stmt *st = wr_use(s, ST_PRUNE_MARK);
  wr_i64(s, st, 1, before);
  wr_i64(s, st, 2, limit);
  int ran = wr_exec(s, st, e, "saga_prune");
  if (ran < 0) return -1;
  if (deleted) *deleted = ran ? sqlite3_changes(s->db) : 0;
  if (wr_exec(s, wr_use(s, ST_PRUNE_HIST), e, "saga_prune history") < 0) return -1;
  if (wr_exec(s, wr_use(s, ST_PRUNE_SIGNALS), e, "saga_prune signals") < 0) return -1;
  return wr_done(s, wr_use(s, ST_PRUNE_SAGAS), e, "saga_prune sagas");
}

static int sq_journal_del(struct sg_store *base, const char *saga_id, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_JOURNAL_DEL);
  wr_text(s, st, 1, saga_id);
  return wr_done(s, st, e, "journal_del");
}

/* ---- signals ---- */

static int sq_signal_put(struct sg_store *base, const struct sg_signal_row *r, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_SIGNAL_PUT);
  wr_text(s, st, 1, r->id);
  wr_text(s, st, 2, r->saga_id);
  wr_text(s, st, 3, r->name);
  wr_text(s, st, 4, r->payload);
  wr_text(s, st, 5, r->idem_key);
  wr_i64(s, st, 6, r->seq);
  wr_i64(s, st, 7, r->received_at);
  wr_i64(s, st, 8, r->delivered_at);
  return wr_done(s, st, e, "signal_put");
}

static int sq_signal_done(struct sg_store *base, const char *id, int64_t at, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = wr_use(s, ST_SIGNAL_DONE);
  wr_text(s, st, 1, id);
  wr_i64(s, st, 2, at);
  return wr_done(s, st, e, "signal_done");
}

static int sq_signal_find(struct sg_store *base, const char *saga_id, const char *idem_key, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_SIGNAL_FIND);
  bind_text(st, 1, saga_id);
  bind_text(st, 2, idem_key);
  int rc = sqlite3_step(st), found = rc == SQLITE_ROW;
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) found = db_fail(s, e, "signal_find");
  stmt_done(st);
  return found;
}

static int sq_signal_each(struct sg_store *base, const char *saga_id, sg_signal_cb cb, void *ud, struct sg_error *e) {
  struct sqlite_store *s = S(base);
  sqlite3_stmt *st = stmt_use(s, ST_SIGNAL_EACH);
  bind_text(st, 1, saga_id);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    struct sg_signal_row r = {
      .id = col_text(st, 0), .saga_id = col_text(st, 1), .name = col_text(st, 2), .payload = col_text(st, 3),
      .idem_key = col_text(st, 4), .seq = sqlite3_column_int64(st, 5), .received_at = sqlite3_column_int64(st, 6),
      .delivered_at = sqlite3_column_int64(st, 7),
    };
    if (cb(ud, &r)) break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    db_fail(s, e, "signal_each");
    stmt_done(st);
    return -1;
  }
  stmt_done(st);
  return 0;
}

static const struct sg_store_ops sqlite_ops = {
  .name = "sqlite",
  .close = sq_close,
  .begin = sq_begin,
  .commit = sq_commit,
  .rollback = sq_rollback,
  .retry_commit = sq_retry_commit,
  .def_put = sq_def_put,
  .def_get = sq_def_get,
  .saga_insert = sq_saga_insert,
  .saga_update = sq_saga_update,
  .saga_get = sq_saga_get,
  .saga_find_idem = sq_saga_find_idem,
  .saga_list = sq_saga_list,
  .saga_counts = sq_saga_counts,
  .saga_each_active = sq_saga_each_active,
  .journal_each_active = sq_journal_each_active,
  .hist_insert = sq_hist_insert,
  .hist_each = sq_hist_each,
  .journal_put = sq_journal_put,
  .journal_each = sq_journal_each,
  .timer_put = sq_timer_put,
  .timer_del = sq_timer_del,
  .timer_each = sq_timer_each,
  .outbox_put = sq_outbox_put,
  .outbox_del = sq_outbox_del,
  .outbox_each = sq_outbox_each,
  .inbox_get = sq_inbox_get,
  .inbox_put = sq_inbox_put,
  .inbox_prune = sq_inbox_prune,
  .schedule_last = sq_schedule_last,
  .schedule_claim = sq_schedule_claim,
  .journal_del = sq_journal_del,
  .event_put = sq_event_put,
  .event_read = sq_event_read,
  .event_prune = sq_event_prune,
  .saga_prune = sq_saga_prune,
  .signal_put = sq_signal_put,
  .signal_done = sq_signal_done,
  .signal_find = sq_signal_find,
  .signal_each = sq_signal_each,
  .read_hold = sq_read_hold,
  .read_release = sq_read_release,
  .commit_count = sq_commit_count,
};

/* Open-time only: runs SQL text that may hold several statements. */
static int exec_sql(struct sqlite_store *s, const char *sql, struct sg_error *e, const char *what) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    sg_errorf(e, SG_E_INTERNAL, "sqlite: %s: %s", what, msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    return -1;
  }
  return 0;
}

/* Reads one integer from a single-row query (open-time only). */
static int query_int(struct sqlite_store *s, const char *sql, int64_t *out, struct sg_error *e, const char *what) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return db_fail(s, e, what);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    db_fail(s, e, what);
    sqlite3_finalize(st);
    return -1;
  }
  *out = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return 0;
}

/* Applies the missing migrations. The version is re-read inside each write transaction so two hosts
 * opening a fresh database at once do not both apply a step. */
static int migrate(struct sqlite_store *s, struct sg_error *e) {
  if (exec_sql(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                  " applied_at INTEGER NOT NULL)", e, "create schema_version") < 0)
    return -1;
  for (;;) {
    if (exec_sql(s, "BEGIN IMMEDIATE", e, "migrate: begin") < 0) return -1;
    int64_t have = 0;
    if (query_int(s, "SELECT coalesce(max(version), 0) FROM schema_version", &have, e, "migrate: read version") < 0)
      goto fail;
    if (have > N_MIGRATIONS) {
      sg_errorf(e, SG_E_INTERNAL, "sqlite: database schema version %lld is newer than this host knows (%d):"
                " upgrade sagahost", (long long)have, N_MIGRATIONS);
      goto fail;
    }
    if (have == N_MIGRATIONS) return exec_sql(s, "COMMIT", e, "migrate: commit");
    char what[64];
    snprintf(what, sizeof what, "migration %lld", (long long)have + 1);
    if (exec_sql(s, migrations[have], e, what) < 0) goto fail;
    char mark[128];
    snprintf(mark, sizeof mark, "INSERT INTO schema_version(version, applied_at) VALUES (%lld, %lld)",
             (long long)have + 1, (long long)sg_now_ms());
    if (exec_sql(s, mark, e, what) < 0) goto fail;
    if (exec_sql(s, "COMMIT", e, "migrate: commit") < 0) goto fail;
  }
fail:
  sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  return -1;
}

/* One writer per database file. SQLite would let two hosts share a file (its locks serialise the
 * transactions), but each host believes it owns every running saga in it: both would resume them,
 * send their commands and fire their timers. So the first opener takes an exclusive flock on
 * <path>.lock and keeps it until close; the kernel drops it when the process dies, so a kill -9
 * leaves no stale lock behind. flock (not fcntl) because its locks belong to the open file, not to
 * the process: two stores in one process (the Lua module) exclude each other too, and closing some
 * other descriptor of the file does not drop the lock. The holder's pid is written into the file so
 * the refusal can name it. Returns the locked fd, or -1 with e filled. */
static int take_writer_lock(const char *path, struct sg_error *e) {
  char *lock = sg_asprintf("%s.lock", path);
  /* no O_TRUNC: the pid in it belongs to the holder until we hold the lock ourselves */
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    sg_errorf(e, SG_E_INTERNAL, "sqlite: cannot create the lock file %s: %s (the database directory must be "
              "writable)", lock, strerror(errno));
    free(lock);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    int err = errno;
    if (err != EWOULDBLOCK) {
      sg_errorf(e, SG_E_INTERNAL, "sqlite: cannot lock %s: %s", lock, strerror(err));
    } else {
      char buf[32] = "";
      ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
      buf[n > 0 ? n : 0] = 0;
      long pid = strtol(buf, NULL, 10);
      char who[96];
      if (pid <= 0) snprintf(who, sizeof who, "another process (its pid is not written in %s yet)", lock);
      else if (pid == (long)getpid()) snprintf(who, sizeof who, "another host of this process (pid %ld)", pid);
      else snprintf(who, sizeof who, "another sagahost, pid %ld", pid);
      sg_errorf(e, SG_E_CONFLICT, "database %s is in use by %s, which holds %s: only one host may run on a "
                "database file; stop that host first, or use another database file", path, who, lock);
    }
    close(fd);
    free(lock);
    return -1;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
    sg_warn("sqlite: could not write our pid into %s: %s (the lock holds; a refused host will not name us)",
            lock, strerror(errno));
  free(lock);
  return fd;
}

int sg_store_sqlite_in_use(const char *path, struct sg_error *e) {
  if (!*path || strcmp(path, ":memory:") == 0) return 0;
  struct sg_error le = {0};
  int fd = take_writer_lock(path, &le);
  if (fd >= 0) { close(fd); return 0; }
  if (le.code != SG_E_CONFLICT) return 0; /* e.g. no such directory: the open says so */
  *e = le;
  return 1;
}

struct sg_store *sg_store_sqlite_open(const char *path, struct sg_error *e) {
  struct sqlite_store *s = sg_xcalloc(1, sizeof *s);
  s->base.ops = &sqlite_ops;
  s->lock_fd = -1;
  s->cur = -1;
  sg_buf_init(&s->arena);
  /* through walbuf: a group commit's WAL frames are written with one call, not two each */
  int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           sg_walbuf_vfs());
  if (rc != SQLITE_OK) {
    sg_errorf(e, SG_E_INTERNAL, "sqlite: open %s: %s", path, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    goto fail;
  }
  /* before the first statement: a refused host must not touch the file (not even to set WAL mode) */
  if (*path && strcmp(path, ":memory:") != 0 && (s->lock_fd = take_writer_lock(path, e)) < 0) goto fail;
  sqlite3_extended_result_codes(s->db, 1);
  /* Waiting beats failing when another process (a CLI, a backup) holds the lock briefly. */
  sqlite3_busy_timeout(s->db, 5000);
  if (exec_sql(s, "PRAGMA journal_mode=WAL", e, "set WAL mode") < 0) goto fail;
  /* FULL: a commit is durable when it returns; throughput comes from group commit, not from this. */
  if (exec_sql(s, "PRAGMA synchronous=FULL", e, "set synchronous") < 0) goto fail;
  /* Fewer, larger checkpoints: a page rewritten by many group commits is copied back once. 64 MB of
   * page cache keeps the hot tails of the tables in memory. */
  if (exec_sql(s, "PRAGMA wal_autocheckpoint=8000", e, "set the checkpoint interval") < 0) goto fail;
  if (exec_sql(s, "PRAGMA cache_size=-65536", e, "set the cache size") < 0) goto fail;
  if (exec_sql(s, "PRAGMA temp_store=MEMORY", e, "set temp_store") < 0) goto fail;
  if (migrate(s, e) < 0) goto fail;
  /* the ids a retention pass deletes (a connection's own temp table) */
  if (exec_sql(s, "CREATE TEMP TABLE prune(id TEXT PRIMARY KEY)", e, "create the retention table") < 0) goto fail;
  /* the next ids: past every row, and for the AUTOINCREMENT tables past every id ever given out */
  if (query_int(s, "SELECT coalesce(max(id), 0) + 1 FROM history", &s->next_hist, e, "read the next history id") < 0 ||
      query_int(s, "SELECT coalesce(max(id), 0) + 1 FROM events", &s->next_event, e, "read the next event id") < 0 ||
      query_int(s, "SELECT max(coalesce((SELECT max(id) FROM timers), 0), coalesce((SELECT seq FROM sqlite_sequence"
                " WHERE name = 'timers'), 0)) + 1", &s->next_timer, e, "read the next timer id") < 0 ||
      query_int(s, "SELECT max(coalesce((SELECT max(id) FROM outbox), 0), coalesce((SELECT seq FROM sqlite_sequence"
                " WHERE name = 'outbox'), 0)) + 1", &s->next_outbox, e, "read the next outbox id") < 0)
    goto fail;
  for (int i = 0; i < ST_COUNT; i++) {
    if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) != SQLITE_OK) {
      sg_errorf(e, SG_E_INTERNAL, "sqlite: prepare '%.60s': %s", stmt_sql[i], sqlite3_errmsg(s->db));
      goto fail;
    }
  }
  return &s->base;
fail:
  sq_close(&s->base);
  return NULL;
}
