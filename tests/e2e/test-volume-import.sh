#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `volume import` copies without holding the node's lock (issue 9 item 5). The source
# is a FIFO fed by this test, so the import is provably still running while we look:
# it waits for bytes only we can send.
#  - while it runs: status (volume shown "importing" with progress), volume list, NBD
#    reads of another volume and other commands answer; the volume is not exported
#    and its name is reserved;
#  - a failed import (the stream ends early) leaves nothing behind, and a retry works;
#  - SIGTERM mid-import stops the node promptly and removes the partial volume; after
#    kill -9 mid-import the next start shows no half volume.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((16 * 1024 * 1024))
setup_nodes site-a
start_node site-a
head -c $SIZE /dev/urandom >"$WORK/source.bin"
am site-a volume create other --size 4M >/dev/null
write_pattern site-a other 0 1M 0x5a

# feed NAME FIRST_BYTES MODE: writes the first FIRST_BYTES of source.bin into the FIFO
# $WORK/NAME.fifo, then (MODE=rest) waits for $WORK/NAME.go and writes the rest, or
# (MODE=close) closes the FIFO early, or (MODE=hold) keeps it open until killed.
feed() {
  python3 - "$WORK/$1.fifo" "$WORK/source.bin" "$2" "$3" "$WORK/$1.go" <<'PY' &
import os, sys, time
fifo, source, first, mode, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
data = open(source, "rb").read()
with open(fifo, "wb", buffering=0) as out:
    out.write(data[:first])
    if mode == "close":
        sys.exit(0)
    for _ in range(6000):  # bounded: 10 minutes
        if os.path.exists(go):
            break
        time.sleep(0.1)
    if mode == "rest":
        out.write(data[first:])
PY
  FEEDER=$!
}

# start_import NAME ARGS...: `volume import NAME ARGS...` in the background.
start_import() {
  local name=$1
  shift
  "$AMIRROR" volume import "$name" "$@" --node "$WORK/site-a.sock" >"$WORK/import-$name.out" 2>"$WORK/import-$name.err" &
  IMPORTER=$!
}

# wait_importing NAME BYTES: until status shows NAME importing with >= BYTES copied.
wait_importing() {
  wait_until 60 "status to show $1 importing with at least $2 bytes copied" \
    bash -c "\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq -e '.volumes[] | select(.name == \"$1\" and .state == \"importing\" and .import.done_bytes >= $2)' >/dev/null"
}

# answers ARGS...: the CLI must answer (bounded generously; a wedged node fails).
answers() { timeout 60 "$AMIRROR" "$@" --node "$WORK/site-a.sock" >"$WORK/last.out" 2>"$WORK/last.err"; }

no_half_volume() {
  [[ ! -e $WORK/site-a.d/volumes/$1 && ! -e $WORK/site-a.d/volumes/$1.creating ]] ||
    fail "a half volume $1 is left in the data directory: $(ls -la "$WORK/site-a.d/volumes")"
  [[ -z $(volume_field site-a "$1" name) ]] || fail "status still lists $1: $(status_json site-a)"
}

log "the node keeps answering while an import runs"
mkfifo "$WORK/big.fifo"
start_import big --from "$WORK/big.fifo" --size 16M
feed big $((4 * 1024 * 1024)) rest
wait_importing big $((4 * 1024 * 1024))
answers status || fail "status does not answer during an import: $(cat "$WORK/last.err")"
grep -q "volume big  importing" "$WORK/last.out" || fail "human status does not show big importing: $(cat "$WORK/last.out")"
answers volume list --json || fail "volume list does not answer during an import: $(cat "$WORK/last.err")"
jq -e '.[] | select(.name == "big" and .state == "importing")' "$WORK/last.out" >/dev/null ||
  fail "volume list does not show big importing: $(cat "$WORK/last.out")"
timeout 60 qemu-io -r -f raw -c "read -q -P 0x5a 0 1M" "$(vol_uri site-a other)" >/dev/null ||
  fail "NBD read of volume other failed or hung during the import"
if timeout 60 qemu-io -r -f raw -c "read -q 0 4096" "$(vol_uri site-a big)" >/dev/null 2>"$WORK/nbd.err"; then
  fail "volume big is exported over NBD before its import finished"
