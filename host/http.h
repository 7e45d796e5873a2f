/* http: a small JSON HTTP server inside the libev loop, on libmicrohttpd (external select mode:
 * MHD's listening and connection sockets are watched by ev_io watchers, MHD_run is called when they
 * are ready, and an ev_timer follows MHD_get_timeout).
 *
 * One handler receives every complete request (body buffered up to max_body; larger requests get
 * 413 {"error": "..."} without reaching the handler). Requests never reach it either when they
 * come over a connection cap (503 with Retry-After: 1), have conflicting framing headers (two
 * different Content-Length values, or Content-Length with Transfer-Encoding: 400), or a body without
 * Content-Length (Transfer-Encoding, e.g. chunked: 413); those answers close the connection. The handler either answers at once through
 * sg_http_reply, or keeps the request and answers later (e.g. after the store commit): the connection
 * is suspended until sg_http_reply is called. Every request gets exactly one reply.
 *
 * Ownership: the request and its strings belong to the server and stay valid until sg_http_reply
 * is called for it; sg_http_reply copies the body. */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include <stddef.h>
#include <ev.h>
#include "util.h"

struct sg_http;

/* Limits against slow clients (slowloris), the same for every server started after they are set. */
struct sg_http_limits {
  unsigned max_connections; /* open connections in all (MHD_OPTION_CONNECTION_LIMIT) */
  unsigned max_per_ip;      /* open connections from one address (MHD_OPTION_PER_IP_CONNECTION_LIMIT) */
  double request_timeout;   /* seconds from accept (or the end of the previous request on a keep-alive
                             * connection) until the request must be fully received; trickling bytes
                             * does not extend it. Also caps how long a keep-alive connection may idle. */
};
#define SG_HTTP_LIMITS_DEFAULT {1000u, 64u, 10.0}
/* Over either cap, up to this many more connections (in all) are accepted only to be answered
 * 503 {"error": ...} with Retry-After: 1 and closed; each must send its request within
 * min(request_timeout, 2 s), and a newer one displaces the oldest that has not; beyond that a
 * connection is closed at once. */
#define SG_HTTP_OVERFLOW 32u
/* At most this many sockets answered early (400/413/503 before their input was read) are kept open
 * for up to 2 s after MHD is done with them, reading and discarding what the client still sends, so
 * that closing them does not reset the connection and lose the answer. */
#define SG_HTTP_LINGER_MAX 64u
/* descriptors a server may hold beyond limits.max_connections (for the open-file limit) */
#define SG_HTTP_EXTRA_FDS (SG_HTTP_OVERFLOW + SG_HTTP_LINGER_MAX + 2u)
/* set once before sg_http_start (main's flags); servers keep a copy */
void sg_http_set_limits(const struct sg_http_limits *l);

struct sg_http_req {
  const char *method;   /* "GET", "POST", ... */
  const char *path;     /* "/v1/sagas/abc" (no query string) */
  const char *body;     /* NUL-terminated, "" when none */
  size_t body_len;
  void *priv;           /* the server's connection state */
};

typedef void (*sg_http_handler)(void *ud, struct sg_http_req *req);

/* listen: "127.0.0.1:7070" (host:port; port 0 picks a free one, see sg_http_port) */
struct sg_http *sg_http_start(struct ev_loop *loop, const char *listen, size_t max_body,
                              sg_http_handler h, void *ud, struct sg_error *e);

/* HTTPS: the server's certificate (chain) and private key, PEM text; both copied at start. */
struct sg_http_tls {
  const char *cert_pem; /* the certificate, then any intermediates */
  const char *key_pem;  /* its private key, unencrypted */
};
/* the same, serving HTTPS when tls is not NULL (SG_E_INVALID when libmicrohttpd has no TLS) */
struct sg_http *sg_http_start_tls(struct ev_loop *loop, const char *listen, size_t max_body,
                                  const struct sg_http_tls *tls, sg_http_handler h, void *ud,
                                  struct sg_error *e);
/* "host:port" (IPv4 or localhost; port 0..65535) as an address to bind: 0, or -1 and e (SG_E_INVALID) */
struct sockaddr_in;
int sg_http_parse_listen(const char *listen, struct sockaddr_in *sa, struct sg_error *e);
/* 1 when listen's host is loopback only: 127.0.0.0/8, ::1 or localhost */
int sg_http_listen_is_loopback(const char *listen);
int sg_http_port(struct sg_http *h);
/* stops listening, closes connections (pending requests are dropped), frees */
void sg_http_stop(struct sg_http *h);

/* query parameter or header value (case-insensitive name), NULL when absent */
const char *sg_http_query(struct sg_http_req *r, const char *key);
const char *sg_http_header(struct sg_http_req *r, const char *name);

/* sends status with a JSON body (copied; NULL -> "{}"), content-type application/json */
void sg_http_reply(struct sg_http_req *r, int status, const char *json);
/* the same with another content type (a static string, e.g. "text/plain; version=0.0.4") */
void sg_http_reply_as(struct sg_http_req *r, int status, const char *content_type, const char *body);
/* the same with a body of static bytes (any, not copied: they must outlive the reply) and up to
 * SG_HTTP_MORE_HDRS more headers: hdrs is name, value, ..., NULL (static strings; the array itself is
 * copied), NULL = none. For the dashboard's embedded files (web.c). */
#define SG_HTTP_MORE_HDRS 8
void sg_http_reply_static(struct sg_http_req *r, int status, const char *content_type, const void *body, size_t len,
                          const char *const *hdrs);
/* convenience: {"error": msg} */
void sg_http_reply_error(struct sg_http_req *r, int status, const char *msg);
/* 405 {"error": ...} with an Allow header; allow is a static string such as "GET, HEAD" */
void sg_http_reply_not_allowed(struct sg_http_req *r, const char *allow);
/* {"error": msg} with one extra header (name and value static strings), e.g. WWW-Authenticate of a 401 */
void sg_http_reply_error_with(struct sg_http_req *r, int status, const char *hdr_name, const char *hdr_value,
                              const char *msg);

/* Streaming responses (Server-Sent Events): the handler (or a later callback, while the request is
 * kept) turns the request into a 200 whose body is written as it goes, with chunked encoding,
 * Cache-Control: no-cache and content_type (static; NULL = text/event-stream). At most cap bytes wait
 * unsent: a write that would go over is refused (-1) and the caller decides (drop the client). When
 * the client goes away, or the server stops, on_close is called once and the stream is then the
 * owner's to end with sg_http_stream_end (which frees it; writes fail meanwhile). sg_http_stream_end
 * on a live stream sends what is buffered, ends the response and frees the stream; on_close is not
 * called after it. */
struct sg_http_stream;
typedef void (*sg_http_stream_closed)(void *ud, struct sg_http_stream *st);
struct sg_http_stream *sg_http_stream_open(struct sg_http_req *r, const char *content_type, size_t cap,
                                           sg_http_stream_closed on_close, void *ud);
int sg_http_stream_write(struct sg_http_stream *st, const char *data, size_t n);
size_t sg_http_stream_pending(const struct sg_http_stream *st);
void sg_http_stream_end(struct sg_http_stream *st);
/* the same, but the unsent bytes are dropped and the connection is closed at once (a client that
 * does not read: the end of a response would wait behind what it has not read) */
void sg_http_stream_abort(struct sg_http_stream *st);

#endif
