/* script: lua_State, sandboxed loading, hot reload, definition versions and the coroutine runner. */
#include "script.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lstrpat.h"
#include "watchdog.h"
#include "util.h"

int luaopen_saga_core(lua_State *L);
/* linked in statically by the binary; the loadable module finds cjson on package.cpath instead */
int luaopen_cjson(lua_State *L) __attribute__((weak));

/* the lua/ files compiled into the binary (cmake/embed_lua.cmake) */
struct sg_lua_module { const char *name, *chunkname, *src; size_t len; };
extern const struct sg_lua_module sg_lua_modules[];

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
};

/* What one attempt (or handler call) has used so far, kept between the resumes of its coroutine. */
struct usage {
  int64_t cpu_ns;  /* time spent running it */
  int64_t instr;   /* VM instructions, counted HOOK_EVERY at a time */
  int64_t mem;     /* bytes allocated net of what was freed while it ran */
};

/* The one Lua run in progress (the loop thread runs one at a time). */
struct run {
  lua_State *co;        /* the thread resumed (or the main thread for a load) */
  int kind;             /* enum run_kind, RUN_NONE when nothing runs */
  int64_t t0;           /* this resume began (monotonic ns) */
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
  struct defent **defs; int ndefs, capdefs; /* every version ever loaded, never freed before the state */
  struct ev_loop *loop;
  ev_timer watch;          /* periodic rescan (the fallback) */
  ev_io notify;            /* inotify on the directory */
  int notify_fd;           /* its fd, -1 = none */
  ev_timer settle;         /* rescan shortly after an inotify event */
};

/* ---------------------------------------------------------------------------------------------- */
/* the Lua state */

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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
  return kind == RUN_HANDLER ? "this handler call" : kind == RUN_LOAD ? "the file's top-level code" : "this step attempt";
}

/* Marks the run doomed with "where: message". where is taken from L when given. */
static void doom(struct sg_script *sc, lua_State *L, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
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

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
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
    int over_run = (r->kind == RUN_STEP || r->kind == RUN_HANDLER || r->kind == RUN_LOAD) && sc->cfg.run_mem_limit &&
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

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* The one protected-call helper: calls the function under nargs arguments with a traceback handler.
 * On error, leaves nothing on the stack and copies the message to e. */
static int pcall(lua_State *L, int nargs, int nres, struct sg_error *e) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    sg_errorf(e, SG_E_INTERNAL, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object is not a string)");
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

static int ref(struct sg_script *sc, lua_State *L) {
  sc->refs++;
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

#define HANDLER_POOL_MAX 64
/* an idle handler coroutine, kept for the next command (not counted as live) */
#define PUSH_POOL(sc, h) do {                                                         \
    if ((sc)->npool == (sc)->cappool) {                                               \
      (sc)->cappool = (sc)->cappool ? (sc)->cappool * 2 : 8;                          \
      (sc)->pool = sg_xrealloc((sc)->pool, (size_t)(sc)->cappool * sizeof *(sc)->pool); \
    }                                                                                 \
    (sc)->pool[(sc)->npool++] = (h);                                                  \
    (sc)->refs--;                                                                     \
  } while (0)

static void unref(struct sg_script *sc, int r) {
  if (r <= 0) return;
  sc->refs--;
  luaL_unref(sc->L, LUA_REGISTRYINDEX, r);
}

/* runtime function by name onto the stack */
static void push_runtime(struct sg_script *sc, lua_State *L, const char *fn) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, sc->runtime_ref);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
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
  int64_t now = mono_ns(), ran = now - r->t0;
  /* only the step's (or handler's) own coroutine is yielded: the runner resumes it */
  int yieldable = L == r->co && (r->kind == RUN_STEP || r->kind == RUN_HANDLER) && lua_isyieldable(L);
  if (!r->doomed && r->kind != RUN_CLOSE) {
    if (sc->cfg.instr_budget > 0 && r->u.instr > sc->cfg.instr_budget)
      doom(sc, L, "instruction budget exceeded: %s ran %" PRId64 " VM instructions (an endless loop?); "
           "--lua-budget N raises the limit", run_what(r->kind), r->u.instr);
    else if (sc->cfg.cpu_limit_ms > 0 && r->u.cpu_ns + ran > sc->cfg.cpu_limit_ms * 1000000)
      doom(sc, L, "CPU limit exceeded: %s ran for %" PRId64 " ms (an endless loop?); --lua-step-cpu D raises the limit",
           run_what(r->kind), (r->u.cpu_ns + ran) / 1000000);
    else if (!yieldable && ran > NOYIELD_NS)
      doom(sc, L, r->kind == RUN_LOAD
           ? "the file's top-level code ran for over %lld ms (an endless loop?): at load a file may only define sagas and handlers"
           : "ran for over %lld ms where it cannot give the loop back (inside a table.sort comparator, a string.gsub "
             "callback, a metamethod called from C or an error handler)", NOYIELD_NS / 1000000);
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

/* The thread the watchdog's signal pokes (the one in the current run), NULL between runs. */
static lua_State *volatile poke_target;

/* In the signal handler: the hook runs at the next VM instruction (after the C call in progress). */
static void poke(void) {
  lua_State *L = poke_target;
  if (L) lua_sethook(L, hook, LUA_MASKCOUNT, 1);
}

/* Before a step resume, handler call or load: limits on, usage carried over from earlier resumes. */
static void run_begin(struct sg_script *sc, lua_State *co, int kind, const struct usage *u) {
  struct run *r = &sc->run;
  r->co = co;
  r->kind = kind;
  r->u = u ? *u : (struct usage){0};
  r->doomed = kind == RUN_CLOSE;
  r->preempted = 0;
  r->mem_refused = 0;
  r->why[0] = 0;
  r->t0 = mono_ns();
  r->slice_end = r->t0 + SLICE_NS;
  sc->fail_ptr = NULL;
  lua_sethook(co, hook, LUA_MASKCOUNT, HOOK_EVERY);
  poke_target = co;
  sg_watchdog_arm(r->slice_end);
}

/* After it: the usage is saved for the next resume; doomed/preempted/why stay readable. */
static void run_end(struct sg_script *sc, struct usage *u) {
  struct run *r = &sc->run;
  sg_watchdog_disarm();
  poke_target = NULL;
  lua_sethook(r->co, NULL, 0, 0);
  r->u.cpu_ns += mono_ns() - r->t0;
  if (u) *u = r->u;
  r->kind = RUN_NONE;
  r->co = NULL;
}

static struct usage *usage_of(struct sg_script *sc, int handle) {
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
static void memory_verdict(struct sg_script *sc, const char *err) {
  struct run *r = &sc->run;
  if (!r->doomed && r->mem_refused && err && strstr(err, "not enough memory")) {
    memcpy(r->why, r->mem_why, sizeof r->why);
    r->doomed = 1;
  }
}

int sg_script_doomed(struct lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != l_alloc) return 0; /* not a host's state (the spec module's caller) */
  return ((struct sg_script *)ud)->run.doomed;
}

static int open_state(struct sg_script *sc, struct sg_error *e) {
  lua_State *L = lua_newstate(l_alloc, sc);
  if (!L) return sg_errorf(e, SG_E_INTERNAL, "cannot create the Lua state (memory limit too low?)");
  sc->L = L;
  luaL_openlibs(L);
  sg_strpat_install(L); /* pattern matching with bounded work, for scripts and the runtime alike */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_saga_core);
  lua_setfield(L, -2, "saga.core");
  if (luaopen_cjson) {
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
  }
  lua_pop(L, 1);
  /* the embedded runtime, under its real chunk names */
  for (const struct sg_lua_module *m = sg_lua_modules; m->name; m++) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    if (luaL_loadbufferx(L, m->src, m->len, m->chunkname, "t") != LUA_OK)
      return sg_errorf(e, SG_E_INTERNAL, "embedded %s: %s", m->chunkname, lua_tostring(L, -1));
    lua_setfield(L, -2, m->name);
    lua_pop(L, 1);
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, "saga");
  if (pcall(L, 1, 1, e) < 0) return -1;
  sc->runtime_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  sc->ctxs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* definitions */

