#!/usr/bin/env bash
# Stream backup benchmark: kanister-agent against restic on the same data, in one run.
#
# Generates a mysqldump-style dump of BENCH_MIB MiB (default 1024) and its version 2 with 3% of
# rows changed (fixed seed), then for each tool, on local-disk repositories:
#   push v1 (fresh repository)   MiB/s and peak RSS
#   push v2 (after v1)           MiB/s, bytes the repository grew by
#   pull v2 to /dev/null         MiB/s and peak RSS
# Each timing is the median of BENCH_RUNS runs (default 3). Needs restic and /usr/bin/time
# (tests/infra.sh install puts both there). Prints a Markdown table with the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
MIB=${BENCH_MIB:-1024}
RUNS=${BENCH_RUNS:-3}
W=${BENCH_DIR:-/tmp/kanister-bench}
cargo build --release -q -p kanister-agent -p kanister-testkit
AGENT=$PWD/target/release/kanister-agent
GEN=$PWD/target/release/gen-dump
command -v restic >/dev/null || { echo "restic is missing: bash tests/infra.sh install" >&2; exit 1; }

mkdir -p "$W"
[ -s "$W/v1-$MIB.sql" ] || "$GEN" "$MIB" 1 42 > "$W/v1-$MIB.sql"
[ -s "$W/v2-$MIB.sql" ] || "$GEN" "$MIB" 2 42 > "$W/v2-$MIB.sql"
V1=$W/v1-$MIB.sql V2=$W/v2-$MIB.sql
SZ1=$(stat -c %s "$V1") SZ2=$(stat -c %s "$V2")
export KANISTER_REPO_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$W/$1" | median; }

rm -f "$W"/ours-* "$W"/restic-*
for _ in $(seq 1 "$RUNS"); do
  rm -rf "$W/ours" "$W/restic"
  "$AGENT" -s "file://$W/ours" repo init >/dev/null
  restic -q -r "$W/restic" init >/dev/null
  measure ours-push1 sh -c "\"$AGENT\" -s file://$W/ours push --json < \"$V1\" > $W/ours-push1.json"
  measure restic-push1 sh -c "restic -q -r $W/restic backup --stdin --stdin-filename dump.sql < \"$V1\" > /dev/null"
  S1o=$(du -sb "$W/ours" | cut -f1) S1r=$(du -sb "$W/restic" | cut -f1)
  measure ours-push2 sh -c "\"$AGENT\" -s file://$W/ours push --json < \"$V2\" > $W/ours-push2.json"
  measure restic-push2 sh -c "restic -q -r $W/restic backup --stdin --stdin-filename dump.sql < \"$V2\" > /dev/null"
  S2o=$(du -sb "$W/ours" | cut -f1) S2r=$(du -sb "$W/restic" | cut -f1)
  ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$W/ours-push2.json")
  measure ours-pull sh -c "\"$AGENT\" -s file://$W/ours pull $ID - > /dev/null 2>/dev/null"
  measure restic-pull sh -c "restic -q -r $W/restic dump latest dump.sql > /dev/null"
  echo "$S1o $S2o" >> "$W/ours-size"; echo "$S1r $S2r" >> "$W/restic-size"
done

# The pulled bytes are checked once, outside the timings.
"$AGENT" -s "file://$W/ours" pull "$ID" - 2>/dev/null | cmp -s - "$V2" || { echo "kanister-agent pull differs from v2" >&2; exit 1; }
restic -q -r "$W/restic" dump latest dump.sql | cmp -s - "$V2" || { echo "restic dump differs from v2" >&2; exit 1; }

python3 - "$W" "$SZ1" "$SZ2" "$MIB" "$RUNS" "$(restic version | head -1)" <<'PY'
import sys, statistics
W, sz1, sz2, mib, runs, rv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def rows(name):
    return [tuple(map(float, l.split())) for l in open(f"{W}/{name}")]
def med(name, col):
    return statistics.median(r[col] for r in rows(name))
M = 1 << 20
def rate(name, size): return size / M / med(name, 0)
o = {"p1": rate("ours-push1", sz1), "p2": rate("ours-push2", sz2), "pull": rate("ours-pull", sz2)}
r = {"p1": rate("restic-push1", sz1), "p2": rate("restic-push2", sz2), "pull": rate("restic-pull", sz2)}
rss = {k: max(med(f"{k}-push1", 1), med(f"{k}-push2", 1), med(f"{k}-pull", 1)) / 1024 for k in ("ours", "restic")}
so = rows("ours-size")[-1]; sr = rows("restic-size")[-1]
g_o, g_r = so[1] - so[0], sr[1] - sr[0]
print(f"\n{mib} MiB dump (v1 {sz1/M:.0f} MiB, v2 {sz2/M:.0f} MiB, 3% of rows changed), median of {runs} runs, {rv}\n")
print("| measure | kanister-agent | restic | ratio |")
print("|---|---:|---:|---:|")
print(f"| push v1 MiB/s | {o['p1']:.0f} | {r['p1']:.0f} | {o['p1']/r['p1']:.2f}x |")
print(f"| push v2 MiB/s | {o['p2']:.0f} | {r['p2']:.0f} | {o['p2']/r['p2']:.2f}x |")
print(f"| pull v2 MiB/s | {o['pull']:.0f} | {r['pull']:.0f} | {o['pull']/r['pull']:.2f}x |")
print(f"| repository after v1 | {so[0]/M:.1f} MiB | {sr[0]/M:.1f} MiB | {so[0]/sr[0]:.2f}x |")
print(f"| stored by v2 | {g_o/M:.1f} MiB | {g_r/M:.1f} MiB | {g_o/g_r:.2f}x |")
print(f"| peak RSS (any step) | {rss['ours']:.0f} MiB | {rss['restic']:.0f} MiB | {rss['ours']/rss['restic']:.2f}x |")
for k in ("push1", "push2", "pull"):
    print(f"peak RSS {k}: ours {med('ours-'+k,1)/1024:.0f} MiB, restic {med('restic-'+k,1)/1024:.0f} MiB")
PY
