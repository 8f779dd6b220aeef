#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Keeping strangers out of peer connections: TLS 1.3 with mutual authentication.
# A good pair mirrors and says so in status; then a source with a certificate from
# another CA, one presenting another node's (valid) certificate, a target presenting
# the wrong identity, a volume the target does not accept from that peer, a client with
# no certificate, and a plaintext source are each
# refused, logged on the side that refused, shown in the source's status, and change
# nothing on the target. Plaintext works only with insecure = true on both, and status
# says INSECURE. A node with peers and neither TLS nor insecure = true does not start.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd openssl

setup_nodes site-a site-b
start_node site-a
start_node site-b
am site-a volume create good --size 8M >/dev/null
write_random site-a good 0 1M
am site-a mirror start good --to site-b --interval 1h >/dev/null
mirror_sync site-a good
compare_replica site-a good site-b
am site-a status >"$WORK/status.txt"
grep -q "peers: TLS 1.3, mutual authentication, this node is CN=site-a" "$WORK/status.txt" ||
  fail "status does not show the TLS transport: $(cat "$WORK/status.txt")"
[[ $(status_json site-b | jq -r .peer_transport.mode) == tls ]] || fail "status --json transport is not tls"
good_cycle=$(replica_field site-b site-a good applied_cycle)
log "good pair: mirrored over TLS, replica exact at cycle $good_cycle"

log "the replica over NBD with STARTTLS required (nbd_tls = \"require\")"
nbd_port=$(free_ports 1)
sed -i "/^listen = /a nbd_listen = \"127.0.0.1:$nbd_port\"\nnbd_tls = \"require\"" "$WORK/site-b.toml"
stop_node site-b
start_node site-b
client_dir "$WORK/nbd-client" "$WORK/pki/ca.crt" "$WORK/pki/site-a.crt" "$WORK/pki/site-a.key"
nbdcopy "nbds://localhost:$nbd_port/site-a/good?tls-certificates=$WORK/nbd-client" "$WORK/replica-over-tls.img" ||
  fail "nbdcopy over TLS from site-b failed"
nbdcopy "$(vol_uri site-a good)" "$WORK/source.img" || fail "cannot read the source volume"
cmp "$WORK/source.img" "$WORK/replica-over-tls.img" || fail "the replica read over NBD+TLS differs from the source"
if nbdinfo "nbd://localhost:$nbd_port/site-a/good" >"$WORK/plain.out" 2>&1; then
  fail "a plaintext NBD client read the replica although nbd_tls = require"
fi
log "read the replica over nbds:// (TLS) and compared it; a plaintext client was refused"

# set_tls NODE CERT_DIR CERT_NAME [IDENTITY_OF_PEER]: rewrite NODE's [tls] files.
set_tls() {
  local node=$1 dir=$2 cert=$3
  sed -i -e "s|^certificate = .*|certificate = \"$dir/$cert.crt\"|" -e "s|^key = .*|key = \"$dir/$cert.key\"|" \
    -e "s|^ca = .*|ca = \"$dir/ca.crt\"|" "$WORK/$node.toml"
}

# attempt LABEL: with site-a's config as the caller left it, restart site-a, mirror a new
# volume to site-b, and wait until the attempt fails; LAST_ERROR is the source's error.
# Nothing may appear on site-b, and the good replica must be untouched.
attempt() {
  local label=$1 volume=v-$1
  stop_node site-a
  start_node site-a
  am site-a volume create "$volume" --size 4M >/dev/null
  write_random site-a "$volume" 0 64K
  am site-a mirror start "$volume" --to site-b --interval 1h >/dev/null
  wait_until 30 "$label: the transfer to fail" bash -c \
    "[[ -n \$(\"$AMIRROR\" status --json --node \"$WORK/site-a.sock\" | jq -r '.volumes[] | select(.name == \"$volume\") | .mirrors[0].last_error // empty') ]]"
  LAST_ERROR=$(mirror_field site-a "$volume" site-b last_error)
  [[ -z $(replica_field site-b site-a "$volume" applied_cycle) ]] ||
    fail "$label: site-b holds a replica of $volume after refusing the peer"
  [[ ! -e $WORK/site-b.d/replicas/site-a/$volume ]] || fail "$label: site-b created files for $volume"
  # (Unless the refused party is only the new volume: then "good" keeps mirroring.)
  [[ ${GOOD_KEEPS_MIRRORING:-0} == 1 || $(replica_field site-b site-a good applied_cycle) == "$good_cycle" ]] ||
    fail "$label: the good replica changed"
  am site-a mirror break "$volume" >/dev/null
}

log "a source with a certificate from another CA"
make_pki "$WORK/other-ca" site-a
set_tls site-a "$WORK/other-ca" site-a
attempt other-ca
[[ $LAST_ERROR == *"not trusted"* ]] || fail "other CA: site-a's error does not say the target is untrusted: $LAST_ERROR"
grep -q ' WARN receiver peer=127.0.0.1:[0-9]* error="TLS handshake with .* failed: .*unknown ca.*msg="peer refused"$' "$WORK/site-b.log" ||
  fail "other CA: site-b did not log the refusal: $(tail -3 "$WORK/site-b.log")"
