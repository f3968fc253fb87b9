# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh: installs and runs the local
# stand-ins for AWS, DynamoDB Local (with Streams) and fauxqs (SQS FIFO).
#
# After `emulators_start`, the standard AWS variables point every SDK client
# in this shell and its children at them; `emulators_stop` (run from an EXIT
# trap) stops exactly what was started.

EMULATORS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools/emulators" && pwd)"
EMULATORS_PIDS=()

emulators_log() { printf '[emulators] %s\n' "$*" >&2; }

# apt_install PACKAGE...: Debian packages, when running as root (as on a fresh
# machine of this project's kind); otherwise says what to install.
apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    emulators_log "please install: $*"
    return 1
  fi
  emulators_log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

emulators_install() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -f "$EMULATORS_DIR/node_modules/.package-lock.json" ] ||
     [ "$EMULATORS_DIR/package-lock.json" -nt "$EMULATORS_DIR/node_modules/.package-lock.json" ]; then
    emulators_log "installing from tools/emulators/package-lock.json (npm ci)"
    (cd "$EMULATORS_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2
  fi
}

# A free TCP port on loopback, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_port PORT NAME LOGFILE: up to 60 s for something to listen.
wait_for_port() {
  local port=$1 name=$2 log=$3 deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      emulators_log "$name did not listen on port $port within 60 s; its log:"
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# emulators_start LOGDIR: starts both on free ports and exports the AWS variables.
emulators_start() {
  local logdir=$1
  mkdir -p "$logdir"
  emulators_install
  local ddb_port sqs_port
  ddb_port=$(free_port)
  sqs_port=$(free_port)

  local jar_dir="$EMULATORS_DIR/node_modules/amplify-dynamodb-simulator/emulator"
  # -disableTelemetry: these machines must make no outside connections.
  (cd "$jar_dir" && exec java -Xmx1g -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
      -inMemory -port "$ddb_port" -disableTelemetry) >"$logdir/dynamodb-local.log" 2>&1 &
  EMULATORS_PIDS+=($!)
  FAUXQS_HOST=127.0.0.1 FAUXQS_PORT=$sqs_port \
    node "$EMULATORS_DIR/node_modules/fauxqs/dist/cli.js" >"$logdir/fauxqs.log" 2>&1 &
  EMULATORS_PIDS+=($!)

  wait_for_port "$ddb_port" "DynamoDB Local" "$logdir/dynamodb-local.log"
  wait_for_port "$sqs_port" "fauxqs" "$logdir/fauxqs.log"

  export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$ddb_port"
  export AWS_ENDPOINT_URL_DYNAMODB_STREAMS="http://127.0.0.1:$ddb_port"
  export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$sqs_port"
  # The emulators accept any credentials; these are not secrets.
  export AWS_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=local
  export AWS_SECRET_ACCESS_KEY=local
  unset AWS_PROFILE AWS_SESSION_TOKEN
  export AWS_EC2_METADATA_DISABLED=true
  emulators_log "DynamoDB Local on $AWS_ENDPOINT_URL_DYNAMODB, fauxqs on $AWS_ENDPOINT_URL_SQS (logs in $logdir)"
}

emulators_stop() {
  local pid
  for pid in "${EMULATORS_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${EMULATORS_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  EMULATORS_PIDS=()
}
