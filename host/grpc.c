/* grpc: sagahost.v1.Sagas over HTTP/2 (nghttp2) inside the libev loop (grpc.h).
 *
 * A connection is a non-blocking socket with two ev_io watchers: reads are fed to nghttp2 as they
 * come; writes happen only in the write watcher's callback (on_write), which the rest of the file
 * starts when it has something to send (conn_kick). So nothing reached from the engine or the events
 * hub ever sends, closes or frees a connection under its caller's feet. With TLS the same watchers
 * drive a non-blocking OpenSSL session: the handshake first (ALPN must pick h2), then nghttp2 is fed
 * from SSL_read and its output goes out through SSL_write; SSL_ERROR_WANT_READ/WANT_WRITE just wait
 * for the watcher that the session asked for.
 *
 * Limits (HTTP's flags): a connection over --http-max-connections or --http-max-per-ip gets a GOAWAY
 * saying which (ENHANCE_YOUR_CALM, no stream served) and is closed; one that has not completed a first
 * request within --http-request-timeout of its accept is closed; one with no open call for
 * --grpc-idle-timeout gets a GOAWAY (NO_ERROR) and is closed. A periodic sweep checks the deadlines.
 *
 * A call is one HTTP/2 stream: its request message is buffered until END_STREAM, then dispatched by
 * :path. Its answer goes to call->out (5-byte length-prefixed messages) and nghttp2 pulls it through a
 * data provider; when the call has its status and out is drained, the provider ends the DATA and the
 * trailers (grpc-status, grpc-message) follow. A call waiting for the engine (busy) whose stream or
 * connection goes away is detached and freed when the engine answers. */
#define _GNU_SOURCE /* accept4 */
#include "grpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "duration.h"
#include "http.h"
#include "sagahost/v1/sagas.pb-c.h"
#include "store.h"

#define MAX_STREAMS 100         /* concurrent calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS) */
#define DRAIN_S 2.0             /* after our GOAWAY went out: how long the client has to close first */
#define FORWARD_TIMEOUT_MS 10000 /* a verb another host owns: how long to wait for it (as HTTP) */
#define WATCH_SLACK_MS 2000     /* Watch from a saga's start: events from this long before it (hosts' clocks) */

/* gRPC status codes */
enum {
  GS_OK = 0, GS_INVALID_ARGUMENT = 3, GS_NOT_FOUND = 5, GS_PERMISSION_DENIED = 7, GS_RESOURCE_EXHAUSTED = 8,
  GS_FAILED_PRECONDITION = 9, GS_UNIMPLEMENTED = 12, GS_INTERNAL = 13, GS_UNAVAILABLE = 14, GS_UNAUTHENTICATED = 16,
};

struct conn;

/* The methods; the role each needs is in methods[]. */
enum method { M_START, M_GET, M_LIST, M_COMPENSATE, M_RETRY, M_RESOLVE, M_WATCH, M_WATCH_ALL };

/* One call (an HTTP/2 stream). */
struct call {
  struct sg_grpc *g;
  struct conn *c;               /* NULL once detached (its stream or connection is gone) */
  int32_t sid;                  /* the stream id */
  char path[96];                /* :path */
  char ctype[64];               /* content-type */
  char authz[600];              /* authorization */
  char traceparent[64];         /* W3C Trace Context metadata (Start: the saga's span continues it) */
  char tracestate[512];
  struct sg_buf in;             /* the request body (framed messages) */
  int too_big;                  /* the body went over max_message */
  struct sg_buf out;            /* answer bytes not yet taken by nghttp2, from out_off */
  size_t out_off;
  int answered;                 /* response headers submitted */
  int finished;                 /* status set: trailers once out is drained */
  int status;
  char *message;
  int busy;                     /* an engine call holds this call */
  enum method m;
  const struct sg_auth_entry *who; /* with auth: the caller (valid for the dispatch only) */
  char id[40];                  /* the saga (Get, verbs, Watch) */
  char verb[16], *arg, *by;     /* verbs */
  char *from;                   /* Watch: the resume id, NULL = from the saga's start */
  struct sg_events_sub *sub;    /* Watch, WatchAll: the hub's subscriber */
  int watch_end;                /* Watch: its terminal event is queued, nothing more follows */
  int ended;                    /* the hub has ended sub (sink end) */
  struct call *prev, *next;
};

/* One client connection. */
struct conn {
  struct sg_grpc *g;
  int fd;
  ev_io rio, wio;
  nghttp2_session *ses;
  struct sg_buf wbuf;           /* bytes nghttp2 gave that the socket did not take yet, from woff */
  size_t woff;
  SSL *ssl;                     /* TLS: the session; NULL = plaintext */
  int tls_ready;                /* TLS: the handshake is done and ALPN chose h2 */
  struct in_addr peer;          /* the client's address (--http-max-per-ip, logs) */
  int refused;                  /* over a cap: served nothing, gets a GOAWAY and is closed */
  int closing;                  /* a GOAWAY of ours is queued: shut down once everything is written */
  int drained;                  /* our side is shut down: what comes is discarded until EOF or DRAIN_S */
  int requested;                /* a first complete request came in (request_timeout no longer applies) */
  ev_tstamp since;              /* accept */
  ev_tstamp idle_since;         /* the last call's end (or accept, or the shutdown when drained) */
  struct call *calls;
  struct conn *prev, *next;
};

struct sg_grpc {
  struct ev_loop *loop;
  struct sg_engine *en;
  struct sg_events *events;
  const struct sg_auth *auth;
  size_t max_message;
  int fd, port;
  ev_io accept_w;
  SSL_CTX *tls;                 /* --tls-cert/--tls-key: serve TLS with ALPN h2; NULL = plaintext */
  unsigned max_connections, max_per_ip; /* serving connections in all, from one address */
  double request_timeout;       /* s from accept to a first complete request */
  double idle_timeout;          /* s without an open call */
  ev_timer sweep;               /* the deadlines above */
  struct conn *conns;
  size_t nconns;                /* all, refused ones included */
};

static void conn_kick(struct conn *c) {
  if (c && !ev_is_active(&c->wio)) ev_io_start(c->g->loop, &c->wio);
}

/* ---- calls: answers ---- */

static void call_free(struct call *k) {
  sg_buf_free(&k->in);
  sg_buf_free(&k->out);
  free(k->message);
  free(k->arg);
  free(k->by);
  free(k->from);
  free(k);
}

/* the stream or its connection is gone: k is freed now, or by the engine's answer */
static void call_detach(struct call *k) {
  struct conn *c = k->c;
  if (c) {
    if (k->prev) k->prev->next = k->next;
    else c->calls = k->next;
    if (k->next) k->next->prev = k->prev;
    k->c = NULL;
    if (!c->calls) c->idle_since = ev_now(c->g->loop);
  }
  if (k->sub) {
    sg_events_unsubscribe(k->sub);
    k->sub = NULL;
  }
  if (!k->busy) call_free(k);
}

