/* script_run: the step runner the engine drives (struct sg_runner): one coroutine per running saga,
 * anchored in the registry, with its ctx; handlers on pooled coroutines; what a resume produced
 * read back into a struct sg_run_out. */
#include <stdlib.h>
#include <string.h>

#include "script_int.h"
#include "util.h"

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

static const struct sg_def *r_def_get(void *ud, const char *type, const char *hash, struct sg_error *e) {
  struct sg_script *sc = ud;
  struct defent *de = sc_find_def(sc, type, hash);
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
  int rc = sc_load_source(sc, file ? file : "?", src, hash, 1, e);
  free(src);
  free(file);
  if (rc < 0) return NULL;
  sc_register_defs(sc, hash, 0);
  lua_pop(sc->L, 1);
  de = sc_find_def(sc, type, hash);
  if (!de) sg_errorf(e, SG_E_NOTFOUND, "version %s does not define saga type '%s'", hash, type);
  return de ? &de->def : NULL;
}

static char *dup_at(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER ? sg_strdup(lua_tostring(L, idx)) : NULL;
}

static int64_t int_at(lua_State *L, int idx) {
  int isnum = 0;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (isnum) return (int64_t)v;
  const char *str = lua_tostring(L, idx);
  return str ? strtoll(str, NULL, 10) : 0;
}

/* What lua/saga.lua yields, (name, args...), into a typed operation:
 *   call service command payload [timeout_ms] | send/publish service name payload | sleep ms | now | uuid
 *   | wait name [timeout_ms] | run type input [key] | child_compensate id */
static void decode_op(lua_State *co, int base, int nres, struct sg_run_out *out) {
  out->result = SG_RUN_OP;
  out->op = nres > 0 && lua_type(co, base) == LUA_TSTRING ? sg_op_from_name(lua_tostring(co, base)) : SG_OP_NONE;
  switch (out->op) {
  case SG_OP_CALL:
    if (nres > 4) out->ms = int_at(co, base + 4);
    /* fall through */
  case SG_OP_SEND:
  case SG_OP_PUBLISH:
    if (nres > 1) out->service = dup_at(co, base + 1);
    if (nres > 2) out->name = dup_at(co, base + 2);
    if (nres > 3) out->payload = dup_at(co, base + 3);
    break;
  case SG_OP_SLEEP:
    if (nres > 1) out->ms = int_at(co, base + 1);
    break;
  case SG_OP_WAIT:
    if (nres > 1) out->name = dup_at(co, base + 1);
    if (nres > 2) out->ms = int_at(co, base + 2);
    break;
  case SG_OP_NOW:
  case SG_OP_UUID:
    break;
  case SG_OP_ALL: /* fan-out: the JSON list of the round's calls */
    if (nres > 1) out->payload = dup_at(co, base + 1);
    break;
  case SG_OP_RUN: /* run type input [key] */
    if (nres > 1) out->name = dup_at(co, base + 1);
    if (nres > 2) out->payload = dup_at(co, base + 2);
    if (nres > 3) out->key = dup_at(co, base + 3);
    break;
  case SG_OP_CHILD_COMPENSATE: /* child_compensate id */
    if (nres > 1) out->name = dup_at(co, base + 1);
    break;
  case SG_OP_NONE:
  case SG_OP__COUNT:
    out->result = SG_RUN_ERROR;
    out->error = sg_strdup(nres > 0 && lua_type(co, base) == LUA_TSTRING
                               ? "a step yielded an operation the host does not know"
                               : "coroutine.yield is not available in steps");
    break;
  }
}

