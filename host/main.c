/* main: the sagahost command. `run` wires store, script runtime, engine, transport and HTTP API into
 * one libev loop; `check` validates a script directory; the other subcommands are HTTP clients (cli.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "bench.h"
#include "duration.h"
#include "cli.h"
#include "engine.h"
#include "script.h"
#include "store.h"
#include "transport.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: sagahost <command> [options]\n"
          "\n"
          "host commands:\n"
          "  run [--db PATH] [--listen ADDR:PORT] [--amqp URL] [--log-level L] SCRIPT_DIR\n"
          "                         run the host on SCRIPT_DIR (hot-reloaded), SQLite at PATH (default sagahost.db),\n"
          "                         HTTP API on ADDR:PORT (default 127.0.0.1:7070); --amqp amqp://user:pass@host:5672/vhost\n"
          "                         sends commands through RabbitMQ instead of in-process\n"
          "      [--max-payload BYTES] (inputs, payloads, ctx.data; default 1 MiB) [--lua-memory MB] (default 1024)\n"
          "      [--lua-budget N] (VM instructions per step resume, default 100000000) [--host-id NAME] [--demo]\n"
          "      [--lua-step-memory MB] (what one step run may allocate, default 64)\n"
          "      [--breaker-failure-rate R] (default 0.5, 0 = off) [--breaker-min-calls N] (10)\n"
          "      [--breaker-window D] (30s) [--breaker-open D] (5s): per-service circuit breakers\n"
          "  check SCRIPT_DIR       validate every script; prints file:line errors, exit 1 on any\n"
          "  bench [--sagas N] [--concurrency C] [--fail-every K] [--db PATH] [--amqp URL] [--server URL]\n"
          "                         run N 3-step order sagas and print throughput and latency\n"
          "\n");
  sg_cli_usage(f);
  fprintf(f, "\n  --help, --version\n");
}

/* The pieces of a running host, so hooks can reach them. */
struct host {
  struct ev_loop *loop;
  struct sg_store *store;
  struct sg_script *sc;
  struct sg_engine *en;
  struct sg_transport *tr;
  struct sg_api *api;
  ev_signal sigint, sigterm;
  ev_timer demo;        /* --demo: a trickle of sample orders */
  int demo_n;
};

static int hook_on_version(void *ud, const char *hash, const char *file, const char *source, struct sg_error *e) {
  struct host *h = ud;
  return h->en ? sg_engine_def_loaded(h->en, hash, file, source, e) : 0;
}

static char *hook_fetch_source(void *ud, const char *hash, char **file) {
  struct host *h = ud;
  char *src = NULL;
  struct sg_error e = {0};
  if (h->store->ops->def_get(h->store, hash, file, &src, &e) < 0) sg_err("definition %s: %s", hash, e.msg);
  return src;
}

static void hook_on_services(void *ud, const char *const *services, int n) {
  struct host *h = ud;
  if (!h->tr) return;
  for (int i = 0; i < n; i++) {
    struct sg_error e = {0};
    if (h->tr->ops->subscribe(h->tr, services[i], &e) < 0) sg_err("subscribe %s: %s", services[i], e.msg);
  }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  sg_info("signal %d: stopping", w->signum);
  ev_break(loop, EVBREAK_ALL);
}

static void on_demo(struct ev_loop *loop, ev_timer *w, int revents) {
  struct host *h = w->data;
  static const char *skus[] = {"book", "lamp", "mug", "pen"};
  int n = ++h->demo_n;
  char input[256];
  snprintf(input, sizeof input, "{\"order_id\":\"demo-%d\",\"sku\":\"%s\",\"qty\":%d,\"amount\":%d,\"card\":\"%s\"}", n,
           skus[n % 4], 1 + n % 3, 10 + (n * 7) % 90, n % 4 == 0 ? "declined" : "ok");
  char id[40];
  int existed;
  struct sg_error e = {0};
  if (sg_engine_start(h->en, "OrderProcessing", input, NULL, id, &existed, &e) < 0)
    sg_warn("demo: %s", e.msg);
  else
    sg_info("demo: started OrderProcessing %s with %s", id, input);
}

struct run_opts {
  const char *db, *listen, *amqp, *dir, *host_id;
  int demo;
  long max_payload;
  long lua_memory_mb;   /* memory ceiling of the Lua state */
  long lua_budget;      /* VM instructions per resume */
  long lua_step_memory_mb; /* memory one resume may allocate */
  double breaker_rate;  /* circuit breakers: failure share that opens one (0 = off) */
  int breaker_min_calls;
  int64_t breaker_window_ms, breaker_open_ms;
};

