#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `volume resize NAME --size SIZE` (grow only) on node a, volume v mirrored to b: the
# volume grows online while an NBD client holds it open (that client keeps the old size,
# new connections see the new one); writes into the new region and across the old end
# (the old last chunk was short) reach the replica at the next cycle, which grows and
# equals the source byte for byte over NBD and as its image file; a full copy to a fresh
# replica works at the new size. Shrinking, bad sizes and unknown volumes are refused
# and change nothing, as are volumes being imported or failed; the same size is a no-op
# that says so; restarts keep the size.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd nbdinfo stdbuf

old_size=$((10 * 1024 * 1024 + 2560)) # 10 MiB + 2.5 KiB: the last 64 KiB chunk is short
new_size=$((20 * 1024 * 1024))

setup_nodes a b
start_node a
start_node b

# export_size NODE_URI: the size an NBD client is told now.
export_size() { nbdinfo --size "$1"; }

am a volume create v --size "$old_size" >/dev/null
write_mix a v "$old_size" 1
write_pattern a v $((old_size - 2560)) 2560 0x4c # the whole short last chunk
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
compare_replica a v b
old_cycle=$(volume_field a v cycle)

log "grow while an NBD client holds the volume open"
hold_open a v
resized=$(am a volume resize v --size 20M)
[[ $resized == "v: 10.0 MiB -> 20.0 MiB; replicas grow at the next cycle"* ]] ||
  fail "volume resize printed: $resized"
grep -q "1 NBD client connected now keeps the old size" "$WORK/last.out" ||
  fail "volume resize did not say the open client keeps the old size: $resized"
[[ $(volume_field a v size_bytes) == "$new_size" ]] || fail "status --json size_bytes is $(volume_field a v size_bytes)"
[[ $(export_size "$(vol_uri a v)") == "$new_size" ]] || fail "a new NBD connection sees $(export_size "$(vol_uri a v)") bytes"
[[ $(stat -c %s "$WORK/a.d/volumes/v/base.img") == "$new_size" ]] || fail "base.img was not extended"
[[ $(volume_field a v cycle) == "$old_cycle" ]] || fail "resize froze the volume"
# The open client keeps working within the size it was told (and only that: NBD has no
# resize notification), and its writes land.
# holder_do COMMAND PATTERN: the held-open qemu-io runs COMMAND and prints PATTERN. One
# command at a time, each once it prompts: input that arrives while it is busy is lost.
holder_ready() { [[ $(tail -c 9 "$WORK/holder.out") == "qemu-io> " ]]; }
holder_printed() { (($(grep -c -- "$1" "$WORK/holder.out") > $2)); } # PATTERN more than N times
holder_do() {
  local before
  wait_until 30 "the held-open client to prompt for a command" holder_ready
  before=$(grep -c -- "$2" "$WORK/holder.out" || true)
  echo "$1" >&7
  wait_until 30 "the held-open client ran '$1'" holder_printed "$2" "$before"
}
holder_do "write -P 0x21 8k 4k" "wrote 4096/4096"
holder_do "read -P 0x21 8k 4k" "read 4096/4096"
grep -q "Pattern verification failed" "$WORK/holder.out" && fail "the held-open client read other bytes: $(cat "$WORK/holder.out")"
holder_do "length" "MiB$"
grep -qx "qemu-io> 10.002 MiB" "$WORK/holder.out" || fail "the held-open client's size changed: $(cat "$WORK/holder.out")"
holder_do "read $old_size 512" "read failed"
exec 7>&-
wait "$HOLDER_PID" 2>/dev/null || true
unset "SERVE_PID[holder]"
qemu-io -f raw -c "read -P 0x21 8k 4k" "$(vol_uri a v)" >/dev/null || fail "the held-open client's write was lost"
qemu-io -f raw -c "read -P 0 $old_size $((new_size - old_size))" "$(vol_uri a v)" >"$WORK/zero.out" 2>&1 ||
  fail "the new region does not read as zeros: $(cat "$WORK/zero.out")"

