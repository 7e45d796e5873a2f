/* transport_kafka: the transport over Kafka (librdkafka 2.0) inside the libev loop.
 *
 * One idempotent producer and one consumer per consumer group: saga.svc.<service> (group
 * saga.svc.<service>, shared by every process that handles the service) for each service this host
 * handles (saga.handle) and for signals (saga.svc.saga), and saga.reply.<host_id> (group
 * saga.reply.<host_id>). librdkafka runs its own threads; every queue we read (the producer's main
 * queue, each consumer's queue) writes a byte to one pipe when it gets an event, an ev_io reads the pipe
 * and everything is served with timeout 0, so the loop thread never blocks.
 *
 * Offsets: enable.auto.commit and enable.auto.offset.store are off. Each assigned partition keeps the
 * offsets it delivered in order; an ack marks one done, and the offset after the longest done prefix is
 * committed (asynchronously, batched by a short timer). A nack produces a copy to <topic>.dlq with the
 * reason in x-saga-error, and marks the original done once the copy is delivered. What was delivered and
 * not committed comes again after a restart or a rebalance: the engine's inbox makes that harmless.
 *
 * The wire format (topics, keys, headers) is sg_kafka_encode/decode below; the contract is
 * docs/protocol.md, section "Kafka".
 *
 * Options ride on the broker list's query string: host:port,host:port?prefetch=N&session_timeout_ms=N&
 * fetch_wait_ms=N (prefetch: deliveries held unacked before the consumers pause, 256; session timeout of
 * the consumer groups, 10000; fetch.wait.max.ms, 100). */
#include "kafka_wire.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DRAIN_MAX 1024        /* events served per drain before the loop gets a turn */
#define DRAIN_BUDGET 0.01     /* seconds of handling per drain, likewise: with slow handlers the group
                               * commit (and the acks after it) would otherwise wait for a whole batch */
#define COMMIT_DELAY 0.05     /* seconds: acks of this long are committed together */
#define REPUBLISH_DELAY 1.0   /* seconds after a failed delivery before the engine re-sends the outbox */
#define REVOKE_WAIT 10.0      /* seconds a rebalance waits for the deliveries held from revoked partitions */

/* ---------------------------------------------------------------------------------------------- */
/* the wire mapping */

static void hdr_add(rd_kafka_headers_t *h, const char *name, const char *v) {
  if (v && *v) rd_kafka_header_add(h, name, -1, v, -1);
}

static void hdr_add_int(rd_kafka_headers_t *h, const char *name, int v) {
  char s[16];
  snprintf(s, sizeof s, "%d", v);
  rd_kafka_header_add(h, name, -1, s, -1);
}

static int topic_name_ok(const char *s, size_t n) {
  if (!n || n > 249) return 0;
  for (size_t i = 0; i < n; i++)
    if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", s[i])) return 0;
  return 1;
}

int sg_kafka_encode(const struct sg_msg *m, struct sg_kafka_out *out, struct sg_error *e) {
  memset(out, 0, sizeof *out);
  if (!m->message_id || !*m->message_id) return sg_errorf(e, SG_E_INVALID, "kafka: message without message id");
  if (!m->body) return sg_errorf(e, SG_E_INVALID, "kafka: message %s has no body", m->message_id);
  int reply = m->kind == SG_MSG_REPLY, event = m->kind == SG_MSG_EVENT, signal = m->kind == SG_MSG_SIGNAL;
  const char *service = signal ? SG_SIGNAL_SERVICE : m->service;
  const char *name = signal ? SG_SIGNAL_COMMAND : m->name;
  if (reply) {
    /* a reply goes to the reply_to of its command, i.e. a reply topic */
    if (!m->correlation_id) return sg_errorf(e, SG_E_INVALID, "kafka: reply %s has no correlation id", m->message_id);
    if (!m->status || (strcmp(m->status, "ok") && strcmp(m->status, "error")))
      return sg_errorf(e, SG_E_INVALID, "kafka: reply %s has status '%s', not ok or error", m->message_id,
                       m->status ? m->status : "");
    if (!m->reply_to || !topic_name_ok(m->reply_to, strlen(m->reply_to)))
      return sg_errorf(e, SG_E_INVALID, "kafka: reply-to '%s' is not a topic name", m->reply_to ? m->reply_to : "");
    snprintf(out->topic, sizeof out->topic, "%s", m->reply_to);
  } else {
    if (!service || !*service || !name || !*name)
      return sg_errorf(e, SG_E_INVALID, "kafka: %s %s names no %s", sg_msg_kind_name(m->kind), m->message_id,
                       !service || !*service ? (event ? "topic" : "service") : "name");
    if (event) {
      snprintf(out->topic, sizeof out->topic, "%s", SG_KAFKA_EVENTS);
    } else { /* a command goes to saga.svc.<service> */
      if (!topic_name_ok(service, strlen(service)))
        return sg_errorf(e, SG_E_INVALID, "kafka: command %s: service '%s' is not a topic name", m->message_id, service);
      snprintf(out->topic, sizeof out->topic, SG_KAFKA_SVC "%s", service);
    }
  }
  const char *key = m->saga_id && *m->saga_id ? m->saga_id : m->message_id;
  out->key = key;
  out->key_len = strlen(key);
  out->value = m->body;
  out->len = strlen(m->body);
  out->timestamp = m->created_at > 0 ? m->created_at : 0;

  rd_kafka_headers_t *h = rd_kafka_headers_new(12 + m->nheaders);
  hdr_add(h, "message-id", m->message_id);
  hdr_add(h, "correlation-id", m->correlation_id);
  hdr_add(h, "content-type", "application/json");
  if (!reply) {
    hdr_add(h, "reply-to", m->reply_to);
    hdr_add(h, "type", name);
    if (event) {
      char rk[600];
      snprintf(rk, sizeof rk, "%s.%s", service, name);
      hdr_add(h, "routing-key", rk);
    }
  } else {
    hdr_add(h, "saga-status", m->status);
  }
  if (m->saga_id) {
    hdr_add(h, "saga-id", m->saga_id);
    hdr_add(h, "saga-type", m->saga_type);
    if (!reply) {
      hdr_add_int(h, "step", m->step);
      hdr_add_int(h, "attempt", m->attempt);
    }
  }
  for (size_t i = 0; i < m->nheaders; i++) hdr_add(h, m->headers[i].name, m->headers[i].value);
  out->hdrs = h;
  return 0;
}

