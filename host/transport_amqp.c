/* transport_amqp: the transport over RabbitMQ (AMQP 0-9-1, librabbitmq-c 0.11) inside the libev loop.
 *
 * librabbitmq has no event loop and no confirm helper, so this file supplies both: the socket sits in
 * an ev_io and frames are drained without blocking; publisher confirms are matched to outbox ids
 * through a FIFO of publish sequence numbers; heartbeats are sent and checked from an ev_timer.
 * Connecting (TCP, login, declares) is synchronous in librabbitmq, so every step has a short timeout
 * and runs from a timer callback, one try at a time with exponential backoff.
 *
 * The wire format is amqp_envelope.c; the contract is docs/protocol.md.
 *
 * Options ride on the URL's query string (stripped before amqp_parse_url):
 *   prefetch=N (256)  heartbeat=S (10)  timeout_ms=N (2000, per connect step)
 *   cacert=PATH and verify=1 (amqps: check the broker's certificate and host name; off by default)
 *
 * Ownership: the transport owns every delivery until the engine acks or nacks it (raw copy kept for
 * dead-lettering); sg_msg passed to on_message is borrowed for the callback only. */
#include "amqp_envelope.h"
#include "transport.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CHAN 1                   /* our one channel */
#define BACKOFF_MIN 0.25         /* seconds before the first reconnect */
#define BACKOFF_MAX 10.0         /* cap of the doubling backoff */
#define DRAIN_MAX 2048           /* frames per drain before the loop gets a turn (group commit runs) */
#define DRAIN_BUDGET 0.01        /* seconds of handling per drain, likewise: with slow handlers a whole
                                  * prefetch window would otherwise be handled before the first commit,
                                  * holding back every reply (and ack) of the window until the last one */
#define GEN_SHIFT 48             /* our tag = connection generation << 48 | broker delivery tag */
#define TAG_MASK ((UINT64_C(1) << GEN_SHIFT) - 1)

/* A received message kept as it came, until ack/nack: nack re-publishes it to the DLQ. */
struct raw_msg {
  amqp_pool_t pool;              /* owns every pointer below */
  amqp_basic_properties_t props; /* deep copy */
  amqp_bytes_t exchange;         /* the exchange it was published to */
  amqp_bytes_t routing_key;      /* its routing key */
  amqp_bytes_t queue;            /* the queue it came from (our consumer tag is the queue name) */
  amqp_bytes_t body;             /* the body, assembled from its body frames */
  size_t body_got;               /* bytes of body received so far */
  uint64_t body_skip;            /* ASM_SKIP: bytes of an oversized body still to drop */
  uint64_t delivery_tag;         /* the broker's tag on this connection */
  int redelivered;               /* basic.deliver redelivered flag */
  uint16_t reply_code;           /* basic.return: why it came back */
};

/* A message being received, then (deliveries) held until the engine acks or nacks it. */
struct pending {
  uint64_t tag;                  /* the tag the engine was given */
  struct pending *next;          /* hash chain */
  struct raw_msg raw;            /* the message */
};

/* A message published and not yet confirmed by the broker. */
struct inflight {
  uint64_t seq;                  /* publish sequence number on the channel (confirm delivery tag) */
  int64_t outbox_id;             /* engine's outbox row; 0 for our own dead-letter copies */
  uint64_t ack_tag;              /* dead-letter copy: the original's delivery tag, acked on confirm */
  char *message_id;              /* to match a basic.return, which carries no sequence number */
  char *returned;                /* basic.return reason (malloc'd): the following ack is a reject */
  int settled;                   /* confirmed out of order; popped when it reaches the head */
};

/* A service we send to (declare) or consume (subscribe); redeclared after every reconnect. */
struct service {
  char *name;                    /* "inventory" */
  int consume;                   /* subscribe(): we consume saga.svc.<name> */
  unsigned declared_gen;         /* connection generation it was last declared on (skip redeclares) */
  struct service *next;          /* list */
};

/* What the frame reader is in the middle of. */
enum asm_state { ASM_IDLE, ASM_HEADER, ASM_BODY, ASM_SKIP /* a body too large to read: its frames are dropped */ };
enum asm_kind { ASM_DELIVER, ASM_RETURN };

struct amqp_transport {
  struct sg_transport base;      /* first: the engine holds a struct sg_transport * */
  struct ev_loop *loop;          /* the host's loop */
  char *url_buf;                 /* URL text that info points into (amqp_parse_url works in place) */
  struct amqp_connection_info info; /* host, port, credentials, vhost, ssl */
  char *cacert;                  /* amqps: CA file, or NULL */
  int verify;                    /* amqps: verify peer and host name */
  int prefetch;                  /* basic.qos prefetch count */
  int heartbeat;                 /* requested heartbeat, seconds */
  int timeout_ms;                /* limit of each synchronous connect step */
  char *reply_queue;             /* saga.reply.<host_id> */
  char *conn_name;               /* connection_name client property, shown by rabbitmqctl */

  amqp_connection_state_t conn;  /* current connection, or NULL; destroyed lazily (see conn_lost) */
  int up;                        /* connected, topology declared, consumers running */
  unsigned gen;                  /* connection generation, bumped on every connect */
  int hb;                        /* negotiated heartbeat, seconds (0 = off) */
  double last_rx;                /* ev_now() when the socket last had data */
  double backoff;                /* next reconnect delay */
  ev_io io;                      /* socket readable */
  ev_timer hb_timer;             /* send heartbeats, detect missing ones */
  ev_timer retry;                /* (re)connect attempts */
  ev_idle drain;                 /* finish draining frames librabbitmq already buffered */
  ev_prepare uncork;             /* ends the loop iteration's burst of sends (see cork) */
  int corked;                    /* TCP_CORK is set on the socket */

  struct service *services;      /* declared/subscribed services */

  enum asm_state asm_state;      /* frame reader state */
  enum asm_kind asm_kind;        /* what the content frames belong to */
  struct pending *asm_msg;       /* the message being assembled */
  int64_t max_body;              /* deliveries whose header declares a larger body are refused unread (0 = any) */

