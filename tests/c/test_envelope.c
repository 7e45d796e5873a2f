/* Unit tests for amqp_envelope.c: sg_msg -> AMQP properties -> (wire) -> sg_msg, and the errors a
 * malformed message from a foreign participant gets. No broker needed. */
#include <stdlib.h>
#include <string.h>

#include "amqp_envelope.h"
#include "check.h"

/* Headers as a broker hands them over: serialized to the wire format and decoded back. The decoded
 * strings point into the wire buffer (as librabbitmq's frames do), so it lives in the pool. */
static void wire_headers(amqp_basic_properties_t *p, amqp_pool_t *pool) {
  char *buf = amqp_pool_alloc(pool, 4096);
  size_t off = 0;
  amqp_table_t in = p->headers;
  CHECK(amqp_encode_table((amqp_bytes_t){4096, buf}, &in, &off) == AMQP_STATUS_OK);
  size_t len = off;
  off = 0;
  CHECK(amqp_decode_table((amqp_bytes_t){len, buf}, pool, &p->headers, &off) == AMQP_STATUS_OK);
}

/* Encodes m, passes it over the "wire" and decodes it as delivered from exchange with rk. */
static int round_trip(const struct sg_msg *m, struct sg_msg *out, struct sg_error *e, amqp_pool_t *pool) {
  struct sg_amqp_out o;
  if (sg_amqp_encode(m, &o, e) < 0) return -1;
  wire_headers(&o.props, pool);
  return sg_amqp_decode(&o.props, o.exchange, o.routing_key, amqp_empty_bytes, o.body, out, e);
}

static void test_command(void) {
  struct sg_msg m = {0};
  m.outbox_id = 7;
  m.message_id = "m-1";
  m.kind = SG_MSG_COMMAND;
  m.service = "inventory";
  m.name = "Reserve";
  m.reply_to = "saga.reply.h1";
  m.saga_id = "s-1";
  m.saga_type = "OrderProcessing";
  m.step = 2;
  m.attempt = 3;
  m.body = "{\"sku\":\"book\",\"qty\":1}";
  m.created_at = 1700000000123;

  struct sg_amqp_out o;
  struct sg_error e = {0};
  CHECK(sg_amqp_encode(&m, &o, &e) == 0);
  CHECK(o.mandatory == 1);
  CHECK(o.exchange.len == strlen(SG_AMQP_X_COMMANDS) && memcmp(o.exchange.bytes, SG_AMQP_X_COMMANDS, o.exchange.len) == 0);
  CHECK(o.routing_key.len == 17 && memcmp(o.routing_key.bytes, "inventory.Reserve", 17) == 0);
  CHECK(o.props.type.len == 7 && memcmp(o.props.type.bytes, "Reserve", 7) == 0);
  CHECK(o.props.delivery_mode == 2);
  CHECK(o.props._flags & AMQP_BASIC_CORRELATION_ID_FLAG);
  CHECK(o.props.correlation_id.len == 3 && memcmp(o.props.correlation_id.bytes, "m-1", 3) == 0);
  CHECK(o.props.content_type.len == 16 && memcmp(o.props.content_type.bytes, "application/json", 16) == 0);
  CHECK(sg_amqp_header(&o.props.headers, "step")->kind == AMQP_FIELD_KIND_I32);

  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  struct sg_msg d;
  CHECK(round_trip(&m, &d, &e, &pool) == 0);
  CHECK_STR(d.message_id, "m-1");
  CHECK_STR(d.correlation_id, "m-1");
  CHECK(d.kind == SG_MSG_COMMAND);
  CHECK_STR(d.service, "inventory");
  CHECK_STR(d.name, "Reserve");
  CHECK_STR(d.reply_to, "saga.reply.h1");
  CHECK_STR(d.saga_id, "s-1");
  CHECK_STR(d.saga_type, "OrderProcessing");
  CHECK_EQ_INT(d.step, 2);
  CHECK_EQ_INT(d.attempt, 3);
  CHECK_STR(d.status, NULL);
  CHECK_STR(d.body, m.body);
  CHECK_EQ_INT(d.created_at, 1700000000000); /* AMQP timestamps have second resolution */
  sg_msg_free(&d);
  empty_amqp_pool(&pool);
}

