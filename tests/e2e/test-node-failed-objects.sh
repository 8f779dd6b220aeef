#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One damaged volume or replica never keeps a node from starting (issue 9 item 3).
# site-b holds volumes b1, b2, b3 and group g (g1, g2), all but b2 mirrored to site-a,
# and the replicas site-a/a1, site-a/a2. Stopped, then damaged on disk: b2's and g2's
# volume.meta (garbage), b3's mirror state (unreadable JSON), a2's replica.meta
# (truncated). Restarted, site-b must serve b1 and site-a/a1, show the four damaged
# objects as failed with the reason, refuse commands aimed at them with that reason,
# resume b1's mirror but not group g's, and refuse (not overwrite) deltas for a2.
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes site-a site-b
start_node site-a
start_node site-b

for vol in a1 a2; do
  am site-a volume create "$vol" --size 4M >/dev/null
  write_random site-a "$vol" 0 $((1024 * 1024))
  am site-a mirror start "$vol" --to site-b --interval 1s >/dev/null
  mirror_sync site-a "$vol"
done
for vol in b1 b2 b3; do
  am site-b volume create "$vol" --size 4M >/dev/null
  write_random site-b "$vol" 4096 300000
done
am site-b volume create g1 --size 4M --group g >/dev/null
am site-b volume create g2 --size 4M --group g >/dev/null
am site-b mirror start b1 --to site-a --interval 1s >/dev/null
am site-b mirror start b3 --to site-a --interval 1s >/dev/null
am site-b mirror start --group g --to site-a --interval 1s >/dev/null
mirror_sync site-b b1
mirror_sync site-b b3
mirror_sync site-b --group g
compare_replica site-a a1 site-b

stop_node site-b
B=$WORK/site-b.d
head -c 200 /dev/urandom >"$B/volumes/b2/volume.meta"
head -c 200 /dev/urandom >"$B/volumes/g2/volume.meta"
echo '{"format": 1, "unit": ' >"$B/mirrors/b3.json"
truncate -s 20 "$B/replicas/site-a/a2/replica.meta"
a2_meta_sum=$(md5sum <"$B/replicas/site-a/a2/replica.meta")
a2_image_sum=$(md5sum <"$B/replicas/site-a/a2/base.img")

log "site-b starts despite the damage"
start_node site-b
status=$(status_json site-b)
for vol in b2 g2 b3; do
  [[ $(jq -r --arg v "$vol" '.volumes[] | select(.name == $v) | .state' <<<"$status") == failed ]] ||
    fail "volume $vol is not shown as failed: $status"
  [[ -n $(jq -r --arg v "$vol" '.volumes[] | select(.name == $v) | .error // empty' <<<"$status") ]] ||
    fail "failed volume $vol has no error in status: $status"
done
jq -e '.volumes[] | select(.name == "b3") | .error | test("mirror state")' <<<"$status" >/dev/null ||
  fail "b3's error does not say its mirror state is the problem: $status"
[[ $(replica_field site-b site-a a2 state) == failed ]] || fail "replica site-a/a2 is not shown as failed: $status"
[[ -n $(replica_field site-b site-a a2 error) ]] || fail "replica site-a/a2 has no error: $status"
[[ $(volume_field site-b b1 state) == ok ]] || fail "b1 is not ok: $status"
[[ $(replica_field site-b site-a a1 state) == idle ]] || fail "replica site-a/a1 is not idle: $status"
grep -q ' ERROR node volume=b2 error=.*msg="volume failed to open; not served"$' "$WORK/site-b.log" || fail "site-b did not log b2's failure on stderr"
grep -q ' ERROR receiver replica=site-a/a2 error=.*msg="replica failed to open; not served"$' "$WORK/site-b.log" || fail "site-b did not log a2's failure on stderr"
am site-b status | grep -q "volume b2  FAILED" || fail "human status does not show b2 FAILED: $(cat "$WORK/last.out")"

log "healthy objects are served over NBD, failed ones are not"
compare_replica site-a a1 site-b
qemu-io -r -f raw -c "read -q 0 4096" "$(vol_uri site-b b1)" >/dev/null 2>&1 || fail "cannot read b1 over NBD"
# refused with the reason (qemu-io prints the server's message)
if qemu-io -r -f raw -c "read -q 0 4096" "$(vol_uri site-b b2)" >/dev/null 2>"$WORK/nbd.err"; then fail "failed volume b2 is exported"; fi
grep -q "export 'b2' is unavailable: volume failed to open" "$WORK/nbd.err" || fail "NBD refusal of b2 says not why: $(cat "$WORK/nbd.err")"
if qemu-io -r -f raw -c "read -q 0 4096" "$(replica_uri site-b site-a a2)" >/dev/null 2>"$WORK/nbd.err"; then
  fail "failed replica site-a/a2 is exported"
fi
grep -q "unavailable: replica failed to open" "$WORK/nbd.err" || fail "NBD refusal of site-a/a2 says not why: $(cat "$WORK/nbd.err")"

log "commands aimed at a failed volume say why"
am_try site-b mirror start b2 --to site-a && fail "mirror start of failed volume b2 succeeded"
grep -q "b2.*failed to open" "$WORK/last.err" || fail "mirror start b2: unclear error: $(cat "$WORK/last.err")"
am_try site-b volume create b2 --size 1M && fail "volume create over failed volume b2 succeeded"
grep -q "b2.*failed to open" "$WORK/last.err" || fail "volume create b2: unclear error: $(cat "$WORK/last.err")"
am_try site-b mirror start --group g --to site-a && fail "mirror start of group g (member g2 failed) succeeded"
grep -q "g2" "$WORK/last.err" || fail "mirror start --group g: error does not name g2: $(cat "$WORK/last.err")"

log "b1's mirror resumed, group g's did not (and says why)"
[[ $(mirror_field site-b g1 site-a state) == stopped ]] || fail "group g's mirror runs without g2: $(status_json site-b)"
mirror_field site-b g1 site-a last_error | grep -q "g2" || fail "g1's mirror does not say why it is stopped: $(status_json site-b)"
write_random site-b b1 $((2 * 1024 * 1024 + 5)) 200000
mirror_sync site-b b1
compare_replica site-b b1 site-a

log "a peer sending to the failed replica gets the reason and overwrites nothing"
write_random site-a a2 8192 100000
wait_until 60 "site-a to report site-b's refusal of a2" \
  bash -c "\"$AMIRROR\" status --json --node $WORK/site-a.sock | jq -e '.volumes[] | select(.name == \"a2\") | .mirrors[] | select(.target == \"site-b\") | .last_error // \"\" | test(\"a2 failed to open\")' >/dev/null"
[[ $(md5sum <"$B/replicas/site-a/a2/replica.meta") == "$a2_meta_sum" ]] || fail "the failed replica's meta was overwritten"
[[ $(md5sum <"$B/replicas/site-a/a2/base.img") == "$a2_image_sum" ]] || fail "the failed replica's image was overwritten"
# the healthy replica keeps following
write_random site-a a1 12288 100000
mirror_sync site-a a1
compare_replica site-a a1 site-b

stop_node site-a
stop_node site-b
log "PASS"
