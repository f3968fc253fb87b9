#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the
# emulators from tools/emulators/package-lock.json; cargo-lambda, ziglang and
# cfn-lint from tools/python/requirements.txt into .venv/), checks formatting
# and lints, checks the CloudFormation templates and the deploy script,
# builds, starts DynamoDB Local and fauxqs on free ports, runs every test
# against them (the Lambda functions behind cargo-lambda's Runtime API
# emulator), and stops what it started.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p obt-api any extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/python.sh

step() { printf '\n==> %s\n' "$*" >&2; }

run_dir=.run/test
rm -rf "$run_dir"
mkdir -p "$run_dir"
trap emulators_stop EXIT

step "formatting (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

step "Python tools (cargo-lambda, cfn-lint) in .venv"
python_tools

step "CloudFormation templates (cfn-lint) and the deploy script (--dry-run)"
cfn-lint infra/*.yaml
bash -n scripts/deploy.sh
scripts/deploy.sh --dry-run --skip-build --region us-east-1 --bucket example-bucket \
  --vpc vpc-0example --private-subnets subnet-a,subnet-b --public-subnets subnet-c,subnet-d \
  >"$run_dir/deploy-dry-run.log"

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
emulators_stop
trap - EXIT

# The release build of what scripts/deploy.sh uploads: the three EC2
# binaries and the two Lambda zips, cross-built by cargo-lambda (a few
# minutes from a clean target; it shares nothing with the debug build).
step "release artifacts (scripts/deploy.sh --build-only)"
set +e
scripts/deploy.sh --build-only >"$run_dir/release-build.log" 2>&1
build_status=$?
set -e
if [ "$build_status" -ne 0 ]; then
  tail -n 40 "$run_dir/release-build.log" >&2
fi

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$run_dir/cargo-test.log"
if [ "$build_status" -ne 0 ]; then
  echo "release artifacts: the build failed (log: $run_dir/release-build.log)"
else
  echo "release artifacts: built in target/lambda/"
fi
[ "$status" -eq 0 ] && [ "$build_status" -eq 0 ]