static void test_reply(void) {
  struct sg_msg m = {0};
  m.message_id = "r-1";
  m.correlation_id = "m-1";
  m.kind = SG_MSG_REPLY;
  m.reply_to = "saga.reply.h1";
  m.status = "error";
  m.body = "{\"error\":\"out of stock\",\"retryable\":false}";
  struct sg_amqp_out o;
  struct sg_error e = {0};
  CHECK(sg_amqp_encode(&m, &o, &e) == 0);
  CHECK(o.mandatory == 0);
  CHECK(o.exchange.len == 0);
  CHECK(o.routing_key.len == 13 && memcmp(o.routing_key.bytes, "saga.reply.h1", 13) == 0);
  CHECK(!(o.props._flags & AMQP_BASIC_REPLY_TO_FLAG)); /* where it goes is the routing key, not a property */

  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  struct sg_msg d;
  CHECK(round_trip(&m, &d, &e, &pool) == 0);
  CHECK_STR(d.correlation_id, "m-1");
  CHECK_STR(d.status, "error");
  CHECK(d.kind == SG_MSG_REPLY);
  CHECK_STR(d.saga_id, NULL);
  CHECK_EQ_INT(d.step, 0);
  sg_msg_free(&d);

  /* a reply from a plain client without message_id is identified by what it answers */
  struct sg_amqp_out o2;
  CHECK(sg_amqp_encode(&m, &o2, &e) == 0);
  o2.props._flags &= ~AMQP_BASIC_MESSAGE_ID_FLAG;
  CHECK(sg_amqp_decode(&o2.props, o2.exchange, o2.routing_key, amqp_empty_bytes, o2.body, &d, &e) == 0);
  CHECK_STR(d.message_id, "reply:m-1");
  sg_msg_free(&d);

  /* encode refuses replies the other side could not match */
  m.correlation_id = NULL;
  CHECK(sg_amqp_encode(&m, &o, &e) == -1);
  CHECK(strstr(e.msg, "correlation_id") != NULL);
  m.correlation_id = "m-1";
  m.status = "maybe";
  CHECK(sg_amqp_encode(&m, &o, &e) == -1);
  CHECK(strstr(e.msg, "maybe") != NULL);
  empty_amqp_pool(&pool);
}

static void test_event(void) {
  struct sg_msg m = {0};
  m.message_id = "e-1";
  m.kind = SG_MSG_EVENT;
  m.service = "orders";
  m.name = "Shipped";
  m.saga_id = "s-9";
  m.saga_type = "OrderProcessing";
  m.step = 0;
  m.attempt = 1;
  m.body = "[1,2,3]";
  struct sg_amqp_out o;
  struct sg_error e = {0};
  CHECK(sg_amqp_encode(&m, &o, &e) == 0);
  CHECK(o.mandatory == 0);
  CHECK(o.exchange.len == strlen(SG_AMQP_X_EVENTS) && memcmp(o.exchange.bytes, SG_AMQP_X_EVENTS, o.exchange.len) == 0);
  CHECK(o.routing_key.len == 14 && memcmp(o.routing_key.bytes, "orders.Shipped", 14) == 0);
  CHECK(!(o.props._flags & AMQP_BASIC_CORRELATION_ID_FLAG));
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  struct sg_msg d;
  CHECK(round_trip(&m, &d, &e, &pool) == 0);
  CHECK_STR(d.name, "Shipped");
  CHECK_STR(d.service, "orders"); /* delivered with no queue known: the routing key's first part */
  CHECK_STR(d.correlation_id, NULL);
  CHECK_EQ_INT(d.attempt, 1);
  sg_msg_free(&d);
  empty_amqp_pool(&pool);
}

