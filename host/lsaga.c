/* lsaga: the C half of the `saga` Lua module ("saga.core"): what the Lua runtime (lua/saga.lua)
 * needs from the host, including the pieces of the sandbox that must be C: pcall and xpcall that
 * cannot catch a limit the host enforces (script.c decides when a run is "doomed"), and a
 * string.rep that cannot spin in C. Only luaopen_saga_core is exported. */
#include <lauxlib.h>
#include <lua.h>
#include <ctype.h>
#include <string.h>

#include "duration.h"
#include "script.h"
#include "util.h"

/* core.duration_ms(v) -> ms | nil, message. v: number of seconds or a string like "250ms". */
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

static const luaL_Reg core_funcs[] = {
  {"is_name", l_is_name},
  {"duration_ms", l_duration_ms},
  {"log", l_log},
  {"now_ms", l_now_ms},
  {"doomed", l_doomed},
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
  return 1;
}
