#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the
# emulators from tools/emulators/package-lock.json; cargo-lambda, ziglang and
# cfn-lint from tools/python/requirements.txt into .venv/; MariaDB with
# apt-get when missing, shellcheck too; cargo-deny into .run/tools), checks
# formatting and lints (the shell scripts too), the CloudFormation templates
# and the deploy script, builds, starts DynamoDB Local, fauxqs and a private
# MariaDB on free ports, runs every test against them (the Lambda functions
# behind cargo-lambda's Runtime API emulator), then the suites written for
# both storage modes again in MySQL mode, stops what it started, runs the
# benchmark's smoke (scripts/bench.sh --smoke), and last checks the
# dependency tree (cargo deny) and the build of the deployment's artifacts
# (scripts/deploy.sh --build-only --dev-build), both of which build in the
# background while the rest runs.
#
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh -p obt-api       any extra arguments go to `cargo test`
#                                    (and schemathesis is skipped)
#   scripts/test.sh --fast [ARGS]    the inner loop: only the build and the
#                                    tests (both modes), on the stack of
#                                    `scripts/stack.sh up` when one is up
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/mariadb.sh
source scripts/python.sh
source scripts/cargo-tools.sh

fast=false
if [ "${1:-}" = --fast ]; then
  fast=true
  shift
fi

