/* amqp_envelope: sg_msg <-> AMQP properties + body (the contract of docs/protocol.md). */
#include "amqp_envelope.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- encode ---- */

static void put_str(struct sg_amqp_out *o, const char *key, const char *val) {
  amqp_table_entry_t *en = &o->hdr[o->props.headers.num_entries++];
  en->key = amqp_cstring_bytes(key);
  en->value.kind = AMQP_FIELD_KIND_UTF8;
  en->value.value.bytes = amqp_cstring_bytes(val);
}

/* 'I' (signed 32-bit) is the integer type every AMQP client decodes. */
static void put_int(struct sg_amqp_out *o, const char *key, int val) {
  amqp_table_entry_t *en = &o->hdr[o->props.headers.num_entries++];
  en->key = amqp_cstring_bytes(key);
  en->value.kind = AMQP_FIELD_KIND_I32;
  en->value.value.i32 = val;
}

int sg_amqp_encode(const struct sg_msg *m, struct sg_amqp_out *o, struct sg_error *e) {
  memset(o, 0, sizeof *o);
  char what[300];
  sg_msg_what(m, what, sizeof what);
  if (!m->message_id || !*m->message_id) return sg_errorf(e, SG_E_INVALID, "amqp: message (%s) has no message_id", what);
  if (!m->body) return sg_errorf(e, SG_E_INVALID, "amqp: message %s has no body", m->message_id);
  int reply = m->kind == SG_MSG_REPLY;
  if (reply) {
    if (!m->reply_to || !*m->reply_to)
      return sg_errorf(e, SG_E_INVALID, "amqp: reply %s has no address to go to (the command's reply_to)", m->message_id);
    if (!m->correlation_id || !*m->correlation_id)
      return sg_errorf(e, SG_E_INVALID, "amqp: reply %s to '%s' has no correlation_id", m->message_id, m->reply_to);
    if (!m->status) return sg_errorf(e, SG_E_INVALID, "amqp: reply %s has no status (ok or error)", m->message_id);
    o->exchange = amqp_cstring_bytes(""); /* the default exchange: straight to the queue */
    o->routing_key = amqp_cstring_bytes(m->reply_to);
  } else {
    const char *service = m->kind == SG_MSG_SIGNAL ? SG_SIGNAL_SERVICE : m->service;
    const char *name = m->kind == SG_MSG_SIGNAL ? SG_SIGNAL_COMMAND : m->name;
    if (!service || !*service || !name || !*name)
      return sg_errorf(e, SG_E_INVALID, "amqp: %s %s names no %s", sg_msg_kind_name(m->kind), m->message_id,
                       !service || !*service ? (m->kind == SG_MSG_EVENT ? "topic" : "service") : "name");
    if ((size_t)snprintf(o->rk, sizeof o->rk, "%s.%s", service, name) >= sizeof o->rk)
      return sg_errorf(e, SG_E_INVALID, "amqp: message %s: routing key %s.%s is too long", m->message_id, service, name);
    o->exchange = amqp_cstring_bytes(m->kind == SG_MSG_EVENT ? SG_AMQP_X_EVENTS : SG_AMQP_X_COMMANDS);
    o->routing_key = amqp_cstring_bytes(o->rk);
    o->mandatory = m->kind != SG_MSG_EVENT; /* an unroutable command must come back (basic.return) */
  }
  if (m->status && strcmp(m->status, "ok") != 0 && strcmp(m->status, "error") != 0)
    return sg_errorf(e, SG_E_INVALID, "amqp: message %s has status '%s', expected ok or error", m->message_id, m->status);
  if (m->nheaders > SG_AMQP_MAX_HEADERS - 5)
    return sg_errorf(e, SG_E_INVALID, "amqp: message %s has %zu headers, at most %d go", m->message_id, m->nheaders,
                     SG_AMQP_MAX_HEADERS - 5);
  o->body = amqp_cstring_bytes(m->body);

  amqp_basic_properties_t *p = &o->props;
  p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
              AMQP_BASIC_HEADERS_FLAG;
  p->content_type = amqp_cstring_bytes("application/json");
  p->delivery_mode = 2; /* persistent: survives a broker restart in a durable queue */
  p->message_id = amqp_cstring_bytes(m->message_id);
  /* a command is its own correlation id, so a reply can be matched without knowing the message_id */
  const char *corr = m->correlation_id ? m->correlation_id : (o->mandatory ? m->message_id : NULL);
  if (corr) {
    p->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
    p->correlation_id = amqp_cstring_bytes(corr);
  }
  if (!reply && m->reply_to && *m->reply_to) {
    p->_flags |= AMQP_BASIC_REPLY_TO_FLAG;
    p->reply_to = amqp_cstring_bytes(m->reply_to);
  }
  const char *type = m->kind == SG_MSG_SIGNAL ? SG_SIGNAL_COMMAND : m->name;
  if (type && *type) {
    p->_flags |= AMQP_BASIC_TYPE_FLAG;
    p->type = amqp_cstring_bytes(type);
  }
  if (m->created_at > 0) {
    p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    p->timestamp = (uint64_t)(m->created_at / 1000); /* AMQP timestamps are seconds */
  }
  p->headers.entries = o->hdr;
  if (m->saga_id) put_str(o, "saga-id", m->saga_id);
  if (m->saga_type) put_str(o, "saga-type", m->saga_type);
  if (m->saga_id) {
    put_int(o, "step", m->step);
    put_int(o, "attempt", m->attempt);
  }
  if (m->status) put_str(o, "saga-status", m->status);
  for (size_t i = 0; i < m->nheaders; i++) put_str(o, m->headers[i].name, m->headers[i].value);
  return 0;
}