log "refused: $LAST_ERROR"

log "a source presenting another node's valid certificate"
issue_cert "$WORK/pki" site-c # from the good CA
set_tls site-a "$WORK/pki" site-c
attempt wrong-identity
grep -q " WARN receiver peer=.*error=\".*presented certificate CN=site-c, which does not name 'site-a'.*msg=\"" "$WORK/site-b.log" ||
  fail "wrong identity: site-b did not log the mismatch: $(tail -3 "$WORK/site-b.log")"
[[ $LAST_ERROR == *"site-b refused"*"does not name 'site-a'"* ]] ||
  fail "wrong identity: site-a's status does not show why: $LAST_ERROR"
log "refused: $LAST_ERROR"

log "a target presenting the wrong identity"
set_tls site-a "$WORK/pki" site-a
sed -i "/^name = \"site-b\"/a identity = \"site-x\"" "$WORK/site-a.toml"
attempt target-identity
[[ $LAST_ERROR == *"presented certificate CN=site-b, which does not name 'site-x'"* ]] ||
  fail "target identity: site-a did not refuse the target: $LAST_ERROR"
sed -i "/^identity = \"site-x\"/d" "$WORK/site-a.toml"
log "refused: $LAST_ERROR"

log "a source sending a volume it is not configured to send (volumes = [...] on the target)"
sed -i "/^name = \"site-a\"/a volumes = [\"good\"]" "$WORK/site-b.toml"
stop_node site-b
start_node site-b
GOOD_KEEPS_MIRRORING=1 attempt unlisted-volume
[[ $LAST_ERROR == *"may not send volume 'v-unlisted-volume'"* ]] ||
  fail "unlisted volume: site-a's status does not show the refusal: $LAST_ERROR"
grep -q " WARN receiver .*error=\".*may not send volume 'v-unlisted-volume'.*msg=\"closing the peer connection\"" "$WORK/site-b.log" || fail "unlisted volume: site-b did not log it"
am site-a mirror sync good --timeout 60s >/dev/null  # the listed volume still goes through
compare_replica site-a good site-b
good_cycle=$(replica_field site-b site-a good applied_cycle)
sed -i '/^volumes = \["good"\]/d' "$WORK/site-b.toml"
log "refused: $LAST_ERROR"

log "a TLS client with no certificate"
openssl s_client -connect "127.0.0.1:${NODE_PORT[site-b]}" -CAfile "$WORK/pki/ca.crt" -tls1_3 \
  </dev/null >"$WORK/s_client.out" 2>&1 || true
wait_until 10 "site-b to log the certificate-less client" grep -q ' WARN receiver .*error=".*did not return a certificate.*msg="peer refused"$' "$WORK/site-b.log"
log "refused and logged: $(grep "did not return a certificate" "$WORK/site-b.log" | tail -1)"

log "a plaintext source (insecure = true) against a TLS target"
sed -i -e '/^certificate = /d' -e '/^key = /d' -e 's|^ca = .*|insecure = true|' "$WORK/site-a.toml"
attempt plaintext
[[ $LAST_ERROR == *"site-b requires TLS on peer connections"* ]] ||
  fail "plaintext: site-a's status does not say the target requires TLS: $LAST_ERROR"
grep -q ' WARN receiver .*error=".*sent plaintext where a TLS handshake was expected.*msg="peer refused"$' "$WORK/site-b.log" ||
  fail "plaintext: site-b did not log the plaintext peer"
am site-a status >"$WORK/status.txt"
grep -q "peers: INSECURE: plaintext" "$WORK/status.txt" || fail "status does not warn about insecure = true"
log "refused: $LAST_ERROR"

log "insecure = true on both ends: plaintext works, and status says so"
sed -i -e '/^certificate = /d' -e '/^key = /d' -e 's|^ca = .*|insecure = true|' -e '/^nbd_tls = /d' "$WORK/site-b.toml"
stop_node site-b
start_node site-b
stop_node site-a
start_node site-a
am site-a mirror start v-plaintext --to site-b --interval 1h >/dev/null
mirror_sync site-a v-plaintext
compare_replica site-a v-plaintext site-b
[[ $(status_json site-b | jq -r .peer_transport.mode) == insecure ]] || fail "status --json does not show insecure"

log "a node with peers but neither TLS nor insecure = true does not start"
sed -i '/^insecure = true/d' "$WORK/site-b.toml"
stop_node site-b
rc=0
"$AMIRROR" node --config "$WORK/site-b.toml" >"$WORK/refused.out" 2>&1 || rc=$?
((rc != 0)) || fail "site-b started without TLS and without insecure = true"
grep -q "peer connections need TLS" "$WORK/refused.out" || fail "unclear refusal: $(cat "$WORK/refused.out")"
log "refused to start: $(head -1 "$WORK/refused.out")"
log PASS
