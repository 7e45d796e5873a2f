/* metrics: what GET /metrics shows, in the Prometheus text format (version 0.0.4).
 *
 * Counters and gauges come from the engine's statistics (sg_engine_stats), the script runtime (load
 * errors, Lua memory) and the transport; the per-type counters and the step duration histograms from
 * the engine's lifecycle events (an observer registered by sg_metrics_new, so they count what was
 * committed); the commit duration histogram from the engine's commit callback (sg_engine_on_commit).
 * Scripts name types and steps freely, so the label sets kept are bounded (sg_metrics_set_limit):
 * what does not fit is counted in sagahost_metrics_dropped_total instead. docs/operations.md,
 * "Monitoring", lists every metric.
 *
 * Ownership: the engine and script runtime are the caller's and must outlive the metrics;
 * sg_metrics_free frees everything else (call it before the engine is freed: the observer and the
 * commit callback point at the metrics). */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stddef.h>
#include "engine.h"
#include "script.h"
#include "util.h"

struct sg_metrics;

/* Starts counting: registers an observer and the commit callback with the engine. NULL + e when the
 * engine takes no more observers. */
struct sg_metrics *sg_metrics_new(struct sg_engine *en, struct sg_script *sc, struct sg_error *e);
/* At most n saga types and n step-duration label sets (type, step, phase, outcome) are kept; events
 * of others are counted as dropped (default 10000). */
void sg_metrics_set_limit(struct sg_metrics *m, size_t n);
/* Appends every metric to b. */
void sg_metrics_render(struct sg_metrics *m, struct sg_buf *b);
/* NULL: nothing. The engine keeps the observer slot, which then must not fire (stop the engine's
 * loop first); the commit callback is unset. */
void sg_metrics_free(struct sg_metrics *m);

#endif
