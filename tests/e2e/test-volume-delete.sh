#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `volume delete NAME [--force]` on node a, volume v (1-character names): refused while
# mirrored or open by an NBD client unless --force; deleting removes the volume's
# directory and mirror state file, withdraws the NBD export (the client holding it
# open is cut off; new connections are refused), and the same name can be created
# again as a fresh, zeroed volume. A failed volume can be deleted too; unknown names
# and usage errors say what is wrong.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd nbdinfo stdbuf

setup_nodes a b
start_node a
start_node b
vdir=$WORK/a.d/volumes/v
state=$WORK/a.d/mirrors/v.json

expect_refusal 1 "no volume named 'x'" a volume delete x
expect_refusal 2 "" a volume delete
expect_refusal 1 "bad volume name" a volume delete 'a/b'

am a volume create v --size 4M >/dev/null
write_pattern a v 0 64k 7
write_pattern a v $((4 * 1024 * 1024 - 4096)) 4k 9
[[ -d $vdir ]] || fail "volume v has no directory $vdir"

log "refused while mirrored; the mirror keeps running"
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
[[ -f $state ]] || fail "no mirror state file $state"
expect_refusal 1 "mirror break v" a volume delete v
grep -q -- "--force" "$WORK/last.err" || fail "the refusal does not mention --force: $(cat "$WORK/last.err")"
[[ -d $vdir && -f $state ]] || fail "a refused delete changed the data directory"
[[ $(mirror_field a v b state) != stopped ]] || fail "a refused delete stopped the mirror"
mirror_sync a v

log "refused while an NBD client has it open"
am a mirror break v >/dev/null
hold_open a v
expect_refusal 1 "open by 1 NBD client" a volume delete v
[[ -d $vdir ]] || fail "a refused delete removed $vdir"

log "--force on a mirrored, open volume: mirror broken, client cut off, files gone"
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v
[[ $(am a volume delete v --force) == "deleted volume v" ]] || fail "volume delete printed: $(cat "$WORK/last.out")"
[[ ! -e $vdir ]] || fail "$vdir still exists after delete: $(ls -la "$vdir")"
[[ ! -e $state ]] || fail "mirror state file $state still exists after delete"
[[ -z $(ls -A "$WORK/a.d/volumes") ]] || fail "files left in volumes/: $(ls -A "$WORK/a.d/volumes")"
[[ -z $(ls -A "$WORK/a.d/trash") ]] || fail "files left in trash/: $(ls -A "$WORK/a.d/trash")"
[[ -z $(am a status --json | jq -r '.volumes[].name') ]] || fail "status still lists a volume: $(am a status --json)"
[[ -z $(am a volume list --json | jq -r '.[].name') ]] || fail "volume list still lists v"
echo "read 0 4k" >&7
exec 7>&-
wait "$HOLDER_PID" 2>/dev/null || true
unset "SERVE_PID[holder]"
grep -c "read 4096/4096" "$WORK/holder.out" | grep -qx 1 || fail "the cut-off client still read after the delete: $(cat "$WORK/holder.out")"
nbdinfo --list "nbd+unix:///?socket=$WORK/a-nbd.sock" >"$WORK/list.out" 2>&1 || true
grep -q 'export="v"' "$WORK/list.out" && fail "export v is still listed: $(cat "$WORK/list.out")"
nbdinfo "$(vol_uri a v)" >"$WORK/info.out" 2>&1 && fail "a new NBD connection to the deleted v succeeded"
grep -q "No such file or directory for export: v" "$WORK/info.out" || fail "the refused connection does not name v: $(cat "$WORK/info.out")"
[[ $(mirror_field a v b state) == "" ]] || fail "status still shows the deleted volume's mirror"

log "the same name again is a fresh, zeroed volume"
am a volume create v --size 4M >/dev/null
qemu-io -f raw -c "read -P 0 0 4M" "$(vol_uri a v)" >"$WORK/zero.out" 2>&1 ||
  fail "the recreated v is not all zeros: $(cat "$WORK/zero.out")"
[[ ! -e $state ]] || fail "the recreated v has a mirror state file"
[[ $(volume_field a v cycle) == 0 ]] || fail "the recreated v is at cycle $(volume_field a v cycle), not 0"
write_pattern a v 0 4k 5
am a volume delete v >/dev/null
[[ ! -e $vdir ]] || fail "$vdir still exists after the second delete"

log "a failed volume can be deleted"
am a volume create f --size 1M >/dev/null
stop_node a
head -c 200 /dev/urandom >"$WORK/a.d/volumes/f/volume.meta"
start_node a
[[ $(volume_field a f state) == failed ]] || fail "volume f is not failed after losing its meta: $(am a status --json)"
[[ $(am a volume delete f) == "deleted volume f" ]] || fail "deleting the failed f printed: $(cat "$WORK/last.out")"
[[ ! -e $WORK/a.d/volumes/f ]] || fail "the failed volume's directory is still there"
[[ -z $(volume_field a f state) ]] || fail "status still shows f"
am a volume create f --size 1M >/dev/null

log "a restart keeps the deletions"
stop_node a
start_node a
[[ $(am a volume list --json | jq -r '[.[].name] | join(",")') == "f" ]] ||
  fail "after a restart the volumes are: $(am a volume list --json)"

stop_node a
stop_node b
log "PASS"