char *sg_kafka_header_str(const rd_kafka_headers_t *h, const char *name) {
  const void *v = NULL;
  size_t n = 0;
  if (!h || rd_kafka_header_get_last(h, name, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR || !v) return NULL;
  return strndup(v, n);
}

/* A string header, NULL when absent or empty; -1 when it holds a NUL byte. */
static int hdr_str(const rd_kafka_headers_t *h, const char *name, char **out, struct sg_error *e) {
  const void *v = NULL;
  size_t n = 0;
  *out = NULL;
  if (!h || rd_kafka_header_get_last(h, name, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR || !v || !n) return 0;
  if (memchr(v, 0, n)) return sg_errorf(e, SG_E_INVALID, "header %s contains a NUL byte; it must be text", name);
  *out = strndup(v, n);
  return 0;
}

static int hdr_int(const rd_kafka_headers_t *h, const char *name, int *out, struct sg_error *e) {
  char *s = NULL;
  *out = 0;
  if (hdr_str(h, name, &s, e) < 0) return -1;
  if (!s) return 0;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  int bad = end == s || *end || errno || v < INT_MIN || v > INT_MAX;
  free(s);
  if (bad) return sg_errorf(e, SG_E_INVALID, "header %s must be a decimal integer", name);
  *out = (int)v;
  return 0;
}

static int check_json(const void *value, size_t len, struct sg_error *e) {
  if (!len) return sg_errorf(e, SG_E_INVALID, "body is empty; it must be a JSON value");
  if (memchr(value, 0, len)) return sg_errorf(e, SG_E_INVALID, "body contains a NUL byte; it must be JSON text");
  json_error_t je;
  json_t *j = json_loadb(value, len, JSON_DECODE_ANY, &je);
  if (!j) return sg_errorf(e, SG_E_INVALID, "body is not valid JSON: %s at line %d column %d", je.text, je.line, je.column);
  json_decref(j);
  return 0;
}

static int decode_into(const char *topic, const rd_kafka_headers_t *h, const void *value, size_t len, int64_t ts,
                       struct sg_msg *m, struct sg_error *e) {
  size_t svc = strlen(SG_KAFKA_SVC);
  int command = !strncmp(topic, SG_KAFKA_SVC, svc) && topic[svc];
  int reply = !strncmp(topic, SG_KAFKA_REPLY, strlen(SG_KAFKA_REPLY));
  if (!command && !reply) return sg_errorf(e, SG_E_INVALID, "a record on topic %s is neither a command nor a reply", topic);
  if (check_json(value, len, e) < 0) return -1;
  m->body = strndup(value, len);
  char *saga_key = NULL, *signal = NULL;
  int bad = hdr_str(h, "message-id", &m->message_id, e) < 0 || hdr_str(h, "correlation-id", &m->correlation_id, e) < 0 ||
            hdr_str(h, "reply-to", &m->reply_to, e) < 0 || hdr_str(h, "type", &m->name, e) < 0 ||
            hdr_str(h, "saga-id", &m->saga_id, e) < 0 || hdr_str(h, "saga-type", &m->saga_type, e) < 0 ||
            hdr_str(h, "saga-status", &m->status, e) < 0 || hdr_int(h, "step", &m->step, e) < 0 ||
            hdr_int(h, "attempt", &m->attempt, e) < 0 || hdr_str(h, SG_HDR_SAGA_KEY, &saga_key, e) < 0 ||
            hdr_str(h, SG_HDR_SIGNAL, &signal, e) < 0;
  sg_msg_set_header(m, SG_HDR_SAGA_KEY, saga_key);
  sg_msg_set_header(m, SG_HDR_SIGNAL, signal);
  free(saga_key);
  free(signal);
  if (bad) return -1;
  /* trace context is best effort, never a reason to dead-letter */
  char *tp = sg_kafka_header_str(h, SG_HDR_TRACEPARENT);
  if (tp) {
    char *ts = sg_kafka_header_str(h, SG_HDR_TRACESTATE);
    sg_msg_set_header(m, SG_HDR_TRACEPARENT, tp);
    sg_msg_set_header(m, SG_HDR_TRACESTATE, ts);
    free(ts);
    free(tp);
  }
  if (ts > 0) m->created_at = ts;
  if (command) {
    free(m->status); /* a saga-status header does not make a command a reply */
    m->status = NULL;
    if (!m->message_id)
      return sg_errorf(e, SG_E_INVALID, "message has no message-id header; it is the idempotency key and is required");
    if (!m->name)
      return sg_errorf(e, SG_E_INVALID, "command on %s has no type header; set it to the command name", topic);
    m->kind = SG_MSG_COMMAND;
    m->service = sg_strdup(topic + svc);
    sg_msg_classify(m); /* saga.svc.saga, type signal */
    return 0;
  }
  if (!m->correlation_id)
    return sg_errorf(e, SG_E_INVALID, "reply has no correlation-id header; set it to the message-id of the command it answers");
  if (!m->status) return sg_errorf(e, SG_E_INVALID, "reply has no saga-status header; set it to \"ok\" or \"error\"");
  if (strcmp(m->status, "ok") && strcmp(m->status, "error"))
    return sg_errorf(e, SG_E_INVALID, "header saga-status is \"%s\"; it must be \"ok\" or \"error\"", m->status);
  if (!m->message_id) m->message_id = sg_asprintf("reply:%s", m->correlation_id);
  m->kind = SG_MSG_REPLY;
  free(m->reply_to); /* a reply's reply_to is where it went: this topic */
  m->reply_to = sg_strdup(topic);
  return 0;
}

int sg_kafka_decode(const char *topic, const rd_kafka_headers_t *h, const void *value, size_t len, int64_t timestamp_ms,
                    struct sg_msg *out, struct sg_error *e) {
  memset(out, 0, sizeof *out);
  if (decode_into(topic, h, value, len, timestamp_ms, out, e) < 0) {
    sg_msg_free(out);
    memset(out, 0, sizeof *out);
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* the transport */

struct consumer;

/* An assigned partition: the offsets delivered and not yet committed, in order. */
struct part {
  struct consumer *c;
  char *topic;
  int32_t partition;
  int64_t *off;                  /* ring of delivered offsets, increasing */
  unsigned char *done;           /* acked (or dead-lettered) */
  size_t head, n, cap;
  int64_t commit;                /* next offset to commit (-1 none); dirty when > committed */
  int64_t committed;
  int first;                     /* the next delivery is the first since the assignment */
  struct part *next;
};

/* One consumer group: a service's topic, or our reply topic. */
struct consumer {
  struct kafka_transport *t;
  char *topic, *group;
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;
  struct part *parts;            /* the current assignment */
  size_t held;                   /* deliveries from it not yet settled */
  int revoking;                  /* its partitions are being revoked: waiting for held to reach 0 */
  double revoke_deadline;        /* ev_now() after which they are given up anyway */
  struct consumer *next;
};

/* A delivery held until the engine acks or nacks it. */
struct pending {
  uint64_t tag;
  rd_kafka_message_t *rm;        /* the record as fetched (its headers and value, for the DLQ copy) */
  struct consumer *c;            /* where it came from */
  struct part *p;                /* NULL once its partition was revoked: the ack only frees it */
  int64_t offset;
  struct pending *next;          /* hash chain */
};

/* What a produce is for (the delivery report's opaque). */
struct sent {
  int64_t outbox_id;             /* engine outbox row, or 0 */
  uint64_t dlq_tag;              /* a dead-letter copy: the original's tag, settled on delivery */
};

struct kafka_transport {
  struct sg_transport base;      /* first: the engine holds a struct sg_transport * */
  struct ev_loop *loop;
  char *brokers;
  char *host_id;
  char *reply_topic;             /* saga.reply.<host_id> */
  int prefetch;
  int session_timeout_ms;
  int fetch_wait_ms;             /* fetch.wait.max.ms of the consumers */
  rd_kafka_t *producer;
  rd_kafka_queue_t *pq;          /* the producer's main queue */
  int pipefd[2];                 /* every queue's io event writes here */
  ev_io io;
  ev_idle drain;                 /* more events to serve */
  ev_timer commit_timer;
  ev_timer ready_timer;          /* on_ready: once up (again), and after failed deliveries */
  ev_timer revoke_timer;         /* while a consumer is revoking: gives its partitions up at the deadline */
  int up;                        /* brokers reachable (no all-brokers-down since the last success) */
  int throttled;                 /* consumers paused: prefetch deliveries held */
  int closing;                   /* op_close runs: callbacks start no watcher */
  int64_t max_body;              /* deliveries with a larger value are dead-lettered unread (0 = any) */
  struct consumer *consumers;
  uint64_t next_tag;
  struct pending **bucket;
  size_t nbucket, npending;
};

#define T(bt) ((struct kafka_transport *)(bt))

/* ---- pending deliveries ---- */

static struct pending **bucket_of(struct kafka_transport *t, uint64_t tag) { return &t->bucket[tag & (t->nbucket - 1)]; }

static struct pending *pending_take(struct kafka_transport *t, uint64_t tag) {
  for (struct pending **pp = bucket_of(t, tag); *pp; pp = &(*pp)->next) {
    if ((*pp)->tag == tag) {
      struct pending *p = *pp;
      *pp = p->next;
      t->npending--;
      if (p->c && p->c->held) p->c->held--;
      return p;
    }
  }
  return NULL;
}

static void pending_put(struct kafka_transport *t, struct pending *p) {
  struct pending **b = bucket_of(t, p->tag);
  p->next = *b;
  *b = p;
  t->npending++;
  if (p->c) p->c->held++;
}

static struct pending *pending_get(struct kafka_transport *t, uint64_t tag) {
  for (struct pending *p = *bucket_of(t, tag); p; p = p->next)
    if (p->tag == tag) return p;
  return NULL;
}

static void pending_free(struct pending *p) {
  if (!p) return;
  if (p->rm) rd_kafka_message_destroy(p->rm);
  free(p);
}

/* ---- partitions and offsets ---- */

static struct part *part_find(struct consumer *c, const char *topic, int32_t partition) {
  for (struct part *p = c->parts; p; p = p->next)
    if (p->partition == partition && !strcmp(p->topic, topic)) return p;
  return NULL;
}

static void part_push(struct part *p, int64_t offset) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 64;
    int64_t *off = sg_xmalloc(cap * sizeof *off);
    unsigned char *done = sg_xmalloc(cap);
    for (size_t i = 0; i < p->n; i++) {
      off[i] = p->off[(p->head + i) % p->cap];
      done[i] = p->done[(p->head + i) % p->cap];
    }
    free(p->off);
    free(p->done);
    p->off = off;
    p->done = done;
    p->cap = cap;
    p->head = 0;
  }
  size_t i = (p->head + p->n) % p->cap;
  p->off[i] = offset;
  p->done[i] = 0;
  p->n++;
}

/* Marks offset done; the committable offset moves past the longest done prefix. */
static void part_done(struct kafka_transport *t, struct part *p, int64_t offset) {
  size_t lo = 0, hi = p->n;
  while (lo < hi) { /* the ring is sorted: binary search */
    size_t mid = (lo + hi) / 2;
    if (p->off[(p->head + mid) % p->cap] < offset) lo = mid + 1;
    else hi = mid;
  }
  if (lo < p->n && p->off[(p->head + lo) % p->cap] == offset) p->done[(p->head + lo) % p->cap] = 1;
  while (p->n && p->done[p->head]) {
    p->commit = p->off[p->head] + 1;
    p->head = (p->head + 1) % p->cap;
    p->n--;
  }
  if (!t->closing && p->commit > p->committed && !ev_is_active(&t->commit_timer)) {
    ev_timer_set(&t->commit_timer, COMMIT_DELAY, 0.);
    ev_timer_start(t->loop, &t->commit_timer);
  }
}

static void part_free(struct part *p) {
  free(p->topic);
  free(p->off);
  free(p->done);
  free(p);
}

/* Commits (asynchronously) what c's partitions have acked since the last commit. */
static void consumer_commit(struct consumer *c) {
  rd_kafka_topic_partition_list_t *l = NULL;
  for (struct part *p = c->parts; p; p = p->next) {
    if (p->commit <= p->committed) continue;
    if (!l) l = rd_kafka_topic_partition_list_new(4);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->commit;
    p->committed = p->commit;
  }
  if (!l) return;
  rd_kafka_resp_err_t err = rd_kafka_commit(c->rk, l, 1);
  if (err) sg_warn("kafka: committing offsets of group %s: %s (committed again with the next ack)", c->group, rd_kafka_err2str(err));
  rd_kafka_topic_partition_list_destroy(l);
}

static void commit_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop; (void)revents;
  struct kafka_transport *t = w->data;
  for (struct consumer *c = t->consumers; c; c = c->next) consumer_commit(c);
}

/* The partitions of c are gone (revoked, or the consumer closes): acks still to come only free their
 * delivery, and the next owner of each partition starts at its last commit. */
static void consumer_drop_parts(struct consumer *c) {
  struct kafka_transport *t = c->t;
  consumer_commit(c);
  for (size_t b = 0; b < t->nbucket; b++)
    for (struct pending *q = t->bucket[b]; q; q = q->next)
      if (q->c == c) q->p = NULL;
  while (c->parts) {
    struct part *p = c->parts;
    c->parts = p->next;
    part_free(p);
  }
}

/* ---- readiness ---- */

static void set_up(struct kafka_transport *t) {
  if (t->up || t->closing) return;
  t->up = 1;
  t->base.connects++;
  sg_info("kafka: connected to %s", t->brokers);
  /* anything the brokers refused while they were down goes out again */
  if (!ev_is_active(&t->ready_timer)) {
    ev_timer_set(&t->ready_timer, 0., 0.);
    ev_timer_start(t->loop, &t->ready_timer);
  }
}

static void op_set_max_body(struct sg_transport *bt, int64_t bytes) { T(bt)->max_body = bytes; }

static void ready_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop; (void)revents;
  struct kafka_transport *t = w->data;
  if (t->base.ev.on_ready) t->base.ev.on_ready(t->base.ev.ud);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  struct kafka_transport *t = opaque;
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    if (t->up) sg_warn("kafka: %s: %s; waiting for a broker", rd_kafka_name(rk), reason);
    t->up = 0;
    return;
  }
  if (rd_kafka_fatal_error(rk, NULL, 0)) {
    sg_err("kafka: %s: fatal error: %s", rd_kafka_name(rk), reason);
    return;
  }
  sg_debug("kafka: %s: %s (%s)", rd_kafka_name(rk), reason, rd_kafka_err2name(err));
}

