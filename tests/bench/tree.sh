#!/usr/bin/env bash
# Volume backup benchmark: kanister-agent against restic, rustic, borg and bupstash on the same
# tree, in one run.
#
# A tree of BENCH_FILES files (default 30000) and about BENCH_MIB MiB (default 1024), text and
# binary, fixed seed. Per run, for each tool on local-disk repositories:
#   backup v1            MiB/s, CPU-seconds per GB (user + system), peak RSS
#   backup v1 pinned     the same into a fresh repository under `taskset -c 0` (a sidecar's
#                        CPU limit): MiB/s and CPU-seconds per GB
#   mutate ~4.5% of the files in place, backup v2: wall time
#   backup again with nothing changed: wall time
#   restore v2 into an empty directory, from a cold page cache (see cold_cache in lib.sh):
#                        MiB/s, CPU-seconds per GB, peak RSS; and until on disk
#                        (+ a timed `sync -f`: ours syncs before it returns, the peers do not)
# Each run starts with another tool (the order rotates). Each peer runs with its defaults but
# borg (lz4, as in the issue's figures). restic, borg and taskset come from tests/infra.sh
# install; rustic and bupstash from tests/bench/peers.sh install (run here when they are
# missing). Every restore is checked outside the timings: ours is compared file by file with the
# tree, a peer's by its count of files.
# With BENCH_MILLION=1, also a 1,000,000-file tree (small files): backup time and peak RSS of
# kanister-agent and restic.
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
peers
mkdir -p "$W"

TOOLS=(ours restic rustic borg bupstash)
# One tool's commands (init is in lib.sh): backup REPO TREE NAME; restore REPO NAME DEST (NAME: v1, v2...).
backup() {
  case $1 in
    ours) echo "\"$AGENT\" -s file://$2 backup \"$3\" --json > $W/ours-$4.json" ;;
    restic) echo "restic -q -r $2 backup \"$3\" > /dev/null" ;;
    rustic) echo "rustic -r $2 --no-progress backup \"$3\" > /dev/null 2>&1" ;;
    borg) echo "borg create -C lz4 $2::$4 \"$3\"" ;;
    bupstash) echo "bupstash put -q -r $2 -k $2.key --send-log $2.sendlog name=$4 \"$3\" > $W/bupstash-$4.id" ;;
  esac
}
restore() {
  case $1 in
    # Ids are read here, outside the timings.
    ours) echo "\"$AGENT\" -s file://$2 restore $(snapshot_id "$W/ours-$3.json") $4 > /dev/null" ;;
    # Snapshots by name: restic's and rustic's latest (the unchanged backup holds v2's tree).
    restic) echo "restic -q -r $2 restore latest --target $4 > /dev/null" ;;
    rustic) echo "rustic -r $2 --no-progress restore latest $4 > /dev/null 2>&1" ;;
    borg) echo "mkdir -p $4 && cd $4 && borg extract $2::$3" ;;
    bupstash) echo "mkdir -p $4 && bupstash restore -r $2 -k $2.key --query-cache $2.qcache --into $4 id=$(cat "$W/bupstash-$3.id")" ;;
  esac
}

