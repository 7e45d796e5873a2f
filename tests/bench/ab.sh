#!/bin/bash
# Before/after of one change, in one sitting: runs the in-process bench with two builds, alternated,
# ROUNDS times each, and prints per build the median throughput and the median CPU time per saga
# (user + system of the bench process: the in-process bench is CPU-bound on one thread), and the median
# of the after/before ratios of each round's pair.
#   tests/bench/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [bench args...]
# e.g. tests/bench/ab.sh /tmp/sagahost-before build/sagahost 5 --sagas 20000 --concurrency 64 --fail-every 10
set -euo pipefail
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
med() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for l in before after; do
  printf '%-6s median %s sagas/s, %s us CPU per saga\n' "$l" "$(cut -d' ' -f1 "$tmp/$l" | med)" "$(cut -d' ' -f2 "$tmp/$l" | med)"
done
# the machine drifts between rounds: the ratio of each round's pair (run back to back) drifts less
paste -d' ' "$tmp/before" "$tmp/after" | awk '{ print $3 / $1, $4 / $2 }' > "$tmp/ratio"
printf 'after/before, median of the %d pairs: throughput x%.3f, CPU per saga x%.3f\n' "$rounds" \
  "$(cut -d' ' -f1 "$tmp/ratio" | med)" "$(cut -d' ' -f2 "$tmp/ratio" | med)"
