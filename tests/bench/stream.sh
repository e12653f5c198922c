#!/usr/bin/env bash
# Stream backup benchmark: kanister-agent against restic, rustic, borg and bupstash on the same
# data, in one run.
#
# Generates a mysqldump-style dump of BENCH_MIB MiB (default 1024) and its version 2 with 3% of
# rows changed (fixed seed), then for each tool, on local-disk repositories:
#   push v1 (fresh repository)          MiB/s, CPU-seconds per GB (user + system), peak RSS
#   push v1 pinned to one core          MiB/s under `taskset -c 0` (a sidecar's CPU limit)
#   push v2 (after v1)                  MiB/s, bytes the repository grew by
#   pull v2 to /dev/null, a pipe, a file   MiB/s from a cold page cache (dropped before each, as
#                                       root: see cold_cache in lib.sh); ours to a file includes
#                                       its fsync, the peers write through the shell's
#                                       redirection without one; to a file until on disk (+ a
#                                       timed `sync FILE`); and to a pipe again, cache warm
# Each timing is the median of BENCH_RUNS runs (default 3); each run starts with another tool. Needs restic, borg (Debian's
# borgbackup, lz4 as in the issue's figures), taskset and /usr/bin/time (tests/infra.sh install
# puts them there) and rustic and bupstash (tests/bench/peers.sh install builds them; this script
# runs it when they are missing). Each peer runs with its default compression but borg (lz4).
# Prints a Markdown table with each measure's ratio to the best peer.
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
peers

mkdir -p "$W"
[ -s "$W/v1-$MIB.sql" ] || "$GEN" "$MIB" 1 42 > "$W/v1-$MIB.sql"
[ -s "$W/v2-$MIB.sql" ] || "$GEN" "$MIB" 2 42 > "$W/v2-$MIB.sql"
V1=$W/v1-$MIB.sql V2=$W/v2-$MIB.sql
SZ1=$(stat -c %s "$V1") SZ2=$(stat -c %s "$V2")

TOOLS=(ours restic rustic borg bupstash)
# One tool's commands (init is in lib.sh): push REPO FILE, pull REPO (the latest snapshot to stdout).
push() {
  case $1 in
    ours) echo "\"$AGENT\" -s file://$2 push --json < \"$3\" > $W/ours-push.json" ;;
    restic) echo "restic -q -r $2 backup --stdin --stdin-filename dump.sql < \"$3\" > /dev/null" ;;
    # Labelled: two snapshots made within a second leave rustic's "latest" ambiguous.
    rustic) echo "rustic -r $2 --no-progress backup --label \$(basename \"$3\") --stdin-filename dump.sql - < \"$3\" > /dev/null 2>&1" ;;
    borg) echo "borg create -C lz4 $2::\$(basename \"$3\") - < \"$3\"" ;;
    bupstash) echo "bupstash put -q -r $2 -k $2.key --send-log $2.sendlog name=\$(basename \"$3\") - < \"$3\" > /dev/null" ;;
  esac
}
pull() {
  case $1 in
    # The id is read here, outside the timing (the peers name "latest").
    ours) echo "\"$AGENT\" -s file://$2 pull $(snapshot_id "$W/ours-push.json") -" ;;
    restic) echo "restic -q -r $2 dump latest dump.sql" ;;
    rustic) echo "rustic -r $2 --no-progress --filter-label v2-$MIB.sql dump latest:dump.sql 2>/dev/null" ;;
    borg) echo "borg extract --stdout $2::v2-$MIB.sql" ;;
    bupstash) echo "bupstash get -q -r $2 -k $2.key --query-cache $2.qcache name=v2-$MIB.sql" ;;
  esac
}
pull_file() {
  case $1 in
    ours) echo "$(pull ours "$2" | sed 's/ -$//') $W/out.sql > /dev/null" ;;
    *) echo "$(pull "$1" "$2") > $W/out.sql" ;;
  esac
}

