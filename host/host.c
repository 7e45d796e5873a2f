/* host: the wiring of store, script runtime, engine and transport. */
#include "host.h"
#include "otel.h"
#include "signals.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hook_on_version(void *ud, const char *hash, const char *file, const char *source, struct sg_error *e) {
  struct sg_host *h = ud;
  return h->en ? sg_engine_def_loaded(h->en, hash, file, source, e) : 0;
}

static void hook_on_load_failed(void *ud, const char *file, const char *error) {
  struct sg_host *h = ud;
  if (h->en) sg_engine_def_failed(h->en, file, error);
}

static char *hook_fetch_source(void *ud, const char *hash, char **file) {
  struct sg_host *h = ud;
  char *src = NULL;
  struct sg_error e = {0};
  if (h->store->ops->def_get(h->store, hash, file, &src, &e) < 0) sg_err("definition %s: %s", hash, e.msg);
  return src;
}

static void hook_on_services(void *ud, const char *const *services, int n) {
  struct sg_host *h = ud;
  if (!h->tr) return;
  for (int i = 0; i < n; i++) {
    struct sg_error e = {0};
    if (h->tr->ops->subscribe(h->tr, services[i], &e) < 0) sg_err("subscribe %s: %s", services[i], e.msg);
  }
}

static void hook_on_breaker(void *ud, const char *service, const struct sg_breaker_config *c) {
  struct sg_host *h = ud;
  if (h->en) sg_engine_breaker_config(h->en, service, c);
}

static void hook_on_schedules(void *ud, const char *file, const struct sg_schedule_spec *specs, int n) {
  struct sg_host *h = ud;
  if (h->sched) sg_schedules_set_file(h->sched, file, specs, n);
}

void sg_host_config_defaults(struct sg_host_config *c) {
  memset(c, 0, sizeof *c);
  c->db = "sagahost.db";
  c->script.mem_limit = (size_t)1024 << 20;
  c->script.instr_budget = 100000000;
  c->script.run_mem_limit = (size_t)64 << 20;
  c->script.cpu_limit_ms = 1000;
  c->engine.max_payload = 1 << 20;
  c->engine.breaker_failure_rate = 0.5;
  c->engine.breaker_min_calls = 10;
  c->engine.breaker_window_ms = 30000;
  c->engine.breaker_open_ms = 5000;
  c->engine.max_deliveries = 5;
  c->engine.inbox_retention_ms = 7LL * 24 * 3600 * 1000;
  c->engine.event_retention_ms = 7LL * 24 * 3600 * 1000;
}

/* Stable across restarts (replies wait in a durable queue named after it) and distinct for two hosts
 * on one machine: the host name plus a hash of the database's absolute path (or URL). */
static void default_host_id(const char *db, char *out, size_t n) {
  char hn[40] = "host", dbabs[PATH_MAX], hash[65];
  gethostname(hn, sizeof hn - 1);
  if (sg_store_is_pg_url(db)) {
    /* a PostgreSQL URL without its password and options: changing those keeps the host's id */
    sg_store_pg_redact(db, dbabs, sizeof dbabs);
    dbabs[strcspn(dbabs, "?")] = 0;
  } else if (!realpath(db, dbabs)) {
    snprintf(dbabs, sizeof dbabs, "%s", db);
  }
  sg_sha256_hex(dbabs, strlen(dbabs), hash);
  snprintf(out, n, "%.30s-%.8s", hn, hash);
}

/* the traces endpoint: --otlp, else the OpenTelemetry environment variables; NULL: tracing off */
static char *otlp_url(const char *flag) {
  const char *base = flag;
  if (!base || !*base) {
    const char *t = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if (t && *t) return sg_strdup(t);
    base = getenv("OTEL_EXPORTER_OTLP_ENDPOINT");
  }
  if (!base || !*base) return NULL;
  size_t n = strlen(base);
  if (n >= 10 && !strcmp(base + n - 10, "/v1/traces")) return sg_strdup(base);
  return sg_asprintf("%.*s/v1/traces", (int)(base[n - 1] == '/' ? n - 1 : n), base);
}

