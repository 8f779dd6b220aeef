#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `mirror start --keep N`: the target keeps the last N applied points, each served
# read-only over NBD as SOURCE/VOLUME@CYCLE and equal, byte for byte, to the source at
# that freeze point (BLAKE2b sum of the source image taken right after each `mirror sync`).
#  1. --keep 8 and 10 syncs: `replica points` lists exactly the last 8 cycles, oldest
#     first, with the source's freeze times; every point reads as the source did; the
#     newest is also SOURCE/VOLUME; base.img holds the oldest (image_cycle); a merged
#     point is refused at NBD open ("not kept"), even one a client opened before; a
#     point refuses writes (qemu-io, and EPERM to a client ignoring the read-only flag).
#  2. Space: 8 points of a 64 MiB volume changing 1 MiB a cycle cost about 64 + 8 MiB
#     on the target, not 8 x 64 MiB.
#  3. `mirror break` + `mirror start --keep 2` leaves exactly 2 points (at once, and
#     after a sync); a client holding a dropped point open gets EIO; raising it to 4
#     keeps more from then on; `mirror start` without --keep keeps the number.
#  4. Edge values: --keep 0 and 1025 are refused (CLI; and the control socket also
#     refuses -1, 2^32+1, "8") and change nothing; the default keeps 1 point, which
#     base.img holds; a 1-character volume with 4 KiB chunks.
#  5. The target's restart (SIGTERM) and kill -9 in the middle of receiving a delta
#     leave every kept point readable and unchanged; the mirror then resumes.
# The link runs through a rate-limited proxy so the delta killed in (5) takes seconds
# to copy on any machine; the test waits on the replica's state, never on time.
source "$(dirname "$0")/mirror-lib.sh"
require_cmd nbdinfo b2sum du

MIB=$((1024 * 1024))
SIZE_MIB=64
SIZE=$((SIZE_MIB * MIB))
setup_nodes site-a site-b
proxy_link site-a site-b link --rate $((32 * 1000 * 1000))
start_node site-a
start_node site-b

# point_uri TGT SRC VOL CYCLE: the NBD URI of a kept point (export SRC/VOL@CYCLE).
point_uri() { echo "nbd+unix:///$2%2F$3%40$4?socket=$WORK/$1-nbd.sock"; }

# image_sum URI: BLAKE2b sum of the whole export, read with nbdcopy.
image_sum() {
  local sum
  sum=$(set -o pipefail; nbdcopy "$1" - 2>"$WORK/nbdcopy.err" | b2sum) ||
    fail "reading $1 with nbdcopy failed: $(cat "$WORK/nbdcopy.err")"
  echo "${sum%% *}"
}

# The source's content and freeze time at every cycle a sync made: SUM[vol:cycle],
# FROZEN[vol:cycle]; CYCLES_vol lists the cycles in order.
declare -A SUM=() FROZEN=()
declare -a CYCLES_vol=() CYCLES_x=() CYCLES_d=()
declare -a kept=() kept_x=() listed=() # the points expected now

# record_cycle VOL: once the target applied the source's latest cycle, record it: the
# source's image sum (nothing writes between the freeze and this) and the freeze time
# the source reports the target applied.
record_cycle() {
  local vol=$1 cycle applied
  cycle=$(volume_field site-a "$vol" cycle)
  applied=$(replica_field site-b site-a "$vol" applied_cycle)
  [[ $applied == "$cycle" ]] || fail "after mirror sync of $vol the source is at cycle $cycle, the replica at $applied"
  [[ $(mirror_field site-a "$vol" site-b applied_cycle) == "$cycle" ]] ||
    fail "site-a says site-b applied $(mirror_field site-a "$vol" site-b applied_cycle), not $cycle"
  SUM[$vol:$cycle]=$(image_sum "$(vol_uri site-a "$vol")")
  FROZEN[$vol:$cycle]=$(mirror_field site-a "$vol" site-b applied_freeze_time)
  [[ -n ${FROZEN[$vol:$cycle]} ]] || fail "no applied_freeze_time for $vol at cycle $cycle"
  local -n cycles=CYCLES_$vol
  cycles+=("$cycle")
}

