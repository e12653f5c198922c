#!/usr/bin/env bash
# Prune benchmark: a repository of about 1,000,000 blobs in 200 snapshots, half of them forgotten.
#
# Generates the repository through the agent's own CLI: 256-byte average chunks (the smallest
# FastCDC allows), 200 stream pushes of BENCH_BLOBS_PER_SNAPSHOT (default 6000) chunks' worth of
# random bytes each (fixed seed), so every snapshot brings its own blobs and packs (FastCDC's
# chunks come out a little larger than the average asked for: 6000 gives about 5000 blobs). Then forgets
# every other snapshot and times, under /usr/bin/time -v:
#   prune --grace-period 0s          the work of a real prune: half the blobs unreachable
#   prune --grace-period 0s (again)  nothing left to free: the cost of the scheduled no-op
#   check                            the light check maintenance runs after prune
# and, under strace, the bytes prune reads from packs: only the kept snapshots' ID lists, never
# a data blob (this prune rewrites no pack: packs are deleted whole once nothing uses them).
# restic runs the same data, snapshots and forgets in the same run for reference; its 512 KiB
# minimum chunk makes a few hundred blobs of what are a million here, so the ratio measures
# repositories of equal bytes, not of equal blob counts.
# Needs restic, strace and /usr/bin/time (tests/infra.sh install). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
SNAPSHOTS=${BENCH_SNAPSHOTS:-200}
PER=${BENCH_BLOBS_PER_SNAPSHOT:-6000}
W=${BENCH_DIR:-/tmp/kanister-bench-prune}
cargo build --release -q -p kanister-agent
AGENT=$PWD/target/release/kanister-agent
for t in restic strace /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "$t is missing: bash tests/infra.sh install" >&2; exit 1; }
done

rm -rf "$W" && mkdir -p "$W/data"
head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/key"
export KANISTER_REPO_KEY_FILE=$W/key RESTIC_PASSWORD=bench-passphrase
OURS=file://$W/ours
"$AGENT" -s "$OURS" repo init --chunk-size 256 >/dev/null
restic -q -r "$W/restic" init >/dev/null

# Each snapshot's data: PER chunks of 256 bytes on average, from a fixed seed (AES-CTR of
# zeros: random-looking, so nothing deduplicates or compresses; head ends it with SIGPIPE).
BYTES=$((PER * 256))
random_bytes() { openssl enc -aes-128-ctr -nosalt -pass "pass:bench-$1" -pbkdf2 -iter 1 < /dev/zero 2>/dev/null || true; }
echo "generating $SNAPSHOTS snapshots of $BYTES bytes ..." >&2
gen_start=$SECONDS
for i in $(seq 1 "$SNAPSHOTS"); do
  f=$W/data/s$i
  random_bytes "$i" | head -c "$BYTES" > "$f"
  "$AGENT" -s "$OURS" push --tag n="$i" --json < "$f" > "$W/data/s$i.json"
  restic -q -r "$W/restic" backup --stdin --stdin-filename "s$i" --tag "n=$i" < "$f" > /dev/null
  rm "$f"
done
echo "generated in $((SECONDS - gen_start)) s" >&2
BLOBS=$("$AGENT" -s "$OURS" check --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["blobs"])')
PACKS=$(find "$W/ours/data" -type f | wc -l)

# Forget every other snapshot.
ids=()
for i in $(seq 2 2 "$SNAPSHOTS"); do
  ids+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$W/data/s$i.json")")
