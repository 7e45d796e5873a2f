/* lmodule: the loadable Lua module `sagahost` (build/sagahost.so), the same core as the binary, so
 * busted specs can drive the engine in-process: open a host on a script directory and a database,
 * start sagas, run the loop, and read the store. The host runs its own libev loop and its own
 * sandboxed Lua state (the caller's state only holds the handle). Only luaopen_sagahost is exported.
 *
 * The testing kit (lua/saga/testing.lua) is a thin layer over it: a host opened with clock = ms runs
 * on a virtual clock (util.h: sg_clock_set_virtual) that only advance() moves, firing the engine's
 * timers and the transport's delayed messages in due order; mock() puts the caller's Lua functions
 * in front of the scripts' participants (they run on the caller's Lua state, inside the host's loop);
 * faults() and crash() break the in-process transport and the host on purpose. */
#include <inttypes.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "host.h"
#include "signals.h"

#define HOST_MT "sagahost.host"
#define IDLE_MAX_DEFAULT 10000000 /* loop iterations run_until_idle allows itself by default */

int luaopen_saga_core(lua_State *L); /* lsaga.c */

/* One in-process host. */
struct lhost {
  struct ev_loop *loop;  /* its own loop */
  struct sg_host host;   /* store, scripts, engine, local transport */
  int closed;            /* __gc and __close both call close; the second does nothing */
  /* what a reopen (crash) needs */
  char *dir, *db;
  int handlers;          /* 0: the scripts' participants are not used (handlers = false) */
  int virt;              /* on a virtual clock */
  int64_t clock;         /* ... its time (ms since the epoch) */
  lua_State *L;          /* the caller's state while a method runs the loop (mocks run on it) */
  int mocks;             /* registry ref of {["service.command"] = fn} */
  int busy;              /* a mock is running: the loop is not re-entered */
  /* faults */
  int faults_on;
  struct sg_faults faults;
  int crash_every;       /* 0 = no crashes */
  uint64_t crash_rng;    /* splitmix64 state, from the seed */
  uint64_t crash_at;     /* crash once this many deliveries are counted (0 = none planned) */
  int crash_due;         /* the count was reached: crash at the next point with uncommitted work */
  struct sg_fault_counts past; /* the counts of the transports that went down with a crash */
  struct sg_engine_stats past_st; /* ... and of their engines (started, completed, ..., commits) */
  int64_t crashes;
  int barren;            /* crashes in a row with no saga reaching its end in between (widens the draw) */
  int64_t ended;         /* sagas ended (completed, compensated, ...) by the time of the last crash */
};

/* makes this host's clock the process's (several hosts may be open; each call switches to its own) */
static void enter(struct lhost *h, lua_State *L) {
  sg_clock_set_virtual(h->virt ? h->clock : 0);
  h->L = L;
}

/* Returns 1 when no watcher of the host is left active on its loop (nothing leaked), else 0. */
static int host_close(struct lhost *h, lua_State *L) {
  if (h->closed) return 1;
  h->closed = 1;
  if (h->virt) sg_clock_set_virtual(h->clock);
  sg_host_close(&h->host);
  if (h->virt) sg_clock_set_virtual(0);
  if (h->faults_on) sg_rand_replay(0);
  if (h->mocks != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, h->mocks);
  h->mocks = LUA_NOREF;
  free(h->dir);
  free(h->db);
  h->dir = h->db = NULL;
  int clean = 1;
  if (h->loop) {
    clean = ev_run(h->loop, EVRUN_NOWAIT) == 0; /* non-zero while active watchers remain */
    ev_loop_destroy(h->loop);
    h->loop = NULL;
  }
  return clean;
}

static struct lhost *check_host(lua_State *L);

/* ---- mocked participants ---- */

/* the error reply a handler's error value gives (lua/saga.lua: saga.handle): a string is a retryable
 * error with that message; a table's message (or error, msg) and retryable (false: permanent) */
