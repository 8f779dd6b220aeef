#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# kill -9 of the target in the middle of an initial sync. A replica's first full copy is
# written straight into its base.img (docs/formats/replica.md, "Base fill"), which is
# then no point at all: while it fills, the replica must not be readable (NBD read
# refused, image_cycle null); after the kill and a restart the copy resumes from the
# target's durable resume point (not from the start), and the replica then equals the
# source byte for byte, as NBD export and as raw file.
source "$(dirname "$0")/mirror-lib.sh"

MIB=$((1024 * 1024))
SIZE_MIB=${SIZE_MIB:-128}
DATA=$((SIZE_MIB * MIB))
setup_nodes site-a site-b
# A 32 MB/s link: the copy lasts seconds on any machine, so the checks and the kill
# below land mid-copy however fast this machine is (a bound on speed, not a schedule).
proxy_link site-a site-b link --rate $((32 * 1000 * 1000))
start_node site-a
start_node site-b

am site-a volume create big --size ${SIZE_MIB}M >/dev/null
head -c $DATA /dev/urandom >"$WORK/in.raw"
nbdcopy "$WORK/in.raw" "$(vol_uri site-a big)" || fail "nbdcopy of random data into the volume failed"
rm -f "$WORK/in.raw"

sent_at_least() { (($(mirror_field site-a big site-b bytes_sent) >= $1)); }
log "initial sync of $SIZE_MIB MiB"
am site-a mirror start big --to site-b --interval 1s >/dev/null
wait_until 120 "a third of the initial copy to be sent" sent_at_least $((DATA / 3))

log "mid-fill: the replica must not be readable"
[[ $(replica_field site-b site-a big state) == receiving ]] ||
  fail "replica state is '$(replica_field site-b site-a big state)' mid-copy, expected receiving"
[[ -z $(replica_field site-b site-a big image_cycle) ]] ||
  fail "image_cycle is $(replica_field site-b site-a big image_cycle) while base.img is being filled"
if nbdcopy "$(replica_uri site-b site-a big)" "$WORK/partial.raw" 2>"$WORK/partial.err"; then
  fail "reading the replica over NBD mid-copy succeeded: a partial image was served"
fi
rm -f "$WORK/partial.raw"
[[ $(mirror_field site-a big site-b applied_cycle) == 0 ]] || fail "the copy finished before the checks: the test proves nothing"

kill_node site-b
sent_at_kill=$(mirror_field site-a big site-b bytes_sent)
log "killed site-b at bytes_sent=$sent_at_kill"
start_node site-b
[[ -z $(replica_field site-b site-a big image_cycle) ]] ||
  fail "after the restart, image_cycle is $(replica_field site-b site-a big image_cycle) for a base only partly filled"
mirror_sync site-a big
compare_replica site-a big site-b
sent=$(mirror_field site-a big site-b bytes_sent)
log "bytes_sent after the target restart and sync: $sent for $DATA bytes of data"
((sent <= DATA + DATA / 4 + MIB)) ||
  fail "bytes_sent $sent for $DATA bytes of data after a target kill at $sent_at_kill: the fill restarted from the beginning instead of resuming"
# The mirror keeps cycling (interval 1s), so the two are read at different moments:
# they must come to agree, not be equal at one arbitrary pair of reads.
cycles_agree() { [[ $(replica_field site-b site-a big image_cycle) == $(mirror_field site-a big site-b applied_cycle) ]]; }
wait_until 60 "the replica's image_cycle to equal the source's applied_cycle" cycles_agree

stop_node site-a
stop_node site-b
log "PASS"
