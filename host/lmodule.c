/* lmodule: the loadable Lua module `sagahost` (build/sagahost.so), the same core as the binary, so
 * busted specs can drive the engine in-process: open a host on a script directory and a database,
 * start sagas, run the loop, and read the store. The host runs its own libev loop and its own
 * sandboxed Lua state (the caller's state only holds the handle). Only luaopen_sagahost is exported. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "host.h"

#define HOST_MT "sagahost.host"

int luaopen_saga_core(lua_State *L); /* lsaga.c */

/* One in-process host. */
struct lhost {
  struct ev_loop *loop;  /* its own loop */
  struct sg_host host;   /* store, scripts, engine, local transport */
  int closed;            /* __gc and __close both call close; the second does nothing */
};

/* Returns 1 when no watcher of the host is left active on its loop (nothing leaked), else 0. */
static int host_close(struct lhost *h) {
  if (h->closed) return 1;
  h->closed = 1;
  sg_host_close(&h->host);
  int clean = 1;
  if (h->loop) {
    clean = ev_run(h->loop, EVRUN_NOWAIT) == 0; /* non-zero while active watchers remain */
    ev_loop_destroy(h->loop);
  }
  return clean;
}

/* sagahost.open{dir = "sagas", db = "path"} -> host | nil, message */
static int l_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "dir");
  const char *dir = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "db");
  const char *db = luaL_checkstring(L, -1);
  struct lhost *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  luaL_setmetatable(L, HOST_MT);
  struct sg_error e = {0};
  h->loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_host_config cfg;
  sg_host_config_defaults(&cfg);
  cfg.db = db;
  cfg.dir = dir;
  cfg.host_id = "inproc";
  if (sg_host_open(&h->host, h->loop, &cfg, &e) < 0) {
    host_close(h);
    luaL_pushfail(L);
    lua_pushstring(L, e.msg);
    return 2;
  }
  return 1;
}

static struct lhost *check_host(lua_State *L) {
  struct lhost *h = luaL_checkudata(L, 1, HOST_MT);
  if (h->closed) luaL_error(L, "the host is closed");
  return h;
}

/* host:start(type, input_json [, idempotency_key]) -> id | nil, message */
static int l_start(lua_State *L) {
  struct lhost *h = check_host(L);
  const char *type = luaL_checkstring(L, 2);
  const char *input = luaL_optstring(L, 3, "{}");
  const char *key = luaL_optstring(L, 4, NULL);
  char id[40];
  int existed;
  struct sg_error e = {0};
  if (sg_engine_start(h->host.en, type, input, key, id, &existed, &e) < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, e.msg);
    return 2;
  }
  lua_pushstring(L, id);
  lua_pushboolean(L, existed);
  return 2;
}

/* host:run(seconds) runs the loop until no saga is live or the time is up; returns the live count */
static int l_run(lua_State *L) {
  struct lhost *h = check_host(L);
  double secs = luaL_optnumber(L, 2, 5);
  int64_t deadline = sg_now_ms() + (int64_t)(secs * 1000);
  struct sg_engine_stats st;
  do {
    ev_run(h->loop, EVRUN_ONCE);
    sg_engine_stats(h->host.en, &st);
  } while (st.live > 0 && sg_now_ms() < deadline);
  ev_run(h->loop, EVRUN_NOWAIT); /* the last commit */
  lua_pushinteger(L, st.live);
  return 1;
}

static int hist_cb(void *ud, const struct sg_hist_row *r) {
  lua_State *L = ud;
  lua_createtable(L, 0, 6);
  lua_pushstring(L, r->step_name); lua_setfield(L, -2, "name");
  lua_pushstring(L, r->phase < 0 ? "saga" : sg_phase_name(r->phase)); lua_setfield(L, -2, "phase");
  lua_pushstring(L, r->status); lua_setfield(L, -2, "status");
  lua_pushinteger(L, r->attempt); lua_setfield(L, -2, "attempt");
  if (r->error) { lua_pushstring(L, r->error); lua_setfield(L, -2, "error"); }
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  return 0;
}

