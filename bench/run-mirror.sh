#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Mirroring benchmark: two `amirror node` processes on loopback (source "src", target
# "dst"), driven through the CLI, the control socket and NBD, with peers in the same run:
#   1. initial sync of a 4 GiB volume, half of it random data in scattered 1..64 MiB
#      extents, vs nbdcopy of the same source export into a file (--flush);
#   2. one incremental cycle on an 8 GiB volume (half random data) after 1% of it
#      (82 MiB) changed with 64 KiB writes at random 64 KiB-aligned offsets, vs
#      `rsync --inplace --no-whole-file` updating a copy of the "before" image;
#   3. replica lag under a steady ~20 MB/s of 4 KiB random writes (fio, nbd engine)
#      for 60 s with a 1 s interval, sampled every 100 ms.
#
#   bench/run-mirror.sh [AMIRROR_BINARY]
#     env: REPS (3)        repetitions of cases 1 and 2 (medians are reported)
#          RSYNC_REPS (REPS) repetitions of the rsync peer
#          LAG_SECONDS (60) LAG_RATE (20m, fio's --rate) LAG_VOLUME (2G) LAG_CHUNK (64K)
#          LAG_REPS (REPS)  runs of case 3, each on a fresh volume (median of the p99s)
#          INIT_SIZE_GIB (4) size of the case-1 volumes (half of it is written)
#          INC_SIZE_GIB (8) size of the case-2 volume and files (scale down if /tmp is short)
#          WORKDIR (/tmp)   where nodes, volumes and peer files live
#          TRANSPORT (tls)  tls: peers on TLS 1.3 (as deployed); insecure: plaintext
#          CASES ("1 2 3")  which cases to run
#          PERF_DIR         if set: `perf record -g` both nodes during each amirror
#                           initial sync (case 1) into PERF_DIR/{src,dst}-REP.data
#          PERF_MODE (record) offcpu: record where threads block instead (.offcpu);
#                           all: sample the whole machine (PERF_DIR/all-REP.data);
#                           all-offcpu: where any thread blocks (PERF_DIR/all-REP.offcpu)
#          RESULTS_OUT      if set: copy the raw result lines there (bench/run-all.sh)
#
# Without an argument it uses build-mbench/amirror, building it (Release) if absent.
# See bench/README.md ("## Mirroring").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AMIRROR=${1:-${AMIRROR:-}}
[[ -n $AMIRROR ]] || AMIRROR=$("$repo/bench/build-amirror.sh")
REPS=${REPS:-3}
RSYNC_REPS=${RSYNC_REPS:-$REPS}
LAG_SECONDS=${LAG_SECONDS:-60}
LAG_RATE=${LAG_RATE:-20m}
LAG_VOLUME=${LAG_VOLUME:-2G}
LAG_REPS=${LAG_REPS:-$REPS}
LAG_CHUNK=${LAG_CHUNK:-64K}  # the lag volume's chunk size: 4 KiB writes dirty one chunk each
INC_SIZE_GIB=${INC_SIZE_GIB:-8}
INIT_SIZE_GIB=${INIT_SIZE_GIB:-4}
WORKDIR=${WORKDIR:-/tmp}
TRANSPORT=${TRANSPORT:-tls}
CASES=${CASES:-1 2 3}
PERF_DIR=${PERF_DIR:-}
has_case() { [[ " $CASES " == *" $1 "* ]]; }
[[ $TRANSPORT == tls || $TRANSPORT == insecure ]] || { echo "bench: TRANSPORT must be tls or insecure" >&2; exit 1; }
for cmd in nbdcopy fio rsync python3 openssl; do
  command -v $cmd >/dev/null || { echo "bench: $cmd is not installed" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "bench: this fio lacks the nbd engine" >&2; exit 1; }
[[ -x "$AMIRROR" ]] || { echo "bench: no amirror binary at $AMIRROR" >&2; exit 1; }

# Space: case 1 keeps REPS x (2 GiB volume + 2 GiB replica) + 2 GiB source file + a
# 2 GiB nbdcopy copy; case 2 a half-full volume, its replica and three plain files
# ("before", "after", the rsync destination), half of each is data. Staging needs
# one more delta's worth on the target.
need_gib=$((REPS * INIT_SIZE_GIB + 2 * INIT_SIZE_GIB + 2 * INC_SIZE_GIB + 2))
avail_gib=$(($(df --output=avail -k "$WORKDIR" | tail -1) / 1024 / 1024))
if ((avail_gib < need_gib)); then
  echo "bench: $WORKDIR has $avail_gib GiB free, this run needs about $need_gib GiB" \
    "(lower INC_SIZE_GIB or REPS, or set WORKDIR)" >&2
  exit 1
