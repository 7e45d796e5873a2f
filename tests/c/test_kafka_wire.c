/* Unit tests for the Kafka wire mapping (sg_kafka_encode / sg_kafka_decode in transport_kafka.c):
 * sg_msg -> topic, key, headers, value -> sg_msg, and the reasons a malformed record is dead-lettered
 * with. No broker needed. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kafka_wire.h"

static const char *hdr(const rd_kafka_headers_t *h, const char *name, char *buf, size_t n) {
  const void *v = NULL;
  size_t len = 0;
  if (rd_kafka_header_get_last(h, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR || !v) return NULL;
  snprintf(buf, n, "%.*s", (int)len, (const char *)v);
  return buf;
}

static void test_command(void) {
  struct sg_msg m = {0};
  m.message_id = "s-1.0.a.1.1";
  m.correlation_id = "s-1.0.a.1.1";
  m.kind = SG_MSG_COMMAND;
  m.service = "inventory";
  m.name = "Reserve";
  m.reply_to = "saga.reply.h1";
  m.saga_id = "s-1";
  m.saga_type = "OrderProcessing";
  m.step = 2;
  m.attempt = 3;
  m.body = "{\"sku\":\"book\"}";
  m.created_at = 1700000000123;
  const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  sg_msg_set_header(&m, "traceparent", tp);
  struct sg_kafka_out o;
  struct sg_error e = {0};
  char b[200];
  CHECK(sg_kafka_encode(&m, &o, &e) == 0);
  CHECK_STR(o.topic, "saga.svc.inventory");
  CHECK(o.key_len == 3 && memcmp(o.key, "s-1", 3) == 0);
  CHECK_EQ_INT(o.timestamp, 1700000000123);
  CHECK_STR(hdr(o.hdrs, "message-id", b, sizeof b), "s-1.0.a.1.1");
  CHECK_STR(hdr(o.hdrs, "reply-to", b, sizeof b), "saga.reply.h1");
  CHECK_STR(hdr(o.hdrs, "type", b, sizeof b), "Reserve");
  CHECK_STR(hdr(o.hdrs, "step", b, sizeof b), "2");
  CHECK_STR(hdr(o.hdrs, "attempt", b, sizeof b), "3");
  CHECK_STR(hdr(o.hdrs, "content-type", b, sizeof b), "application/json");
  CHECK_STR(hdr(o.hdrs, "saga-status", b, sizeof b), NULL);
  CHECK_STR(hdr(o.hdrs, "traceparent", b, sizeof b), tp);

  /* as the participant's consumer sees it */
  struct sg_msg d;
  CHECK(sg_kafka_decode(o.topic, o.hdrs, o.value, o.len, o.timestamp, &d, &e) == 0);
  CHECK(d.kind == SG_MSG_COMMAND);
  CHECK_STR(d.service, "inventory");
  CHECK_STR(d.name, "Reserve");
  CHECK_STR(d.message_id, "s-1.0.a.1.1");
  CHECK_STR(d.reply_to, "saga.reply.h1");
  CHECK_STR(d.saga_id, "s-1");
  CHECK_STR(d.saga_type, "OrderProcessing");
  CHECK_EQ_INT(d.step, 2);
  CHECK_EQ_INT(d.attempt, 3);
  CHECK_STR(d.body, "{\"sku\":\"book\"}");
  CHECK_STR(sg_msg_header(&d, "traceparent"), tp);
  CHECK_STR(d.status, NULL);
  CHECK_EQ_INT(d.created_at, 1700000000123);
  sg_msg_free(&d);
  rd_kafka_headers_destroy(o.hdrs);
  for (size_t i = 0; i < m.nheaders; i++) { free(m.headers[i].name); free(m.headers[i].value); }
  free(m.headers);
}

static void test_reply_and_event(void) {
  struct sg_msg m = {0};
  m.message_id = "reply-1";
  m.correlation_id = "s-1.0.a.1.1";
  m.kind = SG_MSG_REPLY;
  m.reply_to = "saga.reply.h1";
  m.status = "error";
  m.saga_id = "s-1";
  m.body = "{\"error\":\"no\",\"retryable\":false}";
  struct sg_kafka_out o;
  struct sg_error e = {0};
  char b[200];
  CHECK(sg_kafka_encode(&m, &o, &e) == 0);
  CHECK_STR(o.topic, "saga.reply.h1");
  CHECK_STR(hdr(o.hdrs, "saga-status", b, sizeof b), "error");
  CHECK_STR(hdr(o.hdrs, "correlation-id", b, sizeof b), "s-1.0.a.1.1");
  struct sg_msg d;
  CHECK(sg_kafka_decode(o.topic, o.hdrs, o.value, o.len, 0, &d, &e) == 0);
  CHECK_STR(d.status, "error");
  CHECK(d.kind == SG_MSG_REPLY);
  CHECK_STR(d.reply_to, "saga.reply.h1");
  sg_msg_free(&d);
  rd_kafka_headers_destroy(o.hdrs);

  /* a reply from a plain client without a message-id is known by its correlation-id */
  rd_kafka_headers_t *h = rd_kafka_headers_new(4);
  rd_kafka_header_add(h, "correlation-id", -1, "c-1", -1);
  rd_kafka_header_add(h, "saga-status", -1, "ok", -1);
  CHECK(sg_kafka_decode("saga.reply.h1", h, "{}", 2, 0, &d, &e) == 0);
  CHECK_STR(d.message_id, "reply:c-1");
  sg_msg_free(&d);
  rd_kafka_headers_destroy(h);

  struct sg_msg ev = {0};
  ev.message_id = "s-1.1.a.1.0";
  ev.kind = SG_MSG_EVENT;
  ev.service = "orders";
  ev.name = "Shipped";
  ev.saga_id = "s-1";
  ev.body = "{}";
  CHECK(sg_kafka_encode(&ev, &o, &e) == 0);
  CHECK_STR(o.topic, "saga.events");
  CHECK_STR(hdr(o.hdrs, "routing-key", b, sizeof b), "orders.Shipped");
  CHECK_STR(hdr(o.hdrs, "type", b, sizeof b), "Shipped");
  rd_kafka_headers_destroy(o.hdrs);
}