static void settle_delivery(struct kafka_transport *t, uint64_t tag);

/* ---- producing ---- */

static int produce(struct kafka_transport *t, struct sg_kafka_out *o, struct sent *s, struct sg_error *e) {
  rd_kafka_resp_err_t err = rd_kafka_producev(
      t->producer, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_KEY(o->key, o->key_len),
      RD_KAFKA_V_VALUE((void *)o->value, o->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADERS(o->hdrs), RD_KAFKA_V_TIMESTAMP(o->timestamp), RD_KAFKA_V_OPAQUE(s), RD_KAFKA_V_END);
  if (err) {
    rd_kafka_headers_destroy(o->hdrs);
    free(s);
    return sg_errorf(e, SG_E_INTERNAL, "kafka: producing to %s: %s", o->topic, rd_kafka_err2str(err));
  }
  return 0;
}

/* Copies a delivery to <topic>.dlq with the reason; the original is settled once the copy is delivered. */
static int dead_letter(struct kafka_transport *t, struct pending *p, const char *reason) {
  rd_kafka_message_t *rm = p->rm;
  const char *topic = rd_kafka_topic_name(rm->rkt);
  struct sg_kafka_out o;
  memset(&o, 0, sizeof o);
  snprintf(o.topic, sizeof o.topic, "%s" SG_KAFKA_DLQ_SUFFIX, topic);
  o.key = rm->key;
  o.key_len = rm->key_len;
  o.value = rm->payload;
  o.len = rm->len;
  rd_kafka_headers_t *h = NULL;
  o.hdrs = rd_kafka_message_headers(rm, &h) == RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_headers_copy(h) : rd_kafka_headers_new(4);
  char part[24], off[24];
  snprintf(part, sizeof part, "%d", (int)rm->partition);
  snprintf(off, sizeof off, "%lld", (long long)rm->offset);
  rd_kafka_header_add(o.hdrs, "x-saga-error", -1, reason, -1);
  rd_kafka_header_add(o.hdrs, "x-saga-original-topic", -1, topic, -1);
  rd_kafka_header_add(o.hdrs, "x-saga-original-partition", -1, part, -1);
  rd_kafka_header_add(o.hdrs, "x-saga-original-offset", -1, off, -1);
  struct sent *s = sg_xcalloc(1, sizeof *s);
  s->dlq_tag = p->tag;
  struct sg_error e = {{0}, 0};
  if (produce(t, &o, s, &e) < 0) {
    sg_err("%s; the message stays unacked (it comes again after a restart)", e.msg);
    return -1;
  }
  sg_info("kafka: dead-lettered %s[%d]@%lld to %s: %s", topic, (int)rm->partition, (long long)rm->offset, o.topic, reason);
  return 0;
}

/* Dead-letters a held delivery; it stays held until the copy is delivered (dr_cb settles it). When
 * the copy cannot even be queued, the delivery is dropped unacked: it comes again after a restart. */
static void nack_pending(struct kafka_transport *t, struct pending *p, const char *reason) {
  if (dead_letter(t, p, reason) < 0) pending_free(pending_take(t, p->tag));
}

/* Delivery report (served by rd_kafka_poll on the producer, in the loop thread). */
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rm, void *opaque) {
  (void)rk;
  struct kafka_transport *t = opaque;
  struct sent *s = rm->_private;
  if (!s) return;
  if (!rm->err) set_up(t);
  if (s->dlq_tag) {
    struct pending *p = pending_get(t, s->dlq_tag);
    if (p && rm->err) {
      /* the copy was refused: the original is held until a copy is safe */
      sg_warn("kafka: dead-letter copy to %s refused: %s; producing it again", rd_kafka_topic_name(rm->rkt),
              rd_kafka_err2str(rm->err));
      char *r = NULL;
      rd_kafka_headers_t *h = NULL;
      if (rd_kafka_message_headers(rm, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) r = sg_kafka_header_str(h, "x-saga-error");
      if (!t->closing) nack_pending(t, p, r ? r : "dead-lettered");
      free(r);
    } else if (p) {
      settle_delivery(t, p->tag);
    }
  } else if (s->outbox_id) {
    if (!rm->err) {
      if (t->base.ev.on_confirm) t->base.ev.on_confirm(t->base.ev.ud, s->outbox_id);
    } else {
      if (t->base.ev.on_reject) t->base.ev.on_reject(t->base.ev.ud, s->outbox_id, rd_kafka_err2str(rm->err));
      if (!t->closing && !ev_is_active(&t->ready_timer)) {
        ev_timer_set(&t->ready_timer, REPUBLISH_DELAY, 0.);
        ev_timer_start(t->loop, &t->ready_timer);
      }
    }
  }
  free(s);
}

/* ---- consuming ---- */

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque) {
  struct consumer *c = opaque;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    consumer_drop_parts(c);
    for (int i = 0; i < parts->cnt; i++) {
      struct part *p = sg_xcalloc(1, sizeof *p);
      p->c = c;
      p->topic = sg_strdup(parts->elems[i].topic);
      p->partition = parts->elems[i].partition;
      p->commit = p->committed = -1;
      p->first = 1;
      p->next = c->parts;
      c->parts = p;
    }
    rd_kafka_assign(rk, parts);
    sg_info("kafka: group %s: %d partition%s of %s assigned", c->group, parts->cnt, parts->cnt == 1 ? "" : "s", c->topic);
    set_up(c->t);
  } else if (c->held && !c->t->closing) {
    /* the rebalance waits until what this consumer holds is settled (its effect committed and its offset
     * with it), so the next owner does not run a command whose effect is on its way here */
    sg_info("kafka: group %s: partitions of %s revoked (a rebalance); giving them up once the %zu deliveries "
            "held are settled", c->group, c->topic, c->held);
    c->revoking = 1;
    c->revoke_deadline = ev_now(c->t->loop) + REVOKE_WAIT;
    if (!ev_is_active(&c->t->revoke_timer)) ev_timer_start(c->t->loop, &c->t->revoke_timer);
  } else {
    sg_info("kafka: group %s: partitions of %s revoked (a rebalance)", c->group, c->topic);
    consumer_drop_parts(c);
    rd_kafka_assign(rk, NULL);
  }
}

