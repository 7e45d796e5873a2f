/* grpc: the gRPC service sagahost.v1.Sagas (proto/sagahost/v1/sagas.proto, docs/grpc.md) on
 * `--grpc ADDR:PORT`: HTTP/2 (nghttp2) over TCP, or over TLS (OpenSSL, ALPN h2) when the host has
 * --tls-cert/--tls-key, inside the libev loop (non-blocking sockets watched by ev_io, no threads),
 * messages encoded with protobuf-c from code generated at build time. Connections are capped in all
 * and per client address and closed when idle or too slow to send a first request (like HTTP's).
 *
 * It acts through the same engine calls as the HTTP API (api.c) and follows the same events hub
 * (events.c) for Watch and WatchAll, with its flow control. Auth is the HTTP API's tokens and roles.
 *
 * Ownership: the server owns its connections and calls; a call waiting for the engine when its
 * client goes away is freed when the engine answers. sg_grpc_stop ends every call and frees all. */
#ifndef SG_GRPC_H
#define SG_GRPC_H

#include <ev.h>
#include "auth.h"
#include "engine.h"
#include "events.h"

/* How the gRPC server listens and whom it serves. */
struct sg_grpc_config {
  const char *listen;         /* "host:port" (IPv4 or localhost; port 0 picks one: sg_grpc_port) */
  size_t max_message;         /* larger request messages get RESOURCE_EXHAUSTED */
  const struct sg_auth *auth; /* tokens and roles (the caller's); NULL = every call open */
  const char *tls_cert;       /* PEM file: certificate chain; with tls_key, serve TLS (ALPN h2); NULL = plaintext */
  const char *tls_key;        /* PEM file: its private key, unencrypted */
  unsigned max_connections;   /* open connections in all; more get GOAWAY (--http-max-connections) */
  unsigned max_per_ip;        /* open connections from one address; more get GOAWAY (--http-max-per-ip) */
  double request_timeout;     /* seconds from accept to the first complete request (TLS handshake and
                               * HTTP/2 preface included), else closed (--http-request-timeout) */
  double idle_timeout;        /* seconds a connection with no open call stays open (--grpc-idle-timeout) */
};

struct sg_grpc;
/* events: the HTTP API's hub (sg_api_events), shared so that one tail follows the store */
struct sg_grpc *sg_grpc_start(struct ev_loop *loop, const struct sg_grpc_config *cfg, struct sg_engine *en,
                              struct sg_events *events, struct sg_error *e);
int sg_grpc_port(const struct sg_grpc *g);
/* swaps the token table (SIGHUP); the caller frees the old one after this returns */
void sg_grpc_set_auth(struct sg_grpc *g, const struct sg_auth *auth);
/* closes every connection (calls end without a status) and frees; before sg_api_stop (the hub) */
void sg_grpc_stop(struct sg_grpc *g);

#endif
