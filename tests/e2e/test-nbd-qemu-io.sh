#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# qemu-io pattern writes and reads through amirror's NBD server at many unaligned
# offsets and lengths (4 KiB chunks, so most requests span chunks), while the server
# freezes and merges every 200 ms underneath; then random overlapping writes, zeroes
# and discards checked against a plain file given the same commands; then a restart.
source "$(dirname "$0")/lib.sh"
require_cmd qemu-io qemu-img

SEED=${SEED:-$RANDOM}
RANDOM=$SEED
log "seed $SEED (rerun with SEED=$SEED)"
SIZE=$((64 * 1024 * 1024))
start_serve a --create vol --size 64M --chunk-size 4K --freeze-interval 200ms --quiet
URI=$(nbd_uri a vol)

# run_qemu_io TARGET FORMAT CMDFILE: fails the test on any failed command.
run_qemu_io() {
  local out
  out=$(qemu-io -f raw "$1" <"$2" 2>&1) || fail "qemu-io on $1 failed: $(grep -i -m3 'fail\|error' <<<"$out")"
  if grep -qi 'verification failed\|error\|failed' <<<"$out"; then
    fail "qemu-io on $1: $(grep -i -m3 'fail\|error' <<<"$out")"
  fi
}

# Phase 1: non-overlapping regions in [0, 32 MiB), unaligned, each with its own pattern,
# written in three batches with freezes in between; gaps must stay zero.
declare -a OFF LEN PAT
offset=$((RANDOM % 5000))
count=0
while :; do
  length=$((1 + (RANDOM * 32768 + RANDOM) % 40000))
  ((offset + length < 32 * 1024 * 1024)) || break
  OFF[count]=$offset LEN[count]=$length PAT[count]=$((1 + count % 254))
  offset=$((offset + length + RANDOM % 9000))
  count=$((count + 1))
  ((count < 600)) || break
done
log "phase 1: $count regions"

verify_regions() {  # verify_regions FIRST LAST
  local cmds="$WORK/verify.cmds" i gap_start gap_len
  : >"$cmds"
  for ((i = $1; i < $2; i++)); do
    echo "read -q -P ${PAT[i]} ${OFF[i]} ${LEN[i]}" >>"$cmds"
    if ((i + 1 < $2)); then
      gap_start=$((OFF[i] + LEN[i]))
      gap_len=$((OFF[i + 1] - gap_start))
      ((gap_len == 0)) || echo "read -q -P 0 $gap_start $gap_len" >>"$cmds"
    fi
  done
  run_qemu_io "$URI" "$cmds"
}

batch=$(((count + 2) / 3))
for ((first = 0; first < count; first += batch)); do
  last=$((first + batch < count ? first + batch : count))
  cmds="$WORK/write.cmds"
  : >"$cmds"
  for ((i = first; i < last; i++)); do
    echo "write -q -P ${PAT[i]} ${OFF[i]} ${LEN[i]}" >>"$cmds"
  done
  run_qemu_io "$URI" "$cmds"
  verify_regions "$first" "$last"
  wait_for_cycle a vol $(($(volume_cycle a vol) + 2))  # freezes + merges between batches
done
verify_regions 0 "$count"
log "phase 1: all regions verified across freezes"

# Phase 2: random overlapping writes, zeroes and discards in [32 MiB, 64 MiB), applied
# to the export and to a model file, compared after each batch.
MODEL="$WORK/model.raw"
truncate -s $SIZE "$MODEL"
# The model must hold phase 1's data too.
cmds="$WORK/model1.cmds"
: >"$cmds"
for ((i = 0; i < count; i++)); do echo "write -q -P ${PAT[i]} ${OFF[i]} ${LEN[i]}" >>"$cmds"; done
run_qemu_io "$MODEL" "$cmds"
for round in 1 2 3 4; do
  cmds="$WORK/ops.cmds"
  : >"$cmds"
  for ((i = 0; i < 60; i++)); do
    offset=$((32 * 1024 * 1024 + (RANDOM * 32768 + RANDOM) % (32 * 1024 * 1024 - 200000)))
    length=$((1 + (RANDOM * 32768 + RANDOM) % 150000))
    case $((RANDOM % 6)) in
      0) echo "write -q -z $offset $length" ;;
      1) # discard: qemu-io wants 512-aligned here for the raw file to zero exactly
        echo "discard -q $((offset / 512 * 512)) $(((length + 511) / 512 * 512))" ;;
      *) echo "write -q -P $((RANDOM % 256)) $offset $length" ;;
    esac >>"$cmds"
  done
  run_qemu_io "$URI" "$cmds"
  run_qemu_io "$MODEL" "$cmds"
  qemu-img compare -q -f raw -F raw "$MODEL" "$URI" ||
    fail "round $round: the export differs from the model file (seed $SEED)"
  wait_for_cycle a vol $(($(volume_cycle a vol) + 2))
done
log "phase 2: 240 random ops match the model"

# Phase 3: restart; everything must still be there.
stop_serve a
start_serve a --quiet
qemu-img compare -q -f raw -F raw "$MODEL" "$URI" || fail "export differs from model after restart"
verify_regions 0 "$count"
stop_serve a
log "PASS"