  struct inflight *fly;          /* ring of unconfirmed publishes, in seq order */
  size_t fly_head, fly_n, fly_cap; /* ring start, length, capacity */
  uint64_t next_seq;             /* seq of the next publish (confirm.select starts at 1) */

  struct pending **bucket;       /* unacked deliveries by tag */
  size_t nbucket;                /* power of two */
  size_t npending;               /* deliveries held */
};

#define T(bt) ((struct amqp_transport *)(bt))

static void conn_lost(struct amqp_transport *t, const char *why);
static void schedule_drain(struct amqp_transport *t);

/* A loop iteration's sends as few segments: librabbitmq writes every frame of a publish and every ack
 * with a send() of its own, each a TCP segment the broker must take in on its own. The first publish
 * or ack of an iteration sets TCP_CORK on the socket; a prepare watcher of the lowest priority takes it
 * off, and the kernel sends what was gathered in full segments. That watcher is active for as long as
 * the connection is up: one started from inside the prepare phase (the engine's commit runs there)
 * would only run in the next iteration, after the loop has waited. At the lowest priority it runs
 * after the engine's prepare, before the loop waits. Nothing waits for an answer while corked: every
 * call that does (the declares, the close) uncorks first. */
static void uncork(struct amqp_transport *t) {
  if (!t->corked) return;
  t->corked = 0;
  int fd = t->conn ? amqp_get_sockfd(t->conn) : -1, off = 0;
  if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
}

static void cork(struct amqp_transport *t) {
  if (t->corked || !t->up) return;
  int fd = amqp_get_sockfd(t->conn), on = 1;
  if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) < 0) return;
  t->corked = 1;
}

static void uncork_cb(struct ev_loop *loop, ev_prepare *w, int revents) { uncork(w->data); }

/* ---- raw messages and the pending table ---- */

static struct pending *pending_new(void) {
  struct pending *p = sg_xcalloc(1, sizeof *p);
  init_amqp_pool(&p->raw.pool, 4096);
  return p;
}

static void pending_free(struct pending *p) {
  if (!p) return;
  empty_amqp_pool(&p->raw.pool);
  free(p);
}

static amqp_bytes_t raw_bytes(struct raw_msg *r, amqp_bytes_t src) {
  amqp_bytes_t b = {0, NULL};
  if (!src.len) return b;
  amqp_pool_alloc_bytes(&r->pool, src.len, &b);
  if (!b.bytes) abort();
  memcpy(b.bytes, src.bytes, src.len);
  return b;
}

static size_t bucket_of(struct amqp_transport *t, uint64_t tag) { return (size_t)(tag & (t->nbucket - 1)); }

static void pending_put(struct amqp_transport *t, struct pending *p) {
  size_t b = bucket_of(t, p->tag);
  p->next = t->bucket[b];
  t->bucket[b] = p;
  t->npending++;
}

/* Removes and returns the pending delivery with this tag, or NULL (stale or already settled). */
static struct pending *pending_take(struct amqp_transport *t, uint64_t tag) {
  for (struct pending **pp = &t->bucket[bucket_of(t, tag)]; *pp; pp = &(*pp)->next) {
    if ((*pp)->tag == tag) {
      struct pending *p = *pp;
      *pp = p->next;
      t->npending--;
      return p;
    }
  }
  return NULL;
}

static void pending_clear(struct amqp_transport *t) {
  for (size_t b = 0; b < t->nbucket; b++) {
    while (t->bucket[b]) {
      struct pending *p = t->bucket[b];
      t->bucket[b] = p->next;
      pending_free(p);
    }
  }
  t->npending = 0;
}

/* ---- the in-flight FIFO ---- */

static struct inflight *fly_at(struct amqp_transport *t, size_t i) {
  return &t->fly[(t->fly_head + i) % t->fly_cap];
}

static void fly_push(struct amqp_transport *t, int64_t outbox_id, uint64_t ack_tag, const char *message_id) {
  if (t->fly_n == t->fly_cap) {
    size_t cap = t->fly_cap ? t->fly_cap * 2 : 256;
    struct inflight *n = sg_xmalloc(cap * sizeof *n);
    for (size_t i = 0; i < t->fly_n; i++) n[i] = *fly_at(t, i);
    free(t->fly);
    t->fly = n;
    t->fly_cap = cap;
    t->fly_head = 0;
  }
  struct inflight *f = &t->fly[(t->fly_head + t->fly_n) % t->fly_cap];
  memset(f, 0, sizeof *f);
  f->seq = t->next_seq++;
  f->outbox_id = outbox_id;
  f->ack_tag = ack_tag;
  f->message_id = sg_strdup(message_id);
  t->fly_n++;
}

static void fly_pop(struct amqp_transport *t) {
  t->fly_head = (t->fly_head + 1) % t->fly_cap;
  t->fly_n--;
}

static void fly_clear(struct amqp_transport *t) {
  while (t->fly_n) {
    struct inflight *f = fly_at(t, 0);
    free(f->message_id);
    free(f->returned);
    fly_pop(t);
  }
}

/* Tells the engine (or acks our dead-letter original) about one settled publish. f is a copy already
 * out of the ring, because callbacks may publish (growing the ring) or lose the connection. */
static void fly_finish(struct amqp_transport *t, struct inflight *f, const char *nack_why) {
  const char *why = f->returned ? f->returned : nack_why;
  if (f->ack_tag) {
    /* the dead-letter copy is safe (or not): only now let go of the original */
    if (!why) amqp_basic_ack(t->conn, CHAN, f->ack_tag, 0);
    else {
      sg_warn("amqp: dead-letter copy of %s refused (%s); rejecting the original to the queue's DLX",
              f->message_id ? f->message_id : "?", why);
      amqp_basic_nack(t->conn, CHAN, f->ack_tag, 0, 0);
    }
  } else if (f->outbox_id) {
    if (!why) {
      if (t->base.ev.on_confirm) t->base.ev.on_confirm(t->base.ev.ud, f->outbox_id);
    } else if (t->base.ev.on_reject) {
      t->base.ev.on_reject(t->base.ev.ud, f->outbox_id, why);
    }
  }
  free(f->message_id);
  free(f->returned);
}

