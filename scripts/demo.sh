#!/usr/bin/env bash
# The demo, from a fresh clone: starts the emulators, creates the tables and
# queues, starts the api, the relay and the consumer, makes the original
# project's POST, shows the event arriving in the consumer's table, and
# stops everything it started.
#
#   scripts/demo.sh                     NoSQL mode: DynamoDB and its stream
#   OBT_STORAGE=mysql scripts/demo.sh   MySQL mode: a private MariaDB (installed
#                                       with apt-get when missing), the outbox
#                                       table and the polling relay
#   scripts/demo.sh --check [ARGS]      then also obt-check against the running
#                                       stack, ARGS going to obt-check (e.g.
#                                       --spendings 1000 --identities 20); its
#                                       table is in .run/demo/check.json too
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/mariadb.sh

check=false
check_args=()
if [ "${1:-}" = --check ]; then
  check=true
  shift
  check_args=("$@")
elif [ $# -gt 0 ]; then
  echo "usage: [OBT_STORAGE=mysql] scripts/demo.sh [--check [OBT-CHECK ARGS]]" >&2
  exit 2
fi

storage=${OBT_STORAGE:-dynamodb}
case "$storage" in
  dynamodb | mysql) ;;
  *) echo "OBT_STORAGE is dynamodb or mysql, not '$storage'" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*" >&2; }

run_dir=.run/demo
rm -rf "$run_dir"
mkdir -p "$run_dir"
SERVICE_PIDS=()
cleanup() {
  local pid
  for pid in "${SERVICE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVICE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  emulators_stop
  mariadb_stop
}
trap cleanup EXIT

command -v curl >/dev/null || apt_install curl

step "building (cargo build --workspace --bins --all-features)"
cargo build --workspace --bins --all-features --quiet
bin=target/debug

step "starting the emulators"
emulators_start "$run_dir"

# Each service's own environment (the MySQL mode gives each its own user).
declare -A service_env=([api]="" [stream-relay]="" [consumer]="" [consumer-show]="")
if [ "$storage" = mysql ]; then
  step "starting MariaDB"
  mariadb_start "$run_dir/mariadb"
  # Passwords for this run only, never written to the repository.
  secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
  OBT_MYSQL_API_PASSWORD=$(secret) OBT_MYSQL_RELAY_PASSWORD=$(secret) OBT_MYSQL_CONSUMER_PASSWORD=$(secret)
  export OBT_MYSQL_API_PASSWORD OBT_MYSQL_RELAY_PASSWORD OBT_MYSQL_CONSUMER_PASSWORD
  step "creating the queues, the databases and their users (obt-migrate --storage mysql)"
  OBT_STORAGE=mysql "$bin/obt-migrate"
  server=${OBT_MYSQL_ADMIN_URL##*@}
  service_env[api]="OBT_DATABASE_URL=mysql://obt_api:$OBT_MYSQL_API_PASSWORD@$server/outboxtable"
  service_env[stream-relay]="OBT_DATABASE_URL=mysql://obt_relay:$OBT_MYSQL_RELAY_PASSWORD@$server/outboxtable"
  service_env[consumer]="OBT_DATABASE_URL=mysql://obt_consumer:$OBT_MYSQL_CONSUMER_PASSWORD@$server/consumed_outboxtable"
  service_env[consumer-show]=${service_env[consumer]}
  unset OBT_MYSQL_ADMIN_URL OBT_MYSQL_API_PASSWORD OBT_MYSQL_RELAY_PASSWORD OBT_MYSQL_CONSUMER_PASSWORD
else
  step "creating the tables and queues (obt-migrate)"
  "$bin/obt-migrate"
fi
export OBT_STORAGE=$storage

# env_of SERVICE: sets `extra` to SERVICE's own environment, for `env`.
# (`env` execs the binary, so `$!` of `env ... &` is the service's pid.)
env_of() {
  extra=()
  [ -z "${service_env[$1]}" ] || extra=("${service_env[$1]}")
}

api_port=${OBT_DEMO_PORT:-8081}
export OBT_LISTEN="127.0.0.1:$api_port"
export OBT_IDLE_POLL_MS=100 OBT_WAIT_TIME_SECS=1 OBT_POLL_MAX_IDLE_MS=100
step "starting api, stream-relay and consumer, $storage mode (logs in $run_dir)"
for service in api stream-relay consumer; do
  env_of "$service"
  env "${extra[@]}" "$bin/$service" >"$run_dir/$service.log" 2>&1 &
  SERVICE_PIDS+=($!)
done

deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$api_port/health/ready" >/dev/null 2>&1; do
  if ! kill -0 "${SERVICE_PIDS[0]}" 2>/dev/null; then
    echo "the api exited (is port $api_port taken? set OBT_DEMO_PORT); its log begins:" >&2
    head -n 8 "$run_dir/api.log" >&2
    exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "the api did not become ready within 60 s; its log:" >&2
    tail -n 40 "$run_dir/api.log" >&2
    exit 1
  fi
  sleep 0.2
done

step "POST /api/v1/spending (the original project's call)"
set -x
curl --silent --show-error --include --location --request POST "http://127.0.0.1:$api_port/api/v1/spending" \
  --header 'Content-Type: application/json' \
  --data-raw '{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}'
{ set +x; } 2>/dev/null
echo

step "waiting for the event to reach the consumer's table"
deadline=$((SECONDS + 60))
env_of consumer-show
until env "${extra[@]}" "$bin/consumer-show" AB1 >"$run_dir/applied.json" 2>"$run_dir/show.err"; do
  if [ $SECONDS -ge $deadline ]; then
    echo "the event did not reach the consumer within 60 s. Logs:" >&2
    tail -n 20 "$run_dir"/*.log >&2
    exit 1
  fi
  sleep 0.2
done
echo "The consumer's table now holds (consumer-show AB1):"
cat "$run_dir/applied.json"

step "GET /api/v1/spending/AB1 (the api's view)"
curl --silent --show-error "http://127.0.0.1:$api_port/api/v1/spending/AB1"
echo
if [ "$check" = true ]; then
  step "obt-check against the running stack (obt-check ${check_args[*]})"
  env_of consumer-show
  env "${extra[@]}" "$bin/obt-check" --api-url "http://127.0.0.1:$api_port" --progress always \
    --report "$run_dir/check.json" "${check_args[@]}"
fi
step "done: stopping the services and the emulators"