# sync_and_record VOL: `mirror sync` (a new freeze, applied by the target), recorded.
sync_and_record() {
  mirror_sync site-a "$1"
  record_cycle "$1"
}

# start_mirror VOL [--keep N]: `mirror start`, which freezes a cycle right away; waits
# until the target applied it and records it, so no later write races that freeze.
start_mirror() {
  local vol=$1 before
  shift
  before=$(volume_field site-a "$vol" cycle)
  am site-a mirror start "$vol" --to site-b --interval 1h "$@" >/dev/null
  start_applied() {
    local cycle
    cycle=$(volume_field site-a "$vol" cycle)
    ((cycle > before)) && [[ $(mirror_field site-a "$vol" site-b applied_cycle) == "$cycle" ]] &&
      [[ $(replica_field site-b site-a "$vol" state) == idle ]]
  }
  wait_until 60 "the first cycle of the mirror of $vol applied" start_applied
  record_cycle "$vol"
}

# expect_points VOL CYCLE...: `replica points --json` lists exactly these cycles, with
# the freeze times the source reported; status --json agrees (points, keep, image_cycle
# = the oldest, applied_cycle = the newest); `nbdinfo --list` offers each as VOL@CYCLE.
expect_points() {
  local vol=$1
  shift
  local want="$*" cycle listed times="" status
  listed=$(am site-b replica points "site-a/$vol" --json)
  for cycle in "$@"; do times+="${FROZEN[$vol:$cycle]} "; done
  status=$(am site-b status --json)
  python3 - "$listed" "$want" "$times" "$status" "$vol" <<'PY' || fail "points of site-a/$vol are wrong (want cycles $want): $listed"
import json, sys
listed, want, times, status, vol = json.loads(sys.argv[1]), [int(c) for c in sys.argv[2].split()], sys.argv[3].split(), json.loads(sys.argv[4]), sys.argv[5]
assert [p["cycle"] for p in listed] == want, ("cycles", [p["cycle"] for p in listed], want)
assert [p["freeze_time"] for p in listed] == times, ("freeze times", listed, times)
assert times == sorted(times), ("freeze times out of order", times)
replica = [r for r in status["replicas"] if r["source"] == "site-a" and r["volume"] == vol]
assert len(replica) == 1, status["replicas"]
r = replica[0]
assert r["points"] == listed, ("status points", r["points"], listed)
assert r["state"] == "idle", r
assert r["image_cycle"] == want[0], ("image_cycle is not the oldest kept point", r)
assert r["applied_cycle"] == want[-1], r
PY
  nbdinfo --list "nbd+unix://?socket=$WORK/site-b-nbd.sock" >"$WORK/list.out" 2>&1 ||
    fail "nbdinfo --list on site-b failed: $(cat "$WORK/list.out")"
  for cycle in "$@"; do
    grep -q "export=\"site-a/$vol@$cycle\"" "$WORK/list.out" ||
      fail "nbdinfo --list does not offer site-a/$vol@$cycle: $(grep export= "$WORK/list.out")"
  done
}

# check_points_content VOL CYCLE...: every point reads over NBD as the source did at
# that cycle; the newest also as site-a/VOL; base.img holds the oldest.
check_points_content() {
  local vol=$1
  shift
  local cycle got newest=${*: -1} oldest=$1 image
  for cycle in "$@"; do
    got=$(image_sum "$(point_uri site-b site-a "$vol" "$cycle")")
    [[ $got == "${SUM[$vol:$cycle]}" ]] || fail "site-a/$vol@$cycle differs from the source at cycle $cycle"
  done
  got=$(image_sum "$(replica_uri site-b site-a "$vol")")
  [[ $got == "${SUM[$vol:$newest]}" ]] || fail "site-a/$vol differs from its newest point $newest"
  image=$(replica_field site-b site-a "$vol" image_path)
  got=$(b2sum <"$image")
  [[ ${got%% *} == "${SUM[$vol:$oldest]}" ]] || fail "$image (image_cycle $oldest) differs from the source at cycle $oldest"
}