static char *error_body(lua_State *L, int idx) {
  const char *msg = NULL;
  int retryable = 1;
  if (lua_type(L, idx) == LUA_TTABLE) {
    const char *keys[] = {"message", "error", "msg"};
    for (int i = 0; i < 3 && !msg; i++) {
      lua_getfield(L, idx, keys[i]);
      if (!lua_isnil(L, -1)) msg = luaL_tolstring(L, -1, NULL); /* leaves it on the stack with the field */
      else lua_pop(L, 1);
    }
    lua_getfield(L, idx, "retryable");
    retryable = !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_pop(L, 1);
    if (!msg) msg = "mock failed";
  } else if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
    msg = lua_tostring(L, idx);
  } else {
    msg = "mock failed";
  }
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"error\":");
  sg_buf_add_json_str(&b, msg);
  sg_buf_adds(&b, retryable ? ",\"retryable\":true}" : ",\"retryable\":false}");
  return sg_buf_steal(&b);
}

/* pushes a mock's arguments: the payload's JSON and {message_id, saga_id, service, command} */
static void push_call(lua_State *L, const struct sg_msg *m, const char *service, const char *command) {
  lua_pushstring(L, m->body ? m->body : "{}");
  lua_createtable(L, 0, 4);
  lua_pushstring(L, m->message_id); lua_setfield(L, -2, "message_id");
  lua_pushstring(L, m->saga_id); lua_setfield(L, -2, "saga_id");
  lua_pushstring(L, service); lua_setfield(L, -2, "service");
  lua_pushstring(L, command); lua_setfield(L, -2, "command");
}

/* the engine's hook (engine.h: sg_mock_cb): the caller's function for service.command, if any */
static int mock_cb(void *ud, const struct sg_msg *m, char **status, char **body) {
  struct lhost *h = ud;
  lua_State *L = h->L;
  if (!L || h->mocks == LUA_NOREF) return 0;
  const char *service = m->service ? m->service : "", *command = m->name ? m->name : "";
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mocks);
  lua_pushfstring(L, "%s.%s", service, command);
  lua_rawget(L, -2);
  if (lua_isnil(L, -1) && h->handlers) {
    /* the scripts' own handler answers; an observer (mock "*", "*") sees the command first */
    lua_pop(L, 1);
    lua_pushliteral(L, "*");
    lua_rawget(L, -2);
    if (lua_isfunction(L, -1)) {
      push_call(L, m, service, command);
      h->busy = 1;
      if (lua_pcall(L, 2, 0, 0) != LUA_OK) sg_warn("testing kit: the call observer failed: %s", lua_tostring(L, -1));
      h->busy = 0;
    }
    lua_settop(L, top);
    return 0;
  }
  if (lua_isnil(L, -1)) {
    lua_settop(L, top);
    /* handlers = false: as a host without a handler for it answers (lua/saga.lua: M.handle) */
    char *why = sg_asprintf("no mock for %s.%s (the testing kit runs with handlers = false)", service, command);
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"error\":");
    sg_buf_add_json_str(&b, why);
    sg_buf_adds(&b, ",\"retryable\":false}");
    free(why);
    *status = sg_strdup("error");
    *body = sg_buf_steal(&b);
    return 1;
  }
  push_call(L, m, service, command);
  h->busy = 1;
  int rc = lua_pcall(L, 2, 2, 0);
  h->busy = 0;
  int out = 1;
  if (rc != LUA_OK) {
    *status = sg_strdup("error");
    *body = error_body(L, lua_gettop(L));
  } else {
    const char *st = lua_tostring(L, -2);
    if (st && strcmp(st, "none") == 0) {
      out = 2;
    } else if (st && (strcmp(st, "ok") == 0 || strcmp(st, "error") == 0)) {
      *status = sg_strdup(st);
      *body = sg_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "{}");
    } else {
      *status = sg_strdup("error");
      *body = sg_strdup("{\"error\":\"mock: the status must be \\\"ok\\\", \\\"error\\\" or \\\"none\\\"\","
                        "\"retryable\":false}");
    }
  }
  lua_settop(L, top);
  return out;
}

