#!/usr/bin/env bash
# Installs the Debian packages sagahost needs to build and test, if any are missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config liblua5.4-dev lua5.4 libev-dev librabbitmq-dev libsqlite3-dev
      libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libssl-dev libpq-dev lua-cjson lua-cjson-dev libqpid-proton11-dev
      lua-busted sqlite3 curl libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler librdkafka-dev
      libmimalloc-dev)
# libFuzzer comes with Debian's clang runtime (libclang-rt-14-dev on Debian 12); make test-debug runs fuzz-smoke
fuzz_pkgs=(clang libclang-rt-14-dev)
[ "${1:-}" = "--test" ] && pkgs+=(rabbitmq-server postgresql python3-pika python3-qpid-proton openssl chromium prometheus "${fuzz_pkgs[@]}")
# the dashboard's browser tests run Node (playwright-core from npm, below): Debian's nodejs and npm unless a
# node is there already (NodeSource's nodejs package brings its own npm and conflicts with Debian's)
[ "${1:-}" = "--test" ] && ! command -v npm >/dev/null && pkgs+=(nodejs npm)
[ "${1:-}" = "--fuzz" ] && pkgs+=("${fuzz_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# npm ci in a directory, tried up to 3 times: a registry request can fail for a moment (a TLS error
# through the network's proxy was seen once), and one failed request should not fail the whole run
npm_ci() {
  local i
  # Node trusts only its own CA list unless told: add Debian's (which holds any CA the network's TLS
  # proxy needs: Node's own list does not)
  if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  fi
  for i in 1 2 3; do
    npm ci --prefix "$1" --no-audit --no-fund --prefer-offline && return 0
    echo "npm ci in $1 failed (attempt $i of 3)"
    [ "$i" -lt 3 ] && sleep 15
  done
  return 1
}
# playwright-core (pinned in tests/web/package-lock.json) drives Debian's chromium: no browser download.
# npm ci when it is missing or not the version the lock file pins.
web="$(dirname "$0")/../tests/web"
if [ "${1:-}" = "--test" ]; then
  want=$(grep -A1 '"node_modules/playwright-core"' "$web/package-lock.json" | grep -o '"version": "[^"]*"' || true)
  have=$(grep -o '"version": "[^"]*"' "$web/node_modules/playwright-core/package.json" 2>/dev/null | head -1 || true)
  if [ -z "$have" ] || [ "$want" != "$have" ]; then
    echo "installing: playwright-core (npm ci in tests/web)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_ci "$web"
  fi
fi
# the gRPC spec's client (tests/grpc/client.js): @grpc/grpc-js and @grpc/proto-loader, pinned in its lock file
grpcdir="$(dirname "$0")/../tests/grpc"
if [ "${1:-}" = "--test" ]; then
  want=$(grep -A1 '"node_modules/@grpc/grpc-js"' "$grpcdir/package-lock.json" | grep -o '"version": "[^"]*"' || true)
  have=$(grep -o '"version": "[^"]*"' "$grpcdir/node_modules/@grpc/grpc-js/package.json" 2>/dev/null | head -1 || true)
  if [ -z "$have" ] || [ "$want" != "$have" ]; then
    echo "installing: @grpc/grpc-js, @grpc/proto-loader (npm ci in tests/grpc)"
    npm_ci "$grpcdir"
  fi
fi
# the AMQP 1.0 spec's rhea participant (tests/amqp1/participant.js): rhea, pinned in its lock file
amqp1dir="$(dirname "$0")/../tests/amqp1"
if [ "${1:-}" = "--test" ]; then
  want=$(grep -A1 '"node_modules/rhea"' "$amqp1dir/package-lock.json" | grep -o '"version": "[^"]*"' || true)
  have=$(grep -o '"version": "[^"]*"' "$amqp1dir/node_modules/rhea/package.json" 2>/dev/null | head -1 || true)
  if [ -z "$have" ] || [ "$want" != "$have" ]; then
    echo "installing: rhea (npm ci in tests/amqp1)"
    npm_ci "$amqp1dir"
  fi
fi
# the Kafka spec's participant (tests/kafka/participant.js, tool.js): kafkajs, pinned in its lock file
kafkadir="$(dirname "$0")/../tests/kafka"
if [ "${1:-}" = "--test" ]; then
  want=$(grep -A1 '"node_modules/kafkajs"' "$kafkadir/package-lock.json" | grep -o '"version": "[^"]*"' || true)
  have=$(grep -o '"version": "[^"]*"' "$kafkadir/node_modules/kafkajs/package.json" 2>/dev/null | head -1 || true)
  if [ -z "$have" ] || [ "$want" != "$have" ]; then
    echo "installing: kafkajs (npm ci in tests/kafka)"
    npm_ci "$kafkadir"
  fi
fi
exit 0
