#!/usr/bin/env bash
# Volume backup benchmark: kanister-agent against restic on the same tree, in one run.
#
# A tree of BENCH_FILES files (default 30000) and about BENCH_MIB MiB (default 1024), text and
# binary, fixed seed. Per run, for each tool on local-disk repositories:
#   backup v1            MiB/s and peak RSS
#   mutate ~4.5% of the files in place, backup v2: wall time
#   backup again with nothing changed: wall time
#   restore v2 into an empty directory: MiB/s and peak RSS
# With BENCH_MILLION=1, also a 1,000,000-file tree (small files): backup time and peak RSS.
#
# Everything happens on a fresh ext4 filesystem with a journal, made in a sparse image file and
# loop-mounted (root only; BENCH_FS=0 or no root: a plain directory). A fresh filesystem keeps
# the runs comparable: on a journal-less ext4 (such as this project's build machines) the kernel
# skips inodes deleted in the last minutes one by one when it creates files, so a restore made
# after deleting an earlier tree costs seconds of kernel time that depend on what was deleted
# when, not on the tool.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
MIB=${BENCH_MIB:-1024}
FILES=${BENCH_FILES:-30000}
RUNS=${BENCH_RUNS:-3}
W=${BENCH_DIR:-/tmp/kanister-bench-tree}
cargo build --release -q -p kanister-agent -p kanister-testkit
AGENT=$PWD/target/release/kanister-agent
GEN=$PWD/target/release/gen-tree
command -v restic >/dev/null || { echo "restic is missing: bash tests/infra.sh install" >&2; exit 1; }
export KANISTER_REPO_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase
mkdir -p "$W"


umount "$W/fs" 2>/dev/null || true
rm -rf "${W:?}"/*
if [ "${BENCH_FS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
  # Room for every run's tree, two restores and two repositories, and the million files.
  truncate -s "$(( RUNS * 5 * MIB + 12 * 1024 ))M" "$W/fs.img"
  mkfs.ext4 -q -N 4000000 "$W/fs.img"
  mkdir -p "$W/fs"
  mount -o loop "$W/fs.img" "$W/fs"
  trap 'umount "$W/fs"; rm -f "$W/fs.img"' EXIT
  D=$W/fs
else
  echo "note: benchmarking in a plain directory (not root, or BENCH_FS=0): restore times depend on the filesystem's state" >&2
  D=$W
fi
for run in $(seq 1 "$RUNS"); do
  R=$D/run-$run
  T=$R/tree
  mkdir -p "$R"
  "$GEN" write "$T" "$FILES" "$MIB" 7 >/dev/null
  sync
  "$AGENT" -s "file://$R/ours" repo init >/dev/null
  restic -q -r "$R/restic" init >/dev/null
  measure r-ours-v1 sh -c "\"$AGENT\" -s file://$R/ours backup \"$T\" --json > /dev/null"
  measure r-restic-v1 sh -c "restic -q -r $R/restic backup \"$T\" > /dev/null"
  "$GEN" mutate "$T" 4.5 8 > "$W/mutated.txt"
  measure r-ours-v2 sh -c "\"$AGENT\" -s file://$R/ours backup \"$T\" --json > $W/ours-v2.json"
  measure r-restic-v2 sh -c "restic -q -r $R/restic backup \"$T\" > /dev/null"
  measure r-ours-same sh -c "\"$AGENT\" -s file://$R/ours backup \"$T\" --json > $W/ours-same.json"
  measure r-restic-same sh -c "restic -q -r $R/restic backup \"$T\" > /dev/null"
  ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$W/ours-v2.json")
  measure r-ours-restore sh -c "\"$AGENT\" -s file://$R/ours restore $ID $R/restore-ours > /dev/null"
  RID=$(restic -r "$R/restic" snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-2]["short_id"])')
  measure r-restic-restore sh -c "restic -q -r $R/restic restore $RID --target $R/restore-restic > /dev/null"
  # Correctness, outside the timings: the restored v2 tree equals the source.
  diff -r "$T" "$R/restore-ours" > /dev/null || { echo "kanister-agent restore differs from the tree" >&2; exit 1; }
done
BYTES=$(du -sb --apparent-size "$D/run-1/tree" | cut -f1)
python3 - "$W" "$BYTES" "$FILES" "$RUNS" "$(restic version | head -1)" "$(cat "$W/mutated.txt")" <<'PY'
import sys, statistics, json
W, total, files, runs, rv, mutated = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
def col(name, c): return statistics.median(float(l.split()[c]) for l in open(f"{W}/r-{name}"))
M = 1 << 20
o2 = json.load(open(f"{W}/ours-v2.json")); os_ = json.load(open(f"{W}/ours-same.json"))
print(f"\n{files} files, {total/M:.0f} MiB; v2: {mutated}; median of {runs} runs; {rv}\n")
print("| measure | kanister-agent | restic | ratio |")
print("|---|---:|---:|---:|")
b1o, b1r = total / M / col("ours-v1", 0), total / M / col("restic-v1", 0)
print(f"| backup v1 MiB/s | {b1o:.0f} | {b1r:.0f} | {b1o/b1r:.2f}x |")
print(f"| backup v2 (4.5% changed) s | {col('ours-v2',0):.2f} | {col('restic-v2',0):.2f} | {col('ours-v2',0)/col('restic-v2',0):.2f}x |")
print(f"| nothing changed s | {col('ours-same',0):.2f} | {col('restic-same',0):.2f} | {col('ours-same',0)/col('restic-same',0):.2f}x |")
ro, rr = total / M / col("ours-restore", 0), total / M / col("restic-restore", 0)
print(f"| restore MiB/s | {ro:.0f} | {rr:.0f} | {ro/rr:.2f}x |")
for step in ("v1", "v2", "same", "restore"):
    print(f"| peak RSS {step} | {col('ours-'+step,1)/1024:.0f} MiB | {col('restic-'+step,1)/1024:.0f} MiB | {col('ours-'+step,1)/col('restic-'+step,1):.2f}x |")
print(f"\nv2: {o2['files_read']} files read, {o2['files_reused']} reused; nothing changed: {os_['files_read']} read")
PY

if [ "${BENCH_MILLION:-0}" = 1 ]; then
  M1=$D/million
  "$GEN" write "$M1" 1000000 256 9 >/dev/null
  "$AGENT" -s "file://$D/ours-m" repo init >/dev/null
  restic -q -r "$D/restic-m" init >/dev/null
  measure r-ours-million sh -c "\"$AGENT\" -s file://$D/ours-m backup \"$M1\" --json > /dev/null"
  measure r-restic-million sh -c "restic -q -r $D/restic-m backup \"$M1\" > /dev/null"
  python3 - "$W" <<'PY'
import sys
W = sys.argv[1]
o = open(f"{W}/r-ours-million").read().split(); r = open(f"{W}/r-restic-million").read().split()
print(f"\n1,000,000 files: kanister-agent {float(o[0]):.1f} s, {int(o[1])/1024:.0f} MiB peak RSS; restic {float(r[0]):.1f} s, {int(r[1])/1024:.0f} MiB")
PY
fi
