#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# NBD benchmark: fio's nbd engine against (a) amirror serve, (b) nbdkit's file plugin,
# (c) qemu-nbd, each serving a same-size, pre-filled image on the same file system
# (/tmp), medians of REPS runs of each job. amirror runs twice: without freezes and
# with a freeze + merge every second (the peers have no such mode; their numbers are
# reused for both tables). All four servers run at once and the runs are interleaved;
# the idle freezing server's cycles cost next to nothing while others are measured.
#
#   bench/run-nbd.sh [AMIRROR_BINARY]      env: RUNTIME_S (5), REPS (3), SIZE_MIB (512)
#                                                RESULTS_OUT: copy the raw results there
#
# Prints one table per amirror mode: IOPS (4K jobs) or MiB/s (1M jobs), and amirror's
# ratio to each peer. Needs fio (with the nbd engine), nbdkit, qemu-nbd, nbdcopy.
set -euo pipefail

AMIRROR=${1:-${AMIRROR:-$(dirname "$0")/../build-nbd/amirror}}
RUNTIME_S=${RUNTIME_S:-5}
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-512}
for cmd in fio nbdkit qemu-nbd nbdcopy python3; do
  command -v $cmd >/dev/null || { echo "bench: $cmd is not installed" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "bench: this fio lacks the nbd engine" >&2; exit 1; }
[[ -x "$AMIRROR" ]] || { echo "bench: no amirror binary at $AMIRROR (build it or pass its path)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/nbd-bench.XXXXXX)
declare -A URIS=()
SERVER_PIDS=()
stop_servers() {
  for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}
trap 'stop_servers; rm -rf "$WORK"' EXIT

# name|rw|bs|iodepth|metric
JOBS=(
  "randread-4k-qd1|randread|4k|1|iops"
  "randread-4k-qd16|randread|4k|16|iops"
  "randwrite-4k-qd1|randwrite|4k|1|iops"
  "randwrite-4k-qd16|randwrite|4k|16|iops"
  "seqwrite-1m|write|1m|4|mibps"
  "seqread-1m|read|1m|4|mibps"
)

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/fill.raw"

wait_socket() {
  for _ in $(seq 200); do [[ -S "$1" ]] && return 0; sleep 0.05; done
  echo "bench: server socket $1 never appeared" >&2
  exit 1
}

start_server() {  # start_server KIND -> URIS[KIND], SERVER_PIDS
  local kind=$1 sock="$WORK/$1.sock"
  rm -f "$sock"
  case $kind in
    amirror | amirror-freeze)
      rm -rf "$WORK/$kind.d"
      local extra=()
      [[ $kind == amirror-freeze ]] && extra=(--freeze-interval 1s)
      "$AMIRROR" serve --data-dir "$WORK/$kind.d" --socket "$sock" --create vol \
        --size ${SIZE_MIB}M --quiet "${extra[@]}" 2>"$WORK/$kind.log" &
      URI="nbd+unix:///vol?socket=$sock"
      ;;
    nbdkit)
      truncate -s ${SIZE_MIB}M "$WORK/nbdkit.raw"
      nbdkit --foreground --unix "$sock" file file="$WORK/nbdkit.raw" 2>"$WORK/nbdkit.log" &
      URI="nbd+unix:///?socket=$sock"
      ;;
    qemu-nbd)
      truncate -s ${SIZE_MIB}M "$WORK/qemu.raw"
      qemu-nbd --format=raw --socket="$sock" --persistent --shared=16 --cache=writeback \
        "$WORK/qemu.raw" 2>"$WORK/qemu-nbd.log" &
      URI="nbd+unix:///?socket=$sock"
      ;;
  esac
  SERVER_PIDS+=($!)
  URIS[$kind]=$URI
  wait_socket "$sock"
  nbdcopy "$WORK/fill.raw" "$URI"  # same data everywhere, so reads hit allocated data
  # Warm-up (discarded): first runs against a fresh server are consistently slower.
  fio --name=warmup --ioengine=nbd --uri="$URI" --rw=randrw --bs=4k --iodepth=16 \
    --size=${SIZE_MIB}M --runtime=2 --time_based >/dev/null
}

run_job() {  # run_job SPEC -> prints the metric
  IFS='|' read -r name rw bs depth metric <<<"$1"
  fio --name="$name" --ioengine=nbd --uri="$URI" --rw="$rw" --bs="$bs" --iodepth="$depth" \
    --size=${SIZE_MIB}M --runtime="$RUNTIME_S" --time_based --output-format=json \
    --output="$WORK/fio.json" >/dev/null
  python3 - "$WORK/fio.json" "$rw" "$metric" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["read"] if "read" in sys.argv[2] else job["write"]
print(round(side["iops"]) if sys.argv[3] == "iops" else round(side["bw"] / 1024, 1))
EOF
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
echo "bench: load average before: $(cat /proc/loadavg)" >&2
KINDS=(amirror amirror-freeze nbdkit qemu-nbd)
for kind in "${KINDS[@]}"; do
  echo "bench: starting and filling $kind" >&2
  start_server "$kind"
done
# Runs are interleaved (rep 1 of every server, then rep 2, ...) so that load from
# anything else on the machine spreads evenly over the servers compared.
for spec in "${JOBS[@]}"; do
  name=${spec%%|*}
  for ((rep = 0; rep < REPS; rep++)); do
    for kind in "${KINDS[@]}"; do
      URI=${URIS[$kind]}
      value=$(run_job "$spec")
      echo "$kind $name $value" >>"$RESULTS"
      echo "bench:   $name rep $((rep + 1)) $kind $value" >&2
    done
  done
done
stop_servers
[[ -s "$WORK/amirror-freeze.log" ]] && grep -h " freeze_cycles=" "$WORK/amirror-freeze.log" >&2 || true

LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)
echo "bench: load average after: $(cat /proc/loadavg)" >&2
[[ -z ${RESULTS_OUT:-} ]] || { cp "$RESULTS" "$RESULTS_OUT"; echo "load $LOAD_BEFORE $LOAD_AFTER" >>"$RESULTS_OUT"; }

python3 - "$RESULTS" "$RUNTIME_S" "$REPS" "$SIZE_MIB" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    kind, job, value = line.split()
    rows.setdefault((kind, job), []).append(float(value))
    if job not in order: order.append(job)
rows = {key: statistics.median(values) for key, values in rows.items()}
print(f"fio nbd engine, {sys.argv[4]} MiB image in /tmp, {sys.argv[2]} s per run, median of {sys.argv[3]}")
print(f"load average (1 min) before {sys.argv[5]}, after {sys.argv[6]}"
      f"{'   LOADED: rerun on a quiet machine' if float(sys.argv[5]) > 0.5 else ''}")
for mode, label in (("amirror", "no freezes"), ("amirror-freeze", "freeze+merge every 1 s")):
    print(f"\namirror ({label}) vs nbdkit file plugin and qemu-nbd")
    print(f"{'job':<20}{'unit':>6}{'amirror':>11}{'nbdkit':>11}{'qemu-nbd':>11}{'vs nbdkit':>11}{'vs qemu':>9}")
    for job in order:
        unit = "IOPS" if "4k" in job else "MiB/s"
        a, k, q = rows[(mode, job)], rows[("nbdkit", job)], rows[("qemu-nbd", job)]
        print(f"{job:<20}{unit:>6}{a:>11.0f}{k:>11.0f}{q:>11.0f}{a / k:>10.2f}x{a / q:>8.2f}x")
EOF
