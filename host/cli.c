/* cli: thin HTTP clients of a running host, one function per subcommand.
 *
 * Arguments are checked locally first (unknown flags, missing TYPE/ID, --input that is not JSON) so
 * a typo costs a usage message with exit 2 rather than a round trip; everything else is the host's
 * answer, printed as it came (JSON pretty-printed) or, for a non-2xx status, as its "error" field. */
#include "cli.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#ifndef SG_VERSION
#define SG_VERSION "dev"
#endif

#define SG_CLI_DEFAULT_SERVER "http://127.0.0.1:7070"
#define SG_CLI_MAX_FLAGS 16
/* jansson's default 17 digits shows 0.1 as 0.10000000000000001; 15 round-trips every decimal
 * the host can have written (Lua and SQLite print at most 15 significant digits). */
#define SG_CLI_JSON_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

struct sg_cli;

/* One subcommand: how it is called, what it accepts, and the function that runs it. */
struct sg_cli_cmd {
  const char *name;       /* argv[0] */
  const char *synopsis;   /* the arguments, as shown in the usage text */
  const char *summary;    /* one line for the overview */
  const char *details;    /* more lines for `CMD --help` */
  const char *valued;     /* flags taking a value, each as " name " (--server, --cacert always accepted) */
  const char *switches;   /* flags without a value, same form */
  const char *positional; /* what the one positional argument is ("TYPE", "ID"), NULL if none */
  const char *required;   /* a valued flag that must be given, NULL if none */
  int (*run)(struct sg_cli *cli);
  int more;               /* positional arguments accepted after the first (signal: NAME [JSON]), 0 = none */
};

/* One invocation: its parsed arguments and the curl handle its requests share. */
struct sg_cli {
  const struct sg_cli_cmd *cmd;          /* the subcommand */
  char *server;                          /* base URL without a trailing slash (owned) */
  const char *cacert;                    /* --cacert or $SAGAHOST_CACERT: CA file for https, NULL = system's */
  char *auth_header;                     /* "Authorization: Bearer $SAGAHOST_TOKEN" (owned), NULL if unset */
  const char *arg;                       /* the positional argument, NULL if none */
  const char *more[2];                   /* the ones after it (cmd->more at most), NULL if not given */
  int nmore;
  char names[SG_CLI_MAX_FLAGS][32];      /* flags given, without the leading "--" */
  const char *values[SG_CLI_MAX_FLAGS];  /* their values ("" for switches); point into argv */
  int nflags;                            /* entries used in names/values */
  CURL *curl;                            /* reused so --wait polls over one connection */
};

/* One HTTP answer. */
struct sg_cli_resp {
  long status;        /* HTTP status */
  struct sg_buf body; /* the body, NUL-terminated */
};

/* ---- arguments ---- */

static const char *sg_cli_opt(struct sg_cli *cli, const char *name) {
  for (int i = cli->nflags - 1; i >= 0; i--) /* the last one given wins */
    if (strcmp(cli->names[i], name) == 0) return cli->values[i];
  return NULL;
}

static int sg_cli_listed(const char *list, const char *name) {
  char key[40];
  snprintf(key, sizeof key, " %s ", name);
  return list && strstr(list, key) != NULL;
}

static void sg_cli_cmd_usage(const struct sg_cli_cmd *c, FILE *f) {
  fprintf(f, "usage: sagahost %s %s\n", c->name, c->synopsis);
}

