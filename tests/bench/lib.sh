# Shared by the benchmarks (sourced, not run): measure NAME CMD... runs CMD under
# /usr/bin/time -v and appends "wall_seconds max_rss_kib cpu_seconds" to $W/NAME (CPU: user +
# system time of CMD and its children).
measure() {
  local name=$1; shift
  /usr/bin/time -v -o "$W/time.txt" "$@"
  awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; w=s}
              /Maximum resident set size/ {r=$2} /User time/ {u=$2} /System time/ {k=$2}
              END {print w, r, u + k}' "$W/time.txt" >> "$W/$name"
}