static int get_int_field(lua_State *L, int idx, const char *k, int64_t dflt) {
  lua_getfield(L, idx, k);
  int64_t v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : dflt);
  lua_pop(L, 1);
  return (int)v;
}

static int64_t get_i64_field(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  int64_t v = (int64_t)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void read_retry(lua_State *L, int idx, const char *k, struct sg_retry *r) {
  lua_getfield(L, idx, k);
  int t = lua_gettop(L);
  r->attempts = get_int_field(L, t, "attempts", 1);
  lua_getfield(L, t, "backoff");
  r->exponential = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "exponential") == 0;
  lua_pop(L, 1);
  r->initial_ms = get_i64_field(L, t, "initial_ms");
  r->max_ms = get_i64_field(L, t, "max_ms");
  lua_getfield(L, t, "multiplier");
  r->multiplier = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 2;
  lua_pop(L, 1);
  lua_getfield(L, t, "jitter");
  r->jitter = lua_toboolean(L, -1);
  lua_pop(L, 2);
}

/* Builds the C view of the definition table at the top of the stack. */
static struct defent *build_def(lua_State *L, const char *hash) {
  int t = lua_gettop(L);
  struct defent *de = sg_xcalloc(1, sizeof *de);
  struct sg_def *d = &de->def;
  lua_getfield(L, t, "name");
  d->type = sg_strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, t, "file");
  d->file = sg_strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  d->hash = sg_strdup(hash);
  d->timeout_ms = get_i64_field(L, t, "timeout_ms");
  lua_getfield(L, t, "steps");
  int st = lua_gettop(L);
  d->nsteps = (int)luaL_len(L, st);
  d->steps = sg_xcalloc((size_t)d->nsteps, sizeof *d->steps);
  for (int i = 0; i < d->nsteps; i++) {
    lua_rawgeti(L, st, i + 1);
    int s = lua_gettop(L);
    struct sg_def_step *ds = &d->steps[i];
    lua_getfield(L, s, "name");
    ds->name = sg_strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, s, "compensate");
    ds->has_compensate = lua_isfunction(L, -1);
    lua_pop(L, 1);
    ds->timeout_ms = get_i64_field(L, s, "timeout_ms");
    read_retry(L, s, "retry", &ds->retry);
    read_retry(L, s, "compensate_retry", &ds->comp_retry);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return de;
}

