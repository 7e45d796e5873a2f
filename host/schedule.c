/* schedule: cron schedules and their fires (see schedule.h). */
#include "schedule.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cron.h"

#define CATCH_UP_MAX 1000     /* catch_up = "all" starts at most this many missed fires (the newest) */
#define COUNT_MAX 1000000     /* missed fires counted beyond that, for the warning */
#define RETRY_MS 1000         /* a fire the store could not take now is tried again after this */
#define LATE_MS 60000         /* while the host runs, a fire up to this late (or one cron minute) is not missed */

static const char *catch_up_names[] = {"one", "all", "none"};

struct sched {
  struct sg_schedules *ss;     /* its registry */
  struct sg_engine_timer timer;/* its next fire (or a retry of one the store could not take) */
  char *name, *cron_text, *type, *input_json, *file; /* owned; input_json NULL: the script's function */
  int line, catch_up, local;
  struct sg_cron cron;
  int64_t last_fire;           /* the last fire time claimed (ms; by any host), -1 none known */
  int64_t next_fire;           /* ms, -1 none (the expression never matches again) */
  int64_t fires;               /* sagas this host started for it */
  char last_saga[40];          /* the last of them */
  char *last_error;            /* why its last fire started nothing, or NULL (owned) */
  int armed;                   /* its timer is in the heap */
  int running;                 /* it has run once since it was loaded: a due fire is this moment's, not a missed one */
};

struct sg_schedules {
  struct sg_engine *en;
  sg_schedule_input_fn input;  /* the script's input functions */
  void *ud;
  struct sched **v;            /* by name */
  int n, cap;
  int started;                 /* sg_schedules_start was called: fires go on */
  int64_t minute_ms;
};

int64_t sg_schedules_minute_ms(void) {
  const char *v = getenv("SAGAHOST_CRON_MINUTE_MS");
  long long ms = v && *v ? strtoll(v, NULL, 10) : 0;
  return ms > 0 ? ms : 60000;
}

/* the first fire time after `after` (ms), -1 if none */
static int64_t next_after(const struct sched *c, int64_t after) {
  int64_t mm = c->ss->minute_ms;
  int64_t m = (after >= 0 ? after : 0) / mm;
  int64_t n = sg_cron_next(&c->cron, m, c->local);
  return n < 0 ? -1 : n * mm;
}

static void set_error(struct sched *c, const char *msg) {
  free(c->last_error);
  c->last_error = msg ? sg_strdup(msg) : NULL;
}

static void sched_free(struct sched *c) {
  if (c->armed) sg_engine_timer_disarm(c->ss->en, &c->timer);
  free(c->name); free(c->cron_text); free(c->type); free(c->input_json); free(c->file); free(c->last_error);
  free(c);
}

/* Claims fire time `at` and starts its saga (with_saga 0: only claims it, a skipped fire).
 * 1 = done (claimed here or before), 0 = the store cannot write now: try again later. */
static int fire_one(struct sched *c, int64_t at, int missed, int with_saga) {
  struct sg_error e = {0};
  char *json = NULL;
  if (with_saga && !c->input_json && c->ss->input(c->ss->ud, c->file, c->name, at, missed, &json, &e) < 0) {
    sg_err("schedule %s (%s:%d): its input function failed: %s; the fire at %" PRId64 " starts nothing", c->name,
           c->file, c->line, e.msg, at);
    set_error(c, e.msg);
    with_saga = 0; /* claimed all the same: a broken input function does not fire again and again */
    memset(&e, 0, sizeof e);
  }
  char id[40];
  int rc = sg_engine_fire(c->ss->en, c->name, at, with_saga ? c->type : NULL,
                          with_saga ? (json ? json : c->input_json) : NULL, id, &e);
  free(json);
  if (rc < 0 && e.code == SG_E_UNAVAILABLE) return 0;
  if (rc < 0) {
    sg_err("schedule %s (%s:%d): the fire at %" PRId64 " started nothing: %s", c->name, c->file, c->line, at, e.msg);
    set_error(c, e.msg);
  } else if (rc == 1 && id[0]) {
    c->fires++;
    snprintf(c->last_saga, sizeof c->last_saga, "%s", id);
    set_error(c, NULL);
    sg_info("schedule %s: fire at %" PRId64 "%s started saga %s (%s)", c->name, at, missed ? " (caught up)" : "", id,
            c->type);
  }
  if (at > c->last_fire) c->last_fire = at;
  return 1;
}

static void arm(struct sched *c, int64_t due) {
  c->armed = 1;
  sg_engine_timer_arm(c->ss->en, &c->timer, due);
}

