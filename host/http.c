/* http: libmicrohttpd driven by the libev loop.
 *
 * MHD runs in epoll mode without threads of its own: its epoll fd is one ev_io, an ev_timer
 * follows MHD_get_timeout, and MHD_run is called from both. Requests whose handler does not answer
 * at once are suspended (MHD_ALLOW_SUSPEND_RESUME); sg_http_reply resumes them and feeds the ev_io
 * so that MHD_run picks them up in this loop iteration instead of waiting for network activity.
 *
 * Refusals never reach the handler: connections over a cap go to a small overflow pool and get 503
 * (sg_http_accept_cb, sg_http_busy); conflicting framing gets 400 and a body without Content-Length
 * 413 as soon as the headers are in (sg_http_framing_check). Answers given before the request was
 * read in full close the connection after a lingering close (sg_http_linger_start). The sweep timer
 * enforces the whole-request deadline (sg_http_sweep_cb). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Idle keep-alive connections are closed after this long (suspended ones never time out). MHD resets
 * it on every read, so a client trickling a byte at a time is held by the request deadline instead. */
#define SG_HTTP_IDLE_TIMEOUT_S 60u
/* libmicrohttpd's memory per connection (request line, headers, the read buffer a body streams
 * through, the response's headers). Its default of 32 KB is cleared at every request of a kept-alive
 * connection (3 % of the host's CPU under `bench --server`); 16 KB leaves room for ~12 KB of headers
 * (a long bearer token included): a request with more is refused with 431 */
#define SG_HTTP_CONN_MEMORY (16u * 1024)

/* A connection in the overflow pool (over a cap, waiting for its 503) must send its request within
 * this long (or --http-request-timeout if shorter): a slowloris there is cut quickly. */
#define SG_HTTP_OVER_TIMEOUT_S 2.0

/* A refused request's socket is kept open this long after the answer, reading and discarding what
 * the client still sends (a lingering close): closing a socket with unread input resets the
 * connection, and a reset can make the client lose the answer it has not read yet. */
#define SG_HTTP_LINGER_S 2.0

/* MHD's own caps are set this far above ours: a socket we shut down (deadline, eviction) still counts
 * for MHD until its next run closes it, and MHD accepts up to 11 connections per run before that.
 * Reaching MHD's global limit would take the listening socket out of epoll (see sg_http_accept_cb). */
#define SG_HTTP_MHD_HEADROOM 64u

/* The kernel send buffer of a streaming response (sg_http_stream_open). */
#define SG_HTTP_STREAM_SNDBUF (256 * 1024)

/* What sg_http_start copies; main sets it from the --http-* flags. */
static struct sg_http_limits sg_http_limits_cfg = SG_HTTP_LIMITS_DEFAULT;

void sg_http_set_limits(const struct sg_http_limits *l) { sg_http_limits_cfg = *l; }

/* Where a request is in its life; decides what the access handler does when MHD calls it again. */
enum sg_http_phase {
  SG_HTTP_READING,    /* body still arriving */
  SG_HTTP_TOO_BIG,    /* body over max_body: drained and discarded, answered 413 at the end */
  SG_HTTP_REFUSED,    /* over a connection cap: body drained and discarded, answered 503 at the end */
  SG_HTTP_IN_HANDLER, /* handler running: a reply now is queued when it returns */
  SG_HTTP_PENDING,    /* handler kept it: the connection is suspended until sg_http_reply */
  SG_HTTP_RESUMED,    /* reply stored and connection resumed: queued at MHD's next call */
  SG_HTTP_ANSWERED,   /* response queued: MHD sends it, then the completed callback frees us */
  SG_HTTP_STREAM,     /* handler opened a stream (sg_http_stream_open): queued at the next call */
};

/* Why a connection is in the overflow pool (accepted over a cap only to be answered 503). */
enum sg_http_over {
  SG_HTTP_WITHIN = 0,    /* within both caps: served */
  SG_HTTP_OVER_GLOBAL,   /* over --http-max-connections */
  SG_HTTP_OVER_PER_IP,   /* over --http-max-per-ip */
};

/* One TCP connection, from MHD's notify-started to notify-closed: the request deadline needs the
 * accept time and the socket, which MHD does not expose for a connection still reading headers. */
struct sg_http_sock {
  struct sg_http *srv;              /* the server it belongs to */
  int fd;                           /* the socket, shut down when the deadline passes */
  struct in_addr peer;              /* the client's address (IPv4 only: we listen on IPv4), per-IP cap */
  ev_tstamp since;                  /* accept, or the end of the previous request on this connection */
  uint64_t order;                   /* accept order (ev_now is one time for a whole loop iteration, in
                                     * which MHD accepts many: the pool's oldest is told by this) */
  int received;                     /* 1 once the current request is complete (handler reached) */
  int shut;                         /* 1 once shut down: MHD closes it at its next run */
  enum sg_http_over over;           /* in the overflow pool (answered 503), and which cap it is over */
  int linger;                       /* answered before its input was read: lingering close at the end */
  struct sg_http_sock *prev, *next; /* srv->socks, walked by the sweep timer */
};

/* A socket MHD has closed after an early answer, kept open (a dup) to read and discard what the client
 * still sends, until it closes its side or SG_HTTP_LINGER_S pass. */
struct sg_http_linger {
  struct sg_http *srv;
  ev_io io;
  ev_timer timer;
  struct sg_http_linger *prev, *next; /* srv->lingers */
};

static void sg_http_sock_received(struct MHD_Connection *mc);

