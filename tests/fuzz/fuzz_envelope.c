/* libFuzzer target: sg_amqp_decode on a fuzzed delivery (properties, headers table of any field kinds,
 * exchange, routing key, queue, body), then what the AMQP transport does with a rejected or accepted
 * one: clone the properties, build the dead-letter properties, pass the headers through the wire
 * format, re-encode the decoded message.
 *
 * Input layout (every read past the end yields zeros, so any byte string is a valid input):
 *   flags(1) then, for message_id, correlation_id, type, reply_to, exchange, routing key: len(1) bytes;
 *   queue: prefix choice(1) len(1) bytes; timestamp(8); nheaders(1) and per header:
 *   key choice(1) [len(1) bytes] kind(1) value; the rest is the body. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_envelope.h"
#include "util.h"

struct in {
  const uint8_t *p;
  size_t n;
};

static uint8_t byte(struct in *in) {
  if (!in->n) return 0;
  in->n--;
  return *in->p++;
}

static uint64_t u64(struct in *in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | byte(in);
  return v;
}

/* up to `max` bytes, borrowed from the input */
static amqp_bytes_t bytes(struct in *in, size_t max) {
  size_t len = byte(in) % (max + 1);
  if (len > in->n) len = in->n;
  amqp_bytes_t b = {len, (void *)in->p};
  in->p += len;
  in->n -= len;
  return b;
}

/* a prefix + fuzzed bytes, copied into the pool */
static amqp_bytes_t prefixed(struct in *in, const char *prefix, amqp_pool_t *pool) {
  amqp_bytes_t tail = bytes(in, 40), b;
  size_t n = strlen(prefix);
  amqp_pool_alloc_bytes(pool, n + tail.len, &b);
  if (!b.bytes) abort();
  memcpy(b.bytes, prefix, n);
  if (tail.len) memcpy((char *)b.bytes + n, tail.bytes, tail.len);
  return b;
}

static const char kinds[] = {'t', 'b', 'B', 's', 'u', 'I', 'i', 'l', 'L', 'f', 'd', 'D', 'S', 'A', 'T', 'F', 'V', 'x'};
static const char *const names[] = {"saga-id", "saga-type", "saga-status", "step", "attempt", "x-saga-error"};

static void value(struct in *in, amqp_field_value_t *v, amqp_pool_t *pool, int depth);

static void table(struct in *in, amqp_table_t *t, amqp_pool_t *pool, int depth) {
  int n = byte(in) % (depth ? 4 : 12);
  t->num_entries = n;
  t->entries = n ? amqp_pool_alloc(pool, sizeof *t->entries * (size_t)n) : NULL;
  for (int i = 0; i < n; i++) {
    uint8_t k = byte(in);
    t->entries[i].key = k < 192 ? amqp_cstring_bytes(names[k % 6]) : bytes(in, 16);
    value(in, &t->entries[i].value, pool, depth);
  }
}

