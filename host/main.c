/* main: the sagahost command. `run` wires store, script runtime, engine, transport and HTTP API into
 * one libev loop; `check` validates a script directory; the other subcommands are HTTP clients (cli.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api.h"
#include "grpc.h"
#include "host.h"
#include "bench.h"
#include "duration.h"
#include "cli.h"
#include "devtools.h"
#include "engine.h"
#include "script.h"
#include "store.h"
#include "transport.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: sagahost <command> [options]\n"
          "\n"
          "host commands:\n"
          "  run [--db PATH|URL] [--listen ADDR:PORT] [--amqp URL | --amqp1 URL | --kafka BROKERS] [--log-level L] SCRIPT_DIR\n"
          "                         run the host on SCRIPT_DIR (hot-reloaded), SQLite at PATH (default sagahost.db)\n"
          "                         or PostgreSQL at postgres://user:pass@host:port/db (several hosts may share one),\n"
          "                         HTTP API on ADDR:PORT (default 127.0.0.1:7070); --amqp amqp://user:pass@host:5672/vhost\n"
          "                         sends commands through RabbitMQ instead of in-process; or --amqp1 amqps://user:pass@host\n"
          "                         (AMQP 1.0: Azure Service Bus, RabbitMQ's amqp1_0 plugin); or --kafka HOST:PORT[,...]\n"
          "                         through Kafka (docs/protocol.md; one transport at a time: the three exclude each other)\n"
          "      [--otlp URL] (OpenTelemetry: spans to URL/v1/traces with OTLP/HTTP JSON; default off, or\n"
          "                   $OTEL_EXPORTER_OTLP_ENDPOINT)\n"
          "      [--max-payload BYTES] (inputs, payloads, ctx.data; default 1 MiB) [--lua-memory MB] (default 1024)\n"
          "      [--lua-budget N] (VM instructions per step attempt or handler call, default 100000000)\n"
          "      [--lua-step-cpu D] (time one step attempt or handler call may run Lua, default 1s)\n"
          "      [--lua-step-memory MB] (what one step attempt may allocate, default 64) [--demo]\n"
          "      [--host-id NAME] (names its reply queue and, on PostgreSQL, its claim on its sagas: unique per host;\n"
          "      default: machine name + a hash of --db) [--lease D] (PostgreSQL, 10s: a dead host's sagas are taken\n"
          "      over this long after its last renewal)\n"
          "      [--breaker-failure-rate R] (default 0.5, 0 = off) [--breaker-min-calls N] (10)\n"
          "      [--breaker-window D] (30s) [--breaker-open D] (5s): per-service circuit breakers\n"
          "      [--inbox-retention D] (7d): how long handled message ids are remembered (0 = forever)\n"
          "      [--retention D] (0 = forever): how long finished sagas are kept (compensation_failed ones stay)\n"
          "      [--event-retention D] (7d): how long lifecycle events (GET /v1/events) are kept (0 = forever)\n"
          "      [--auth FILE] (tokens with roles, `name role token` per line; re-read on SIGHUP) [--auth-metrics]\n"
          "      [--tls-cert FILE --tls-key FILE] (serve HTTPS) [--insecure] (allow a non-loopback --listen without --auth, --grpc without --auth and TLS)\n"
          "      [--grpc ADDR:PORT] (serve the gRPC service sagahost.v1.Sagas there; over TLS with --tls-cert; docs/grpc.md)\n"
          "      [--grpc-idle-timeout D] (60s): a gRPC connection with no open call is closed after D\n"
          "      [--http-max-connections N] (1000) [--http-max-per-ip N] (64): over them, 503 with Retry-After\n"
          "      [--http-request-timeout D] (10s): a request must be fully received within D of its start\n"
          "  check SCRIPT_DIR       validate every script; prints file:line errors (exit 1 on any) and warnings\n"
          "                         (exit 2 when SCRIPT_DIR is missing or unreadable)\n"
          "  bench [--sagas N] [--concurrency C] [--fail-every K] [--db PATH] [--amqp URL | --amqp1 URL | --kafka BROKERS |\n"
          "         --server URL]\n"
          "                         run N 3-step order sagas and print throughput and latency\n"
          "\n");
  sg_dev_usage(f);
  fprintf(f, "\n");
  sg_cli_usage(f);
  fprintf(f, "\n  --help, --version\n");
}

/* A running `sagahost run`. */
struct run {
  struct sg_host host;  /* store, scripts, engine, transport */
  struct sg_api *api;   /* the HTTP API */
  struct sg_grpc *grpc; /* --grpc: the gRPC service, NULL = off */
  struct sg_auth *auth; /* --auth tokens (owned; swapped on SIGHUP), NULL = none */
  const char *auth_file; /* where they come from, for the re-read */
  ev_signal sighup;     /* re-reads --auth */
  ev_signal sigint, sigterm;
  ev_timer demo;        /* --demo: a trickle of sample orders */
  int demo_n;           /* sample orders started */
};

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  sg_info("signal %d: stopping", w->signum);
  ev_break(loop, EVBREAK_ALL);
}