/* ---- header access ---- */

static int bytes_eq(amqp_bytes_t b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && memcmp(b.bytes, s, n) == 0;
}

static char *bytes_dup(amqp_bytes_t b) {
  char *s = sg_xmalloc(b.len + 1);
  if (b.len) memcpy(s, b.bytes, b.len);
  s[b.len] = 0;
  return s;
}

const amqp_field_value_t *sg_amqp_header(const amqp_table_t *t, const char *name) {
  if (!t) return NULL;
  for (int i = 0; i < t->num_entries; i++)
    if (bytes_eq(t->entries[i].key, name)) return &t->entries[i].value;
  return NULL;
}

char *sg_amqp_header_str(const amqp_table_t *t, const char *name) {
  const amqp_field_value_t *v = sg_amqp_header(t, name);
  if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES)) return NULL;
  return bytes_dup(v->value.bytes);
}

int sg_amqp_header_int(const amqp_table_t *t, const char *name, int64_t *out) {
  const amqp_field_value_t *v = sg_amqp_header(t, name);
  if (!v) return 0;
  switch (v->kind) {
  case AMQP_FIELD_KIND_I8: *out = v->value.i8; return 1;
  case AMQP_FIELD_KIND_U8: *out = v->value.u8; return 1;
  case AMQP_FIELD_KIND_I16: *out = v->value.i16; return 1;
  case AMQP_FIELD_KIND_U16: *out = v->value.u16; return 1;
  case AMQP_FIELD_KIND_I32: *out = v->value.i32; return 1;
  case AMQP_FIELD_KIND_U32: *out = v->value.u32; return 1;
  case AMQP_FIELD_KIND_I64: *out = v->value.i64; return 1;
  case AMQP_FIELD_KIND_U64:
    if (v->value.u64 > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)v->value.u64;
    return 1;
  case AMQP_FIELD_KIND_F32:
  case AMQP_FIELD_KIND_F64: {
    /* some clients (JavaScript) only have doubles */
    double d = v->kind == AMQP_FIELD_KIND_F32 ? v->value.f32 : v->value.f64;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0) return -1;
    *out = (int64_t)d;
    return 1;
  }
  case AMQP_FIELD_KIND_UTF8:
  case AMQP_FIELD_KIND_BYTES: {
    /* shell tools and some clients can only send string headers */
    char buf[32];
    amqp_bytes_t b = v->value.bytes;
    if (b.len == 0 || b.len >= sizeof buf) return -1;
    memcpy(buf, b.bytes, b.len);
    buf[b.len] = 0;
    char *end;
    errno = 0;
    long long n = strtoll(buf, &end, 10);
    if (errno || *end) return -1;
    *out = n;
    return 1;
  }
  default: return -1;
  }
}

