/* devtools: `sagahost test`, `sagahost new saga NAME`, `sagahost types DIR` (see devtools.h). The kit
 * (lua/saga/), the annotations (lua/types/) and the templates (lua/templates/) are compiled in by
 * cmake/embed_files.cmake, so an installed binary needs nothing else but busted and sagahost.so. */
#include "devtools.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

struct sg_dev_file { const char *name, *src; size_t len; };
extern const struct sg_dev_file sg_dev_files[]; /* dev_embedded.c */

void sg_dev_usage(FILE *f) {
  fprintf(f,
          "commands for saga authors (no host needed; docs/testing.md):\n"
          "  test [SCRIPT_DIR] [SPEC_DIR] [-- BUSTED_ARGS...]\n"
          "                         run the specs in SPEC_DIR (default ./spec; or one spec file) with busted, the\n"
          "                         testing kit (require \"saga.testing\") and sagahost.so on the path and\n"
          "                         SAGAHOST_SCRIPTS=SCRIPT_DIR (default ./sagas); exits with busted's status\n"
          "  new saga NAME [--script-dir DIR] [--spec-dir DIR]\n"
          "                         write DIR/<name>.lua (default sagas/) and its spec <name>_spec.lua (default\n"
          "                         spec/) from a template; never overwrites\n"
          "  types DIR              write the LuaLS annotations of saga, ctx and saga.testing into DIR\n");
}

static int dev_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int dev_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "sagahost %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 2;
}

/* mkdir -p of the directory part of path (dir_only: path itself is a directory) */
static int make_dirs(const char *path, int dir_only, struct sg_error *e) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return sg_errorf(e, SG_E_INVALID, "%s: path too long", path);
  if (!dir_only) {
    char *slash = strrchr(buf, '/');
    if (!slash) return 0;
    *slash = 0;
  }
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || !*p) {
      char c = *p;
      *p = 0;
      if (buf[0] && mkdir(buf, 0777) < 0 && errno != EEXIST)
        return sg_errorf(e, SG_E_INTERNAL, "cannot create directory %s: %s", buf, strerror(errno));
      struct stat st;
      if (buf[0] && (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode)))
        return sg_errorf(e, SG_E_INTERNAL, "%s is not a directory", buf);
      *p = c;
      if (!c) break;
    }
  }
  return 0;
}

/* writes len bytes to path; excl: refuse if it exists */
static int write_file(const char *path, const char *src, size_t len, int excl, struct sg_error *e) {
  if (make_dirs(path, 0, e) < 0) return -1;
  int fd = open(path, O_WRONLY | O_CREAT | (excl ? O_EXCL : O_TRUNC), 0644);
  if (fd < 0) return sg_errorf(e, errno == EEXIST ? SG_E_CONFLICT : SG_E_INTERNAL, "cannot write %s: %s", path, strerror(errno));
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, src + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      return sg_errorf(e, SG_E_INTERNAL, "cannot write %s: %s", path, strerror(err));
    }
    off += (size_t)n;
  }
  if (close(fd) < 0) return sg_errorf(e, SG_E_INTERNAL, "cannot write %s: %s", path, strerror(errno));
  return 0;
}

static const struct sg_dev_file *dev_file(const char *name) {
  for (const struct sg_dev_file *f = sg_dev_files; f->name; f++)
    if (!strcmp(f->name, name)) return f;
  return NULL;
}

/* writes every embedded file named PREFIX/rest as DIR/rest; returns how many (-1 on error) */
static int write_tree(const char *prefix, const char *dir, int verbose, struct sg_error *e) {
  size_t pl = strlen(prefix);
  int n = 0;
  for (const struct sg_dev_file *f = sg_dev_files; f->name; f++) {
    if (strncmp(f->name, prefix, pl) || f->name[pl] != '/') continue;
    char *path = sg_asprintf("%s/%s", dir, f->name + pl + 1);
    int rc = write_file(path, f->src, f->len, 0, e);
    if (!rc && verbose) printf("wrote %s\n", path);
    free(path);
    if (rc < 0) return -1;
    n++;
  }
  return n;
}

/* rm -r of a directory this process made (only regular files and directories in it) */
static void remove_tree(const char *dir) {
  /* the kit's files: kit/<rel> under dir; remove them, then the directories bottom-up */
  for (const struct sg_dev_file *f = sg_dev_files; f->name; f++) {
    if (strncmp(f->name, "kit/", 4)) continue;
    char *path = sg_asprintf("%s/%s", dir, f->name + 4);
    unlink(path);
    for (char *slash = strrchr(path, '/'); slash && slash > path + strlen(dir); slash = strrchr(path, '/')) {
      *slash = 0;
      rmdir(path); /* fails while not empty: a later file empties it */
    }
    free(path);
  }
  rmdir(dir);
}

