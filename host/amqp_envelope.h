/* amqp_envelope: the mapping between struct sg_msg and an AMQP message (properties + body).
 *
 * Pure functions, no sockets: transport_amqp.c uses them on the wire and tests/c/test_envelope.c
 * checks them alone. The contract they implement is docs/protocol.md.
 *
 * Ownership: sg_amqp_encode fills a struct sg_amqp_out whose properties point into the sg_msg (borrowed,
 * keep the message alive until published) and into the out struct itself (header storage).
 * sg_amqp_decode fills an sg_msg with malloc'd strings; the caller frees them with sg_msg_free().
 * The clone/dead-letter helpers allocate from a caller's amqp_pool_t, freed with empty_amqp_pool(). */
#ifndef SG_AMQP_ENVELOPE_H
#define SG_AMQP_ENVELOPE_H

#include <amqp.h>
#include "store.h"

#define SG_AMQP_X_COMMANDS "saga.commands" /* topic exchange for commands */
#define SG_AMQP_X_EVENTS "saga.events"     /* topic exchange for ctx:publish events */
#define SG_AMQP_X_DLX "saga.dlx"           /* direct exchange feeding the *.dlq queues */

/* What we put in the headers table of an outgoing message (saga-id, saga-type, step, attempt,
 * saga-status, then the message's own headers): a fixed-size array, so encoding never allocates. */
#define SG_AMQP_MAX_HEADERS 16

/* A message laid out for amqp_basic_publish. */
struct sg_amqp_out {
  amqp_bytes_t exchange;          /* "" for the default exchange (replies) */
  amqp_bytes_t routing_key;       /* "<service>.<command>", "<topic>.<event>" or the reply queue */
  int mandatory;                  /* commands: an unroutable command must come back (basic.return) */
  amqp_basic_properties_t props;  /* points into the sg_msg and into hdr[] */
  amqp_table_entry_t hdr[SG_AMQP_MAX_HEADERS]; /* storage of props.headers */
  amqp_bytes_t body;              /* the JSON payload, borrowed from the sg_msg */
  char rk[512];                   /* storage of routing_key for commands and events */
};

/* Fills out from the logical message m: a command goes to saga.commands with the routing key
 * <service>.<name> (a signal: saga.signal), an event to saga.events with <topic>.<name>, a reply through
 * the default exchange to its reply_to queue. Fails (-1, e filled) when m cannot be sent as it is: no
 * message_id, service, name, reply address or body, a reply without correlation_id, or a status other
 * than ok/error, too many headers. */
int sg_amqp_encode(const struct sg_msg *m, struct sg_amqp_out *out, struct sg_error *e);

/* Reads a received message into out (zeroed first) as a logical message. exchange and routing_key are
 * those of the delivery, queue the queue it came from. What it is follows the contract, not the
 * exchange: from a reply queue (saga.reply.*) a reply, from a service queue (saga.svc.<service>) a
 * command for <service> (a signal on saga.svc.saga), whatever exchange it was published through; its
 * name is the type property, else the routing key after its first dot. With no queue known, a message
 * from the default exchange is a reply, and a command's service is its routing key up to the first dot. Fails (-1, e filled with a sentence fit for the x-saga-error header, out left
 * empty) for a malformed envelope: body not JSON, command without message_id (or without type when
 * its routing key names no command), reply without correlation_id or saga-status, a header of the
 * wrong type. */
int sg_amqp_decode(const amqp_basic_properties_t *p, amqp_bytes_t exchange, amqp_bytes_t routing_key,
                   amqp_bytes_t queue, amqp_bytes_t body, struct sg_msg *out, struct sg_error *e);

/* Deep copy of src into dst, allocated from pool (properties decoded by librabbitmq live in its
 * connection pools, which are recycled between frames). */
void sg_amqp_props_clone(const amqp_basic_properties_t *src, amqp_basic_properties_t *dst, amqp_pool_t *pool);

/* Properties of the dead-letter copy of a message: those of orig, plus the headers x-saga-error =
 * reason and x-saga-original-exchange / x-saga-original-routing-key (so it can be replayed).
 * Allocated from pool. */
void sg_amqp_dead_letter_props(const amqp_basic_properties_t *orig, const char *reason, amqp_bytes_t exchange,
                               amqp_bytes_t routing_key, amqp_basic_properties_t *dst, amqp_pool_t *pool);

/* The value of a header, or NULL. */
const amqp_field_value_t *sg_amqp_header(const amqp_table_t *t, const char *name);
/* A header as a malloc'd string (longstr or byte array); NULL when absent or not a string. */
char *sg_amqp_header_str(const amqp_table_t *t, const char *name);
/* A header as an integer, accepting any AMQP integer width, an integral float or a decimal string.
 * Returns 1 and sets *out, 0 when absent, -1 when present but not an integer that fits. */
int sg_amqp_header_int(const amqp_table_t *t, const char *name, int64_t *out);

#endif
