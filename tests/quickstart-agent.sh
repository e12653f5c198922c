#!/usr/bin/env bash
# The data mover alone, on the embedded default store (a local directory): build the agent, create a
# repository, back up a generated 256 MiB SQL dump, back up its next version (3% of rows
# changed), show what deduplication saved, restore the dump and verify it byte for byte.
#   QUICKSTART_DIR (default ./target/quickstart) holds the repository and the dumps.
#   QUICKSTART_MIB (default 256) sets the dump size.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${QUICKSTART_DIR:-$PWD/target/quickstart}
MIB=${QUICKSTART_MIB:-256}
cargo build --release -q -p kanister-agent -p kanister-testkit
AGENT=$PWD/target/release/kanister-agent
GEN=$PWD/target/release/gen-dump

rm -rf "$DIR" && mkdir -p "$DIR"
export KANISTER_STORE="file://$DIR/repo"
# A demo passphrase; real deployments read it from a Secret (--password-file / --key-file).
export KANISTER_REPO_PASSWORD="quickstart-demo-passphrase"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "create a repository at $KANISTER_STORE"
"$AGENT" repo init

step "generate a ${MIB} MiB mysqldump-style dump and its next version (3% of rows changed)"
"$GEN" "$MIB" 1 > "$DIR/dump-v1.sql"
"$GEN" "$MIB" 2 > "$DIR/dump-v2.sql"
ls -lh "$DIR"/dump-v*.sql

step "back up version 1"
"$AGENT" push --tag db=shop --tag version=1 "$DIR/dump-v1.sql"
step "back up version 2: only the changed chunks are stored"
"$AGENT" push --tag db=shop --tag version=2 --exec cat "$DIR/dump-v2.sql"

step "snapshots"
"$AGENT" snapshots
du -sh "$DIR/repo"

step "restore version 2 and verify it"
ID=$("$AGENT" snapshots --tag version=2 -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][-1]["id"])')
"$AGENT" pull "$ID" "$DIR/restored.sql"
if cmp -s "$DIR/dump-v2.sql" "$DIR/restored.sql"; then
  echo "restored dump is identical to the original ($(sha256sum < "$DIR/restored.sql" | cut -c1-16)...)"
else
  echo "restored dump DIFFERS from the original" >&2
  exit 1
fi

step "verify every blob in the repository"
"$AGENT" check --read-data
