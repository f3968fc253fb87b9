#!/usr/bin/env bash
# Runs schemathesis against the real api binary and its own OpenAPI
# document (GET /api/v1/openapi.json), in each storage mode asked for:
# every check, a fixed seed and a bounded number of examples (about half a
# minute a mode). Any failure (a 5xx, an answer that breaks the document,
# an invalid request accepted, a valid one refused, ...) fails the script.
#
#   scripts/schemathesis.sh [--storage dynamodb|mysql|both] [--seed N]
#                           [--max-examples N] [--run-dir DIR]
#
# Needs the emulators (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_SQS and
# the other variables `emulators_start` of scripts/emulators.sh exports)
# and, for the MySQL mode, OBT_MYSQL_ADMIN_URL (scripts/mariadb.sh's
# `mariadb_start` exports it). Builds target/debug/api and obt-migrate
# (all features) when needed, installs schemathesis into .venv
# (tools/python/requirements.txt), creates fresh tables (DynamoDB) or
# databases and users (MySQL) with obt-migrate, starts the api on a free
# loopback port, runs schemathesis, and stops the api.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/python.sh

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
st_log() { printf '[schemathesis] %s\n' "$*" >&2; }

storage=both
seed=20261128
max_examples=100
run_dir=.run/schemathesis
while [ $# -gt 0 ]; do
  case $1 in
    --storage) storage=${2:?--storage needs dynamodb, mysql or both}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --max-examples) max_examples=${2:?--max-examples needs a number}; shift 2 ;;
    --run-dir) run_dir=${2:?--run-dir needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) st_log "unknown argument $1"; usage >&2; exit 2 ;;
  esac
done
case $storage in
  dynamodb) modes=(dynamodb) ;;
  mysql) modes=(mysql) ;;
  both) modes=(dynamodb mysql) ;;
  *) st_log "--storage must be dynamodb, mysql or both, not $storage"; exit 2 ;;
esac
if [ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ]; then
  st_log "AWS_ENDPOINT_URL_DYNAMODB is not set: start the emulators first (scripts/emulators.sh: emulators_start DIR)"
  exit 2
fi
if [[ " ${modes[*]} " == *" mysql "* ]] && [ -z "${OBT_MYSQL_ADMIN_URL:-}" ]; then
  st_log "the MySQL mode needs OBT_MYSQL_ADMIN_URL: start MariaDB first (scripts/mariadb.sh: mariadb_start DIR)"
  exit 2
fi

mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
python_tools
# The workspace's binaries, as scripts/test.sh builds them (a no-op there):
# building only `-p obt-api -p obt-migrate` unifies features differently and
# compiled the AWS SDK a second time.
cargo build --workspace --all-features --bins --quiet

# Each generated valid Idempotency-Key is made unique (deterministically):
# the api rightly answers 422 to a key reused for another spending, which
# schemathesis, sending the same key with different bodies, would report
# as a valid request refused. Key reuse is tested in api/tests/api/idempotency.rs.
mkdir -p "$run_dir/hooks"
cat >"$run_dir/hooks/obt_schemathesis_hooks.py" <<'PY'
import itertools
import re

import schemathesis

_VALID = re.compile(r"[\x21-\x7e]{1,255}")
_counter = itertools.count()


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID.fullmatch(key):
        suffix = f"~{next(_counter)}"
        headers["Idempotency-Key"] = key[: 255 - len(suffix)] + suffix
PY

api_pid=
stop_api() {
  if [ -n "$api_pid" ]; then
    kill "$api_pid" 2>/dev/null || true
    wait "$api_pid" 2>/dev/null || true
    api_pid=
  fi
}
trap stop_api EXIT

# run_mode MODE: fresh storage, the api, schemathesis; returns its status.
run_mode() {
  local mode=$1 id port log
  id="st$(date +%s)$$${mode:0:1}"
  port=$(free_port)
  log="$run_dir/api-$mode.log"
  local -a env=(OBT_LISTEN="127.0.0.1:$port" OBT_TABLE="$id-spending"
    OBT_IDEMPOTENCY_TABLE="$id-idempotency" OBT_LEASE_TABLE="$id-leases"
    OBT_CONSUMER_TABLE="$id-consumer" OBT_QUEUE_NAME="$id-events.fifo"
    OBT_DLQ_NAME="$id-dlq.fifo" OBT_LOG_FORMAT=json)
  if [ "$mode" = mysql ]; then
    local password host_port
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    host_port=${OBT_MYSQL_ADMIN_URL##*@}
    host_port=${host_port%%/*}
    env+=(OBT_STORAGE=mysql OBT_MYSQL_DATABASE="${id}_api"
      OBT_MYSQL_CONSUMER_DATABASE="${id}_consumer" OBT_MYSQL_API_USER="${id}_api"
      OBT_MYSQL_RELAY_USER="${id}_relay" OBT_MYSQL_CONSUMER_USER="${id}_consumer"
      OBT_MYSQL_API_PASSWORD="$password-api" OBT_MYSQL_RELAY_PASSWORD="$password-relay"
      OBT_MYSQL_CONSUMER_PASSWORD="$password-consumer"
      OBT_DATABASE_URL="mysql://${id}_api:$password-api@$host_port/${id}_api")
  fi
  st_log "$mode: obt-migrate, then the api on 127.0.0.1:$port (log: $log)"
  env "${env[@]}" target/debug/obt-migrate >"$run_dir/migrate-$mode.log" 2>&1 || {
    st_log "$mode: obt-migrate failed:"
    cat "$run_dir/migrate-$mode.log" >&2
    return 1
  }
  env "${env[@]}" target/debug/api >"$log" 2>&1 &
  api_pid=$!
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; do
    if ! kill -0 "$api_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      st_log "$mode: the api did not become ready; its log:"
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  st_log "$mode: schemathesis, all checks, seed $seed, at most $max_examples examples an operation"
  local status=0
  # From the run directory: schemathesis keeps its cache (.schemathesis/)
  # in the working directory.
  (cd "$run_dir" && PYTHONPATH="$run_dir/hooks" SCHEMATHESIS_HOOKS=obt_schemathesis_hooks \
    schemathesis run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --checks all --seed "$seed" --max-examples "$max_examples" --workers 2 \
    --request-timeout 15 --no-color \
    --report junit --report-junit-path "$run_dir/junit-$mode.xml") \
    2>&1 | tee "$run_dir/schemathesis-$mode.log" || status=$?
  stop_api
  if grep -q '"level":"ERROR"' "$log"; then
    st_log "$mode: the api logged errors:"
    grep '"level":"ERROR"' "$log" | tail -n 20 >&2
    status=1
  fi
  return "$status"
}

failed=()
for mode in "${modes[@]}"; do
  run_mode "$mode" || failed+=("$mode")
done
if [ ${#failed[@]} -gt 0 ]; then
  st_log "FAILED in: ${failed[*]} (logs in $run_dir)"
  exit 1
fi
st_log "passed: ${modes[*]}"
