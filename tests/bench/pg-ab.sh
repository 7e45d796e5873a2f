#!/bin/bash
# Before/after of one change on the PostgreSQL store, in one sitting: the in-process bench of each
# build against the tests' PostgreSQL cluster (tests/pg-cluster.sh: started if it is not up; SG_PG_PORT
# and SG_PG_DIR choose another one), alternated, a fresh database for every run. Prints each run's
# throughput, p99, the bench's CPU per saga and the server's CPU per saga (the postmaster and all its
# processes, from /proc: the server runs on the same cores), then per build the medians and the median
# of the after/before ratios of each round's pair. Run by hand, not in CI.
#   tests/bench/pg-ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [SAGAS] [CONCURRENCY]
# e.g. tests/bench/pg-ab.sh /tmp/sagahost-before build/sagahost 5 10000 64
set -euo pipefail
. "$(dirname "$0")/ab-lib.sh"
a=$1 b=$2 rounds=${3:-5} n=${4:-10000} c=${5:-64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bash "$repo/tests/pg-cluster.sh"
port=${SG_PG_PORT:-26730}
data=${SG_PG_DIR:-$repo/tests/tmp-pg}/data
pm=$(head -1 "$data/postmaster.pid" 2>/dev/null || true)
[ -n "$pm" ] || { echo "pg-ab: cannot read the postmaster's pid from $data/postmaster.pid" >&2; exit 1; }
psql_() { bash "$repo/tests/pg-cluster.sh" psql -q "$@"; }
db=sg_pg_ab
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)
# the server's CPU ticks: the postmaster with its ended children (cutime, cstime), and the live ones
server_ticks() {
  local t p
  t=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat")
  for p in $(pgrep -P "$pm"); do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
run() { # binary label
  psql_ -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  sleep 0.3
  local s0 s1 rate p99 cpu srv
  s0=$(server_ticks)
  /usr/bin/time -f "%U %S" -o "$tmp/time" "$1" bench --sagas "$n" --concurrency "$c" --fail-every 10 \
    --db "postgres://postgres@127.0.0.1:$port/$db" > "$tmp/out" 2>&1
  sleep 0.3 # the backend's exit is counted in the postmaster's cutime
  s1=$(server_ticks)
  rate=$(tail -1 "$tmp/out" | sed -E 's/.*"sagas_per_s":([0-9.]+).*/\1/')
  p99=$(tail -1 "$tmp/out" | sed -E 's/.*"p99_ms":([0-9.]+).*/\1/')
  cpu=$(awk -v n="$n" '{ printf "%.1f", ($1 + $2) * 1e6 / n }' "$tmp/time")
  srv=$(awk -v d=$((s1 - s0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
  echo "$rate $cpu $srv" >> "$tmp/$2"
  printf '  %-6s %8s sagas/s  %7s us bench CPU/saga  %7s us server CPU/saga  p99 %s ms\n' "$2" "$rate" "$cpu" "$srv" "$p99"
}
echo "bench --db postgres, $n sagas, C=$c: $rounds rounds, alternated"
for ((r = 1; r <= rounds; r++)); do run "$a" before; run "$b" after; done
psql_ -c "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
ab_summary "$tmp" "$rounds" "sagas/s" throughput "us bench CPU per saga" "bench CPU per saga" \
  "us server CPU per saga" "server CPU per saga"
