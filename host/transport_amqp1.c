/* transport_amqp1: the transport over AMQP 1.0 (Qpid Proton's C library) inside the libev loop,
 * written for Azure Service Bus and tested against RabbitMQ's amqp1_0 plugin.
 *
 * Proton's protocol engine runs on a pn_connection_driver_t: this file owns the non-blocking socket (an
 * ev_io), feeds what it reads into the driver, writes what the driver has to send, and handles the
 * driver's events; pn_transport_tick runs from an ev_timer (idle time-outs and heartbeats). Nothing
 * blocks except the name lookup (getaddrinfo) at each connect. Proton's proactor (a thread and a loop of
 * its own) is not used.
 *
 * The mapping between the logical message (struct sg_msg: kind, service, name, headers) and AMQP 1.0
 * addresses and properties is in one place, "the wire" below; amqp_envelope.c validates both
 * directions, so a message means the same on both transports. The contract is docs/protocol.md,
 * "AMQP 1.0 (Azure Service Bus)".
 *
 * One connection, one session. One receiver per queue we consume (saga.svc.<service>, our reply
 * queue), with credit = prefetch, topped up as deliveries are settled; one sender per address we send
 * to, opened on first use. Deliveries are settled (accepted) only when the engine acks, i.e. after the
 * commit that holds their effect; a nack rejects with an error (Service Bus dead-letters with reason and
 * description; RabbitMQ dead-letters through the queue's dead-letter exchange). Our sends are unsettled
 * until the broker's outcome comes: accepted -> on_confirm, anything else -> on_reject.
 *
 * Options ride on the URL's query string, see parse_options().
 *
 * Ownership: the Proton objects belong to the driver; a connection that is lost is destroyed only from
 * the retry timer (a caller up the stack may still hold its objects). */
#include "amqp_envelope.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKOFF_MIN 0.25   /* seconds before the first reconnect */
#define BACKOFF_MAX 10.0   /* cap of the doubling backoff */
#define PUMP_BUDGET 0.01   /* seconds of event handling before the loop gets a turn (group commit runs) */
#define GEN_SHIFT 48       /* our tag = connection generation << 48 | delivery number */
#define DEAD_LETTER_CONDITION "com.microsoft:dead-letter" /* what Service Bus's own clients send */

/* A delivery handed to the engine, held until it acks or nacks. */
struct pending {
  uint64_t tag;
  pn_delivery_t *d;
  struct pending *next; /* hash chain */
  /* lock renewal (renew=1, "lock renewal" below) */
  struct rcv *r;            /* the queue it came from */
  unsigned char token[16];  /* its lock token: the delivery tag as a uuid (RFC 4122 byte order) */
  int renew;                /* its lock is renewed until it is settled */
  int solo;                 /* renewed in a request of its own (a batch it was in failed) */
  double period;            /* seconds: the lock time it was last given */
  double renew_at;          /* ev_now time of its next renewal */
  uint64_t req;             /* the renew-lock request in flight for it (0: none) */
  int req_idx, req_n;       /* its place in that request's lock-tokens, and how many it has */
  double req_sent, req_deadline;
};

struct mgmt; /* an entity's $management link pair (lock renewal) */

/* A queue we consume: saga.svc.<service> or our reply queue. */
struct rcv {
  char *queue;        /* its name (saga.svc.inventory): what a message is follows it */
  char *service;      /* the service, NULL for the reply queue */
  pn_link_t *link;    /* on the current connection, or NULL */
  int attached;       /* the broker answered the attach */
  struct mgmt *mgmt;  /* lock renewal through <queue address>/$management, or NULL */
  struct rcv *next;
};

/* An address we send to, with its link on the current connection. */
struct snd {
  char *address;
  pn_link_t *link;
  struct snd *next;
};

enum state { DOWN, CONNECTING, UP };

struct amqp1_transport {
  struct sg_transport base;      /* first: the engine holds a struct sg_transport * */
  struct ev_loop *loop;

  /* from the URL */
  char *host, *port, *user, *password;
  int tls;
  char *hostname;                /* open frame's hostname (RabbitMQ: "vhost:NAME"), default the host */
  char *prefix;                  /* queue address = prefix + queue name ("/amq/queue/" for RabbitMQ 3.x) */
  char *events;                  /* address of ctx:publish events */
  char *cacert;
  int verify;
  int prefetch, heartbeat, timeout_ms;
  char *reply_queue;             /* saga.reply.<host_id> */
  char *reply_address;           /* prefix + reply_queue: the reply_to of our commands */
  char *container;               /* our container id */

  enum state state;
  unsigned gen;                  /* bumped on every connect and every loss */
  int fd;
  pn_connection_driver_t drv;
  int have_drv;                  /* drv holds a connection (possibly dead, destroyed by the retry timer) */
  pn_session_t *ssn;
  double backoff;
  ev_io io;
  ev_timer tick;                 /* pn_transport_tick */
  ev_timer retry;                /* (re)connect attempts */
  ev_timer deadline;             /* connecting must finish (links attached) within timeout_ms */
  ev_idle resume;                /* event handling went over its budget: go on after the loop's turn */
  ev_timer resend;               /* a sender link the broker closed had sends in flight: ask for them again */
  double resend_backoff;         /* its delay, doubling; reset on connect */
  int pumping, again;            /* pump() is running; it must run once more */
  int want_write;

  struct rcv *rcvs;
  struct snd *snds;
  uint64_t next_delivery;        /* numbers our deliveries (tags) and our sends (delivery tags) */
  int64_t max_body;
  pn_message_t *msg;             /* reused for every encode and decode */
  char *rbuf;                    /* a received message's bytes */
  size_t rbuf_cap;

  struct pending **bucket;       /* deliveries held, by tag */
  size_t nbucket, npending;

  /* lock renewal (Service Bus peek-lock): see "lock renewal" below */
  int renew;                     /* renew=0|1; -1 until the URL is read (default: on for *.servicebus.*) */
  int lock_ms;                   /* lock duration assumed when the broker does not say (lock_ms=, 30000) */
  ev_timer renew_timer;
  uint64_t next_req;             /* numbers renew-lock requests (their message-id) */
  pn_message_t *rmsg;            /* renew-lock requests and responses */
};

#define T(bt) ((struct amqp1_transport *)(bt))

static void conn_lost(struct amqp1_transport *t, const char *why);
static void pump(struct amqp1_transport *t);
static void renew_track(struct amqp1_transport *t, struct rcv *r, struct pending *p);
static int renew_event(struct amqp1_transport *t, pn_event_t *ev);
static void renew_reset(struct amqp1_transport *t);
static void renew_free(struct amqp1_transport *t);
static int redelivered_of(struct amqp1_transport *t, const char *bytes, size_t n);

/* ---- held deliveries ---- */

static size_t bucket_of(struct amqp1_transport *t, uint64_t tag) { return (size_t)(tag & (t->nbucket - 1)); }

static struct pending *pending_put(struct amqp1_transport *t, uint64_t tag, pn_delivery_t *d) {
  struct pending *p = sg_xcalloc(1, sizeof *p);
  p->tag = tag;
  p->d = d;
  size_t b = bucket_of(t, tag);
  p->next = t->bucket[b];
  t->bucket[b] = p;
  t->npending++;
  return p;
}

/* The delivery held under tag, removed from the table; NULL when stale (a lost connection) or settled. */
static pn_delivery_t *pending_take(struct amqp1_transport *t, uint64_t tag) {
  for (struct pending **pp = &t->bucket[bucket_of(t, tag)]; *pp; pp = &(*pp)->next) {
    if ((*pp)->tag != tag) continue;
    struct pending *p = *pp;
    pn_delivery_t *d = p->d;
    *pp = p->next;
    free(p);
    t->npending--;
    return d;
  }
  return NULL;
}

static void pending_clear(struct amqp1_transport *t) {
  if (!t->bucket) return; /* a URL that did not parse: nothing was made */
  for (size_t b = 0; b < t->nbucket; b++) {
    while (t->bucket[b]) {
      struct pending *p = t->bucket[b];
      t->bucket[b] = p->next;
      free(p);
    }
  }
  t->npending = 0;
}

/* ---- the wire: sg_msg <-> AMQP 1.0 (addresses, properties, application-properties, body) ---- */

static char *queue_address(struct amqp1_transport *t, const char *queue) {
  return sg_asprintf("%s%s", t->prefix, queue);
}

/* Where m goes and its subject: a command (or a signal) to its service's queue (subject = the command),
 * an event to the events address (subject = "<topic>.<event>", what RabbitMQ routes on), a reply to the
 * address its command's reply_to named (subject = the command). malloc'd address; subject written into
 * the n bytes at subject. */
static char *wire_address(struct amqp1_transport *t, const struct sg_msg *m, char *subject, size_t n) {
  if (m->kind == SG_MSG_COMMAND || m->kind == SG_MSG_SIGNAL) {
    int sig = m->kind == SG_MSG_SIGNAL;
    char queue[300];
    snprintf(queue, sizeof queue, "saga.svc.%s", sig ? SG_SIGNAL_SERVICE : m->service);
    snprintf(subject, n, "%s", sig ? SG_SIGNAL_COMMAND : m->name);
    return queue_address(t, queue);
  }
  if (m->kind == SG_MSG_EVENT) {
    snprintf(subject, n, "%s.%s", m->service, m->name);
    return sg_strdup(t->events);
  }
  snprintf(subject, n, "%s", m->name ? m->name : "");
  return sg_strdup(m->reply_to);
}

static pn_atom_t atom_str(const char *s) {
  pn_atom_t a;
  a.type = PN_STRING;
  a.u.as_bytes = pn_bytes(strlen(s), s);
  return a;
}

