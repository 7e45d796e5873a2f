/* Unit tests for the SQLite store (store_sqlite.c, store_common.c) against a temp-file database.
 * Each section opens what it needs; the database file is shared so later sections can check what
 * survives a close and reopen. */
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "store.h"

static char tmpdir[64];   /* mkdtemp'd directory, removed at the end */
static char dbpath[128];  /* tmpdir/test.db */
static struct sg_error err; /* shared error slot; checks print it on failure */

static struct sg_store *open_store(void) {
  struct sg_store *s = sg_store_sqlite_open(dbpath, &err);
  if (!CHECK(s != NULL)) { fprintf(stderr, "  open: %s\n", err.msg); exit(1); }
  return s;
}

/* Runs a store call that must succeed, showing the store's message when it does not. */
#define OK(call) do { if (!CHECK((call) == 0)) fprintf(stderr, "  %s\n", err.msg); } while (0)

/* Reads one integer with a separate raw connection (WAL lets it read beside the store's). */
static long long raw_int(const char *sql) {
  sqlite3 *db;
  sqlite3_stmt *st;
  long long v = -1;
  if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return v;
}

static const char *raw_text(const char *sql, char *out, size_t n) {
  sqlite3 *db;
  sqlite3_stmt *st;
  out[0] = 0;
  if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return out;
}

/* A saga row with every column set to something recognisable. */
static struct sg_saga_row mk_saga(const char *id, const char *type, int status, const char *idem) {
  struct sg_saga_row r = {
    .type = (char *)type, .def_hash = "hash-1", .status = status, .step = 2, .phase = SG_PH_ACTION,
    .attempt = 1, .input = "{\"order\":1}", .data = "{}", .error = NULL, .idem_key = (char *)idem,
    .created_at = 1000, .updated_at = 1001, .deadline = 5000, .version = 1,
  };
  snprintf(r.id, sizeof r.id, "%s", id);
  return r;
}

/* ---- statuses and row helpers (store_common.c) ---- */

static int H_count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static void test_common(void) {
  CHECK_STR(sg_status_name(SG_ST_RUNNING), "running");
  CHECK_STR(sg_status_name(SG_ST_COMPENSATING), "compensating");
  CHECK_STR(sg_status_name(SG_ST_COMPLETED), "completed");
  CHECK_STR(sg_status_name(SG_ST_COMPENSATED), "compensated");
  CHECK_STR(sg_status_name(SG_ST_COMPENSATION_FAILED), "compensation_failed");
  for (int st = SG_ST_RUNNING; st <= SG_ST_COMPENSATION_FAILED; st++)
    CHECK_EQ_INT(sg_status_parse(sg_status_name(st)), st);
  CHECK_EQ_INT(sg_status_parse("Running"), -1);
  CHECK_EQ_INT(sg_status_parse(""), -1);
  CHECK_EQ_INT(sg_status_parse(NULL), -1);
  CHECK(!SG_ST_TERMINAL(SG_ST_COMPENSATING));
  CHECK(SG_ST_TERMINAL(SG_ST_COMPLETED));
  CHECK_STR(sg_phase_name(SG_PH_ACTION), "action");
  CHECK_STR(sg_phase_name(SG_PH_COMPENSATE), "compensate");

  struct sg_msg a = {
    .outbox_id = 7, .message_id = "m1", .correlation_id = NULL, .kind = SG_MSG_COMMAND,
    .service = "inventory", .reply_to = "q", .name = "Reserve", .saga_id = "s1",
    .saga_type = "Order", .step = 3, .attempt = 2, .status = NULL, .body = "{}", .created_at = 42,
  };
  sg_msg_set_header(&a, "traceparent", "tp-1");
  sg_msg_set_header(&a, "tracestate", "ts-1");
  sg_msg_set_header(&a, "traceparent", "tp-2"); /* replaced in place */
  CHECK_EQ_INT(a.nheaders, 2);
  CHECK_STR(sg_msg_header(&a, "traceparent"), "tp-2");
  struct sg_msg b;
  sg_msg_copy(&b, &a);
  CHECK(b.message_id != a.message_id);
  CHECK_STR(b.message_id, "m1");
  CHECK_STR(b.correlation_id, NULL);
  CHECK(b.kind == SG_MSG_COMMAND);
  CHECK_STR(b.service, "inventory");
  CHECK_STR(b.name, "Reserve");
  CHECK(b.headers != a.headers && b.nheaders == 2);
  CHECK_STR(sg_msg_header(&b, "tracestate"), "ts-1");
  sg_msg_set_header(&b, "traceparent", NULL); /* removed */
  CHECK_EQ_INT(b.nheaders, 1);
  CHECK_STR(sg_msg_header(&b, "traceparent"), NULL);
  CHECK_STR(sg_msg_header(&a, "traceparent"), "tp-2");
  for (size_t i = 0; i < a.nheaders; i++) { free(a.headers[i].name); free(a.headers[i].value); }
  free(a.headers);
  CHECK_STR(b.saga_type, "Order");
  CHECK_EQ_INT(b.step, 3);
  CHECK_EQ_INT(b.attempt, 2);
  CHECK_EQ_INT(b.outbox_id, 7);
  CHECK_EQ_INT(b.created_at, 42);
  sg_msg_free(&b);
  CHECK(b.message_id == NULL && b.body == NULL);
  sg_msg_free(&b); /* twice is harmless */
}

/* ---- open, schema, migrations ---- */

static void test_open_and_migrations(void) {
  struct sg_store *s = open_store();
  CHECK_STR(s->ops->name, "sqlite");
  long long version = raw_int("SELECT max(version) FROM schema_version");
  long long rows = raw_int("SELECT count(*) FROM schema_version");
  CHECK(version >= 1);
  CHECK_EQ_INT(rows, version); /* one row per applied step, no gaps */
  char buf[64];
  CHECK_STR(raw_text("PRAGMA journal_mode", buf, sizeof buf), "wal");
  const char *tables[] = {"definitions", "sagas", "history", "journal", "timers", "outbox", "inbox"};
  for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='%s'", tables[i]);
    if (!CHECK(raw_int(sql) == 1)) fprintf(stderr, "  missing table %s\n", tables[i]);
  }
  s->ops->close(s);

  /* reopening applies nothing new */
  s = open_store();
  CHECK_EQ_INT(raw_int("SELECT max(version) FROM schema_version"), version);
  CHECK_EQ_INT(raw_int("SELECT count(*) FROM schema_version"), rows);
  s->ops->close(s);

  /* a database from a newer host is refused rather than half-understood */
  char newer_path[160];
  snprintf(newer_path, sizeof newer_path, "%s/newer.db", tmpdir);
  sqlite3 *db;
  sqlite3_open(newer_path, &db);
  sqlite3_exec(db, "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);"
                   "INSERT INTO schema_version VALUES (9999, 0)", NULL, NULL, NULL);
  sqlite3_close(db);
  struct sg_error e2 = {0};
  CHECK(sg_store_sqlite_open(newer_path, &e2) == NULL);
  CHECK(strstr(e2.msg, "newer") != NULL);
  CHECK_EQ_INT(e2.code, SG_E_INTERNAL);

  /* an unopenable path is an error, not a crash */
  e2.msg[0] = 0;
  CHECK(sg_store_sqlite_open("/nonexistent-dir/x/y.db", &e2) == NULL);
  CHECK(strncmp(e2.msg, "sqlite: ", 8) == 0);
}

/* ---- definitions ---- */