/* One request: created at MHD's first call for it, freed by the request-completed callback. */
struct sg_http_conn {
  struct sg_http_req req;           /* what the handler sees; req.priv points back here */
  struct sg_http *srv;              /* the server it belongs to */
  struct MHD_Connection *mhd;       /* MHD's connection, for suspend/resume and lookups */
  struct sg_buf body;               /* the body accumulated so far */
  enum sg_http_phase phase;         /* see enum sg_http_phase */
  int status;                       /* reply status, valid once reply is set */
  char *reply;                      /* reply body (owned) waiting to be queued, NULL if none yet */
  const char *ctype;                /* its content type (a static string), NULL = application/json */
  const char *hdr_name;             /* one extra header (Allow of a 405, WWW-Authenticate of a 401): */
  const char *hdr_value;            /* both static strings, NULL = none */
  int close;                        /* 1: "Connection: close" (the connection ends after this reply) */
  const void *sbody;                /* sg_http_reply_static: the body, sent as it is (not copied), */
  size_t slen;                      /* its length; NULL = the reply string */
  const char *more[2 * SG_HTTP_MORE_HDRS + 1]; /* sg_http_reply_static: more headers, name, value, ..., NULL */
  struct sg_http_stream *stream;    /* the response is a stream (sg_http_stream_open), or NULL */
  struct sg_http_conn *prev, *next; /* srv->conns: pending requests must be resumed before stop */
};

/* A response written as it goes (Server-Sent Events): MHD pulls from buf through sg_http_stream_read;
 * with nothing to send the connection is suspended (no busy loop, no timeout) until the next write. */
struct sg_http_stream {
  struct sg_http_conn *conn;        /* NULL once the connection is gone (then only the owner holds it) */
  struct sg_buf buf;                /* bytes not yet taken by MHD, from off */
  size_t off;
  size_t cap;                       /* writes beyond this many unsent bytes are refused */
  int suspended;                    /* the reader suspended the connection: a write resumes it */
  int ended;                        /* sg_http_stream_end: send what is left, then end the response */
  int aborted;                      /* sg_http_stream_abort: close the connection, unsent bytes dropped */
  sg_http_stream_closed on_close;   /* the client went away (or the server stops) */
  void *ud;
};

struct sg_http {
  struct ev_loop *loop;        /* the loop MHD runs in */
  struct MHD_Daemon *mhd;      /* the daemon (epoll mode, no internal threads) */
  ev_io io;                    /* MHD's epoll fd: readable when any socket or the resume ITC is */
  ev_timer timer;              /* MHD_get_timeout: connection timeouts and already-buffered data */
  size_t max_body;             /* larger bodies get 413 and never reach the handler */
  sg_http_handler handler;     /* receives every complete request */
  void *ud;                    /* the handler's first argument */
  int port;                    /* bound port (the real one when 0 was asked for) */
  struct sg_http_conn *conns;  /* every live request, so stop can resume the suspended ones */
  struct sg_http_limits limits; /* copied from sg_http_limits_cfg at start */
  struct sg_http_sock *socks;  /* every open connection, for the request deadline */
  ev_timer sweep;              /* closes connections whose request is past limits.request_timeout */
  char *tls_cert, *tls_key;    /* PEM copies for MHD, which keeps pointing at them: freed at stop */
  enum sg_http_over accept_over; /* set by the accept policy for the notify-started call that follows */
  uint64_t accepted;             /* connections accepted so far: each one's place in accept order */
  struct sg_http_linger *lingers; /* sockets in their lingering close */
  unsigned nlingers;           /* their number, at most SG_HTTP_LINGER_MAX */
  int stopping;                /* in sg_http_stop: no lingering */
};

/* MHD must run again no later than it says; otherwise buffered data or timeouts would stall. */
static void sg_http_rearm(struct sg_http *h) {
  MHD_UNSIGNED_LONG_LONG ms = 0;
  ev_timer_stop(h->loop, &h->timer);
  if (MHD_get_timeout(h->mhd, &ms) == MHD_YES) {
    ev_timer_set(&h->timer, (ev_tstamp)ms / 1000.0, 0.);
    ev_timer_start(h->loop, &h->timer);
  }
}

static void sg_http_run(struct sg_http *h) {
  MHD_run(h->mhd);
  sg_http_rearm(h);
}

static void sg_http_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  sg_http_run(w->data);
}

static void sg_http_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  sg_http_run(w->data);
}

static void sg_http_log(void *cls, const char *fmt, va_list ap) {
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  sg_debug("http: %s", line);
}

static enum MHD_Result sg_http_queue(struct sg_http_conn *c, int status, const char *json) {
  size_t len = strlen(json);
  struct MHD_Response *resp =
      c->sbody ? MHD_create_response_from_buffer(c->slen, (void *)c->sbody, MHD_RESPMEM_PERSISTENT)
               : MHD_create_response_from_buffer(len, (void *)json, MHD_RESPMEM_MUST_COPY);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, c->ctype ? c->ctype : "application/json");
  if (c->hdr_name) MHD_add_response_header(resp, c->hdr_name, c->hdr_value);
  for (const char *const *m = c->more; *m; m += 2) MHD_add_response_header(resp, m[0], m[1]);
  if (c->close) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result r = MHD_queue_response(c->mhd, (unsigned)status, resp);
  MHD_destroy_response(resp);
  c->phase = SG_HTTP_ANSWERED;
  return r;
}

static char *sg_http_error_json(const char *msg) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"error\":");
  sg_buf_add_json_str(&b, msg ? msg : "");
  sg_buf_adds(&b, "}");
  return sg_buf_steal(&b);
}

static struct sg_http_sock *sg_http_sock_of(struct MHD_Connection *mc) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

/* An answer of ours instead of the handler's ({"error": msg}, optionally one extra header), after
 * which the connection closes ("Connection: close"): the request was refused, and when its input was
 * not read (an answer at MHD's first call, which makes MHD discard the rest) it could not be
 * followed by another one anyway. The socket gets a lingering close (sg_http_linger_start), and is
 * no longer subject to the request deadline or displacement from the overflow pool. */