static void free_def(struct defent *de) {
  for (int i = 0; i < de->def.nsteps; i++) free(de->def.steps[i].name);
  free(de->def.steps);
  free(de->def.type); free(de->def.hash); free(de->def.file);
  free(de);
}

static struct defent *find_def(struct sg_script *sc, const char *type, const char *hash) {
  for (int i = sc->ndefs - 1; i >= 0; i--) {
    struct defent *de = sc->defs[i];
    if (strcmp(de->def.type, type) != 0) continue;
    if (hash ? strcmp(de->def.hash, hash) == 0 : de->current) return de;
  }
  return NULL;
}

/* Registers the C views of every saga in the load at the top of the stack. */
static void register_defs(struct sg_script *sc, const char *hash, int make_current) {
  lua_State *L = sc->L;
  int ld = lua_gettop(L);
  lua_getfield(L, ld, "order");
  int order = lua_gettop(L);
  lua_getfield(L, ld, "defs");
  int defs = lua_gettop(L);
  int n = (int)luaL_len(L, order);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, order, i);
    const char *type = lua_tostring(L, -1);
    struct defent *de = find_def(sc, type, hash);
    if (!de) {
      lua_getfield(L, defs, type);
      de = build_def(L, hash);
      lua_pop(L, 1);
      if (sc->ndefs == sc->capdefs) {
        sc->capdefs = sc->capdefs ? sc->capdefs * 2 : 16;
        sc->defs = sg_xrealloc(sc->defs, (size_t)sc->capdefs * sizeof *sc->defs);
      }
      sc->defs[sc->ndefs++] = de;
    }
    if (make_current) {
      for (int j = 0; j < sc->ndefs; j++)
        if (strcmp(sc->defs[j]->def.type, type) == 0) sc->defs[j]->current = 0;
      de->current = 1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}

/* Types a file defines in its current version stop taking new starts. */
static void retire_file(struct sg_script *sc, const char *path) {
  for (int i = 0; i < sc->ndefs; i++)
    if (sc->defs[i]->current && strcmp(sc->defs[i]->def.file, path) == 0) sc->defs[i]->current = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* loading */

/* Runs runtime.load(file, source, hash, historic); on success leaves the load table on the stack. */
static int load_source(struct sg_script *sc, const char *file, const char *source, const char *hash, int historic,
                       struct sg_error *e) {
  lua_State *L = sc->L;
  push_runtime(sc, L, "load");
  lua_pushstring(L, file);
  lua_pushstring(L, source);
  lua_pushstring(L, hash);
  lua_pushboolean(L, historic);
  run_begin(sc, L, RUN_LOAD, NULL);
  int rc = pcall(L, 4, 2, e);
  run_end(sc, NULL);
  memory_verdict(sc, rc < 0 ? e->msg : lua_isnil(L, -2) ? lua_tostring(L, -1) : NULL);
  if (sc->run.doomed) {
    /* a limit stopped the file's top-level code: that is the load error, whatever got caught */
    if (rc == 0) lua_pop(L, 2);
    sg_errorf(e, SG_E_INVALID, "%s", sc->run.why);
    sc->run.doomed = 0;
    return -1;
  }
  if (rc < 0) return -1;
  if (lua_isnil(L, -2)) {
    sg_errorf(e, SG_E_INVALID, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "load failed");
    lua_pop(L, 2);
    return -1;
  }
  lua_pop(L, 1);
  return 0;
}

static void version_of(const char *source, size_t len, char out[17]) {
  char full[65];
  sg_sha256_hex(source, len, full);
  memcpy(out, full, 16);
  out[16] = 0;
}

static void notify_services(struct sg_script *sc) {
  if (!sc->hooks.on_services) return;
  lua_State *L = sc->L;
  push_runtime(sc, L, "services");
  struct sg_error e = {0};
  if (pcall(L, 0, 1, &e) < 0) return;
  int n = (int)luaL_len(L, -1);
  const char **names = sg_xcalloc((size_t)n + 1, sizeof *names);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1 - i, i + 1);
    names[i] = lua_tostring(L, -1);
  }
  sc->hooks.on_services(sc->hooks.ud, names, n);
  lua_pop(L, n + 1);
  free(names);
}