static void test_definitions(struct sg_store *s) {
  OK(s->ops->def_put(s, "h1", "sagas/order.lua", "return 1", &err));
  OK(s->ops->def_put(s, "h1", "other.lua", "return 2", &err)); /* same hash: kept as first stored */
  char *file = NULL, *src = NULL;
  OK(s->ops->def_get(s, "h1", &file, &src, &err));
  CHECK_STR(file, "sagas/order.lua");
  CHECK_STR(src, "return 1");
  free(file);
  free(src);
  file = src = (char *)"junk";
  OK(s->ops->def_get(s, "nope", &file, &src, &err));
  CHECK(src == NULL);
  CHECK(file == NULL);
  CHECK_EQ_INT(raw_int("SELECT count(*) FROM definitions"), 1);
}

/* ---- sagas ---- */

static void test_saga_crud(struct sg_store *s) {
  struct sg_saga_row r = mk_saga("a0000000-0000-4000-8000-000000000001", "Order", SG_ST_RUNNING, NULL);
  OK(s->ops->saga_insert(s, &r, &err));

  struct sg_saga_row g = {0};
  CHECK_EQ_INT(s->ops->saga_get(s, r.id, &g, &err), 1);
  CHECK_STR(g.id, r.id);
  CHECK_STR(g.type, "Order");
  CHECK_STR(g.def_hash, "hash-1");
  CHECK_EQ_INT(g.status, SG_ST_RUNNING);
  CHECK_EQ_INT(g.step, 2);
  CHECK_EQ_INT(g.phase, SG_PH_ACTION);
  CHECK_EQ_INT(g.attempt, 1);
  CHECK_STR(g.input, "{\"order\":1}");
  CHECK_STR(g.data, "{}");
  CHECK_STR(g.error, NULL);
  CHECK_STR(g.idem_key, NULL);
  CHECK_EQ_INT(g.created_at, 1000);
  CHECK_EQ_INT(g.updated_at, 1001);
  CHECK_EQ_INT(g.deadline, 5000);
  CHECK_EQ_INT(g.version, 1);
  sg_store_saga_row_free(&g);
  CHECK(g.type == NULL && g.data == NULL);

  /* the status is stored as its name, readable by people with the sqlite3 shell */
  char buf[64];
  CHECK_STR(raw_text("SELECT status FROM sagas WHERE id='a0000000-0000-4000-8000-000000000001'", buf, sizeof buf),
            "running");

  struct sg_saga_row none = {0};
  CHECK_EQ_INT(s->ops->saga_get(s, "no-such-id", &none, &err), 0);

  /* a duplicate id is a conflict */
  CHECK_EQ_INT(s->ops->saga_insert(s, &r, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_CONFLICT);

  /* update writes every mutable column and the version */
  struct sg_saga_row u = r;
  u.def_hash = "hash-2";
  u.status = SG_ST_COMPENSATING;
  u.step = 1;
  u.phase = SG_PH_COMPENSATE;
  u.attempt = 3;
  u.data = "{\"x\":2}";
  u.error = "payment declined";
  u.updated_at = 2002;
  u.deadline = 0;
  u.version = 2;
  u.input = "{\"ignored\":true}"; /* input is immutable */
  u.created_at = 9;                /* so is created_at */
  OK(s->ops->saga_update(s, &u, &err));
  CHECK_EQ_INT(s->ops->saga_get(s, r.id, &g, &err), 1);
  CHECK_STR(g.def_hash, "hash-2");
  CHECK_EQ_INT(g.status, SG_ST_COMPENSATING);
  CHECK_EQ_INT(g.step, 1);
  CHECK_EQ_INT(g.phase, SG_PH_COMPENSATE);
  CHECK_EQ_INT(g.attempt, 3);
  CHECK_STR(g.data, "{\"x\":2}");
  CHECK_STR(g.error, "payment declined");
  CHECK_EQ_INT(g.updated_at, 2002);
  CHECK_EQ_INT(g.deadline, 0);
  CHECK_EQ_INT(g.version, 2);
  CHECK_STR(g.input, "{\"order\":1}");
  CHECK_EQ_INT(g.created_at, 1000);
  sg_store_saga_row_free(&g);

  /* a writer that read version 1 loses */
  struct sg_saga_row stale = r;
  stale.version = 2;
  stale.data = "{\"stale\":true}";
  err.code = 0;
  CHECK_EQ_INT(s->ops->saga_update(s, &stale, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_CONFLICT);
  CHECK(strstr(err.msg, r.id) != NULL);
  /* skipping a version is a conflict too */
  stale.version = 4;
  CHECK_EQ_INT(s->ops->saga_update(s, &stale, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_CONFLICT);
  CHECK_EQ_INT(s->ops->saga_get(s, r.id, &g, &err), 1);
  CHECK_STR(g.data, "{\"x\":2}");
  CHECK_EQ_INT(g.version, 2);
  sg_store_saga_row_free(&g);
  /* unknown id */
  struct sg_saga_row ghost = mk_saga("ghost", "Order", SG_ST_RUNNING, NULL);
  ghost.version = 2;
  CHECK_EQ_INT(s->ops->saga_update(s, &ghost, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_CONFLICT);
}

static void test_idempotency(struct sg_store *s) {
  struct sg_saga_row a = mk_saga("b0000000-0000-4000-8000-000000000001", "Order", SG_ST_RUNNING, "key-1");
  OK(s->ops->saga_insert(s, &a, &err));
  struct sg_saga_row g = {0};
  CHECK_EQ_INT(s->ops->saga_find_idem(s, "Order", "key-1", &g, &err), 1);
  CHECK_STR(g.id, a.id);
  CHECK_STR(g.idem_key, "key-1");
  sg_store_saga_row_free(&g);
  CHECK_EQ_INT(s->ops->saga_find_idem(s, "Order", "key-2", &g, &err), 0);
  CHECK_EQ_INT(s->ops->saga_find_idem(s, "Refund", "key-1", &g, &err), 0);

  /* the key is unique per type ... */
  struct sg_saga_row dup = mk_saga("b0000000-0000-4000-8000-000000000002", "Order", SG_ST_RUNNING, "key-1");
  CHECK_EQ_INT(s->ops->saga_insert(s, &dup, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_CONFLICT);
  /* ... not across types, and absent keys never collide */
  struct sg_saga_row other = mk_saga("b0000000-0000-4000-8000-000000000003", "Refund", SG_ST_RUNNING, "key-1");
  OK(s->ops->saga_insert(s, &other, &err));
  struct sg_saga_row n1 = mk_saga("b0000000-0000-4000-8000-000000000004", "Order", SG_ST_RUNNING, NULL);
  struct sg_saga_row n2 = mk_saga("b0000000-0000-4000-8000-000000000005", "Order", SG_ST_RUNNING, NULL);
  OK(s->ops->saga_insert(s, &n1, &err));
  OK(s->ops->saga_insert(s, &n2, &err));
  CHECK_EQ_INT(s->ops->saga_find_idem(s, "Refund", "key-1", &g, &err), 1);
  CHECK_STR(g.id, other.id);
  sg_store_saga_row_free(&g);
}

/* Collects the ids a saga iteration hands out. */
struct ids {
  char id[32][40]; /* in callback order */
  int n;           /* how many */
  int stop_after;  /* return non-zero after this many (0 = never) */
};

static int collect_saga(void *ud, const struct sg_saga_row *r) {
  struct ids *c = ud;
  if (c->n < 32) snprintf(c->id[c->n], sizeof c->id[0], "%s", r->id);
  c->n++;
  return c->stop_after && c->n >= c->stop_after;
}

static void test_list(void) {
  /* a fresh database so the counts are exact */
  char path[160];
  snprintf(path, sizeof path, "%s/list.db", tmpdir);
  struct sg_store *s = sg_store_sqlite_open(path, &err);
  if (!CHECK(s != NULL)) return;
  /* ids inserted out of order; list must sort them */
  static const struct { const char *id, *type; int st; } rows[] = {
    {"c5", "Order", SG_ST_COMPLETED},  {"c1", "Order", SG_ST_RUNNING},
    {"c3", "Refund", SG_ST_RUNNING},   {"c2", "Order", SG_ST_COMPENSATION_FAILED},
    {"c4", "Order", SG_ST_RUNNING},    {"c6", "Refund", SG_ST_COMPENSATING},
    {"c7", "Order", SG_ST_COMPENSATED},
  };
  OK(s->ops->begin(s, &err));
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    struct sg_saga_row r = mk_saga(rows[i].id, rows[i].type, rows[i].st, NULL);
    OK(s->ops->saga_insert(s, &r, &err));
  }
  OK(s->ops->commit(s, &err));

  struct ids c = {0};
  struct sg_saga_filter f = {.status = -1, .type = NULL, .after = NULL, .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 7);
  const char *all[] = {"c1", "c2", "c3", "c4", "c5", "c6", "c7"};
  for (int i = 0; i < 7 && i < c.n; i++) CHECK_STR(c.id[i], all[i]);

  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = SG_ST_RUNNING, .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 3);
  CHECK_STR(c.id[0], "c1");
  CHECK_STR(c.id[1], "c3");
  CHECK_STR(c.id[2], "c4");

  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = -1, .type = "Refund", .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 2);
  CHECK_STR(c.id[0], "c3");
  CHECK_STR(c.id[1], "c6");

  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = SG_ST_RUNNING, .type = "Order", .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 2);
  CHECK_STR(c.id[0], "c1");
  CHECK_STR(c.id[1], "c4");

  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = SG_ST_COMPENSATION_FAILED, .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 1);
  CHECK_STR(c.id[0], "c2");

  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = -1, .type = "Nope", .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 0);

  /* paging: pages of 3 with the last id as cursor */
  const char *pages[3][3] = {{"c1", "c2", "c3"}, {"c4", "c5", "c6"}, {"c7", NULL, NULL}};
  int sizes[3] = {3, 3, 1};
  char cursor[40] = "";
  for (int p = 0; p < 3; p++) {
    c = (struct ids){0};
    f = (struct sg_saga_filter){.status = -1, .after = p ? cursor : NULL, .limit = 3};
    OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
    CHECK_EQ_INT(c.n, sizes[p]);
    for (int i = 0; i < sizes[p] && i < c.n; i++) CHECK_STR(c.id[i], pages[p][i]);
    if (c.n) snprintf(cursor, sizeof cursor, "%s", c.id[c.n - 1]);
  }
  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = -1, .after = "c7", .limit = 3};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 0);
  /* paging combined with a filter */
  c = (struct ids){0};
  f = (struct sg_saga_filter){.status = SG_ST_RUNNING, .type = "Order", .after = "c1", .limit = 1};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 1);
  CHECK_STR(c.id[0], "c4");

  /* the callback can stop the iteration */
  c = (struct ids){.stop_after = 2};
  f = (struct sg_saga_filter){.status = -1, .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 2);

  /* active = running or compensating */
  c = (struct ids){0};
  OK(s->ops->saga_each_active(s, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 4);
  CHECK_STR(c.id[0], "c1");
  CHECK_STR(c.id[1], "c3");
  CHECK_STR(c.id[2], "c4");
  CHECK_STR(c.id[3], "c6");
  s->ops->close(s);
}

