#!/usr/bin/env bash
# Parked sagas: N sagas asleep in ctx:sleep("1h"); how much memory the host needs to watch them, and
# how long a restart after kill -9 takes to have them all back under watch (timers armed).
#   tests/bench/parked.sh [N]            (default 100000; needs build/sagahost and build/sagahost.so)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
BIN=${SAGAHOST_BIN:-$PWD/build/sagahost}  # SAGAHOST_BIN: another build to measure
dir=$(mktemp -d /tmp/sagahost-parked-XXXXXX)
mkdir -p "$dir/sagas"
cat > "$dir/sagas/sleeper.lua" <<'LUA'
local saga = require "saga"
saga.define { name = "Sleeper", steps = {
  { name = "Nap", action = function(ctx) ctx.data.t0 = ctx:now(); ctx:sleep("1h") end },
  { name = "Wake", action = function(ctx) ctx.data.woke = true end },
} }
LUA
# 1. the host starts N sagas through its API... in-process here, through the module, for speed
t0=$(date +%s.%N)
lua5.4 - "$dir" "$N" <<'LUA'
package.cpath = "build/?.so;" .. package.cpath
local sagahost = require "sagahost"
sagahost.log_level("warn")
local dir, n = arg[1], tonumber(arg[2])
local host = assert(sagahost.open { dir = dir .. "/sagas", db = dir .. "/host.db" })
for i = 1, n do
  assert(host:start("Sleeper", '{"i":' .. i .. '}'))
  if i % 5000 == 0 then host:run(0) end
end
host:run(0)
local st = host:stats()
io.stderr:write(string.format("created %d parked sagas (coroutines held: %d)\n", st.live, st.coroutines))
host:close()
LUA
t1=$(date +%s.%N)
echo "created $N sagas in $(echo "$t1 - $t0" | bc) s"

# 2. the real host loads them, is killed with kill -9, and restarts
measure() {
  local label=$1
  local start=$(date +%s.%N)
  "$BIN" run --db "$dir/host.db" --listen 127.0.0.1:0 "$dir/sagas" > "$dir/host.$label.log" 2>&1 &
  pid=$!
  until grep -q "listening on" "$dir/host.$label.log"; do sleep 0.05; done
  local ready=$(date +%s.%N)
  local port=$(grep -o "listening on http://[0-9.]*:[0-9]*" "$dir/host.$label.log" | sed 's/.*://')
  local health=$(curl -s "http://127.0.0.1:$port/healthz")
  local rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  echo "$label: under watch after $(echo "$ready - $start" | bc) s, RSS $((rss / 1024)) MB, $(grep -o '"live_sagas":[0-9]*,"coroutines":[0-9]*,"timers":[0-9]*' <<<"$health")"
}
measure first-start
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
measure after-kill-9
kill "$pid"; wait "$pid" 2>/dev/null || true
rm -rf "$dir"