# Each step says when it starts (minutes:seconds since the start), so a
# slow run shows where its time went.
step() { printf '\n==> [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

# A full run (CI) builds each crate once, so incremental compilation's
# caches would only cost disk: a large share of target/ (a CI run on a
# nearly full disk failed in the lints).
if [ "$fast" = false ]; then
  export CARGO_INCREMENTAL=0
  # The lints run inside the builds: every cargo command below compiles
  # the workspace's crates with clippy's driver, which lints and then
  # compiles as rustc does, and the dependencies with rustc. That is how
  # `cargo clippy -- -D warnings` runs it (the same two variables), but
  # on `cargo check`, which compiled every dependency a second time, in
  # check mode, for the lints alone (4 minutes of 2 cores by itself; the
  # run is about 2 minutes shorter without it).
  clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
  [ -x "$clippy_driver" ] || {
    echo "clippy is not installed for this toolchain ($clippy_driver is missing): rustup component add clippy" >&2
    exit 1
  }
  export RUSTC_WORKSPACE_WRAPPER=$clippy_driver
  export CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
fi
# A command built as elsewhere, without the lints: cargo-deny's install
# (whose crates would be linted as this workspace's), the deployment's
# artifacts.
without_lints() {
  unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
  "$@"
}
# A full run from a clean clone writes about 8 GB under target/ (8.1 GB
# measured at commit e402305); say so up front rather than fail in the
# middle of a build.
read -r free_kb mount < <(df -Pk . | awk 'NR == 2 { print $4, $6 }')
if [ "${free_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
  printf 'warning: only %d MB free on %s; a full run from a clean clone needs about 8 GB for target/\n' \
    $((free_kb / 1024)) "$mount" >&2
fi

run_dir=.run/test
# The deployment artifacts' own target directory (below).
deploy_check_dir=target/deploy-check
rm -rf "$run_dir"
mkdir -p "$run_dir"
# Work that waits on the network (installing the tools and the stand-ins)
# runs in the background beside the lints; builds that the run only needs
# at its end (cargo-deny, the deployment's artifacts) run there at the
# lowest CPU priority (--idle), so that they take only the CPU the lints
# and the tests leave idle. Each is waited for where its result is needed:
# minutes off a run on 2 cores (docs/DEVELOPMENT.md).
#   in_background [--idle] NAME COMMAND...   output to $run_dir/NAME.log
#   await NAME                               its status; its log's end when it failed
declare -A background=()
in_background() {
  local niceness=0
  if [ "$1" = --idle ]; then
    niceness=19
    shift
  fi
  local name=$1
  shift
  step "in the background: $name (log: $run_dir/$name.log)"
  (
    renice -n "$niceness" -p "$BASHPID" >/dev/null
    "$@"
  ) >"$run_dir/$name.log" 2>&1 &
  background[$name]=$!
}
await() {
  local name=$1 status=0
  step "waiting for $name (started in the background)"
  wait "${background[$name]}" || status=$?
  unset "background[$name]"
  if [ "$status" -ne 0 ]; then
    echo "$name failed (exit $status); the end of $run_dir/$name.log:" >&2
    tail -n 40 "$run_dir/$name.log" >&2
  fi
  return "$status"
}
# A process and everything it started (a background job's cargo, say;
# the process alone where procps' pgrep is missing).
kill_tree() {
  local child
  if command -v pgrep >/dev/null; then
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
  fi
  kill "$1" 2>/dev/null || true
}
stop_servers() {
  emulators_stop
  mariadb_stop
}
on_exit() {
  local pid
  for pid in "${background[@]}"; do kill_tree "$pid"; done
  stop_servers
}
trap on_exit EXIT

# The checks that --fast leaves out: formatting, lints, the shell scripts,
# the templates, the deploy script, and a build without the mysql feature
# (and, at the end of the run, the dependency tree).
static_checks() {
  step "Cargo.lock is up to date (cargo metadata --locked)"
  cargo metadata --locked --format-version 1 >/dev/null

  step "formatting (cargo fmt --check)"
  cargo fmt --all --check

  step "lints (clippy, warnings are errors), building every target of the workspace"
  cargo build --workspace --all-targets --all-features --quiet

  step "the docs' links (scripts/check-links.py)"
  scripts/check-links.py

  await system-packages
  step "shell scripts (shellcheck)"
  shellcheck -x scripts/*.sh .ci/run

  await python-tools
  python_tools # (installed: puts .venv/bin on PATH)
  step "CloudFormation templates (cfn-lint) and the deploy script (--dry-run)"
  cfn-lint infra/*.yaml
  scripts/deploy.sh --dry-run --skip-build --region us-east-1 --bucket example-bucket \
    --vpc vpc-0example --private-subnets subnet-a,subnet-b --public-subnets subnet-c,subnet-d \
    --jwt-issuer https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example \
    >"$run_dir/deploy-dry-run.log"

  # Offline, its bundled checks; the accepted findings are skipped on their
  # resources with the reason (docs/DEPLOY.md, "checkov").
  step "the CloudFormation template's security checks (checkov, scripts/checkov.sh)"
  scripts/checkov.sh >"$run_dir/checkov.log" 2>&1 || {
    cat "$run_dir/checkov.log" >&2
    exit 1
  }

  step "a build without the mysql feature refuses the MySQL mode, saying how to fix it"
  # (With `sso`, as the all-features builds have it: the AWS SDK is then
  # compiled once for both builds.)
  cargo build --workspace --bins --features obt-runtime/sso --quiet
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
}

# cargo-lambda (the Lambda tests) and cfn-lint in .venv, checkov in
# .venv-checkov; cargo-deny in .run/tools; the emulators (npm ci), MariaDB
# and shellcheck (apt-get, one at a time) when missing.
if [ "$fast" = true ]; then
  step "Python tools (cargo-lambda, cfn-lint) in .venv"
  python_tools
else
  in_background python-tools eval 'python_tools && checkov_tools'
  in_background system-packages eval 'emulators_install && mariadb_install &&
    { command -v shellcheck >/dev/null || apt_install shellcheck; }'
  in_background --idle cargo-deny without_lints cargo_tools
  static_checks
fi

step "building the binaries the end-to-end tests run (all features: both modes)"
cargo build --workspace --bins --all-features --quiet
if [ "$fast" = false ]; then
  step "the build without the mysql feature compiled only the workspace's crates again (scripts/check-workspace-hack.py)"
  scripts/check-workspace-hack.py bins
  # What scripts/deploy.sh uploads (the four EC2 binaries and the two
  # Lambda zips), cross-built by cargo-lambda and zig as a deployment
  # builds them, but with the dev profile (--dev-build): the release
  # profile took 9 of the run's minutes, for a check of the build path and
  # the packaging (a deployment builds release: docs/DEVELOPMENT.md). In a
  # target directory of its own, so that it never waits for the tests'
  # cargo (nor they for it).
  in_background --idle deployment-artifacts without_lints env CARGO_TARGET_DIR="$deploy_check_dir" \
    scripts/deploy.sh --build-only --dev-build
fi

if [ "$fast" = true ] && stack_env=$(scripts/stack.sh env 2>/dev/null) &&
  grep -q OBT_MYSQL_ADMIN_URL <<<"$stack_env"; then
  step "using the running stack (scripts/stack.sh status)"
  eval "$stack_env"
else
  step "starting the emulators and MariaDB"
  emulators_start "$run_dir"
  mariadb_start "$run_dir/mariadb"
fi

# The runner prints one "test result:" line per test binary; the sum is
# the suite's closing line.
set +e
step "tests, NoSQL mode (and the MySQL mode's own tests)"
# With arguments (`-p CRATE`, a filter), what they pick; `--workspace`
# would run every crate whatever `-p` says.
all_suites=(--workspace)
[ $# -eq 0 ] || all_suites=()
cargo test "${all_suites[@]}" --all-features --no-fail-fast "$@" 2>&1 | tee "$run_dir/cargo-test.log"
status=${PIPESTATUS[0]}
# The suites written for both modes (the api's HTTP contract, the
# consumer's behaviour, the end-to-end and fault scenarios, the checker)
# again, in MySQL mode.
step "tests, MySQL mode (OBT_TEST_STORAGE=mysql)"
# With arguments, the tests they pick (in both modes) and no others.
mysql_suites=(-p obt-api -p obt-consumer -p obt-e2e -p obt-check)
[ $# -eq 0 ] || mysql_suites=()
if [ $# -eq 0 ] && [ "$fast" = false ]; then
  # (Builds them: the pass below needs them anyway.)
  scripts/check-workspace-hack.py tests "${mysql_suites[@]}" || status=1
fi
OBT_TEST_STORAGE=mysql cargo test --all-features --no-fail-fast "${mysql_suites[@]}" "$@" \
  2>&1 | tee -a "$run_dir/cargo-test.log"
mysql_status=${PIPESTATUS[0]}
[ "$mysql_status" -eq 0 ] || status=$mysql_status
# The real api binary against its own OpenAPI document, in both modes
# (not when the arguments pick some tests only).
if [ $# -eq 0 ] && [ "$fast" = false ]; then
  step "schemathesis: the api against its OpenAPI document (both storage modes)"
  scripts/schemathesis.sh --run-dir "$run_dir/schemathesis"
  schemathesis_status=$?
  [ "$schemathesis_status" -eq 0 ] || status=$schemathesis_status
fi
set -e
stop_servers

# The benchmark's smoke: every phase at a tiny scale on stand-ins of its
# own (started and stopped per phase by the script), with the dev binaries
# built above; it must finish and print its table (docs/PERFORMANCE.md).
if [ $# -eq 0 ] && [ "$fast" = false ]; then
  step "the benchmark's smoke (scripts/bench.sh --smoke)"
  set +e
  scripts/bench.sh --smoke --out "$run_dir/bench" 2>"$run_dir/bench-smoke.log"
  bench_status=$?
  set -e
  if [ "$bench_status" -ne 0 ]; then
    tail -n 40 "$run_dir/bench-smoke.log" >&2
    status=$bench_status
  fi
fi

# The dependency tree: licenses, a second TLS stack, unknown sources
# (deny.toml; advisories need GitHub: docs/DEPENDENCIES.md). Last, because
# cargo-deny's build from source (minutes of CPU) gets a core only when
# the lints and the tests leave one idle. Then the deployment's artifacts,
# started in the background after the build.
deny_status=0
build_status=0
if [ "$fast" = false ]; then
  set +e
  await cargo-deny && cargo_tools &&
    step "dependencies (cargo deny: licenses, bans, sources)" &&
    cargo deny --offline check licenses bans sources
  deny_status=$?
  set -e
  await deployment-artifacts || build_status=$?
fi

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$run_dir/cargo-test.log"
if [ "$fast" = true ]; then
  echo "deployment artifacts: not built (--fast)"
elif [ "$build_status" -ne 0 ]; then
  echo "deployment artifacts (dev profile): the build failed (log: $run_dir/deployment-artifacts.log)"
else
  echo "deployment artifacts (dev profile): built in $deploy_check_dir/lambda/"
fi
[ "$deny_status" -eq 0 ] || echo "dependencies (cargo deny): failed (above)"
printf 'took %d:%02d\n' $((SECONDS / 60)) $((SECONDS % 60))
[ "$status" -eq 0 ] && [ "$build_status" -eq 0 ] && [ "$deny_status" -eq 0 ]
