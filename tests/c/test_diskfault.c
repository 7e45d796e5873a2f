/* test_diskfault: the host against a disk that fails, the way SQLite's own I/O-error tests do it.
 *
 * A VFS over the default one fails the n-th write (SQLITE_FULL, as a full disk does) or the n-th
 * fsync (SQLITE_IOERR_FSYNC) of the database or its WAL, counted from when the host has opened. For
 * every n in a range (up to the number of writes/fsyncs a clean run makes), a fresh host runs sagas
 * that call a handler, sleep on a durable timer and finish, while starts keep coming. Each run must
 * show: the host never breaks (no crash, no stop: ASan and UBSan watch the debug build), it stalls
 * and recovers by itself, every start it acknowledged is in the database exactly once and completed,
 * no start it refused is there, no step is recorded twice, and the file passes integrity_check.
 * Odd n fail once; even n keep failing for the next few writes too (the disk stays full across
 * retries, so the backoff is exercised). */
#include <ev.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "host.h"

/* ---- the fault-injecting VFS ---- */

enum { F_WRITE, F_SYNC };
static struct {
  int armed;        /* counting */
  int kind;         /* F_WRITE or F_SYNC */
  long n;           /* fail the n-th (1-based); 0 = never */
  int repeat;       /* and this many more after it */
  long writes, syncs; /* seen since armed */
  long failures;    /* injected */
} F;

static sqlite3_vfs *base_vfs;
static sqlite3_vfs fault_vfs;

struct ffile {
  sqlite3_file base;   /* methods = fault_methods */
  sqlite3_file *real;  /* the base VFS's file, allocated right after this struct */
};

static int should_fail(int kind) {
  if (!F.armed) return 0;
  long c = kind == F_WRITE ? ++F.writes : ++F.syncs;
  if (kind != F.kind || F.n <= 0) return 0;
  if (c >= F.n && c <= F.n + F.repeat) {
    F.failures++;
    return 1;
  }
  return 0;
}

#define REAL(f) (((struct ffile *)(f))->real)
static int f_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int f_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) { return REAL(f)->pMethods->xRead(REAL(f), b, n, o); }
static int f_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) {
  if (should_fail(F_WRITE)) return SQLITE_FULL;
  return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size) { return REAL(f)->pMethods->xTruncate(REAL(f), size); }
static int f_sync(sqlite3_file *f, int flags) {
  if (should_fail(F_SYNC)) return SQLITE_IOERR_FSYNC;
  return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *s) { return REAL(f)->pMethods->xFileSize(REAL(f), s); }
static int f_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int f_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int f_reserved(sqlite3_file *f, int *r) { return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r); }
static int f_fcntl(sqlite3_file *f, int op, void *a) { return REAL(f)->pMethods->xFileControl(REAL(f), op, a); }
static int f_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int f_devchar(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int f_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **p) {
  return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, p);
}
static int f_shmlock(sqlite3_file *f, int off, int n, int flags) { return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags); }
static void f_shmbarrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int f_shmunmap(sqlite3_file *f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }
static int f_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p) { return REAL(f)->pMethods->xFetch(REAL(f), o, n, p); }
static int f_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) { return REAL(f)->pMethods->xUnfetch(REAL(f), o, p); }

static const sqlite3_io_methods fault_methods = {
  3, f_close, f_read, f_write, f_truncate, f_sync, f_size, f_lock, f_unlock, f_reserved, f_fcntl, f_sector,
  f_devchar, f_shmmap, f_shmlock, f_shmbarrier, f_shmunmap, f_fetch, f_unfetch,
};

static int f_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
  (void)vfs;
  struct ffile *ff = (struct ffile *)file;
  ff->real = (sqlite3_file *)(ff + 1);
  int rc = base_vfs->xOpen(base_vfs, name, ff->real, flags, out_flags);
  /* a file the base could not open has no methods, and neither may ours (SQLite then skips xClose) */
  file->pMethods = rc == SQLITE_OK && ff->real->pMethods ? &fault_methods : NULL;
  return rc;
}
static int f_delete(sqlite3_vfs *v, const char *n, int sync) { (void)v; return base_vfs->xDelete(base_vfs, n, sync); }
static int f_access(sqlite3_vfs *v, const char *n, int fl, int *r) { (void)v; return base_vfs->xAccess(base_vfs, n, fl, r); }
static int f_fullpath(sqlite3_vfs *v, const char *n, int no, char *out) { (void)v; return base_vfs->xFullPathname(base_vfs, n, no, out); }
static void *f_dlopen(sqlite3_vfs *v, const char *n) { (void)v; return base_vfs->xDlOpen(base_vfs, n); }
static void f_dlerror(sqlite3_vfs *v, int n, char *m) { (void)v; base_vfs->xDlError(base_vfs, n, m); }
static void (*f_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) { (void)v; return base_vfs->xDlSym(base_vfs, h, s); }
static void f_dlclose(sqlite3_vfs *v, void *h) { (void)v; base_vfs->xDlClose(base_vfs, h); }
static int f_random(sqlite3_vfs *v, int n, char *out) { (void)v; return base_vfs->xRandomness(base_vfs, n, out); }
static int f_sleep(sqlite3_vfs *v, int us) { (void)v; return base_vfs->xSleep(base_vfs, us); }
static int f_time(sqlite3_vfs *v, double *t) { (void)v; return base_vfs->xCurrentTime(base_vfs, t); }
static int f_lasterr(sqlite3_vfs *v, int n, char *m) { (void)v; return base_vfs->xGetLastError(base_vfs, n, m); }
static int f_time64(sqlite3_vfs *v, sqlite3_int64 *t) { (void)v; return base_vfs->xCurrentTimeInt64(base_vfs, t); }

