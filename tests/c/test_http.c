/* test_http: the HTTP server inside a real libev loop, driven over real sockets.
 *
 * The main thread runs the loop with an echo handler (plus a route answered 50 ms later from an
 * ev_timer, and one never answered); a client thread speaks raw HTTP/1.1 to it, so the test needs
 * no HTTP client library and checks exactly what goes over the wire. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* Checks run on one thread at a time (the client thread while the loop serves, main otherwise). */
static int passed, failed;
#define CHECK(cond)                                                               \
  do {                                                                            \
    if (cond) passed++;                                                           \
    else { failed++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
  } while (0)
#define CHECK_STR(a, b)                                                           \
  do {                                                                            \
    const char *a_ = (a), *b_ = (b);                                              \
    if (a_ && b_ && strcmp(a_, b_) == 0) passed++;                                \
    else { failed++; fprintf(stderr, "%s:%d: CHECK_STR failed: %s == \"%s\", expected \"%s\"\n", \
                             __FILE__, __LINE__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } \
  } while (0)

#define MAX_BODY 1024

/* Shared between the loop thread and the client thread. */
static struct ev_loop *loop;
static struct sg_http *server;
static int port;
static ev_async stop_async;     /* client thread -> loop: stop the server, the loop then ends */
static int handler_calls;       /* atomic: requests that reached the handler */
static int held;                /* atomic: set when the never-answered request arrived */

/* ---- server side (loop thread) ---- */

/* A reply owed 50 ms from now. */
struct deferred {
  ev_timer timer;           /* fires once, answers, frees */
  struct sg_http_req *req;  /* stays valid until answered */
};

static void deferred_cb(struct ev_loop *l, ev_timer *w, int revents) {
  struct deferred *d = (struct deferred *)w;
  char body[256];
  snprintf(body, sizeof body, "{\"deferred\":true,\"q\":\"%s\"}",
           sg_http_query(d->req, "q") ? sg_http_query(d->req, "q") : "");
  sg_http_reply(d->req, 200, body);
  free(d);
}

static void handler(void *ud, struct sg_http_req *req) {
  __atomic_add_fetch(&handler_calls, 1, __ATOMIC_SEQ_CST);
  if (strcmp(req->path, "/defer") == 0) {
    struct deferred *d = sg_xcalloc(1, sizeof *d);
    d->req = req;
    ev_timer_init(&d->timer, deferred_cb, 0.05, 0.);
    ev_timer_start(loop, &d->timer);
    return;
  }
  if (strcmp(req->path, "/hold") == 0) { /* never answered: dropped by sg_http_stop */
    __atomic_store_n(&held, 1, __ATOMIC_SEQ_CST);
    return;
  }
  if (strcmp(req->path, "/only-get") == 0 && strcmp(req->method, "GET") != 0) {
    sg_http_reply_not_allowed(req, "GET, HEAD");
    return;
  }
  if (strncmp(req->path, "/status/", 8) == 0) {
    sg_http_reply_error(req, atoi(req->path + 8), "as \"asked\"");
    return;
  }
  json_t *o = json_pack("{s:s, s:s, s:s?, s:s?, s:s%, s:I}", "method", req->method, "path",
                        req->path, "q", sg_http_query(req, "q"), "h", sg_http_header(req, "x-test"),
                        "body", req->body, req->body_len, "len", (json_int_t)req->body_len);
  char *s = json_dumps(o, JSON_COMPACT);
  sg_http_reply(req, 200, s);
  free(s);
  json_decref(o);
}

static void stop_cb(struct ev_loop *l, ev_async *w, int revents) {
  sg_http_stop(server);
  server = NULL;
  ev_async_stop(l, w);
}

/* ---- client side (raw HTTP/1.1, one connection per request) ---- */

/* One response as it came over the wire. */
struct resp {
  int status;     /* 0 when the connection closed without a response */
  char *head;     /* status line and headers (owned) */
  char *body;     /* body (owned), NUL-terminated */
  size_t body_len;
};

static void resp_free(struct resp *r) { free(r->head); free(r->body); memset(r, 0, sizeof *r); }

static int connect_server(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  struct timeval tv = {.tv_sec = 10}; /* a server bug must fail the test, not hang it */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
  return fd;
}

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads to EOF (every request says Connection: close) and splits head from body. */
static void read_resp(int fd, struct resp *out) {
  struct sg_buf b;
  sg_buf_init(&b);
  char chunk[4096];
  ssize_t n;
  while ((n = recv(fd, chunk, sizeof chunk, 0)) > 0) sg_buf_add(&b, chunk, (size_t)n);
  memset(out, 0, sizeof *out);
  char *sep = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
  if (sep && sscanf(b.data, "HTTP/1.%*d %d", &out->status) == 1) {
    out->head = sg_xmalloc((size_t)(sep - b.data) + 1);
    memcpy(out->head, b.data, (size_t)(sep - b.data));
    out->head[sep - b.data] = 0;
    out->body = sg_strdup(sep + 4);
    out->body_len = b.len - (size_t)(sep + 4 - b.data);
  }
  sg_buf_free(&b);
}

static void request(const char *method, const char *target, const char *extra_headers,
                    const char *body, size_t body_len, struct resp *out) {
  struct sg_buf req;
  sg_buf_init(&req);
  sg_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method,
                target, extra_headers ? extra_headers : "");
  if (body) sg_buf_printf(&req, "Content-Length: %zu\r\n", body_len);
  sg_buf_adds(&req, "\r\n");
  if (body) sg_buf_add(&req, body, body_len);
  memset(out, 0, sizeof *out);
  int fd = connect_server();
  if (fd >= 0 && send_all(fd, req.data, req.len) == 0) read_resp(fd, out);
  if (fd >= 0) close(fd);
  sg_buf_free(&req);
}

static json_t *parse(const struct resp *r) {
  return r->body ? json_loads(r->body, 0, NULL) : NULL;
}

static const char *jstr(json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_echo(void) {
  struct resp r;
  request("GET", "/hello/world?q=a%20b&other=1", "X-Test: yes\r\n", NULL, 0, &r);
  CHECK(r.status == 200);
  CHECK(r.head && strstr(r.head, "Content-Type: application/json"));
  json_t *o = parse(&r);
  CHECK(o != NULL);
  CHECK_STR(jstr(o, "method"), "GET");
  CHECK_STR(jstr(o, "path"), "/hello/world");
  CHECK_STR(jstr(o, "q"), "a b");
  CHECK_STR(jstr(o, "h"), "yes");
  CHECK_STR(jstr(o, "body"), "");
  json_decref(o);
  resp_free(&r);

  request("GET", "/nothing", NULL, NULL, 0, &r);
  o = parse(&r);
  CHECK(r.status == 200);
  CHECK(json_is_null(json_object_get(o, "q")));
  CHECK(json_is_null(json_object_get(o, "h")));
  json_decref(o);
  resp_free(&r);

  const char *body = "{\"order\":\"o-1\",\"qty\":2}";
  request("POST", "/v1/sagas/OrderProcessing", "Content-Type: application/json\r\n", body,
          strlen(body), &r);
  o = parse(&r);
  CHECK(r.status == 200);
  CHECK_STR(jstr(o, "method"), "POST");
  CHECK_STR(jstr(o, "body"), body);
  CHECK(json_integer_value(json_object_get(o, "len")) == (json_int_t)strlen(body));
  json_decref(o);
  resp_free(&r);
}

static void test_status_and_error(void) {
  struct resp r;
  request("GET", "/status/404", NULL, NULL, 0, &r);
  CHECK(r.status == 404);
  json_t *o = parse(&r);
  CHECK_STR(jstr(o, "error"), "as \"asked\"");
  json_decref(o);
  resp_free(&r);
}

/* 405 carries Allow, and the error names the path but not the client's method token */
static void test_not_allowed(void) {
  struct resp r;
  request("BREW<script>", "/only-get", NULL, NULL, 0, &r);
  CHECK(r.status == 405);
  CHECK(r.head && strstr(r.head, "\r\nAllow: GET, HEAD") != NULL);
  json_t *o = parse(&r);
  CHECK_STR(jstr(o, "error"), "method not allowed for /only-get (allowed: GET, HEAD)");
  CHECK(r.body && strstr(r.body, "BREW") == NULL);
  json_decref(o);
  resp_free(&r);
  /* other replies carry no Allow header */
  request("GET", "/status/404", NULL, NULL, 0, &r);
  CHECK(r.status == 404);
  CHECK(r.head && strstr(r.head, "Allow:") == NULL);
  resp_free(&r);
}

static void test_deferred(void) {
  struct resp r;
  double t0 = now_s();
  request("GET", "/defer?q=later", NULL, NULL, 0, &r);
  double dt = now_s() - t0;
  CHECK(r.status == 200);
  CHECK(dt >= 0.045);
  CHECK(dt < 2.0);
  json_t *o = parse(&r);
  CHECK(json_is_true(json_object_get(o, "deferred")));
  CHECK_STR(jstr(o, "q"), "later");
  json_decref(o);
  resp_free(&r);
}

static void test_body_limit(void) {
  static const char *expect413 = "request body too large: limit is 1024 bytes";
  char *big = sg_xmalloc(4 * MAX_BODY);
  memset(big, 'x', 4 * MAX_BODY);
  struct resp r;

  /* exactly at the limit: accepted */
  request("POST", "/echo", NULL, big, MAX_BODY, &r);
  CHECK(r.status == 200);
  json_t *o = parse(&r);
  CHECK(json_integer_value(json_object_get(o, "len")) == MAX_BODY);
  json_decref(o);
  resp_free(&r);

  /* one byte over: 413, handler never called */
  int calls = __atomic_load_n(&handler_calls, __ATOMIC_SEQ_CST);
  request("POST", "/echo", NULL, big, MAX_BODY + 1, &r);
  CHECK(r.status == 413);
  CHECK(r.head && strstr(r.head, "Content-Type: application/json"));
  o = parse(&r);
  CHECK_STR(jstr(o, "error"), expect413);
  json_decref(o);
  resp_free(&r);

  /* chunked (no declared length): refused at the headers, whatever the size; the rest of the body
   * is read and discarded by the lingering close, so the answer arrives whole */
  struct sg_buf chunked;
  sg_buf_init(&chunked);
  for (int i = 0; i < 4; i++) {
    sg_buf_printf(&chunked, "%x\r\n", MAX_BODY);
    sg_buf_add(&chunked, big, MAX_BODY);
    sg_buf_adds(&chunked, "\r\n");
  }
  sg_buf_adds(&chunked, "0\r\n\r\n");
  int fd = connect_server();
  char head[] = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
  CHECK(fd >= 0 && send_all(fd, head, strlen(head)) == 0 && send_all(fd, chunked.data, chunked.len) == 0);
  read_resp(fd, &r);
  close(fd);
  CHECK(r.status == 413);
  CHECK(r.head && strstr(r.head, "Connection: close"));
  o = parse(&r);
  CHECK_STR(jstr(o, "error"), "request bodies must declare their size with Content-Length (at most 1024 bytes); "
                              "Transfer-Encoding: chunked is not accepted");
  json_decref(o);
  resp_free(&r);
  sg_buf_free(&chunked);

  /* Expect: 100-continue with a declared length over the limit: refused before the body */
  fd = connect_server();
  char expect[] = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000000\r\n"
                  "Expect: 100-continue\r\n\r\n";
  CHECK(fd >= 0 && send_all(fd, expect, strlen(expect)) == 0);
  read_resp(fd, &r);
  close(fd);
  CHECK(r.status == 413);
  o = parse(&r);
  CHECK_STR(jstr(o, "error"), expect413);
  json_decref(o);
  resp_free(&r);

  CHECK(__atomic_load_n(&handler_calls, __ATOMIC_SEQ_CST) == calls);
  free(big);
}

static void test_sequential(void) {
  int ok = 0;
  for (int i = 0; i < 200; i++) {
    char target[64], body[64];
    snprintf(target, sizeof target, "/seq?q=%d", i);
    snprintf(body, sizeof body, "{\"i\":%d}", i);
    struct resp r;
    request("POST", target, NULL, body, strlen(body), &r);
    json_t *o = parse(&r);
    char q[16];
    snprintf(q, sizeof q, "%d", i);
    if (r.status == 200 && jstr(o, "q") && strcmp(jstr(o, "q"), q) == 0 && jstr(o, "body") &&
        strcmp(jstr(o, "body"), body) == 0)
      ok++;
    json_decref(o);
    resp_free(&r);
  }
  CHECK(ok == 200);
}

/* One concurrent client: a few requests, deferred and immediate mixed. */
struct worker {
  pthread_t thread; /* the client thread */
  int id;           /* which worker, echoed back through the query */
  int ok;           /* responses that matched what was sent */
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < 5; i++) {
    char target[64], q[32];
    snprintf(q, sizeof q, "w%d-%d", w->id, i);
    snprintf(target, sizeof target, "%s?q=%s", (i + w->id) % 2 ? "/defer" : "/echo", q);
    struct resp r;
    request("GET", target, NULL, NULL, 0, &r);
    json_t *o = parse(&r);
    if (r.status == 200 && jstr(o, "q") && strcmp(jstr(o, "q"), q) == 0) w->ok++;
    json_decref(o);
    resp_free(&r);
  }
  return NULL;
}

static void test_concurrent(void) {
  enum { N = 20 };
  struct worker w[N];
  double t0 = now_s();
  for (int i = 0; i < N; i++) {
    w[i] = (struct worker){.id = i};
    pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
  }
  int ok = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(w[i].thread, NULL);
    ok += w[i].ok;
  }
  CHECK(ok == N * 5);
  /* 50 deferred replies of 50 ms each: they overlap, so the loop was never blocked by one */
  CHECK(now_s() - t0 < 2.0);
}