static void value(struct in *in, amqp_field_value_t *v, amqp_pool_t *pool, int depth) {
  uint8_t k = byte(in);
  memset(v, 0, sizeof *v);
  if (k >= 250) { /* a kind no wire decoder produces: the decoder must still not trust it */
    v->kind = byte(in);
    return;
  }
  v->kind = kinds[k % sizeof kinds];
  switch (v->kind) {
  case 'S': case 'x': {
    /* numbers as text are common (shell tools send string headers) */
    v->value.bytes = bytes(in, 40);
    break;
  }
  case 'f': { uint32_t u = (uint32_t)u64(in); memcpy(&v->value.f32, &u, 4); break; }
  case 'd': { uint64_t u = u64(in); memcpy(&v->value.f64, &u, 8); break; }
  case 'D': v->value.decimal.decimals = byte(in); v->value.decimal.value = (uint32_t)u64(in); break;
  case 'F':
    if (depth < 2) table(in, &v->value.table, pool, depth + 1);
    else v->kind = 'V';
    break;
  case 'A': {
    int n = depth < 2 ? byte(in) % 4 : 0;
    v->value.array.num_entries = n;
    v->value.array.entries = n ? amqp_pool_alloc(pool, sizeof(amqp_field_value_t) * (size_t)n) : NULL;
    for (int i = 0; i < n; i++) value(in, &v->value.array.entries[i], pool, depth + 1);
    break;
  }
  case 'V': break;
  default: v->value.u64 = u64(in); break; /* the integer kinds and 't': any bit pattern */
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return -1;
  struct in in = {data, size};
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);

  amqp_basic_properties_t p;
  memset(&p, 0, sizeof p);
  uint8_t flags = byte(&in);
  if (flags & 1) p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
  if (flags & 2) p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
  if (flags & 4) p._flags |= AMQP_BASIC_TYPE_FLAG;
  if (flags & 8) p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
  if (flags & 16) p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
  if (flags & 32) p._flags |= AMQP_BASIC_HEADERS_FLAG;
  /* fields whose flag is clear still hold bytes: the decoder must ignore them */
  p.message_id = bytes(&in, 64);
  p.correlation_id = bytes(&in, 64);
  p.type = bytes(&in, 32);
  p.reply_to = bytes(&in, 32);
  amqp_bytes_t exchange = bytes(&in, 32);
  amqp_bytes_t rk = bytes(&in, 64);
  amqp_bytes_t queue;
  switch (byte(&in) % 4) {
  case 0: queue = prefixed(&in, "saga.svc.", &pool); break;
  case 1: queue = prefixed(&in, "saga.reply.", &pool); break;
  case 2: queue = amqp_empty_bytes; break;
  default: queue = bytes(&in, 40); break;
  }
  p.timestamp = u64(&in);
  table(&in, &p.headers, &pool, 0);
  amqp_bytes_t body = {in.n, (void *)in.p};

  struct sg_msg m;
  struct sg_error e = {0};
  int rc = sg_amqp_decode(&p, exchange, rk, queue, body, &m, &e);
  static int verbose = -1; /* FUZZ_VERBOSE=1: say what each input decoded to (checking seeds) */
  if (verbose < 0) verbose = getenv("FUZZ_VERBOSE") != NULL;
  if (verbose) fprintf(stderr, "decode: %s\n", rc == 0 ? m.message_id : e.msg);
  if (rc == 0) {
    if (!m.message_id || !m.body) abort();
    if (m.kind == SG_MSG_REPLY ? !m.correlation_id || !m.status : !m.service || !m.name || m.status) abort();
    if (m.status && strcmp(m.status, "ok") != 0 && strcmp(m.status, "error") != 0) abort();
    struct sg_amqp_out o;
    struct sg_error e2 = {0};
    (void)sg_amqp_encode(&m, &o, &e2);
    struct sg_msg c;
    sg_msg_copy(&c, &m);
    sg_msg_free(&c);
    sg_msg_free(&m);
  } else {
    if (!e.msg[0] || m.message_id || m.body) abort(); /* failed: says why, leaves nothing behind */
  }

  {
    /* what the transport does with the delivery: clone it out of the connection's pools, and
     * dead-letter it with the reason (the headers may hold any kind and empty keys) */
    amqp_basic_properties_t c, dl;
    sg_amqp_props_clone(&p, &c, &pool);
    /* the copy decodes as the original did */
    struct sg_error ec = {0};
    if (sg_amqp_decode(&c, exchange, rk, queue, body, &m, &ec) != rc || strcmp(ec.msg, e.msg) != 0) abort();
    sg_msg_free(&m);
    sg_amqp_dead_letter_props(&c, e.msg[0] ? e.msg : NULL, exchange, rk, &dl, &pool);
    /* and the headers as a broker would hand them over (librabbitmq refuses unknown kinds) */
    char buf[16384];
    size_t off = 0;
    if (amqp_encode_table((amqp_bytes_t){sizeof buf, buf}, &dl.headers, &off) == AMQP_STATUS_OK) {
      size_t len = off;
      off = 0;
      amqp_basic_properties_t w = dl;
      if (amqp_decode_table((amqp_bytes_t){len, buf}, &pool, &w.headers, &off) == AMQP_STATUS_OK) {
        char *err = sg_amqp_header_str(&w.headers, "x-saga-error");
        if (!err) abort(); /* the dead-letter copy always says why */
        free(err);
        int64_t n;
        (void)sg_amqp_header_int(&w.headers, "step", &n);
        if (sg_amqp_decode(&w, exchange, rk, queue, body, &m, &e) == 0) sg_msg_free(&m);
      }
    }
  }
  empty_amqp_pool(&pool);
  return 0;
}
