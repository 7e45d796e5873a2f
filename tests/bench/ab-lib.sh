# The summary shared by the before/after scripts (ab.sh, http-ab.sh, pg-ab.sh, amqp-ab.sh), sourced.
# Each run appended a line of numbers (one column per figure) to DIR/before or DIR/after, the two builds
# alternated; column 1 is the throughput.
#   ab_summary DIR ROUNDS UNIT1 NAME1 [UNIT2 NAME2 ...]
# prints, per build, the median of each column ("<median> UNITi"), then the median over the rounds of
# each column's after/before ratio ("NAMEi x<ratio>"): the machine drifts between rounds, and the ratio
# of a round's pair, run back to back, drifts less.

med() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ab_summary() {
  local dir=$1 rounds=$2 l i line
  shift 2
  local units=() names=()
  while [ $# -gt 0 ]; do units+=("$1"); names+=("$2"); shift 2; done
  local n=${#units[@]}
  for l in before after; do
    line=""
    for ((i = 0; i < n; i++)); do line+="${line:+, }$(cut -d' ' -f$((i + 1)) "$dir/$l" | med) ${units[$i]}"; done
    printf '%-6s median %s\n' "$l" "$line"
  done
  paste -d' ' "$dir/before" "$dir/after" |
    awk -v n="$n" '{ s = ""; for (i = 1; i <= n; i++) s = s (i > 1 ? " " : "") $(n + i) / $i; print s }' > "$dir/ratio"
  line=""
  for ((i = 0; i < n; i++)); do
    line+="${line:+, }${names[$i]} x$(printf '%.3f' "$(cut -d' ' -f$((i + 1)) "$dir/ratio" | med)")"
  done
  printf 'after/before, median of the %d pairs: %s\n' "$rounds" "$line"
}