/* the list's key, time bounds and order, the counts, and the key's round trip (ids made as sg_uuid
 * makes them: the creation ms first) */
/* events: a line per event, every text field surviving tabs, newlines, backslashes and NULL */
static void test_event_lines(void) {
  struct sg_event_row a = { .at = 1764547200123, .kind = "attempt_ended", .saga_id = "s-1", .type = "T\tx",
                            .status = "running", .step = 2, .phase = 1, .attempt = 3, .step_name = "a\\b",
                            .outcome = "failed", .detail = "line1\nline2\t\\N", .duration_ms = 42 };
  struct sg_event_row d = { .at = 5, .kind = "definition_failed", .step_name = "f.lua", .detail = "\\N" };
  struct sg_buf b;
  sg_buf_init(&b);
  sg_event_line(&b, &a);
  sg_event_line(&b, &d);
  CHECK(strchr(b.data, '\n') && H_count_lines(b.data) == 2);
  /* the stored form, byte for byte (rows written by earlier builds are read back the same way) */
  CHECK_STR(b.data, "attempt_ended\ts-1\tT\\tx\trunning\ta\\\\b\tfailed\tline1\\nline2\\t\\\\N\t2\t1\t3\t1764547200123\t42\n"
                    "definition_failed\t\\N\t\\N\t\\N\tf.lua\t\\N\t\\\\N\t0\t0\t0\t5\t0\n");
  char *at = b.data;
  struct sg_event_row r;
  CHECK(sg_event_line_next(&at, &r) == 1);
  CHECK(!strcmp(r.kind, "attempt_ended") && !strcmp(r.saga_id, "s-1") && !strcmp(r.type, "T\tx"));
  CHECK(!strcmp(r.status, "running") && !strcmp(r.step_name, "a\\b") && !strcmp(r.outcome, "failed"));
  CHECK(!strcmp(r.detail, "line1\nline2\t\\N"));
  CHECK(r.step == 2 && r.phase == 1 && r.attempt == 3 && r.at == 1764547200123 && r.duration_ms == 42);
  CHECK(sg_event_line_next(&at, &r) == 1);
  CHECK(!strcmp(r.kind, "definition_failed") && r.saga_id == NULL && r.type == NULL && r.status == NULL);
  CHECK(!strcmp(r.step_name, "f.lua") && r.outcome == NULL && !strcmp(r.detail, "\\N") && r.at == 5);
  CHECK(sg_event_line_next(&at, &r) == 0);
  sg_buf_free(&b);
}

