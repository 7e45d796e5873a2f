/* timers: the in-memory index of durable timers (rows of the store's timers table).
 *
 * A binary min-heap by due time with a single ev_timer armed for the earliest entry; due times are
 * wall-clock ms (they are persisted and must survive a restart). The caller owns the sg_timer structs:
 * it allocates them, adds them, and gets them back through the fire callback (after which they are no
 * longer in the heap) or removes them itself. */
#ifndef SG_TIMERS_H
#define SG_TIMERS_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

struct sg_timer {
  int64_t due;   /* wall clock ms */
  int64_t id;    /* store row id (0 while not yet written) */
  uint64_t order; /* insertion order, set by sg_timers_add: equal due times fire in this order */
  int kind;      /* caller's kind */
  int64_t ref;   /* caller's reference (journal seq, attempt, ...) */
  void *owner;   /* caller's object (the saga) */
  size_t idx;    /* position in the heap, maintained by timers.c; SIZE_MAX when not in it */
};

typedef void (*sg_timer_fire_cb)(void *ud, struct sg_timer *t);

struct sg_timers;
struct sg_timers *sg_timers_new(struct ev_loop *loop, sg_timer_fire_cb fire, void *ud);
void sg_timers_free(struct sg_timers *ts);          /* the caller frees the entries it still holds */
void sg_timers_add(struct sg_timers *ts, struct sg_timer *t);
void sg_timers_remove(struct sg_timers *ts, struct sg_timer *t); /* no-op if not in the heap */
size_t sg_timers_count(const struct sg_timers *ts);
struct sg_timer *sg_timers_peek(const struct sg_timers *ts);     /* earliest or NULL */
/* fires every timer due at `now` (used by the ev_timer callback and by tests) */
void sg_timers_run(struct sg_timers *ts, int64_t now);
void sg_timers_stop(struct sg_timers *ts);          /* nothing fires until the next sg_timers_run */

#endif
