#!/usr/bin/env bash
# The tests' own PostgreSQL 15 cluster. It never uses, starts, stops or talks to any other cluster on the
# machine: it is initdb'ed into tests/tmp-pg (SG_PG_DIR), listens on 127.0.0.1:26730 only (SG_PG_PORT), keeps
# its unix socket in its own directory ($dir/socket) and trusts local TCP connections (a throwaway test
# cluster: nothing in it is worth a password). fsync stays on: the specs and the bench measure durability
# honestly (synchronous_commit = on, as sagahost sets anyway).
#
#   tests/pg-cluster.sh             start the cluster unless it is up; exit 0 once pg_isready says so.
#                                   Idempotent. Left running for the next run.
#   tests/pg-cluster.sh stop        stop this cluster (only this one; fast shutdown)
#   tests/pg-cluster.sh url         print the URL of its postgres database
#                                   (postgres://postgres@127.0.0.1:26730/postgres)
#   tests/pg-cluster.sh psql ARGS   psql as postgres against this cluster (e.g. psql -c 'CREATE DATABASE x')
#
# It runs as the calling user. initdb refuses to run as root: then the cluster belongs to the system user
# sagahost-pg (created with useradd -r if missing), and initdb/pg_ctl run as that user through runuser.
# SG_PG_BIN chooses the server binaries (/usr/lib/postgresql/15/bin), SG_PG_TIMEOUT the start timeout (60 s).
# 26730 sits below Linux's ephemeral range (32768-60999): a port there can be taken at any moment by an
# outgoing connection or by a listener on port 0 (every spec host listens on 127.0.0.1:0).
set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
port=${SG_PG_PORT:-26730}
dir=${SG_PG_DIR:-$repo/tests/tmp-pg}
bin=${SG_PG_BIN:-/usr/lib/postgresql/15/bin}
timeout_s=${SG_PG_TIMEOUT:-60}
data=$dir/data
sock=$dir/socket
log=$dir/server.log
url="postgres://postgres@127.0.0.1:$port/postgres"
pg_user=sagahost-pg

say() { echo "pg-cluster: $*" >&2; }

# as the cluster's owner: the caller, or sagahost-pg when the caller is root
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi
}
ready() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; }
running() { [ -f "$data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case "${1:-start}" in
  url)
    echo "$url"
    exit 0
    ;;
  psql)
    shift
    exec "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
    ;;
  stop)
    if [ -d "$data" ] && running; then
      as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null && say "stopped the cluster in $data"
    else
      say "no cluster running in $data"
    fi
    exit 0
    ;;
  start) ;;
  *)
    echo "usage: $0 [start | stop | url | psql PSQL-ARGS...]" >&2
    exit 64
    ;;
esac

[ -x "$bin/initdb" ] || { say "PostgreSQL 15 not found in $bin (bash .ci/deps.sh --test installs it)"; exit 1; }

if running; then
  ready && exit 0
else
  if ready; then
    say "127.0.0.1:$port answers, but not as the cluster in $data: something else uses the port" \
        "(choose another one with SG_PG_PORT)"
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ] && ! id "$pg_user" >/dev/null 2>&1; then
    useradd -r -M -d /nonexistent -s /usr/sbin/nologin "$pg_user" || { say "cannot create the user $pg_user"; exit 1; }
  fi
  mkdir -p "$dir" || exit 1
  # git ignores the whole directory (it sits in tests/ but holds nothing to commit)
  [ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
  if [ "$(id -u)" -eq 0 ]; then
    # the owner must reach the directory: every parent needs o+x for it (tests/ usually has it)
    chown "$pg_user" "$dir"
  fi
  if [ ! -s "$data/PG_VERSION" ]; then
    rm -rf "$data"
    say "creating a cluster in $data"
    as_owner mkdir -p "$data" "$sock" || exit 1
    as_owner "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
      say "initdb failed:"
      tail -n 20 "$dir/initdb.log" >&2
      exit 1
    }
    # ours, after the defaults: loopback only, a private socket directory, trust for local TCP
    cat <<EOF | as_owner tee -a "$data/postgresql.conf" >/dev/null
# written by tests/pg-cluster.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
fsync = on
synchronous_commit = on
max_connections = 200
shared_buffers = 128MB
log_min_messages = warning
EOF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_owner tee "$data/pg_hba.conf" >/dev/null
  fi
  as_owner mkdir -p "$sock"
  say "starting the cluster in $data on 127.0.0.1:$port"
  as_owner "$bin/pg_ctl" -D "$data" -l "$log" -o "-p $port -k $sock" start >/dev/null 2>&1
fi

i=0
while [ "$i" -lt "$timeout_s" ]; do
  if ready; then
    say "up after ${i}s"
    exit 0
  fi
  sleep 1
  i=$((i + 1))
done
say "the cluster did not come up within ${timeout_s}s; log $log (last lines below)"
tail -n 15 "$log" >&2 2>/dev/null
grep -q "Address already in use" "$log" 2>/dev/null &&
  say "127.0.0.1:$port is taken by another socket: $(ss -Htanp "sport = :$port" 2>/dev/null | head -n 3)"
exit 1