/* SIGHUP: build the new table, and swap only if the whole file is good (a typo keeps the old one) */
static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents) {
  struct run *r = w->data;
  struct sg_error e = {0};
  struct sg_auth *a = sg_auth_load(r->auth_file, &e);
  if (!a) { sg_err("SIGHUP: keeping the previous tokens: %s", e.msg); return; }
  sg_api_set_auth(r->api, a);
  if (r->grpc) sg_grpc_set_auth(r->grpc, a);
  sg_auth_free(r->auth);
  r->auth = a;
  sg_info("SIGHUP: re-read %s: %d token(s)", r->auth_file, sg_auth_count(a));
}

static void on_demo(struct ev_loop *loop, ev_timer *w, int revents) {
  struct run *h = w->data;
  static const char *skus[] = {"book", "lamp", "mug", "pen"};
  int n = ++h->demo_n;
  char input[256];
  snprintf(input, sizeof input, "{\"order_id\":\"demo-%d\",\"sku\":\"%s\",\"qty\":%d,\"amount\":%d,\"card\":\"%s\"}", n,
           skus[n % 4], 1 + n % 3, 10 + (n * 7) % 90, n % 4 == 0 ? "declined" : "ok");
  char id[40];
  int existed;
  struct sg_error e = {0};
  if (sg_engine_start(h->host.en, "OrderProcessing", input, NULL, id, &existed, &e) < 0)
    sg_warn("demo: %s", e.msg);
  else
    sg_info("demo: started OrderProcessing %s with %s", id, input);
}

struct run_opts {
  struct sg_host_config cfg; /* store, scripts, transport, limits */
  const char *listen;        /* HTTP API address */
  const char *grpc;          /* --grpc: the gRPC service's address, NULL = off */
  const char *auth_file;     /* --auth: tokens with roles, NULL = no auth */
  int auth_metrics;          /* --auth-metrics: /metrics needs role read */
  int insecure;              /* --insecure: a non-loopback listen without --auth is allowed */
  const char *tls_cert;      /* --tls-cert: PEM file, with tls_key: serve HTTPS */
  const char *tls_key;       /* --tls-key */
  double grpc_idle_timeout;  /* --grpc-idle-timeout in seconds (0 = the default, 60) */
  int demo;                  /* start sample orders */
  const char *argv0;         /* how this binary was invoked (for the demo's examples) */
  struct sg_http_limits http; /* --http-max-connections, --http-max-per-ip, --http-request-timeout */
};

/* Each HTTP connection is a descriptor: raise the soft limit to the hard one so the connection cap,
 * not EMFILE, is what refuses clients; warn when even that leaves too little room. */
static void raise_fd_limit(unsigned max_connections) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  /* the store, scripts, transport and logs need descriptors of their own */
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)max_connections + SG_HTTP_EXTRA_FDS + 64 > rl.rlim_cur)
    sg_warn("--http-max-connections %u is close to the open-file limit (%llu): raise `ulimit -n` or lower it",
            max_connections, (unsigned long long)rl.rlim_cur);
}

