#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Crash matrix: kill -9 the source or the target at random moments while one writer
# writes through NBD and cycles run every second, and check after every crash:
#  (1) the source volume holds every write acknowledged as durable (FUA, or write then
#      flush) — and nothing but (part of) the one write that was in flight;
#  (2) every read of the replica — over its read-only NBD export, from base.img while
#      the target is down, and from base.img once it has restarted — equals the
#      source image after writes 1..k for some k (a cut of the write order, never a
#      mix), and k never goes back;
#  (3) after the final sync, replica == source;
#  (4) no full resync: the bytes sent from one convergence to the next stay below twice
#      the chunks written meanwhile (far below the volume's size), and no node logs
#      "sending a full copy".
#
# The writer (tests/tools/seq_writer) stamps every 512-byte sector with its write's
# sequence number and logs each write before sending it and once it is durable; the
# judge (crash_matrix_check.py) replays that log. A replica read counts only if it
# cannot have straddled two freeze points: the replica's applied cycle is the same
# before the read, after it, and once more after that, and neither of the first two
# status samples shows a committed delta ("committed"/"applying") — a commit during the
# read would show as one or the other, or as a new applied cycle in the last sample.
# base.img is read while the target is down only if it holds no merge under
# way (an interrupted merge, which the restart finishes).
#
# AMIRROR_SEED replays the random choices (kill victims, delays, writes; the timing of
# the machine still varies). Default: 32 kills (about 3 minutes); AMIRROR_LONG=1: 300
# (CRASH_KILLS=N overrides both). CRASH_WRITE_RATE: writes per second (25).
source "$(dirname "$0")/mirror-lib.sh"

CHECK=(python3 "$(dirname "$0")/crash_matrix_check.py")
SEQ_WRITER=${TOOLS_DIR:?set TOOLS_DIR to the tests/tools binaries (ctest does this)}/seq_writer
[[ -x $SEQ_WRITER ]] || fail "$SEQ_WRITER is missing (built with the tests)"

SEED=${AMIRROR_SEED:-$(((RANDOM << 15 | RANDOM) % 1000000000))}
if [[ ${AMIRROR_LONG:-0} == 1 ]]; then KILLS=${CRASH_KILLS:-300}; else KILLS=${CRASH_KILLS:-32}; fi
log "seed $SEED (replay with AMIRROR_SEED=$SEED), $KILLS kills"
RANDOM=$SEED

MIB=$((1024 * 1024))
SIZE=$((64 * MIB))
CHUNK=$((16 * 1024))
RATE=${CRASH_WRITE_RATE:-25} # writes per second
VOL=vol
J=$WORK/judge
mkdir -p "$J"
: >"$J/writes.log"

# rnd LO HI: R = a uniform integer in [LO, HI] from the seeded $RANDOM (no subshell:
# a subshell's draws would not advance this shell's generator).
rnd() { R=$(($1 + (RANDOM << 15 | RANDOM) % ($2 - $1 + 1))); }
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

setup_nodes site-a site-b
start_node site-a
start_node site-b
am site-a volume create $VOL --size 64M --chunk-size 16K >/dev/null

# --- writer ---------------------------------------------------------------------------
WRITER_PID=""
WRITERS=0
start_writer() {
  local next
  next=$(awk '$1 == "I" { s = $2 } END { print s + 1 }' "$J/writes.log")
  WRITERS=$((WRITERS + 1))
  "$SEQ_WRITER" write "$WORK/site-a-nbd.sock" $VOL "$next" $((SEED * 1000 + WRITERS)) "$RATE" "$J/writes.log" \
    2>>"$WORK/writer.err" &
  WRITER_PID=$!
}
# wait_writer: the writer exits by itself once the source is gone (or on SIGTERM).
wait_writer() {
  local waited=0 rc=0
  while kill -0 "$WRITER_PID" 2>/dev/null; do
    sleep 0.05
    waited=$((waited + 1))
    ((waited < 12000)) || fail "the writer did not exit within 600 s of losing its server"
  done
  wait "$WRITER_PID" || rc=$?
  WRITER_PID=""
  ((rc == 0)) || fail "the writer failed (status $rc): $(tail -n 3 "$J/writes.log"; tail -n 3 "$WORK/writer.err")"
}
last_issued() { awk '$1 == "I" { s = $2 } END { print s + 0 }' "$J/writes.log"; }

# --- status samples -----------------------------------------------------------------
# rep_sample: "APPLIED_CYCLE STATE" of the replica on site-b (empty if site-b does not answer)
rep_sample() {
  "$AMIRROR" status --json --node "$WORK/site-b.sock" 2>/dev/null |
    jq -r --arg v $VOL '.replicas[]? | select(.source == "site-a" and .volume == $v) | "\(.applied_cycle) \(.state)"' ||
    true
}