static void test_list_keys(void) {
  char path[160];
  snprintf(path, sizeof path, "%s/keys.db", tmpdir);
  struct sg_store *s = sg_store_sqlite_open(path, &err);
  if (!CHECK(s != NULL)) return;
  char ids[6][40];
  static const char *keys[6] = {"k2", "k1", "k2", "k1", "k2", NULL};
  static const int sts[6] = {SG_ST_COMPLETED, SG_ST_RUNNING, SG_ST_COMPLETED, SG_ST_COMPENSATED, SG_ST_RUNNING,
                             SG_ST_COMPLETED};
  OK(s->ops->begin(s, &err));
  for (int i = 5; i >= 0; i--) {
    int64_t ms = 1796040000000LL + 10 * i;
    snprintf(ids[i], sizeof ids[i], "%08x-%04x-7000-8000-00000000000%d", (unsigned)(ms >> 16), (unsigned)(ms & 0xffff), i);
    struct sg_saga_row r = mk_saga(ids[i], i == 2 ? "Refund" : "Order", sts[i], NULL);
    r.biz_key = (char *)keys[i];
    r.created_at = r.updated_at = ms;
    OK(s->ops->saga_insert(s, &r, &err));
  }
  OK(s->ops->commit(s, &err));
#define LIST(want_n, status_, ...)                                                          \
  do {                                                                                      \
    struct ids c_ = {0};                                                                    \
    struct sg_saga_filter f_ = {.status = status_, __VA_ARGS__};                            \
    if (!f_.limit) f_.limit = 100;                                                          \
    OK(s->ops->saga_list(s, &f_, collect_saga, &c_, &err));                                 \
    CHECK_EQ_INT(c_.n, (int)(sizeof want_n / sizeof want_n[0]));                            \
    for (int i_ = 0; i_ < c_.n && i_ < (int)(sizeof want_n / sizeof want_n[0]); i_++)       \
      CHECK_STR(c_.id[i_], ids[want_n[i_]]);                                                \
  } while (0)
  int all_desc[] = {5, 4, 3, 2, 1, 0};
  LIST(all_desc, -1, .desc = 1);
  int k1[] = {3, 1}, k2_asc[] = {0, 2, 4}, k2_order[] = {4, 0};
  LIST(k1, -1, .key = "k1", .desc = 1);
  LIST(k2_asc, -1, .key = "k2");
  LIST(k2_order, -1, .key = "k2", .type = "Order", .desc = 1);
  int k1_running[] = {1};
  LIST(k1_running, SG_ST_RUNNING, .key = "k1");
  struct ids c = {0};
  struct sg_saga_filter f = {.status = -1, .key = "k3", .limit = 100};
  OK(s->ops->saga_list(s, &f, collect_saga, &c, &err));
  CHECK_EQ_INT(c.n, 0);
  /* since inclusive, until exclusive, in either order, with a cursor */
  int range[] = {2, 3}, range_desc[] = {3, 2}, after_cursor[] = {2, 1, 0}, before_cursor[] = {4, 5};
  LIST(range, -1, .since = 1796040000020LL, .until = 1796040000040LL);
  LIST(range_desc, -1, .since = 1796040000020LL, .until = 1796040000040LL, .desc = 1);
  LIST(after_cursor, -1, .after = ids[3], .desc = 1);
  LIST(before_cursor, -1, .after = ids[3]);
  int cursor_since[] = {2};
  LIST(cursor_since, -1, .after = ids[3], .since = 1796040000015LL, .desc = 1);
  int limited[] = {5, 4};
  LIST(limited, -1, .desc = 1, .limit = 2);
#undef LIST
  /* counts, of all and of a type */
  int64_t counts[SG_ST__COUNT];
  OK(s->ops->saga_counts(s, NULL, counts, &err));
  CHECK_EQ_INT(counts[SG_ST_RUNNING], 2);
  CHECK_EQ_INT(counts[SG_ST_COMPLETED], 3);
  CHECK_EQ_INT(counts[SG_ST_COMPENSATED], 1);
  CHECK_EQ_INT(counts[SG_ST_COMPENSATING], 0);
  CHECK_EQ_INT(counts[SG_ST_RESOLVED], 0);
  OK(s->ops->saga_counts(s, "Refund", counts, &err));
  CHECK_EQ_INT(counts[SG_ST_COMPLETED], 1);
  CHECK_EQ_INT(counts[SG_ST_RUNNING], 0);
  /* the key comes back with the row, and with its copy */
  struct sg_saga_row got = {0}, copy;
  CHECK_EQ_INT(s->ops->saga_get(s, ids[1], &got, &err), 1);
  CHECK_STR(got.biz_key, "k1");
  sg_store_saga_row_copy(&copy, &got);
  CHECK_STR(copy.biz_key, "k1");
  CHECK(copy.biz_key != got.biz_key);
  sg_store_saga_row_free(&copy);
  sg_store_saga_row_free(&got);
  CHECK_EQ_INT(s->ops->saga_get(s, ids[5], &got, &err), 1);
  CHECK_STR(got.biz_key, NULL);
  sg_store_saga_row_free(&got);
  s->ops->close(s);
}

/* ---- history ---- */

/* Copies of the history rows a hist_each hands out. */
struct hists {
  int64_t id[8];
  int step[8], phase[8], attempt[8];
  char status[8][24], name[8][24], error[8][32];
  int64_t started[8], finished[8];
  int n;
};

static int collect_hist(void *ud, const struct sg_hist_row *r) {
  struct hists *h = ud;
  if (h->n < 8) {
    int i = h->n;
    h->id[i] = r->id;
    h->step[i] = r->step;
    h->phase[i] = r->phase;
    h->attempt[i] = r->attempt;
    snprintf(h->status[i], sizeof h->status[i], "%s", r->status);
    snprintf(h->name[i], sizeof h->name[i], "%s", r->step_name ? r->step_name : "(null)");
    snprintf(h->error[i], sizeof h->error[i], "%s", r->error ? r->error : "(null)");
    h->started[i] = r->started_at;
    h->finished[i] = r->finished_at;
  }
  h->n++;
  return 0;
}

static void test_history(struct sg_store *s) {
  const char *sid = "a0000000-0000-4000-8000-000000000001";
  /* the engine writes an attempt's row once, when it ends */
  struct sg_hist_row r1 = {.saga_id = sid, .step = 0, .step_name = "Reserve", .phase = SG_PH_ACTION,
                           .attempt = 1, .status = "completed", .started_at = 100, .finished_at = 150};
  struct sg_hist_row other = {.saga_id = "someone-else", .step = 0, .step_name = "X", .phase = SG_PH_ACTION,
                              .attempt = 1, .status = "running", .started_at = 101};
  struct sg_hist_row r2 = {.saga_id = sid, .step = 1, .step_name = "Pay", .phase = SG_PH_ACTION,
                           .attempt = 1, .status = "failed", .started_at = 200, .finished_at = 250,
                           .error = "card declined"};
  struct sg_hist_row r3 = {.saga_id = sid, .step = 0, .step_name = NULL, .phase = -1,
                           .attempt = 0, .status = "timed_out", .started_at = 300, .finished_at = 300};
  OK(s->ops->hist_insert(s, &r1, &err));
  OK(s->ops->hist_insert(s, &other, &err));
  OK(s->ops->hist_insert(s, &r2, &err));
  OK(s->ops->hist_insert(s, &r3, &err));
  CHECK(r1.id > 0);
  CHECK(other.id > r1.id);
  CHECK(r2.id > other.id);
  CHECK(r3.id > r2.id);

  struct hists h = {0};
  OK(s->ops->hist_each(s, sid, collect_hist, &h, &err));
  CHECK_EQ_INT(h.n, 3);
  CHECK_EQ_INT(h.id[0], r1.id);
  CHECK_EQ_INT(h.id[1], r2.id);
  CHECK_EQ_INT(h.id[2], r3.id);
  CHECK_STR(h.name[0], "Reserve");
  CHECK_STR(h.status[0], "completed");
  CHECK_EQ_INT(h.started[0], 100);
  CHECK_EQ_INT(h.finished[0], 150);
  CHECK_STR(h.error[0], "(null)");
  CHECK_STR(h.name[1], "Pay");
  CHECK_EQ_INT(h.step[1], 1);
  CHECK_STR(h.status[1], "failed");
  CHECK_EQ_INT(h.finished[1], 250);
  CHECK_STR(h.error[1], "card declined");
  CHECK_EQ_INT(h.phase[2], -1);
  CHECK_STR(h.name[2], "(null)");
  CHECK_STR(h.status[2], "timed_out");
  CHECK_EQ_INT(h.attempt[2], 0);
}

/* ---- journal ---- */

/* Copies of journal rows. */
struct jrows {
  int seq[8], done[8], is_error[8];
  char kind[8][16], result[8][32];
  int n;
};

static int collect_journal(void *ud, const struct sg_journal_row *r) {
  struct jrows *j = ud;
  if (j->n < 8) {
    j->seq[j->n] = r->seq;
    j->done[j->n] = r->done;
    j->is_error[j->n] = r->is_error;
    snprintf(j->kind[j->n], sizeof j->kind[0], "%s", r->kind);
    snprintf(j->result[j->n], sizeof j->result[0], "%s", r->result ? r->result : "(null)");
  }
  j->n++;
  return 0;
}

