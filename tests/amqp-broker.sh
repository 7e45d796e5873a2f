#!/usr/bin/env bash
# The tests' own RabbitMQ node. It never uses, starts, stops or talks to any other broker on the machine
# (the system's rabbit@host on 5672 is left alone): it runs as node sagahost-test@localhost, from the
# directory tests/tmp-broker (its Erlang cookie, config, data, logs), listening on 127.0.0.1 only:
#   AMQP               127.0.0.1:26720  (SG_BROKER_PORT; guest/guest, the tests' URL is
#                                        amqp://guest:guest@127.0.0.1:26720/; AMQP 1.0 on the same port,
#                                        the rabbitmq_amqp1_0 plugin)
#   Erlang dist        127.0.0.1:26721  (port + 1)
#   its own epmd       127.0.0.1:26722  (port + 2; the system's epmd on 4369 is not used)
#   rabbitmqctl's dist 127.0.0.1:26723-26729
# The block sits below Linux's ephemeral range (32768-60999): a port there can be taken at any moment by an
# outgoing connection or by a listener on port 0 (every spec host listens on 127.0.0.1:0).
# The server runs as the calling user, straight from /usr/lib/rabbitmq/bin (not Debian's /usr/sbin
# wrapper, which su's to the rabbitmq user and to its cookie); its cookie, $dir/.erlang.cookie, is
# random and private, so the `ctl` below cannot reach another node, nor another node's CLI this one.
#
#   tests/amqp-broker.sh            start the node unless it is up, and start its app if a broker-restart
#                                   spec left it stopped; exit 0 once it accepts AMQP connections.
#                                   Idempotent: when the node is up it returns at once. Left running
#                                   for the next run.
#   tests/amqp-broker.sh ctl ARGS   rabbitmqctl -q -n sagahost-test@localhost ARGS, against this node only
#   tests/amqp-broker.sh stop       stop this node (only this one)
#   tests/amqp-broker.sh url        print its AMQP URL
# SG_BROKER_PORT, SG_BROKER_NODE and SG_BROKER_DIR choose another port block, node name and directory
# (e.g. for a second clone on the same machine); SG_BROKER_TIMEOUT the start timeout in seconds (60).
set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
node=${SG_BROKER_NODE:-sagahost-test@localhost}
port=${SG_BROKER_PORT:-26720}
dir=${SG_BROKER_DIR:-$repo/tests/tmp-broker}
timeout_s=${SG_BROKER_TIMEOUT:-60}
url="amqp://guest:guest@127.0.0.1:$port/"

# Debian's package keeps the real scripts here; elsewhere (generic-unix tarball) they are on PATH
rmq_bin=${SG_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
if [ ! -x "$rmq_bin/rabbitmq-server" ]; then
  rmq_bin=$(dirname "$(command -v rabbitmq-server 2>/dev/null || echo /nonexistent/rabbitmq-server)")
fi

# Everything the node and rabbitmqctl read, pointed at $dir and at loopback, so that nothing comes from
# /etc/rabbitmq (meant for the system node) or /var/lib/rabbitmq. The variables do not leave this script.
export HOME=$dir # the Erlang cookie is $HOME/.erlang.cookie
export RABBITMQ_NODENAME=$node
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port
export RABBITMQ_DIST_PORT=$((port + 1))
export ERL_EPMD_PORT=$((port + 2)) ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CTL_DIST_PORT_MIN=$((port + 3)) RABBITMQ_CTL_DIST_PORT_MAX=$((port + 9))
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_CONFIG_FILES=$dir/conf.d
export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MOTD_FILE=$dir/motd
export RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log
export ERL_CRASH_DUMP=$dir/erl_crash.dump

# bounded: a wedged node fails the caller instead of hanging it
ctl() { timeout -k 5 120 "$rmq_bin/rabbitmqctl" -q -n "$node" "$@"; }
# the node's VM runs, is registered with its epmd and accepts this cookie (its app may be stopped)
node_up() { [ -s "$dir/.erlang.cookie" ] && ctl ping >/dev/null 2>&1; }
# a bare TCP connect to the AMQP port: the listener is up only once the app has started
amqp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
say() { echo "amqp-broker: $*" >&2; }

why_not() {
  # what we know when the node did not come up
  local names
  names=$(epmd -names 2>/dev/null) # asks the epmd on $ERL_EPMD_PORT
  if echo "$names" | grep -q "^name ${node%@*} at"; then
    say "a node named $node is registered with the epmd on 127.0.0.1:$ERL_EPMD_PORT but does not accept" \
        "the cookie of $dir: another checkout's test node? set SG_BROKER_PORT/SG_BROKER_NODE, or stop it"
  fi
  say "logs: $dir/log/ (last lines below)"
  tail -n 15 "$dir/log/$node.log" "$dir/log/start.log" 2>/dev/null >&2
}

case "${1:-start}" in
  ctl)
    shift
    [ -s "$dir/.erlang.cookie" ] || { say "no test node in $dir (start it with tests/amqp-broker.sh)"; exit 69; }
    ctl "$@"
    exit
    ;;
  url)
    echo "$url"
    exit 0
    ;;
  stop)
    if node_up; then ctl stop >/dev/null && say "stopped $node"; else say "$node is not running"; fi
    exit 0
    ;;
  start) ;;
  *)
    echo "usage: $0 [start | ctl RABBITMQCTL-ARGS... | stop | url]" >&2
    exit 64
    ;;
