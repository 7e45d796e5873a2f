/* watchdog: a POSIX timer whose signal pokes a script run that is past its deadline. */
#define _GNU_SOURCE
#include "watchdog.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define SIG_POKE SIGURG              /* ignored by default: a stray one once the handler is gone is harmless */
#define TICK_NS 2000000L             /* how often the timer looks while runs come and go */
#define QUIET_NS (100 * 1000000LL)   /* without a run for this long, the timer stops */

static struct {
  int users;                        /* sg_watchdog_acquire calls not yet released */
  int created;                      /* the timer exists */
  timer_t timer;                    /* signals the thread that created it */
  void (*poke)(void);               /* called in the signal handler */
  volatile sig_atomic_t ticking;    /* the timer is running */
  volatile int64_t deadline;        /* poke once the clock passes this; 0 = nothing runs */
  volatile int64_t last_run;        /* when the last run started (the handler stops a quiet timer) */
} wd;

static void set_ticking(int on) {
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  if (on) its.it_value.tv_nsec = its.it_interval.tv_nsec = TICK_NS;
  timer_settime(wd.timer, 0, &its, NULL); /* async-signal-safe */
}

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  int64_t now = sg_mono_ns(), dl = wd.deadline;
  /* from one tick before the deadline: the count hook, set by the poke, then yields at the deadline
   * itself (it starts unset, script_limits.c); a poke after it would make slices up to a tick late */
  if (dl && now > dl - TICK_NS) {
    if (wd.poke) wd.poke();
  } else if (!dl && now - wd.last_run > QUIET_NS && wd.ticking) {
    wd.ticking = 0;
    set_ticking(0);
  }
  errno = saved;
}

void sg_watchdog_acquire(void (*poke)(void)) {
  wd.poke = poke;
  if (wd.users++ > 0) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIG_POKE, &sa, NULL);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIG_POKE;
  sev._sigev_un._tid = gettid(); /* sigev_notify_thread_id in newer glibc */
  wd.created = timer_create(CLOCK_MONOTONIC, &sev, &wd.timer) == 0;
  if (!wd.created) sg_warn("no watchdog timer (%s): a loop of slow C calls in a script is checked less often", strerror(errno));
  wd.ticking = 0;
}

void sg_watchdog_release(void) {
  if (--wd.users > 0) return;
  if (wd.created) timer_delete(wd.timer);
  wd.created = 0;
  wd.ticking = 0;
  wd.deadline = 0;
}

void sg_watchdog_arm(int64_t deadline_ns) {
  wd.last_run = deadline_ns;
  wd.deadline = deadline_ns;
  if (!wd.ticking && wd.created) {
    wd.ticking = 1;
    set_ticking(1);
  }
}

void sg_watchdog_disarm(void) { wd.deadline = 0; }

int sg_watchdog_ready(void) { return wd.created; }