/* basic.ack / basic.nack from the broker for our publishes. */
static void settle(struct amqp_transport *t, uint64_t seq, int multiple, const char *nack_why) {
  unsigned gen = t->gen;
  if (!multiple) {
    if (!t->fly_n || seq < fly_at(t, 0)->seq || seq - fly_at(t, 0)->seq >= t->fly_n) {
      sg_warn("amqp: confirm for unknown publish %llu", (unsigned long long)seq);
      return;
    }
    /* seqs in the ring are consecutive, so the entry is found by offset */
    struct inflight *e = fly_at(t, (size_t)(seq - fly_at(t, 0)->seq));
    if (e->settled) return;
    struct inflight copy = *e;
    e->settled = 1;
    e->message_id = e->returned = NULL;
    fly_finish(t, &copy, nack_why);
    if (!t->up || t->gen != gen) return;
  }
  while (multiple && t->fly_n && fly_at(t, 0)->seq <= seq) {
    struct inflight copy = *fly_at(t, 0);
    fly_pop(t);
    if (copy.settled) continue;
    fly_finish(t, &copy, nack_why);
    if (!t->up || t->gen != gen) return;
  }
  /* entries confirmed out of order before reaching the head */
  while (t->fly_n && fly_at(t, 0)->settled) fly_pop(t);
}