# expect_not_kept VOL CYCLE: opening site-a/VOL@CYCLE is refused with the reason.
expect_not_kept() {
  local uri
  uri=$(point_uri site-b site-a "$1" "$2")
  if nbdinfo "$uri" >"$WORK/nbdinfo.out" 2>&1; then
    fail "point $2 of site-a/$1 is not kept, yet nbdinfo opened it: $(cat "$WORK/nbdinfo.out")"
  fi
  if qemu-io -r -f raw -c "read 0 4k" "$uri" >"$WORK/qemu-io.out" 2>&1; then
    fail "point $2 of site-a/$1 is not kept, yet qemu-io read it: $(cat "$WORK/qemu-io.out")"
  fi
  grep -q "not kept" "$WORK/qemu-io.out" ||
    fail "opening dropped point site-a/$1@$2 does not say it is not kept: $(cat "$WORK/qemu-io.out")"
}

# nbd_raw SOCKET EXPORT MODE: a minimal NBD client (fixed newstyle, OPT_GO, simple
# replies) that opens EXPORT, then
#   write       writes 4 KiB at 0 whatever the export's flags say; exits 0 only if the
#               server answers EPERM
#   read-later FIFO  prints "opened", waits for a line from FIFO, reads 4 KiB at 0;
#               exits 0 only if the server answers EIO (the export went away meanwhile)
nbd_raw() {
  python3 - "$@" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)  # a hung server fails the test instead of hanging it
s.connect(sys.argv[1])
def take(n):
    data = b""
    while len(data) < n:
        part = s.recv(n - len(data))
        assert part, "server closed the connection"
        data += part
    return data
assert take(16) == b"NBDMAGICIHAVEOPT"
take(2)
s.sendall(struct.pack(">I", 1))  # NBD_FLAG_C_FIXED_NEWSTYLE
name = sys.argv[2].encode()
data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # NBD_OPT_GO
while True:
    magic, option, kind, length = struct.unpack(">QIII", take(20))
    payload = take(length)
    if kind == 3:  # NBD_REP_INFO
        info = struct.unpack(">H", payload[:2])[0]
        if info == 0:
            print("export flags %#x" % struct.unpack(">QH", payload[2:12])[1])
    assert not kind & 0x80000000, "OPT_GO refused: %r" % payload
    if kind == 1:  # NBD_REP_ACK
        break
if sys.argv[3] == "write":
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 42, 0, 4096) + b"\x55" * 4096)  # NBD_CMD_WRITE
    want = 1  # NBD_EPERM
else:
    print("opened", flush=True)
    with open(sys.argv[4]) as go:
        go.readline()
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 42, 0, 4096))  # NBD_CMD_READ
    want = 5  # NBD_EIO
magic, error, handle = struct.unpack(">IIQ", take(16))
assert magic == 0x67446698 and handle == 42, (magic, handle)
print(sys.argv[3], "answered with error", error)
sys.exit(0 if error == want else 1)
PY
}

# take_last N FROM TO: array TO = the last N elements of array FROM.
take_last() {
  local -n from=$2 to=$3
  # shellcheck disable=SC2034  # a nameref: the caller's array
  to=("${from[@]: -$1}")
}

replica_du_mib() { du -sm "$WORK/site-b.d/replicas/site-a/$1" | cut -f1; }

# --- 1. --keep 8 -----------------------------------------------------------------------
log "--keep 8: a 64 MiB volume of random data, 10 syncs of 1 MiB changes each"
am site-a volume create vol --size ${SIZE_MIB}M >/dev/null
head -c $SIZE /dev/urandom >"$WORK/in.raw"
nbdcopy "$WORK/in.raw" "$(vol_uri site-a vol)" || fail "filling the volume failed"
rm -f "$WORK/in.raw"
start_mirror vol --keep 8
for ((i = 1; i <= 10; i++)); do
  write_random site-a vol $((i * 6 * MIB)) $MIB
  sync_and_record vol