static void *hold_main(void *arg) {
  request("GET", "/hold", NULL, NULL, 0, arg);
  return NULL;
}

/* A request still pending at sg_http_stop is dropped: its client sees the connection close. */
static void test_stop_with_pending(void) {
  struct resp r;
  pthread_t t;
  pthread_create(&t, NULL, hold_main, &r);
  for (int i = 0; i < 500 && !__atomic_load_n(&held, __ATOMIC_SEQ_CST); i++) usleep(10000);
  CHECK(__atomic_load_n(&held, __ATOMIC_SEQ_CST) == 1);
  ev_async_send(loop, &stop_async);
  pthread_join(t, NULL);
  CHECK(r.status == 0);
  resp_free(&r);
}

static void *client_main(void *arg) {
  test_echo();
  test_status_and_error();
  test_not_allowed();
  test_deferred();
  test_body_limit();
  test_sequential();
  test_concurrent();
  test_stop_with_pending();
  return NULL;
}

static void test_bad_listen(void) {
  struct sg_error e = {0};
  CHECK(sg_http_start(loop, "nonsense", MAX_BODY, handler, NULL, &e) == NULL);
  CHECK(strstr(e.msg, "host:port") != NULL);
  CHECK(sg_http_start(loop, "127.0.0.1:70000", MAX_BODY, handler, NULL, &e) == NULL);
  CHECK(strstr(e.msg, "0..65535") != NULL);
  CHECK(sg_http_start(loop, "example.com:80", MAX_BODY, handler, NULL, &e) == NULL);
  CHECK(strstr(e.msg, "IPv4") != NULL);
  char busy[64];
  snprintf(busy, sizeof busy, "127.0.0.1:%d", port);
  struct sg_http *dup = sg_http_start(loop, busy, MAX_BODY, handler, NULL, &e);
  CHECK(dup == NULL);
  CHECK(strstr(e.msg, "cannot listen") && strstr(e.msg, "in use"));
  if (dup) sg_http_stop(dup); /* keep the loop from running forever on a failed check */
  /* localhost and an ephemeral port */
  struct sg_http *h = sg_http_start(loop, "localhost:0", MAX_BODY, handler, NULL, &e);
  CHECK(h != NULL);
  CHECK(h && sg_http_port(h) > 0 && sg_http_port(h) != port);
  sg_http_stop(h);
}

int main(void) {
  loop = ev_loop_new(EVFLAG_AUTO);
  struct sg_error e = {0};
  server = sg_http_start(loop, "127.0.0.1:0", MAX_BODY, handler, NULL, &e);
  if (!server) { fprintf(stderr, "sg_http_start: %s\n", e.msg); return 1; }
  port = sg_http_port(server);
  CHECK(port > 0);
  test_bad_listen();

  ev_async_init(&stop_async, stop_cb);
  ev_async_start(loop, &stop_async);
  pthread_t client;
  pthread_create(&client, NULL, client_main, NULL);
  ev_run(loop, 0); /* ends once the server is stopped: no watcher is left active */
  pthread_join(client, NULL);
  CHECK(server == NULL);
  CHECK(ev_pending_count(loop) == 0);
  ev_loop_destroy(loop);

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