/* ---- decode ---- */

#define HAS(p, f) (((p)->_flags & (f)) != 0)

/* A property as a malloc'd string, NULL when absent or empty. */
static char *prop_str(const amqp_basic_properties_t *p, amqp_flags_t flag, amqp_bytes_t b) {
  return HAS(p, flag) && b.len ? bytes_dup(b) : NULL;
}

/* Reads a string header; -1 (and e filled) when present with a non-string type. */
static int hdr_str(const amqp_table_t *t, const char *name, char **out, struct sg_error *e) {
  const amqp_field_value_t *v = sg_amqp_header(t, name);
  *out = NULL;
  if (!v) return 0;
  if (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES)
    return sg_errorf(e, SG_E_INVALID, "header %s must be a string (got AMQP field type '%c')", name, v->kind);
  *out = bytes_dup(v->value.bytes);
  return 0;
}

static int hdr_int(const amqp_table_t *t, const char *name, int *out, struct sg_error *e) {
  int64_t n = 0;
  int r = sg_amqp_header_int(t, name, &n);
  if (r < 0 || n < INT_MIN || n > INT_MAX)
    return sg_errorf(e, SG_E_INVALID, "header %s must be an integer", name);
  *out = r ? (int)n : 0;
  return 0;
}

static int check_json(amqp_bytes_t body, struct sg_error *e) {
  if (body.len == 0) return sg_errorf(e, SG_E_INVALID, "body is empty; it must be a JSON value");
  if (memchr(body.bytes, 0, body.len)) return sg_errorf(e, SG_E_INVALID, "body contains a NUL byte; it must be JSON text");
  json_error_t je;
  json_t *j = json_loadb(body.bytes, body.len, JSON_DECODE_ANY, &je);
  if (!j)
    return sg_errorf(e, SG_E_INVALID, "body is not valid JSON: %s at line %d column %d", je.text, je.line, je.column);
  json_decref(j);
  return 0;
}

static int has_prefix(amqp_bytes_t b, const char *prefix) {
  size_t n = strlen(prefix);
  return b.len >= n && memcmp(b.bytes, prefix, n) == 0;
}

/* Reads a string header into the message's header list; -1 (and e filled) when present with a
 * non-string type. */
static int hdr_keep(const amqp_table_t *t, const char *name, struct sg_msg *m, struct sg_error *e) {
  char *v = NULL;
  if (hdr_str(t, name, &v, e) < 0) return -1;
  if (v) sg_msg_set_header(m, name, v);
  free(v);
  return 0;
}

