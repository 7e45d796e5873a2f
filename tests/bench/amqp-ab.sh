#!/bin/bash
# Before/after of one change on the RabbitMQ path, in one sitting: `sagahost bench --amqp` of each build
# against the tests' broker (tests/amqp-broker.sh: started if it is not up; SG_BROKER_PORT,
# SG_BROKER_NODE and SG_BROKER_DIR choose another one), alternated. Prints each run's throughput, p99,
# the CPU per saga of the bench with its participant process (user + system, children included) and of
# the broker (its beam.smp, from /proc: the broker runs on the same cores), then per build the medians
# and the median of the after/before ratios of each round's pair. Run by hand, not in CI.
#   tests/bench/amqp-ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [SAGAS] [CONCURRENCY]
# e.g. tests/bench/amqp-ab.sh /tmp/sagahost-before build/sagahost 5 8000 64
set -euo pipefail
. "$(dirname "$0")/ab-lib.sh"
a=$1 b=$2 rounds=${3:-5} n=${4:-8000} c=${5:-64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bash "$repo/tests/amqp-broker.sh" >/dev/null
url="amqp://guest:guest@127.0.0.1:${SG_BROKER_PORT:-26720}/"
# the node's VM: its HOME is the broker's directory
beam=$(pgrep -f "beam.smp.* -home ${SG_BROKER_DIR:-$repo/tests/tmp-broker} " | head -1 || true)
[ -n "$beam" ] || { echo "amqp-ab: cannot find the broker's beam.smp" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)
run() { # binary label
  local b0 b1 rate p99 cpu brk
  b0=$(awk '{ print $14 + $15 }' "/proc/$beam/stat")
  /usr/bin/time -f "%U %S" -o "$tmp/time" "$1" bench --sagas "$n" --concurrency "$c" --fail-every 10 --amqp "$url" \
    > "$tmp/out" 2>&1
  b1=$(awk '{ print $14 + $15 }' "/proc/$beam/stat")
  rate=$(tail -1 "$tmp/out" | sed -E 's/.*"sagas_per_s":([0-9.]+).*/\1/')
  p99=$(tail -1 "$tmp/out" | sed -E 's/.*"p99_ms":([0-9.]+).*/\1/')
  cpu=$(awk -v n="$n" '{ printf "%.1f", ($1 + $2) * 1e6 / n }' "$tmp/time")
  brk=$(awk -v d=$((b1 - b0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
  echo "$rate $cpu $brk" >> "$tmp/$2"
  printf '  %-6s %8s sagas/s  %7s us sagahost CPU/saga  %7s us broker CPU/saga  p99 %s ms\n' "$2" "$rate" "$cpu" "$brk" "$p99"
}
echo "bench --amqp, $n sagas, C=$c: $rounds rounds, alternated"
for ((r = 1; r <= rounds; r++)); do run "$a" before; run "$b" after; done
ab_summary "$tmp" "$rounds" "sagas/s" throughput "us sagahost CPU per saga" "sagahost CPU per saga" \
  "us broker CPU per saga" "broker CPU per saga"