static int cmd_run(const struct run_opts *o) {
  struct host h = {0};
  struct sg_error e = {0};
  int rc = 1;
  h.loop = ev_default_loop(EVFLAG_AUTO);
  h.store = sg_store_sqlite_open(o->db, &e);
  if (!h.store) { fprintf(stderr, "sagahost: cannot open the store %s: %s\n", o->db, e.msg); return 1; }
  struct sg_script_config scfg = { o->dir, (size_t)o->lua_memory_mb << 20, o->lua_budget, (size_t)o->lua_step_memory_mb << 20 };
  struct sg_script_hooks hooks = { &h, hook_on_version, hook_fetch_source, hook_on_services };
  h.sc = sg_script_new(&scfg, &hooks, &e);
  if (!h.sc) { fprintf(stderr, "sagahost: %s\n", e.msg); goto out; }
  char host_id[64];
  if (o->host_id) snprintf(host_id, sizeof host_id, "%s", o->host_id);
  else {
    /* stable across restarts (replies wait in a durable queue named after it) and distinct for two
     * hosts on one machine: the host name plus a hash of the database's absolute path */
    char hn[40] = "host", dbabs[4096], hash[65];
    gethostname(hn, sizeof hn - 1);
    if (!realpath(o->db, dbabs)) snprintf(dbabs, sizeof dbabs, "%s", o->db);
    sg_sha256_hex(dbabs, strlen(dbabs), hash);
    snprintf(host_id, sizeof host_id, "%.30s-%.8s", hn, hash);
  }
  struct sg_engine_config ecfg = { host_id, o->max_payload, o->breaker_rate, o->breaker_min_calls,
                                   o->breaker_window_ms, o->breaker_open_ms };
  struct sg_runner runner = sg_script_runner(h.sc);
  h.en = sg_engine_new(h.loop, h.store, &runner, &ecfg);
  struct sg_transport_events tev = sg_engine_transport_events(h.en);
  if (o->amqp) {
    h.tr = sg_transport_amqp_new(h.loop, o->amqp, host_id, &tev, &e);
    if (!h.tr) { fprintf(stderr, "sagahost: --amqp %s: %s\n", o->amqp, e.msg); goto out; }
  } else {
    h.tr = sg_transport_local_new(h.loop, &tev);
  }
  sg_engine_set_transport(h.en, h.tr);
  int errors = sg_script_scan(h.sc);
  if (errors) sg_warn("%d script file(s) failed to load; see above (the host keeps running and reloads them when they change)", errors);
  if (sg_engine_recover(h.en, &e) < 0) { fprintf(stderr, "sagahost: recovery failed: %s\n", e.msg); goto out; }
  sg_script_watch(h.sc, h.loop, 0.25);
  h.api = sg_api_start(h.loop, o->listen, 1 << 20, h.en, h.store, h.sc, &e);
  if (!h.api) { fprintf(stderr, "sagahost: cannot listen on %s: %s\n", o->listen, e.msg); goto out; }
  char shown[300];
  snprintf(shown, sizeof shown, "%s", o->listen);
  char *colon = strrchr(shown, ':');
  if (colon) snprintf(colon + 1, sizeof shown - (size_t)(colon + 1 - shown), "%d", sg_api_port(h.api));
  sg_info("sagahost %s listening on http://%s (store %s, transport %s, scripts %s)", SG_VERSION, shown, o->db,
          h.tr->ops->name, o->dir);
  ev_signal_init(&h.sigint, on_signal, SIGINT);
  ev_signal_init(&h.sigterm, on_signal, SIGTERM);
  ev_signal_start(h.loop, &h.sigint);
  ev_signal_start(h.loop, &h.sigterm);
  if (o->demo) {
    ev_timer_init(&h.demo, on_demo, 1., 3.);
    h.demo.data = &h;
    ev_timer_start(h.loop, &h.demo);
    sg_info("demo: starting a sample order every 3 s (every 4th with a declined card); try:\n"
            "  sagahost list\n  sagahost start OrderProcessing --input '{\"order_id\":\"o-1\",\"sku\":\"book\",\"qty\":1,\"amount\":42,\"card\":\"ok\"}' --wait");
  }
  ev_run(h.loop, 0);
  rc = 0;
out:
  if (h.demo.data) ev_timer_stop(h.loop, &h.demo);
  ev_signal_stop(h.loop, &h.sigint);
  ev_signal_stop(h.loop, &h.sigterm);
  /* commit first (it answers the requests waiting for that commit), then close the API */
  if (h.en) sg_engine_stop(h.en);
  sg_api_stop(h.api);
  if (h.sc) sg_script_unwatch(h.sc);
  if (h.tr) h.tr->ops->close(h.tr);
  sg_engine_free(h.en);
  sg_script_free(h.sc);
  h.store->ops->close(h.store);
  ev_loop_destroy(h.loop);
  return rc;
}