done
[[ $(replica_field site-b site-a vol keep) == 8 ]] || fail "replica keep is $(replica_field site-b site-a vol keep), not 8"
take_last 8 CYCLES_vol kept
expect_points vol "${kept[@]}"
check_points_content vol "${kept[@]}"
newest=${CYCLES_vol[-1]}
# As README.md shows it: a point copied out to a file.
qemu-img convert -f raw -O raw "$(point_uri site-b site-a vol "$newest")" "$WORK/point.raw" ||
  fail "qemu-img convert of point $newest failed"
got=$(b2sum <"$WORK/point.raw")
[[ ${got%% *} == "${SUM[vol:$newest]}" ]] || fail "qemu-img convert of point $newest differs from the source"
rm -f "$WORK/point.raw"
[[ $(image_sum "$(point_uri site-b site-a vol "$newest")") == "$(image_sum "$(replica_uri site-b site-a vol)")" ]] ||
  fail "site-a/vol@$newest and site-a/vol differ"
for dropped in "${CYCLES_vol[0]}" "${CYCLES_vol[1]}"; do expect_not_kept vol "$dropped"; done
expect_not_kept vol $((newest + 1000))
nbdinfo --json "$(point_uri site-b site-a vol "$newest")" >"$WORK/info.json" || fail "nbdinfo of a point failed"
[[ $(jq -r '.exports[0].is_read_only' "$WORK/info.json") == true ]] || fail "point export is not read-only: $(cat "$WORK/info.json")"
point1=${CYCLES_vol[3]}
if qemu-io -f raw -c "write -P 0x55 0 4k" "$(point_uri site-b site-a vol "$point1")" >"$WORK/qemu-io.out" 2>&1; then
  fail "a write to point site-a/vol@$point1 succeeded: $(cat "$WORK/qemu-io.out")"
fi
log "qemu-io refused to write to a point: $(head -c 200 "$WORK/qemu-io.out" | tr '\n' ' ')"
# A client that ignores the read-only flag: the server itself refuses with EPERM.
nbd_raw "$WORK/site-b-nbd.sock" "site-a/vol@$point1" write >"$WORK/raw-write.out" 2>&1 ||
  fail "a raw NBD write to point $point1 was not refused with EPERM: $(cat "$WORK/raw-write.out")"
[[ $(image_sum "$(point_uri site-b site-a vol "$point1")") == "${SUM[vol:$point1]}" ]] ||
  fail "point $point1 changed after a refused write"

# --- 2. space --------------------------------------------------------------------------
used=$(replica_du_mib vol)
bound=$((2 * (SIZE_MIB + 8 * 1)))
log "replica site-a/vol with 8 points of 1 MiB changes over $SIZE_MIB MiB uses $used MiB (bound $bound MiB, 8 full copies: $((8 * SIZE_MIB)) MiB)"
((used >= SIZE_MIB)) || fail "the replica uses $used MiB, less than the $SIZE_MIB MiB of random data it holds"
((used < bound)) || fail "the replica uses $used MiB for 8 points: not base + changes (bound $bound MiB)"

# --- 3. lowering and raising keep ----------------------------------------------------
log "lower to --keep 2"
# A client holding a point open across its merge gets EIO, never another point's data.
held=${CYCLES_vol[-8]}
mkfifo "$WORK/go"
nbd_raw "$WORK/site-b-nbd.sock" "site-a/vol@$held" read-later "$WORK/go" >"$WORK/held.out" 2>&1 &
held_pid=$!
# shellcheck disable=SC2034,SC2154  # lib.sh's associative array: its trap kills this one too
SERVE_PID[held-reader]=$held_pid
held_open() { grep -q opened "$WORK/held.out" || ! kill -0 "$held_pid" 2>/dev/null; }
wait_until 60 "a client holding site-a/vol@$held open" held_open
grep -q opened "$WORK/held.out" || fail "could not open site-a/vol@$held: $(cat "$WORK/held.out")"
am site-a mirror break vol >/dev/null
start_mirror vol --keep 2
# Dropped as soon as the source reconnected: the newest before and the start's cycle.
take_last 2 CYCLES_vol kept
expect_points vol "${kept[@]}"
echo go >"$WORK/go"
wait "$held_pid" || fail "reading point $held held open across its merge: $(cat "$WORK/held.out")"
unset "SERVE_PID[held-reader]"
write_random site-a vol $((3 * MIB - 12345)) $MIB
sync_and_record vol
take_last 2 CYCLES_vol kept
expect_points vol "${kept[@]}"
check_points_content vol "${kept[@]}"
[[ $(replica_field site-b site-a vol keep) == 2 ]] || fail "replica keep is not 2 after lowering it"
expect_not_kept vol "${CYCLES_vol[-3]}"
used=$(replica_du_mib vol)
((used < SIZE_MIB + 2 * 2 + 16)) || fail "after lowering keep to 2 the replica still uses $used MiB"