/* the engine is done with k: 1 when it is detached (and now freed): the answer goes nowhere */
static int call_back(struct call *k) {
  k->busy = 0;
  if (k->c) return 0;
  call_free(k);
  return 1;
}

static ssize_t data_read(nghttp2_session *ses, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud);

static void call_headers(struct call *k) {
  if (k->answered || !k->c) return;
  static const nghttp2_nv hdrs[] = {
    { (uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE },
    { (uint8_t *)"content-type", (uint8_t *)"application/grpc+proto", 12, 22, NGHTTP2_NV_FLAG_NONE },
  };
  nghttp2_data_provider prd = { .source.ptr = k, .read_callback = data_read };
  if (nghttp2_submit_response(k->c->ses, k->sid, hdrs, 2, &prd) == 0) k->answered = 1;
  conn_kick(k->c);
}

/* one message of the answer (length-prefixed, uncompressed) */
static void add_message(struct sg_buf *b, const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t hdr[5] = { 0, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
  sg_buf_add(b, (const char *)hdr, 5);
  uint8_t *tmp = sg_xmalloc(n ? n : 1);
  protobuf_c_message_pack(msg, tmp);
  sg_buf_add(b, (const char *)tmp, n);
  free(tmp);
}

static void call_more(struct call *k) {
  if (!k->c) return;
  call_headers(k);
  nghttp2_session_resume_data(k->c->ses, k->sid);
  conn_kick(k->c);
}

static void call_send(struct call *k, const ProtobufCMessage *msg) {
  if (!k->c || k->finished) return;
  add_message(&k->out, msg);
  call_more(k);
}

/* the call's status: the trailers follow what is queued */
static void call_finish(struct call *k, int status, const char *message) {
  if (!k->c || k->finished) return;
  k->finished = 1;
  k->status = status;
  k->message = message ? sg_strdup(message) : NULL;
  call_more(k);
}

static int status_for(int code) {
  switch (code) {
  case SG_E_INVALID: return GS_INVALID_ARGUMENT;
  case SG_E_NOTFOUND: return GS_NOT_FOUND;
  case SG_E_CONFLICT: return GS_FAILED_PRECONDITION;
  case SG_E_TOOBIG: return GS_RESOURCE_EXHAUSTED;
  case SG_E_UNAVAILABLE: case SG_E_FENCED: case SG_E_ELSEWHERE: return GS_UNAVAILABLE;
  default: return GS_INTERNAL;
  }
}

static void call_error(struct call *k, const struct sg_error *e) { call_finish(k, status_for(e->code), e->msg); }

/* grpc-message: percent-encoded (gRPC over HTTP/2: bytes outside 0x20..0x7e and '%') */
static void pct_encode(struct sg_buf *b, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p >= 0x20 && *p <= 0x7e && *p != '%') sg_buf_add(b, (const char *)p, 1);
    else sg_buf_printf(b, "%%%02X", *p);
  }
}

static ssize_t data_read(nghttp2_session *ses, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud) {
  struct call *k = src->ptr;
  size_t left = k->out.len - k->out_off;
  if (left) {
    size_t n = left < len ? left : len;
    memcpy(buf, k->out.data + k->out_off, n);
    k->out_off += n;
    if (k->out_off == k->out.len) { k->out.len = 0; k->out_off = 0; }
    else if (k->out_off > (64u << 10)) { /* keep the buffer from creeping */
      memmove(k->out.data, k->out.data + k->out_off, k->out.len - k->out_off);
      k->out.len -= k->out_off;
      k->out_off = 0;
    }
    return (ssize_t)n;
  }
  if (!k->finished) return NGHTTP2_ERR_DEFERRED;
  *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
  char st[16];
  snprintf(st, sizeof st, "%d", k->status);
  struct sg_buf m;
  sg_buf_init(&m);
  if (k->message) pct_encode(&m, k->message);
  nghttp2_nv tr[2] = {
    { (uint8_t *)"grpc-status", (uint8_t *)st, 11, strlen(st), NGHTTP2_NV_FLAG_NONE },
    { (uint8_t *)"grpc-message", (uint8_t *)(m.data ? m.data : ""), 12, m.len, NGHTTP2_NV_FLAG_NONE },
  };
  nghttp2_submit_trailer(ses, sid, tr, k->message ? 2 : 1); /* copies */
  sg_buf_free(&m);
  return 0;
}

/* ---- messages from the store's rows ---- */

static char *S(const char *s) { return (char *)(s ? s : ""); }

/* ISO 8601 text of ms into a buffer of 32, "" for none */
static char *ts(char buf[32], int64_t ms) {
  if (ms <= 0) buf[0] = 0;
  else sg_iso8601(ms, buf);
  return buf;
}

/* a saga as GET /v1/sagas/{id} answers it; the strings point into r, rd and tsb (32 bytes per time) */
struct saga_msg {
  Sagahost__V1__Saga saga;
  Sagahost__V1__Step *steps;
  Sagahost__V1__Step **stepp;
  char (*tsb)[32];
  char *pending;
};

static void saga_msg_fill(struct saga_msg *m, struct sg_engine *en, const struct sg_read *rd) {
  const struct sg_saga_row *r = &rd->rows[0];
  size_t nst = rd->nhist + 1;
  memset(m, 0, sizeof *m);
  sagahost__v1__saga__init(&m->saga);
  m->tsb = sg_xcalloc(3 + 2 * nst, 32); /* created, updated, start_at, then each step's two */
  m->steps = sg_xcalloc(nst, sizeof *m->steps);
  m->stepp = sg_xcalloc(nst, sizeof *m->stepp);
  m->saga.id = (char *)r->id;
  m->saga.type = S(r->type);
  m->saga.key = S(r->biz_key);
  int scheduled = r->status == SG_ST_RUNNING && r->attempt == 0; /* a delayed start not yet due */
  m->saga.status = scheduled ? "scheduled" : (char *)sg_status_name(r->status);
  if (scheduled) m->saga.start_at = ts(m->tsb[2], r->attempt_started_at);
  m->saga.definition_version = S(r->def_hash);
  m->saga.created_at = ts(m->tsb[0], r->created_at);
  m->saga.updated_at = ts(m->tsb[1], r->updated_at);
  m->saga.input = S(r->input);
  m->saga.data = S(r->data);
  m->saga.error = S(r->error);
  m->saga.idempotency_key = S(r->idem_key);
  m->pending = sg_engine_pending_compensations(en, r);
  m->saga.pending_compensations = S(m->pending);
  size_t n = 0;
  struct sg_hist_row running = { 0 };
  for (size_t i = 0; i < nst; i++) {
    const struct sg_hist_row *h = i < rd->nhist ? &rd->hist[i] : NULL;
    if (!h) { /* the running attempt: its history row is written when it ends */
      if (SG_ST_TERMINAL(r->status) || r->attempt_started_at <= 0 || r->attempt == 0) break;
      running = (struct sg_hist_row){ .saga_id = r->id, .step = r->step, .step_name = sg_engine_step_name(en, r),
                                      .phase = r->phase, .attempt = r->phase == SG_PH_PARTIAL ? r->attempt - r->attempt_base : r->attempt, .status = "running",
                                      .started_at = r->attempt_started_at };
      h = &running;
    }
    Sagahost__V1__Step *s = &m->steps[n];
    sagahost__v1__step__init(s);
    s->name = S(h->step_name);
    if (h->phase < 0) {
      s->phase = "saga";
      s->event = S(h->status);
      s->status = "completed";
    } else {
      s->phase = (char *)sg_phase_name(h->phase);
      s->status = S(h->status);
    }
    s->step = h->step + 1;
    s->attempt = h->attempt;
    s->started_at = ts(m->tsb[3 + 2 * i], h->started_at);
    s->finished_at = ts(m->tsb[4 + 2 * i], h->finished_at);
    s->error = S(h->error);
    m->stepp[n++] = s;
  }
  m->saga.n_steps = n;
  m->saga.steps = m->stepp;
}