static enum MHD_Result sg_http_refuse(struct sg_http_conn *c, int status, const char *hdr_name,
                                      const char *hdr_value, const char *msg) {
  struct sg_http_sock *s = sg_http_sock_of(c->mhd);
  if (s) {
    s->received = 1;
    s->linger = 1;
  }
  c->close = 1;
  c->ctype = NULL;
  c->hdr_name = hdr_name;
  c->hdr_value = hdr_value;
  char *json = sg_http_error_json(msg);
  enum MHD_Result r = sg_http_queue(c, status, json);
  free(json);
  return r;
}

static void sg_http_stream_resume(struct sg_http_stream *st) {
  if (!st->suspended || !st->conn) return;
  st->suspended = 0;
  MHD_resume_connection(st->conn->mhd);
  ev_feed_event(st->conn->srv->loop, &st->conn->srv->io, EV_READ);
}

/* MHD's content reader: what was written, else the end, else suspend until the next write */
static ssize_t sg_http_stream_read(void *cls, uint64_t pos, char *out, size_t max) {
  struct sg_http_stream *st = cls;
  (void)pos;
  if (st->aborted) return MHD_CONTENT_READER_END_WITH_ERROR;
  size_t have = st->buf.len - st->off;
  if (have) {
    size_t n = have < max ? have : max;
    memcpy(out, st->buf.data + st->off, n);
    st->off += n;
    if (st->off == st->buf.len) st->off = st->buf.len = 0;
    else if (st->off > 65536 && st->off * 2 > st->buf.len) { /* keep the buffer from creeping */
      memmove(st->buf.data, st->buf.data + st->off, st->buf.len - st->off);
      st->buf.len -= st->off;
      st->off = 0;
    }
    return (ssize_t)n;
  }
  if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
  /* the pattern microhttpd.h prescribes for "no data yet": suspend, return 0 */
  st->suspended = 1;
  MHD_suspend_connection(st->conn->mhd);
  return 0;
}

static void sg_http_stream_free_cb(void *cls) { (void)cls; /* the stream lives until the request completes */ }

static enum MHD_Result sg_http_queue_stream(struct sg_http_conn *c) {
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sg_http_stream_read, c->stream, sg_http_stream_free_cb);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, c->ctype ? c->ctype : "text/event-stream");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* a proxy in front must not hold events back */
  enum MHD_Result r = MHD_queue_response(c->mhd, 200, resp);
  MHD_destroy_response(resp);
  c->phase = SG_HTTP_ANSWERED;
  return r;
}

static enum MHD_Result sg_http_queue_stored(struct sg_http_conn *c) {
  if (c->stream) return sg_http_queue_stream(c);
  enum MHD_Result r = sg_http_queue(c, c->status, c->reply);
  free(c->reply);
  c->reply = NULL;
  return r;
}

/* early: answered at MHD's first call, before the body (which MHD then never reads) */
static enum MHD_Result sg_http_too_big(struct sg_http_conn *c, int early) {
  char msg[128];
  snprintf(msg, sizeof msg, "request body too large: limit is %zu bytes", c->srv->max_body);
  if (early) return sg_http_refuse(c, 413, NULL, NULL, msg);
  char *json = sg_http_error_json(msg);
  enum MHD_Result r = sg_http_queue(c, 413, json);
  free(json);
  return r;
}

/* 503 for a connection of the overflow pool: which cap it is over, and when to come back */
static enum MHD_Result sg_http_busy(struct sg_http_conn *c) {
  struct sg_http *h = c->srv;
  struct sg_http_sock *s = sg_http_sock_of(c->mhd);
  char msg[200];
  if (s && s->over == SG_HTTP_OVER_PER_IP) {
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &s->peer, ip, sizeof ip);
    snprintf(msg, sizeof msg, "too many connections from %s (--http-max-per-ip %u); retry later", ip,
             h->limits.max_per_ip);
  } else {
    snprintf(msg, sizeof msg, "server busy: %u connections open (--http-max-connections); retry later",
             h->limits.max_connections);
  }
  return sg_http_refuse(c, 503, MHD_HTTP_HEADER_RETRY_AFTER, "1", msg);
}

/* What the framing headers say (RFC 9112 section 6): MHD takes the first of several Content-Length
 * headers and ignores Content-Length when Transfer-Encoding is present; a request that frames its
 * body in two ways is refused instead (request smuggling through a proxy that reads it the other
 * way). A single malformed Content-Length never gets here: MHD answers it 400 itself. */
struct sg_http_framing {
  unsigned cl_count;      /* Content-Length headers */
  int cl_bad;             /* one is not a plain decimal number (a list "5, 7", a sign, overflow) */
  int cl_conflict;        /* two have different values */
  unsigned long long cl;  /* the first one's value */
  int te;                 /* a Transfer-Encoding header */
};

static enum MHD_Result sg_http_framing_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                          const char *value) {
  struct sg_http_framing *f = cls;
  (void)kind;
  if (!key) return MHD_YES;
  if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
    f->te = 1;
  } else if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
    unsigned long long n = 0;
    int ok = value && *value;
    for (const char *p = value; ok && *p; p++) {
      unsigned d = (unsigned)(*p - '0');
      if (*p < '0' || *p > '9' || n > (~0ULL - d) / 10) ok = 0;
      else n = n * 10 + d;
    }
    if (!ok) f->cl_bad = 1;
    else if (f->cl_count == 0) f->cl = n;
    else if (n != f->cl) f->cl_conflict = 1;
    f->cl_count++;
  }
  return MHD_YES;
}

