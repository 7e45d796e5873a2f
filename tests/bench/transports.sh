#!/usr/bin/env bash
# The three broker transports back to back, in one sitting (docs/benchmarks.md, "The broker transports"):
# sagahost bench over RabbitMQ 0-9-1, over AMQP 1.0 (the same broker's amqp1_0 plugin) and over Kafka
# (librdkafka's mock cluster: no Kafka server is installed here), ROUNDS times, alternated, so that the
# rows can be compared with each other.
#
#   tests/bench/transports.sh [SAGAS] [CONCURRENCY] [ROUNDS]      (defaults 3000 256 2)
#
# Needs the tests' broker (tests/amqp-broker.sh: SG_BROKER_PORT, default 26720, amqp1_0 enabled) and
# a build (SAGAHOST, default build/sagahost; build/kafka_mock_cluster next to it).
set -euo pipefail
cd "$(dirname "$0")/../.."
sagas=${1:-3000}
conc=${2:-256}
rounds=${3:-2}
bin=${SAGAHOST:-$PWD/build/sagahost}
mock="$(dirname "$bin")/kafka_mock_cluster"
port=${SG_BROKER_PORT:-26720}
amqp="amqp://guest:guest@127.0.0.1:$port/"
amqp1="amqp://guest:guest@127.0.0.1:$port?prefix=/amq/queue/"
tmp=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null || true; kill "${mock_pid:-0}" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# AMQP 1.0 does not declare queues: the bench's, declared over 0-9-1 as docs/protocol.md has them
/usr/bin/python3 tests/amqp1/tool.py declare "$amqp" bench_inventory bench_payment bench_shipping saga -- \
  sagahost-bench sagahost-bench-participant

# a mock cluster of 3 brokers, kept for all rounds (stdin held open on fd 3)
mkfifo "$tmp/in"
"$mock" 3 < "$tmp/in" > "$tmp/mock.out" 2>&1 &
mock_pid=$!
exec 3> "$tmp/in"
for _ in $(seq 100); do grep -q '^bootstrap ' "$tmp/mock.out" && break; sleep 0.1; done
brokers=$(sed -n 's/^bootstrap //p' "$tmp/mock.out")
[ -n "$brokers" ] || { echo "the mock cluster did not start: $(cat "$tmp/mock.out")" >&2; exit 1; }

run() { # name, flags...
  local name=$1
  shift
  local out
  out=$("$bin" bench --sagas "$sagas" --concurrency "$conc" --db "$tmp/$name.db" "$@" 2>&1) || {
    echo "$name: bench failed:" >&2
    echo "$out" >&2
    exit 1
  }
  rm -f "$tmp/$name.db"*
  printf '%-6s %s\n' "$name" "$(echo "$out" | grep -E '^ *(throughput|latency|store) ' | tr -s ' ' | tr '\n' ' ')"
}

echo "sagas=$sagas concurrency=$conc rounds=$rounds broker=127.0.0.1:$port kafka=$brokers (mock)"
for r in $(seq "$rounds"); do
  echo "round $r"
  run amqp --amqp "$amqp"
  run amqp1 --amqp1 "$amqp1"
  run kafka --kafka "$brokers"
done