/* Hands the saga.breaker settings of the load at the top of the stack to the host. */
static void report_breakers(struct sg_script *sc) {
  lua_State *L = sc->L;
  lua_getfield(L, -1, "breakers");
  if (lua_istable(L, -1) && sc->hooks.on_breaker) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      int t = lua_gettop(L);
      struct sg_breaker_config c;
      lua_getfield(L, t, "failure_rate");
      c.failure_rate = lua_tonumber(L, -1);
      lua_getfield(L, t, "min_calls");
      c.min_calls = (int)lua_tointeger(L, -1);
      lua_getfield(L, t, "window_ms");
      c.window_ms = lua_tointeger(L, -1);
      lua_getfield(L, t, "open_ms");
      c.open_ms = lua_tointeger(L, -1);
      lua_pop(L, 4);
      sc->hooks.on_breaker(sc->hooks.ud, lua_tostring(L, -2), &c);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* Loads one file; on success it becomes the current version of its sagas and handlers. */
static int load_file(struct sg_script *sc, struct sfile *f) {
  struct sg_error e = {0};
  size_t len;
  char *src = sg_read_file(f->path, &len, &e);
  if (!src) {
    free(f->error);
    f->error = sg_strdup(e.msg);
    return -1;
  }
  char hash[17];
  version_of(src, len, hash);
  if (f->hash && strcmp(f->hash, hash) == 0 && !f->error) { free(src); return 0; }
  if (memchr(src, 0, len) || (len > 0 && src[0] == 0x1b)) {
    free(f->error);
    f->error = sg_asprintf("%s: not a text script (binary chunks are not loaded)", f->path);
    sg_err("script %s", f->error);
    free(src);
    return -1;
  }
  if (load_source(sc, f->path, src, hash, 0, &e) < 0) {
    free(f->error);
    f->error = sg_strdup(e.msg);
    sg_err("script %s failed to load%s: %s", f->path, f->hash ? " (its previous version stays in use)" : "", e.msg);
    free(src);
    return -1;
  }
  if (sc->hooks.on_version && sc->hooks.on_version(sc->hooks.ud, hash, f->path, src, &e) < 0) {
    lua_pop(sc->L, 1);
    free(f->error);
    f->error = sg_asprintf("%s: cannot record this version: %s", f->path, e.msg);
    free(src);
    return -1;
  }
  free(src);
  /* swap: commit the load in the runtime, then make its definitions current */
  retire_file(sc, f->path);
  push_runtime(sc, sc->L, "commit");
  lua_pushvalue(sc->L, -2);
  if (pcall(sc->L, 1, 0, &e) < 0) sg_err("commit %s: %s", f->path, e.msg);
  register_defs(sc, hash, 1);
  report_breakers(sc);
  lua_pop(sc->L, 1);
  sg_info("loaded %s (version %s)%s", f->path, hash, f->hash ? " replacing the previous version" : "");
  free(f->hash);
  f->hash = sg_strdup(hash);
  free(f->error);
  f->error = NULL;
  return 0;
}

static int has_suffix(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int sg_script_scan(struct sg_script *sc) {
  DIR *d = opendir(sc->dir);
  if (!d) {
    sg_err("script directory %s: %s", sc->dir, strerror(errno));
    return 1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.' || !has_suffix(de->d_name, ".lua")) continue;
    if (n == cap) { cap = cap ? cap * 2 : 16; names = sg_xrealloc(names, cap * sizeof *names); }
    names[n++] = sg_strdup(de->d_name);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_names);
  for (int i = 0; i < sc->nfiles; i++) sc->files[i].seen = 0;
  int changed = 0;
  for (size_t i = 0; i < n; i++) {
    char *path = sg_asprintf("%s/%s", sc->dir, names[i]);
    free(names[i]);
    struct sfile *f = NULL;
    for (int j = 0; j < sc->nfiles; j++)
      if (strcmp(sc->files[j].path, path) == 0) f = &sc->files[j];
    if (!f) {
      if (sc->nfiles == sc->capfiles) {
        sc->capfiles = sc->capfiles ? sc->capfiles * 2 : 16;
        sc->files = sg_xrealloc(sc->files, (size_t)sc->capfiles * sizeof *sc->files);
      }
      f = &sc->files[sc->nfiles++];
      memset(f, 0, sizeof *f);
      f->path = path;
    } else {
      free(path);
    }
    f->seen = 1;
    struct stat st;
    if (stat(f->path, &st) < 0) continue;
    if (f->hash || f->error) {
      if (st.st_mtim.tv_sec == f->mtime.tv_sec && st.st_mtim.tv_nsec == f->mtime.tv_nsec &&
          st.st_size == f->size && st.st_ino == f->ino)
        continue;
    }
    f->mtime = st.st_mtim;
    f->size = st.st_size;
    f->ino = st.st_ino;
    load_file(sc, f);
    changed = 1;
  }
  free(names);
  /* files that disappeared: no new starts of their sagas; running instances keep their version */
  for (int j = 0; j < sc->nfiles;) {
    struct sfile *f = &sc->files[j];
    if (f->seen) { j++; continue; }
    sg_info("script %s removed: its sagas take no new starts; running instances finish", f->path);
    retire_file(sc, f->path);
    push_runtime(sc, sc->L, "remove");
    lua_pushstring(sc->L, f->path);
    struct sg_error e = {0};
    pcall(sc->L, 1, 0, &e);
    free(f->path); free(f->hash); free(f->error);
    sc->files[j] = sc->files[--sc->nfiles];
    changed = 1;
  }
  if (changed) notify_services(sc);
  int errors = 0;
  for (int j = 0; j < sc->nfiles; j++) errors += sc->files[j].error != NULL;
  return errors;
}

static void on_watch(struct ev_loop *loop, ev_timer *w, int revents) { sg_script_scan(w->data); }

/* inotify said something changed in the directory: rescan a moment later, so that a file still being
 * written (or an editor's write-then-rename) is read once, whole */
static void on_notify(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_script *sc = w->data;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  while (read(w->fd, buf, sizeof buf) > 0) {}
  ev_timer_stop(loop, &sc->settle);
  ev_timer_set(&sc->settle, 0.05, 0.);
  ev_timer_start(loop, &sc->settle);
}

void sg_script_watch(struct sg_script *sc, struct ev_loop *loop, double interval) {
  sc->loop = loop;
  /* the periodic rescan is the fallback for file systems without inotify (NFS, some containers) */
  ev_timer_init(&sc->watch, on_watch, interval, interval);
  sc->watch.data = sc;
  ev_timer_start(loop, &sc->watch);
  ev_unref(loop); /* watching alone does not keep the host running */
  ev_timer_init(&sc->settle, on_watch, 0.05, 0.);
  sc->settle.data = sc;
  sc->notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (sc->notify_fd >= 0 &&
      inotify_add_watch(sc->notify_fd, sc->dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                                 IN_DELETE | IN_ATTRIB | IN_MODIFY) >= 0) {
    ev_io_init(&sc->notify, on_notify, sc->notify_fd, EV_READ);
    sc->notify.data = sc;
    ev_io_start(loop, &sc->notify);
    ev_unref(loop);
  } else {
    sg_warn("script directory %s: no inotify (%s); changes are picked up by a rescan every %.2f s", sc->dir,
            strerror(errno), interval);
    if (sc->notify_fd >= 0) close(sc->notify_fd);
    sc->notify_fd = -1;
  }
}

void sg_script_unwatch(struct sg_script *sc) {
  if (!sc->loop) return;
  ev_ref(sc->loop);
  ev_timer_stop(sc->loop, &sc->watch);
  ev_timer_stop(sc->loop, &sc->settle);
  if (sc->notify_fd >= 0) {
    ev_ref(sc->loop);
    ev_io_stop(sc->loop, &sc->notify);
    close(sc->notify_fd);
    sc->notify_fd = -1;
  }
  sc->loop = NULL;
}

int sg_script_print_errors(struct sg_script *sc, FILE *out) {
  int n = 0;
  for (int i = 0; i < sc->nfiles; i++)
    if (sc->files[i].error) { fprintf(out, "%s\n", sc->files[i].error); n++; }
  return n;
}

int sg_script_type_count(struct sg_script *sc) {
  int n = 0;
  for (int i = 0; i < sc->ndefs; i++) n += sc->defs[i]->current;
  return n;
}

char *sg_script_definitions_json(struct sg_script *sc) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"definitions\":[");
  int first = 1;
  for (int i = 0; i < sc->ndefs; i++) {
    struct sg_def *d = &sc->defs[i]->def;
    if (!sc->defs[i]->current) continue;
    sg_buf_adds(&b, first ? "{" : ",{");
    first = 0;
    sg_buf_adds(&b, "\"type\":"); sg_buf_add_json_str(&b, d->type);
    sg_buf_adds(&b, ",\"version\":"); sg_buf_add_json_str(&b, d->hash);
    sg_buf_adds(&b, ",\"file\":"); sg_buf_add_json_str(&b, d->file);
    sg_buf_adds(&b, ",\"steps\":[");
    for (int s = 0; s < d->nsteps; s++) {
      if (s) sg_buf_adds(&b, ",");
      sg_buf_add_json_str(&b, d->steps[s].name);
    }
    sg_buf_adds(&b, "]}");
  }
  sg_buf_adds(&b, "],\"files\":[");
  for (int i = 0; i < sc->nfiles; i++) {
    struct sfile *f = &sc->files[i];
    sg_buf_adds(&b, i ? ",{" : "{");
    sg_buf_adds(&b, "\"file\":"); sg_buf_add_json_str(&b, f->path);
    sg_buf_adds(&b, ",\"version\":"); sg_buf_add_json_str(&b, f->hash);
    sg_buf_printf(&b, ",\"ok\":%s,\"error\":", f->error ? "false" : "true");
    sg_buf_add_json_str(&b, f->error);
    sg_buf_adds(&b, "}");
  }
  sg_buf_adds(&b, "],\"services\":[");
  lua_State *L = sc->L;
  push_runtime(sc, L, "services");
  struct sg_error e = {0};
  if (pcall(L, 0, 1, &e) == 0) {
    int n = (int)luaL_len(L, -1);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      if (i > 1) sg_buf_adds(&b, ",");
      sg_buf_add_json_str(&b, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  sg_buf_adds(&b, "]}");
  return sg_buf_steal(&b);
}

/* ---------------------------------------------------------------------------------------------- */
/* the runner */

static const struct sg_def *r_def_get(void *ud, const char *type, const char *hash, struct sg_error *e) {
  struct sg_script *sc = ud;
  struct defent *de = find_def(sc, type, hash);
  if (de) return &de->def;
  if (!hash) {
    sg_errorf(e, SG_E_NOTFOUND, "unknown saga type '%s'", type);
    return NULL;
  }
  /* an instance runs on a version no file has any more: load it from the stored source */
  char *file = NULL;
  char *src = sc->hooks.fetch_source ? sc->hooks.fetch_source(sc->hooks.ud, hash, &file) : NULL;
  if (!src) {
    free(file);
    sg_errorf(e, SG_E_NOTFOUND, "version %s of saga type '%s' is not stored", hash, type);
    return NULL;
  }
  int rc = load_source(sc, file ? file : "?", src, hash, 1, e);
  free(src);
  free(file);
  if (rc < 0) return NULL;
  register_defs(sc, hash, 0);
  lua_pop(sc->L, 1);
  de = find_def(sc, type, hash);
  if (!de) sg_errorf(e, SG_E_NOTFOUND, "version %s does not define saga type '%s'", hash, type);
  return de ? &de->def : NULL;
}

static char *dup_at(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER ? sg_strdup(lua_tostring(L, idx)) : NULL;
}

/* Reads what a resume of co produced into out; on finish the coroutine is left for drop(). */
static int collect(struct sg_script *sc, lua_State *co, int status, int nres, struct sg_run_out *out) {
  memset(out, 0, sizeof *out);
  int base = lua_gettop(co) - nres + 1;
  if (status == LUA_OK && nres >= 2) {
    const char *kind = lua_tostring(co, base);
    if (kind && strcmp(kind, "done") != 0) memory_verdict(sc, lua_tostring(co, base + 1));
  } else if (status != LUA_OK && status != LUA_YIELD) {
    memory_verdict(sc, lua_tostring(co, -1));
  }
  if (sc->run.doomed) {
    /* a limit stopped it, whatever the coroutine did on the way out: retryable, like a timeout */
    out->result = SG_RUN_ERROR;
    out->retryable = 1;
    out->error = sg_strdup(sc->run.why);
    if (status == LUA_OK) lua_pop(co, nres);
    return 0;
  }
  if (status == LUA_YIELD && sc->run.preempted) {
    out->result = SG_RUN_PREEMPTED;
    return 0;
  }
  if (status == LUA_YIELD) {
    out->result = SG_RUN_OP;
    out->op = nres > 0 ? dup_at(co, base) : NULL;
    if (nres > 1) out->a = dup_at(co, base + 1);
    if (nres > 2) out->b = dup_at(co, base + 2);
    if (nres > 3) out->c = dup_at(co, base + 3);
    if (nres > 4) out->d = dup_at(co, base + 4);
    lua_pop(co, nres);
    if (!out->op) { out->result = SG_RUN_ERROR; out->error = sg_strdup("coroutine.yield is not available in steps"); }
    return 0;
  }
  if (status == LUA_OK) {
    const char *kind = lua_tostring(co, base);
    if (kind && strcmp(kind, "done") == 0) {
      out->result = SG_RUN_DONE;
      out->data = dup_at(co, base + 1);
    } else {
      out->result = kind && strcmp(kind, "fail") == 0 ? SG_RUN_FAIL : SG_RUN_ERROR;
      out->error = dup_at(co, base + 1);
      out->retryable = lua_toboolean(co, base + 2);
      if (!out->error) out->error = sg_strdup("step failed");
      const char *tb = lua_tostring(co, base + 3);
      if (tb && *tb) sg_debug("%s%s", out->error, tb);
    }
    lua_pop(co, nres);
    return 0;
  }
  /* an error that escaped the trampoline (memory in the trampoline itself) */
  out->result = SG_RUN_ERROR;
  out->retryable = 1;
  const char *msg = lua_tostring(co, -1);
  out->error = sg_strdup(msg ? msg : "step failed (error object is not a string)");
  lua_settop(co, 0);
  return 0;
}

static void r_drop(void *ud, int handle);

/* The coroutine behind a runner handle, or NULL. */
static lua_State *thread_of(struct sg_script *sc, int handle) {
  lua_rawgeti(sc->L, LUA_REGISTRYINDEX, handle);
  lua_State *co = lua_tothread(sc->L, -1);
  lua_pop(sc->L, 1);
  return co;
}

/* Resumes co (handle h) with the nargs values on its stack, under the script limits, and reads the
 * outcome. The attempt's usage so far comes from and goes back to the handle's record. */
static int run_co(struct sg_script *sc, int h, lua_State *co, int nargs, struct sg_run_out *out) {
  int nres = 0;
  run_begin(sc, co, RUN_STEP, usage_of(sc, h));
  int status = lua_resume(co, sc->L, nargs, &nres);
  run_end(sc, usage_of(sc, h));
  return collect(sc, co, status, nres, out);
}

/* Starts a step on the saga's coroutine. A coroutine that finished its last step cleanly is reused
 * with the same ctx (its ctx.data is exactly what was persisted): no new thread, no JSON decoding of
 * input and data. Anything else (first step, after a failure, eviction or restart) gets a new
 * coroutine and a ctx built from the stored input and data. */
static int r_start(void *ud, const struct sg_def *d, const struct sg_saga_row *r, int *handle, struct sg_run_out *out,
                   struct sg_error *e) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  int top = lua_gettop(L);
  lua_State *co = NULL;
  int h = *handle;
  if (h > 0) {
    co = thread_of(sc, h);
    if (!co || lua_status(co) != LUA_OK || lua_gettop(co) != 0) { r_drop(sc, h); h = 0; co = NULL; }
  }
  *handle = 0;
  int fresh = h == 0;
  if (fresh) {
    co = lua_newthread(L);
    h = ref(sc, L); /* anchors the thread */
  }
  *usage_of(sc, h) = (struct usage){0}; /* a new attempt */
  /* trampoline, step function, ctx */
  push_runtime(sc, co, "run_step");
  push_runtime(sc, co, "version");
  lua_pushstring(co, d->hash);
  if (lua_pcall(co, 1, 1, 0) != LUA_OK || !lua_istable(co, -1)) {
    r_drop(sc, h);
    lua_settop(L, top);
    return sg_errorf(e, SG_E_INTERNAL, "version %s of %s is not loaded", d->hash, d->type);
  }
  lua_getfield(co, -1, "defs");
  lua_getfield(co, -1, d->type);
  lua_getfield(co, -1, "steps");
  lua_rawgeti(co, -1, r->step + 1);
  lua_getfield(co, -1, r->phase == SG_PH_ACTION ? "action" : "compensate");
  lua_replace(co, -6);
  lua_pop(co, 4); /* stack: run_step, fn */
  if (!lua_isfunction(co, -1)) {
    r_drop(sc, h);
    lua_settop(L, top);
    return sg_errorf(e, SG_E_INTERNAL, "%s step %d has no %s function", d->type, r->step + 1,
                     sg_phase_name(r->phase));
  }
  lua_rawgeti(co, LUA_REGISTRYINDEX, sc->ctxs_ref);
  lua_rawgeti(co, -1, h);
  if (!fresh && lua_istable(co, -1)) {
    lua_remove(co, -2);
    lua_pushstring(co, d->steps[r->step].name);
    lua_setfield(co, -2, "step");
    lua_pushstring(co, sg_phase_name(r->phase));
    lua_setfield(co, -2, "phase");
    lua_pushinteger(co, r->attempt);
    lua_setfield(co, -2, "attempt");
  } else {
    lua_pop(co, 1);
    push_runtime(sc, co, "new_ctx");
    lua_pushstring(co, r->id);
    lua_pushstring(co, r->type);
    lua_pushstring(co, r->input ? r->input : "{}");
    lua_pushstring(co, r->data ? r->data : "{}");
    lua_pushstring(co, d->steps[r->step].name);
    lua_pushstring(co, sg_phase_name(r->phase));
    lua_pushinteger(co, r->attempt);
    if (lua_pcall(co, 7, 1, 0) != LUA_OK) { /* out of memory, or a broken runtime */
      sg_errorf(e, SG_E_INTERNAL, "cannot create the step's ctx: %s", lua_tostring(co, -1) ? lua_tostring(co, -1) : "?");
      r_drop(sc, h);
      lua_settop(L, top);
      return -1;
    }
    lua_pushvalue(co, -1);
    lua_rawseti(co, -3, h); /* ctxs[h] = ctx */
    lua_remove(co, -2);
  }
  lua_settop(L, top);
  *handle = h;
  return run_co(sc, h, co, 2, out);
}

static int r_resume(void *ud, int handle, int ok, const char *result, struct sg_run_out *out) {
  struct sg_script *sc = ud;
  lua_State *co = thread_of(sc, handle);
  if (!co || lua_status(co) != LUA_YIELD) {
    memset(out, 0, sizeof *out);
    out->result = SG_RUN_ERROR;
    out->error = sg_strdup("internal: resume of a coroutine that is not suspended");
    return 0;
  }
  lua_pushboolean(co, ok);
  lua_pushstring(co, result);
  return run_co(sc, handle, co, 2, out);
}

/* Continues a step the hook preempted, for one more slice. */
static int r_cont(void *ud, int handle, struct sg_run_out *out) {
  struct sg_script *sc = ud;
  lua_State *co = thread_of(sc, handle);
  if (!co || lua_status(co) != LUA_YIELD) {
    memset(out, 0, sizeof *out);
    out->result = SG_RUN_ERROR;
    out->error = sg_strdup("internal: continue of a coroutine that is not suspended");
    return 0;
  }
  return run_co(sc, handle, co, 0, out);
}

/* Resets a coroutine that did not finish cleanly. Resetting runs its pending __close handlers:
 * they are script code, so they run under a run that is doomed from the start (each is stopped
 * at the hook's first check). */
static void close_thread(struct sg_script *sc, lua_State *co) {
  if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) return; /* finished cleanly: nothing pending */
  struct run saved = sc->run; /* a drop can happen while a run is in progress (the engine's callbacks) */
  run_begin(sc, co, RUN_CLOSE, NULL);
  lua_resetthread(co); /* runs pending to-be-closed variables, frees the stack */
  run_end(sc, NULL);
  sc->run = saved;
  if (saved.kind) {
    poke_target = saved.co;
    sg_watchdog_arm(saved.slice_end);
  }
}

