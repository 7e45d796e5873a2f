/* timers: heap order, removal from any position, and firing through a real ev_timer. */
#include <stdlib.h>

#include "check.h"
#include "timers.h"
#include "util.h"

static int fired[64];
static int nfired;

static void on_fire(void *ud, struct sg_timer *t) {
  (void)ud;
  fired[nfired++] = (int)t->ref;
}

int main(void) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_timers *ts = sg_timers_new(loop, on_fire, NULL);
  struct sg_timer t[10];
  int64_t base = 1000000;
  int order[10] = {5, 3, 9, 1, 7, 2, 8, 0, 6, 4};
  for (int i = 0; i < 10; i++) {
    t[i] = (struct sg_timer){ .due = base + order[i] * 10, .id = i + 1, .ref = order[i], .idx = SIZE_MAX };
    sg_timers_add(ts, &t[i]);
  }
  CHECK_EQ_INT((int)sg_timers_count(ts), 10);
  CHECK_EQ_INT((int)sg_timers_peek(ts)->ref, 0);
  /* remove three from the middle, the head and a leaf */
  sg_timers_remove(ts, &t[2]); /* ref 9 */
  sg_timers_remove(ts, &t[7]); /* ref 0: the head */
  sg_timers_remove(ts, &t[4]); /* ref 7 */
  sg_timers_remove(ts, &t[4]); /* twice is a no-op */
  CHECK_EQ_INT((int)sg_timers_count(ts), 7);
  CHECK_EQ_INT((int)sg_timers_peek(ts)->ref, 1);
  /* run up to ref 4's due time: fires 1, 2, 3, 4 in order */
  sg_timers_run(ts, base + 40);
  CHECK_EQ_INT(nfired, 4);
  for (int i = 0; i < 4 && i < nfired; i++) CHECK_EQ_INT(fired[i], i + 1);
  CHECK_EQ_INT((int)sg_timers_count(ts), 3);
  /* equal due times fire in the order they were added */
  struct sg_timer a = { .due = base + 45, .id = 100, .ref = 50, .idx = SIZE_MAX };
  struct sg_timer b = { .due = base + 45, .id = 99, .ref = 51, .idx = SIZE_MAX };
  sg_timers_add(ts, &b);
  sg_timers_add(ts, &a);
  sg_timers_run(ts, base + 45);
  CHECK_EQ_INT(nfired, 6);
  CHECK_EQ_INT(fired[4], 51);
  CHECK_EQ_INT(fired[5], 50);
  /* the rest fire from the loop's ev_timer once due (wall clock) */
  for (int i = 0; i < 10; i++) if (t[i].idx != SIZE_MAX) sg_timers_remove(ts, &t[i]);
  CHECK_EQ_INT((int)sg_timers_count(ts), 0);
  struct sg_timer soon = { .due = sg_now_ms() + 30, .id = 200, .ref = 60, .idx = SIZE_MAX };
  struct sg_timer past = { .due = sg_now_ms() - 1000, .id = 201, .ref = 61, .idx = SIZE_MAX };
  sg_timers_add(ts, &soon);
  sg_timers_add(ts, &past);
  int64_t t0 = sg_now_ms();
  ev_run(loop, 0); /* returns when no watcher is left: both fired */
  CHECK_EQ_INT(nfired, 8);
  CHECK_EQ_INT(fired[6], 61);
  CHECK_EQ_INT(fired[7], 60);
  CHECK(sg_now_ms() - t0 >= 25);
  sg_timers_free(ts);
  ev_loop_destroy(loop);
  return check_report();
}