done
"$AGENT" -s "$OURS" forget "${ids[@]}" >/dev/null
rids=$(restic -q -r "$W/restic" snapshots --json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if int(s["tags"][0].split("=")[1]) % 2 == 0: print(s["short_id"])')
# shellcheck disable=SC2086
restic -q -r "$W/restic" forget $rids > /dev/null

# measure NAME CMD...: runs CMD under /usr/bin/time -v, sets WALL (s) and RSS (MiB).
measure() {
  local name=$1; shift
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.out" 2>&1
  WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/$name.time")
  RSS=$(awk -F': ' '/Maximum resident set size/ {printf "%d", $2/1024}' "$W/$name.time")
}
BEFORE=$(du -sb "$W/ours" | cut -f1) RBEFORE=$(du -sb "$W/restic" | cut -f1)
cp -a "$W/ours" "$W/ours-copy"
measure ours-prune "$AGENT" -s "$OURS" prune --grace-period 0s --json
P_WALL=$WALL P_RSS=$RSS
measure ours-prune2 "$AGENT" -s "$OURS" prune --grace-period 0s --json
P2_WALL=$WALL P2_RSS=$RSS
measure ours-check "$AGENT" -s "$OURS" check
C_WALL=$WALL C_RSS=$RSS
AFTER=$(du -sb "$W/ours" | cut -f1)
measure restic-prune restic -q -r "$W/restic" prune
R_WALL=$WALL R_RSS=$RSS
RAFTER=$(du -sb "$W/restic" | cut -f1)

# What does prune read from packs? The same prune again, on the copy, under strace: bytes read
# from files under data/. Prune reads the kept snapshots' ID lists (the blobs that say which
# chunks a stream has; they live in packs like data) and never a data blob.
strace -f -qq -y -e trace=read,pread64 -o "$W/strace.txt" "$AGENT" -s "file://$W/ours-copy" prune --grace-period 0s --json > "$W/ours-prune-copy.out"
PACK_READ=$(python3 - "$W/strace.txt" "$W/ours-copy/data/" <<'PY'
import re, sys
total = 0
for line in open(sys.argv[1]):
    m = re.search(r'(?:read|pread64)\(\d+<([^>]*)>.*\)\s*=\s*(\d+)', line)
    if m and m.group(1).startswith(sys.argv[2]):
        total += int(m.group(2))
print(total)
PY
)
PACK_BYTES=$(du -sb "$W/ours-copy/data" | cut -f1)
DELETED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packs_deleted"])' "$W/ours-prune.out")
# Each kept data blob is named once in an ID list: 32 bytes of id.
ID_BYTES=$((BLOBS * 32 / 2))

# Every kept snapshot still restores; the forgotten ones are gone.
for i in 1 $((SNAPSHOTS - 1)); do
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$W/data/s$i.json")
  random_bytes "$i" | head -c "$BYTES" > "$W/expect"
  "$AGENT" -s "$OURS" pull "$id" - 2>/dev/null | cmp -s - "$W/expect" || { echo "snapshot $i does not restore" >&2; exit 1; }
done
"$AGENT" -s "$OURS" check --read-data >/dev/null || { echo "check --read-data failed after prune" >&2; exit 1; }

mib() { python3 -c "print(f'{$1/1048576:.2f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
cat <<EOF

Repository: $BLOBS blobs in $PACKS packs, $SNAPSHOTS snapshots, $(mib "$BEFORE") MiB; every other snapshot forgotten.

| measure | kanister-agent | restic | ratio |
|---|---:|---:|---:|
| prune s | $P_WALL | $R_WALL | $(ratio "$P_WALL" "$R_WALL") |
| prune peak RSS MiB | $P_RSS | $R_RSS | $(ratio "$P_RSS" "$R_RSS") |
| repository before / after MiB | $(mib "$BEFORE") / $(mib "$AFTER") | $(mib "$RBEFORE") / $(mib "$RAFTER") | |
| prune with nothing to free s | $P2_WALL (RSS $P2_RSS MiB) | | |
| check s | $C_WALL (RSS $C_RSS MiB) | | |

Prune deleted $DELETED packs. It read $(mib "$PACK_READ") MiB from packs of $(mib "$PACK_BYTES") MiB: the kept
snapshots' ID lists (about $(mib "$ID_BYTES") MiB of chunk ids); no data blob.
EOF
