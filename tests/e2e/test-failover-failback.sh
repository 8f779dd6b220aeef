#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Disaster recovery end to end, two real nodes over TLS, NBD clients:
# 1. site-a mirrors db to site-b, then dies (kill -9) with writes site-b never got;
# 2. site-b promotes its replica (no copy) and takes writes;
# 3. site-a comes back: its mirror to site-b and site-b's new mirror to site-a are both
#    refused as split brain, naming both sides, and change nothing;
# 4. site-a demotes db: site-b's mirror fails back — site-a discards its own writes after
#    the common point and gets only the chunks changed on either side (bytes sent are
#    checked against the bound); the replica equals site-b's volume;
# 5. the original direction comes back by the same steps (demote on b, promote on a),
#    moving about nothing, and site-b's replica equals site-a's volume.
source "$(dirname "$0")/mirror-lib.sh"

CHUNK=65536
setup_nodes site-a site-b
start_node site-a
start_node site-b

log "site-a mirrors db to site-b"
am site-a volume create db --size 16M --chunk-size 64K >/dev/null
write_random site-a db 0 $((8 * 1024 * 1024))
am site-a mirror start db --to site-b --interval 1h >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b
common=$(mirror_field site-a db site-b applied_cycle)
[[ $(volume_field site-a db role) == primary ]] || fail "site-a's db is not shown as primary"

log "site-a takes writes site-b never gets, then dies"
write_pattern site-a db 1M 2M 0x5a   # chunks 16..47 changed after the common point
kill_node site-a

log "site-b promotes its replica and takes writes"
am site-b replica promote site-a/db >"$WORK/promote.out"
grep -q "at cycle $common" "$WORK/promote.out" || fail "promote did not report cycle $common: $(cat "$WORK/promote.out")"
[[ $(volume_field site-b db role) == promoted ]] || fail "site-b's db is not shown as promoted"
[[ -z $(replica_field site-b site-a db state) ]] || fail "the promoted replica is still listed as a replica"
write_pattern site-b db 2M 1M 0x6b   # chunks 32..47: overlaps site-a's lost writes
write_pattern site-b db 12M 64K 0x6c # chunk 192
qemu-io -f raw -c "read -q -P 0x6b 2M 1M" "$(vol_uri site-b db)" >/dev/null || fail "site-b's promoted db did not keep its write"

log "site-a returns: both directions are split brain and refused"
start_node site-a
[[ $(volume_field site-a db role) == primary ]] || fail "site-a's db should still be primary after restart"
wait_until 30 "site-a's mirror to site-b to report split brain" \
  bash -c "'$AMIRROR' status --json --node '$WORK/site-a.sock' | jq -r '.volumes[] | select(.name==\"db\") | .mirrors[0].last_error // \"\"' | grep -q 'split brain'"
am site-b mirror start db --to site-a --interval 1h >/dev/null
wait_until 30 "site-b's mirror to site-a to report split brain" \
  bash -c "'$AMIRROR' status --json --node '$WORK/site-b.sock' | jq -r '.volumes[] | select(.name==\"db\") | .mirrors[0].last_error // \"\"' | grep -q 'split brain'"
error=$(mirror_field site-b db site-a last_error)
[[ $error == *"db"* && $error == *"site-b"* && $error == *"demote"* ]] || fail "the split-brain error does not say what to do: $error"
log "refused: $error"
qemu-io -f raw -c "read -q -P 0x5a 1M 1M" "$(vol_uri site-a db)" >/dev/null || fail "the refusal changed site-a's data"

log "site-a demotes db: failback to site-b's data"
expect_refusal 1 "mirror break db" site-a volume demote db
am site-a mirror break db >/dev/null
am site-a volume demote db >/dev/null
# site-b's mirror retries on its own backoff: the failback may already have turned the
# demoted volume into the replica site-b/db by the time status is read.
demoted_or_taken_over() {
  [[ $(volume_field site-a db role) == demoted || -n $(replica_field site-a site-b db applied_cycle) ]]
}
demoted_or_taken_over || fail "site-a's db is not shown as demoted: $(status_json site-a)"
out=$(qemu-io -f raw -c "write -P 0x11 0 4k" "$(vol_uri site-a db)" 2>&1) && fail "a write to the demoted volume succeeded"
log "a write to the demoted volume: $(grep -m1 -io 'operation not permitted\|read-only\|permission' <<<"$out" || echo "$out" | head -1)"
mirror_sync site-b db
compare_replica site-b db site-a
sent=$(mirror_field site-b db site-a bytes_sent)
# Changed on either side since the common point: site-a chunks 16..47, site-b 32..47 and
# 192 -> 33 chunks. Frames add a few dozen bytes per chunk.
changed_bytes=$((33 * CHUNK))
limit=$((changed_bytes * 105 / 100 + 33 * 128 + 4096))
log "failback sent $sent bytes for $changed_bytes bytes of changed chunks (limit $limit)"
((sent <= limit)) || fail "failback sent $sent bytes, more than $limit"
((sent >= changed_bytes)) || fail "failback sent only $sent bytes; site-a's own writes cannot all have been overwritten"
grep -Eq ' WARN node volume=db .*discarded_bytes=[0-9]+ msg="failback: ' "$WORK/site-a.log" || fail "site-a did not report how many bytes of its writes were discarded"
log "site-a says: $(grep -m1 'discarded_bytes=' "$WORK/site-a.log")"
[[ $(replica_field site-a site-b db state) == idle ]] || fail "site-a's replica of site-b/db is not idle"

log "switch back: site-b demotes, site-a promotes and mirrors again"
write_pattern site-b db 5M 64K 0x7d
mirror_sync site-b db
am site-b mirror break db >/dev/null
am site-b volume demote db >/dev/null
am site-a replica promote site-b/db >/dev/null
[[ $(volume_field site-a db role) == promoted ]] || fail "site-a's db is not promoted"
am site-a mirror start db --to site-b --interval 1h >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b
back=$(mirror_field site-a db site-b bytes_sent)
log "switching back sent $back bytes"
((back <= 4096)) || fail "switching back sent $back bytes although nothing changed since the last common point"
qemu-io -f raw -c "read -q -P 0x7d 5M 64K" "$(vol_uri site-a db)" >/dev/null || fail "site-b's last write is missing on site-a"
log PASS
