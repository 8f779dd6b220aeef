#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Idle volumes rest (their files closed) and wake on use, across kill -9 (issue 12).
# Many volumes on site-a: a new one is at rest; one written over NBD rests once the
# client left; a mirrored one stays open; one held by a client stays open. site-a is
# killed -9 in that state and restarted: every write flushed before is there, the
# mirror resumes and converges, and only the mirrored volume is open again.
source "$(dirname "$0")/mirror-lib.sh"

COUNT=40
setup_nodes site-a site-b
start_node site-a
start_node site-b

# open_of VOL: "true" or "false" (volume_field's `// empty` would drop false).
open_of() { status_json site-a | jq -r --arg v "$1" '.volumes[] | select(.name == $v) | .open'; }
# wait_open VOL true|false: until status shows VOL's files open (or closed); on a
# timeout, says what status showed last.
wait_open() {
  local deadline=$((SECONDS + 30 * ${TIMEOUT_SCALE:-4})) seen
  until seen=$(open_of "$1") && [[ $seen == "$2" ]]; do
    ((SECONDS < deadline)) || fail "volume $1 open=$seen, not $2: $(status_json site-a | jq -c --arg v "$1" '{open_files, volume: (.volumes[] | select(.name == $v))}')"
    sleep 0.2
  done
}
# open_files_below N: site-a has fewer than N descriptors open.
open_files_below() { (($(status_json site-a | jq '.open_files.count') < $1)); }

for ((i = 0; i < COUNT; i++)); do am site-a volume create "v$i" --size 4M >/dev/null; done
[[ $(status_json site-a | jq '[.volumes[] | select(.open)] | length') == 0 ]] ||
  fail "new volumes are open: $(status_json site-a | jq -c '[.volumes[] | select(.open) | .name]')"
# 40 open volumes would hold 120 files; at rest the node keeps only its own.
open_files_below $((COUNT * 3)) || fail "site-a has $(status_json site-a | jq '.open_files.count') files open with every volume at rest"
[[ $(volume_field site-a v7 size_bytes) == 4194304 ]] || fail "a resting volume shows size $(volume_field site-a v7 size_bytes)"

log "a client writes v1 and leaves: v1 rests again"
write_pattern site-a v1 0 1M 0x11
wait_open v1 false

log "v2 mirrored: open while the mirror runs"
am site-a mirror start v2 --to site-b --interval 1s >/dev/null
write_pattern site-a v2 64k 128k 0x22
mirror_sync site-a v2
[[ $(open_of v2) == true ]] || fail "mirrored v2 is not open"

log "v3 held by a client that wrote and flushed"
hold_open site-a v3
echo "write -P 0x33 1M 64k" >&7
echo "flush" >&7
wait_until 30 "the holder's write to v3" grep -q "wrote 65536/65536" "$WORK/holder.out"
[[ $(open_of v3) == true ]] || fail "v3 is not open while a client holds it"

log "kill -9 site-a with v1 at rest, v2 mirrored, v3 held"
kill_node site-a
exec 7>&-
kill "$HOLDER_PID" 2>/dev/null || true
wait "$HOLDER_PID" 2>/dev/null || true
unset "SERVE_PID[holder]"
start_node site-a
lists_all() { [[ $(status_json site-a | jq '.volumes | length') == "$COUNT" ]]; }
wait_until 30 "site-a to list all $COUNT volumes" lists_all
[[ $(open_of v1) == false && $(open_of v3) == false ]] || fail "idle volumes are open after restart: v1 $(open_of v1), v3 $(open_of v3)"
wait_open v2 true  # its mirror resumed
qemu-io -f raw -c "read -q -P 0x11 0 1M" "$(vol_uri site-a v1)" >/dev/null || fail "v1 lost its write across rest and kill -9"
qemu-io -f raw -c "read -q -P 0x33 1M 64k" "$(vol_uri site-a v3)" >/dev/null || fail "v3 lost its flushed write across kill -9"
wait_until 30 "v1 and v3 to rest after the reads" bash -c "[[ \$(\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq '[.volumes[] | select(.open) | .name] == [\"v2\"]') == true ]]"
write_pattern site-a v2 1M 4k 0x24
mirror_sync site-a v2
compare_replica site-a v2 site-b

log "break: v2 rests too"
am site-a mirror break v2 >/dev/null
[[ $(open_of v2) == false ]] || fail "v2 still open after mirror break"
open_files_below $((COUNT * 3)) || fail "site-a still has $(status_json site-a | jq '.open_files.count') files open"
log "PASS"
