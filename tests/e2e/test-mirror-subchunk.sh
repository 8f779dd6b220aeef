#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sub-chunk dirty tracking (docs/formats/wire.md, partial CHUNK records), over real TCP
# with TLS and real NBD writes: after the initial sync, 4 KiB random writes through NBD
# into a volume with the default 64 KiB chunks cost about what was written, not a whole
# chunk per write:
#  - the replica equals the source byte for byte after the sync;
#  - bytes_sent for the cycle is <= 1.05x the 4 KiB sectors written (framing included)
#    and well below chunks touched x 64 KiB (< 1/4: a whole chunk each would be 16x);
#  - after the source node restarts, its layers still know their sectors (layer map
#    format 2): the cycle written before the restart ships only its sectors too.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((64 * 1024 * 1024))
WRITES=300
setup_nodes site-a site-b
for n in site-a site-b; do start_node "$n"; done
sent() { mirror_field site-a db site-b bytes_sent; }

am site-a volume create db --size 64M >/dev/null
[[ $(volume_field site-a db chunk_size_bytes) == 65536 ]] || fail "the default chunk size is not 64 KiB"
write_random site-a db 0 $((16 * 1024 * 1024))
am site-a mirror start db --to site-b --interval 1h --compress off >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b

# random_writes SEED: WRITES writes of 4 KiB at random 4 KiB-aligned offsets, one qemu-io
# connection; prints "<distinct sectors> <distinct chunks>".
random_writes() {
  python3 - "$1" "$WRITES" "$SIZE" >"$WORK/writes.txt" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[1]))
count, size = int(sys.argv[2]), int(sys.argv[3])
sectors = [rng.randrange(size // 4096) for _ in range(count)]
for s in sectors:
    print(f"write -q -P {rng.randrange(1, 256)} {s * 4096} 4k")
print(f"# {len(set(sectors))} {len({s // 16 for s in sectors})}")
PY
  local args=()
  while read -r line; do [[ $line == "#"* ]] || args+=(-c "$line"); done <"$WORK/writes.txt"
  qemu-io -f raw "${args[@]}" "$(vol_uri site-a db)" >/dev/null 2>"$WORK/qemu-io.err" ||
    fail "qemu-io random 4 KiB writes failed: $(cat "$WORK/qemu-io.err")"
  grep '^#' "$WORK/writes.txt" | cut -c3-
}

log "$WRITES random 4 KiB writes through NBD, then one cycle"
before=$(sent)
read -r sectors chunks < <(random_writes 11)
mirror_sync site-a db
compare_replica site-a db site-b
cycle_bytes=$(($(sent) - before))
written=$((sectors * 4096))
log "cycle sent $cycle_bytes bytes for $written bytes written ($sectors sectors in $chunks chunks; whole chunks: $((chunks * 65536)))"
((cycle_bytes * 100 <= written * 105)) || fail "the cycle sent $cycle_bytes bytes, more than 1.05x the $written bytes written"
((cycle_bytes * 4 < chunks * 65536)) || fail "the cycle sent $cycle_bytes bytes, not well below whole chunks ($((chunks * 65536)))"

log "after a source restart the layers still ship only their sectors"
read -r sectors chunks < <(random_writes 12)
before=$(sent)  # saved at stop; the restarted node may resume the mirror with a cycle at once
stop_node site-a
start_node site-a
mirror_sync site-a db
compare_replica site-a db site-b
cycle_bytes=$(($(sent) - before))
((cycle_bytes * 100 <= sectors * 4096 * 105)) || fail "after a restart the cycle sent $cycle_bytes bytes for $((sectors * 4096)) written (whole chunks: $((chunks * 65536)))"

log "and so is the next cycle"
read -r sectors chunks < <(random_writes 13)
before=$(sent)
mirror_sync site-a db
compare_replica site-a db site-b
cycle_bytes=$(($(sent) - before))
((cycle_bytes * 100 <= sectors * 4096 * 105)) || fail "the cycle after the restart sent $cycle_bytes bytes for $((sectors * 4096)) written"
am site-a mirror verify db >/dev/null

for n in site-a site-b; do stop_node "$n"; done
log "PASS"
