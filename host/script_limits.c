/* script_limits: how script code is kept from hanging the host or taking its memory: the Lua
 * state's allocator (per-attempt and per-state memory limits), the count hook (forced yields,
 * instruction budget, CPU limit, the limit on code that cannot be preempted), and the run record
 * those work on. See script_int.h for the overview. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "script_int.h"
#include "util.h"
#include "watchdog.h"

static int64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time of the resume in progress: the monotonic clock up to its first hook, the thread's CPU
 * clock after (so a busy machine does not make a step look slower than it is). */
static int64_t resume_cpu_ns(const struct run *r, int64_t now) {
  if (!r->cpu0) return now - r->t0;
  return (r->wall_cpu0 - r->t0) + (thread_cpu_ns() - r->cpu0);
}

/* "file:line" of the innermost script function on L's stack (the runtime's own frames skipped, so
 * the author sees the line of theirs that was running). */
static void script_where(lua_State *L, char *buf, size_t n) {
  lua_Debug ar;
  int found = 0;
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0) continue;
    if (!found || strcmp(ar.source, "@lua/saga.lua") != 0) {
      snprintf(buf, n, "%s:%d", ar.short_src, ar.currentline);
      found = 1;
      if (strcmp(ar.source, "@lua/saga.lua") != 0) return;
    }
  }
  if (!found) snprintf(buf, n, "?");
}

static const char *run_what(int kind) {
  return kind == RUN_HANDLER ? "this handler call" : kind == RUN_LOAD ? "the file's top-level code"
       : kind == RUN_KEY ? "the key function" : "this step attempt";
}

static void doom(struct sg_script *sc, lua_State *L, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Marks the run doomed with "where: message". where is taken from L when given. */
static void doom(struct sg_script *sc, lua_State *L, const char *fmt, ...) {
  struct run *r = &sc->run;
  if (r->doomed) return;
  char where[300] = "?", msg[400];
  if (L) script_where(L, where, sizeof where);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(r->why, sizeof r->why, "%.200s: %.400s", where, msg);
  r->doomed = 1;
}

/* The position inside the allocator is only read where the stack is never relocated in place
 * during an allocation (Lua up to 5.4.4; later releases move it with relative pointers). */
#if LUA_VERSION_RELEASE_NUM <= 50404
#define ALLOC_WHERE(sc) ((sc)->run.co)
#else
#define ALLOC_WHERE(sc) ((lua_State *)NULL)
#endif


void *sc_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct sg_script *sc = ud;
  struct run *r = &sc->run;
  if (!ptr) osize = 0;
  if (nsize == 0) {
    free(ptr);
    sc->mem_used -= osize;
    /* what the collector frees while a run is on may be anyone's garbage: it can cancel what the
     * run allocated, never bank an allowance for later */
    if (r->kind && (r->u.mem -= (int64_t)osize) < 0) r->u.mem = 0;
    return NULL;
  }
  if (nsize > osize) {
    size_t grow = nsize - osize;
    int over_state = sc->cfg.mem_limit && sc->mem_used + grow > sc->cfg.mem_limit;
    /* one attempt may not take more than its share, so a memory-hungry step fails alone */
    int over_run = (r->kind == RUN_STEP || r->kind == RUN_HANDLER || r->kind == RUN_LOAD || r->kind == RUN_KEY) &&
                   sc->cfg.run_mem_limit &&
                   r->u.mem + (int64_t)grow > (int64_t)sc->cfg.run_mem_limit;
    if (over_state || over_run) {
      /* Lua answers a refusal with an emergency collection and asks once more: only the second
       * refusal of the same request is final. A big request (a string.rep, a table doubling) is
       * final at once, and so is any refusal that surfaces as "not enough memory" (collect). */
      int final = (sc->fail_ptr == ptr && sc->fail_size == nsize) || grow >= ((size_t)1 << 20);
      sc->fail_ptr = ptr;
      sc->fail_size = nsize;
      if (r->kind && r->kind != RUN_CLOSE && !r->mem_refused) {
        r->mem_refused = 1;
        char where[300] = "?";
        if (ALLOC_WHERE(sc)) script_where(ALLOC_WHERE(sc), where, sizeof where);
        if (over_run)
          snprintf(r->mem_why, sizeof r->mem_why, "%.200s: memory limit exceeded: %s allocated more than %zu MB "
                   "(--lua-step-memory MB raises it)", where, run_what(r->kind), sc->cfg.run_mem_limit >> 20);
        else
          snprintf(r->mem_why, sizeof r->mem_why, "%.200s: memory limit exceeded: the host's Lua state is at its "
                   "limit of %zu MB (--lua-memory MB raises it)", where, sc->cfg.mem_limit >> 20);
      }
      if (final && r->mem_refused && !r->doomed) {
        memcpy(r->why, r->mem_why, sizeof r->why);
        r->doomed = 1;
      }
      return NULL;
    }
  }
  void *p = realloc(ptr, nsize);
  if (p) {
    sc->fail_ptr = NULL;
    sc->mem_used = sc->mem_used - osize + nsize;
    if (r->kind && (r->u.mem += (int64_t)nsize - (int64_t)osize) < 0) r->u.mem = 0;
  }
  return p;
}

