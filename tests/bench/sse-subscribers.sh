#!/usr/bin/env bash
# What event-stream subscribers cost the host: `sagahost bench --server` (N BenchOrder sagas through the
# HTTP API, C in flight) against one host on SQLite, first with no subscriber, then with 50 subscribers
# of each kind, then with none again (the spread between the two "none" rounds is the noise):
#   idle     connected to GET /v1/events?type=Nothing: they get keep-alives only
#   stalled  connected to GET /v1/events and never reading (curl --limit-rate 1): each is dropped once
#            1 MiB of its events is unsent
#   reading  connected to GET /v1/events and reading every event (written to /dev/null)
#   tests/bench/sse-subscribers.sh [N] [C] [SUBSCRIBERS]     (default 20000 64 50; needs build/sagahost)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
C=${2:-64}
S=${3:-50}
BIN=${SAGAHOST:-$PWD/build/sagahost}
dir=$(mktemp -d /tmp/sagahost-sse-XXXXXX)
"$BIN" bench --write-script "$dir/sagas" >/dev/null
host_pid=
subs=()
cleanup() {
  for p in "${subs[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'cleanup; rm -rf "$dir"' EXIT

round() {
  local mode=$1
  rm -f "$dir"/host.db*
  "$BIN" run --db "$dir/host.db" --listen 127.0.0.1:0 --http-max-per-ip 200 "$dir/sagas" > "$dir/host.log" 2>&1 &
  host_pid=$!
  local url=
  for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$dir/host.log" | sed 's/listening on //' || true)
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "the host did not start:"; cat "$dir/host.log"; exit 1; }
  subs=()
  if [ "$mode" != none ]; then
    for _ in $(seq "$S"); do
      case $mode in
        idle) curl -sN "$url/v1/events?type=Nothing" > /dev/null 2>&1 & ;;
        stalled) curl -sN --limit-rate 1 "$url/v1/events" > /dev/null 2>&1 & ;;
        reading) curl -sN "$url/v1/events" > /dev/null 2>&1 & ;;
      esac
      subs+=($!)
    done
    sleep 1
  fi
  local open
  open=$(curl -s "$url/healthz" | grep -o '"event_subscribers":[0-9]*' | cut -d: -f2)
  local out
  out=$("$BIN" bench --server "$url" --sagas "$N" --concurrency "$C")
  local rate p99 dropped rss
  rate=$(echo "$out" | grep -o '"sagas_per_s":[0-9.]*' | cut -d: -f2)
  p99=$(echo "$out" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
  dropped=$(curl -s "$url/healthz" | grep -o '"event_subscribers_dropped":[0-9]*' | cut -d: -f2)
  rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$host_pid/status")
  printf "%-8s subscribers %3s  %8.0f sagas/s  p99 %6s ms  dropped %3s  host peak RSS %5.0f MB\n" \
    "$mode" "$open" "$rate" "$p99" "$dropped" "$rss"
  cleanup
  host_pid=
}

echo "sagahost bench --server, $N sagas, concurrency $C, $S subscribers per round ($(nproc) cores)"
# MODES="none idle none idle" picks the rounds
for mode in ${MODES:-none idle stalled reading none}; do round "$mode"; done