static void r_drop(void *ud, int handle) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  lua_State *co = thread_of(sc, handle);
  if (co) close_thread(sc, co);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sc->ctxs_ref);
  lua_pushnil(L);
  lua_rawseti(L, -2, handle);
  lua_pop(L, 1);
  unref(sc, handle);
}

/* An error reply for a handler that failed in the runtime itself or was stopped by a limit. */
static void handler_error(char **status, char **body, const char *msg, int retryable) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"error\":");
  sg_buf_add_json_str(&b, msg);
  sg_buf_adds(&b, retryable ? ",\"retryable\":true}" : ",\"retryable\":false}");
  *status = sg_strdup("error");
  *body = sg_buf_steal(&b);
}

/* Runs (a slice of) a handler coroutine. Returns 1 if the hook preempted it (the handle stays
 * live), 0 when it is over with *status and *body set (the coroutine goes back to the pool, or is
 * closed if it did not end cleanly). */
static int run_handler(struct sg_script *sc, int h, lua_State *co, int nargs, char **status, char **body) {
  int nres = 0;
  run_begin(sc, co, RUN_HANDLER, usage_of(sc, h));
  int rc = lua_resume(co, sc->L, nargs, &nres);
  run_end(sc, usage_of(sc, h));
  if (rc == LUA_OK && nres >= 2 && lua_tostring(co, -nres) && strcmp(lua_tostring(co, -nres), "error") == 0)
    memory_verdict(sc, lua_tostring(co, -nres + 1));
  else if (rc != LUA_OK && rc != LUA_YIELD)
    memory_verdict(sc, lua_tostring(co, -1));
  if (!sc->run.doomed && rc == LUA_YIELD && sc->run.preempted) return 1;
  if (sc->run.doomed) {
    handler_error(status, body, sc->run.why, 1);
  } else if (rc == LUA_OK && nres >= 2) {
    *status = sg_strdup(lua_tostring(co, -nres));
    *body = sg_strdup(lua_tostring(co, -nres + 1));
  } else if (rc == LUA_YIELD) {
    handler_error(status, body, "a handler cannot yield (ctx operations are for saga steps)", 0);
  } else {
    /* the runtime itself failed (memory): an error reply the saga may retry */
    const char *msg = lua_tostring(co, -1);
    handler_error(status, body, msg ? msg : "handler failed", 1);
  }
  if (!*status || !*body) {
    free(*status); free(*body);
    handler_error(status, body, "handler failed", 1);
  }
  if (rc == LUA_OK && !sc->run.doomed && sc->npool < HANDLER_POOL_MAX) {
    lua_settop(co, 0);
    PUSH_POOL(sc, h);
  } else {
    r_drop(sc, h);
  }
  return 0;
}