static void saga_msg_free(struct saga_msg *m) {
  free(m->tsb);
  free(m->steps);
  free(m->stepp);
  free(m->pending);
}

/* ---- Get ---- */

static void on_get_read(struct sg_read *rd) {
  struct call *k = rd->ud;
  if (call_back(k)) { sg_read_free(rd); return; }
  if (rd->rc < 0) {
    call_error(k, &rd->err);
  } else if (rd->rc == 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "no saga with id '%.80s'", rd->a);
    call_finish(k, GS_NOT_FOUND, msg);
  } else {
    struct saga_msg m;
    saga_msg_fill(&m, k->g->en, rd);
    if (k->m == M_GET) {
      call_send(k, &m.saga.base);
    } else { /* a verb's answer: the saga after it */
      Sagahost__V1__ActionResponse a = SAGAHOST__V1__ACTION_RESPONSE__INIT;
      a.id = k->id;
      a.accepted = a.applied = 1;
      a.saga = &m.saga;
      call_send(k, &a.base);
    }
    saga_msg_free(&m);
    call_finish(k, GS_OK, NULL);
  }
  sg_read_free(rd);
}

static void read_saga(struct call *k) {
  struct sg_read *rd = sg_read_new(SG_READ_SAGA, k->id, NULL, on_get_read, k);
  rd->with_hist = 1;
  k->busy = 1;
  sg_engine_read(k->g->en, rd);
}

static void on_get_committed(void *ud, int status) {
  struct call *k = ud;
  (void)status; /* a read: it shows what is committed */
  if (call_back(k)) return;
  read_saga(k);
}

/* reads after the commit on its way, so that a read follows what the client saw committed */
static void after_commit(struct call *k, sg_committed_cb cb) {
  k->busy = 1;
  sg_engine_after_commit(k->g->en, cb, k);
}

static int take_id(struct call *k, const char *id) {
  if (!id || !*id || strlen(id) >= sizeof k->id) {
    call_finish(k, id && *id ? GS_NOT_FOUND : GS_INVALID_ARGUMENT, id && *id ? "no saga with that id" : "id is required");
    return -1;
  }
  snprintf(k->id, sizeof k->id, "%s", id);
  return 0;
}

static void rpc_get(struct call *k, const Sagahost__V1__GetRequest *q) {
  if (take_id(k, q->id) < 0) return;
  after_commit(k, on_get_committed);
}

/* ---- Start ---- */

static void on_start_committed(void *ud, int status) {
  struct call *k = ud;
  if (call_back(k)) return;
  if (status == -2) {
    call_finish(k, GS_UNAVAILABLE, "this host lost its sagas to another host (its lease ran out) before the start"
                                   " was committed; it did not happen: retry");
  } else if (status < 0) {
    call_finish(k, GS_INTERNAL, "the store could not commit the start; it did not happen");
  } else {
    Sagahost__V1__StartResponse r = SAGAHOST__V1__START_RESPONSE__INIT;
    r.id = k->id;
    r.existing = k->arg != NULL;
    call_send(k, &r.base);
    call_finish(k, GS_OK, NULL);
  }
}

static void on_started(void *ud, const char *id, int existed, const struct sg_error *e) {
  struct call *k = ud;
  if (call_back(k)) return;
  if (e) { call_error(k, e); return; }
  snprintf(k->id, sizeof k->id, "%s", id);
  free(k->arg);
  k->arg = existed ? sg_strdup("existing") : NULL;
  after_commit(k, on_start_committed);
}

