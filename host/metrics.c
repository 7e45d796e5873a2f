/* metrics: the counters, gauges and histograms of GET /metrics (see metrics.h). */
#include "metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "map.h"
#include "otel.h"
#include "transport.h"

#define DEFAULT_LIMIT 10000

/* Bucket upper bounds, seconds, as numbers and as the le labels Prometheus shows. */
#define STEP_NB 15
static const double step_le[STEP_NB] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
static const char *const step_le_s[STEP_NB] = { "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                                "0.5", "1", "2.5", "5", "10", "30", "60" };
#define COMMIT_NB 14
static const double commit_le[COMMIT_NB] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
static const char *const commit_le_s[COMMIT_NB] = { "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                                    "0.1", "0.25", "0.5", "1", "2.5", "5", "10" };
#define MAX_NB 15

/* One histogram: observations per bucket (not cumulative: rendering adds them up). */
struct hist {
  int64_t n[MAX_NB + 1]; /* n[i]: observations in (le[i-1], le[i]]; n[nb]: above the last bound */
  int64_t count;         /* observations */
  double sum;            /* their total, seconds */
};

/* Counters of one saga type, from the engine's lifecycle events (after their commits). */
struct type_stats {
  char *type;                  /* the map's key */
  int64_t started;
  int64_t finished[SG_ST__COUNT]; /* by terminal status */
  int64_t attempts_failed;
};

/* The durations of the ended attempts of one step, phase and outcome of one saga type. */
struct step_series {
  char *key;                   /* the map's key: type, step, phase, outcome joined by \x1f */
  char *type, *step;           /* labels */
  int phase;                   /* enum sg_phase */
  char *outcome;               /* "completed", "failed" */
  struct hist h;
};

struct sg_metrics {
  struct sg_engine *en;        /* the caller's: statistics, breakers, live sagas, its transport */
  struct sg_script *sc;        /* the caller's: load errors, Lua memory */
  size_t limit;                /* most types, and most step series, kept */
  struct sg_map types;         /* saga type -> struct type_stats */
  struct sg_map steps;         /* step_series.key -> struct step_series */
  int64_t dropped_types;       /* events of types over the limit, not counted */
  int64_t dropped_steps;       /* attempt durations of label sets over the limit, not observed */
  struct hist commits;         /* group commit durations */
};

static void hist_observe(struct hist *h, const double *le, int nb, double v) {
  int i = 0;
  while (i < nb && v > le[i]) i++;
  h->n[i]++;
  h->count++;
  h->sum += v;
}

static void on_commit(void *ud, int64_t duration_us) {
  struct sg_metrics *m = ud;
  hist_observe(&m->commits, commit_le, COMMIT_NB, duration_us < 0 ? 0 : duration_us / 1e6);
}

static void step_observe(struct sg_metrics *m, const struct sg_event *ev) {
  const char *step = ev->step_name ? ev->step_name : "";
  const char *outcome = ev->outcome ? ev->outcome : "";
  char *key = sg_asprintf("%s\x1f%s\x1f%d\x1f%s", ev->type, step, ev->phase, outcome);
  struct step_series *s = sg_map_get(&m->steps, key);
  if (!s) {
    if (m->steps.n >= m->limit) {
      m->dropped_steps++;
      free(key);
      return;
    }
    s = sg_xcalloc(1, sizeof *s);
    s->key = key;
    s->type = sg_strdup(ev->type);
    s->step = sg_strdup(step);
    s->phase = ev->phase;
    s->outcome = sg_strdup(outcome);
    sg_map_put(&m->steps, s->key, s);
  } else {
    free(key);
  }
  hist_observe(&s->h, step_le, STEP_NB, ev->duration_ms < 0 ? 0 : ev->duration_ms / 1e3);
}

/* the engine's lifecycle events, after their commit */
static void on_event(void *ud, const struct sg_event *ev) {
  struct sg_metrics *m = ud;
  if (ev->kind != SG_EV_STARTED && ev->kind != SG_EV_TERMINAL && ev->kind != SG_EV_ATTEMPT_ENDED) return;
  if (ev->kind == SG_EV_ATTEMPT_ENDED) step_observe(m, ev);
  struct type_stats *t = sg_map_get(&m->types, ev->type);
  if (!t) {
    if (m->types.n >= m->limit) { /* a bound on label sets, whatever scripts define */
      m->dropped_types++;
      return;
    }
    t = sg_xcalloc(1, sizeof *t);
    t->type = sg_strdup(ev->type);
    sg_map_put(&m->types, t->type, t);
  }
  if (ev->kind == SG_EV_STARTED) t->started++;
  else if (ev->kind == SG_EV_TERMINAL && ev->status >= SG_ST_COMPLETED && ev->status < SG_ST__COUNT) t->finished[ev->status]++;
  else if (ev->kind == SG_EV_ATTEMPT_ENDED && ev->outcome && !strcmp(ev->outcome, "failed")) t->attempts_failed++;
}

struct sg_metrics *sg_metrics_new(struct sg_engine *en, struct sg_script *sc, struct sg_error *e) {
  struct sg_metrics *m = sg_xcalloc(1, sizeof *m);
  m->en = en;
  m->sc = sc;
  m->limit = DEFAULT_LIMIT;
  sg_map_init(&m->types);
  sg_map_init(&m->steps);
  if (sg_engine_observe(en, on_event, m) < 0) {
    sg_errorf(e, SG_E_INTERNAL, "metrics: the engine takes no more event observers");
    sg_map_free(&m->types);
    sg_map_free(&m->steps);
    free(m);
    return NULL;
  }
  sg_engine_on_commit(en, on_commit, m);
  return m;
}

void sg_metrics_set_limit(struct sg_metrics *m, size_t n) { m->limit = n; }

/* ---------------------------------------------------------------------------------------------- */
/* rendering */

/* a label value in the Prometheus text format: \, " and newline escaped */
static void add_label(struct sg_buf *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') sg_buf_adds(b, "\\\\");
    else if (*v == '"') sg_buf_adds(b, "\\\"");
    else if (*v == '\n') sg_buf_adds(b, "\\n");
    else sg_buf_add(b, v, 1);
  }
}

/* "name{type="T"": the start of a per-type sample (the caller adds more labels and the value) */
static void type_sample(struct sg_buf *b, const char *name, const char *type) {
  sg_buf_printf(b, "%s{type=\"", name);
  add_label(b, type);
  sg_buf_adds(b, "\"");
}

static void family(struct sg_buf *b, const char *name, const char *type, const char *help) {
  sg_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One histogram's samples: labels is "" or `a="x",b="y"` (already escaped). */
static void hist_render(struct sg_buf *b, const char *name, const char *labels, const struct hist *h, const char *const *le_s,
                        int nb) {
  const char *sep = *labels ? "," : "";
  int64_t cum = 0;
  for (int i = 0; i < nb; i++) {
    cum += h->n[i];
    sg_buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %" PRId64 "\n", name, labels, sep, le_s[i], cum);
  }
  sg_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %" PRId64 "\n", name, labels, sep, h->count);
  sg_buf_printf(b, "%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels, *labels ? "}" : "", h->sum);
  sg_buf_printf(b, "%s_count%s%s%s %" PRId64 "\n", name, *labels ? "{" : "", labels, *labels ? "}" : "", h->count);
}

/* one breaker's lines (service names are [A-Za-z0-9_-]: no label escaping needed) */
static void metric_breaker(void *ud, const char *service, const char *state, size_t parked) {
  struct sg_buf **lines = ud;
  int v = !strcmp(state, "open") ? 1 : !strcmp(state, "half_open") ? 2 : 0;
  sg_buf_printf(lines[0], "sagahost_breaker_open{service=\"%s\"} %d\n", service, v);
  sg_buf_printf(lines[1], "sagahost_breaker_parked{service=\"%s\"} %zu\n", service, parked);
}

static void metric_live(void *ud, const char *type, int64_t n) {
  type_sample(ud, "sagahost_type_in_flight", type);
  sg_buf_printf(ud, "} %" PRId64 "\n", n);
}

static void render_by_type(struct sg_metrics *m, struct sg_buf *b) {
  struct sg_buf started, finished, failed;
  sg_buf_init(&started);
  sg_buf_init(&finished);
  sg_buf_init(&failed);
  for (size_t i = 0; i < m->types.cap; i++) {
    if (!sg_map_live(&m->types, i)) continue;
    const struct type_stats *t = m->types.slots[i].val;
    type_sample(&started, "sagahost_type_started_total", t->type);
    sg_buf_printf(&started, "} %" PRId64 "\n", t->started);
    for (int st = SG_ST_COMPLETED; st < SG_ST__COUNT; st++) {
      type_sample(&finished, "sagahost_type_finished_total", t->type);
      sg_buf_printf(&finished, ",status=\"%s\"} %" PRId64 "\n", sg_status_name(st), t->finished[st]);
    }
    type_sample(&failed, "sagahost_type_attempts_failed_total", t->type);
    sg_buf_printf(&failed, "} %" PRId64 "\n", t->attempts_failed);
  }
  family(b, "sagahost_type_started_total", "counter", "Sagas started by this host, by type.");
  if (started.len) sg_buf_add(b, started.data, started.len);
  family(b, "sagahost_type_finished_total", "counter", "Sagas that reached a terminal status on this host, by type and status.");
  if (finished.len) sg_buf_add(b, finished.data, finished.len);
  family(b, "sagahost_type_attempts_failed_total", "counter",
         "Step attempts (actions and compensations) that failed, by type.");
  if (failed.len) sg_buf_add(b, failed.data, failed.len);
  sg_buf_free(&started);
  sg_buf_free(&finished);
  sg_buf_free(&failed);
  family(b, "sagahost_type_in_flight", "gauge", "Sagas running or compensating on this host, by type.");
  sg_engine_live_by_type(m->en, metric_live, b);
}

static int cmp_series(const void *a, const void *b) {
  const struct step_series *x = *(const struct step_series *const *)a, *y = *(const struct step_series *const *)b;
  int c = strcmp(x->type, y->type);
  if (!c) c = strcmp(x->step, y->step);
  if (!c) c = x->phase - y->phase;
  if (!c) c = strcmp(x->outcome, y->outcome);
  return c;
}

/* the step duration histograms, sorted by their labels (stable output for people reading it) */
static void render_steps(struct sg_metrics *m, struct sg_buf *b) {
  family(b, "sagahost_step_duration_seconds", "histogram",
         "Duration of ended step attempts, by saga type, step, phase (action, compensate) and outcome (completed, failed).");
  struct step_series **all = sg_xcalloc(m->steps.n ? m->steps.n : 1, sizeof *all);
  size_t n = 0;
  for (size_t i = 0; i < m->steps.cap; i++)
    if (sg_map_live(&m->steps, i)) all[n++] = m->steps.slots[i].val;
  qsort(all, n, sizeof *all, cmp_series);
  struct sg_buf labels;
  sg_buf_init(&labels);
  for (size_t i = 0; i < n; i++) {
    const struct step_series *s = all[i];
    labels.len = 0;
    sg_buf_adds(&labels, "type=\"");
    add_label(&labels, s->type);
    sg_buf_adds(&labels, "\",step=\"");
    add_label(&labels, s->step);
    sg_buf_printf(&labels, "\",phase=\"%s\",outcome=\"", sg_phase_name(s->phase));
    add_label(&labels, s->outcome);
    sg_buf_adds(&labels, "\"");
    hist_render(b, "sagahost_step_duration_seconds", labels.data, &s->h, step_le_s, STEP_NB);
  }
  sg_buf_free(&labels);
  free(all);
}

void sg_metrics_render(struct sg_metrics *m, struct sg_buf *b) {
  struct sg_engine_stats st;
  sg_engine_stats(m->en, &st);
  sg_buf_printf(b,
                "# HELP sagahost_sagas_started_total Sagas started by this host.\n"
                "# TYPE sagahost_sagas_started_total counter\n"
                "sagahost_sagas_started_total %" PRId64 "\n"
                "# HELP sagahost_sagas_finished_total Sagas that reached a terminal status on this host.\n"
                "# TYPE sagahost_sagas_finished_total counter\n"
                "sagahost_sagas_finished_total{status=\"completed\"} %" PRId64 "\n"
                "sagahost_sagas_finished_total{status=\"compensated\"} %" PRId64 "\n"
                "sagahost_sagas_finished_total{status=\"compensation_failed\"} %" PRId64 "\n"
                "sagahost_sagas_finished_total{status=\"resolved\"} %" PRId64 "\n"
                "sagahost_sagas_finished_total{status=\"terminated\"} %" PRId64 "\n"
                "# HELP sagahost_live_sagas Sagas running or compensating.\n"
                "# TYPE sagahost_live_sagas gauge\n"
                "sagahost_live_sagas %" PRId64 "\n"
                "# HELP sagahost_coroutines Sagas holding a Lua coroutine.\n"
                "# TYPE sagahost_coroutines gauge\n"
                "sagahost_coroutines %" PRId64 "\n"
                "# HELP sagahost_timers Armed durable timers.\n"
                "# TYPE sagahost_timers gauge\n"
                "sagahost_timers %" PRId64 "\n"
                "# HELP sagahost_store_commits_total Group commits of the store.\n"
                "# TYPE sagahost_store_commits_total counter\n"
                "sagahost_store_commits_total %" PRId64 "\n"
                "# HELP sagahost_store_commit_failures_total Commits the store refused for a passing reason (disk full, I/O error).\n"
                "# TYPE sagahost_store_commit_failures_total counter\n"
                "sagahost_store_commit_failures_total %" PRId64 "\n"
                "# HELP sagahost_store_stalled 1 while a refused commit waits to be written again (no new work is taken).\n"
                "# TYPE sagahost_store_stalled gauge\n"
                "sagahost_store_stalled %d\n"
                "# HELP sagahost_sagas_taken_over_total Sagas this host took over from hosts whose lease ran out.\n"
                "# TYPE sagahost_sagas_taken_over_total counter\n"
                "sagahost_sagas_taken_over_total %" PRId64 "\n"
                "# HELP sagahost_fenced_total Times this host found its sagas taken over and reloaded what it owns.\n"
                "# TYPE sagahost_fenced_total counter\n"
                "sagahost_fenced_total %" PRId64 "\n"
                "# HELP sagahost_verbs_forwarded_total Operator verbs sent to the host that owns the saga.\n"
                "# TYPE sagahost_verbs_forwarded_total counter\n"
                "sagahost_verbs_forwarded_total %" PRId64 "\n"
                "# HELP sagahost_lua_memory_bytes Memory of the Lua state.\n"
                "# TYPE sagahost_lua_memory_bytes gauge\n"
                "sagahost_lua_memory_bytes %zu\n"
                "# HELP sagahost_outbox_depth Messages written to the outbox and not yet confirmed by the broker.\n"
                "# TYPE sagahost_outbox_depth gauge\n"
                "sagahost_outbox_depth %" PRId64 "\n",
                st.started, st.completed, st.compensated, st.compensation_failed, st.resolved, st.terminated, st.live, st.coroutines,
                st.timers, st.commits, st.store_failures, st.stalled, st.taken_over, st.fenced, st.forwarded,
                sg_script_mem_used(m->sc), st.outbox);

  int64_t load_failures = 0;
  int failing = 0;
  sg_script_load_stats(m->sc, &load_failures, &failing);
  family(b, "sagahost_script_load_failures_total", "counter", "Loads and reloads of saga script files that failed.");
  sg_buf_printf(b, "sagahost_script_load_failures_total %" PRId64 "\n", load_failures);
  family(b, "sagahost_script_files_failing", "gauge", "Script files whose last load failed (their previous version, if any, stays in use).");
  sg_buf_printf(b, "sagahost_script_files_failing %d\n", failing);

  struct sg_otel *otel = sg_engine_otel(m->en);
  if (otel) {
    struct sg_otel_stats os;
    sg_otel_stats(otel, &os);
    family(b, "sagahost_otel_spans_exported_total", "counter", "Spans the OTLP collector accepted.");
    sg_buf_printf(b, "sagahost_otel_spans_exported_total %" PRId64 "\n", os.exported);
    family(b, "sagahost_otel_spans_dropped_total", "counter",
           "Spans lost: the export queue was full, or their batch could not be delivered to the collector.");
    sg_buf_printf(b, "sagahost_otel_spans_dropped_total %" PRId64 "\n", os.dropped);
    family(b, "sagahost_otel_queue_spans", "gauge", "Spans waiting in the export queue.");
    sg_buf_printf(b, "sagahost_otel_queue_spans %" PRId64 "\n", os.queue);
  }

  struct sg_transport *tr = sg_engine_transport(m->en);
  if (tr) {
    family(b, "sagahost_transport_connected", "gauge", "1 while the transport is connected (to the broker), else 0.");
    sg_buf_printf(b, "sagahost_transport_connected{transport=\"%s\"} %d\n", tr->ops->name, tr->ops->connected(tr) ? 1 : 0);
    family(b, "sagahost_transport_reconnects_total", "counter", "Connections to the broker made again after one was lost.");
    sg_buf_printf(b, "sagahost_transport_reconnects_total{transport=\"%s\"} %" PRId64 "\n", tr->ops->name,
                  tr->connects > 1 ? tr->connects - 1 : 0);
  }

  struct sg_buf open, parked;
  sg_buf_init(&open);
  sg_buf_init(&parked);
  struct sg_buf *lines[2] = { &open, &parked };
  sg_engine_breakers_each(m->en, metric_breaker, lines);
  if (open.len) {
    family(b, "sagahost_breaker_open", "gauge", "Circuit breaker state per service (0 closed, 1 open, 2 half-open).");
    sg_buf_add(b, open.data, open.len);
    family(b, "sagahost_breaker_parked", "gauge", "Sagas waiting for a service's breaker.");
    sg_buf_add(b, parked.data, parked.len);
  }
  sg_buf_free(&open);
  sg_buf_free(&parked);

  render_by_type(m, b);

  family(b, "sagahost_store_commit_duration_seconds", "histogram",
         "Duration of the store's group commits, from their start until they went through.");
  hist_render(b, "sagahost_store_commit_duration_seconds", "", &m->commits, commit_le_s, COMMIT_NB);
  render_steps(m, b);

  family(b, "sagahost_metrics_dropped_total", "counter",
         "Events not counted because the metric had reached its limit of label sets (saga types, step series).");
  sg_buf_printf(b, "sagahost_metrics_dropped_total{family=\"type\"} %" PRId64 "\n", m->dropped_types);
  sg_buf_printf(b, "sagahost_metrics_dropped_total{family=\"step_duration\"} %" PRId64 "\n", m->dropped_steps);
}

void sg_metrics_free(struct sg_metrics *m) {
  if (!m) return;
  sg_engine_on_commit(m->en, NULL, NULL);
  for (size_t i = 0; i < m->types.cap; i++) {
    if (!sg_map_live(&m->types, i)) continue;
    struct type_stats *t = m->types.slots[i].val;
    free(t->type);
    free(t);
  }
  sg_map_free(&m->types);
  for (size_t i = 0; i < m->steps.cap; i++) {
    if (!sg_map_live(&m->steps, i)) continue;
    struct step_series *s = m->steps.slots[i].val;
    free(s->key); free(s->type); free(s->step); free(s->outcome);
    free(s);
  }
  sg_map_free(&m->steps);
  free(m);
}