static void fault_vfs_install(void) {
  base_vfs = sqlite3_vfs_find(NULL);
  fault_vfs = (sqlite3_vfs){
    .iVersion = 2, .szOsFile = (int)sizeof(struct ffile) + base_vfs->szOsFile, .mxPathname = base_vfs->mxPathname,
    .zName = "sgfault", .xOpen = f_open, .xDelete = f_delete, .xAccess = f_access, .xFullPathname = f_fullpath,
    .xDlOpen = f_dlopen, .xDlError = f_dlerror, .xDlSym = f_dlsym, .xDlClose = f_dlclose, .xRandomness = f_random,
    .xSleep = f_sleep, .xCurrentTime = f_time, .xGetLastError = f_lasterr, .xCurrentTimeInt64 = f_time64,
  };
  sqlite3_vfs_register(&fault_vfs, 1); /* the default from now on: every store this process opens */
}

/* ---- one run ---- */

static const char *SCRIPT =
    "local saga = require 'saga'\n"
    "saga.handle('ledger', 'Post', function(p) return { posted = p.n } end)\n"
    "saga.define { name = 'Fault', steps = {\n"
    "  { name = 'post', action = function(ctx) ctx.data.r = ctx:call('ledger', 'Post', { n = ctx.input.n }) end,\n"
    "    compensate = function(ctx) end },\n"
    "  { name = 'nap', action = function(ctx) ctx:sleep('5ms') end },\n"
    "  { name = 'done', action = function(ctx) ctx.data.done = true end },\n"
    "} }\n";

#define NSTARTS 12
struct run {
  struct sg_host h;
  int started;                 /* starts tried */
  int refused;                 /* answered SG_E_UNAVAILABLE */
  int waiting;                 /* starts whose commit has not answered */
  int acked, nacked;           /* commits that answered 0 / -1 */
  char ids[NSTARTS][40];       /* the acknowledged ones */
  int nids;
  int stalls_seen;             /* ticks during which the engine was stalled */
  ev_timer tick;
  int ticks;
};

struct start_ctx {
  struct run *r;
  char id[40];
};

static void on_started(void *ud, int status) {
  struct start_ctx *c = ud;
  c->r->waiting--;
  if (status == 0) {
    c->r->acked++;
    memcpy(c->r->ids[c->r->nids++], c->id, 40);
  } else {
    c->r->nacked++;
  }
  free(c);
}

static void start_one(struct run *r) {
  char input[64];
  snprintf(input, sizeof input, "{\"n\":%d}", r->started);
  r->started++;
  struct start_ctx *c = calloc(1, sizeof *c);
  c->r = r;
  int existed = 0;
  struct sg_error e = {0};
  if (sg_engine_start(r->h.en, "Fault", input, NULL, c->id, &existed, &e) < 0) {
    if (e.code == SG_E_UNAVAILABLE) r->refused++;
    else fprintf(stderr, "start: %s\n", e.msg);
    free(c);
    return;
  }
  r->waiting++;
  sg_engine_after_commit(r->h.en, on_started, c);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  struct run *r = w->data;
  r->ticks++;
  if (sg_engine_stalled(r->h.en)) r->stalls_seen++;
  if (r->started < NSTARTS) start_one(r); /* one start per 3 ms tick, stalled or not */
  struct sg_engine_stats st;
  sg_engine_stats(r->h.en, &st);
  int done = r->started == NSTARTS && r->waiting == 0 && st.live == 0 && !st.stalled;
  if (done || sg_engine_broken(r->h.en) || r->ticks > 2000) ev_break(loop, EVBREAK_ALL);
}

static int count(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
  int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  sqlite3_finalize(st);
  return n;
}

