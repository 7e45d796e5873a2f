/* api: the JSON HTTP API routes (on http.c), reading through the store and acting through the engine.
 *
 * Every answer waits for the group commit: a start is answered once it is durable, and reads run after
 * the commit, outside any transaction, so they only ever show committed state. Reads and starts do not
 * block the loop (sg_store_read, sg_engine_start_cb): the request is answered when the store is. */
#include "api.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "events.h"
#include "http.h"
#include "map.h"
#include "metrics.h"
#include "schedule.h"
#include "signals.h"
#include "web.h"

struct sg_api {
  struct sg_metrics *metrics;  /* what GET /metrics shows (metrics.c) */
  struct sg_events *events;    /* GET /v1/events and the waits of ?wait= (events.c) */
  struct sg_engine *en;        /* acts: start, operator verbs */
  struct sg_store *store;      /* reads, after the commit */
  struct sg_script *sc;        /* definitions, Lua memory */
  struct sg_http *http;        /* the server the routes run on */
  const struct sg_auth *auth;  /* tokens and roles, NULL = every route open (the caller's) */
  int auth_metrics;            /* /metrics needs role read */
  struct sg_schedules *sched;  /* GET /v1/schedules (the host's), NULL = none */
};

/* A request waiting for the commit. */
struct pending {
  struct sg_api *api;
  struct sg_http_req *req;
  char id[40];     /* start: the saga id */
  int existed;     /* start: the idempotency key was known */
  char verb[16];   /* operator action: the verb, its reason or note, who */
  char *arg, *by;
  int reading;     /* ?wait=: a read of the saga on its way */
  int final;       /* ?wait=: 0 waiting, else what ended the wait (the next read answers) */
  int reread;      /* ?wait=: read again once after the terminal event */
  int code;        /* the status of the saga's answer (0: 200); POST ?wait=: 201, or 200 for a known key */
  int64_t wait_ms; /* POST ?wait=: how long the answer waits for the saga's end once its start is durable */
  struct sg_read *saga_rd; /* GET /v1/sagas/{id} of a parent: the saga, while its children are read */
};

static int status_for(int code) {
  switch (code) {
  case SG_E_INVALID: return 400;
  case SG_E_NOTFOUND: return 404;
  case SG_E_CONFLICT: return 409;
  case SG_E_TOOBIG: return 413;
  case SG_E_UNAVAILABLE: return 503;
  case SG_E_FENCED: return 503;
  case SG_E_ELSEWHERE: return 503;
  default: return 500;
  }
}

/* an engine error as the reply: a 503 (the store cannot write for now) says when to come back */
static void reply_engine_error(struct sg_http_req *req, const struct sg_error *e) {
  int status = status_for(e->code);
  if (status == 503) sg_http_reply_error_with(req, 503, "Retry-After", "1", e->msg);
  else sg_http_reply_error(req, status, e->msg);
}

static void add_time(struct sg_buf *b, const char *key, int64_t ms) {
  sg_buf_printf(b, ",\"%s\":", key);
  if (ms <= 0) { sg_buf_adds(b, "null"); return; }
  char ts[32];
  sg_iso8601(ms, ts);
  sg_buf_add_json_str(b, ts);
}

static void saga_summary(struct sg_buf *b, const struct sg_saga_row *r) {
  sg_buf_adds(b, "{\"id\":"); sg_buf_add_json_str(b, r->id);
  sg_buf_adds(b, ",\"type\":"); sg_buf_add_json_str(b, r->type);
  sg_buf_adds(b, ",\"key\":"); sg_buf_add_json_str(b, r->biz_key);
  sg_buf_adds(b, ",\"parent\":"); sg_buf_add_json_str(b, r->parent);
  /* a delayed start not yet due (attempt 0, see sg_engine_start_at_cb) is "scheduled" until its first step */
  int scheduled = r->status == SG_ST_RUNNING && r->attempt == 0;
  sg_buf_adds(b, ",\"status\":"); sg_buf_add_json_str(b, scheduled ? "scheduled" : sg_status_name(r->status));
  sg_buf_adds(b, ",\"definition_version\":"); sg_buf_add_json_str(b, r->def_hash);
  add_time(b, "created_at", r->created_at);
  add_time(b, "updated_at", r->updated_at);
  if (scheduled) add_time(b, "start_at", r->attempt_started_at);
}

static int hist_cb(void *ud, const struct sg_hist_row *h) {
  struct sg_buf *b = ud;
  if (b->data[b->len - 1] != '[') sg_buf_adds(b, ",");
  sg_buf_adds(b, "{\"name\":"); sg_buf_add_json_str(b, h->step_name);
  if (h->phase < 0) {
    sg_buf_adds(b, ",\"phase\":\"saga\",\"event\":"); sg_buf_add_json_str(b, h->status);
    sg_buf_adds(b, ",\"status\":\"completed\"");
  } else {
    sg_buf_adds(b, ",\"phase\":"); sg_buf_add_json_str(b, sg_phase_name(h->phase));
    sg_buf_adds(b, ",\"status\":"); sg_buf_add_json_str(b, h->status);
  }
  sg_buf_printf(b, ",\"step\":%d,\"attempt\":%d", h->step + 1, h->attempt);
  add_time(b, "started_at", h->started_at);
  add_time(b, "finished_at", h->finished_at);
  sg_buf_adds(b, ",\"error\":"); sg_buf_add_json_str(b, h->error);
  sg_buf_adds(b, "}");
  return 0;
}

/* "children": [{"id", "type", "status", "step"}] of a parent (r->children, in start order), their
 * statuses from cl (a list read of its children; NULL: none read) */