/* Properties of a message as a foreign client might send it: only what the test sets. */
static amqp_basic_properties_t foreign(const char *message_id, amqp_table_entry_t *h, int nh) {
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof p);
  if (message_id) {
    p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
    p.message_id = amqp_cstring_bytes(message_id);
  }
  if (nh) {
    p._flags |= AMQP_BASIC_HEADERS_FLAG;
    p.headers.num_entries = nh;
    p.headers.entries = h;
  }
  return p;
}

static amqp_table_entry_t ent(const char *key, uint8_t kind) {
  amqp_table_entry_t en;
  memset(&en, 0, sizeof en);
  en.key = amqp_cstring_bytes(key);
  en.value.kind = kind;
  return en;
}

static void test_integer_headers(void) {
  amqp_table_entry_t h[10];
  h[0] = ent("a", AMQP_FIELD_KIND_I8), h[0].value.value.i8 = -5;
  h[1] = ent("b", AMQP_FIELD_KIND_U8), h[1].value.value.u8 = 200;
  h[2] = ent("c", AMQP_FIELD_KIND_I16), h[2].value.value.i16 = -3000;
  h[3] = ent("d", AMQP_FIELD_KIND_U16), h[3].value.value.u16 = 60000;
  h[4] = ent("e", AMQP_FIELD_KIND_U32), h[4].value.value.u32 = 4000000000u;
  h[5] = ent("f", AMQP_FIELD_KIND_I64), h[5].value.value.i64 = -9000000000LL;
  h[6] = ent("g", AMQP_FIELD_KIND_F64), h[6].value.value.f64 = 4.0;
  h[7] = ent("h", AMQP_FIELD_KIND_UTF8), h[7].value.value.bytes = amqp_cstring_bytes("17");
  h[8] = ent("i", AMQP_FIELD_KIND_F64), h[8].value.value.f64 = 4.5;
  h[9] = ent("j", AMQP_FIELD_KIND_UTF8), h[9].value.value.bytes = amqp_cstring_bytes("x7");
  amqp_table_t t = {10, h};
  int64_t v = 0;
  CHECK(sg_amqp_header_int(&t, "a", &v) == 1 && v == -5);
  CHECK(sg_amqp_header_int(&t, "b", &v) == 1 && v == 200);
  CHECK(sg_amqp_header_int(&t, "c", &v) == 1 && v == -3000);
  CHECK(sg_amqp_header_int(&t, "d", &v) == 1 && v == 60000);
  CHECK(sg_amqp_header_int(&t, "e", &v) == 1 && v == 4000000000LL);
  CHECK(sg_amqp_header_int(&t, "f", &v) == 1 && v == -9000000000LL);
  CHECK(sg_amqp_header_int(&t, "g", &v) == 1 && v == 4);
  CHECK(sg_amqp_header_int(&t, "h", &v) == 1 && v == 17);
  CHECK(sg_amqp_header_int(&t, "i", &v) == -1);
  CHECK(sg_amqp_header_int(&t, "j", &v) == -1);
  CHECK(sg_amqp_header_int(&t, "missing", &v) == 0);

  /* step as a 16-bit int and saga-id as a byte array, as other clients send them */
  amqp_table_entry_t hh[3];
  hh[0] = ent("step", AMQP_FIELD_KIND_I16), hh[0].value.value.i16 = 4;
  hh[1] = ent("attempt", AMQP_FIELD_KIND_U8), hh[1].value.value.u8 = 2;
  hh[2] = ent("saga-id", AMQP_FIELD_KIND_BYTES), hh[2].value.value.bytes = amqp_cstring_bytes("s-2");
  amqp_basic_properties_t p = foreign("m-2", hh, 3);
  struct sg_msg d;
  struct sg_error e = {0};
  CHECK(sg_amqp_decode(&p, amqp_cstring_bytes(SG_AMQP_X_COMMANDS), amqp_cstring_bytes("pay.Charge"), amqp_empty_bytes,
                       amqp_cstring_bytes("{}"), &d, &e) == 0);
  CHECK_EQ_INT(d.step, 4);
  CHECK_EQ_INT(d.attempt, 2);
  CHECK_STR(d.saga_id, "s-2");
  CHECK_STR(d.name, "Charge"); /* no type property: taken from the routing key */
  CHECK_STR(d.service, "pay");
  sg_msg_free(&d);

  /* an attempt that does not fit an int is an error, not a silent truncation */
  hh[1] = ent("attempt", AMQP_FIELD_KIND_I64), hh[1].value.value.i64 = 1LL << 40;
  p = foreign("m-2", hh, 3);
  CHECK(sg_amqp_decode(&p, amqp_cstring_bytes(SG_AMQP_X_COMMANDS), amqp_cstring_bytes("pay.Charge"), amqp_empty_bytes,
                       amqp_cstring_bytes("{}"), &d, &e) == -1);
  CHECK(strstr(e.msg, "attempt") != NULL);
  CHECK(d.body == NULL && d.message_id == NULL);
}

