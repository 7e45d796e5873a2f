/* lmodule: the loadable Lua module `sagahost` (build/sagahost.so), the same core as the binary, so
 * busted specs can drive the engine in-process: open a host on a script directory and a database,
 * start sagas, run the loop, and read the store. The host runs its own libev loop and its own
 * sandboxed Lua state (the caller's state only holds the handle). Only luaopen_sagahost is exported. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "engine.h"
#include "script.h"
#include "store.h"
#include "transport.h"

#define HOST_MT "sagahost.host"

/* One in-process host. */
struct lhost {
  struct ev_loop *loop;
  struct sg_store *store;
  struct sg_script *sc;
  struct sg_engine *en;
  struct sg_transport *tr;
  int closed; /* __gc and __close both call close; the second does nothing */
};

static int hook_on_version(void *ud, const char *hash, const char *file, const char *source, struct sg_error *e) {
  struct lhost *h = ud;
  return h->en ? sg_engine_def_loaded(h->en, hash, file, source, e) : 0;
}

static char *hook_fetch_source(void *ud, const char *hash, char **file) {
  struct lhost *h = ud;
  char *src = NULL;
  struct sg_error e = {0};
  h->store->ops->def_get(h->store, hash, file, &src, &e);
  return src;
}

static void host_close(struct lhost *h) {
  if (h->closed) return;
  h->closed = 1;
  if (h->en) sg_engine_stop(h->en);
  if (h->tr) h->tr->ops->close(h->tr);
  sg_engine_free(h->en);
  sg_script_free(h->sc);
  if (h->store) h->store->ops->close(h->store);
  if (h->loop) ev_loop_destroy(h->loop);
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
  h->store = sg_store_sqlite_open(db, &e);
  if (!h->store) goto fail;
  struct sg_script_config scfg = { dir, (size_t)256 << 20, 100000000, (size_t)64 << 20 };
  struct sg_script_hooks hooks = { h, hook_on_version, hook_fetch_source, NULL };
  h->sc = sg_script_new(&scfg, &hooks, &e);
  if (!h->sc) goto fail;
  struct sg_engine_config ecfg = { "inproc", 1 << 20, 0.5, 10, 30000, 5000 };
  struct sg_runner runner = sg_script_runner(h->sc);
  h->en = sg_engine_new(h->loop, h->store, &runner, &ecfg);
  struct sg_transport_events tev = sg_engine_transport_events(h->en);
  h->tr = sg_transport_local_new(h->loop, &tev);
  sg_engine_set_transport(h->en, h->tr);
  sg_script_scan(h->sc);
  if (sg_engine_recover(h->en, &e) < 0) goto fail;
  return 1;
fail:
  host_close(h);
  luaL_pushfail(L);
  lua_pushstring(L, e.msg);
  return 2;
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
  if (sg_engine_start(h->en, type, input, key, id, &existed, &e) < 0) {
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
    sg_engine_stats(h->en, &st);
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
  int found = h->store->ops->saga_get(h->store, id, &r, &e);
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
  h->store->ops->hist_each(h->store, id, hist_cb, L, &e);
  lua_setfield(L, -2, "steps");
  sg_store_saga_row_free(&r);
  return 1;
}

/* host:stats() -> {live, coroutines, refs, commits, completed, compensated} */
static int l_stats(lua_State *L) {
  struct lhost *h = check_host(L);
  struct sg_engine_stats st;
  sg_engine_stats(h->en, &st);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, st.live); lua_setfield(L, -2, "live");
  lua_pushinteger(L, st.coroutines); lua_setfield(L, -2, "coroutines");
  lua_pushinteger(L, sg_script_live_refs(h->sc)); lua_setfield(L, -2, "refs");
  lua_pushinteger(L, st.commits); lua_setfield(L, -2, "commits");
  lua_pushinteger(L, st.completed); lua_setfield(L, -2, "completed");
  lua_pushinteger(L, st.compensated); lua_setfield(L, -2, "compensated");
  return 1;
}

/* __gc and __close, safe to run twice */
static int l_close(lua_State *L) {
  struct lhost *h = luaL_checkudata(L, 1, HOST_MT);
  host_close(h);
  return 0;
}

/* sagahost.duration_ms(v) -> ms | nil, message */
static int l_duration_ms(lua_State *L) {
  struct sg_error e = {0};
  int64_t ms;
  int rc = lua_type(L, 1) == LUA_TNUMBER ? sg_duration_from_seconds(lua_tonumber(L, 1), &ms, &e)
                                         : sg_duration_parse(luaL_checkstring(L, 1), &ms, &e);
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, e.msg);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)ms);
  return 1;
}

/* sagahost.check(dir) -> {errors...} (empty when every file loads) */
static int l_check(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  struct sg_error e = {0};
  struct sg_script_config scfg = { dir, (size_t)256 << 20, 100000000, (size_t)64 << 20 };
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
  {"open", l_open}, {"duration_ms", l_duration_ms}, {"check", l_check}, {"log_level", l_log_level}, {NULL, NULL},
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
  return 1;
}