static void children_json(struct sg_buf *b, const struct sg_saga_row *r, const struct sg_read *cl) {
  sg_buf_adds(b, ",\"children\":[");
  json_t *a = r->children ? json_loads(r->children, 0, NULL) : NULL;
  size_t i;
  json_t *c;
  json_array_foreach(a, i, c) {
    const char *id = json_string_value(json_object_get(c, "id"));
    const char *st = NULL;
    for (size_t k = 0; cl && id && k < cl->nrows; k++)
      if (strcmp(cl->rows[k].id, id) == 0) st = sg_status_name(cl->rows[k].status);
    sg_buf_adds(b, i ? ",{\"id\":" : "{\"id\":"); sg_buf_add_json_str(b, id);
    sg_buf_adds(b, ",\"type\":"); sg_buf_add_json_str(b, json_string_value(json_object_get(c, "type")));
    sg_buf_adds(b, ",\"status\":"); sg_buf_add_json_str(b, st);
    sg_buf_printf(b, ",\"step\":%d}", (int)json_integer_value(json_object_get(c, "step")) + 1);
  }
  json_decref(a);
  sg_buf_adds(b, "]");
}

static void on_saga_read(struct sg_read *rd);

/* a parent's children, read: the saga is answered */
static void on_children_read(struct sg_read *cl) {
  struct pending *p = cl->ud;
  struct sg_read *rd = p->saga_rd;
  p->saga_rd = cl; /* (freed with rd's answer) */
  if (cl->rc < 0) {
    reply_engine_error(p->req, &cl->err);
    sg_read_free(cl);
    sg_read_free(rd);
    free(p);
    return;
  }
  on_saga_read(rd);
}

/* GET /v1/sagas/{id}: the saga and its history, read without blocking the loop */
static void on_saga_read(struct sg_read *rd) {
  struct pending *p = rd->ud;
  struct sg_http_req *req = p->req;
  if (rd->rc == 1 && rd->rows[0].children && !p->saga_rd) { /* its children's statuses first */
    p->saga_rd = rd;
    struct sg_read *cl = sg_read_new(SG_READ_LIST, NULL, NULL, on_children_read, p);
    cl->parent = sg_strdup(rd->rows[0].id);
    cl->limit = 10000;
    sg_engine_read(p->api->en, cl);
    return;
  }
  if (rd->rc < 0) {
    reply_engine_error(req, &rd->err);
  } else if (rd->rc == 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "no saga with id '%.80s'", rd->a);
    sg_http_reply_error(req, 404, msg);
  } else {
    const struct sg_saga_row *r = &rd->rows[0];
    struct sg_buf b;
    sg_buf_init(&b);
    saga_summary(&b, r);
    sg_buf_adds(&b, ",\"input\":"); sg_buf_adds(&b, r->input ? r->input : "null");
    sg_buf_adds(&b, ",\"data\":"); sg_buf_adds(&b, r->data ? r->data : "null");
    sg_buf_adds(&b, ",\"error\":"); sg_buf_add_json_str(&b, r->error);
    sg_buf_adds(&b, ",\"idempotency_key\":"); sg_buf_add_json_str(&b, r->idem_key);
    children_json(&b, r, p->saga_rd);
    char *pending = sg_engine_pending_compensations(p->api->en, r);
    if (pending) {
      sg_buf_adds(&b, ",\"pending_compensations\":");
      sg_buf_adds(&b, pending);
      free(pending);
    }
    sg_buf_adds(&b, ",\"steps\":[");
    for (size_t i = 0; i < rd->nhist; i++) hist_cb(&b, &rd->hist[i]);
    if (!SG_ST_TERMINAL(r->status) && r->attempt_started_at > 0 && r->attempt > 0) {
      /* the running attempt: its history row is written when it ends */
      struct sg_hist_row h = { .saga_id = r->id, .step = r->step, .step_name = sg_engine_step_name(p->api->en, r),
                               .phase = r->phase, .attempt = r->phase == SG_PH_PARTIAL ? r->attempt - r->attempt_base : r->attempt, .status = "running",
                               .started_at = r->attempt_started_at };
      hist_cb(&b, &h);
    }
    sg_buf_adds(&b, "]}");
    sg_http_reply(req, p->code ? p->code : 200, b.data);
    sg_buf_free(&b);
  }
  if (p->saga_rd != rd) sg_read_free(p->saga_rd);
  sg_read_free(rd);
  free(p);
}

/* ?wait=: the saga as read now; answered when it is terminal (or gone), or when the wait has ended */
static void on_wait_read(struct sg_read *rd) {
  struct pending *p = rd->ud;
  p->reading = 0;
  int terminal = rd->rc <= 0 || SG_ST_TERMINAL(rd->rows[0].status);
  if (!terminal && p->final == SG_EVENTS_WAIT_TERMINAL && !p->reread) {
    /* read before its terminal commit: once more (its event is committed, so this read sees it) */
    p->reread = 1;
    sg_read_free(rd);
    struct sg_read *again = sg_read_new(SG_READ_SAGA, p->id, NULL, on_wait_read, p);
    again->with_hist = 1;
    p->reading = 1;
    sg_engine_read(p->api->en, again);
    return;
  }
  if (terminal || p->final) {
    if (!p->final) sg_events_wait_cancel(p->api->events, p);
    on_saga_read(rd); /* answers, frees rd and p */
    return;
  }
  sg_read_free(rd); /* not yet: its terminal event will come */
}

static void wait_read(struct pending *p) {
  struct sg_read *rd = sg_read_new(SG_READ_SAGA, p->id, NULL, on_wait_read, p);
  rd->with_hist = 1;
  p->reading = 1;
  sg_engine_read(p->api->en, rd);
}