static int cmd_run(const struct run_opts *o) {
  struct run r = {0};
  struct sg_error e = {0};
  /* a wrong SCRIPT_DIR is the operator's mistake, like a usage error: exit 2 and say which */
  if (sg_dir_check(o->cfg.dir, "script directory", &e) < 0) {
    fprintf(stderr, "sagahost: cannot start the host: %s\n", e.msg);
    return 2;
  }
  /* a bad --auth, TLS or listen combination is the operator's mistake too: refused before anything opens */
  if (!o->auth_file && !o->insecure && !sg_http_listen_is_loopback(o->listen)) {
    fprintf(stderr,
            "sagahost: refusing to listen on %s without --auth: anyone who can reach it could start and "
            "compensate sagas. Give --auth FILE (tokens with roles, see docs/operations.md), listen on a "
            "loopback address (127.0.0.1), or pass --insecure if a proxy in front already authenticates\n",
            o->listen);
    return 2;
  }
  /* gRPC off loopback: HTTP's rule (--auth, or --insecure), and TLS too, since without it a bearer token
   * on it can be read by anyone on the path */
  if (o->grpc && !o->insecure && !sg_http_listen_is_loopback(o->grpc) && !(o->auth_file && o->tls_cert)) {
    fprintf(stderr,
            "sagahost: refusing --grpc %s: %s, so anyone who can reach it could %s. Give --auth FILE and "
            "--tls-cert/--tls-key (gRPC over TLS with tokens), listen on a loopback address (127.0.0.1), or pass "
            "--insecure if the network is private (docs/grpc.md)\n", o->grpc,
            !o->auth_file ? "it has no --auth" : "it is plaintext (no --tls-cert)",
            !o->auth_file ? "start and compensate sagas" : "read tokens and sagas on the network");
    return 2;
  }
  if (!o->tls_cert != !o->tls_key) {
    fprintf(stderr, "sagahost: --tls-cert and --tls-key go together (HTTPS needs both)\n");
    return 2;
  }
  if (o->auth_file && !(r.auth = sg_auth_load(o->auth_file, &e))) {
    fprintf(stderr, "sagahost: cannot start the host: %s\n", e.msg);
    return 2;
  }
  r.auth_file = o->auth_file;
  struct sg_http_tls tls = {0};
  char *pem_cert = NULL, *pem_key = NULL;
  if (o->tls_cert) {
    if (!(pem_cert = sg_read_file(o->tls_cert, NULL, &e)) || !(pem_key = sg_read_file(o->tls_key, NULL, &e))) {
      fprintf(stderr, "sagahost: cannot start the host: TLS %s\n", e.msg);
      free(pem_cert);
      sg_auth_free(r.auth);
      return 2;
    }
    tls.cert_pem = pem_cert;
    tls.key_pem = pem_key;
  }
  raise_fd_limit(o->http.max_connections);
  sg_http_set_limits(&o->http);
  struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
  char db_shown[512]; /* a PostgreSQL URL without its password */
  if (sg_store_is_pg_url(o->cfg.db)) sg_store_pg_redact(o->cfg.db, db_shown, sizeof db_shown);
  else snprintf(db_shown, sizeof db_shown, "%s", o->cfg.db);
  if (sg_host_open(&r.host, loop, &o->cfg, &e) < 0) {
    char amqp1_shown[1024] = ""; /* a Service Bus key must not reach the logs */
    if (o->cfg.amqp1) sg_amqp1_redact(o->cfg.amqp1, amqp1_shown, sizeof amqp1_shown);
    fprintf(stderr, "sagahost: cannot start the host (store %s, scripts %s%s%s): %s\n", db_shown, o->cfg.dir,
            o->cfg.amqp ? ", --amqp " : o->cfg.amqp1 ? ", --amqp1 " : o->cfg.kafka ? ", --kafka " : "",
            o->cfg.amqp ? o->cfg.amqp : o->cfg.amqp1 ? amqp1_shown : o->cfg.kafka ? o->cfg.kafka : "", e.msg);
    ev_loop_destroy(loop);
    sg_auth_free(r.auth);
    free(pem_cert);
    free(pem_key);
    return 1;
  }
  if (r.host.load_errors)
    sg_warn("%d script file(s) failed to load; see above (the host keeps running and reloads them when they change)",
            r.host.load_errors);
  sg_script_watch(r.host.sc, loop, 1.0);
  int rc = 1;
  struct sg_api_config acfg = { o->listen, 1 << 20, r.auth, o->auth_metrics, o->tls_cert ? &tls : NULL };
  r.api = sg_api_start(loop, &acfg, r.host.en, r.host.store, r.host.sc, &e);
  /* the server has its own copies now */
  if (pem_key) explicit_bzero(pem_key, strlen(pem_key));
  free(pem_key);
  free(pem_cert);
  if (!r.api) { fprintf(stderr, "sagahost: cannot listen on %s: %s\n", o->listen, e.msg); goto out; }
  sg_api_set_schedules(r.api, r.host.sched);
  const char *scheme = o->tls_cert ? "https" : "http";
  char shown[300];
  snprintf(shown, sizeof shown, "%s", o->listen);
  char *colon = strrchr(shown, ':');
  if (colon) snprintf(colon + 1, sizeof shown - (size_t)(colon + 1 - shown), "%d", sg_api_port(r.api));
  sg_info("sagahost %s listening on %s://%s (store %s, transport %s, scripts %s)", SG_VERSION, scheme, shown, db_shown,
          r.host.tr->ops->name, o->cfg.dir);
  if (r.auth)
    sg_info("auth: %d token(s) from %s; /healthz%s open", sg_auth_count(r.auth), r.auth_file,
            o->auth_metrics ? " is" : " and /metrics are");
  else if (!sg_http_listen_is_loopback(o->listen))
    sg_warn("--insecure: the API on %s has no authentication", shown);
  if (o->grpc) {
    struct sg_grpc_config gcfg = { o->grpc, 1 << 20, r.auth, o->tls_cert, o->tls_key, o->http.max_connections,
                                   o->http.max_per_ip, o->http.request_timeout, o->grpc_idle_timeout };
    r.grpc = sg_grpc_start(loop, &gcfg, r.host.en, sg_api_events(r.api), &e);
    if (!r.grpc) { fprintf(stderr, "sagahost: --grpc: %s\n", e.msg); goto out; }
    snprintf(shown, sizeof shown, "%s", o->grpc);
    colon = strrchr(shown, ':');
    if (colon) snprintf(colon + 1, sizeof shown - (size_t)(colon + 1 - shown), "%d", sg_grpc_port(r.grpc));
    sg_info("gRPC (sagahost.v1.Sagas, %s) listening on %s%s", o->tls_cert ? "HTTP/2 over TLS" : "plaintext HTTP/2", shown,
            r.auth ? ", with --auth" : "");
  }
  if (r.auth) {
    ev_signal_init(&r.sighup, on_sighup, SIGHUP);
    r.sighup.data = &r;
    ev_signal_start(loop, &r.sighup);
  }
  ev_signal_init(&r.sigint, on_signal, SIGINT);
  ev_signal_init(&r.sigterm, on_signal, SIGTERM);
  ev_signal_start(loop, &r.sigint);
  ev_signal_start(loop, &r.sigterm);
  if (o->demo) {
    ev_timer_init(&r.demo, on_demo, 1., 3.);
    r.demo.data = &r;
    ev_timer_start(loop, &r.demo);
    sg_info("demo: starting a sample order every 3 s (every 4th with a declined card); in another terminal try:\n"
            "  %s list --server %s://%s\n"
            "  %s start OrderProcessing --server %s://%s --wait --input '{\"order_id\":\"o-1\",\"sku\":\"book\",\"qty\":1,\"amount\":42,\"card\":\"ok\"}'\n"
            "  %s show <id> --server %s://%s",
            o->argv0, scheme, shown, o->argv0, scheme, shown, o->argv0, scheme, shown);
  }
  ev_run(loop, 0);
  rc = r.host.en && !sg_engine_broken(r.host.en) ? 0 : 1;
out:
  if (r.demo.data) ev_timer_stop(loop, &r.demo);
  if (r.sighup.data) ev_signal_stop(loop, &r.sighup);
  ev_signal_stop(loop, &r.sigint);
  ev_signal_stop(loop, &r.sigterm);
  /* commit first (it answers the requests waiting for that commit), then close the API */
  sg_engine_stop(r.host.en);
  sg_grpc_stop(r.grpc); /* before the API: its calls follow the API's events hub */
  sg_api_stop(r.api);
  sg_host_close(&r.host);
  sg_auth_free(r.auth);
  ev_loop_destroy(loop);
  return rc;
}