/* at MHD's first call: 0 when the framing is acceptable, or the status to refuse it with and why */
static int sg_http_framing_check(struct sg_http_conn *c, struct sg_http_framing *f, char *msg, size_t cap) {
  memset(f, 0, sizeof *f);
  MHD_get_connection_values(c->mhd, MHD_HEADER_KIND, sg_http_framing_cb, f);
  if (f->te && f->cl_count) {
    snprintf(msg, cap, "conflicting framing: the request has both Content-Length and Transfer-Encoding "
                       "headers; send the body with Content-Length only");
    return 400;
  }
  if (f->cl_bad) {
    snprintf(msg, cap, "malformed Content-Length header: it must be a single decimal number");
    return 400;
  }
  if (f->cl_conflict) {
    snprintf(msg, cap, "conflicting framing: Content-Length headers with different values");
    return 400;
  }
  if (f->te) {
    snprintf(msg, cap, "request bodies must declare their size with Content-Length (at most %zu bytes); "
                       "Transfer-Encoding: chunked is not accepted", c->srv->max_body);
    return 413;
  }
  return 0;
}

static int sg_http_expects_continue(struct sg_http_conn *c) {
  const char *expect = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
  return expect && strcasecmp(expect, "100-continue") == 0;
}

/* A declared length over the limit with "Expect: 100-continue" is refused before the body is
 * sent (that is what the header is for). Without it the client sends the body anyway: it is drained
 * and discarded, and the 413 comes after it (an answer before it would end the connection, and
 * only the lingering close would keep the unread body from resetting it). */
static int sg_http_refuse_early(struct sg_http_conn *c, const struct sg_http_framing *f) {
  return f->cl_count && f->cl > c->srv->max_body && sg_http_expects_continue(c);
}

static struct sg_http_conn *sg_http_conn_new(struct sg_http *h, struct MHD_Connection *mc,
                                             const char *url, const char *method) {
  struct sg_http_conn *c = sg_xcalloc(1, sizeof *c);
  c->srv = h;
  c->mhd = mc;
  c->req.method = method; /* MHD keeps both strings until the request completes */
  c->req.path = url;
  c->req.body = "";
  c->req.priv = c;
  sg_buf_init(&c->body);
  c->phase = SG_HTTP_READING;
  c->next = h->conns;
  if (h->conns) h->conns->prev = c;
  h->conns = c;
  return c;
}

static void sg_http_conn_free(struct sg_http_conn *c) {
  struct sg_http *h = c->srv;
  if (c->prev) c->prev->next = c->next;
  else h->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  sg_buf_free(&c->body);
  free(c->reply);
  if (c->stream) { /* the client went away (or the server stops): the owner is told once */
    struct sg_http_stream *st = c->stream;
    st->conn = NULL;
    if (st->ended) {
      sg_buf_free(&st->buf);
      free(st);
    } else if (st->on_close) {
      st->on_close(st->ud, st);
    }
  }
  free(c);
}

/* MHD calls this once when the headers are in, once per body chunk, once more when the body is
 * complete, and again after every resume. */
static enum MHD_Result sg_http_access_cb(void *cls, struct MHD_Connection *mc, const char *url,
                                         const char *method, const char *version,
                                         const char *upload_data, size_t *upload_data_size,
                                         void **con_cls) {
  struct sg_http *h = cls;
  struct sg_http_conn *c = *con_cls;
  if (!c) {
    /* the headers are in: refusals that need no body are answered now (MHD then reads no more) */
    c = *con_cls = sg_http_conn_new(h, mc, url, method);
    struct sg_http_framing f;
    char msg[300];
    int status = sg_http_framing_check(c, &f, msg, sizeof msg);
    if (status) {
      sg_debug("http: refusing %.20s %.200s with %d: %s", method, url, status, msg);
      return sg_http_refuse(c, status, NULL, NULL, msg);
    }
    struct sg_http_sock *s = sg_http_sock_of(mc);
    if (s && s->over) {
      /* the handler is never reached; a body is drained first (see sg_http_refuse_early) unless
       * the client waits for 100-continue before sending it */
      c->phase = SG_HTTP_REFUSED;
      if (f.cl == 0 || sg_http_expects_continue(c)) return sg_http_busy(c);
      return MHD_YES;
    }
    if (sg_http_refuse_early(c, &f)) return sg_http_too_big(c, 1);
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (c->phase == SG_HTTP_READING && c->body.len + *upload_data_size > h->max_body) {
      c->phase = SG_HTTP_TOO_BIG;
      sg_buf_free(&c->body);
    }
    if (c->phase == SG_HTTP_READING) sg_buf_add(&c->body, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return MHD_YES;
  }
  switch (c->phase) {
  case SG_HTTP_TOO_BIG:
    sg_http_sock_received(mc);
    return sg_http_too_big(c, 0);
  case SG_HTTP_REFUSED:
    return sg_http_busy(c);
  case SG_HTTP_READING:
    sg_http_sock_received(mc);
    c->req.body = c->body.data ? c->body.data : "";
    c->req.body_len = c->body.len;
    c->phase = SG_HTTP_IN_HANDLER;
    h->handler(h->ud, &c->req);
    if (c->reply || c->stream) return sg_http_queue_stored(c);
    c->phase = SG_HTTP_PENDING;
    MHD_suspend_connection(mc);
    return MHD_YES;
  case SG_HTTP_RESUMED:
    return sg_http_queue_stored(c);
  default:
    /* PENDING/IN_HANDLER cannot be called again; ANSWERED is not called again by MHD */
    return MHD_YES;
  }
}

static void sg_http_sock_received(struct MHD_Connection *mc) {
  struct sg_http_sock *s = sg_http_sock_of(mc);
  if (s) s->received = 1;
}

static void sg_http_linger_end(struct sg_http_linger *l) {
  struct sg_http *h = l->srv;
  ev_io_stop(h->loop, &l->io);
  ev_timer_stop(h->loop, &l->timer);
  close(l->io.fd);
  if (l->prev) l->prev->next = l->next;
  else h->lingers = l->next;
  if (l->next) l->next->prev = l->prev;
  h->nlingers--;
  free(l);
}

static void sg_http_linger_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_http_linger *l = w->data;
  char buf[4096];
  for (int i = 0; i < 16; i++) { /* at most 64 KiB per wakeup: the loop has other work */
    ssize_t n = recv(w->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    /* the client closed its side (or the connection failed): nothing can be lost now */
    sg_http_linger_end(l);
    return;
  }
}

static void sg_http_linger_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  sg_http_linger_end(w->data);
}

