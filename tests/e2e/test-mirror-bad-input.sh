#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Bad CLI input gets a clear error and a non-zero exit and changes nothing: unknown
# volume, unknown peer, bad sizes and chunk sizes, duplicate and malformed volume
# names, bad intervals, break of a volume that is not mirrored, an unreachable node
# socket. After each, `volume list --json` and `status --json` must be unchanged.
source "$(dirname "$0")/mirror-lib.sh"

setup_nodes site-a site-b
start_node site-a
start_node site-b
am site-a volume create db --size 16M >/dev/null
am site-a volume create spare --size 8M --chunk-size 8K --group grp >/dev/null
write_pattern site-a db 0 1M 0x42
am site-a mirror start db --to site-b --interval 1h >/dev/null
mirror_sync site-a db
compare_replica site-a db site-b

# what must not change (lag_seconds moves with the clock, free_bytes with the disk)
snapshot() {
  {
    am site-a volume list --json
    status_json site-a | jq -S 'del(.volumes[].mirrors[]?.lag_seconds, .storage[].free_bytes)'
    status_json site-b | jq -S '.replicas'
  } >"$1"
}
snapshot "$WORK/before.json"
ls -R "$WORK/site-a.d" >"$WORK/before.files"

checks=0
# expect_fail WORD ARGS...: the CLI (against site-a) fails, says something on stderr
# that contains WORD (case-insensitive), and nothing changed.
expect_fail() {
  local word=$1
  shift
  checks=$((checks + 1))
  if am_try site-a "$@"; then
    fail "'amirror $*' succeeded; expected an error about '$word' (stdout: $(cat "$WORK/last.out"))"
  fi
  [[ -s $WORK/last.err ]] || fail "'amirror $*' failed without a message on stderr"
  grep -qiF -- "$word" "$WORK/last.err" ||
    fail "'amirror $*': the error does not name '$word': $(cat "$WORK/last.err")"
  snapshot "$WORK/after.json"
  diff -u "$WORK/before.json" "$WORK/after.json" >"$WORK/diff.out" ||
    fail "'amirror $*' failed but changed the node's state: $(head -40 "$WORK/diff.out")"
}

log "volume create: bad sizes, chunk sizes, names, duplicates"
expect_fail 12Q volume create v1 --size 12Q
expect_fail size volume create v1 --size 0
expect_fail 512 volume create v1 --size 1000
expect_fail size volume create v1 --size -5M
expect_fail size volume create v1 --size ""
expect_fail chunk volume create v1 --size 16M --chunk-size 3K
expect_fail chunk volume create v1 --size 16M --chunk-size 2K
expect_fail chunk volume create v1 --size 16M --chunk-size 8M
expect_fail chunk volume create v1 --size 16M --chunk-size 5000
expect_fail lots volume create v1 --size 16M --chunk-size lots
expect_fail db volume create db --size 16M
expect_fail spare volume create spare --size 1M --chunk-size 4K
expect_fail "volume name" volume create a/b --size 16M
expect_fail "volume name" volume create .. --size 16M
expect_fail "volume name" volume create "bad name" --size 16M
expect_fail name volume create "" --size 16M
expect_fail name volume create "$(printf 'x%.0s' {1..65})" --size 16M
expect_fail group volume create v1 --size 16M --group "no/slash"

log "volume import: missing file, duplicate name"
expect_fail "$WORK/no-such-file" volume import v2 --from "$WORK/no-such-file"
head -c 65536 /dev/urandom >"$WORK/small.raw"
expect_fail db volume import db --from "$WORK/small.raw"
expect_fail "volume name" volume import a/b --from "$WORK/small.raw"

log "mirror start/break/sync: unknown volume, unknown peer, bad interval, not mirrored"
expect_fail nosuch mirror start nosuch --to site-b
expect_fail site-z mirror start spare --to site-z
expect_fail site-z mirror start spare --to site-b,site-z
expect_fail site-a mirror start spare --to site-a
expect_fail nogroup mirror start --group nogroup --to site-b
expect_fail soon mirror start spare --to site-b --interval soon
expect_fail volume mirror start --to site-b
expect_fail nosuch mirror break nosuch
expect_fail spare mirror break spare
expect_fail nogroup mirror break --group nogroup
expect_fail nosuch mirror sync nosuch
expect_fail spare mirror sync spare
expect_fail never mirror sync db --timeout never

log "unreachable node socket"
for cmd in "volume list" "status" "volume create v3 --size 1M" "mirror sync db"; do
  checks=$((checks + 1))
  rc=0
  # shellcheck disable=SC2086
  "$AMIRROR" $cmd --node "$WORK/nowhere.sock" >"$WORK/nowhere.out" 2>"$WORK/nowhere.err" || rc=$?
  ((rc != 0)) || fail "'amirror $cmd' against a missing socket succeeded"
  grep -qF "$WORK/nowhere.sock" "$WORK/nowhere.err" ||
    fail "'amirror $cmd' against a missing socket does not name the socket: $(cat "$WORK/nowhere.err")"
done
# a path that exists but is not a socket
touch "$WORK/plain-file"
rc=0
"$AMIRROR" status --node "$WORK/plain-file" >/dev/null 2>"$WORK/plain.err" || rc=$?
((rc != 0)) || fail "'amirror status' against a plain file succeeded"
[[ -s $WORK/plain.err ]] || fail "'amirror status' against a plain file failed silently"

# last, as it starts a mirror when accepted: the config refuses intervals under 100 ms,
# the CLI must too (0 s would freeze back to back without pause)
expect_fail interval mirror start spare --to site-b --interval 0s
expect_fail interval mirror start spare --to site-b --interval 50ms

snapshot "$WORK/after.json"
diff -u "$WORK/before.json" "$WORK/after.json" >/dev/null || fail "state changed during the bad-input checks"
ls -R "$WORK/site-a.d" >"$WORK/after.files"
diff -u "$WORK/before.files" "$WORK/after.files" >"$WORK/files.diff" ||
  fail "bad input left files behind in the data directory: $(head -20 "$WORK/files.diff")"
# the mirror still works after all that
write_pattern site-a db 4096 4096 0x43
mirror_sync site-a db
compare_replica site-a db site-b
log "$checks bad inputs rejected"

# The connection option works anywhere on the line, and without one the CLI says how.
"$AMIRROR" --node "$WORK/site-a.sock" status --json | jq -e '.node == "site-a"' >/dev/null ||
  fail "'amirror --node SOCKET status --json' does not reach site-a"
"$AMIRROR" --node "$WORK/site-a.sock" volume list | grep -q '^db\b\|db' ||
  fail "'amirror --node SOCKET volume list' does not list db"
"$AMIRROR" --node "$WORK/site-b.sock" status --node "$WORK/site-a.sock" --json | jq -e '.node == "site-a"' >/dev/null ||
  fail "--node after the verb must win over --node before it"
AMIRROR_NODE=$WORK/site-b.sock "$AMIRROR" --node "$WORK/site-a.sock" status --json | jq -e '.node == "site-a"' >/dev/null ||
  fail "--node on the command line must win over AMIRROR_NODE"
rc=0
env -u AMIRROR_NODE "$AMIRROR" status >/dev/null 2>"$WORK/no-node.err" || rc=$?
((rc == 2)) || fail "status without --node exited $rc, expected 2 (usage)"
grep -q -- '--node' "$WORK/no-node.err" || fail "status without --node does not name --node: $(cat "$WORK/no-node.err")"

stop_node site-a
stop_node site-b
log "PASS"
