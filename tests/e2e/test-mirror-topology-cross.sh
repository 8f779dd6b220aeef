#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Cross-mirroring: two nodes mirroring to each other at the same time, each a source and
# a target. Both write while short-interval cycles run in both directions; after the
# writers stop and a final `mirror sync` on each side, each replica equals its source.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((16 * 1024 * 1024))
setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create vol-a --size 16M >/dev/null
am site-b volume create vol-b --size 16M --chunk-size 32K >/dev/null
# same name on both nodes too: a's "shared" replicates to b, b's "shared" to a
am site-a volume create shared --size 8M >/dev/null
am site-b volume create shared --size 8M >/dev/null
write_mix site-a vol-a $SIZE 1
write_mix site-b vol-b $SIZE 2
write_pattern site-a shared 0 1M 0xaa
write_pattern site-b shared 0 1M 0xbb
am site-a mirror start vol-a --to site-b --interval 1s >/dev/null
am site-b mirror start vol-b --to site-a --interval 1s >/dev/null
am site-a mirror start shared --to site-b --interval 1s >/dev/null
am site-b mirror start shared --to site-a --interval 1s >/dev/null
mirror_sync site-a vol-a
mirror_sync site-b vol-b
compare_replica site-a vol-a site-b
compare_replica site-b vol-b site-a

log "writing on both sides while cycles run both ways"
for i in 1 2 3 4 5 6; do
  write_random site-a vol-a $((i * 1000003)) 70000
  write_random site-b vol-b $((i * 999983)) 70000
  write_pattern site-a shared $((i * 65536 + 17)) 3000 $((i + 1))
  write_pattern site-b shared $((i * 65536 + 17)) 3000 $((i + 100))
  # A cycle on each side between batches (counted, not slept for).
  next_a=$(($(volume_field site-a shared cycle) + 1))
  next_b=$(($(volume_field site-b shared cycle) + 1))
  wait_until 60 "site-a to freeze shared again" cycle_at_least site-a shared $next_a
  wait_until 60 "site-b to freeze shared again" cycle_at_least site-b shared $next_b
done
mirror_sync site-a vol-a &
s1=$!
mirror_sync site-b vol-b
wait $s1 || fail "mirror sync site-a vol-a failed"
mirror_sync site-a shared
mirror_sync site-b shared
compare_replica site-a vol-a site-b
compare_replica site-b vol-b site-a
compare_replica site-a shared site-b
compare_replica site-b shared site-a

stop_node site-a
stop_node site-b
log "PASS"