/* A fresh database in dir (db receives its path) and the host configuration for it. */
static int fresh_host_config(const char *dir, char *db, size_t n, struct sg_host_config *cfg) {
  snprintf(db, n, "%s/f.db", dir);
  char cmd[2200];
  snprintf(cmd, sizeof cmd, "rm -f %s %s-wal %s-shm %s.lock", db, db, db, db);
  if (system(cmd) != 0) return -1;
  sg_host_config_defaults(cfg);
  cfg->db = db;
  cfg->dir = dir;
  cfg->host_id = "fault";
  return 0;
}

/* Counts from now on, and fails the n-th write or fsync (and the repeat after it). */
static void fault_arm(int kind, long n, int repeat) {
  F.kind = kind;
  F.n = n;
  F.repeat = repeat;
  F.armed = 1;
}

/* The 3 ms tick that starts sagas and watches for the end (on_tick). */
static void tick_start(struct ev_loop *loop, struct run *r) {
  ev_timer_init(&r->tick, on_tick, 0.003, 0.003);
  r->tick.data = r;
  ev_timer_start(loop, &r->tick);
}

/* Every acknowledged saga of r is in the file, completed, once. */
static void check_acked_completed(sqlite3 *h, const struct run *r, const char *what) {
  for (int i = 0; i < r->nids; i++) {
    char q[160];
    snprintf(q, sizeof q, "SELECT count(*) FROM sagas WHERE id = '%s' AND status = 'completed'", r->ids[i]);
    if (!CHECK(count(h, q) == 1)) fprintf(stderr, "  %s: acknowledged saga %s is not there, completed\n", what, r->ids[i]);
  }
}

/* Runs one host with the fault armed; returns how many faults were injected (-1 = run failed). */
static long run_once(const char *dir, int kind, long n, int repeat, long *writes, long *syncs) {
  char db[512];
  struct sg_host_config cfg;
  if (fresh_host_config(dir, db, sizeof db, &cfg) < 0) return -1;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct run r;
  memset(&r, 0, sizeof r);
  struct sg_error e = {0};
  memset(&F, 0, sizeof F);
  if (sg_host_open(&r.h, loop, &cfg, &e) < 0) {
    fprintf(stderr, "open: %s\n", e.msg);
    ev_loop_destroy(loop);
    return -1;
  }
  fault_arm(kind, n, repeat);
  tick_start(loop, &r);
  ev_run(loop, 0);
  ev_timer_stop(loop, &r.tick);
  long injected = F.failures; /* during the run (a fault in the closing checkpoint is not the run's) */
  int broken = sg_engine_broken(r.h.en);
  struct sg_engine_stats st;
  sg_engine_stats(r.h.en, &st);
  sg_host_close(&r.h);
  F.armed = 0;
  ev_loop_destroy(loop);
  *writes = F.writes;
  *syncs = F.syncs;

  char what[64];
  snprintf(what, sizeof what, "%s %ld%s", kind == F_WRITE ? "write" : "fsync", n, repeat ? "+" : "");
  if (!CHECK(!broken)) fprintf(stderr, "  %s: the host broke\n", what);
  if (!CHECK(r.started == NSTARTS && r.waiting == 0 && st.live == 0))
    fprintf(stderr, "  %s: did not finish: started %d, waiting %d, live %lld, stalled %d\n", what, r.started,
            r.waiting, (long long)st.live, st.stalled);
  if (!CHECK(r.nacked == 0)) fprintf(stderr, "  %s: %d start(s) answered with a failed commit\n", what, r.nacked);
  if (injected && !CHECK(st.store_failures >= 1)) fprintf(stderr, "  %s: a fault but no stall\n", what);

  /* what is in the file, read without faults */
  sqlite3 *h;
  if (!CHECK(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, "unix") == SQLITE_OK)) return -1;
  sqlite3_stmt *ic;
  sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &ic, NULL);
  int ok = sqlite3_step(ic) == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(ic, 0), "ok") == 0;
  sqlite3_finalize(ic);
  if (!CHECK(ok)) fprintf(stderr, "  %s: integrity_check failed\n", what);
  int sagas = count(h, "SELECT count(*) FROM sagas");
  if (!CHECK(sagas == r.acked))
    fprintf(stderr, "  %s: %d sagas stored, %d acknowledged (%d refused)\n", what, sagas, r.acked, r.refused);
  check_acked_completed(h, &r, what);
  int doubled = count(h, "SELECT count(*) FROM (SELECT 1 FROM history GROUP BY saga_id, step, phase, attempt, status"
                         " HAVING count(*) > 1)");
  if (!CHECK(doubled == 0)) fprintf(stderr, "  %s: %d step outcome(s) recorded twice\n", what, doubled);
  int steps = count(h, "SELECT count(*) FROM history WHERE status = 'completed'");
  if (!CHECK(steps == 3 * r.acked)) fprintf(stderr, "  %s: %d completed steps for %d sagas\n", what, steps, r.acked);
  int left = count(h, "SELECT count(*) FROM timers") + count(h, "SELECT count(*) FROM outbox");
  if (!CHECK(left == 0)) fprintf(stderr, "  %s: %d timer/outbox row(s) left behind\n", what, left);
  sqlite3_close(h);
  return F.failures;
}