int sg_host_open(struct sg_host *h, struct ev_loop *loop, const struct sg_host_config *c, struct sg_error *e) {
  memset(h, 0, sizeof *h);
  h->loop = loop;
  /* checked before the store is opened (and created): a wrong path would otherwise give a host that
   * runs, serves no saga type and rescans an empty directory forever */
  if (sg_dir_check(c->dir, "script directory", e) < 0) return -1;
  if (c->host_id) {
    if (!*c->host_id || strlen(c->host_id) >= sizeof h->host_id ||
        strspn(c->host_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") != strlen(c->host_id))
      return sg_errorf(e, SG_E_INVALID, "--host-id '%.100s': use 1 to %zu letters, digits and . _ : -", c->host_id,
                       sizeof h->host_id - 1);
    snprintf(h->host_id, sizeof h->host_id, "%s", c->host_id);
  }
  else default_host_id(c->db, h->host_id, sizeof h->host_id);
  /* postgres:// or postgresql:// opens the PostgreSQL store, anything else is an SQLite file */
  h->store = sg_store_is_pg_url(c->db) ? sg_store_pg_open(c->db, e) : sg_store_sqlite_open(c->db, e);
  if (!h->store) goto fail;
  struct sg_script_config scfg = c->script;
  scfg.dir = c->dir;
  struct sg_script_hooks hooks = { .ud = h, .on_version = hook_on_version, .fetch_source = hook_fetch_source,
                                   .on_services = hook_on_services, .on_load_failed = hook_on_load_failed,
                                   .on_breaker = hook_on_breaker, .on_schedules = hook_on_schedules };
  h->sc = sg_script_new(&scfg, &hooks, e);
  if (!h->sc) goto fail;
  struct sg_engine_config ecfg = c->engine;
  ecfg.host_id = h->host_id;
  struct sg_runner runner = sg_script_runner(h->sc);
  h->en = sg_engine_new(loop, h->store, &runner, &ecfg);
  if (sg_engine_register(h->en, e) < 0) goto fail;
  struct sg_transport_events tev = sg_engine_transport_events(h->en);
  if ((c->amqp != NULL) + (c->amqp1 != NULL) + (c->kafka != NULL) > 1) {
    sg_errorf(e, SG_E_INVALID, "--amqp, --amqp1 and --kafka exclude each other: a host uses one transport at a time");
    goto fail;
  }
  if (c->amqp || c->amqp1 || c->kafka) {
    h->tr = c->amqp    ? sg_transport_amqp_new(loop, c->amqp, h->host_id, &tev, e)
            : c->amqp1 ? sg_transport_amqp1_new(loop, c->amqp1, h->host_id, &tev, e)
                       : sg_transport_kafka_new(loop, c->kafka, h->host_id, &tev, e);
    if (!h->tr) goto fail;
    /* signals over a broker (docs/protocol.md): every host consumes saga.svc.saga (on Kafka: is in its group) */
    if (h->tr->ops->subscribe(h->tr, SG_SIGNAL_SERVICE, e) < 0) goto fail;
  } else {
    h->tr = sg_transport_local_new(loop, &tev);
  }
  sg_engine_set_transport(h->en, h->tr);
  char *otlp = otlp_url(c->otlp);
  if (otlp) {
    h->otel = sg_otel_new(otlp, "sagahost", h->host_id, 0, e);
    if (!h->otel || sg_engine_set_otel(h->en, h->otel) < 0) {
      if (h->otel) sg_errorf(e, SG_E_INTERNAL, "tracing: the engine takes no more observers");
      free(otlp);
      goto fail;
    }
    sg_info("tracing: spans exported with OTLP/HTTP (JSON) to %s", otlp);
    free(otlp);
  }
  h->sched = sg_schedules_new(h->en, sg_script_schedule_input, h->sc);
  h->load_errors = sg_script_scan(h->sc);
  if (sg_engine_recover(h->en, e) < 0) goto fail;
  sg_schedules_start(h->sched); /* after recovery: the fires missed while the host was down */
  return 0;
fail:
  sg_host_close(h);
  return -1;
}

static void host_free(struct sg_host *h) {
  if (h->sc) sg_script_unwatch(h->sc);
  if (h->tr) h->tr->ops->close(h->tr);
  sg_schedules_free(h->sched); /* its timers are in the engine's heap */
  h->sched = NULL;
  sg_engine_free(h->en);
  sg_otel_free(h->otel); /* after the engine's last spans: sends what is queued */
  sg_script_free(h->sc);
  if (h->store) h->store->ops->close(h->store);
  memset(h, 0, sizeof *h);
}

void sg_host_close(struct sg_host *h) {
  if (h->en) sg_engine_stop(h->en);
  host_free(h);
}

void sg_host_crash(struct sg_host *h) {
  if (h->en) sg_engine_crash(h->en);
  host_free(h);
}
