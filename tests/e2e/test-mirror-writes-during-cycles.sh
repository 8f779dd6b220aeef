#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Writes continue while cycles run (interval 1 s) to two targets: a writer loop of
# qemu-io writes (random data, patterns, unaligned, overwriting the same chunks again
# and again) for several seconds. After the writer stops and a final `mirror sync`,
# every replica == source. Cycles must have advanced while the writer ran.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((32 * 1024 * 1024))
WRITE_SECONDS=${WRITE_SECONDS:-8}
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

am site-a volume create busy --size 32M --chunk-size 16K >/dev/null
write_random site-a busy 0 $((4 * 1024 * 1024))
am site-a mirror start busy --to site-b,site-c --interval 1s >/dev/null
mirror_sync site-a busy
first_cycle=$(mirror_field site-a busy site-b applied_cycle)

log "writer running for $WRITE_SECONDS s while cycles run"
writer() {
  local i=0 end=$((SECONDS + WRITE_SECONDS)) uri
  uri=$(vol_uri site-a busy)
  while ((SECONDS < end)); do
    i=$((i + 1))
    local off=$(((RANDOM * 32768 + RANDOM) % (SIZE - 200000)))
    head -c 150001 /dev/urandom >"$WORK/w.bin"
    qemu-io -f raw -c "write -q -s $WORK/w.bin $off 150001" \
      -c "write -q -P $((i % 250 + 1)) $(((i % 64) * 16384 + 1000)) 20000" \
      -c "write -q -P $((i % 200 + 3)) $((SIZE - 4096)) 4096" "$uri" >/dev/null ||
      { echo "writer: qemu-io failed at iteration $i" >&2; return 1; }
  done
  echo "$i" >"$WORK/writer.count"
}
writer &
writer_pid=$!
# cycles keep completing while the writer runs (polled, no timing assertion)
wait_until 60 "site-b to apply a cycle after $first_cycle while the writer runs" \
  bash -c "(( \$(\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq '.volumes[0].mirrors[] | select(.target==\"site-b\") | .applied_cycle') > $first_cycle ))"
wait $writer_pid || fail "the writer failed"
log "writer did $(cat "$WORK/writer.count") iterations; cycles applied meanwhile: site-b at $(mirror_field site-a busy site-b applied_cycle)"

mirror_sync site-a busy
compare_replica site-a busy site-b
compare_replica site-a busy site-c
for t in site-b site-c; do
  err=$(mirror_field site-a busy $t last_error)
  [[ -z $err ]] || fail "mirror to $t reports last_error '$err' after a clean run"
done

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
