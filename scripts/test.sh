#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the
# emulators from tools/emulators/package-lock.json; cargo-lambda, ziglang and
# cfn-lint from tools/python/requirements.txt into .venv/; MariaDB with
# apt-get when missing, shellcheck too), checks formatting and lints (the
# shell scripts too), checks the CloudFormation templates and the deploy script, builds, starts DynamoDB
# Local, fauxqs and a private MariaDB on free ports, runs every test against
# them (the Lambda functions behind cargo-lambda's Runtime API emulator),
# then the suites written for both storage modes again in MySQL mode, and
# stops what it started.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p obt-api any extra arguments go to `cargo test`
#                              (and schemathesis is skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/mariadb.sh
source scripts/python.sh
source scripts/cargo-tools.sh

step() { printf '\n==> %s\n' "$*" >&2; }

run_dir=.run/test
rm -rf "$run_dir"
mkdir -p "$run_dir"
stop_servers() {
  emulators_stop
  mariadb_stop
}
trap stop_servers EXIT

step "formatting (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

# Licenses, a second TLS stack, unknown sources (deny.toml); advisories need GitHub: docs/DEPENDENCIES.md.
step "dependencies (cargo deny: licenses, bans, sources)"
cargo_tools
cargo deny --offline check licenses bans sources

step "Python tools (cargo-lambda, cfn-lint) in .venv"
python_tools

step "shell scripts (shellcheck)"
command -v shellcheck >/dev/null || apt_install shellcheck
shellcheck -x scripts/*.sh .ci/run

step "CloudFormation templates (cfn-lint) and the deploy script (--dry-run)"
cfn-lint infra/*.yaml
scripts/deploy.sh --dry-run --skip-build --region us-east-1 --bucket example-bucket \
  --vpc vpc-0example --private-subnets subnet-a,subnet-b --public-subnets subnet-c,subnet-d \
  --jwt-issuer https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example \
  >"$run_dir/deploy-dry-run.log"

step "a build without the mysql feature refuses the MySQL mode, saying how to fix it"
cargo build --workspace --bins --quiet
for binary in api stream-relay consumer obt-migrate obt-check obt-admin; do
  args=()
  [ "$binary" != obt-admin ] || args=(parked list)
  if OBT_STORAGE=mysql RUST_BACKTRACE=0 OBT_QUEUE_URL=http://127.0.0.1:9/none.fifo OBT_CHECK_API_URL=http://127.0.0.1:9 \
    "target/debug/$binary" "${args[@]}" >"$run_dir/no-mysql-$binary.log" 2>&1; then
    echo "$binary started in MySQL mode without the mysql feature" >&2
    exit 1
  fi
  grep -q "built without MySQL support" "$run_dir/no-mysql-$binary.log" || {
    echo "$binary did not say it lacks MySQL support:" >&2
    cat "$run_dir/no-mysql-$binary.log" >&2
    exit 1
  }
done

step "building the binaries the end-to-end tests run (all features: both modes)"
cargo build --workspace --bins --all-features --quiet

step "starting the emulators and MariaDB"
emulators_start "$run_dir"
mariadb_start "$run_dir/mariadb"

# The runner prints one "test result:" line per test binary; the sum is
# the suite's closing line.
set +e
step "tests, NoSQL mode (and the MySQL mode's own tests)"
cargo test --workspace --all-features --no-fail-fast "$@" 2>&1 | tee "$run_dir/cargo-test.log"
status=${PIPESTATUS[0]}
# The suites written for both modes (the api's HTTP contract, the
# consumer's behaviour, the end-to-end and fault scenarios, the checker)
# again, in MySQL mode.
step "tests, MySQL mode (OBT_TEST_STORAGE=mysql)"
OBT_TEST_STORAGE=mysql cargo test --all-features --no-fail-fast -p obt-api -p obt-consumer -p obt-e2e -p obt-check "$@" \
  2>&1 | tee -a "$run_dir/cargo-test.log"
mysql_status=${PIPESTATUS[0]}
[ "$mysql_status" -eq 0 ] || status=$mysql_status
# The real api binary against its own OpenAPI document, in both modes
# (not when the arguments pick some tests only).
if [ $# -eq 0 ]; then
  step "schemathesis: the api against its OpenAPI document (both storage modes)"
  scripts/schemathesis.sh --run-dir "$run_dir/schemathesis"
  schemathesis_status=$?
  [ "$schemathesis_status" -eq 0 ] || status=$schemathesis_status
fi
set -e
stop_servers
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
