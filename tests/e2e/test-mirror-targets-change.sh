#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Changing a mirror's targets must not let a replica silently diverge (issue 9, item 1).
# A target dropped from the mirror (`mirror start --to c` after `--to b,c`) still has a
# replica at some old cycle; while it is away the source merges layers it never got.
# When it is named again it must receive exactly those chunks (or a full copy that
# status shows as such) — never be shown idle with a replica that differs.
# Done for a single volume and for a consistency group. Intervals are 1 h so only
# `mirror sync` runs cycles.
source "$(dirname "$0")/mirror-lib.sh"

MIB=$((1024 * 1024))
setup_nodes a b c
for n in a b c; do start_node "$n"; done

# check_idle SRC VOL TGT: SRC shows the mirror of VOL to TGT idle at VOL's newest freeze point.
check_idle() {
  local state applied cycle
  state=$(mirror_field "$1" "$2" "$3" state)
  applied=$(mirror_field "$1" "$2" "$3" applied_cycle)
  cycle=$(volume_field "$1" "$2" cycle)
  [[ $state == idle ]] || fail "after sync, mirror of $2 to $3 is '$state', not idle"
  ((applied == cycle)) || fail "mirror of $2 to $3 is idle at cycle $applied, but the volume is at cycle $cycle"
}

# scenario UNIT_ARGS... -- VOL...: the issue's repro for one unit (a volume or --group G).
scenario() {
  local -a unit=() vols=()
  while [[ $1 != -- ]]; do unit+=("$1"); shift; done
  shift
  vols=("$@")
  local v round
  log "${unit[*]}: mirror to b,c; sync"
  for v in "${vols[@]}"; do write_random a "$v" 0 $((2 * MIB)); done
  am a mirror start "${unit[@]}" --to b,c --interval 1h >/dev/null
  mirror_sync a "${unit[@]}"
  for v in "${vols[@]}"; do compare_replica a "$v" b; compare_replica a "$v" c; done

  log "${unit[*]}: break; mirror to c only; change 1 MiB at 20 MiB over 4 cycles; break"
  am a mirror break "${unit[@]}" >/dev/null
  am a mirror start "${unit[@]}" --to c --interval 1h >/dev/null
  for round in 0 1 2 3; do
    for v in "${vols[@]}"; do write_random a "$v" $((20 * MIB + round * MIB / 4)) $((MIB / 4)); done
    mirror_sync a "${unit[@]}"
  done
  for v in "${vols[@]}"; do compare_replica a "$v" c; done
  am a mirror break "${unit[@]}" >/dev/null

  log "${unit[*]}: mirror to b,c again; b must get what it lacks"
  am a mirror start "${unit[@]}" --to b,c --interval 1h >/dev/null
  mirror_sync a "${unit[@]}"
  for v in "${vols[@]}"; do
    check_idle a "$v" b
    check_idle a "$v" c
    compare_replica a "$v" b
    compare_replica a "$v" c
  done
  am a mirror break "${unit[@]}" >/dev/null
}

am a volume create v --size 32M >/dev/null
scenario v -- v

am a volume create gx --size 32M --group g >/dev/null
am a volume create gy --size 24M --chunk-size 16K --group g >/dev/null
scenario --group g -- gx gy

for n in a b c; do stop_node "$n"; done
log "PASS"
