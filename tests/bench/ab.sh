#!/bin/bash
# Before/after of one change, in one sitting: runs the in-process bench with two builds, alternated,
# ROUNDS times each, and prints per build the median throughput and the median CPU time per saga
# (user + system of the bench process: the in-process bench is CPU-bound on one thread), and the median
# of the after/before ratios of each round's pair.
#   tests/bench/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [bench args...]
# e.g. tests/bench/ab.sh /tmp/sagahost-before build/sagahost 5 --sagas 20000 --concurrency 64 --fail-every 10
set -euo pipefail
. "$(dirname "$0")/ab-lib.sh"
a=$1 b=$2 rounds=${3:-5}
shift 3 || shift $#
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--sagas 20000 --concurrency 64 --fail-every 10)
n=20000
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = --sagas ] && n=${args[$((i + 1))]}; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # binary label
  /usr/bin/time -f "%U %S" -o "$tmp/time" "$1" bench "${args[@]}" > "$tmp/out" 2>&1
  local rate cpu
  rate=$(tail -1 "$tmp/out" | sed -E 's/.*"sagas_per_s":([0-9.]+).*/\1/')
  cpu=$(awk -v n="$n" '{ printf "%.1f", ($1 + $2) * 1e6 / n }' "$tmp/time")
  echo "$rate $cpu" >> "$tmp/$2"
  printf '  %-6s %8s sagas/s  %7s us CPU/saga   %s\n' "$2" "$rate" "$cpu" \
    "$(tail -1 "$tmp/out" | sed -E 's/.*"p99_ms":([0-9.]+).*"commits":([0-9]+).*/p99 \1 ms, \2 commits/')"
}
echo "bench ${args[*]}: $rounds rounds, alternated"
for ((r = 1; r <= rounds; r++)); do run "$a" before; run "$b" after; done
ab_summary "$tmp" "$rounds" "sagas/s" throughput "us CPU per saga" "CPU per saga"