static int on_wait(void *ud, int what) {
  struct pending *p = ud;
  if (what == SG_EVENTS_WAIT_ARMED) {
    /* running here: it cannot be terminal in the store yet, and its terminal event comes after the
     * commit that makes it so; else (finished, another host's, not loaded) the store says where it is */
    if (!sg_engine_running_here(p->api->en, p->id)) wait_read(p);
    return 0;
  }
  p->final = what;
  if (!p->reading) wait_read(p);
  return 1;
}

/* the longest ?wait= (a client wanting longer asks again) */
#define WAIT_MAX_MS 300000

/* ?wait=: the wait in ms (0: none asked), or -1 after answering 400 */
static int64_t query_wait(struct sg_http_req *req) {
  const char *wait = sg_http_query(req, "wait");
  if (!wait || !*wait) return 0;
  int64_t ms = 0;
  struct sg_error de = {0};
  char *end;
  double secs = strtod(wait, &end); /* a bare number is seconds */
  if (!*end && end != wait) ms = secs >= 0 && secs <= WAIT_MAX_MS / 1000 ? (int64_t)(secs * 1000) : -1;
  else if (sg_duration_parse(wait, &ms, &de) < 0) ms = -1;
  if (ms < 0 || ms > WAIT_MAX_MS) {
    sg_http_reply_error(req, 400, "malformed wait: a duration such as 30s, 500ms or 2m (or seconds), at most 5m");
    return -1;
  }
  return ms;
}

static void get_saga(struct sg_api *api, struct sg_http_req *req, const char *id) {
  int64_t ms = query_wait(req);
  if (ms < 0) return;
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  if (ms > 0) {
    snprintf(p->id, sizeof p->id, "%s", id);
    sg_events_wait(api->events, id, (double)ms / 1000.0, on_wait, p);
    return;
  }
  struct sg_read *rd = sg_read_new(SG_READ_SAGA, id, NULL, on_saga_read, p);
  rd->with_hist = 1;
  sg_engine_read(api->en, rd);
}

/* the list was read with one row more than the page: that row says whether there is a next page */
static void on_list_read(struct sg_read *rd) {
  struct pending *p = rd->ud;
  if (rd->rc < 0) {
    reply_engine_error(p->req, &rd->err);
  } else {
    size_t page = (size_t)rd->limit - 1, n = rd->nrows < page ? rd->nrows : page;
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"sagas\":[");
    for (size_t i = 0; i < n; i++) {
      if (i) sg_buf_adds(&b, ",");
      saga_summary(&b, &rd->rows[i]);
      sg_buf_adds(&b, ",\"error\":"); sg_buf_add_json_str(&b, rd->rows[i].error);
      sg_buf_adds(&b, "}");
    }
    /* the cursor: the order of the listing and the last id shown (the next page starts past it), so that
     * it continues the same listing whether it comes back as cursor= or as after= (older clients) */
    sg_buf_adds(&b, "],\"next\":");
    if (rd->nrows > page && n > 0) sg_buf_printf(&b, "\"%c.%s\"", rd->desc ? 'd' : 'a', rd->rows[n - 1].id);
    else sg_buf_adds(&b, "null");
    sg_buf_adds(&b, "}");
    sg_http_reply(p->req, 200, b.data);
    sg_buf_free(&b);
  }
  sg_read_free(rd);
  free(p);
}

/* a query parameter, NULL when absent or empty */
static const char *query(struct sg_http_req *req, const char *key) {
  const char *v = sg_http_query(req, key);
  return v && *v ? v : NULL;
}

/* since= or until=: 0 and *ms (0 = absent), or -1 after answering 400 */
static int query_time(struct sg_http_req *req, const char *key, int64_t *ms) {
  const char *v = query(req, key);
  *ms = 0;
  if (!v) return 0;
  if (sg_time_parse(v, ms) < 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "%s must be a UTC time like 2026-11-30T12:00:00Z or 2026-11-30T12:00:00.123Z, or"
             " milliseconds since the epoch (got '%.80s')", key, v);
    sg_http_reply_error(req, 400, msg);
    return -1;
  }
  return 0;
}

/* GET /v1/sagas?key=&type=&status=&since=&until=&order=&limit=&cursor= (after=: the old oldest-first paging) */
static void list_sagas(struct sg_api *api, struct sg_http_req *req) {
  int status = -1, limit = 100, desc = 1;
  const char *st = query(req, "status");
  if (st) {
    status = sg_status_parse(st);
    if (status < 0) {
      sg_http_reply_error(req, 400, "unknown status (use running, compensating, completed, compensated, compensation_failed, resolved or terminated)");
      return;
    }
  }
  const char *type = query(req, "type"), *key = query(req, "key"), *order = query(req, "order");
  const char *cursor = query(req, "cursor"), *after = query(req, "after");
  if (key && strlen(key) > 200) { sg_http_reply_error(req, 400, "key must be 1 to 200 bytes"); return; }
  const char *lim = query(req, "limit");
  if (lim) {
    char *end;
    long l = strtol(lim, &end, 10);
    if (*end || l < 1 || l > 1000) { sg_http_reply_error(req, 400, "limit must be an integer from 1 to 1000"); return; }
    limit = (int)l;
  }
  if (order && strcmp(order, "desc") && strcmp(order, "asc")) {
    sg_http_reply_error(req, 400, "order must be desc (newest first, the default) or asc (oldest first)");
    return;
  }
  if (cursor && after) { sg_http_reply_error(req, 400, "give cursor= or after= (deprecated), not both"); return; }
  int cdesc = -1; /* the order the cursor continues, -1 = a bare id: the request's order */
  const char *id = NULL;
  if (cursor || after) {
    const char *c = cursor ? cursor : after;
    if ((c[0] == 'a' || c[0] == 'd') && c[1] == '.') {
      cdesc = c[0] == 'd';
      id = c + 2;
    } else {
      id = c;
      if (after) cdesc = 0; /* after=ID: oldest first from that id, as it always was */
    }
    if (sg_uuid_time_ms(id) < 0) {
      sg_http_reply_error(req, 400, cursor ? "malformed cursor: pass the \"next\" of the previous page unchanged"
                                           : "malformed after: pass the \"next\" of the previous page unchanged");
      return;
    }
  }
  if (order) desc = !strcmp(order, "desc");
  if (cdesc >= 0 && order && cdesc != desc) {
    sg_http_reply_error(req, 400, cdesc ? "this cursor continues a listing with order=desc: ask with the same order"
                                        : "this cursor continues a listing with order=asc: ask with the same order");
    return;
  }
  if (cdesc >= 0) desc = cdesc;
  int64_t since, until;
  if (query_time(req, "since", &since) < 0 || query_time(req, "until", &until) < 0) return;
  if (query(req, "until") && until <= 0) until = 1; /* before 1970: nothing was created then */
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  struct sg_read *rd = sg_read_new(SG_READ_LIST, type, id, on_list_read, p);
  rd->status = status;
  rd->limit = limit + 1; /* one more: is there a next page? */
  rd->key = key ? sg_strdup(key) : NULL;
  rd->parent = query(req, "parent") ? sg_strdup(query(req, "parent")) : NULL;
  rd->since = since > 0 ? since : 0;
  rd->until = until;
  rd->desc = desc;
  sg_engine_read(api->en, rd);
}