/* Fills t->msg from m; -1 when m cannot be sent (the checks of the 0-9-1 envelope). */
static int wire_encode(struct amqp1_transport *t, const struct sg_msg *m, struct sg_error *e) {
  struct sg_amqp_out out;
  if (sg_amqp_encode(m, &out, e) < 0) return -1; /* the same rules as on RabbitMQ 0-9-1 */
  pn_message_t *msg = t->msg;
  pn_message_clear(msg);
  pn_message_set_durable(msg, true);
  pn_message_set_id(msg, atom_str(m->message_id));
  const char *corr = m->correlation_id ? m->correlation_id : (out.mandatory ? m->message_id : NULL);
  if (corr) pn_message_set_correlation_id(msg, atom_str(corr));
  if (m->kind != SG_MSG_REPLY && m->reply_to && *m->reply_to) pn_message_set_reply_to(msg, m->reply_to);
  pn_message_set_content_type(msg, "application/json");
  if (m->created_at > 0) pn_message_set_creation_time(msg, m->created_at); /* ms, as AMQP 1.0 has it */
  /* the 0-9-1 headers (saga-id, saga-type, step, attempt, saga-status, then the message's own headers:
   * traceparent, tracestate, ...) */
  pn_data_t *ap = pn_message_properties(msg);
  pn_data_put_map(ap);
  pn_data_enter(ap);
  for (int i = 0; i < out.props.headers.num_entries; i++) {
    const amqp_table_entry_t *h = &out.props.headers.entries[i];
    pn_data_put_string(ap, pn_bytes(h->key.len, h->key.bytes));
    if (h->value.kind == AMQP_FIELD_KIND_I32) pn_data_put_int(ap, h->value.value.i32);
    else pn_data_put_string(ap, pn_bytes(h->value.value.bytes.len, h->value.value.bytes.bytes));
  }
  pn_data_exit(ap);
  /* the JSON as one data section: what Service Bus and RabbitMQ's 0-9-1 side read as the body */
  pn_data_t *body = pn_message_body(msg);
  pn_data_put_binary(body, pn_bytes(strlen(m->body), m->body));
  pn_message_set_inferred(msg, true);
  return 0;
}

/* An AMQP 1.0 message id (string, symbol, ulong, uuid or binary) as text into buf. */
static int atom_text(pn_atom_t a, char *buf, size_t n) {
  switch (a.type) {
  case PN_STRING:
  case PN_SYMBOL:
  case PN_BINARY:
    if (!a.u.as_bytes.size || a.u.as_bytes.size >= n || memchr(a.u.as_bytes.start, 0, a.u.as_bytes.size)) return 0;
    memcpy(buf, a.u.as_bytes.start, a.u.as_bytes.size);
    buf[a.u.as_bytes.size] = 0;
    return 1;
  case PN_ULONG: snprintf(buf, n, "%llu", (unsigned long long)a.u.as_ulong); return 1;
  case PN_UUID: {
    const unsigned char *u = (const unsigned char *)a.u.as_uuid.bytes;
    snprintf(buf, n, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
             u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    return 1;
  }
  default: return 0;
  }
}

static amqp_bytes_t pool_str(amqp_pool_t *pool, const char *s, size_t n) {
  amqp_bytes_t b = {0, NULL};
  if (!n) return b;
  amqp_pool_alloc_bytes(pool, n, &b);
  if (!b.bytes) abort();
  memcpy(b.bytes, s, n);
  return b;
}

/* One application property as a 0-9-1 header value (what amqp_envelope.c reads): strings, integers,
 * doubles, booleans; any other type becomes void, which the envelope refuses where a value matters. */
static void app_value(pn_data_t *d, amqp_field_value_t *v, amqp_pool_t *pool) {
  memset(v, 0, sizeof *v);
  switch (pn_data_type(d)) {
  case PN_STRING:
  case PN_SYMBOL: {
    pn_bytes_t s = pn_data_type(d) == PN_STRING ? pn_data_get_string(d) : pn_data_get_symbol(d);
    v->kind = AMQP_FIELD_KIND_UTF8;
    v->value.bytes = pool_str(pool, s.start, s.size);
    break;
  }
  case PN_BYTE: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_byte(d); break;
  case PN_UBYTE: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_ubyte(d); break;
  case PN_SHORT: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_short(d); break;
  case PN_USHORT: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_ushort(d); break;
  case PN_INT: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_int(d); break;
  case PN_UINT: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_uint(d); break;
  case PN_LONG: v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = pn_data_get_long(d); break;
  case PN_ULONG: v->kind = AMQP_FIELD_KIND_U64; v->value.u64 = pn_data_get_ulong(d); break;
  case PN_DOUBLE: v->kind = AMQP_FIELD_KIND_F64; v->value.f64 = pn_data_get_double(d); break;
  case PN_FLOAT: v->kind = AMQP_FIELD_KIND_F32; v->value.f32 = pn_data_get_float(d); break;
  case PN_BOOL: v->kind = AMQP_FIELD_KIND_BOOLEAN; v->value.boolean = pn_data_get_bool(d); break;
  default: v->kind = AMQP_FIELD_KIND_VOID; break;
  }
}

/* The application-properties map as a 0-9-1 header table. */
static void app_props(pn_message_t *msg, amqp_table_t *tab, amqp_pool_t *pool) {
  *tab = amqp_empty_table;
  pn_data_t *d = pn_message_properties(msg);
  pn_data_rewind(d);
  if (!pn_data_next(d) || pn_data_type(d) != PN_MAP) return;
  size_t n = pn_data_get_map(d) / 2;
  if (!n) return;
  tab->entries = amqp_pool_alloc(pool, n * sizeof *tab->entries);
  if (!tab->entries) abort();
  pn_data_enter(d);
  for (size_t i = 0; i < n && pn_data_next(d); i++) {
    amqp_table_entry_t *en = &tab->entries[tab->num_entries];
    if (pn_data_type(d) != PN_STRING && pn_data_type(d) != PN_SYMBOL) { pn_data_next(d); continue; }
    pn_bytes_t k = pn_data_type(d) == PN_STRING ? pn_data_get_string(d) : pn_data_get_symbol(d);
    en->key = pool_str(pool, k.start, k.size);
    if (!pn_data_next(d)) break;
    app_value(d, &en->value, pool);
    tab->num_entries++;
  }
  pn_data_exit(d);
}

/* The body: one data section, or an amqp-value holding a string or binary (what rhea and others send
 * by default). Points into msg. */
static int wire_body(pn_message_t *msg, amqp_bytes_t *body) {
  pn_data_t *d = pn_message_body(msg);
  pn_data_rewind(d);
  body->len = 0;
  body->bytes = NULL;
  if (!pn_data_next(d)) return 0; /* no body: the envelope says it is empty */
  pn_bytes_t b;
  if (pn_data_type(d) == PN_BINARY) b = pn_data_get_binary(d);
  else if (pn_data_type(d) == PN_STRING) b = pn_data_get_string(d);
  else return -1;
  body->len = b.size;
  body->bytes = (void *)b.start;
  return 0;
}

/* Reads the message in bytes (received on r's queue) into m; -1 with a sentence fit for the
 * dead-letter description when it is malformed. */
static int wire_decode(struct amqp1_transport *t, struct rcv *r, const char *bytes, size_t n, struct sg_msg *m,
                       struct sg_error *e) {
  pn_message_t *msg = t->msg;
  pn_message_clear(msg);
  if (pn_message_decode(msg, bytes, n) != 0)
    return sg_errorf(e, SG_E_INVALID, "not an AMQP 1.0 message: %s", pn_error_text(pn_message_error(msg)));
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof p);
  char id[256], corr[256];
  if (atom_text(pn_message_get_id(msg), id, sizeof id)) {
    p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
    p.message_id = amqp_cstring_bytes(id);
  }
  if (atom_text(pn_message_get_correlation_id(msg), corr, sizeof corr)) {
    p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
    p.correlation_id = amqp_cstring_bytes(corr);
  }
  const char *reply_to = pn_message_get_reply_to(msg), *subject = pn_message_get_subject(msg);
  if (reply_to && *reply_to) {
    p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
    p.reply_to = amqp_cstring_bytes(reply_to);
  }
  if (subject && *subject) {
    p._flags |= AMQP_BASIC_TYPE_FLAG;
    p.type = amqp_cstring_bytes(subject);
  }
  if (pn_message_get_creation_time(msg) > 0) {
    p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    p.timestamp = (uint64_t)pn_message_get_creation_time(msg) / 1000;
  }
  p._flags |= AMQP_BASIC_HEADERS_FLAG;
  app_props(msg, &p.headers, &pool);
  amqp_bytes_t body;
  int rc = -1;
  char rk[600];
  if (wire_body(msg, &body) < 0) {
    sg_errorf(e, SG_E_INVALID, "body must be one data section (or an amqp-value string) holding JSON text");
  } else if (r->service && !(subject && *subject)) {
    sg_errorf(e, SG_E_INVALID, "command has no subject; set it to the command name (e.g. Reserve)");
  } else if (r->service) {
    /* a command: the queue names the service, the subject the command (the 0-9-1 routing key) */
    snprintf(rk, sizeof rk, "%s.%s", r->service, subject);
    rc = sg_amqp_decode(&p, amqp_cstring_bytes(SG_AMQP_X_COMMANDS), amqp_cstring_bytes(rk),
                        amqp_cstring_bytes(r->queue), body, m, e);
  } else {
    rc = sg_amqp_decode(&p, amqp_cstring_bytes(""), amqp_cstring_bytes(r->queue), amqp_cstring_bytes(r->queue), body, m,
                        e);
  }
  empty_amqp_pool(&pool);
  return rc;
}

