/* Live test of transport_amqp.c against a real RabbitMQ: the tests' own node, which tests/amqp-broker.sh
 * starts on amqp://guest:guest@127.0.0.1:26720/ (SG_BROKER_PORT picks another port, SG_AMQP_URL another
 * URL). Fails, never skips, when no broker answers.
 *
 * Two transports share one libev loop: "p" is a participant consuming service echo, "o" an
 * orchestrator sending to it. Checks a command/reply round trip with confirms, nack to the DLQ with
 * x-saga-error, malformed and unroutable messages, reconnect after a channel error with stale delivery
 * tags, and the confirm throughput of a burst of publishes. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_envelope.h"
#include "check.h"
#include "transport.h"

#define MAXMSG 20000

/* What one transport's callbacks saw. */
struct side {
  const char *name;              /* "p" or "o", for messages */
  struct sg_transport *t;        /* the transport */
  int ready;                     /* on_ready calls */
  int confirms;                  /* on_confirm calls */
  int rejects;                   /* on_reject calls */
  int64_t last_reject;           /* outbox id of the last reject */
  char confirmed[MAXMSG + 1000]; /* per outbox id: confirmed */
  int got;                       /* on_message calls */
  struct sg_msg last;            /* copy of the last message */
  uint64_t last_tag;             /* its tag */
  int last_redelivered;          /* its redelivered flag */
  int mode;                      /* how the participant answers, see on_message */
};

enum { MODE_REPLY, MODE_NACK, MODE_HOLD, MODE_ACK };

static struct ev_loop *loop;
static const char *url;

static void on_message(void *ud, const struct sg_msg *m, uint64_t tag, int redelivered) {
  struct side *s = ud;
  s->got++;
  sg_msg_free(&s->last);
  sg_msg_copy(&s->last, m);
  s->last_tag = tag;
  s->last_redelivered = redelivered;
  if (m->kind == SG_MSG_REPLY) {
    s->t->ops->ack(s->t, tag);
    return;
  }
  switch (s->mode) {
  case MODE_REPLY: {
    struct sg_msg r = {0};
    r.outbox_id = 5000 + s->got;
    r.message_id = "reply-1";
    r.correlation_id = m->message_id;
    r.kind = SG_MSG_REPLY;
    r.reply_to = m->reply_to;
    r.status = "ok";
    r.body = "{\"pong\":true}";
    struct sg_error e = {{0}, 0};
    if (!CHECK(s->t->ops->publish(s->t, &r, &e) == 0)) fprintf(stderr, "  reply: %s\n", e.msg);
    s->t->ops->ack(s->t, tag);
    break;
  }
  case MODE_NACK: s->t->ops->nack(s->t, tag, m, "cannot handle Bad: no such command"); break;
  case MODE_HOLD: break;
  case MODE_ACK: s->t->ops->ack(s->t, tag); break;
  }
}

static void on_confirm(void *ud, int64_t id) {
  struct side *s = ud;
  s->confirms++;
  if (id >= 0 && id < (int64_t)sizeof s->confirmed) s->confirmed[id]++;
}

static void on_reject(void *ud, int64_t id, const char *why) {
  struct side *s = ud;
  s->rejects++;
  s->last_reject = id;
}

static void on_ready(void *ud) { ((struct side *)ud)->ready++; }

static void tick(struct ev_loop *l, ev_timer *w, int revents) {}

/* Runs the loop until *flag >= want or timeout seconds pass; returns whether it got there. */
static int run_until(int *flag, int want, double timeout) {
  ev_timer t;
  ev_timer_init(&t, tick, 0.01, 0.01);
  ev_timer_start(loop, &t);
  double end = ev_time() + timeout;
  while (*flag < want && ev_time() < end) ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &t);
  return *flag >= want;
}

static void run_for(double secs) {
  int never = 0;
  run_until(&never, 1, secs);
}

/* a command to service.name, e.g. "echo.Ping" (what points into target stays valid: target is a literal) */
static struct sg_msg command(int64_t outbox_id, const char *id, const char *target, const char *reply_to) {
  static char svc[16][64];
  static int next;
  char *service = svc[next++ % 16];
  snprintf(service, 64, "%.*s", (int)strcspn(target, "."), target);
  struct sg_msg m = {0};
  m.outbox_id = outbox_id;
  m.message_id = (char *)id;
  m.kind = SG_MSG_COMMAND;
  m.service = service;
  m.name = (char *)strchr(target, '.') + 1;
  m.reply_to = (char *)reply_to;
  m.saga_id = "saga-1";
  m.saga_type = "Test";
  m.step = 1;
  m.attempt = 2;
  m.body = "{\"n\":1}";
  return m;
}

