#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `mirror break`, more writes, `mirror start`: the next cycle ships only the changed
# chunks, no full resync. Asserted on bytes_sent in `status --json`: it grows by about
# the changed bytes (< 2x changed + framing), far less than the volume or its data.
source "$(dirname "$0")/mirror-lib.sh"

CHUNK=65536
setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create db --size 64M >/dev/null
# A second mirror with the same short interval keeps running: its cycles are the clock
# against which "db ran no cycle while broken" is counted.
am site-a volume create tick --size 1M >/dev/null
write_random site-a db 0 $((16 * 1024 * 1024))
am site-a mirror start db --to site-b --interval 2s >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b
sent0=$(mirror_field site-a db site-b bytes_sent)
((sent0 >= 16 * 1024 * 1024)) || fail "initial sync of 16 MiB of data reports only $sent0 bytes sent"
((sent0 < 17 * 1024 * 1024)) || fail "initial sync of 16 MiB of data (rest unallocated) sent $sent0 bytes"

log "break, write 3 chunks, start again"
am site-a mirror break db >/dev/null
# an empty cycle may have run between the sync and the break: count from here
sent_at_break=$(mirror_field site-a db site-b bytes_sent)
[[ -n $sent_at_break ]] || fail "after mirror break, status --json has no bytes_sent for db -> site-b: $(status_json site-a)"
sent0=$sent_at_break
cycle_at_break=$(volume_field site-a db cycle)
[[ -n $cycle_at_break ]] || fail "status --json has no cycle for volume db"
state=$(mirror_field site-a db site-b state)
[[ $state == stopped ]] || fail "after mirror break the mirror reports state '$state', not 'stopped'"
am site-a mirror start tick --to site-b --interval 2s >/dev/null
write_random site-a db $((5 * CHUNK)) $CHUNK                  # one whole chunk
write_pattern site-a db $((40 * CHUNK + 100)) 1000 0x77         # part of a chunk
write_pattern site-a db $((500 * CHUNK + 7)) 100 0x78           # a chunk never written before
# the replica must not have changed while the mirror was broken
if qemu-img compare -q -f raw -F raw "$(vol_uri site-a db)" "$(replica_uri site-b site-a db)" 2>/dev/null; then
  fail "replica already equals the source after mirror break + writes"
fi
# While `tick` (same interval) applies two more cycles, the broken mirror of db runs none.
tick_applied() { mirror_field site-a tick site-b applied_cycle; }
tick_reached() {
  local applied
  applied=$(tick_applied)
  [[ -n $applied ]] && ((applied >= $1))
}
wait_until 120 "the mirror of tick to apply its first cycle" tick_reached 1
tick0=$(tick_applied)
tick_min=$((${tick0:-0} + 2))
wait_until 120 "the mirror of tick to apply cycle $tick_min" tick_reached "$tick_min"
cycle_now=$(volume_field site-a db cycle)
((cycle_now == cycle_at_break)) || fail "volume db was frozen (cycle $cycle_at_break -> $cycle_now) while its mirror was broken"
sent_break=$(mirror_field site-a db site-b bytes_sent)
[[ -n $sent_break ]] || fail "status --json lost bytes_sent for db -> site-b while broken"
((sent_break == sent_at_break)) || fail "bytes_sent moved from $sent_at_break to $sent_break while the mirror was broken"
am site-a mirror start db --to site-b --interval 2s >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b
sent1=$(mirror_field site-a db site-b bytes_sent)
delta=$((sent1 - sent0))
# One whole chunk, and the 4 KiB dirty sector of each partly written chunk (only the
# dirty sectors of a chunk are shipped: docs/formats/wire.md, partial records).
changed=$((CHUNK + 2 * 4096))
log "bytes_sent $sent0 -> $sent1 (+$delta) for 3 changed chunks ($changed bytes in their dirty sectors)"
((delta >= changed)) || fail "resume sent $delta bytes, less than the changed sectors of 3 chunks ($changed bytes)"
((delta < 2 * changed + 64 * 1024)) || fail "resume after break sent $delta bytes for 3 changed chunks ($changed bytes): not incremental"

log "an idle sync ships (almost) nothing; a one-chunk change ships about one chunk"
mirror_sync site-a db
sent2=$(mirror_field site-a db site-b bytes_sent)
((sent2 - sent1 < 16 * 1024)) || fail "a sync with no changes sent $((sent2 - sent1)) bytes"
write_pattern site-a db $((100 * CHUNK)) 4096 0x99
mirror_sync site-a db
sent3=$(mirror_field site-a db site-b bytes_sent)
((sent3 - sent2 < 2 * CHUNK + 16 * 1024)) || fail "a one-chunk change sent $((sent3 - sent2)) bytes"
compare_replica site-a db site-b

log "bytes_sent persists across a restart of the source"
stop_node site-a
start_node site-a
sent4=$(mirror_field site-a db site-b bytes_sent)
((sent4 >= sent3)) || fail "bytes_sent went from $sent3 to $sent4 across a restart (must persist)"

stop_node site-a
stop_node site-b
log "PASS"
