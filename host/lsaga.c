/* lsaga: the C half of the `saga` Lua module ("saga.core"): what the Lua runtime (lua/saga.lua)
 * needs from the host, including the pieces of the sandbox that must be C: pcall and xpcall that
 * cannot catch a limit the host enforces (script.c decides when a run is "doomed"), and a
 * string.rep that cannot spin in C. Only luaopen_saga_core is exported. */
#include <lauxlib.h>
#include <lua.h>
#include <ctype.h>
#include <string.h>

#include "cron.h"
#include "duration.h"
#include "script.h"
#include "util.h"

/* core.duration_ms(v) -> ms | nil, message. v: number of seconds or a string like "250ms". */
/* core.cron_check(expr): true, or nil and what is wrong with it (saga.schedule's check) */
static int l_cron_check(lua_State *L) {
  struct sg_cron c;
  char err[256];
  if (sg_cron_parse(luaL_checkstring(L, 1), &c, err, sizeof err) < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_duration_ms(lua_State *L) {
  struct sg_error e = {0};
  int64_t ms;
  int rc;
  if (lua_type(L, 1) == LUA_TNUMBER) rc = sg_duration_from_seconds(lua_tonumber(L, 1), &ms, &e);
  else if (lua_type(L, 1) == LUA_TSTRING) rc = sg_duration_parse(lua_tostring(L, 1), &ms, &e);
  else rc = sg_errorf(&e, SG_E_INVALID, "invalid duration: expected a number of seconds or a string like \"30s\", got %s",
                      luaL_typename(L, 1));
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, e.msg);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)ms);
  return 1;
}

/* A script's log line is cut here (print, ctx:log): one line must not fill the host's log. */
#define LOG_LINE_MAX 2048

/* core.log(level, message) */
static int l_log(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  int level = sg_log_parse_level(lvl);
  if (level < 0) level = SG_LOG_INFO;
  if (len > LOG_LINE_MAX)
    sg_log(level, "%.*s... [log line cut at %d of %zu bytes]", LOG_LINE_MAX, msg, LOG_LINE_MAX, len);
  else
    sg_log(level, "%s", msg);
  return 0;
}

/* core.now_ms() -> wall clock ms (not journaled: for the runtime's own use) */
static int l_now_ms(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sg_now_ms());
  return 1;
}

/* core.doomed() -> true once a limit has stopped the running step or handler */
static int l_doomed(lua_State *L) {
  lua_pushboolean(L, sg_script_doomed(L));
  return 1;
}

/* whether debug lines are logged: a step's traceback is only logged, and building one costs more than
 * the rest of a failed attempt (luaL_traceback looks up every frame's function in package.loaded) */
static int l_debugging(lua_State *L) {
  lua_pushboolean(L, sg_log_level <= SG_LOG_DEBUG);
  return 1;
}

/* What pcall and xpcall return once the protected call is over (also their continuation after a
 * yield inside it). A doomed run's error is raised on: the script cannot catch its own stop. */
static int finish_pcall(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (sg_script_doomed(L)) return lua_error(L);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

/* pcall(f, ...) */
static int l_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1); /* the first result when all goes well */
  lua_insert(L, 1);
  int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
  return finish_pcall(L, status, 0);
}

/* The message handler xpcall installs: the script's handler runs only while the run is not doomed
 * (an error raised by the host's count hook reaches message handlers with hooks off, where a loop
 * in the handler could never be stopped). */
static int guard_msgh(lua_State *L) {
  if (sg_script_doomed(L)) return 1; /* the error as it is */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* xpcall(f, msgh, ...) */
static int l_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, guard_msgh, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1); /* first result */
  lua_pushvalue(L, 1);   /* the function */
  lua_rotate(L, 3, 2);   /* both below the function's arguments */
  int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
  return finish_pcall(L, status, 2);
}

/* string.rep(s, n [, sep]) that cannot run n empty copies: everything else is the library's. */
static int l_rep(lua_State *L) {
  size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || l + lsep == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* core.is_name(v) -> true when v is a string of letters, digits, '_' and '-' that does not start
 * with a digit or '-' (service, command, topic and event names: they become routing keys). The hot
 * path of every ctx:call, so not a pattern match. */
static int l_is_name(lua_State *L) {
  size_t n;
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
  int ok = s && n > 0 && (isalpha((unsigned char)s[0]) || s[0] == '_');
  for (size_t i = 1; ok && i < n; i++) ok = isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-';
  lua_pushboolean(L, ok);
  return 1;
}

/* core.on_step() -> true when running on the step's (or handler's) own coroutine: durable
 * operations yield that coroutine to the host, never one the script created */
static int l_on_step(lua_State *L) {
  lua_pushboolean(L, sg_script_on_run_thread(L));
  return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* coroutines for scripts: the library's semantics, on threads the script created only. The host's
 * own threads (a step's, a handler's) cannot be resumed, closed or yielded by scripts, so a script
 * can neither forge a durable operation nor reach into another saga's coroutine. A thread created
 * here inherits the running step's count hook, so every limit holds inside it. */

static const char script_threads_key = 0; /* registry: weak-keyed set of the threads scripts made */

static int is_script_thread(lua_State *L, lua_State *co) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &script_threads_key);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawget(L, -2);
  int yes = lua_toboolean(L, -1);
  lua_pop(L, 2);
  return yes;
}

static lua_State *check_script_thread(lua_State *L, int arg, const char *fn) {
  lua_State *co = lua_tothread(L, arg);
  if (!co) luaL_typeerror(L, arg, "coroutine");
  if (!is_script_thread(L, co))
    luaL_error(L, "coroutine.%s: not a coroutine this script created (a step's own coroutine belongs to the host)", fn);
  return co;
}