/* ------------------------------------------------------------------------------------------------
 * sagahost test */

/* the directory of this executable (for sagahost.so next to it) */
static int self_dir(char out[PATH_MAX]) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return -1;
  exe[n] = 0;
  snprintf(out, PATH_MAX, "%s", dirname(exe));
  return 0;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* the first executable NAME on $PATH, malloc'd, or NULL */
static char *on_path(const char *name) {
  const char *path = getenv("PATH");
  if (!path || !*path) return NULL;
  char *copy = sg_strdup(path), *save = NULL;
  for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char *cand = sg_asprintf("%s/%s", *d ? d : ".", name);
    if (is_file(cand) && access(cand, X_OK) == 0) { free(copy); return cand; }
    free(cand);
  }
  free(copy);
  return NULL;
}

/* where sagahost.so is: $SAGAHOST_MODULE_DIR, else next to this executable, else the install locations */
static int find_module(char dir[PATH_MAX], struct sg_error *e) {
  const char *env = getenv("SAGAHOST_MODULE_DIR");
  if (env && *env) {
    snprintf(dir, PATH_MAX, "%s", env);
    char *so = sg_asprintf("%s/sagahost.so", dir);
    int ok = is_file(so);
    free(so);
    if (ok) return 0;
    return sg_errorf(e, SG_E_NOTFOUND, "the loadable module sagahost.so is not in $SAGAHOST_MODULE_DIR (%s)", env);
  }
  char self[PATH_MAX];
  if (self_dir(self) < 0) return sg_errorf(e, SG_E_INTERNAL, "cannot find this executable (/proc/self/exe): %s", strerror(errno));
  const char *rel[] = { "", "/../lib/sagahost", "/../lib/lua/5.4" };
  struct sg_buf looked;
  sg_buf_init(&looked);
  for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
    char *so = sg_asprintf("%s%s/sagahost.so", self, rel[i]);
    if (is_file(so)) {
      snprintf(dir, PATH_MAX, "%s%s", self, rel[i]);
      free(so);
      sg_buf_free(&looked);
      return 0;
    }
    sg_buf_printf(&looked, "%s%s", i ? ", " : "", so);
    free(so);
  }
  sg_errorf(e, SG_E_NOTFOUND,
            "the loadable module sagahost.so is missing: looked for %s (it is built with the binary: `make build` "
            "makes build/sagahost.so next to build/sagahost; or set SAGAHOST_MODULE_DIR to its directory)",
            looked.data ? looked.data : "");
  sg_buf_free(&looked);
  return -1;
}

/* prefix;$NAME_5_4 (or $NAME, or the default path: ;;) */
static void prepend_path(const char *var, const char *plain, const char *prefix) {
  const char *base = getenv(var);
  if (!base || !*base) base = getenv(plain);
  char *v = base && *base ? sg_asprintf("%s;%s", prefix, base) : sg_asprintf("%s;;", prefix);
  setenv(var, v, 1);
  free(v);
}

static int test_usage(void) {
  fprintf(stderr, "usage: sagahost test [SCRIPT_DIR] [SPEC_DIR] [-- BUSTED_ARGS...]\n");
  return 2;
}

