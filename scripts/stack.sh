#!/usr/bin/env bash
# A local stack that stays up: the stand-ins for AWS (DynamoDB Local with
# Streams, fauxqs) and a private MariaDB, and with --services the api, the
# relay and the consumer too, left running until `scripts/stack.sh down`.
#
#   scripts/stack.sh up [--no-mysql] [--services [dynamodb|mysql]]
#   eval "$(scripts/stack.sh env)"      the variables the tests and tools need
#   cargo test -p obt-api                against the running stand-ins
#   scripts/stack.sh status             what runs, where, and its logs
#   scripts/stack.sh down               stops exactly what `up` started
#
# --services builds the binaries (debug, both modes), creates the tables
# and queues (obt-migrate) and starts the three services in the given
# storage mode (dynamodb when none is given), the api on
# 127.0.0.1:${OBT_DEMO_PORT:-8081}; services.env then holds what
# consumer-show, obt-check and obt-admin need to read their data. Logs and
# state are in ${OBT_STACK_DIR:-.run/stack}; scripts/demo.sh runs its own
# stack in .run/demo, so the two never meet.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/mariadb.sh

stack_dir=${OBT_STACK_DIR:-.run/stack}
env_file=$stack_dir/env
# With --services: what the tools that read the services' data need
# (consumer-show, obt-check, obt-admin): OBT_API_URL, and in MySQL mode
# OBT_STORAGE and the consumer's OBT_DATABASE_URL. Apart from env_file,
# which the tests read: a test starts its own services, in the mode it
# chooses.
services_env_file=$stack_dir/services.env
pids_file=$stack_dir/pids

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

log() { printf '[stack] %s\n' "$*" >&2; }

down_command() {
  if [ "$stack_dir" = .run/stack ]; then
    echo "scripts/stack.sh down"
  else
    echo "OBT_STACK_DIR=$stack_dir scripts/stack.sh down"
  fi
}

# Each line of the pids file: NAME PID.
record_pid() { printf '%s %s\n' "$1" "$2" >>"$pids_file"; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# is_up: a pids file whose processes all still run.
is_up() {
  [ -f "$pids_file" ] || return 1
  local name pid
  while read -r name pid; do
    alive "$pid" || return 1
  done <"$pids_file"
}

stop_all() {
  [ -f "$pids_file" ] || return 0
  local name pid pids=()
  # Services first (the last started), then the stand-ins they use.
  while read -r name pid; do pids=("$pid" "${pids[@]}"); done <"$pids_file"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 20))
  for pid in "${pids[@]}"; do
    while alive "$pid"; do
      if [ $SECONDS -ge $deadline ]; then
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
  rm -f "$pids_file" "$env_file" "$services_env_file"
}

wait_ready() {
  local url=$1 pid=$2 log_file=$3 deadline=$((SECONDS + 60))
  until curl -fsS "$url" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      log "the api exited (is the port taken? set OBT_DEMO_PORT); its log begins:"
      head -n 8 "$log_file" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "the api did not become ready within 60 s; its log:"
      tail -n 40 "$log_file" >&2
      return 1
    fi
    sleep 0.2
  done
}

