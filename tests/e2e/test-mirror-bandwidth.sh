#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Bandwidth limits over real TCP on loopback (README "Bandwidth and compression"):
#  1. site-a's config caps everything to site-b at 40MB/s ([[peers]] bandwidth_limit);
#     `mirror start --bandwidth 20MB/s` caps the mirror lower. A 128 MiB initial copy of
#     random data (compression cannot shrink it) must not go faster than 20MB/s.
#  2. On the running mirror, `mirror start --bandwidth off` lifts the mirror's cap: the
#     peer's 40MB/s applies to the next 64 MiB.
# The measured rate is wire bytes / (time from just before the copy was asked for to the
# first status showing it applied): it can only come out below the true rate (plus one
# burst of 1 MB), never above. Only an upper bound (1.25 x the cap) is asserted, so a
# slow machine never fails it; the ratio is printed for the record.
# Bad rates are refused with examples and change nothing.
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes site-a site-b
python3 - "$WORK/site-a.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
text = text.replace('name = "site-b"\n', 'name = "site-b"\nbandwidth_limit = "40MB/s"\n')
open(path, "w").write(text)
PY
grep -q 'bandwidth_limit = "40MB/s"' "$WORK/site-a.toml" || fail "could not add bandwidth_limit to site-a's config"
for n in site-a site-b; do start_node "$n"; done

now_s() { date +%s.%N; }
# measure VOL CYCLE START_S CAP_BYTES_PER_S LABEL: waits until site-b applied CYCLE of VOL,
# then prints and checks the rate of the wire bytes sent since START_S.
measure() {
  local vol=$1 cycle=$2 start=$3 cap=$4 label=$5 wire_before=$6 end wire rate ratio
  wait_until 300 "site-b applied cycle $cycle of $vol" \
    bash -c "[[ \$(\"$AMIRROR\" status --json --node \"$WORK/site-a.sock\" | jq -r '.volumes[] | select(.name == \"$vol\") | .mirrors[0].applied_cycle') -ge $cycle ]]"
  end=$(now_s)
  wire=$(mirror_field site-a "$vol" site-b wire_bytes_sent)
  rate=$(python3 -c "print(int(($wire - $wire_before) / ($end - $start)))")
  ratio=$(python3 -c "print(f'{$rate / $cap:.3f}')")
  log "$label: $((wire - wire_before)) wire bytes in $(python3 -c "print(f'{$end - $start:.2f}')") s = $rate B/s, measured/cap = $ratio (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  python3 -c "import sys; sys.exit(0 if $rate <= 1.25 * $cap else 1)" ||
    fail "$label: sent at $rate B/s, more than 1.25 x the cap of $cap B/s"
}

log "bad rates are refused with examples"
am site-a volume create big --size 128M >/dev/null
expect_refusal 1 "'50XB/s' is not a rate; use e.g. 50MB/s, 1GB/s, 800Mbit/s" site-a mirror start big --to site-b --bandwidth 50XB/s
expect_refusal 1 "below the lowest limit" site-a mirror start big --to site-b --bandwidth 1kB/s
[[ -z $(mirror_field site-a big site-b state) ]] || fail "a refused mirror start left a mirror behind"

log "128 MiB of random data at --bandwidth 20MB/s (the peer's limit is 40MB/s)"
write_random site-a big 0 $((128 * 1024 * 1024))
start=$(now_s)
am site-a mirror start big --to site-b --interval 1h --bandwidth 20MB/s >/dev/null
[[ $(mirror_field site-a big site-b bandwidth_limit_bytes_per_second) == 20000000 ]] ||
  fail "status does not show the mirror's 20MB/s cap: $(status_json site-a)"
measure big 1 "$start" 20000000 "initial copy at 20MB/s" 0
compare_replica site-a big site-b

log "lift the mirror's cap on the running mirror: the peer's 40MB/s applies"
am site-a mirror start big --to site-b --bandwidth off | grep -q "updated" || fail "mirror start on the running mirror did not update it: $(cat "$WORK/last.out")"
[[ $(mirror_field site-a big site-b bandwidth_limit_bytes_per_second) == 40000000 ]] ||
  fail "status does not show the peer's 40MB/s after --bandwidth off: $(status_json site-a)"
expect_refusal 1 "only --bandwidth and --compress change" site-a mirror start big --to site-b --interval 5s --bandwidth 30MB/s
[[ $(mirror_field site-a big site-b bandwidth_limit_bytes_per_second) == 40000000 ]] ||
  fail "a refused change altered the cap"
write_random site-a big 0 $((64 * 1024 * 1024))
wire_before=$(mirror_field site-a big site-b wire_bytes_sent)
start=$(now_s)
mirror_sync site-a big
measure big 2 "$start" 40000000 "64 MiB at the peer's 40MB/s" "$wire_before"
compare_replica site-a big site-b

log "the cap survives a restart of the source"
am site-a mirror start big --to site-b --bandwidth 30MB/s >/dev/null
stop_node site-a
start_node site-a
[[ $(mirror_field site-a big site-b bandwidth_limit_bytes_per_second) == 30000000 ]] ||
  fail "after a restart the mirror's cap is not 30MB/s: $(status_json site-a)"

for n in site-a site-b; do stop_node "$n"; done
log "PASS"
