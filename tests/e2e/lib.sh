# SPDX-License-Identifier: Apache-2.0
# Shared helpers for the e2e scripts (nbdkit's tests/functions.sh in spirit).
# Source it first thing:   source "$(dirname "$0")/lib.sh"
#
# Gives: $WORK (a fresh temp dir removed on exit, with every server started through
# start_serve killed), fail MSG, require_cmd CMD..., start_serve NAME ARGS...,
# stop_serve NAME (SIGTERM, must exit within $STOP_TIMEOUT_S), nbd_uri NAME EXPORT,
# server_alive NAME, freeze_cycles NAME, volume_cycle NAME VOLUME,
# wait_for_cycle NAME VOLUME CYCLE, wait_for_line FILE ERE, skip REASON (exit 77: ctest reports "skipped").
# Env: AMIRROR (the binary; set by ctest), TOOLS_DIR (tests/tools binaries),
# KEEP_WORK=1 keeps $WORK for inspection, EXPECTED_FAILURES (see stop_serve).
set -euo pipefail

: "${AMIRROR:?set AMIRROR to the amirror binary (ctest does this)}"
# Bounds on progress, not schedules: generous, so a machine ten times slower passes too.
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-120}
START_TIMEOUT_S=${START_TIMEOUT_S:-120}
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/nbd-e2e-$TEST_NAME.XXXXXX")
declare -A SERVE_PID=()

log() { echo "[$TEST_NAME] $*" >&2; }

fail() {
  echo "[$TEST_NAME] FAIL: $*" >&2
  for name in "${!SERVE_PID[@]}"; do
    if [[ -f "$WORK/$name.log" ]]; then
      echo "--- last lines of server $name log ---" >&2
      tail -n 30 "$WORK/$name.log" >&2 || true
    fi
  done
  exit 1
}

cleanup() {
  local rc=$?
  for name in "${!SERVE_PID[@]}"; do
    local pid=${SERVE_PID[$name]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT

require_cmd() {
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || fail "required command '$cmd' is not installed (see scripts/bootstrap.sh)"
  done
}

# start_serve NAME [extra amirror serve args...]
# Data dir $WORK/NAME.d, socket $WORK/NAME.sock, log $WORK/NAME.log.
start_serve() {
  local name=$1
  shift
  "$AMIRROR" serve --data-dir "$WORK/$name.d" --socket "$WORK/$name.sock" "$@" \
    >"$WORK/$name.log" 2>&1 &
  SERVE_PID[$name]=$!
  local waited=0
  until [[ -S "$WORK/$name.sock" ]]; do
    kill -0 "${SERVE_PID[$name]}" 2>/dev/null || fail "amirror serve $name exited at startup: $(cat "$WORK/$name.log")"
    sleep 0.05
    waited=$((waited + 1))
    ((waited < START_TIMEOUT_S * 20)) || fail "amirror serve $name did not create its socket within $START_TIMEOUT_S s"
  done
}

server_alive() { kill -0 "${SERVE_PID[$1]}" 2>/dev/null; }

# stop_serve NAME: SIGTERM, then require a clean exit (status 0) within STOP_TIMEOUT_S.
stop_serve() {
  local name=$1 pid=${SERVE_PID[$1]}
  kill -TERM "$pid" 2>/dev/null || fail "server $name was not running at stop"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    waited=$((waited + 1))
    if ((waited > STOP_TIMEOUT_S * 10)); then
      fail "server $name did not exit within ${STOP_TIMEOUT_S} s of SIGTERM"
    fi
  done
  local rc=0
  wait "$pid" || rc=$?
  unset "SERVE_PID[$name]"
  ((rc == 0)) || fail "server $name exited with status $rc after SIGTERM: $(tail -n 5 "$WORK/$name.log")"
  [[ ! -e "$WORK/$name.sock" ]] || fail "server $name left its socket file behind"
  # Store errors (freeze, merge, I/O) are logged at level ERROR; none is expected.
  # A test that provokes errors on purpose lists their lines in EXPECTED_FAILURES (ERE).
  local failures
  failures=$(grep -E '^[^ ]+Z ERROR ' "$WORK/$name.log" | grep -Ev "${EXPECTED_FAILURES:-^\$}" || true)
  if [[ -n "$failures" ]]; then
    fail "server $name logged failures: $(head -n 3 <<<"$failures")"
  fi
}

# skip REASON: this test cannot run here; ctest shows it as skipped (SKIP_RETURN_CODE 77).
skip() {
  echo "[$TEST_NAME] SKIP: $*" >&2
  exit 77
}

# wait_for_line FILE ERE: until a line of FILE matches (a bound of START_TIMEOUT_S, not
# a schedule); fails the test if none does by then.
wait_for_line() {
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until grep -Eq "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "no line matching '$2' in $1 within $START_TIMEOUT_S s"
    sleep 0.05
  done
}

# volume_cycle NAME VOLUME: the volume's latest freeze number, read from the data
# directory while the server runs (layer <cycle + 1> is the active one; see
# docs/formats/store.md). Lets a test count freezes instead of waiting for time.
volume_cycle() {
  local dir=$WORK/$1.d/volumes/$2 newest
  newest=$(find "$dir" -maxdepth 1 -name 'layer-*.map' -printf '%f\n' 2>/dev/null |
    sed -n 's/^layer-0*\([0-9][0-9]*\)\.map$/\1/p' | sort -n | tail -n 1)
  [[ -n $newest ]] || fail "no layer files in $dir"
  echo $((newest - 1))
}

# wait_for_cycle NAME VOLUME CYCLE: until the server has frozen VOLUME at least to CYCLE.
wait_for_cycle() {
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until (($(volume_cycle "$1" "$2") >= $3)); do
    ((SECONDS < deadline)) || fail "volume $2 on $1 did not reach freeze $3 within $START_TIMEOUT_S s (at $(volume_cycle "$1" "$2"))"
    sleep 0.05
  done
}

# freeze_cycles NAME: how many freeze+merge cycles the last stopped server ran.
freeze_cycles() {
  sed -n 's/.* INFO serve freeze_cycles=\([0-9]*\) .*msg="freezer stopped"$/\1/p' "$WORK/$1.log" | tail -n 1
}

# nbd_uri NAME EXPORT -> nbd+unix URI (libnbd, qemu and fio understand it).
nbd_uri() { echo "nbd+unix:///$2?socket=$WORK/$1.sock"; }