/* The disk stays full and the host is stopped while it holds a batch: it must close cleanly (ASan
 * watches the frees of the sagas the held batch finished), say it broke, and a host opened after
 * space returns must find every acknowledged saga and finish it. */
static void stop_while_full(const char *dir, long n) {
  char db[512];
  struct sg_host_config cfg;
  if (fresh_host_config(dir, db, sizeof db, &cfg) < 0) return;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct run r;
  memset(&r, 0, sizeof r);
  struct sg_error e = {0};
  memset(&F, 0, sizeof F);
  if (!CHECK(sg_host_open(&r.h, loop, &cfg, &e) == 0)) { fprintf(stderr, "open: %s\n", e.msg); return; }
  fault_arm(F_WRITE, n, 1 << 30); /* some commits in, and full from then on */
  tick_start(loop, &r);
  while (r.ticks < 400 && !(r.started == NSTARTS && r.stalls_seen > 20)) ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &r.tick);
  CHECK(sg_engine_stalled(r.h.en));
  sg_engine_stop(r.h.en);           /* what `sagahost run` does on SIGTERM */
  CHECK(sg_engine_broken(r.h.en));  /* it exits 1: the held batch was never acknowledged */
  sg_host_close(&r.h);
  ev_loop_destroy(loop);
  F.armed = 0;
  int acked = r.acked, waiting = r.waiting;
  CHECK(waiting == 0); /* the starts in the held batch were answered: not committed */
  /* space is back: a new host goes on from the last commit */
  loop = ev_loop_new(EVFLAG_AUTO);
  struct run r2;
  memset(&r2, 0, sizeof r2);
  r2.started = NSTARTS; /* no new starts */
  if (!CHECK(sg_host_open(&r2.h, loop, &cfg, &e) == 0)) { fprintf(stderr, "reopen: %s\n", e.msg); return; }
  tick_start(loop, &r2);
  ev_run(loop, 0);
  ev_timer_stop(loop, &r2.tick);
  CHECK(!sg_engine_broken(r2.h.en));
  sg_host_close(&r2.h);
  ev_loop_destroy(loop);
  sqlite3 *h;
  if (!CHECK(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, "unix") == SQLITE_OK)) return;
  check_acked_completed(h, &r, "stop while full");
  printf("stop while full from write %ld: %d acknowledged before, %d refused, %d in the held batch answered as "
         "failed; every acknowledged one completed after a restart\n", n, acked, r.refused, r.nacked);
  sqlite3_close(h);
}

int main(void) {
  sg_log_level = SG_LOG_ERROR + 1; /* the stall messages are expected; keep the output to the checks */
  if (getenv("SG_FAULT_VERBOSE")) sg_log_level = SG_LOG_INFO;
  char dir[] = "/tmp/sg-diskfault-XXXXXX";
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
  char path[600];
  snprintf(path, sizeof path, "%s/fault.lua", dir);
  FILE *f = fopen(path, "w");
  fputs(SCRIPT, f);
  fclose(f);
  fault_vfs_install();

  long writes = 0, syncs = 0;
  run_once(dir, F_WRITE, 0, 0, &writes, &syncs);
  printf("clean run: %ld writes, %ld fsyncs after the host opened\n", writes, syncs);
  /* full from write n on, for n across the first half of the run, from a quarter of it (a run's write
   * count varies with timing: on a loaded machine commits batch more and a run makes far fewer writes,
   * so an n near the clean run's end may never come and the disk would never fill; and since the store
   * writes a commit's WAL frames in one call (walbuf.c) a whole run is only ~50 writes) */
  for (long n = writes / 4 > 2 ? writes / 4 : 2; n <= writes / 2; n += 50) stop_while_full(dir, n);
  CHECK(writes > 10 && syncs > 3);
  /* every write of the first commits, then every 7th to the end; every fsync */
  long injected = 0, runs = 0;
  for (int kind = F_WRITE; kind <= F_SYNC; kind++) {
    long max = kind == F_WRITE ? writes : syncs;
    for (long n = 1; n <= max; n += kind == F_WRITE && n >= 60 ? 7 : 1) {
      long w, s2;
      long got = run_once(dir, kind, n, n % 2 == 0 ? 3 : 0, &w, &s2);
      runs++;
      if (got > 0) injected += got;
    }
  }
  printf("sweep: %ld runs (every write 1..60, every 7th to %ld, every fsync 1..%ld), %ld faults injected\n", runs,
         writes, syncs, injected);
  CHECK(injected >= runs / 2);
  snprintf(path, sizeof path, "rm -rf %s", dir);
  if (system(path) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return check_report();
}