/* ---- settling what we received ---- */

/* Rejects a delivery with the reason: the broker dead-letters it (Service Bus with DeadLetterReason and
 * DeadLetterErrorDescription, RabbitMQ through the queue's dead-letter exchange). */
static void reject(struct amqp1_transport *t, pn_delivery_t *d, const char *reason) {
  pn_condition_t *c = pn_disposition_condition(pn_delivery_local(d));
  char desc[4096];
  snprintf(desc, sizeof desc, "%s", reason);
  pn_condition_set_name(c, DEAD_LETTER_CONDITION);
  pn_condition_set_description(c, desc);
  pn_data_t *info = pn_condition_info(c);
  pn_data_clear(info);
  pn_data_put_map(info);
  pn_data_enter(info);
  pn_data_put_symbol(info, pn_bytes(strlen("DeadLetterReason"), "DeadLetterReason"));
  pn_data_put_string(info, pn_bytes(strlen("sagahost: refused"), "sagahost: refused"));
  pn_data_put_symbol(info, pn_bytes(strlen("DeadLetterErrorDescription"), "DeadLetterErrorDescription"));
  pn_data_put_string(info, pn_bytes(strlen(desc), desc));
  pn_data_exit(info);
  pn_delivery_update(d, PN_REJECTED);
  pn_link_t *link = pn_delivery_link(d);
  pn_delivery_settle(d);
  pn_link_flow(link, 1);
}

static void accept_delivery(pn_delivery_t *d) {
  pn_link_t *link = pn_delivery_link(d);
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  pn_link_flow(link, 1);
}

/* A whole message has arrived on one of our receivers. */
static void received(struct amqp1_transport *t, pn_link_t *link, pn_delivery_t *d) {
  struct rcv *r = pn_link_get_context(link);
  size_t n = pn_delivery_pending(d);
  if (!r) { /* a link of ours always has its rcv: release it to the broker */
    pn_link_advance(link);
    pn_delivery_update(d, PN_RELEASED);
    pn_delivery_settle(d);
    return;
  }
  if (t->max_body > 0 && n > (size_t)t->max_body) {
    /* the envelope around the body is a few hundred bytes: the message is surely over the limit */
    char why[200];
    snprintf(why, sizeof why, "message is %zu bytes, over this host's limit of %lld bytes (--max-payload)", n,
             (long long)t->max_body);
    sg_warn("amqp1: a message on %s refused: %s; the broker dead-letters it", r->queue, why);
    pn_link_advance(link);
    reject(t, d, why);
    return;
  }
  if (n + 1 > t->rbuf_cap) {
    t->rbuf_cap = n + 1 > 2 * t->rbuf_cap ? n + 1 : 2 * t->rbuf_cap;
    t->rbuf = sg_xrealloc(t->rbuf, t->rbuf_cap);
  }
  ssize_t got = pn_link_recv(link, t->rbuf, n);
  pn_link_advance(link);
  struct sg_msg m;
  struct sg_error e = {{0}, 0};
  if (got < 0 || wire_decode(t, r, t->rbuf, got < 0 ? 0 : (size_t)got, &m, &e) < 0) {
    if (got < 0) sg_errorf(&e, SG_E_INVALID, "message could not be read (error %zd)", got);
    sg_warn("amqp1: malformed message on %s: %s; rejected (dead-lettered)", r->queue, e.msg);
    reject(t, d, e.msg);
    return;
  }
  int redelivered = redelivered_of(t, t->rbuf, (size_t)got);
  uint64_t tag = ((uint64_t)(t->gen & 0xffff) << GEN_SHIFT) | (++t->next_delivery & ((UINT64_C(1) << GEN_SHIFT) - 1));
  struct pending *p = pending_put(t, tag, d); /* before the callback: the engine may ack at once */
  renew_track(t, r, p);
  if (t->base.ev.on_message) t->base.ev.on_message(t->base.ev.ud, &m, tag, redelivered);
  sg_msg_free(&m);
}

/* The broker's outcome for one of our sends. */
static void sent_outcome(struct amqp1_transport *t, pn_delivery_t *d) {
  uint64_t state = pn_delivery_remote_state(d);
  if (!state && !pn_delivery_settled(d)) return; /* nothing decided yet */
  int64_t outbox_id = (int64_t)(intptr_t)pn_delivery_get_context(d);
  char why[600] = "";
  if (state && state != PN_ACCEPTED) {
    pn_condition_t *c = pn_disposition_condition(pn_delivery_remote(d));
    const char *name = pn_condition_get_name(c), *desc = pn_condition_get_description(c);
    snprintf(why, sizeof why, "%s by the broker%s%s%s%s", state == PN_REJECTED ? "rejected" : state == PN_RELEASED ? "released" : "modified",
             name ? ": " : "", name ? name : "", desc ? " " : "", desc ? desc : "");
  }
  pn_delivery_settle(d);
  if (outbox_id <= 0) return;
  if (!*why) {
    if (t->base.ev.on_confirm) t->base.ev.on_confirm(t->base.ev.ud, outbox_id);
  } else if (t->base.ev.on_reject) {
    t->base.ev.on_reject(t->base.ev.ud, outbox_id, why);
  }
}

/* ---- connection events ---- */

static const char *cond_text(pn_condition_t *c, char *buf, size_t n) {
  const char *name = c ? pn_condition_get_name(c) : NULL, *desc = c ? pn_condition_get_description(c) : NULL;
  snprintf(buf, n, "%s%s%s", name ? name : "closed", desc ? ": " : "", desc ? desc : "");
  return buf;
}

/* The broker closed one of our sender links: a queue that does not exist (Service Bus refuses the attach
 * with amqp:not-found), or a link idle for long (Service Bus detaches those). Its sends still in flight are
 * refused to the engine (their outbox rows stay); the engine is asked for them again after a backoff. The
 * next send to that address attaches a new link. */
static void sender_closed(struct amqp1_transport *t, pn_link_t *l, const char *why) {
  struct snd *s;
  for (s = t->snds; s && s->link != l; s = s->next) {}
  int n = 0;
  char msg[900];
  snprintf(msg, sizeof msg, "the broker closed the link to %s (%s)", pn_terminus_get_address(pn_link_target(l)), why);
  for (pn_delivery_t *d = pn_unsettled_head(l); d;) {
    pn_delivery_t *next = pn_unsettled_next(d);
    int64_t outbox_id = (int64_t)(intptr_t)pn_delivery_get_context(d);
    pn_delivery_settle(d);
    if (outbox_id > 0 && t->base.ev.on_reject) t->base.ev.on_reject(t->base.ev.ud, outbox_id, msg);
    n++;
    d = next;
  }
  if (s) s->link = NULL;
  pn_link_close(l);
  pn_link_free(l);
  if (!n) {
    sg_info("amqp1: %s; attached again on the next send", msg);
    return;
  }
  sg_warn("amqp1: %s; %d unconfirmed sends go again in %.0fs", msg, n, t->resend_backoff);
  if (!ev_is_active(&t->resend)) {
    ev_timer_set(&t->resend, t->resend_backoff, 0.);
    ev_timer_start(t->loop, &t->resend);
    t->resend_backoff = t->resend_backoff * 2 > 60 ? 60 : t->resend_backoff * 2;
  }
}

/* Asks the engine for every unconfirmed message again (what it does after a reconnect). */
static void resend_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp1_transport *t = w->data;
  if (t->state == UP && t->base.ev.on_ready) t->base.ev.on_ready(t->base.ev.ud);
}

static void check_ready(struct amqp1_transport *t) {
  if (t->state != CONNECTING || pn_connection_state(t->drv.connection) != (PN_LOCAL_ACTIVE | PN_REMOTE_ACTIVE)) return;
  for (struct rcv *r = t->rcvs; r; r = r->next)
    if (!r->attached) return;
  t->state = UP;
  t->backoff = BACKOFF_MIN;
  t->resend_backoff = 1.0;
  ev_timer_stop(t->loop, &t->resend); /* on_ready below asks for everything anyway */
  t->base.connects++;
  ev_timer_stop(t->loop, &t->deadline);
  sg_info("amqp1: connected to %s:%s%s (prefetch %d, queue addresses %s<queue>)", t->host, t->port,
          t->tls ? " over TLS" : "", t->prefetch, t->prefix);
  if (t->renew > 0)
    sg_info("amqp1: lock renewal on: held deliveries' locks are renewed through %s<queue>/$management at 2/3 of "
            "%d ms or of the lock time the broker gives", t->prefix, t->lock_ms);
  if (t->base.ev.on_ready) t->base.ev.on_ready(t->base.ev.ud);
}