/* host:mock(service, command, fn | nil): fn(payload_json, msg) -> "ok" | "error" | "none", body_json;
 * an error raised in fn is the error reply (as saga.handle makes it). host:mock("*", "*", fn): fn(payload_json,
 * msg) observes every command a script's own handler answers (its results are ignored) */
static int l_mock(lua_State *L) {
  struct lhost *h = check_host(L);
  const char *service = luaL_checkstring(L, 2);
  const char *command = luaL_checkstring(L, 3);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mocks);
  if (strcmp(service, "*") == 0 && strcmp(command, "*") == 0) lua_pushliteral(L, "*");
  else lua_pushfstring(L, "%s.%s", service, command);
  if (lua_isnoneornil(L, 4)) lua_pushnil(L);
  else lua_pushvalue(L, 4);
  lua_rawset(L, -3);
  return 0;
}

/* ---- opening, crashing ---- */

/* splitmix64 */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void counts_now(struct lhost *h, struct sg_fault_counts *c) {
  struct sg_fault_counts now = {0};
  if (h->host.tr) sg_transport_local_counts(h->host.tr, &now);
  c->delivered = h->past.delivered + now.delivered;
  c->duplicated = h->past.duplicated + now.duplicated;
  c->dropped = h->past.dropped + now.dropped;
  c->delayed = h->past.delayed + now.delayed;
  c->reordered = h->past.reordered + now.reordered;
}

/* the next crash: after a number of deliveries drawn in [1, 2n]; the range doubles with each crash in
 * a row that let no saga end, so that the sagas finish however many messages each round of them
 * re-issues at a reopen (else a crash could come before any reply of the round, every time) */
static void plan_crash(struct lhost *h) {
  h->crash_due = 0;
  if (h->crash_every <= 0) { h->crash_at = 0; return; }
  struct sg_fault_counts c;
  counts_now(h, &c);
  uint64_t span = 2 * (uint64_t)h->crash_every << (h->barren < 20 ? h->barren : 20);
  h->crash_at = c.delivered + 1 + rng_next(&h->crash_rng) % span;
}

static int open_engine(struct lhost *h, struct sg_error *e) {
  struct sg_host_config cfg;
  sg_host_config_defaults(&cfg);
  cfg.db = h->db;
  cfg.dir = h->dir;
  cfg.host_id = "inproc";
  if (sg_host_open(&h->host, h->loop, &cfg, e) < 0) return -1;
  sg_engine_set_mock(h->host.en, mock_cb, h);
  if (h->faults_on) {
    /* calls and replies through the transport, where the faults are */
    sg_engine_set_direct_calls(h->host.en, 0);
    sg_transport_local_faults(h->host.tr, &h->faults);
  }
  return 0;
}

/* as kill -9, then the host opens again on the same store (scripts, mocks, faults, clock kept) */
static void crash_reopen(struct lhost *h, lua_State *L) {
  struct sg_fault_counts now = {0};
  sg_transport_local_counts(h->host.tr, &now);
  h->past.delivered += now.delivered;
  h->past.duplicated += now.duplicated;
  h->past.dropped += now.dropped;
  h->past.delayed += now.delayed;
  h->past.reordered += now.reordered;
  struct sg_engine_stats st;
  sg_engine_stats(h->host.en, &st);
  h->past_st.started += st.started;
  h->past_st.completed += st.completed;
  h->past_st.compensated += st.compensated;
  h->past_st.compensation_failed += st.compensation_failed;
  h->past_st.commits += st.commits;
  int64_t ended = h->past_st.completed + h->past_st.compensated + h->past_st.compensation_failed;
  h->barren = ended > h->ended ? 0 : h->barren + 1;
  h->ended = ended;
  sg_host_crash(&h->host);
  h->crashes++;
  struct sg_error e = {0};
  if (open_engine(h, &e) < 0) {
    h->closed = 1; /* nothing is left open: the next call says the host is closed */
    free(h->dir); free(h->db);
    h->dir = h->db = NULL;
    if (h->mocks != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, h->mocks);
    h->mocks = LUA_NOREF;
    ev_loop_destroy(h->loop);
    h->loop = NULL;
    luaL_error(L, "the host could not reopen after a crash: %s", e.msg);
  }
  plan_crash(h);
}