/* GET /v1/counts[?type=]: the sagas of the whole store (every host's) by status */
static void on_counts_read(struct sg_read *rd) {
  struct pending *p = rd->ud;
  if (rd->rc < 0) {
    reply_engine_error(p->req, &rd->err);
  } else {
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"counts\":{");
    for (int st = SG_ST_RUNNING; st < SG_ST__COUNT; st++)
      sg_buf_printf(&b, "%s\"%s\":%" PRId64, st ? "," : "", sg_status_name(st), rd->counts[st]);
    sg_buf_adds(&b, "}}");
    sg_http_reply(p->req, 200, b.data);
    sg_buf_free(&b);
  }
  sg_read_free(rd);
  free(p);
}

static void on_counts_committed(void *ud, int status) {
  struct pending *p = ud;
  (void)status; /* a read: it shows what is committed, whatever this commit did */
  sg_engine_read(p->api->en, sg_read_new(SG_READ_COUNTS, query(p->req, "type"), NULL, on_counts_read, p));
}

static void healthz(struct sg_api *api, struct sg_http_req *req) {
  struct sg_engine_stats st;
  sg_engine_stats(api->en, &st);
  if (st.stalled) { /* not healthy: it takes no new work until the store can write */
    char msg[400];
    snprintf(msg, sizeof msg, "store unavailable for %.1fs: %s; new work is refused until a commit succeeds",
             st.stalled_ms / 1000.0, st.stall_error);
    sg_http_reply_error_with(req, 503, "Retry-After", "1", msg);
    return;
  }
  if (st.reloading) {
    sg_http_reply_error_with(req, 503, "Retry-After", "1", "fenced: another host took this host's sagas over (its"
                             " lease ran out); registering again and loading what it owns");
    return;
  }
  size_t subs = 0;
  int64_t dropped = 0;
  sg_events_stats(api->events, &subs, &dropped);
  char buf[760];
  snprintf(buf, sizeof buf,
           "{\"status\":\"ok\",\"host_id\":\"%s\",\"live_sagas\":%" PRId64 ",\"coroutines\":%" PRId64 ",\"timers\":%" PRId64
           ",\"started\":%" PRId64 ",\"completed\":%" PRId64 ",\"compensated\":%" PRId64
           ",\"compensation_failed\":%" PRId64 ",\"resolved\":%" PRId64 ",\"terminated\":%" PRId64 ",\"commits\":%" PRId64 ",\"saga_types\":%d,\"lua_memory\":%zu"
           ",\"taken_over\":%" PRId64 ",\"fenced\":%" PRId64 ",\"event_subscribers\":%zu,\"event_subscribers_dropped\":%" PRId64 "}",
           st.host_id, st.live, st.coroutines, st.timers, st.started, st.completed, st.compensated, st.compensation_failed,
           st.resolved, st.terminated, st.commits, sg_script_type_count(api->sc), sg_script_mem_used(api->sc), st.taken_over, st.fenced,
           subs, dropped);
  sg_http_reply(req, 200, buf);
}

/* GET /metrics: the Prometheus text format (metrics.c) */
static void metrics(struct sg_api *api, struct sg_http_req *req) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_metrics_render(api->metrics, &b);
  sg_http_reply_as(req, 200, "text/plain; version=0.0.4", b.data);
  sg_buf_free(&b);
}

/* after the commit: answer a start, or serve a read */
static void on_start_committed(void *ud, int status) {
  struct pending *p = ud;
  if (status == -2) {
    sg_http_reply_error_with(p->req, 503, "Retry-After", "1", "this host lost its sagas to another host (its lease"
                             " ran out) before the start was committed; it did not happen: retry");
  } else if (status < 0) {
    sg_http_reply_error(p->req, 500, "the store could not commit the start; it did not happen");
  } else if (p->wait_ms > 0) {
    /* POST ?wait=: the start is durable; the answer is the saga once it ends, or as it is when the wait is
     * over (as GET ?wait=, from the same moment) */
    p->code = p->existed ? 200 : 201;
    sg_events_wait(p->api->events, p->id, (double)p->wait_ms / 1000.0, on_wait, p);
    return;
  } else {
    char buf[128];
    snprintf(buf, sizeof buf, "{\"id\":\"%s\",\"existing\":%s}", p->id, p->existed ? "true" : "false");
    sg_http_reply(p->req, p->existed ? 200 : 201, buf);
  }
  free(p);
}