/* basic.return: the broker could not route it; mark the publish so its ack becomes a reject. */
static void on_returned(struct amqp_transport *t, struct raw_msg *r) {
  char why[256];
  snprintf(why, sizeof why, "unroutable: no queue bound for %.*s on exchange '%.*s' (code %u)",
           (int)r->routing_key.len, (char *)r->routing_key.bytes, (int)r->exchange.len, (char *)r->exchange.bytes,
           r->reply_code);
  amqp_bytes_t mid = (r->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? r->props.message_id : amqp_empty_bytes;
  for (size_t i = 0; i < t->fly_n; i++) {
    struct inflight *f = fly_at(t, i);
    if (f->settled || f->returned || !f->message_id) continue;
    if (strlen(f->message_id) == mid.len && memcmp(f->message_id, mid.bytes, mid.len) == 0) {
      f->returned = sg_strdup(why);
      return;
    }
  }
  sg_warn("amqp: returned message %.*s matches no publish in flight (%s)", (int)mid.len, (char *)mid.bytes, why);
}

/* ---- deliveries ---- */

/* Re-publishes a delivery to saga.dlx with the reason; the original is acked once the copy is
 * confirmed (fly_finish), so a crash in between redelivers instead of losing it. */
static void dead_letter(struct amqp_transport *t, struct raw_msg *r, const char *reason) {
  char key[512];
  if (r->queue.len) {
    snprintf(key, sizeof key, "%.*s.dlq", (int)r->queue.len, (char *)r->queue.bytes);
  } else {
    /* not from a known consumer: the service is the routing key's first segment */
    const char *rk = r->routing_key.bytes ? (const char *)r->routing_key.bytes : "";
    size_t n = 0;
    while (n < r->routing_key.len && rk[n] != '.') n++;
    snprintf(key, sizeof key, "saga.svc.%.*s.dlq", (int)n, rk);
  }
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_basic_properties_t props;
  sg_amqp_dead_letter_props(&r->props, reason, r->exchange, r->routing_key, &props, &pool);
  int rc = amqp_basic_publish(t->conn, CHAN, amqp_cstring_bytes(SG_AMQP_X_DLX), amqp_cstring_bytes(key), 1, 0,
                              &props, r->body);
  empty_amqp_pool(&pool);
  if (rc < 0) {
    conn_lost(t, amqp_error_string2(rc));
    return;
  }
  char *mid = (r->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG) && r->props.message_id.len
                  ? strndup(r->props.message_id.bytes, r->props.message_id.len)
                  : NULL;
  fly_push(t, 0, r->delivery_tag, mid);
  free(mid);
  sg_info("amqp: dead-lettered a message from %.*s to %s: %s", (int)r->queue.len, (char *)r->queue.bytes, key, reason);
}

/* A whole message (method, header, body) has arrived. */
static void delivered(struct amqp_transport *t, struct pending *p) {
  struct raw_msg *r = &p->raw;
  struct sg_msg m;
  struct sg_error e = {{0}, 0};
  if (sg_amqp_decode(&r->props, r->exchange, r->routing_key, r->queue, r->body, &m, &e) < 0) {
    /* the engine can do nothing with it: dead-letter it here, with what is wrong */
    sg_warn("amqp: malformed message on %.*s: %s", (int)r->queue.len, (char *)r->queue.bytes, e.msg);
    dead_letter(t, r, e.msg);
    pending_free(p);
    return;
  }
  p->tag = ((uint64_t)(t->gen & 0xffff) << GEN_SHIFT) | (p->raw.delivery_tag & TAG_MASK);
  pending_put(t, p); /* before the callback: the engine may ack at once */
  if (t->base.ev.on_message) t->base.ev.on_message(t->base.ev.ud, &m, p->tag, p->raw.redelivered);
  sg_msg_free(&m);
}

static void asm_done(struct amqp_transport *t) {
  struct pending *p = t->asm_msg;
  t->asm_msg = NULL;
  t->asm_state = ASM_IDLE;
  if (t->asm_kind == ASM_DELIVER) {
    delivered(t, p);
  } else {
    on_returned(t, &p->raw);
    pending_free(p);
  }
}

static void handle_content(struct amqp_transport *t, amqp_frame_t *f) {
  struct raw_msg *r = &t->asm_msg->raw;
  if (t->asm_state == ASM_HEADER && f->frame_type == AMQP_FRAME_HEADER) {
    sg_amqp_props_clone(f->payload.properties.decoded, &r->props, &r->pool);
    uint64_t size = f->payload.properties.body_size;
    if (t->asm_kind == ASM_DELIVER && t->max_body > 0 && size > (uint64_t)t->max_body) {
      /* refused at its content header, never allocated: the body frames are dropped as they come,
       * then the broker dead-letters it (reject without requeue: the queue's DLX takes it) */
      sg_warn("amqp: message %.*s on %.*s refused: its body is %llu bytes, over this host's limit of %lld bytes "
              "(--max-payload); the broker dead-letters it to %.*s.dlq",
              r->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG ? (int)r->props.message_id.len : 1,
              r->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG ? (char *)r->props.message_id.bytes : "?",
              (int)r->queue.len, (char *)r->queue.bytes, (unsigned long long)size, (long long)t->max_body,
              (int)r->queue.len, (char *)r->queue.bytes);
      r->body_skip = size;
      t->asm_state = ASM_SKIP;
      return;
    }
    if (size > SIZE_MAX / 2) {
      conn_lost(t, "message body too large");
      return;
    }
    if (size == 0) {
      asm_done(t);
      return;
    }
    amqp_pool_alloc_bytes(&r->pool, (size_t)size, &r->body);
    if (!r->body.bytes) abort();
    r->body_got = 0;
    t->asm_state = ASM_BODY;
  } else if (t->asm_state == ASM_BODY && f->frame_type == AMQP_FRAME_BODY) {
    amqp_bytes_t frag = f->payload.body_fragment;
    if (frag.len > r->body.len - r->body_got) {
      conn_lost(t, "body frames longer than the content header said");
      return;
    }
    memcpy((char *)r->body.bytes + r->body_got, frag.bytes, frag.len);
    r->body_got += frag.len;
    if (r->body_got == r->body.len) asm_done(t);
  } else if (t->asm_state == ASM_SKIP && f->frame_type == AMQP_FRAME_BODY) {
    amqp_bytes_t frag = f->payload.body_fragment;
    if (frag.len > r->body_skip) {
      conn_lost(t, "body frames longer than the content header said");
      return;
    }
    r->body_skip -= frag.len;
    if (r->body_skip == 0) {
      struct pending *p = t->asm_msg;
      t->asm_msg = NULL;
      t->asm_state = ASM_IDLE;
      int rc = amqp_basic_reject(t->conn, CHAN, p->raw.delivery_tag, 0);
      pending_free(p);
      if (rc < 0) conn_lost(t, amqp_error_string2(rc));
    }
  } else {
    conn_lost(t, "unexpected frame inside a message's content");
  }
}

static void start_content(struct amqp_transport *t, enum asm_kind kind, struct pending *p) {
  t->asm_msg = p;
  t->asm_kind = kind;
  t->asm_state = ASM_HEADER;
}

static void handle_method(struct amqp_transport *t, amqp_frame_t *f) {
  amqp_method_t *m = &f->payload.method;
  switch (m->id) {
  case AMQP_BASIC_DELIVER_METHOD: {
    amqp_basic_deliver_t *d = m->decoded;
    struct pending *p = pending_new();
    struct raw_msg *r = &p->raw;
    r->delivery_tag = d->delivery_tag;
    r->redelivered = d->redelivered;
    r->exchange = raw_bytes(r, d->exchange);
    r->routing_key = raw_bytes(r, d->routing_key);
    r->queue = raw_bytes(r, d->consumer_tag);
    start_content(t, ASM_DELIVER, p);
    break;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    amqp_basic_return_t *d = m->decoded;
    struct pending *p = pending_new();
    struct raw_msg *r = &p->raw;
    r->reply_code = d->reply_code;
    r->exchange = raw_bytes(r, d->exchange);
    r->routing_key = raw_bytes(r, d->routing_key);
    start_content(t, ASM_RETURN, p);
    break;
  }
  case AMQP_BASIC_ACK_METHOD: {
    amqp_basic_ack_t *a = m->decoded;
    settle(t, a->delivery_tag, a->multiple, NULL);
    break;
  }
  case AMQP_BASIC_NACK_METHOD: {
    amqp_basic_nack_t *a = m->decoded;
    settle(t, a->delivery_tag, a->multiple, "nacked by the broker");
    break;
  }
  case AMQP_BASIC_CANCEL_METHOD: {
    /* our queue was deleted under us: reconnecting redeclares it and consumes again */
    amqp_basic_cancel_t *c = m->decoded;
    char why[300];
    snprintf(why, sizeof why, "broker cancelled consumer %.*s", (int)c->consumer_tag.len, (char *)c->consumer_tag.bytes);
    conn_lost(t, why);
    break;
  }
  case AMQP_CHANNEL_CLOSE_METHOD:
  case AMQP_CONNECTION_CLOSE_METHOD: {
    int conn_level = m->id == AMQP_CONNECTION_CLOSE_METHOD;
    amqp_bytes_t text = conn_level ? ((amqp_connection_close_t *)m->decoded)->reply_text
                                   : ((amqp_channel_close_t *)m->decoded)->reply_text;
    int code = conn_level ? ((amqp_connection_close_t *)m->decoded)->reply_code
                          : ((amqp_channel_close_t *)m->decoded)->reply_code;
    char why[400];
    snprintf(why, sizeof why, "broker closed the %s: %d %.*s", conn_level ? "connection" : "channel", code,
             (int)text.len, (char *)text.bytes);
    if (conn_level) {
      amqp_connection_close_ok_t ok = {0};
      amqp_send_method(t->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok); /* best effort */
    }
    conn_lost(t, why);
    break;
  }
  case AMQP_CONNECTION_BLOCKED_METHOD:
    sg_warn("amqp: broker blocked publishing (resource alarm); publishes will stall");
    break;
  case AMQP_CONNECTION_UNBLOCKED_METHOD:
    sg_info("amqp: broker unblocked publishing");
    break;
  default:
    sg_debug("amqp: ignoring method 0x%08x", (unsigned)m->id);
    break;
  }
}

static void handle_frame(struct amqp_transport *t, amqp_frame_t *f) {
  if (t->asm_state != ASM_IDLE) {
    if (f->channel == CHAN) handle_content(t, f);
    else if (f->frame_type == AMQP_FRAME_METHOD) handle_method(t, f); /* connection.close on channel 0 */
    return;
  }
  if (f->frame_type == AMQP_FRAME_METHOD) handle_method(t, f);
  else sg_debug("amqp: ignoring frame type %d on channel %d", f->frame_type, f->channel);
}

/* Handles every frame that can be had without waiting. */
static void drain(struct amqp_transport *t) {
  unsigned gen = t->gen;
  ev_tstamp start = ev_time();
  for (int n = 0; n < DRAIN_MAX; n++) {
    if (!t->up || t->gen != gen) return;
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    int rc = amqp_simple_wait_frame_noblock(t->conn, &f, &zero);
    if (rc == AMQP_STATUS_TIMEOUT) {
      /* nothing buffered: librabbitmq may recycle the memory of the frames we handled */
      if (!amqp_frames_enqueued(t->conn)) amqp_maybe_release_buffers(t->conn);
      return;
    }
    if (rc != AMQP_STATUS_OK) {
      conn_lost(t, amqp_error_string2(rc));
      return;
    }
    handle_frame(t, &f);
    /* nothing keeps pointers into a handled frame (bodies and properties are copied): let
     * librabbitmq recycle it now, or a long run of body frames (a big message, even one being
     * dropped unread) would pile up in its pools until the socket goes quiet */
    if (!amqp_frames_enqueued(t->conn)) amqp_maybe_release_buffers(t->conn);
    if (ev_time() - start > DRAIN_BUDGET) break;
  }
  /* more may be waiting in librabbitmq's buffers, where the socket watcher cannot see it */
  schedule_drain(t);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  struct amqp_transport *t = w->data;
  t->last_rx = ev_now(loop);
  drain(t);
}

static void drain_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  struct amqp_transport *t = w->data;
  ev_idle_stop(loop, w);
  drain(t);
}