/* sagahost.open{dir = "sagas", db = "path", clock = ms | nil, handlers = true} -> host | nil, message
 * clock: the virtual clock's start (ms since the epoch); nil: the wall clock. handlers = false: the
 * scripts' saga.handle participants are not used (a command without a mock gets an error reply). */
static int l_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "dir");
  const char *dir = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "db");
  const char *db = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "clock");
  int isnum = 0;
  lua_Integer clock = lua_tointegerx(L, -1, &isnum);
  if (!lua_isnil(L, -1) && (!isnum || clock <= 0)) return luaL_error(L, "open: clock must be ms since the epoch (> 0)");
  lua_getfield(L, 1, "handlers");
  int handlers = lua_isnil(L, -1) || lua_toboolean(L, -1);
  struct lhost *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  h->mocks = LUA_NOREF;
  luaL_setmetatable(L, HOST_MT);
  h->dir = sg_strdup(dir);
  h->db = sg_strdup(db);
  h->handlers = handlers;
  h->virt = isnum;
  h->clock = isnum ? (int64_t)clock : 0;
  lua_newtable(L);
  h->mocks = luaL_ref(L, LUA_REGISTRYINDEX);
  enter(h, L);
  struct sg_error e = {0};
  h->loop = ev_loop_new(EVFLAG_AUTO);
  if (open_engine(h, &e) < 0) {
    host_close(h, L);
    luaL_pushfail(L);
    lua_pushstring(L, e.msg);
    return 2;
  }
  return 1;
}

static struct lhost *check_host(lua_State *L) {
  struct lhost *h = luaL_checkudata(L, 1, HOST_MT);
  if (h->closed) luaL_error(L, "the host is closed");
  if (h->busy) luaL_error(L, "a mock is running: the host's methods cannot be called from inside one");
  enter(h, L);
  return h;
}

/* ---- running ---- */

/* nothing the transport holds can be delivered now (what is delayed waits for the clock) */
static int transport_idle(struct lhost *h) { return !sg_transport_local_busy(h->host.tr); }

/* Runs the loop without letting time pass until nothing is runnable (the engine quiescent, the
 * transport idle) or max iterations ran; crashes the host where crash_every says. 1 = idle. */
static int run_idle(struct lhost *h, lua_State *L, long max) {
  for (long i = 0; i < max; i++) {
    ev_run(h->loop, EVRUN_NOWAIT);
    if (h->crash_at) {
      struct sg_fault_counts c;
      counts_now(h, &c);
      if (c.delivered >= h->crash_at) h->crash_due = 1;
      /* at a point where work is not committed yet (what a crash can lose), once this host has
       * committed something beyond its recovery: a round of deliveries larger than the draw (every
       * call a reopened host re-issues comes at once) would otherwise be lost again at every reopen */
      if (h->crash_due && !sg_engine_quiescent(h->host.en)) {
        struct sg_engine_stats st;
        sg_engine_stats(h->host.en, &st);
        if (st.commits >= 2) { crash_reopen(h, L); continue; }
      }
    }
    if (sg_engine_quiescent(h->host.en) && transport_idle(h)) return 1;
  }
  return 0;
}

