#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `mirror verify`: two real nodes over TLS. An exact replica verifies equal (exit 0)
# with only digests on the wire; a replica damaged by hand in its raw file (a chunk of
# garbage, garbage across a chunk boundary, garbage where the source has only zeros, a
# hole where the source has data) verifies different (exit 3) naming exactly those
# chunk ranges, and status stops calling the mirror idle; `--repair` resends them
# (exit 0) and a later verify and a byte comparison agree. Then 4 KiB chunks in a
# consistency group (--group), a target that is down (exit 1, named with the reason),
# and bad input (exit 1, nothing changed). Intervals are 1 h: only sync and verify
# freeze, so replicas hold still while the test damages and inspects them.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd dd fallocate

CHUNK=65536
setup_nodes site-a site-b site-c
start_node site-a
start_node site-b # site-c stays down: an unreachable target

# verify_expect CODE ARGS...: `amirror mirror verify ARGS` on site-a exits CODE; its
# stdout is in $WORK/last.out.
verify_expect() {
  local want=$1 rc=0
  shift
  am_try site-a mirror verify "$@" || rc=$?
  ((rc == want)) || fail "'mirror verify $*' exited $rc, expected $want: $(cat "$WORK/last.out" "$WORK/last.err")"
}
expect_out() {
  grep -qF -- "$1" "$WORK/last.out" || fail "expected '$1' in the output of the last command: $(cat "$WORK/last.out")"
}
# garbage FILE OFFSET LENGTH: random bytes into FILE in place (not via the node).
garbage() {
  head -c "$3" /dev/urandom >"$WORK/garbage.bin"
  dd if="$WORK/garbage.bin" of="$1" bs=1 seek="$2" conv=notrunc status=none || fail "dd into $1 failed"
}
replica_idle() { [[ $(replica_field site-b site-a "$1" state) == idle ]]; }

log "an exact replica verifies equal, sending digests only"
am site-a volume create db --size 16M >/dev/null
write_pattern site-a db 0 192k 0x11        # chunks 0-2
write_random site-a db $((5 * CHUNK)) $((2 * CHUNK))  # chunks 5-6
write_pattern site-a db $((100 * CHUNK)) 4k 0x22      # chunk 100
am site-a mirror start db --to site-b --interval 1h >/dev/null
mirror_sync site-a db
verify_expect 0 db
expect_out "db -> site-b: equal at cycle"
verify_expect 0 db --json
jq -e '.equal == true and (.results | length) == 1 and .results[0].result == "equal" and
       .results[0].target == "site-b" and .results[0].chunks_compared >= 6' "$WORK/last.out" >/dev/null ||
  fail "verify --json of an equal replica: $(cat "$WORK/last.out")"
# Only digests cross: far less than the data compared (6+ chunks, 384 KiB).
sent=$(jq '.results[0].wire_bytes_sent' "$WORK/last.out")
((sent < 16384)) || fail "an equal verify sent $sent bytes to the target; only digests should travel"
[[ $(mirror_field site-a db site-b state) == idle ]] || fail "after an equal verify the mirror is not idle"

log "damage the replica's raw file by hand; verify names exactly those chunks"
wait_until 30 "replica db idle on site-b" replica_idle db
image=$(replica_field site-b site-a db image_path)
image_cycle=$(replica_field site-b site-a db image_cycle)
[[ -f $image && -n $image_cycle ]] || fail "no image_path/image_cycle for db on site-b: $(status_json site-b)"
cp "$image" "$WORK/image-before.raw"
garbage "$image" $((5 * CHUNK + 1000)) 100          # chunk 5: data on both sides
garbage "$image" $((7 * CHUNK - 50)) 100            # chunks 6-7, across the boundary; 7 is zero on the source
garbage "$image" $((200 * CHUNK + 4096)) 512        # chunk 200: zero on the source, allocated now on the replica
fallocate --punch-hole --offset $((100 * CHUNK)) --length $CHUNK "$image"  # chunk 100: data lost
verify_expect 3 db
expect_out "db -> site-b: 3 chunk ranges (5 chunks) differ at cycle"
expect_out "chunks 5-7 (bytes 327680-524287), 100 (bytes 6553600-6619135), 200 (bytes 13107200-13172735)"
expect_out "--repair"
# The verify changed nothing on the replica.
cmp -s "$image" "$WORK/image-before.raw" && fail "the damage is gone before any repair"
[[ $(replica_field site-b site-a db image_cycle) -ge $image_cycle ]] || fail "the replica went back in time"
state=$(mirror_field site-a db site-b state)
[[ $state == differs ]] || fail "status shows the mirror of a damaged replica as '$state', not 'differs'"
mirror_field site-a db site-b last_error | grep -q -- "--repair" ||
  fail "status does not say how to repair: $(mirror_field site-a db site-b last_error)"