/* Called as MHD is about to close the socket of an early answer (it has sent the answer and shut its
 * sending side down): a duplicate keeps the connection open to read what the client still sends. */
static void sg_http_linger_start(struct sg_http *h, int fd) {
  if (fd < 0 || h->nlingers >= SG_HTTP_LINGER_MAX) return;
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return;
  shutdown(dup, SHUT_WR); /* MHD did already for plain HTTP; over TLS it only closes the session */
  struct sg_http_linger *l = sg_xcalloc(1, sizeof *l);
  l->srv = h;
  ev_io_init(&l->io, sg_http_linger_io_cb, dup, EV_READ);
  l->io.data = l;
  ev_timer_init(&l->timer, sg_http_linger_timer_cb, SG_HTTP_LINGER_S, 0.);
  l->timer.data = l;
  ev_io_start(h->loop, &l->io);
  ev_timer_start(h->loop, &l->timer);
  l->next = h->lingers;
  if (h->lingers) h->lingers->prev = l;
  h->lingers = l;
  h->nlingers++;
}

static void sg_http_notify_cb(void *cls, struct MHD_Connection *mc, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
  struct sg_http *h = cls;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct sg_http_sock *s = sg_xcalloc(1, sizeof *s);
    s->srv = h;
    s->fd = ci ? (int)ci->connect_fd : -1;
    const union MHD_ConnectionInfo *ai = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ai && ai->client_addr && ai->client_addr->sa_family == AF_INET)
      s->peer = ((const struct sockaddr_in *)ai->client_addr)->sin_addr;
    s->since = ev_now(h->loop);
    s->order = ++h->accepted;
    s->over = h->accept_over; /* the accept policy ran for this very connection just before */
    h->accept_over = SG_HTTP_WITHIN;
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    *socket_context = s;
    return;
  }
  struct sg_http_sock *s = *socket_context;
  if (!s) return;
  /* MHD has sent the answer and closes the socket right after this call */
  if (s->linger && !s->shut && !h->stopping) sg_http_linger_start(h, s->fd);
  if (s->prev) s->prev->next = s->next;
  else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  free(s);
  *socket_context = NULL;
}

/* Both caps are enforced here, after accept, so that a refused client is told why (503) and the
 * refusal is logged. A connection over a cap joins the overflow pool (at most SG_HTTP_OVERFLOW in
 * all, not counted against the caps): it is answered 503 with Retry-After as soon as its request
 * headers are in, never reaches the handler, and must send them within SG_HTTP_OVER_TIMEOUT_S. When
 * the pool is full, a newcomer displaces the oldest member that has not been answered and whose
 * request headers are not waiting in its socket either (sg_http_sock_has_request): slow clients
 * churning through the pool cannot keep a well-behaved client, whose request arrives right after
 * its connect, from its 503 (MHD accepts up to 11 connections per run before it reads the ones
 * accepted earlier). Oldest is by accept order, not by time: a burst is accepted at one loop time,
 * and among equals the newest, whose request may still be on its way, was the one displaced. When
 * no member can be displaced the newcomer is closed at once.
 *
 * MHD has both caps too, checked before calling this, set above ours (SG_HTTP_MHD_HEADROOM) as a
 * backstop: its per-IP refusal says nothing, and reaching its global limit takes the listening socket
 * out of epoll, after which 0.9.75 in this mode left the next connections it accepted unserved and
 * new clients waiting in the backlog for good (reproduced by hand: 5 cap, 10 clients that hang up,
 * then curl). A walk over the open connections: at most max_connections + SG_HTTP_OVERFLOW. */
/* 1 when the end of a request's headers (or 2 KiB of them) is already in the socket, unread by MHD */
static int sg_http_sock_has_request(int fd) {
  char buf[2048];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  if (n <= 0) return 0;
  if ((size_t)n == sizeof buf) return 1;
  for (ssize_t i = 0; i + 3 < n; i++)
    if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') return 1;
  return 0;
}