umount "$W/fs" 2>/dev/null || true
rm -rf "${W:?}"/*
if [ "${BENCH_FS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
  # Room for one run's tree, five repositories and a restore, and the million files.
  truncate -s "$(( 10 * MIB + 12 * 1024 ))M" "$W/fs.img"
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
  read -ra ORDER <<< "$(rotate "$run" "${TOOLS[@]}")"
  R=$D/run
  T=$R/tree
  rm -rf "$R"
  mkdir -p "$R"
  "$GEN" write "$T" "$FILES" "$MIB" 7 >/dev/null
  BYTES=$(du -sb --apparent-size "$T" | cut -f1)
  COUNT=$(find "$T" -type f | wc -l)
  sync
  for t in "${ORDER[@]}"; do
    rm -rf "$BORG_BASE_DIR" "$KANISTER_CACHE_DIR"
    init "$t" "$R/$t-pinned"
    measure "$t-pinned" taskset -c 0 sh -c "$(backup "$t" "$R/$t-pinned" "$T" v1)"
    rm -rf "$R/$t-pinned" "$R/$t-pinned".*
    init "$t" "$R/$t"
    measure "$t-v1" sh -c "$(backup "$t" "$R/$t" "$T" v1)"
  done
  "$GEN" mutate "$T" 4.5 8 > "$W/mutated.txt"
  for t in "${ORDER[@]}"; do
    measure "$t-v2" sh -c "$(backup "$t" "$R/$t" "$T" v2)"
    measure "$t-same" sh -c "$(backup "$t" "$R/$t" "$T" same)"
  done
  for t in "${ORDER[@]}"; do
    # From a cold page cache, as a restore long after its backup (see cold_cache in lib.sh).
    cold_cache
    measure "$t-restore" sh -c "$(restore "$t" "$R/$t" v2 "$R/restore")"
    # Until on disk: ours synced the filesystem before it returned, the peers did not.
    measure "$t-rsync" sync -f "$R/restore"
    # Correctness, outside the timings.
    if [ "$t" = ours ]; then
      diff -r "$T" "$R/restore" > /dev/null || { echo "kanister-agent's restore differs from the tree" >&2; exit 1; }
    else
      n=$(find "$R/restore" -type f | wc -l)
      [ "$n" = "$COUNT" ] || { echo "$t restored $n files of $COUNT" >&2; exit 1; }
    fi
    rm -rf "$R/restore"
  done
done
python3 - "$W" "$BYTES" "$FILES" "$RUNS" "$(cat "$W/mutated.txt")" "$(cache_state)" \
  "$(restic version | head -1), $(rustic --version), $(borg --version) (lz4), $(bupstash version)" <<'PY'
import sys, statistics, json
W, total, files, runs, mutated, cache, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
tools = ["ours", "restic", "rustic", "borg", "bupstash"]
peers = tools[1:]
def col(name, c): return statistics.median(float(l.split()[c]) for l in open(f"{W}/{name}"))
M, G = 1 << 20, 1e9
lines = []  # (label, {tool: value}, fmt, higher_is_better)
for step, label in [("v1", "backup v1 MiB/s"), ("pinned", "backup v1 pinned to one core, MiB/s")]:
    lines.append((label, {t: total / M / col(f"{t}-{step}", 0) for t in tools}, "{:.0f}", True))
for step, label in [("v1", "backup v1 CPU-seconds per GB"), ("pinned", "backup v1 pinned, CPU-seconds per GB")]:
    lines.append((label, {t: col(f"{t}-{step}", 2) / (total / G) for t in tools}, "{:.2f}", False))
lines.append(("backup v2 (4.5% changed), s", {t: col(f"{t}-v2", 0) for t in tools}, "{:.2f}", False))
lines.append(("backup with nothing changed, s", {t: col(f"{t}-same", 0) for t in tools}, "{:.2f}", False))
lines.append(("restore v2 MiB/s", {t: total / M / col(f"{t}-restore", 0) for t in tools}, "{:.0f}", True))
def durable(t):  # per run: the restore, then the syncfs that makes it durable
    rs = [tuple(map(float, l.split())) for l in open(f"{W}/{t}-restore")]
    ss = [tuple(map(float, l.split())) for l in open(f"{W}/{t}-rsync")]
    return statistics.median(a[0] + b[0] for a, b in zip(rs, ss))
lines.append(("restore v2 until on disk (+ `sync -f`), MiB/s", {t: total / M / durable(t) for t in tools}, "{:.0f}", True))
lines.append(("restore v2 CPU-seconds per GB", {t: col(f"{t}-restore", 2) / (total / G) for t in tools}, "{:.2f}", False))
for step in ("v1", "v2", "same", "restore"):
    lines.append((f"peak RSS {step}, MiB", {t: col(f"{t}-{step}", 1) / 1024 for t in tools}, "{:.0f}", False))
o2 = json.load(open(f"{W}/ours-v2.json")); os_ = json.load(open(f"{W}/ours-same.json"))
print(f"\n{files} files, {total/M:.0f} MiB; v2: {mutated}; median of {runs} runs; restores: {cache}; {versions}\n")
print("| measure | kanister-agent | " + " | ".join(peers) + " | vs best peer |")
print("|---|" + "---:|" * (len(tools) + 1))
for label, v, fmt, higher in lines:
    best = (max if higher else min)(peers, key=lambda t: v[t])
    print(f"| {label} | " + " | ".join(fmt.format(v[t]) for t in tools) + f" | {v['ours'] / v[best]:.2f}x ({best}) |")
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