static void test_journal(struct sg_store *s) {
  const char *sid = "a0000000-0000-4000-8000-000000000001";
  struct sg_journal_row j2 = {sid, 1, SG_PH_ACTION, 1, 2, "sleep", 0, 0, NULL};
  struct sg_journal_row j1 = {sid, 1, SG_PH_ACTION, 1, 1, "call", 0, 0, NULL};
  struct sg_journal_row j3 = {sid, 1, SG_PH_ACTION, 1, 3, "now", 1, 0, "1234"};
  struct sg_journal_row other_attempt = {sid, 1, SG_PH_ACTION, 2, 1, "uuid", 1, 0, "\"u\""};
  struct sg_journal_row other_phase = {sid, 1, SG_PH_COMPENSATE, 1, 1, "call", 1, 0, "{}"};
  OK(s->ops->journal_put(s, &j2, &err));
  OK(s->ops->journal_put(s, &j3, &err));
  OK(s->ops->journal_put(s, &j1, &err));
  OK(s->ops->journal_put(s, &other_attempt, &err));
  OK(s->ops->journal_put(s, &other_phase, &err));
  /* the reply arrives: the waiting entry is replaced */
  struct sg_journal_row j1done = {sid, 1, SG_PH_ACTION, 1, 1, "call", 1, 1, "{\"error\":\"no stock\"}"};
  OK(s->ops->journal_put(s, &j1done, &err));

  struct jrows j = {0};
  OK(s->ops->journal_each(s, sid, 1, SG_PH_ACTION, 1, collect_journal, &j, &err));
  CHECK_EQ_INT(j.n, 3);
  CHECK_EQ_INT(j.seq[0], 1);
  CHECK_EQ_INT(j.seq[1], 2);
  CHECK_EQ_INT(j.seq[2], 3);
  CHECK_STR(j.kind[0], "call");
  CHECK_EQ_INT(j.done[0], 1);
  CHECK_EQ_INT(j.is_error[0], 1);
  CHECK_STR(j.result[0], "{\"error\":\"no stock\"}");
  CHECK_STR(j.kind[1], "sleep");
  CHECK_EQ_INT(j.done[1], 0);
  CHECK_STR(j.result[1], "(null)");
  CHECK_STR(j.result[2], "1234");

  j = (struct jrows){0};
  OK(s->ops->journal_each(s, sid, 1, SG_PH_ACTION, 2, collect_journal, &j, &err));
  CHECK_EQ_INT(j.n, 1);
  CHECK_STR(j.kind[0], "uuid");
  j = (struct jrows){0};
  OK(s->ops->journal_each(s, sid, 1, SG_PH_COMPENSATE, 1, collect_journal, &j, &err));
  CHECK_EQ_INT(j.n, 1);
  j = (struct jrows){0};
  OK(s->ops->journal_each(s, sid, 0, SG_PH_ACTION, 1, collect_journal, &j, &err));
  CHECK_EQ_INT(j.n, 0);
}

/* ---- timers ---- */

/* Copies of timer rows; can delete each row it sees (the engine's "fire" path). */
struct trows {
  int64_t id[8], due[8], ref[8];
  char kind[8][16];
  int n;
  struct sg_store *del_from; /* delete each timer from inside the callback when set */
};

static int collect_timer(void *ud, const struct sg_timer_row *r) {
  struct trows *t = ud;
  if (t->n < 8) {
    t->id[t->n] = r->id;
    t->due[t->n] = r->due_at;
    t->ref[t->n] = r->ref;
    snprintf(t->kind[t->n], sizeof t->kind[0], "%s", r->kind);
  }
  t->n++;
  if (t->del_from) CHECK_EQ_INT(t->del_from->ops->timer_del(t->del_from, r->id, &err), 0);
  return 0;
}

static void test_timers(struct sg_store *s) {
  const char *sid = "a0000000-0000-4000-8000-000000000001";
  struct sg_timer_row a = {.saga_id = sid, .due_at = 300, .kind = "saga_timeout", .ref = 0};
  struct sg_timer_row b = {.saga_id = sid, .due_at = 100, .kind = "sleep", .ref = 2};
  struct sg_timer_row c = {.saga_id = sid, .due_at = 200, .kind = "retry", .ref = 3};
  struct sg_timer_row d = {.saga_id = sid, .due_at = 100, .kind = "step_timeout", .ref = 1};
  OK(s->ops->timer_put(s, &a, &err));
  OK(s->ops->timer_put(s, &b, &err));
  OK(s->ops->timer_put(s, &c, &err));
  OK(s->ops->timer_put(s, &d, &err));
  CHECK(a.id > 0 && b.id > a.id && c.id > b.id && d.id > c.id);

  struct trows t = {0};
  OK(s->ops->timer_each(s, collect_timer, &t, &err));
  CHECK_EQ_INT(t.n, 4);
  CHECK_EQ_INT(t.id[0], b.id); /* due 100, lower id first */
  CHECK_EQ_INT(t.id[1], d.id); /* due 100 */
  CHECK_EQ_INT(t.id[2], c.id); /* due 200 */
  CHECK_EQ_INT(t.id[3], a.id); /* due 300 */
  CHECK_STR(t.kind[0], "sleep");
  CHECK_EQ_INT(t.ref[0], 2);
  CHECK_EQ_INT(t.due[2], 200);
  CHECK_STR(t.kind[3], "saga_timeout");

  OK(s->ops->timer_del(s, c.id, &err));
  OK(s->ops->timer_del(s, c.id, &err)); /* already gone: fine */
  t = (struct trows){0};
  OK(s->ops->timer_each(s, collect_timer, &t, &err));
  CHECK_EQ_INT(t.n, 3);
  CHECK_EQ_INT(t.id[0], b.id);
  CHECK_EQ_INT(t.id[1], d.id);
  CHECK_EQ_INT(t.id[2], a.id);

  /* a deleted id is never handed out again */
  struct sg_timer_row e = {.saga_id = sid, .due_at = 50, .kind = "sleep", .ref = 9};
  OK(s->ops->timer_del(s, a.id, &err));
  OK(s->ops->timer_put(s, &e, &err));
  CHECK(e.id > d.id);
}

/* ---- outbox ---- */

/* Copies of outbox messages. */
struct orows {
  struct sg_msg m[8]; /* deep copies, freed by the test */
  int n;
  struct sg_store *del_from; /* delete each message from inside the callback when set */
};

static int collect_msg(void *ud, const struct sg_msg *m) {
  struct orows *o = ud;
  if (o->n < 8) sg_msg_copy(&o->m[o->n], m);
  o->n++;
  if (o->del_from) CHECK_EQ_INT(o->del_from->ops->outbox_del(o->del_from, m->outbox_id, &err), 0);
  return 0;
}

static void orows_free(struct orows *o) {
  for (int i = 0; i < o->n && i < 8; i++) sg_msg_free(&o->m[i]);
  o->n = 0;
}

