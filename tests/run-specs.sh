#!/usr/bin/env bash
# Runs the busted specs against the sagahost binary in $SAGAHOST. Starts the servers the specs use
# when they are not running: the tests' own RabbitMQ node (tests/amqp-broker.sh, 127.0.0.1:26720; no
# other broker on the machine is used); they are left running for the next run.
# SG_STORE=postgres runs every host on PostgreSQL instead of SQLite: each host gets its own database
# on the tests' own cluster (tests/pg-cluster.sh, 127.0.0.1:26730), which is started too; the sg_*
# databases of earlier runs are dropped first.
# Extra arguments go to busted (e.g. a single spec file).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${SAGAHOST:=$PWD/build/sagahost}"
export SAGAHOST
# the in-process module (build/sagahost.so: the sanitizer build does not make one)
: "${SAGAHOST_MODULE_DIR:=$(dirname "$SAGAHOST")}"
[ -f "$SAGAHOST_MODULE_DIR/sagahost.so" ] || SAGAHOST_MODULE_DIR=$PWD/build
export SAGAHOST_MODULE_DIR
# a disk-full spec killed mid-run can leave its tmpfs mounted under tests/tmp
for m in $(awk -v d="$PWD/tests/tmp/" 'index($2, d) == 1 { print $2 }' /proc/mounts); do umount -l "$m" 2>/dev/null; done
rm -rf tests/tmp && mkdir -p tests/tmp
bash tests/amqp-broker.sh || exit 1
if [ "${SG_STORE:-}" = "postgres" ]; then
  export SG_STORE
  bash tests/pg-cluster.sh || exit 1
  # the databases of earlier runs (the ones a running host still uses are left alone)
  bash tests/pg-cluster.sh psql -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'sg\_%'" |
    while read -r db; do bash tests/pg-cluster.sh psql -c "DROP DATABASE IF EXISTS \"$db\"" 2>/dev/null; done
fi
# every spec talks to that node (unless SG_AMQP_URL names another broker on purpose)
: "${SG_AMQP_URL:=$(bash tests/amqp-broker.sh url)}"
export SG_AMQP_URL
[ $# -eq 0 ] && set -- tests/spec
# each spec file runs in a busted of its own under a time limit (SG_SPEC_TIMEOUT seconds, 900 unless
# set), so a spec that hangs fails with its name instead of holding up the whole run
files=() opts=()
for a in "$@"; do
  if [ -d "$a" ]; then
    while IFS= read -r f; do files+=("$f"); done < <(find "$a" -name '*_spec.lua' | LC_ALL=C sort)
  elif [ -f "$a" ]; then files+=("$a")
  else opts+=("$a")
  fi
done
# SG_SPEC_SKIP: spec file names (space-separated, e.g. "kafka_spec.lua") left out of this run
if [ -n "${SG_SPEC_SKIP:-}" ]; then
  kept=()
  for f in "${files[@]}"; do
    case " $SG_SPEC_SKIP " in *" $(basename "$f") "*) echo "# $f: left out (SG_SPEC_SKIP)" ;; *) kept+=("$f") ;; esac
  done
  files=("${kept[@]}")
fi
out=tests/tmp/specs.tap
: > "$out"
rc=0
for f in "${files[@]}"; do
  echo "# $f"
  timeout -k 15 "${SG_SPEC_TIMEOUT:-900}" busted --lua=lua5.4 --lpath='tests/spec/?.lua' -o TAP "${opts[@]}" "$f" | tee -a "$out"
  frc=${PIPESTATUS[0]}
  if [ "$frc" -eq 124 ] || [ "$frc" -eq 137 ]; then
    echo "not ok - $f did not end within ${SG_SPEC_TIMEOUT:-900} s (stopped)" | tee -a "$out"
  fi
  [ "$frc" -ne 0 ] && rc=$frc
done
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
skipped=$(grep -c '^ok .*# SKIP' "$out")
echo "specs: $passed passed, $failed failed in ${#files[@]} files (store ${SG_STORE:-sqlite}; $skipped of the passed skipped themselves)"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