__attribute__((format(printf, 2, 3))) static int sg_cli_usage_error(struct sg_cli *cli,
                                                                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("sagahost: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  sg_cli_cmd_usage(cli->cmd, stderr);
  fprintf(stderr, "(sagahost %s --help for details)\n", cli->cmd->name);
  return 2;
}

/* Returns -1 to go on, else the exit code (0 after --help, 2 after a usage error). */
static int sg_cli_parse(struct sg_cli *cli, int argc, char **argv) {
  const struct sg_cli_cmd *c = cli->cmd;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      sg_cli_cmd_usage(c, stdout);
      fprintf(stdout, "\n%s\n%s", c->summary, c->details);
      return 0;
    }
    if (a[0] == '-' && a[1]) {
      const char *name = a[0] == '-' && a[1] == '-' ? a + 2 : a + 1;
      const char *eq = strchr(name, '=');
      size_t n = eq ? (size_t)(eq - name) : strlen(name);
      if (n == 0 || n >= sizeof cli->names[0]) return sg_cli_usage_error(cli, "unknown option %s", a);
      if (cli->nflags == SG_CLI_MAX_FLAGS) return sg_cli_usage_error(cli, "too many options");
      char *slot = cli->names[cli->nflags];
      memcpy(slot, name, n);
      slot[n] = 0;
      const char *value;
      if (strcmp(slot, "server") == 0 || strcmp(slot, "cacert") == 0 || sg_cli_listed(c->valued, slot)) {
        value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!value) return sg_cli_usage_error(cli, "--%s needs a value", slot);
      } else if (sg_cli_listed(c->switches, slot)) {
        if (eq) return sg_cli_usage_error(cli, "--%s takes no value", slot);
        value = "";
      } else {
        return sg_cli_usage_error(cli, "unknown option %s for %s", a, c->name);
      }
      cli->values[cli->nflags++] = value;
    } else if (c->positional && !cli->arg) {
      cli->arg = a;
    } else if (cli->nmore < c->more && cli->nmore < 2) {
      cli->more[cli->nmore++] = a;
    } else if (c->positional) {
      return sg_cli_usage_error(cli, "%s takes one %s (got a second: %s)", c->name, c->positional, a);
    } else {
      return sg_cli_usage_error(cli, "%s takes no arguments (got %s)", c->name, a);
    }
  }
  if (c->positional && (!cli->arg || !*cli->arg))
    return sg_cli_usage_error(cli, "%s needs a %s", c->name, c->positional);
  if (c->required && !sg_cli_opt(cli, c->required))
    return sg_cli_usage_error(cli, "%s needs --%s", c->name, c->required);
  return -1;
}

/* ---- HTTP ---- */

static size_t sg_cli_write_cb(char *data, size_t size, size_t n, void *ud) {
  sg_buf_add(ud, data, size * n);
  return size * n;
}

/* "/v1/sagas/" + escaped piece + suffix; malloc'd. */
static char *sg_cli_path(struct sg_cli *cli, const char *piece, const char *suffix) {
  char *esc = curl_easy_escape(cli->curl, piece, 0);
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_printf(&b, "/v1/sagas/%s%s", esc ? esc : "", suffix ? suffix : "");
  curl_free(esc);
  return sg_buf_steal(&b);
}

/* One request. Returns 0 with r filled (any status), or -1 after printing why the host could not
 * be reached. body NULL sends none; r->body must be freed by the caller either way. */
static int sg_cli_request(struct sg_cli *cli, const char *method, const char *path,
                          const char *body, const char *idem_key, struct sg_cli_resp *r) {
  CURL *c = cli->curl;
  r->status = 0;
  sg_buf_init(&r->body);
  struct sg_buf url;
  sg_buf_init(&url);
  sg_buf_printf(&url, "%s%s", cli->server, path);

  struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
  if (body) {
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip for larger inputs */
  }
  char idem[300];
  if (idem_key) {
    snprintf(idem, sizeof idem, "Idempotency-Key: %s", idem_key);
    hdrs = curl_slist_append(hdrs, idem);
  }
  if (cli->auth_header) hdrs = curl_slist_append(hdrs, cli->auth_header);
  char errbuf[CURL_ERROR_SIZE] = "";
  curl_easy_reset(c); /* keeps the connection cache, drops the previous request's options */
  curl_easy_setopt(c, CURLOPT_URL, url.data);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "sagahost/" SG_VERSION);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sg_cli_write_cb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
  if (cli->cacert) curl_easy_setopt(c, CURLOPT_CAINFO, cli->cacert);
  if (body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  }
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(hdrs);
  sg_buf_free(&url);
  if (rc != CURLE_OK) {
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
        rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_GOT_NOTHING)
      fprintf(stderr, "sagahost: cannot reach the host at %s: %s. Is `sagahost run` running?\n",
              cli->server, why);
    else
      fprintf(stderr, "sagahost: %s %s%s failed: %s\n", method, cli->server, path, why);
    return -1;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
  if (!r->body.data) sg_buf_adds(&r->body, "");
  return 0;
}