static void handle_event(struct amqp1_transport *t, pn_event_t *ev) {
  char buf[600], what[700];
  if (renew_event(t, ev)) return; /* the $management links of lock renewal */
  switch (pn_event_type(ev)) {
  case PN_CONNECTION_REMOTE_OPEN: check_ready(t); break;
  case PN_LINK_REMOTE_OPEN: {
    pn_link_t *l = pn_event_link(ev);
    if (pn_link_is_receiver(l)) {
      struct rcv *r = pn_link_get_context(l);
      /* a broker that refuses answers the attach without a source, then detaches with the reason */
      if (r && pn_terminus_get_address(pn_link_remote_source(l))) r->attached = 1;
    }
    check_ready(t);
    break;
  }
  case PN_DELIVERY: {
    pn_delivery_t *d = pn_event_delivery(ev);
    pn_link_t *l = pn_delivery_link(d);
    if (pn_link_is_receiver(l)) {
      if (pn_delivery_readable(d) && !pn_delivery_partial(d)) received(t, l, d);
    } else if (pn_delivery_updated(d)) {
      sent_outcome(t, d);
    }
    break;
  }
  case PN_LINK_REMOTE_CLOSE:
  case PN_LINK_REMOTE_DETACH: {
    pn_link_t *l = pn_event_link(ev);
    if (pn_link_is_sender(l)) { /* one address refused (or an idle link detached): not the connection */
      sender_closed(t, l, cond_text(pn_link_remote_condition(l), buf, sizeof buf));
      break;
    }
    snprintf(what, sizeof what, "the broker closed the link to %s (%s)", pn_terminus_get_address(pn_link_source(l)),
             cond_text(pn_link_remote_condition(l), buf, sizeof buf));
    conn_lost(t, what);
    break;
  }
  case PN_SESSION_REMOTE_CLOSE:
    snprintf(what, sizeof what, "the broker ended the session (%s)",
             cond_text(pn_session_remote_condition(pn_event_session(ev)), buf, sizeof buf));
    conn_lost(t, what);
    break;
  case PN_CONNECTION_REMOTE_CLOSE:
    snprintf(what, sizeof what, "the broker closed the connection (%s)",
             cond_text(pn_connection_remote_condition(pn_event_connection(ev)), buf, sizeof buf));
    conn_lost(t, what);
    break;
  case PN_TRANSPORT_ERROR:
  case PN_TRANSPORT_CLOSED:
    conn_lost(t, cond_text(pn_transport_condition(t->drv.transport), buf, sizeof buf));
    break;
  default: break;
  }
}

/* ---- the socket ---- */

static void set_io(struct amqp1_transport *t) {
  int want = EV_READ | (t->want_write ? EV_WRITE : 0);
  if (ev_is_active(&t->io) && (t->io.events & (EV_READ | EV_WRITE)) == want) return;
  ev_io_stop(t->loop, &t->io);
  ev_io_set(&t->io, t->fd, want);
  ev_io_start(t->loop, &t->io);
}

/* Writes what the driver has, as far as the socket takes it. -1: the connection is lost. */
static int flush(struct amqp1_transport *t) {
  t->want_write = 0;
  for (;;) {
    pn_bytes_t wb = pn_connection_driver_write_buffer(&t->drv);
    if (!wb.size) break;
    ssize_t n = send(t->fd, wb.start, wb.size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) { t->want_write = 1; break; }
      char why[200];
      snprintf(why, sizeof why, "writing to the socket: %s", strerror(errno));
      conn_lost(t, why);
      return -1;
    }
    pn_connection_driver_write_done(&t->drv, (size_t)n);
  }
  set_io(t);
  return 0;
}

static void arm_tick(struct amqp1_transport *t) {
  int64_t now = (int64_t)(ev_now(t->loop) * 1000);
  int64_t next = pn_transport_tick(t->drv.transport, now);
  ev_timer_stop(t->loop, &t->tick);
  if (next > 0) {
    ev_timer_set(&t->tick, next > now ? (double)(next - now) / 1000.0 : 0.0, 0.);
    ev_timer_start(t->loop, &t->tick);
  }
}

/* Handles the driver's events and writes what they produced; re-entrant calls (an engine callback
 * that acks or publishes) make the outer call go round once more. */
static void pump(struct amqp1_transport *t) {
  if (t->state == DOWN) return;
  if (t->pumping) { t->again = 1; return; }
  t->pumping = 1;
  unsigned gen = t->gen;
  ev_tstamp start = ev_time();
  int over = 0;
  do {
    t->again = 0;
    pn_event_t *ev;
    while (t->gen == gen && (ev = pn_connection_driver_next_event(&t->drv))) {
      handle_event(t, ev);
      if (ev_time() - start > PUMP_BUDGET) { over = 1; break; }
    }
    if (t->gen != gen || flush(t) < 0) break;
    if (pn_connection_driver_finished(&t->drv)) {
      conn_lost(t, "the connection ended");
      break;
    }
  } while (t->again && !over && t->gen == gen);
  t->pumping = 0;
  if (t->gen != gen) return;
  arm_tick(t);
  if (over) ev_idle_start(t->loop, &t->resume);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  struct amqp1_transport *t = w->data;
  if ((revents & EV_READ) && t->state != DOWN) {
    for (int i = 0; i < 64; i++) {
      pn_rwbytes_t rb = pn_connection_driver_read_buffer(&t->drv);
      if (!rb.size) break;
      ssize_t n = recv(t->fd, rb.start, rb.size, 0);
      if (n > 0) { pn_connection_driver_read_done(&t->drv, (size_t)n); continue; }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      pn_connection_driver_read_close(&t->drv); /* end of stream or an error: the driver says which */
      break;
    }
  }
  pump(t);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents) { pump(w->data); }

static void resume_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  ev_idle_stop(loop, w);
  pump(w->data);
}

/* From the engine's calls (publish, ack, nack, subscribe): writes what they produced, and leaves the
 * events to a pump of their own in the next loop iteration, never delivering a message into the engine
 * while it is in the middle of a call (it publishes and acks in loops over its own arrays). */
static void kick(struct amqp1_transport *t) {
  if (t->state == DOWN) return;
  if (t->pumping) { t->again = 1; return; }
  if (flush(t) == 0) ev_idle_start(t->loop, &t->resume);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp1_transport *t = w->data;
  char why[900] = "";
  size_t off = 0;
  for (struct rcv *r = t->rcvs; r; r = r->next)
    if (!r->attached && off < sizeof why - 1)
      off += (size_t)snprintf(why + off, sizeof why - off, "%s%s%s", off ? ", " : "", t->prefix, r->queue);
  char msg[1100];
  if (pn_connection_state(t->drv.connection) != (PN_LOCAL_ACTIVE | PN_REMOTE_ACTIVE))
    snprintf(msg, sizeof msg, "no open connection within %d ms", t->timeout_ms);
  else
    snprintf(msg, sizeof msg, "the broker did not attach %s within %d ms (does the queue exist?)", why, t->timeout_ms);
  conn_lost(t, msg);
}

/* ---- links ---- */

static void open_receiver(struct amqp1_transport *t, struct rcv *r) {
  char *addr = queue_address(t, r->queue);
  r->link = pn_receiver(t->ssn, addr);
  r->attached = 0;
  pn_link_set_context(r->link, r);
  pn_terminus_set_address(pn_link_source(r->link), addr);
  pn_terminus_set_address(pn_link_target(r->link), addr);
  pn_link_set_snd_settle_mode(r->link, PN_SND_UNSETTLED);
  pn_link_set_rcv_settle_mode(r->link, PN_RCV_FIRST);
  pn_link_open(r->link);
  pn_link_flow(r->link, t->prefetch);
  free(addr);
}

static pn_link_t *sender_for(struct amqp1_transport *t, const char *address) {
  struct snd *s;
  for (s = t->snds; s; s = s->next)
    if (strcmp(s->address, address) == 0) break;
  if (!s) {
    s = sg_xcalloc(1, sizeof *s);
    s->address = sg_strdup(address);
    s->next = t->snds;
    t->snds = s;
  }
  if (!s->link) {
    char name[400];
    snprintf(name, sizeof name, "%s->%s", t->container, address);
    s->link = pn_sender(t->ssn, name);
    pn_terminus_set_address(pn_link_target(s->link), address);
    pn_terminus_set_address(pn_link_source(s->link), t->container);
    pn_link_set_snd_settle_mode(s->link, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(s->link, PN_RCV_FIRST);
    pn_link_open(s->link);
  }
  return s->link;
}

/* ---- connecting ---- */

static int dial(struct amqp1_transport *t, struct sg_error *e) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(t->host, t->port, &hints, &res);
  if (rc != 0) return sg_errorf(e, SG_E_INTERNAL, "amqp1: cannot resolve %s: %s", t->host, gai_strerror(rc));
  int fd = -1, err = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) { err = errno; continue; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return sg_errorf(e, SG_E_INTERNAL, "amqp1: cannot connect to %s:%s: %s", t->host, t->port, strerror(err));
  t->fd = fd; /* the connect finishes in the background: a refused one shows as an error on the first read */
  return 0;
}

static int start_driver(struct amqp1_transport *t, struct sg_error *e) {
  if (pn_connection_driver_init(&t->drv, NULL, NULL) != 0)
    return sg_errorf(e, SG_E_INTERNAL, "amqp1: cannot make a connection driver");
  t->have_drv = 1;
  pn_connection_t *c = t->drv.connection;
  pn_transport_t *tr = t->drv.transport;
  pn_connection_set_container(c, t->container);
  pn_connection_set_hostname(c, t->hostname ? t->hostname : t->host);
  if (t->user) {
    pn_connection_set_user(c, t->user);
    if (t->password) pn_connection_set_password(c, t->password);
  }
  pn_sasl_t *sasl = pn_sasl(tr);
  pn_sasl_allowed_mechs(sasl, t->user ? "PLAIN" : "ANONYMOUS");
  pn_sasl_set_allow_insecure_mechs(sasl, true); /* PLAIN without TLS: the tests' broker on loopback */
  if (t->heartbeat > 0) pn_transport_set_idle_timeout(tr, (pn_millis_t)t->heartbeat * 2000);
  if (t->tls) {
    pn_ssl_domain_t *dom = pn_ssl_domain(PN_SSL_MODE_CLIENT);
    if (!dom) return sg_errorf(e, SG_E_INTERNAL, "amqp1: this Proton has no TLS support");
    if (t->verify) {
      const char *ca = t->cacert ? t->cacert : "/etc/ssl/certs/ca-certificates.crt";
      if (pn_ssl_domain_set_trusted_ca_db(dom, ca) != 0) {
        pn_ssl_domain_free(dom);
        return sg_errorf(e, SG_E_INTERNAL, "amqp1: cannot load CA certificates %s", ca);
      }
      pn_ssl_domain_set_peer_authentication(dom, PN_SSL_VERIFY_PEER_NAME, NULL);
    } else {
      pn_ssl_domain_set_peer_authentication(dom, PN_SSL_ANONYMOUS_PEER, NULL);
    }
    pn_ssl_t *ssl = pn_ssl(tr);
    int rc = ssl ? pn_ssl_init(ssl, dom, NULL) : -1;
    pn_ssl_domain_free(dom);
    if (rc != 0) return sg_errorf(e, SG_E_INTERNAL, "amqp1: cannot start TLS");
    pn_ssl_set_peer_hostname(ssl, t->host); /* SNI, and the name checked with verify */
  }
  pn_connection_driver_bind(&t->drv);
  pn_connection_open(c);
  t->ssn = pn_session(c);
  pn_session_open(t->ssn);
  for (struct rcv *r = t->rcvs; r; r = r->next) open_receiver(t, r);
  return 0;
}

