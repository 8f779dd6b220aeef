#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The judge of tests/e2e/test-mirror-crash-matrix.sh. It knows the history of writes
# from the writers' logs (tests/tools/seq_writer.cc: "I seq first_block blocks" before a
# write is sent, "A seq" once it is durable) and judges scans (seq_writer scan: one
# int64 per 512-byte sector: the sequence number of the write it holds, 0 = zero,
# -1 = not a valid stamp).
#
# Files in DIR: writes.log (all writers, appended), resolved (in-flight writes resolved
# after a source crash: "seq bits", one 0/1 per sector of the write: did it land),
# pending/LABEL.scan (replica scans not judged yet; the test checks their newest write
# and garbage itself when it takes them, from `seq_writer scan`'s output).
#
#   source DIR SCAN        check (1): the source volume, read right after the source
#                          restarted, holds every acknowledged write, and nothing else
#                          but (all or part of) the one write that was in flight; record
#                          which sectors of that write landed. Then `judge DIR`.
#   judge DIR [--all]      check (2) for every pending scan: it must equal the source
#                          image after writes 1..k exactly, k being the newest write it
#                          shows (prefix consistency). A scan whose k reaches the
#                          unresolved in-flight write waits for the next `source` (with
#                          --all that is an error). Prints "<judged> <waiting>".
#   stage REPLICA_DIR      of a stopped target: "consistent" if base.img is the image of
#                          a kept point (no merge under way in volume.meta, see
#                          docs/formats/store.md), else "mid-apply".
import os
import struct
import sys
from array import array

SECTORS_PER_BLOCK = 8