static void test_outbox(struct sg_store *s) {
  struct sg_msg cmd = {
    .message_id = "m-1", .correlation_id = NULL, .kind = SG_MSG_COMMAND,
    .service = "inventory", .reply_to = "saga.replies.host1", .name = "Reserve",
    .saga_id = "a0000000-0000-4000-8000-000000000001", .saga_type = "Order", .step = 0, .attempt = 1,
    .status = NULL, .body = "{\"sku\":\"book\"}", .created_at = 500,
  };
  struct sg_msg reply = {
    .message_id = "m-2", .correlation_id = "m-0", .kind = SG_MSG_REPLY,
    .reply_to = "reply.q", .name = "Reserve", .saga_id = NULL, .saga_type = NULL, .step = 0, .attempt = 0,
    .status = "ok", .body = "{}", .created_at = 501,
  };
  OK(s->ops->outbox_put(s, &cmd, &err));
  OK(s->ops->outbox_put(s, &reply, &err));
  CHECK(cmd.outbox_id > 0);
  CHECK(reply.outbox_id > cmd.outbox_id);

  struct orows o = {0};
  OK(s->ops->outbox_each(s, collect_msg, &o, &err));
  CHECK_EQ_INT(o.n, 2);
  CHECK_EQ_INT(o.m[0].outbox_id, cmd.outbox_id);
  CHECK_STR(o.m[0].message_id, "m-1");
  CHECK_STR(o.m[0].correlation_id, NULL);
  CHECK(o.m[0].kind == SG_MSG_COMMAND);
  CHECK_STR(o.m[0].service, "inventory");
  CHECK_STR(o.m[0].name, "Reserve");
  CHECK_STR(o.m[0].reply_to, "saga.replies.host1");
  CHECK_STR(o.m[0].saga_id, "a0000000-0000-4000-8000-000000000001");
  CHECK_STR(o.m[0].saga_type, "Order");
  CHECK_EQ_INT(o.m[0].step, 0);
  CHECK_EQ_INT(o.m[0].attempt, 1);
  CHECK_STR(o.m[0].status, NULL);
  CHECK_STR(o.m[0].body, "{\"sku\":\"book\"}");
  CHECK_EQ_INT(o.m[0].created_at, 500);
  CHECK_EQ_INT(o.m[1].outbox_id, reply.outbox_id);
  CHECK(o.m[1].kind == SG_MSG_REPLY);
  CHECK_STR(o.m[1].reply_to, "reply.q"); /* where the reply goes */
  CHECK_STR(o.m[1].name, "Reserve");
  CHECK_STR(o.m[1].correlation_id, "m-0");
  CHECK_STR(o.m[1].status, "ok");
  CHECK_STR(o.m[1].saga_id, NULL);
  orows_free(&o);

  OK(s->ops->outbox_del(s, cmd.outbox_id, &err));
  OK(s->ops->outbox_del(s, cmd.outbox_id, &err)); /* a duplicate confirm */
  OK(s->ops->outbox_each(s, collect_msg, &o, &err));
  CHECK_EQ_INT(o.n, 1);
  CHECK_STR(o.m[0].message_id, "m-2");
  orows_free(&o);
}

/* ---- inbox ---- */

static void test_inbox(struct sg_store *s) {
  char *st = (char *)"junk", *body = (char *)"junk";
  CHECK_EQ_INT(s->ops->inbox_get(s, "in-1", &st, &body, &err), 0);
  CHECK(st == NULL && body == NULL);
  OK(s->ops->inbox_put(s, "in-1", "ok", "{\"reservation_id\":\"r-1\"}", &err));
  OK(s->ops->inbox_put(s, "in-2", NULL, NULL, &err)); /* seen, nothing to re-send (an event) */
  CHECK_EQ_INT(s->ops->inbox_get(s, "in-1", &st, &body, &err), 1);
  CHECK_STR(st, "ok");
  CHECK_STR(body, "{\"reservation_id\":\"r-1\"}");
  free(st);
  free(body);
  CHECK_EQ_INT(s->ops->inbox_get(s, "in-2", &st, &body, &err), 1);
  CHECK(st == NULL && body == NULL);
}

/* ---- transactions ---- */

static void test_transactions(struct sg_store *s) {
  int64_t before = s->ops->commit_count(s);
  struct sg_saga_row r = mk_saga("d0000000-0000-4000-8000-000000000001", "Order", SG_ST_RUNNING, NULL);
  struct sg_saga_row g = {0};

  OK(s->ops->begin(s, &err));
  OK(s->ops->saga_insert(s, &r, &err));
  CHECK_EQ_INT(s->ops->saga_get(s, r.id, &g, &err), 1); /* visible inside its own transaction */
  sg_store_saga_row_free(&g);
  OK(s->ops->rollback(s, &err));
  CHECK_EQ_INT(s->ops->saga_get(s, r.id, &g, &err), 0);
  CHECK_EQ_INT(s->ops->commit_count(s), before);

  OK(s->ops->begin(s, &err));
  OK(s->ops->saga_insert(s, &r, &err));
  struct sg_timer_row t = {.saga_id = r.id, .due_at = 1, .kind = "sleep", .ref = 1};
  OK(s->ops->timer_put(s, &t, &err));
  /* another connection does not see uncommitted work */
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM sagas WHERE id='%s'", r.id);
  CHECK_EQ_INT(raw_int(sql), 0);
  OK(s->ops->commit(s, &err));
  CHECK_EQ_INT(raw_int(sql), 1);
  CHECK_EQ_INT(s->ops->commit_count(s), before + 1);
  OK(s->ops->timer_del(s, t.id, &err)); /* autocommit writes are not counted */
  CHECK_EQ_INT(s->ops->commit_count(s), before + 1);

  /* misuse is reported, not fatal */
  err.msg[0] = 0;
  CHECK_EQ_INT(s->ops->commit(s, &err), -1);
  CHECK_EQ_INT(err.code, SG_E_INTERNAL);
  CHECK(strncmp(err.msg, "sqlite: commit: ", 16) == 0);
  CHECK_EQ_INT(s->ops->commit_count(s), before + 1);
  OK(s->ops->rollback(s, &err)); /* nothing open: no-op */
  OK(s->ops->begin(s, &err));
  CHECK_EQ_INT(s->ops->begin(s, &err), -1);
  OK(s->ops->rollback(s, &err));

  /* a failing statement inside a batch leaves the batch usable (the engine decides) */
  OK(s->ops->begin(s, &err));
  struct sg_saga_row r2 = mk_saga("d0000000-0000-4000-8000-000000000002", "Order", SG_ST_RUNNING, NULL);
  OK(s->ops->saga_insert(s, &r2, &err));
  CHECK_EQ_INT(s->ops->saga_insert(s, &r, &err), -1); /* duplicate */
  OK(s->ops->commit(s, &err));
  CHECK_EQ_INT(s->ops->saga_get(s, r2.id, &g, &err), 1);
  sg_store_saga_row_free(&g);
  CHECK_EQ_INT(s->ops->commit_count(s), before + 2);
}

/* read_hold: the reads until read_release share one snapshot; a write ends it (begin, or a write op
 * outside a transaction), and nothing of it is left open */
static void raw_exec(const char *sql) {
  sqlite3 *db;
  CHECK(sqlite3_open(dbpath, &db) == SQLITE_OK);
  sqlite3_busy_timeout(db, 2000);
  char *msg = NULL;
  if (!CHECK(sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)) fprintf(stderr, "  %s: %s\n", sql, msg);
  sqlite3_free(msg);
  sqlite3_close(db);
}

static void test_read_hold(struct sg_store *s) {
  char *st = NULL, *body = NULL;
  s->ops->read_hold(s);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-1", &st, &body, &err), 0);
  /* another connection commits a row: the held snapshot does not see it, a fresh one does */
  raw_exec("INSERT INTO inbox(message_id, reply_status, reply_body, received_at) VALUES ('hold-1', 'ok', '{}', 1)");
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-1", &st, &body, &err), 0);
  s->ops->read_release(s);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-1", &st, &body, &err), 1);
  free(st); free(body); st = body = NULL;
  s->ops->read_release(s); /* nothing held: a no-op */

  /* a transaction started while a read is held: the hold ends first, the batch commits */
  s->ops->read_hold(s);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-2", &st, &body, &err), 0);
  OK(s->ops->begin(s, &err));
  OK(s->ops->inbox_put(s, "hold-2", "ok", "{}", &err));
  s->ops->read_hold(s); /* inside a transaction: nothing */
  OK(s->ops->commit(s, &err));
  s->ops->read_release(s);
  CHECK_EQ_INT(raw_int("SELECT count(*) FROM inbox WHERE message_id = 'hold-2'"), 1);

  /* a write outside a transaction while a read is held: written at once */
  s->ops->read_hold(s);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-2", &st, &body, &err), 1);
  free(st); free(body); st = body = NULL;
  OK(s->ops->inbox_put(s, "hold-3", "ok", "{}", &err));
  CHECK_EQ_INT(raw_int("SELECT count(*) FROM inbox WHERE message_id = 'hold-3'"), 1);
  s->ops->read_release(s);

  /* after a release nothing of the hold is left open: the next read takes a fresh snapshot and sees
   * what another connection committed since (a read transaction left open would still see hold-3) */
  s->ops->read_hold(s);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-3", &st, &body, &err), 1);
  free(st); free(body); st = body = NULL;
  s->ops->read_release(s);
  raw_exec("BEGIN IMMEDIATE; DELETE FROM inbox WHERE message_id LIKE 'hold-%'; COMMIT");
  CHECK_EQ_INT(raw_int("SELECT count(*) FROM inbox WHERE message_id LIKE 'hold-%'"), 0);
  CHECK_EQ_INT(s->ops->inbox_get(s, "hold-3", &st, &body, &err), 0);
}