/* A revoking consumer gives its partitions up once it holds nothing (or at its deadline). */
static void consumer_try_revoke(struct consumer *c) {
  if (!c->revoking || (c->held && ev_now(c->t->loop) < c->revoke_deadline)) return;
  if (c->held)
    sg_warn("kafka: group %s: %zu deliveries still unsettled after %.0f s; giving the partitions up anyway (they "
            "come again to the next owner)", c->group, c->held, REVOKE_WAIT);
  c->revoking = 0;
  consumer_drop_parts(c);
  rd_kafka_assign(c->rk, NULL);
}

static void revoke_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  struct kafka_transport *t = w->data;
  int any = 0;
  for (struct consumer *c = t->consumers; c; c = c->next) {
    consumer_try_revoke(c);
    any |= c->revoking;
  }
  if (!any) ev_timer_stop(loop, w);
}

static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets, void *opaque) {
  (void)rk; (void)offsets;
  struct consumer *c = opaque;
  if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
    sg_warn("kafka: group %s: offset commit failed: %s (those messages may come again)", c->group, rd_kafka_err2str(err));
}

/* One fetched record: held, then handed to the engine (or dead-lettered when it is malformed). */
static void consumed(struct kafka_transport *t, struct consumer *c, rd_kafka_message_t *rm) {
  if (rm->err) {
    if (rm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
      sg_warn("kafka: group %s: %s", c->group, rd_kafka_message_errstr(rm));
    rd_kafka_message_destroy(rm);
    return;
  }
  const char *topic = rd_kafka_topic_name(rm->rkt);
  struct part *pt = c->revoking ? NULL : part_find(c, topic, rm->partition);
  if (!pt) { /* fetched before (or while) a revoke was served: the next owner reads it */
    rd_kafka_message_destroy(rm);
    return;
  }
  int redelivered = pt->first; /* may have been in flight with the previous owner (a guess: Kafka has no flag) */
  pt->first = 0;
  part_push(pt, rm->offset);
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->tag = ++t->next_tag;
  p->rm = rm;
  p->c = c;
  p->p = pt;
  p->offset = rm->offset;
  pending_put(t, p);
  uint64_t tag = p->tag;
  struct sg_error e = {{0}, 0};
  char why[sizeof e.msg];
  rd_kafka_headers_t *h = NULL;
  if (rd_kafka_message_headers(rm, &h) != RD_KAFKA_RESP_ERR_NO_ERROR) h = NULL;
  struct sg_msg m;
  if (t->max_body > 0 && (int64_t)rm->len > t->max_body) {
    snprintf(why, sizeof why, "message body is %zu bytes, over this host's limit of %lld bytes (--max-payload)", rm->len,
             (long long)t->max_body);
  } else if (sg_kafka_decode(topic, h, rm->payload, rm->len, rd_kafka_message_timestamp(rm, NULL), &m, &e) == 0) {
    t->base.ev.on_message(t->base.ev.ud, &m, tag, redelivered);
    sg_msg_free(&m);
    return;
  } else {
    snprintf(why, sizeof why, "%s", e.msg);
  }
  /* the engine can do nothing with it: dead-lettered here, with what is wrong */
  sg_warn("kafka: record %s[%d]@%lld refused: %s", topic, (int)rm->partition, (long long)rm->offset, why);
  nack_pending(t, p, why);
}

static void settle_delivery(struct kafka_transport *t, uint64_t tag) {
  struct pending *p = pending_take(t, tag);
  if (!p) {
    sg_debug("kafka: ack of unknown delivery %llu ignored", (unsigned long long)tag);
    return;
  }
  struct consumer *c = p->c;
  if (p->p) part_done(t, p->p, p->offset);
  pending_free(p);
  if (!t->closing && t->throttled && t->npending < (size_t)t->prefetch) ev_idle_start(t->loop, &t->drain);
  if (c && c->revoking && !t->closing) consumer_try_revoke(c);
}

/* Serves every queue without blocking; returns whether events may remain. */
static int serve(struct kafka_transport *t) {
  int budget = DRAIN_MAX;
  double until = ev_time() + DRAIN_BUDGET;
  while (budget > 0 && rd_kafka_poll(t->producer, 0) > 0) budget--;
  t->throttled = 0;
  for (struct consumer *c = t->consumers; c && budget > 0; c = c->next) {
    while (budget > 0) {
      if (ev_time() > until) return 1; /* the rest in the next loop iteration (ev_idle) */
      if (t->npending >= (size_t)t->prefetch) {
        t->throttled = 1; /* resumed by the acks (settle_delivery) */
        break;
      }
      rd_kafka_message_t *rm = rd_kafka_consumer_poll(c->rk, 0);
      if (!rm) break;
      budget--;
      consumed(t, c, rm);
    }
  }
  return budget <= 0;
}

static void drain_pipe(int fd) {
  char buf[256];
  while (read(fd, buf, sizeof buf) > 0) {}
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  struct kafka_transport *t = w->data;
  drain_pipe(t->pipefd[0]);
  if (serve(t)) ev_idle_start(loop, &t->drain);
}

static void drain_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  (void)revents;
  struct kafka_transport *t = w->data;
  if (!serve(t)) ev_idle_stop(loop, w);
}

