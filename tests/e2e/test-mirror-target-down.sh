#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A target down for several cycles catches up while a second target of the same volume
# keeps going: site-a mirrors db to site-b and site-c (interval 1 s). site-c is stopped;
# writes continue; site-b's applied cycle keeps advancing while site-c's stays; a
# `mirror sync` fails (non-zero, naming site-c) while site-c is down. site-c comes back:
# `mirror sync` succeeds and both replicas == source. site-c's catch-up is one coalesced
# delta: it costs about the chunks changed, not one copy per missed cycle.
source "$(dirname "$0")/mirror-lib.sh"

MIB=$((1024 * 1024))
SIZE=$((32 * MIB))
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

am site-a volume create db --size 32M >/dev/null
write_random site-a db 0 $((4 * MIB))
am site-a mirror start db --to site-b,site-c --interval 1s >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b
compare_replica site-a db site-c

log "site-c down; writes and cycles continue with site-b"
stop_node site-c
# a cycle may have reached site-c between the sync and the stop: take site-c's baseline
# once site-b applied a cycle that started after site-c was gone
b_stop=$(mirror_field site-a db site-b applied_cycle)
wait_until 60 "site-b to apply a cycle after $b_stop once site-c is down" \
  bash -c "c=\$(\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq '.volumes[0].mirrors[] | select(.target==\"site-b\") | .applied_cycle'); ((c > $b_stop))"
c_cycle=$(mirror_field site-a db site-c applied_cycle)
c_sent=$(mirror_field site-a db site-c bytes_sent)
b_cycle=$(mirror_field site-a db site-b applied_cycle)
# the same 2 MiB region rewritten in every round: site-c must get it once, coalesced
for round in 1 2 3 4; do
  write_random site-a db $((8 * MIB)) $((2 * MIB))
  write_pattern site-a db $((16 * MIB + round * 65536 + 3)) 1000 $((round + 10))
  b_prev=$(mirror_field site-a db site-b applied_cycle)
  wait_until 60 "site-b to apply a cycle after $b_prev in round $round while site-c is down" \
    bash -c "c=\$(\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq '.volumes[0].mirrors[] | select(.target==\"site-b\") | .applied_cycle'); ((c > $b_prev))"
done
rc=0
"$AMIRROR" mirror sync db --timeout 5s --node "$WORK/site-a.sock" >"$WORK/sync.out" 2>"$WORK/sync.err" || rc=$?
((rc != 0)) || fail "mirror sync succeeded although target site-c is down"
grep -q site-c "$WORK/sync.err" || fail "the failing mirror sync does not name site-c: $(cat "$WORK/sync.err")"
log "mirror sync with site-c down: exit $rc, '$(head -c 200 "$WORK/sync.err")'"
b_now=$(mirror_field site-a db site-b applied_cycle)
c_now=$(mirror_field site-a db site-c applied_cycle)
((b_now >= b_cycle + 4)) || fail "site-b applied only up to cycle $b_now (was $b_cycle) while site-c was down: site-b was stalled"
((c_now == c_cycle)) || fail "site-c's applied cycle moved from $c_cycle to $c_now while site-c was down"
c_err=$(mirror_field site-a db site-c last_error)
[[ -n $c_err ]] || fail "the mirror to site-c reports no last_error while site-c is down"
# site-b's replica is current even though site-c is down
mirror_b_ok() { [[ $(mirror_field site-a db site-b applied_cycle) -gt $b_now ]]; }
wait_until 60 "site-b to keep applying cycles" mirror_b_ok

log "site-c back: catches up"
start_node site-c
mirror_sync site-a db
compare_replica site-a db site-b
compare_replica site-a db site-c
c_after=$(mirror_field site-a db site-c applied_cycle)
((c_after > c_cycle)) || fail "after catching up site-c reports applied cycle $c_after (was $c_cycle when it went down)"
c_delta=$(($(mirror_field site-a db site-c bytes_sent) - c_sent))
changed=$((2 * MIB + 4 * 65536))
log "site-c's catch-up sent $c_delta bytes for $changed bytes of distinct changed chunks"
((c_delta < 2 * changed + MIB)) ||
  fail "site-c's catch-up sent $c_delta bytes for $changed bytes of distinct changed chunks: not coalesced"
mirror_no_error site-a db site-c  # cleared after catching up

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