verify_expect 3 db --json
jq -e '.equal == false and .results[0].result == "differ" and .results[0].differing_chunks == 5 and
       ([.results[0].differing_ranges[] | [.first_chunk, .last_chunk]] == [[5,7],[100,100],[200,200]])' \
  "$WORK/last.out" >/dev/null || fail "verify --json of the damaged replica: $(cat "$WORK/last.out")"

log "--repair resends those chunks; a later verify and the bytes agree"
verify_expect 0 db --repair
expect_out "repaired 5 chunks"
expect_out "equal now"
verify_expect 0 db
expect_out "db -> site-b: equal at cycle"
compare_replica site-a db site-b
[[ $(mirror_field site-a db site-b state) == idle ]] || fail "after the repair the mirror is not idle"
mirror_no_error site-a db site-b
# Writes and cycles go on normally after a verify.
write_pattern site-a db $((3 * CHUNK)) 4k 0x33
mirror_sync site-a db
compare_replica site-a db site-b

log "4 KiB chunks in a consistency group (--group)"
am site-a volume create small --size 4M --chunk-size 4K --group g >/dev/null
am site-a volume create big --size 8M --group g >/dev/null
write_random site-a small 0 $((64 * 1024))
write_pattern site-a big 0 128k 0x44
am site-a mirror start --group g --to site-b --interval 1h >/dev/null
mirror_sync site-a --group g
verify_expect 0 --group g
expect_out "small -> site-b: equal at cycle"
expect_out "big -> site-b: equal at cycle"
wait_until 30 "replica small idle on site-b" replica_idle small
garbage "$(replica_field site-b site-a small image_path)" $((3 * 4096 + 10)) 20
verify_expect 3 --group g
expect_out "small -> site-b: 1 chunk range (1 chunk) differ at cycle"
expect_out "chunk 3 (bytes 12288-16383)"
expect_out "big -> site-b: equal at cycle"
verify_expect 0 --group g --repair
verify_expect 0 small # one volume of a group mirror
compare_replica site-a small site-b
compare_replica site-a big site-b

log "a target that is down: named, with the reason, exit 1"
am site-a volume create far --size 1M >/dev/null
write_pattern site-a far 0 4k 0x55
am site-a mirror start far --to site-b,site-c --interval 1h >/dev/null
verify_expect 1 far
expect_out "far -> site-b: equal at cycle"
expect_out "far -> site-c: could not verify"
grep -F "far -> site-c" "$WORK/last.out" | grep -qi "connect" ||
  fail "the unreachable target's line does not say why: $(cat "$WORK/last.out")"
verify_expect 1 far --to site-c --json
jq -e '.equal == false and (.results | length) == 1 and .results[0].result == "error" and
       (.results[0].error | test("connect"))' "$WORK/last.out" >/dev/null ||
  fail "verify --json of a down target: $(cat "$WORK/last.out")"
verify_expect 0 far --to site-b

log "bad input: a clear error, exit 1, nothing changed"
am site-a mirror break far >/dev/null # its retries toward site-c would change status meanwhile
am site-a volume create lone --size 1M >/dev/null
snapshot() {
  status_json site-a | jq -S 'del(.volumes[].mirrors[]?.lag_seconds, .volumes[].mirrors[]?.last_error, .storage[].free_bytes)' >"$1"
}
snapshot "$WORK/before.json"
expect_refusal 1 "nosuch" site-a mirror verify nosuch
expect_refusal 1 "not being mirrored" site-a mirror verify lone
expect_refusal 1 "site-z" site-a mirror verify db --to site-z
expect_refusal 1 "not a target" site-a mirror verify db --to site-c
expect_refusal 1 "nogroup" site-a mirror verify --group nogroup
expect_refusal 1 "exactly one" site-a mirror verify db --group g
expect_refusal 1 "exactly one" site-a mirror verify
expect_refusal 2 "timeout" site-a mirror verify db --timeout never
snapshot "$WORK/after.json"
diff -u "$WORK/before.json" "$WORK/after.json" >"$WORK/diff.out" ||
  fail "a refused verify changed the node's state: $(head -30 "$WORK/diff.out")"

stop_node site-a
stop_node site-b
log "PASS"