/* Frees what belonged to the last connection (deferred from conn_lost). */
static void drop_connection(struct amqp1_transport *t) {
  if (t->have_drv) pn_connection_driver_destroy(&t->drv);
  t->have_drv = 0;
  t->ssn = NULL;
  if (t->fd >= 0) close(t->fd);
  t->fd = -1;
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp1_transport *t = w->data;
  drop_connection(t);
  struct sg_error e = {{0}, 0};
  t->gen++;
  if (dial(t, &e) < 0 || start_driver(t, &e) < 0) {
    drop_connection(t);
    sg_warn("%s; retrying in %.2fs", e.msg, t->backoff);
    ev_timer_set(&t->retry, t->backoff, 0.);
    ev_timer_start(loop, &t->retry);
    t->backoff = t->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : t->backoff * 2;
    return;
  }
  t->state = CONNECTING;
  t->want_write = 1;
  set_io(t);
  ev_timer_set(&t->deadline, t->timeout_ms / 1000.0, 0.);
  ev_timer_start(loop, &t->deadline);
  pump(t);
}

/* The connection is unusable: forget everything tied to it and try again later. */
static void conn_lost(struct amqp1_transport *t, const char *why) {
  if (t->state == DOWN) return;
  if (t->state == CONNECTING)
    sg_warn("amqp1: connecting to %s:%s failed: %s; retrying in %.2fs", t->host, t->port, why, t->backoff);
  else
    sg_warn("amqp1: connection to %s:%s lost: %s; %zu unsettled deliveries go back to the broker, unconfirmed "
            "sends are sent again after reconnect", t->host, t->port, why, t->npending);
  t->state = DOWN;
  t->gen++;
  ev_io_stop(t->loop, &t->io);
  ev_timer_stop(t->loop, &t->tick);
  ev_timer_stop(t->loop, &t->deadline);
  ev_idle_stop(t->loop, &t->resume);
  ev_timer_stop(t->loop, &t->resend);
  pending_clear(t);
  renew_reset(t);
  for (struct rcv *r = t->rcvs; r; r = r->next) { r->link = NULL; r->attached = 0; }
  for (struct snd *s = t->snds; s; s = s->next) s->link = NULL;
  if (t->fd >= 0) shutdown(t->fd, SHUT_RDWR);
  ev_timer_stop(t->loop, &t->retry);
  ev_timer_set(&t->retry, t->backoff, 0.);
  ev_timer_start(t->loop, &t->retry);
  t->backoff = t->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : t->backoff * 2;
}

/* ---- lock renewal (Service Bus peek-lock) ----
 *
 * Service Bus locks a message it delivers for the queue's lock duration (30 s by default) and delivers
 * it again once the lock expires unsettled; our accept after that fails (message-lock-lost). We settle
 * only after the commit holding a message's effect, which a store stall or a long handler can delay, so
 * with renew=1 each held delivery's lock is renewed through the queue's management node: a sender to
 * "<queue address>/$management" and a receiver from it (target: a reply address of ours), attached when
 * the queue's first delivery arrives. A request is a message with application-properties
 * operation = "com.microsoft:renew-lock" (and associated-link-name = our receiver's link name) and an
 * amqp-value body {"lock-tokens": array of uuid}; the response has application-properties statusCode
 * (200) and statusDescription and the body {"expirations": array of timestamp}, in the order of the
 * tokens. A lock token is the 16-byte delivery tag, which Service Bus writes in .NET's Guid byte order:
 * as a uuid its first three fields are byte-swapped (what Azure's SDKs do).
 *
 * A delivery's lock is renewed at 2/3 of its lock time: the lock time is lock_ms (30000), or less when
 * the broker says less (the delivery's x-opt-locked-until annotation, then the expirations returned).
 * Due deliveries of one queue go in one request (at most RENEW_BATCH tokens); deliveries due within the
 * next sixth of their lock time go along. A failed batch (Service Bus fails a whole request when one
 * lock is lost) is sent again token by token; a token whose own request fails (410: lock lost) is logged
 * and forgotten: the broker delivers the message again and our inbox answers it. Settling a delivery
 * (pending_take) ends its renewal. A request not answered within a third of the lock time is given up
 * and the tokens are due again. RabbitMQ has no $management node: renew=0 there (the default for any
 * host not under .servicebus.). */

#define RENEW_BATCH 64
#define RENEW_OP "com.microsoft:renew-lock"

struct mgmt {
  char *address;    /* <queue address>/$management */
  char *reply;      /* our receiver's target: the reply-to of our requests */
  pn_link_t *snd, *rcv;
  double retry_at;  /* the broker closed the pair: not attached again before this (ev_now time) */
  double backoff;
};

/* The context of every $management link: their events never reach handle_event's own cases (a
 * receiver's context there is its struct rcv), also after the pair was dropped. */
static char mgmt_mark;

static double wall_ms(void) { return ev_time() * 1000.0; }

/* The uuid of a lock token from a delivery tag in .NET Guid byte order. */
static void lock_token_of(const unsigned char *tag, unsigned char *u) {
  static const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int i = 0; i < 16; i++) u[i] = tag[order[i]];
}