static int64_t next_due(struct lhost *h) {
  int64_t a = sg_engine_next_due(h->host.en), b = sg_transport_local_next_due(h->host.tr);
  if (a < 0) return b;
  if (b < 0) return a;
  return a < b ? a : b;
}

/* moves the virtual clock to ms (never back) and fires what is due */
static void clock_to(struct lhost *h, int64_t ms) {
  if (ms > h->clock) h->clock = ms;
  sg_clock_set_virtual(h->clock);
  sg_engine_tick(h->host.en);
  sg_transport_local_poke(h->host.tr);
}

/* host:run_until_idle([max_iterations]) -> live, crashes */
static int l_run_until_idle(lua_State *L) {
  struct lhost *h = check_host(L);
  long max = (long)luaL_optinteger(L, 2, IDLE_MAX_DEFAULT);
  if (h->virt) clock_to(h, h->clock); /* what fell due at the current time */
  run_idle(h, L, max);
  struct sg_engine_stats st;
  sg_engine_stats(h->host.en, &st);
  lua_pushinteger(L, st.live);
  lua_pushinteger(L, h->crashes);
  return 2;
}

/* host:advance(ms) -> live: the virtual clock moves by ms, stopping at every due time on the way
 * (engine timers, open breakers' probes, delayed messages) in order, running until idle at each */
static int l_advance(lua_State *L) {
  struct lhost *h = check_host(L);
  if (!h->virt) return luaL_error(L, "advance: the host runs on the wall clock (open it with clock = ms)");
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "advance: the time cannot go back");
  int64_t target = h->clock + (int64_t)ms;
  run_idle(h, L, IDLE_MAX_DEFAULT);
  int64_t last = -1;
  int same = 0;
  for (;;) {
    int64_t due = next_due(h);
    if (due < 0 || due > target) break;
    /* a due time that stays put after it fired (something that cannot run now) is not looped on */
    if (due == last && ++same > 1000) break;
    if (due != last) same = 0;
    last = due;
    clock_to(h, due);
    run_idle(h, L, IDLE_MAX_DEFAULT);
  }
  clock_to(h, target);
  run_idle(h, L, IDLE_MAX_DEFAULT);
  struct sg_engine_stats st;
  sg_engine_stats(h->host.en, &st);
  lua_pushinteger(L, st.live);
  return 1;
}

/* host:now() -> ms since the epoch (the virtual clock, or the wall clock) */
static int l_now(lua_State *L) {
  check_host(L);
  lua_pushinteger(L, sg_now_ms());
  return 1;
}

/* host:next_due() -> ms | nil: the earliest engine timer, open breaker's probe or delayed message */
static int l_next_due(lua_State *L) {
  struct lhost *h = check_host(L);
  int64_t due = next_due(h);
  if (due < 0) lua_pushnil(L);
  else lua_pushinteger(L, due);
  return 1;
}

/* host:start(type, input_json [, idempotency_key]) -> id, existed | nil, message */
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

/* host:run(seconds) runs the loop until no saga is live or the (real) time is up; returns the live count */
static int l_run(lua_State *L) {
  struct lhost *h = check_host(L);
  double secs = luaL_optnumber(L, 2, 5);
  int64_t deadline = sg_mono_ns() / 1000000 + (int64_t)(secs * 1000);
  struct sg_engine_stats st;
  do {
    ev_run(h->loop, EVRUN_ONCE);
    sg_engine_stats(h->host.en, &st);
  } while (st.live > 0 && sg_mono_ns() / 1000000 < deadline);
  ev_run(h->loop, EVRUN_NOWAIT); /* the last commit */
  lua_pushinteger(L, st.live);
  return 1;
}

/* ---- signals ---- */

struct sig_wait {
  int done;
  char outcome[32];
  struct sg_error e;
};

static void on_signal_sent(void *ud, const char *outcome, const struct sg_error *e) {
  struct sig_wait *w = ud;
  w->done = 1;
  if (e) w->e = *e;
  else snprintf(w->outcome, sizeof w->outcome, "%s", outcome ? outcome : "kept");
}