static int sg_cli_ok(const struct sg_cli_resp *r) { return r->status >= 200 && r->status < 300; }

/* A non-2xx answer: the host puts what went wrong in "error". Returns the exit code (1). */
static int sg_cli_http_error(const struct sg_cli_resp *r) {
  json_t *j = json_loads(r->body.data, JSON_DECODE_ANY, NULL);
  const char *msg = json_string_value(json_object_get(j, "error"));
  if (msg) fprintf(stderr, "sagahost: %s (HTTP %ld)\n", msg, r->status);
  else if (r->body.len) fprintf(stderr, "sagahost: %.300s (HTTP %ld)\n", r->body.data, r->status);
  else fprintf(stderr, "sagahost: the host answered HTTP %ld with no explanation\n", r->status);
  const char *token = getenv("SAGAHOST_TOKEN");
  if (r->status == 401 && (!token || !*token))
    fprintf(stderr, "sagahost: the host requires a token: set SAGAHOST_TOKEN to one from its --auth file\n");
  else if (r->status == 401)
    fprintf(stderr, "sagahost: the host does not know the token in SAGAHOST_TOKEN\n");
  json_decref(j);
  return 1;
}

static void sg_cli_print_json(const char *text) {
  json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
  char *s = j ? json_dumps(j, SG_CLI_JSON_FLAGS) : NULL;
  if (s) puts(s);
  else printf("%s%s", text, text[0] && text[strlen(text) - 1] == '\n' ? "" : "\n");
  free(s);
  json_decref(j);
}

/* The common shape: one request, print the JSON answer or the error. */
static int sg_cli_simple(struct sg_cli *cli, const char *method, const char *suffix, const char *body) {
  char *path = sg_cli_path(cli, cli->arg, suffix);
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, method, path, body, NULL, &r);
  free(path);
  if (rc == 0) {
    if (sg_cli_ok(&r)) sg_cli_print_json(r.body.data);
    else rc = sg_cli_http_error(&r);
  }
  sg_buf_free(&r.body);
  return rc ? 1 : 0;
}

/* ---- subcommands ---- */

