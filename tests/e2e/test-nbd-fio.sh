#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# fio's nbd engine, two jobs at once, random writes of mixed sizes verified with
# crc32c, while the server freezes and merges every second; then a verify-only pass
# after a restart (data survived the freezes, merges and shutdown).
source "$(dirname "$0")/lib.sh"
require_cmd fio
fio --enghelp 2>/dev/null | grep -qw nbd || fail "this fio has no nbd engine"

start_serve a --create vol --size 256M --freeze-interval 1s --quiet
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

run_fio
log "fio randwrite + crc32c verify passed under freeze+merge"
stop_serve a
cycles=$(freeze_cycles a)
((${cycles:-0} >= 2)) || fail "only ${cycles:-0} freeze+merge cycles ran during fio; the test proves nothing"
log "$cycles freeze+merge cycles ran underneath" 
start_serve a --quiet
# Re-verify what the first pass wrote: same seed, verify only.
run_fio --verify_only=1
stop_serve a
log "PASS"
