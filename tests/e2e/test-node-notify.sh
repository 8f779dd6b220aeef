#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `amirror node` under a Type=notify unit: with NOTIFY_SOCKET set (as systemd does) it
# sends READY=1 only once it serves — the control socket answers, the NBD socket
# exists — with a STATUS= line counting what it holds, and STOPPING=1 at SIGTERM,
# before it exits 0. The listener is a real Unix datagram socket, as systemd's is.
source "$(dirname "$0")/mirror-lib.sh"
MIRROR_TLS=0

setup_nodes site-a
NOTIFY_SOCK=$WORK/notify.sock
NOTIFY_LOG=$WORK/notify.log
# Each datagram, then a "--" line; READY=1 is followed by a check that the node serves
# at that moment (written into the log too, so it is ordered with the messages).
python3 - "$NOTIFY_SOCK" "$NOTIFY_LOG" "$AMIRROR" "$WORK/site-a.sock" "$WORK/site-a-nbd.sock" <<'PY' &
import os, socket, subprocess, sys
path, log_path, amirror, control, nbd = sys.argv[1:6]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
with open(log_path, "a", buffering=1) as log:
    log.write("listening\n")
    while True:
        message = listener.recv(4096).decode()
        log.write(message.rstrip("\n") + "\n--\n")
        if "READY=1" in message.split("\n"):
            status = subprocess.run([amirror, "status", "--json", "--node", control], capture_output=True)
            log.write(f"serving-at-ready: control={status.returncode} nbd={os.path.exists(nbd)}\n")
PY
SERVE_PID[notify-listener]=$!
wait_for_line "$NOTIFY_LOG" '^listening$'

start_notified_node() {
  echo "=== start $(date +%T.%N) ===" >>"$WORK/site-a.log"
  NOTIFY_SOCKET=$NOTIFY_SOCK "$AMIRROR" node --config "$WORK/site-a.toml" >>"$WORK/site-a.log" 2>&1 &
  SERVE_PID[site-a]=$!
}

log "first start: READY=1 once serving, with what it holds"
start_notified_node
wait_for_line "$NOTIFY_LOG" '^READY=1$'
wait_for_line "$NOTIFY_LOG" '^serving-at-ready: '
grep -q '^serving-at-ready: control=0 nbd=True$' "$NOTIFY_LOG" ||
  fail "READY=1 came before the node served: $(grep serving-at-ready "$NOTIFY_LOG")"
grep -qx 'STATUS=serving 0 volumes, 0 replicas; 0 mirrors' "$NOTIFY_LOG" ||
  fail "no STATUS line for an empty node: $(cat "$NOTIFY_LOG")"
! grep -q '^STOPPING=1$' "$NOTIFY_LOG" || fail "STOPPING=1 before any SIGTERM"

am site-a volume create db --size 1M >/dev/null
am site-a volume create logs --size 1M >/dev/null

log "SIGTERM: STOPPING=1, then a clean exit"
kill -TERM "${SERVE_PID[site-a]}"
wait_for_line "$NOTIFY_LOG" '^STOPPING=1$'
rc=0
wait "${SERVE_PID[site-a]}" || rc=$?
unset "SERVE_PID[site-a]"
((rc == 0)) || fail "node exited $rc after SIGTERM: $(tail -n 5 "$WORK/site-a.log")"

log "second start: the STATUS line counts the volumes"
: >"$NOTIFY_LOG"
start_notified_node
wait_for_line "$NOTIFY_LOG" '^READY=1$'
grep -qx 'STATUS=serving 2 volumes, 0 replicas; 0 mirrors' "$NOTIFY_LOG" ||
  fail "STATUS does not count the 2 volumes: $(cat "$NOTIFY_LOG")"
stop_node site-a
grep -q '^STOPPING=1$' "$NOTIFY_LOG" || fail "no STOPPING=1 at the second stop: $(cat "$NOTIFY_LOG")"

log "without NOTIFY_SOCKET nothing is sent and the node runs as before"
: >"$NOTIFY_LOG"
start_node site-a
stop_node site-a
[[ ! -s $NOTIFY_LOG ]] || fail "a node without NOTIFY_SOCKET sent: $(cat "$NOTIFY_LOG")"
log "PASS"
