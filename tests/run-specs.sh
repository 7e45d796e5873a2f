#!/usr/bin/env bash
# Runs the busted specs against the sagahost binary in $SAGAHOST. Starts the servers the specs use
# (RabbitMQ) on 127.0.0.1 when they are not running; they are left running for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SAGAHOST:=$PWD/build/sagahost}"
export SAGAHOST
rm -rf tests/tmp && mkdir -p tests/tmp
if ls tests/spec/*amqp*_spec.lua >/dev/null 2>&1 && [ -x tests/amqp-broker.sh ]; then
  bash tests/amqp-broker.sh
fi
exec busted --lua=lua5.4 --lpath='tests/spec/?.lua' -o utfTerminal "$@" tests/spec