log "raise to --keep 4"
am site-a mirror break vol >/dev/null
start_mirror vol --keep 4
take_last 3 CYCLES_vol kept # the 2 kept before and the start's
expect_points vol "${kept[@]}"
for ((i = 12; i <= 13; i++)); do
  write_pattern site-a vol $((i * 3 * MIB + 4096)) 512k $((i + 100))
  sync_and_record vol
  take_last 4 CYCLES_vol kept
  expect_points vol "${kept[@]}"
done
take_last 4 CYCLES_vol kept
check_points_content vol "${kept[@]}"

# --- 4. edge values --------------------------------------------------------------------
log "--keep 0 and --keep 1025 are refused and change nothing"
am site-a mirror break vol >/dev/null
vol_view() { am site-a status --json | jq -c '.volumes[] | select(.name == "vol") | {cycle, mirrors: [.mirrors[] | {target, state, applied_cycle}]}'; }
before_a=$(vol_view)
cp "$WORK/site-a.d/mirrors/vol.json" "$WORK/vol-mirror-state.json"
for bad in 0 1025; do expect_refusal 2 "keep" site-a mirror start vol --to site-b --keep $bad; done
# The node checks it too, for tooling that talks JSON to the control socket: 0 is not
# "absent", and nothing may wrap into range.
for bad in 0 1025 -1 4294967297 '"8"'; do
  python3 - "$WORK/site-a.sock" "$bad" >"$WORK/raw.out" <<'PY' || fail "raw mirror_start with keep $bad was not refused: $(cat "$WORK/raw.out")"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
request = {"command": "mirror_start", "volume": "vol", "targets": ["site-b"], "keep": json.loads(sys.argv[2])}
s.sendall((json.dumps(request) + "\n").encode())
answer = b""
while not answer.endswith(b"\n"):
    data = s.recv(65536)
    if not data:
        break
    answer += data
print(answer.decode().strip())
reply = json.loads(answer)
assert reply["ok"] is False and "keep" in reply["error"], reply
PY
done
[[ $(vol_view) == "$before_a" ]] || fail "a refused --keep changed the volume's status: $before_a -> $(vol_view)"
cmp -s "$WORK/site-a.d/mirrors/vol.json" "$WORK/vol-mirror-state.json" ||
  fail "a refused --keep changed the mirror state file: $(cat "$WORK/site-a.d/mirrors/vol.json")"
[[ $(replica_field site-b site-a vol keep) == 4 ]] || fail "a refused --keep changed the replica's keep"
expect_points vol "${kept[@]}"

log "default keep: one point, held by base.img"
am site-a volume create d --size 8M >/dev/null
start_mirror d
for ((i = 1; i <= 3; i++)); do
  write_pattern site-a d $((i * MIB + 100)) 200k $((i + 10))
  sync_and_record d
done
[[ $(replica_field site-b site-a d keep) == 1 ]] || fail "default keep is $(replica_field site-b site-a d keep), not 1"
expect_points d "${CYCLES_d[-1]}"
check_points_content d "${CYCLES_d[-1]}"
expect_not_kept d "${CYCLES_d[-2]}"

log "1-character volume with 4 KiB chunks, --keep 3"
am site-a volume create x --size 8M --chunk-size 4K >/dev/null
start_mirror x --keep 3
for ((i = 1; i <= 5; i++)); do
  write_pattern site-a x $((i * 4096 - 1)) 2 $((i + 20))     # straddles two chunks
  write_random site-a x $((i * 100003)) 10000
  sync_and_record x