# --- replica reads ------------------------------------------------------------------
READS=0          # replica reads taken (each judged, at once or after the next source restart)
READS_NBD=0
READS_FILE_UP=0
READS_FILE_DOWN=0
UNSOUND=0        # reads thrown away because a commit may have happened during them
SKIPPED_DOWN=0   # target down with a merge under way: base.img mid-apply
LAST_K=0         # the newest write the previous read showed
LAST_LABEL=none
DISTINCT_K=0
PENDING=0
REPLICA_DIR=""
mkdir -p "$J/pending"

# judge [--all]: check (2) on the reads taken so far (see crash_matrix_check.py)
judge() {
  local out
  out=$("${CHECK[@]}" judge "$J" "$@") || fail "prefix consistency violated (seed $SEED; see above)"
  PENDING=${out#* }
}

# take_scan LABEL FILE "K INVALID" (seq_writer scan's output): no garbage, and k (the
# newest write shown) never goes back; the full judgement follows (judge).
take_scan() {
  local label=$1 file=$2 k=${3% *} invalid=${3#* }
  ((invalid == 0)) ||
    fail "replica read $label: $invalid sectors hold no valid stamp (torn, misplaced or foreign data; seed $SEED)"
  ((k >= LAST_K)) ||
    fail "replica read $label shows writes up to $k, the earlier read $LAST_LABEL up to $LAST_K: the replica went back in time (seed $SEED)"
  ((k == LAST_K)) || DISTINCT_K=$((DISTINCT_K + 1))
  LAST_K=$k
  LAST_LABEL=$label
  mv "$file" "$J/pending/$label.scan"
  READS=$((READS + 1))
  PENDING=$((PENDING + 1))
  if ((PENDING >= 20)); then judge; fi
}

# read_replica_live nbd|file LABEL [TRIES]: read the whole replica while site-b runs;
# kept only if no commit can have happened during the read (see the header). Tries
# TRIES times (6).
read_replica_live() {
  local how=$1 label=$2 tries=${3:-6} attempt s0 s1 s2 source out
  if [[ $how == nbd ]]; then
    source="nbd:$WORK/site-b-nbd.sock:site-a/$VOL"
  else
    source=$REPLICA_DIR/base.img
  fi
  for ((attempt = 0; attempt < tries; attempt++)); do
    s0=$(rep_sample)
    if [[ ! $s0 =~ ^[0-9]+\ (idle|receiving)$ ]]; then
      sleep 0.1
      continue
    fi
    out=$("$SEQ_WRITER" scan "$source" "$WORK/scan.tmp" 2>"$WORK/scan.err") ||
      fail "reading the replica ($how) failed: $(cat "$WORK/scan.err")"
    s1=$(rep_sample)
    s2=$(rep_sample)
    if [[ $s1 =~ ^[0-9]+\ (idle|receiving)$ && ${s0%% *} == "${s1%% *}" && ${s1%% *} == "${s2%% *}" ]]; then
      take_scan "$label" "$WORK/scan.tmp" "$out"
      if [[ $how == nbd ]]; then READS_NBD=$((READS_NBD + 1)); else READS_FILE_UP=$((READS_FILE_UP + 1)); fi
      return 0
    fi
    UNSOUND=$((UNSOUND + 1))
    rm -f "$WORK/scan.tmp"
  done
  return 0
}

# read_replica_at_rest LABEL: site-b is down; base.img is the image of its applied
# cycle unless a merge under way says an apply was interrupted.
read_replica_at_rest() {
  local verdict out
  verdict=$("${CHECK[@]}" stage "$REPLICA_DIR") || fail "cannot inspect $REPLICA_DIR/volume.meta"
  if [[ $verdict != consistent ]]; then
    SKIPPED_DOWN=$((SKIPPED_DOWN + 1))
    return 0
  fi
  out=$("$SEQ_WRITER" scan "$REPLICA_DIR/base.img" "$WORK/scan.tmp" 2>"$WORK/scan.err") ||
    fail "reading base.img of the stopped target failed: $(cat "$WORK/scan.err")"
  take_scan "$1" "$WORK/scan.tmp" "$out"
  READS_FILE_DOWN=$((READS_FILE_DOWN + 1))
}

# check_source: check (1) on the restarted source, resolving the write that was in
# flight; then judges the reads that waited for that.
check_source() {
  "$SEQ_WRITER" scan "nbd:$WORK/site-a-nbd.sock:$VOL" "$WORK/source.scan" >/dev/null 2>"$WORK/scan.err" ||
    fail "reading the source volume after its restart failed: $(cat "$WORK/scan.err")"
  local out
  out=$("${CHECK[@]}" source "$J" "$WORK/source.scan") ||
    fail "after the source restart: (1) or (2) violated (seed $SEED; the judge's message above says which)"
  log "  source: $out"
  PENDING=$(find "$J/pending" -name '*.scan' | wc -l)
  rm -f "$WORK/source.scan"
}

# chunk_span LO HI: bytes of the chunks that the writes LO < seq <= HI touched.
chunk_span() {
  awk -v lo="$1" -v hi="$2" -v c=$CHUNK '$1 == "I" && $2 > lo && $2 <= hi {
      s = int($3 * 4096 / c); e = int((($3 + $4) * 4096 - 1) / c); t += (e - s + 1) * c }
    END { printf "%d\n", t }' "$J/writes.log"
}

# --- initial state: every block written once, mirrored --------------------------------
"$SEQ_WRITER" fill "$WORK/site-a-nbd.sock" $VOL "$J/writes.log" 2>"$WORK/writer.err" ||
  fail "filling the volume failed: $(cat "$WORK/writer.err")"
am site-a mirror start $VOL --to site-b --interval 1s >/dev/null
mirror_sync site-a $VOL
INITIAL_SENT=$(mirror_field site-a $VOL site-b bytes_sent)
((INITIAL_SENT >= SIZE && INITIAL_SENT < SIZE + SIZE / 8)) ||
  fail "the initial sync of the filled $SIZE-byte volume sent $INITIAL_SENT bytes"
REPLICA_DIR=$(dirname "$(replica_field site-b site-a $VOL image_path)")
[[ -f $REPLICA_DIR/base.img ]] || fail "no base.img in $REPLICA_DIR"
read_replica_live nbd initial 40
((READS == 1 && LAST_K == SIZE / 4096)) || fail "could not read the idle replica after the initial sync (shows writes up to $LAST_K)"
log "initial sync: $INITIAL_SENT bytes; the replica shows writes 1..$LAST_K"
start_writer

# --- the matrix ---------------------------------------------------------------------
# src_sample: "MIRROR_STATE" of the mirror to site-b ("?" if site-a does not answer)
src_sample() {
  "$AMIRROR" status --json --node "$WORK/site-a.sock" 2>/dev/null |
    jq -r --arg v $VOL '.volumes[] | select(.name == $v) | .mirrors[] | select(.target == "site-b") | .state' ||
    echo "?"
}
declare -A PHASES=()
KILLS_SOURCE=0
KILLS_TARGET=0
EPISODE_LIMIT_MAX=0
prev_sent=$INITIAL_SENT
applied_upto=$(last_issued) # every write up to this one is applied at the previous convergence
converged_episodes=0

for ((kill_no = 1; kill_no <= KILLS; kill_no++)); do
  rnd 0 99
  if ((R < 50)); then victim=site-a; else victim=site-b; fi
  rnd 0 99
  if ((R < 35)); then
    # Hunt for a copy (on the source, "copying" lasts until the target applied the
    # delta): kill as soon as one is seen, or after ~3 s of looking.
    how=hunted
    deadline=$((SECONDS + 3))
    while :; do
      where="mirror=$(src_sample)"
      [[ $where == mirror=copying || $where == mirror=initial-sync ]] && break
      ((SECONDS < deadline)) || break
    done
  else
    if ((R < 55)); then rnd 0 300; else rnd 300 2500; fi
    how="after $R ms"
    sleep_ms $R
    where=$(rep_sample)
    where="mirror=$(src_sample) replica=${where#* }"
  fi
  kill_node $victim
  log "kill #$kill_no: $victim, $how ($where)"
  PHASES["$victim $where"]=$((${PHASES["$victim $where"]:-0} + 1))
  if [[ $victim == site-a ]]; then
    KILLS_SOURCE=$((KILLS_SOURCE + 1))
    wait_writer
    # Nothing new reaches the target now: its replica must show one cut of the writes.
    rnd 0 99
    if ((R < 50)); then read_replica_live nbd "k$kill_no-source-down"; fi
    rnd 0 700
    sleep_ms $R
    start_node site-a
    check_source
    start_writer
  else
    KILLS_TARGET=$((KILLS_TARGET + 1))
    read_replica_at_rest "k$kill_no-target-down"
    rnd 0 800
    sleep_ms $R # writes and cycles go on; the source retries
    start_node site-b
    read_replica_live file "k$kill_no-target-restarted"
  fi
  # Sometimes the next kill comes before the mirror has recovered.
  rnd 0 99
  if ((kill_no < KILLS && R < 15)); then
    log "  next kill before convergence"
    continue
  fi
  # Convergence: a cycle frozen after this restart gets applied, without a sync request.
  # Writes before the last one issued now (queue depth 1) are acknowledged, so in that
  # cycle.
  issued_before=$(($(last_issued) - 1))
  cycle=$(volume_field site-a $VOL cycle)
  wait_until 120 "site-b to apply a cycle after $cycle (kill #$kill_no, seed $SEED)" \
    bash -c "c=\$(\"$AMIRROR\" status --json --node $WORK/site-a.sock 2>/dev/null | jq --arg v $VOL '.volumes[] | select(.name==\$v) | .mirrors[] | select(.target==\"site-b\") | .applied_cycle'); [[ -n \$c ]] && ((c > $cycle))"
  read_replica_live nbd "k$kill_no-converged"
  # (4) per episode: what was sent since the previous convergence is bounded by the
  # chunks written since the writes that convergence had applied, twice over for a
  # delta resent after a crash, plus framing. A full copy (64 MiB) does not fit.
  sent=$(mirror_field site-a $VOL site-b bytes_sent)
  span=$(chunk_span "$applied_upto" "$(last_issued)")
  limit=$((2 * span + 4 * MIB))
  ((limit > EPISODE_LIMIT_MAX)) && EPISODE_LIMIT_MAX=$limit
  episode=$((sent - prev_sent))
  log "  converged (cycle > $cycle); sent $episode bytes since the previous convergence (limit $limit)"
  ((episode <= limit)) ||
    fail "kill #$kill_no ($victim): $episode bytes sent since the previous convergence for $span bytes of chunks written around it: a full resync or a resend loop (seed $SEED)"
  prev_sent=$sent
  applied_upto=$issued_before
  converged_episodes=$((converged_episodes + 1))
done

# --- the end: stop writing, converge, compare --------------------------------------
kill -TERM "$WRITER_PID"
wait_writer
[[ $(tail -n 1 "$J/writes.log") == S ]] || fail "the writer did not stop cleanly: $(tail -n 2 "$J/writes.log")"
mirror_sync site-a $VOL
compare_replica site-a $VOL site-b
final_issued=$(last_issued)
read_replica_live nbd final 40
((LAST_K == final_issued)) || fail "after the final sync the replica shows writes up to $LAST_K, the writer issued $final_issued"
judge --all
((PENDING == 0)) && [[ -z $(find "$J/pending" -name '*.scan') ]] || fail "replica reads left unjudged"

# (4) overall, and no full copy was ever started
total_sent=$(mirror_field site-a $VOL site-b bytes_sent)
fill_issued=$((SIZE / 4096))
all_span=$(chunk_span $fill_issued "$final_issued")
incremental=$((total_sent - INITIAL_SENT))
((incremental <= 2 * all_span + KILLS * MIB)) ||
  fail "$incremental bytes sent after the initial sync for $all_span bytes of chunks written ($KILLS kills): resends beyond the crashes' share"
if grep -h ' full_copy=true ' "$WORK/site-a.log" "$WORK/site-b.log"; then
  fail "a full resync happened (seed $SEED)"
fi

# Not vacuous: kills on both sides, reads judged, the replica moved on between them.
((KILLS_SOURCE > 0 && KILLS_TARGET > 0)) || fail "only one side was killed ($KILLS_SOURCE source, $KILLS_TARGET target)"
((converged_episodes >= KILLS / 2)) || fail "only $converged_episodes of $KILLS kills were followed by convergence"
((READS >= KILLS + 2)) || fail "only $READS replica reads could be judged for $KILLS kills ($UNSOUND thrown away)"
((DISTINCT_K >= READS / 3)) || fail "the replica reads saw only $DISTINCT_K distinct points in $READS reads"
((EPISODE_LIMIT_MAX < SIZE)) ||
  log "WARNING: the per-kill byte limit reached $EPISODE_LIMIT_MAX, not below a full copy ($SIZE): lower CRASH_WRITE_RATE"

stop_node site-a
stop_node site-b
phases=""
for p in "${!PHASES[@]}"; do phases+=" [$p]=${PHASES[$p]}"; done
log "kill moments:$phases"
log "crash-matrix: seed $SEED, $KILLS kills ($KILLS_SOURCE source, $KILLS_TARGET target), $READS replica reads prefix-consistent ($READS_NBD over NBD, $READS_FILE_UP from base.img after a target restart, $READS_FILE_DOWN from base.img of a stopped target; $DISTINCT_K distinct points; $UNSOUND reads discarded as possibly straddling a commit, $SKIPPED_DOWN stopped targets mid-apply), $final_issued writes, bytes_sent $incremental after the initial sync for $all_span bytes of chunks written (largest per-kill limit $EPISODE_LIMIT_MAX)"
log "PASS"
