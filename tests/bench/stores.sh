#!/usr/bin/env bash
# Store benchmark: the agent's push and pull of one dump into a local-disk repository, SeaweedFS
# (S3) and Azurite (Azure Blob), all on loopback, in one run; each store's speed as a ratio of
# the local disk's (issue 21's target: S3 at least 0.8x). Needs the test infrastructure up
# (bash tests/infra.sh start) and /usr/bin/time.
#   BENCH_MIB (default 1024), BENCH_RUNS (default 3), BENCH_DIR (default /tmp/kanister-bench)
#   BENCH_PIN=1: the agent runs on core 0 (`taskset -c 0`) and SeaweedFS and Azurite on core 1,
#   every store alike, as when the object store is another machine: on loopback without pinning,
#   the server takes its share of the agent's two cores.
# Each timing is the median of BENCH_RUNS runs. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
MIB=${BENCH_MIB:-1024}
RUNS=${BENCH_RUNS:-3}
W=${BENCH_DIR:-/tmp/kanister-bench}
cargo build --release -q -p kanister-agent -p kanister-testkit
export AGENT=$PWD/target/release/kanister-agent
GEN=$PWD/target/release/gen-dump
eval "$(bash tests/infra.sh env)"
curl -sf -o /dev/null "$KANISTER_TEST_S3_ENDPOINT/healthz" || {
  echo "SeaweedFS does not answer at $KANISTER_TEST_S3_ENDPOINT: bash tests/infra.sh start" >&2
  exit 1
}

PIN=()
if [ "${BENCH_PIN:-0}" = 1 ]; then
  PIN=(taskset -c 0)
  # pin_tree PID CPU: the process, its threads and its descendants on CPU.
  pin_tree() {
    taskset -a -p -c "$2" "$1" >/dev/null
    local c
    for c in $(pgrep -P "$1"); do pin_tree "$c" "$2"; done
  }
  for name in seaweed azurite; do pin_tree "$(cat "${INFRA_DIR:-/tmp/kanister-infra}/run/$name.pid")" 1; done
fi
export PINNED="${PIN[*]}"

mkdir -p "$W"
[ -s "$W/v1-$MIB.sql" ] || "$GEN" "$MIB" 1 42 > "$W/v1-$MIB.sql"
export V1=$W/v1-$MIB.sql
SZ=$(stat -c %s "$V1")
export KANISTER_REPO_PASSWORD=bench-passphrase
umask 077
printf 'aws_access_key_id=%s\naws_secret_access_key=%s\n' \
  "$KANISTER_TEST_S3_ACCESS_KEY" "$KANISTER_TEST_S3_SECRET_KEY" > "$W/s3.credentials"


STORES=(disk s3 azure)
for s in "${STORES[@]}"; do rm -f "$W/store-$s-push" "$W/store-$s-pull"; done
for run in $(seq 1 "$RUNS"); do
  for s in "${STORES[@]}"; do
    prefix=bench-$$-$run
    case $s in
      disk)
        rm -rf "$W/disk"
        ARGS=(-s "file://$W/disk")
        ;;
      s3)
        ARGS=(-s "s3://$KANISTER_TEST_S3_BUCKET/$prefix"
          --store-option "endpoint=$KANISTER_TEST_S3_ENDPOINT,region=us-east-1"
          --store-credentials "$W/s3.credentials")
        ;;
      azure)
        ARGS=(-s "az://$KANISTER_TEST_AZURE_CONTAINER/$prefix" --store-option use_emulator=true)
        ;;
    esac
    "$AGENT" "${ARGS[@]}" repo init >/dev/null
    # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments and environment
    measure "store-$s-push" bash -c '$PINNED "$AGENT" "$@" push --json < "$V1" > "$0"' "$W/push.json" "${ARGS[@]}"
    ID=$(snapshot_id "$W/push.json")
    # shellcheck disable=SC2016 # as above
    measure "store-$s-pull" bash -c '$PINNED "$AGENT" "$@" pull "$0" - > /dev/null 2>&1' "$ID" "${ARGS[@]}"
    if [ "$run" = 1 ]; then
      "$AGENT" "${ARGS[@]}" pull "$ID" - 2>/dev/null | cmp -s - "$V1" || { echo "pull from $s differs" >&2; exit 1; }
    fi
  done
done
rm -rf "$W/disk" "$W/s3.credentials"

python3 - "$W" "$SZ" "$MIB" "$RUNS" "${BENCH_PIN:-0}" <<'PY'
import sys, statistics
W, size, mib, runs, pin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
def med(name, col):
    return statistics.median(float(l.split()[col]) for l in open(f"{W}/{name}"))
M = 1 << 20
rate = {(s, op): size / M / med(f"store-{s}-{op}", 0) for s in ("disk", "s3", "azure") for op in ("push", "pull")}
rss = {s: max(med(f"store-{s}-push", 1), med(f"store-{s}-pull", 1)) / 1024 for s in ("disk", "s3", "azure")}
where = "the agent on core 0, the servers on core 1" if pin else "agent and servers sharing the cores"
print(f"\n{mib} MiB dump ({size/M:.0f} MiB), median of {runs} runs, every store on loopback, {where}\n")
print("| store | push MiB/s | pull MiB/s | push vs disk | pull vs disk | peak RSS |")
print("|---|---:|---:|---:|---:|---:|")
names = {"disk": "local disk", "s3": "SeaweedFS (S3)", "azure": "Azurite (Azure Blob)"}
for s in ("disk", "s3", "azure"):
    p, q = rate[(s, "push")], rate[(s, "pull")]
    print(f"| {names[s]} | {p:.0f} | {q:.0f} | {p/rate[('disk','push')]:.2f}x | {q/rate[('disk','pull')]:.2f}x | {rss[s]:.0f} MiB |")
PY