/* host:signal(id, name, payload_json [, key]) -> outcome ("delivered", "kept", "duplicate") | nil, err
 * (the signal is durable when it returns; run the loop for what it wakes) */
static int l_signal(lua_State *L) {
  struct lhost *h = check_host(L);
  const char *id = luaL_checkstring(L, 2);
  const char *name = luaL_checkstring(L, 3);
  const char *payload = luaL_optstring(L, 4, "{}");
  const char *key = luaL_optstring(L, 5, NULL);
  struct sig_wait w = {0};
  sg_engine_signal(h->host.en, id, name, payload, key, "test", on_signal_sent, &w);
  for (long i = 0; !w.done && i < IDLE_MAX_DEFAULT; i++) ev_run(h->loop, EVRUN_NOWAIT);
  if (!w.done) return luaL_error(L, "signal: the commit never came");
  if (w.e.msg[0]) {
    luaL_pushfail(L);
    lua_pushstring(L, w.e.msg);
    return 2;
  }
  lua_pushstring(L, w.outcome);
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

/* host:stats() -> {live, coroutines, refs, timers (this engine's), started, completed, compensated,
 * compensation_failed, commits, delivered, duplicated, dropped, delayed, reordered, crashes (since open,
 * across crashes)} */
static int l_stats(lua_State *L) {
  struct lhost *h = check_host(L);
  struct sg_engine_stats st;
  sg_engine_stats(h->host.en, &st);
  struct sg_fault_counts c;
  counts_now(h, &c);
  /* counted across crashes: what the engines that went down did, and this one */
  st.started += h->past_st.started;
  st.completed += h->past_st.completed;
  st.compensated += h->past_st.compensated;
  st.compensation_failed += h->past_st.compensation_failed;
  st.commits += h->past_st.commits;
  lua_createtable(L, 0, 15);
  lua_pushinteger(L, st.live); lua_setfield(L, -2, "live");
  lua_pushinteger(L, st.coroutines); lua_setfield(L, -2, "coroutines");
  lua_pushinteger(L, sg_script_live_refs(h->host.sc)); lua_setfield(L, -2, "refs");
  lua_pushinteger(L, st.commits); lua_setfield(L, -2, "commits");
  lua_pushinteger(L, st.started); lua_setfield(L, -2, "started");
  lua_pushinteger(L, st.completed); lua_setfield(L, -2, "completed");
  lua_pushinteger(L, st.compensated); lua_setfield(L, -2, "compensated");
  lua_pushinteger(L, st.compensation_failed); lua_setfield(L, -2, "compensation_failed");
  lua_pushinteger(L, st.timers); lua_setfield(L, -2, "timers");
  lua_pushinteger(L, (lua_Integer)c.delivered); lua_setfield(L, -2, "delivered");
  lua_pushinteger(L, (lua_Integer)c.duplicated); lua_setfield(L, -2, "duplicated");
  lua_pushinteger(L, (lua_Integer)c.dropped); lua_setfield(L, -2, "dropped");
  lua_pushinteger(L, (lua_Integer)c.delayed); lua_setfield(L, -2, "delayed");
  lua_pushinteger(L, (lua_Integer)c.reordered); lua_setfield(L, -2, "reordered");
  lua_pushinteger(L, h->crashes); lua_setfield(L, -2, "crashes");
  return 1;
}

/* ---- faults ---- */

static double opt_num(lua_State *L, int t, const char *k, double def) {
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* host:faults{duplicate = p, drop = p, delay_min = ms, delay_max = ms, reorder = bool, crash_every = n,
 * seed = s} | host:faults(nil): faults off */
static int l_faults(lua_State *L) {
  struct lhost *h = check_host(L);
  if (lua_isnoneornil(L, 2)) {
    h->faults_on = 0;
    h->crash_every = 0;
    plan_crash(h);
    sg_transport_local_faults(h->host.tr, NULL);
    sg_engine_set_direct_calls(h->host.en, 1);
    sg_rand_replay(0);
    return 0;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  struct sg_faults f = {0};
  f.duplicate = opt_num(L, 2, "duplicate", 0);
  f.drop = opt_num(L, 2, "drop", 0);
  luaL_argcheck(L, f.duplicate >= 0 && f.duplicate <= 1 && f.drop >= 0 && f.drop < 1, 2,
                "duplicate must be in [0, 1] and drop in [0, 1)");
  f.delay_min_ms = (int64_t)opt_num(L, 2, "delay_min", 0);
  f.delay_max_ms = (int64_t)opt_num(L, 2, "delay_max", (double)f.delay_min_ms);
  luaL_argcheck(L, f.delay_min_ms >= 0 && f.delay_max_ms >= f.delay_min_ms, 2, "delay: 0 <= min <= max");
  lua_getfield(L, 2, "reorder");
  f.reorder = lua_toboolean(L, -1);
  lua_pop(L, 1);
  double crash_every = opt_num(L, 2, "crash_every", 0);
  luaL_argcheck(L, crash_every >= 0, 2, "crash_every must be >= 0");
  lua_getfield(L, 2, "seed");
  f.seed = lua_isnil(L, -1) ? 1 : (uint64_t)luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  h->faults = f;
  h->faults_on = 1;
  h->crash_every = (int)crash_every;
  h->crash_rng = f.seed ^ 0x5DEECE66Dull; /* a stream of its own: the transport draws from the seed too */
  h->barren = 0;
  plan_crash(h);
  sg_rand_replay(f.seed ? f.seed : 1); /* uuids and retry jitter from the seed too: the run repeats */
  sg_engine_set_direct_calls(h->host.en, 0); /* calls and replies through the transport, where the faults are */
  sg_transport_local_faults(h->host.tr, &f);
  return 0;
}

/* host:crash(): as kill -9 (what is not committed is lost), and the host opens again at once */
static int l_crash(lua_State *L) {
  struct lhost *h = check_host(L);
  crash_reopen(h, L);
  return 0;
}

/* host:close() -> true when the host left no active watcher behind; also __gc and __close (safe twice) */
static int l_close(lua_State *L) {
  struct lhost *h = luaL_checkudata(L, 1, HOST_MT);
  if (h->busy && !h->closed) return luaL_error(L, "a mock is running: the host cannot be closed from inside one");
  lua_pushboolean(L, host_close(h, L));
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
  {"start", l_start}, {"run", l_run}, {"saga", l_saga}, {"stats", l_stats}, {"close", l_close},
  {"now", l_now}, {"advance", l_advance}, {"run_until_idle", l_run_until_idle}, {"next_due", l_next_due},
  {"mock", l_mock}, {"signal", l_signal}, {"faults", l_faults}, {"crash", l_crash}, {NULL, NULL},
};

/* sagahost.log_level("debug"|"info"|"warn"|"error"|"off") */
static int l_log_level(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  int n = strcmp(lvl, "off") == 0 ? SG_LOG_ERROR + 1 : sg_log_parse_level(lvl);
  luaL_argcheck(L, n >= 0, 1, "unknown log level");
  sg_log_level = n;
  return 0;
}

/* sagahost.time_ms("2026-01-01T00:00:00Z" | "...+02:00" | "1767225600000") -> ms | nil, message: parsed
 * as ?start_at= is (util.c: sg_time_parse) */
static int l_time_ms(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  int64_t ms;
  if (sg_time_parse(s, &ms) < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "not an RFC 3339 time with a zone, nor ms since the epoch: %s", s);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)ms);
  return 1;
}

static const luaL_Reg funcs[] = {
  {"open", l_open}, {"check", l_check}, {"log_level", l_log_level}, {"time_ms", l_time_ms}, {NULL, NULL},
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
