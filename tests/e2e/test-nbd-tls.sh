#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# NBD STARTTLS with `amirror serve --tls require`, certificates made with the openssl
# command line (tests/e2e/pki.sh: the commands docs/security.md shows). Checks:
#   - qemu-io (tls-creds-x509) and nbdinfo (nbds://, tls-certificates=) work over TLS,
#     including writes and reads of patterns bigger than one TLS record;
#   - plaintext clients on TCP are refused with "TLS required" (nbdinfo, qemu-io);
#   - a client whose certificate comes from another CA is refused, and the server logs
#     why;
#   - nbd_abuse tls-refusals: every option before STARTTLS gets ERR_TLS_REQD,
#     EXPORT_NAME before TLS closes, plaintext pipelined after STARTTLS is never
#     answered;
#   - the Unix socket still serves plaintext (TLS allowed there, not required);
#   - `--tcp PORT` binds loopback only; usage errors exit 2 and name the missing flag.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/pki.sh"
: "${TOOLS_DIR:?set TOOLS_DIR to the tests/tools build directory (ctest does this)}"
ABUSE="$TOOLS_DIR/nbd_abuse"
[[ -x "$ABUSE" ]] || fail "missing $ABUSE; build the tests first"
require_cmd qemu-io nbdinfo openssl

make_pki "$WORK/pki" server client
make_pki "$WORK/other" stranger
client_dir "$WORK/client" "$WORK/pki/ca.crt" "$WORK/pki/client.crt" "$WORK/pki/client.key"
# Trusts the server, but its own certificate is signed by a CA the server does not know.
client_dir "$WORK/stranger" "$WORK/pki/ca.crt" "$WORK/other/stranger.crt" "$WORK/other/stranger.key"
TLS_FLAGS=(--tls-certificate "$WORK/pki/server.crt" --tls-key "$WORK/pki/server.key"
  --tls-ca "$WORK/pki/ca.crt")

# Usage errors: exit 2, naming the flag.
expect_usage_error() {  # expect_usage_error WORD ARGS...
  local word=$1 rc=0
  shift
  "$AMIRROR" serve --data-dir "$WORK/usage.d" --tcp 0 "$@" >"$WORK/usage.out" 2>&1 || rc=$?
  ((rc == 2)) || fail "serve $* exited $rc, expected 2: $(cat "$WORK/usage.out")"
  grep -q -- "$word" "$WORK/usage.out" || fail "serve $*: message does not name $word: $(cat "$WORK/usage.out")"
}
expect_usage_error --tls-certificate --tls require
expect_usage_error --tls-ca --tls allow --tls-certificate "$WORK/pki/server.crt" --tls-key "$WORK/pki/server.key"
expect_usage_error --tls-key --tls-key "$WORK/pki/server.key"
expect_usage_error --tls --tls sometimes "${TLS_FLAGS[@]}"

# The server; --tcp 0 picks a free port, which the startup line names.
start_serve a --create vol --size 64M --chunk-size 16K --freeze-interval 500ms \
  --tcp 127.0.0.1:0 --tls require "${TLS_FLAGS[@]}"
wait_for_line "$WORK/a.log" ' INFO serve .*msg="serving"$'
PORT=$(sed -n 's/.* INFO serve .* tcp=127\.0\.0\.1:\([0-9]*\) .*msg="serving"$/\1/p' "$WORK/a.log")
[[ -n "$PORT" ]] || fail "no TCP port in the startup line: $(cat "$WORK/a.log")"
grep -q ' tls="TLS require as CN=server' "$WORK/a.log" || fail "startup line does not mention TLS"
log "serving on 127.0.0.1:$PORT with TLS required"

# qemu-io over TLS: patterns, unaligned, across TLS record and chunk boundaries.
QEMU_TLS=(--object "tls-creds-x509,id=tls0,endpoint=client,dir=$WORK/client" --image-opts
  "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=vol,tls-creds=tls0")
out=$(qemu-io "${QEMU_TLS[@]}" -c 'write -q -P 0xa5 0 4M' -c 'write -q -P 0x3c 12345 100000' \
  -c 'write -q -P 0x77 131071 1' 2>&1) || fail "qemu-io write over TLS failed: $out"
out=$(qemu-io "${QEMU_TLS[@]}" -c 'read -q -P 0xa5 0 12345' -c 'read -q -P 0x3c 12345 100000' \
  -c 'read -q -P 0xa5 112345 18726' -c 'read -q -P 0x77 131071 1' -c 'read -q -P 0xa5 131072 4063232' \
  2>&1) || fail "qemu-io read over TLS failed: $out"