static double sg_cli_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sg_cli_sleep(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

static int sg_cli_terminal(const char *status) {
  return status && (strcmp(status, "completed") == 0 || strcmp(status, "compensated") == 0 ||
                    strcmp(status, "compensation_failed") == 0 || strcmp(status, "resolved") == 0 ||
                    strcmp(status, "terminated") == 0);
}

/* the saga in an answer (r's body) if it has ended: printed, and the exit code (0 only if completed);
 * -1 if it has not ended (*status: what it is, NULL if the answer has none) */
static int sg_cli_ended(const char *id, const struct sg_cli_resp *r, char *status, size_t n) {
  json_t *j = json_loads(r->body.data, 0, NULL);
  const char *st = json_string_value(json_object_get(j, "status"));
  snprintf(status, n, "%s", st ? st : "");
  int rc = -1;
  if (sg_cli_terminal(st)) {
    sg_cli_print_json(r->body.data);
    rc = strcmp(st, "completed") == 0 ? 0 : 1;
    if (rc) fprintf(stderr, "sagahost: saga %s ended %s\n", id, st);
  }
  json_decref(j);
  return rc;
}

/* Waits for the saga's end with GET /v1/sagas/{id}?wait= (the host answers when it is terminal or the
 * wait is over): one request per 50 s of --timeout (each under the 60 s request timeout), no polling. */
static int sg_cli_wait(struct sg_cli *cli, const char *id, double deadline, double timeout) {
  char *base = sg_cli_path(cli, id, NULL);
  int rc = 1;
  for (;;) {
    double left = deadline - sg_cli_mono();
    long wait_ms = left <= 0 ? 1 : left > 50 ? 50000 : (long)(left * 1000) + 1;
    char *path = sg_asprintf("%s?wait=%ldms", base, wait_ms);
    struct sg_cli_resp r;
    double t0 = sg_cli_mono();
    int got = sg_cli_request(cli, "GET", path, NULL, NULL, &r);
    double took = sg_cli_mono() - t0;
    free(path);
    if (got < 0) break;
    if (!sg_cli_ok(&r)) { sg_cli_http_error(&r); sg_buf_free(&r.body); break; }
    char status[64];
    int ended = sg_cli_ended(id, &r, status, sizeof status);
    sg_buf_free(&r.body);
    if (ended >= 0) { rc = ended; break; }
    if (deadline - sg_cli_mono() <= 0) {
      fprintf(stderr,
              "sagahost: saga %s is still %s after %g s (--timeout); it goes on in the host, "
              "see `sagahost show %s`\n", id, *status ? status : "unknown", timeout, id);
      break;
    }
    if (took * 2000 < (double)wait_ms) sg_cli_sleep(0.2); /* answered early, not finished: a host without ?wait= */
  }
  free(base);
  return rc;
}

static int sg_cli_start(struct sg_cli *cli) {
  const char *input = sg_cli_opt(cli, "input");
  if (!input) input = "{}";
  json_error_t je;
  json_t *j = json_loads(input, JSON_DECODE_ANY, &je);
  if (!j)
    return sg_cli_usage_error(cli, "--input is not valid JSON: %s at line %d, column %d", je.text,
                              je.line, je.column);
  json_decref(j);
  const char *key = sg_cli_opt(cli, "id");
  if (key) {
    for (const char *p = key; *p; p++)
      if ((unsigned char)*p < 0x20) return sg_cli_usage_error(cli, "--id must not contain control characters");
    if (!*key || strlen(key) > 200) return sg_cli_usage_error(cli, "--id must be 1 to 200 characters");
  }
  double timeout = 60;
  const char *ts = sg_cli_opt(cli, "timeout");
  if (ts) {
    char *end;
    timeout = strtod(ts, &end);
    if (end == ts || *end || !(timeout > 0))
      return sg_cli_usage_error(cli, "--timeout needs a positive number of seconds, got '%s'", ts);
  }

  const char *start_at = sg_cli_opt(cli, "start-at"), *delay = sg_cli_opt(cli, "delay");
  if (start_at && delay) return sg_cli_usage_error(cli, "give --start-at or --delay, not both");
  struct sg_buf q;
  sg_buf_init(&q);
  if (start_at || delay) { /* the host checks the value: one message for the API and the CLI */
    char *esc = curl_easy_escape(cli->curl, start_at ? start_at : delay, 0);
    sg_buf_printf(&q, "?%s=%s", start_at ? "start_at" : "delay", esc ? esc : "");
    curl_free(esc);
  }
  /* --wait: the start itself waits (POST ?wait=, up to 50 s of the timeout), then GET ?wait= if need be */
  double deadline = sg_cli_mono() + timeout;
  int wait = sg_cli_opt(cli, "wait") != NULL;
  if (wait) sg_buf_printf(&q, "%swait=%ldms", q.len ? "&" : "?", timeout > 50 ? 50000L : (long)(timeout * 1000) + 1);
  char *path = sg_cli_path(cli, cli->arg, q.len ? q.data : NULL);
  sg_buf_free(&q);
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, "POST", path, input, key, &r);
  free(path);
  if (rc < 0) return 1;
  if (r.status != 200 && r.status != 201) {
    rc = sg_cli_http_error(&r);
    sg_buf_free(&r.body);
    return rc;
  }
  j = json_loads(r.body.data, 0, NULL);
  const char *id = json_string_value(json_object_get(j, "id"));
  char status[64];
  if (!id) {
    fprintf(stderr, "sagahost: the host accepted the start but sent no id: %.300s\n", r.body.data);
    rc = 1;
  } else if (wait) {
    /* stdout is the final saga JSON alone (it has the id); a saga still running (or a host whose start
     * answers with the id alone) is waited for with GET ?wait= */
    rc = sg_cli_ended(id, &r, status, sizeof status);
    if (rc < 0) rc = sg_cli_wait(cli, id, deadline, timeout);
  } else {
    printf("%s\n", id);
    rc = 0;
  }
  json_decref(j);
  sg_buf_free(&r.body);
  return rc;
}

static int sg_cli_show(struct sg_cli *cli) {
  char *path = sg_cli_path(cli, cli->arg, NULL);
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, "GET", path, NULL, NULL, &r);
  free(path);
  if (rc < 0) return 1;
  if (r.status == 404) {
    fprintf(stderr, "sagahost: no saga with id %s\n", cli->arg);
    rc = 1;
  } else if (!sg_cli_ok(&r)) {
    rc = sg_cli_http_error(&r);
  } else {
    sg_cli_print_json(r.body.data);
  }
  sg_buf_free(&r.body);
  return rc;
}

