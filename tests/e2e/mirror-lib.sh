# SPDX-License-Identifier: Apache-2.0
# Helpers for the mirroring e2e scripts (tests/e2e/test-mirror-*.sh). Source it first:
#   source "$(dirname "$0")/mirror-lib.sh"
# It sources lib.sh (so $WORK, fail, log, require_cmd and the cleanup trap come from
# there); nodes are registered in lib.sh's SERVE_PID so the trap kills them and `fail`
# prints the tail of their logs.
#
# Node NAME lives in $WORK: config NAME.toml, data dir NAME.d, control socket NAME.sock,
# NBD socket NAME-nbd.sock, log NAME.log (appended across restarts).
#
#   setup_nodes NAME...            write one config per node, every other node a peer;
#                                  certificates for all (TLS) unless MIRROR_TLS=0
#   start_node NAME / stop_node NAME (SIGTERM, clean exit) / kill_node NAME (kill -9)
#   am NAME ARGS...                run the CLI against node NAME (fails the test on error)
#   am_try NAME ARGS...            same, but returns the CLI's status (stdout/stderr kept
#                                  in $WORK/last.out / $WORK/last.err)
#   expect_refusal CODE PATTERN NAME ARGS...  the CLI exits CODE and its stderr says PATTERN
#   vol_uri NODE VOL, replica_uri TARGET SOURCE VOL
#   write_pattern NODE VOL OFF LEN PATTERN, write_random NODE VOL OFF LEN
#   status_json NODE, mirror_field SRC VOL TARGET FIELD, replica_field TGT SRC VOL FIELD,
#   volume_field NODE VOL FIELD, cycle_at_least NODE VOL CYCLE, mirror_no_error SRC VOL TGT
#   wait_until TIMEOUT_S DESCRIPTION COMMAND...  (TIMEOUT_S is scaled by TIMEOUT_SCALE, 4)
#   proxy_link SRC TGT LABEL ARGS..., unproxy LABEL   faults between two nodes
#   compare_replica SRC VOL TGT    byte-compare SRC's volume with its replica on TGT
#   hold_open NODE VOL             a qemu-io keeping an NBD connection open (fd 7, $WORK/holder.out)
#   mount_tmpfs DIR SIZE           (root) a size-limited tmpfs on DIR, unmounted on exit
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/pki.sh"
require_cmd qemu-io qemu-img nbdcopy jq python3 cmp
# Run a private copy of the binary: a rebuild during the test (or between a node's
# stop and restart) must not change or break the binary under test.
copy_binary() {
  local try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    if [[ -x $AMIRROR ]] && cp "$AMIRROR" "$WORK/amirror.bin" && chmod +x "$WORK/amirror.bin" &&
      "$WORK/amirror.bin" --help >/dev/null 2>&1; then
      AMIRROR=$WORK/amirror.bin
      return 0
    fi
    sleep 3 # being relinked right now
  done
  fail "cannot get a working copy of $AMIRROR"
}
copy_binary

MIRROR_PEER_TIMEOUT=${MIRROR_PEER_TIMEOUT:-3s}
# Peers talk TLS with certificates from $WORK/pki (made by setup_nodes); a test sets
# MIRROR_TLS=0 before setup_nodes for plaintext (insecure = true).
MIRROR_TLS=${MIRROR_TLS:-1}
declare -A NODE_PORT=()
declare -a NODE_NAMES=()

# free_ports N: N distinct TCP ports the kernel considers free right now.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

write_node_config() {
  local name=$1 other
  {
    echo "[node]"
    echo "name = \"$name\""
    echo "data_dir = \"$WORK/$name.d\""
    echo "control_socket = \"$WORK/$name.sock\""
    echo "nbd_socket = \"$WORK/$name-nbd.sock\""
    echo "listen = \"127.0.0.1:${NODE_PORT[$name]}\""
    echo "peer_timeout = \"$MIRROR_PEER_TIMEOUT\""
    echo
    echo "[tls]"
    if ((MIRROR_TLS)); then
      echo "certificate = \"$WORK/pki/$name.crt\""
      echo "key = \"$WORK/pki/$name.key\""
      echo "ca = \"$WORK/pki/ca.crt\""
    else
      echo "insecure = true"
    fi
    for other in "${NODE_NAMES[@]}"; do
      [[ $other == "$name" ]] && continue
      echo
      echo "[[peers]]"
      echo "name = \"$other\""
      echo "address = \"127.0.0.1:${NODE_PORT[$other]}\""
    done
  } >"$WORK/$name.toml"
}

