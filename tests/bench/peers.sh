#!/usr/bin/env bash
# The benchmarks' peers that Debian does not package: rustic and bupstash, built from crates.io
# at the versions the performance issue names, into a directory outside the clone (kept across
# runs; the build takes ~15 minutes on 2 cores). restic and borg come from Debian
# (tests/infra.sh install).
#
#   bash tests/bench/peers.sh install   build what is missing
#   bash tests/bench/peers.sh path      print the directory to put on PATH
set -euo pipefail
DIR=${KANISTER_BENCH_PEERS:-$HOME/.cache/kanister-bench-peers}
RUSTIC=0.11.4
BUPSTASH=0.12.0

case ${1:-} in
  path) echo "$DIR/bin" ;;
  install)
    mkdir -p "$DIR"
    if ! "$DIR/bin/rustic" --version 2>/dev/null | grep -q "$RUSTIC"; then
      # Without the default features (TUI, webdav, OpenTelemetry, jq): not used here, and they
      # double the build. The local backend and the backup, dump and restore commands remain.
      CARGO_TARGET_DIR=$DIR/target cargo install --quiet --locked --no-default-features \
        --version "$RUSTIC" --root "$DIR" rustic-rs
    fi
    if ! "$DIR/bin/bupstash" version 2>/dev/null | grep -q "$BUPSTASH"; then
      if ! pkg-config --exists libsodium; then
        [ "$(id -u)" = 0 ] || { echo "bupstash needs libsodium-dev: apt-get install libsodium-dev" >&2; exit 1; }
        apt-get install -y -q libsodium-dev >/dev/null
      fi
      CARGO_TARGET_DIR=$DIR/target cargo install --quiet --locked --version "$BUPSTASH" --root "$DIR" bupstash
    fi
    rm -rf "$DIR/target"
    "$DIR/bin/rustic" --version
    "$DIR/bin/bupstash" version
    ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
