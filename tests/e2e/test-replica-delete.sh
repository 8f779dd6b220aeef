#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `replica delete SOURCE/VOLUME` on target b for source a's volume v (1-character
# names): refused while a is sending into it; deleting removes the replica's directory
# durably and its NBD export; the next `mirror sync` on a finds no replica, sends a
# full copy, and the fresh replica equals the source. A failed replica can be deleted
# (and is then rebuilt the same way); bad names say what is wrong and change nothing.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd nbdinfo

setup_nodes a b
# Slow enough that the initial copy is seen "receiving" on b.
proxy_link a b slow --rate 400000
start_node a
start_node b
rdir=$WORK/b.d/replicas/a/v

replica_state() { replica_field b a v state; }

expect_refusal 1 "SOURCE/VOLUME" b replica delete av
expect_refusal 1 "no replica a/x" b replica delete a/x
expect_refusal 1 "source node name is empty" b replica delete /v
expect_refusal 2 "" b replica delete

am a volume create v --size 4M >/dev/null
write_random a v 0 $((2 * 1024 * 1024))
am a mirror start v --to b --interval 1h >/dev/null

log "refused while a sends into it"
wait_until 60 "replica a/v receiving on b" bash -c "[[ \$($AMIRROR status --json --node $WORK/b.sock | jq -r '.replicas[0].state // empty') == receiving ]]"
expect_refusal 1 "receiving from a" b replica delete a/v
[[ -f $rdir/base.img ]] || fail "a refused delete removed the replica's image"
mirror_sync a v
compare_replica a v b
before=$(grep -c " full_copy=true " "$WORK/a.log" || true)

log "delete: directory and export gone"
[[ $(am b replica delete a/v) == "deleted replica a/v" ]] || fail "replica delete printed: $(cat "$WORK/last.out")"
[[ ! -e $rdir ]] || fail "$rdir still exists after delete: $(ls -la "$rdir")"
[[ -z $(ls -A "$WORK/b.d/trash") ]] || fail "files left in trash/: $(ls -A "$WORK/b.d/trash")"
[[ $(am b replica list --json) == "[]" ]] || fail "replica list still shows: $(am b replica list --json)"
nbdinfo --list "nbd+unix:///?socket=$WORK/b-nbd.sock" >"$WORK/list.out" 2>&1 || true
grep -q 'export="a/v"' "$WORK/list.out" && fail "export a/v is still listed: $(cat "$WORK/list.out")"
nbdinfo "$(replica_uri b a v)" >"$WORK/info.out" 2>&1 && fail "a new NBD connection to the deleted a/v succeeded"
grep -q "No such file or directory for export: a/v" "$WORK/info.out" || fail "the refused connection does not name a/v: $(cat "$WORK/info.out")"
expect_refusal 1 "no replica a/v" b replica delete a/v

log "the next sync sends a full copy into a fresh replica"
write_pattern a v $((3 * 1024 * 1024)) 64k 5
mirror_sync a v
compare_replica a v b
after=$(grep -c " full_copy=true " "$WORK/a.log" || true)
((after > before)) || fail "a did not log a full copy after the replica was deleted"
mirror_no_error a v b

log "a failed replica can be deleted, and is rebuilt"
am a mirror break v >/dev/null
stop_node b
truncate -s 20 "$rdir/replica.meta"
start_node b
[[ $(replica_state) == failed ]] || fail "replica a/v is not failed after damaging its meta: $(am b status --json)"
[[ $(am b replica delete a/v) == "deleted replica a/v" ]] || fail "deleting the failed a/v printed: $(cat "$WORK/last.out")"
[[ ! -e $rdir ]] || fail "the failed replica's directory is still there"
[[ -z $(replica_state) ]] || fail "status still shows the failed replica"
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
compare_replica a v b

stop_node a
stop_node b
log "PASS"