/* ---- configuration ---- */

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, struct sg_error *e) {
  char errstr[256];
  if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
    return sg_errorf(e, SG_E_INVALID, "kafka: %s=%s: %s", k, v, errstr);
  return 0;
}

static rd_kafka_conf_t *base_conf(struct kafka_transport *t, struct sg_error *e) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char id[300];
  snprintf(id, sizeof id, "sagahost-%s", t->host_id);
  if (conf_set(conf, "bootstrap.servers", t->brokers, e) < 0 || conf_set(conf, "client.id", id, e) < 0 ||
      conf_set(conf, "reconnect.backoff.ms", "250", e) < 0 || conf_set(conf, "reconnect.backoff.max.ms", "10000", e) < 0) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_error_cb(conf, error_cb);
  rd_kafka_conf_set_opaque(conf, t);
  return conf;
}

static void queue_events(struct kafka_transport *t, rd_kafka_queue_t *q) {
  rd_kafka_queue_io_event_enable(q, t->pipefd[1], "1", 1);
}

static struct consumer *consumer_new(struct kafka_transport *t, const char *topic, struct sg_error *e) {
  rd_kafka_conf_t *conf = base_conf(t, e);
  if (!conf) return NULL;
  char sto[24], fw[24];
  snprintf(sto, sizeof sto, "%d", t->session_timeout_ms);
  snprintf(fw, sizeof fw, "%d", t->fetch_wait_ms);
  /* the group is the topic: every process that handles a service shares its partitions */
  if (conf_set(conf, "group.id", topic, e) < 0 || conf_set(conf, "enable.auto.commit", "false", e) < 0 ||
      conf_set(conf, "enable.auto.offset.store", "false", e) < 0 || conf_set(conf, "auto.offset.reset", "earliest", e) < 0 ||
      conf_set(conf, "allow.auto.create.topics", "true", e) < 0 || conf_set(conf, "session.timeout.ms", sto, e) < 0 ||
      conf_set(conf, "heartbeat.interval.ms", "1000", e) < 0 ||
      conf_set(conf, "fetch.wait.max.ms", fw, e) < 0 || conf_set(conf, "topic.metadata.refresh.interval.ms", "5000", e) < 0) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  struct consumer *c = sg_xcalloc(1, sizeof *c);
  c->t = t;
  c->topic = sg_strdup(topic);
  c->group = sg_strdup(topic);
  rd_kafka_conf_set_opaque(conf, c);
  rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
  rd_kafka_conf_set_offset_commit_cb(conf, offset_commit_cb);
  rd_kafka_conf_set_error_cb(conf, NULL);
  char errstr[256];
  c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
  if (!c->rk) {
    rd_kafka_conf_destroy(conf);
    free(c->topic);
    free(c->group);
    free(c);
    sg_errorf(e, SG_E_INTERNAL, "kafka: consumer for %s: %s", topic, errstr);
    return NULL;
  }
  rd_kafka_poll_set_consumer(c->rk);
  c->q = rd_kafka_queue_get_consumer(c->rk);
  queue_events(t, c->q);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (err) sg_err("kafka: subscribing to %s: %s", topic, rd_kafka_err2str(err));
  c->next = t->consumers;
  t->consumers = c;
  ev_idle_start(t->loop, &t->drain);
  return c;
}

