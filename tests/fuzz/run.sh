#!/usr/bin/env bash
# Runs one libFuzzer target: replays every input in tests/fuzz/regressions/<target>/ (each once, all
# must pass), then fuzzes for SECONDS from the seeds in tests/fuzz/corpus/<target>/ (and sagas/ for the
# script target), growing a working
# corpus in BUILD/corpus/<target>/ (never in the source tree). A crash leaves its input in
# BUILD/crashes/<target>/ and fails the run: fix it, then keep the input as a regression.
# usage: run.sh BUILD TARGET SECONDS
set -euo pipefail
build=$1 target=$2 seconds=$3
here=$(cd "$(dirname "$0")" && pwd)
bin=$build/tests/fuzz/fuzz_$target
work=$build/corpus/$target crashes=$build/crashes/$target
mkdir -p "$work" "$crashes"
# RSS grows to ~1 GiB over minutes from ASan's quarantine and size-class caches, not leaks (LeakSanitizer checks
# every input that frees less than it allocates)
opts=(-max_len=4096 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1)
[ -f "$here/$target.dict" ] && opts+=(-dict="$here/$target.dict")
regs=("$here"/regressions/"$target"/*)
if [ -e "${regs[0]}" ]; then
  echo "fuzz_$target: replaying ${#regs[@]} regression input(s)"
  "$bin" "${opts[@]}" "${regs[@]}" >"$build/fuzz-$target-replay.log" 2>&1 || {
    tail -n 60 "$build/fuzz-$target-replay.log"; echo "fuzz_$target: a regression input fails"; exit 1; }
fi
seeds=("$here/corpus/$target")
# the sample sagas are the script target's best seeds: read them where they live, never copied
[ "$target" = script ] && seeds+=("$here/../../sagas")
log=$build/fuzz-$target.log
echo "fuzz_$target: fuzzing for ${seconds}s (log: $log)"
if ! "$bin" "${opts[@]}" -max_total_time="$seconds" -artifact_prefix="$crashes/" \
     "$work" "${seeds[@]}" >"$log" 2>&1; then
  tail -n 80 "$log"
  echo "fuzz_$target: FAILED; the input is in $crashes/"
  exit 1
fi
grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed "s/^/fuzz_$target: /"