/* coroutine.create(f) */
static int l_co_create(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &script_threads_key);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  return 1;
}

static const char *co_status(lua_State *L, lua_State *co) {
  if (L == co) return "running";
  switch (lua_status(co)) {
  case LUA_YIELD: return "suspended";
  case LUA_OK: {
    lua_Debug ar;
    if (lua_getstack(co, 0, &ar)) return "normal"; /* it resumed another one */
    return lua_gettop(co) == 0 ? "dead" : "suspended"; /* not started yet */
  }
  default: return "dead";
  }
}

/* Resumes co with narg values from L's top; returns the number of results moved to L, or -1 with
 * the error object on L's top. A limit that stopped the step is raised on, not returned. */
static int co_resume(lua_State *L, lua_State *co, int narg) {
  const char *st = co_status(L, co);
  if (strcmp(st, "suspended") != 0) {
    lua_pushfstring(L, "cannot resume %s coroutine", st);
    return -1;
  }
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  int nres;
  lua_State *prev = sg_script_enter(L, co);
  int status = lua_resume(co, L, narg, &nres);
  sg_script_leave(L, co, prev);
  if (sg_script_doomed(L)) {
    lua_xmove(co, L, 1);
    lua_error(L);
  }
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1); /* the error object */
  return -1;
}

/* After a yield at a preempt point: the results are still on the stack. */
static int results_k(lua_State *L, int status, lua_KContext n) {
  (void)L; (void)status;
  return (int)n;
}

/* Returns n results, first giving the loop back if the step's slice is over: time spent inside a
 * script's coroutine is invisible to the forced yield (the hook can only yield the step itself). */
static int co_return(lua_State *L, int n) {
  if (sg_script_preempt_point(L)) return lua_yieldk(L, 0, n, results_k);
  return n;
}

/* coroutine.resume(co, ...) */
static int l_co_resume(lua_State *L) {
  lua_State *co = check_script_thread(L, 1, "resume");
  int r = co_resume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return co_return(L, 2);
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return co_return(L, r + 1);
}

/* the function coroutine.wrap returns */
static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = co_resume(L, co, lua_gettop(L));
  if (r < 0) {
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD) { /* it died: close its pending variables, as the library does */
      lua_resetthread(co);
    }
    if (lua_type(L, -1) == LUA_TSTRING) { /* where the wrapper was called from */
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return co_return(L, r);
}

/* coroutine.wrap(f) */
static int l_co_wrap(lua_State *L) {
  l_co_create(L);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* coroutine.yield(...): only from a coroutine the script created */
static int l_co_yield(lua_State *L) {
  if (!is_script_thread(L, L))
    return luaL_error(L, "coroutine.yield: a step or handler cannot yield itself (only coroutines the script created can)");
  return lua_yield(L, lua_gettop(L));
}

/* coroutine.status(co) */
static int l_co_status(lua_State *L) {
  lua_State *co = check_script_thread(L, 1, "status");
  lua_pushstring(L, co_status(L, co));
  return 1;
}

/* coroutine.running() -> the running coroutine and false, or nil and true on the step itself */
static int l_co_running(lua_State *L) {
  if (is_script_thread(L, L)) {
    lua_pushthread(L);
    lua_pushboolean(L, 0);
  } else {
    lua_pushnil(L);
    lua_pushboolean(L, 1);
  }
  return 2;
}

/* coroutine.isyieldable() */
static int l_co_isyieldable(lua_State *L) {
  lua_pushboolean(L, lua_isyieldable(L) && is_script_thread(L, L));
  return 1;
}

/* coroutine.close(co) */
static int l_co_close(lua_State *L) {
  lua_State *co = check_script_thread(L, 1, "close");
  const char *st = co_status(L, co);
  if (strcmp(st, "suspended") != 0 && strcmp(st, "dead") != 0)
    return luaL_error(L, "cannot close a %s coroutine", st);
  if (lua_resetthread(co) == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (sg_script_doomed(L)) return lua_error(L);
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);
  return 2;
}

static const luaL_Reg co_funcs[] = {
  {"create", l_co_create},
  {"resume", l_co_resume},
  {"yield", l_co_yield},
  {"status", l_co_status},
  {"wrap", l_co_wrap},
  {"running", l_co_running},
  {"isyieldable", l_co_isyieldable},
  {"close", l_co_close},
  {NULL, NULL},
};

/* core.resume(co, ...): coroutine.resume for the runtime's own threads (the branches of a ctx:all),
 * under the limits of the run that resumes them */
static int l_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "thread");
  int r = co_resume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static const luaL_Reg core_funcs[] = {
  {"resume", l_resume},
  {"on_step", l_on_step},
  {"is_name", l_is_name},
  {"duration_ms", l_duration_ms},
  {"cron_check", l_cron_check},
  {"log", l_log},
  {"now_ms", l_now_ms},
  {"doomed", l_doomed},
  {"debugging", l_debugging},
  {"pcall", l_pcall},
  {"xpcall", l_xpcall},
  {NULL, NULL},
};

int luaopen_saga_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  /* core.rep wraps the library's string.rep (taken before the runtime replaces it) */
  lua_getglobal(L, "string");
  lua_getfield(L, -1, "rep");
  lua_remove(L, -2);
  lua_pushcclosure(L, l_rep, 1);
  lua_setfield(L, -2, "rep");
  /* core.coroutine: the scripts' coroutine library (each file gets a copy) */
  luaL_newlib(L, co_funcs);
  lua_setfield(L, -2, "coroutine");
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &script_threads_key);
  return 1;
}