static void sg_cli_query_add(struct sg_cli *cli, struct sg_buf *b, const char *key) {
  const char *v = sg_cli_opt(cli, key);
  if (!v) return;
  char *esc = curl_easy_escape(cli->curl, v, 0);
  sg_buf_printf(b, "%c%s=%s", b->len ? '&' : '?', key, esc ? esc : "");
  curl_free(esc);
}

/* a key in the table: one line, at most 40 characters shown (the JSON output has it whole) */
static const char *sg_cli_cell(const char *v, char *buf, size_t n) {
  if (!v) return "-";
  size_t len = strlen(v);
  int cut = len > 40;
  snprintf(buf, n, "%.*s%s", cut ? 37 : (int)len, v, cut ? "..." : "");
  for (char *c = buf; *c; c++)
    if ((unsigned char)*c < 0x20) *c = ' ';
  return buf;
}

static void sg_cli_print_table(json_t *sagas) {
  enum { NC = 6 };
  static const char *cols[NC] = {"id", "type", "key", "status", "created_at", "updated_at"};
  static const char *heads[NC] = {"ID", "TYPE", "KEY", "STATUS", "CREATED", "UPDATED"};
  int w[NC];
  char buf[64];
  for (int c = 0; c < NC; c++) w[c] = (int)strlen(heads[c]);
  size_t i;
  json_t *s;
  json_array_foreach(sagas, i, s) {
    for (int c = 0; c < NC; c++) {
      const char *v = sg_cli_cell(json_string_value(json_object_get(s, cols[c])), buf, sizeof buf);
      if ((int)strlen(v) > w[c]) w[c] = (int)strlen(v);
    }
  }
  for (int c = 0; c < NC; c++) printf(c < NC - 1 ? "%-*s  " : "%.*s\n", c < NC - 1 ? w[c] : 999, heads[c]);
  json_array_foreach(sagas, i, s) {
    for (int c = 0; c < NC; c++) {
      const char *v = sg_cli_cell(json_string_value(json_object_get(s, cols[c])), buf, sizeof buf);
      printf(c < NC - 1 ? "%-*s  " : "%.*s\n", c < NC - 1 ? w[c] : 999, v);
    }
  }
}

static int sg_cli_list(struct sg_cli *cli) {
  const char *limit = sg_cli_opt(cli, "limit");
  if (limit) {
    char *end;
    long n = strtol(limit, &end, 10);
    if (end == limit || *end || n < 1 || n > 1000)
      return sg_cli_usage_error(cli, "--limit needs an integer from 1 to 1000, got '%s'", limit);
  }
  if (sg_cli_opt(cli, "after") && sg_cli_opt(cli, "cursor"))
    return sg_cli_usage_error(cli, "give --cursor or --after (deprecated), not both");
  struct sg_buf q;
  sg_buf_init(&q);
  sg_cli_query_add(cli, &q, "key");
  sg_cli_query_add(cli, &q, "parent");
  sg_cli_query_add(cli, &q, "type");
  sg_cli_query_add(cli, &q, "status");
  sg_cli_query_add(cli, &q, "since");
  sg_cli_query_add(cli, &q, "until");
  sg_cli_query_add(cli, &q, "limit");
  sg_cli_query_add(cli, &q, "cursor");
  sg_cli_query_add(cli, &q, "after");
  if (sg_cli_opt(cli, "oldest")) sg_buf_printf(&q, "%corder=asc", q.len ? '&' : '?');
  struct sg_buf path;
  sg_buf_init(&path);
  sg_buf_printf(&path, "/v1/sagas%s", q.data ? q.data : "");
  sg_buf_free(&q);
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, "GET", path.data, NULL, NULL, &r);
  sg_buf_free(&path);
  if (rc < 0) return 1;
  if (!sg_cli_ok(&r)) {
    rc = sg_cli_http_error(&r);
  } else if (sg_cli_opt(cli, "json")) {
    printf("%s%s", r.body.data, r.body.len && r.body.data[r.body.len - 1] == '\n' ? "" : "\n");
  } else {
    json_error_t je;
    json_t *j = json_loads(r.body.data, 0, &je);
    json_t *sagas = json_object_get(j, "sagas");
    if (!json_is_array(sagas)) {
      fprintf(stderr, "sagahost: the host's list answer has no \"sagas\" array: %.300s\n", r.body.data);
      rc = 1;
    } else if (json_array_size(sagas) == 0) {
      fprintf(stderr, "no sagas match\n");
    } else {
      sg_cli_print_table(sagas);
      const char *next = json_string_value(json_object_get(j, "next"));
      if (next) fprintf(stderr, "(more: add --%s %s)\n", sg_cli_opt(cli, "after") ? "after" : "cursor", next);
    }
    json_decref(j);
  }
  sg_buf_free(&r.body);
  return rc;
}