/* A plain blocking connection for setup and inspection. */
static amqp_connection_state_t plain(void) {
  struct amqp_connection_info ci;
  char *u = strdup(url);
  if (amqp_parse_url(u, &ci) != AMQP_STATUS_OK) { free(u); return NULL; }
  if (!*ci.vhost) ci.vhost = "/"; /* as the transport reads it */
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  struct timeval tv = {2, 0};
  if (amqp_socket_open_noblock(s, ci.host, ci.port, &tv) != AMQP_STATUS_OK ||
      amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password).reply_type !=
          AMQP_RESPONSE_NORMAL) {
    amqp_destroy_connection(c);
    free(u);
    return NULL;
  }
  free(u);
  amqp_channel_open(c, 1);
  return amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL ? c : NULL;
}

static void delete_queues(amqp_connection_state_t c) {
  const char *qs[] = {"saga.svc.echo", "saga.svc.echo.dlq", "saga.reply.test-p", "saga.reply.test-p.dlq",
                      "saga.reply.test-o", "saga.reply.test-o.dlq"};
  for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) amqp_queue_delete(c, 1, amqp_cstring_bytes(qs[i]), 0, 0);
}

/* Takes one message from queue q (waiting up to 5 s for it); 1 and *msg filled if there was one. */
static int get_one(amqp_connection_state_t c, const char *q, amqp_message_t *msg) {
  for (int i = 0; i < 50; i++) {
    amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 1);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) return 0;
    if (r.reply.id == AMQP_BASIC_GET_OK_METHOD)
      return amqp_read_message(c, 1, msg, 0).reply_type == AMQP_RESPONSE_NORMAL;
    run_for(0.1); /* let the transports work meanwhile */
  }
  return 0;
}

static int bytes_is(amqp_bytes_t b, const char *s) { return b.len == strlen(s) && memcmp(b.bytes, s, b.len) == 0; }