esac

if node_up; then
  # a node started by an older version of this script runs without AMQP 1.0: enable the plugin once
  # (rabbitmq-plugins updates $dir/enabled_plugins and starts the plugin on the running node)
  if ! grep -q rabbitmq_amqp1_0 "$dir/enabled_plugins" 2>/dev/null; then
    say "enabling the rabbitmq_amqp1_0 plugin on $node"
    timeout -k 5 120 "$rmq_bin/rabbitmq-plugins" -q -n "$node" enable rabbitmq_amqp1_0 >/dev/null 2>&1 ||
      say "could not enable rabbitmq_amqp1_0 on $node (the --amqp1 specs will fail to connect)"
  fi
  amqp_up && exit 0
  # the node runs but its app was stopped (an interrupted broker-restart spec), or is still booting
  say "starting the app of $node"
  ctl start_app >/dev/null 2>&1 || true
else
  if amqp_up; then
    say "127.0.0.1:$port answers, but not as $node started from $dir: something else uses the port" \
        "(choose another block with SG_BROKER_PORT)"
    exit 1
  fi
  [ -x "$rmq_bin/rabbitmq-server" ] || { say "rabbitmq-server not found (bash .ci/deps.sh --test installs it)"; exit 1; }
  mkdir -p "$dir/log" "$dir/mnesia" "$dir/conf.d" || exit 1
  # git ignores the whole directory (it sits in tests/ but holds nothing to commit)
  [ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
  if [ ! -s "$dir/.erlang.cookie" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -dc 'a-f0-9' | tr 'a-f' 'A-F' >"$dir/.erlang.cookie")
    chmod 400 "$dir/.erlang.cookie"
  fi
  : >"$dir/rabbitmq-env.conf"
  # AMQP 1.0 (the --amqp1 transport's specs) on the same listener as 0-9-1; no management listener on 15672
  echo '[rabbitmq_amqp1_0].' >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<'EOF'
# written by tests/amqp-broker.sh; the listener (127.0.0.1:port) comes from RABBITMQ_NODE_IP_ADDRESS/PORT
loopback_users.guest = true
log.console = false
log.file.rotation.size = 10485760
log.file.rotation.count = 2
EOF
  say "starting $node on 127.0.0.1:$port (data and logs in $dir)"
  (cd "$dir" && "$rmq_bin/rabbitmq-server" -detached) >>"$dir/log/start.log" 2>&1
fi

i=0
while [ "$i" -lt "$timeout_s" ]; do
  if node_up && amqp_up; then
    say "$node up after ${i}s"
    exit 0
  fi
  sleep 1
  i=$((i + 1))
done
say "$node did not come up within ${timeout_s}s"
why_not
exit 1
