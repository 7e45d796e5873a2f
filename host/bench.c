/* bench: `sagahost bench`: runs N BenchOrder sagas with C in flight, in-process, over RabbitMQ
 * (participants in a second sagahost process) or against a running host's HTTP API, and reports
 * throughput, latency percentiles, peak RSS and store commits. */
#define _GNU_SOURCE
#include "bench.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "util.h"

#define BENCH_TYPE "BenchOrder"
#define BENCH_NO_PROGRESS_S 60.0 /* give up when no saga finished for this long */
#define BENCH_READY_S 30.0       /* how long the participant and the broker may take to connect */

/* The saga definition. Its participants live in BENCH_HANDLERS so that over AMQP the orchestrator
 * loads only this file and the participant process only the handlers. */
static const char BENCH_SAGA[] =
  "-- BenchOrder: the saga `sagahost bench` runs. Three steps, each one ctx:call to a participant;\n"
  "-- when the input says fail, the shipping participant refuses for good (retryable = false) and\n"
  "-- the saga compensates the payment, then the reservation.\n"
  "local saga = require \"saga\"\n"
  "\n"
  "saga.define {\n"
  "  name = \"" BENCH_TYPE "\",\n"
  "  steps = {\n"
  "    {\n"
  "      name = \"Reserve\",\n"
  "      action = function(ctx)\n"
  "        local r = ctx:call(\"bench_inventory\", \"Reserve\", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty })\n"
  "        ctx.data.reservation = r.reservation_id\n"
  "      end,\n"
  "      compensate = function(ctx)\n"
  "        ctx:call(\"bench_inventory\", \"Release\", { reservation_id = ctx.data.reservation })\n"
  "      end,\n"
  "    },\n"
  "    {\n"
  "      name = \"Charge\",\n"
  "      action = function(ctx)\n"
  "        local r = ctx:call(\"bench_payment\", \"Charge\", { order_id = ctx.input.order_id, amount = ctx.input.amount })\n"
  "        ctx.data.payment = r.payment_id\n"
  "      end,\n"
  "      compensate = function(ctx)\n"
  "        ctx:call(\"bench_payment\", \"Refund\", { payment_id = ctx.data.payment, amount = ctx.input.amount })\n"
  "      end,\n"
  "    },\n"
  "    {\n"
  "      name = \"Ship\",\n"
  "      action = function(ctx)\n"
  "        -- raises error { message = ..., retryable = false } when the participant refuses\n"
  "        local r = ctx:call(\"bench_shipping\", \"Ship\", { order_id = ctx.input.order_id, fail = ctx.input.fail })\n"
  "        ctx.data.tracking = r.tracking\n"
  "      end,\n"
  "    },\n"
  "  },\n"
  "}\n";

/* The participants: they answer at once, so the figures measure the host, not the services. */
static const char BENCH_HANDLERS[] =
  "-- The participants of BenchOrder (`sagahost bench`). They answer at once; shipping refuses\n"
  "-- for good when the order says fail, which makes the saga compensate.\n"
  "local saga = require \"saga\"\n"
  "\n"
  "saga.handle(\"bench_inventory\", \"Reserve\", function(p)\n"
  "  return { reservation_id = \"r-\" .. tostring(p.order_id), sku = p.sku, qty = p.qty }\n"
  "end)\n"
  "saga.handle(\"bench_inventory\", \"Release\", function(p)\n"
  "  return { released = p.reservation_id }\n"
  "end)\n"
  "saga.handle(\"bench_payment\", \"Charge\", function(p)\n"
  "  return { payment_id = \"p-\" .. tostring(p.order_id), amount = p.amount }\n"
  "end)\n"
  "saga.handle(\"bench_payment\", \"Refund\", function(p)\n"
  "  return { refunded = p.payment_id, amount = p.amount }\n"
  "end)\n"
  "saga.handle(\"bench_shipping\", \"Ship\", function(p)\n"
  "  if p.fail then\n"
  "    error { message = \"shipment refused for order \" .. tostring(p.order_id), retryable = false }\n"
  "  end\n"
  "  return { tracking = \"t-\" .. tostring(p.order_id) }\n"
  "end)\n";

/* What the command line asked for. */
struct bench_opts {
  long sagas;               /* N: sagas to run */
  long concurrency;         /* C: sagas in flight */
  long fail_every;          /* K: every K-th saga compensates, 0 = none */
  const char *db;           /* database path (in-process and --amqp orchestrator), NULL = temp file */
  const char *amqp;         /* broker URL, or NULL */
  const char *amqp1;        /* AMQP 1.0 broker URL (--amqp1), or NULL; excludes amqp and kafka */
  const char *kafka;        /* Kafka brokers, or NULL (excludes amqp and amqp1) */
  const char *otlp;         /* --otlp: the orchestrator exports its spans there (NULL: the environment's, or off) */
  const char *server;       /* host URL, or NULL */
  int get_wait;             /* --server with --wait-on get: POST, then GET ?wait= (default: one POST ?wait=) */
  const char *write_script; /* --write-script DIR, or NULL */
};

