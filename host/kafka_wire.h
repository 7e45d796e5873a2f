/* kafka_wire: the mapping between struct sg_msg and a Kafka record (topic, key, headers, value).
 *
 * Pure functions, no sockets: transport_kafka.c uses them and tests/c/test_kafka_wire.c checks them
 * alone. The contract is docs/protocol.md, section "Kafka". This is the one place that knows how a
 * logical message (kind, service, name, headers) becomes a topic, a key and record headers.
 *
 * Ownership: sg_kafka_encode fills out with pointers into m (borrowed) and a new headers list
 * (out->hdrs, the caller's: rd_kafka_producev takes it on success, else rd_kafka_headers_destroy).
 * sg_kafka_decode fills an sg_msg with malloc'd strings; the caller frees them with sg_msg_free(). */
#ifndef SG_KAFKA_WIRE_H
#define SG_KAFKA_WIRE_H

#include <librdkafka/rdkafka.h>
#include "store.h"

#define SG_KAFKA_EVENTS "saga.events"     /* ctx:publish events */
#define SG_KAFKA_SVC "saga.svc."          /* commands: saga.svc.<service> */
#define SG_KAFKA_REPLY "saga.reply."      /* replies: saga.reply.<host_id> */
#define SG_KAFKA_DLQ_SUFFIX ".dlq"        /* dead letters of topic T: T.dlq */

struct sg_kafka_out {
  char topic[320];        /* saga.svc.<service>, saga.reply.<host_id> or saga.events */
  const char *key;        /* the saga id (one saga's records stay in order), else the message id */
  size_t key_len;
  rd_kafka_headers_t *hdrs; /* message-id, correlation-id, reply-to, type, saga-*, step, attempt, ... */
  const char *value;      /* the JSON body, borrowed */
  size_t len;
  int64_t timestamp;      /* ms, 0 = now */
};

/* Fills out from m: a command (or signal) to saga.svc.<service>, a reply to its reply_to topic, an event
 * to saga.events (header routing-key <topic>.<name>). Fails (-1, e filled) when m cannot be sent as it
 * is: no message id, service, name, reply topic or body, a reply without correlation id, a status
 * other than ok/error, a command whose service is not a topic name. */
int sg_kafka_encode(const struct sg_msg *m, struct sg_kafka_out *out, struct sg_error *e);

/* Reads a record from topic into out (zeroed first). What it is follows the topic: saga.svc.<service>
 * a command for <service> named by its type header (saga.svc.saga with type "signal" is a signal),
 * saga.reply.* a reply. Fails (-1, e filled with a sentence for the x-saga-error header, out left
 * empty) for a malformed record: value not JSON, a command without message-id or type, a reply
 * without correlation-id or saga-status, a step/attempt that is not an integer. */
int sg_kafka_decode(const char *topic, const rd_kafka_headers_t *h, const void *value, size_t len, int64_t timestamp_ms,
                    struct sg_msg *out, struct sg_error *e);

/* A header as a malloc'd string, NULL when absent (or null). */
char *sg_kafka_header_str(const rd_kafka_headers_t *h, const char *name);

#endif
