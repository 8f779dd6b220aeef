#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `volume adopt` / `volume release` on a real block device (root: loop devices,
# mounts, FUSE):
#  1. a loop device carrying ext4 with files is adopted in place; adopting it again,
#     adopting it while mounted, a directory, a missing path and a path inside the data
#     directory are refused (a second adopt by another node names the process holding
#     it), as are resize, delete and release while mirrored;
#  2. it is mirrored to a second node and mounted through nbdfuse + a loop device on
#     the FUSE file, written, unmounted; after `mirror sync` the replica's image passes
#     `fsck.ext4 -fn` and holds the same files (checksums); the replica equals the
#     source byte for byte;
#  3. `volume release`: the original loop device, mounted, shows the last writes;
#  4. kill -9 of the node right after an adopt, and while a release merges (the log
#     line that the merge began): after a restart the volume is adopted with every
#     flushed write, and a second release leaves the file holding exactly them.
source "$(dirname "$0")/mirror-lib.sh"

[[ $(id -u) == 0 ]] || skip "needs root (loop devices, mount, FUSE)"
require_cmd losetup mkfs.ext4 fsck.ext4 nbdfuse mount umount sha256sum
[[ -c /dev/fuse ]] || skip "no /dev/fuse"
losetup -f >/dev/null 2>&1 || skip "no free loop device"

