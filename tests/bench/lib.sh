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

# The peers of stream.sh and tree.sh: checks they are there (building rustic and bupstash when
# they are not), and their passwords and cache directories under $W.
peers() {
  local t
  for t in restic borg taskset; do
    command -v $t >/dev/null || { echo "$t is missing: bash tests/infra.sh install" >&2; exit 1; }
  done
  PATH=$(bash tests/bench/peers.sh path):$PATH
  if ! command -v rustic >/dev/null || ! command -v bupstash >/dev/null; then bash tests/bench/peers.sh install; fi
  export KANISTER_REPO_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase
  export RUSTIC_PASSWORD=bench-passphrase BORG_PASSPHRASE=bench-passphrase
  # Not named "borg-*": stream.sh removes its per-tool result files by that pattern.
  export BORG_BASE_DIR=$W/home-of-borg
  # Our index cache, like the peers' caches, outside the repository.
  export KANISTER_CACHE_DIR=$W/cache-of-ours
}

# init TOOL REPO: a fresh repository ($AGENT is ours).
init() {
  case $1 in
    ours) "$AGENT" -s "file://$2" repo init >/dev/null ;;
    restic) restic -q -r "$2" init >/dev/null ;;
    rustic) rustic -r "$2" --no-progress init >/dev/null 2>&1 ;;
    borg) borg init -e repokey-blake2 "$2" 2>/dev/null ;;
    # The key beside the repository, and a send log per repository (as our index cache is).
    bupstash) rm -f "$2".key "$2".sendlog; bupstash init -r "$2" >/dev/null && bupstash new-key -o "$2".key ;;
  esac
}

# cold_cache: writes everything back, then drops the page cache, so that the next restore reads
# its repository from the disk, as a restore long after its backup does, whichever tool wrote
# last (ours drops its packs from the cache as it writes them; the peers leave theirs). It needs
# root; without it nothing is dropped, and cache_state says so in the results.
cold_cache() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}
cache_state() {
  if [ -w /proc/sys/vm/drop_caches ]; then echo "page cache dropped before each cold restore"
  else echo "page cache NOT dropped (not root): cold rows are warm for the peers"; fi
}

# snapshot_id FILE: the snapshot id in a JSON report of ours (`push --json`, `backup --json`).
snapshot_id() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$1"
}

# rotate N NAME...: the names rotated left by N. Each run starts with another tool, so that
# none always goes first (after the data was written) or right after another's restore.
rotate() {
  local n=$1; shift
  local a=("$@")
  local k=$(( n % ${#a[@]} ))
  echo "${a[@]:k}" "${a[@]:0:k}"
}
