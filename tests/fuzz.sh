#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted bytes in the repository format
# (agent/repo/fuzz, cargo-fuzz on the nightly toolchain).
#   bash tests/fuzz.sh smoke [SECONDS]   each target for SECONDS (default 10): what CI runs
#   bash tests/fuzz.sh run TARGET [SECONDS]   one target (default 600 s)
# Runs on a copy of the committed seed corpus, so the repository's corpus stays small.
# Installs the nightly toolchain (rustup) and cargo-fuzz (crates.io) when missing. A crash fails the run and leaves the input
# under agent/repo/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../agent/repo/fuzz"
if ! grep -q '^nightly' <<<"$(rustup toolchain list)"; then
  rustup toolchain install nightly --profile minimal || {
    echo "fuzz: the nightly toolchain is missing and could not be installed (rustup toolchain install nightly)" >&2
    exit 1
  }
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
TARGETS=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v -e '^kanister-repo-fuzz$' -e '^seeds$')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fuzz() { # target seconds
  mkdir -p "$work/$1"
  cp corpus/"$1"/* "$work/$1/"
  local start=$SECONDS
  cargo +nightly fuzz run "$1" "$work/$1" -- -max_total_time="$2" -print_final_stats=1 >"$work/$1.log" 2>&1 || {
    tail -40 "$work/$1.log" >&2
    echo "fuzz: $1 FAILED (input under agent/repo/fuzz/artifacts/$1)" >&2
    return 1
  }
  echo "fuzz: $1: $(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$1.log") runs in $((SECONDS - start)) s, \
$(grep -o 'cov: [0-9]*' "$work/$1.log" | tail -1), no crash"
}
case "${1:-smoke}" in
  smoke)
    cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
    for t in $TARGETS; do fuzz "$t" "${2:-10}"; done
    ;;
  run) fuzz "$2" "${3:-600}" ;;
  *) echo "usage: $0 smoke [SECONDS] | run TARGET [SECONDS]" >&2; exit 2 ;;
esac