static void uuid_text(const unsigned char *u, char *buf, size_t n) {
  snprintf(buf, n, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4],
           u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* A map entry of d (the map entered) whose key (symbol or string) is name; d on its value. */
static int map_find(pn_data_t *d, const char *name) {
  size_t len = strlen(name);
  while (pn_data_next(d)) {
    pn_type_t kt = pn_data_type(d);
    pn_bytes_t k = kt == PN_SYMBOL ? pn_data_get_symbol(d) : kt == PN_STRING ? pn_data_get_string(d) : pn_bytes(0, NULL);
    if (!pn_data_next(d)) return 0;
    if (k.size == len && memcmp(k.start, name, len) == 0) return 1;
  }
  return 0;
}

static int64_t data_int(pn_data_t *d, int64_t dflt) {
  switch (pn_data_type(d)) {
  case PN_BYTE: return pn_data_get_byte(d);
  case PN_UBYTE: return pn_data_get_ubyte(d);
  case PN_SHORT: return pn_data_get_short(d);
  case PN_USHORT: return pn_data_get_ushort(d);
  case PN_INT: return pn_data_get_int(d);
  case PN_UINT: return pn_data_get_uint(d);
  case PN_LONG: return pn_data_get_long(d);
  case PN_ULONG: return (int64_t)pn_data_get_ulong(d);
  case PN_TIMESTAMP: return pn_data_get_timestamp(d);
  case PN_STRING: {
    pn_bytes_t s = pn_data_get_string(d);
    char buf[24];
    if (!s.size || s.size >= sizeof buf) return dflt;
    memcpy(buf, s.start, s.size);
    buf[s.size] = 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    return *end ? dflt : v;
  }
  default: return dflt;
  }
}

/* Was this delivered before? delivery-count > 0, or first-acquirer false (RabbitMQ sets it). With
 * renew on (Service Bus), a header that leaves first-acquirer unset says nothing: delivery-count alone
 * counts there (otherwise every delivery would look redelivered). bytes: the message as received. */
static int redelivered_of(struct amqp1_transport *t, const char *bytes, size_t n) {
  if (pn_message_get_delivery_count(t->msg) > 0) return 1;
  if (pn_message_is_first_acquirer(t->msg)) return 0;
  if (!t->renew) return 1;
  /* the header section is the first: described(0x70, list[durable, priority, ttl, first-acquirer, ...]) */
  int set = 0;
  pn_data_t *d = pn_data(8);
  if (pn_data_decode(d, bytes, n) > 0) {
    pn_data_rewind(d);
    if (pn_data_next(d) && pn_data_type(d) == PN_DESCRIBED) {
      pn_data_enter(d);
      if (pn_data_next(d) && pn_data_type(d) == PN_ULONG && pn_data_get_ulong(d) == 0x70 && pn_data_next(d) &&
          pn_data_type(d) == PN_LIST && pn_data_get_list(d) >= 4) {
        pn_data_enter(d);
        for (int i = 0; i < 4; i++) pn_data_next(d);
        set = pn_data_type(d) == PN_BOOL;
      }
    }
  }
  pn_data_free(d);
  return set; /* set and false: delivered before */
}

static void renew_arm(struct amqp1_transport *t);

static void mgmt_open(struct amqp1_transport *t, struct rcv *r) {
  struct mgmt *m = r->mgmt;
  char name[600];
  snprintf(name, sizeof name, "%s-mgmt-sender-%s", t->container, r->queue);
  m->snd = pn_sender(t->ssn, name);
  pn_link_set_context(m->snd, &mgmt_mark);
  pn_terminus_set_address(pn_link_target(m->snd), m->address);
  pn_terminus_set_address(pn_link_source(m->snd), m->reply);
  pn_link_set_snd_settle_mode(m->snd, PN_SND_SETTLED);
  pn_link_open(m->snd);
  snprintf(name, sizeof name, "%s-mgmt-receiver-%s", t->container, r->queue);
  m->rcv = pn_receiver(t->ssn, name);
  pn_link_set_context(m->rcv, &mgmt_mark);
  pn_terminus_set_address(pn_link_source(m->rcv), m->address);
  pn_terminus_set_address(pn_link_target(m->rcv), m->reply);
  pn_link_set_rcv_settle_mode(m->rcv, PN_RCV_FIRST);
  pn_link_open(m->rcv);
  pn_link_flow(m->rcv, 16);
}

/* Starts renewing p's lock (called as a delivery is handed to the engine; t->msg holds its message). */
static void renew_track(struct amqp1_transport *t, struct rcv *r, struct pending *p) {
  if (t->renew <= 0) return;
  pn_delivery_tag_t tag = pn_delivery_tag(p->d);
  if (tag.size != 16) {
    sg_debug("amqp1: a delivery on %s has a %zu-byte tag, not a lock token: its lock is not renewed", r->queue,
             tag.size);
    return;
  }
  lock_token_of((const unsigned char *)tag.start, p->token);
  p->r = r;
  p->renew = 1;
  double period = t->lock_ms / 1000.0;
  /* Service Bus says when the lock ends (x-opt-locked-until): believed when it is sooner */
  pn_data_t *a = pn_message_annotations(t->msg);
  pn_data_rewind(a);
  if (pn_data_next(a) && pn_data_type(a) == PN_MAP) {
    pn_data_enter(a);
    if (map_find(a, "x-opt-locked-until")) {
      double left = ((double)data_int(a, 0) - wall_ms()) / 1000.0;
      if (left > 0 && left < period) period = left;
    }
    pn_data_exit(a);
  }
  p->period = period;
  p->renew_at = ev_now(t->loop) + period * 2 / 3;
  if (!r->mgmt) {
    r->mgmt = sg_xcalloc(1, sizeof *r->mgmt);
    char *addr = queue_address(t, r->queue);
    r->mgmt->address = sg_asprintf("%s/$management", addr);
    r->mgmt->reply = sg_asprintf("%s-mgmt-reply-%s", t->container, r->queue);
    r->mgmt->backoff = 1.0;
    free(addr);
  }
  if (!r->mgmt->snd && ev_now(t->loop) >= r->mgmt->retry_at && t->ssn) mgmt_open(t, r);
  if (!ev_is_active(&t->renew_timer) || ev_timer_remaining(t->loop, &t->renew_timer) > p->renew_at - ev_now(t->loop))
    renew_arm(t);
}

/* Sends one renew-lock request for the n held deliveries ps (all from r's queue). */
static void renew_send(struct amqp1_transport *t, struct rcv *r, struct pending **ps, int n) {
  struct mgmt *m = r->mgmt;
  uint64_t id = ++t->next_req;
  pn_message_t *msg = t->rmsg;
  pn_message_clear(msg);
  pn_atom_t mid;
  mid.type = PN_ULONG;
  mid.u.as_ulong = id;
  pn_message_set_id(msg, mid);
  pn_message_set_reply_to(msg, m->reply);
  pn_data_t *ap = pn_message_properties(msg);
  pn_data_put_map(ap);
  pn_data_enter(ap);
  pn_data_put_string(ap, pn_bytes(strlen("operation"), "operation"));
  pn_data_put_string(ap, pn_bytes(strlen(RENEW_OP), RENEW_OP));
  const char *link_name = r->link ? pn_link_name(r->link) : NULL;
  if (link_name) {
    pn_data_put_string(ap, pn_bytes(strlen("associated-link-name"), "associated-link-name"));
    pn_data_put_string(ap, pn_bytes(strlen(link_name), link_name));
  }
  pn_data_exit(ap);
  pn_data_t *body = pn_message_body(msg);
  pn_data_put_map(body);
  pn_data_enter(body);
  pn_data_put_string(body, pn_bytes(strlen("lock-tokens"), "lock-tokens"));
  pn_data_put_array(body, false, PN_UUID);
  pn_data_enter(body);
  double now = ev_now(t->loop);
  for (int i = 0; i < n; i++) {
    pn_uuid_t u;
    memcpy(u.bytes, ps[i]->token, 16);
    pn_data_put_uuid(body, u);
    ps[i]->req = id;
    ps[i]->req_idx = i;
    ps[i]->req_n = n;
    ps[i]->req_sent = now;
    ps[i]->req_deadline = now + (ps[i]->period / 3 > 1.0 ? ps[i]->period / 3 : 1.0);
  }
  pn_data_exit(body);
  pn_data_exit(body);
  pn_message_set_inferred(msg, false);
  pn_delivery_t *d = pn_delivery(m->snd, pn_dtag((const char *)&id, sizeof id));
  if (pn_message_send(msg, m->snd, NULL) < 0) {
    sg_warn("amqp1: cannot encode a renew-lock request: %s", pn_error_text(pn_message_error(msg)));
    for (int i = 0; i < n; i++) ps[i]->req = 0;
  }
  pn_delivery_settle(d); /* sent settled: the response is the answer */
  sg_debug("amqp1: renewing %d lock%s on %s", n, n == 1 ? "" : "s", r->queue);
}

/* The next renewal (or request deadline) among the held deliveries, or stopped when there is none. */
static void renew_arm(struct amqp1_transport *t) {
  ev_timer_stop(t->loop, &t->renew_timer);
  if (t->state == DOWN) return;
  double next = 0;
  int any = 0;
  for (size_t b = 0; b < t->nbucket; b++)
    for (struct pending *p = t->bucket[b]; p; p = p->next) {
      if (!p->renew) continue;
      double at = p->req ? p->req_deadline : p->renew_at;
      if (p->req == 0 && p->r->mgmt && !p->r->mgmt->snd && p->r->mgmt->retry_at > at) at = p->r->mgmt->retry_at;
      if (!any || at < next) next = at;
      any = 1;
    }
  if (!any) return;
  double in = next - ev_now(t->loop);
  ev_timer_set(&t->renew_timer, in > 0.001 ? in : 0.001, 0.);
  ev_timer_start(t->loop, &t->renew_timer);
}

static void renew_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct amqp1_transport *t = w->data;
  if (t->state == DOWN) return;
  double now = ev_now(loop);
  struct pending *batch[RENEW_BATCH];
  int sent = 0;
  for (struct rcv *r = t->rcvs; r; r = r->next) {
    if (!r->mgmt) continue;
    if (!r->mgmt->snd) {
      if (now < r->mgmt->retry_at || !t->ssn) continue;
      mgmt_open(t, r);
    }
    int n = 0;
    for (size_t b = 0; b < t->nbucket; b++)
      for (struct pending *p = t->bucket[b]; p; p = p->next) {
        if (!p->renew || p->r != r) continue;
        if (p->req && now >= p->req_deadline) {
          sg_info("amqp1: no answer to a renew-lock request on %s within %.1fs; asked again", r->queue,
                  p->req_deadline - p->req_sent);
          p->req = 0;
          p->renew_at = now;
        }
        if (p->req || now < p->renew_at - p->period / 6) continue; /* due, or due soon: goes along */
        if (p->solo) {
          renew_send(t, r, &p, 1);
          sent++;
          continue;
        }
        batch[n++] = p;
        if (n == RENEW_BATCH) { renew_send(t, r, batch, n); sent++; n = 0; }
      }
    if (n) { renew_send(t, r, batch, n); sent++; }
  }
  renew_arm(t);
  if (sent) kick(t);
}

