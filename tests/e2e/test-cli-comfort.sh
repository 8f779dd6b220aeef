#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The CLI's promises to scripts and people: `--version`, the documented exit codes
# (0 ok, 1 refused, 2 usage, 4 node unreachable; 3 is `mirror verify`'s, in
# test-mirror-verify.sh), and `status --watch`: frame after frame when stdout is not a
# terminal, redrawn in place on one, ended by SIGINT/SIGTERM with exit 0.
source "$(dirname "$0")/mirror-lib.sh"
MIRROR_TLS=0
SOURCE_DIR=$(cd "$(dirname "$0")/../.." && pwd)

log "--version: the project version from CMakeLists.txt"
project_version=$(sed -n 's/^project(amirror VERSION \([0-9.]*\) .*/\1/p' "$SOURCE_DIR/CMakeLists.txt")
[[ -n $project_version ]] || fail "no project version in CMakeLists.txt"
version=$("$AMIRROR" --version) || fail "amirror --version exited $?"
[[ $version =~ ^amirror\ ${project_version//./\\.}( \(git [^\)]+\))?$ ]] ||
  fail "amirror --version says '$version', expected 'amirror $project_version [(git DESCRIBE)]'"
log "$version"

log "--help lists the exit codes"
"$AMIRROR" --help >"$WORK/help.out"
for code in 0 1 2 3 4; do
  grep -Eq "^  $code  " "$WORK/help.out" || fail "amirror --help does not explain exit code $code: $(cat "$WORK/help.out")"
done

# exit_code WANT ARGS...: the CLI exits WANT (stdout/stderr in $WORK/last.out/.err).
exit_code() {
  local want=$1 rc=0
  shift
  "$AMIRROR" "$@" >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
  ((rc == want)) || fail "'amirror $*' exited $rc, expected $want: $(cat "$WORK/last.err")"
}

log "node unreachable: exit 4, naming the socket"
exit_code 4 status --node "$WORK/nowhere.sock"
grep -qF "$WORK/nowhere.sock" "$WORK/last.err" || fail "the unreachable socket is not named: $(cat "$WORK/last.err")"
exit_code 4 volume create v --size 1M --node "$WORK/nowhere.sock"
exit_code 4 mirror verify db --node "$WORK/nowhere.sock"
exit_code 4 status --watch --node "$WORK/nowhere.sock"
touch "$WORK/plain-file"
exit_code 4 volume list --node "$WORK/plain-file"
# A socket file nobody listens on (a node killed -9 leaves one): ECONNREFUSED.
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$WORK/dead.sock"
[[ -S $WORK/dead.sock ]] || fail "could not make a dead socket"
exit_code 4 status --node "$WORK/dead.sock"

log "usage errors: exit 2"
exit_code 2 status --interval 1s --node "$WORK/nowhere.sock"            # --interval needs --watch
exit_code 2 status --watch --json --node "$WORK/nowhere.sock"           # a watch is for people
exit_code 2 status --watch --interval 10ms --node "$WORK/nowhere.sock"  # under 100 ms
exit_code 2 status --watch --interval soon --node "$WORK/nowhere.sock"
exit_code 2 no-such-command

setup_nodes site-a
start_node site-a
S=$WORK/site-a.sock

log "a refusal by a running node: exit 1"
exit_code 1 mirror break nosuch --node "$S"
exit_code 0 volume create db --size 1M --node "$S"

# watch_frames FILE: how many frames (header lines) FILE holds.
watch_frames() {
  local count
  count=$(grep -c '^amirror status, every ' "$1" 2>/dev/null) || true  # not yet opened: 0
  echo "${count:-0}"
}
frames_at_least() { (($(watch_frames "$1") >= $2)); }

log "status --watch, not a terminal: frame after frame; SIGTERM ends it with 0"
"$AMIRROR" status --watch --interval 100ms --node "$S" >"$WORK/watch.out" 2>"$WORK/watch.err" &
watch_pid=$!
SERVE_PID[watch]=$watch_pid
wait_until 60 "two status frames" frames_at_least "$WORK/watch.out" 2
kill -TERM "$watch_pid"
rc=0
wait "$watch_pid" || rc=$?
unset "SERVE_PID[watch]"
((rc == 0)) || fail "status --watch exited $rc at SIGTERM: $(cat "$WORK/watch.err")"
grep -q $'\033' "$WORK/watch.out" && fail "status --watch wrote terminal escapes into a file"
(($(grep -c '^volume db ' "$WORK/watch.out") >= 2)) || fail "the frames do not show volume db: $(head -20 "$WORK/watch.out")"
grep -q '^amirror status, every 0.1s: ' "$WORK/watch.out" || fail "frame header: $(head -1 "$WORK/watch.out")"

log "a frame shows the node going away, and the watch goes on"
"$AMIRROR" status --watch --interval 100ms --node "$S" >"$WORK/watch2.out" 2>&1 &
watch_pid=$!
SERVE_PID[watch]=$watch_pid
wait_until 60 "a first frame" frames_at_least "$WORK/watch2.out" 1
stop_node site-a
wait_until 60 "a frame saying the node is unreachable" grep -qF "cannot reach the node at $S" "$WORK/watch2.out"
kill -0 "$watch_pid" || fail "status --watch ended when the node went away"
start_node site-a
frames_now=$(watch_frames "$WORK/watch2.out")
wait_until 60 "a frame from the restarted node" frames_at_least "$WORK/watch2.out" $((frames_now + 1))
wait_until 60 "volume db in a later frame" bash -c "tail -n 5 '$WORK/watch2.out' | grep -q '^volume db '"
kill -INT "$watch_pid"
rc=0
wait "$watch_pid" || rc=$?
unset "SERVE_PID[watch]"
((rc == 0)) || fail "status --watch exited $rc at SIGINT (Ctrl-C)"

if command -v script >/dev/null; then
  log "status --watch on a terminal: redrawn in place"
  # util-linux script(1) gives it a pseudo-terminal and copies what it draws.
  script -qfec "'$AMIRROR' status --watch --interval 100ms --node '$S'" "$WORK/tty.out" </dev/null >/dev/null 2>&1 &
  script_pid=$!
  SERVE_PID[script]=$script_pid
  homes() { (($(grep -o $'\033\\[H' "$WORK/tty.out" 2>/dev/null | wc -l) >= 2)); }
  wait_until 60 "two redraws on the terminal" homes
  # The watch itself (script's child) first: SIGTERM must end it.
  for child in $(pgrep -P "$script_pid"); do kill -TERM "$child" 2>/dev/null || true; done
  wait "$script_pid" 2>/dev/null || true
  unset "SERVE_PID[script]"
  grep -q $'\033\\[J' "$WORK/tty.out" || fail "no clear-to-end on the terminal: $(head -c 300 "$WORK/tty.out" | od -c | head)"
fi

stop_node site-a
log "PASS"