/* ---- close and reopen ---- */

static void test_reopen(void) {
  struct sg_store *s = open_store();
  CHECK_EQ_INT(s->ops->commit_count(s), 0); /* counters are per process */
  struct sg_saga_row g = {0};
  CHECK_EQ_INT(s->ops->saga_get(s, "a0000000-0000-4000-8000-000000000001", &g, &err), 1);
  CHECK_EQ_INT(g.version, 2);
  CHECK_STR(g.error, "payment declined");
  sg_store_saga_row_free(&g);
  CHECK_EQ_INT(s->ops->saga_find_idem(s, "Order", "key-1", &g, &err), 1);
  sg_store_saga_row_free(&g);

  char *file = NULL, *src = NULL;
  OK(s->ops->def_get(s, "h1", &file, &src, &err));
  CHECK_STR(src, "return 1");
  free(file);
  free(src);

  struct hists h = {0};
  OK(s->ops->hist_each(s, "a0000000-0000-4000-8000-000000000001", collect_hist, &h, &err));
  CHECK_EQ_INT(h.n, 3);
  struct jrows j = {0};
  OK(s->ops->journal_each(s, "a0000000-0000-4000-8000-000000000001", 1, SG_PH_ACTION, 1, collect_journal, &j, &err));
  CHECK_EQ_INT(j.n, 3);
  CHECK_STR(j.result[0], "{\"error\":\"no stock\"}");

  /* firing timers deletes them from inside the iteration */
  struct trows t = {.del_from = s};
  OK(s->ops->timer_each(s, collect_timer, &t, &err));
  CHECK_EQ_INT(t.n, 3); /* b, d, e */
  CHECK_EQ_INT(t.due[0], 50);
  t = (struct trows){0};
  OK(s->ops->timer_each(s, collect_timer, &t, &err));
  CHECK_EQ_INT(t.n, 0);

  /* publishing the outbox after a restart, deleting as confirms arrive */
  struct orows o = {.del_from = s};
  OK(s->ops->outbox_each(s, collect_msg, &o, &err));
  CHECK_EQ_INT(o.n, 1);
  CHECK_STR(o.m[0].message_id, "m-2");
  orows_free(&o);
  o.del_from = NULL;
  OK(s->ops->outbox_each(s, collect_msg, &o, &err));
  CHECK_EQ_INT(o.n, 0);

  char *st = NULL, *body = NULL;
  CHECK_EQ_INT(s->ops->inbox_get(s, "in-1", &st, &body, &err), 1);
  CHECK_STR(body, "{\"reservation_id\":\"r-1\"}");
  free(st);
  free(body);
  s->ops->close(s);
}

/* ---- the hot path, roughly: one group commit of many saga writes ---- */

static void bench_group_commit(void) {
  char path[160];
  snprintf(path, sizeof path, "%s/bench.db", tmpdir);
  struct sg_store *s = sg_store_sqlite_open(path, &err);
  if (!CHECK(s != NULL)) return;
  enum { N = 2000 };
  static struct sg_saga_row rows[N];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  OK(s->ops->begin(s, &err));
  int fails = 0;
  for (int i = 0; i < N; i++) {
    char id[40];
    snprintf(id, sizeof id, "e%08d", i);
    rows[i] = mk_saga(id, "Order", SG_ST_RUNNING, NULL);
    fails += s->ops->saga_insert(s, &rows[i], &err) != 0;
    struct sg_journal_row jr = {rows[i].id, 0, SG_PH_ACTION, 1, 1, "call", 1, 0, "{}"};
    fails += s->ops->journal_put(s, &jr, &err) != 0;
    rows[i].version = 2;
    fails += s->ops->saga_update(s, &rows[i], &err) != 0;
  }
  OK(s->ops->commit(s, &err));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  CHECK_EQ_INT(fails, 0);
  double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
  printf("group commit: %d writes in %.1f ms (%.0f writes/s)\n", 3 * N, ms, 3 * N / (ms / 1e3));
  CHECK_EQ_INT(s->ops->commit_count(s), 1);
  s->ops->close(s);
}

static void cleanup(void) {
  const char *names[] = {"test.db", "list.db", "bench.db", "newer.db", "lock.db", "other.db"};
  const char *sfx[] = {"", "-wal", "-shm", ".lock"};
  for (size_t i = 0; i < 6; i++)
    for (size_t k = 0; k < 4; k++) {
      char p[200];
      snprintf(p, sizeof p, "%s/%s%s", tmpdir, names[i], sfx[k]);
      unlink(p);
    }
  rmdir(tmpdir);
}

static int count_hist(void *ud, const struct sg_hist_row *r) {
  (void)r;
  ++*(int *)ud;
  return 0;
}

static int count_journal(void *ud, const struct sg_journal_row *r) {
  (void)r;
  ++*(int *)ud;
  return 0;
}

/* retention: inbox entries by age, a finished saga's journal */
static void test_retention(void) {
  char path[] = "/tmp/sg-test-retention-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  unlink(path);
  struct sg_error e = {0};
  struct sg_store *s = sg_store_sqlite_open(path, &e);
  CHECK(s != NULL);
  if (!s) return;
  CHECK_EQ_INT(s->ops->inbox_put(s, "old", "ok", "{}", &e), 0);
  int64_t gone = -1;
  CHECK_EQ_INT(s->ops->inbox_prune(s, sg_now_ms() - 60000, &gone, &e), 0);
  CHECK_EQ_INT((int)gone, 0); /* received just now: kept */
  CHECK_EQ_INT(s->ops->inbox_prune(s, sg_now_ms() + 1000, &gone, &e), 0);
  CHECK_EQ_INT((int)gone, 1);
  char *st = NULL, *body = NULL;
  CHECK_EQ_INT(s->ops->inbox_get(s, "old", &st, &body, &e), 0);
  free(st);
  free(body);
  struct sg_journal_row j = { .saga_id = "sa", .step = 0, .phase = 0, .attempt = 1, .seq = 1, .kind = "now", .done = 1,
                              .result = "1" };
  struct sg_journal_row k = j;
  k.saga_id = "sb";
  CHECK_EQ_INT(s->ops->journal_put(s, &j, &e), 0);
  CHECK_EQ_INT(s->ops->journal_put(s, &k, &e), 0);
  CHECK_EQ_INT(s->ops->journal_del(s, "sa", &e), 0);
  int n = 0;
  s->ops->journal_each(s, "sa", 0, 0, 1, count_journal, &n, &e);
  CHECK_EQ_INT(n, 0);
  s->ops->journal_each(s, "sb", 0, 0, 1, count_journal, &n, &e);
  CHECK_EQ_INT(n, 1); /* another saga's journal stays */
  /* finished sagas past the retention go with their history; compensation_failed ones stay */
  struct sg_saga_row done = mk_saga("p-done", "T", SG_ST_COMPLETED, NULL);
  struct sg_saga_row stuck = mk_saga("p-stuck", "T", SG_ST_COMPENSATION_FAILED, NULL);
  struct sg_saga_row live = mk_saga("p-live", "T", SG_ST_RUNNING, NULL);
  done.updated_at = stuck.updated_at = live.updated_at = 1000;
  CHECK_EQ_INT(s->ops->saga_insert(s, &done, &e), 0);
  CHECK_EQ_INT(s->ops->saga_insert(s, &stuck, &e), 0);
  CHECK_EQ_INT(s->ops->saga_insert(s, &live, &e), 0);
  struct sg_hist_row h = { .saga_id = "p-done", .step_name = "A", .status = "completed", .attempt = 1, .started_at = 1 };
  CHECK_EQ_INT(s->ops->hist_insert(s, &h, &e), 0);
  CHECK_EQ_INT(s->ops->saga_prune(s, 2000, 100, &gone, &e), 0);
  CHECK_EQ_INT((int)gone, 1);
  struct sg_saga_row out = {0};
  CHECK_EQ_INT(s->ops->saga_get(s, "p-done", &out, &e), 0);
  CHECK_EQ_INT(s->ops->saga_get(s, "p-stuck", &out, &e), 1);
  sg_store_saga_row_free(&out);
  CHECK_EQ_INT(s->ops->saga_get(s, "p-live", &out, &e), 1);
  sg_store_saga_row_free(&out);
  int hn = 0;
  s->ops->hist_each(s, "p-done", count_hist, &hn, &e);
  CHECK_EQ_INT(hn, 0);
  CHECK_EQ_INT(s->ops->saga_prune(s, 2000, 100, &gone, &e), 0);
  CHECK_EQ_INT((int)gone, 0);
  s->ops->close(s);
  unlink(path);
  char lock[sizeof path + 8];
  snprintf(lock, sizeof lock, "%s.lock", path);
  unlink(lock);
}

