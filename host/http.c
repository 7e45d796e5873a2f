/* http: libmicrohttpd driven by the libev loop.
 *
 * MHD runs in epoll mode without threads of its own: its epoll fd is one ev_io, an ev_timer
 * follows MHD_get_timeout, and MHD_run is called from both. Requests whose handler does not answer
 * at once are suspended (MHD_ALLOW_SUSPEND_RESUME); sg_http_reply resumes them and feeds the ev_io
 * so that MHD_run picks them up in this loop iteration instead of waiting for network activity. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Idle keep-alive connections are closed after this long (suspended ones never time out). MHD resets
 * it on every read, so a client trickling a byte at a time is held by the request deadline instead. */
#define SG_HTTP_IDLE_TIMEOUT_S 60u

/* What sg_http_start copies; main sets it from the --http-* flags. */
static struct sg_http_limits sg_http_limits_cfg = SG_HTTP_LIMITS_DEFAULT;

void sg_http_set_limits(const struct sg_http_limits *l) { sg_http_limits_cfg = *l; }

/* Where a request is in its life; decides what the access handler does when MHD calls it again. */
enum sg_http_phase {
  SG_HTTP_READING,    /* body still arriving */
  SG_HTTP_TOO_BIG,    /* body over max_body: drained and discarded, answered 413 at the end */
  SG_HTTP_IN_HANDLER, /* handler running: a reply now is queued when it returns */
  SG_HTTP_PENDING,    /* handler kept it: the connection is suspended until sg_http_reply */
  SG_HTTP_RESUMED,    /* reply stored and connection resumed: queued at MHD's next call */
  SG_HTTP_ANSWERED,   /* response queued: MHD sends it, then the completed callback frees us */
};

/* One TCP connection, from MHD's notify-started to notify-closed: the request deadline needs the
 * accept time and the socket, which MHD does not expose for a connection still reading headers. */
struct sg_http_sock {
  struct sg_http *srv;              /* the server it belongs to */
  int fd;                           /* the socket, shut down when the deadline passes */
  struct in_addr peer;              /* the client's address (IPv4 only: we listen on IPv4), per-IP cap */
  ev_tstamp since;                  /* accept, or the end of the previous request on this connection */
  int received;                     /* 1 once the current request is complete (handler reached) */
  int shut;                         /* 1 once shut down: MHD closes it at its next run */
  struct sg_http_sock *prev, *next; /* srv->socks, walked by the sweep timer */
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
  struct sg_http_conn *prev, *next; /* srv->conns: pending requests must be resumed before stop */
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
      MHD_create_response_from_buffer(len, (void *)json, MHD_RESPMEM_MUST_COPY);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, c->ctype ? c->ctype : "application/json");
  if (c->hdr_name) MHD_add_response_header(resp, c->hdr_name, c->hdr_value);
  enum MHD_Result r = MHD_queue_response(c->mhd, (unsigned)status, resp);
  MHD_destroy_response(resp);
  c->phase = SG_HTTP_ANSWERED;
  return r;
}

static enum MHD_Result sg_http_queue_stored(struct sg_http_conn *c) {
  enum MHD_Result r = sg_http_queue(c, c->status, c->reply);
  free(c->reply);
  c->reply = NULL;
  return r;
}

static enum MHD_Result sg_http_too_big(struct sg_http_conn *c) {
  char msg[128];
  snprintf(msg, sizeof msg, "request body too large: limit is %zu bytes", c->srv->max_body);
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"error\":");
  sg_buf_add_json_str(&b, msg);
  sg_buf_adds(&b, "}");
  enum MHD_Result r = sg_http_queue(c, 413, b.data);
  sg_buf_free(&b);
  return r;
}

/* A declared length over the limit with "Expect: 100-continue" is refused before the body is
 * sent (that is what the header is for). Without it the client sends the body anyway, and
 * answering before reading it would close a socket with unread data, which resets the connection
 * and can lose the 413; so the body is drained and discarded instead. */
static int sg_http_refuse_early(struct sg_http_conn *c) {
  const char *cl = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  const char *expect = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
  if (!cl || !expect || strcasecmp(expect, "100-continue") != 0) return 0;
  char *end;
  errno = 0;
  unsigned long long n = strtoull(cl, &end, 10);
  return end != cl && errno == 0 && n > c->srv->max_body;
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
    c = *con_cls = sg_http_conn_new(h, mc, url, method);
    if (sg_http_refuse_early(c)) {
      sg_http_sock_received(mc); /* answered now: the 413 must not be cut by the deadline */
      return sg_http_too_big(c);
    }
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
    return sg_http_too_big(c);
  case SG_HTTP_READING:
    sg_http_sock_received(mc);
    c->req.body = c->body.data ? c->body.data : "";
    c->req.body_len = c->body.len;
    c->phase = SG_HTTP_IN_HANDLER;
    h->handler(h->ud, &c->req);
    if (c->reply) return sg_http_queue_stored(c);
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
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct sg_http_sock *s = ci ? ci->socket_context : NULL;
  if (s) s->received = 1;
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
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    *socket_context = s;
    return;
  }
  struct sg_http_sock *s = *socket_context;
  if (!s) return;
  if (s->prev) s->prev->next = s->next;
  else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  free(s);
  *socket_context = NULL;
}

