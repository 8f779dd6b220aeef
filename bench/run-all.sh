#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every figure of the performance table (issue 11) in one run, each next to its peer
# measured in the same run, and the table with ratios and targets at the end:
#   store   bench/run.sh --filter "4K rand write"     first write after a freeze vs steady
#   mirror  bench/run-mirror.sh (cases 1, 2, 3)      initial sync vs nbdcopy, incremental
#                                                    bytes vs rsync, lag p99, CPU per MB
#   nbd     bench/run-nbd.sh                         fio via NBD vs nbdkit's file plugin,
#                                                    without and with freeze+merge every 1 s
#
#   bench/run-all.sh [--quick] [AMIRROR_BINARY]
#     --quick   smoke sizes, one repetition, no repeats for load (checks the scripts work;
#               its figures mean nothing)
#     env: MAX_TRIES (3)  a part whose 1-minute load average before it exceeds 0.5 is run
#                         again, up to this many times; the run with the lowest load counts
#          KEEP (unset)   a directory to keep every part's raw results and output in
#          QUIET_WAIT_S (300)  before each try, wait up to this long for the load to fall
#                         to 0.5 (the previous part's writeback)
#
# Without AMIRROR_BINARY it builds build-mbench/amirror (Release). Load averages are
# printed before and after each part; the table marks figures taken on a loaded machine.
# See bench/README.md ("## All figures").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
if [[ ${1:-} == --quick ]]; then QUICK=1; shift; fi
if [[ ${1:-} == -* ]]; then echo "usage: bench/run-all.sh [--quick] [AMIRROR_BINARY]" >&2; exit 2; fi
AMIRROR=${1:-}
[[ -n $AMIRROR ]] || AMIRROR=$("$repo/bench/build-amirror.sh")
[[ -x $AMIRROR ]] || { echo "bench: no amirror binary at $AMIRROR" >&2; exit 1; }
AMIRROR=$(realpath "$AMIRROR")
MAX_TRIES=${MAX_TRIES:-3}
((QUICK)) && MAX_TRIES=1

OUT=$(mktemp -d /tmp/bench-all.XXXXXX)
trap '[[ -n ${KEEP:-} ]] && { mkdir -p "$KEEP"; cp -r "$OUT"/. "$KEEP"/; }; rm -rf "$OUT"' EXIT
load1() { cut -d' ' -f1 /proc/loadavg; }
# The previous part's writeback and processes keep the load up for a minute or two:
# wait (up to QUIET_WAIT_S seconds) for the 1-minute load average to fall to 0.5.
QUIET_WAIT_S=${QUIET_WAIT_S:-300}
((QUICK)) && QUIET_WAIT_S=0
wait_quiet() {
  local waited=0
  while ((waited < QUIET_WAIT_S)) && ! python3 -c "import sys; sys.exit(0 if $(load1) <= 0.5 else 1)"; do
    sleep 10
    waited=$((waited + 10))
  done
}

# run_part NAME COMMAND...: runs it (again while the load before it was > 0.5, up to
# MAX_TRIES), keeps the output of the quietest try as $OUT/NAME.out and its raw results
# (the command writes them to $RESULTS_OUT) as $OUT/NAME.results, and its load as
# $OUT/NAME.load ("before after").
run_part() {
  local name=$1 best="" try before after
  shift
  for ((try = 1; try <= MAX_TRIES; try++)); do
    wait_quiet
    before=$(load1)
    echo "bench-all: $(date +%T) $name (try $try), load average before: $(cat /proc/loadavg)" >&2
    RESULTS_OUT="$OUT/$name.try$try.results" "$@" >"$OUT/$name.try$try.out"
    after=$(load1)
    echo "bench-all: $(date +%T) $name done, load average after: $(cat /proc/loadavg)" >&2
    echo "$before $after" >"$OUT/$name.try$try.load"
    if [[ -z $best ]] || python3 -c "import sys; sys.exit(0 if $before < $(cut -d' ' -f1 "$OUT/$name.try$best.load") else 1)"; then
      best=$try
    fi
    python3 -c "import sys; sys.exit(0 if $before <= 0.5 else 1)" && break
  done
  for ext in out results load; do
    [[ -f "$OUT/$name.try$best.$ext" ]] && cp "$OUT/$name.try$best.$ext" "$OUT/$name.$ext"
  done
  cat "$OUT/$name.out" >&2
}

# The store bench prints a table, not raw results: keep its output as the results.
store_part() {
  local args=(--filter "4K rand write")
  ((QUICK)) && args+=(--quick)
  "$repo/bench/run.sh" "${args[@]}" | tee "$RESULTS_OUT"
}
if ((QUICK)); then
  export REPS=1 INIT_SIZE_GIB=1 INC_SIZE_GIB=1 LAG_SECONDS=10 LAG_VOLUME=256M RUNTIME_S=2 SIZE_MIB=128
fi
run_part store store_part
run_part mirror "$repo/bench/run-mirror.sh" "$AMIRROR"
run_part nbd "$repo/bench/run-nbd.sh" "$AMIRROR"

