#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Storage pools (root: mounts size-limited tmpfs file systems).
# 1. site-a has pools p1 (16 MiB) and p2 (128 MiB) beside its data directory; a
#    consistency group spans both and is mirrored to site-b, whose [[peers]] storage
#    puts site-a's replicas on a third pool. Status names each volume's pool and each
#    pool's space; `--storage NOPE` is refused and changes nothing.
# 2. p1 fills up through NBD writes: only its volume gets ENOSPC; the volumes on p2
#    take writes, and one mirrored alone keeps mirroring. Once p1 grows, the group
#    mirrors again, byte-exact.
# 3. A pool missing at start (unmounted: an empty mount point where volumes were kept;
#    then no directory at all): the node runs, that pool's volumes are failed with the
#    reason, the others serve.
source "$(dirname "$0")/mirror-lib.sh"
[[ $(id -u) == 0 ]] || skip "needs root to mount tmpfs"

MiB=$((1024 * 1024))

setup_nodes site-a site-b
mount_tmpfs "$WORK/p1" 16M
mount_tmpfs "$WORK/p2" 128M
mount_tmpfs "$WORK/rep" 256M
printf '\n[[storage]]\nname = "p1"\npath = "%s"\n\n[[storage]]\nname = "p2"\npath = "%s"\n' \
  "$WORK/p1" "$WORK/p2" >>"$WORK/site-a.toml"
# site-b.toml ends in its only [[peers]] table (site-a): storage goes into it.
printf 'storage = "rep"\n\n[[storage]]\nname = "rep"\npath = "%s"\n' "$WORK/rep" >>"$WORK/site-b.toml"
start_node site-a
start_node site-b

log "create in pools; an unknown pool is refused and changes nothing"
expect_refusal 1 "unknown storage 'NOPE'; this node has: default, p1, p2" site-a volume create x --size 1M --storage NOPE
[[ $(status_json site-a | jq '.volumes | length') == 0 ]] || fail "a refused create left a volume behind"
am site-a volume create g1 --size 64M --group g --storage p1 | grep -q "in storage p1" || fail "create does not name the pool"
am site-a volume create g2 --size 32M --group g --storage p2 >/dev/null
am site-a volume create solo --size 8M --storage p2 >/dev/null
am site-a volume create plain --size 8M >/dev/null
head -c $((2 * MiB)) /dev/urandom >"$WORK/image.raw"
am site-a volume import imported --from "$WORK/image.raw" --storage p2 >/dev/null
[[ -d $WORK/p2/volumes/imported ]] || fail "volume import --storage p2 did not put the volume in p2"
nbdcopy "$(vol_uri site-a imported)" "$WORK/imported.raw" && cmp "$WORK/image.raw" "$WORK/imported.raw" ||
  fail "the imported volume differs from its file"
am site-a volume delete imported >/dev/null
[[ ! -e $WORK/p2/volumes/imported ]] || fail "volume delete left the volume in p2"
[[ $(jq -r '.volumes.imported // "gone"' "$WORK/site-a.d/storage.json") == gone ]] ||
  fail "the storage catalog still names the deleted volume: $(cat "$WORK/site-a.d/storage.json")"
expect_refusal 1 "volume 'g1' already exists" site-a volume create g1 --size 1M --storage p2
for pair in g1:p1 g2:p2 solo:p2 plain:default; do
  [[ $(volume_field site-a "${pair%%:*}" storage) == "${pair#*:}" ]] || fail "volume ${pair%%:*} is not shown in storage ${pair#*:}"
done
[[ -d $WORK/p1/volumes/g1 && -d $WORK/p2/volumes/g2 && -d $WORK/site-a.d/volumes/plain ]] ||
  fail "volumes are not in their pools' directories"
status_json site-a | jq -e --arg p1 "$WORK/p1" '[.storage[] | select(.name == "p1")][0] |
  .path == $p1 and .state == "ok" and .total_bytes == 16777216 and .free_bytes > 0' >/dev/null ||
  fail "status does not show pool p1's path and space: $(status_json site-a | jq -c .storage)"
am site-a status | grep -q "^storage p2  $WORK/p2  .* free of 128" || fail "text status does not show the pools: $(cat "$WORK/last.out")"

log "adopt with --storage: the layers go to the pool, the file stays where it is"
head -c $((2 * MiB)) /dev/urandom >"$WORK/adopted.raw"
cp "$WORK/adopted.raw" "$WORK/adopted-expected.raw"
am site-a volume adopt borrowed --path "$WORK/adopted.raw" --storage p2 >/dev/null
[[ $(volume_field site-a borrowed storage) == p2 && -d $WORK/p2/volumes/borrowed ]] ||
  fail "volume adopt --storage p2 did not put the volume in p2"
