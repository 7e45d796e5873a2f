/* script: the Lua side of the host. Owns the lua_State (with its memory ceiling), the sandboxed
 * loading of the script directory, hot reload (build, validate, swap: a file that fails to load
 * never replaces its last good version), every definition version (struct sg_def) and the step
 * runner the engine drives (one coroutine per running saga, anchored in the registry).
 *
 * Ownership: sg_script_free frees the Lua state and every sg_def it handed out. */
#ifndef SG_SCRIPT_H
#define SG_SCRIPT_H

#include <ev.h>
#include <stdio.h>
#include "engine.h"
#include "schedule.h"

/* What the script module needs from the rest of the host. Any member may be NULL (sagahost check). */
struct sg_script_hooks {
  void *ud;
  /* a file loaded cleanly as version hash: record its source */
  int (*on_version)(void *ud, const char *hash, const char *file, const char *source, struct sg_error *e);
  /* the source of a version no file has any more (malloc'd), or NULL */
  char *(*fetch_source)(void *ud, const char *hash, char **file);
  /* the set of services with handlers changed */
  void (*on_services)(void *ud, const char *const *services, int n);
  /* a file failed to load (error says what and where; a previous version, if any, stays in use) */
  void (*on_load_failed)(void *ud, const char *file, const char *error);
  /* a script configured the circuit breaker of a service it calls (saga.breaker) */
  void (*on_breaker)(void *ud, const char *service, const struct sg_breaker_config *c);
  /* the schedules (saga.schedule) of a file that loaded cleanly, or of one that was removed (n = 0) */
  void (*on_schedules)(void *ud, const char *file, const struct sg_schedule_spec *specs, int n);
};

struct sg_script_config {
  const char *dir;            /* script directory */
  size_t mem_limit;           /* bytes the Lua state may use, 0 = unlimited */
  long instr_budget;          /* VM instructions per step attempt or handler call, 0 = unlimited */
  size_t run_mem_limit;       /* bytes one step attempt or handler call may allocate (net), 0 = unlimited */
  int64_t cpu_limit_ms;       /* time one step attempt or handler call may run, 0 = unlimited */
};

struct sg_script;
struct sg_script *sg_script_new(const struct sg_script_config *cfg, const struct sg_script_hooks *hooks,
                                struct sg_error *e);
void sg_script_free(struct sg_script *sc);

/* Loads new and changed files, retires removed ones. Returns the number of files with errors. */
int sg_script_scan(struct sg_script *sc);
/* Hot reload: rescans the directory when inotify reports a change in it, and every `interval` seconds
 * in any case (the fallback where inotify is missing). */
void sg_script_watch(struct sg_script *sc, struct ev_loop *loop, double interval);
void sg_script_unwatch(struct sg_script *sc);
/* Prints "file:line: message" for every file that failed to load; returns how many. */
int sg_script_print_errors(struct sg_script *sc, FILE *out);
/* prints the warnings of the files that loaded (a line each: file:line: warning: ...); returns how many */
int sg_script_print_warnings(struct sg_script *sc, FILE *out);
/* {"definitions": [...], "files": [...], "handlers": [...]} (malloc'd) */
char *sg_script_definitions_json(struct sg_script *sc);
/* for /metrics: loads and reloads of files that failed since start, and the files failing now */
void sg_script_load_stats(struct sg_script *sc, int64_t *failures, int *failing);
/* The input of one fire of a schedule whose input is a function (sg_schedule_input_fn; ud = sc). */
int sg_script_schedule_input(void *sc, const char *file, const char *name, int64_t fire_at, int missed, char **json,
                             struct sg_error *e);
/* number of saga types currently startable */
int sg_script_type_count(struct sg_script *sc);

struct sg_runner sg_script_runner(struct sg_script *sc);
/* live registry references (tests assert it returns to its baseline) */
int sg_script_live_refs(struct sg_script *sc);
size_t sg_script_mem_used(struct sg_script *sc);
/* The running step or handler hit a limit: the sandbox's pcall/xpcall must not catch its error
 * (lsaga.c). 0 for a state that is not a host's. */
struct lua_State;
int sg_script_doomed(struct lua_State *L);
/* L is the thread the host resumed (the step's or handler's own), not a coroutine the script made */
int sg_script_on_run_thread(struct lua_State *L);
/* The step's slice is over and L (its own coroutine) may yield here: the caller yields it to the
 * loop (lua_yieldk with 0 values), as the count hook would. lsaga.c uses it where a script's
 * coroutine hands control back to the step, which the hook alone could miss. */
int sg_script_preempt_point(struct lua_State *L);
/* Around a resume of another thread (co) from L inside a run (a coroutine the script made, a ctx:all
 * branch): co gets L's count hook, and the watchdog pokes co while it runs. sg_script_enter returns
 * what sg_script_leave needs back. Nothing for a state that is not a host's. */
struct lua_State *sg_script_enter(struct lua_State *L, struct lua_State *co);
void sg_script_leave(struct lua_State *L, struct lua_State *co, struct lua_State *prev);

#endif