static int cmd_check(const char *dir) {
  struct sg_error e = {0};
  struct sg_script_config scfg = { dir, (size_t)512 << 20, 100000000, (size_t)64 << 20 };
  struct sg_script *sc = sg_script_new(&scfg, NULL, &e);
  if (!sc) { fprintf(stderr, "sagahost: %s\n", e.msg); return 1; }
  int prev = sg_log_level;
  sg_log_level = SG_LOG_ERROR + 1; /* check prints the errors itself */
  int errors = sg_script_scan(sc);
  sg_log_level = prev;
  sg_script_print_errors(sc, stderr);
  if (!errors) printf("%s: %d saga type(s) OK\n", dir, sg_script_type_count(sc));
  sg_script_free(sc);
  return errors ? 1 : 0;
}

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "sagahost: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n\n");
  usage(stderr);
  return 2;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) { usage(stderr); return 2; }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
  if (!strcmp(cmd, "--version")) { printf("sagahost %s\n", SG_VERSION); return 0; }
  const char *env_level = getenv("SAGAHOST_LOG_LEVEL");
  if (env_level && sg_log_parse_level(env_level) >= 0) sg_log_level = sg_log_parse_level(env_level);
  if (!strcmp(cmd, "run")) {
    struct run_opts o = { "sagahost.db", "127.0.0.1:7070", NULL, NULL, NULL, 0, 1 << 20, 1024, 100000000, 64,
                         0.5, 10, 30000, 5000 };
    for (int i = 2; i < argc; i++) {
      const char *a = argv[i];
      const char *v = i + 1 < argc ? argv[i + 1] : NULL;
      if (!strcmp(a, "--help")) { usage(stdout); return 0; }
      else if (!strcmp(a, "--demo")) o.demo = 1;
      else if (!strcmp(a, "--db") || !strcmp(a, "--listen") || !strcmp(a, "--amqp") || !strcmp(a, "--log-level") ||
               !strcmp(a, "--host-id") || !strcmp(a, "--max-payload") || !strcmp(a, "--lua-memory") ||
               !strcmp(a, "--lua-budget") || !strcmp(a, "--lua-step-memory") || !strcmp(a, "--breaker-failure-rate") || !strcmp(a, "--breaker-min-calls") ||
               !strcmp(a, "--breaker-window") || !strcmp(a, "--breaker-open")) {
        if (!v) return usage_error("%s needs a value", a);
        i++;
        if (!strcmp(a, "--db")) o.db = v;
        else if (!strcmp(a, "--listen")) o.listen = v;
        else if (!strcmp(a, "--amqp")) o.amqp = v;
        else if (!strcmp(a, "--host-id")) o.host_id = v;
        else if (!strcmp(a, "--breaker-failure-rate")) {
          char *end;
          o.breaker_rate = strtod(v, &end);
          if (*end || o.breaker_rate < 0 || o.breaker_rate > 1) return usage_error("--breaker-failure-rate must be from 0 (off) to 1, got %s", v);
        } else if (!strcmp(a, "--breaker-min-calls")) {
          char *end;
          o.breaker_min_calls = (int)strtol(v, &end, 10);
          if (*end || o.breaker_min_calls < 1) return usage_error("--breaker-min-calls must be a positive integer, got %s", v);
        } else if (!strcmp(a, "--breaker-window") || !strcmp(a, "--breaker-open")) {
          struct sg_error de = {0};
          int64_t ms;
          if (sg_duration_parse(v, &ms, &de) < 0) return usage_error("%s", de.msg);
          if (a[10] == 'w') o.breaker_window_ms = ms; else o.breaker_open_ms = ms;
        } else if (!strcmp(a, "--lua-memory") || !strcmp(a, "--lua-budget") || !strcmp(a, "--lua-step-memory")) {
          char *end;
          long n = strtol(v, &end, 10);
          if (*end || n < 1) return usage_error("%s needs a positive integer", a);
          if (!strcmp(a, "--lua-memory")) o.lua_memory_mb = n;
          else if (!strcmp(a, "--lua-step-memory")) o.lua_step_memory_mb = n;
          else o.lua_budget = n;
        } else if (!strcmp(a, "--max-payload")) {
          char *end;
          o.max_payload = strtol(v, &end, 10);
          if (*end || o.max_payload < 1024) return usage_error("--max-payload must be a number of bytes >= 1024, got %s", v);
        } else {
          int l = sg_log_parse_level(v);
          if (l < 0) return usage_error("unknown log level '%s' (debug, info, warn, error)", v);
          sg_log_level = l;
        }
      } else if (a[0] == '-') return usage_error("unknown option %s for run", a);
      else if (o.dir) return usage_error("run takes one SCRIPT_DIR (got a second: %s)", a);
      else o.dir = a;
    }
    if (!o.dir) return usage_error("%s", "run needs a SCRIPT_DIR");
    return cmd_run(&o);
  }
  if (!strcmp(cmd, "bench")) return sg_bench_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "check")) {
    if (argc != 3 || argv[2][0] == '-') {
      if (argc == 3 && !strcmp(argv[2], "--help")) { usage(stdout); return 0; }
      return usage_error("%s", "usage: sagahost check SCRIPT_DIR");
    }
    return cmd_check(argv[2]);
  }
  if (!strcmp(cmd, "start") || !strcmp(cmd, "show") || !strcmp(cmd, "list") || !strcmp(cmd, "compensate") ||
      !strcmp(cmd, "retry") || !strcmp(cmd, "resolve") || !strcmp(cmd, "plan"))
    return sg_cli_client(argc - 1, argv + 1);
  return usage_error("unknown command '%s'", cmd);
}