static void test_signal(void) {
  rd_kafka_headers_t *h = rd_kafka_headers_new(4);
  rd_kafka_header_add(h, "message-id", -1, "sig-1", -1);
  rd_kafka_header_add(h, "type", -1, "signal", -1);
  rd_kafka_header_add(h, "signal-name", -1, "go", -1);
  rd_kafka_header_add(h, "saga-type", -1, "OrderProcessing", -1);
  rd_kafka_header_add(h, "saga-key", -1, "o-1", -1);
  struct sg_msg d;
  struct sg_error e = {0};
  CHECK(sg_kafka_decode("saga.svc.saga", h, "{\"a\":1}", 7, 0, &d, &e) == 0);
  CHECK(d.kind == SG_MSG_SIGNAL);
  CHECK_STR(sg_msg_header(&d, "signal-name"), "go");
  CHECK_STR(sg_msg_header(&d, "saga-key"), "o-1");
  sg_msg_free(&d);
  rd_kafka_headers_destroy(h);
}

/* decodes value with the given header pairs (NULL-terminated) from topic; returns e.msg ("" if it decoded) */
static const char *refusal(const char *topic, const char *value, const char *const *kv, struct sg_error *e) {
  rd_kafka_headers_t *h = rd_kafka_headers_new(8);
  for (int i = 0; kv[i]; i += 2) rd_kafka_header_add(h, kv[i], -1, kv[i + 1], -1);
  struct sg_msg d;
  memset(e, 0, sizeof *e);
  int rc = sg_kafka_decode(topic, h, value, strlen(value), 0, &d, e);
  rd_kafka_headers_destroy(h);
  if (rc == 0) {
    sg_msg_free(&d);
    return "";
  }
  CHECK(d.body == NULL && d.message_id == NULL); /* left empty */
  return e->msg;
}

static void test_malformed(void) {
  struct sg_error e;
  const char *cmd[] = {"message-id", "m-1", "type", "Reserve", NULL};
  CHECK_STR(refusal("saga.svc.inventory", "{}", cmd, &e), "");
  CHECK(strncmp(refusal("saga.svc.inventory", "{nope", cmd, &e), "body is not valid JSON", 22) == 0);
  CHECK_STR(refusal("saga.svc.inventory", "", cmd, &e), "body is empty; it must be a JSON value");
  const char *no_mid[] = {"type", "Reserve", NULL};
  CHECK_STR(refusal("saga.svc.inventory", "{}", no_mid, &e),
            "message has no message-id header; it is the idempotency key and is required");
  const char *no_type[] = {"message-id", "m-1", NULL};
  CHECK_STR(refusal("saga.svc.inventory", "{}", no_type, &e),
            "command on saga.svc.inventory has no type header; set it to the command name");
  const char *bad_step[] = {"message-id", "m-1", "type", "Reserve", "step", "two", NULL};
  CHECK_STR(refusal("saga.svc.inventory", "{}", bad_step, &e), "header step must be a decimal integer");
  const char *no_status[] = {"correlation-id", "c-1", NULL};
  CHECK_STR(refusal("saga.reply.h1", "{}", no_status, &e), "reply has no saga-status header; set it to \"ok\" or \"error\"");
  const char *no_corr[] = {"saga-status", "ok", NULL};
  CHECK_STR(refusal("saga.reply.h1", "{}", no_corr, &e),
            "reply has no correlation-id header; set it to the message-id of the command it answers");
  const char *bad_status[] = {"correlation-id", "c-1", "saga-status", "maybe", NULL};
  CHECK_STR(refusal("saga.reply.h1", "{}", bad_status, &e), "header saga-status is \"maybe\"; it must be \"ok\" or \"error\"");
  /* a saga-status on a command does not make it a reply */
  const char *cmd_status[] = {"message-id", "m-1", "type", "Reserve", "saga-status", "ok", NULL};
  CHECK_STR(refusal("saga.svc.inventory", "{}", cmd_status, &e), "");

  /* what cannot be sent */
  struct sg_msg m = {0};
  struct sg_kafka_out o;
  m.message_id = "m-1";
  m.kind = SG_MSG_COMMAND;
  m.service = "bad/service";
  m.name = "X";
  m.body = "{}";
  CHECK(sg_kafka_encode(&m, &o, &e) < 0 && strstr(e.msg, "not a topic name"));
  m.service = NULL;
  CHECK(sg_kafka_encode(&m, &o, &e) < 0 && strstr(e.msg, "names no service"));
  m.kind = SG_MSG_REPLY;
  m.reply_to = "saga.reply.h1";
  m.correlation_id = "c-1";
  m.status = "maybe";
  CHECK(sg_kafka_encode(&m, &o, &e) < 0);
}

int main(void) {
  test_command();
  test_reply_and_event();
  test_signal();
  test_malformed();
  return check_report();
}
