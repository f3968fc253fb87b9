#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the
# emulators from tools/emulators/package-lock.json), checks formatting and
# lints, builds, starts DynamoDB Local and fauxqs on free ports, runs every
# test against them, and stops what it started.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p obt-api any extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh

step() { printf '\n==> %s\n' "$*" >&2; }

run_dir=.run/test
rm -rf "$run_dir"
mkdir -p "$run_dir"
trap emulators_stop EXIT

step "formatting (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

step "building the binaries the end-to-end tests run"
cargo build --workspace --bins --quiet

step "starting the emulators"
emulators_start "$run_dir"

step "tests"
# The runner prints one "test result:" line per test binary; the sum is
# the suite's closing line.
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$run_dir/cargo-test.log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$run_dir/cargo-test.log"
exit "$status"
