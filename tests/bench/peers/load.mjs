// The load both peer benches share: N sagas of the bench shape (three steps; every K-th is refused at the
// third and compensates the other two), C in flight, each one's latency from its start to its end, and
// one JSON line printed like sagahost bench's (mode, sagas, concurrency, fail_every, secs, sagas_per_s,
// p50_ms, p99_ms, max_ms, completed, compensated).
export function input(i, k) {
  return { order_id: `bench-${i}`, sku: `sku-${i % 100}`, qty: 1 + (i % 3), amount: 10 + ((i * 7) % 90),
           fail: k > 0 && i % k === 0 };
}

export async function drive(mode, n, c, k, runOne) {
  const lat = [];
  let next = 1, completed = 0, compensated = 0;
  const t0 = performance.now();
  async function worker() {
    while (next <= n) {
      const i = next++;
      const s = performance.now();
      const outcome = await runOne(input(i, k), i);
      lat.push(performance.now() - s);
      if (outcome === "completed") completed++;
      else if (outcome === "compensated") compensated++;
      else throw new Error(`saga ${i} ended ${JSON.stringify(outcome)}`);
    }
  }
  await Promise.all(Array.from({ length: Math.min(c, n) }, worker));
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const pct = (q) => lat[Math.max(0, Math.ceil(lat.length * q) - 1)];
  const r = { mode, sagas: n, concurrency: c, fail_every: k, secs: +secs.toFixed(3),
              sagas_per_s: +(n / secs).toFixed(1), p50_ms: +pct(0.5).toFixed(2), p99_ms: +pct(0.99).toFixed(2),
              max_ms: +lat[lat.length - 1].toFixed(2), latency: "end_to_end", completed, compensated };
  console.log(`${mode}: ${n} sagas, concurrency ${c}: ${r.sagas_per_s} sagas/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms ` +
              `(${completed} completed, ${compensated} compensated)`);
  console.log(JSON.stringify(r));
  return r;
}