static void rpc_start(struct call *k, const Sagahost__V1__StartRequest *q) {
  const char *input = q->input && *q->input ? q->input : "{}";
  json_error_t jerr;
  json_t *j = json_loads(input, JSON_DECODE_ANY, &jerr);
  if (!j) {
    char msg[400];
    snprintf(msg, sizeof msg, "malformed JSON input at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    call_finish(k, GS_INVALID_ARGUMENT, msg);
    return;
  }
  int is_obj = json_is_object(j);
  json_decref(j);
  if (!is_obj) { call_finish(k, GS_INVALID_ARGUMENT, "the saga input must be a JSON object"); return; }
  const char *key = q->idempotency_key && *q->idempotency_key ? q->idempotency_key : NULL;
  if (key && strlen(key) > 200) { call_finish(k, GS_INVALID_ARGUMENT, "idempotency_key must be 1 to 200 characters"); return; }
  if (!q->type || !*q->type) { call_finish(k, GS_INVALID_ARGUMENT, "type is required"); return; }
  int64_t start_at = 0, delay = 0;
  int has_at = q->start_at && *q->start_at, has_delay = q->delay && *q->delay;
  if (has_at && has_delay) { call_finish(k, GS_INVALID_ARGUMENT, "give start_at or delay, not both"); return; }
  if (has_at && sg_time_parse(q->start_at, &start_at) < 0) {
    call_finish(k, GS_INVALID_ARGUMENT, "start_at must be a UTC time like 2026-11-30T12:00:00Z or milliseconds since the epoch");
    return;
  }
  if (has_delay) {
    struct sg_error de = {0};
    if (sg_duration_parse(q->delay, &delay, &de) < 0) { call_finish(k, GS_INVALID_ARGUMENT, de.msg); return; }
    start_at = sg_now_ms() + delay;
  }
  k->busy = 1;
  sg_engine_start_at_cb(k->g->en, q->type, input, key, k->traceparent[0] ? k->traceparent : NULL,
                        k->tracestate[0] ? k->tracestate : NULL, start_at, on_started, k);
}

/* ---- List ---- */

static void on_list_read(struct sg_read *rd) {
  struct call *k = rd->ud;
  if (call_back(k)) { sg_read_free(rd); return; }
  if (rd->rc < 0) {
    call_error(k, &rd->err);
    sg_read_free(rd);
    return;
  }
  size_t page = (size_t)rd->limit - 1, n = rd->nrows < page ? rd->nrows : page;
  Sagahost__V1__ListResponse r = SAGAHOST__V1__LIST_RESPONSE__INIT;
  Sagahost__V1__SagaSummary *ss = sg_xcalloc(n ? n : 1, sizeof *ss);
  Sagahost__V1__SagaSummary **sp = sg_xcalloc(n ? n : 1, sizeof *sp);
  char (*tsb)[32] = sg_xcalloc(2 * (n ? n : 1), 32);
  for (size_t i = 0; i < n; i++) {
    const struct sg_saga_row *row = &rd->rows[i];
    sagahost__v1__saga_summary__init(&ss[i]);
    ss[i].id = (char *)row->id;
    ss[i].type = S(row->type);
    ss[i].key = S(row->biz_key);
    ss[i].status = row->status == SG_ST_RUNNING && row->attempt == 0 ? "scheduled" : (char *)sg_status_name(row->status);
    ss[i].definition_version = S(row->def_hash);
    ss[i].created_at = ts(tsb[2 * i], row->created_at);
    ss[i].updated_at = ts(tsb[2 * i + 1], row->updated_at);
    ss[i].error = S(row->error);
    sp[i] = &ss[i];
  }
  r.n_sagas = n;
  r.sagas = sp;
  char next[48] = "";
  if (rd->nrows > page && n > 0) snprintf(next, sizeof next, "%c.%s", rd->desc ? 'd' : 'a', rd->rows[n - 1].id);
  r.next = next;
  call_send(k, &r.base);
  call_finish(k, GS_OK, NULL);
  free(ss);
  free(sp);
  free(tsb);
  sg_read_free(rd);
}

/* the request, checked as GET /v1/sagas checks its query (api.c) */
static void rpc_list(struct call *k, const Sagahost__V1__ListRequest *q) {
  int status = -1, desc = 1, limit = q->limit ? q->limit : 100;
  if (*S(q->status) && (status = sg_status_parse(q->status)) < 0) {
    call_finish(k, GS_INVALID_ARGUMENT, "unknown status (use running, compensating, completed, compensated,"
                                        " compensation_failed, resolved or terminated)");
    return;
  }
  if (strlen(S(q->key)) > 200) { call_finish(k, GS_INVALID_ARGUMENT, "key must be 1 to 200 bytes"); return; }
  if (limit < 1 || limit > 1000) { call_finish(k, GS_INVALID_ARGUMENT, "limit must be an integer from 1 to 1000"); return; }
  const char *order = S(q->order), *cursor = S(q->cursor), *id = NULL;
  if (*order && strcmp(order, "desc") && strcmp(order, "asc")) {
    call_finish(k, GS_INVALID_ARGUMENT, "order must be desc (newest first, the default) or asc (oldest first)");
    return;
  }
  if (*order) desc = !strcmp(order, "desc");
  if (*cursor) {
    int cdesc = desc;
    id = cursor;
    if ((cursor[0] == 'a' || cursor[0] == 'd') && cursor[1] == '.') { cdesc = cursor[0] == 'd'; id = cursor + 2; }
    if (sg_uuid_time_ms(id) < 0) {
      call_finish(k, GS_INVALID_ARGUMENT, "malformed cursor: pass the \"next\" of the previous page unchanged");
      return;
    }
    if (*order && cdesc != desc) {
      call_finish(k, GS_INVALID_ARGUMENT, "this cursor continues a listing in the other order: ask with the same order");
      return;
    }
    desc = cdesc;
  }
  int64_t since = 0, until = 0;
  if ((*S(q->since) && sg_time_parse(q->since, &since) < 0) || (*S(q->until) && sg_time_parse(q->until, &until) < 0)) {
    call_finish(k, GS_INVALID_ARGUMENT, "since and until must be UTC times like 2026-11-30T12:00:00Z or"
                                        " 2026-11-30T12:00:00.123Z, or milliseconds since the epoch");
    return;
  }
  if (*S(q->until) && until <= 0) until = 1;
  struct sg_read *rd = sg_read_new(SG_READ_LIST, *S(q->type) ? q->type : NULL, id, on_list_read, k);
  rd->status = status;
  rd->limit = limit + 1; /* one more: is there a next page? */
  rd->key = *S(q->key) ? sg_strdup(q->key) : NULL;
  rd->since = since > 0 ? since : 0;
  rd->until = until;
  rd->desc = desc;
  k->busy = 1;
  sg_engine_read(k->g->en, rd);
}

/* ---- Compensate, Retry, Resolve ---- */

static void on_action_committed(void *ud, int status) {
  struct call *k = ud;
  if (call_back(k)) return;
  if (status == -2) call_finish(k, GS_UNAVAILABLE, "this host lost its sagas to another host before the action was"
                                                   " committed; it did not happen: retry");
  else if (status < 0) call_finish(k, GS_INTERNAL, "the store could not commit the action; it did not happen");
  else read_saga(k);
}

static void on_forwarded(void *ud, const struct sg_error *e) {
  struct call *k = ud;
  if (call_back(k)) return;
  if (!e) {
    read_saga(k);
  } else if (e->code == SG_E_ELSEWHERE) { /* HTTP's 202: accepted, applied when its owner reads it */
    Sagahost__V1__ActionResponse a = SAGAHOST__V1__ACTION_RESPONSE__INIT;
    a.id = k->id;
    a.accepted = 1;
    a.message = (char *)e->msg;
    call_send(k, &a.base);
    call_finish(k, GS_OK, NULL);
  } else {
    call_error(k, e);
  }
}

static void on_verb_done(void *ud, const struct sg_error *e) {
  struct call *k = ud;
  if (call_back(k)) return;
  if (e && e->code == SG_E_ELSEWHERE) {
    sg_info("%s (%s): forwarding %s to it", e->msg, k->id, k->verb);
    struct sg_error fe = {0};
    k->busy = 1;
    if (sg_engine_forward(k->g->en, k->id, k->verb, k->arg, k->by, FORWARD_TIMEOUT_MS, on_forwarded, k, &fe) < 0) {
      if (!call_back(k)) call_error(k, &fe);
    }
    return;
  }
  if (e) { call_error(k, e); return; }
  after_commit(k, on_action_committed);
}

static void rpc_verb(struct call *k, const char *verb, const char *id, const char *arg, const char *by) {
  if (take_id(k, id) < 0) return;
  snprintf(k->verb, sizeof k->verb, "%s", verb);
  k->arg = arg && *arg ? sg_strdup(arg) : NULL;
  /* with auth a client could name anyone in "by": the token says who it is */
  k->by = sg_strdup(k->who ? k->who->name : by && *by ? by : "grpc");
  k->busy = 1;
  sg_engine_verb_cb(k->g->en, k->id, k->verb, k->arg, k->by, on_verb_done, k);
}

/* ---- Watch, WatchAll: subscribers of the events hub ---- */

static void ev_format(void *out, struct sg_buf *b, const char *event_id, const struct sg_event_row *ev) {
  struct call *k = out;
  if (k->watch_end) return; /* Watch: past its terminal event */
  Sagahost__V1__Event m = SAGAHOST__V1__EVENT__INIT;
  char at[32];
  m.event_id = (char *)event_id;
  m.kind = S(ev->kind);
  if (!ev->saga_id) { /* a definition's */
    m.file = S(ev->step_name);
    m.version = S(ev->outcome);
    m.error = S(ev->detail);
  } else {
    m.saga_id = (char *)ev->saga_id;
    m.type = S(ev->type);
    m.status = S(ev->status);
    m.step = ev->step + 1;
    m.step_name = S(ev->step_name);
    m.phase = (char *)sg_phase_name(ev->phase);
    m.attempt = ev->attempt;
    m.outcome = S(ev->outcome);
    m.detail = S(ev->detail);
    m.duration_ms = ev->duration_ms;
  }
  m.at = ts(at, ev->at);
  m.host_id = S(ev->host_id);
  add_message(b, &m.base);
  if (k->m == M_WATCH && ev->kind && !strcmp(ev->kind, "terminal")) k->watch_end = 1;
}

static int ev_write(void *out, const char *data, size_t n) {
  struct call *k = out;
  if (k->out.len - k->out_off + n > SG_EVENTS_SUB_CAP) return -1;
  sg_buf_add(&k->out, data, n);
  call_more(k);
  if (k->watch_end) call_finish(k, GS_OK, NULL); /* the stream closes after it: then the hub forgets k */
  return 0;
}

static size_t ev_pending(void *out) {
  const struct call *k = out;
  return k->out.len - k->out_off;
}

static void ev_end(void *out, int abort, int code, const char *why) {
  struct call *k = out;
  k->sub = NULL;
  k->ended = 1;
  if (abort) { k->out.len = k->out_off = 0; }
  if (code == 0) call_finish(k, GS_UNAVAILABLE, "the host is stopping: resume with the last event id");
  else if (code == SG_E_TOOBIG) call_finish(k, GS_RESOURCE_EXHAUSTED, why);
  else call_finish(k, status_for(code), why);
}

static const struct sg_events_sink sink = { ev_format, ev_write, ev_pending, ev_end };

static void subscribe(struct call *k, const struct sg_events_filter *f) {
  struct sg_error e = {0};
  call_headers(k); /* the client knows it is connected */
  struct sg_events_sub *s = sg_events_subscribe_sink(k->g->events, f, &sink, k, &e);
  if (!s) call_error(k, &e);
  else if (!k->ended) k->sub = s; /* (ended already: it is gone) */
}

static void on_watch_pos(struct sg_read *rd) {
  struct call *k = rd->ud;
  if (call_back(k)) { sg_read_free(rd); return; }
  if (rd->rc < 0) {
    call_error(k, &rd->err);
  } else {
    struct sg_events_filter f = { .saga = k->id, .last_event_id = rd->pos };
    subscribe(k, &f);
  }
  sg_read_free(rd);
}

static void on_watch_read(struct sg_read *rd) {
  struct call *k = rd->ud;
  if (call_back(k)) { sg_read_free(rd); return; }
  if (rd->rc <= 0) {
    if (rd->rc < 0) call_error(k, &rd->err);
    else call_finish(k, GS_NOT_FOUND, "no saga with that id");
    sg_read_free(rd);
    return;
  }
  if (k->from) { /* resume after an event the client has */
    struct sg_events_filter f = { .saga = k->id, .last_event_id = k->from };
    subscribe(k, &f);
  } else { /* from the saga's first event: the store's position just before it started */
    struct sg_read *pr = sg_read_new(SG_READ_EVENTS, NULL, NULL, on_watch_pos, k);
    pr->before = rd->rows[0].created_at - WATCH_SLACK_MS;
    if (pr->before <= 0) pr->before = 1;
    k->busy = 1;
    sg_engine_read(k->g->en, pr);
  }
  sg_read_free(rd);
}

static void on_watch_committed(void *ud, int status) {
  struct call *k = ud;
  if (call_back(k)) return;
  struct sg_read *rd = sg_read_new(SG_READ_SAGA, k->id, NULL, on_watch_read, k);
  k->busy = 1;
  sg_engine_read(k->g->en, rd);
}

static void rpc_watch(struct call *k, const Sagahost__V1__WatchRequest *q) {
  if (take_id(k, q->id) < 0) return;
  k->from = *S(q->last_event_id) ? sg_strdup(q->last_event_id) : NULL;
  after_commit(k, on_watch_committed);
}

static void rpc_watch_all(struct call *k, const Sagahost__V1__WatchAllRequest *q) {
  struct sg_events_filter f = { S(q->saga), S(q->type), S(q->status), S(q->last_event_id) };
  subscribe(k, &f);
}

/* ---- dispatch ---- */

static const struct {
  const char *path;
  enum sg_role role;
  const ProtobufCMessageDescriptor *in;
} methods[] = {
  [M_START] = { "/sagahost.v1.Sagas/Start", SG_ROLE_START, &sagahost__v1__start_request__descriptor },
  [M_GET] = { "/sagahost.v1.Sagas/Get", SG_ROLE_READ, &sagahost__v1__get_request__descriptor },
  [M_LIST] = { "/sagahost.v1.Sagas/List", SG_ROLE_READ, &sagahost__v1__list_request__descriptor },
  [M_COMPENSATE] = { "/sagahost.v1.Sagas/Compensate", SG_ROLE_OPERATE, &sagahost__v1__compensate_request__descriptor },
  [M_RETRY] = { "/sagahost.v1.Sagas/Retry", SG_ROLE_OPERATE, &sagahost__v1__retry_request__descriptor },
  [M_RESOLVE] = { "/sagahost.v1.Sagas/Resolve", SG_ROLE_OPERATE, &sagahost__v1__resolve_request__descriptor },
  [M_WATCH] = { "/sagahost.v1.Sagas/Watch", SG_ROLE_READ, &sagahost__v1__watch_request__descriptor },
  [M_WATCH_ALL] = { "/sagahost.v1.Sagas/WatchAll", SG_ROLE_READ, &sagahost__v1__watch_all_request__descriptor },
};

/* the caller (with auth), or NULL after finishing k with UNAUTHENTICATED */
static const struct sg_auth_entry *authenticate(struct call *k) {
  if (!k->authz[0]) {
    call_finish(k, GS_UNAUTHENTICATED, "authentication required: send the metadata `authorization: Bearer <token>`"
                                       " with a token from the host's --auth file");
    return NULL;
  }
  char token[600];
  const struct sg_auth_entry *who = sg_auth_bearer(k->authz, token, sizeof token) < 0 ? NULL
                                                                                      : sg_auth_find(k->g->auth, token);
  explicit_bzero(token, sizeof token);
  explicit_bzero(k->authz, sizeof k->authz);
  if (!who) call_finish(k, GS_UNAUTHENTICATED, "invalid credentials: the bearer token is not one of the host's --auth file");
  return who;
}

static void dispatch(struct call *k) {
  size_t m = 0;
  while (m < sizeof methods / sizeof methods[0] && strcmp(methods[m].path, k->path)) m++;
  if (k->g->auth && !(k->who = authenticate(k))) return; /* before UNIMPLEMENTED: strangers learn nothing */
  if (m == sizeof methods / sizeof methods[0]) {
    char msg[160];
    snprintf(msg, sizeof msg, "no method %.100s (the service is sagahost.v1.Sagas)", k->path);
    call_finish(k, GS_UNIMPLEMENTED, msg);
    return;
  }
  k->m = (enum method)m;
  if (strncmp(k->ctype, "application/grpc", 16)) {
    call_finish(k, GS_INVALID_ARGUMENT, "content-type must be application/grpc");
    return;
  }
  if (k->who && k->who->role < methods[m].role) {
    char msg[300];
    snprintf(msg, sizeof msg, "forbidden: %s needs role %s (or higher); the token of %s has role %s", methods[m].path + 1,
             sg_role_name(methods[m].role), k->who->name, sg_role_name(k->who->role));
    call_finish(k, GS_PERMISSION_DENIED, msg);
    return;
  }
  if (k->too_big) { call_finish(k, GS_RESOURCE_EXHAUSTED, "the request message is over the host's limit"); return; }
  const uint8_t *d = (const uint8_t *)k->in.data;
  size_t len = 0;
  if (k->in.len >= 5) len = (size_t)d[1] << 24 | (size_t)d[2] << 16 | (size_t)d[3] << 8 | d[4];
  if (k->in.len < 5 || len != k->in.len - 5) {
    call_finish(k, GS_INVALID_ARGUMENT, "expected one length-prefixed request message");
    return;
  }
  if (d[0]) { call_finish(k, GS_UNIMPLEMENTED, "compressed messages are not supported (grpc-encoding identity)"); return; }
  ProtobufCMessage *q = protobuf_c_message_unpack(methods[m].in, NULL, len, d + 5);
  if (!q) { call_finish(k, GS_INVALID_ARGUMENT, "the request message does not decode"); return; }
  switch (k->m) {
  case M_START: rpc_start(k, (void *)q); break;
  case M_GET: rpc_get(k, (void *)q); break;
  case M_LIST: rpc_list(k, (void *)q); break;
  case M_COMPENSATE: {
    const Sagahost__V1__CompensateRequest *r = (void *)q;
    rpc_verb(k, "compensate", r->id, r->reason, r->by);
    break;
  }
  case M_RETRY: {
    const Sagahost__V1__RetryRequest *r = (void *)q;
    rpc_verb(k, "retry", r->id, NULL, r->by);
    break;
  }
  case M_RESOLVE: {
    const Sagahost__V1__ResolveRequest *r = (void *)q;
    rpc_verb(k, "resolve", r->id, r->note, r->by);
    break;
  }
  case M_WATCH: rpc_watch(k, (void *)q); break;
  case M_WATCH_ALL: rpc_watch_all(k, (void *)q); break;
  }
  protobuf_c_message_free_unpacked(q, NULL);
  k->who = NULL; /* the token table may be swapped (SIGHUP) before an answer: only its name was kept */
}

/* ---- HTTP/2 ---- */

static int on_begin_headers(nghttp2_session *ses, const nghttp2_frame *f, void *ud) {
  struct conn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  struct call *k = sg_xcalloc(1, sizeof *k);
  k->g = c->g;
  k->c = c;
  k->sid = f->hd.stream_id;
  sg_buf_init(&k->in);
  sg_buf_init(&k->out);
  k->next = c->calls;
  if (c->calls) c->calls->prev = k;
  c->calls = k;
  nghttp2_session_set_stream_user_data(ses, k->sid, k);
  return 0;
}

static void copy_value(char *dst, size_t n, const uint8_t *v, size_t len) {
  if (len >= n) len = n - 1;
  memcpy(dst, v, len);
  dst[len] = 0;
}

static int on_header(nghttp2_session *ses, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  struct call *k = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
  if (!k) return 0;
  if (namelen == 5 && !memcmp(name, ":path", 5)) copy_value(k->path, sizeof k->path, value, valuelen);
  else if (namelen == 12 && !memcmp(name, "content-type", 12)) copy_value(k->ctype, sizeof k->ctype, value, valuelen);
  else if (namelen == 13 && !memcmp(name, "authorization", 13)) copy_value(k->authz, sizeof k->authz, value, valuelen);
  else if (namelen == 11 && !memcmp(name, "traceparent", 11)) copy_value(k->traceparent, sizeof k->traceparent, value, valuelen);
  else if (namelen == 10 && !memcmp(name, "tracestate", 10)) copy_value(k->tracestate, sizeof k->tracestate, value, valuelen);
  return 0;
}

static int on_data(nghttp2_session *ses, uint8_t flags, int32_t sid, const uint8_t *data, size_t len, void *ud) {
  struct call *k = nghttp2_session_get_stream_user_data(ses, sid);
  if (!k || k->too_big) return 0;
  if (k->in.len + len > k->g->max_message + 5) {
    k->too_big = 1;
    sg_buf_free(&k->in);
    sg_buf_init(&k->in);
    return 0;
  }
  sg_buf_add(&k->in, (const char *)data, len);
  return 0;
}

static int on_frame(nghttp2_session *ses, const nghttp2_frame *f, void *ud) {
  if ((f->hd.type != NGHTTP2_DATA && f->hd.type != NGHTTP2_HEADERS) || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  struct call *k = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
  if (k) ((struct conn *)ud)->requested = 1;
  if (k && !k->answered && !k->finished && !k->busy) dispatch(k);
  return 0;
}

static int on_stream_close(nghttp2_session *ses, int32_t sid, uint32_t err, void *ud) {
  struct call *k = nghttp2_session_get_stream_user_data(ses, sid);
  if (k) call_detach(k);
  return 0;
}

static void conn_free(struct conn *c) {
  struct sg_grpc *g = c->g;
  while (c->calls) call_detach(c->calls);
  ev_io_stop(g->loop, &c->rio);
  ev_io_stop(g->loop, &c->wio);
  nghttp2_session_del(c->ses);
  if (c->ssl) SSL_free(c->ssl);
  close(c->fd);
  sg_buf_free(&c->wbuf);
  if (c->prev) c->prev->next = c->next;
  else g->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  g->nconns--;
  free(c);
}

/* ends the connection politely: a GOAWAY (no stream after last_sid is served) saying why, then a
 * shutdown once it is written (conn_send), then the close when the client closes or after DRAIN_S */
static void conn_goaway(struct conn *c, uint32_t code, const char *why) {
  if (c->closing) return;
  c->closing = 1;
  nghttp2_submit_goaway(c->ses, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ses), code,
                        (const uint8_t *)why, strlen(why));
  if (!c->ssl || c->tls_ready) conn_kick(c);
}

static const char *peer_name(const struct conn *c, char buf[INET_ADDRSTRLEN]) {
  return inet_ntop(AF_INET, &c->peer, buf, INET_ADDRSTRLEN) ? buf : "?";
}

/* TLS errors for the log: OpenSSL's queue, or the errno of a failed syscall */
static const char *tls_error(int err, char *buf, size_t n) {
  unsigned long e = ERR_get_error();
  if (e) ERR_error_string_n(e, buf, n);
  else if (err == SSL_ERROR_SYSCALL) snprintf(buf, n, "%s", errno ? strerror(errno) : "the client closed");
  else snprintf(buf, n, "TLS error %d", err);
  return buf;
}

/* TLS: advances the handshake; 1 when done, 0 waiting for the socket, -1 failed (the caller closes) */
static int conn_handshake(struct conn *c) {
  ERR_clear_error();
  int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(c->ssl, &p, &n);
    if (n != 2 || memcmp(p, "h2", 2)) { /* a client that offered no ALPN at all (one without h2 got an alert) */
      char ip[INET_ADDRSTRLEN];
      sg_debug("grpc: closing a TLS connection from %s: it did not negotiate HTTP/2 (ALPN h2)", peer_name(c, ip));
      return -1;
    }
    c->tls_ready = 1;
    return 1;
  }
  int err = SSL_get_error(c->ssl, r);
  if (err == SSL_ERROR_WANT_READ) { ev_io_stop(c->g->loop, &c->wio); return 0; }
  if (err == SSL_ERROR_WANT_WRITE) { ev_io_start(c->g->loop, &c->wio); return 0; }
  char ip[INET_ADDRSTRLEN], msg[256];
  sg_debug("grpc: TLS handshake with %s failed: %s", peer_name(c, ip), tls_error(err, msg, sizeof msg));
  return -1;
}

