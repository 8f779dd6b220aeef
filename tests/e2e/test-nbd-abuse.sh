#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Protocol abuse (tests/tools/nbd_abuse.cc): truncated and garbage handshakes, unknown
# options, 4 GiB option length, 5000-byte export names, bad magic, length 2^32-1,
# offset+length overflow, unknown commands and flags, a client vanishing mid-write,
# more connections than the limit. After each, a healthy client still reads the
# pattern. Then shutdown with clients holding their sockets open (negotiated and
# mid-handshake): the server must still exit cleanly on SIGTERM.
source "$(dirname "$0")/lib.sh"
: "${TOOLS_DIR:?set TOOLS_DIR to the tests/tools build directory (ctest does this)}"
ABUSE="$TOOLS_DIR/nbd_abuse"
[[ -x "$ABUSE" ]] || fail "missing $ABUSE; build the tests first"
require_cmd qemu-io

start_serve a --create vol --size 64M --chunk-size 16K --freeze-interval 1s
URI=$(nbd_uri a vol)
qemu-io -f raw -c 'write -q -P 0x5a 0 1M' "$URI" || fail "writing the pattern failed"

"$ABUSE" "$WORK/a.sock" vol all || fail "abuse scenarios failed (see above)"
server_alive a || fail "server died during the abuse scenarios"
out=$(qemu-io -f raw -c 'read -P 0x5a 0 1M' "$URI" 2>&1) || fail "pattern damaged after abuse: $out"

# Shutdown while clients hold sockets open.
"$ABUSE" "$WORK/a.sock" vol hold >"$WORK/hold1.out" 2>&1 &
hold1=$!
"$ABUSE" "$WORK/a.sock" vol hold-handshake >"$WORK/hold2.out" 2>&1 &
hold2=$!
for out in hold1 hold2; do
  wait_for_line "$WORK/$out.out" holding
done
stop_serve a
wait $hold1 || fail "holding client: $(cat "$WORK/hold1.out")"
wait $hold2 || fail "holding client (handshake): $(cat "$WORK/hold2.out")"

# Everything still there after restart.
start_serve a --quiet
out=$(qemu-io -f raw -c 'read -P 0x5a 0 1M' "$URI" 2>&1) || fail "pattern damaged after restart: $out"
stop_serve a
log "PASS"
