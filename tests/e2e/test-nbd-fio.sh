#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# fio's nbd engine, two jobs at once, random writes of mixed sizes verified with
# crc32c, while the server freezes and merges every 100 ms; fio passes repeat until at
# least $MIN_CYCLES freezes happened while fio ran (counted, so the test proves the same
# on a fast machine as on a slow one); then a verify-only pass after a restart (data
# survived the freezes, merges and shutdown).
source "$(dirname "$0")/lib.sh"
require_cmd fio
fio --enghelp 2>/dev/null | grep -qw nbd || fail "this fio has no nbd engine"

MIN_CYCLES=4
MAX_PASSES=50
start_serve a --create vol --size 256M --freeze-interval 100ms --quiet
URI=$(nbd_uri a vol)

# Each job owns its own half (offset_increment) so verification is well defined.
run_fio() {  # run_fio EXTRA_ARGS... (from $WORK: fio writes its verify state files into the cwd)
  cd "$WORK" || fail "cannot enter $WORK"
  fio --name=verify --ioengine=nbd --uri="$URI" --numjobs=2 --size=128M \
    --offset_increment=128M --rw=randwrite --bsrange=512-16k --iodepth=8 \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting \
    --output="$WORK/fio.out" "$@" || fail "fio reported an error: $(grep -m5 -i 'err\|verify' "$WORK/fio.out")"
  grep -q 'err= 0' "$WORK/fio.out" || fail "fio job errors: $(grep -m3 'err=' "$WORK/fio.out")"
}

# Every pass writes the same data (fio's default randrepeat), so the restart's
# verify-only pass checks the last one.
cycles_during_fio=0
for ((pass = 1; cycles_during_fio < MIN_CYCLES; pass++)); do
  ((pass <= MAX_PASSES)) || fail "only $cycles_during_fio freezes ran during $MAX_PASSES fio passes; the test proves nothing"
  before=$(volume_cycle a vol)
  run_fio
  after=$(volume_cycle a vol)
  cycles_during_fio=$((cycles_during_fio + after - before))
done
log "fio randwrite + crc32c verify passed in $((pass - 1)) passes, $cycles_during_fio freezes underneath"
stop_serve a
cycles=$(freeze_cycles a)
((${cycles:-0} >= MIN_CYCLES)) || fail "the server reports ${cycles:-0} freeze+merge cycles, fewer than the $cycles_during_fio counted"
start_serve a --quiet
# Re-verify what the first pass wrote: same seed, verify only.
run_fio --verify_only=1
stop_serve a
log "PASS"