/* one writer per database file: a second open is refused with the file and the holder's pid, in
 * this process or another; the lock goes with its holder (close, or death by SIGKILL) */
static void test_writer_lock(void) {
  char path[160], other[160], lock[170], want[64];
  snprintf(path, sizeof path, "%s/lock.db", tmpdir);
  snprintf(other, sizeof other, "%s/other.db", tmpdir);
  snprintf(lock, sizeof lock, "%s.lock", path);
  struct sg_error e = {0};
  struct sg_store *a = sg_store_sqlite_open(path, &e);
  if (!CHECK(a != NULL)) { fprintf(stderr, "  open: %s\n", e.msg); return; }
  char pidtext[32] = "";
  FILE *f = fopen(lock, "r");
  if (f) { if (!fgets(pidtext, sizeof pidtext, f)) pidtext[0] = 0; fclose(f); }
  CHECK_EQ_INT(atol(pidtext), getpid());

  /* a second store of this process: refused, naming the file and us */
  e = (struct sg_error){0};
  CHECK(sg_store_sqlite_open(path, &e) == NULL);
  CHECK_EQ_INT(e.code, SG_E_CONFLICT);
  snprintf(want, sizeof want, "pid %ld", (long)getpid());
  if (!CHECK(strstr(e.msg, path) && strstr(e.msg, want) && strstr(e.msg, "in use"))) fprintf(stderr, "  %s\n", e.msg);
  CHECK_EQ_INT(sg_store_sqlite_in_use(path, &e), 1);
  /* another file is another writer */
  struct sg_store *b = sg_store_sqlite_open(other, &e);
  CHECK(b != NULL);
  CHECK_EQ_INT(sg_store_sqlite_in_use(other, &e), 1);
  if (b) b->ops->close(b);
  CHECK_EQ_INT(sg_store_sqlite_in_use(other, &e), 0);
  /* closed: free again */
  a->ops->close(a);
  CHECK_EQ_INT(sg_store_sqlite_in_use(path, &e), 0);
  a = sg_store_sqlite_open(path, &e);
  CHECK(a != NULL);
  if (a) a->ops->close(a);
  /* :memory: has no file to guard */
  struct sg_store *m1 = sg_store_sqlite_open(":memory:", &e), *m2 = sg_store_sqlite_open(":memory:", &e);
  CHECK(m1 != NULL && m2 != NULL);
  if (m1) m1->ops->close(m1);
  if (m2) m2->ops->close(m2);

  /* another process holds it, then dies without closing anything */
  int ready[2];
  if (!CHECK(pipe(ready) == 0)) return;
  pid_t child = fork();
  if (child == 0) {
    struct sg_error ce = {0};
    struct sg_store *c = sg_store_sqlite_open(path, &ce);
    char ok = c ? 'y' : 'n';
    if (write(ready[1], &ok, 1) != 1) _exit(1);
    for (;;) pause(); /* until SIGKILL */
  }
  char ok = 0;
  CHECK(read(ready[0], &ok, 1) == 1 && ok == 'y');
  close(ready[0]);
  close(ready[1]);
  e = (struct sg_error){0};
  CHECK(sg_store_sqlite_open(path, &e) == NULL);
  snprintf(want, sizeof want, "pid %ld", (long)child);
  if (!CHECK(strstr(e.msg, path) && strstr(e.msg, want))) fprintf(stderr, "  %s\n", e.msg);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  /* its lock file is still there, with its pid in it: a stale lock must not block */
  CHECK(access(lock, F_OK) == 0);
  a = sg_store_sqlite_open(path, &e);
  if (!CHECK(a != NULL)) fprintf(stderr, "  after the holder died: %s\n", e.msg);
  if (a) a->ops->close(a);
}

/* walbuf (the store's VFS): what a commit wrote is in the files when the commit returns (another
 * connection, on SQLite's own unix VFS, reads it while the store is still open), for a commit of a
 * few frames and one of many more than a gathered run holds (~2 MB of rows) */
static int count_rows_unix(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  int n = -1;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, "unix") == SQLITE_OK) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return n;
}

static void test_walbuf(void) {
  char path[160];
  snprintf(path, sizeof path, "%s/walbuf.db", tmpdir);
  struct sg_store *s = sg_store_sqlite_open(path, &err);
  if (!CHECK(s != NULL)) return;
  OK(s->ops->begin(s, &err));
  struct sg_saga_row r = mk_saga("b0000000-0000-4000-8000-000000000001", "Order", SG_ST_RUNNING, NULL);
  OK(s->ops->saga_insert(s, &r, &err));
  OK(s->ops->commit(s, &err));
  CHECK_EQ_INT(count_rows_unix(path, "SELECT count(*) FROM sagas"), 1);
  static char big[20001];
  memset(big, 'x', sizeof big - 1);
  OK(s->ops->begin(s, &err));
  for (int i = 2; i <= 101; i++) {
    char id[40];
    snprintf(id, sizeof id, "b0000000-0000-4000-8000-%012d", i);
    r = mk_saga(id, "Order", SG_ST_RUNNING, NULL);
    r.data = big;
    OK(s->ops->saga_insert(s, &r, &err));
  }
  OK(s->ops->commit(s, &err));
  CHECK_EQ_INT(count_rows_unix(path, "SELECT count(*) FROM sagas WHERE length(data) = 20000"), 100);
  s->ops->close(s);
  CHECK_EQ_INT(count_rows_unix(path, "SELECT count(*) FROM sagas"), 101);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/sg_test_store.XXXXXX");
  if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
  snprintf(dbpath, sizeof dbpath, "%s/test.db", tmpdir);

  test_common();
  test_open_and_migrations();
  struct sg_store *s = open_store();
  test_definitions(s);
  test_saga_crud(s);
  test_idempotency(s);
  test_history(s);
  test_journal(s);
  test_timers(s);
  test_outbox(s);
  test_inbox(s);
  test_transactions(s);
  test_read_hold(s);
  s->ops->close(s);
  test_reopen();
  test_list();
  test_list_keys();
  test_event_lines();
  test_walbuf();
  bench_group_commit();
  test_writer_lock();

  cleanup();
  test_retention();
  return check_report();
}
