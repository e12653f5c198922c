#!/usr/bin/env bash
# Memory against repository size (issue 21, item 3): the peak RSS and time of a push, a directory
# backup and a restore, first in a small repository, then in the same repository after
# BENCH_BLOBS (default 10,000,000) synthetic blobs were added to its index (agent/examples/
# synth-index.rs writes their index entries, not their data: ~640 GiB of 64 KiB chunks). Each
# step once per size; BENCH_MIB (default 256) MiB dumps and a tree of BENCH_FILES (default
# 3000) files. BENCH_AGENT runs another build of the agent (a before/after comparison). Needs
# /usr/bin/time. The local index cache goes to a fresh directory; the first push after the
# synthetic blobs were added builds it (timed on its own, as "first push"). Prints a Markdown
# table.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
MIB=${BENCH_MIB:-256}
BLOBS=${BENCH_BLOBS:-10000000}
FILES=${BENCH_FILES:-3000}
W=${BENCH_DIR:-/tmp/kanister-bench-index}
cargo build --release -q -p kanister-agent -p kanister-testkit --bins --example synth-index
AGENT=${BENCH_AGENT:-$PWD/target/release/kanister-agent}
SYNTH=$PWD/target/release/examples/synth-index
export KANISTER_REPO_PASSWORD=bench-passphrase KANISTER_CACHE_DIR=$W/cache
rm -rf "$W" && mkdir -p "$W"
for v in 1 2 3 4; do target/release/gen-dump "$MIB" 1 "$v" > "$W/v$v.sql"; done
target/release/gen-tree write "$W/tree" "$FILES" "$((MIB / 4))" 7 >/dev/null
R=file://$W/repo
"$AGENT" -s "$R" repo init >/dev/null

step() { # label: push a dump, back up the tree, restore the dump
  local size=$1 dump=$2
  measure "$size-push" sh -c "\"$AGENT\" -s $R push --json < \"$dump\" > $W/push.json"
  measure "$size-backup" sh -c "\"$AGENT\" -s $R backup \"$W/tree\" > /dev/null"
  local id
  id=$(snapshot_id "$W/push.json")
  measure "$size-restore" sh -c "\"$AGENT\" -s $R pull $id - > /dev/null 2>&1"
}
"$AGENT" -s "$R" push < "$W/v1.sql" >/dev/null
step small "$W/v2.sql"
"$SYNTH" "$R" "$BLOBS" 2>/dev/null
measure first-push sh -c "\"$AGENT\" -s $R push < \"$W/v3.sql\" > /dev/null"
step large "$W/v4.sql"

python3 - "$W" "$BLOBS" "$MIB" <<'PY'
import sys
W, blobs, mib = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def row(name): return tuple(map(float, open(f"{W}/{name}").read().split()))
print(f"\n{mib} MiB dumps; the large repository has {blobs:,} more blobs in its index\n")
print("| step | small: s | small: peak RSS | large: s | large: peak RSS |")
print("|---|---:|---:|---:|---:|")
for step in ("push", "backup", "restore"):
    s, l = row(f"small-{step}"), row(f"large-{step}")
    print(f"| {step} | {s[0]:.2f} | {s[1]/1024:.0f} MiB | {l[0]:.2f} | {l[1]/1024:.0f} MiB |")
f = row("first-push")
print(f"| first push after the blobs were added | | | {f[0]:.2f} | {f[1]/1024:.0f} MiB |")
PY