fi

WORK=$(mktemp -d "$WORKDIR/mirror-bench.XXXXXX")
declare -A NODE_PID=()
FIO_PID=""
source "$repo/bench/lib.sh"
cleanup() {
  if [[ -n $FIO_PID ]]; then kill "$FIO_PID" 2>/dev/null || true; wait "$FIO_PID" 2>/dev/null || true; fi
  stop_bench_nodes 100
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$AMIRROR" "$WORK/amirror"  # a rebuild during the run must not change the binary
AM=$WORK/amirror
log() { echo "bench: $(date +%T) $*" >&2; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }
# CPU seconds (user + system) a process used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# ---------------------------------------------------------------- helper (python)
cat >"$WORK/helper.py" <<'EOF'
import json, os, random, socket, statistics, subprocess, sys, time

def call(sock, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
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

def mirror(sock, volume, target):
    for v in call(sock, {"command": "status"})["volumes"]:
        if v["name"] == volume:
            for m in v.get("mirrors", []):
                if m["target"] == target:
                    return v, m
            return v, None
    raise SystemExit(f"no volume {volume}")

def gen(path, size, data_bytes, seed):
    """Sparse file of SIZE bytes, DATA_BYTES of random data in 1..64 MiB extents
    (MiB-aligned, non-adjacent), at random places."""
    size, data_bytes, mib = int(size), int(data_bytes), 1 << 20
    rng = random.Random(seed)
    extents, left = [], data_bytes // mib
    while left > 0:
        n = min(left, rng.randint(1, 64))
        extents.append(n)
        left -= n
    free = size // mib - data_bytes // mib
    assert free >= len(extents) + 1
    # gaps: each >= 1 MiB so extents never touch; the rest spread at random
    extra = free - (len(extents) + 1)
    cuts = sorted(rng.randint(0, extra) for _ in range(len(extents)))
    gaps = [b - a + 1 for a, b in zip([0] + cuts, cuts + [extra])]
    # Random bytes from AES-CTR over zeros (openssl): much faster than /dev/urandom.
    stream = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", f"pass:{seed}"],
                              stdin=open("/dev/zero", "rb"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        for gap, n in zip(gaps, extents):
            pos += gap
            f.seek(pos * mib)
            for _ in range(0, n, 8):
                want = min(8, n - _) * mib
                block = stream.stdout.read(want)
                assert len(block) == want
                f.write(block)
            pos += n
    stream.kill()
    stream.wait()
    print(len(extents))

def initial_sync(am, sock, volume, target, interval):
    """`mirror start`, then poll until the target applied cycle 1; prints seconds and
    bytes_sent."""
    t0 = time.monotonic()
    subprocess.run([am, "mirror", "start", volume, "--to", target, "--interval", interval, "--node", sock],
                   check=True, stdout=subprocess.DEVNULL)
    while True:
        _, m = mirror(sock, volume, target)
        if m and m["applied_cycle"] >= 1:
            break
        if m and m.get("last_error"):
            print(f"bench: mirror error: {m['last_error']}", file=sys.stderr)
        time.sleep(0.01)
    print(f"{time.monotonic() - t0:.3f} {m['bytes_sent']}")

def sync_once(am, sock, volume, target):
    """`mirror sync` wall time and the bytes_sent delta of that cycle."""
    _, before = mirror(sock, volume, target)
    t0 = time.monotonic()
    subprocess.run([am, "mirror", "sync", volume, "--timeout", "600s", "--node", sock],
                   check=True, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    _, after = mirror(sock, volume, target)
    print(f"{elapsed:.3f} {after['bytes_sent'] - before['bytes_sent']} {after['applied_cycle']}")

def field(sock, volume, key):
    v, _ = mirror(sock, volume, "")
    print(v[key] if not isinstance(v[key], (list, dict)) else json.dumps(v[key]))

def wait_applied(sock, volume, target, cycle, timeout):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        _, m = mirror(sock, volume, target)
        if m and m["applied_cycle"] >= int(cycle):
            return
        time.sleep(0.05)
    raise SystemExit(f"{volume} -> {target} never applied cycle {cycle}")

def sample_lag(sock, volume, target, seconds, out):
    """Every 100 ms: lag_seconds of the mirror (now - freeze time of the applied
    cycle, computed by the node), plus the cycle and bytes_sent."""
    end = time.monotonic() + float(seconds)
    next_t = time.monotonic()
    with open(out, "w") as f:
        while next_t < end:
            v, m = mirror(sock, volume, target)
            f.write(f"{time.time():.3f} {m['lag_seconds']} {m['applied_cycle']} {m['bytes_sent']} {v['cycle']} {m['state']}\n")
            next_t += 0.1
            time.sleep(max(0.0, next_t - time.monotonic()))

def lag_stats(path):
    rows = [l.split() for l in open(path)]
    lags = sorted(float(r[1]) for r in rows if r[1] != "None")
    def pct(p):
        return lags[min(len(lags) - 1, int(round(p / 100 * (len(lags) - 1))))]
    cycles = int(rows[-1][2]) - int(rows[0][2])
    sent = int(rows[-1][3]) - int(rows[0][3])
    span = float(rows[-1][0]) - float(rows[0][0])
    print(f"{pct(50):.3f} {pct(99):.3f} {lags[-1]:.3f} {len(lags)} {cycles} {sent} {span:.1f}")

if __name__ == "__main__":
    globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
EOF
H() { python3 "$WORK/helper.py" "$@"; }

# ---------------------------------------------------------------- nodes
read -r PORT_SRC PORT_DST <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')"
# Peers talk TLS 1.3 with certificates made like docs/security.md's; TRANSPORT=insecure
# measures plaintext instead (the price of TLS is the difference).
fail() { echo "bench: $*" >&2; exit 1; }
source "$repo/tests/e2e/pki.sh"
if [[ $TRANSPORT == tls ]]; then
  make_pki "$WORK/pki" src dst
fi
tls_table() {  # NAME
  if [[ $TRANSPORT == tls ]]; then
    printf 'certificate = "%s"\nkey = "%s"\nca = "%s"\n' "$WORK/pki/$1.crt" "$WORK/pki/$1.key" "$WORK/pki/ca.crt"
  else
    echo "insecure = true"
  fi
}
write_config() {  # NAME PORT PEER PEER_PORT
  cat >"$WORK/$1.toml" <<EOF
[node]
name = "$1"
data_dir = "$WORK/$1.d"
control_socket = "$WORK/$1.sock"
nbd_socket = "$WORK/$1-nbd.sock"
listen = "127.0.0.1:$2"

[tls]
$(tls_table "$1")

[[peers]]
name = "$3"
address = "127.0.0.1:$4"
EOF
}
write_config src "$PORT_SRC" dst "$PORT_DST"
write_config dst "$PORT_DST" src "$PORT_SRC"
start_node() {
  "$AM" node --config "$WORK/$1.toml" >>"$WORK/$1.log" 2>&1 &
  NODE_PID[$1]=$!
  for _ in $(seq 300); do
    "$AM" status --json --node "$WORK/$1.sock" >/dev/null 2>&1 && [[ -S "$WORK/$1-nbd.sock" ]] && return 0
    kill -0 "${NODE_PID[$1]}" 2>/dev/null || { cat "$WORK/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: node $1 did not come up" >&2
  exit 1
}
start_node src
start_node dst
SRC=$WORK/src.sock
am() { "$AM" "$@" --node "$SRC" >/dev/null; }
uri() { echo "nbd+unix:///$1?socket=$WORK/src-nbd.sock"; }
now() { date +%s.%N; }
RESULTS=$WORK/results.txt
echo "load-before $(loadavg)" >"$RESULTS"
log "load average before: $(cat /proc/loadavg)"
# fill VOLUME FILE: write the file's data extents into the volume (holes skipped).
fill() {
  nbdcopy --destination-is-zero "$2" "$(uri "$1")"
  sync
}

# ---------------------------------------------------------------- 1. initial sync
GIB=$((1 << 30))
# perf_start REP / perf_stop: sample both nodes (call graphs) while amirror copies.
PERF_PIDS=()
perf_start() {
  [[ -n $PERF_DIR ]] || return 0
  mkdir -p "$PERF_DIR"
  if [[ ${PERF_MODE:-record} == all* ]]; then  # the whole machine: kernel threads too
    if [[ $PERF_MODE == all-offcpu ]]; then
      perf record -a -e sched:sched_switch -g -o "$PERF_DIR/all-$1.offcpu" >/dev/null 2>&1 &
    else
      perf record -a -F 499 -g -o "$PERF_DIR/all-$1.data" >/dev/null 2>&1 &
    fi
    PERF_PIDS+=($!)
    sleep 0.5
    return 0
  fi
  for name in src dst; do
    if [[ ${PERF_MODE:-record} == offcpu ]]; then  # where threads leave the CPU (block)
      perf record -e sched:sched_switch -g -p "${NODE_PID[$name]}" -o "$PERF_DIR/$name-$1.offcpu" >/dev/null 2>&1 &
    else
      perf record -F 499 -g -p "${NODE_PID[$name]}" -o "$PERF_DIR/$name-$1.data" >/dev/null 2>&1 &
    fi
    PERF_PIDS+=($!)
  done
  sleep 0.5  # perf attaches asynchronously
}
perf_stop() {
  for pid in "${PERF_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  PERF_PIDS=()
}
if has_case 1; then
log "case 1: generating a ${INIT_SIZE_GIB} GiB image, half of it random data"
extents=$(H gen "$WORK/src4g.raw" $((INIT_SIZE_GIB * GIB)) $((INIT_SIZE_GIB * GIB / 2)) 1)
echo "extents1 $extents" >>"$RESULTS"
for ((rep = 1; rep <= REPS; rep++)); do
  vol=init$rep
  am volume create $vol --size ${INIT_SIZE_GIB}G
  fill $vol "$WORK/src4g.raw"
  data=$(H field "$SRC" $vol layers | python3 -c 'import json,sys; print(sum(l["data_bytes"] for l in json.load(sys.stdin)))')
  run_amirror() {
    sync
    local cpu_src cpu_dst
    cpu_src=$(cpu_seconds "${NODE_PID[src]}")
    cpu_dst=$(cpu_seconds "${NODE_PID[dst]}")
    perf_start $rep
    read -r secs sent < <(H initial-sync "$AM" "$SRC" $vol dst 3600s)
    perf_stop
    cpu_src=$(python3 -c "print(f'{$(cpu_seconds "${NODE_PID[src]}") - $cpu_src:.2f}')")
    cpu_dst=$(python3 -c "print(f'{$(cpu_seconds "${NODE_PID[dst]}") - $cpu_dst:.2f}')")
    echo "init-amirror $rep $secs $sent $data $cpu_src $cpu_dst" >>"$RESULTS"
    log "  rep $rep amirror CPU: source $cpu_src s, target $cpu_dst s"
    log "  rep $rep amirror: $secs s, $sent bytes sent ($data bytes of data in the volume)"
  }
  run_nbdcopy() {
    # The peer at its best, every run alike: on a virtual machine that hands free pages
    # back to its host (free page reporting), writing into page cache that was free for
    # a few seconds costs ~1.4 s per GiB more than into pages just freed
    # (bench/README.md, "Initial sync around the page cache"). So each timed copy
    # starts right after the previous copy's file is deleted, and the first after an
    # untimed one. amirror's target writes around the page cache and does not care.
    [[ -e $WORK/copy.raw ]] || nbdcopy --flush "$(uri $vol)" "$WORK/copy.raw"
    rm -f "$WORK/copy.raw"
    sync
    local t0 t1
    t0=$(now)
    nbdcopy --flush "$(uri $vol)" "$WORK/copy.raw"
    t1=$(now)
    echo "init-nbdcopy $rep $(python3 -c "print(f'{$t1 - $t0:.3f}')") $data" >>"$RESULTS"
    log "  rep $rep nbdcopy: $(python3 -c "print(f'{$t1 - $t0:.3f}')") s"
  }
  if ((rep % 2)); then run_amirror; run_nbdcopy; else run_nbdcopy; run_amirror; fi
done
rm -f "$WORK/src4g.raw" "$WORK/copy.raw"
fi

# ---------------------------------------------------------------- 2. incremental
if has_case 2; then
SIZE2=$((INC_SIZE_GIB * GIB))
CHANGE=$((SIZE2 / 100 / 65536 * 65536))  # 1%, in whole 64 KiB writes (82 MiB of 8 GiB)
log "case 2: ${INC_SIZE_GIB} GiB volume, half random data; initial sync"
H gen "$WORK/before.raw" $SIZE2 $((SIZE2 / 2)) 2 >/dev/null
am volume create inc --size ${INC_SIZE_GIB}G
fill inc "$WORK/before.raw"
H initial-sync "$AM" "$SRC" inc dst 3600s >/dev/null
change() {  # change SEED: 1% of the volume, 64 KiB random writes at distinct 64 KiB-aligned offsets
  fio --name=change --ioengine=nbd --uri="$(uri inc)" --rw=randwrite --bs=64k --size=$SIZE2 \
    --io_size=$CHANGE --iodepth=8 --refill_buffers --randseed="$1" --output-format=terse >/dev/null
  sync
}
for ((rep = 1; rep <= REPS; rep++)); do
  change $((100 + rep))
  read -r secs sent cycle < <(H sync-once "$AM" "$SRC" inc dst)
  echo "inc-amirror $rep $secs $sent $CHANGE" >>"$RESULTS"
  log "  rep $rep amirror cycle $cycle: $secs s, $sent bytes sent for $CHANGE changed"
  if ((rep == 1)); then
    # The peer works on the first change: "before" = the generated image the volume
    # was filled from; "after" = the volume exported now.
    nbdcopy "$(uri inc)" "$WORK/after.raw"
    for ((r = 1; r <= RSYNC_REPS; r++)); do
      rm -f "$WORK/dest.raw"
      cp --sparse=always "$WORK/before.raw" "$WORK/dest.raw"
      sync
      t0=$(now)
      # --ignore-times: with both files made within the same second, rsync's quick check
      # (size + mtime) would skip the transfer entirely.
      rsync --inplace --no-whole-file --ignore-times --stats "$WORK/after.raw" "$WORK/dest.raw" >"$WORK/rsync.out"
      t1=$(now)
      cmp -s "$WORK/after.raw" "$WORK/dest.raw" || { echo "bench: rsync result differs" >&2; exit 1; }
      rsent=$(sed -n 's/^Total bytes sent: //p' "$WORK/rsync.out" | tr -d ,)
      literal=$(sed -n 's/^Literal data: \([0-9,]*\).*/\1/p' "$WORK/rsync.out" | tr -d ,)
      rsecs=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
      echo "inc-rsync $r $rsecs $rsent $literal" >>"$RESULTS"
      log "  rsync rep $r: $rsecs s, sent $rsent bytes (literal $literal)"
    done
    rm -f "$WORK/dest.raw" "$WORK/after.raw"
  fi
done
rm -f "$WORK/before.raw"
fi

# ---------------------------------------------------------------- 3. lag under load
if has_case 3; then
log "case 3: lag under ${LAG_RATE}/s of 4 KiB random writes for ${LAG_SECONDS} s, interval 1 s, $LAG_REPS runs"
for ((rep = 1; rep <= LAG_REPS; rep++)); do
  vol=lag$rep
  am volume create $vol --size $LAG_VOLUME --chunk-size $LAG_CHUNK
  am mirror start $vol --to dst --interval 1s
  H wait-applied "$SRC" $vol dst 1 120
  sleep 3
  fio --name=lag --ioengine=nbd --uri="$(uri $vol)" --rw=randwrite --bs=4k --iodepth=4 --size=$LAG_VOLUME \
    --rate="$LAG_RATE" --runtime=$((LAG_SECONDS + 4)) --time_based --output-format=json \
    --output="$WORK/fio-lag.json" >/dev/null &
  FIO_PID=$!
  sleep 2  # let the writer reach its rate
  H sample-lag "$SRC" $vol dst "$LAG_SECONDS" "$WORK/lag.txt"
  wait "$FIO_PID"
  FIO_PID=""
  wbw=$(python3 -c "import json; j=json.load(open('$WORK/fio-lag.json'))['jobs'][0]['write']; print(j['bw_bytes'])")
  echo "lag $(H lag-stats "$WORK/lag.txt") $wbw" >>"$RESULTS"
  log "  rep $rep: $(tail -1 "$RESULTS")"
  am mirror break $vol
  am volume delete $vol --force
done
cp "$WORK/lag.txt" "${LAG_TRACE:-/dev/null}" 2>/dev/null || true
fi
echo "load-after $(loadavg)" >>"$RESULTS"
log "load average after: $(cat /proc/loadavg)"
[[ -z ${RESULTS_OUT:-} ]] || cp "$RESULTS" "$RESULTS_OUT"

# ---------------------------------------------------------------- table
python3 - "$RESULTS" "$REPS" "$INIT_SIZE_GIB" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def col(kind, i):
    return [float(r[i]) for r in rows if r[0] == kind]
med = statistics.median
MB = 1e6
print()
print(f"amirror mirroring benchmark (loopback, source and target node on one host, /tmp); medians of {sys.argv[2]}")
load = {r[0]: r[1] for r in rows if r[0].startswith("load-")}
print(f"load average (1 min) before {load.get('load-before')}, after {load.get('load-after')}"
      f"{'   LOADED: rerun on a quiet machine' if float(load.get('load-before', 0)) > 0.5 else ''}")
print()
# 1
if col("init-amirror", 4):
    data = col("init-amirror", 4)[0]
    a_s, n_s = med(col("init-amirror", 2)), med(col("init-nbdcopy", 2))
    a_sent = med(col("init-amirror", 3))
    a_rate, n_rate = data / a_s / MB, data / n_s / MB
    ext = [r for r in rows if r[0] == "extents1"][0][1]
    print(f"1. initial sync, {sys.argv[3]} GiB volume, {data / 2**30:.1f} GiB random data in {ext} extents")
    print(f"   {'':<34}{'seconds':>10}{'MB/s':>10}   runs (s)")
    print(f"   {'amirror mirror start->applied':<34}{a_s:>10.2f}{a_rate:>10.0f}   {' '.join(f'{v:.2f}' for v in col('init-amirror', 2))}   bytes sent {a_sent:.0f}")
    print(f"   {'nbdcopy --flush to a file':<34}{n_s:>10.2f}{n_rate:>10.0f}   {' '.join(f'{v:.2f}' for v in col('init-nbdcopy', 2))}")
    r1 = a_rate / n_rate
    print(f"   ratio amirror/nbdcopy rate: {r1:.2f}   target >= 0.90   {'MET' if r1 >= 0.9 else 'MISSED'}")
    cpu = [(float(r[5]) + float(r[6])) / (float(r[3]) / MB) * 1e3 for r in rows if r[0] == "init-amirror"]
    print(f"   CPU per MB sent (source + target): {med(cpu):.2f} ms/MB   "
          f"source {med(col('init-amirror', 5)):.2f} s, target {med(col('init-amirror', 6)):.2f} s")
    print()
# 2
if col("inc-amirror", 4):
    changed = col("inc-amirror", 4)[0]
    i_s, i_sent = med(col("inc-amirror", 2)), med(col("inc-amirror", 3))
    r_s, r_sent = med(col("inc-rsync", 2)), med(col("inc-rsync", 3))
    r_lit = med(col("inc-rsync", 4))
    print(f"2. incremental, {changed / 2**20:.0f} MiB changed (1%, 64 KiB writes at random 64 KiB offsets)")
    print(f"   {'':<34}{'seconds':>10}{'bytes sent':>14}   runs (s)")
    print(f"   {'amirror one cycle (sync)':<34}{i_s:>10.2f}{i_sent:>14.0f}   {' '.join(f'{v:.2f}' for v in col('inc-amirror', 2))}")
    print(f"   {'rsync --inplace --no-whole-file':<34}{r_s:>10.2f}{r_sent:>14.0f}   {' '.join(f'{v:.2f}' for v in col('inc-rsync', 2))}   literal {r_lit:.0f}")
    b = i_sent / changed
    sp = r_s / i_s
    print(f"   amirror bytes sent / changed bytes: {b:.3f}   target <= 1.05   {'MET' if b <= 1.05 else 'MISSED'}")
    print(f"   rsync time / amirror cycle time:    {sp:.1f}x   target >= 10x   {'MET' if sp >= 10 else 'MISSED'}")
    print()
# 3
if any(r[0] == "lag" for r in rows):
    lags = [r for r in rows if r[0] == "lag"]
    # the run with the median p99 (odd counts: exactly the median)
    lag = sorted(lags, key=lambda r: float(r[2]))[len(lags) // 2]
    p50, p99, mx, n, cycles, sent, span, wbw = lag[1:]
    print(f"3. p99 of each run: {' '.join(r[2] for r in lags)} s (the median run below)")
    print(f"3. lag under load: fio 4 KiB random writes at {float(wbw) / MB:.1f} MB/s, interval 1 s, {n} samples over {span} s")
    print(f"   p50 {float(p50):.2f} s   p99 {float(p99):.2f} s   max {float(mx):.2f} s   "
          f"{cycles} cycles applied, {float(sent) / MB / float(span):.0f} MB/s sent")
    print(f"   p99 target <= 2 s   {'MET' if float(p99) <= 2 else 'MISSED'}")
EOF
