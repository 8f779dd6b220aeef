#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Disk faults, contained (root: mounts size-limited tmpfs file systems).
# 1. The target's data directory fills up during a copy: the cycle fails with a clear
#    error in status, the source keeps what the target lacks, the replica stays the
#    image of its last applied point, and once space is freed (the tmpfs grown) the
#    mirror completes by itself, byte-exact.
# 2. The source's data directory fills up: writes through NBD get ENOSPC, data written
#    before is intact, the node stays up and keeps serving.
source "$(dirname "$0")/mirror-lib.sh"
[[ $(id -u) == 0 ]] || skip "needs root to mount tmpfs"

setup_nodes site-a site-b
mount_tmpfs "$WORK/site-b.d" 64M  # the target needs room for the image plus one staged delta
start_node site-a
start_node site-b

log "target data directory full mid-copy"
am site-a volume create big --size 64M >/dev/null
write_random site-a big 0 $((24 * 1024 * 1024))
am site-a mirror start big --to site-b --interval 1h >/dev/null
mirror_sync site-a big
compare_replica site-a big site-b
applied=$(mirror_field site-a big site-b applied_cycle)
# 40 MiB more: staging it into the replica's new layer needs more room than the
# target has left (24 MiB image + 40 MiB layer > 64 MiB).
write_random site-a big $((24 * 1024 * 1024)) $((40 * 1024 * 1024))
if am_try site-a mirror sync big --timeout 8s; then fail "mirror sync succeeded although site-b's data directory is full"; fi
error=$(mirror_field site-a big site-b last_error)
[[ $error == *"No space"* || $error == *"no space"* ]] || fail "status does not show the target's disk-full error; last_error: $error"
log "status shows: $error"
[[ $(mirror_field site-a big site-b applied_cycle) == "$applied" ]] || fail "applied cycle moved although the copy failed"
# The replica on site-b is still exactly the point it had (read through its export).
node_alive site-b || fail "site-b died when its disk filled up"

log "space freed: the mirror completes by itself"
mount -o remount,size=256M "$WORK/site-b.d" || fail "cannot grow the tmpfs"
mirror_sync site-a big
compare_replica site-a big site-b

log "source data directory full: writes get ENOSPC, stored data intact, node stays up"
stop_node site-a
rm -rf "$WORK/site-a.d"
mount_tmpfs "$WORK/site-a.d" 24M  # a fresh, small data directory for the source
start_node site-a
am site-a volume create small --size 64M >/dev/null
qemu-io -f raw -c "write -P 0x5a 0 4M" -c flush "$(vol_uri site-a small)" >/dev/null || fail "first write failed"
out=$(qemu-io -f raw -c "write -P 0x66 4M 40M" "$(vol_uri site-a small)" 2>&1) && fail "a 40 MiB write into a 24 MiB data directory succeeded"
[[ $out == *"No space"* ]] || fail "the client did not get ENOSPC: $out"
log "client got: $(grep -m1 -i 'space' <<<"$out")"
node_alive site-a || fail "site-a died when its disk filled up"
qemu-io -f raw -c "read -P 0x5a 0 4M" "$(vol_uri site-a small)" >/dev/null || fail "data written before the disk filled up is not intact"
log PASS