def fail(message):
    print(f"crash_matrix_check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


class History:
    def __init__(self, d):
        self.dir = d
        self.writes = {}  # seq -> (first_sector, sectors)
        self.order = []
        self.acked = set()
        with open(os.path.join(d, "writes.log")) as log:
            for line in log:
                if not line.endswith("\n"):
                    break  # a live writer's line being appended right now
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "I":
                    seq, first, count = int(parts[1]), int(parts[2]), int(parts[3])
                    if self.order and seq <= self.order[-1]:
                        fail(f"writes.log: sequence {seq} after {self.order[-1]}")
                    self.writes[seq] = (first * SECTORS_PER_BLOCK, count * SECTORS_PER_BLOCK)
                    self.order.append(seq)
                elif parts[0] == "A":
                    self.acked.add(int(parts[1]))
                elif parts[0] == "E":
                    fail(f"a writer failed: {line.strip()}")
        self.resolved = {}  # seq -> "0101..." per sector
        path = os.path.join(d, "resolved")
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    seq, bits = line.split()
                    self.resolved[int(seq)] = bits
        unresolved = [s for s in self.order if s not in self.acked and s not in self.resolved]
        if len(unresolved) > 1:
            fail(f"more than one unresolved in-flight write: {unresolved[:5]}")
        self.pending = unresolved[0] if unresolved else None
        if self.pending is not None and self.pending != self.order[-1]:
            fail(f"the unresolved write {self.pending} is not the newest ({self.order[-1]})")

    def apply(self, state, seq):
        """Applies write seq to state as far as it landed (pending: not at all)."""
        first, count = self.writes[seq]
        if seq in self.acked:
            state[first:first + count] = array("q", [seq]) * count
        elif seq in self.resolved:
            bits = self.resolved[seq]
            for i in range(count):
                if bits[i] == "1":
                    state[first + i] = seq


def load_scan(path):
    scan = array("q")
    with open(path, "rb") as f:
        scan.frombytes(f.read())
    if sys.byteorder != "little":
        scan.byteswap()
    return scan


def describe_mismatch(history, state, scan, k, what):
    bad = [i for i in range(len(scan)) if scan[i] != state[i]]
    blocks = sorted({i // SECTORS_PER_BLOCK for i in bad})
    lines = [f"{what}: {len(bad)} sectors in {len(blocks)} blocks differ from the source image after writes 1..{k}"]
    for i in bad[:8]:
        lines.append(f"  sector {i} (block {i // SECTORS_PER_BLOCK}): holds write {scan[i]}, expected write {state[i]}")
    # Which cut would explain the stale sectors: the image mixes two points if some
    # sectors are older than k's image while others already show newer writes.
    older = [scan[i] for i in bad if 0 <= scan[i] < state[i]]
    if older:
        lines.append(f"  stale sectors hold writes {min(older)}..{max(older)} while the image also shows write {k}: "
                     "not a cut of the write order (a mix of points)")
    return "\n".join(lines)


def cmd_source(d, scan_path):
    history = History(d)
    scan = load_scan(scan_path)
    state = array("q", [0]) * len(scan)
    for seq in history.order:
        if seq == history.pending:
            continue
        first, count = history.writes[seq]
        if first + count > len(scan):
            fail(f"write {seq} lies beyond the scanned volume ({len(scan)} sectors)")
        history.apply(state, seq)
    landed_bits = ""
    if history.pending is not None:
        first, count = history.writes[history.pending]
        for i in range(first, first + count):
            if scan[i] == history.pending:
                landed_bits += "1"
                state[i] = history.pending
            elif scan[i] == state[i]:
                landed_bits += "0"
            else:
                fail(f"source volume, sector {i} of the in-flight write {history.pending}: holds write {scan[i]}, "
                     f"expected {history.pending} (landed) or {state[i]} (not landed)")
    if scan != state:
        fail(describe_mismatch(history, state, scan, history.order[-1] if history.order else 0,
                               "source volume after its restart (acknowledged writes lost or foreign data)"))
    if history.pending is not None:
        with open(os.path.join(d, "resolved"), "a") as f:
            f.write(f"{history.pending} {landed_bits}\n")
        summary = (f"{len(history.acked)} acknowledged writes all present; in-flight write {history.pending} "
                   f"landed on {landed_bits.count('1')}/{len(landed_bits)} sectors")
    else:
        summary = f"{len(history.acked)} acknowledged writes all present; no write was in flight"
    judged, waiting = cmd_judge(d, False)  # a new History: it sees the resolution
    print(f"{summary}; replica reads judged now: {judged}")


def cmd_judge(d, require_all):
    history = History(d)
    pending_dir = os.path.join(d, "pending")
    names = sorted(os.listdir(pending_dir)) if os.path.isdir(pending_dir) else []
    scans = []
    for name in names:
        scan = load_scan(os.path.join(pending_dir, name))
        scans.append((max(scan) if len(scan) else 0, name, scan))
    scans.sort(key=lambda item: item[0])
    judged = deferred = 0
    state = None
    position = 0
    for k, name, scan in scans:
        label = name[:-len(".scan")]
        if history.pending is not None and k >= history.pending:
            if require_all:
                fail(f"replica scan {label} shows write {k}, which is still unresolved at the end")
            deferred += 1
            continue
        if k > 0 and k not in history.writes:
            fail(f"replica scan {label} holds write {k}, which no writer ever issued")
        if state is None:
            state = array("q", [0]) * len(scan)
        while position < len(history.order) and history.order[position] <= k:
            history.apply(state, history.order[position])
            position += 1
        if scan != state:
            fail(describe_mismatch(history, state, scan, k, f"replica scan {label}"))
        judged += 1
        os.remove(os.path.join(pending_dir, name))
    return judged, deferred


# volume.meta format 2 (docs/formats/store.md): merging_layer sits after magic,
# version, flags, size, chunk size, uuid, origin uuid, origin point, base cycle and
# base time.
MERGING_LAYER_OFFSET = 8 + 4 + 4 + 8 + 8 + 16 + 16 + 8 + 8 + 8


def cmd_stage(replica_dir):
    path = os.path.join(replica_dir, "volume.meta")
    if not os.path.exists(path):
        print("consistent")  # never received a point: base.img is all zeros
        return
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"AMVOLUME" or struct.unpack_from("<I", data, 8)[0] != 2:
        fail(f"{path} is not a format-2 volume.meta")
    merging, = struct.unpack_from("<Q", data, MERGING_LAYER_OFFSET)
    # While a merge is under way base.img is being rewritten; otherwise it is exactly
    # the oldest kept point.
    print("mid-apply" if merging != 0 else "consistent")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "source":
        cmd_source(args[1], args[2])
    elif len(args) in (2, 3) and args[0] == "judge":
        print("%d %d" % cmd_judge(args[1], len(args) == 3 and args[2] == "--all"))
    elif len(args) == 2 and args[0] == "stage":
        cmd_stage(args[1])
    else:
        print(__doc__ if __doc__ else "usage: see the header", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