int main(void) {
  url = getenv("SG_AMQP_URL");
  if (!url || !*url) { /* the tests' node (tests/amqp-broker.sh), never the system's broker on 5672 */
    static char own[64];
    const char *port = getenv("SG_BROKER_PORT");
    snprintf(own, sizeof own, "amqp://guest:guest@127.0.0.1:%s/", port && *port ? port : "26720");
    url = own;
  }
  loop = EV_DEFAULT;
  sg_log_level = SG_LOG_WARN;

  amqp_connection_state_t admin = plain();
  if (!CHECK(admin != NULL)) {
    fprintf(stderr, "no AMQP broker at %s: start one with tests/amqp-broker.sh (or set SG_AMQP_URL)\n", url);
    return check_report();
  }
  delete_queues(admin);

  static struct side p = {.name = "p"}, o = {.name = "o"};
  struct sg_transport_events pev = {&p, on_message, on_confirm, on_reject, on_ready};
  struct sg_transport_events oev = {&o, on_message, on_confirm, on_reject, on_ready};
  struct sg_error e = {{0}, 0};
  /* options on the URL: the parser must accept them */
  char purl[512];
  snprintf(purl, sizeof purl, "%s%sprefetch=100&heartbeat=5", url, strchr(url, '?') ? "&" : "?");
  p.t = sg_transport_amqp_new(loop, purl, "test-p", &pev, &e);
  if (!CHECK(p.t != NULL)) { fprintf(stderr, "  %s\n", e.msg); return check_report(); }
  o.t = sg_transport_amqp_new(loop, url, "test-o", &oev, &e);
  if (!CHECK(o.t != NULL)) { fprintf(stderr, "  %s\n", e.msg); return check_report(); }
  CHECK(sg_transport_amqp_new(loop, "http://nope", "x", &oev, &e) == NULL && strstr(e.msg, "URL"));
  CHECK(sg_transport_amqp_new(loop, "amqp://h/?bogus=1", "x", &oev, &e) == NULL && strstr(e.msg, "bogus"));
  CHECK_STR(o.t->ops->reply_queue(o.t), "saga.reply.test-o");
  CHECK(p.t->ops->subscribe(p.t, "echo", &e) == 0);       /* before connect: remembered */
  CHECK(o.t->ops->declare_service(o.t, "echo", &e) == 0);
  CHECK(p.t->ops->subscribe(p.t, "bad.name", &e) == -1);

  CHECK(run_until(&p.ready, 1, 10) && run_until(&o.ready, 1, 10));
  if (!p.ready || !o.ready) {
    fprintf(stderr, "transports did not connect to %s\n", url);
    return check_report();
  }
  CHECK(o.t->ops->connected(o.t));

  /* 1. command -> participant -> reply, each publish confirmed */
  const char *rq = o.t->ops->reply_queue(o.t);
  struct sg_msg c1 = command(1, "m-1", "echo.Ping", rq);
  CHECK(o.t->ops->publish(o.t, &c1, &e) == 0);
  CHECK(run_until(&o.got, 1, 5));
  CHECK_EQ_INT(p.got, 1);
  CHECK_STR(p.last.message_id, "m-1");
  CHECK_STR(p.last.correlation_id, "m-1");
  CHECK(p.last.kind == SG_MSG_COMMAND);
  CHECK_STR(p.last.service, "echo");
  CHECK_STR(p.last.name, "Ping");
  CHECK_STR(p.last.reply_to, rq);
  CHECK_STR(p.last.saga_id, "saga-1");
  CHECK_EQ_INT(p.last.step, 1);
  CHECK_EQ_INT(p.last.attempt, 2);
  CHECK_STR(o.last.correlation_id, "m-1");
  CHECK_STR(o.last.status, "ok");
  CHECK_STR(o.last.body, "{\"pong\":true}");
  /* a confirm of a persistent message comes once the broker has it on disk, which can be after its
   * delivery (and the reply) */
  CHECK(run_until(&p.confirms, 1, 5));
  CHECK(run_until(&o.confirms, 1, 5));
  CHECK(o.confirmed[1] == 1);
  CHECK(p.confirmed[5001] == 1);

  /* 2. nack: the message lands in the DLQ with the reason */
  p.mode = MODE_NACK;
  struct sg_msg c2 = command(2, "m-2", "echo.Bad", rq);
  CHECK(o.t->ops->publish(o.t, &c2, &e) == 0);
  CHECK(run_until(&p.got, 2, 5));
  amqp_message_t dl;
  if (CHECK(get_one(admin, "saga.svc.echo.dlq", &dl))) {
    CHECK(bytes_is(dl.properties.message_id, "m-2"));
    CHECK(bytes_is(dl.body, "{\"n\":1}"));
    char *why = sg_amqp_header_str(&dl.properties.headers, "x-saga-error");
    CHECK_STR(why, "cannot handle Bad: no such command");
    free(why);
    char *sid = sg_amqp_header_str(&dl.properties.headers, "saga-id");
    CHECK_STR(sid, "saga-1");
    free(sid);
    amqp_destroy_message(&dl);
  }

  /* 3. a malformed message is dead-lettered by the transport, the engine never sees it */
  p.mode = MODE_ACK;
  int before = p.got;
  amqp_basic_properties_t props = {0};
  props._flags = AMQP_BASIC_MESSAGE_ID_FLAG;
  props.message_id = amqp_cstring_bytes("junk-1");
  CHECK(amqp_basic_publish(admin, 1, amqp_cstring_bytes(SG_AMQP_X_COMMANDS), amqp_cstring_bytes("echo.Junk"), 0, 0,
                           &props, amqp_cstring_bytes("this is not json")) == 0);
  if (CHECK(get_one(admin, "saga.svc.echo.dlq", &dl))) {
    CHECK(bytes_is(dl.properties.message_id, "junk-1"));
    char *why = sg_amqp_header_str(&dl.properties.headers, "x-saga-error");
    CHECK(why && strstr(why, "not valid JSON"));
    free(why);
    amqp_destroy_message(&dl);
  }
  CHECK_EQ_INT(p.got, before);

  /* 4. an unroutable command comes back: rejected, not confirmed */
  struct sg_msg c3 = command(3, "m-3", "nosuchservice.Do", rq);
  CHECK(o.t->ops->publish(o.t, &c3, &e) == 0);
  CHECK(run_until(&o.rejects, 1, 5));
  CHECK_EQ_INT(o.last_reject, 3);
  run_for(0.2);
  CHECK_EQ_INT(o.confirmed[3], 0);

  /* 5. reconnect: the connection drops (reset: what a lost socket or a fence does). A delivery held
   * across it is redelivered under a new tag; the old tag must be ignored, not acked on the new channel. */
  p.mode = MODE_HOLD;
  struct sg_msg c4 = command(4, "m-4", "echo.Hold", rq);
  CHECK(o.t->ops->publish(o.t, &c4, &e) == 0);
  before = p.got;
  CHECK(run_until(&p.got, before + 1, 5));
  uint64_t stale = p.last_tag;
  int pready = p.ready;
  p.t->ops->reset(p.t, "test: the connection drops");
  CHECK(run_until(&p.ready, pready + 1, 5)); /* reconnected */
  CHECK(run_until(&p.got, before + 2, 5));   /* m-4 again */
  CHECK_STR(p.last.message_id, "m-4");
  CHECK(p.last_redelivered);
  CHECK(p.last_tag != stale);
  p.t->ops->ack(p.t, stale);                 /* ignored */
  p.t->ops->ack(p.t, p.last_tag);
  p.mode = MODE_REPLY;
  int ogot = o.got;
  struct sg_msg c5 = command(5, "m-5", "echo.Ping", rq);
  CHECK(o.t->ops->publish(o.t, &c5, &e) == 0);
  CHECK(run_until(&o.got, ogot + 1, 5));
  run_for(0.3);
  CHECK_EQ_INT(p.ready, pready + 1); /* the stale ack did not break the new channel */

  /* 6. throughput: a burst of publishes, all confirmed, all delivered and acked */
  int n = getenv("SG_AMQP_BENCH_N") ? atoi(getenv("SG_AMQP_BENCH_N")) : 1000;
  if (n < 1 || n > MAXMSG) n = 1000;
  p.mode = MODE_ACK;
  int oc = o.confirms;
  before = p.got;
  char ids[32];
  double t0 = ev_time();
  for (int i = 0; i < n; i++) {
    snprintf(ids, sizeof ids, "load-%d", i);
    struct sg_msg m = command(1000 + i, ids, "echo.Load", rq);
    if (o.t->ops->publish(o.t, &m, &e) != 0) {
      CHECK(0);
      fprintf(stderr, "  publish %d: %s\n", i, e.msg);
      break;
    }
  }
  double t1 = ev_time();
  CHECK(run_until(&o.confirms, oc + n, 30));
  double t2 = ev_time();
  CHECK(run_until(&p.got, before + n, 30));
  double t3 = ev_time();
  int all = 1;
  for (int i = 0; i < n; i++) all &= o.confirmed[1000 + i] == 1;
  CHECK(all);
  printf("throughput: %d publishes in %.3fs, all confirmed after %.3fs (%.0f confirms/s), all consumed+acked "
         "after %.3fs (%.0f msg/s)\n", n, t1 - t0, t2 - t0, n / (t2 - t0), t3 - t0, n / (t3 - t0));

  /* 7. no broker at the address: retries in the background, never blocks the loop, publish refuses */
  static struct side d = {.name = "d"};
  struct sg_transport_events dev = {&d, on_message, on_confirm, on_reject, on_ready};
  d.t = sg_transport_amqp_new(loop, "amqp://guest:guest@127.0.0.1:1/", "test-d", &dev, &e);
  if (CHECK(d.t != NULL)) {
    double s0 = ev_time();
    run_for(1.0);
    CHECK(ev_time() - s0 < 1.5);
    CHECK_EQ_INT(d.ready, 0);
    CHECK(!d.t->ops->connected(d.t));
    struct sg_msg c6 = command(6, "m-6", "echo.Ping", rq);
    CHECK(d.t->ops->publish(d.t, &c6, &e) == -1 && strstr(e.msg, "not connected"));
    d.t->ops->close(d.t);
  }

  p.t->ops->close(p.t);
  o.t->ops->close(o.t);
  sg_msg_free(&p.last);
  sg_msg_free(&o.last);
  delete_queues(admin);
  amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(admin);
  ev_loop_destroy(loop);
  return check_report();
}