/* Operator actions name who did them ("by"), recorded in the saga's history next to the reason. */
static int sg_cli_body_call(struct sg_cli *cli, const char *suffix, const char *field) {
  const char *user = getenv("USER");
  json_t *body = json_object(), *by = json_string(user && *user ? user : NULL);
  json_object_set_new(body, "by", by ? by : json_string("sagahost-cli"));
  if (field) {
    json_t *v = json_string(sg_cli_opt(cli, field));
    if (!v) {
      json_decref(body);
      return sg_cli_usage_error(cli, "--%s must be UTF-8 text", field);
    }
    json_object_set_new(body, field, v);
  }
  char *text = json_dumps(body, JSON_COMPACT);
  int rc = sg_cli_simple(cli, "POST", suffix, text);
  free(text);
  json_decref(body);
  return rc;
}

static int sg_cli_compensate(struct sg_cli *cli) { return sg_cli_body_call(cli, "/compensate", "reason"); }
static int sg_cli_retry(struct sg_cli *cli) { return sg_cli_body_call(cli, "/retry", NULL); }
static int sg_cli_resolve(struct sg_cli *cli) { return sg_cli_body_call(cli, "/resolve", "note"); }
static int sg_cli_terminate(struct sg_cli *cli) { return sg_cli_body_call(cli, "/terminate", "reason"); }
static int sg_cli_upgrade(struct sg_cli *cli) {
  if (sg_cli_opt(cli, "dry-run")) return sg_cli_simple(cli, "POST", "/upgrade", "{\"dry_run\":true}");
  return sg_cli_body_call(cli, "/upgrade", NULL);
}
static int sg_cli_plan(struct sg_cli *cli) { return sg_cli_simple(cli, "GET", "/plan", NULL); }

/* GET /v1/schedules: a table, or the JSON with --json */
static int sg_cli_schedules(struct sg_cli *cli) {
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, "GET", "/v1/schedules", NULL, NULL, &r);
  if (rc < 0) return 1;
  if (!sg_cli_ok(&r)) {
    rc = sg_cli_http_error(&r);
  } else if (sg_cli_opt(cli, "json")) {
    sg_cli_print_json(r.body.data);
  } else {
    json_t *j = json_loads(r.body.data, 0, NULL);
    json_t *list = json_object_get(j, "schedules");
    printf("%-20s %-16s %-20s %-8s %-24s %-24s %s\n", "NAME", "CRON", "SAGA", "CATCH_UP", "NEXT_FIRE", "LAST_FIRE", "FILE");
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c) {
      char b[7][48];
      const char *keys[] = {"name", "cron", "saga", "catch_up", "next_fire", "last_fire"};
      for (int k = 0; k < 6; k++) sg_cli_cell(json_string_value(json_object_get(c, keys[k])), b[k], sizeof b[k]);
      printf("%-20s %-16s %-20s %-8s %-24s %-24s %s:%lld\n", b[0], b[1], b[2], b[3], b[4], b[5],
             json_string_value(json_object_get(c, "file")) ? json_string_value(json_object_get(c, "file")) : "-",
             (long long)json_integer_value(json_object_get(c, "line")));
    }
    json_decref(j);
  }
  sg_buf_free(&r.body);
  return rc ? 1 : 0;
}