/* Frames may sit in librabbitmq's queue after a synchronous call (it enqueues deliveries and confirms
 * that arrive while it waits for an RPC reply); ev_idle runs once the loop has nothing else to do. */
static void schedule_drain(struct amqp_transport *t) {
  if (t->up) ev_idle_start(t->loop, &t->drain);
}

static void hb_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp_transport *t = w->data;
  if (!t->up || !t->hb) return;
  if (ev_now(loop) - t->last_rx > 2.0 * t->hb) {
    conn_lost(t, "no data or heartbeat from the broker for two heartbeat intervals");
    return;
  }
  amqp_frame_t f;
  memset(&f, 0, sizeof f);
  f.frame_type = AMQP_FRAME_HEARTBEAT;
  f.channel = 0;
  int rc = amqp_send_frame(t->conn, &f);
  if (rc < 0) conn_lost(t, amqp_error_string2(rc));
}

/* ---- connecting ---- */

static int rpc_ok(struct amqp_transport *t, const char *what, struct sg_error *e) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(t->conn);
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL: return 0;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return sg_errorf(e, SG_E_INTERNAL, "amqp: %s: %s", what, amqp_error_string2(r.library_error));
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      int conn = r.reply.id == AMQP_CONNECTION_CLOSE_METHOD;
      amqp_bytes_t text = conn ? ((amqp_connection_close_t *)r.reply.decoded)->reply_text
                               : ((amqp_channel_close_t *)r.reply.decoded)->reply_text;
      return sg_errorf(e, SG_E_INTERNAL, "amqp: %s: broker closed the %s: %.*s", what, conn ? "connection" : "channel",
                       (int)text.len, (char *)text.bytes);
    }
    return sg_errorf(e, SG_E_INTERNAL, "amqp: %s: server exception 0x%08x", what, (unsigned)r.reply.id);
  default: return sg_errorf(e, SG_E_INTERNAL, "amqp: %s: no reply", what);
  }
}

static int declare_exchange(struct amqp_transport *t, const char *name, const char *type, struct sg_error *e) {
  amqp_exchange_declare(t->conn, CHAN, amqp_cstring_bytes(name), amqp_cstring_bytes(type), 0, 1, 0, 0,
                        amqp_empty_table);
  char what[128];
  snprintf(what, sizeof what, "declaring exchange %s", name);
  return rpc_ok(t, what, e);
}

/* A durable queue that dead-letters into <queue>.dlq through saga.dlx, and that DLQ. */
static int declare_queue(struct amqp_transport *t, const char *queue, struct sg_error *e) {
  char dlq[300], what[400];
  snprintf(dlq, sizeof dlq, "%s.dlq", queue);
  snprintf(what, sizeof what, "declaring queue %s", dlq);
  amqp_queue_declare(t->conn, CHAN, amqp_cstring_bytes(dlq), 0, 1, 0, 0, amqp_empty_table);
  if (rpc_ok(t, what, e) < 0) return -1;
  amqp_queue_bind(t->conn, CHAN, amqp_cstring_bytes(dlq), amqp_cstring_bytes(SG_AMQP_X_DLX), amqp_cstring_bytes(dlq),
                  amqp_empty_table);
  if (rpc_ok(t, what, e) < 0) return -1;

  amqp_table_entry_t args[2];
  args[0].key = amqp_cstring_bytes("x-dead-letter-exchange");
  args[0].value.kind = AMQP_FIELD_KIND_UTF8;
  args[0].value.value.bytes = amqp_cstring_bytes(SG_AMQP_X_DLX);
  args[1].key = amqp_cstring_bytes("x-dead-letter-routing-key");
  args[1].value.kind = AMQP_FIELD_KIND_UTF8;
  args[1].value.value.bytes = amqp_cstring_bytes(dlq);
  amqp_table_t tab = {2, args};
  snprintf(what, sizeof what, "declaring queue %s", queue);
  amqp_queue_declare(t->conn, CHAN, amqp_cstring_bytes(queue), 0, 1, 0, 0, tab);
  return rpc_ok(t, what, e);
}