static enum MHD_Result sg_http_accept_cb(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
  struct sg_http *h = cls;
  h->accept_over = SG_HTTP_WITHIN;
  unsigned all = 0, n = 0, over = 0, ncand = 0;
  struct sg_http_sock *cand[SG_HTTP_OVERFLOW]; /* pool members that could be displaced */
  int v4 = addr && addr->sa_family == AF_INET && addrlen >= (socklen_t)sizeof(struct sockaddr_in);
  struct in_addr a = {0};
  if (v4) a = ((const struct sockaddr_in *)addr)->sin_addr;
  for (struct sg_http_sock *s = h->socks; s; s = s->next) {
    if (s->shut) continue; /* about to go */
    if (s->over) {
      over++;
      if (!s->received && s->fd >= 0 && ncand < SG_HTTP_OVERFLOW) cand[ncand++] = s;
      continue;
    }
    all++;
    if (v4 && s->peer.s_addr == a.s_addr) n++;
  }
  enum sg_http_over why = SG_HTTP_WITHIN;
  if (all >= h->limits.max_connections) why = SG_HTTP_OVER_GLOBAL;
  else if (v4 && n >= h->limits.max_per_ip) why = SG_HTTP_OVER_PER_IP;
  if (why == SG_HTTP_WITHIN) return MHD_YES;
  char ip[INET_ADDRSTRLEN] = "?";
  if (v4) inet_ntop(AF_INET, &a, ip, sizeof ip);
  char cause[160];
  if (why == SG_HTTP_OVER_GLOBAL)
    snprintf(cause, sizeof cause, "%u open (connection limit, --http-max-connections)", all);
  else
    snprintf(cause, sizeof cause, "it has %u open (per-IP limit, --http-max-per-ip)", n);
  if (over >= SG_HTTP_OVERFLOW) {
    /* the oldest candidate without its request waiting (a peek each, oldest first, at most 32) */
    struct sg_http_sock *oldest = NULL;
    for (;;) {
      unsigned at = ncand;
      for (unsigned i = 0; i < ncand; i++)
        if (at == ncand || cand[i]->order < cand[at]->order) at = i;
      if (at == ncand) break;
      if (!sg_http_sock_has_request(cand[at]->fd)) {
        oldest = cand[at];
        break;
      }
      cand[at] = cand[--ncand];
    }
    if (!oldest) {
      sg_debug("http: refusing a connection from %s: %s, and the overflow pool (%u) is busy answering 503s",
               ip, cause, SG_HTTP_OVERFLOW);
      return MHD_NO;
    }
    char oip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &oldest->peer, oip, sizeof oip);
    sg_debug("http: closing an over-cap connection from %s (fd %d) without a complete request after %.2fs: "
             "the overflow pool is full and a newer one takes its place",
             oip, oldest->fd, ev_now(h->loop) - oldest->since);
    shutdown(oldest->fd, SHUT_RDWR);
    oldest->shut = 1;
  }
  sg_debug("http: answering a connection from %s with 503: %s", ip, cause);
  h->accept_over = why;
  return MHD_YES;
}

/* MHD's own timeout is an idle one, reset by every byte: a client sending one header line a second
 * would hold its slot forever. Shutting the socket down makes MHD see EOF and clean up as usual.
 * Walks the open connections every sweep (a tenth of the shorter deadline, 50 ms .. 1 s); one
 * recv(MSG_PEEK) per connection without a complete request. */
static void sg_http_sweep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_http *h = w->data;
  ev_tstamp now = ev_now(loop);
  int any = 0;
  double over_timeout = h->limits.request_timeout < SG_HTTP_OVER_TIMEOUT_S ? h->limits.request_timeout
                                                                           : SG_HTTP_OVER_TIMEOUT_S;
  for (struct sg_http_sock *s = h->socks; s; s = s->next) {
    if (s->received || s->shut || s->fd < 0) continue;
    /* MHD reads once per edge-triggered event: when the client's last bytes and its FIN arrive
     * together, it reads the bytes and never sees the end (the connection sits in CLOSE-WAIT until
     * the deadline). Nothing left unread and the end of the stream: the request cannot complete. */
    char b;
    if (recv(s->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
      sg_debug("http: closing %sconnection (fd %d): the client closed its side before completing a request",
               s->over ? "over-cap " : "", s->fd);
    } else if (now - s->since < (s->over ? over_timeout : h->limits.request_timeout)) {
      continue;
    } else {
      sg_debug("http: closing %sconnection (fd %d): request not complete %.1fs after it began (--http-request-timeout%s)",
               s->over ? "over-cap " : "", s->fd, now - s->since, s->over ? ", at most 2s over a cap" : "");
    }
    shutdown(s->fd, SHUT_RDWR);
    s->shut = 1;
    any = 1;
  }
  if (any) sg_http_run(h);
}

static void sg_http_completed_cb(void *cls, struct MHD_Connection *mc, void **con_cls,
                                 enum MHD_RequestTerminationCode toe) {
  struct sg_http_conn *c = *con_cls;
  struct sg_http_sock *s = sg_http_sock_of(mc);
  if (s) { /* a keep-alive connection gets a fresh deadline for its next request */
    s->since = ev_now(s->srv->loop);
    s->received = 0;
  }
  if (!c) return;
  if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
    sg_debug("http: %s %s ended without a complete reply (code %d)", c->req.method, c->req.path,
             (int)toe);
  sg_http_conn_free(c);
  *con_cls = NULL;
}

int sg_http_parse_listen(const char *listen, struct sockaddr_in *sa, struct sg_error *e) {
  const char *colon = listen ? strrchr(listen, ':') : NULL;
  if (!colon || colon == listen || !colon[1])
    return sg_errorf(e, SG_E_INVALID, "bad listen address '%s': expected host:port, e.g. 127.0.0.1:7070",
                     listen ? listen : "");
  char host[64];
  size_t hn = (size_t)(colon - listen);
  if (hn >= sizeof host)
    return sg_errorf(e, SG_E_INVALID, "bad listen address '%s': host part too long", listen);
  memcpy(host, listen, hn);
  host[hn] = 0;
  char *end;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  if (*end || errno || port < 0 || port > 65535)
    return sg_errorf(e, SG_E_INVALID, "bad listen address '%s': port must be 0..65535", listen);
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
    return sg_errorf(e, SG_E_INVALID,
                     "bad listen address '%s': host must be an IPv4 address or localhost", listen);
  return 0;
}