/* The figures of one run, whatever the mode. */
struct bench_result {
  const char *mode;         /* "inprocess", "amqp", "amqp1", "kafka", "server" */
  const char *latency_kind; /* what lat measures: "end_to_end" (every mode; kept for the JSON line) */
  double secs;              /* wall time from the first start to the last terminal status */
  double *lat;              /* per-saga latencies in ms, nlat entries (owned) */
  long nlat;
  int64_t commits;          /* store commits during the run */
  int64_t completed, compensated, compensation_failed; /* outcomes */
  double peak_rss_mb;       /* ru_maxrss of this process */
  double participant_rss_mb; /* --amqp: ru_maxrss of the participant process, else 0 */
};

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: sagahost bench [--sagas N] [--concurrency C] [--fail-every K] [--db PATH] [--amqp URL | --amqp1 URL | --kafka BROKERS | --server URL [--wait-on post|get]]\n"
          "                      [--otlp URL]\n"
          "       sagahost bench --write-script DIR\n"
          "\n"
          "Runs N (default 10000) BenchOrder sagas, 3 steps each, with C (default 64) in flight; every K-th one\n"
          "(default 0 = none) is refused at step 3 and compensates steps 2 and 1. Prints a summary and, last, one\n"
          "JSON line: sagas, secs, sagas_per_s, p50_ms, p99_ms, peak_rss_mb, commits, completed, compensated, ...\n"
          "\n"
          "  (default)         in-process: store, engine and local transport in this process; --db PATH is the\n"
          "                    SQLite file (deleted first; default a temp file)\n"
          "  --amqp URL        participants run in a second sagahost process, commands and replies go through\n"
          "                    RabbitMQ at URL (amqp://user:pass@host:5672/vhost)\n"
          "  --amqp1 URL       the same over AMQP 1.0 (amqp[s]://user:pass@host:port?options, docs/protocol.md);\n"
          "                    the queues must exist: saga.svc.bench_inventory, saga.svc.bench_payment,\n"
          "                    saga.svc.bench_shipping, saga.svc.saga, saga.reply.sagahost-bench and\n"
          "                    saga.reply.sagahost-bench-participant\n"
          "  --kafka BROKERS   likewise through Kafka (host:port[,host:port...]; docs/protocol.md, \"Kafka\")\n"
          "  --server URL      drive a running host over its HTTP API (each saga: one POST ?wait=30s, answered with\n"
          "                    the saga once it has ended, on a kept-alive connection); that host must have the bench saga:\n"
          "                    sagahost bench --write-script DIR && sagahost run DIR (sends $SAGAHOST_TOKEN\n"
          "                    as a bearer token when set, needs role start; $SAGAHOST_CACERT for https)\n"
          "  --wait-on get     with --server: each saga a POST, then GET /v1/sagas/{id}?wait=30s on the same\n"
          "                    connection (two requests a saga; --wait-on post is the default)\n"
          "  --otlp URL        trace the orchestrator's sagas: spans to URL/v1/traces (OTLP/HTTP JSON)\n"
          "  --write-script DIR  write the bench saga and its participants into DIR and exit\n");
}

static int bench_usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "sagahost bench: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n\n");
  bench_usage(stderr);
  return 2;
}

/* ---------------------------------------------------------------------------------------------- */
/* small helpers */

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double peak_rss_mb(int who) {
  struct rusage ru;
  if (getrusage(who, &ru) < 0) return 0;
  return (double)ru.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
}

static int write_text(const char *path, const char *text, struct sg_error *e) {
  FILE *f = fopen(path, "w");
  if (!f) return sg_errorf(e, SG_E_INTERNAL, "cannot write %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  int bad = fwrite(text, 1, n, f) != n;
  if (fclose(f) != 0) bad = 1;
  if (bad) return sg_errorf(e, SG_E_INTERNAL, "cannot write %s: %s", path, strerror(errno));
  return 0;
}

/* Writes the saga and/or its participants into dir (which exists). */
static int write_scripts(const char *dir, int saga, int handlers, struct sg_error *e) {
  int rc = 0;
  if (saga) {
    char *path = sg_asprintf("%s/bench_order.lua", dir);
    rc = write_text(path, BENCH_SAGA, e);
    free(path);
  }
  if (rc == 0 && handlers) {
    char *path = sg_asprintf("%s/bench_participants.lua", dir);
    rc = write_text(path, BENCH_HANDLERS, e);
    free(path);
  }
  return rc;
}

/* mkdir -p */
static int make_dir(const char *path, struct sg_error *e) {
  char *p = sg_strdup(path);
  int rc = 0;
  for (char *s = p + 1; ; s++) {
    if (*s && *s != '/') continue;
    char c = *s;
    *s = 0;
    if (mkdir(p, 0755) < 0 && errno != EEXIST) {
      rc = sg_errorf(e, SG_E_INTERNAL, "cannot create directory %s: %s", p, strerror(errno));
      break;
    }
    *s = c;
    if (!c) break;
  }
  free(p);
  return rc;
}

/* A fresh database: the file and its WAL/SHM/journal companions are removed first. */
static void remove_db(const char *path) {
  static const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    char *p = sg_asprintf("%s%s", path, suffixes[i]);
    unlink(p);
    free(p);
  }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  remove(path);
  return 0;
}

