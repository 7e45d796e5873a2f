/* host: one sagahost instance wired together: store, script runtime, engine and transport on a
 * caller's libev loop. `sagahost run`, `sagahost bench` and the Lua module all start hosts this way.
 *
 * Ownership: sg_host_open fills a caller-owned struct sg_host; sg_host_close commits what is
 * pending and frees every part (the loop stays the caller's); sg_host_crash frees without committing. */
#ifndef SG_HOST_H
#define SG_HOST_H

#include <ev.h>
#include "engine.h"
#include "schedule.h"
#include "script.h"
#include "store.h"
#include "transport.h"

struct sg_host_config {
  const char *db;              /* SQLite database path */
  const char *dir;             /* script directory */
  const char *amqp;            /* broker URL, NULL = in-process transport */
  const char *amqp1;           /* AMQP 1.0 broker URL (Service Bus, ...), NULL = none; excludes amqp and kafka */
  const char *kafka;           /* Kafka brokers (host:port,...), NULL = none; excludes amqp and amqp1 */
  const char *host_id;         /* names the reply queue; NULL = host name + hash of the db path */
  const char *otlp;            /* --otlp: OTLP/HTTP collector URL (spans to <url>/v1/traces); NULL = the
                                * environment's OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is) or
                                * OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces), else tracing off */
  struct sg_script_config script; /* Lua limits (script.dir is set from dir) */
  struct sg_engine_config engine; /* payload limit, breakers, retention */
};
/* the defaults of `sagahost run` */
void sg_host_config_defaults(struct sg_host_config *c);

struct sg_host {
  struct ev_loop *loop;        /* the caller's */
  struct sg_store *store;
  struct sg_script *sc;
  struct sg_engine *en;
  struct sg_transport *tr;
  struct sg_schedules *sched;  /* the scripts' cron schedules (saga.schedule) */
  struct sg_otel *otel;        /* the span exporter, NULL: tracing off */
  char host_id[96];            /* the id in use */
  int load_errors;             /* script files that failed to load at open */
};

/* Opens the store, loads the scripts, starts the engine and the transport, recovers every saga.
 * On failure everything opened so far is closed and -1 returned with e filled: a script directory
 * that is missing or unreadable is SG_E_INVALID (before the database is touched), a database another
 * host holds is SG_E_CONFLICT. */
int sg_host_open(struct sg_host *h, struct ev_loop *loop, const struct sg_host_config *c, struct sg_error *e);
void sg_host_close(struct sg_host *h);
/* as kill -9: frees every part like sg_host_close but commits nothing pending (the open transaction
 * is rolled back as the store closes; what its commit would have published is never published; a
 * PostgreSQL commit already sent lands or not), so a host opened on the same database goes on from
 * the last commit. Who waits for a commit (sg_engine_after_commit) is answered -1. */
void sg_host_crash(struct sg_host *h);

#endif