int sg_http_listen_is_loopback(const char *listen) {
  const char *colon = listen ? strrchr(listen, ':') : NULL;
  if (!colon) return 0;
  size_t hn = (size_t)(colon - listen);
  char host[64];
  if (hn == 0 || hn >= sizeof host) return 0;
  memcpy(host, listen, hn);
  host[hn] = 0;
  if (strcasecmp(host, "localhost") == 0 || strcmp(host, "::1") == 0 || strcmp(host, "[::1]") == 0) return 1;
  struct in_addr a;
  return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

static void sg_http_free_tls(struct sg_http *h) {
  /* the key is a secret: do not leave it in freed memory */
  if (h->tls_key) explicit_bzero(h->tls_key, strlen(h->tls_key));
  free(h->tls_key);
  free(h->tls_cert);
}

struct sg_http *sg_http_start(struct ev_loop *loop, const char *listen, size_t max_body,
                              sg_http_handler handler, void *ud, struct sg_error *e) {
  return sg_http_start_tls(loop, listen, max_body, NULL, handler, ud, e);
}

struct sg_http *sg_http_start_tls(struct ev_loop *loop, const char *listen, size_t max_body,
                                  const struct sg_http_tls *tls, sg_http_handler handler, void *ud,
                                  struct sg_error *e) {
  struct sockaddr_in sa;
  if (sg_http_parse_listen(listen, &sa, e) < 0) return NULL;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    sg_errorf(e, SG_E_INVALID, "cannot serve HTTPS on %s: this libmicrohttpd (%s) was built without TLS support",
              listen, MHD_get_version());
    return NULL;
  }
  struct sg_http *h = sg_xcalloc(1, sizeof *h);
  h->loop = loop;
  h->max_body = max_body;
  h->handler = handler;
  h->ud = ud;
  h->limits = sg_http_limits_cfg;
  unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  if (tls) {
    flags |= MHD_USE_TLS;
    h->tls_cert = sg_strdup(tls->cert_pem);
    h->tls_key = sg_strdup(tls->key_pem);
  }
  errno = 0;
  /* the TLS options come last: when tls is NULL the list ends before them */
  h->mhd = MHD_start_daemon(
      flags, ntohs(sa.sin_port), sg_http_accept_cb, h,
      sg_http_access_cb, h,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
      MHD_OPTION_NOTIFY_COMPLETED, sg_http_completed_cb, h,
      MHD_OPTION_CONNECTION_TIMEOUT, SG_HTTP_IDLE_TIMEOUT_S,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)SG_HTTP_CONN_MEMORY,
      MHD_OPTION_NOTIFY_CONNECTION, sg_http_notify_cb, h,
      MHD_OPTION_CONNECTION_LIMIT, h->limits.max_connections + SG_HTTP_OVERFLOW + SG_HTTP_MHD_HEADROOM,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, h->limits.max_per_ip + SG_HTTP_OVERFLOW + SG_HTTP_MHD_HEADROOM,
      MHD_OPTION_EXTERNAL_LOGGER, sg_http_log, h,
      tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, h->tls_cert,
      MHD_OPTION_HTTPS_MEM_KEY, h->tls_key,
      MHD_OPTION_END);
  if (!h->mhd) {
    int err = errno;
    sg_http_free_tls(h);
    free(h);
    if (tls)
      sg_errorf(e, SG_E_INTERNAL, "cannot serve HTTPS on %s: %s (is the certificate/key pair valid PEM and matching?)",
                listen, err ? strerror(err) : "libmicrohttpd could not start");
    else
      sg_errorf(e, SG_E_INTERNAL, "cannot listen on %s: %s", listen,
                err ? strerror(err) : "libmicrohttpd could not start");
    return NULL;
  }
  const union MHD_DaemonInfo *fdi = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
  const union MHD_DaemonInfo *pi = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
  if (!fdi || fdi->epoll_fd < 0) {
    MHD_stop_daemon(h->mhd);
    sg_http_free_tls(h);
    free(h);
    sg_errorf(e, SG_E_INTERNAL, "cannot listen on %s: libmicrohttpd has no epoll support", listen);
    return NULL;
  }
  h->port = pi ? pi->port : ntohs(sa.sin_port);
  ev_io_init(&h->io, sg_http_io_cb, fdi->epoll_fd, EV_READ);
  h->io.data = h;
  ev_io_start(loop, &h->io);
  ev_init(&h->timer, sg_http_timer_cb);
  h->timer.data = h;
  sg_http_rearm(h);
  /* a tenth of the (shorter, over-cap) deadline keeps the overshoot small; at most 1 s, at least 50 ms */
  ev_tstamp every = (h->limits.request_timeout < SG_HTTP_OVER_TIMEOUT_S ? h->limits.request_timeout
                                                                       : SG_HTTP_OVER_TIMEOUT_S) / 10;
  if (every > 1.0) every = 1.0;
  if (every < 0.05) every = 0.05;
  ev_timer_init(&h->sweep, sg_http_sweep_cb, every, every);
  h->sweep.data = h;
  if (h->limits.request_timeout > 0) ev_timer_start(loop, &h->sweep);
  return h;
}

int sg_http_port(struct sg_http *h) { return h->port; }

void sg_http_stop(struct sg_http *h) {
  if (!h) return;
  h->stopping = 1;
  ev_io_stop(h->loop, &h->io);
  ev_timer_stop(h->loop, &h->timer);
  ev_timer_stop(h->loop, &h->sweep);
  /* MHD_stop_daemon panics on suspended connections: resume them (with no reply) so it can
   * close them; the completed callback then frees their state. */
  for (struct sg_http_conn *c = h->conns; c; c = c->next) {
    if (c->phase == SG_HTTP_PENDING) {
      c->phase = SG_HTTP_ANSWERED;
      MHD_resume_connection(c->mhd);
    } else if (c->stream && c->stream->suspended) { /* closed by MHD_stop_daemon: on_close tells the owner */
      c->stream->suspended = 0;
      MHD_resume_connection(c->mhd);
    }
  }
  MHD_stop_daemon(h->mhd);
  while (h->conns) sg_http_conn_free(h->conns); /* defensive: MHD should have freed them all */
  while (h->socks) { /* defensive too: notify-closed runs for each connection at stop */
    struct sg_http_sock *s = h->socks;
    h->socks = s->next;
    free(s);
  }
  while (h->lingers) sg_http_linger_end(h->lingers);
  sg_http_free_tls(h);
  free(h);
}