/* The fires due now. While the host runs they fire as they come, also when the loop was held up a
 * little (up to LATE_MS, or one cron minute if longer); the ones missed before that (the host was
 * down, or stalled for longer) go by the catch-up policy. At the first run after a load every due fire
 * was missed (the host was not running then). */
static void run_due(struct sched *c) {
  int64_t now = sg_now_ms(), mm = c->ss->minute_ms, late = mm > LATE_MS ? mm : LATE_MS;
  int64_t ring[CATCH_UP_MAX];
  int64_t count = 0, ncur = 0;
  for (int64_t f = next_after(c, c->last_fire); f >= 0 && f <= now && count < COUNT_MAX; f = next_after(c, f))
    ring[count++ % CATCH_UP_MAX] = f;
  while (c->running && ncur < count && ncur < CATCH_UP_MAX && now - ring[(count - 1 - ncur) % CATCH_UP_MAX] < late)
    ncur++;
  int64_t current[CATCH_UP_MAX];
  for (int64_t i = 0; i < ncur; i++) current[i] = ring[(count - ncur + i) % CATCH_UP_MAX];
  count -= ncur; /* the missed ones */
  int done = 1;
  if (count > 0) { /* missed fires */
    int64_t newest = ring[(count - 1) % CATCH_UP_MAX];
    if (c->catch_up == SG_CATCH_UP_ALL) {
      /* the ring holds the newest CATCH_UP_MAX due fires, the current ones among them */
      int64_t first = count + ncur > CATCH_UP_MAX ? count + ncur - CATCH_UP_MAX : 0;
      if (first > 0)
        sg_warn("schedule %s missed %" PRId64 "%s fires: catch_up = \"all\" starts the newest %" PRId64, c->name, count,
                count + ncur >= COUNT_MAX ? " or more" : "", count - first);
      for (int64_t i = first; i < count && done; i++) done = fire_one(c, ring[i % CATCH_UP_MAX], 1, 1);
    } else {
      sg_info("schedule %s missed %" PRId64 " fire(s): catch_up = \"%s\"", c->name, count, catch_up_names[c->catch_up]);
      done = fire_one(c, newest, 1, c->catch_up == SG_CATCH_UP_ONE);
    }
  }
  for (int64_t i = 0; i < ncur && done; i++) done = fire_one(c, current[i], 0, 1);
  if (!done) { arm(c, now + RETRY_MS); return; }
  c->running = 1;
  c->next_fire = next_after(c, c->last_fire > now ? c->last_fire : now);
  if (c->next_fire >= 0) arm(c, c->next_fire);
  else c->armed = 0;
}

static void on_fire(void *ud) {
  struct sched *c = ud;
  c->armed = 0;
  run_due(c);
}

struct sg_schedules *sg_schedules_new(struct sg_engine *en, sg_schedule_input_fn input, void *ud) {
  struct sg_schedules *ss = sg_xcalloc(1, sizeof *ss);
  ss->en = en;
  ss->input = input;
  ss->ud = ud;
  ss->minute_ms = sg_schedules_minute_ms();
  return ss;
}

void sg_schedules_free(struct sg_schedules *ss) {
  if (!ss) return;
  for (int i = 0; i < ss->n; i++) sched_free(ss->v[i]);
  free(ss->v);
  free(ss);
}

static int find(struct sg_schedules *ss, const char *name) {
  for (int i = 0; i < ss->n; i++)
    if (!strcmp(ss->v[i]->name, name)) return i;
  return -1;
}

/* the last fire time the store has for c (a schedule seen for the first time starts from now) */
static void load_last(struct sched *c) {
  struct sg_store *st = sg_engine_store(c->ss->en);
  struct sg_error e = {0};
  int64_t last = -1;
  int rc = st->ops->schedule_last ? st->ops->schedule_last(st, c->name, &last, &e) : 0;
  if (rc < 0) sg_err("schedule %s: its last fire time cannot be read (%s): it starts from now", c->name, e.msg);
  if (rc != 1) {
    last = sg_now_ms();
    char id[40];
    memset(&e, 0, sizeof e);
    /* the first time: from now on (fires before it were never missed) */
    if (sg_engine_fire(c->ss->en, c->name, last, NULL, NULL, id, &e) < 0)
      sg_warn("schedule %s: its start time could not be recorded yet (%s)", c->name, e.msg);
    /* and a fire that comes due while the host is still starting is this moment's, not a missed one
     * (no downtime stands between it and now) */
    c->running = 1;
  }
  c->last_fire = last;
}

static int cmp_sched(const void *a, const void *b) {
  return strcmp((*(struct sched *const *)a)->name, (*(struct sched *const *)b)->name);
}

