#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Topology (patent table rows V and VI): volumes of two source nodes -> one target.
# Both sources have a volume named "db" with different contents: the target must keep
# two separate replicas (site-a/db and site-c/db) that never collide, each equal to its
# own source.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((16 * 1024 * 1024))
setup_nodes site-a site-b site-c
for n in site-a site-b site-c; do start_node "$n"; done

am site-a volume create db --size 16M >/dev/null
am site-c volume create db --size 16M >/dev/null
am site-c volume create other --size 8M --chunk-size 8K >/dev/null
write_mix site-a db $SIZE 1
write_mix site-c db $SIZE 2
write_pattern site-c db 0 4M 0x3c
write_mix site-c other $((8 * 1024 * 1024)) 3
am site-a mirror start db --to site-b --interval 2s >/dev/null
am site-c mirror start db --to site-b --interval 2s >/dev/null
am site-c mirror start other --to site-b --interval 2s >/dev/null
mirror_sync site-a db
mirror_sync site-c db
mirror_sync site-c other
compare_replica site-a db site-b
compare_replica site-c db site-b
compare_replica site-c other site-b
path_a=$(replica_field site-b site-a db image_path)
path_c=$(replica_field site-b site-c db image_path)
[[ $path_a != "$path_c" ]] || fail "replicas site-a/db and site-c/db share the image file $path_a"
n=$(status_json site-b | jq '.replicas | length')
((n == 3)) || fail "site-b reports $n replicas, expected 3: $(status_json site-b | jq -c .replicas)"
# the two db replicas really hold different data (so the compares above were meaningful)
if qemu-img compare -q -f raw -F raw "$(replica_uri site-b site-a db)" "$(replica_uri site-b site-c db)" 2>/dev/null; then
  fail "replicas site-a/db and site-c/db on site-b are identical although their sources differ"
fi

log "second round, both sources writing and syncing concurrently"
write_mix site-a db $SIZE 4
write_mix site-c db $SIZE 5
mirror_sync site-a db &
sync_a=$!
mirror_sync site-c db
wait $sync_a || fail "mirror sync of site-a/db failed while site-c/db synced too"
compare_replica site-a db site-b
compare_replica site-c db site-b
compare_replica site-c other site-b

for n in site-a site-b site-c; do stop_node "$n"; done
log "PASS"
