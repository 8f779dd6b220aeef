#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Compression benchmark: bytes on the wire, time and CPU of one initial copy between two
# `amirror node` processes on loopback, --compress zstd vs --compress off, for
#   fs:     an ext4 image made with `mkfs.ext4 -d` from a copy of /usr/include (text:
#           headers; plus the file system's metadata and free space)
#   random: the same size of AES-CTR output (incompressible)
# Each (data, compression) case runs REPS times; medians are printed. The load average
# is printed before and after: on a busy machine the times are noise-prone (CPU seconds
# less so), so read the ratios with it.
#
#   bench/run-compress.sh [--quick] [AMIRROR_BINARY]
#     --quick        64 MiB images (default 256 MiB), still 3 repetitions
#     env: REPS (3), SIZE_MIB (256; 64 with --quick), WORKDIR (/tmp)
# Peers talk plaintext (insecure = true) so the CPU column is compression's, not TLS's.
# Without a binary it uses build-mbench/amirror, building it (Release) if absent.
# See bench/README.md ("## Compression").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
if [[ ${1:-} == --quick ]]; then QUICK=1; shift; fi
AMIRROR=${1:-${AMIRROR:-}}
if [[ -z $AMIRROR ]]; then
  build="$repo/build-mbench"
  [[ -f "$build/build.ninja" ]] || cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  if ! log="$(cmake --build "$build" --target amirror 2>&1)"; then
    printf '%s\n' "$log" >&2
    exit 1
  fi
  AMIRROR=$build/amirror
fi
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-$((QUICK ? 64 : 256))}
WORKDIR=${WORKDIR:-/tmp}
for cmd in mkfs.ext4 openssl python3 jq; do
  command -v $cmd >/dev/null || { echo "bench: $cmd is not installed" >&2; exit 1; }
done
[[ -x "$AMIRROR" ]] || { echo "bench: no amirror binary at $AMIRROR" >&2; exit 1; }

WORK=$(mktemp -d "$WORKDIR/compress-bench.XXXXXX")
declare -A NODE_PID=()
source "$repo/bench/lib.sh"
cleanup() {
  stop_bench_nodes 100
  rm -rf "$WORK"
}
trap cleanup EXIT

read -r SRC_PORT DST_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
node_config() {  # NAME PORT PEER PEER_PORT
  cat <<TOML
[node]
name = "$1"
data_dir = "$WORK/$1.d"
control_socket = "$WORK/$1.sock"
listen = "127.0.0.1:$2"
[tls]
insecure = true
[[peers]]
name = "$3"
address = "127.0.0.1:$4"
TOML
}
node_config src "$SRC_PORT" dst "$DST_PORT" >"$WORK/src.toml"
node_config dst "$DST_PORT" src "$SRC_PORT" >"$WORK/dst.toml"
for name in src dst; do
  "$AMIRROR" node --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  NODE_PID[$name]=$!
done
am() { local node=$1; shift; "$AMIRROR" --node "$WORK/$node.sock" "$@"; }
for name in src dst; do
  for _ in $(seq 600); do am "$name" status --json >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "making the data: ${SIZE_MIB} MiB ext4 image of /usr/include, ${SIZE_MIB} MiB random" >&2
mkdir -p "$WORK/tree"
cp -r /usr/include "$WORK/tree/" 2>/dev/null || true
# Only what fits: mkfs -d fails on a tree larger than the image.
python3 - "$WORK/tree" $((SIZE_MIB * 1024 * 1024 * 6 / 10)) <<'PY'
import os, sys
root, budget = sys.argv[1], int(sys.argv[2])
total = 0
for dirpath, _, files in os.walk(root):
    for name in sorted(files):
        path = os.path.join(dirpath, name)
        if os.path.islink(path):
            os.unlink(path); continue
        total += os.path.getsize(path)
        if total > budget: os.unlink(path)