/* A response on r's management receiver. */
static void renew_response(struct amqp1_transport *t, struct rcv *r, pn_link_t *l, pn_delivery_t *d) {
  size_t n = pn_delivery_pending(d);
  char *buf = sg_xmalloc(n + 1);
  ssize_t got = pn_link_recv(l, buf, n);
  pn_link_advance(l);
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  pn_link_flow(l, 1);
  pn_message_t *msg = t->rmsg;
  pn_message_clear(msg);
  if (got < 0 || pn_message_decode(msg, buf, (size_t)got) != 0) {
    free(buf);
    sg_warn("amqp1: an unreadable message on %s's management link ignored", r->queue);
    return;
  }
  free(buf);
  pn_atom_t corr = pn_message_get_correlation_id(msg);
  uint64_t id = corr.type == PN_ULONG ? corr.u.as_ulong : 0;
  int64_t status = -1;
  char desc[300] = "";
  pn_data_t *ap = pn_message_properties(msg);
  pn_data_rewind(ap);
  if (pn_data_next(ap) && pn_data_type(ap) == PN_MAP) {
    pn_data_enter(ap);
    if (map_find(ap, "statusCode")) status = data_int(ap, -1);
    pn_data_rewind(ap);
    pn_data_next(ap);
    pn_data_enter(ap);
    if (map_find(ap, "statusDescription") && (pn_data_type(ap) == PN_STRING || pn_data_type(ap) == PN_SYMBOL)) {
      pn_bytes_t s = pn_data_type(ap) == PN_STRING ? pn_data_get_string(ap) : pn_data_get_symbol(ap);
      snprintf(desc, sizeof desc, "%.*s", (int)s.size, s.start);
    }
  }
  /* the expirations, in the order of the request's tokens */
  int64_t exp[RENEW_BATCH];
  size_t nexp = 0;
  pn_data_t *body = pn_message_body(msg);
  pn_data_rewind(body);
  if (status >= 200 && status < 300 && pn_data_next(body) && pn_data_type(body) == PN_MAP) {
    pn_data_enter(body);
    if (map_find(body, "expirations") && (pn_data_type(body) == PN_ARRAY || pn_data_type(body) == PN_LIST)) {
      pn_data_enter(body);
      while (nexp < RENEW_BATCH && pn_data_next(body)) exp[nexp++] = data_int(body, 0);
    }
  }
  /* the deliveries of that request still held */
  struct pending *ps[RENEW_BATCH];
  int np = 0;
  for (size_t b = 0; id && b < t->nbucket; b++)
    for (struct pending *p = t->bucket[b]; p; p = p->next)
      if (p->req == id && np < RENEW_BATCH) ps[np++] = p;
  if (!np) {
    sg_debug("amqp1: renew-lock response %llu on %s (status %lld): nothing held for it", (unsigned long long)id,
             r->queue, (long long)status);
    return;
  }
  double now = ev_now(t->loop);
  int total = ps[0]->req_n;
  for (int i = 0; i < np; i++) {
    struct pending *p = ps[i];
    p->req = 0;
    if (status >= 200 && status < 300) {
      double period = t->lock_ms / 1000.0, base = p->req_sent;
      if ((size_t)p->req_idx < nexp && exp[p->req_idx] > 0) {
        double left = ((double)exp[p->req_idx] - wall_ms()) / 1000.0;
        if (left > 0 && left < period) { period = left; base = now; }
      }
      p->period = period;
      p->renew_at = base + period * 2 / 3;
      p->solo = 0;
      r->mgmt->backoff = 1.0; /* the pair works */
    } else if (total > 1 && !p->solo) {
      p->solo = 1; /* one lost lock fails the whole request: ask for each alone */
      p->renew_at = now;
    } else {
      char tok[40];
      uuid_text(p->token, tok, sizeof tok);
      sg_warn("amqp1: the lock of a delivery on %s (lock token %s) was not renewed (%lld%s%s); it is no longer "
              "renewed: the broker delivers the message again when the lock ends, and the inbox answers it",
              r->queue, tok, (long long)status, *desc ? ": " : "", desc);
      p->renew = 0;
    }
  }
  if (!(status >= 200 && status < 300) && total > 1)
    sg_info("amqp1: renewing %d locks on %s failed (%lld%s%s); each is asked again alone", total, r->queue,
            (long long)status, *desc ? ": " : "", desc);
  renew_arm(t);
}

/* Events of the $management links: 1 when ev was one of theirs (handled here). */
static int renew_event(struct amqp1_transport *t, pn_event_t *ev) {
  if (t->renew <= 0) return 0;
  pn_delivery_t *d = pn_event_delivery(ev);
  pn_link_t *l = d ? pn_delivery_link(d) : pn_event_link(ev);
  if (!l || pn_link_get_context(l) != &mgmt_mark) return 0;
  struct rcv *r;
  for (r = t->rcvs; r; r = r->next)
    if (r->mgmt && (r->mgmt->snd == l || r->mgmt->rcv == l)) break;
  if (!r) { /* a link of a pair already dropped */
    if (d && pn_link_is_receiver(l)) { pn_link_advance(l); pn_delivery_update(d, PN_RELEASED); pn_delivery_settle(d); }
    return 1;
  }
  struct mgmt *m = r->mgmt;
  switch (pn_event_type(ev)) {
  case PN_DELIVERY:
    if (l == m->rcv && pn_delivery_readable(d) && !pn_delivery_partial(d)) renew_response(t, r, l, d);
    break;
  case PN_LINK_REMOTE_CLOSE:
  case PN_LINK_REMOTE_DETACH: {
    char buf[600];
    sg_warn("amqp1: the broker closed the management link %s (%s); lock renewal on %s attached again in %.0fs",
            m->address, cond_text(pn_link_remote_condition(l), buf, sizeof buf), r->queue, m->backoff);
    pn_link_close(m->snd);
    pn_link_close(m->rcv);
    pn_link_free(m->snd);
    pn_link_free(m->rcv);
    m->snd = m->rcv = NULL;
    m->retry_at = ev_now(t->loop) + m->backoff;
    m->backoff = m->backoff * 2 > 60 ? 60 : m->backoff * 2;
    for (size_t b = 0; b < t->nbucket; b++)
      for (struct pending *p = t->bucket[b]; p; p = p->next)
        if (p->r == r && p->req) { p->req = 0; p->renew_at = m->retry_at; }
    renew_arm(t);
    kick(t);
    break;
  }
  default: break;
  }
  return 1;
}

/* The connection is gone (its deliveries with it): the links go with it too. */
static void renew_reset(struct amqp1_transport *t) {
  ev_timer_stop(t->loop, &t->renew_timer);
  for (struct rcv *r = t->rcvs; r; r = r->next)
    if (r->mgmt) { r->mgmt->snd = r->mgmt->rcv = NULL; r->mgmt->retry_at = 0; }
}

static void renew_free(struct amqp1_transport *t) {
  renew_reset(t);
  for (struct rcv *r = t->rcvs; r; r = r->next) {
    if (!r->mgmt) continue;
    free(r->mgmt->address);
    free(r->mgmt->reply);
    free(r->mgmt);
    r->mgmt = NULL;
  }
  if (t->rmsg) pn_message_free(t->rmsg);
  t->rmsg = NULL;
}

/* ---- the ops ---- */

static int check_service_name(const char *service, struct sg_error *e) {
  if (!service || !*service || strchr(service, '.') || strchr(service, '/') || strchr(service, '#') ||
      strchr(service, '*') || strlen(service) > 200)
    return sg_errorf(e, SG_E_INVALID, "amqp1: bad service name '%s' (no dots, slashes or wildcards, at most 200 bytes)",
                     service ? service : "");
  return 0;
}

static int op_subscribe(struct sg_transport *bt, const char *service, struct sg_error *e) {
  struct amqp1_transport *t = T(bt);
  if (check_service_name(service, e) < 0) return -1;
  for (struct rcv *r = t->rcvs; r; r = r->next)
    if (r->service && strcmp(r->service, service) == 0) return 0;
  struct rcv *r = sg_xcalloc(1, sizeof *r);
  r->service = sg_strdup(service);
  r->queue = sg_asprintf("saga.svc.%s", service);
  r->next = t->rcvs;
  t->rcvs = r;
  if (t->state != DOWN && t->ssn) {
    open_receiver(t, r);
    if (t->state == UP) r->attached = 1; /* a later attach does not hold back readiness */
    kick(t);
  }
  return 0;
}

/* Queues are not declared over AMQP 1.0 (Service Bus: created with the namespace; RabbitMQ: declared with
 * the 0-9-1 topology, docs/protocol.md): only the name is checked. */
static int op_declare_service(struct sg_transport *bt, const char *service, struct sg_error *e) {
  return check_service_name(service, e);
}

static int op_publish(struct sg_transport *bt, const struct sg_msg *m, struct sg_error *e) {
  struct amqp1_transport *t = T(bt);
  if (t->state != UP)
    return sg_errorf(e, SG_E_INTERNAL, "amqp1: not connected to %s:%s; the message goes out after reconnect", t->host,
                     t->port);
  if (wire_encode(t, m, e) < 0) return -1;
  char subject[600];
  char *addr = wire_address(t, m, subject, sizeof subject);
  if (*subject) pn_message_set_subject(t->msg, subject);
  pn_link_t *link = sender_for(t, addr);
  free(addr);
  uint64_t n = ++t->next_delivery;
  pn_delivery_t *d = pn_delivery(link, pn_dtag((const char *)&n, sizeof n));
  pn_delivery_set_context(d, (void *)(intptr_t)m->outbox_id);
  if (pn_message_send(t->msg, link, NULL) < 0) {
    sg_errorf(e, SG_E_INTERNAL, "amqp1: encoding %s: %s", m->message_id, pn_error_text(pn_message_error(t->msg)));
    pn_delivery_settle(d);
    return -1;
  }
  kick(t);
  return 0;
}

static void op_ack(struct sg_transport *bt, uint64_t tag) {
  struct amqp1_transport *t = T(bt);
  pn_delivery_t *d = pending_take(t, tag);
  if (!d) {
    sg_debug("amqp1: ack of unknown or stale delivery %llx ignored", (unsigned long long)tag);
    return;
  }
  accept_delivery(d);
  kick(t);
}

static void op_nack(struct sg_transport *bt, uint64_t tag, const struct sg_msg *m, const char *reason) {
  struct amqp1_transport *t = T(bt);
  pn_delivery_t *d = pending_take(t, tag);
  if (!d) {
    sg_debug("amqp1: nack of unknown or stale delivery %llx ignored", (unsigned long long)tag);
    return;
  }
  sg_info("amqp1: rejected (dead-lettered) %s: %s", m && m->message_id ? m->message_id : "a message",
          reason ? reason : "rejected");
  reject(t, d, reason ? reason : "rejected");
  kick(t);
}

static const char *op_reply_queue(struct sg_transport *bt) { return T(bt)->reply_address; }

static int op_connected(struct sg_transport *bt) { return T(bt)->state == UP; }

static void op_set_max_body(struct sg_transport *bt, int64_t bytes) { T(bt)->max_body = bytes; }

static void op_reset(struct sg_transport *bt, const char *why) { conn_lost(T(bt), why); }