/* n bytes written (> 0), 0 when the socket (or the TLS session) must wait, -1 when the connection is done */
static ssize_t conn_write(struct conn *c, const char *d, size_t len) {
  if (!c->ssl) {
    for (;;) {
      ssize_t n = write(c->fd, d, len);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) { ev_io_start(c->g->loop, &c->wio); return 0; }
      return -1;
    }
  }
  ERR_clear_error();
  int n = SSL_write(c->ssl, d, len > INT_MAX ? INT_MAX : (int)len);
  if (n > 0) return n;
  switch (SSL_get_error(c->ssl, n)) {
  case SSL_ERROR_WANT_WRITE: ev_io_start(c->g->loop, &c->wio); return 0;
  case SSL_ERROR_WANT_READ: ev_io_stop(c->g->loop, &c->wio); return 0; /* on_read sends again */
  default: return -1;
  }
}

/* n bytes read (> 0), 0 when nothing more is there now, -1 at the end (EOF, error) */
static ssize_t conn_read(struct conn *c, uint8_t *buf, size_t len) {
  if (!c->ssl || c->drained) { /* drained: the TLS session is over, what comes is only discarded */
    for (;;) {
      ssize_t n = read(c->fd, buf, len);
      if (n > 0) return n;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
      return -1;
    }
  }
  ERR_clear_error();
  int n = SSL_read(c->ssl, buf, (int)len);
  if (n > 0) return n;
  switch (SSL_get_error(c->ssl, n)) {
  case SSL_ERROR_WANT_READ: return 0;
  case SSL_ERROR_WANT_WRITE: ev_io_start(c->g->loop, &c->wio); return 0;
  default: return -1; /* SSL_ERROR_ZERO_RETURN (close_notify), a reset, a bad record */
  }
}