/* Decodes a foreign message that must be refused, and checks the reason mentions want. */
static void bad(amqp_basic_properties_t p, const char *exchange, const char *body, const char *want) {
  struct sg_msg d;
  struct sg_error e = {0};
  int rc = sg_amqp_decode(&p, amqp_cstring_bytes(exchange), amqp_cstring_bytes("svc.Do"), amqp_empty_bytes, amqp_cstring_bytes(body),
                          &d, &e);
  CHECK(rc == -1);
  if (!CHECK(strstr(e.msg, want) != NULL)) fprintf(stderr, "  error was: %s (wanted %s)\n", e.msg, want);
  CHECK(d.body == NULL && d.service == NULL && d.name == NULL);
}

static void test_malformed(void) {
  amqp_table_entry_t ok_status = ent("saga-status", AMQP_FIELD_KIND_UTF8);
  ok_status.value.value.bytes = amqp_cstring_bytes("ok");
  bad(foreign("m-1", NULL, 0), SG_AMQP_X_COMMANDS, "{\"a\":", "not valid JSON");
  bad(foreign("m-1", NULL, 0), SG_AMQP_X_COMMANDS, "", "empty");
  bad(foreign("m-1", NULL, 0), SG_AMQP_X_COMMANDS, "hello", "not valid JSON");
  bad(foreign(NULL, NULL, 0), SG_AMQP_X_COMMANDS, "{}", "message_id");
  /* replies: the default exchange */
  bad(foreign("r-1", &ok_status, 1), "", "{}", "correlation_id");
  amqp_basic_properties_t p = foreign("r-1", NULL, 0);
  p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
  p.correlation_id = amqp_cstring_bytes("m-1");
  bad(p, "", "{}", "saga-status");
  amqp_table_entry_t weird = ent("saga-status", AMQP_FIELD_KIND_UTF8);
  weird.value.value.bytes = amqp_cstring_bytes("fine");
  p = foreign("r-1", &weird, 1);
  p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
  p.correlation_id = amqp_cstring_bytes("m-1");
  bad(p, "", "{}", "must be \"ok\" or \"error\"");
  amqp_table_entry_t numeric_id = ent("saga-id", AMQP_FIELD_KIND_I32);
  numeric_id.value.value.i32 = 5;
  bad(foreign("m-1", &numeric_id, 1), SG_AMQP_X_COMMANDS, "{}", "saga-id must be a string");

  /* encode refuses what it cannot send */
  struct sg_msg m = {0};
  struct sg_amqp_out o;
  struct sg_error e = {0};
  m.kind = SG_MSG_COMMAND;
  m.service = "a";
  m.name = "B";
  m.body = "{}";
  CHECK(sg_amqp_encode(&m, &o, &e) == -1 && strstr(e.msg, "message_id"));
  m.message_id = "x";
  m.service = NULL;
  CHECK(sg_amqp_encode(&m, &o, &e) == -1 && strstr(e.msg, "names no service"));
  m.service = "a";
  m.name = NULL;
  CHECK(sg_amqp_encode(&m, &o, &e) == -1 && strstr(e.msg, "names no name"));
  m.kind = SG_MSG_REPLY;
  m.correlation_id = "c";
  m.status = "ok";
  CHECK(sg_amqp_encode(&m, &o, &e) == -1 && strstr(e.msg, "reply_to"));
}

