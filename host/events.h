/* events: the lifecycle event stream of GET /v1/events (Server-Sent Events) and the waits of
 * GET /v1/sagas/{id}?wait=, read from the store's event table (what every host's commits wrote), so
 * that a client connected to any host sees every host's events and a reconnect with Last-Event-ID
 * misses nothing the store still holds (--event-retention). Other APIs' streams (gRPC Watch and WatchAll,
 * grpc.c) subscribe through a sink (sg_events_subscribe_sink) and get the same filters, resume and bounds. */
#ifndef SG_EVENTS_H
#define SG_EVENTS_H

#include <ev.h>
#include "engine.h"
#include "http.h"
#include "store.h"

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

/* Subscribers of other APIs (gRPC: grpc.c). The hub writes each matching event to out through the sink,
 * with the same flow control as an HTTP subscriber: a sink whose pending bytes pass 256 KiB reads the
 * rest from the store at its pace, one that takes nothing for 10 s or would go over
 * SG_EVENTS_SUB_CAP unsent is ended. */
#define SG_EVENTS_SUB_CAP (4u << 20)
struct sg_events_sink {
  /* adds the bytes of one event to b (the sink's own framing); NULL: Server-Sent Events frames, and
   * SSE comment lines (keepalives) through write too */
  void (*format)(void *out, struct sg_buf *b, const char *event_id, const struct sg_event_row *ev);
  /* queues bytes for the client: 0, or -1 when that would put more than SG_EVENTS_SUB_CAP unsent */
  int (*write)(void *out, const char *data, size_t n);
  /* bytes queued and not yet taken by the client */
  size_t (*pending)(void *out);
  /* the hub is done with out (it is not called again for it): code 0 the host stops, SG_E_TOOBIG the
   * client does not read (abort: drop what is unsent), SG_E_INVALID a resume id this store does not
   * know, else the store failed (why says what) */
  void (*end)(void *out, int abort, int code, const char *why);
};
/* what a subscriber wants: the GET /v1/events filters and Last-Event-ID (each NULL or "" = any / from now) */
struct sg_events_filter {
  const char *saga, *type, *status, *last_event_id;
};
struct sg_events_sub;
/* a subscriber on sink/out, or NULL and e (SG_E_INVALID: an unknown status, a malformed id) */
struct sg_events_sub *sg_events_subscribe_sink(struct sg_events *h, const struct sg_events_filter *f,
                                               const struct sg_events_sink *sink, void *out, struct sg_error *e);
/* the client went away: the hub forgets it (not after sink->end) */
void sg_events_unsubscribe(struct sg_events_sub *s);

void sg_events_stats(const struct sg_events *h, size_t *subscribers, int64_t *dropped);

#endif
