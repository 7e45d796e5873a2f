/* bench: `sagahost bench`, the load generator of issue #5.
 *
 * It runs N BenchOrder sagas (3 steps; every K-th one is refused at step 3 and compensates steps 2
 * and 1) with C in flight and prints a readable summary followed, last, by one JSON line with the
 * figures (throughput, latency percentiles, peak RSS, store commits, outcomes).
 *   in-process (default): store, script, engine and local transport exactly as `run` wires them,
 *                         driven from its own ev loop through sg_engine_start / sg_engine_on_terminal;
 *   --amqp URL:           the same orchestrator on the AMQP transport, participants in a second
 *                         `sagahost run` process that the bench spawns and stops;
 *   --amqp1 URL:          the same on the AMQP 1.0 transport (its queues must exist);
 *   --server URL:         a running host driven over the HTTP API (libcurl multi).
 *
 * Ownership: everything it creates (temp directory, database, child process) is removed or stopped
 * before it returns, except a --db path the user named (kept for inspection) and, after a failure,
 * the temp directory (its path is printed). */
#ifndef SG_BENCH_H
#define SG_BENCH_H

/* argv[0] is "bench". Returns the process exit status: 0 ok, 1 the run failed, 2 bad usage. */
int sg_bench_main(int argc, char **argv);

#endif
