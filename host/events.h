/* events: the lifecycle event stream of GET /v1/events (Server-Sent Events) and the waits of
 * GET /v1/sagas/{id}?wait=, read from the store's event table (what every host's commits wrote), so
 * that a client connected to any host sees every host's events and a reconnect with Last-Event-ID
 * misses nothing the store still holds (--event-retention). */
#ifndef SG_EVENTS_H
#define SG_EVENTS_H

#include <ev.h>
#include "engine.h"
#include "http.h"

struct sg_events;

/* shared: several hosts write the store (PostgreSQL): the table is also read every 100 ms while
 * someone follows it, for the other hosts' events */
struct sg_events *sg_events_new(struct ev_loop *loop, struct sg_engine *en, int shared);
/* ends every stream; call before the engine is freed (after sg_http_stop, whose closes it takes) */
void sg_events_free(struct sg_events *h);

/* GET /v1/events: answers 400 for bad filters, else the stream (docs/protocol.md) */
void sg_events_subscribe(struct sg_events *h, struct sg_http_req *req);

/* A wait for a saga's terminal event. cb gets ARMED once the stream is followed (read the saga then:
 * if it is not terminal in that read, its terminal event is sure to come), then TERMINAL or TIMEOUT.
 * cb returns 1 when done (the wait is freed), 0 to keep waiting; after TIMEOUT it must return 1.
 * sg_events_wait_cancel ends the wait of ud without calling cb (e.g. the read after ARMED found the
 * saga finished). When the host stops, waits end without a call. */
enum { SG_EVENTS_WAIT_ARMED, SG_EVENTS_WAIT_TERMINAL, SG_EVENTS_WAIT_TIMEOUT };
typedef int (*sg_events_wait_cb)(void *ud, int what);
void sg_events_wait(struct sg_events *h, const char *saga_id, double timeout_s, sg_events_wait_cb cb, void *ud);
void sg_events_wait_cancel(struct sg_events *h, void *ud);

void sg_events_stats(const struct sg_events *h, size_t *subscribers, int64_t *dropped);

#endif