! grep -qi 'fail\|error' <<<"$out" || fail "qemu-io over TLS: $out"
log "qemu-io over TLS: patterns written and verified"

# nbdinfo over TLS sees the export, and says TLS is in use.
out=$(nbdinfo "nbds://127.0.0.1:$PORT/vol?tls-certificates=$WORK/client" 2>&1) ||
  fail "nbdinfo over TLS failed: $out"
grep -q 'with TLS' <<<"$out" || fail "nbdinfo does not report TLS: $out"
grep -q 'export-size: 67108864' <<<"$out" || fail "nbdinfo over TLS: wrong size: $out"
grep -q ' INFO nbd .* tls_client="CN=client" .*msg="serving export"$' "$WORK/a.log" || fail "server did not log the TLS client"

# Plaintext clients on TCP are refused.
if out=$(nbdinfo --size "nbd://127.0.0.1:$PORT/vol" 2>&1); then
  fail "plaintext nbdinfo was served although TLS is required: $out"
fi
if out=$(qemu-io -f raw -c 'read 0 512' "nbd://127.0.0.1:$PORT/vol" 2>&1); then
  fail "plaintext qemu-io was served although TLS is required: $out"
fi
grep -qi 'TLS' <<<"$out" || fail "plaintext qemu-io refused, but not for TLS: $out"
grep -q ' INFO nbd .*reason=".*aborted the handshake after being told TLS is required.*msg="handshake ended"$' "$WORK/a.log" ||
  fail "server did not log the plaintext refusal"

# A certificate from another CA is refused by the server, which says so.
if out=$(nbdinfo --size "nbds://127.0.0.1:$PORT/vol?tls-certificates=$WORK/stranger" 2>&1); then
  fail "a client certificate from another CA was accepted: $out"
fi
wait_for_line "$WORK/a.log" ' WARN nbd .*error="TLS handshake failed.*not trusted'
grep -q ' WARN nbd .*error="TLS handshake failed.*not trusted.*msg="refused"$' "$WORK/a.log" ||
  fail "server did not log the untrusted client certificate"

# Protocol-level refusals, including plaintext pipelined after STARTTLS.
"$ABUSE" "tcp:127.0.0.1:$PORT" vol tls-refusals || fail "TLS refusal scenarios failed (see above)"
grep -q ' WARN nbd .*error="TLS handshake failed.*sent plaintext.*msg="refused"$' "$WORK/a.log" ||
  fail "server did not log the plaintext sent after STARTTLS"
server_alive a || fail "server died during the refusals"

# The Unix socket (0600) serves plaintext: TLS is allowed there, not required.
[[ $(stat -c %a "$WORK/a.sock") == 600 ]] || fail "socket mode is $(stat -c %a "$WORK/a.sock")"
out=$(qemu-io -f raw -c 'read -q -P 0x3c 12345 100000' "$(nbd_uri a vol)" 2>&1) ||
  fail "plaintext over the Unix socket failed: $out"
[[ $(nbdinfo --size "nbds+unix:///vol?socket=$WORK/a.sock&tls-certificates=$WORK/client") == 67108864 ]] ||
  fail "TLS over the Unix socket failed"

# After all that, TLS clients still get their data.
out=$(qemu-io "${QEMU_TLS[@]}" -c 'read -q -P 0xa5 131072 4063232' 2>&1) || fail "TLS read after refusals: $out"
stop_serve a

# `--tcp PORT` listens on loopback only, TLS or not.
start_serve b --create vol --size 16M --tcp 0 --tls allow "${TLS_FLAGS[@]}" --quiet
wait_for_line "$WORK/b.log" ' INFO serve .*msg="serving"$'
grep -q ' tcp=127\.0\.0\.1:[0-9]* ' "$WORK/b.log" || fail "--tcp PORT did not bind loopback: $(cat "$WORK/b.log")"
PORT=$(sed -n 's/.* tcp=127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$WORK/b.log")
# /proc/net/tcp: local address 0100007F is 127.0.0.1, state 0A is LISTEN.
port_hex=$(printf '%04X' "$PORT")
grep -q "^ *[0-9]*: 0100007F:$port_hex 00000000:0000 0A" /proc/net/tcp ||
  fail "no loopback listener on port $PORT: $(grep ":$port_hex " /proc/net/tcp)"
# allow: plaintext and TLS both served on TCP.
[[ $(nbdinfo --size "nbd://127.0.0.1:$PORT/vol") == 16777216 ]] || fail "--tls allow refused plaintext"
[[ $(nbdinfo --size "nbds://127.0.0.1:$PORT/vol?tls-certificates=$WORK/client") == 16777216 ]] ||
  fail "--tls allow refused TLS"
stop_serve b
log "PASS"
