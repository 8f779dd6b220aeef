#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Writes continue while cycles run (interval 1 s) to two targets: a writer loop of
# qemu-io writes (random data, patterns, unaligned, overwriting the same chunks again
# and again) until site-b has applied several cycles that started while it ran (counted,
# not timed). After the writer stops and a final `mirror sync`, every replica == source.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((32 * 1024 * 1024))
CYCLES_DURING_WRITES=${CYCLES_DURING_WRITES:-3}
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

am site-a volume create busy --size 32M --chunk-size 16K >/dev/null
write_random site-a busy 0 $((4 * 1024 * 1024))
am site-a mirror start busy --to site-b,site-c --interval 1s >/dev/null
mirror_sync site-a busy
first_cycle=$(mirror_field site-a busy site-b applied_cycle)

log "writer running until site-b applied $CYCLES_DURING_WRITES cycles meanwhile"
writer() {
  local i=0 uri
  uri=$(vol_uri site-a busy)
  while [[ ! -e $WORK/writer.stop ]]; do
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
b_applied_beyond() {
  kill -0 $writer_pid 2>/dev/null || fail "the writer stopped early"
  (($(mirror_field site-a busy site-b applied_cycle) >= first_cycle + CYCLES_DURING_WRITES))
}
wait_until 120 "site-b to apply $CYCLES_DURING_WRITES cycles after $first_cycle while the writer runs" b_applied_beyond
touch "$WORK/writer.stop"
wait $writer_pid || fail "the writer failed"
log "writer did $(cat "$WORK/writer.count") iterations; cycles applied meanwhile: site-b at $(mirror_field site-a busy site-b applied_cycle)"

mirror_sync site-a busy
compare_replica site-a busy site-b
compare_replica site-a busy site-c
for t in site-b site-c; do mirror_no_error site-a busy $t; done

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
