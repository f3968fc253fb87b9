#!/usr/bin/env bash
# The benchmark (docs/PERFORMANCE.md, "How to run the benchmark"): every
# phase of obt-bench on stand-ins started fresh for it (DynamoDB Local slows
# down as its state grows) and stopped after it, then one table of the
# figures next to their ceilings and the issue's targets, DIR/bench.json
# and DIR/bench.svg.
#
#   scripts/bench.sh [--smoke] [--storage dynamodb|mysql|both] [--out DIR]
#
#   --smoke      every phase at a tiny scale with the dev-profile binaries
#                of target/debug (built by the test command, so no compile);
#                must run and print the table, its figures mean little
#   --storage    which mode(s) to measure [default: both; with --smoke,
#                dynamodb]
#   --out DIR    where the phase files, the services' logs, bench.json and
#                bench.svg go [default: .run/bench]
#
# Without --smoke it builds the release binaries first (cargo build
# --release --bins --all-features); a mode then takes about 8 minutes.
# Stand-ins run on free ports of loopback, apart from any other stack; the
# script stops what it started, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
source scripts/mariadb.sh
source scripts/python.sh

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

log() { printf '[bench] %s\n' "$*" >&2; }

smoke=false
storage=""
out=.run/bench
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=true ;;
    --storage)
      [ $# -gt 1 ] || usage
      storage=$2
      shift
      ;;
    --out)
      [ $# -gt 1 ] || usage
      out=$2
      shift
      ;;
    -h | --help) usage 0 ;;
    *)
      log "unknown argument '$1'"
      usage
      ;;
  esac
  shift
done
if [ -z "$storage" ]; then
  if [ "$smoke" = true ]; then storage=dynamodb; else storage=both; fi
fi
case "$storage" in
  dynamodb) modes=(dynamodb) ;;
  mysql) modes=(mysql) ;;
  both) modes=(dynamodb mysql) ;;
  *)
    log "--storage takes dynamodb, mysql or both, not '$storage'"
    exit 2
    ;;
esac

if [ "$smoke" = true ]; then
  bin_dir=target/debug
  for binary in obt-bench api stream-relay consumer stream-relay-lambda; do
    [ -x "$bin_dir/$binary" ] || {
      log "$bin_dir/$binary is missing: --smoke uses the dev-profile binaries; build them with cargo build --workspace --bins --all-features"
      exit 2
    }
  done
else
  bin_dir=target/release
  log "building the release binaries (cargo build --release --bins --all-features)"
  cargo build --release --bins --all-features --quiet
fi

rm -rf "$out"
mkdir -p "$out"
stand_ins_dir=$out/stand-ins

stop_stand_ins() {
  emulators_stop
  mariadb_stop
}
trap stop_stand_ins EXIT
trap 'stop_stand_ins; exit 130' INT TERM

# phases MODE: the phases that apply to MODE, in order (end-to-end reads
# the api phase's maximum).
phases() {
  if [ "$1" = mysql ]; then
    echo store-ceiling api queue-ceiling drain end-to-end
  else
    echo store-ceiling api queue-ceiling stream-ceiling drain end-to-end lambda
  fi
}

# The lambda phase (DynamoDB) runs the relay Lambda under cargo-lambda's
# emulator: cargo-lambda comes from tools/python/requirements.txt.
if [[ " ${modes[*]} " == *" dynamodb "* ]]; then
  python_tools
fi

smoke_flag=()
[ "$smoke" = false ] || smoke_flag=(--smoke)
status=0
for mode in "${modes[@]}"; do
  for phase in $(phases "$mode"); do
    logs=$stand_ins_dir/$mode-$phase
    log "$mode $phase: starting fresh stand-ins (logs in $logs)"
    if ! emulators_start "$logs"; then
      log "the AWS stand-ins did not start: see $logs"
      exit 1
    fi
    if [ "$mode" = mysql ] && ! mariadb_start "$logs/mariadb"; then
      log "MariaDB did not start: see $logs/mariadb/mariadb.log"
      exit 1
    fi
    phase_status=0
    "$bin_dir/obt-bench" run "$phase" --storage "$mode" --out "$out" --bin-dir "$bin_dir" \
      "${smoke_flag[@]}" || phase_status=$?
    # obt-bench handles Ctrl-C itself (it stops its services) and exits
    # 130: bash then does not act on the signal, so stop here.
    if [ "$phase_status" -ge 128 ]; then
      log "interrupted"
      exit "$phase_status"
    elif [ "$phase_status" -ne 0 ]; then
      log "$mode $phase failed (the services' logs: $out/$mode/logs, the stand-ins': $logs)"
      status=1
    fi
    stop_stand_ins
  done
done

"$bin_dir/obt-bench" report "$out"
exit "$status"
