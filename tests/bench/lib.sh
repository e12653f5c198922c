# Shared by the benchmarks (sourced, not run): measure NAME CMD... runs CMD under
# /usr/bin/time -v and appends "wall_seconds max_rss_kib" to $W/NAME.
measure() {
  local name=$1; shift
  /usr/bin/time -v -o "$W/time.txt" "$@"
  awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; w=s}
              /Maximum resident set size/ {r=$2} END {print w, r}' "$W/time.txt" >> "$W/$name"
}
