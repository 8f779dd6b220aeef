#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Scale benchmark (issue 12): two `amirror node` processes on loopback (source "src",
# target "dst", plaintext peers).
#   1. N small sparse volumes (1 MiB each) on src, M of them mirrored to dst: create
#      time, initial sync time of the M mirrors, src's RSS and threads
#      (/proc/PID/status), `status --json` latency (median of 5), restart time (stop
#      src, start it, until status answers and lists every volume).
#   2. A target away while much of a big volume changes: a sparse volume of
#      16 TiB - 64 KiB (ext4's file limit is 16 TiB - 4 KiB), mirrored to dst; dst is
#      stopped, then one 4 KiB write per chunk spread over the whole volume, CHANGED
#      bytes of chunks in all; once merged: the size of the pending file on disk
#      (<volume>@<target>.pending); then dst starts again: catch-up bytes and time.
# The 1-minute load average is printed before and after.
#
#   bench/run-scale.sh [--quick] [--volumes N] [--mirrored M] [--changed SIZE] [AMIRROR]
#     --quick        N=1000, M=100, CHANGED=1G
#     defaults       N=10000, M=1000, CHANGED=4G (100G as in the issue is hours here)
#     env: WORKDIR (/tmp) where nodes live; MAX_TRANSFERS (16) src's [node] max_transfers;
#          KEEP=1 keeps the work directory (node logs, data directories)
#
# Without AMIRROR it uses build-mbench/amirror (bench/build-amirror.sh). See bench/README.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VOLUMES=10000
MIRRORED=1000
CHANGED=4G
AMIRROR=${AMIRROR:-}
while (($#)); do
  case $1 in
    --quick) VOLUMES=1000; MIRRORED=100; CHANGED=1G ;;
    --volumes) VOLUMES=$2; shift ;;
    --mirrored) MIRRORED=$2; shift ;;
    --changed) CHANGED=$2; shift ;;
    -h|--help) sed -n '3,22p' "$0"; exit 0 ;;
    -*) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) AMIRROR=$1 ;;
  esac
  shift
done
((MIRRORED <= VOLUMES)) || { echo "bench: --mirrored ($MIRRORED) exceeds --volumes ($VOLUMES)" >&2; exit 2; }
[[ -n $AMIRROR ]] || AMIRROR=$("$repo/bench/build-amirror.sh")
[[ -x "$AMIRROR" ]] || { echo "bench: no amirror binary at $AMIRROR" >&2; exit 1; }
for cmd in fio python3; do command -v $cmd >/dev/null || { echo "bench: $cmd is not installed" >&2; exit 1; }; done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "bench: this fio lacks the nbd engine" >&2; exit 1; }
WORKDIR=${WORKDIR:-/tmp}
MAX_TRANSFERS=${MAX_TRANSFERS:-16}
CHUNK=65536
BIG_SIZE=$(((16 << 40) - CHUNK))
changed_bytes=$(numfmt --from=iec "$CHANGED")
WRITES=$((changed_bytes / CHUNK))
((WRITES >= 1)) || { echo "bench: --changed must be at least 64K" >&2; exit 2; }

# A node keeps about 3 files open per volume in use (base, layer data and index); idle
# volumes rest with their files closed, so only the mirrored ones (and dst's replicas)
# count.
need_files=$((3 * MIRRORED + 256))
if (($(ulimit -n) < need_files)); then
  ulimit -n "$need_files" 2>/dev/null || {
    echo "bench: $MIRRORED mirrored volumes need about $need_files open files, the limit is $(ulimit -n) (hard $(ulimit -Hn));" \
      "raise it (ulimit -n) or lower --mirrored" >&2
    exit 1
  }
fi