static int r_handle(void *ud, const struct sg_msg *m, int *handle, char **status, char **body) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  *handle = 0;
  char service[128];
  const char *rk = m->routing_key ? m->routing_key : "";
  const char *dot = strchr(rk, '.');
  size_t n = dot ? (size_t)(dot - rk) : strlen(rk);
  if (n >= sizeof service) n = sizeof service - 1;
  memcpy(service, rk, n);
  service[n] = 0;
  const char *command = m->type && *m->type ? m->type : (dot ? dot + 1 : "");
  /* a handler coroutine: an idle one from the pool, or a new one */
  int h;
  lua_State *co;
  if (sc->npool) {
    h = sc->pool[--sc->npool];
    sc->refs++;
    co = thread_of(sc, h);
  } else {
    co = lua_newthread(L);
    h = ref(sc, L);
  }
  *usage_of(sc, h) = (struct usage){0};
  push_runtime(sc, co, "handle");
  lua_pushstring(co, service);
  lua_pushstring(co, command);
  lua_pushstring(co, m->body ? m->body : "{}");
  lua_pushstring(co, m->message_id);
  lua_pushstring(co, m->saga_id);
  if (run_handler(sc, h, co, 5, status, body)) { *handle = h; return 1; }
  return 0;
}

static int r_handle_cont(void *ud, int handle, char **status, char **body) {
  struct sg_script *sc = ud;
  lua_State *co = thread_of(sc, handle);
  if (!co || lua_status(co) != LUA_YIELD) {
    handler_error(status, body, "internal: continue of a handler that is not suspended", 1);
    return 0;
  }
  return run_handler(sc, handle, co, 0, status, body);
}