log "writes into the new region reach the grown replica"
write_pattern a v $((old_size - 1000)) 5000 0x5e # across the old end, inside the short chunk
write_random a v $((15 * 1024 * 1024 + 4095)) $((1024 * 1024 + 3))
write_pattern a v $((new_size - 4096)) 4096 0x7b
mirror_sync a v
[[ $(replica_field b a v size_bytes) == "$new_size" ]] || fail "the replica is $(replica_field b a v size_bytes) bytes"
[[ $(export_size "$(replica_uri b a v)") == "$new_size" ]] || fail "the replica's NBD export is not $new_size bytes"
mirror_no_error a v b
compare_replica a v b

log "refusals change nothing"
expect_refusal 1 "shrinking is not supported" a volume resize v --size 10M
expect_refusal 1 "not a multiple of 512" a volume resize v --size 20971521
grep -q "20971521" "$WORK/last.err" || fail "the refusal does not name the size: $(cat "$WORK/last.err")"
expect_refusal 1 "exceeds the maximum" a volume resize v --size 65T
expect_refusal 1 "no volume named 'x'" a volume resize x --size 1G
expect_refusal 1 "bad volume name" a volume resize 'a/b' --size 1G
expect_refusal 2 "" a volume resize v
expect_refusal 2 "" a volume resize v --size lots
[[ $(volume_field a v size_bytes) == "$new_size" ]] || fail "a refused resize changed the size"
[[ $(am a volume resize v --size 20M) == "v is already 20.0 MiB; nothing changed" ]] ||
  fail "resize to the same size printed: $(cat "$WORK/last.out")"
mirror_no_error a v b

log "a volume being imported, or one that failed to open, is refused"
mkfifo "$WORK/g.fifo"
"$AMIRROR" volume import g --from "$WORK/g.fifo" --size 1M --node "$WORK/a.sock" >"$WORK/import.out" 2>&1 &
import_pid=$!
exec 8>"$WORK/g.fifo" # the node has opened it: the import waits for our bytes
g_importing() { [[ $(volume_field a g state) == importing ]]; }
wait_until 30 "status to show g importing" g_importing
expect_refusal 1 "still being imported" a volume resize g --size 2M
head -c $((1024 * 1024)) /dev/urandom >&8
exec 8>&-
wait "$import_pid" || fail "volume import g failed: $(cat "$WORK/import.out")"
am a volume resize g --size 2M >/dev/null
[[ $(volume_field a g size_bytes) == $((2 * 1024 * 1024)) ]] || fail "the imported g did not grow"
am a volume create f --size 1M >/dev/null

log "grow again, restart both nodes: sizes kept, mirror still in step"
am a volume resize v --size $((new_size + 512)) >/dev/null
write_pattern a v $((new_size - 100)) 612 0x33 # across the second old end
stop_node a
head -c 200 /dev/urandom >"$WORK/a.d/volumes/f/volume.meta"
stop_node b
start_node b
start_node a
[[ $(volume_field a v size_bytes) == $((new_size + 512)) ]] || fail "after a restart a's v is $(volume_field a v size_bytes) bytes"
# The resumed mirror may already have opened the replica (and grown it) by now.
replica_size=$(replica_field b a v size_bytes)
[[ $replica_size == "$new_size" || $replica_size == $((new_size + 512)) ]] ||
  fail "after a restart the replica is $replica_size bytes"
mirror_sync a v
[[ $(replica_field b a v size_bytes) == $((new_size + 512)) ]] || fail "the replica did not follow the second growth"
compare_replica a v b
[[ $(volume_field a f state) == failed ]] || fail "volume f did not fail after losing its meta"
expect_refusal 1 "failed to open" a volume resize f --size 2M
grep -q "volume delete f" "$WORK/last.err" || fail "the refusal for f does not say what to do: $(cat "$WORK/last.err")"

log "a fresh replica gets a full copy at the new size"
am a mirror break v >/dev/null
am b replica delete a/v >/dev/null
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
compare_replica a v b

stop_node a
stop_node b
log "PASS"