/* sends what nghttp2 has (and what the socket did not take before); -1 when the connection is done */
static int conn_send(struct conn *c) {
  if (c->drained) { ev_io_stop(c->g->loop, &c->wio); return 0; }
  for (;;) {
    while (c->woff < c->wbuf.len) {
      ssize_t n = conn_write(c, c->wbuf.data + c->woff, c->wbuf.len - c->woff);
      if (n < 0) return -1;
      if (n == 0) return 0;
      c->woff += (size_t)n;
    }
    c->wbuf.len = c->woff = 0;
    const uint8_t *d;
    ssize_t n = nghttp2_session_mem_send(c->ses, &d);
    if (n < 0) return -1;
    if (n == 0) break;
    sg_buf_add(&c->wbuf, (const char *)d, (size_t)n);
  }
  ev_io_stop(c->g->loop, &c->wio);
  if (c->closing) { /* our GOAWAY is out: stop sending and let the client close first (it reads it all) */
    if (c->ssl) SSL_shutdown(c->ssl); /* close_notify; its answer is not waited for */
    shutdown(c->fd, SHUT_WR);
    c->drained = 1;
    c->idle_since = ev_now(c->g->loop);
    return 0;
  }
  return nghttp2_session_want_read(c->ses) || nghttp2_session_want_write(c->ses) ? 0 : -1;
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
  struct conn *c = w->data;
  if (c->ssl && !c->tls_ready) {
    int h = conn_handshake(c);
    if (h < 0) { conn_free(c); return; }
    if (h == 0) return;
  }
  uint8_t buf[16384];
  for (;;) {
    ssize_t n = conn_read(c, buf, sizeof buf);
    if (n < 0) { conn_free(c); return; }
    if (n == 0) break;
    if (c->drained) continue;
    if (nghttp2_session_mem_recv(c->ses, buf, (size_t)n) < 0) { conn_free(c); return; }
    if (!c->ssl && (size_t)n < sizeof buf) break; /* (TLS: read until the session says WANT_READ) */
  }
  if (conn_send(c) < 0) conn_free(c);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
  struct conn *c = w->data;
  if (c->ssl && !c->tls_ready) {
    int h = conn_handshake(c);
    if (h < 0) { conn_free(c); return; }
    if (h == 0) return;
  }
  if (conn_send(c) < 0) conn_free(c);
}

