#!/usr/bin/env bash
# Side by side on this machine: the bench saga (three steps, every K-th compensates the first two) on
# sagahost (in-process with SQLite, and with the PostgreSQL store), on DBOS (its workflows on PostgreSQL)
# and on Restate (its server and a Node service endpoint). Run by hand, not in CI:
#   tests/bench/peers/run.sh [N] [C] [K]        (default 2000 64 10; needs `make build` first)
# It installs the peers from npm into tests/bench/peers/node_modules (npm ci), starts a private PostgreSQL
# cluster (tests/pg-cluster.sh, port 28931, under a temp dir) and a private Restate server (ports
# 28080/28070/28122, under the same temp dir), stops both at the end, and prints each run's JSON line.
# Every system keeps its durability defaults: sagahost fsyncs each commit (synchronous=FULL; PostgreSQL
# synchronous_commit=on), DBOS commits each step to PostgreSQL, Restate fsyncs its log (RocksDB WAL).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
n=${1:-2000} c=${2:-64} k=${3:-10}
bin=${SAGAHOST_BIN:-$repo/build/sagahost}
[ -x "$bin" ] || { echo "run: no $bin (make build first)" >&2; exit 1; }
command -v node >/dev/null || { echo "run: needs node and npm (apt-get install nodejs npm)" >&2; exit 1; }
export NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

tmp=$(mktemp -d /tmp/sagahost-peers-XXXXXX)
chmod 755 "$tmp"
export SG_PG_PORT=28931 SG_PG_DIR=$tmp/pg
restate_pid=
endpoint_pid=
cleanup() {
  [ -n "$endpoint_pid" ] && kill "$endpoint_pid" 2>/dev/null || true
  [ -n "$restate_pid" ] && kill "$restate_pid" 2>/dev/null && wait "$restate_pid" 2>/dev/null || true
  bash "$repo/tests/pg-cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$repo/tests/pg-cluster.sh" >/dev/null
psql() { bash "$repo/tests/pg-cluster.sh" psql "$@"; }
pg="postgres://postgres@127.0.0.1:$SG_PG_PORT"

echo "== sagahost, in-process, SQLite"
"$bin" bench --sagas "$n" --concurrency "$c" --fail-every "$k" | tail -1
echo "== sagahost, in-process, PostgreSQL store"
psql -q -c "CREATE DATABASE sagahost_bench" >/dev/null
"$bin" bench --sagas "$n" --concurrency "$c" --fail-every "$k" --db "$pg/sagahost_bench" | tail -1

echo "== DBOS $(node -p 'require("'"$here"'/node_modules/@dbos-inc/dbos-sdk/package.json").version')"
psql -q -c "CREATE DATABASE dbos_bench" >/dev/null
(cd "$here" && DBOS_SYSTEM_DATABASE_URL="$pg/dbos_bench" node dbos_bench.mjs "$n" "$c" "$k" 2>"$tmp/dbos.err" | tail -2) ||
  { cat "$tmp/dbos.err" >&2; exit 1; }

echo "== Restate $("$here/node_modules/.bin/restate-server" --version | awk '{print $2}')"
RESTATE_BASE_DIR=$tmp/restate RESTATE_NODE_NAME=bench RESTATE_BIND_ADDRESS=127.0.0.1:28122 \
  RESTATE_ADVERTISED_ADDRESS=http://127.0.0.1:28122 RESTATE_INGRESS__BIND_ADDRESS=127.0.0.1:28080 \
  RESTATE_ADMIN__BIND_ADDRESS=127.0.0.1:28070 RESTATE_DISABLE_TELEMETRY=true RESTATE_LOG_FILTER=warn \
  "$here/node_modules/.bin/restate-server" > "$tmp/restate.log" 2>&1 &
restate_pid=$!
(cd "$here" && exec node restate_bench.mjs serve 28090) > "$tmp/endpoint.log" 2>&1 &
endpoint_pid=$!
for i in $(seq 1 120); do
  curl -sf http://127.0.0.1:28070/health >/dev/null 2>&1 && curl -sf http://127.0.0.1:28080/restate/health >/dev/null 2>&1 && break
  sleep 0.5
done
curl -sf http://127.0.0.1:28070/deployments -H 'content-type: application/json' \
  -d '{"uri": "http://127.0.0.1:28090"}' >/dev/null || { echo "run: Restate did not take the deployment" >&2; cat "$tmp/restate.log" >&2; exit 1; }
sleep 1
(cd "$here" && node restate_bench.mjs load http://127.0.0.1:28080 "$n" "$c" "$k" | tail -2)