int sg_dev_test(int argc, char **argv) {
  const char *pos[2] = { NULL, NULL };
  int npos = 0, rest = argc;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { rest = i + 1; break; }
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { sg_dev_usage(stdout); return 0; }
    if (argv[i][0] == '-') {
      fprintf(stderr, "sagahost test: unknown option %s (busted's options go after --)\n", argv[i]);
      return test_usage();
    }
    if (npos == 2) { fprintf(stderr, "sagahost test: one SCRIPT_DIR and one SPEC_DIR (got %s too)\n", argv[i]); return test_usage(); }
    pos[npos++] = argv[i];
  }
  const char *scripts = pos[0] ? pos[0] : "sagas", *specs = pos[1] ? pos[1] : "spec";
  struct sg_error e = {0};
  if (sg_dir_check(scripts, "script directory", &e) < 0)
    return dev_error("test", "%s (give it: sagahost test SCRIPT_DIR SPEC_DIR)", e.msg);
  struct stat st;
  if (stat(specs, &st) < 0)
    return dev_error("test", "no specs: %s: %s (give the directory of your *_spec.lua files, or one spec file: "
                     "sagahost test SCRIPT_DIR SPEC_DIR)", specs, strerror(errno));
  char *busted = on_path("busted");
  if (!busted)
    return dev_error("test", "busted is not installed (no `busted` on $PATH): install it with `apt-get install "
                     "lua-busted` (Debian, Ubuntu) or `luarocks --lua-version 5.4 install busted`");
  char *lua = on_path("lua5.4");
  if (!lua) {
    free(busted);
    return dev_error("test", "lua5.4 is not on $PATH (busted runs the specs with --lua=lua5.4): install it with "
                     "`apt-get install lua5.4`");
  }
  free(lua);
  char moddir[PATH_MAX];
  if (find_module(moddir, &e) < 0) { free(busted); return dev_error("test", "%s", e.msg); }
  if (!dev_file("kit/saga/testing.lua")) {
    free(busted);
    return dev_error("test", "this sagahost was built without the testing kit (lua/saga/testing.lua)");
  }
  char scripts_abs[PATH_MAX];
  if (!realpath(scripts, scripts_abs)) {
    free(busted);
    return dev_error("test", "script directory %s: %s", scripts, strerror(errno));
  }

  /* the kit, written where only this run looks */
  const char *tmp = getenv("TMPDIR");
  char *kit = sg_asprintf("%s/sagahost-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(kit)) {
    int rc = dev_error("test", "cannot create a temporary directory %s: %s", kit, strerror(errno));
    free(kit);
    free(busted);
    return rc;
  }
  if (write_tree("kit", kit, 0, &e) < 0) {
    remove_tree(kit);
    free(kit);
    free(busted);
    return dev_error("test", "%s", e.msg);
  }
  char *lpath = sg_asprintf("%s/?.lua;%s/?/init.lua", kit, kit);
  char *cpath = sg_asprintf("%s/?.so", moddir);
  prepend_path("LUA_PATH_5_4", "LUA_PATH", lpath);
  prepend_path("LUA_CPATH_5_4", "LUA_CPATH", cpath);
  setenv("SAGAHOST_SCRIPTS", scripts_abs, 1);
  free(lpath);
  free(cpath);

  /* busted --lua=lua5.4 [BUSTED_ARGS] SPEC_DIR */
  int nargs = argc - rest;
  char **args = sg_xcalloc((size_t)nargs + 4, sizeof *args);
  int k = 0;
  args[k++] = "busted";
  args[k++] = "--lua=lua5.4";
  for (int i = rest; i < argc; i++) args[k++] = argv[i];
  args[k++] = (char *)specs;
  args[k] = NULL;
  fflush(NULL);
  struct sigaction ign = { .sa_handler = SIG_IGN }, old_int, old_term;
  sigaction(SIGINT, &ign, &old_int); /* ^C reaches busted; we stay to remove the kit */
  sigaction(SIGTERM, &ign, &old_term);
  pid_t pid = fork();
  if (pid == 0) {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    execv(busted, args);
    fprintf(stderr, "sagahost test: cannot run %s: %s\n", busted, strerror(errno));
    _exit(127);
  }
  int rc;
  if (pid < 0) {
    rc = dev_error("test", "cannot start busted: %s", strerror(errno));
  } else {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  }
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  remove_tree(kit);
  free(kit);
  free(args);
  free(busted);
  return rc;
}

/* ------------------------------------------------------------------------------------------------
 * sagahost new saga NAME */

/* NAME ("BookTrip", "book_trip", "book-trip", "bookTrip") as a type name (BookTrip) and a file name
 * (book_trip); -1 if it is not a name */
static int split_name(const char *name, char type[128], char snake[160]) {
  size_t n = strlen(name);
  if (n == 0 || n > 64 || !isalpha((unsigned char)name[0])) return -1;
  size_t t = 0, s = 0;
  int word_start = 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c == '_' || c == '-') { word_start = 1; continue; }
    if (!isalnum(c)) return -1;
    if (isupper(c) && i > 0 && (islower((unsigned char)name[i - 1]) || isdigit((unsigned char)name[i - 1]))) word_start = 1;
    if (word_start && s > 0 && snake[s - 1] != '_') snake[s++] = '_';
    type[t++] = (char)(word_start ? toupper(c) : c);
    snake[s++] = (char)tolower(c);
    word_start = 0;
  }
  type[t] = 0;
  snake[s] = 0;
  return t ? 0 : -1;
}

/* the template with {{Name}}, {{name}}, {{script_dir}} and {{spec_dir}} replaced */
static char *fill(const struct sg_dev_file *tmpl, const char *type, const char *snake, const char *script_dir,
                  const char *spec_dir) {
  struct sg_buf b;
  sg_buf_init(&b);
  const char *p = tmpl->src, *end = tmpl->src + tmpl->len;
  while (p < end) {
    const char *open = strstr(p, "{{");
    if (!open || open >= end) { sg_buf_add(&b, p, (size_t)(end - p)); break; }
    sg_buf_add(&b, p, (size_t)(open - p));
    const char *close = strstr(open, "}}");
    size_t key = close ? (size_t)(close - open - 2) : 0;
    const char *val = NULL;
    if (close && key == 4 && !strncmp(open + 2, "Name", 4)) val = type;
    else if (close && key == 4 && !strncmp(open + 2, "name", 4)) val = snake;
    else if (close && key == 10 && !strncmp(open + 2, "script_dir", 10)) val = script_dir;
    else if (close && key == 8 && !strncmp(open + 2, "spec_dir", 8)) val = spec_dir;
    if (!val) { sg_buf_add(&b, "{{", 2); p = open + 2; continue; }
    sg_buf_adds(&b, val);
    p = close + 2;
  }
  if (!b.data) sg_buf_adds(&b, "");
  return sg_buf_steal(&b);
}

