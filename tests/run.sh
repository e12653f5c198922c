#!/usr/bin/env bash
# Runs the whole test suite: starts the test servers (tests/infra.sh), runs `cargo test` for
# the workspace against them, and stops them again, whatever happened.
# Needs `bash tests/infra.sh install` once on a new machine (.ci/run does it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/infra.sh start
trap 'bash tests/infra.sh stop' EXIT
eval "$(bash tests/infra.sh env)"
cargo test --workspace "$@"
