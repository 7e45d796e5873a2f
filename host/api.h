/* api: the HTTP API of the host (routes in api.c, server in http.c).
 *   POST /v1/sagas/{type}        start (body = input object; Idempotency-Key header) -> 201 {"id"}
 *   GET  /v1/sagas/{id}          the saga with its step history
 *   GET  /v1/sagas?status=&type=&limit=&after=   a page of sagas, "next" is the cursor
 *   GET  /v1/definitions         loaded saga types, files with their load errors, services
 *   GET  /healthz                liveness and counters
 *   GET  /metrics                the counters in the Prometheus text format
 * Errors are {"error": "..."} with 400, 404, 405, 409, 413 or 500. A known path with a method it does
 * not serve is 405 with an Allow header (GET routes also answer HEAD); an unknown path is 404 whatever
 * the method. Neither echoes the method. */
#ifndef SG_API_H
#define SG_API_H

#include <ev.h>
#include "engine.h"
#include "script.h"

struct sg_api;
struct sg_api *sg_api_start(struct ev_loop *loop, const char *listen, size_t max_body, struct sg_engine *en,
                            struct sg_store *store, struct sg_script *sc, struct sg_error *e);
int sg_api_port(struct sg_api *api);
void sg_api_stop(struct sg_api *api);

#endif