struct sg_runner sg_script_runner(struct sg_script *sc) {
  struct sg_runner r = { sc, r_def_get, r_start, r_resume, r_cont, r_drop, r_handle, r_handle_cont };
  return r;
}

int sg_script_live_refs(struct sg_script *sc) { return sc->refs; }
size_t sg_script_mem_used(struct sg_script *sc) { return sc->mem_used; }

/* ---------------------------------------------------------------------------------------------- */

struct sg_script *sg_script_new(const struct sg_script_config *cfg, const struct sg_script_hooks *hooks,
                                struct sg_error *e) {
  struct sg_script *sc = sg_xcalloc(1, sizeof *sc);
  sc->cfg = *cfg;
  if (hooks) sc->hooks = *hooks;
  sc->dir = sg_strdup(cfg->dir);
  sc->notify_fd = -1;
  sg_watchdog_acquire(poke);
  size_t n = strlen(sc->dir);
  while (n > 1 && sc->dir[n - 1] == '/') sc->dir[--n] = 0;
  if (open_state(sc, e) < 0) {
    sg_script_free(sc);
    return NULL;
  }
  return sc;
}

void sg_script_free(struct sg_script *sc) {
  if (!sc) return;
  sg_script_unwatch(sc);
  if (sc->L) lua_close(sc->L);
  free(sc->pool);
  free(sc->usage);
  sg_watchdog_release();
  for (int i = 0; i < sc->nfiles; i++) { free(sc->files[i].path); free(sc->files[i].hash); free(sc->files[i].error); }
  free(sc->files);
  for (int i = 0; i < sc->ndefs; i++) free_def(sc->defs[i]);
  free(sc->defs);
  free(sc->dir);
  free(sc);
}