/* the start is made (or its key was known): answered once it is durable */
static void on_started(void *ud, const char *id, int existed, const struct sg_error *e) {
  struct pending *p = ud;
  if (e) {
    reply_engine_error(p->req, e);
    free(p);
    return;
  }
  snprintf(p->id, sizeof p->id, "%s", id);
  p->existed = existed;
  sg_engine_after_commit(p->api->en, on_start_committed, p);
}

static void start_saga(struct sg_api *api, struct sg_http_req *req, const char *type) {
  json_error_t jerr;
  const char *body = req->body_len ? req->body : "{}";
  json_t *j = json_loadb(body, req->body_len ? req->body_len : 2, JSON_DECODE_ANY, &jerr);
  if (!j) {
    char msg[400];
    snprintf(msg, sizeof msg, "malformed JSON input at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    sg_http_reply_error(req, 400, msg);
    return;
  }
  int is_obj = json_is_object(j);
  json_decref(j);
  if (!is_obj) { sg_http_reply_error(req, 400, "the saga input must be a JSON object"); return; }
  const char *key = sg_http_header(req, "Idempotency-Key");
  if (key && (!*key || strlen(key) > 200)) {
    sg_http_reply_error(req, 400, "Idempotency-Key must be 1 to 200 characters");
    return;
  }
  /* a delayed start: ?start_at= (a UTC time or ms since the epoch) or ?delay= (a duration) */
  int64_t start_at = 0, delay = 0;
  if (query_time(req, "start_at", &start_at) < 0) return;
  const char *dl = query(req, "delay");
  if (dl) {
    struct sg_error de = {0};
    if (start_at) { sg_http_reply_error(req, 400, "give start_at or delay, not both"); return; }
    if (sg_duration_parse(dl, &delay, &de) < 0) {
      char msg[600];
      snprintf(msg, sizeof msg, "delay: %.500s (like \"300ms\", \"30s\", \"5m\")", de.msg);
      sg_http_reply_error(req, 400, msg);
      return;
    }
    start_at = sg_now_ms() + delay;
  }
  int64_t wait_ms = query_wait(req); /* checked before anything is started */
  if (wait_ms < 0) return;
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  p->wait_ms = wait_ms;
  /* W3C Trace Context: the saga's span continues the caller's trace (with tracing on) */
  sg_engine_start_at_cb(api->en, type, body, key, sg_http_header(req, "traceparent"), sg_http_header(req, "tracestate"),
                        start_at, on_started, p);
}

static void on_read_committed(void *ud, int status);

static void pending_free(struct pending *p) {
  free(p->arg);
  free(p->by);
  free(p);
}

/* after the commit of an operator action: answer with the saga as it is now */
static void on_action_committed(void *ud, int status) {
  struct pending *p = ud;
  if (status == -2) sg_http_reply_error_with(p->req, 503, "Retry-After", "1", "this host lost its sagas to another"
                                             " host before the action was committed; it did not happen: retry");
  else if (status < 0) sg_http_reply_error(p->req, 500, "the store could not commit the action; it did not happen");
  else get_saga(p->api, p->req, p->id);
  pending_free(p);
}

/* a verb forwarded to the host that owns the saga: answered like a local one once that host has applied
 * it; 202 when it has not confirmed in time (the verb waits in the saga's mail) */
#define FORWARD_TIMEOUT_MS 10000
static void on_forwarded(void *ud, const struct sg_error *e) {
  struct pending *p = ud;
  if (!e) {
    get_saga(p->api, p->req, p->id);
  } else if (e->code == SG_E_ELSEWHERE) {
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_printf(&b, "{\"id\":\"%s\",\"accepted\":true,\"applied\":false,\"message\":", p->id);
    sg_buf_add_json_str(&b, e->msg);
    sg_buf_adds(&b, "}");
    sg_http_reply(p->req, 202, b.data);
    sg_buf_free(&b);
  } else {
    reply_engine_error(p->req, e);
  }
  pending_free(p);
}

/* the verb has been applied here (durable at the next commit), or refused, or another host owns the saga */
static void on_verb_done(void *ud, const struct sg_error *e) {
  struct pending *p = ud;
  if (e && e->code == SG_E_ELSEWHERE) { /* several hosts: another one owns the saga */
    sg_info("%s (%s): forwarding %s to it", e->msg, p->id, p->verb);
    struct sg_error fe = {0};
    if (sg_engine_forward(p->api->en, p->id, p->verb, p->arg, p->by, FORWARD_TIMEOUT_MS, on_forwarded, p, &fe) < 0) {
      reply_engine_error(p->req, &fe);
      pending_free(p);
    }
    return;
  }
  if (e) {
    reply_engine_error(p->req, e);
    pending_free(p);
    return;
  }
  sg_engine_after_commit(p->api->en, on_action_committed, p);
}

/* POST /v1/sagas/{id}/{compensate|retry|resolve|terminate}, body {"reason"|"note", "by"}. who is the
 * authenticated token's name, NULL without auth: then the body's "by" or X-Operator is all we have. */
static void operator_action(struct sg_api *api, struct sg_http_req *req, const char *id, const char *verb,
                            const char *who) {
  json_error_t jerr;
  json_t *j = req->body_len ? json_loadb(req->body, req->body_len, 0, &jerr) : json_object();
  if (!j) {
    char msg[400];
    snprintf(msg, sizeof msg, "malformed JSON body at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    sg_http_reply_error(req, 400, msg);
    return;
  }
  /* with auth a client could name anyone in "by": the token says who it is */
  const char *by = who ? who : json_string_value(json_object_get(j, "by"));
  if (!by) by = sg_http_header(req, "X-Operator");
  if (!by) by = "api";
  const char *arg = json_string_value(json_object_get(j, strcmp(verb, "resolve") == 0 ? "note" : "reason"));
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  snprintf(p->id, sizeof p->id, "%.39s", id);
  snprintf(p->verb, sizeof p->verb, "%.15s", verb);
  p->arg = arg ? sg_strdup(arg) : NULL;
  p->by = sg_strdup(by);
  json_decref(j);
  sg_engine_verb_cb(api->en, id, verb, p->arg, p->by, on_verb_done, p);
}

static void on_plan_committed(void *ud, int status) {
  struct pending *p = ud;
  struct sg_error e = {0};
  char *json = sg_engine_plan(p->api->en, p->id, &e);
  if (json) sg_http_reply(p->req, 200, json);
  else reply_engine_error(p->req, &e);
  free(json);
  free(p);
}

static void on_upgrade_plan_committed(void *ud, int status) {
  (void)status;
  struct pending *p = ud;
  struct sg_error e = {0};
  char *json = sg_engine_upgrade_plan(p->api->en, p->id, &e);
  if (json) sg_http_reply(p->req, 200, json);
  else reply_engine_error(p->req, &e);
  free(json);
  free(p);
}

/* POST /v1/sagas/{id}/upgrade, body {"dry_run": true|false, "by"}: a dry run says what would change
 * (read here, whichever host owns the saga); otherwise the verb "upgrade" */
static void upgrade_action(struct sg_api *api, struct sg_http_req *req, const char *id, const char *who) {
  json_error_t jerr;
  json_t *j = req->body_len ? json_loadb(req->body, req->body_len, 0, &jerr) : json_object();
  if (!j || !json_is_object(j)) {
    char msg[400];
    if (j) snprintf(msg, sizeof msg, "the body must be a JSON object: {\"dry_run\": true} or {}");
    else snprintf(msg, sizeof msg, "malformed JSON body at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    json_decref(j);
    sg_http_reply_error(req, 400, msg);
    return;
  }
  json_t *dry = json_object_get(j, "dry_run");
  if (dry && !json_is_boolean(dry)) {
    json_decref(j);
    sg_http_reply_error(req, 400, "dry_run must be true or false");
    return;
  }
  int is_dry = dry && json_is_true(dry);
  json_decref(j);
  if (!is_dry) { operator_action(api, req, id, "upgrade", who); return; }
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  snprintf(p->id, sizeof p->id, "%.39s", id);
  sg_engine_after_commit(api->en, on_upgrade_plan_committed, p);
}

#define PATH_PARTS 5 /* /v1/sagas/{id}/signals/{name} */
/* the signal is durable (or refused): 202 delivered or kept, 200 a repeat of its idempotency key */
static void on_signal_sent(void *ud, const char *outcome, const struct sg_error *e) {
  struct pending *p = ud;
  if (e) {
    reply_engine_error(p->req, e);
  } else {
    struct sg_buf b;
    sg_buf_init(&b);
    sg_buf_adds(&b, "{\"id\":");
    sg_buf_add_json_str(&b, p->id);
    sg_buf_adds(&b, ",\"signal\":");
    sg_buf_add_json_str(&b, p->arg);
    sg_buf_adds(&b, ",\"outcome\":");
    sg_buf_add_json_str(&b, outcome);
    sg_buf_adds(&b, "}");
    sg_http_reply(p->req, strcmp(outcome, "duplicate") == 0 ? 200 : 202, b.data);
    sg_buf_free(&b);
  }
  pending_free(p);
}

/* POST /v1/sagas/{id}/signals/{name}: body = the payload (any JSON value, optional), header
 * Idempotency-Key = the signal's key */
static void send_signal(struct sg_api *api, struct sg_http_req *req, const char *id, const char *name) {
  if (!sg_signal_name_ok(name)) {
    char msg[300];
    snprintf(msg, sizeof msg, "'%.100s' is not a signal name: use 1 to 100 letters, digits, '_' or '-', starting with"
             " a letter or '_'", name);
    sg_http_reply_error(req, 400, msg);
    return;
  }
  if (req->body_len) {
    json_error_t jerr;
    json_t *j = json_loadb(req->body, req->body_len, JSON_DECODE_ANY, &jerr);
    if (!j) {
      char msg[400];
      snprintf(msg, sizeof msg, "malformed JSON payload at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
      sg_http_reply_error(req, 400, msg);
      return;
    }
    json_decref(j);
  }
  const char *key = sg_http_header(req, "Idempotency-Key");
  if (key && (!*key || strlen(key) > 200)) {
    sg_http_reply_error(req, 400, "Idempotency-Key must be 1 to 200 characters");
    return;
  }
  if (strlen(id) >= 40) { sg_http_reply_error(req, 404, "no saga with that id"); return; }
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->api = api;
  p->req = req;
  snprintf(p->id, sizeof p->id, "%s", id);
  p->arg = sg_strdup(name);
  sg_engine_signal(api->en, id, name, req->body_len ? req->body : NULL, key, "http", on_signal_sent, p);
}

static int split_path(const char *path, char parts[PATH_PARTS][256]) {
  int n = 0;
  const char *p = path;
  while (*p == '/') p++;
  while (*p) {
    /* a sixth segment: no route is that deep (each route checks its own depth: /v1/sagas/{id}/retry/x
     * must not act as retry) */
    if (n == PATH_PARTS) return -1;
    const char *s = strchr(p, '/');
    size_t len = s ? (size_t)(s - p) : strlen(p);
    if (len >= 256) return -1;
    memcpy(parts[n], p, len);
    parts[n][len] = 0;
    n++;
    if (!s) break;
    p = s + 1;
  }
  return n;
}

/* What a path names; the method is checked only once the path is known, so a known path with a
 * wrong method is 405 (with Allow) and an unknown path is 404 whatever the method. */
enum route_kind {
  R_NONE,        /* no such resource: 404 */
  R_SAGAS,       /* /v1/sagas: the list */
  R_SAGA,        /* /v1/sagas/{x}: GET the saga with id x, POST starts a saga of type x */
  R_PLAN,        /* /v1/sagas/{id}/plan */
  R_ACTION,      /* /v1/sagas/{id}/{compensate|retry|resolve} */
  R_ADMIN_ACTION, /* /v1/sagas/{id}/terminate: a verb for administrators */
  R_UPGRADE,     /* /v1/sagas/{id}/upgrade: to the current version (or a dry run) */
  R_DEFINITIONS, /* /v1/definitions */
  R_BREAKERS,    /* /v1/breakers */
  R_HEALTHZ,     /* /healthz */
  R_METRICS,     /* /metrics */
  R_COUNTS,      /* /v1/counts: sagas by status */
  R_WEB,         /* / and /ui/{file}: the dashboard's static files (web.c) */
  R_EVENTS,      /* /v1/events: the lifecycle events, as Server-Sent Events (events.c) */
  R_SIGNAL,      /* /v1/sagas/{id}/signals/{name}: POST sends a signal (signals.c) */
  R_SCHEDULES,   /* /v1/schedules: the scripts' cron schedules (schedule.c) */
};

static enum route_kind route_match(const char parts[PATH_PARTS][256], int n) {
  int v1 = n >= 2 && strcmp(parts[0], "v1") == 0;
  if (v1 && strcmp(parts[1], "sagas") == 0) {
    if (n == 2) return R_SAGAS;
    if (n == 3) return R_SAGA;
    if (n == 4 && strcmp(parts[3], "plan") == 0) return R_PLAN;
    if (n == 4 && (!strcmp(parts[3], "compensate") || !strcmp(parts[3], "retry") || !strcmp(parts[3], "resolve")))
      return R_ACTION;
    if (n == 4 && !strcmp(parts[3], "terminate")) return R_ADMIN_ACTION;
    if (n == 4 && !strcmp(parts[3], "upgrade")) return R_UPGRADE;
    if (n == 5 && strcmp(parts[3], "signals") == 0) return R_SIGNAL;
    return R_NONE;
  }
  if (v1 && n == 2 && strcmp(parts[1], "definitions") == 0) return R_DEFINITIONS;
  if (v1 && n == 2 && strcmp(parts[1], "breakers") == 0) return R_BREAKERS;
  if (v1 && n == 2 && strcmp(parts[1], "counts") == 0) return R_COUNTS;
  if (v1 && n == 2 && strcmp(parts[1], "events") == 0) return R_EVENTS;
  if (v1 && n == 2 && strcmp(parts[1], "schedules") == 0) return R_SCHEDULES;
  if (n == 1 && strcmp(parts[0], "healthz") == 0) return R_HEALTHZ;
  if (n == 1 && strcmp(parts[0], "metrics") == 0) return R_METRICS;
  if (n == 0 || (n == 2 && strcmp(parts[0], "ui") == 0)) return R_WEB;
  return R_NONE;
}

/* the Allow header of each route; HEAD is GET without the body (libmicrohttpd drops it) */
static const char *route_allow(enum route_kind k) {
  switch (k) {
  case R_SAGA: return "GET, HEAD, POST";
  case R_ACTION:
  case R_ADMIN_ACTION:
  case R_UPGRADE:
  case R_SIGNAL: return "POST";
  default: return "GET, HEAD";
  }
}

/* the role a request needs (the method is already known to suit the route) */
static enum sg_role route_role(const struct sg_api *api, enum route_kind k, int is_post) {
  switch (k) {
  case R_HEALTHZ: return SG_ROLE_NONE; /* liveness probes carry no credentials */
  case R_WEB: return SG_ROLE_NONE;     /* the page holds no data: it asks the API with the user's token */
  case R_METRICS: return api->auth_metrics ? SG_ROLE_READ : SG_ROLE_NONE;
  case R_SAGA: return is_post ? SG_ROLE_START : SG_ROLE_READ;
  case R_ACTION:
  case R_UPGRADE: return SG_ROLE_OPERATE;
  case R_ADMIN_ACTION: return SG_ROLE_ADMIN;
  case R_SIGNAL: return SG_ROLE_START; /* what a webhook sends: the role that starts sagas */
  default: return SG_ROLE_READ;
  }
}

/* With auth: who sent the request, or NULL after answering 401. Open routes skip this, so a probe
 * without a token works and one with a stale token is not refused either. */
static const struct sg_auth_entry *authenticate(struct sg_api *api, struct sg_http_req *req) {
  char token[600];
  const char *hdr = sg_http_header(req, "Authorization");
  if (!hdr) {
    sg_http_reply_error_with(req, 401, "WWW-Authenticate", "Bearer",
                             "authentication required: send `Authorization: Bearer <token>` with a token from the "
                             "host's --auth file (the CLI sends $SAGAHOST_TOKEN)");
    return NULL;
  }
  const struct sg_auth_entry *who = sg_auth_bearer(hdr, token, sizeof token) < 0 ? NULL : sg_auth_find(api->auth, token);
  explicit_bzero(token, sizeof token);
  if (!who)
    sg_http_reply_error_with(req, 401, "WWW-Authenticate", "Bearer error=\"invalid_token\"",
                             "invalid credentials: the bearer token is not one of the host's --auth file");
  return who;
}

static void route(void *ud, struct sg_http_req *req) {
  struct sg_api *api = ud;
  char parts[PATH_PARTS][256];
  int n = split_path(req->path, parts);
  enum route_kind k = n < 0 ? R_NONE : route_match(parts, n);
  int is_get = !strcmp(req->method, "GET") || !strcmp(req->method, "HEAD");
  int is_post = !strcmp(req->method, "POST");
  /* authenticated before 404/405 so that a stranger learns nothing about the routes */
  const struct sg_auth_entry *who = NULL;
  int open = k == R_HEALTHZ || k == R_WEB || (k == R_METRICS && !api->auth_metrics);
  if (api->auth && !open && !(who = authenticate(api, req))) return;
  if (k == R_NONE) {
    /* the path only: the method is the client's arbitrary token and is not echoed */
    char msg[300];
    snprintf(msg, sizeof msg, "no route for %.200s", req->path);
    sg_http_reply_error(req, 404, msg);
    return;
  }
  int ok = k == R_SAGA ? is_get || is_post
         : k == R_ACTION || k == R_ADMIN_ACTION || k == R_UPGRADE || k == R_SIGNAL ? is_post : is_get;
  if (!ok) { sg_http_reply_not_allowed(req, route_allow(k)); return; }
  enum sg_role need = route_role(api, k, is_post);
  if (who && who->role < need) {
    char msg[300];
    snprintf(msg, sizeof msg, "forbidden: %s needs role %s (or higher); the token of %s has role %s",
             k == R_SAGA && is_post ? "starting a saga" : k == R_ACTION ? "an operator action"
             : k == R_ADMIN_ACTION ? "terminate" : k == R_UPGRADE ? "upgrade" : k == R_SIGNAL ? "sending a signal"
             : "this route",
             sg_role_name(need), who->name, sg_role_name(who->role));
    sg_http_reply_error(req, 403, msg);
    return;
  }

  struct pending *p;
  switch (k) {
  case R_SAGA:
    if (is_post) { start_saga(api, req, parts[2]); return; }
    /* GET of one saga is a read like the list */
    __attribute__((fallthrough));
  case R_SAGAS:
    p = sg_xcalloc(1, sizeof *p);
    p->api = api;
    p->req = req;
    sg_engine_after_commit(api->en, on_read_committed, p);
    return;
  case R_COUNTS:
    p = sg_xcalloc(1, sizeof *p);
    p->api = api;
    p->req = req;
    sg_engine_after_commit(api->en, on_counts_committed, p);
    return;
  case R_PLAN:
    p = sg_xcalloc(1, sizeof *p);
    p->api = api;
    p->req = req;
    snprintf(p->id, sizeof p->id, "%.39s", parts[2]);
    sg_engine_after_commit(api->en, on_plan_committed, p);
    return;
  case R_UPGRADE:
    if (strlen(parts[2]) >= 40) { sg_http_reply_error(req, 404, "no saga with that id"); return; }
    upgrade_action(api, req, parts[2], who ? who->name : NULL);
    return;
  case R_ACTION:
  case R_ADMIN_ACTION:
    if (strlen(parts[2]) >= 40) { sg_http_reply_error(req, 404, "no saga with that id"); return; }
    operator_action(api, req, parts[2], parts[3], who ? who->name : NULL);
    return;
  case R_SIGNAL: send_signal(api, req, parts[2], parts[4]); return;
  case R_DEFINITIONS: {
    char *json = sg_script_definitions_json(api->sc);
    sg_http_reply(req, 200, json);
    free(json);
    return;
  }
  case R_BREAKERS: {
    char *json = sg_engine_breakers_json(api->en);
    sg_http_reply(req, 200, json);
    free(json);
    return;
  }
  case R_HEALTHZ: healthz(api, req); return;
  case R_METRICS: metrics(api, req); return;
  case R_WEB: sg_web_serve(req, n == 0 ? "index.html" : parts[1]); return;
  case R_EVENTS: sg_events_subscribe(api->events, req); return;
  case R_SCHEDULES: {
    char *json = sg_schedules_json(api->sched);
    sg_http_reply(req, 200, json);
    free(json);
    return;
  }
  case R_NONE: break; /* answered above */
  }
}

static void on_read_committed(void *ud, int status) {
  struct pending *p = ud;
  char parts[PATH_PARTS][256];
  int n = split_path(p->req->path, parts);
  if (n == 2) list_sagas(p->api, p->req);
  else get_saga(p->api, p->req, parts[2]);
  free(p);
}

struct sg_api *sg_api_start(struct ev_loop *loop, const struct sg_api_config *cfg, struct sg_engine *en,
                            struct sg_store *store, struct sg_script *sc, struct sg_error *e) {
  struct sg_api *api = sg_xcalloc(1, sizeof *api);
  api->en = en;
  api->store = store;
  api->sc = sc;
  api->auth = cfg->auth;
  api->auth_metrics = cfg->auth_metrics;
  api->http = sg_http_start_tls(loop, cfg->listen, cfg->max_body, cfg->tls, route, api, e);
  if (!api->http) { free(api); return NULL; }
  api->metrics = sg_metrics_new(en, sc, e);
  if (!api->metrics) { sg_http_stop(api->http); free(api); return NULL; }
  api->events = sg_events_new(loop, en, store->ops->read_start != NULL);
  return api;
}

int sg_api_port(struct sg_api *api) { return sg_http_port(api->http); }

struct sg_events *sg_api_events(struct sg_api *api) { return api->events; }

void sg_api_set_schedules(struct sg_api *api, struct sg_schedules *sched) { api->sched = sched; }

void sg_api_set_auth(struct sg_api *api, const struct sg_auth *auth) { api->auth = auth; }

void sg_api_stop(struct sg_api *api) {
  if (!api) return;
  sg_http_stop(api->http);
  sg_events_free(api->events);
  sg_metrics_free(api->metrics);
  free(api);
}