for t in "${TOOLS[@]}"; do rm -f "$W/$t"-*; done
for run in $(seq 1 "$RUNS"); do
  read -ra ORDER <<< "$(rotate "$run" "${TOOLS[@]}")"
  for t in "${ORDER[@]}"; do
    R=$W/repo-$t
    rm -rf "$R" "$R-pinned" "$R".* "$R-pinned".* "$BORG_BASE_DIR" "$KANISTER_CACHE_DIR"
    init "$t" "$R-pinned"
    # The dumps in the page cache, as a dump arrives through a pipe (the restores before drop it).
    cat "$V1" "$V2" > /dev/null
    measure "$t-pinned" taskset -c 0 sh -c "$(push "$t" "$R-pinned" "$V1")"
    rm -rf "$R-pinned"
    init "$t" "$R"
    measure "$t-push1" sh -c "$(push "$t" "$R" "$V1")"
    S1=$(du -sb "$R" | cut -f1)
    measure "$t-push2" sh -c "$(push "$t" "$R" "$V2")"
    S2=$(du -sb "$R" | cut -f1)
    echo "$S1 $S2" >> "$W/$t-size"
    # Restores from a cold page cache (as long after a backup), then one from a warm one.
    cold_cache
    measure "$t-pull" sh -c "$(pull "$t" "$R") > /dev/null 2>/dev/null"
    cold_cache
    measure "$t-pipe" sh -c "$(pull "$t" "$R") 2>/dev/null | cat > /dev/null"
    rm -f "$W/out.sql"
    cold_cache
    measure "$t-file" sh -c "$(pull_file "$t" "$R")"
    # Until on disk: ours fsynced the file before it returned, the peers did not.
    measure "$t-fsync" sync "$W/out.sql"
    measure "$t-warm" sh -c "$(pull "$t" "$R") 2>/dev/null | cat > /dev/null"
    # The restored bytes are checked every run, outside the timings.
    cmp -s "$W/out.sql" "$V2" || { echo "$t restored something other than v2" >&2; exit 1; }
  done
done

python3 - "$W" "$SZ1" "$SZ2" "$MIB" "$RUNS" "$(cache_state)" "$(restic version | head -1), $(rustic --version), $(borg --version) (lz4), $(bupstash version)" <<'PY'
import sys, statistics
W, sz1, sz2, mib, runs, cache, versions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
tools = ["ours", "restic", "rustic", "borg", "bupstash"]
peers = tools[1:]
def rows(name):
    return [tuple(map(float, l.split())) for l in open(f"{W}/{name}")]
def med(name, col):
    return statistics.median(r[col] for r in rows(name))
M, G = 1 << 20, 1e9
def rate(t, step, size): return size / M / med(f"{t}-{step}", 0)
lines = []  # (measure, {tool: value}, fmt, higher_is_better)
for step, size, label in [("push1", sz1, "push v1 MiB/s"), ("pinned", sz1, "push v1 pinned to one core, MiB/s"),
                          ("push2", sz2, "push v2 MiB/s"), ("pull", sz2, "restore v2 to /dev/null, MiB/s"),
                          ("pipe", sz2, "restore v2 to a pipe, MiB/s"), ("file", sz2, "restore v2 to a file, MiB/s"),
                          ("warm", sz2, "restore v2 to a pipe, page cache warm, MiB/s")]:
    lines.append((label, {t: rate(t, step, size) for t in tools}, "{:.0f}", True))
def durable(t):  # per run: the restore to a file, then the fsync that makes it durable
    return statistics.median(a[0] + b[0] for a, b in zip(rows(f"{t}-file"), rows(f"{t}-fsync")))
lines.append(("restore v2 to a file until on disk (+ `sync FILE`), MiB/s", {t: sz2 / M / durable(t) for t in tools}, "{:.0f}", True))
lines.append(("push v1 CPU-seconds per GB", {t: med(f"{t}-push1", 2) / (sz1 / G) for t in tools}, "{:.2f}", False))
lines.append(("push v1 pinned, CPU-seconds per GB", {t: med(f"{t}-pinned", 2) / (sz1 / G) for t in tools}, "{:.2f}", False))
lines.append(("restore v2 to a pipe, CPU-seconds per GB", {t: med(f"{t}-pipe", 2) / (sz2 / G) for t in tools}, "{:.2f}", False))
size = {t: rows(f"{t}-size")[-1] for t in tools}
lines.append(("repository after v1, MiB", {t: size[t][0] / M for t in tools}, "{:.1f}", False))
lines.append(("stored by v2, MiB", {t: (size[t][1] - size[t][0]) / M for t in tools}, "{:.1f}", False))
lines.append(("peak RSS (any step), MiB", {t: max(med(f"{t}-{s}", 1) for s in ("push1", "push2", "pull", "file")) / 1024
                                           for t in tools}, "{:.0f}", False))
print(f"\n{mib} MiB dump (v1 {sz1/M:.0f} MiB, v2 {sz2/M:.0f} MiB, 3% of rows changed), median of {runs} runs, {cache}, {versions}\n")
print("| measure | kanister-agent | " + " | ".join(peers) + " | vs best peer |")
print("|---|" + "---:|" * (len(tools) + 1))
for label, v, fmt, higher in lines:
    best = (max if higher else min)(peers, key=lambda t: v[t])
    cells = " | ".join(fmt.format(v[t]) for t in tools)
    print(f"| {label} | {cells} | {v['ours'] / v[best]:.2f}x ({best}) |")
PY