# start_services MODE: tables, queues and (in MySQL mode) databases and
# users, then the three services, each with its own environment.
start_services() {
  local storage=$1 bin=target/debug
  command -v curl >/dev/null || apt_install curl
  log "building (cargo build --workspace --bins --all-features)"
  cargo build --workspace --bins --all-features --quiet
  declare -A service_env=([api]="" [stream-relay]="" [consumer]="")
  if [ "$storage" = mysql ]; then
    # Passwords for this stack only, never written to the repository.
    secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
    OBT_MYSQL_API_PASSWORD=$(secret) OBT_MYSQL_RELAY_PASSWORD=$(secret) OBT_MYSQL_CONSUMER_PASSWORD=$(secret)
    export OBT_MYSQL_API_PASSWORD OBT_MYSQL_RELAY_PASSWORD OBT_MYSQL_CONSUMER_PASSWORD
    log "creating the queues, the databases and their users (obt-migrate --storage mysql)"
    OBT_STORAGE=mysql "$bin/obt-migrate" >&2
    local server=${OBT_MYSQL_ADMIN_URL##*@}
    service_env[api]="OBT_DATABASE_URL=mysql://obt_api:$OBT_MYSQL_API_PASSWORD@$server/outboxtable"
    service_env[stream-relay]="OBT_DATABASE_URL=mysql://obt_relay:$OBT_MYSQL_RELAY_PASSWORD@$server/outboxtable"
    service_env[consumer]="OBT_DATABASE_URL=mysql://obt_consumer:$OBT_MYSQL_CONSUMER_PASSWORD@$server/consumed_outboxtable"
    # The consumer's URL is what consumer-show and obt-check need to read
    # its table; the admin's stays in this stack's env file only.
    printf 'export OBT_STORAGE=mysql\nexport OBT_DATABASE_URL=%q\n' \
      "${service_env[consumer]#OBT_DATABASE_URL=}" >>"$services_env_file"
    unset OBT_MYSQL_API_PASSWORD OBT_MYSQL_RELAY_PASSWORD OBT_MYSQL_CONSUMER_PASSWORD
  else
    log "creating the tables and queues (obt-migrate)"
    "$bin/obt-migrate" >&2
  fi
  local port=${OBT_DEMO_PORT:-8081}
  local service extra=()
  for service in api stream-relay consumer; do
    extra=()
    [ -z "${service_env[$service]}" ] || extra=("${service_env[$service]}")
    # `env` execs the binary, so `$!` is the service's own pid.
    OBT_STORAGE=$storage OBT_LISTEN="127.0.0.1:$port" \
      OBT_IDLE_POLL_MS=100 OBT_WAIT_TIME_SECS=1 OBT_POLL_MAX_IDLE_MS=100 \
      env "${extra[@]}" "$bin/$service" >"$stack_dir/$service.log" 2>&1 &
    record_pid "$service" $!
  done
  printf 'export OBT_API_URL=%q\n' "http://127.0.0.1:$port" >>"$services_env_file"
  wait_ready "http://127.0.0.1:$port/health/ready" "$(awk '$1 == "api" { print $2 }' "$pids_file")" \
    "$stack_dir/api.log"
  log "api, stream-relay and consumer up in $storage mode; the api on http://127.0.0.1:$port"
}

up() {
  local mysql=true services=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --no-mysql) mysql=false ;;
      --services)
        services=dynamodb
        if [ $# -gt 1 ] && [[ "$2" != --* ]]; then services=$2; shift; fi
        ;;
      *) usage ;;
    esac
    shift
  done
  case "$services" in
    "" | dynamodb) ;;
    mysql) [ "$mysql" = true ] || { log "--services mysql needs MariaDB: drop --no-mysql"; exit 2; } ;;
    *) log "--services takes dynamodb or mysql, not '$services'"; exit 2 ;;
  esac
  if is_up; then
    log "a stack is up already ($stack_dir); its environment follows. '$(down_command)' stops it."
    cat "$env_file"
    return 0
  fi
  stop_all # the remains of a stack that half died
  mkdir -p "$stack_dir"
  : >"$pids_file"
  rm -f "$services_env_file"
  # Whatever fails from here stops what was started.
  trap 'stop_all' ERR INT TERM
  emulators_start "$stack_dir"
  record_pid dynamodb-local "${EMULATORS_PIDS[0]}"
  record_pid fauxqs "${EMULATORS_PIDS[1]}"
  {
    local var
    for var in AWS_ENDPOINT_URL_DYNAMODB AWS_ENDPOINT_URL_DYNAMODB_STREAMS AWS_ENDPOINT_URL_SQS \
      AWS_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_EC2_METADATA_DISABLED; do
      printf 'export %s=%q\n' "$var" "${!var}"
    done
    printf 'unset AWS_PROFILE AWS_SESSION_TOKEN\n'
  } >"$env_file"
  if [ "$mysql" = true ]; then
    mariadb_start "$stack_dir/mariadb"
    record_pid mariadb "$MARIADB_PID"
    printf 'export OBT_MYSQL_ADMIN_URL=%q\n' "$OBT_MYSQL_ADMIN_URL" >>"$env_file"
    printf 'export OBT_MYSQL_CA_FILE=%q\n' "$OBT_MYSQL_CA_FILE" >>"$env_file"
  fi
  if [ -n "$services" ]; then
    start_services "$services"
    log "try: curl -i -H 'Content-Type: application/json' -d '{\"identity\":\"AB1\",\"name\":\"Martin\",\"surname\":\"Robi\",\"amount\":51.3}' http://127.0.0.1:${OBT_DEMO_PORT:-8081}/api/v1/spending"
    log "then: (source $services_env_file; target/debug/consumer-show AB1)"
  fi
  trap - ERR INT TERM
  log "up; its environment follows (also in $env_file). '$(down_command)' stops it."
  cat "$env_file"
}

status() {
  if [ ! -f "$pids_file" ]; then
    echo "no stack in $stack_dir ('scripts/stack.sh up' starts one)"
    return 1
  fi
  local name pid state all=0
  while read -r name pid; do
    if alive "$pid"; then state=running; else state=STOPPED; all=1; fi
    printf '%-15s pid %-8s %s\n' "$name" "$pid" "$state"
  done <"$pids_file"
  echo "logs and environment: $stack_dir"
  return $all
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down)
    stop_all
    log "down"
    ;;
  env)
    if ! is_up; then
      log "no stack is up in $stack_dir: 'scripts/stack.sh up' starts one"
      exit 1
    fi
    cat "$env_file"
    ;;
  status) status ;;
  *) usage ;;
esac