static int new_usage(void) {
  fprintf(stderr, "usage: sagahost new saga NAME [--script-dir DIR] [--spec-dir DIR]\n");
  return 2;
}

int sg_dev_new(int argc, char **argv) {
  const char *what = NULL, *name = NULL, *script_dir = "sagas", *spec_dir = "spec";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { sg_dev_usage(stdout); return 0; }
    if (!strcmp(a, "--script-dir") || !strcmp(a, "--spec-dir")) {
      if (i + 1 >= argc || !argv[i + 1][0]) { fprintf(stderr, "sagahost new: %s needs a directory\n", a); return new_usage(); }
      if (!strcmp(a, "--script-dir")) script_dir = argv[++i];
      else spec_dir = argv[++i];
      continue;
    }
    if (a[0] == '-') { fprintf(stderr, "sagahost new: unknown option %s\n", a); return new_usage(); }
    if (!what) what = a;
    else if (!name) name = a;
    else { fprintf(stderr, "sagahost new: one NAME (got %s too)\n", a); return new_usage(); }
  }
  if (!what || strcmp(what, "saga")) {
    fprintf(stderr, "sagahost new: what to create: `saga` (got %s)\n", what ? what : "nothing");
    return new_usage();
  }
  if (!name) { fprintf(stderr, "sagahost new saga: a NAME, e.g. BookTrip or book_trip\n"); return new_usage(); }
  char type[128], snake[160];
  if (split_name(name, type, snake) < 0) {
    fprintf(stderr, "sagahost new saga: '%s' is not a name: 1 to 64 letters, digits, '_' or '-', starting with a letter\n", name);
    return 2;
  }
  const struct sg_dev_file *ts = dev_file("templates/saga.lua.tmpl"), *tt = dev_file("templates/spec.lua.tmpl");
  if (!ts || !tt) { fprintf(stderr, "sagahost new: this binary was built without its templates (lua/templates/)\n"); return 1; }
  char *saga_path = sg_asprintf("%s/%s.lua", script_dir, snake);
  char *spec_path = sg_asprintf("%s/%s_spec.lua", spec_dir, snake);
  int rc = 0;
  struct stat st;
  if (stat(saga_path, &st) == 0 || stat(spec_path, &st) == 0) {
    fprintf(stderr, "sagahost new saga: %s exists: not overwriting it (nothing written; remove it or pick another name)\n",
            stat(saga_path, &st) == 0 ? saga_path : spec_path);
    rc = 1;
  } else {
    char *saga_src = fill(ts, type, snake, script_dir, spec_dir);
    char *spec_src = fill(tt, type, snake, script_dir, spec_dir);
    struct sg_error e = {0};
    if (write_file(saga_path, saga_src, strlen(saga_src), 1, &e) < 0 ||
        write_file(spec_path, spec_src, strlen(spec_src), 1, &e) < 0) {
      fprintf(stderr, "sagahost new saga: %s\n", e.msg);
      rc = 1;
    } else {
      printf("wrote %s (saga type %s)\nwrote %s\nrun its spec: sagahost test %s %s\n", saga_path, type, spec_path,
             script_dir, spec_dir);
    }
    free(saga_src);
    free(spec_src);
  }
  free(saga_path);
  free(spec_path);
  return rc;
}

/* ------------------------------------------------------------------------------------------------
 * sagahost types DIR */

int sg_dev_types(int argc, char **argv) {
  if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { sg_dev_usage(stdout); return 0; }
  if (argc != 2 || argv[1][0] == '-') { fprintf(stderr, "usage: sagahost types DIR\n"); return 2; }
  struct sg_error e = {0};
  if (make_dirs(argv[1], 1, &e) < 0) { fprintf(stderr, "sagahost types: %s\n", e.msg); return 1; }
  int n = write_tree("types", argv[1], 1, &e);
  if (n < 0) { fprintf(stderr, "sagahost types: %s\n", e.msg); return 1; }
  printf("%d annotation file(s) for lua-language-server in %s; point it at them from .luarc.json:\n"
         "  { \"runtime.version\": \"Lua 5.4\", \"workspace.library\": [\"%s\"] }\n",
         n, argv[1], argv[1]);
  return 0;
}