static void consumer_close(struct consumer *c) {
  consumer_drop_parts(c);
  /* leaves the group at once (its partitions go to the others); bounded by librdkafka's timeouts */
  rd_kafka_consumer_close(c->rk);
  rd_kafka_queue_destroy(c->q);
  rd_kafka_destroy(c->rk);
  free(c->topic);
  free(c->group);
  free(c);
}

/* ---- the ops ---- */

static int check_service_name(const char *service, struct sg_error *e) {
  if (!service || !topic_name_ok(service, strlen(service)) || strchr(service, '.') || strlen(service) > 200)
    return sg_errorf(e, SG_E_INVALID, "kafka: bad service name '%s' (letters, digits, _ and -, at most 200 bytes)",
                     service ? service : "");
  return 0;
}

static int op_subscribe(struct sg_transport *bt, const char *service, struct sg_error *e) {
  struct kafka_transport *t = T(bt);
  if (check_service_name(service, e) < 0) return -1;
  char topic[300];
  snprintf(topic, sizeof topic, SG_KAFKA_SVC "%s", service);
  for (struct consumer *c = t->consumers; c; c = c->next)
    if (!strcmp(c->topic, topic)) return 0;
  return consumer_new(t, topic, e) ? 0 : -1;
}

/* Topics come into being on first use (the brokers' auto.create.topics.enable, or made by the operator:
 * docs/protocol.md); nothing to declare. */