static int declare_service(struct amqp_transport *t, struct service *s, int consume, struct sg_error *e) {
  char queue[300], pattern[300], what[400];
  snprintf(queue, sizeof queue, "saga.svc.%s", s->name);
  snprintf(pattern, sizeof pattern, "%s.#", s->name);
  if (declare_queue(t, queue, e) < 0) return -1;
  amqp_queue_bind(t->conn, CHAN, amqp_cstring_bytes(queue), amqp_cstring_bytes(SG_AMQP_X_COMMANDS),
                  amqp_cstring_bytes(pattern), amqp_empty_table);
  snprintf(what, sizeof what, "binding %s to %s", queue, SG_AMQP_X_COMMANDS);
  if (rpc_ok(t, what, e) < 0) return -1;
  s->declared_gen = t->gen;
  if (!consume) return 0;
  /* the consumer tag is the queue name: a delivery then says which DLQ its dead-letter copy goes to */
  amqp_basic_consume(t->conn, CHAN, amqp_cstring_bytes(queue), amqp_cstring_bytes(queue), 0, 0, 0, amqp_empty_table);
  snprintf(what, sizeof what, "consuming %s", queue);
  return rpc_ok(t, what, e);
}

/* One synchronous connection attempt, each step bounded by timeout_ms. */
static int connect_once(struct amqp_transport *t, struct sg_error *e) {
  struct timeval tv = {t->timeout_ms / 1000, (t->timeout_ms % 1000) * 1000};
  t->conn = amqp_new_connection();
  amqp_socket_t *sock;
  if (t->info.ssl) {
    sock = amqp_ssl_socket_new(t->conn);
    if (sock) {
      amqp_ssl_socket_set_verify_peer(sock, t->verify);
      amqp_ssl_socket_set_verify_hostname(sock, t->verify);
      if (t->cacert && amqp_ssl_socket_set_cacert(sock, t->cacert) != AMQP_STATUS_OK)
        return sg_errorf(e, SG_E_INTERNAL, "amqp: cannot load CA certificate %s", t->cacert);
    }
  } else {
    sock = amqp_tcp_socket_new(t->conn);
  }
  if (!sock) return sg_errorf(e, SG_E_INTERNAL, "amqp: cannot create socket");
  int rc = amqp_socket_open_noblock(sock, t->info.host, t->info.port, &tv);
  if (rc != AMQP_STATUS_OK)
    return sg_errorf(e, SG_E_INTERNAL, "amqp: cannot connect to %s:%d: %s", t->info.host, t->info.port,
                     amqp_error_string2(rc));
  amqp_set_handshake_timeout(t->conn, &tv);
  amqp_set_rpc_timeout(t->conn, &tv);

  amqp_table_entry_t caps[1], props[2];
  caps[0].key = amqp_cstring_bytes("consumer_cancel_notify"); /* tell us when our queue is deleted */
  caps[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  caps[0].value.value.boolean = 1;
  props[0].key = amqp_cstring_bytes("capabilities");
  props[0].value.kind = AMQP_FIELD_KIND_TABLE;
  props[0].value.value.table = (amqp_table_t){1, caps};
  props[1].key = amqp_cstring_bytes("connection_name");
  props[1].value.kind = AMQP_FIELD_KIND_UTF8;
  props[1].value.value.bytes = amqp_cstring_bytes(t->conn_name);
  amqp_table_t client = {2, props};
  amqp_rpc_reply_t lr = amqp_login_with_properties(t->conn, t->info.vhost, 0, 131072, t->heartbeat, &client,
                                                   AMQP_SASL_METHOD_PLAIN, t->info.user, t->info.password);
  if (lr.reply_type != AMQP_RESPONSE_NORMAL) {
    if (lr.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
      return sg_errorf(e, SG_E_INTERNAL, "amqp: login to %s:%d as %s failed: %s", t->info.host, t->info.port,
                       t->info.user, amqp_error_string2(lr.library_error));
    return sg_errorf(e, SG_E_INTERNAL, "amqp: login to %s:%d as %s (vhost %s) refused", t->info.host, t->info.port,
                     t->info.user, t->info.vhost);
  }
  t->hb = amqp_get_heartbeat(t->conn);

  amqp_channel_open(t->conn, CHAN);
  if (rpc_ok(t, "opening channel", e) < 0) return -1;
  amqp_basic_qos(t->conn, CHAN, 0, (uint16_t)t->prefetch, 0);
  if (rpc_ok(t, "setting prefetch", e) < 0) return -1;
  amqp_confirm_select(t->conn, CHAN);
  if (rpc_ok(t, "enabling publisher confirms", e) < 0) return -1;
  t->next_seq = 1;

  if (declare_exchange(t, SG_AMQP_X_COMMANDS, "topic", e) < 0 || declare_exchange(t, SG_AMQP_X_EVENTS, "topic", e) < 0 ||
      declare_exchange(t, SG_AMQP_X_DLX, "direct", e) < 0)
    return -1;
  /* durable: replies to our commands wait for us across a crash and a restart with the same host id */
  if (declare_queue(t, t->reply_queue, e) < 0) return -1;
  amqp_basic_consume(t->conn, CHAN, amqp_cstring_bytes(t->reply_queue), amqp_cstring_bytes(t->reply_queue), 0, 0, 0,
                     amqp_empty_table);
  if (rpc_ok(t, "consuming the reply queue", e) < 0) return -1;
  for (struct service *s = t->services; s; s = s->next)
    if (declare_service(t, s, s->consume, e) < 0) return -1;
  return 0;
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp_transport *t = w->data;
  if (t->conn) {
    amqp_destroy_connection(t->conn); /* deferred from conn_lost: frames may have pointed into it */
    t->conn = NULL;
  }
  struct sg_error e = {{0}, 0};
  t->gen++;
  if (connect_once(t, &e) < 0) {
    if (t->conn) amqp_destroy_connection(t->conn);
    t->conn = NULL;
    sg_warn("%s; retrying in %.2fs", e.msg, t->backoff);
    ev_timer_set(&t->retry, t->backoff, 0.);
    ev_timer_start(loop, &t->retry);
    t->backoff = t->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : t->backoff * 2;
    return;
  }
  t->backoff = BACKOFF_MIN;
  t->up = 1;
  t->base.connects++;
  ev_prepare_start(loop, &t->uncork);
  t->last_rx = ev_now(loop);
  ev_io_set(&t->io, amqp_get_sockfd(t->conn), EV_READ);
  ev_io_start(loop, &t->io);
  if (t->hb) {
    ev_timer_set(&t->hb_timer, t->hb / 2.0, t->hb / 2.0);
    ev_timer_start(loop, &t->hb_timer);
  }
  sg_info("amqp: connected to %s:%d%s (heartbeat %ds, prefetch %d)", t->info.host, t->info.port,
          t->info.ssl ? " over TLS" : "", t->hb, t->prefetch);
  schedule_drain(t); /* deliveries that arrived during the declares */
  if (t->base.ev.on_ready) t->base.ev.on_ready(t->base.ev.ud);
}

/* The connection is unusable: forget everything tied to it and try again later. The connection object
 * itself is destroyed by the next retry, because a caller up the stack may still hold frames from it. */
static void conn_lost(struct amqp_transport *t, const char *why) {
  if (!t->up) return;
  uncork(t);
  ev_prepare_stop(t->loop, &t->uncork);
  sg_warn("amqp: connection to %s:%d lost: %s; %zu unconfirmed publishes and %zu unacked deliveries dropped "
          "(re-sent after reconnect)", t->info.host, t->info.port, why, t->fly_n, t->npending);
  t->up = 0;
  t->gen++; /* anything still running for the old connection sees the change and stops */
  ev_io_stop(t->loop, &t->io);
  ev_timer_stop(t->loop, &t->hb_timer);
  ev_idle_stop(t->loop, &t->drain);
  fly_clear(t);
  pending_clear(t);
  pending_free(t->asm_msg);
  t->asm_msg = NULL;
  t->asm_state = ASM_IDLE;
  ev_timer_stop(t->loop, &t->retry);
  ev_timer_set(&t->retry, t->backoff, 0.);
  ev_timer_start(t->loop, &t->retry);
  t->backoff = t->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : t->backoff * 2;
}

/* ---- the ops ---- */

static struct service *service_get(struct amqp_transport *t, const char *name) {
  for (struct service *s = t->services; s; s = s->next)
    if (strcmp(s->name, name) == 0) return s;
  struct service *s = sg_xcalloc(1, sizeof *s);
  s->name = sg_strdup(name);
  s->next = t->services;
  t->services = s;
  return s;
}

static int check_service_name(const char *service, struct sg_error *e) {
  if (!service || !*service || strchr(service, '.') || strchr(service, '#') || strchr(service, '*') ||
      strlen(service) > 200)
    return sg_errorf(e, SG_E_INVALID, "amqp: bad service name '%s' (no dots or wildcards, at most 200 bytes)",
                     service ? service : "");
  return 0;
}

static int ensure_service(struct amqp_transport *t, const char *service, int consume, struct sg_error *e) {
  if (check_service_name(service, e) < 0) return -1;
  struct service *s = service_get(t, service);
  int start_consume = consume && !s->consume;
  s->consume |= consume;
  if (!t->up) return 0; /* declared (and consumed) on connect */
  if (s->declared_gen == t->gen && !start_consume) return 0;
  uncork(t); /* the declares wait for their answers */
  struct sg_error le = {{0}, 0};
  if (declare_service(t, s, start_consume, &le) < 0) {
    if (e) *e = le;
    conn_lost(t, le.msg);
    return -1;
  }
  schedule_drain(t);
  return 0;
}

static int op_subscribe(struct sg_transport *bt, const char *service, struct sg_error *e) {
  return ensure_service(T(bt), service, 1, e);
}

static int op_declare_service(struct sg_transport *bt, const char *service, struct sg_error *e) {
  return ensure_service(T(bt), service, 0, e);
}

static int op_publish(struct sg_transport *bt, const struct sg_msg *m, struct sg_error *e) {
  struct amqp_transport *t = T(bt);
  if (!t->up)
    return sg_errorf(e, SG_E_INTERNAL, "amqp: not connected to %s:%d; the message goes out after reconnect",
                     t->info.host, t->info.port);
  struct sg_amqp_out out;
  if (sg_amqp_encode(m, &out, e) < 0) return -1;
  cork(t);
  int rc = amqp_basic_publish(t->conn, CHAN, out.exchange, out.routing_key, out.mandatory, 0, &out.props, out.body);
  if (rc < 0) {
    sg_errorf(e, SG_E_INTERNAL, "amqp: publishing %s: %s", m->message_id, amqp_error_string2(rc));
    conn_lost(t, e->msg);
    return -1;
  }
  fly_push(t, m->outbox_id, 0, m->message_id);
  return 0;
}

static void op_ack(struct sg_transport *bt, uint64_t tag) {
  struct amqp_transport *t = T(bt);
  struct pending *p = pending_take(t, tag);
  if (!p) {
    /* from a connection that is gone: the broker redelivers it, it must not be acked here */
    sg_debug("amqp: ack of unknown or stale delivery %llx ignored", (unsigned long long)tag);
    return;
  }
  if (t->up) cork(t);
  int rc = t->up ? amqp_basic_ack(t->conn, CHAN, p->raw.delivery_tag, 0) : 0;
  pending_free(p);
  if (rc < 0) conn_lost(t, amqp_error_string2(rc));
}

static void op_nack(struct sg_transport *bt, uint64_t tag, const struct sg_msg *m, const char *reason) {
  struct amqp_transport *t = T(bt);
  struct pending *p = pending_take(t, tag);
  if (!p) {
    sg_debug("amqp: nack of unknown or stale delivery %llx ignored", (unsigned long long)tag);
    return;
  }
  if (t->up) dead_letter(t, &p->raw, reason ? reason : "rejected");
  pending_free(p);
}

static const char *op_reply_queue(struct sg_transport *bt) { return T(bt)->reply_queue; }

static int op_connected(struct sg_transport *bt) { return T(bt)->up; }

static void op_close(struct sg_transport *bt) {
  struct amqp_transport *t = T(bt);
  ev_io_stop(t->loop, &t->io);
  ev_timer_stop(t->loop, &t->hb_timer);
  ev_timer_stop(t->loop, &t->retry);
  ev_idle_stop(t->loop, &t->drain);
  uncork(t);
  ev_prepare_stop(t->loop, &t->uncork);
  if (t->conn) {
    if (t->up) {
      /* polite close so the broker requeues our unacked deliveries at once; bounded by the rpc timeout */
      amqp_channel_close(t->conn, CHAN, AMQP_REPLY_SUCCESS);
      amqp_connection_close(t->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(t->conn);
  }
  fly_clear(t);
  pending_clear(t);
  pending_free(t->asm_msg);
  while (t->services) {
    struct service *s = t->services;
    t->services = s->next;
    free(s->name);
    free(s);
  }
  free(t->fly);
  free(t->bucket);
  free(t->url_buf);
  free(t->cacert);
  free(t->reply_queue);
  free(t->conn_name);
  free(t);
}

static void op_set_max_body(struct sg_transport *bt, int64_t bytes) { T(bt)->max_body = bytes; }

static void op_reset(struct sg_transport *bt, const char *why) { conn_lost(T(bt), why); }

static const struct sg_transport_ops amqp_ops = {
  .name = "amqp",
  .set_max_body = op_set_max_body,
  .reset = op_reset,
  .subscribe = op_subscribe,
  .declare_service = op_declare_service,
  .publish = op_publish,
  .ack = op_ack,
  .nack = op_nack,
  .reply_queue = op_reply_queue,
  .connected = op_connected,
  .close = op_close,
};

/* ---- construction ---- */

/* Takes the ?k=v&... options off the URL (in place). */
static int parse_options(struct amqp_transport *t, char *url, struct sg_error *e) {
  char *q = strchr(url, '?');
  if (!q) return 0;
  *q++ = 0;
  for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
    char *v = strchr(kv, '=');
    if (!v) return sg_errorf(e, SG_E_INVALID, "amqp url: option '%s' needs a value (name=value)", kv);
    *v++ = 0;
    char *end;
    long n = strtol(v, &end, 10);
    int num = *v && !*end;
    if (strcmp(kv, "prefetch") == 0 && num && n > 0 && n <= 65535) t->prefetch = (int)n;
    else if (strcmp(kv, "heartbeat") == 0 && num && n >= 0 && n <= 3600) t->heartbeat = (int)n;
    else if (strcmp(kv, "timeout_ms") == 0 && num && n >= 100 && n <= 60000) t->timeout_ms = (int)n;
    else if (strcmp(kv, "verify") == 0 && num) t->verify = n != 0;
    else if (strcmp(kv, "cacert") == 0 && *v) { free(t->cacert); t->cacert = sg_strdup(v); }
    else return sg_errorf(e, SG_E_INVALID, "amqp url: unknown option or bad value '%s=%s' (prefetch, heartbeat, "
                          "timeout_ms, cacert, verify)", kv, v);
  }
  return 0;
}

struct sg_transport *sg_transport_amqp_new(struct ev_loop *loop, const char *url, const char *host_id,
                                           const struct sg_transport_events *ev, struct sg_error *e) {
  if (!host_id || !*host_id) {
    sg_errorf(e, SG_E_INVALID, "amqp: a host id is needed to name the reply queue");
    return NULL;
  }
  struct amqp_transport *t = sg_xcalloc(1, sizeof *t);
  t->base.ops = &amqp_ops;
  t->base.ev = *ev;
  t->loop = loop;
  t->prefetch = 256;
  t->heartbeat = 10;
  t->timeout_ms = 2000;
  t->backoff = BACKOFF_MIN;
  ev_io_init(&t->io, io_cb, -1, EV_READ);
  t->io.data = t;
  ev_timer_init(&t->hb_timer, hb_cb, 1., 1.);
  t->hb_timer.data = t;
  ev_idle_init(&t->drain, drain_cb);
  t->drain.data = t;
  ev_prepare_init(&t->uncork, uncork_cb);
  ev_set_priority(&t->uncork, EV_MINPRI);
  t->uncork.data = t;
  /* the first attempt runs from the loop, after the engine has subscribed its services */
  ev_timer_init(&t->retry, retry_cb, 0., 0.);
  t->retry.data = t;

  t->url_buf = sg_strdup(url);
  amqp_default_connection_info(&t->info);
  if (parse_options(t, t->url_buf, e) < 0) {
    op_close(&t->base);
    return NULL;
  }
  if (amqp_parse_url(t->url_buf, &t->info) != AMQP_STATUS_OK) {
    sg_errorf(e, SG_E_INVALID, "amqp: cannot parse URL '%s' (expected amqp://user:pass@host:port/vhost or amqps://...)",
              url);
    op_close(&t->base);
    return NULL;
  }
  /* amqp_parse_url reads "amqp://host/" as the empty vhost, which RabbitMQ never has; users mean "/" */
  if (!t->info.vhost || !*t->info.vhost) t->info.vhost = "/";
  if (t->cacert) t->verify = 1; /* a CA file only makes sense if it is checked against */
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_printf(&b, "saga.reply.%s", host_id);
  t->reply_queue = sg_buf_steal(&b);
  sg_buf_printf(&b, "sagahost %s", host_id);
  t->conn_name = sg_buf_steal(&b);
  t->nbucket = 64;
  while (t->nbucket < (size_t)t->prefetch * 2) t->nbucket *= 2;
  t->bucket = sg_xcalloc(t->nbucket, sizeof *t->bucket);

  ev_timer_start(loop, &t->retry);
  return &t->base;
}
