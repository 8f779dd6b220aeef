#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Planned switchover both ways, two real nodes over TLS, under a running fio writer:
# `mirror switchover db --to site-b` on site-a stops site-a's writes (the writer gets
# EPERM), copies a last cycle, site-b promotes it and mirrors back, and site-a's volume
# becomes site-b's replica with nothing to resend. Checked: roles, `mirror verify`
# equal, the bytes of both sides, the bytes moved by the switch, and the way back.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd fio
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"

setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create db --size 32M --chunk-size 64K >/dev/null
write_random site-a db 0 $((4 * 1024 * 1024))
am site-a mirror start db --to site-b --interval 1s >/dev/null
mirror_sync site-a db

# start_writer NODE: fio writes random blocks to NODE's db until it is stopped or fails.
start_writer() {
  (cd "$WORK" && exec fio --name=writer --ioengine=nbd --uri="$(vol_uri "$1" db)" --rw=randwrite --bs=4k-64k \
    --size=32M --time_based --runtime=600 --iodepth=4 --output="$WORK/fio-$1.out" >/dev/null 2>&1) &
  WRITER=$!
}
stop_writer() { kill "$WRITER" 2>/dev/null || true; wait "$WRITER" 2>/dev/null || true; }
writer_running() { kill -0 "$WRITER" 2>/dev/null; }

log "switchover site-a -> site-b while fio writes to site-a"
start_writer site-a
start_cycle=$(volume_field site-a db cycle)
wait_until 60 "two cycles while fio writes" cycle_at_least site-a db $((start_cycle + 2))
am site-a mirror switchover db --to site-b >"$WORK/switch.out"
log "$(cat "$WORK/switch.out")"
# The writer's next write is refused: fio stops with an error.
wait_until 60 "fio on site-a to stop with an error" bash -c "! kill -0 $WRITER 2>/dev/null"
stop_writer
grep -qi "error\|err=" "$WORK/fio-site-a.out" || log "fio ended: $(tail -3 "$WORK/fio-site-a.out")"
[[ $(volume_field site-b db role) == promoted ]] || fail "site-b's db is not the promoted primary"
wait_until 60 "site-a's db to become site-b's replica" bash -c "[[ \$('$AMIRROR' status --json --node '$WORK/site-a.sock' | jq -r '.replicas[]? | select(.source==\"site-b\" and .volume==\"db\") | .state') == idle ]]"
[[ -z $(volume_field site-a db name) ]] || fail "site-a still lists db as a volume of its own"
mirror_sync site-b db
am site-b mirror verify db >"$WORK/verify.out" || fail "verify after the switchover: $(cat "$WORK/verify.out" "$WORK/last.err")"
compare_replica site-b db site-a
moved=$(mirror_field site-b db site-a bytes_sent)
log "mirroring back after the switchover sent $moved bytes"
((moved <= 16384)) || fail "the switchover moved $moved bytes back to site-a, though site-a had every byte"
out=$(qemu-io -f raw -c "write -P 0x11 0 4k" "$(replica_uri site-a site-b db)" 2>&1) && fail "a write to site-a's replica succeeded"

log "switchover back site-b -> site-a while fio writes to site-b"
start_writer site-b
start_cycle=$(volume_field site-b db cycle)
wait_until 60 "two cycles while fio writes to site-b" cycle_at_least site-b db $((start_cycle + 2))
am site-b mirror switchover db --to site-a >/dev/null
wait_until 60 "fio on site-b to stop with an error" bash -c "! kill -0 $WRITER 2>/dev/null"
stop_writer
[[ $(volume_field site-a db role) == promoted ]] || fail "site-a's db is not the primary again"
wait_until 60 "site-b's db to become site-a's replica" bash -c "[[ \$('$AMIRROR' status --json --node '$WORK/site-b.sock' | jq -r '.replicas[]? | select(.source==\"site-a\" and .volume==\"db\") | .state') == idle ]]"
mirror_sync site-a db
am site-a mirror verify db >/dev/null || fail "verify after switching back failed: $(cat "$WORK/last.err")"
compare_replica site-a db site-b
qemu-io -f raw -c "write -q -P 0x22 0 64k" "$(vol_uri site-a db)" >/dev/null || fail "site-a does not take writes after switching back"
mirror_sync site-a db
compare_replica site-a db site-b

log "refusals: unknown target, not mirrored"
expect_refusal 1 "not mirrored to" site-a mirror switchover db --to site-c
log PASS