const char *sg_http_query(struct sg_http_req *r, const char *key) {
  struct sg_http_conn *c = r->priv;
  return MHD_lookup_connection_value(c->mhd, MHD_GET_ARGUMENT_KIND, key);
}

const char *sg_http_header(struct sg_http_req *r, const char *name) {
  struct sg_http_conn *c = r->priv;
  return MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, name);
}

void sg_http_reply(struct sg_http_req *r, int status, const char *json) {
  sg_http_reply_as(r, status, NULL, json);
}

/* every reply goes through here: it stores the answer and resumes a suspended connection */
static void sg_http_store_reply(struct sg_http_req *r, int status, const char *content_type, const char *hdr_name,
                                const char *hdr_value, const char *json) {
  struct sg_http_conn *c = r->priv;
  if (c->reply || (c->phase != SG_HTTP_IN_HANDLER && c->phase != SG_HTTP_PENDING)) {
    sg_err("http: second reply to %s %s ignored (every request gets exactly one)", c->req.method,
           c->req.path);
    return;
  }
  c->status = status;
  c->ctype = content_type;
  c->hdr_name = hdr_name;
  c->hdr_value = hdr_value;
  c->reply = sg_strdup(json ? json : "{}");
  if (c->phase == SG_HTTP_PENDING) {
    c->phase = SG_HTTP_RESUMED;
    MHD_resume_connection(c->mhd);
    ev_feed_event(c->srv->loop, &c->srv->io, EV_READ);
  }
}

void sg_http_reply_as(struct sg_http_req *r, int status, const char *content_type, const char *json) {
  sg_http_store_reply(r, status, content_type, NULL, NULL, json);
}

void sg_http_reply_static(struct sg_http_req *r, int status, const char *content_type, const void *body, size_t len,
                          const char *const *hdrs) {
  struct sg_http_conn *c = r->priv;
  if (!c->reply && (c->phase == SG_HTTP_IN_HANDLER || c->phase == SG_HTTP_PENDING)) { /* else refused below */
    c->sbody = body ? body : "";
    c->slen = body ? len : 0;
    size_t n = 0;
    for (; hdrs && hdrs[n] && n < 2 * SG_HTTP_MORE_HDRS; n += 2) {
      c->more[n] = hdrs[n];
      c->more[n + 1] = hdrs[n + 1];
    }
    c->more[n] = NULL;
  }
  sg_http_store_reply(r, status, content_type, NULL, NULL, "");
}

void sg_http_reply_error(struct sg_http_req *r, int status, const char *msg) {
  char *json = sg_http_error_json(msg);
  sg_http_reply(r, status, json);
  free(json);
}

void sg_http_reply_not_allowed(struct sg_http_req *r, const char *allow) {
  /* the method is not repeated: it is whatever token the client sent, and an error text that
   * reflects it verbatim is one more place for a client to inject into logs and pages */
  char msg[400];
  snprintf(msg, sizeof msg, "method not allowed for %.200s (allowed: %s)", r->path, allow);
  char *json = sg_http_error_json(msg);
  sg_http_store_reply(r, 405, NULL, MHD_HTTP_HEADER_ALLOW, allow, json);
  free(json);
}

void sg_http_reply_error_with(struct sg_http_req *r, int status, const char *hdr_name, const char *hdr_value,
                              const char *msg) {
  char *json = sg_http_error_json(msg);
  sg_http_store_reply(r, status, NULL, hdr_name, hdr_value, json);
  free(json);
}

struct sg_http_stream *sg_http_stream_open(struct sg_http_req *r, const char *content_type, size_t cap,
                                           sg_http_stream_closed on_close, void *ud) {
  struct sg_http_conn *c = r->priv;
  if (c->reply || c->stream || (c->phase != SG_HTTP_IN_HANDLER && c->phase != SG_HTTP_PENDING)) {
    sg_err("http: a stream for %s %s after its reply (every request gets exactly one)", c->req.method, c->req.path);
    return NULL;
  }
  struct sg_http_stream *st = sg_xcalloc(1, sizeof *st);
  st->conn = c;
  sg_buf_init(&st->buf);
  st->cap = cap;
  st->on_close = on_close;
  st->ud = ud;
  c->stream = st;
  c->ctype = content_type;
  /* a small send buffer: what a client leaves unread waits in st->buf, which the caller bounds, rather
   * than in megabytes of kernel buffers that loopback autotuning would give a connection */
  struct sg_http_sock *sock = sg_http_sock_of(c->mhd);
  int sndbuf = SG_HTTP_STREAM_SNDBUF;
  if (sock && sock->fd >= 0) setsockopt(sock->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  if (c->phase == SG_HTTP_PENDING) {
    c->phase = SG_HTTP_RESUMED;
    MHD_resume_connection(c->mhd);
    ev_feed_event(c->srv->loop, &c->srv->io, EV_READ);
  }
  return st;
}

int sg_http_stream_write(struct sg_http_stream *st, const char *data, size_t n) {
  if (!st->conn || st->ended) return -1;
  if (st->buf.len - st->off + n > st->cap) return -1;
  sg_buf_add(&st->buf, data, n);
  sg_http_stream_resume(st);
  return 0;
}

size_t sg_http_stream_pending(const struct sg_http_stream *st) { return st->buf.len - st->off; }

void sg_http_stream_end(struct sg_http_stream *st) {
  if (!st) return;
  st->on_close = NULL;
  if (!st->conn) { /* the connection is already gone */
    sg_buf_free(&st->buf);
    free(st);
    return;
  }
  st->ended = 1;
  if (st->suspended) sg_http_stream_resume(st);
}

void sg_http_stream_abort(struct sg_http_stream *st) {
  if (!st) return;
  st->aborted = 1;
  st->buf.len = st->off = 0;
  sg_http_stream_end(st);
}
