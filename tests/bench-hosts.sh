#!/usr/bin/env bash
# Throughput of 1, 2 and 3 sagahost hosts sharing one PostgreSQL database on this machine, and where the CPU
# goes (postgres vs the hosts vs the load generators), to tell which side is the bottleneck.
#
#   bash tests/bench-hosts.sh [--sagas M] [--hosts "1 2 3"] [--concurrency C] [--host-args "FLAGS"]
#
# For each N in --hosts: a fresh database on the tests' private cluster (tests/pg-cluster.sh,
# 127.0.0.1:26730; started if it is not up, and stopped again at the end only then), N hosts
# `sagahost run --db URL --host-id bhI --listen 127.0.0.1:0 DIR` on the bench saga (in-process transport:
# no broker, each host answers its own participants), then N `sagahost bench --server URL_I --sagas M
# --concurrency C` at once, one per host. M sagas per host (default 10000), C in flight per host (64; the
# hosts get --http-max-per-ip C+16, as the client's connections all come from 127.0.0.1). --host-args adds
# flags to every host (e.g. "--lease 3s").
# Prints each run's figures and a final table: total sagas/s (all N*M sagas over the wall time from the
# first start to the last terminal status), the sum of the hosts' own rates, the worst p99 of a start
# (POST until durable), and the CPU seconds postgres, the hosts and the bench clients used meanwhile (from
# /proc/PID/stat; postgres counts the postmaster, its live backends and the backends that exited).
# SAGAHOST chooses the binary (build/sagahost), SG_PG_PORT/SG_PG_BIN/SG_PG_DIR as in tests/pg-cluster.sh.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$PWD