python3 - "$OUT" "$QUICK" <<'EOF'
import os, statistics, sys
out, quick = sys.argv[1], sys.argv[2] == "1"
med = statistics.median
MB = 1e6
def load(part):
    try:
        return [float(x) for x in open(f"{out}/{part}.load").read().split()]
    except (OSError, ValueError):
        return [float("nan")] * 2
rows = []  # (measure, amirror, peer, ratio text, target, verdict, part)
def add(measure, amirror, peer, ratio, target, ok, part):
    rows.append((measure, amirror, peer, ratio, target, "MET" if ok else "MISSED", part))

# mirror
path = f"{out}/mirror.results"
if os.path.exists(path):
    m = [l.split() for l in open(path)]
    col = lambda kind, i: [float(r[i]) for r in m if r[0] == kind]
    if col("init-amirror", 2):
        data = col("init-amirror", 4)[0]
        a, n = med(col("init-amirror", 2)), med(col("init-nbdcopy", 2))
        r = n / a
        add("initial sync (mirror start -> applied) vs nbdcopy --flush",
            f"{a:.2f} s ({data / a / MB:.0f} MB/s)", f"{n:.2f} s ({data / n / MB:.0f} MB/s)",
            f"{r:.2f}x", ">= 0.9x", r >= 0.9, "mirror")
        cpu = med([(float(x[5]) + float(x[6])) / (float(x[3]) / MB) * 1e3 for x in m if x[0] == "init-amirror"])
        add("CPU per MB sent, initial sync (source + target)", f"{cpu:.2f} ms/MB", "-", "-", "reported", True, "mirror")
    if col("inc-amirror", 2):
        changed = col("inc-amirror", 4)[0]
        b = med(col("inc-amirror", 3)) / changed
        add("incremental: bytes sent / bytes changed", f"{b:.3f}", "-", "-", "<= 1.05", b <= 1.05, "mirror")
        t, rt = med(col("inc-amirror", 2)), med(col("inc-rsync", 2))
        add("incremental: rsync time / cycle time", f"{t:.2f} s", f"{rt:.2f} s", f"{rt / t:.1f}x", ">= 10x",
            rt / t >= 10, "mirror")
    lags = [r for r in m if r[0] == "lag"]
    if lags:
        p99 = med(float(r[2]) for r in lags)
        p50 = med(float(r[1]) for r in lags)
        rate = med(float(r[8]) for r in lags) / MB
        add(f"replica lag p99, 4K random writes at {rate:.1f} MB/s, interval 1 s",
            f"p99 {p99:.2f} s (p50 {p50:.2f})", "-", "-", "<= 2 s", p99 <= 2, "mirror")

# nbd
path = f"{out}/nbd.results"
if os.path.exists(path):
    v = {}
    for line in open(path):
        f = line.split()
        if len(f) == 3:
            v.setdefault((f[0], f[1]), []).append(float(f[2]))
    jobs = sorted({job for _, job in v}, key=lambda j: ("read" not in j, j))
    for mode, label, target in (("amirror", "no mirroring", 1.0), ("amirror-freeze", "freeze+merge every 1 s", 0.9)):
        for job in jobs:
            if (mode, job) not in v or ("nbdkit", job) not in v:
                continue
            a, k = med(v[(mode, job)]), med(v[("nbdkit", job)])
            unit = "IOPS" if "4k" in job else "MiB/s"
            add(f"fio {job} vs nbdkit file, {label}", f"{a:.0f} {unit}", f"{k:.0f} {unit}", f"{a / k:.2f}x",
                f">= {target}x", a / k >= target, "nbd")

# store
path = f"{out}/store.results"
if os.path.exists(path):
    rates = {}
    for line in open(path):
        name, rest = line[:42].strip(), line[42:].split()
        if name.startswith("4K rand write") and len(rest) >= 2 and rest[0] == "1":
            rates[name] = float(rest[1])
    steady, first = rates.get("4K rand write, steady (chunk 64K)"), rates.get("4K rand write, after freeze (chunk 64K)")
    if steady and first:
        add("store: 4K first write after freeze vs steady (64K chunks)", f"{first:.0f} op/s", f"{steady:.0f} op/s",
            f"{first / steady:.2f}x", ">= 0.5x", first / steady >= 0.5, "store")

print()
print("amirror performance table (issue 11)" + ("   --quick: smoke sizes, figures mean nothing" if quick else ""))
for part in ("store", "mirror", "nbd"):
    b, a = load(part)
    flag = "   LOADED: rerun on a quiet machine" if b > 0.5 else ""
    print(f"  load average (1 min) {part}: before {b:.2f}, after {a:.2f}{flag}")
print()
w = max(len(r[0]) for r in rows) if rows else 10
print(f"{'measure':<{w}}  {'amirror':>26}  {'peer':>22}  {'ratio':>7}  {'target':>8}  verdict")
for measure, amirror, peer, ratio, target, verdict, part in rows:
    print(f"{measure:<{w}}  {amirror:>26}  {peer:>22}  {ratio:>7}  {target:>8}  {verdict}")
EOF
