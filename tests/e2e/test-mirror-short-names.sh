#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One-character names are valid everywhere: nodes `a` and `b`, volume `v`. The target
# must restart (SIGTERM and kill -9) with its replica a/v intact and keep following
# (issue 9 item 2: a size check assumed longer names and refused the replica's meta).
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes a b
start_node a
start_node b

am a volume create v --size 8M >/dev/null
write_random a v 0 $((1024 * 1024))
write_pattern a v $((8 * 1024 * 1024 - 4096)) 4k 7
am a mirror start v --to b --interval 1s >/dev/null
mirror_sync a v
compare_replica a v b

restart_target() {
  local how=$1 seed=$2
  log "restart b with $how"
  if [[ $how == kill ]]; then kill_node b; else stop_node b; fi
  start_node b
  [[ $(replica_field b a v state) != failed ]] || fail "replica a/v is failed after restarting b ($how): $(replica_field b a v error)"
  compare_replica a v b
  # and it keeps following
  write_pattern a v $((seed * 65536)) 64k "$seed"
  write_random a v $((2 * 1024 * 1024 + seed * 4096 + 17)) 100000
  mirror_sync a v
  compare_replica a v b
}

restart_target term 3
restart_target kill 5

stop_node a
stop_node b
log "PASS"
