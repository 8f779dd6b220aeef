#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Bulk copies with real clients: nbdcopy a random 256 MiB file into a volume and back
# out, qemu-img convert in and out, qemu-img compare — while freezes and merges run
# every second. Also checks sparse copy-out: a volume with one written MiB copies out
# to a file with (about) one allocated MiB, thanks to base:allocation block status.
source "$(dirname "$0")/lib.sh"
require_cmd nbdcopy qemu-img cmp

SIZE_MIB=256
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/in.raw"
start_serve a --create vol --size ${SIZE_MIB}M --freeze-interval 1s --quiet
URI=$(nbd_uri a vol)

log "nbdcopy in and out"
nbdcopy "$WORK/in.raw" "$URI" || fail "nbdcopy into the volume failed"
nbdcopy "$URI" "$WORK/out.raw" || fail "nbdcopy out of the volume failed"
cmp "$WORK/in.raw" "$WORK/out.raw" || fail "nbdcopy round trip differs"
rm -f "$WORK/out.raw"

log "qemu-img convert in and out, qemu-img compare"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/in2.raw"
qemu-img convert -n -f raw -O raw "$WORK/in2.raw" "$URI" || fail "qemu-img convert into the volume failed"
qemu-img compare -f raw -F raw "$WORK/in2.raw" "$URI" >/dev/null || fail "qemu-img compare: volume differs from source file"
qemu-img convert -f raw -O raw "$URI" "$WORK/out2.raw" || fail "qemu-img convert out of the volume failed"
cmp "$WORK/in2.raw" "$WORK/out2.raw" || fail "qemu-img convert round trip differs"
rm -f "$WORK/in.raw" "$WORK/out2.raw"
stop_serve a

log "sparse copy-out uses block status"
start_serve b --create sparse --size 1G --quiet
SPARSE=$(nbd_uri b sparse)
head -c $((1024 * 1024)) /dev/urandom >"$WORK/mib.raw"
nbdcopy "$WORK/mib.raw" "$SPARSE" || fail "writing one MiB failed"
nbdcopy "$SPARSE" "$WORK/sparse-out.raw" || fail "nbdcopy of a sparse volume failed"
allocated_kib=$(du -k "$WORK/sparse-out.raw" | cut -f1)
((allocated_kib < 64 * 1024)) || fail "sparse volume copied out densely ($allocated_kib KiB allocated for 1 MiB of data)"
cmp -n $((1024 * 1024)) "$WORK/mib.raw" "$WORK/sparse-out.raw" || fail "sparse copy-out: first MiB differs"
cmp <(head -c $((1024 * 1024 * 1024 - 1024 * 1024)) /dev/zero) <(tail -c +$((1024 * 1024 + 1)) "$WORK/sparse-out.raw") ||
  fail "sparse copy-out: the unwritten part is not zero"
stop_serve b
log "PASS"