fi
grep -q "still being imported" "$WORK/nbd.err" || fail "NBD refusal of big says not why: $(cat "$WORK/nbd.err")"
answers volume create big --size 1M && fail "volume create big succeeded during big's import"
grep -q "being imported" "$WORK/last.err" || fail "volume create big: unclear error: $(cat "$WORK/last.err")"
answers mirror start big --to site-a && fail "mirror start big succeeded during its import"
grep -q "being imported" "$WORK/last.err" || fail "mirror start big: unclear error: $(cat "$WORK/last.err")"
answers volume create small --size 1M || fail "volume create small failed during an import: $(cat "$WORK/last.err")"
touch "$WORK/big.go"
wait "$IMPORTER" || fail "import of big failed: $(cat "$WORK/import-big.err")"
wait "$FEEDER" || true
cmp <(nbdcopy "$(vol_uri site-a big)" -) "$WORK/source.bin" || fail "volume big differs from its source"
[[ $(volume_field site-a big state) == ok ]] || fail "big is not ok after its import: $(status_json site-a)"

log "a failed import leaves nothing behind; a retry works"
answers volume import adir --from "$WORK" && fail "importing a directory succeeded"
grep -q "is a directory" "$WORK/last.err" || fail "importing a directory: unclear error: $(cat "$WORK/last.err")"
no_half_volume adir
mkfifo "$WORK/broken.fifo"
start_import broken --from "$WORK/broken.fifo" --size 16M
feed broken $((2 * 1024 * 1024)) close
if wait "$IMPORTER"; then fail "an import whose stream ended early succeeded"; fi
grep -q "ended after 2097152 of the 16777216 bytes" "$WORK/import-broken.err" ||
  fail "unclear error for a short stream: $(cat "$WORK/import-broken.err")"
no_half_volume broken
start_import broken --from "$WORK/broken.fifo" --size 16M
feed broken $SIZE rest
touch "$WORK/broken.go"
wait "$IMPORTER" || fail "retrying the import of broken failed: $(cat "$WORK/import-broken.err")"
cmp <(nbdcopy "$(vol_uri site-a broken)" -) "$WORK/source.bin" || fail "volume broken differs from its source"

# held_import NAME: an import of NAME whose FIFO delivers 3 MiB, then stays silent.
held_import() {
  mkfifo "$WORK/$1.fifo"
  start_import "$1" --from "$WORK/$1.fifo" --size 16M
  feed "$1" $((3 * 1024 * 1024)) hold
  wait_importing "$1" $((3 * 1024 * 1024))
}
# end_held_import NAME: after the node went away; the CLI must report failure.
end_held_import() {
  if wait "$IMPORTER"; then fail "the import of $1 claims success although the node went away"; fi
  kill "$FEEDER" 2>/dev/null || true
  wait "$FEEDER" 2>/dev/null || true
}
VOLUMES_DIR=$WORK/site-a.d/volumes

log "SIGTERM during an import stops the node promptly and leaves no half volume"
held_import cut
stop_node site-a # within STOP_TIMEOUT_S, exit status 0
end_held_import cut
[[ ! -e $VOLUMES_DIR/cut && ! -e $VOLUMES_DIR/cut.creating ]] || fail "SIGTERM left a partial volume: $(ls -la "$VOLUMES_DIR")"
grep -q ' WARN node volume=cut .*error=".*cancelled.*msg="import failed"$' "$WORK/site-a.log" || fail "the node did not log the cancelled import"
start_node site-a
no_half_volume cut
am site-a volume import cut --from "$WORK/source.bin" >/dev/null
cmp <(nbdcopy "$(vol_uri site-a cut)" -) "$WORK/source.bin" || fail "volume cut differs from its source"

log "kill -9 during an import: the next start has no half volume"
held_import crash
kill_node site-a
end_held_import crash
[[ ! -e $VOLUMES_DIR/crash ]] || fail "kill -9 mid-import left a volume under its real name"
[[ -e $VOLUMES_DIR/crash.creating ]] || fail "no unfinished crash.creating after kill -9 (did the import run?)"
start_node site-a
no_half_volume crash
cmp <(nbdcopy "$(vol_uri site-a big)" -) "$WORK/source.bin" || fail "volume big changed across restarts"

stop_node site-a
log "PASS"
