#!/usr/bin/env bash
# How the average chunk size trades stored bytes for chunk count on a changed dump: for each
# size, push v1 and v2 of a BENCH_MIB MiB dump (default 256) into a fresh repository and
# report what v2 added. restic (1 MiB average chunks) is measured alongside.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${BENCH_MIB:-256}
W=${BENCH_DIR:-/tmp/kanister-bench}
cargo build --release -q -p kanister-agent -p kanister-testkit
AGENT=$PWD/target/release/kanister-agent
GEN=$PWD/target/release/gen-dump
mkdir -p "$W"
[ -s "$W/v1-$MIB.sql" ] || "$GEN" "$MIB" 1 42 > "$W/v1-$MIB.sql"
[ -s "$W/v2-$MIB.sql" ] || "$GEN" "$MIB" 2 42 > "$W/v2-$MIB.sql"
export KANISTER_REPO_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase
echo "| average chunk | chunks in v2 | v2 new plaintext | v2 stored (compressed) | stored vs v1 |"
echo "|---|---:|---:|---:|---:|"
for cs in 32KiB 64KiB 128KiB 256KiB 512KiB 1MiB; do
  rm -rf "$W/cs"
  "$AGENT" -s "file://$W/cs" repo init --chunk-size "$cs" >/dev/null
  "$AGENT" -s "file://$W/cs" push --json < "$W/v1-$MIB.sql" > "$W/cs1.json"
  "$AGENT" -s "file://$W/cs" push --json < "$W/v2-$MIB.sql" > "$W/cs2.json"
  python3 - "$cs" "$W/cs1.json" "$W/cs2.json" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
M = 1 << 20
print(f"| {sys.argv[1]} | {b['chunks']} | {b['bytes_new']/M:.1f} MiB | {b['bytes_uploaded']/M:.1f} MiB | {b['bytes_uploaded']/a['bytes_uploaded']*100:.1f}% |")
PY
done
if command -v restic >/dev/null; then
  rm -rf "$W/rcs"; restic -q -r "$W/rcs" init >/dev/null
  restic -q -r "$W/rcs" backup --stdin --stdin-filename d.sql < "$W/v1-$MIB.sql" >/dev/null; s1=$(du -sb "$W/rcs" | cut -f1)
  restic -q -r "$W/rcs" backup --stdin --stdin-filename d.sql < "$W/v2-$MIB.sql" >/dev/null; s2=$(du -sb "$W/rcs" | cut -f1)
  python3 -c "import sys; s1,s2=int(sys.argv[1]),int(sys.argv[2]); M=1<<20; print(f'| restic (1 MiB) | | | {(s2-s1)/M:.1f} MiB | {(s2-s1)/s1*100:.1f}% |')" "$s1" "$s2"
fi