static void op_close(struct sg_transport *bt) {
  struct amqp1_transport *t = T(bt);
  if (t->state != DOWN && t->have_drv) {
    /* a polite close, best effort and without waiting: the broker releases our unsettled deliveries */
    pn_connection_close(t->drv.connection);
    while (pn_connection_driver_next_event(&t->drv)) {}
    pn_bytes_t wb = pn_connection_driver_write_buffer(&t->drv);
    if (wb.size && send(t->fd, wb.start, wb.size, MSG_NOSIGNAL) < 0) sg_debug("amqp1: close: %s", strerror(errno));
  }
  ev_io_stop(t->loop, &t->io);
  ev_timer_stop(t->loop, &t->tick);
  ev_timer_stop(t->loop, &t->retry);
  ev_timer_stop(t->loop, &t->deadline);
  ev_idle_stop(t->loop, &t->resume);
  ev_timer_stop(t->loop, &t->resend);
  pending_clear(t);
  renew_free(t);
  drop_connection(t);
  while (t->rcvs) {
    struct rcv *r = t->rcvs;
    t->rcvs = r->next;
    free(r->queue);
    free(r->service);
    free(r);
  }
  while (t->snds) {
    struct snd *s = t->snds;
    t->snds = s->next;
    free(s->address);
    free(s);
  }
  if (t->msg) pn_message_free(t->msg);
  free(t->rbuf);
  free(t->bucket);
  free(t->host);
  free(t->port);
  free(t->user);
  free(t->password);
  free(t->hostname);
  free(t->prefix);
  free(t->events);
  free(t->cacert);
  free(t->reply_queue);
  free(t->reply_address);
  free(t->container);
  free(t);
}

static const struct sg_transport_ops amqp1_ops = {
  .name = "amqp1",
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

static int hexval(int c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* n bytes of s, %XX-decoded (Service Bus keys hold '+', '/' and '='). */
static char *pct_decode(const char *s, size_t n) {
  char *out = sg_xmalloc(n + 1), *o = out;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      *o++ = s[i];
    }
  }
  *o = 0;
  return out;
}

/* Options in the query string (see docs/operations.md):
 *   prefix=P (""): a queue's address is P + its name; "/amq/queue/" for RabbitMQ 3.x's amqp1_0 plugin
 *   events=ADDR ("saga.events"): where ctx:publish events go; "/exchange/saga.events" for RabbitMQ
 *   prefetch=N (256)  heartbeat=S (10; idle time-out 2·S)  timeout_ms=N (5000: connect and attach)
 *   hostname=H (the open frame's hostname; RabbitMQ reads "vhost:NAME")  cacert=PATH  verify=0|1
 *   renew=0|1 (lock renewal through $management; default 1 for a host under .servicebus., else 0)
 *   lock_ms=N (30000: the lock duration assumed when the broker does not say a shorter one) */
static int parse_options(struct amqp1_transport *t, char *q, struct sg_error *e) {
  for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
    char *v = strchr(kv, '=');
    if (!v) return sg_errorf(e, SG_E_INVALID, "amqp1 url: option '%s' needs a value (name=value)", kv);
    *v++ = 0;
    char *end;
    long n = strtol(v, &end, 10);
    int num = *v && !*end;
    char *dv = pct_decode(v, strlen(v));
    int ok = 1;
    if (strcmp(kv, "prefetch") == 0 && num && n > 0 && n <= 65535) t->prefetch = (int)n;
    else if (strcmp(kv, "heartbeat") == 0 && num && n >= 0 && n <= 3600) t->heartbeat = (int)n;
    else if (strcmp(kv, "timeout_ms") == 0 && num && n >= 100 && n <= 120000) t->timeout_ms = (int)n;
    else if (strcmp(kv, "verify") == 0 && num) t->verify = n != 0;
    else if (strcmp(kv, "renew") == 0 && num && (n == 0 || n == 1)) t->renew = (int)n;
    else if (strcmp(kv, "lock_ms") == 0 && num && n >= 500 && n <= 3600000) t->lock_ms = (int)n;
    else if (strcmp(kv, "prefix") == 0) { free(t->prefix); t->prefix = dv; dv = NULL; }
    else if (strcmp(kv, "events") == 0 && *dv) { free(t->events); t->events = dv; dv = NULL; }
    else if (strcmp(kv, "hostname") == 0 && *dv) { free(t->hostname); t->hostname = dv; dv = NULL; }
    else if (strcmp(kv, "cacert") == 0 && *dv) { free(t->cacert); t->cacert = dv; dv = NULL; }
    else ok = 0;
    free(dv);
    if (!ok)
      return sg_errorf(e, SG_E_INVALID, "amqp1 url: unknown option or bad value '%s=%s' (prefix, events, prefetch, "
                       "heartbeat, timeout_ms, hostname, cacert, verify, renew, lock_ms)", kv, v);
  }
  return 0;
}

void sg_amqp1_redact(const char *url, char *out, size_t n) {
  const char *scheme = strstr(url, "://"), *at = scheme ? strchr(scheme + 3, '@') : NULL;
  const char *colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
  if (!colon) snprintf(out, n, "%s", url);
  else snprintf(out, n, "%.*s:***%s", (int)(colon - url), url, at);
}

/* amqp[s]://[user[:password]@]host[:port][/][?options] */
static int parse_url(struct amqp1_transport *t, const char *url_in, struct sg_error *e) {
  char url[1024]; /* for messages: without the password */
  sg_amqp1_redact(url_in, url, sizeof url);
  char *buf = sg_strdup(url_in), *s = buf;
  int rc = -1;
  char *q = strchr(s, '?');
  if (q) *q++ = 0;
  if (strncmp(s, "amqps://", 8) == 0) { t->tls = 1; s += 8; }
  else if (strncmp(s, "amqp://", 7) == 0) s += 7;
  else { sg_errorf(e, SG_E_INVALID, "amqp1: URL '%s' must start with amqp:// or amqps://", url); goto out; }
  char *slash = strchr(s, '/');
  if (slash) {
    if (slash[1]) { sg_errorf(e, SG_E_INVALID, "amqp1: URL '%s' has a path; use ?hostname=vhost:NAME for a RabbitMQ vhost", url); goto out; }
    *slash = 0;
  }
  char *at = strrchr(s, '@');
  if (at) {
    *at = 0;
    char *colon = strchr(s, ':');
    t->user = pct_decode(s, colon ? (size_t)(colon - s) : strlen(s));
    if (colon) t->password = pct_decode(colon + 1, strlen(colon + 1));
    s = at + 1;
  }
  char *colon = s[0] == '[' ? strstr(s, "]:") : strrchr(s, ':');
  if (colon && s[0] == '[') colon++;
  if (colon) {
    *colon = 0;
    t->port = sg_strdup(colon + 1);
  } else {
    t->port = sg_strdup(t->tls ? "5671" : "5672");
  }
  if (s[0] == '[') { s++; s[strcspn(s, "]")] = 0; }
  if (!*s || !*t->port) { sg_errorf(e, SG_E_INVALID, "amqp1: URL '%s' names no host", url); goto out; }
  t->host = sg_strdup(s);
  if (q && parse_options(t, q, e) < 0) goto out;
  if (t->cacert) t->verify = 1;
  if (t->renew < 0) t->renew = strstr(t->host, ".servicebus.") != NULL; /* Azure: *.servicebus.windows.net */
  rc = 0;
out:
  free(buf);
  return rc;
}

struct sg_transport *sg_transport_amqp1_new(struct ev_loop *loop, const char *url, const char *host_id,
                                            const struct sg_transport_events *ev, struct sg_error *e) {
  if (!host_id || !*host_id) {
    sg_errorf(e, SG_E_INVALID, "amqp1: a host id is needed to name the reply queue");
    return NULL;
  }
  struct amqp1_transport *t = sg_xcalloc(1, sizeof *t);
  t->base.ops = &amqp1_ops;
  t->base.ev = *ev;
  t->loop = loop;
  t->fd = -1;
  t->prefetch = 256;
  t->heartbeat = 10;
  t->timeout_ms = 5000;
  t->renew = -1;
  t->lock_ms = 30000;
  ev_timer_init(&t->renew_timer, renew_cb, 1., 0.);
  t->renew_timer.data = t;
  t->backoff = BACKOFF_MIN;
  t->prefix = sg_strdup("");
  t->events = sg_strdup(SG_AMQP_X_EVENTS);
  ev_io_init(&t->io, io_cb, -1, EV_READ);
  t->io.data = t;
  ev_timer_init(&t->tick, tick_cb, 1., 0.);
  t->tick.data = t;
  ev_timer_init(&t->deadline, deadline_cb, 1., 0.);
  t->deadline.data = t;
  ev_idle_init(&t->resume, resume_cb);
  t->resume.data = t;
  ev_timer_init(&t->resend, resend_cb, 1., 0.);
  t->resend.data = t;
  t->resend_backoff = 1.0;
  ev_timer_init(&t->retry, retry_cb, 0., 0.); /* the first attempt runs from the loop */
  t->retry.data = t;
  t->msg = pn_message();
  t->rmsg = pn_message();
  t->nbucket = 64;
  if (parse_url(t, url, e) < 0) {
    op_close(&t->base);
    return NULL;
  }
  while (t->nbucket < (size_t)t->prefetch * 2) t->nbucket *= 2;
  t->bucket = sg_xcalloc(t->nbucket, sizeof *t->bucket);
  t->reply_queue = sg_asprintf("saga.reply.%s", host_id);
  t->reply_address = queue_address(t, t->reply_queue);
  t->container = sg_asprintf("sagahost-%s", host_id);
  struct rcv *r = sg_xcalloc(1, sizeof *r);
  r->queue = sg_strdup(t->reply_queue);
  t->rcvs = r;
  ev_timer_start(loop, &t->retry);
  return &t->base;
}
