/* transport: moves messages between sagas and participants.
 *
 * Implementations: transport_local.c (in-process, no broker), transport_amqp.c (RabbitMQ, AMQP 0-9-1),
 * transport_amqp1.c (AMQP 1.0: Azure Service Bus, RabbitMQ's amqp1_0 plugin) and transport_kafka.c (Kafka).
 * The engine publishes only messages whose outbox rows have committed; the transport calls
 * on_confirm(outbox_id) once the message is safely with the broker (local: at once), and the engine
 * then deletes the outbox row. Deliveries go to on_message; the engine calls ack(tag) once the effect
 * of the message is committed (or nack to dead-letter it with a reason).
 *
 * Ownership: messages passed to publish are copied; messages passed to on_message are borrowed for the
 * duration of the callback. */
#ifndef SG_TRANSPORT_H
#define SG_TRANSPORT_H

#include <ev.h>
#include "store.h"

struct sg_transport;

struct sg_transport_events {
  void *ud;
  /* a command for one of our services, a reply to our reply queue, or an event. tag identifies the
   * delivery for ack/nack. redelivered: the broker has delivered it before. */
  void (*on_message)(void *ud, const struct sg_msg *m, uint64_t tag, int redelivered);
  /* the message published with this outbox id is safely stored by the broker */
  void (*on_confirm)(void *ud, int64_t outbox_id);
  /* the broker refused it (nack, or returned as unroutable); the engine re-publishes later */
  void (*on_reject)(void *ud, int64_t outbox_id, const char *why);
  /* connection (re)established: the engine re-publishes every unconfirmed outbox row */
  void (*on_ready)(void *ud);
};

struct sg_transport_ops {
  const char *name; /* "local", "amqp", "amqp1", "kafka" */
  int in_process;   /* deliveries stay in this process and store: calls and replies need no outbox row */
  /* start consuming the queue of this service (saga.svc.<service>); may be called before connect */
  int (*subscribe)(struct sg_transport *t, const char *service, struct sg_error *e);
  /* make sure the queue of a service we send to exists (declared durable, with its DLQ) */
  int (*declare_service)(struct sg_transport *t, const char *service, struct sg_error *e);
  /* hand a committed outbox message over; confirm comes through on_confirm */
  int (*publish)(struct sg_transport *t, const struct sg_msg *m, struct sg_error *e);
  void (*ack)(struct sg_transport *t, uint64_t tag);
  /* reject without requeue: the broker dead-letters it; reason goes into the x-saga-error header
   * where the transport can do so (AMQP re-publishes to the DLQ with the header, then acks) */
  void (*nack)(struct sg_transport *t, uint64_t tag, const struct sg_msg *m, const char *reason);
  /* the queue our replies come to (reply_to of our commands) */
  const char *(*reply_queue)(struct sg_transport *t);
  int (*connected)(struct sg_transport *t);
  void (*close)(struct sg_transport *t); /* stops watchers, frees */
  /* deliveries whose body is larger are refused before their body is read, and dead-lettered
   * (0 = no limit); may be NULL (the local transport carries what the host itself made) */
  void (*set_max_body)(struct sg_transport *t, int64_t bytes);
  /* drop the connection and connect again: every unacked delivery comes back from the broker, and
   * on_ready asks for the outbox again; may be NULL (nothing is held outside the process) */
  void (*reset)(struct sg_transport *t, const char *why);
};

struct sg_transport {
  const struct sg_transport_ops *ops;
  struct sg_transport_events ev; /* callbacks into the engine */
  int64_t connects;              /* connections made to the broker, the first and every reconnect (AMQP; /metrics) */
};

struct sg_transport *sg_transport_local_new(struct ev_loop *loop, const struct sg_transport_events *ev);

/* Fault injection on the in-process transport (the testing kit). Every publish except to saga.events
 * draws from the transport's own PRNG (splitmix64 from seed: the same seed gives the same faults for
 * the same sequence of publishes): dropped with probability drop (lost, and the same message, same
 * message id, re-sent once after 200..2000 ms), duplicated with probability duplicate (a second, fresh
 * delivery with redelivered = 0; only one delivery of an outbox row confirms it), each copy delayed by
 * delay_min_ms..delay_max_ms (0, 0: none); reorder shuffles the messages deliverable in one round.
 * Times are sg_now_ms(), which may be a virtual clock. */
struct sg_faults {
  double duplicate, drop;          /* probabilities, 0..1 */
  int64_t delay_min_ms, delay_max_ms;
  int reorder;
  uint64_t seed;
};
struct sg_fault_counts {
  uint64_t delivered;  /* deliveries handed to the engine (copies included) */
  uint64_t duplicated; /* copies made */
  uint64_t dropped;    /* deliveries lost (each re-sent later) */
  uint64_t delayed;    /* deliveries held by a delay */
  uint64_t reordered;  /* deliveries that changed places in a shuffled round */
};
/* f = NULL: faults off (what is delayed already still comes at its time). No-op on another transport. */
void sg_transport_local_faults(struct sg_transport *t, const struct sg_faults *f);
/* faults are on (the engine then sends its in-process calls through the transport instead of
 * answering them within the batch); 0 for another transport */
int sg_transport_local_faulty(struct sg_transport *t);
/* nothing queued, delayed or in flight (delivered and not yet acked) */
int sg_transport_local_idle(struct sg_transport *t);
/* something is queued, in flight, or delayed and due at sg_now_ms() (the testing kit runs until it is
 * not: a message delayed into the future waits for the clock) */
int sg_transport_local_busy(struct sg_transport *t);
/* the earliest due time of a delayed or re-sent message (sg_now_ms() time), -1 none */
int64_t sg_transport_local_next_due(struct sg_transport *t);
/* the delayed messages due at sg_now_ms() are queued and their delivery starts (in a later loop
 * iteration, as any delivery): call it after moving a virtual clock; in real time a timer does it */
void sg_transport_local_poke(struct sg_transport *t);
void sg_transport_local_counts(struct sg_transport *t, struct sg_fault_counts *c);
/* url: amqp://user:pass@host:port/vhost or amqps://...; host_id names our reply queue */
struct sg_transport *sg_transport_amqp_new(struct ev_loop *loop, const char *url, const char *host_id,
                                           const struct sg_transport_events *ev, struct sg_error *e);
/* AMQP 1.0 (Qpid Proton; Azure Service Bus, RabbitMQ's amqp1_0 plugin): url amqp[s]://user:pass@host:port
 * with options in its query string (transport_amqp1.c, docs/operations.md); host_id names our reply queue */
struct sg_transport *sg_transport_amqp1_new(struct ev_loop *loop, const char *url, const char *host_id,
                                            const struct sg_transport_events *ev, struct sg_error *e);
/* url with its password (if any) replaced by *** into out, for messages and logs */
void sg_amqp1_redact(const char *url, char *out, size_t n);

/* brokers: host:port[,host:port...][?prefetch=N&session_timeout_ms=N&fetch_wait_ms=N]; host_id names our reply topic
 * (transport_kafka.c, docs/protocol.md "Kafka") */
struct sg_transport *sg_transport_kafka_new(struct ev_loop *loop, const char *brokers, const char *host_id,
                                            const struct sg_transport_events *ev, struct sg_error *e);

#endif