/* host:saga(id) -> {id, type, status, data = json, error, steps = {...}} | nil */
static int l_saga(lua_State *L) {
  struct lhost *h = check_host(L);
  const char *id = luaL_checkstring(L, 2);
  ev_run(h->loop, EVRUN_NOWAIT); /* commit what is pending: read committed state */
  struct sg_saga_row r = {0};
  struct sg_error e = {0};
  int found = h->host.store->ops->saga_get(h->host.store, id, &r, &e);
  if (found <= 0) {
    luaL_pushfail(L);
    lua_pushstring(L, found < 0 ? e.msg : "no such saga");
    return 2;
  }
  lua_createtable(L, 0, 8);
  lua_pushstring(L, r.id); lua_setfield(L, -2, "id");
  lua_pushstring(L, r.type); lua_setfield(L, -2, "type");
  lua_pushstring(L, sg_status_name(r.status)); lua_setfield(L, -2, "status");
  lua_pushstring(L, r.data); lua_setfield(L, -2, "data");
  lua_pushstring(L, r.def_hash); lua_setfield(L, -2, "version");
  if (r.error) { lua_pushstring(L, r.error); lua_setfield(L, -2, "error"); }
  lua_newtable(L);
  h->host.store->ops->hist_each(h->host.store, id, hist_cb, L, &e);
  lua_setfield(L, -2, "steps");
  sg_store_saga_row_free(&r);
  return 1;
}

/* host:stats() -> {live, coroutines, refs, commits, completed, compensated} */
static int l_stats(lua_State *L) {
  struct lhost *h = check_host(L);
  struct sg_engine_stats st;
  sg_engine_stats(h->host.en, &st);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, st.live); lua_setfield(L, -2, "live");
  lua_pushinteger(L, st.coroutines); lua_setfield(L, -2, "coroutines");
  lua_pushinteger(L, sg_script_live_refs(h->host.sc)); lua_setfield(L, -2, "refs");
  lua_pushinteger(L, st.commits); lua_setfield(L, -2, "commits");
  lua_pushinteger(L, st.completed); lua_setfield(L, -2, "completed");
  lua_pushinteger(L, st.compensated); lua_setfield(L, -2, "compensated");
  return 1;
}

/* host:close() -> true when the host left no active watcher behind; also __gc and __close (safe twice) */
static int l_close(lua_State *L) {
  struct lhost *h = luaL_checkudata(L, 1, HOST_MT);
  lua_pushboolean(L, host_close(h));
  return 1;
}

/* sagahost.check(dir) -> {errors...} (empty when every file loads) */
static int l_check(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  struct sg_error e = {0};
  struct sg_script_config scfg = { dir, (size_t)256 << 20, 100000000, (size_t)64 << 20, 1000 };
  struct sg_script *sc = sg_script_new(&scfg, NULL, &e);
  if (!sc) return luaL_error(L, "%s", e.msg);
  int prev = sg_log_level;
  sg_log_level = SG_LOG_ERROR + 1;
  sg_script_scan(sc);
  sg_log_level = prev;
  char *json = sg_script_definitions_json(sc);
  sg_script_free(sc);
  lua_pushstring(L, json);
  free(json);
  return 1;
}

static const luaL_Reg host_methods[] = {
  {"start", l_start}, {"run", l_run}, {"saga", l_saga}, {"stats", l_stats}, {"close", l_close}, {NULL, NULL},
};

/* sagahost.log_level("debug"|"info"|"warn"|"error"|"off") */
static int l_log_level(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  int n = strcmp(lvl, "off") == 0 ? SG_LOG_ERROR + 1 : sg_log_parse_level(lvl);
  luaL_argcheck(L, n >= 0, 1, "unknown log level");
  sg_log_level = n;
  return 0;
}

static const luaL_Reg funcs[] = {
  {"open", l_open}, {"check", l_check}, {"log_level", l_log_level}, {NULL, NULL},
};

int luaopen_sagahost(lua_State *L) {
  if (luaL_newmetatable(L, HOST_MT)) {
    luaL_newlib(L, host_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  /* duration parsing exactly as scripts see it: the saga.core function */
  luaopen_saga_core(L);
  lua_getfield(L, -1, "duration_ms");
  lua_setfield(L, -3, "duration_ms");
  lua_pop(L, 1);
  return 1;
}
