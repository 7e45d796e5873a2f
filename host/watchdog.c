/* watchdog: a thread that signals the loop thread when a script run is past its deadline. */
#include "watchdog.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define SIG_POKE SIGURG       /* ignored by default: a stray one after the handler is gone is harmless */
#define TICK_BUSY_NS 1000000  /* how often it looks while runs come and go */
#define TICK_IDLE_NS 20000000 /* ... and once none has started for a while */

static struct {
  pthread_mutex_t mu;          /* guards users, stop and the thread's start and join */
  int users;                   /* sg_watchdog_acquire calls not yet released */
  int stop;                    /* the thread should end */
  pthread_t thread;            /* the watchdog thread (while users > 0) */
  void (*poke)(void);          /* called in the signal handler, on the loop thread */
  _Atomic int64_t deadline;    /* poke once the clock passes this; 0 = nothing runs */
  _Atomic uint64_t gen;        /* runs armed so far (tells a busy host from an idle one) */
  _Atomic unsigned long target; /* the thread that runs the scripts (pthread_t) */
} wd = { .mu = PTHREAD_MUTEX_INITIALIZER };

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_signal(int sig) {
  (void)sig;
  if (atomic_load_explicit(&wd.deadline, memory_order_relaxed) && wd.poke) wd.poke();
}

static void *run(void *arg) {
  (void)arg;
  uint64_t seen = 0;
  int64_t quiet_since = mono_ns();
  for (;;) {
    int64_t now = mono_ns();
    uint64_t g = atomic_load(&wd.gen);
    if (g != seen) { seen = g; quiet_since = now; }
    int64_t tick = now - quiet_since > 100 * 1000000LL ? TICK_IDLE_NS : TICK_BUSY_NS;
    struct timespec ts = { 0, tick };
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&wd.mu);
    int stop = wd.stop;
    pthread_mutex_unlock(&wd.mu);
    if (stop) return NULL;
    int64_t dl = atomic_load(&wd.deadline);
    if (dl && mono_ns() > dl) pthread_kill((pthread_t)atomic_load(&wd.target), SIG_POKE);
  }
}

void sg_watchdog_acquire(void (*poke)(void)) {
  pthread_mutex_lock(&wd.mu);
  wd.poke = poke;
  if (wd.users++ == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIG_POKE, &sa, NULL);
    wd.stop = 0;
    if (pthread_create(&wd.thread, NULL, run, NULL) != 0) wd.users = -1000000; /* none: the count hook still works */
  }
  pthread_mutex_unlock(&wd.mu);
}

void sg_watchdog_release(void) {
  pthread_mutex_lock(&wd.mu);
  int last = --wd.users == 0;
  if (last) wd.stop = 1;
  pthread_mutex_unlock(&wd.mu);
  if (last) pthread_join(wd.thread, NULL);
}

void sg_watchdog_arm(int64_t deadline_ns) {
  atomic_store_explicit(&wd.target, (unsigned long)pthread_self(), memory_order_relaxed);
  atomic_fetch_add_explicit(&wd.gen, 1, memory_order_relaxed);
  atomic_store_explicit(&wd.deadline, deadline_ns, memory_order_release);
}

void sg_watchdog_disarm(void) { atomic_store_explicit(&wd.deadline, 0, memory_order_release); }