WORK=$(mktemp -d "$WORKDIR/scale-bench.XXXXXX")
declare -A NODE_PID=()
source "$repo/bench/lib.sh"
cleanup() {
  stop_bench_nodes 300
  if [[ -n ${KEEP:-} ]]; then echo "bench: kept $WORK (node logs: src.log, dst.log)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$AMIRROR" "$WORK/amirror"
AM=$WORK/amirror
log() { echo "bench: $(date +%T) $*" >&2; }
say() { printf '%-44s %s\n' "$1" "$2"; }

cat >"$WORK/helper.py" <<'EOF'
import json, os, socket, statistics, sys, time

def call(sock, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(sock)
    s.sendall((json.dumps(request) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        piece = s.recv(1 << 20)
        if not piece:
            break
        data += piece
    s.close()
    answer = json.loads(data)
    if not answer.get("ok"):
        raise SystemExit(f"node refused {request}: {answer}")
    return answer

def mirrors(sock):
    out = {}
    for v in call(sock, {"command": "status"})["volumes"]:
        for m in v.get("mirrors", []):
            out[v["name"]] = m
    return out

def wait_applied(sock, names, min_cycle, timeout):
    deadline = time.monotonic() + timeout
    while True:
        ms = mirrors(sock)
        behind = [n for n in names if ms.get(n, {}).get("applied_cycle", 0) < min_cycle.get(n, 1)]
        if not behind:
            return ms
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(behind)} mirrors not applied after {timeout}s, e.g. {behind[0]}: {ms.get(behind[0])}")
        time.sleep(0.2)

cmd, sock = sys.argv[1], sys.argv[2]
if cmd == "create":  # create N PREFIX SIZE
    n, prefix, size = int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    t0 = time.monotonic()
    for i in range(n):
        call(sock, {"command": "volume_create", "name": f"{prefix}{i:05d}", "size_bytes": size})
    print(f"{time.monotonic() - t0:.2f}")
elif cmd == "mirror":  # mirror M PREFIX TARGET: start M mirrors, wait for every initial sync
    m, prefix, target = int(sys.argv[3]), sys.argv[4], sys.argv[5]
    names = [f"{prefix}{i:05d}" for i in range(m)]
    t0 = time.monotonic()
    for name in names:
        call(sock, {"command": "mirror_start", "volume": name, "targets": [target], "interval_ms": 600000})
    wait_applied(sock, names, {}, 3600)
    print(f"{time.monotonic() - t0:.2f}")
elif cmd == "status-latency":  # median of 5 full status calls, ms
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        call(sock, {"command": "status"})
        times.append((time.monotonic() - t0) * 1000)
    print(f"{statistics.median(times):.1f}")
elif cmd == "wait-listed":  # wait-listed N: until status answers and lists N volumes; seconds since START
    n, start = int(sys.argv[3]), float(sys.argv[4])
    while time.time() - start < 1200:
        try:
            if len(call(sock, {"command": "status"})["volumes"]) >= n:
                break
        except (OSError, ValueError, SystemExit):
            pass
        time.sleep(0.05)
    else:
        raise SystemExit(f"the node did not list {n} volumes within 1200 s")
    print(f"{time.time() - start:.2f}")
elif cmd == "applied":  # applied VOLUME: its mirror's applied cycle and bytes_sent
    m = mirrors(sock)[sys.argv[3]]
    print(m["applied_cycle"], m["bytes_sent"])
elif cmd == "cycle":  # cycle VOLUME: the volume's newest point
    for v in call(sock, {"command": "status"})["volumes"]:
        if v["name"] == sys.argv[3]:
            print(v["cycle"])
elif cmd == "wait-cycle":  # wait-cycle VOLUME CYCLE TIMEOUT: until its mirror applied CYCLE
    wait_applied(sock, [sys.argv[3]], {sys.argv[3]: int(sys.argv[4])}, float(sys.argv[5]))
elif cmd == "pending-bits":  # pending-bits FILE: bits set in its pages (format: docs/formats/mirror-state.md)
    data = open(sys.argv[2], "rb").read()
    print(sum(int.from_bytes(data[offset + 8:offset + 4096], "little").bit_count()
              for offset in range(4096, len(data), 4096)))
EOF
helper() { python3 "$WORK/helper.py" "$@"; }

write_config() {  # NAME PORT PEER PEER_PORT
  cat >"$WORK/$1.toml" <<EOF
[node]
name = "$1"
data_dir = "$WORK/$1.d"
control_socket = "$WORK/$1.sock"
nbd_socket = "$WORK/$1-nbd.sock"
listen = "127.0.0.1:$2"
max_transfers = $MAX_TRANSFERS

[tls]
insecure = true

[[peers]]
name = "$3"
address = "127.0.0.1:$4"
EOF
}
PORT_SRC=$((20000 + RANDOM % 20000))
PORT_DST=$((PORT_SRC + 1))
write_config src "$PORT_SRC" dst "$PORT_DST"
write_config dst "$PORT_DST" src "$PORT_SRC"
start_node() {
  "$AM" node --config "$WORK/$1.toml" >>"$WORK/$1.log" 2>&1 &
  NODE_PID[$1]=$!
}
wait_up() {  # NAME VOLUME_COUNT: prints seconds since START_EPOCH
  helper wait-listed "$WORK/$1.sock" "$2" "$START_EPOCH"
}
stop_node() {
  kill -TERM "${NODE_PID[$1]}"
  wait "${NODE_PID[$1]}" 2>/dev/null || true
  unset "NODE_PID[$1]"
}
proc_field() { awk -v key="$2:" '$1 == key { print $2, $3 }' "/proc/$1/status"; }

echo "load average before: $(cat /proc/loadavg)"
START_EPOCH=$(date +%s.%N); start_node src; wait_up src 0 >/dev/null
START_EPOCH=$(date +%s.%N); start_node dst; wait_up dst 0 >/dev/null
SRC=$WORK/src.sock

# ---------------------------------------------------------------- 1. many volumes
log "creating $VOLUMES volumes of 1 MiB"
seconds=$(helper create "$SRC" "$VOLUMES" v 1048576)
say "volumes created ($VOLUMES x 1 MiB)" "$seconds s"
log "mirroring $MIRRORED of them to dst"
seconds=$(helper mirror "$SRC" "$MIRRORED" v dst)
say "mirrors started + initial sync ($MIRRORED)" "$seconds s"
say "src node RSS" "$(proc_field "${NODE_PID[src]}" VmRSS)"
say "src node threads" "$(proc_field "${NODE_PID[src]}" Threads)"
say "src node open files (limit)" "$(ls "/proc/${NODE_PID[src]}/fd" | wc -l) ($(awk '/Max open files/ {print $4}' "/proc/${NODE_PID[src]}/limits"))"
say "dst node open files" "$(ls "/proc/${NODE_PID[dst]}/fd" | wc -l)"
say "dst node RSS ($MIRRORED replicas)" "$(proc_field "${NODE_PID[dst]}" VmRSS)"
say "dst node threads" "$(proc_field "${NODE_PID[dst]}" Threads)"
latency_ms=$(helper status-latency "$SRC")
say "status --json latency (median of 5)" "$latency_ms ms"
log "restarting src"
stop_node src
START_EPOCH=$(date +%s.%N); start_node src
seconds=$(wait_up src "$VOLUMES")
say "src restart until all $VOLUMES volumes listed" "$seconds s"
say "src node threads after restart" "$(proc_field "${NODE_PID[src]}" Threads)"
say "src node open files after restart" "$(ls "/proc/${NODE_PID[src]}/fd" | wc -l)"
say "src node RSS after restart" "$(proc_field "${NODE_PID[src]}" VmRSS)"

# ---------------------------------------------------------------- 2. target away
log "big volume: $BIG_SIZE bytes, mirrored, dst stopped, $WRITES chunks changed"
helper create "$SRC" 1 big "$BIG_SIZE" >/dev/null
"$AM" mirror start big00000 --to dst --interval 2s --node "$SRC" >/dev/null
helper wait-cycle "$SRC" big00000 1 600
stop_node dst
# One 4 KiB write at the start of every STRIDE-th byte: WRITES chunks, spread evenly.
stride=$(((BIG_SIZE / WRITES) / CHUNK * CHUNK))
t0=$(date +%s.%N)
fio --name=scatter --ioengine=nbd --uri="nbd+unix:///big00000?socket=$WORK/src-nbd.sock" \
  --rw=write:$((stride - 4096)) --bs=4k --size="$BIG_SIZE" --number_ios="$WRITES" --iodepth=16 \
  --output="$WORK/fio.txt" >/dev/null
say "scattered writes ($WRITES x 4 KiB, stride $((stride >> 20)) MiB)" "$(echo "$(date +%s.%N) - $t0" | bc) s"
# The engine gives up resuming the old point after repeated failures, then merges the
# layers into the base: their chunks move into the pending file.
pending=$WORK/src.d/mirrors/big00000@dst.pending
for _ in $(seq 1200); do
  [[ -f $pending ]] && (($(helper pending-bits "$pending") >= WRITES)) && break
  sleep 0.5
done
say "pending chunks recorded" "$(helper pending-bits "$pending") of $WRITES"
say "pending file size (apparent, on disk)" "$(stat -c %s "$pending") B, $(du -k "$pending" | cut -f1) KiB"
read -r applied_before sent_before < <(helper applied "$SRC" big00000)
target_cycle=$(helper cycle "$SRC" big00000)
START_EPOCH=$(date +%s.%N); start_node dst; wait_up dst 0 >/dev/null
t0=$(date +%s.%N)
helper wait-cycle "$SRC" big00000 "$((target_cycle))" 3600
catch_up_s=$(echo "$(date +%s.%N) - $t0" | bc)
read -r applied_after sent_after < <(helper applied "$SRC" big00000)
say "catch-up (cycle $applied_before -> $applied_after)" "$catch_up_s s, $((sent_after - sent_before)) bytes sent (changed: $((WRITES * CHUNK)))"
echo "load average after: $(cat /proc/loadavg)"
