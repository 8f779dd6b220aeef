#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Topologies (patent table rows III and IV): a consistency group of two volumes -> one
# target, and a group of two volumes -> two targets. Every replica must equal its source
# after `mirror sync --group`, and the volumes of a group must be frozen at one instant
# (their replicas report the same cycle and freeze time). Intervals are long (1 h) so
# only `mirror sync` runs cycles and the replicas hold still while they are checked.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((16 * 1024 * 1024))
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

# check_group GROUP TARGET VOL1 VOL2: replicas of one group agree on the freeze point.
check_group() {
  local t1 t2 c1 c2
  t1=$(replica_field "$2" site-a "$3" freeze_time)
  t2=$(replica_field "$2" site-a "$4" freeze_time)
  c1=$(replica_field "$2" site-a "$3" applied_cycle)
  c2=$(replica_field "$2" site-a "$4" applied_cycle)
  [[ -n $t1 && $t1 == "$t2" ]] || fail "group $1 on $2: replicas $3 and $4 have freeze times '$t1' and '$t2'"
  [[ -n $c1 && $c1 == "$c2" ]] || fail "group $1 on $2: replicas $3 and $4 applied cycles '$c1' and '$c2'"
}

log "group of two volumes -> one target"
am site-a volume create g1-data --size 16M --group one >/dev/null
am site-a volume create g1-log --size 8M --chunk-size 16K --group one >/dev/null
[[ $(volume_field site-a g1-data group) == one ]] || fail "volume g1-data does not report group 'one'"
write_mix site-a g1-data $SIZE 1
write_mix site-a g1-log $((8 * 1024 * 1024)) 2
am site-a mirror start --group one --to site-b --interval 1h >/dev/null
for v in g1-data g1-log; do
  [[ -n $(mirror_field site-a $v site-b state) ]] || fail "mirror start --group one did not start a mirror of $v to site-b"
done
mirror_sync site-a --group one
compare_replica site-a g1-data site-b
compare_replica site-a g1-log site-b
check_group one site-b g1-data g1-log
write_mix site-a g1-data $SIZE 3
write_pattern site-a g1-log 100000 5000 0x5a
mirror_sync site-a --group one
compare_replica site-a g1-data site-b
compare_replica site-a g1-log site-b
check_group one site-b g1-data g1-log

log "group of two volumes -> two targets"
am site-a volume create g2-x --size 16M --group two >/dev/null
am site-a volume create g2-y --size 16M --group two >/dev/null
write_mix site-a g2-x $SIZE 4
write_mix site-a g2-y $SIZE 5
am site-a mirror start --group two --to site-b,site-c --interval 1h >/dev/null
mirror_sync site-a --group two
for t in site-b site-c; do
  compare_replica site-a g2-x $t
  compare_replica site-a g2-y $t
  check_group two $t g2-x g2-y
done
write_mix site-a g2-y $SIZE 6
mirror_sync site-a --group two
for t in site-b site-c; do
  compare_replica site-a g2-x $t
  compare_replica site-a g2-y $t
  check_group two $t g2-x g2-y
done
[[ -z $(replica_field site-c site-a g1-data image_path) ]] || fail "site-c holds a replica of group one, not mirrored to it"

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