/* Both caps are enforced here, after accept, so a refused client is closed at once and logged. MHD
 * has both too, checked before calling this, set one higher as a backstop: its per-IP refusal says
 * nothing, and reaching its global limit takes the listening socket out of epoll, after which
 * 0.9.75 in this mode left the next connections it accepted unserved and new clients waiting in the
 * backlog for good (reproduced by hand: 5 cap, 10 clients that hang up, then curl). A walk over the
 * open connections: at most max_connections. */
static enum MHD_Result sg_http_accept_cb(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
  struct sg_http *h = cls;
  unsigned all = 0, n = 0;
  int v4 = addr && addr->sa_family == AF_INET && addrlen >= (socklen_t)sizeof(struct sockaddr_in);
  struct in_addr a = {0};
  if (v4) a = ((const struct sockaddr_in *)addr)->sin_addr;
  for (struct sg_http_sock *s = h->socks; s; s = s->next) {
    if (s->shut) continue; /* about to go */
    all++;
    if (v4 && s->peer.s_addr == a.s_addr) n++;
  }
  if (all >= h->limits.max_connections) {
    sg_debug("http: refusing a connection: %u open (connection limit, --http-max-connections)", all);
    return MHD_NO;
  }
  if (!v4 || n < h->limits.max_per_ip) return MHD_YES;
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a, ip, sizeof ip);
  sg_debug("http: refusing a connection from %s: it has %u open (per-IP limit, --http-max-per-ip)", ip, n);
  return MHD_NO;
}

/* MHD's own timeout is an idle one, reset by every byte: a client sending one header line a second
 * would hold its slot forever. Shutting the socket down makes MHD see EOF and clean up as usual. */
static void sg_http_sweep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_http *h = w->data;
  ev_tstamp now = ev_now(loop);
  int any = 0;
  for (struct sg_http_sock *s = h->socks; s; s = s->next) {
    if (s->received || s->shut || s->fd < 0 || now - s->since < h->limits.request_timeout) continue;
    sg_debug("http: closing connection (fd %d): request not complete %.1fs after it began (--http-request-timeout)",
             s->fd, now - s->since);
    shutdown(s->fd, SHUT_RDWR);
    s->shut = 1;
    any = 1;
  }
  if (any) sg_http_run(h);
}

static void sg_http_completed_cb(void *cls, struct MHD_Connection *mc, void **con_cls,
                                 enum MHD_RequestTerminationCode toe) {
  struct sg_http_conn *c = *con_cls;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct sg_http_sock *s = ci ? ci->socket_context : NULL;
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

static int sg_http_parse_listen(const char *listen, struct sockaddr_in *sa, struct sg_error *e) {
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
      MHD_OPTION_NOTIFY_CONNECTION, sg_http_notify_cb, h,
      MHD_OPTION_CONNECTION_LIMIT, h->limits.max_connections + 1,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, h->limits.max_per_ip + 1,
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
  /* a tenth of the deadline keeps the overshoot small; at most 1 s, at least 50 ms */
  ev_tstamp every = h->limits.request_timeout / 10;
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
  ev_io_stop(h->loop, &h->io);
  ev_timer_stop(h->loop, &h->timer);
  ev_timer_stop(h->loop, &h->sweep);
  /* MHD_stop_daemon panics on suspended connections: resume them (with no reply) so it can
   * close them; the completed callback then frees their state. */
  for (struct sg_http_conn *c = h->conns; c; c = c->next)
    if (c->phase == SG_HTTP_PENDING) {
      c->phase = SG_HTTP_ANSWERED;
      MHD_resume_connection(c->mhd);
    }
  MHD_stop_daemon(h->mhd);
  while (h->conns) sg_http_conn_free(h->conns); /* defensive: MHD should have freed them all */
  while (h->socks) { /* defensive too: notify-closed runs for each connection at stop */
    struct sg_http_sock *s = h->socks;
    h->socks = s->next;
    free(s);
  }
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

static char *sg_http_error_json(const char *msg) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"error\":");
  sg_buf_add_json_str(&b, msg ? msg : "");
  sg_buf_adds(&b, "}");
  return sg_buf_steal(&b);
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