PY
mkfs.ext4 -q -F -d "$WORK/tree" "$WORK/fs.img" "${SIZE_MIB}M" >/dev/null
rm -rf "$WORK/tree"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/zero |
  openssl enc -aes-256-ctr -pass pass:amirror -nosalt -pbkdf2 2>/dev/null >"$WORK/random.img"

# CPU seconds (user + system) of a process so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# run_case DATA COMPRESS REP: one initial copy; prints "wall_s wire_bytes data_bytes src_cpu_s dst_cpu_s".
run_case() {
  local data=$1 compress=$2 rep=$3 vol="$1-$2-$3"
  am src volume import "$vol" --from "$WORK/$data.img" >/dev/null
  sync
  local cpu_src0 cpu_dst0 t0 t1 applied=0
  cpu_src0=$(cpu_s "${NODE_PID[src]}")
  cpu_dst0=$(cpu_s "${NODE_PID[dst]}")
  t0=$(date +%s.%N)
  am src mirror start "$vol" --to dst --interval 1h --compress "$compress" >/dev/null
  until ((applied >= 1)); do
    sleep 0.05
    applied=$(am src status --json | jq --arg v "$vol" '.volumes[] | select(.name == $v) | .mirrors[0].applied_cycle')
  done
  t1=$(date +%s.%N)
  local status
  status=$(am src status --json | jq -c --arg v "$vol" '.volumes[] | select(.name == $v) | .mirrors[0]')
  echo "$(python3 -c "print(f'{$t1 - $t0:.3f}')") $(jq .wire_bytes_sent <<<"$status") $(jq .bytes_sent <<<"$status")" \
    "$(python3 -c "print(f'{$(cpu_s "${NODE_PID[src]}") - $cpu_src0:.2f}')")" \
    "$(python3 -c "print(f'{$(cpu_s "${NODE_PID[dst]}") - $cpu_dst0:.2f}')")"
  am src mirror break "$vol" >/dev/null
  am src volume delete "$vol" --force >/dev/null
  am dst replica delete "src/$vol" >/dev/null
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
results="$WORK/results.txt"
for rep in $(seq "$REPS"); do
  # Interleaved, so load from other processes hits every case alike.
  for data in fs random; do
    for compress in zstd off; do
      echo "$data $compress $(run_case "$data" "$compress" "$rep")" | tee -a "$results" >&2
    done
  done
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" "$SIZE_MIB" "$REPS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
size_mib, reps = int(sys.argv[2]), int(sys.argv[3])
median = {}
for data in ("fs", "random"):
    for compress in ("zstd", "off"):
        runs = [r for r in rows if r[0] == data and r[1] == compress]
        median[data, compress] = [statistics.median(float(r[i]) for r in runs) for i in range(2, 7)]
print(f"\ninitial copy of {size_mib} MiB, medians of {reps}")
print(f"{'data':<7} {'compress':<8} {'wall s':>7} {'MB/s':>7} {'data bytes':>12} {'wire bytes':>12} {'wire/data':>9} {'src cpu s':>9} {'dst cpu s':>9}")
for (data, compress), (wall, wire, sent, src_cpu, dst_cpu) in median.items():
    print(f"{data:<7} {compress:<8} {wall:>7.2f} {sent / wall / 1e6:>7.1f} {int(sent):>12} {int(wire):>12} "
          f"{wire / sent:>9.4f} {src_cpu:>9.2f} {dst_cpu:>9.2f}")
fs_z, fs_o = median["fs", "zstd"], median["fs", "off"]
rnd_z, rnd_o = median["random", "zstd"], median["random", "off"]
print(f"\nfs:     zstd sends {fs_z[1] / fs_o[1]:.3f} of the wire bytes of off; wall time zstd/off {fs_z[0] / fs_o[0]:.3f}")
print(f"random: wire bytes zstd/off {rnd_z[1] / rnd_o[1]:.6f} (must be <= 1.001); "
      f"wall time zstd/off {rnd_z[0] / rnd_o[0]:.3f} (goal <= 1.05); source CPU zstd/off {rnd_z[3] / max(rnd_o[3], 0.01):.3f}")
PY
