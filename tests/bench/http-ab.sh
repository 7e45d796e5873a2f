#!/bin/bash
# Before/after of one change on the HTTP path, in one sitting: for each round, a fresh host of each
# build (its own database, the bench scripts, 127.0.0.1:$SG_BENCH_PORT) is driven by
# `sagahost bench --server` (one POST ?wait= a saga on kept-alive connections; the AFTER build's
# client for both, so that only the host differs), alternated. Prints each run's throughput, p99 and
# the host's CPU time per saga (user + system of the host process, from /proc), then per build the
# medians and the median of the after/before ratios of each round's pair.
#   tests/bench/http-ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [SAGAS] [CONCURRENCY]
# e.g. tests/bench/http-ab.sh /tmp/sagahost-before build/sagahost 5 15000 64
# SG_AB_CLIENT_BEFORE / SG_AB_CLIENT_AFTER: extra bench arguments for each side's runs (e.g. one build
# for both sides and SG_AB_CLIENT_BEFORE="--wait-on get" to compare the client's two request shapes).
set -euo pipefail
. "$(dirname "$0")/ab-lib.sh"
a=$1 b=$2 rounds=${3:-5} n=${4:-15000} c=${5:-64}
port=${SG_BENCH_PORT:-18471}
tmp=$(mktemp -d)
host_pid=
cleanup() { [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
hz=$(getconf CLK_TCK)
run() { # binary label
  rm -rf "$tmp/run" && mkdir -p "$tmp/run"
  "$1" bench --write-script "$tmp/run/scripts" > /dev/null
  "$1" run --db "$tmp/run/h.db" --listen "127.0.0.1:$port" --http-max-per-ip $((c + 50)) "$tmp/run/scripts" \
    > "$tmp/run/host.log" 2>&1 &
  host_pid=$!
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  local c0 c1 out rate p99 cpu
  c0=$(awk '{ print $14 + $15 }' "/proc/$host_pid/stat")
  local extra=${SG_AB_CLIENT_BEFORE:-}
  [ "$2" = after ] && extra=${SG_AB_CLIENT_AFTER:-}
  # shellcheck disable=SC2086
  out=$("$b" bench --server "http://127.0.0.1:$port" --sagas "$n" --concurrency "$c" --fail-every 10 $extra 2>&1 | tail -1)
  c1=$(awk '{ print $14 + $15 }' "/proc/$host_pid/stat")
  kill "$host_pid"; wait "$host_pid" 2>/dev/null || true
  host_pid=
  rate=$(echo "$out" | sed -E 's/.*"sagas_per_s":([0-9.]+).*/\1/')
  p99=$(echo "$out" | sed -E 's/.*"p99_ms":([0-9.]+).*/\1/')
  cpu=$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
  echo "$rate $cpu" >> "$tmp/$2"
  printf '  %-6s %8s sagas/s  %7s us host CPU/saga   p99 %s ms\n' "$2" "$rate" "$cpu" "$p99"
}
echo "bench --server, $n sagas, C=$c: $rounds rounds, alternated"
for ((r = 1; r <= rounds; r++)); do run "$a" before; run "$b" after; done
ab_summary "$tmp" "$rounds" "sagas/s" throughput "us host CPU per saga" "host CPU per saga"