/* Reads what a resume of co produced into out; on finish the coroutine is left for drop(). */
static int collect(struct sg_script *sc, lua_State *co, int status, int nres, struct sg_run_out *out) {
  memset(out, 0, sizeof *out);
  int base = lua_gettop(co) - nres + 1;
  if (status == LUA_OK && nres >= 2) {
    const char *kind = lua_tostring(co, base);
    if (kind && strcmp(kind, "done") != 0) sc_memory_verdict(sc, lua_tostring(co, base + 1));
  } else if (status != LUA_OK && status != LUA_YIELD) {
    sc_memory_verdict(sc, lua_tostring(co, -1));
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
    decode_op(co, base, nres, out);
    lua_pop(co, nres);
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
  sc_run_begin(sc, co, RUN_STEP, sc_usage_of(sc, h));
  int status = lua_resume(co, sc->L, nargs, &nres);
  sc_run_end(sc, sc_usage_of(sc, h));
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
    h = sc_ref(sc, L); /* anchors the thread */
  }
  sc_usage_reset(sc, h); /* a new attempt */
  /* trampoline, step function, ctx */
  sc_push_runtime(sc, co, "run_step");
  sc_push_runtime(sc, co, "version");
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
  lua_getfield(co, -1, r->phase == SG_PH_ACTION ? "action" : "compensate"); /* SG_PH_PARTIAL too */
  lua_replace(co, -6);
  lua_pop(co, 4); /* stack: run_step, fn */
  if ((r->phase == SG_PH_COMPENSATE || r->phase == SG_PH_PARTIAL) && r->children && r->children[0] &&
      strcmp(r->children, "[]") != 0) {
    /* the step's children are compensated first (children.c), also for a failed attempt's (partial) */
    sc_push_runtime(sc, co, "compensation");
    lua_insert(co, -2);
    lua_pushstring(co, r->children);
    lua_pushinteger(co, r->step);
    /* a failed attempt's compensation before a retry leaves the children the retry shares ({id = key}) */
    lua_pushboolean(co, r->phase == SG_PH_PARTIAL && r->status == SG_ST_RUNNING);
    if (lua_pcall(co, 4, 1, 0) != LUA_OK) {
      sg_errorf(e, SG_E_INTERNAL, "cannot compensate the children of %s step %d: %s", d->type, r->step + 1,
                lua_tostring(co, -1) ? lua_tostring(co, -1) : "?");
      r_drop(sc, h);
      lua_settop(L, top);
      return -1;
    }
  }
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
    lua_pushinteger(co, r->phase == SG_PH_PARTIAL ? r->attempt - r->attempt_base : r->attempt);
    lua_setfield(co, -2, "attempt");
    lua_pushnil(co); /* a completed step's compensation is not partial */
    lua_setfield(co, -2, "partial");
    lua_pushnil(co);
    lua_setfield(co, -2, "journal");
  } else {
    lua_pop(co, 1);
    sc_push_runtime(sc, co, "new_ctx");
    lua_pushstring(co, r->id);
    lua_pushstring(co, r->type);
    lua_pushstring(co, r->input ? r->input : "{}");
    lua_pushstring(co, r->data ? r->data : "{}");
    lua_pushstring(co, d->steps[r->step].name);
    lua_pushstring(co, sg_phase_name(r->phase));
    lua_pushinteger(co, r->phase == SG_PH_PARTIAL ? r->attempt - r->attempt_base : r->attempt);
    if (r->phase == SG_PH_PARTIAL && r->partial) lua_pushstring(co, r->partial); else lua_pushnil(co);
    if (lua_pcall(co, 8, 1, 0) != LUA_OK) { /* out of memory, or a broken runtime */
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

/* The suspended coroutine behind a handle; NULL with out filled as an internal error otherwise. */
static lua_State *suspended(struct sg_script *sc, int handle, const char *what, struct sg_run_out *out) {
  lua_State *co = thread_of(sc, handle);
  if (co && lua_status(co) == LUA_YIELD) return co;
  memset(out, 0, sizeof *out);
  out->result = SG_RUN_ERROR;
  out->error = sg_asprintf("internal: %s of a coroutine that is not suspended", what);
  return NULL;
}

static int r_resume(void *ud, int handle, int ok, const char *result, struct sg_run_out *out) {
  struct sg_script *sc = ud;
  lua_State *co = suspended(sc, handle, "resume", out);
  if (!co) return 0;
  lua_pushboolean(co, ok);
  lua_pushstring(co, result);
  return run_co(sc, handle, co, 2, out);
}

/* Continues a step the hook preempted, for one more slice. */
static int r_cont(void *ud, int handle, struct sg_run_out *out) {
  struct sg_script *sc = ud;
  lua_State *co = suspended(sc, handle, "continue", out);
  return co ? run_co(sc, handle, co, 0, out) : 0;
}

static void r_drop(void *ud, int handle) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  lua_State *co = thread_of(sc, handle);
  if (co) sc_close_thread(sc, co);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sc->ctxs_ref);
  lua_pushnil(L);
  lua_rawseti(L, -2, handle);
  lua_pop(L, 1);
  sc_unref(sc, handle);
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
  sc_run_begin(sc, co, RUN_HANDLER, sc_usage_of(sc, h));
  int rc = lua_resume(co, sc->L, nargs, &nres);
  sc_run_end(sc, sc_usage_of(sc, h));
  if (rc == LUA_OK && nres >= 2 && lua_tostring(co, -nres) && strcmp(lua_tostring(co, -nres), "error") == 0)
    sc_memory_verdict(sc, lua_tostring(co, -nres + 1));
  else if (rc != LUA_OK && rc != LUA_YIELD)
    sc_memory_verdict(sc, lua_tostring(co, -1));
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
  const char *service = m->service ? m->service : "", *command = m->name ? m->name : "";
  /* a handler coroutine: an idle one from the pool, or a new one */
  int h;
  lua_State *co;
  if (sc->npool) {
    h = sc->pool[--sc->npool];
    sc->refs++;
    co = thread_of(sc, h);
  } else {
    co = lua_newthread(L);
    h = sc_ref(sc, L);
  }
  sc_usage_reset(sc, h);
  sc_push_runtime(sc, co, "handle");
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

/* The business key of a new saga: runtime.saga_key on the main thread, under the limits of a run
 * (RUN_KEY: not preemptible, so the 200 ms limit on such code applies, and the instruction, CPU and
 * memory limits of a step attempt). */
static int r_key(void *ud, const struct sg_def *d, const char *input_json, char **key, struct sg_error *e) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  *key = NULL;
  if (sc->run.kind) /* a start from inside script code: nothing does that */
    return sg_errorf(e, SG_E_INTERNAL, "saga type '%s': the key cannot be computed while script code runs", d->type);
  int top = lua_gettop(L);
  sc_push_runtime(sc, L, "saga_key");
  lua_pushstring(L, d->hash);
  lua_pushstring(L, d->type);
  lua_pushstring(L, input_json);
  struct sg_error pe = {0};
  sc_run_begin(sc, L, RUN_KEY, NULL);
  int rc = sc_pcall(L, 3, 2, &pe);
  sc_run_end(sc, NULL);
  sc_memory_verdict(sc, rc < 0 ? pe.msg : !lua_toboolean(L, -2) ? lua_tostring(L, -1) : NULL);
  if (sc->run.doomed) { /* a limit stopped it: that is the failure, whatever got caught */
    sg_errorf(e, SG_E_INVALID, "saga type '%s': key function failed: %s", d->type, sc->run.why);
    sc->run.doomed = 0;
  } else if (rc < 0) {
    char *nl = strchr(pe.msg, '\n'); /* the traceback is for the log, not the client */
    if (nl) *nl = 0;
    sg_errorf(e, SG_E_INVALID, "saga type '%s': key function failed: %s", d->type, pe.msg);
  } else if (!lua_toboolean(L, -2)) {
    sg_errorf(e, SG_E_INVALID, "saga type '%s': %s", d->type, lua_tostring(L, -1) ? lua_tostring(L, -1) : "no key");
  } else {
    if (lua_type(L, -1) == LUA_TSTRING) *key = sg_strdup(lua_tostring(L, -1));
    lua_settop(L, top);
    return 0;
  }
  lua_settop(L, top);
  return -1;
}

struct sg_runner sg_script_runner(struct sg_script *sc) {
  struct sg_runner r = { sc, r_def_get, r_start, r_resume, r_cont, r_drop, r_handle, r_handle_cont, r_key };
  return r;
}

