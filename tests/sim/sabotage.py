#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Does the simulation catch real bugs? Re-injects deliberate sabotages, one at a time,
into a scratch copy of the tree, builds the tests there and runs the deterministic
simulation (tests/sim/mirror_sim_test.cc). Each sabotage must make it fail.

    python3 tests/sim/sabotage.py [--seeds 200] [--only NAME]

Not part of the test suite (it rebuilds once per sabotage, a few minutes in all).
Prints one line per sabotage, CAUGHT (with the first failing seed and reason) or
MISSED, and exits 1 if any was missed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# name: (file, exact text, replacement, what the bug is)
SABOTAGES = {
    "forget-pending-chunk": (
        "src/node/mirror_bookkeeping.cc",
        "for (const DeltaChunk& chunk : chunks) target.pending_chunks.set(chunk.chunk_index);",
        "for (const DeltaChunk& chunk : chunks) { if (&chunk != &chunks.front()) target.pending_chunks.set(chunk.chunk_index); }",
        "a merged layer's first chunk is not kept pending for a target that lacks it"),
    "pending-only-for-listed-targets": (
        "src/node/mirror_bookkeeping.cc",
        "    if (!lacks_layer(target, layer)) continue;",
        "    if (!lacks_layer(target, layer) || std::find(state.targets.begin(), state.targets.end(), name) == state.targets.end()) continue;",
        "issue 9 bug 1: a target dropped from the list gets no pending chunks"),
    "no-pending-while-inflight": (
        "src/node/mirror_bookkeeping.cc",
        "return target.applied_cycle != 0 || target.inflight_cycle != 0;",
        "return target.applied_cycle != 0;",
        "a first delta applied but unacknowledged misses layers merged meanwhile"),
    "plan-ignores-pending": (
        "src/repl/sender_session.cc",
        "      if (chunk_index < chunk_count) merged[chunk_index] = ChunkState::kData;",
        "      (void)chunk_index;",
        "the delta leaves out the pending chunks of merged layers"),
    "accept-delta-on-wrong-base": (
        "src/repl/replica.cc",
        "if (!begin.full && begin.base_cycle != applied_cycle_) {",
        "if (false) {",
        "a delta whose base is not the replica's cycle is staged (and applied)"),
    "skip-stage-fsync": (
        "src/repl/replica.cc",
        "  AMIRROR_RETURN_IF_ERROR(stage_->sync());\n  std::string commit;",
        "  std::string commit;",
        "the staged records are not synced before the commit record is written"),
    "skip-image-fsync": (
        "src/repl/replica.cc",
        "  Status status = image_->sync();\n  if (!status.ok()) return finish(status);",
        "  Status status;",
        "the replica image is not synced before its metadata names the new cycle"),
    "ack-before-durable": (
        "src/repl/receiver_session.cc",
        "  Status keepalive_status;\n",
        "  AMIRROR_RETURN_IF_ERROR(sink_.send(FrameType::kApplied, encode(Applied{replica_->readable_cycle()})));\n"
        "  Status keepalive_status;\n",
        "APPLIED is sent before the apply is durable"),
    "trust-stale-applied-cycle": (
        "src/repl/sender_session.cc",
        "      AMIRROR_RETURN_IF_ERROR(host_.reset_to_full(name_, remote.applied_cycle));",
        "      (void)0;",
        "a target whose replica is not where the source believes is not resynced"),
    "resume-skips-a-chunk": (
        "src/repl/sender_session.cc",
        "chunks_[first_chunk_].chunk_index <= remote.staged_last_chunk_index",
        "chunks_[first_chunk_].chunk_index <= remote.staged_last_chunk_index + 1",
        "a resumed delta skips the chunk after the last one staged"),
    "adopt-any-remote-cycle": (
        "src/repl/sender_session.cc",
        "if (local.inflight_cycle != 0 && remote.applied_cycle == local.inflight_cycle) {",
        "if (remote.applied_cycle != 0) {",
        "the source adopts whatever cycle the target reports"),
}

# Second edits some sabotages need: (file, exact text, replacement).
EXTRA = {
    "accept-delta-on-wrong-base": (
        "src/repl/replica.cc",
        "if (!header.full && applied_cycle_ != header.base_cycle) {",
        "if (false) {"),
    "ack-before-durable": (
        "src/repl/receiver_session.cc",
        "  return sink_.send(FrameType::kApplied, encode(Applied{replica_->state().applied_cycle}));",
        "  return Status();"),
}


def run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--only")
    args = parser.parse_args()
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    scratch = tempfile.mkdtemp(prefix="amirror-sabotage-")
    tree = os.path.join(scratch, "tree")
    build = os.path.join(scratch, "build")
    shutil.copytree(top, tree, ignore=shutil.ignore_patterns(".git", "build*"))
    configure = run(["cmake", "-S", tree, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                     "-DAMIRROR_BENCH=OFF"], top)
    if configure.returncode != 0:
        print(configure.stdout)
        return 2
    missed = 0
    for name, (path, old, new, what) in SABOTAGES.items():
        if args.only and name != args.only:
            continue
        file = os.path.join(tree, path)
        original = open(file).read()
        if original.count(old) != 1:
            print(f"{name:34} STALE: the text to sabotage is not in {path} exactly once; update this script")
            missed += 1
            continue
        changed = original.replace(old, new)
        if name in EXTRA:
            _, extra_old, extra_new = EXTRA[name]
            if changed.count(extra_old) != 1:
                print(f"{name:34} STALE: its second edit does not apply; update this script")
                missed += 1
                continue
            changed = changed.replace(extra_old, extra_new)
        open(file, "w").write(changed)
        try:
            built = run(["cmake", "--build", build, "--target", "amirror_tests"], top)
            if built.returncode != 0:
                print(f"{name:34} BUILD FAILED:\n{built.stdout[-2000:]}")
                missed += 1
                continue
            env = dict(os.environ, AMIRROR_SEEDS=str(args.seeds))
            env.pop("AMIRROR_LONG", None)
            result = run([os.path.join(build, "tests", "amirror_tests"), "--gtest_filter=MirrorSimulation.*"], top, env)
            found = re.search(r"seed (\d+) fails at step (\d+) \(replay: [^)]*\): (.*)", result.stdout)
            if result.returncode != 0 and found:
                reason = re.sub(r"/dev/shm/\S+", "...", found.group(3))[:110]
                print(f"{name:34} CAUGHT seed {found.group(1)} step {found.group(2)}: {reason}")
            else:
                print(f"{name:34} MISSED ({what})")
                missed += 1
        finally:
            open(file, "w").write(original)
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
