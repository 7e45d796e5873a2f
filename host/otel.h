/* otel: OpenTelemetry spans, exported with OTLP/HTTP in its JSON encoding (POST <url>, one
 * ExportTraceServiceRequest per batch).
 *
 * The loop thread records each finished span in a fixed struct (sg_span_*: ids, times, a small string
 * pool; no allocation, no JSON) and copies it into a bounded ring of such structs; a worker thread of its
 * own takes batches from the ring (every 500 ms, or sooner once 2048 wait), formats them as OTLP JSON in
 * place and POSTs them with libcurl, so neither formatting nor the network is ever on the loop. A span
 * that finds the queue full, or whose batch the collector refused or could not be sent, is dropped and
 * counted (sg_otel_stats: /metrics). Tracing off is no struct sg_otel at all: callers test a pointer.
 *
 * Trace contexts are W3C Trace Context (`traceparent` "00-<32 hex trace id>-<16 hex span id>-<2 hex
 * flags>", `tracestate` passed on as is). A saga's context lives in its row (sagas.trace) as text
 * "<trace id>-<span id>[-<parent span id>[@<ms>]][ <tracestate>]" (@<ms>: the context of what an
 * operator's retry began at ms, a child of the saga's span; the saga's own span ended at its first
 * terminal status); the ids of its attempt spans and of the
 * client spans of its calls are derived from it (sg_otel_derive), so they are the same after a restart
 * and a command sent again carries the same traceparent.
 *
 * Ownership: sg_otel_new returns an exporter the caller frees with sg_otel_free (which sends what is
 * queued, waiting at most a few seconds, then stops the worker). Strings given to sg_span_* are
 * copied into the span (attribute keys excepted: literals). */
#ifndef SG_OTEL_H
#define SG_OTEL_H

#include <stdint.h>
#include "util.h"

/* A span's place in a trace. */
struct sg_tctx {
  uint8_t trace[16];  /* trace id */
  uint8_t span[8];    /* span id */
  uint8_t parent[8];  /* parent span id (all zero: a root span) */
  const char *state;  /* tracestate (borrowed), or NULL */
  int64_t since_ms;   /* a saga's context after an operator's retry: when the retry began (ms), else 0 */
};

/* span kinds, as OTLP numbers them */
enum { SG_SPAN_INTERNAL = 1, SG_SPAN_SERVER = 2, SG_SPAN_CLIENT = 3, SG_SPAN_PRODUCER = 4, SG_SPAN_CONSUMER = 5 };

struct sg_otel;

/* url: the OTLP/HTTP traces endpoint (".../v1/traces"); service: resource service.name; host_id:
 * resource service.instance.id. queue: most spans waiting (0 = 8192). NULL + e when the worker cannot start. */
struct sg_otel *sg_otel_new(const char *url, const char *service, const char *host_id, int queue, struct sg_error *e);
/* Sends what is queued (waiting at most 5 s for the collector), stops the worker, frees. NULL: nothing. */
void sg_otel_free(struct sg_otel *o);

/* The exporter's counts (for /metrics). */
struct sg_otel_stats {
  int64_t queued;    /* spans handed over so far */
  int64_t exported;  /* spans the collector accepted */
  int64_t dropped;   /* spans lost: the queue was full, or their batch could not be delivered */
  int64_t queue;     /* spans waiting now */
};
void sg_otel_stats(struct sg_otel *o, struct sg_otel_stats *st);

/* "00-<trace>-<span>-01" into out (56 bytes) */
void sg_otel_traceparent(const uint8_t trace[16], const uint8_t span[8], char out[56]);
/* parses a traceparent header: 0 with trace and span (the sender's span: the parent of ours), -1 if
 * malformed, of an unknown version's shape, or with an all-zero id */
int sg_otel_parse_traceparent(const char *tp, uint8_t trace[16], uint8_t span[8]);
/* A new context for a saga (random ids), a child of the traceparent given if it parses: its text
 * for sagas.trace (malloc'd). */
char *sg_otel_saga_trace_new(const char *traceparent, const char *tracestate);
/* The saga's context from its sagas.trace text; a saga without one (started while tracing was off)
 * gets ids derived from its id, so its spans still form one trace. */
void sg_otel_saga_ctx(const char *trace, const char *saga_id, struct sg_tctx *c);
/* c as sagas.trace text (malloc'd) */
char *sg_otel_trace_text(const struct sg_tctx *c);
/* An id derived from a span id and a label (the same inputs, the same id). */
void sg_otel_derive(const uint8_t span[8], const char *label, uint8_t out[8]);
/* a random span id */
void sg_otel_random_span(uint8_t out[8]);

/* A span being recorded: ids, times and attributes copied into one fixed struct (no allocation); the
 * exporter's thread turns it into OTLP JSON. Strings that do not fit its pool are cut short. */
#define SG_SPAN_ATTRS 16   /* attributes at most (more are not added) */
#define SG_SPAN_POOL 1024  /* bytes for the name, tracestate, string values and status message */
struct sg_span_attr {
  const char *key;         /* a static string (a literal): not copied */
  int64_t ival;            /* the value of an int attribute */
  int16_t off;             /* a string value: offset in pool; -1: an int attribute */
};
struct sg_span {
  uint8_t trace[16], span[8], parent[8]; /* ids (parent all zero: a root span) */
  int16_t name, state, msg;              /* offsets in pool (-1: none) */
  uint8_t kind, error;                   /* SG_SPAN_*, status error */
  uint8_t nattr;                         /* attributes added */
  uint16_t used;                         /* bytes of pool used */
  int64_t start_us, end_us;              /* times, microseconds since the epoch */
  struct sg_span_attr attr[SG_SPAN_ATTRS];
  char pool[SG_SPAN_POOL];               /* NUL-terminated strings */
};
/* Begins a span: ids from c (c->parent as its parent), times in microseconds since the epoch. */
void sg_span_begin(struct sg_span *sp, const struct sg_tctx *c, const char *name, int kind, int64_t start_us,
                   int64_t end_us);
void sg_span_str(struct sg_span *sp, const char *key, const char *val); /* key: a literal; NULL val: not added */
void sg_span_int(struct sg_span *sp, const char *key, int64_t val);
/* Ends it with its status (error: 1 with msg, or 0) and copies it into the queue (dropped if full). */
void sg_span_end(struct sg_otel *o, struct sg_span *sp, int error, const char *msg);

#endif