static int decode_into(const amqp_basic_properties_t *p, amqp_bytes_t exchange, amqp_bytes_t routing_key,
                       amqp_bytes_t queue, amqp_bytes_t body, struct sg_msg *m, struct sg_error *e) {
  const amqp_table_t *h = HAS(p, AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL;
  /* the queue says what it is; without one, replies are what comes through the default exchange */
  size_t svc_prefix = strlen("saga.svc.");
  int from_service = has_prefix(queue, "saga.svc.") && queue.len > svc_prefix;
  int reply = has_prefix(queue, "saga.reply.") || (!from_service && exchange.len == 0);

  if (check_json(body, e) < 0) return -1;
  m->kind = reply ? SG_MSG_REPLY : SG_MSG_COMMAND;
  m->body = bytes_dup(body);
  m->name = prop_str(p, AMQP_BASIC_TYPE_FLAG, p->type);
  if (from_service) { /* the queue names the service, whatever the routing key */
    amqp_bytes_t svc = { queue.len - svc_prefix, (char *)queue.bytes + svc_prefix };
    m->service = bytes_dup(svc);
  }
  if (!reply && !m->name) {
    /* the name is the type property; else the routing key's part after the service */
    const char *rk = routing_key.bytes ? (const char *)routing_key.bytes : "";
    const char *dot = memchr(rk, '.', routing_key.len);
    if (from_service && exchange.len == 0)
      return sg_errorf(e, SG_E_INVALID, "command sent straight to %.*s has no type property; set it to the command name",
                       (int)queue.len, (const char *)queue.bytes);
    if (!dot || dot + 1 >= rk + routing_key.len)
      return sg_errorf(e, SG_E_INVALID, "message has no type property and routing key '%.*s' names no command",
                       (int)routing_key.len, rk);
    amqp_bytes_t nm = { (size_t)(rk + routing_key.len - dot - 1), (char *)dot + 1 };
    m->name = bytes_dup(nm);
  }
  if (!reply && !m->service) { /* no queue known: the routing key up to its first dot */
    const char *rk = routing_key.bytes ? (const char *)routing_key.bytes : "";
    const char *dot = memchr(rk, '.', routing_key.len);
    amqp_bytes_t sv = { dot ? (size_t)(dot - rk) : routing_key.len, (char *)rk };
    m->service = bytes_dup(sv);
  }
  m->message_id = prop_str(p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
  m->correlation_id = prop_str(p, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
  /* a command: where its reply goes; a reply: the queue it came to */
  m->reply_to = reply ? (queue.len ? bytes_dup(queue) : NULL) : prop_str(p, AMQP_BASIC_REPLY_TO_FLAG, p->reply_to);
  if (HAS(p, AMQP_BASIC_TIMESTAMP_FLAG) && p->timestamp < (uint64_t)INT64_MAX / 1000)
    m->created_at = (int64_t)p->timestamp * 1000;
  if (hdr_str(h, "saga-id", &m->saga_id, e) < 0 || hdr_str(h, "saga-type", &m->saga_type, e) < 0 ||
      hdr_str(h, "saga-status", &m->status, e) < 0 || hdr_int(h, "step", &m->step, e) < 0 ||
      hdr_int(h, "attempt", &m->attempt, e) < 0)
    return -1;
  /* a signal (docs/protocol.md): its saga by key and its name (checked by the engine, signals.c) */
  if (hdr_keep(h, SG_HDR_SAGA_KEY, m, e) < 0 || hdr_keep(h, SG_HDR_SIGNAL, m, e) < 0) return -1;
  /* trace context is best effort: a header of another type is ignored, never dead-letters */
  char *tp = sg_amqp_header_str(h, SG_HDR_TRACEPARENT);
  if (tp) {
    sg_msg_set_header(m, SG_HDR_TRACEPARENT, tp);
    char *ts = sg_amqp_header_str(h, SG_HDR_TRACESTATE);
    if (ts) sg_msg_set_header(m, SG_HDR_TRACESTATE, ts);
    free(ts);
    free(tp);
  }

  if (!reply) { /* a command: a saga-status header does not make it a reply */
    free(m->status);
    m->status = NULL;
  }
  if (reply) {
    if (!m->correlation_id)
      return sg_errorf(e, SG_E_INVALID, "reply has no correlation_id; set it to the message_id of the command it answers");
    if (!m->status)
      return sg_errorf(e, SG_E_INVALID, "reply has no saga-status header; set it to \"ok\" or \"error\"");
    /* a plain client may not set one: the command it answers identifies the reply (and dedups it) */
    if (!m->message_id) {
      struct sg_buf b;
      sg_buf_init(&b);
      sg_buf_printf(&b, "reply:%s", m->correlation_id);
      m->message_id = sg_buf_steal(&b);
    }
  } else if (!m->message_id) {
    return sg_errorf(e, SG_E_INVALID, "message has no message_id; it is the idempotency key and is required");
  }
  if (m->status && strcmp(m->status, "ok") != 0 && strcmp(m->status, "error") != 0)
    return sg_errorf(e, SG_E_INVALID, "header saga-status is \"%s\"; it must be \"ok\" or \"error\"", m->status);
  sg_msg_classify(m); /* a command to the service "saga" named "signal" */
  return 0;
}

int sg_amqp_decode(const amqp_basic_properties_t *p, amqp_bytes_t exchange, amqp_bytes_t routing_key,
                   amqp_bytes_t queue, amqp_bytes_t body, struct sg_msg *out, struct sg_error *e) {
  memset(out, 0, sizeof *out);
  if (decode_into(p, exchange, routing_key, queue, body, out, e) < 0) {
    sg_msg_free(out);
    memset(out, 0, sizeof *out);
    return -1;
  }
  return 0;
}

/* ---- copies ---- */

static amqp_bytes_t pool_bytes(amqp_pool_t *pool, amqp_bytes_t src) {
  amqp_bytes_t b = {0, NULL};
  if (src.len == 0) return b;
  amqp_pool_alloc_bytes(pool, src.len, &b);
  if (!b.bytes) abort(); /* out of memory, as sg_xmalloc */
  memcpy(b.bytes, src.bytes, src.len);
  return b;
}

/* Fields whose flag is clear are garbage in what librabbitmq decodes: copy only flagged ones. */
static amqp_bytes_t clone_field(const amqp_basic_properties_t *src, amqp_flags_t flag, amqp_bytes_t b, amqp_pool_t *pool) {
  return HAS(src, flag) ? pool_bytes(pool, b) : amqp_empty_bytes;
}

static void clone_table(const amqp_table_t *src, amqp_table_t *dst, amqp_pool_t *pool);

/* Our own deep copy, not amqp_table_clone: that one refuses a header with an empty key (which the
 * wire decoder accepts from any publisher), and a delivery must never stop the host. */
static void clone_value(const amqp_field_value_t *src, amqp_field_value_t *dst, amqp_pool_t *pool) {
  *dst = *src;
  switch (src->kind) {
  case AMQP_FIELD_KIND_UTF8:
  case AMQP_FIELD_KIND_BYTES: dst->value.bytes = pool_bytes(pool, src->value.bytes); break;
  case AMQP_FIELD_KIND_TABLE: clone_table(&src->value.table, &dst->value.table, pool); break;
  case AMQP_FIELD_KIND_ARRAY: {
    int n = src->value.array.num_entries > 0 ? src->value.array.num_entries : 0;
    dst->value.array.num_entries = n;
    dst->value.array.entries = NULL;
    if (!n) break;
    dst->value.array.entries = amqp_pool_alloc(pool, sizeof(amqp_field_value_t) * (size_t)n);
    if (!dst->value.array.entries) abort(); /* out of memory, as sg_xmalloc */
    for (int i = 0; i < n; i++) clone_value(&src->value.array.entries[i], &dst->value.array.entries[i], pool);
    break;
  }
  default: break; /* scalars: copied with the struct */
  }
}

static void clone_table(const amqp_table_t *src, amqp_table_t *dst, amqp_pool_t *pool) {
  int n = src->num_entries > 0 ? src->num_entries : 0;
  *dst = amqp_empty_table;
  if (!n) return;
  dst->entries = amqp_pool_alloc(pool, sizeof *dst->entries * (size_t)n);
  if (!dst->entries) abort();
  dst->num_entries = n;
  for (int i = 0; i < n; i++) {
    dst->entries[i].key = pool_bytes(pool, src->entries[i].key);
    clone_value(&src->entries[i].value, &dst->entries[i].value, pool);
  }
}

void sg_amqp_props_clone(const amqp_basic_properties_t *src, amqp_basic_properties_t *dst, amqp_pool_t *pool) {
  memset(dst, 0, sizeof *dst);
  dst->_flags = src->_flags;
  dst->content_type = clone_field(src, AMQP_BASIC_CONTENT_TYPE_FLAG, src->content_type, pool);
  dst->content_encoding = clone_field(src, AMQP_BASIC_CONTENT_ENCODING_FLAG, src->content_encoding, pool);
  dst->correlation_id = clone_field(src, AMQP_BASIC_CORRELATION_ID_FLAG, src->correlation_id, pool);
  dst->reply_to = clone_field(src, AMQP_BASIC_REPLY_TO_FLAG, src->reply_to, pool);
  dst->expiration = clone_field(src, AMQP_BASIC_EXPIRATION_FLAG, src->expiration, pool);
  dst->message_id = clone_field(src, AMQP_BASIC_MESSAGE_ID_FLAG, src->message_id, pool);
  dst->type = clone_field(src, AMQP_BASIC_TYPE_FLAG, src->type, pool);
  dst->user_id = clone_field(src, AMQP_BASIC_USER_ID_FLAG, src->user_id, pool);
  dst->app_id = clone_field(src, AMQP_BASIC_APP_ID_FLAG, src->app_id, pool);
  dst->cluster_id = clone_field(src, AMQP_BASIC_CLUSTER_ID_FLAG, src->cluster_id, pool);
  if (HAS(src, AMQP_BASIC_DELIVERY_MODE_FLAG)) dst->delivery_mode = src->delivery_mode;
  if (HAS(src, AMQP_BASIC_PRIORITY_FLAG)) dst->priority = src->priority;
  if (HAS(src, AMQP_BASIC_TIMESTAMP_FLAG)) dst->timestamp = src->timestamp;
  dst->headers = amqp_empty_table;
  if (HAS(src, AMQP_BASIC_HEADERS_FLAG)) clone_table(&src->headers, &dst->headers, pool);
}

void sg_amqp_dead_letter_props(const amqp_basic_properties_t *orig, const char *reason, amqp_bytes_t exchange,
                               amqp_bytes_t routing_key, amqp_basic_properties_t *dst, amqp_pool_t *pool) {
  static const char *const added[] = {"x-saga-error", "x-saga-original-exchange", "x-saga-original-routing-key"};
  *dst = *orig;
  const amqp_table_t *h = HAS(orig, AMQP_BASIC_HEADERS_FLAG) ? &orig->headers : NULL;
  int n = h ? h->num_entries : 0;
  amqp_table_entry_t *en = amqp_pool_alloc(pool, sizeof *en * (size_t)(n + 3));
  if (!en) abort();
  int k = 0;
  /* keep the original headers except ours: a message dead-lettered twice carries the latest reason */
  for (int i = 0; i < n; i++) {
    int ours = 0;
    for (int j = 0; j < 3; j++) ours |= bytes_eq(h->entries[i].key, added[j]);
    if (!ours) en[k++] = h->entries[i];
  }
  amqp_bytes_t vals[3] = {amqp_cstring_bytes(reason ? reason : "rejected"), exchange, routing_key};
  for (int j = 0; j < 3; j++) {
    en[k].key = amqp_cstring_bytes(added[j]);
    en[k].value.kind = AMQP_FIELD_KIND_UTF8;
    en[k].value.value.bytes = pool_bytes(pool, vals[j]);
    k++;
  }
  dst->_flags |= AMQP_BASIC_HEADERS_FLAG;
  dst->headers.num_entries = k;
  dst->headers.entries = en;
  /* the copy must survive a broker restart like the original should have */
  dst->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
  dst->delivery_mode = 2;
}