done
take_last 3 CYCLES_x kept_x
expect_points x "${kept_x[@]}"
check_points_content x "${kept_x[@]}"
expect_not_kept x "${CYCLES_x[1]}"

# --- 5. restarts -----------------------------------------------------------------------
log "restart site-b (SIGTERM): the points stay"
points_before=$(am site-b replica points site-a/vol --json)
stop_node site-b
start_node site-b
[[ $(am site-b replica points site-a/vol --json) == "$points_before" ]] ||
  fail "points changed across a restart: $points_before -> $(am site-b replica points site-a/vol --json)"
check_points_content vol "${kept[@]}"
check_points_content x "${kept_x[@]}"

log "kill -9 site-b while it receives a delta (--keep 4)"
start_mirror vol --keep 4
take_last 4 CYCLES_vol kept
points_before=$(am site-b replica points site-a/vol --json)
write_random site-a vol 0 $((40 * MIB))
sum_new=$(image_sum "$(vol_uri site-a vol)")
sent_before=$(mirror_field site-a vol site-b bytes_sent)
"$AMIRROR" mirror sync vol --timeout 300s --node "$WORK/site-a.sock" >"$WORK/sync.out" 2>&1 &
sync_pid=$!
receiving() {
  [[ $(replica_field site-b site-a vol state) == receiving ]] &&
    (($(mirror_field site-a vol site-b bytes_sent) > sent_before + 4 * MIB))
}
wait_until 60 "site-b receiving the delta" receiving
kill_node site-b
in_flight=$(volume_field site-a vol cycle)
sent=$(mirror_field site-a vol site-b bytes_sent)
log "killed site-b receiving cycle $in_flight, $(((sent - sent_before) / MIB)) MiB of ~40 sent"
((sent - sent_before < 40 * MIB)) || fail "the delta was fully sent before the kill: the test proves nothing"
# Hold the source back while site-b restarts, so what is read is what the kill left.
am site-a mirror break vol >/dev/null
wait "$sync_pid" || log "the interrupted sync exited $?: $(cat "$WORK/sync.out")"
start_node site-b
[[ $(replica_field site-b site-a vol state) != failed ]] || fail "replica failed after kill -9: $(replica_field site-b site-a vol error)"
[[ $(am site-b replica points site-a/vol --json) == "$points_before" ]] ||
  fail "points changed by a kill -9 mid-delta: $points_before -> $(am site-b replica points site-a/vol --json)"
check_points_content vol "${kept[@]}"
check_points_content x "${kept_x[@]}"

log "resume (no --keep: as before): the delta commits as a new point and the oldest goes"
start_mirror vol
[[ $(replica_field site-b site-a vol keep) == 4 ]] || fail "mirror start without --keep did not keep --keep 4"
SUM[vol:$in_flight]=$sum_new
latest=${CYCLES_vol[-1]}
[[ ${SUM[vol:$latest]} == "$sum_new" ]] || fail "the source changed between the kill and the restart of the mirror"
mapfile -t listed < <(am site-b replica points site-a/vol --json | jq -r '.[].cycle')
# The in-flight cycle may arrive as its own point or folded into the next freeze.
want_a="${kept[*]:1} $latest"
want_b="${kept[*]:2} $in_flight $latest"
[[ ${listed[*]} == "$want_a" || ${listed[*]} == "$want_b" ]] ||
  fail "after the resumed sync the points are ${listed[*]}, not $want_a or $want_b"
log "points after the resume: ${listed[*]} (cycle $in_flight was in flight at the kill)"
FROZEN[vol:$in_flight]=$(jq -r --argjson c "$in_flight" '.[] | select(.cycle == $c) | .freeze_time' <<<"$(am site-b replica points site-a/vol --json)")
expect_points vol "${listed[@]}"
check_points_content vol "${listed[@]}"

am site-a mirror break vol >/dev/null
stop_node site-a
stop_node site-b
log "PASS"
