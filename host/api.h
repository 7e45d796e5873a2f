/* api: the HTTP API of the host (routes in api.c, server in http.c).
 *   POST /v1/sagas/{type}        start (body = input object; Idempotency-Key header) -> 201 {"id"}
 *   GET  /v1/sagas/{id}          the saga with its step history
 *   GET  /v1/sagas?status=&type=&limit=&after=   a page of sagas, "next" is the cursor
 *   GET  /v1/definitions         loaded saga types, files with their load errors, services
 *   GET  /healthz                liveness and counters
 *   GET  /metrics                the counters in the Prometheus text format
 *   GET  /, /ui/{file}           the web dashboard's static files (web.h)
 * With auth (auth.h), every route but /healthz, the dashboard's files (and /metrics unless auth_metrics) needs an
 * `Authorization: Bearer <token>`: none or an unknown one is 401 with `WWW-Authenticate: Bearer`,
 * a token whose role is too small is 403; the operator of compensate/retry/resolve is the token's name.
 * Errors are {"error": "..."} with 400, 401, 403, 404, 405, 409, 413 or 500. A known path with a method it does
 * not serve is 405 with an Allow header (GET routes also answer HEAD); an unknown path is 404 whatever
 * the method. Neither echoes the method. */
#ifndef SG_API_H
#define SG_API_H

#include <ev.h>
#include "auth.h"
#include "engine.h"
#include "http.h"
#include "script.h"

/* How the API listens and whom it serves. */
struct sg_api_config {
  const char *listen;            /* "host:port" */
  size_t max_body;               /* larger request bodies get 413 */
  const struct sg_auth *auth;    /* tokens and roles (the caller's, outlives the API); NULL = no auth */
  int auth_metrics;              /* with auth: /metrics needs role read too (else it stays open) */
  const struct sg_http_tls *tls; /* HTTPS certificate and key; NULL = plain HTTP */
};

struct sg_api;
struct sg_api *sg_api_start(struct ev_loop *loop, const struct sg_api_config *cfg, struct sg_engine *en,
                            struct sg_store *store, struct sg_script *sc, struct sg_error *e);
/* swaps the token table (SIGHUP); the caller frees the old one after this returns */
void sg_api_set_auth(struct sg_api *api, const struct sg_auth *auth);
/* GET /v1/schedules shows these (the host's; NULL = none) */
struct sg_schedules;
void sg_api_set_schedules(struct sg_api *api, struct sg_schedules *sched);
struct sg_events;
int sg_api_port(struct sg_api *api);
/* the events hub of GET /v1/events, for other APIs' subscribers (grpc.c) */
struct sg_events *sg_api_events(struct sg_api *api);
void sg_api_stop(struct sg_api *api);

#endif