static void remove_tree(const char *dir) {
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* nearest-rank percentile of a sorted array */
static double percentile(const double *v, long n, double q) {
  if (n <= 0) return 0;
  long k = (long)ceil(q * (double)n);
  if (k < 1) k = 1;
  if (k > n) k = n;
  return v[k - 1];
}

/* Prints the summary, then the JSON line (always the last line of stdout). */
static void report(const struct bench_opts *o, struct bench_result *r) {
  qsort(r->lat, (size_t)r->nlat, sizeof *r->lat, cmp_double);
  double p50 = percentile(r->lat, r->nlat, 0.50), p99 = percentile(r->lat, r->nlat, 0.99);
  double max = r->nlat ? r->lat[r->nlat - 1] : 0;
  double rate = r->secs > 0 ? (double)o->sagas / r->secs : 0;
  int64_t done = r->completed + r->compensated + r->compensation_failed;
  printf("sagahost bench: %s, %ld %s sagas (3 steps", r->mode, o->sagas, BENCH_TYPE);
  if (o->fail_every > 0) printf(", every %ld%s compensates", o->fail_every, o->fail_every == 1 ? "" : "th");
  printf("), concurrency %ld\n", o->concurrency);
  printf("  time         %.3f s\n", r->secs);
  printf("  throughput   %.0f sagas/s\n", rate);
  printf("  latency      p50 %.1f ms, p99 %.1f ms, max %.1f ms (start to terminal status)\n", p50, p99, max);
  printf("  outcome      %" PRId64 " completed, %" PRId64 " compensated, %" PRId64 " compensation_failed\n",
         r->completed, r->compensated, r->compensation_failed);
  printf("  store        %" PRId64 " commits (%.1f sagas per commit)\n", r->commits,
         r->commits > 0 ? (double)done / (double)r->commits : 0.0);
  printf("  peak RSS     %.1f MB", r->peak_rss_mb);
  if (r->participant_rss_mb > 0) printf(" (participant process %.1f MB)", r->participant_rss_mb);
  printf("\n");
  printf("{\"mode\":\"%s\",\"sagas\":%ld,\"concurrency\":%ld,\"fail_every\":%ld,\"secs\":%.3f,\"sagas_per_s\":%.1f,"
         "\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"latency\":\"%s\",\"peak_rss_mb\":%.1f,"
         "\"commits\":%" PRId64 ",\"completed\":%" PRId64 ",\"compensated\":%" PRId64
         ",\"compensation_failed\":%" PRId64 "}\n",
         r->mode, o->sagas, o->concurrency, o->fail_every, r->secs, rate, p50, p99, max, r->latency_kind,
         r->peak_rss_mb, r->commits, r->completed, r->compensated, r->compensation_failed);
  fflush(stdout);
}

/* The input of the i-th saga (1-based). */
static void saga_input(const struct bench_opts *o, long i, char *buf, size_t n) {
  int fail = o->fail_every > 0 && i % o->fail_every == 0;
  snprintf(buf, n, "{\"order_id\":\"bench-%ld\",\"sku\":\"sku-%ld\",\"qty\":%ld,\"amount\":%ld,\"fail\":%s}", i,
           i % 100, 1 + i % 3, 10 + (i * 7) % 90, fail ? "true" : "false");
}

/* ---------------------------------------------------------------------------------------------- */
/* in-process and --amqp: the orchestrator in this process */

/* One orchestrator run: the host's pieces plus the load generator's state. */
struct bench {
  const struct bench_opts *o;
  struct ev_loop *loop;
  struct sg_host host;    /* the orchestrator: store, scripts, engine, transport (as `sagahost run`) */
  ev_idle kick;           /* starts replacement sagas in a loop iteration of their own (see on_terminal) */
  ev_timer tick;          /* waits for readiness (--amqp), then watches for progress */
  ev_signal sigint;       /* Ctrl-C stops the run (and the participant process) cleanly */
  long started;           /* sagas started so far */
  long finished;          /* sagas terminal so far (and entries in lat) */
  double *lat;            /* end-to-end latency of each finished saga, ms */
  double t0, t1;          /* monotonic s: first start, last terminal */
  int running;            /* the clock runs (initial sagas started) */
  int failed;             /* the run was aborted; the message is printed */
  double last_progress;   /* monotonic s of the last change of finished */
  long last_finished;     /* finished at last_progress */
  double ready_deadline;  /* monotonic s by which the participant must be connected */
  pid_t child;            /* --amqp: the participant process, 0 = none */
  char *child_log;        /* --amqp: its log file (malloc'd) */
};

static void bench_abort(struct bench *b, const char *fmt, const char *arg) {
  fprintf(stderr, "sagahost bench: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  b->failed = 1;
  ev_break(b->loop, EVBREAK_ALL);
}

static void start_one(struct bench *b) {
  char input[256], id[40];
  int existed;
  struct sg_error e = {0};
  long i = ++b->started;
  saga_input(b->o, i, input, sizeof input);
  if (sg_engine_start(b->host.en, BENCH_TYPE, input, NULL, id, &existed, &e) < 0) bench_abort(b, "cannot start a saga: %s", e.msg);
}

/* Tops the in-flight sagas up to C. */
static void fill(struct bench *b) {
  while (!b->failed && b->started < b->o->sagas && b->started - b->finished < b->o->concurrency) start_one(b);
}

static void on_kick(struct ev_loop *loop, ev_idle *w, int revents) {
  struct bench *b = w->data;
  ev_idle_stop(loop, w);
  fill(b);
}

/* Runs after the commit that made a saga terminal, inside the engine's commit. Starting the next saga
 * right here would open a transaction that is only committed at the next ev_prepare, and the loop
 * could sleep in the meantime (nothing else pending); an ev_idle keeps the loop spinning instead. */
static void on_terminal(void *ud, const char *id, int status, int64_t created_at) {
  struct bench *b = ud;
  if (b->finished >= b->o->sagas) return;
  b->lat[b->finished++] = (double)(sg_now_ms() - created_at);
  if (b->finished == b->o->sagas) {
    b->t1 = mono_s();
    ev_break(b->loop, EVBREAK_ALL);
    return;
  }
  if (b->started < b->o->sagas) ev_idle_start(b->loop, &b->kick);
}

/* --amqp: the participant process logged its connection to the broker; --kafka: it has partitions of
 * its three services' topics and of saga.svc.saga (four consumer groups). */
static int child_connected(struct bench *b) {
  size_t len;
  struct sg_error e = {0};
  char *log = sg_read_file(b->child_log, &len, &e);
  int ok = 0;
  if (log && b->o->kafka) {
    int groups = 0;
    for (const char *p = log; (p = strstr(p, "partitions of saga.svc.")) != NULL; p++) groups++;
    ok = groups >= 4;
  } else {
    ok = log && (strstr(log, "amqp: connected") || strstr(log, "amqp1: connected"));
  }
  free(log);
  return ok;
}

static void print_child_log(struct bench *b) {
  size_t len;
  struct sg_error e = {0};
  char *log = sg_read_file(b->child_log, &len, &e);
  const char *tail = log ? log : "";
  if (len > 4000) tail = log + len - 4000;
  fprintf(stderr, "--- participant log (%s) ---\n%s--- end ---\n", b->child_log, tail);
  free(log);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) {
  struct bench *b = w->data;
  double now = mono_s();
  if (!b->running) {
    if (b->child) {
      int st;
      if (waitpid(b->child, &st, WNOHANG) == b->child) {
        b->child = 0;
        print_child_log(b);
        bench_abort(b, "%s", "the participant process exited before the run started (log above)");
        return;
      }
    }
    int ready = b->host.tr->ops->connected(b->host.tr) && (!b->child || child_connected(b));
    if (!ready) {
      if (now > b->ready_deadline) {
        if (b->child) print_child_log(b);
        bench_abort(b, "%s", "the broker connection (this process or the participant process) was not up within 30 s");
      }
      return;
    }
    b->running = 1;
    b->t0 = b->last_progress = now;
    fill(b);
    w->repeat = 1.0; /* from now on: the progress watchdog */
    ev_timer_again(loop, w);
    return;
  }
  if (b->finished != b->last_finished) {
    b->last_finished = b->finished;
    b->last_progress = now;
  } else if (now - b->last_progress > BENCH_NO_PROGRESS_S) {
    char msg[160];
    snprintf(msg, sizeof msg, "no saga finished for %.0f s (%ld of %ld done, %ld in flight)", BENCH_NO_PROGRESS_S,
             b->finished, b->o->sagas, b->started - b->finished);
    if (b->child) print_child_log(b);
    bench_abort(b, "%s; giving up", msg);
  }
}

static void on_sigint(struct ev_loop *loop, ev_signal *w, int revents) {
  bench_abort(w->data, "%s", "interrupted");
}

/* --amqp, --amqp1 or --kafka (flag): starts `sagahost run` on dir with the participants. */
static pid_t spawn_participant(const char *dir, const char *db, const char *flag, const char *url, const char *log,
                               struct sg_error *e) {
  pid_t pid = fork();
  if (pid < 0) { sg_errorf(e, SG_E_INTERNAL, "fork: %s", strerror(errno)); return -1; }
  if (pid > 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench */
  int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); close(fd); }
  setenv("SAGAHOST_LOG_LEVEL", "info", 1); /* its "amqp: connected" line is how we know it is ready */
  execl("/proc/self/exe", "sagahost", "run", "--db", db, "--listen", "127.0.0.1:0", flag, url, "--host-id",
        "sagahost-bench-participant", dir, (char *)NULL);
  fprintf(stderr, "exec /proc/self/exe: %s\n", strerror(errno));
  _exit(127);
}

/* SIGTERM, then SIGKILL after 10 s; returns the participant's peak RSS in MB (0 if unknown). */
static double stop_participant(pid_t pid) {
  if (pid <= 0) return 0;
  kill(pid, SIGTERM);
  int st;
  for (int i = 0; i < 1000; i++) {
    if (waitpid(pid, &st, WNOHANG) == pid) return peak_rss_mb(RUSAGE_CHILDREN);
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  return peak_rss_mb(RUSAGE_CHILDREN);
}

static int run_orchestrator(const struct bench_opts *o) {
  struct bench b = {0};
  struct bench_result r = {0};
  struct sg_error e = {0};
  int rc = 1;
  const char *tmpbase = getenv("TMPDIR");
  char *tmp = sg_asprintf("%s/sagahost-bench-XXXXXX", tmpbase && *tmpbase ? tmpbase : "/tmp");
  if (!mkdtemp(tmp)) {
    fprintf(stderr, "sagahost bench: cannot create a temp directory %s: %s\n", tmp, strerror(errno));
    free(tmp);
    return 1;
  }
  char *sagas_dir = sg_asprintf("%s/sagas", tmp);
  char *dbpath = o->db ? sg_strdup(o->db) : sg_asprintf("%s/bench.db", tmp);
  char *pdir = sg_asprintf("%s/participant", tmp);
  char *psagas = sg_asprintf("%s/sagas", pdir);
  char *pdb = sg_asprintf("%s/participant.db", pdir);
  b.o = o;
  b.lat = sg_xcalloc((size_t)o->sagas, sizeof *b.lat);
  b.loop = ev_default_loop(EVFLAG_AUTO);
  const char *broker = o->amqp ? o->amqp : o->amqp1 ? o->amqp1 : o->kafka; /* participants in a second process */
  if (make_dir(sagas_dir, &e) < 0 || write_scripts(sagas_dir, 1, !broker, &e) < 0) {
    fprintf(stderr, "sagahost bench: %s\n", e.msg);
    goto out;
  }
  if (broker) {
    b.child_log = sg_asprintf("%s/participant.log", pdir);
    if (make_dir(pdir, &e) < 0 || make_dir(psagas, &e) < 0 || write_scripts(psagas, 0, 1, &e) < 0) {
      fprintf(stderr, "sagahost bench: %s\n", e.msg);
      goto out;
    }
    b.child = spawn_participant(psagas, pdb, o->amqp ? "--amqp" : o->amqp1 ? "--amqp1" : "--kafka", broker, b.child_log, &e);
    if (b.child < 0) { b.child = 0; fprintf(stderr, "sagahost bench: cannot start the participant process: %s\n", e.msg); goto out; }
  }

  /* the same wiring and defaults as `sagahost run`; a --db a host is running on is refused before
   * anything of it is deleted */
  if (sg_store_is_pg_url(dbpath) ? sg_store_pg_in_use(dbpath, &e) : sg_store_sqlite_in_use(dbpath, &e)) {
    fprintf(stderr, "sagahost bench: cannot start the host: %s\n", e.msg);
    goto out;
  }
  remove_db(dbpath);
  struct sg_host_config cfg;
  sg_host_config_defaults(&cfg);
  cfg.db = dbpath;
  cfg.dir = sagas_dir;
  cfg.amqp = o->amqp;
  cfg.amqp1 = o->amqp1;
  cfg.kafka = o->kafka;
  cfg.otlp = o->otlp;
  cfg.host_id = broker ? "sagahost-bench" : "bench";
  if (sg_host_open(&b.host, b.loop, &cfg, &e) < 0) {
    fprintf(stderr, "sagahost bench: cannot start the host: %s\n", e.msg);
    goto out;
  }
  if (b.host.load_errors) {
    sg_script_print_errors(b.host.sc, stderr);
    fprintf(stderr, "sagahost bench: the bench script failed to load (a bug in sagahost)\n");
    goto out;
  }
  sg_engine_on_terminal(b.host.en, on_terminal, &b);

  ev_idle_init(&b.kick, on_kick);
  b.kick.data = &b;
  ev_timer_init(&b.tick, on_tick, 0., 0.02);
  b.tick.data = &b;
  ev_timer_start(b.loop, &b.tick);
  ev_signal_init(&b.sigint, on_sigint, SIGINT);
  b.sigint.data = &b;
  ev_signal_start(b.loop, &b.sigint);
  b.ready_deadline = mono_s() + BENCH_READY_S;
  ev_run(b.loop, 0);
  ev_timer_stop(b.loop, &b.tick);
  ev_idle_stop(b.loop, &b.kick);
  ev_signal_stop(b.loop, &b.sigint);
  if (b.failed) goto out;
  if (b.finished < o->sagas) { fprintf(stderr, "sagahost bench: the loop stopped after %ld of %ld sagas (see the log above)\n", b.finished, o->sagas); goto out; }

  struct sg_engine_stats st;
  sg_engine_stats(b.host.en, &st);
  r.mode = o->amqp ? "amqp" : o->amqp1 ? "amqp1" : o->kafka ? "kafka" : "inprocess";
  r.latency_kind = "end_to_end";
  r.secs = b.t1 - b.t0;
  r.lat = b.lat;
  r.nlat = b.finished;
  r.commits = st.commits;
  r.completed = st.completed;
  r.compensated = st.compensated;
  r.compensation_failed = st.compensation_failed;
  rc = 0;
out:
  sg_host_close(&b.host);
  ev_loop_destroy(b.loop);
  if (b.child) r.participant_rss_mb = stop_participant(b.child);
  if (rc == 0) {
    r.peak_rss_mb = peak_rss_mb(RUSAGE_SELF);
    report(o, &r);
    remove_tree(tmp); /* a --db outside it is kept */
  } else {
    fprintf(stderr, "sagahost bench: kept %s for inspection\n", tmp);
  }
  free(b.child_log);
  free(b.lat);
  free(tmp); free(sagas_dir); free(dbpath); free(pdir); free(psagas); free(pdb);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* --server: a running host over HTTP */

/* One saga in flight: its POST ?wait= (answered with the saga once it has ended), or with --wait-on get its
 * POST, then GET /v1/sagas/{id}?wait=; a saga still running when the wait is over is asked again with
 * GET ?wait=; all on the same easy handle (so on the same kept-alive connection). */
struct hreq {
  CURL *h;            /* reusable easy handle (keeps its connection) */
  struct sg_buf body; /* response body */
  double t0;          /* monotonic s when its POST was added */
  long idx;           /* which saga (1-based) */
  int waiting;        /* 0: the POST is on its way; 1: a GET ?wait= */
  char *get_url;      /* the GET's URL (owned) */
};

/* how long one request waits for the saga to end; one still running is asked again */
#define BENCH_WAIT "30s"

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  sg_buf_add(ud, p, size * n);
  return size * n;
}

/* $SAGAHOST_TOKEN as a bearer token, as the CLI sends it, appended to list */
static struct curl_slist *bench_auth_headers(struct curl_slist *list) {
  const char *token = getenv("SAGAHOST_TOKEN");
  if (!token || !*token || strpbrk(token, "\r\n")) return list;
  char *h = sg_asprintf("Authorization: Bearer %s", token);
  list = curl_slist_append(list, h);
  free(h);
  return list;
}

/* $SAGAHOST_CACERT for an https --server with a private CA */
static void bench_cacert(CURL *h) {
  const char *ca = getenv("SAGAHOST_CACERT");
  if (ca && *ca) curl_easy_setopt(h, CURLOPT_CAINFO, ca);
}

/* GET base+path; returns the parsed JSON object or NULL with e filled. */
static json_t *http_get_json(const char *base, const char *path, struct sg_error *e) {
  CURL *h = curl_easy_init();
  struct sg_buf body;
  sg_buf_init(&body);
  char *url = sg_asprintf("%s%s", base, path);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
  struct curl_slist *hdrs = bench_auth_headers(NULL);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  bench_cacert(h);
  CURLcode c = curl_easy_perform(h);
  curl_slist_free_all(hdrs);
  long code = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
  json_t *j = NULL;
  if (c != CURLE_OK) sg_errorf(e, SG_E_INTERNAL, "GET %s: %s", url, curl_easy_strerror(c));
  else if (code != 200) sg_errorf(e, SG_E_INTERNAL, "GET %s: HTTP %ld %.200s", url, code, body.data ? body.data : "");
  else {
    json_error_t je;
    j = json_loads(body.data ? body.data : "", 0, &je);
    if (!j || !json_is_object(j)) {
      json_decref(j);
      j = NULL;
      sg_errorf(e, SG_E_INTERNAL, "GET %s: the answer is not a JSON object", url);
    }
  }
  free(url);
  sg_buf_free(&body);
  curl_easy_cleanup(h);
  return j;
}

/* The counters of /healthz we use. */
struct hz {
  int64_t completed, compensated, compensation_failed, commits;
};

static int healthz(const char *base, struct hz *hz, struct sg_error *e) {
  json_t *j = http_get_json(base, "/healthz", e);
  if (!j) return -1;
  hz->completed = json_integer_value(json_object_get(j, "completed"));
  hz->compensated = json_integer_value(json_object_get(j, "compensated"));
  hz->compensation_failed = json_integer_value(json_object_get(j, "compensation_failed"));
  hz->commits = json_integer_value(json_object_get(j, "commits"));
  json_decref(j);
  return 0;
}

static void hreq_submit(CURLM *m, struct hreq *q, const struct bench_opts *o, long idx, const char *url) {
  char input[256];
  saga_input(o, idx, input, sizeof input);
  q->idx = idx;
  q->body.len = 0;
  if (q->body.data) q->body.data[0] = 0;
  q->waiting = 0;
  curl_easy_setopt(q->h, CURLOPT_URL, url);
  curl_easy_setopt(q->h, CURLOPT_COPYPOSTFIELDS, input);
  q->t0 = mono_s();
  curl_multi_add_handle(m, q->h);
}

/* the POST was answered 201 {"id": ...}: wait for that saga on the same handle */
static int hreq_wait(CURLM *m, struct hreq *q, const char *base, struct sg_error *e) {
  json_error_t je;
  json_t *j = json_loads(q->body.data ? q->body.data : "", 0, &je);
  const char *id = json_string_value(json_object_get(j, "id"));
  if (!id || !*id || strlen(id) > 200) {
    sg_errorf(e, SG_E_INTERNAL, "the answer to a start has no id: %.200s", q->body.data ? q->body.data : "");
    json_decref(j);
    return -1;
  }
  free(q->get_url);
  q->get_url = sg_asprintf("%s/v1/sagas/%s?wait=%s", base, id, BENCH_WAIT);
  json_decref(j);
  q->waiting = 1;
  q->body.len = 0;
  if (q->body.data) q->body.data[0] = 0;
  curl_easy_setopt(q->h, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(q->h, CURLOPT_URL, q->get_url);
  curl_multi_add_handle(m, q->h);
  return 0;
}

static int run_server(const struct bench_opts *o) {
  struct sg_error e = {0};
  struct bench_result r = { .mode = "server", .latency_kind = "end_to_end" };
  int rc = 1;
  char *base = sg_strdup(o->server);
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/') base[--bl] = 0;
  /* one POST ?wait= a saga (its start, then its end on the same request), or a POST then GET ?wait= */
  char *url = o->get_wait ? sg_asprintf("%s/v1/sagas/%s", base, BENCH_TYPE)
                          : sg_asprintf("%s/v1/sagas/%s?wait=%s", base, BENCH_TYPE, BENCH_WAIT);
  long nq = o->concurrency < o->sagas ? o->concurrency : o->sagas;
  struct hreq *qs = sg_xcalloc((size_t)nq, sizeof *qs);
  struct curl_slist *hdrs = bench_auth_headers(curl_slist_append(NULL, "Content-Type: application/json"));
  CURLM *m = NULL;
  r.lat = sg_xcalloc((size_t)o->sagas, sizeof *r.lat);
  double *start_lat = sg_xcalloc((size_t)o->sagas, sizeof *start_lat);
  long nstart = 0;
  curl_global_init(CURL_GLOBAL_DEFAULT);

  struct hz before, after;
  if (healthz(base, &before, &e) < 0) { fprintf(stderr, "sagahost bench: is the host running? %s\n", e.msg); goto out; }
  m = curl_multi_init();
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, nq);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, nq);
  for (long i = 0; i < nq; i++) {
    struct hreq *q = &qs[i];
    sg_buf_init(&q->body);
    q->h = curl_easy_init();
    curl_easy_setopt(q->h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(q->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(q->h, CURLOPT_WRITEDATA, &q->body);
    curl_easy_setopt(q->h, CURLOPT_PRIVATE, q);
    curl_easy_setopt(q->h, CURLOPT_TIMEOUT, 60L); /* a GET waits up to BENCH_WAIT */
    /* SIGPIPE is ignored by the whole process (main): without this libcurl sets and restores its
     * handler around every handle's turn in every curl_multi_perform, two sigaction calls each */
    curl_easy_setopt(q->h, CURLOPT_NOSIGNAL, 1L);
    bench_cacert(q->h);
  }
  double t0 = mono_s();
  long submitted = 0, answered = 0, connects = 0;
  double posted = 0;
  for (long i = 0; i < nq; i++) hreq_submit(m, &qs[i], o, ++submitted, url);
  while (answered < o->sagas) {
    int still;
    CURLMcode mc = curl_multi_perform(m, &still);
    if (mc != CURLM_OK) { fprintf(stderr, "sagahost bench: curl: %s\n", curl_multi_strerror(mc)); goto out; }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      char *priv = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
      struct hreq *q = (struct hreq *)priv;
      long code = 0;
      curl_easy_getinfo(q->h, CURLINFO_RESPONSE_CODE, &code);
      CURLcode res = msg->data.result;
      long nconn = 0;
      curl_easy_getinfo(q->h, CURLINFO_NUM_CONNECTS, &nconn);
      connects += nconn;
      curl_multi_remove_handle(m, q->h);
      if (o->get_wait && !q->waiting && res == CURLE_OK && code == 201) {
        start_lat[nstart++] = (mono_s() - q->t0) * 1000.0;
        if (nstart == o->sagas) posted = mono_s() - t0;
        if (hreq_wait(m, q, base, &e) < 0) { fprintf(stderr, "sagahost bench: POST %s: %s\n", url, e.msg); goto out; }
        continue;
      }
      /* the saga, once ended (or still running after BENCH_WAIT): the answer to POST ?wait= or GET ?wait= */
      if (res == CURLE_OK && code == (q->waiting ? 200 : 201)) {
        json_error_t je;
        json_t *j = json_loads(q->body.data ? q->body.data : "", 0, &je);
        const char *st = json_string_value(json_object_get(j, "status"));
        int end = 1;
        if (st && !strcmp(st, "completed")) r.completed++;
        else if (st && !strcmp(st, "compensated")) r.compensated++;
        else if (st && !strcmp(st, "compensation_failed")) r.compensation_failed++;
        else if (st && (!strcmp(st, "resolved") || !strcmp(st, "terminated"))) { /* an operator ended it */ }
        else end = 0;
        json_decref(j);
        if (!end) { /* still running after BENCH_WAIT: ask again */
          if (!st) {
            fprintf(stderr, "sagahost bench: %s %s: no status in %.200s\n", q->waiting ? "GET" : "POST",
                    q->waiting ? q->get_url : url, q->body.data ? q->body.data : "");
            goto out;
          }
          if (!q->waiting) {
            if (hreq_wait(m, q, base, &e) < 0) { fprintf(stderr, "sagahost bench: POST %s: %s\n", url, e.msg); goto out; }
            continue;
          }
          q->body.len = 0;
          curl_multi_add_handle(m, q->h);
          continue;
        }
        r.lat[answered++] = (mono_s() - q->t0) * 1000.0;
        if (submitted < o->sagas) hreq_submit(m, q, o, ++submitted, url);
        continue;
      }
      {
        const char *what = q->waiting ? "GET" : "POST", *where = q->waiting ? q->get_url : url;
        if (res != CURLE_OK) fprintf(stderr, "sagahost bench: %s %s: %s\n", what, where, curl_easy_strerror(res));
        else fprintf(stderr, "sagahost bench: %s %s: HTTP %ld %s\n", what, where, code, q->body.data ? q->body.data : "");
        if (code == 503 && q->body.data && strstr(q->body.data, "connections"))
          fprintf(stderr, "  the host takes at most --http-max-per-ip connections from one address (64 unless set):"
                          " run it with --http-max-per-ip %ld or more, or give bench a lower --concurrency\n",
                  nq + 16);
        if (code == 404 && !q->waiting)
          fprintf(stderr, "  the host has no %s saga; load it with:\n"
                          "    sagahost bench --write-script DIR && sagahost run DIR   (or copy DIR/*.lua into its script directory)\n",
                  BENCH_TYPE);
        goto out;
      }
    }
    if (answered < o->sagas) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  r.secs = mono_s() - t0;
  if (healthz(base, &after, &e) < 0) { fprintf(stderr, "sagahost bench: %s\n", e.msg); goto out; }
  r.nlat = answered;
  r.commits = after.commits - before.commits;
  r.peak_rss_mb = peak_rss_mb(RUSAGE_SELF);
  qsort(start_lat, (size_t)nstart, sizeof *start_lat, cmp_double);
  if (o->get_wait)
    printf("  (all %ld starts answered in %.3f s: %.0f starts/s; POST until the start is durable p50 %.1f ms, p99 %.1f ms;\n"
           "   %ld connection(s) opened for %ld POSTs and their GETs ?wait=%s; commits are the host's /healthz delta)\n",
           o->sagas, posted, posted > 0 ? (double)o->sagas / posted : 0.0, percentile(start_lat, nstart, 0.50),
           percentile(start_lat, nstart, 0.99), connects, o->sagas, BENCH_WAIT);
  else
    printf("  (each saga one POST ?wait=%s, answered with the saga once it ended; %ld connection(s) opened for %ld\n"
           "   POSTs; commits are the host's /healthz delta)\n", BENCH_WAIT, connects, o->sagas);
  report(o, &r);
  rc = 0;
out:
  for (long i = 0; i < nq; i++) {
    if (qs[i].h) {
      if (m) curl_multi_remove_handle(m, qs[i].h);
      curl_easy_cleanup(qs[i].h);
    }
    sg_buf_free(&qs[i].body);
    free(qs[i].get_url);
  }
  if (m) curl_multi_cleanup(m);
  curl_slist_free_all(hdrs);
  curl_global_cleanup();
  free(qs);
  free(r.lat);
  free(start_lat);
  free(url);
  free(base);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */

static int write_script_dir(const char *dir) {
  struct sg_error e = {0};
  if (make_dir(dir, &e) < 0 || write_scripts(dir, 1, 1, &e) < 0) {
    fprintf(stderr, "sagahost bench: %s\n", e.msg);
    return 1;
  }
  printf("wrote %s/bench_order.lua (the %s saga) and %s/bench_participants.lua (its participants)\n"
         "run a host on it, then point the bench at it:\n"
         "  sagahost run --db bench.db --listen 127.0.0.1:7070 %s\n"
         "  sagahost bench --server http://127.0.0.1:7070\n",
         dir, BENCH_TYPE, dir, dir);
  return 0;
}

/* parses a non-negative integer option value; -1 if it is not one */
static long parse_count(const char *v) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (!*v || *end || errno || n < 0) return -1;
  return n;
}

int sg_bench_main(int argc, char **argv) {
  struct bench_opts o = { .sagas = 10000, .concurrency = 64 };
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { bench_usage(stdout); return 0; }
    if (strcmp(a, "--sagas") && strcmp(a, "--concurrency") && strcmp(a, "--fail-every") && strcmp(a, "--db") &&
        strcmp(a, "--amqp") && strcmp(a, "--amqp1") && strcmp(a, "--kafka") && strcmp(a, "--server") && strcmp(a, "--write-script") && strcmp(a, "--otlp") &&
        strcmp(a, "--wait-on")) {
      if (a[0] == '-') return bench_usage_error("unknown option %s for bench", a);
      return bench_usage_error("bench takes no arguments (got '%s')", a);
    }
    if (!v) return bench_usage_error("%s needs a value", a);
    i++;
    if (!strcmp(a, "--sagas") || !strcmp(a, "--concurrency")) {
      long n = parse_count(v);
      if (n < 1) return bench_usage_error("%s needs a positive integer", a);
      if (a[2] == 's') o.sagas = n; else o.concurrency = n;
    } else if (!strcmp(a, "--fail-every")) {
      if ((o.fail_every = parse_count(v)) < 0) return bench_usage_error("--fail-every needs an integer >= 0 (0 = none), got '%s'", v);
    } else if (!strcmp(a, "--db")) o.db = v;
    else if (!strcmp(a, "--otlp")) o.otlp = v;
    else if (!strcmp(a, "--amqp")) o.amqp = v;
    else if (!strcmp(a, "--amqp1")) o.amqp1 = v;
    else if (!strcmp(a, "--kafka")) o.kafka = v;
    else if (!strcmp(a, "--server")) o.server = v;
    else if (!strcmp(a, "--wait-on")) {
      if (strcmp(v, "post") && strcmp(v, "get")) return bench_usage_error("--wait-on is post or get, not '%s'", v);
      o.get_wait = v[0] == 'g';
    } else o.write_script = v;
  }
  if (o.write_script) return write_script_dir(o.write_script);
  if ((o.amqp != NULL) + (o.amqp1 != NULL) + (o.kafka != NULL) + (o.server != NULL) > 1)
    return bench_usage_error("%s", "--amqp, --amqp1, --kafka and --server exclude each other (one transport at a time)");
  if (o.get_wait && !o.server) return bench_usage_error("%s", "--wait-on needs --server");
  if (o.server && o.db) return bench_usage_error("%s", "--db has no meaning with --server (the host has its own database)");
  if (o.sagas > 100000000) return bench_usage_error("%s", "--sagas is limited to 100000000");
  /* one line per saga at info level would measure the terminal; SAGAHOST_LOG_LEVEL still wins */
  if (!getenv("SAGAHOST_LOG_LEVEL") && sg_log_level < SG_LOG_WARN) sg_log_level = SG_LOG_WARN;
  if (o.server) return run_server(&o);
  return run_orchestrator(&o);
}
