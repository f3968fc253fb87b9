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

# The demo's own stack (scripts/stack.sh), apart from one a developer may
# have up in .run/stack; stopped when the demo ends, whatever happens.
export OBT_STACK_DIR=.run/demo
run_dir=$OBT_STACK_DIR
cleanup() { scripts/stack.sh down; }
trap cleanup EXIT
scripts/stack.sh down 2>/dev/null # the remains of an interrupted demo
rm -rf "$run_dir"

mysql_flag=()
[ "$storage" = mysql ] || mysql_flag=(--no-mysql)
step "starting the emulators$([ "$storage" = mysql ] && echo ", MariaDB") and the three services ($storage mode)"
scripts/stack.sh up "${mysql_flag[@]}" --services "$storage" >/dev/null
# The variables of the demo's stack: the AWS endpoints, the api's URL and,
# in MySQL mode, the consumer's database (for consumer-show and obt-check).
eval "$(scripts/stack.sh env)"
# shellcheck source=/dev/null
source "$run_dir/services.env"
bin=target/debug
api_port=${OBT_API_URL##*:}

step "POST /api/v1/spending (the original project's call)"
set -x
curl --silent --show-error --include --location --request POST "http://127.0.0.1:$api_port/api/v1/spending" \
  --header 'Content-Type: application/json' \
  --data-raw '{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}'
{ set +x; } 2>/dev/null
echo

# within SECS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds;
# after SECS, says that WHAT did not happen, shows the services' logs and
# exits.
within() {
  local secs=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      printf '%s within %d s. Logs:\n' "$what" "$secs" >&2
      tail -n 20 "$run_dir"/*.log >&2
      exit 1
    fi
    sleep 0.2
  done
}
applied() { "$bin/consumer-show" AB1 >"$run_dir/applied.json" 2>"$run_dir/show.err"; }
acknowledged() {
  curl --silent --show-error "http://127.0.0.1:$api_port/api/v1/spending/AB1" >"$run_dir/view.json" &&
    grep -q '"pending_events":0[,}]' "$run_dir/view.json"
}

step "waiting for the event to reach the consumer's table"
within 60 "the event did not reach the consumer" applied
echo "The consumer's table now holds (consumer-show AB1):"
cat "$run_dir/applied.json"

# The relay acknowledges what it published in rounds (at most a second
# apart), so the api's view can still count the event as pending for a
# moment after the consumer applied it: wait for the acknowledgement.
step "GET /api/v1/spending/AB1 (the api's view, once the relay acknowledged the event)"
within 30 "the relay did not acknowledge the event (the api's last view: $run_dir/view.json)" acknowledged
cat "$run_dir/view.json"
echo
if [ "$check" = true ]; then
  step "obt-check against the running stack (obt-check ${check_args[*]})"
  "$bin/obt-check" --api-url "http://127.0.0.1:$api_port" --progress always \
    --report "$run_dir/check.json" "${check_args[@]}"
fi
step "done: stopping the services and the emulators"
