/* test_metrics: /metrics' text from a real host (SQLite in a temporary directory, in-process
 * transport, a script with three saga types) with the label-set limit set to 2: two types and two
 * step series are kept, the third type's events are counted as dropped; histogram lines are
 * cumulative and end in +Inf = _count; the commit histogram counts commits. */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "host.h"
#include "metrics.h"

static const char *SCRIPT =
    "local saga = require 'saga'\n"
    "for _, t in ipairs { 'Alpha', 'Beta', 'Gamma' } do\n"
    "  saga.define { name = t, steps = { { name = 'only', action = function(ctx) ctx:sleep('2ms') end } } }\n"
    "end\n";

struct run {
  struct sg_host h;
  ev_timer tick;               /* keeps the loop turning while sagas sleep */
  int ticks;
};

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) { (void)loop; (void)w; (void)revents; }

/* the line of text after p, or NULL */
static const char *next_line(const char *p) {
  const char *nl = strchr(p, '\n');
  return nl && nl[1] ? nl + 1 : NULL;
}

/* the value of the sample line that starts with prefix (-1 if none) */
static long long sample(const char *text, const char *prefix) {
  for (const char *p = text; p; p = next_line(p)) {
    if (strncmp(p, prefix, strlen(prefix)) != 0) continue;
    size_t len = strcspn(p, "\n");
    const char *v = p + len;
    while (v > p && v[-1] != ' ') v--;
    return atoll(v);
  }
  return -1;
}

static int lines_starting(const char *text, const char *prefix) {
  int n = 0;
  for (const char *p = text; p; p = next_line(p)) n += strncmp(p, prefix, strlen(prefix)) == 0;
  return n;
}

/* buckets of one histogram series (lines starting with prefix, up to and including +Inf) never
 * decrease; returns the +Inf value */
static long long check_cumulative(const char *text, const char *prefix) {
  long long last = -1;
  int n = 0;
  for (const char *p = text; p; p = next_line(p)) {
    if (strncmp(p, prefix, strlen(prefix)) != 0) continue;
    size_t len = strcspn(p, "\n");
    const char *v = p + len;
    while (v > p && v[-1] != ' ') v--;
    CHECK(atoll(v) >= last);
    last = atoll(v);
    n++;
    const char *inf = strstr(p, "le=\"+Inf\"");
    if (inf && inf < p + len) break;
  }
  CHECK(n >= 2);
  return last;
}

int main(void) {
  char dir[] = "/tmp/sg-test-metrics-XXXXXX";
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
  char path[256], db[256];
  snprintf(path, sizeof path, "%s/three.lua", dir);
  FILE *f = fopen(path, "w");
  fputs(SCRIPT, f);
  fclose(f);
  snprintf(db, sizeof db, "%s/m.db", dir);

  struct sg_host_config cfg;
  sg_host_config_defaults(&cfg);
  cfg.db = db;
  cfg.dir = dir;
  cfg.host_id = "metrics";
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct run r;
  memset(&r, 0, sizeof r);
  struct sg_error e = {0};
  if (!CHECK(sg_host_open(&r.h, loop, &cfg, &e) == 0)) { fprintf(stderr, "open: %s\n", e.msg); return check_report(); }
  struct sg_metrics *m = sg_metrics_new(r.h.en, r.h.sc, &e);
  if (!CHECK(m != NULL)) return check_report();
  sg_metrics_set_limit(m, 2);

  /* one saga of each type, one after the other: Alpha and Beta fit, Gamma does not */
  const char *types[] = { "Alpha", "Beta", "Gamma" };
  for (int i = 0; i < 3; i++) {
    char id[40];
    int existed = 0;
    CHECK(sg_engine_start(r.h.en, types[i], "{}", NULL, id, &existed, &e) == 0);
    ev_timer_init(&r.tick, on_tick, 0.002, 0.002);
    r.tick.data = &r;
    ev_timer_start(loop, &r.tick);
    struct sg_engine_stats st;
    do {
      ev_run(loop, EVRUN_ONCE);
      sg_engine_stats(r.h.en, &st);
    } while ((st.live > 0 || st.completed < i + 1) && ++r.ticks < 3000);
    ev_timer_stop(loop, &r.tick);
    CHECK_EQ_INT(st.completed, i + 1);
  }

  struct sg_buf b;
  sg_buf_init(&b);
  sg_metrics_render(m, &b);
  const char *t = b.data;
  CHECK_EQ_INT(sample(t, "sagahost_type_started_total{type=\"Alpha\"}"), 1);
  CHECK_EQ_INT(sample(t, "sagahost_type_started_total{type=\"Beta\"}"), 1);
  CHECK_EQ_INT(lines_starting(t, "sagahost_type_started_total{type=\"Gamma\"}"), 0);
  /* Gamma: started, its attempt ended, terminal */
  CHECK_EQ_INT(sample(t, "sagahost_metrics_dropped_total{family=\"type\"}"), 3);
  CHECK_EQ_INT(sample(t, "sagahost_metrics_dropped_total{family=\"step_duration\"}"), 1);
  const char *alpha = "sagahost_step_duration_seconds_bucket{type=\"Alpha\",step=\"only\",phase=\"action\",outcome=\"completed\"";
  CHECK_EQ_INT(lines_starting(t, alpha), 16); /* 15 bounds and +Inf */
  CHECK_EQ_INT(check_cumulative(t, alpha), 1);
  /* it slept 2 ms: not in the 1 ms bucket */
  CHECK_EQ_INT(sample(t, "sagahost_step_duration_seconds_bucket{type=\"Alpha\",step=\"only\",phase=\"action\","
                         "outcome=\"completed\",le=\"0.001\"}"), 0);
  CHECK_EQ_INT(sample(t, "sagahost_step_duration_seconds_count{type=\"Alpha\",step=\"only\",phase=\"action\","
                         "outcome=\"completed\"}"), 1);
  CHECK_EQ_INT(lines_starting(t, "sagahost_step_duration_seconds_count{type=\"Gamma\""), 0);
  long long commits = sample(t, "sagahost_store_commit_duration_seconds_count ");
  CHECK(commits > 0);
  CHECK_EQ_INT(check_cumulative(t, "sagahost_store_commit_duration_seconds_bucket{"), commits);
  CHECK_EQ_INT(sample(t, "sagahost_transport_connected{transport=\"local\"}"), 1);
  CHECK_EQ_INT(sample(t, "sagahost_script_files_failing "), 0);
  CHECK_EQ_INT(sample(t, "sagahost_outbox_depth "), 0);
  if (check_failed) fputs(t, stderr);
  sg_buf_free(&b);

  sg_engine_stop(r.h.en);
  sg_metrics_free(m);
  sg_host_close(&r.h);
  ev_loop_destroy(loop);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return check_report();
}