LOOPS=()
MOUNTS=()
NBDFUSE_PID=""
# Unmounts, detaches and stops what this test set up (the node and $WORK: lib.sh).
adopt_cleanup() {
  local rc=$? i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || true; done
  for ((i = ${#LOOPS[@]} - 1; i >= 0; i--)); do losetup -d "${LOOPS[$i]}" 2>/dev/null || true; done
  if [[ -n $NBDFUSE_PID ]]; then
    umount "$WORK/fuse" 2>/dev/null || true
    kill "$NBDFUSE_PID" 2>/dev/null || true
    wait "$NBDFUSE_PID" 2>/dev/null || true
  fi
  return $rc
}
trap 'adopt_cleanup; cleanup' EXIT

attach() { # attach [losetup options] FILE: the loop device in $LOOP (not a subshell: the trap must see it)
  LOOP=$(losetup -f --show "$@") || fail "losetup $* failed"
  LOOPS+=("$LOOP")
}
detach() {
  losetup -d "$1" || fail "losetup -d $1 failed"
  local kept=() d
  for d in "${LOOPS[@]}"; do [[ $d == "$1" ]] || kept+=("$d"); done
  LOOPS=("${kept[@]}")
}
mount_at() { # mount_at DIR ARGS...
  local dir=$1
  shift
  mkdir -p "$dir"
  mount "$@" "$dir" || fail "mount $* $dir failed"
  MOUNTS+=("$dir")
}
unmount() {
  umount "$1" || fail "umount $1 failed"
  local kept=() m
  for m in "${MOUNTS[@]}"; do [[ $m == "$1" ]] || kept+=("$m"); done
  MOUNTS=("${kept[@]}")
}
# manifest DIR: "sha256  relative/path" of every file, sorted.
manifest() { (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum); }

setup_nodes a b
start_node a
start_node b

# --- 1. an ext4 loop device with files; adopt it -----------------------------------
truncate -s 64M "$WORK/disk.img"
attach "$WORK/disk.img"
DISK=$LOOP
mkfs.ext4 -q -F "$DISK" || fail "mkfs.ext4 $DISK failed"
mount_at "$WORK/mnt" "$DISK"
mkdir "$WORK/mnt/before"
for i in 1 2 3; do head -c $((i * 300000 + 17)) /dev/urandom >"$WORK/mnt/before/file$i"; done
echo "written before adopt" >"$WORK/mnt/before/note.txt"
expect_refusal 1 "in use (mounted" a volume adopt disk --path "$DISK"
unmount "$WORK/mnt"

mkdir "$WORK/a-directory"
expect_refusal 1 "not a regular file or a block device" a volume adopt x --path "$WORK/a-directory"
expect_refusal 1 "does not exist" a volume adopt x --path "$WORK/no-such-file"
truncate -s 1M "$WORK/a.d/inside.img"
expect_refusal 1 "inside the node's storage 'default'" a volume adopt x --path "$WORK/a.d/inside.img"
expect_refusal 1 "unknown storage 'fast'" a volume adopt x --path "$DISK" --storage fast

am a volume adopt disk --path "$DISK" >/dev/null
grep -q "nothing else may write it" "$WORK/last.out" || fail "adopt did not warn: $(cat "$WORK/last.out")"
[[ $(volume_field a disk adopted_path) == "$(realpath "$DISK")" ]] || fail "status shows no adopted_path: $(status_json a)"
[[ $(volume_field a disk size_bytes) == $((64 * 1024 * 1024)) ]] || fail "the volume is not the device's size"
[[ ! -e $WORK/a.d/volumes/disk/base.img ]] || fail "adopt copied the device into base.img"
expect_refusal 1 "already adopted by volume 'disk'" a volume adopt disk2 --path "$DISK"
# Another node process: the device's lock names the process holding it.
expect_refusal 1 "already adopted by another amirror volume (held by process ${SERVE_PID[a]}" b volume adopt disk --path "$DISK"
expect_refusal 1 "never resizes" a volume resize disk --size 128M
expect_refusal 1 "volume release disk" a volume delete disk

# --- 2. mirrored, mounted through nbdfuse + loop, written -------------------------
am a mirror start disk --to b --interval 1h >/dev/null
mirror_sync a disk
expect_refusal 1 "mirror break disk" a volume release disk

mkdir -p "$WORK/fuse"
nbdfuse "$WORK/fuse/nbd" "$(vol_uri a disk)" >"$WORK/nbdfuse.log" 2>&1 &
NBDFUSE_PID=$!
wait_until 30 "nbdfuse exposes the volume" test -f "$WORK/fuse/nbd"
attach "$WORK/fuse/nbd"
THROUGH=$LOOP
mount_at "$WORK/mnt" "$THROUGH"
manifest "$WORK/mnt" >"$WORK/manifest-before"
[[ $(wc -l <"$WORK/manifest-before") == 4 ]] || fail "the adopted file system does not show the files: $(cat "$WORK/manifest-before")"
mkdir "$WORK/mnt/during"
for i in 1 2 3 4; do head -c $((i * 250000 + 3)) /dev/urandom >"$WORK/mnt/during/new$i"; done
head -c 100000 /dev/urandom >>"$WORK/mnt/before/file2"  # a change to an old file
rm "$WORK/mnt/before/file1"
manifest "$WORK/mnt" >"$WORK/manifest-after"
unmount "$WORK/mnt"  # writes everything back and flushes
detach "$THROUGH"
umount "$WORK/fuse" || fail "could not unmount nbdfuse"
wait "$NBDFUSE_PID" || true
NBDFUSE_PID=""

mirror_sync a disk
compare_replica a disk b
IMAGE=$(replica_field b a disk image_path)
fsck.ext4 -fn "$IMAGE" >"$WORK/fsck-replica.out" 2>&1 || fail "fsck.ext4 -fn of the replica failed: $(tail "$WORK/fsck-replica.out")"
attach -r "$IMAGE"
REPLICA_LOOP=$LOOP
mount_at "$WORK/replica-mnt" -o ro,noload "$REPLICA_LOOP"
manifest "$WORK/replica-mnt" >"$WORK/manifest-replica"
unmount "$WORK/replica-mnt"
detach "$REPLICA_LOOP"
diff "$WORK/manifest-after" "$WORK/manifest-replica" >"$WORK/diff.out" || fail "the replica's files differ: $(cat "$WORK/diff.out")"

# --- 3. release: the device holds the last writes ---------------------------------
am a mirror break disk >/dev/null
am a volume release disk >/dev/null
grep -q "released volume disk" "$WORK/last.out" || fail "release said: $(cat "$WORK/last.out")"
[[ -z $(volume_field a disk name) ]] || fail "the released volume is still listed"
fsck.ext4 -fn "$DISK" >"$WORK/fsck-disk.out" 2>&1 || fail "fsck.ext4 -fn of the released device failed: $(tail "$WORK/fsck-disk.out")"
mount_at "$WORK/mnt" "$DISK"
manifest "$WORK/mnt" >"$WORK/manifest-released"
unmount "$WORK/mnt"
diff "$WORK/manifest-after" "$WORK/manifest-released" >"$WORK/diff.out" || fail "the released device misses writes: $(cat "$WORK/diff.out")"
# Adoptable again at once: the lock went with the volume.
am a volume adopt disk-again --path "$DISK" >/dev/null
am a volume release disk-again >/dev/null
log "adopt, mirror, write through nbdfuse, release: ok"

# --- 4. kill -9 after an adopt and during a release --------------------------------
head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/plain.img"
cp "$WORK/plain.img" "$WORK/expected.img"
am a volume adopt plain --path "$WORK/plain.img" --chunk-size 4K --group adopted >/dev/null
[[ $(volume_field a plain group) == adopted && $(volume_field a plain chunk_size_bytes) == 4096 ]] ||
  fail "adopt --group/--chunk-size not taken: $(status_json a)"
expect_refusal 1 "already adopted by another amirror volume (held by process ${SERVE_PID[a]}" b volume adopt plain --path "$WORK/plain.img"
kill_node a
start_node a
[[ $(volume_field a plain adopted_path) == "$WORK/plain.img" ]] || fail "the adopt did not survive kill -9: $(status_json a)"
nbdcopy "$(vol_uri a plain)" "$WORK/read.img" && cmp "$WORK/read.img" "$WORK/expected.img" ||
  fail "after kill -9 the adopted volume does not read as the file did"
# Layers to merge: the mirror's cycles merged some into the file already; the last
# write (48 MiB, so the release has a while to merge) stays in the active layer.
# Every write is flushed (acknowledged as durable).
am a mirror start --group adopted --to b --interval 1h >/dev/null
for round in 1 2 3 4; do
  length=$((round < 4 ? 2 * 1024 * 1024 : 48 * 1024 * 1024))
  head -c $length /dev/urandom >"$WORK/chunk.bin"
  offset=$((round * 1500000 + 4096 * round + 7))
  qemu-io -f raw -c "write -q -s $WORK/chunk.bin $offset $length" -c flush "$(vol_uri a plain)" >/dev/null ||
    fail "qemu-io write failed"
  python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); f.write(open(sys.argv[3],'rb').read())" \
    "$WORK/expected.img" "$offset" "$WORK/chunk.bin"
  ((round < 4)) && mirror_sync a --group adopted
done
am a mirror break --group adopted >/dev/null
cmp -s "$WORK/plain.img" "$WORK/expected.img" && fail "the last write reached the adopted file before a merge"
lines_before=$(grep -c "merging every layer" "$WORK/a.log" || true)
"$AMIRROR" volume release plain --node "$WORK/a.sock" >"$WORK/release.out" 2>&1 &
RELEASE_PID=$!
release_began() { (($(grep -c "merging every layer" "$WORK/a.log") > lines_before)); }
wait_until 60 "the release began merging" release_began
kill_node a
wait "$RELEASE_PID" 2>/dev/null || true
start_node a
if [[ -n $(volume_field a plain name) ]]; then
  log "kill -9 came before the release forgot the volume: rolled back"
  # Rolled back: still adopted, nothing lost; release again.
  nbdcopy "$(vol_uri a plain)" "$WORK/read.img" && cmp "$WORK/read.img" "$WORK/expected.img" ||
    fail "after kill -9 mid-release the volume lost writes"
  am a volume release plain >/dev/null
else
  log "kill -9 came after the release forgot the volume"
fi
cmp "$WORK/plain.img" "$WORK/expected.img" || fail "after the release the file does not hold the last writes"
log "kill -9 after adopt and mid-release: ok"
