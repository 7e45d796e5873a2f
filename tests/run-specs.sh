#!/usr/bin/env bash
# Runs the busted specs against the sagahost binary in $SAGAHOST. Starts the servers the specs use
# when they are not running: the tests' own RabbitMQ node (tests/amqp-broker.sh, 127.0.0.1:56720; no
# other broker on the machine is used); they are left running for the next run.
# Extra arguments go to busted (e.g. a single spec file).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${SAGAHOST:=$PWD/build/sagahost}"
export SAGAHOST
# the in-process module (build/sagahost.so: the sanitizer build does not make one)
: "${SAGAHOST_MODULE_DIR:=$(dirname "$SAGAHOST")}"
[ -f "$SAGAHOST_MODULE_DIR/sagahost.so" ] || SAGAHOST_MODULE_DIR=$PWD/build
export SAGAHOST_MODULE_DIR
rm -rf tests/tmp && mkdir -p tests/tmp
bash tests/amqp-broker.sh || exit 1
# every spec talks to that node (unless SG_AMQP_URL names another broker on purpose)
: "${SG_AMQP_URL:=$(bash tests/amqp-broker.sh url)}"
export SG_AMQP_URL
[ $# -eq 0 ] && set -- tests/spec
out=tests/tmp/specs.tap
busted --lua=lua5.4 --lpath='tests/spec/?.lua' -o TAP "$@" | tee "$out"
rc=${PIPESTATUS[0]}
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
echo "specs: $passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