/* signal ID NAME [JSON] [--key K]: POST /v1/sagas/{id}/signals/{name} */
static int sg_cli_signal(struct sg_cli *cli) {
  const char *name = cli->more[0], *payload = cli->more[1], *key = sg_cli_opt(cli, "key");
  if (!name || !*name) return sg_cli_usage_error(cli, "signal needs a NAME after the ID");
  if (payload) {
    json_error_t je;
    json_t *j = json_loads(payload, JSON_DECODE_ANY, &je);
    if (!j) return sg_cli_usage_error(cli, "the payload is not valid JSON: %s at line %d, column %d", je.text, je.line,
                                      je.column);
    json_decref(j);
  }
  if (key && (!*key || strlen(key) > 200 || strpbrk(key, "\r\n")))
    return sg_cli_usage_error(cli, "--key must be 1 to 200 characters on one line");
  char *esc = curl_easy_escape(cli->curl, name, 0);
  char *suffix = sg_asprintf("/signals/%s", esc ? esc : "");
  curl_free(esc);
  char *path = sg_cli_path(cli, cli->arg, suffix);
  free(suffix);
  struct sg_cli_resp r;
  int rc = sg_cli_request(cli, "POST", path, payload ? payload : "", key, &r);
  free(path);
  if (rc == 0) {
    if (sg_cli_ok(&r)) sg_cli_print_json(r.body.data);
    else rc = sg_cli_http_error(&r);
  }
  sg_buf_free(&r.body);
  return rc ? 1 : 0;
}