void sg_schedules_set_file(struct sg_schedules *ss, const char *file, const struct sg_schedule_spec *specs, int n) {
  /* the file's schedules that it no longer declares go */
  for (int i = 0; i < ss->n;) {
    struct sched *c = ss->v[i];
    int keep = strcmp(c->file, file) != 0;
    for (int j = 0; !keep && j < n; j++) keep = !strcmp(specs[j].name, c->name);
    if (keep) { i++; continue; }
    sg_info("schedule %s removed (%s)", c->name, file);
    sched_free(c);
    ss->v[i] = ss->v[--ss->n];
  }
  for (int j = 0; j < n; j++) {
    const struct sg_schedule_spec *sp = &specs[j];
    struct sg_cron cron;
    char err[200];
    if (sg_cron_parse(sp->cron, &cron, err, sizeof err) < 0) { /* the loader checked it */
      sg_err("schedule %s (%s:%d): %s", sp->name, sp->file, sp->line, err);
      continue;
    }
    int i = find(ss, sp->name);
    struct sched *c;
    if (i >= 0) {
      c = ss->v[i];
      free(c->cron_text); free(c->type); free(c->input_json); free(c->file);
    } else {
      c = sg_xcalloc(1, sizeof *c);
      c->ss = ss;
      c->name = sg_strdup(sp->name);
      c->timer.t.idx = SIZE_MAX;
      c->timer.cb = on_fire;
      c->timer.ud = c;
      c->last_fire = -1;
      if (ss->n == ss->cap) {
        ss->cap = ss->cap ? ss->cap * 2 : 8;
        ss->v = sg_xrealloc(ss->v, (size_t)ss->cap * sizeof *ss->v);
      }
      ss->v[ss->n++] = c;
    }
    c->cron_text = sg_strdup(sp->cron);
    c->type = sg_strdup(sp->saga);
    c->input_json = sp->input_json ? sg_strdup(sp->input_json) : NULL;
    c->file = sg_strdup(sp->file);
    c->line = sp->line;
    c->catch_up = sp->catch_up;
    c->local = sp->local;
    c->cron = cron;
    if (i < 0) load_last(c);
    if (ss->started) {
      int64_t now = sg_now_ms();
      c->next_fire = next_after(c, c->last_fire > now ? c->last_fire : now);
      if (i < 0) run_due(c); /* a new schedule: what it missed before (a restart of its file) */
      else if (c->next_fire >= 0) arm(c, c->next_fire);
    }
  }
  if (ss->n > 1) qsort(ss->v, (size_t)ss->n, sizeof *ss->v, cmp_sched);
}

void sg_schedules_start(struct sg_schedules *ss) {
  ss->started = 1;
  for (int i = 0; i < ss->n; i++) run_due(ss->v[i]);
}

static void add_ms(struct sg_buf *b, const char *key, int64_t ms) {
  sg_buf_printf(b, ",\"%s\":", key);
  if (ms < 0) { sg_buf_adds(b, "null"); return; }
  char ts[32];
  sg_iso8601(ms, ts);
  sg_buf_add_json_str(b, ts);
}

char *sg_schedules_json(struct sg_schedules *ss) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"schedules\":[");
  for (int i = 0; ss && i < ss->n; i++) {
    struct sched *c = ss->v[i];
    sg_buf_adds(&b, i ? ",{\"name\":" : "{\"name\":");
    sg_buf_add_json_str(&b, c->name);
    sg_buf_adds(&b, ",\"cron\":"); sg_buf_add_json_str(&b, c->cron_text);
    sg_buf_adds(&b, ",\"saga\":"); sg_buf_add_json_str(&b, c->type);
    sg_buf_adds(&b, ",\"catch_up\":"); sg_buf_add_json_str(&b, catch_up_names[c->catch_up]);
    sg_buf_adds(&b, ",\"timezone\":"); sg_buf_add_json_str(&b, c->local ? "local" : "UTC");
    add_ms(&b, "next_fire", ss->started ? c->next_fire : -1);
    add_ms(&b, "last_fire", c->last_fire);
    sg_buf_adds(&b, ",\"file\":"); sg_buf_add_json_str(&b, c->file);
    sg_buf_printf(&b, ",\"line\":%d,\"fires\":%" PRId64 ",\"last_saga\":", c->line, c->fires);
    sg_buf_add_json_str(&b, c->last_saga[0] ? c->last_saga : NULL);
    sg_buf_adds(&b, ",\"last_error\":"); sg_buf_add_json_str(&b, c->last_error);
    sg_buf_adds(&b, "}");
  }
  sg_buf_adds(&b, "]}");
  return sg_buf_steal(&b);
}
