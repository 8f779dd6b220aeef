#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `replica list` shows what a target holds for other nodes, in a table and as JSON
# (the same objects as `status --json`'s "replicas"), with role "replica" and the
# cycle the raw image holds; an empty node lists nothing; volumes show role "primary".
# `replica points a/v` lists the kept points (the applied one); bad names are refused.
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes a b
start_node a
start_node b

[[ $(am b replica list --json) == "[]" ]] || fail "a node with no replicas lists some: $(am b replica list --json)"
am b replica list | grep -q '^REPLICA' || fail "replica list prints no header"

am a volume create v --size 4M >/dev/null
write_random a v 0 65536
am a mirror start v --to b --interval 1h >/dev/null
mirror_sync a v

listed=$(am b replica list --json)
python3 - "$listed" <<'PY' || fail "replica list --json is wrong: $listed"
import json, sys
replicas = json.loads(sys.argv[1])
assert len(replicas) == 1, replicas
r = replicas[0]
assert (r["source"], r["volume"], r["role"]) == ("a", "v", "replica"), r
assert r["applied_cycle"] >= 1 and r["state"] == "idle", r
assert r["image_cycle"] == r["applied_cycle"], r
assert r["size_bytes"] == 4 * 1024 * 1024, r
assert r["points"] == [{"cycle": r["applied_cycle"], "freeze_time": r["freeze_time"]}], r
PY
applied=$(replica_field b a v applied_cycle)
points=$(am b replica points a/v --json)
python3 -c 'import json,sys; p=json.loads(sys.argv[1]); assert [x["cycle"] for x in p] == [int(sys.argv[2])], p' \
  "$points" "$applied" || fail "replica points a/v --json: $points (applied $applied)"
am b replica points a/v | grep -Eq "^ +$applied 20[0-9]{2}-" || fail "replica points table: $(am b replica points a/v)"
for bad in a v a/ /v a/v/x x/v; do
  rc=0; am_try b replica points "$bad" || rc=$?
  (( rc == 1 )) || fail "replica points '$bad' exited $rc, not 1"
  grep -q . "$WORK/last.err" || fail "replica points '$bad' gave no error message"
done
grep -q "no replica x/v" "$WORK/last.err" || fail "unknown replica error does not name it: $(cat "$WORK/last.err")"
am b replica list | grep -Eq '^a/v +4(\.0)? ?MiB' || fail "table row for a/v missing: $(am b replica list)"
[[ $(am a status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["role"])') == primary ]] \
  || fail "volume v's role is not primary"
rc=0; am_try b replica list --bogus || rc=$?
(( rc == 2 )) || fail "an unknown option gave exit $rc, not 2"

stop_node a
stop_node b
log "PASS"
