#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Replicas on block devices (`[[peers]] replica_device_dir`; root: loop devices).
# Target b keeps a's replicas of VOLUME on $WORK/devs/VOLUME, a symlink to a loop
# device over a file pre-filled with 0xAB:
#  1. v (8 MiB) on a 10 MiB device: after the first full copy the device's first 8 MiB
#     equal the source (the pre-filled bytes where the source is zero became zeros),
#     the last 2 MiB still hold 0xAB, status shows the device as image_path; again after
#     an incremental change and after a grow to 9 MiB (tail from 9 MiB untouched);
#  2. a grow to 12 MiB, past the device: the mirror's last_error names the device and
#     the size needed;
#  3. w (8 MiB) on a 4 MiB device, and x with no device: refused, last_error says why;
#  4. `replica delete a/v` leaves the device's content as it was and releases it.
source "$(dirname "$0")/mirror-lib.sh"

[[ $(id -u) == 0 ]] || skip "needs root (loop devices)"
require_cmd losetup python3 dd
losetup -f >/dev/null 2>&1 || skip "no free loop device"

LOOPS=()
device_cleanup() {
  local rc=$? i
  # The nodes hold the devices open; lib.sh's cleanup would stop them only after.
  for name in "${!SERVE_PID[@]}"; do kill -KILL "${SERVE_PID[$name]}" 2>/dev/null || true; done
  for name in "${!SERVE_PID[@]}"; do wait "${SERVE_PID[$name]}" 2>/dev/null || true; done
  for ((i = ${#LOOPS[@]} - 1; i >= 0; i--)); do losetup -d "${LOOPS[$i]}" 2>/dev/null || true; done
  return $rc
}
trap 'device_cleanup; cleanup' EXIT

MiB=$((1024 * 1024))
# device NAME SIZE_MIB: a loop device over a file of 0xAB bytes, linked as $WORK/devs/NAME.
device() {
  local file=$WORK/$1.backing loop
  python3 -c "import sys; sys.stdout.buffer.write(b'\xab' * ($2 * $MiB))" >"$file"
  loop=$(losetup -f --show "$file") || fail "losetup $file failed"
  LOOPS+=("$loop")
  mkdir -p "$WORK/devs"
  ln -s "$loop" "$WORK/devs/$1"
  DEV=$loop
}
# device_equals VOL DEV SIZE DEVICE_SIZE: DEV's first SIZE bytes equal those of a's VOL
# (which may be longer), and the rest of DEV still holds 0xAB.
device_equals() {
  local vol=$1 dev=$2 size=$3 device_size=$4
  rm -f "$WORK/source.raw"
  nbdcopy "$(vol_uri a "$vol")" "$WORK/source.raw" || fail "nbdcopy of a:$vol failed"
  (($(stat -c %s "$WORK/source.raw") >= size)) || fail "a:$vol is $(stat -c %s "$WORK/source.raw") bytes, less than $size"
  cmp -n "$size" "$WORK/source.raw" "$dev" >"$WORK/cmp.out" 2>&1 ||
    fail "the first $size bytes of $dev differ from a:$vol: $(head -c 300 "$WORK/cmp.out")"
  python3 - "$dev" "$size" "$device_size" <<'EOF' || fail "the tail of $dev past $size bytes changed"
import sys
dev, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(dev, "rb") as f:
    f.seek(start)
    tail = f.read(end - start)
sys.exit(0 if tail == b"\xab" * (end - start) else 1)
EOF
}
# mirror_error_says SRC VOL TGT TEXT: the mirror's last_error contains TEXT.
mirror_error_says() { [[ $(mirror_field "$1" "$2" "$3" last_error) == *"$4"* ]]; }

setup_nodes a b
echo "replica_device_dir = \"$WORK/devs\"" >>"$WORK/b.toml" # b's last table is [[peers]] a
device v 10
DEV_V=$DEV
start_node a
start_node b

log "1. first full copy onto a 10 MiB device"
am a volume create v --size 8M >/dev/null
write_random a v 0 $((3 * MiB))
write_pattern a v $((6 * MiB)) 64k 0x11
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
[[ $(replica_field b a v image_path) == "$DEV_V" ]] ||
  fail "image_path of replica a/v is '$(replica_field b a v image_path)', not $DEV_V"
[[ ! -e $WORK/b.d/replicas/a/v/base.img ]] || fail "the replica on a device has a base.img too"
device_equals v "$DEV_V" $((8 * MiB)) $((10 * MiB))

log "incremental change"
write_pattern a v $((5 * MiB)) 64k 0x5c
write_random a v $((8 * MiB - 4096)) 4096
mirror_sync a v
device_equals v "$DEV_V" $((8 * MiB)) $((10 * MiB))

log "grow to 9 MiB, within the device"
am a volume resize v --size 9M >/dev/null
write_pattern a v $((8 * MiB + 4096)) 4k 0x77
mirror_sync a v
device_equals v "$DEV_V" $((9 * MiB)) $((10 * MiB))

log "2. grow to 12 MiB, past the device"
am a volume resize v --size 12M >/dev/null
if am_try a mirror sync v --timeout 5s; then fail "a sync to a replica larger than its device succeeded"; fi
wait_until 60 "a's mirror v -> b names $DEV_V and 12 MiB" mirror_error_says a v b "$DEV_V"
error=$(mirror_field a v b last_error)
[[ $error == *"12582912 bytes"* ]] || fail "last_error does not say the size needed: $error"
log "status shows: $error"
device_equals v "$DEV_V" $((9 * MiB)) $((10 * MiB))

log "3. a device too small, and none"
device w 4
DEV_W=$DEV
am a volume create w --size 8M >/dev/null
write_pattern a w 0 64k 0x22
am a mirror start w --to b --interval 1h >/dev/null
if am_try a mirror sync w --timeout 5s; then fail "a sync onto a 4 MiB device for an 8 MiB volume succeeded"; fi
wait_until 60 "a's mirror w -> b names $DEV_W" mirror_error_says a w b "$DEV_W"
error=$(mirror_field a w b last_error)
[[ $error == *"8388608 bytes"* ]] || fail "last_error does not say the size needed: $error"
log "status shows: $error"
[[ -z $(replica_field b a w state) ]] || fail "b keeps a replica a/w although it was refused"
am a volume create x --size 4M >/dev/null
am a mirror start x --to b --interval 1h >/dev/null
if am_try a mirror sync x --timeout 5s; then fail "a sync without a device succeeded"; fi
wait_until 60 "a's mirror x -> b says the device is missing" mirror_error_says a x b "$WORK/devs/x ([[peers]] replica_device_dir of a), which does not exist"

log "4. replica delete leaves the device as it is"
am a mirror break v >/dev/null
am b replica delete a/v >/dev/null
[[ -z $(replica_field b a v state) ]] || fail "replica a/v still listed after delete"
[[ -b $DEV_V ]] || fail "$DEV_V is gone after replica delete"
# O_EXCL succeeds once no one claims it (the replica's volume closed with the delete).
unclaimed() { python3 -c 'import os, sys; os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL))' "$1" 2>/dev/null; }
wait_until 30 "$DEV_V released by b" unclaimed "$DEV_V"
device_equals v "$DEV_V" $((9 * MiB)) $((10 * MiB))
log "ok"
