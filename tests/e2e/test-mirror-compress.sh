#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# zstd on the wire (README "Bandwidth and compression"), over real TCP with TLS:
#  - compressible data (text) with --compress zstd (the default) crosses in fewer wire
#    bytes than data bytes, and the replica equals the source byte for byte;
#  - the same with --compress off: wire bytes = data bytes;
#  - random data with zstd never takes more wire bytes than data bytes;
#  - switching compression on the running mirror works, and the replica stays equal.
source "$(dirname "$0")/mirror-lib.sh"

SIZE=$((32 * 1024 * 1024))
setup_nodes site-a site-b
for n in site-a site-b; do start_node "$n"; done

# text_file PATH BYTES: log-like text, compressible a few times over.
text_file() {
  python3 - "$1" "$2" <<'PY'
import random, sys
rng = random.Random(7)
words = ["mirror", "cycle", "freeze", "chunk", "replica", "site-a", "site-b", "applied", "delta", "volume"]
out = bytearray()
while len(out) < int(sys.argv[2]):
    out += f"2026-12-01T23:{rng.randrange(60):02d}:{rng.randrange(60):02d} {rng.choice(words)} {rng.choice(words)} {rng.randrange(10**6)}\n".encode()
open(sys.argv[1], "wb").write(out[: int(sys.argv[2])])
PY
}
write_file() {
  qemu-io -f raw -c "write -q -s $3 0 $(stat -c %s "$3")" "$(vol_uri "$1" "$2")" >/dev/null 2>"$WORK/qemu-io.err" ||
    fail "qemu-io write of $3 to $1:$2 failed: $(cat "$WORK/qemu-io.err")"
}
sent() { mirror_field site-a "$1" site-b bytes_sent; }
wire() { mirror_field site-a "$1" site-b wire_bytes_sent; }

text_file "$WORK/text.bin" $((24 * 1024 * 1024))
for vol in zipped plain; do
  am site-a volume create "$vol" --size 32M >/dev/null
  write_file site-a "$vol" "$WORK/text.bin"
done

log "compressible data, --compress zstd (default) and off"
am site-a mirror start zipped --to site-b --interval 1h >/dev/null
am site-a mirror start plain --to site-b --interval 1h --compress off >/dev/null
mirror_sync site-a zipped
mirror_sync site-a plain
compare_replica site-a zipped site-b
compare_replica site-a plain site-b
[[ $(mirror_field site-a zipped site-b compress) == zstd && $(mirror_field site-a plain site-b compress) == off ]] ||
  fail "status does not show the compression settings: $(status_json site-a)"
log "zstd: $(sent zipped) data bytes, $(wire zipped) on the wire; off: $(sent plain) data bytes, $(wire plain) on the wire"
(($(sent zipped) >= 24 * 1024 * 1024)) || fail "bytes_sent $(sent zipped) of zipped is not the data bytes"
(($(wire zipped) * 2 < $(sent zipped))) || fail "zstd did not halve compressible text: $(wire zipped) of $(sent zipped)"
(($(wire plain) == $(sent plain))) || fail "with --compress off wire bytes $(wire plain) != data bytes $(sent plain)"

log "random data with zstd never expands"
am site-a volume create noise --size 32M >/dev/null
write_random site-a noise 0 $SIZE
am site-a mirror start noise --to site-b --interval 1h >/dev/null
mirror_sync site-a noise
compare_replica site-a noise site-b
log "random: $(sent noise) data bytes, $(wire noise) on the wire"
(($(wire noise) <= $(sent noise))) || fail "random data grew on the wire: $(wire noise) > $(sent noise)"

log "switch compression off and on on the running mirror"
am site-a mirror start zipped --to site-b --compress off | grep -q updated || fail "the running mirror was not updated: $(cat "$WORK/last.out")"
[[ $(mirror_field site-a zipped site-b compress) == off ]] || fail "compress is not off after the change"
before_sent=$(sent zipped) before_wire=$(wire zipped)
write_file site-a zipped "$WORK/text.bin"
mirror_sync site-a zipped
compare_replica site-a zipped site-b
(($(wire zipped) - before_wire == $(sent zipped) - before_sent)) || fail "with compression turned off the cycle was compressed"
am site-a mirror start zipped --to site-b --compress zstd >/dev/null
before_sent=$(sent zipped) before_wire=$(wire zipped)
text_file "$WORK/text.bin" $((8 * 1024 * 1024))
write_file site-a zipped "$WORK/text.bin"
mirror_sync site-a zipped
compare_replica site-a zipped site-b
(($(wire zipped) - before_wire < ($(sent zipped) - before_sent) / 2)) || fail "with compression back on the cycle was not compressed"

log "mirror verify of a compressed mirror passes"
am site-a mirror verify zipped >/dev/null

for n in site-a site-b; do stop_node "$n"; done
log "PASS"
