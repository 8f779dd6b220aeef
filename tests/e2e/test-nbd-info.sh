#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# nbdinfo sees what amirror advertises: the export list, sizes, the flags it claims
# (flush, FUA, trim, zero, multi-conn; not read-only), block size constraints,
# base:allocation; the default export exists only while there is exactly one volume.
source "$(dirname "$0")/lib.sh"
require_cmd nbdinfo python3

# json_field JSON_FILE EXPORT FIELD -> value
json_field() {
  python3 -c 'import json,sys
doc = json.load(open(sys.argv[1]))
exports = [e for e in doc["exports"] if e["export-name"] == sys.argv[2]]
if not exports: sys.exit("export %r not listed" % sys.argv[2])
print(json.dumps(exports[0].get(sys.argv[3])))' "$@"
}
expect_field() {  # expect_field JSON EXPORT FIELD VALUE
  local got
  got=$(json_field "$1" "$2" "$3") || fail "nbdinfo output lacks export $2"
  [[ "$got" == "$4" ]] || fail "export $2: $3 is $got, expected $4"
}

start_serve a --create alpha --size 96M --chunk-size 16K --quiet
nbdinfo --json "$(nbd_uri a alpha)" >"$WORK/alpha.json" || fail "nbdinfo on export alpha failed"
expect_field "$WORK/alpha.json" alpha export-size 100663296
for flag in can_flush can_fua can_trim can_zero can_multi_conn; do
  expect_field "$WORK/alpha.json" alpha $flag true
done
expect_field "$WORK/alpha.json" alpha is_read_only false
expect_field "$WORK/alpha.json" alpha can_cache false
expect_field "$WORK/alpha.json" alpha can_fast_zero false
expect_field "$WORK/alpha.json" alpha block_size_minimum 1
expect_field "$WORK/alpha.json" alpha block_size_maximum 33554432
expect_field "$WORK/alpha.json" alpha contexts '["base:allocation"]'

# One volume: the default export "" is that volume.
nbdinfo --size "nbd+unix:///?socket=$WORK/a.sock" >"$WORK/default.size" || fail "default export refused with one volume"
[[ $(cat "$WORK/default.size") == 100663296 ]] || fail "default export size $(cat "$WORK/default.size")"
stop_serve a

# Two volumes: both listed with their sizes; no default export; unknown names refused.
start_serve a --create beta --size 1G --quiet
nbdinfo --list --json "nbd+unix:///?socket=$WORK/a.sock" >"$WORK/list.json" || fail "nbdinfo --list failed"
expect_field "$WORK/list.json" alpha export-size 100663296
expect_field "$WORK/list.json" beta export-size 1073741824
names=$(python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(open(sys.argv[1]))["exports"])))' "$WORK/list.json")
[[ "$names" == "alpha beta" ]] || fail "nbdinfo --list shows '$names', expected 'alpha beta'"
if nbdinfo --size "nbd+unix:///?socket=$WORK/a.sock" >/dev/null 2>&1; then
  fail "default export accepted although there are two volumes"
fi
if nbdinfo --size "nbd+unix:///nosuch?socket=$WORK/a.sock" >/dev/null 2>&1; then
  fail "unknown export accepted"
fi
[[ $(nbdinfo --size "$(nbd_uri a beta)") == 1073741824 ]] || fail "beta size wrong"
[[ $(stat -c %a "$WORK/a.sock") == 600 ]] || fail "socket mode is $(stat -c %a "$WORK/a.sock"), expected 600"

# Block status: a fresh volume is one hole; after a write, data then hole.
nbdinfo --map "$(nbd_uri a beta)" >"$WORK/map0" || fail "nbdinfo --map failed"
grep -q 'hole,zero' "$WORK/map0" || fail "fresh volume not reported as a hole: $(cat "$WORK/map0")"
! grep -q 'data' "$WORK/map0" || fail "fresh volume reports data"
qemu-io -f raw -c 'write -q -P 7 0 1M' "$(nbd_uri a beta)" >/dev/null || fail "qemu-io write failed"
nbdinfo --map "$(nbd_uri a beta)" >"$WORK/map1" || fail "nbdinfo --map failed"
read -r first_offset first_length first_type _ <"$WORK/map1"
[[ $first_offset == 0 && $first_length -ge 1048576 && $first_type == 0 ]] ||
  fail "after writing the first MiB, map starts with '$(head -1 "$WORK/map1")'"
stop_serve a

# TCP listener (loopback) answers too.
port=$((20000 + RANDOM % 20000))
start_serve a --tcp 127.0.0.1:$port --quiet
[[ $(nbdinfo --size "nbd://127.0.0.1:$port/alpha") == 100663296 ]] || fail "TCP listener: wrong size or no answer"
stop_serve a
log "PASS"
