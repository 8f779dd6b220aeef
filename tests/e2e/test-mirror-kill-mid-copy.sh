#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# kill -9 in the middle of a copy: a 256 MiB volume of random data, initial sync running
# with --interval 1s. First the source is killed mid-copy and restarted; then, during a
# large incremental cycle, the target is killed and restarted. Each time `mirror sync`
# converges, replica == source, and bytes_sent stays below ~2x the data (no loop of
# full resends) — in fact below 1.25x: the copy resumes from the target's durable
# staging instead of starting over. bytes_sent must survive kill -9 (it counts "ever").
source "$(dirname "$0")/mirror-lib.sh"

MIB=$((1024 * 1024))
SIZE_MIB=${SIZE_MIB:-256}
setup_nodes site-a site-b
# A 48 MB/s link: each copy of the volume lasts seconds on any machine, so the kills
# below land mid-copy however fast this machine is (a bound on speed, not a schedule).
proxy_link site-a site-b link --rate $((48 * 1000 * 1000))
start_node site-a
start_node site-b

am site-a volume create big --size ${SIZE_MIB}M >/dev/null
head -c $((SIZE_MIB * MIB)) /dev/urandom >"$WORK/in.raw"
nbdcopy "$WORK/in.raw" "$(vol_uri site-a big)" || fail "nbdcopy of random data into the volume failed"
rm -f "$WORK/in.raw"

# kill_when_sent NODE MIN_BYTES: kill -9 NODE once the mirror's bytes_sent passes
# MIN_BYTES; logs where the copy was.
kill_when_sent() {
  local node=$1 min=$2 sent="" pending="" deadline=$((SECONDS + 600))
  while :; do
    read -r sent pending < <("$AMIRROR" status --json --node "$WORK/site-a.sock" 2>/dev/null |
      jq -r '.volumes[] | select(.name=="big") | .mirrors[] | select(.target=="site-b") | "\(.bytes_sent) \(.bytes_pending)"') || true
    if [[ -n $sent ]] && ((sent >= min)); then break; fi
    ((SECONDS < deadline)) || fail "bytes_sent never reached $min (at '$sent')"
    sleep 0.1
  done
  kill_node "$node"
  KILLED_AT_SENT=$sent
  log "killed $node at bytes_sent=$sent bytes_pending=$pending"
  [[ $pending != 0 ]] || fail "the copy had already finished when $node was killed: the test proves nothing"
}

DATA=$((SIZE_MIB * MIB))
log "initial sync of $SIZE_MIB MiB; kill -9 the source mid-copy"
am site-a mirror start big --to site-b --interval 1s >/dev/null
kill_when_sent site-a $((DATA / 4))
sent_at_kill=$KILLED_AT_SENT
start_node site-a
sent_after_restart=$(mirror_field site-a big site-b bytes_sent)
log "bytes_sent: $sent_at_kill when killed, $sent_after_restart right after the restart"
# bytes_sent counts every byte ever sent (persisted): a crash may lose only a little of it
((sent_after_restart + 32 * MIB >= sent_at_kill)) ||
  fail "bytes_sent went back from $sent_at_kill (before kill -9) to $sent_after_restart after the restart: the count of bytes already sent was lost"
mirror_sync site-a big
compare_replica site-a big site-b
sent=$(mirror_field site-a big site-b bytes_sent)
log "bytes_sent after the source restart and sync: $sent for $DATA bytes of data"
((sent < 2 * DATA)) || fail "bytes_sent $sent >= 2x the $SIZE_MIB MiB of data after a source kill mid-copy: resend loop"
((sent <= DATA + DATA / 4 + MIB)) ||
  fail "bytes_sent $sent for $DATA bytes of data after a source kill at $sent_at_kill: the initial sync restarted from the beginning instead of resuming"

log "large incremental cycle (the whole volume rewritten); kill -9 the target mid-copy"
base=$sent
head -c $DATA /dev/urandom >"$WORK/in2.raw"
nbdcopy "$WORK/in2.raw" "$(vol_uri site-a big)" || fail "rewriting the volume failed"
rm -f "$WORK/in2.raw"
kill_when_sent site-b $((base + DATA / 5))
# The source notices the connection drop (and retries) while the target is down.
mirror_error() { [[ -n $(mirror_field site-a big site-b last_error) ]]; }
wait_until 120 "site-a to report the lost connection to site-b" mirror_error
start_node site-b
mirror_sync site-a big
compare_replica site-a big site-b
sent=$(mirror_field site-a big site-b bytes_sent)
incr=$((sent - base))
log "incremental cycle with a target kill sent $incr bytes for $DATA bytes changed"
((incr < 2 * DATA)) || fail "incremental with a target kill sent $incr bytes >= 2x the $DATA bytes changed: resend loop"
((incr <= DATA + DATA / 4 + MIB)) ||
  fail "incremental with a target kill at $((KILLED_AT_SENT - base)) bytes into the cycle sent $incr bytes for $DATA changed: the delta restarted from the start instead of resuming from the target's durable staging"

stop_node site-a
stop_node site-b
log "PASS"
