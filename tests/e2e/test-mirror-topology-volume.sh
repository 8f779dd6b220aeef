#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Topologies (patent table rows I and II): one volume -> one target, one volume -> two
# targets. Write data (aligned, unaligned, chunk-straddling, random), `mirror sync`,
# byte-compare every replica with its source; then a second round of writes and an
# incremental sync, compare again. Intervals are long (1 h) so only `mirror sync` runs
# cycles and the replicas hold still while they are compared (test-mirror-writes-during-
# cycles and test-mirror-topology-cross cover periodic cycles).
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((32 * 1024 * 1024))
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

log "one volume -> one target"
am site-a volume create solo --size 32M >/dev/null
write_mix site-a solo $SIZE 1
am site-a mirror start solo --to site-b --interval 1h >/dev/null
mirror_sync site-a solo
compare_replica site-a solo site-b
write_mix site-a solo $SIZE 2
mirror_sync site-a solo
compare_replica site-a solo site-b
[[ -z $(replica_field site-c site-a solo image_path) ]] || fail "site-c holds a replica of solo, which is not mirrored to it"

log "one volume -> two targets (4 KiB chunks)"
am site-a volume create fan --size 32M --chunk-size 4K >/dev/null
write_mix site-a fan $SIZE 3
am site-a mirror start fan --to site-b,site-c --interval 1h >/dev/null
mirror_sync site-a fan
compare_replica site-a fan site-b
compare_replica site-a fan site-c
write_mix site-a fan $SIZE 4
write_random site-a fan 4096 $((3 * 4096))
mirror_sync site-a fan
compare_replica site-a fan site-b
compare_replica site-a fan site-c
# both targets applied the same cycle, at the same freeze point
b_cycle=$(mirror_field site-a fan site-b applied_cycle)
c_cycle=$(mirror_field site-a fan site-c applied_cycle)
[[ $b_cycle == "$c_cycle" ]] || fail "after mirror sync site-b applied cycle $b_cycle but site-c $c_cycle"
[[ $(replica_field site-b site-a fan freeze_time) == "$(replica_field site-c site-a fan freeze_time)" ]] ||
  fail "the two replicas of fan report different freeze times after one sync"
# solo is still right after the other mirror's activity
compare_replica site-a solo site-b

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
