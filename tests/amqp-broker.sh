#!/bin/bash
# Starts a local RabbitMQ for the tests (127.0.0.1:5672, guest/guest) unless one already answers.
# Idempotent: a second run returns at once. Exit 0 once the broker accepts AMQP connections.
set -u

# Listen on loopback only: AMQP, Erlang distribution and epmd. su (used by Debian's wrapper when run
# as root) keeps the environment, so these reach the node.
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=5672
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

timeout_s=${SG_BROKER_TIMEOUT:-60}

amqp_up() {
  # a bare TCP connect to the AMQP port; rabbitmqctl status alone answers before the listener is up
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

if amqp_up; then
  exit 0
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "amqp-broker: starting rabbitmq-server" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
else
  # the node runs but its app may have been stopped (an interrupted broker-restart spec)
  rabbitmqctl -q start_app >/dev/null 2>&1 || true
fi

i=0
while [ "$i" -lt "$timeout_s" ]; do
  if rabbitmqctl -q status >/dev/null 2>&1 && amqp_up; then
    echo "amqp-broker: up after ${i}s" >&2
    exit 0
  fi
  sleep 1
  i=$((i + 1))
done
echo "amqp-broker: RabbitMQ did not come up within ${timeout_s}s (see /var/log/rabbitmq)" >&2
exit 1
