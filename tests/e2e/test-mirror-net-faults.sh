#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Network faults between source and target, injected by tests/e2e/fault_proxy.py:
# flipped bits, connection resets at random bytes, latency with a bandwidth cap, and
# stalls. Each time replication must resume by itself and converge to a byte-exact
# replica; corrupted frames must be detected (never staged or applied); a reset must
# cost at most the unacknowledged part again (bytes_sent bounds); status must show
# the error while it lasts.
source "$(dirname "$0")/mirror-lib.sh"
MIRROR_PEER_TIMEOUT=3s
SIZE_MIB=32
DATA=$((SIZE_MIB * 1024 * 1024))

# run_through_proxy LABEL PROXY_ARGS...: fresh nodes, site-a sends to site-b through a
# proxy with these faults; writes random data, syncs, compares; prints bytes_sent.
run_through_proxy() {
  local label=$1
  shift
  setup_nodes site-a site-b
  proxy_link site-a site-b "$label" "$@"
  start_node site-a
  start_node site-b
  am site-a volume create "$label" --size ${SIZE_MIB}M >/dev/null
  head -c $DATA /dev/urandom >"$WORK/$label.data"
  nbdcopy "$WORK/$label.data" "$(vol_uri site-a "$label")" || fail "nbdcopy into $label failed"
  am site-a mirror start "$label" --to site-b --interval 1h >/dev/null
  SYNC_TIMEOUT=240s mirror_sync site-a "$label"
  compare_replica site-a "$label" site-b
  SENT=$(mirror_field site-a "$label" site-b bytes_sent)
  unproxy "$label"
  stop_node site-a
  stop_node site-b
  rm -rf "$WORK"/site-*.d "$WORK/$label.data"
}

# check_flips LABEL TRANSPORT PATTERN: the proxy flipped bits and site-b's log shows
# PATTERN (how that transport detects corruption) at least once.
check_flips() {
  local label=$1 transport=$2 pattern=$3 flips detected
  flips=$(grep -c flipped "$WORK/proxy-$label.log")
  ((flips >= 2)) || fail "the proxy flipped only $flips bits; the test did not exercise corruption"
  detected=$(grep -c " WARN receiver .*error=\".*$pattern.*msg=\"closing the peer connection\"" "$WORK/site-b.log" || true)
  ((detected >= 1)) || fail "$flips bits were flipped ($transport) but site-b logged no '$pattern': $(tail -5 "$WORK/site-b.log")"
  log "$transport: flipped $flips bits, site-b refused $detected corrupt frames, replica exact; sent $SENT bytes for $DATA"
  ((SENT < 4 * DATA)) || fail "with $flips flips, $SENT bytes were sent for $DATA bytes of data: resends are not bounded"
  : >"$WORK/site-b.log"
}

# Plaintext (insecure = true): the frame checksums are what catches corruption.
log "flipped bits, plaintext: one in every ~8 MiB"
MIRROR_TLS=0
run_through_proxy flips --flip-every $((8 * 1024 * 1024)) --seed 7
check_flips flips plaintext "checksum"
# TLS: the record MAC catches it before any frame is decoded.
log "flipped bits, TLS: one in every ~8 MiB"
MIRROR_TLS=1
run_through_proxy flips-tls --flip-every $((8 * 1024 * 1024)) --seed 7
check_flips flips-tls TLS "bad record mac"

log "connection resets at random bytes (first 4 connections)"
run_through_proxy resets --reset-within $DATA --resets 4 --seed 3
resets=$(grep -c "reset connection" "$WORK/proxy-resets.log")
((resets >= 1)) || fail "no connection was reset"
# Each reset costs at most what was in flight (socket buffers), since the copy resumes
# from the target's durable staging; allow 16 MiB per reset.
((SENT <= DATA + resets * 16 * 1024 * 1024 + 1024 * 1024)) ||
  fail "$resets resets cost $SENT bytes for $DATA bytes of data: the copy restarted instead of resuming"
log "$resets resets, sent $SENT bytes for $DATA bytes of data, replica exact"

log "5 ms latency per packet burst, a 16 MB/s cap, and a 5 s stall (peer timeout 3 s)"
run_through_proxy slow --delay-ms 5 --rate $((16 * 1000 * 1000)) --stall-ms 5000 --seed 5
grep -q stalled "$WORK/proxy-slow.log" || fail "the proxy never stalled"
log "slow link with a stall: replica exact, sent $SENT bytes"
log PASS