static const struct sg_cli_cmd sg_cli_cmds[] = {
    {"start", "TYPE [--input JSON] [--id KEY] [--start-at TIME | --delay DUR] [--wait] [--timeout SECS] [--server URL]",
     "start a saga of TYPE; prints its id",
     "  --input JSON    the saga input, a JSON object (default {})\n"
     "  --id KEY        idempotency key: starting again with the same KEY returns the same saga\n"
     "  --start-at TIME its first step starts at TIME: 2026-11-30T12:00:00Z (UTC, optional .123) or epoch ms\n"
     "  --delay DUR     its first step starts after DUR: 300ms, 30s, 5m, 1h, 1d (the saga is stored at once)\n"
     "  --wait          wait until the saga ends and print it; exit 0 only if it completed\n"
     "  --timeout SECS  how long --wait waits (default 60); the saga itself keeps running\n",
     " input id timeout start-at delay ", " wait ", "TYPE", NULL, sg_cli_start, 0},
    {"schedules", "[--json] [--server URL]", "list the scripts' cron schedules (saga.schedule) and their next fires",
     "  --json          print the host's JSON answer instead of a table\n", "", " json ", NULL, NULL, sg_cli_schedules, 0},
    {"show", "ID [--server URL]", "show a saga: status, data and step history", "", "", "", "ID",
     NULL, sg_cli_show, 0},
    {"list", "[--key K] [--parent ID] [--type T] [--status S] [--since TIME] [--until TIME] [--oldest] [--limit N] [--cursor C]"
             " [--json] [--server URL]",
     "list sagas, newest first, a page at a time",
     "  --key K         only the sagas with this business key (saga.define{key = ...})\n"
     "  --parent ID     only the child sagas that saga ID started (ctx:run)\n"
     "  --type T        only sagas of this type\n"
     "  --status S      running, compensating, completed, compensated, compensation_failed, resolved\n"
     "                  or terminated\n"
     "  --since TIME    created at or after TIME: 2026-11-30T12:00:00Z (UTC, optional .123) or epoch ms\n"
     "  --until TIME    created before TIME (same forms)\n"
     "  --oldest        oldest first\n"
     "  --limit N       at most N a page (1..1000, default 100)\n"
     "  --cursor C      the next page: the same command with the cursor the last one printed\n"
     "  --after C       deprecated: as --cursor C; a saga id for C lists oldest first from it\n"
     "  --json          print the host's JSON answer instead of a table\n",
     " key parent type status since until limit cursor after ", " json oldest ", NULL, NULL, sg_cli_list, 0},
    {"compensate", "ID --reason TEXT [--server URL]", "give up on a running saga and compensate it",
     "  --reason TEXT   why, recorded in the saga's history\n", " reason ", "", "ID", "reason",
     sg_cli_compensate, 0},
    {"retry", "ID [--server URL]", "retry the failed compensations of a compensation_failed saga", "",
     "", "", "ID", NULL, sg_cli_retry, 0},
    {"resolve", "ID --note TEXT [--server URL]",
     "mark a compensation_failed saga as resolved by hand",
     "  --note TEXT     what was done, recorded in the saga's history\n", " note ", "", "ID", "note",
     sg_cli_resolve, 0},
    {"terminate", "ID --reason TEXT [--server URL]",
     "stop a running or compensating saga without compensating (role admin)",
     "  --reason TEXT   why, recorded in the saga's history (required)\n", " reason ", "", "ID", "reason",
     sg_cli_terminate, 0},
    {"upgrade", "ID [--dry-run] [--server URL]",
     "move a waiting or compensation_failed saga to the current version of its type",
     "  --dry-run       only show what would change (or why it is refused)\n", "", " dry-run ", "ID", NULL,
     sg_cli_upgrade, 0},
    {"plan", "ID [--server URL]", "show which compensations would run, in order, if the saga were aborted now", "", "", "",
     "ID", NULL, sg_cli_plan, 0},
    {"signal", "ID NAME [JSON] [--key K] [--server URL]",
     "send the signal NAME (payload JSON, default {}) to a saga: a ctx:wait(NAME) takes it",
     "  JSON            the payload, any JSON value (default: none, delivered as {})\n"
     "  --key K         idempotency key: the same signal sent again with K is delivered once\n",
     " key ", "", "ID", NULL, sg_cli_signal, 2},
    {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

void sg_cli_usage(FILE *f) {
  fprintf(f, "client commands (--server URL, default $SAGAHOST_SERVER or " SG_CLI_DEFAULT_SERVER ";\n"
             "  --cacert FILE or $SAGAHOST_CACERT for https; $SAGAHOST_TOKEN is sent as a bearer token):\n");
  for (const struct sg_cli_cmd *c = sg_cli_cmds; c->name; c++) {
    char line[160];
    snprintf(line, sizeof line, "%s %s", c->name, c->synopsis);
    char *srv = strstr(line, " [--server URL]"); /* said once in the heading */
    if (srv) *srv = 0;
    if (strlen(line) < 22) fprintf(f, "  %-22s %s\n", line, c->summary);
    else fprintf(f, "  %s\n  %-22s %s\n", line, "", c->summary);
  }
}

int sg_cli_client(int argc, char **argv) {
  const struct sg_cli_cmd *cmd = NULL;
  for (const struct sg_cli_cmd *c = sg_cli_cmds; argc > 0 && c->name; c++)
    if (strcmp(c->name, argv[0]) == 0) cmd = c;
  if (!cmd) {
    fprintf(stderr, "sagahost: unknown client command '%s'\n", argc > 0 ? argv[0] : "");
    sg_cli_usage(stderr);
    return 2;
  }
  struct sg_cli cli = {.cmd = cmd};
  int rc = sg_cli_parse(&cli, argc, argv);
  if (rc >= 0) return rc;

  const char *server = sg_cli_opt(&cli, "server");
  if (!server || !*server) server = getenv("SAGAHOST_SERVER");
  if (!server || !*server) server = SG_CLI_DEFAULT_SERVER;
  cli.server = sg_strdup(server);
  for (size_t n = strlen(cli.server); n > 0 && cli.server[n - 1] == '/'; n--) cli.server[n - 1] = 0;
  cli.cacert = sg_cli_opt(&cli, "cacert");
  if (!cli.cacert || !*cli.cacert) cli.cacert = getenv("SAGAHOST_CACERT");
  if (cli.cacert && !*cli.cacert) cli.cacert = NULL;
  /* from the environment, not a flag: a flag would show the token to every `ps` on the machine */
  const char *token = getenv("SAGAHOST_TOKEN");
  if (token && *token) {
    if (strpbrk(token, "\r\n")) {
      fprintf(stderr, "sagahost: SAGAHOST_TOKEN must be one line\n");
      free(cli.server);
      return 2;
    }
    cli.auth_header = sg_asprintf("Authorization: Bearer %s", token);
  }

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(cli.curl = curl_easy_init())) {
    fprintf(stderr, "sagahost: libcurl could not start\n");
    free(cli.server);
    return 1;
  }
  rc = cmd->run(&cli);
  curl_easy_cleanup(cli.curl);
  curl_global_cleanup();
  free(cli.server);
  free(cli.auth_header);
  return rc;
}