[[ ! -e $WORK/p2/volumes/borrowed/base.img ]] || fail "adopt copied the file into p2"
expect_refusal 1 "inside the node's storage 'p2'" site-a volume adopt x --path "$WORK/p2/volumes/borrowed/volume.meta"
write_pattern site-a borrowed $MiB 64K 0x5a
head -c 65536 /dev/zero | tr '\0' 'Z' | dd of="$WORK/adopted-expected.raw" bs=64K seek=16 conv=notrunc status=none
am site-a volume release borrowed >/dev/null
cmp "$WORK/adopted.raw" "$WORK/adopted-expected.raw" || fail "the released file does not hold the last writes"
[[ ! -e $WORK/p2/volumes/borrowed && $(jq -r '.volumes.borrowed // "gone"' "$WORK/site-a.d/storage.json") == gone ]] ||
  fail "volume release left the volume in p2 or in the catalog"

log "a group spanning two pools mirrors to site-b, whose replicas go to its pool 'rep'"
write_random site-a g1 0 $((4 * MiB))
write_random site-a g2 $((3 * MiB)) $((2 * MiB))
write_random site-a solo 0 $((1 * MiB))
am site-a mirror start --group g --to site-b --interval 1h >/dev/null
am site-a mirror start solo --to site-b --interval 1h >/dev/null
mirror_sync site-a --group g
mirror_sync site-a solo
compare_replica site-a g1 site-b
compare_replica site-a g2 site-b
[[ $(replica_field site-b site-a g1 image_path) == "$WORK/rep/replicas/site-a/g1/"* ]] ||
  fail "the replica is not in site-b's pool rep: $(replica_field site-b site-a g1 image_path)"

log "p1 fills up: only its volume gets ENOSPC"
out=$(qemu-io -f raw -c "write -P 0x66 8M 24M" "$(vol_uri site-a g1)" 2>&1) && fail "a 24 MiB write into the 16 MiB pool p1 succeeded"
[[ $out == *"No space"* ]] || fail "the client did not get ENOSPC: $out"
log "client got: $(grep -m1 -i 'space' <<<"$out")"
free=$(status_json site-a | jq '.storage[] | select(.name == "p1") | .free_bytes')
((free < MiB)) || fail "status shows $free bytes free in the full pool p1"
node_alive site-a || fail "site-a died when p1 filled up"
write_pattern site-a g2 $((20 * MiB)) 4M 0x77
write_pattern site-a plain 0 4M 0x78
write_random site-a solo $((2 * MiB)) $((3 * MiB))
mirror_sync site-a solo
compare_replica site-a solo site-b
qemu-io -f raw -c "read -P 0x77 $((20 * MiB)) 4M" "$(vol_uri site-a g2)" >/dev/null || fail "g2 lost a write"

log "p1 grows: the group mirrors again"
mount -o remount,size=64M "$WORK/p1" || fail "cannot grow the tmpfs p1"
write_pattern site-a g1 $((8 * MiB)) 8M 0x66
mirror_sync site-a --group g
compare_replica site-a g1 site-b
compare_replica site-a g2 site-b
am site-a mirror break --group g >/dev/null
am site-a mirror break solo >/dev/null

log "p2 unmounted at start: its volumes are failed, the others serve"
stop_node site-a
umount "$WORK/p2" || fail "cannot unmount p2"
start_node site-a
for vol in g2 solo; do
  [[ $(volume_field site-a "$vol" state) == failed ]] || fail "volume $vol of the unmounted pool p2 is not failed"
  err=$(volume_field site-a "$vol" error)
  [[ $err == *"storage 'p2'"*"is empty, but volumes were kept there"* ]] || fail "volume $vol's error does not say why: $err"
done
status_json site-a | jq -e '.storage[] | select(.name == "p2") | .state == "failed" and (.error | test("is empty"))' \
  >/dev/null || fail "status does not show pool p2 failed: $(status_json site-a | jq -c .storage)"
[[ -z $(ls -A "$WORK/p2") ]] || fail "the node wrote into the empty mount point of p2"
qemu-io -f raw -c "read -P 0x78 0 4M" "$(vol_uri site-a plain)" >/dev/null || fail "volume plain does not serve"
qemu-io -f raw -c "read -P 0x66 8M 8M" "$(vol_uri site-a g1)" >/dev/null || fail "volume g1 (pool p1) does not serve"
write_pattern site-a g1 0 1M 0x79
expect_refusal 1 "storage 'p2' ($WORK/p2) failed when the node started" site-a volume create y --size 1M --storage p2
am site-a status | grep -q "^storage p2  $WORK/p2  FAILED: " || fail "text status does not show p2 failed"

log "p2's directory gone at start: the same, with that reason"
stop_node site-a
rmdir "$WORK/p2"
start_node site-a
err=$(volume_field site-a solo error)
[[ $err == *"storage 'p2'"*"does not exist"* ]] || fail "volume solo's error does not say the pool is missing: $err"
[[ ! -e $WORK/p2 ]] || fail "the node made the missing pool directory"
qemu-io -f raw -c "read -P 0x79 0 1M" "$(vol_uri site-a g1)" >/dev/null || fail "volume g1 does not serve"
stop_node site-a
stop_node site-b
log PASS
