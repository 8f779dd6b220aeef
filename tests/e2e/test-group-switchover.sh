#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `mirror switchover --group G --to PEER`: a consistency group of two volumes (64 KiB
# and 4 KiB chunks) switches over both ways under a running fio writer on one member:
# the writer's writes are held during the last cycle and then refused; site-b promotes
# every member at the final cycle (one group, mirrored back as a group); site-a's
# members become site-b's replicas with nothing to resend. Checked: roles, group, bytes
# of every member on both sides, `mirror verify --group`, the bytes moved back, and
# that a group member cannot be switched over alone.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd fio
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"

setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create g1 --size 16M --chunk-size 64K --group prod >/dev/null
am site-a volume create g2 --size 4M --chunk-size 4K --group prod >/dev/null
write_random site-a g1 0 $((2 * 1024 * 1024))
write_random site-a g2 4096 $((1024 * 1024))
am site-a mirror start --group prod --to site-b --interval 1s >/dev/null
mirror_sync site-a --group prod

start_writer() {
  (cd "$WORK" && exec fio --name=writer --ioengine=nbd --uri="$(vol_uri "$1" g1)" --rw=randwrite --bs=4k-64k \
    --size=16M --time_based --runtime=600 --iodepth=4 --output="$WORK/fio-$1.out" >/dev/null 2>&1) &
  WRITER=$!
}
stop_writer() { kill "$WRITER" 2>/dev/null || true; wait "$WRITER" 2>/dev/null || true; }
replica_idle() {
  [[ $("$AMIRROR" status --json --node "$WORK/$1.sock" | jq -r ".replicas[]? | select(.source==\"$2\" and .volume==\"$3\") | .state") == idle ]]
}

expect_refusal 1 "group" site-a mirror switchover g1 --to site-b

log "group switchover site-a -> site-b while fio writes to g1"
start_writer site-a
start_cycle=$(volume_field site-a g1 cycle)
wait_until 60 "two cycles while fio writes" cycle_at_least site-a g1 $((start_cycle + 2))
am site-a mirror switchover --group prod --to site-b >"$WORK/switch.out"
log "$(cat "$WORK/switch.out")"
wait_until 60 "fio on site-a to stop with an error" bash -c "! kill -0 $WRITER 2>/dev/null"
stop_writer
for v in g1 g2; do
  [[ $(volume_field site-b $v role) == promoted ]] || fail "site-b's $v is not the promoted primary"
  [[ $(volume_field site-b $v group) == prod ]] || fail "site-b's $v is not in group prod"
  wait_until 60 "site-a's $v to become site-b's replica" replica_idle site-a site-b $v
  [[ -z $(volume_field site-a $v name) ]] || fail "site-a still lists $v as a volume of its own"
done
mirror_sync site-b --group prod
am site-b mirror verify --group prod >"$WORK/verify.out" || fail "verify after the switchover: $(cat "$WORK/verify.out" "$WORK/last.err")"
for v in g1 g2; do
  compare_replica site-b $v site-a
  moved=$(mirror_field site-b $v site-a bytes_sent)
  log "mirroring $v back after the switchover sent $moved bytes"
  ((moved <= 16384)) || fail "the switchover moved $moved bytes of $v back to site-a, though site-a had every byte"
done

log "group switchover back site-b -> site-a"
write_random site-b g2 0 65536
am site-b mirror switchover --group prod --to site-a >/dev/null
for v in g1 g2; do
  [[ $(volume_field site-a $v role) == promoted ]] || fail "site-a's $v is not the primary again"
  wait_until 60 "site-b's $v to become site-a's replica" replica_idle site-b site-a $v
done
mirror_sync site-a --group prod
am site-a mirror verify --group prod >/dev/null || fail "verify after switching back failed: $(cat "$WORK/last.err")"
for v in g1 g2; do compare_replica site-a $v site-b; done
qemu-io -f raw -c "write -q -P 0x22 0 64k" "$(vol_uri site-a g2)" >/dev/null || fail "site-a does not take writes after switching back"
log PASS