static struct sg_script *script_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

static void hook(lua_State *L, lua_Debug *ar) {
  struct sg_script *sc = script_of(L);
  struct run *r = &sc->run;
  if (!r->kind) { lua_sethook(L, NULL, 0, 0); return; }
  lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_EVERY); /* back to the usual pace after a watchdog poke */
  r->u.instr += HOOK_EVERY;
  int64_t now = sg_mono_ns(), ran = now - r->t0;
  if (!r->cpu0) { r->cpu0 = thread_cpu_ns(); r->wall_cpu0 = now; } /* a long resume: CPU from here */
  /* only the step's (or handler's) own coroutine is yielded: the runner resumes it */
  int yieldable = L == r->co && (r->kind == RUN_STEP || r->kind == RUN_HANDLER) && lua_isyieldable(L);
  if (!r->doomed && r->kind != RUN_CLOSE) {
    if (sc->cfg.instr_budget > 0 && r->u.instr > sc->cfg.instr_budget)
      doom(sc, L, "instruction budget exceeded: %s ran %" PRId64 " VM instructions (an endless loop?); "
           "--lua-budget N raises the limit", run_what(r->kind), r->u.instr);
    /* CPU time is at most the time that passed: read the CPU clock only when that is over the limit */
    else if (sc->cfg.cpu_limit_ms > 0 && r->u.cpu_ns + ran > sc->cfg.cpu_limit_ms * 1000000 &&
             r->u.cpu_ns + resume_cpu_ns(r, now) > sc->cfg.cpu_limit_ms * 1000000)
      doom(sc, L, "CPU limit exceeded: %s used %" PRId64 " ms of CPU (an endless loop?); --lua-step-cpu D raises the limit",
           run_what(r->kind), (r->u.cpu_ns + resume_cpu_ns(r, now)) / 1000000);
    else if (!yieldable && ran > NOYIELD_NS)
      doom(sc, L, r->kind == RUN_LOAD
           ? "the file's top-level code ran for over %lld ms (an endless loop?): at load a file may only define sagas and handlers"
           : r->kind == RUN_KEY ? "the key function ran for over %lld ms (an endless loop?): it runs as the saga starts"
           : "ran for over %lld ms where it cannot give the loop back (inside a coroutine the script created, a "
             "table.sort comparator, a string.gsub callback, a metamethod called from C or an error handler)", NOYIELD_NS / 1000000);
  }
  if (r->doomed) {
    if (yieldable) { lua_yield(L, 0); return; } /* the runner closes the coroutine */
    lua_pushstring(L, r->kind == RUN_CLOSE ? "dropped" : r->why);
    lua_error(L);
  }
  if (yieldable && now >= r->slice_end) {
    r->preempted = 1;
    lua_yield(L, 0);
  }
}

/* The thread the watchdog's signal pokes: the innermost one the current run is in (its own, or a
 * coroutine it resumed: sg_script_enter), NULL between runs. */
static lua_State *volatile poke_target;


/* In the signal handler: the hook runs at the next VM instruction (after the C call in progress). */
void sc_poke(void) {
  lua_State *L = poke_target;
  if (L) lua_sethook(L, hook, LUA_MASKCOUNT, 1);
}

/* Before a step resume, handler call or load: limits on, usage carried over from earlier resumes. */
void sc_run_begin(struct sg_script *sc, lua_State *co, int kind, const struct usage *u) {
  struct run *r = &sc->run;
  r->co = co;
  r->kind = kind;
  r->u = u ? *u : (struct usage){0};
  r->u.mem_why = NULL; /* stays the usage's */
  r->doomed = kind == RUN_CLOSE;
  r->preempted = 0;
  r->mem_refused = 0;
  if (u && u->mem_why) {
    r->mem_refused = 1;
    snprintf(r->mem_why, sizeof r->mem_why, "%s", u->mem_why);
  }
  r->why[0] = 0;
  r->t0 = sg_mono_ns();
  r->cpu0 = 0;
  r->slice_end = r->t0 + SLICE_NS;
  sc->fail_ptr = NULL;
  /* No count hook at first: while one is set, Lua 5.4 calls into the hook machinery at every VM
   * instruction and every return (5-6 % of the instructions of an ordinary saga), and nearly every
   * run ends well inside its first slice. The watchdog's poke, in the last tick before the slice
   * ends, sets the hook; from there it checks every HOOK_EVERY instructions. An attempt (or handler
   * call) the hook has counted once is counted from the start of each later resume, so what goes
   * uncounted is at most the part of its first slice before the poke. Without the watchdog's timer,
   * and for __close handlers (stopped at the first check), the hook is set from the start. */
  if (kind == RUN_CLOSE || r->u.instr > 0 || !sg_watchdog_ready()) lua_sethook(co, hook, LUA_MASKCOUNT, HOOK_EVERY);
  else lua_sethook(co, NULL, 0, 0);
  poke_target = co;
  sg_watchdog_arm(r->slice_end);
}

