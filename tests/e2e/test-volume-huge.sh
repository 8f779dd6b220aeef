#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A 64 TiB volume (the largest amirror allows) on the test machine's /tmp file system:
# either it is created sparse and its last 4 KiB can be written and read back over NBD,
# or, where the file system's largest file is smaller (ext4: 16 TiB - 4 KiB), creation
# is refused with an error that names the limit and the way out, and leaves nothing.
# One byte more than 64 TiB is always refused.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd qemu-io

setup_nodes a
start_node a

expect_refusal 1 "exceeds the maximum" a volume create over --size $((64 * 1024 * 1024 * 1024 * 1024 + 512))
if am_try a volume create h --size 64T --chunk-size 4M; then
  log "created a 64 TiB volume on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
  last=$((64 * 1024 * 1024 * 1024 * 1024 - 4096))
  qemu-io -f raw -c "write -q -P 0x5c $last 4k" "$(vol_uri a h)" >/dev/null || fail "write at the end of 64 TiB"
  qemu-io -f raw -c "read -q -P 0x5c $last 4k" "$(vol_uri a h)" >/dev/null || fail "read back at the end of 64 TiB"
  am a volume delete h >/dev/null
else
  grep -q "largest file the file system" "$WORK/last.err" || fail "64 TiB refused without naming the limit: $(cat "$WORK/last.err")"
  grep -q "XFS" "$WORK/last.err" || fail "the refusal does not say the way out: $(cat "$WORK/last.err")"
  log "refused as expected: $(cat "$WORK/last.err")"
  [[ -z $(volume_field a h name) ]] || fail "a refused volume is listed"
  [[ ! -e $WORK/a.d/volumes/h ]] || fail "a refused volume left files: $(ls -la "$WORK/a.d/volumes/h")"
fi
log PASS
