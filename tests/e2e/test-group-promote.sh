#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `replica promote --source NODE --group G`: every replica of a consistency group comes
# up as a writable volume at the newest freeze they all kept (one instant on the
# source), in the same group, equal to the sources at that sync. Bad combinations of
# arguments are refused and change nothing.
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create g1 --size 8M --chunk-size 64K --group prod >/dev/null
am site-a volume create g2 --size 4M --chunk-size 4K --group prod >/dev/null
write_random site-a g1 0 $((2 * 1024 * 1024))
write_random site-a g2 4096 $((1024 * 1024))
am site-a mirror start --group prod --to site-b --interval 1h --keep 3 >/dev/null
mirror_sync site-a --group prod
nbdcopy "$(vol_uri site-a g1)" "$WORK/g1.raw" || fail "copy g1"
nbdcopy "$(vol_uri site-a g2)" "$WORK/g2.raw" || fail "copy g2"


expect_refusal 1 "no replica of group" site-b replica promote --source site-a --group nosuch
expect_refusal 1 "a group is promoted under its volume" site-b replica promote --source site-a --group prod --at 1
[[ -n $(replica_field site-b site-a g1 state) ]] || fail "a refused promote removed a replica"

am site-a mirror break --group prod >/dev/null
am site-b replica promote --source site-a --group prod >"$WORK/promote.out"
log "$(cat "$WORK/promote.out")"
for v in g1 g2; do
  [[ $(volume_field site-b $v role) == promoted ]] || fail "$v is not promoted on site-b"
  [[ $(volume_field site-b $v group) == prod ]] || fail "$v is not in group prod on site-b"
  nbdcopy "$(vol_uri site-b $v)" "$WORK/$v-b.raw" || fail "copy promoted $v"
  cmp "$WORK/$v.raw" "$WORK/$v-b.raw" || fail "promoted $v differs from site-a's $v at the sync"
done
[[ -z $(replica_field site-b site-a g1 state) && -z $(replica_field site-b site-a g2 state) ]] ||
  fail "promoted replicas are still listed"
write_pattern site-b g2 0 4k 0x44
log PASS