# setup_nodes NAME...: configs for a full mesh of nodes on loopback.
setup_nodes() {
  NODE_NAMES=("$@")
  local -a ports
  read -r -a ports <<<"$(free_ports $#)"
  local i
  for ((i = 0; i < $#; i++)); do NODE_PORT[${NODE_NAMES[$i]}]=${ports[$i]}; done
  ((MIRROR_TLS)) && make_pki "$WORK/pki" "${NODE_NAMES[@]}"
  for name in "${NODE_NAMES[@]}"; do write_node_config "$name"; done
}

# proxy_link SRC TGT LABEL PROXY_ARGS...: SRC reaches TGT through tests/e2e/fault_proxy.py
# with these faults (call after setup_nodes, before starting SRC). The proxy's pid is
# PROXY_PID; it logs to $WORK/proxy-LABEL.log; the cleanup trap stops it.
proxy_link() {
  local src=$1 tgt=$2 label=$3 port
  shift 3
  # Not one of the nodes' ports (free_ports only knows what is free right now).
  port=$(free_ports $((${#NODE_NAMES[@]} + 2)) | tr ' ' '\n' |
    grep -vxF "$(for n in "${NODE_NAMES[@]}"; do echo "${NODE_PORT[$n]}"; done)" | head -1)
  sed -i "s/127.0.0.1:${NODE_PORT[$tgt]}\"/127.0.0.1:$port\"/" "$WORK/$src.toml"
  python3 "$(dirname "${BASH_SOURCE[0]}")/fault_proxy.py" --listen "$port" --to "127.0.0.1:${NODE_PORT[$tgt]}" \
    --log "$WORK/proxy-$label.log" "$@" &
  PROXY_PID=$!
  SERVE_PID[proxy-$label]=$PROXY_PID
  wait_until 60 "proxy $label up" grep -q ready "$WORK/proxy-$label.log"
}

# unproxy LABEL: stop the proxy started by proxy_link.
unproxy() {
  local pid=${SERVE_PID[proxy-$1]}
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true  # its status is the signal
  unset "SERVE_PID[proxy-$1]"
}

node_sock() { echo "$WORK/$1.sock"; }
node_alive() { [[ -n ${SERVE_PID[$1]:-} ]] && kill -0 "${SERVE_PID[$1]}" 2>/dev/null; }

# start_node NAME: start the daemon and wait until its control socket answers.
start_node() {
  local name=$1
  echo "=== start $(date +%T.%N) ===" >>"$WORK/$name.log"
  "$AMIRROR" node --config "$WORK/$name.toml" >>"$WORK/$name.log" 2>&1 &
  SERVE_PID[$name]=$!
  local waited=0
  until "$AMIRROR" status --json --node "$WORK/$name.sock" >/dev/null 2>&1 && [[ -S "$WORK/$name-nbd.sock" ]]; do
    if ! kill -0 "${SERVE_PID[$name]}" 2>/dev/null; then
      local rc=0
      wait "${SERVE_PID[$name]}" || rc=$?
      unset "SERVE_PID[$name]"
      fail "node $name exited at startup (status $rc): $(tail -n 20 "$WORK/$name.log")"
    fi
    sleep 0.1
    waited=$((waited + 1))
    ((waited < START_TIMEOUT_S * 10)) || fail "node $name did not answer on its control socket within $START_TIMEOUT_S s"
  done
}

# stop_node NAME: SIGTERM; the node must exit with status 0 within STOP_TIMEOUT_S.
stop_node() {
  local name=$1 pid=${SERVE_PID[$1]:-}
  [[ -n $pid ]] || fail "stop_node $name: not started"
  kill -TERM "$pid" 2>/dev/null || fail "node $name was not running at stop"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    waited=$((waited + 1))
    ((waited <= STOP_TIMEOUT_S * 10)) || fail "node $name did not exit within ${STOP_TIMEOUT_S} s of SIGTERM"
  done
  local rc=0
  wait "$pid" || rc=$?
  unset "SERVE_PID[$name]"
  ((rc == 0)) || fail "node $name exited with status $rc after SIGTERM: $(tail -n 10 "$WORK/$name.log")"
}

# kill_node NAME: kill -9, no cleanup by the node.
kill_node() {
  local name=$1 pid=${SERVE_PID[$1]:-}
  [[ -n $pid ]] || fail "kill_node $name: not started"
  kill -KILL "$pid" 2>/dev/null || fail "node $name was not running at kill -9"
  wait "$pid" 2>/dev/null || true
  unset "SERVE_PID[$name]"
  echo "=== killed -9 $(date +%T.%N) ===" >>"$WORK/$name.log"
}

# am NAME ARGS...: CLI against node NAME; any failure fails the test.
am() {
  local name=$1
  shift
  local rc=0
  "$AMIRROR" "$@" --node "$WORK/$name.sock" >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
  ((rc == 0)) || fail "'amirror $*' on $name exited $rc: $(cat "$WORK/last.err")"
  cat "$WORK/last.out"
}

# am_try NAME ARGS...: returns the CLI's exit status; output in $WORK/last.{out,err}.
am_try() {
  local name=$1
  shift
  local rc=0
  "$AMIRROR" "$@" --node "$WORK/$name.sock" >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
  return $rc
}

# expect_refusal EXIT_CODE PATTERN NAME ARGS...: the CLI exits EXIT_CODE and says PATTERN.
expect_refusal() {
  local want=$1 pattern=$2 rc=0
  shift 2
  am_try "$@" || rc=$?
  ((rc == want)) || fail "'amirror ${*:2}' on $1 exited $rc, not $want: $(cat "$WORK/last.err")"
  grep -q -- "$pattern" "$WORK/last.err" || fail "'amirror ${*:2}' did not say '$pattern': $(cat "$WORK/last.err")"
}

vol_uri() { echo "nbd+unix:///$2?socket=$WORK/$1-nbd.sock"; }
replica_uri() { echo "nbd+unix:///$2%2F$3?socket=$WORK/$1-nbd.sock"; }

# write_pattern NODE VOL OFFSET LENGTH PATTERN (qemu-io sizes: 4k, 1M, 12345, ...)
write_pattern() {
  qemu-io -f raw -c "write -q -P $5 $3 $4" "$(vol_uri "$1" "$2")" >/dev/null 2>"$WORK/qemu-io.err" ||
    fail "qemu-io write -P $5 $3 $4 to $1:$2 failed: $(cat "$WORK/qemu-io.err")"
}

# write_random NODE VOL OFFSET LENGTH (bytes): random data at any offset.
write_random() {
  head -c "$4" /dev/urandom >"$WORK/random.bin"
  qemu-io -f raw -c "write -q -s $WORK/random.bin $3 $4" "$(vol_uri "$1" "$2")" >/dev/null 2>"$WORK/qemu-io.err" ||
    fail "qemu-io write -s (random, $4 bytes at $3) to $1:$2 failed: $(cat "$WORK/qemu-io.err")"
  rm -f "$WORK/random.bin"
}

status_json() { am "$1" status --json; }

# mirror_field SRC VOL TARGET FIELD: one field of the mirror SRC:VOL -> TARGET ("" if absent).
mirror_field() {
  status_json "$1" | jq -r --arg v "$2" --arg t "$3" --arg f "$4" \
    '.volumes[] | select(.name == $v) | .mirrors[]? | select(.target == $t) | .[$f] // empty'
}

# mirror_no_error SRC VOL TARGET: the mirror exists and its last_error is null (a
# missing mirror or field fails the test instead of passing as "no error").
mirror_no_error() {
  local err
  status_json "$1" | jq -e --arg v "$2" --arg t "$3" \
    '[.volumes[] | select(.name == $v) | .mirrors[]? | select(.target == $t)] | length == 1 and (.[0] | has("last_error"))' \
    >/dev/null || fail "status --json of $1 has no mirror $2 -> $3 with a last_error field"
  err=$(mirror_field "$1" "$2" "$3" last_error)
  [[ -z $err ]] || fail "the mirror $2 -> $3 reports last_error '$err'"
}

# volume_field NODE VOL FIELD
volume_field() {
  status_json "$1" | jq -r --arg v "$2" --arg f "$3" '.volumes[] | select(.name == $v) | .[$f] // empty'
}

# cycle_at_least NODE VOL CYCLE: the volume has been frozen at least to CYCLE.
cycle_at_least() {
  local cycle
  cycle=$(volume_field "$1" "$2" cycle)
  [[ -n $cycle ]] || fail "status --json of $1 has no cycle for volume $2"
  ((cycle >= $3))
}

# replica_field TGT SRC VOL FIELD: one field of the replica of SRC:VOL held on TGT.
replica_field() {
  status_json "$1" | jq -r --arg s "$2" --arg v "$3" --arg f "$4" \
    '.replicas[]? | select(.source == $s and .volume == $v) | .[$f] // empty'
}

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: poll COMMAND every 0.2 s.
wait_until() {
  local timeout=$1 what=$2
  shift 2
  # A bound on progress, not a schedule: scaled so a machine several times slower passes.
  timeout=$((timeout * ${TIMEOUT_SCALE:-4}))
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout} s waiting for: $what"
    sleep 0.2
  done
}

# mirror_sync SRC (VOL | --group G) [--timeout T]: fails the test if the sync fails.
mirror_sync() {
  local src=$1
  shift
  am "$src" mirror sync "$@" --timeout "${SYNC_TIMEOUT:-120s}" >/dev/null
}

# compare_replica SRC VOL TGT: the replica of SRC:VOL on TGT must equal the source
# volume byte for byte, both as NBD exports (qemu-img compare) and as files (the source
# copied out with nbdcopy vs the replica's image_path).
compare_replica() {
  local src=$1 vol=$2 tgt=$3
  local src_uri rep_uri image out=$WORK/compare-$src-$vol.raw
  src_uri=$(vol_uri "$src" "$vol")
  rep_uri=$(replica_uri "$tgt" "$src" "$vol")
  image=$(replica_field "$tgt" "$src" "$vol" image_path)
  [[ -n $image ]] || fail "$tgt reports no replica of $src/$vol in status --json: $(status_json "$tgt")"
  [[ -f $image ]] || fail "replica image_path $image of $src/$vol on $tgt is not a file"
  qemu-img compare -q -f raw -F raw "$src_uri" "$rep_uri" 2>"$WORK/compare.err" ||
    fail "replica $src/$vol on $tgt (NBD) differs from the source volume: $(cat "$WORK/compare.err"; qemu-img compare -f raw -F raw "$src_uri" "$rep_uri" 2>&1 | head -3)"
  rm -f "$out"
  nbdcopy "$src_uri" "$out" || fail "nbdcopy of source volume $src:$vol failed"
  local src_size img_size
  src_size=$(stat -c %s "$out")
  img_size=$(stat -c %s "$image")
  ((src_size == img_size)) || fail "replica image $image is $img_size bytes, source $src:$vol is $src_size"
  cmp "$out" "$image" >"$WORK/cmp.out" 2>&1 ||
    fail "replica image file $image of $src/$vol on $tgt differs from the source volume: $(head -c 300 "$WORK/cmp.out")"
  rm -f "$out"
}

# write_mix NODE VOL SIZE_BYTES SEED: a spread of writes — aligned and unaligned
# offsets, a write straddling a chunk boundary, the volume's last bytes, random data.
write_mix() {
  local node=$1 vol=$2 size=$3 seed=$4
  local p1 p2 p3
  p1=$(((seed * 7 + 1) % 255 + 1))
  p2=$(((seed * 13 + 5) % 255 + 1))
  p3=$(((seed * 29 + 11) % 255 + 1))
  write_pattern "$node" "$vol" 0 64k "$p1"
  write_pattern "$node" "$vol" $((65536 - 100)) 200 "$p2"
  write_pattern "$node" "$vol" $((size / 3 + 12345)) 777 "$p3"
  write_pattern "$node" "$vol" $((size - 1000)) 1000 "$p2"
  write_random "$node" "$vol" $((size / 2 + 511 + seed * 4096)) $((1024 * 1024 + 3))
}

# hold_open NODE VOL: a qemu-io that keeps an NBD connection to VOL open, fed from fd 7
# (echo "read 0 4k" >&7); it prints to $WORK/holder.out. Needs stdbuf.
hold_open() {
  rm -f "$WORK/holder.fifo" "$WORK/holder.out"
  mkfifo "$WORK/holder.fifo"
  stdbuf -oL qemu-io -f raw "$(vol_uri "$1" "$2")" <"$WORK/holder.fifo" >"$WORK/holder.out" 2>&1 &
  HOLDER_PID=$!
  SERVE_PID[holder]=$HOLDER_PID
  exec 7>"$WORK/holder.fifo"
  echo "read 0 4k" >&7
  wait_until 30 "qemu-io holding $1:$2 open read from it" grep -q "read 4096/4096" "$WORK/holder.out"
}

# mount_tmpfs DIR SIZE: a size-limited tmpfs on DIR (root only). The exit trap kills
# the nodes (their files keep a mount busy) and unmounts every one before cleanup.
TMPFS_MOUNTS=()
unmount_tmpfs_then_cleanup() {
  local rc=$?
  for name in "${!SERVE_PID[@]}"; do kill -KILL "${SERVE_PID[$name]}" 2>/dev/null || true; done
  for name in "${!SERVE_PID[@]}"; do wait "${SERVE_PID[$name]}" 2>/dev/null || true; done
  for m in "${TMPFS_MOUNTS[@]}"; do umount -l "$m" 2>/dev/null || true; done
  (exit $rc)
  cleanup
}
mount_tmpfs() {
  mkdir -p "$1"
  mount -t tmpfs -o size="$2" tmpfs "$1" || fail "cannot mount a $2 tmpfs on $1"
  TMPFS_MOUNTS+=("$1")
  trap unmount_tmpfs_then_cleanup EXIT
}
