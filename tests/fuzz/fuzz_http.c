/* libFuzzer target: the HTTP request path (request line, headers, query strings, framing, bodies,
 * JSON input). The real server of host/http.c runs once, in a libev loop in external epoll mode as
 * the host runs it, on 127.0.0.1 with a free port; its handler does what host/api.c does with a
 * request: looks up headers (Authorization, Idempotency-Key, X-Operator) and query parameters
 * (status, type, limit, after), parses the body with jansson's json_loadb, and answers in one of the
 * ways the API does (JSON, {"error"}, 405 with Allow, 401 with WWW-Authenticate, text), at once or
 * from a later loop iteration (the connection is suspended and resumed meanwhile).
 *
 * Per input: a TCP client connects, writes the bytes as they are, shuts its sending side down, and
 * the loop runs (non-blocking iterations) until the server closes the connection or nothing has
 * happened for a while; then the client closes. Pipelined requests, keep-alive, early refusals (400,
 * 413, the lingering close) and MHD's own error answers all happen on the real sockets.
 *
 * FUZZ_VERBOSE=1 prints what the server answered to each input (checking seeds). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "util.h"

#define MAX_BODY 2048 /* small, so that inputs reach the 413 paths */
#define MAX_PENDING 64

static struct ev_loop *loop;
static struct sg_http *server;
static struct sockaddr_in addr;
static struct sg_http_req *pending[MAX_PENDING]; /* requests answered from a later loop iteration */
static int npending;
static int verbose;

static unsigned hash(const char *s, size_t n) {
  unsigned h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static void answer(struct sg_http_req *r, unsigned how) {
  /* what the API does with the request before answering */
  const char *auth = sg_http_header(r, "Authorization");
  const char *key = sg_http_header(r, "Idempotency-Key");
  const char *op = sg_http_header(r, "X-Operator");
  const char *status = sg_http_query(r, "status");
  const char *type = sg_http_query(r, "type");
  const char *limit = sg_http_query(r, "limit");
  const char *after = sg_http_query(r, "after");
  if (limit) {
    char *end;
    (void)strtol(limit, &end, 10);
  }
  size_t seen = (auth ? strlen(auth) : 0) + (key ? strlen(key) : 0) + (op ? strlen(op) : 0) +
                (status ? strlen(status) : 0) + (type ? strlen(type) : 0) + (after ? strlen(after) : 0);
  json_error_t jerr;
  json_t *j = json_loadb(r->body_len ? r->body : "{}", r->body_len ? r->body_len : 2, JSON_DECODE_ANY, &jerr);
  char *dump = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  char msg[300];
  switch (how % 6) {
  case 0:
    sg_http_reply(r, r->body_len ? 201 : 200, dump ? dump : "{}");
    break;
  case 1:
    snprintf(msg, sizeof msg, "malformed JSON at line %d, column %d: %s (%zu)", jerr.line, jerr.column,
             j ? "ok" : jerr.text, seen);
    sg_http_reply_error(r, 400, msg);
    break;
  case 2:
    sg_http_reply_not_allowed(r, "GET, HEAD");
    break;
  case 3:
    sg_http_reply_error_with(r, 401, "WWW-Authenticate", "Bearer", "missing credentials");
    break;
  case 4:
    sg_http_reply_as(r, 200, "text/plain; version=0.0.4", "# counters\nx 1\n");
    break;
  default:
    snprintf(msg, sizeof msg, "no route for %.200s", r->path);
    sg_http_reply_error(r, 404, msg);
    break;
  }
  free(dump);
  json_decref(j);
}

static void handler(void *ud, struct sg_http_req *r) {
  (void)ud;
  /* the server's contract: a NUL-terminated body within the limit, a method and a path */
  if (!r->method || !r->path || !r->body || r->body_len > MAX_BODY || r->body[r->body_len] != 0) abort();
  unsigned h = hash(r->path, strlen(r->path)) ^ hash(r->body, r->body_len);
  if (verbose) fprintf(stderr, "fuzz_http: handler: %.20s %.60s (%zu bytes), %s\n", r->method, r->path, r->body_len,
                       h % 3 == 0 && npending < MAX_PENDING ? "answered later" : "answered at once");
  if (h % 3 == 0 && npending < MAX_PENDING) { /* kept: answered after the loop's next iteration */
    pending[npending++] = r;
    return;
  }
  answer(r, h / 3);
}

static void answer_pending(void) {
  int n = npending;
  npending = 0;
  for (int i = 0; i < n; i++) answer(pending[i], hash(pending[i]->path, strlen(pending[i]->path)));
}

static void start(void) {
  signal(SIGPIPE, SIG_IGN);
  sg_log_level = SG_LOG_ERROR + 1; /* quiet: refusals are logged at debug, stray ones at error */
  verbose = getenv("FUZZ_VERBOSE") != NULL;
  if (verbose) sg_log_level = SG_LOG_DEBUG;
  loop = ev_loop_new(EVFLAG_AUTO);
  /* small caps and deadline: connections the server has not noticed the end of go quickly */
  struct sg_http_limits lim = {256u, 256u, 1.0};
  sg_http_set_limits(&lim);
  struct sg_error e = {0};
  server = sg_http_start(loop, "127.0.0.1:0", MAX_BODY, handler, NULL, &e);
  if (!server) {
    fprintf(stderr, "fuzz_http: cannot start the server: %s\n", e.msg);
    abort();
  }
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)sg_http_port(server));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return -1;
  if (!server) start();
  /* Each input is a connection, and each leaves a TIME-WAIT entry for a minute: thousands a second
   * would use up the ports of one address pair, so the client's address goes round 127.1.0.0/16. */
  static unsigned seq;
  int fd = -1;
  for (int attempt = 0; attempt < 8 && fd < 0; attempt++, seq++) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) abort();
    struct sockaddr_in from = {0};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(0x7f010000u | ((seq / 254) % 256) << 8 | (seq % 254 + 1));
    if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0 ||
        connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { /* the backlog takes it */
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    fprintf(stderr, "fuzz_http: cannot connect to the server: %s\n", strerror(errno));
    abort();
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  size_t off = 0;
  char buf[16384];
  size_t got = 0;
  char first[64] = "";
  int idle = 0, ended = 0;
  /* write (as much as the socket takes each round), then half-close, and read until the server
   * closes or 50 rounds in a row bring nothing */
  for (int i = 0; i < 20000 && idle < 50; i++) {
    if (off < size) {
      ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (w > 0) off += (size_t)w;
      else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) off = size; /* reset: stop writing */
      if (off == size) shutdown(fd, SHUT_WR);
    } else if (size == 0 && i == 0) {
      shutdown(fd, SHUT_WR);
    }
    ev_run(loop, EVRUN_NOWAIT);
    answer_pending();
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (got == 0) snprintf(first, sizeof first, "%.*s", (int)(n < 40 ? n : 40), buf);
      got += (size_t)n;
      idle = 0;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      ended = 1;
      break;
    }
    if (off == size) idle++;
  }
  close(fd);
  /* let the server see the close (and answer what is still pending) before the next input */
  for (int i = 0; i < 4; i++) {
    ev_run(loop, EVRUN_NOWAIT);
    answer_pending();
  }
  if (verbose) {
    for (char *p = first; *p; p++)
      if (*p == '\r' || *p == '\n') *p = ' ';
    fprintf(stderr, "fuzz_http: %zu bytes in, %zu out (%s), %s\n", size, got, first,
            ended ? "closed by the server" : "still open");
  }
  return 0;
}