static void test_dead_letter_props(void) {
  amqp_table_entry_t h[2];
  h[0] = ent("saga-id", AMQP_FIELD_KIND_UTF8), h[0].value.value.bytes = amqp_cstring_bytes("s-1");
  h[1] = ent("x-saga-error", AMQP_FIELD_KIND_UTF8), h[1].value.value.bytes = amqp_cstring_bytes("old reason");
  amqp_basic_properties_t p = foreign("m-1", h, 2);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_basic_properties_t c, dl;
  sg_amqp_props_clone(&p, &c, &pool);
  CHECK(c.message_id.bytes != p.message_id.bytes);
  sg_amqp_dead_letter_props(&c, "no handler for svc.Do", amqp_cstring_bytes(SG_AMQP_X_COMMANDS),
                            amqp_cstring_bytes("svc.Do"), &dl, &pool);
  CHECK_EQ_INT(dl.headers.num_entries, 4);
  char *why = sg_amqp_header_str(&dl.headers, "x-saga-error");
  CHECK_STR(why, "no handler for svc.Do");
  free(why);
  char *sid = sg_amqp_header_str(&dl.headers, "saga-id");
  CHECK_STR(sid, "s-1");
  free(sid);
  char *rk = sg_amqp_header_str(&dl.headers, "x-saga-original-routing-key");
  CHECK_STR(rk, "svc.Do");
  free(rk);
  CHECK(dl.delivery_mode == 2);
  empty_amqp_pool(&pool);
}

/* A header with an empty key (the wire decoder takes it from any publisher; amqp_table_clone refuses
 * it) is copied like any other, nested ones too: found by tests/fuzz, it used to abort the host. */
static void test_clone_odd_headers(void) {
  amqp_table_entry_t inner = ent("", AMQP_FIELD_KIND_UTF8);
  inner.value.value.bytes = amqp_cstring_bytes("v");
  amqp_table_entry_t h[2];
  h[0] = ent("", AMQP_FIELD_KIND_I32), h[0].value.value.i32 = 5;
  h[1] = ent("nested", AMQP_FIELD_KIND_TABLE), h[1].value.value.table = (amqp_table_t){1, &inner};
  amqp_basic_properties_t p = foreign("m-1", h, 2);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_basic_properties_t c;
  sg_amqp_props_clone(&p, &c, &pool);
  CHECK_EQ_INT(c.headers.num_entries, 2);
  CHECK(c.headers.entries[0].key.len == 0 && c.headers.entries[0].value.value.i32 == 5);
  const amqp_field_value_t *n = sg_amqp_header(&c.headers, "nested");
  CHECK(n && n->kind == AMQP_FIELD_KIND_TABLE && n->value.table.num_entries == 1);
  CHECK(n->value.table.entries[0].value.value.bytes.bytes != inner.value.value.bytes.bytes);
  empty_amqp_pool(&pool);
}

