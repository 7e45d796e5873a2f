/* timers: binary min-heap + one ev_timer. */
#include "timers.h"

#include <stdint.h>
#include <stdlib.h>

#include "util.h"

struct sg_timers {
  struct ev_loop *loop;
  ev_timer watcher;        /* armed for the earliest due time */
  struct sg_timer **heap;  /* min-heap by due (ties by order so equal times fire in the order they were added) */
  size_t n, cap;
  uint64_t added;          /* timers added so far (the next order) */
  int stopped;             /* sg_timers_stop: nothing fires (and the watcher stays off) until sg_timers_run */
  sg_timer_fire_cb fire;
  void *ud;
};

static int before(const struct sg_timer *a, const struct sg_timer *b) {
  return a->due < b->due || (a->due == b->due && a->order < b->order);
}

static void place(struct sg_timers *ts, size_t i, struct sg_timer *t) {
  ts->heap[i] = t;
  t->idx = i;
}

static void sift_up(struct sg_timers *ts, size_t i) {
  struct sg_timer *t = ts->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!before(t, ts->heap[p])) break;
    place(ts, i, ts->heap[p]);
    i = p;
  }
  place(ts, i, t);
}

static void sift_down(struct sg_timers *ts, size_t i) {
  struct sg_timer *t = ts->heap[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    struct sg_timer *best = t;
    if (l < ts->n && before(ts->heap[l], best)) { m = l; best = ts->heap[l]; }
    if (r < ts->n && before(ts->heap[r], best)) { m = r; best = ts->heap[r]; }
    if (m == i) break;
    place(ts, i, ts->heap[m]);
    i = m;
  }
  place(ts, i, t);
}

static void rearm(struct sg_timers *ts) {
  ev_timer_stop(ts->loop, &ts->watcher);
  if (ts->n == 0 || ts->stopped) return;
  double delay = (double)(ts->heap[0]->due - sg_now_ms()) / 1000.0;
  if (delay < 0) delay = 0;
  ev_timer_set(&ts->watcher, delay, 0.);
  ev_timer_start(ts->loop, &ts->watcher);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_timers *ts = w->data;
  sg_timers_run(ts, sg_now_ms());
}

struct sg_timers *sg_timers_new(struct ev_loop *loop, sg_timer_fire_cb fire, void *ud) {
  struct sg_timers *ts = sg_xcalloc(1, sizeof *ts);
  ts->loop = loop;
  ts->fire = fire;
  ts->ud = ud;
  ev_timer_init(&ts->watcher, on_timer, 0., 0.);
  ts->watcher.data = ts;
  return ts;
}

void sg_timers_stop(struct sg_timers *ts) {
  ts->stopped = 1;
  ev_timer_stop(ts->loop, &ts->watcher);
}

void sg_timers_free(struct sg_timers *ts) {
  if (!ts) return;
  sg_timers_stop(ts);
  for (size_t i = 0; i < ts->n; i++) ts->heap[i]->idx = SIZE_MAX;
  free(ts->heap);
  free(ts);
}

void sg_timers_add(struct sg_timers *ts, struct sg_timer *t) {
  t->order = ++ts->added;
  if (ts->n == ts->cap) {
    ts->cap = ts->cap ? ts->cap * 2 : 64;
    ts->heap = sg_xrealloc(ts->heap, ts->cap * sizeof *ts->heap);
  }
  place(ts, ts->n++, t);
  sift_up(ts, t->idx);
  if (ts->heap[0] == t) rearm(ts);
}

void sg_timers_remove(struct sg_timers *ts, struct sg_timer *t) {
  if (t->idx == SIZE_MAX || t->idx >= ts->n || ts->heap[t->idx] != t) return;
  size_t i = t->idx;
  int was_first = (i == 0);
  struct sg_timer *last = ts->heap[--ts->n];
  t->idx = SIZE_MAX;
  if (last != t) {
    place(ts, i, last);
    sift_down(ts, i);
    sift_up(ts, last->idx);
  }
  if (was_first) rearm(ts);
}

size_t sg_timers_count(const struct sg_timers *ts) { return ts->n; }
struct sg_timer *sg_timers_peek(const struct sg_timers *ts) { return ts->n ? ts->heap[0] : NULL; }

void sg_timers_run(struct sg_timers *ts, int64_t now) {
  ts->stopped = 0;
  while (ts->n && ts->heap[0]->due <= now && !ts->stopped) { /* a fire may stop the heap (a stall) */
    struct sg_timer *t = ts->heap[0];
    struct sg_timer *last = ts->heap[--ts->n];
    t->idx = SIZE_MAX;
    if (ts->n) { place(ts, 0, last); sift_down(ts, 0); }
    ts->fire(ts->ud, t); /* may add or remove timers, or free t */
  }
  rearm(ts);
}