static int op_declare_service(struct sg_transport *bt, const char *service, struct sg_error *e) {
  (void)bt;
  return check_service_name(service, e);
}

static int op_publish(struct sg_transport *bt, const struct sg_msg *m, struct sg_error *e) {
  struct kafka_transport *t = T(bt);
  struct sg_kafka_out o;
  if (sg_kafka_encode(m, &o, e) < 0) return -1;
  struct sent *s = sg_xcalloc(1, sizeof *s);
  s->outbox_id = m->outbox_id;
  return produce(t, &o, s, e);
}

static void op_ack(struct sg_transport *bt, uint64_t tag) { settle_delivery(T(bt), tag); }

static void op_nack(struct sg_transport *bt, uint64_t tag, const struct sg_msg *m, const char *reason) {
  (void)m;
  struct kafka_transport *t = T(bt);
  struct pending *p = pending_get(t, tag);
  if (!p) {
    sg_debug("kafka: nack of unknown delivery %llu ignored", (unsigned long long)tag);
    return;
  }
  nack_pending(t, p, reason ? reason : "rejected");
}

static const char *op_reply_queue(struct sg_transport *bt) { return T(bt)->reply_topic; }

static int op_connected(struct sg_transport *bt) { return T(bt)->up; }

static void op_close(struct sg_transport *bt) {
  struct kafka_transport *t = T(bt);
  t->closing = 1;
  ev_io_stop(t->loop, &t->io);
  ev_idle_stop(t->loop, &t->drain);
  ev_timer_stop(t->loop, &t->commit_timer);
  ev_timer_stop(t->loop, &t->ready_timer);
  ev_timer_stop(t->loop, &t->revoke_timer);
  for (size_t b = 0; b < t->nbucket; b++)
    for (struct pending *q = t->bucket[b]; q; q = q->next) q->c = NULL;
  while (t->consumers) {
    struct consumer *c = t->consumers;
    t->consumers = c->next;
    consumer_close(c);
  }
  if (t->producer) {
    /* what is queued gets a short chance to go out; the outbox re-sends the rest after a restart */
    rd_kafka_flush(t->producer, 2000);
    rd_kafka_queue_destroy(t->pq);
    /* delivery reports still queued carry our opaques: purge serves none, so free them by polling */
    rd_kafka_purge(t->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    t->base.ev.on_confirm = NULL;
    t->base.ev.on_reject = NULL;
    while (rd_kafka_poll(t->producer, 0) > 0) {}
    rd_kafka_destroy(t->producer);
  }
  for (size_t b = 0; b < t->nbucket; b++) {
    while (t->bucket[b]) {
      struct pending *p = t->bucket[b];
      t->bucket[b] = p->next;
      pending_free(p);
    }
  }
  if (t->pipefd[0] >= 0) close(t->pipefd[0]);
  if (t->pipefd[1] >= 0) close(t->pipefd[1]);
  free(t->bucket);
  free(t->brokers);
  free(t->host_id);
  free(t->reply_topic);
  free(t);
}

/* The engine dropped every delivery it held (fenced): each partition is sought back to its oldest
 * delivered and unsettled record, so they all come again (librdkafka drops what it had fetched past
 * that), and the outbox is asked for again. Acks of the old deliveries find nothing and are ignored. */
static void op_reset(struct sg_transport *bt, const char *why) {
  struct kafka_transport *t = T(bt);
  sg_warn("kafka: %s; the %zu deliveries held are fetched again", why, t->npending);
  for (struct consumer *c = t->consumers; c; c = c->next) {
    rd_kafka_topic_partition_list_t *l = NULL;
    for (struct part *p = c->parts; p; p = p->next) {
      if (!p->n) continue;
      if (!l) l = rd_kafka_topic_partition_list_new(4);
      rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->off[p->head];
      p->n = p->head = 0;
      p->first = 1;
    }
    if (!l) continue;
    rd_kafka_error_t *err = rd_kafka_seek_partitions(c->rk, l, 0 /* asynchronous */);
    if (err) {
      sg_err("kafka: group %s: seeking back after a reset: %s (the records come again after a restart)", c->group,
             rd_kafka_error_string(err));
      rd_kafka_error_destroy(err);
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  for (size_t b = 0; b < t->nbucket; b++) {
    while (t->bucket[b]) {
      struct pending *p = t->bucket[b];
      t->bucket[b] = p->next;
      pending_free(p);
    }
  }
  t->npending = 0;
  for (struct consumer *c = t->consumers; c; c = c->next) {
    c->held = 0;
    consumer_try_revoke(c);
  }
  t->base.connects++;
  if (!ev_is_active(&t->ready_timer)) {
    ev_timer_set(&t->ready_timer, 0., 0.);
    ev_timer_start(t->loop, &t->ready_timer);
  }
  ev_idle_start(t->loop, &t->drain);
}

static const struct sg_transport_ops kafka_ops = {
  .name = "kafka",
  .subscribe = op_subscribe,
  .declare_service = op_declare_service,
  .publish = op_publish,
  .ack = op_ack,
  .nack = op_nack,
  .reply_queue = op_reply_queue,
  .connected = op_connected,
  .close = op_close,
  .set_max_body = op_set_max_body,
  .reset = op_reset,
};

/* ---- construction ---- */

static int parse_options(struct kafka_transport *t, char *brokers, struct sg_error *e) {
  char *q = strchr(brokers, '?');
  if (!q) return 0;
  *q++ = 0;
  for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
    char *v = strchr(kv, '=');
    if (!v) return sg_errorf(e, SG_E_INVALID, "kafka brokers: option '%s' needs a value (name=value)", kv);
    *v++ = 0;
    char *end;
    long n = strtol(v, &end, 10);
    int num = *v && !*end;
    if (!strcmp(kv, "prefetch") && num && n > 0 && n <= 100000) t->prefetch = (int)n;
    else if (!strcmp(kv, "session_timeout_ms") && num && n >= 1000 && n <= 300000) t->session_timeout_ms = (int)n;
    else if (!strcmp(kv, "fetch_wait_ms") && num && n >= 1 && n <= 10000) t->fetch_wait_ms = (int)n;
    else return sg_errorf(e, SG_E_INVALID, "kafka brokers: unknown option or bad value '%s=%s' (prefetch, "
                          "session_timeout_ms, fetch_wait_ms)", kv, v);
  }
  return 0;
}

struct sg_transport *sg_transport_kafka_new(struct ev_loop *loop, const char *brokers, const char *host_id,
                                            const struct sg_transport_events *ev, struct sg_error *e) {
  if (!host_id || !*host_id) {
    sg_errorf(e, SG_E_INVALID, "kafka: a host id is needed to name the reply topic");
    return NULL;
  }
  struct kafka_transport *t = sg_xcalloc(1, sizeof *t);
  t->base.ops = &kafka_ops;
  t->base.ev = *ev;
  t->loop = loop;
  t->pipefd[0] = t->pipefd[1] = -1;
  t->prefetch = 256;
  t->session_timeout_ms = 10000;
  t->fetch_wait_ms = 100;
  t->host_id = sg_strdup(host_id);
  t->reply_topic = sg_asprintf(SG_KAFKA_REPLY "%s", host_id);
  t->nbucket = 1024;
  t->bucket = sg_xcalloc(t->nbucket, sizeof *t->bucket);
  t->brokers = sg_strdup(brokers ? brokers : "");
  ev_idle_init(&t->drain, drain_cb);
  t->drain.data = t;
  ev_timer_init(&t->commit_timer, commit_cb, COMMIT_DELAY, 0.);
  t->commit_timer.data = t;
  ev_timer_init(&t->ready_timer, ready_cb, 0., 0.);
  t->ready_timer.data = t;
  ev_timer_init(&t->revoke_timer, revoke_cb, 0.1, 0.1);
  t->revoke_timer.data = t;
  if (parse_options(t, t->brokers, e) < 0) goto fail;
  if (!*t->brokers) {
    sg_errorf(e, SG_E_INVALID, "kafka: no brokers given (host:port[,host:port...])");
    goto fail;
  }
  if (!topic_name_ok(t->reply_topic, strlen(t->reply_topic))) {
    sg_errorf(e, SG_E_INVALID, "kafka: host id '%s' cannot name a topic (letters, digits, . _ -)", host_id);
    goto fail;
  }
  if (pipe(t->pipefd) < 0) {
    sg_errorf(e, SG_E_INTERNAL, "kafka: pipe: %s", strerror(errno));
    goto fail;
  }
  for (int i = 0; i < 2; i++) {
    fcntl(t->pipefd[i], F_SETFL, fcntl(t->pipefd[i], F_GETFL) | O_NONBLOCK);
    fcntl(t->pipefd[i], F_SETFD, FD_CLOEXEC);
  }
  rd_kafka_conf_t *conf = base_conf(t, e);
  if (!conf) goto fail;
  /* idempotent: retries after a broker failure neither duplicate nor reorder within a partition */
  if (conf_set(conf, "enable.idempotence", "true", e) < 0 || conf_set(conf, "linger.ms", "2", e) < 0 ||
      conf_set(conf, "message.timeout.ms", "30000", e) < 0) {
    rd_kafka_conf_destroy(conf);
    goto fail;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
  char errstr[256];
  t->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!t->producer) {
    rd_kafka_conf_destroy(conf);
    sg_errorf(e, SG_E_INTERNAL, "kafka: producer: %s", errstr);
    goto fail;
  }
  t->pq = rd_kafka_queue_get_main(t->producer);
  queue_events(t, t->pq);
  ev_io_init(&t->io, io_cb, t->pipefd[0], EV_READ);
  t->io.data = t;
  ev_io_start(loop, &t->io);
  /* on_ready (the engine hands over its outbox) once the brokers answer: the first assignment or the
   * first delivered record (set_up) */
  if (!consumer_new(t, t->reply_topic, e)) goto fail;
  return &t->base;
fail:
  op_close(&t->base);
  return NULL;
}
