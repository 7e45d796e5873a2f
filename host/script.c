/* script: the lua_State, sandboxed loading, hot reload and definition versions (the runner is in
 * script_run.c, the limits in script_limits.c). */
#include "script_int.h"

#include <dirent.h>
#include <errno.h>
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

/* ---------------------------------------------------------------------------------------------- */
/* the Lua state */






static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* The one protected-call helper: calls the function under nargs arguments with a traceback handler.
 * On error, leaves nothing on the stack and copies the message to e. */
int sc_pcall(lua_State *L, int nargs, int nres, struct sg_error *e) {
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

int sc_ref(struct sg_script *sc, lua_State *L) {
  sc->refs++;
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

void sc_unref(struct sg_script *sc, int r) {
  if (r <= 0) return;
  sc->refs--;
  luaL_unref(sc->L, LUA_REGISTRYINDEX, r);
}

/* runtime function by name onto the stack */
void sc_push_runtime(struct sg_script *sc, lua_State *L, const char *fn) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, sc->runtime_ref);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
}









static int open_state(struct sg_script *sc, struct sg_error *e) {
  lua_State *L = lua_newstate(sc_alloc, sc);
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
  if (sc_pcall(L, 1, 1, e) < 0) return -1;
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
  lua_getfield(L, t, "key");
  d->has_key = !lua_isnil(L, -1);
  lua_pop(L, 1);
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
    lua_getfield(L, s, "compensate_partial");
    ds->compensate_partial = lua_toboolean(L, -1);
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

struct defent *sc_find_def(struct sg_script *sc, const char *type, const char *hash) {
  for (int i = sc->ndefs - 1; i >= 0; i--) {
    struct defent *de = sc->defs[i];
    if (strcmp(de->def.type, type) != 0) continue;
    if (hash ? strcmp(de->def.hash, hash) == 0 : de->current) return de;
  }
  return NULL;
}

/* Registers the C views of every saga in the load at the top of the stack. */
void sc_register_defs(struct sg_script *sc, const char *hash, int make_current) {
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
    struct defent *de = sc_find_def(sc, type, hash);
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
int sc_load_source(struct sg_script *sc, const char *file, const char *source, const char *hash, int historic,
                       struct sg_error *e) {
  lua_State *L = sc->L;
  sc_push_runtime(sc, L, "load");
  lua_pushstring(L, file);
  lua_pushstring(L, source);
  lua_pushstring(L, hash);
  lua_pushboolean(L, historic);
  sc_run_begin(sc, L, RUN_LOAD, NULL);
  int rc = sc_pcall(L, 4, 2, e);
  sc_run_end(sc, NULL);
  sc_memory_verdict(sc, rc < 0 ? e->msg : lua_isnil(L, -2) ? lua_tostring(L, -1) : NULL);
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
  sc_push_runtime(sc, L, "services");
  struct sg_error e = {0};
  if (sc_pcall(L, 0, 1, &e) < 0) return;
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

/* Hands the saga.schedule declarations of the load at the top of the stack to the host. */
static void report_schedules(struct sg_script *sc, const char *file) {
  if (!sc->hooks.on_schedules) return;
  lua_State *L = sc->L;
  int top = lua_gettop(L);
  lua_getfield(L, -1, "schedules");
  struct sg_schedule_spec *specs = NULL;
  int n = 0, cap = 0;
  int tbl = lua_gettop(L);
  if (lua_istable(L, tbl)) {
    lua_pushnil(L);
    while (lua_next(L, tbl)) { /* each spec's strings stay on the stack until the hook has run */
      luaL_checkstack(L, 10, "schedules");
      int t = lua_gettop(L);
      if (n == cap) { cap = cap ? cap * 2 : 4; specs = sg_xrealloc(specs, (size_t)cap * sizeof *specs); }
      struct sg_schedule_spec *sp = &specs[n++];
      lua_getfield(L, t, "name"); sp->name = lua_tostring(L, -1);
      lua_getfield(L, t, "cron"); sp->cron = lua_tostring(L, -1);
      lua_getfield(L, t, "saga"); sp->saga = lua_tostring(L, -1);
      lua_getfield(L, t, "input_json"); sp->input_json = lua_tostring(L, -1);
      lua_getfield(L, t, "catch_up");
      const char *cu = lua_tostring(L, -1);
      sp->catch_up = cu && !strcmp(cu, "all") ? SG_CATCH_UP_ALL : cu && !strcmp(cu, "none") ? SG_CATCH_UP_NONE : SG_CATCH_UP_ONE;
      lua_getfield(L, t, "local_tz"); sp->local = lua_toboolean(L, -1);
      lua_getfield(L, t, "line"); sp->line = (int)lua_tointeger(L, -1);
      sp->file = file;
      lua_pushvalue(L, t - 1); /* the key, for lua_next, above what the spec keeps */
      lua_remove(L, t - 1);
      lua_remove(L, t - 1);    /* the spec table (its strings are referenced by the values kept) */
    }
  }
  sc->hooks.on_schedules(sc->hooks.ud, file, specs, n);
  free(specs);
  lua_settop(L, top);
}

int sg_script_schedule_input(void *ud, const char *file, const char *name, int64_t fire_at, int missed, char **json,
                             struct sg_error *e) {
  struct sg_script *sc = ud;
  lua_State *L = sc->L;
  *json = NULL;
  if (sc->run.kind) return sg_errorf(e, SG_E_INTERNAL, "schedule %s: its input cannot be made while script code runs", name);
  int top = lua_gettop(L);
  sc_push_runtime(sc, L, "schedule_input");
  lua_pushstring(L, file);
  lua_pushstring(L, name);
  lua_pushinteger(L, (lua_Integer)fire_at);
  lua_pushboolean(L, missed);
  struct sg_error pe = {0};
  sc_run_begin(sc, L, RUN_KEY, NULL); /* the limits of a key function: not preemptible, 200 ms */
  int rc = sc_pcall(L, 4, 2, &pe);
  sc_run_end(sc, NULL);
  sc_memory_verdict(sc, rc < 0 ? pe.msg : !lua_toboolean(L, -2) ? lua_tostring(L, -1) : NULL);
  if (sc->run.doomed) {
    sg_errorf(e, SG_E_INVALID, "schedule %s: %s", name, sc->run.why);
    sc->run.doomed = 0;
  } else if (rc < 0) {
    sg_errorf(e, SG_E_INVALID, "schedule %s: %s", name, pe.msg);
  } else if (!lua_toboolean(L, -2)) {
    sg_errorf(e, SG_E_INVALID, "schedule %s: %s", name, lua_tostring(L, -1) ? lua_tostring(L, -1) : "no input");
  } else {
    *json = sg_strdup(lua_tostring(L, -1));
    lua_settop(L, top);
    return 0;
  }
  lua_settop(L, top);
  return -1;
}

/* The warnings of the load at the top of the stack (runtime.lint) replace f's, and are logged. */
static void keep_warnings(struct sg_script *sc, struct sfile *f) {
  lua_State *L = sc->L;
  free(f->warnings);
  f->warnings = NULL;
  lua_getfield(L, -1, "warnings");
  int n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
  struct sg_buf b = {0};
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    const char *w = lua_tostring(L, -1);
    if (w) {
      sg_warn("script %s", w);
      sg_buf_adds(&b, w);
      sg_buf_adds(&b, "\n");
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  f->warnings = b.data;
}

/* Loads one file; on success it becomes the current version of its sagas and handlers. */
static int load_file(struct sg_script *sc, struct sfile *f) {
  struct sg_error e = {0};
  size_t len;
  char *src = sg_read_file(f->path, &len, &e);
  if (!src) {
    free(f->error);
    f->error = sg_strdup(e.msg);
    if (sc->hooks.on_load_failed) sc->hooks.on_load_failed(sc->hooks.ud, f->path, f->error);
    return -1;
  }
  char hash[17];
  version_of(src, len, hash);
  if (f->hash && strcmp(f->hash, hash) == 0 && !f->error) { free(src); return 0; }
  if (memchr(src, 0, len) || (len > 0 && src[0] == 0x1b)) {
    free(f->error);
    f->error = sg_asprintf("%s: not a text script (binary chunks are not loaded)", f->path);
    sg_err("script %s", f->error);
    if (sc->hooks.on_load_failed) sc->hooks.on_load_failed(sc->hooks.ud, f->path, f->error);
    free(src);
    return -1;
  }
  if (sc_load_source(sc, f->path, src, hash, 0, &e) < 0) {
    free(f->error);
    f->error = sg_strdup(e.msg);
    sg_err("script %s failed to load%s: %s", f->path, f->hash ? " (its previous version stays in use)" : "", e.msg);
    if (sc->hooks.on_load_failed) sc->hooks.on_load_failed(sc->hooks.ud, f->path, f->error);
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
  sc_push_runtime(sc, sc->L, "commit");
  lua_pushvalue(sc->L, -2);
  if (sc_pcall(sc->L, 1, 0, &e) < 0) sg_err("commit %s: %s", f->path, e.msg);
  sc_register_defs(sc, hash, 1);
  report_breakers(sc);
  report_schedules(sc, f->path);
  keep_warnings(sc, f);
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
    if (load_file(sc, f) < 0) sc->load_failures++;
    changed = 1;
  }
  free(names);
  /* files that disappeared: no new starts of their sagas; running instances keep their version */
  for (int j = 0; j < sc->nfiles;) {
    struct sfile *f = &sc->files[j];
    if (f->seen) { j++; continue; }
    sg_info("script %s removed: its sagas take no new starts; running instances finish", f->path);
    retire_file(sc, f->path);
    sc_push_runtime(sc, sc->L, "remove");
    lua_pushstring(sc->L, f->path);
    struct sg_error e = {0};
    sc_pcall(sc->L, 1, 0, &e);
    if (sc->hooks.on_schedules) sc->hooks.on_schedules(sc->hooks.ud, f->path, NULL, 0);
    free(f->path); free(f->hash); free(f->error); free(f->warnings);
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

void sg_script_load_stats(struct sg_script *sc, int64_t *failures, int *failing) {
  *failures = sc->load_failures;
  *failing = 0;
  for (int i = 0; i < sc->nfiles; i++) *failing += sc->files[i].error != NULL;
}

int sg_script_print_errors(struct sg_script *sc, FILE *out) {
  int n = 0;
  for (int i = 0; i < sc->nfiles; i++)
    if (sc->files[i].error) { fprintf(out, "%s\n", sc->files[i].error); n++; }
  return n;
}

int sg_script_print_warnings(struct sg_script *sc, FILE *out) {
  int n = 0;
  for (int i = 0; i < sc->nfiles; i++) {
    const char *w = sc->files[i].warnings;
    if (!w || sc->files[i].error) continue;
    fputs(w, out);
    for (; *w; w++) n += *w == '\n';
  }
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
  sc_push_runtime(sc, L, "services");
  struct sg_error e = {0};
  if (sc_pcall(L, 0, 1, &e) == 0) {
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
  sg_watchdog_acquire(sc_poke);
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
  for (int i = 0; i < sc->nusage; i++) free(sc->usage[i].mem_why);
  free(sc->usage);
  sg_watchdog_release();
  for (int i = 0; i < sc->nfiles; i++) {
    free(sc->files[i].path); free(sc->files[i].hash); free(sc->files[i].error); free(sc->files[i].warnings);
  }
  free(sc->files);
  for (int i = 0; i < sc->ndefs; i++) free_def(sc->defs[i]);
  free(sc->defs);
  free(sc->dir);
  free(sc);
}
