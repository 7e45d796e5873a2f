/* script_int: what the script module's files share (script.c: the Lua state, loading, hot reload
 * and definition versions; script_limits.c: the allocator, the count hook and the limits of a run;
 * script_run.c: the coroutine runner the engine drives). Not part of the module's interface: only
 * those files include it. */
#ifndef SG_SCRIPT_INT_H
#define SG_SCRIPT_INT_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "script.h"

/* How script code is kept from hanging the host. A count hook runs every HOOK_EVERY VM instructions
 * of a step, handler or file load. At the end of a slice it yields the step's coroutine back to the
 * loop (a forced yield, as HAProxy's Lua does), so replies, timers, HTTP and other sagas are served
 * while a long step runs; the engine resumes it later. Where no yield is possible (inside a C call
 * boundary: a table.sort comparator, a gsub callback, a message handler, a metamethod called from
 * C, a file's top level) the run may go on for at most NOYIELD_NS at a time. An attempt also has an
 * instruction budget, a CPU limit and a memory limit. When a limit is hit the run is "doomed": the
 * hook yields for the runner to kill the coroutine, or raises where it cannot yield, and the
 * sandbox's pcall/xpcall re-raise instead of catching (lsaga.c), so no script code can outlive it. */
#define HOOK_EVERY 1000
#define SLICE_NS (2 * 1000000LL)
#define NOYIELD_NS (200 * 1000000LL)

enum run_kind {
  RUN_NONE = 0,
  RUN_STEP,    /* a step attempt on its saga's coroutine (preemptible) */
  RUN_HANDLER, /* a saga.handle handler on a handler coroutine (preemptible) */
  RUN_LOAD,    /* a file's top-level code, on the main thread */
  RUN_CLOSE,   /* __close handlers of a coroutine being dropped: stopped at the first check */
  RUN_KEY,     /* a saga's key function (saga.define{key = function}) as the saga starts, on the main thread */
};

/* What one attempt (or handler call) has used so far, kept between the resumes of its coroutine. */
struct usage {
  int64_t cpu_ns;  /* CPU time spent running it */
  int64_t instr;   /* VM instructions, counted HOOK_EVERY at a time */
  int64_t mem;     /* bytes allocated net of what was freed while it ran */
  char *mem_why;   /* the memory limit an earlier resume of it ran into (owned), or NULL: a step preempted
                    * between its refusal and its "not enough memory" error still fails with it */
};

/* The one Lua run in progress (the loop thread runs one at a time). */
struct run {
  lua_State *co;        /* the thread resumed (or the main thread for a load) */
  int kind;             /* enum run_kind, RUN_NONE when nothing runs */
  int64_t t0;           /* this resume began (monotonic ns) */
  int64_t cpu0;         /* the thread's CPU clock at the resume's first hook, 0 = not read: short
                         * resumes are timed by the monotonic clock alone (no system call) */
  int64_t wall_cpu0;    /* the monotonic clock when cpu0 was read */
  int64_t slice_end;    /* yield at the first chance after this */
  struct usage u;       /* the attempt's usage, kept current while it runs */
  int doomed;           /* a limit was hit: the attempt ends and nothing in it can catch that */
  int preempted;        /* the hook yielded at the end of a slice */
  int mem_refused;      /* the allocator refused it memory (mem_why says where) */
  char why[640];        /* the limit that was hit: "file:line: ... (flag)" */
  char mem_why[640];    /* the memory limit it ran into, with file:line */
};

/* One script file of the directory. */
struct sfile {
  char *path;        /* dir/name.lua */
  char *hash;        /* version of its current good load, NULL if it never loaded */
  char *error;       /* error of its last load attempt, NULL if that one succeeded */
  char *warnings;    /* its current version's warnings (runtime.lint), a line each, or NULL */
  struct timespec mtime; /* stat of the last read, to notice changes cheaply */
  off_t size;
  ino_t ino;
  int seen;          /* found by the current scan */
};

/* A definition version with the Lua function table it came from. */
struct defent {
  struct sg_def def; /* what the engine sees */
  int current;       /* the newest good version of its type (new starts use it) */
};

struct sg_script {
  lua_State *L;
  struct sg_script_config cfg;
  struct sg_script_hooks hooks;
  char *dir;
  size_t mem_used;         /* bytes allocated by the Lua state */
  struct run run;          /* the Lua code running now, under its limits */
  struct usage *usage;     /* by coroutine handle: what its current attempt has used so far */
  int nusage;
  const void *fail_ptr;    /* the allocation the allocator just refused (Lua collects, then asks again) */
  size_t fail_size;
  int *pool;               /* idle handler coroutines (handles), reused for the next command */
  int npool, cappool;
  int refs;                /* live registry references (coroutines) */
  int runtime_ref;         /* the lua/saga.lua module table */
  int ctxs_ref;            /* table: coroutine handle -> the ctx its steps run with */
  struct sfile *files; int nfiles, capfiles;
  int64_t load_failures;   /* loads and reloads of files that failed, since start (/metrics) */
  struct defent **defs; int ndefs, capdefs; /* every version ever loaded, never freed before the state */
  struct ev_loop *loop;
  ev_timer watch;          /* periodic rescan (the fallback) */
  ev_io notify;            /* inotify on the directory */
  int notify_fd;           /* its fd, -1 = none */
  ev_timer settle;         /* rescan shortly after an inotify event */
};

/* script.c */
/* the one protected-call helper: a traceback handler under the call; on error nothing is left on
 * the stack and e holds the message */
int sc_pcall(lua_State *L, int nargs, int nres, struct sg_error *e);
int sc_ref(struct sg_script *sc, lua_State *L);      /* luaL_ref, counted (tests assert no leak) */
void sc_unref(struct sg_script *sc, int r);
void sc_push_runtime(struct sg_script *sc, lua_State *L, const char *fn); /* a lua/saga.lua function */
struct defent *sc_find_def(struct sg_script *sc, const char *type, const char *hash); /* NULL hash: current */
/* runtime.load(...) under the load limits; on success the load table is left on the stack */
int sc_load_source(struct sg_script *sc, const char *file, const char *source, const char *hash, int historic,
                   struct sg_error *e);
void sc_register_defs(struct sg_script *sc, const char *hash, int make_current);

/* script_limits.c */
void *sc_alloc(void *ud, void *ptr, size_t osize, size_t nsize); /* the state's allocator (ud = sc) */
/* around every resume, call or load: limits on (usage carried over from the attempt's earlier
 * resumes), then off with the usage saved; run.doomed, run.preempted and run.why stay readable */
void sc_run_begin(struct sg_script *sc, lua_State *co, int kind, const struct usage *u);
void sc_run_end(struct sg_script *sc, struct usage *u);
struct usage *sc_usage_of(struct sg_script *sc, int handle); /* the attempt's usage by coroutine handle */
void sc_usage_reset(struct sg_script *sc, int handle); /* a new attempt or call on that handle */
/* a run that was refused memory and then failed with "not enough memory" hit the memory limit */
void sc_memory_verdict(struct sg_script *sc, const char *err);
/* resets a coroutine that did not finish cleanly, its pending __close handlers stopped at once */
void sc_close_thread(struct sg_script *sc, lua_State *co);
void sc_poke(void); /* the watchdog's signal handler: check the running code at its next instruction */

#endif