/* the deadlines: a first request within request_timeout, an open call within idle_timeout, the
 * client's close within DRAIN_S of our shutdown */
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_grpc *g = w->data;
  ev_tstamp now = ev_now(loop);
  struct conn *next;
  for (struct conn *c = g->conns; c; c = next) {
    next = c->next;
    char ip[INET_ADDRSTRLEN];
    if (c->drained) {
      if (now - c->idle_since >= DRAIN_S) conn_free(c);
    } else if (!c->requested && !c->refused && now - c->since >= g->request_timeout) {
      sg_debug("grpc: closing a connection from %s: no complete request %.1fs after it opened (--http-request-timeout)",
               peer_name(c, ip), now - c->since);
      conn_free(c);
    } else if (!c->calls && !c->closing && now - c->idle_since >= g->idle_timeout) {
      char why[120];
      snprintf(why, sizeof why, "idle for %.0fs with no call (--grpc-idle-timeout)", now - c->idle_since);
      sg_debug("grpc: closing a connection from %s: %s", peer_name(c, ip), why);
      conn_goaway(c, NGHTTP2_NO_ERROR, why);
    } else if (c->refused && now - c->since >= g->request_timeout + DRAIN_S) {
      conn_free(c); /* (its TLS handshake never finished) */
    }
  }
}

