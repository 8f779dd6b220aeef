#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Nodes restarted between cycles: the target and the source, each once with SIGTERM and
# once with kill -9 (after the writes were flushed). Every time the mirror resumes by
# itself (persisted), converges (replica == source after `mirror sync`), and ships only
# what changed: bytes_sent stays below 2x the data written plus framing.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((32 * 1024 * 1024))
setup_nodes site-a site-b
start_node site-a
start_node site-b

am site-a volume create db --size 32M >/dev/null
written=0
# wr OFFSET LENGTH: random data, counted
wr() {
  write_random site-a db "$1" "$2"
  written=$((written + $2))
}
wr 0 $((8 * 1024 * 1024))
am site-a mirror start db --to site-b --interval 1s >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b

# applied CYCLE_MIN: wait until the mirror applied a cycle > CYCLE_MIN on its own
wait_applied_after() {
  wait_until 60 "the mirror to site-b to apply a cycle after $1 without a sync request" \
    bash -c "c=\$(\"$AMIRROR\" status --json --node $WORK/site-a.sock 2>/dev/null | jq '.volumes[] | select(.name==\"db\") | .mirrors[] | select(.target==\"site-b\") | .applied_cycle'); [[ -n \$c ]] && ((c > $1))"
}

round() {
  local how=$1 who=$2 seed=$3
  log "restart $who with $how between cycles"
  mirror_sync site-a db
  local before
  before=$(mirror_field site-a db site-b applied_cycle)
  wr $((seed * 1048576 + 4097)) 300000
  write_pattern site-a db $((SIZE - 512)) 512 $((seed + 1))
  written=$((written + 512))
  if [[ $who == site-b ]]; then
    # the source keeps writing while its target is away
    if [[ $how == kill ]]; then kill_node site-b; else stop_node site-b; fi
    wr $((seed * 1048576 + 2 * 1048576 + 3)) 200000
    # and freezes twice more (cycles run on without it)
    local next
    next=$(($(volume_field site-a db cycle) + 2))
    wait_until 60 "site-a to freeze db twice while site-b is away" cycle_at_least site-a db "$next"
    start_node site-b
  else
    if [[ $how == kill ]]; then kill_node site-a; else stop_node site-a; fi
    start_node site-a
    [[ -n $(mirror_field site-a db site-b state) ]] || fail "the mirror of db to site-b is gone after restarting site-a"
    wr $((seed * 1048576 + 2 * 1048576 + 3)) 200000
  fi
  wait_applied_after "$before"
  mirror_sync site-a db
  compare_replica site-a db site-b
  local sent
  sent=$(mirror_field site-a db site-b bytes_sent)
  log "  bytes_sent $sent for $written bytes written so far"
  ((sent < 2 * written + 1024 * 1024)) || fail "after restarting $who ($how) bytes_sent is $sent for $written bytes written: a resend loop or full resync"
}

round term site-b 1
round term site-a 2
round kill site-b 3
round kill site-a 4

# the replica survives a restart of the target intact and stays served
stop_node site-b
start_node site-b
compare_replica site-a db site-b

stop_node site-a
stop_node site-b
log "PASS"
