#!/usr/bin/env bash
# Runs the whole test suite: starts the test servers (tests/infra.sh) and one real Kubernetes
# cluster (tests/cluster.sh), runs `cargo test` for the workspace against them, and stops them
# again, whatever happened. Needs `bash tests/infra.sh install` once on a new machine (.ci/run
# does it; it also builds the cluster's binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'bash tests/cluster.sh stop || true; bash tests/infra.sh stop' EXIT
bash tests/infra.sh start
eval "$(bash tests/infra.sh env)"
# The cluster of this run: every test that needs Kubernetes makes a namespace in it.
bash tests/cluster.sh start >/dev/null
eval "$(bash tests/cluster.sh env)"
cargo test --workspace "$@"