/* ALPN: h2 or nothing (gRPC is HTTP/2 only) */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  static const unsigned char h2[] = "\x02h2";
  if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof h2 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *tls_context(const char *cert, const char *key, struct sg_error *e) {
  ERR_clear_error();
  SSL_CTX *t = SSL_CTX_new(TLS_server_method());
  if (!t) { sg_errorf(e, SG_E_INTERNAL, "cannot create a TLS context"); return NULL; }
  SSL_CTX_set_min_proto_version(t, TLS1_2_VERSION); /* HTTP/2 needs TLS 1.2 or later */
  SSL_CTX_set_options(t, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  /* conn_send retries a write from wbuf, which may have moved (grown) in between */
  SSL_CTX_set_mode(t, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  const char *what = "certificate";
  if (SSL_CTX_use_certificate_chain_file(t, cert) == 1 && (what = "key", SSL_CTX_use_PrivateKey_file(t, key, SSL_FILETYPE_PEM) == 1) &&
      (what = "key for the certificate", SSL_CTX_check_private_key(t) == 1)) {
    SSL_CTX_set_alpn_select_cb(t, alpn_select, NULL);
    return t;
  }
  char msg[256];
  ERR_error_string_n(ERR_get_error(), msg, sizeof msg);
  sg_errorf(e, SG_E_INVALID, "TLS %s (%s, %s): %s", what, cert, key, msg);
  SSL_CTX_free(t);
  return NULL;
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_grpc *g = w->data;
  for (;;) {
    struct sockaddr_in peer = {0};
    socklen_t pl = sizeof peer;
    int fd = accept4(g->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    /* over the caps: a GOAWAY that says which, for up to SG_HTTP_OVERFLOW connections; beyond, closed at once */
    unsigned all = 0, same = 0;
    for (struct conn *o = g->conns; o; o = o->next) {
      if (o->refused) continue;
      all++;
      if (o->peer.s_addr == peer.sin_addr.s_addr) same++;
    }
    char why[200] = "";
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
    if (all >= g->max_connections)
      snprintf(why, sizeof why, "server busy: %u connections open (--http-max-connections); retry later", all);
    else if (same >= g->max_per_ip)
      snprintf(why, sizeof why, "too many connections from %s (--http-max-per-ip %u); retry later", ip, g->max_per_ip);
    if (why[0] && g->nconns >= (size_t)g->max_connections + SG_HTTP_OVERFLOW) {
      sg_warn("grpc: closing a connection from %s at once: %s", ip, why);
      close(fd);
      continue;
    }
    if (why[0]) sg_warn("grpc: refusing a connection from %s with GOAWAY: %s", ip, why);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = sg_xcalloc(1, sizeof *c);
    c->g = g;
    c->fd = fd;
    c->peer = peer.sin_addr;
    c->since = c->idle_since = ev_now(loop);
    sg_buf_init(&c->wbuf);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_server_new(&c->ses, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry s[] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS } };
    nghttp2_submit_settings(c->ses, NGHTTP2_FLAG_NONE, s, 1);
    if (g->tls) {
      c->ssl = SSL_new(g->tls);
      SSL_set_fd(c->ssl, fd);
      SSL_set_accept_state(c->ssl);
    }
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    ev_io_start(loop, &c->rio);
    if (!c->ssl) ev_io_start(loop, &c->wio); /* our SETTINGS (with TLS: after the handshake) */
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    g->nconns++;
    if (why[0]) {
      c->refused = 1;
      conn_goaway(c, NGHTTP2_ENHANCE_YOUR_CALM, why);
    }
  }
}

struct sg_grpc *sg_grpc_start(struct ev_loop *loop, const struct sg_grpc_config *cfg, struct sg_engine *en,
                              struct sg_events *events, struct sg_error *e) {
  struct sockaddr_in sa;
  if (sg_http_parse_listen(cfg->listen, &sa, e) < 0) return NULL;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
    sg_errorf(e, SG_E_INVALID, "cannot listen on %s: %s", cfg->listen, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  SSL_CTX *tls = NULL;
  if (cfg->tls_cert && !(tls = tls_context(cfg->tls_cert, cfg->tls_key, e))) {
    close(fd);
    return NULL;
  }
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  struct sg_grpc *g = sg_xcalloc(1, sizeof *g);
  g->tls = tls;
  g->max_connections = cfg->max_connections ? cfg->max_connections : 1000;
  g->max_per_ip = cfg->max_per_ip ? cfg->max_per_ip : 64;
  g->request_timeout = cfg->request_timeout > 0 ? cfg->request_timeout : 10.0;
  g->idle_timeout = cfg->idle_timeout > 0 ? cfg->idle_timeout : 60.0;
  double every = (g->request_timeout < g->idle_timeout ? g->request_timeout : g->idle_timeout) / 10;
  if (every < 0.05) every = 0.05;
  if (every > 1.0) every = 1.0;
  ev_timer_init(&g->sweep, on_sweep, every, every);
  g->sweep.data = g;
  ev_timer_start(loop, &g->sweep);
  g->loop = loop;
  g->en = en;
  g->events = events;
  g->auth = cfg->auth;
  g->max_message = cfg->max_message;
  g->fd = fd;
  g->port = ntohs(sa.sin_port);
  ev_io_init(&g->accept_w, on_accept, fd, EV_READ);
  g->accept_w.data = g;
  ev_io_start(loop, &g->accept_w);
  return g;
}

int sg_grpc_port(const struct sg_grpc *g) { return g->port; }

void sg_grpc_set_auth(struct sg_grpc *g, const struct sg_auth *auth) { g->auth = auth; }

void sg_grpc_stop(struct sg_grpc *g) {
  if (!g) return;
  while (g->conns) conn_free(g->conns);
  ev_io_stop(g->loop, &g->accept_w);
  ev_timer_stop(g->loop, &g->sweep);
  close(g->fd);
  if (g->tls) SSL_CTX_free(g->tls);
  free(g);
}