static int cmd_check(const char *dir) {
  struct sg_error e = {0};
  /* checking nothing is not a pass: a wrong path in a deploy pipeline must fail it */
  if (sg_dir_check(dir, "script directory", &e) < 0) { fprintf(stderr, "sagahost: %s\n", e.msg); return 2; }
  struct sg_script_config scfg = { dir, (size_t)512 << 20, 100000000, (size_t)64 << 20, 1000 };
  struct sg_script *sc = sg_script_new(&scfg, NULL, &e);
  if (!sc) { fprintf(stderr, "sagahost: %s\n", e.msg); return 1; }
  int prev = sg_log_level;
  sg_log_level = SG_LOG_ERROR + 1; /* check prints the errors itself */
  int errors = sg_script_scan(sc);
  sg_log_level = prev;
  sg_script_print_errors(sc, stderr);
  int warnings = sg_script_print_warnings(sc, stderr);
  if (!errors) printf("%s: %d saga type(s) OK%s\n", dir, sg_script_type_count(sc), warnings ? " (with warnings)" : "");
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
    struct run_opts o = {0};
    sg_host_config_defaults(&o.cfg);
    o.listen = "127.0.0.1:7070";
    o.argv0 = argv[0];
    o.http = (struct sg_http_limits)SG_HTTP_LIMITS_DEFAULT;
    for (int i = 2; i < argc; i++) {
      const char *a = argv[i];
      const char *v = i + 1 < argc ? argv[i + 1] : NULL;
      if (!strcmp(a, "--help")) { usage(stdout); return 0; }
      if (!strcmp(a, "--demo")) { o.demo = 1; continue; }
      if (!strcmp(a, "--auth-metrics")) { o.auth_metrics = 1; continue; }
      if (!strcmp(a, "--insecure")) { o.insecure = 1; continue; }
      if (a[0] != '-') {
        if (o.cfg.dir) return usage_error("run takes one SCRIPT_DIR (got a second: %s)", a);
        o.cfg.dir = a;
        continue;
      }
      if (!v) return usage_error("%s needs a value (or is unknown: see --help)", a);
      i++;
      char *end = NULL;
      if (!strcmp(a, "--db")) o.cfg.db = v;
      else if (!strcmp(a, "--listen")) o.listen = v;
      else if (!strcmp(a, "--grpc")) o.grpc = v;
      else if (!strcmp(a, "--auth")) o.auth_file = v;
      else if (!strcmp(a, "--tls-cert")) o.tls_cert = v;
      else if (!strcmp(a, "--tls-key")) o.tls_key = v;
      else if (!strcmp(a, "--amqp")) o.cfg.amqp = v;
      else if (!strcmp(a, "--amqp1")) o.cfg.amqp1 = v;
      else if (!strcmp(a, "--kafka")) o.cfg.kafka = v;
      else if (!strcmp(a, "--otlp")) o.cfg.otlp = v;
      else if (!strcmp(a, "--host-id")) o.cfg.host_id = v;
      else if (!strcmp(a, "--log-level")) {
        int l = sg_log_parse_level(v);
        if (l < 0) return usage_error("unknown log level '%s' (debug, info, warn, error)", v);
        sg_log_level = l;
      } else if (!strcmp(a, "--max-payload")) {
        o.cfg.engine.max_payload = strtoll(v, &end, 10);
        if (*end || o.cfg.engine.max_payload < 1024) return usage_error("--max-payload must be a number of bytes >= 1024, got %s", v);
      } else if (!strcmp(a, "--lua-memory") || !strcmp(a, "--lua-step-memory") || !strcmp(a, "--lua-budget")) {
        long n = strtol(v, &end, 10);
        if (*end || n < 1) return usage_error("%s needs a positive integer", a);
        if (!strcmp(a, "--lua-memory")) o.cfg.script.mem_limit = (size_t)n << 20;
        else if (!strcmp(a, "--lua-step-memory")) o.cfg.script.run_mem_limit = (size_t)n << 20;
        else o.cfg.script.instr_budget = n;
      } else if (!strcmp(a, "--breaker-failure-rate")) {
        o.cfg.engine.breaker_failure_rate = strtod(v, &end);
        if (*end || o.cfg.engine.breaker_failure_rate < 0 || o.cfg.engine.breaker_failure_rate > 1)
          return usage_error("--breaker-failure-rate must be from 0 (off) to 1, got %s", v);
      } else if (!strcmp(a, "--breaker-min-calls")) {
        o.cfg.engine.breaker_min_calls = (int)strtol(v, &end, 10);
        if (*end || o.cfg.engine.breaker_min_calls < 1) return usage_error("--breaker-min-calls must be a positive integer, got %s", v);
      } else if (!strcmp(a, "--inbox-retention") || !strcmp(a, "--retention") || !strcmp(a, "--event-retention")) {
        struct sg_error de = {0};
        int64_t *to = !strcmp(a, "--retention") ? &o.cfg.engine.saga_retention_ms
                      : !strcmp(a, "--event-retention") ? &o.cfg.engine.event_retention_ms
                                                        : &o.cfg.engine.inbox_retention_ms;
        if (sg_duration_parse(v, to, &de) < 0) return usage_error("%s", de.msg);
      } else if (!strcmp(a, "--lease")) {
        struct sg_error de = {0};
        if (sg_duration_parse(v, &o.cfg.engine.lease_ms, &de) < 0) return usage_error("--lease: %s", de.msg);
        if (o.cfg.engine.lease_ms < 300) return usage_error("--lease must be at least 300ms, got %s", v);
      } else if (!strcmp(a, "--lua-step-cpu")) {
        struct sg_error de = {0};
        if (sg_duration_parse(v, &o.cfg.script.cpu_limit_ms, &de) < 0) return usage_error("--lua-step-cpu: %s", de.msg);
      } else if (!strcmp(a, "--breaker-window") || !strcmp(a, "--breaker-open")) {
        struct sg_error de = {0};
        int64_t ms;
        if (sg_duration_parse(v, &ms, &de) < 0) return usage_error("%s", de.msg);
        if (!strcmp(a, "--breaker-window")) o.cfg.engine.breaker_window_ms = ms;
        else o.cfg.engine.breaker_open_ms = ms;
      } else if (!strcmp(a, "--http-max-connections") || !strcmp(a, "--http-max-per-ip")) {
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 1000000) return usage_error("%s needs a positive integer", a);
        if (!strcmp(a, "--http-max-connections")) o.http.max_connections = (unsigned)n;
        else o.http.max_per_ip = (unsigned)n;
      } else if (!strcmp(a, "--http-request-timeout")) {
        struct sg_error de = {0};
        int64_t ms;
        if (sg_duration_parse(v, &ms, &de) < 0) return usage_error("--http-request-timeout: %s", de.msg);
        if (ms <= 0) return usage_error("--http-request-timeout must be positive, got %s", v);
        o.http.request_timeout = (double)ms / 1000.0;
      } else if (!strcmp(a, "--grpc-idle-timeout")) {
        struct sg_error de = {0};
        int64_t ms;
        if (sg_duration_parse(v, &ms, &de) < 0) return usage_error("--grpc-idle-timeout: %s", de.msg);
        if (ms <= 0) return usage_error("--grpc-idle-timeout must be positive, got %s", v);
        o.grpc_idle_timeout = (double)ms / 1000.0;
      } else {
        return usage_error("unknown option %s for run (see --help)", a);
      }
    }
    if (!o.cfg.dir) return usage_error("%s", "run needs a SCRIPT_DIR");
    if ((o.cfg.amqp != NULL) + (o.cfg.amqp1 != NULL) + (o.cfg.kafka != NULL) > 1)
      return usage_error("%s", "--amqp, --amqp1 and --kafka exclude each other: a host uses one transport at a time");
    if (o.auth_metrics && !o.auth_file) return usage_error("%s", "--auth-metrics needs --auth FILE");
    return cmd_run(&o);
  }
  if (!strcmp(cmd, "bench")) return sg_bench_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "test")) return sg_dev_test(argc - 1, argv + 1);
  if (!strcmp(cmd, "new")) return sg_dev_new(argc - 1, argv + 1);
  if (!strcmp(cmd, "types")) return sg_dev_types(argc - 1, argv + 1);
  if (!strcmp(cmd, "check")) {
    if (argc != 3 || argv[2][0] == '-') {
      if (argc == 3 && !strcmp(argv[2], "--help")) { usage(stdout); return 0; }
      return usage_error("%s", "usage: sagahost check SCRIPT_DIR");
    }
    return cmd_check(argv[2]);
  }
  if (!strcmp(cmd, "start") || !strcmp(cmd, "show") || !strcmp(cmd, "list") || !strcmp(cmd, "compensate") ||
      !strcmp(cmd, "retry") || !strcmp(cmd, "resolve") || !strcmp(cmd, "plan") || !strcmp(cmd, "terminate") ||
      !strcmp(cmd, "upgrade") || !strcmp(cmd, "signal") || !strcmp(cmd, "schedules"))
    return sg_cli_client(argc - 1, argv + 1);
  return usage_error("unknown command '%s'", cmd);
}