lua_State *sg_script_enter(lua_State *L, lua_State *co) {
  void *ud;
  if (lua_getallocf(L, &ud) != sc_alloc || !((struct sg_script *)ud)->run.kind) return NULL;
  lua_sethook(co, lua_gethook(L), lua_gethookmask(L), lua_gethookcount(L));
  lua_State *prev = poke_target;
  poke_target = co;
  return prev;
}

void sg_script_leave(lua_State *L, lua_State *co, lua_State *prev) {
  void *ud;
  if (lua_getallocf(L, &ud) != sc_alloc || !((struct sg_script *)ud)->run.kind) return;
  poke_target = prev;
  /* co was poked while it ran: the checks go on where the run goes back to */
  if (lua_gethook(co) && !lua_gethook(L)) lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* After it: the usage is saved for the next resume; doomed/preempted/why stay readable. */
void sc_run_end(struct sg_script *sc, struct usage *u) {
  struct run *r = &sc->run;
  sg_watchdog_disarm();
  poke_target = NULL;
  lua_sethook(r->co, NULL, 0, 0);
  r->u.cpu_ns += resume_cpu_ns(r, sg_mono_ns());
  if (u) {
    char *why = u->mem_why;
    *u = r->u;
    u->mem_why = why;
    if (r->mem_refused && !u->mem_why) u->mem_why = sg_strdup(r->mem_why);
  }
  r->kind = RUN_NONE;
  r->co = NULL;
}

/* A new attempt or handler call on a coroutine handle: nothing used yet. */
void sc_usage_reset(struct sg_script *sc, int handle) {
  struct usage *u = sc_usage_of(sc, handle);
  free(u->mem_why);
  *u = (struct usage){0};
}

struct usage *sc_usage_of(struct sg_script *sc, int handle) {
  if (handle >= sc->nusage) {
    int n = sc->nusage ? sc->nusage : 64;
    while (n <= handle) n *= 2;
    sc->usage = sg_xrealloc(sc->usage, (size_t)n * sizeof *sc->usage);
    memset(sc->usage + sc->nusage, 0, (size_t)(n - sc->nusage) * sizeof *sc->usage);
    sc->nusage = n;
  }
  return &sc->usage[handle];
}

/* A run that was refused memory and then failed with "not enough memory" hit the memory limit. */
void sc_memory_verdict(struct sg_script *sc, const char *err) {
  struct run *r = &sc->run;
  if (!r->doomed && r->mem_refused && err && strstr(err, "not enough memory")) {
    memcpy(r->why, r->mem_why, sizeof r->why);
    r->doomed = 1;
  }
}

int sg_script_doomed(struct lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != sc_alloc) return 0; /* not a host's state (the spec module's caller) */
  return ((struct sg_script *)ud)->run.doomed;
}

int sg_script_preempt_point(struct lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != sc_alloc) return 0;
  struct run *r = &((struct sg_script *)ud)->run;
  if (r->co != L || r->doomed || (r->kind != RUN_STEP && r->kind != RUN_HANDLER) || !lua_isyieldable(L)) return 0;
  if (sg_mono_ns() < r->slice_end) return 0;
  r->preempted = 1;
  return 1;
}

int sg_script_on_run_thread(struct lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != sc_alloc) return 0;
  return ((struct sg_script *)ud)->run.co == L;
}

/* Resets a coroutine that did not finish cleanly. Resetting runs its pending __close handlers:
 * they are script code, so they run under a run that is doomed from the start (each is stopped
 * at the hook's first check). */
void sc_close_thread(struct sg_script *sc, lua_State *co) {
  if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) return; /* finished cleanly: nothing pending */
  struct run saved = sc->run; /* a drop can happen while a run is in progress (the engine's callbacks) */
  sc_run_begin(sc, co, RUN_CLOSE, NULL);
  lua_resetthread(co); /* runs pending to-be-closed variables, frees the stack */
  sc_run_end(sc, NULL);
  sc->run = saved;
  if (saved.kind) {
    poke_target = saved.co;
    sg_watchdog_arm(saved.slice_end);
  }
}