/* What a message is follows the queue it came from, not the exchange it was published through. */
static void test_by_queue(void) {
  amqp_table_entry_t st = ent("saga-status", AMQP_FIELD_KIND_UTF8);
  st.value.value.bytes = amqp_cstring_bytes("ok");
  struct sg_msg d;
  struct sg_error e = {0};
  /* a command published straight to its service queue through the default exchange */
  amqp_basic_properties_t p = foreign("c-1", &st, 1);
  p._flags |= AMQP_BASIC_TYPE_FLAG;
  p.type = amqp_cstring_bytes("Charge");
  CHECK(sg_amqp_decode(&p, amqp_empty_bytes, amqp_cstring_bytes("saga.svc.pay"), amqp_cstring_bytes("saga.svc.pay"),
                       amqp_cstring_bytes("null"), &d, &e) == 0);
  CHECK(d.kind == SG_MSG_COMMAND);
  CHECK_STR(d.service, "pay");
  CHECK_STR(d.name, "Charge");
  CHECK(d.status == NULL); /* a saga-status header does not make a command a reply */
  sg_msg_free(&d);
  /* ... without a type it cannot say which command it is */
  p = foreign("c-2", NULL, 0);
  CHECK(sg_amqp_decode(&p, amqp_empty_bytes, amqp_cstring_bytes("saga.svc.pay"), amqp_cstring_bytes("saga.svc.pay"),
                       amqp_cstring_bytes("{}"), &d, &e) == -1);
  CHECK(strstr(e.msg, "type") != NULL && strstr(e.msg, "saga.svc.pay") != NULL);
  /* a reply that came through a topic exchange to a reply queue is still a reply */
  p = foreign(NULL, &st, 1);
  p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
  p.correlation_id = amqp_cstring_bytes("c-1");
  CHECK(sg_amqp_decode(&p, amqp_cstring_bytes("amq.topic"), amqp_cstring_bytes("x"), amqp_cstring_bytes("saga.reply.h1"),
                       amqp_cstring_bytes("{}"), &d, &e) == 0);
  CHECK(d.kind == SG_MSG_REPLY);
  CHECK_STR(d.status, "ok");
  CHECK_STR(d.message_id, "reply:c-1");
  CHECK_STR(d.reply_to, "saga.reply.h1");
  sg_msg_free(&d);
  /* a signal: a command for the service "saga" named "signal", with its headers in the list */
  amqp_table_entry_t sh[2];
  sh[0] = ent("signal-name", AMQP_FIELD_KIND_UTF8), sh[0].value.value.bytes = amqp_cstring_bytes("approved");
  sh[1] = ent("traceparent", AMQP_FIELD_KIND_UTF8),
  sh[1].value.value.bytes = amqp_cstring_bytes("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  p = foreign("sig-1", sh, 2);
  CHECK(sg_amqp_decode(&p, amqp_cstring_bytes(SG_AMQP_X_COMMANDS), amqp_cstring_bytes("saga.signal"),
                       amqp_cstring_bytes("saga.svc.saga"), amqp_cstring_bytes("{}"), &d, &e) == 0);
  CHECK(d.kind == SG_MSG_SIGNAL);
  CHECK_STR(sg_msg_header(&d, "signal-name"), "approved");
  CHECK_STR(sg_msg_header(&d, "traceparent"), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  CHECK_STR(sg_msg_header(&d, "tracestate"), NULL);
  /* and encoded again, it goes where it came from, its headers with it */
  struct sg_amqp_out o;
  d.saga_id = sg_strdup("s-1");
  CHECK(sg_amqp_encode(&d, &o, &e) == 0);
  CHECK(o.routing_key.len == 11 && memcmp(o.routing_key.bytes, "saga.signal", 11) == 0);
  char *sn = sg_amqp_header_str(&o.props.headers, "signal-name");
  CHECK_STR(sn, "approved");
  free(sn);
  sg_msg_free(&d);
}

int main(void) {
  test_command();
  test_clone_odd_headers();
  test_by_queue();
  test_reply();
  test_event();
  test_integer_headers();
  test_malformed();
  test_dead_letter_props();
  return check_report();
}