BIN=${SAGAHOST:-$repo/build/sagahost}
M=10000
HOSTS="1 2 3"
C=64
HOST_ARGS=""
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --sagas) M=${2:?--sagas needs a value}; shift 2 ;;
    --hosts) HOSTS=${2:?--hosts needs a value}; shift 2 ;;
    --concurrency) C=${2:?--concurrency needs a value}; shift 2 ;;
    --host-args) HOST_ARGS=${2?--host-args needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-hosts: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$M" =~ ^[1-9][0-9]*$ ]] || { echo "bench-hosts: --sagas must be a positive integer" >&2; exit 2; }
[[ "$C" =~ ^[1-9][0-9]*$ ]] || { echo "bench-hosts: --concurrency must be a positive integer" >&2; exit 2; }
for n in $HOSTS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-hosts: --hosts takes positive integers" >&2; exit 2; }; done
[ -x "$BIN" ] || { echo "bench-hosts: no binary at $BIN (make, or set SAGAHOST)" >&2; exit 1; }

port=${SG_PG_PORT:-26730}
pg_bin=${SG_PG_BIN:-/usr/lib/postgresql/15/bin}
pg_dir=${SG_PG_DIR:-$repo/tests/tmp-pg}
psql_() { PGOPTIONS='-c client_min_messages=warning' "$pg_bin/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
hz=$(getconf CLK_TCK)
cores=$(nproc)

work=$(mktemp -d /tmp/sagahost-bench-hosts-XXXXXX)
started_pg=0
host_pids=()
bench_pids=()
db=""

stop_hosts() {
  local p
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${host_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${bench_pids[@]}" "${host_pids[@]}"; do wait "$p" 2>/dev/null; done
  bench_pids=()
  host_pids=()
}
drop_db() {
  [ -n "$db" ] && psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  db=""
}
cleanup() {
  stop_hosts
  drop_db
  if [ "$started_pg" = 1 ]; then bash tests/pg-cluster.sh stop; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
  bash tests/pg-cluster.sh || { echo "bench-hosts: cannot start the tests' PostgreSQL cluster" >&2; exit 1; }
  started_pg=1
fi

scripts=$work/sagas
"$BIN" bench --write-script "$scripts" >/dev/null || { echo "bench-hosts: bench --write-script failed" >&2; exit 1; }

# CPU ticks (utime + stime) of a process; with "all", its reaped children's too
ticks() {
  local f=/proc/$1/stat
  [ -r "$f" ] || { echo 0; return; }
  sed 's/^.*) //' "$f" | awk -v all="${2:-}" '{ t = $12 + $13; if (all != "") t += $14 + $15; print t }'
}
postmaster_pid() {
  local p
  p=$(head -n 1 "$pg_dir/data/postmaster.pid" 2>/dev/null)
  [ -n "$p" ] && [ -d "/proc/$p" ] && { echo "$p"; return; }
  pgrep -o -f "postgres.*-p $port" 2>/dev/null
}
# every tick the cluster has used: the postmaster, its live children, and (through the postmaster's
# cutime/cstime) the children it has reaped
pg_ticks() {
  local pm t c
  pm=$(postmaster_pid)
  [ -n "$pm" ] || { echo 0; return; }
  t=$(ticks "$pm" all)
  for c in $(ps -o pid= --ppid "$pm"); do t=$((t + $(ticks "$c" all))); done
  echo "$t"
}
host_ticks() {
  local t=0 p
  for p in "${host_pids[@]}"; do t=$((t + $(ticks "$p"))); done
  echo "$t"
}
# CPU seconds of this shell's reaped children (the bench clients once waited for), from `times` (run in
# this shell, not in a $(...) subshell, whose own children are none)
children_s() {
  times >"$work/times"
  tail -n 1 "$work/times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.2f", s }'
}
now() { date +%s.%N; }
secs() { awk -v t="$1" -v h="$hz" 'BEGIN { printf "%.2f", t / h }'; }
field() { grep -o "\"$2\":[0-9.]*" <<<"$1" | head -n 1 | cut -d: -f2; }

rows=()
echo "bench-hosts: $M sagas per host, concurrency $C per host, hosts: $HOSTS; $cores cores; binary $BIN"
for n in $HOSTS; do
  echo
  echo "== $n host(s) on one database =="
  db="sg_bench_hosts_${n}_$$"
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null || { echo "bench-hosts: cannot create $db" >&2; exit 1; }
  url="postgres://postgres@127.0.0.1:$port/$db"
  urls=()
  failed=""
  for i in $(seq 1 "$n"); do
    log=$work/host.$n.$i.log
    # shellcheck disable=SC2086 # HOST_ARGS is a list of flags
    # --http-max-per-ip: the bench client holds C connections plus one for /healthz, all from 127.0.0.1
    "$BIN" run --db "$url" --host-id "bh$i" --listen 127.0.0.1:0 --http-max-per-ip $((C + 16)) $HOST_ARGS \
      "$scripts" >"$log" 2>&1 &
    pid=$!
    host_pids+=("$pid")
    hport=""
    for _ in $(seq 1 300); do
      hport=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$log" | head -n 1 | sed 's/.*://')
      [ -n "$hport" ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$hport" ]; then
      failed="host bh$i did not start: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)"
      break
    fi
    urls+=("http://127.0.0.1:$hport")
  done
  if [ -n "$failed" ]; then
    echo "  $failed"
    rows+=("$n|failed: $failed")
    stop_hosts
    drop_db
    continue
  fi
  echo "  hosts up: ${urls[*]}"

  pg0=$(pg_ticks); h0=$(host_ticks); children_s >"$work/b0"; b0=$(cat "$work/b0")
  t0=$(now)
  for i in $(seq 1 "$n"); do
    "$BIN" bench --server "${urls[$((i - 1))]}" --sagas "$M" --concurrency "$C" >"$work/bench.$n.$i.out" 2>&1 &
    bench_pids+=("$!")
  done
  bench_rc=0
  for p in "${bench_pids[@]}"; do wait "$p" || bench_rc=1; done
  bench_pids=()
  t1=$(now)
  pg1=$(pg_ticks); h1=$(host_ticks); children_s >"$work/b1"; b1=$(cat "$work/b1")

  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  done_n=$(psql_ -d "$db" -c "SELECT count(*) FROM sagas WHERE status IN ('completed','compensated','compensation_failed')")
  sum_rate=0; worst_p99=0; commits=0
  for i in $(seq 1 "$n"); do
    out=$work/bench.$n.$i.out
    j=$(grep '^{"mode"' "$out" | tail -n 1)
    if [ -z "$j" ]; then
      echo "  bench on bh$i failed:"; sed 's/^/    /' "$out" | tail -n 8
      bench_rc=1
      continue
    fi
    r=$(field "$j" sagas_per_s); p99=$(field "$j" p99_ms); c=$(field "$j" commits)
    echo "  bh$i: $(field "$j" sagas) sagas in $(field "$j" secs) s = $r sagas/s, start p50 $(field "$j" p50_ms) ms p99 $p99 ms, $c commits"
    sum_rate=$(awk -v a="$sum_rate" -v b="$r" 'BEGIN { printf "%.0f", a + b }')
    worst_p99=$(awk -v a="$worst_p99" -v b="$p99" 'BEGIN { printf "%.1f", (b > a ? b : a) }')
    commits=$((commits + ${c%.*}))
  done
  total=$((n * M))
  rate=$(awk -v t="$total" -v w="$wall" 'BEGIN { printf "%.0f", t / w }')
  pg_s=$(secs $((pg1 - pg0))); h_s=$(secs $((h1 - h0)))
  b_s=$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.2f", b - a }')
  busy=$(awk -v p="$pg_s" -v h="$h_s" -v b="$b_s" -v w="$wall" -v c="$cores" 'BEGIN { printf "%.0f", 100 * (p + h + b) / (w * c) }')
  echo "  all: $done_n of $total sagas terminal in the database, $total in ${wall} s = $rate sagas/s (sum of the hosts' rates $sum_rate)"
  echo "  CPU: postgres $pg_s s, sagahost hosts $h_s s, bench clients $b_s s over ${wall} s wall = ${busy}% of $cores cores"
  status=ok
  [ "$bench_rc" = 0 ] || status="bench failed"
  [ "$done_n" = "$total" ] || status="only $done_n of $total terminal"
  rows+=("$n|$total|$wall|$rate|$sum_rate|$worst_p99|$commits|$pg_s|$h_s|$b_s|$busy|$status")
  stop_hosts
  drop_db
done

echo
echo "bench-hosts: $M sagas per host, concurrency $C per host, PostgreSQL 127.0.0.1:$port, $cores cores"
printf '%-5s %-7s %-7s %-8s %-9s %-8s %-8s %-10s %-10s %-10s %-5s %s\n' hosts sagas wall_s sagas/s sum_host p99_ms commits pg_cpu_s host_cpu_s bench_cpu_s busy status
for row in "${rows[@]}"; do
  IFS='|' read -r n total wall rate sum p99 commits pg h b busy status <<<"$row"
  if [[ "$total" == failed* ]]; then printf '%-5s %s\n' "$n" "$total"; continue; fi
  printf '%-5s %-7s %-7s %-8s %-9s %-8s %-8s %-10s %-10s %-10s %-5s %s\n' "$n" "$total" "$wall" "$rate" "$sum" "$p99" "$commits" "$pg" "$h" "$b" "$busy%" "$status"
done
echo "(sagas/s: all sagas over the wall time; sum_host: the hosts' own rates added; p99: worst host, POST until durable;"
echo " cpu: seconds used during the run; busy: all of it as a share of the machine's $cores cores)"
for row in "${rows[@]}"; do [[ "$row" == *"|ok" ]] || exit 1; done
