/* lsaga: the C half of the `saga` Lua module ("saga.core"): what the Lua runtime (lua/saga.lua)
 * needs from the host. Only luaopen_saga_core is exported. */
#include <lauxlib.h>
#include <lua.h>

#include "duration.h"
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

/* core.log(level, message) */
static int l_log(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  int level = sg_log_parse_level(lvl);
  sg_log(level < 0 ? SG_LOG_INFO : level, "%s", msg);
  return 0;
}

/* core.now_ms() -> wall clock ms (not journaled: for the runtime's own use) */
static int l_now_ms(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sg_now_ms());
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"duration_ms", l_duration_ms},
  {"log", l_log},
  {"now_ms", l_now_ms},
  {NULL, NULL},
};

int luaopen_saga_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  return 1;
}
