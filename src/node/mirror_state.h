// SPDX-License-Identifier: Apache-2.0
// What a source node remembers about mirroring one volume, persisted in
// <data_dir>/mirrors/<volume>.json (replaced atomically) and, per target, the chunks it
// lacks in <volume>@<target>.pending (one bit per chunk, updated page by page:
// node/pending_file.h); formats in docs/formats/mirror-state.md. Survives restarts, so `mirror start` after a break or
// a crash resumes incrementally.
//
// Per target it keeps the cycle the target is known to have applied and the chunks it
// lacks beyond what the source's unmerged layers record (`pending_chunks`): when a
// layer is merged into the base while a target has not applied it, that layer's
// chunks are added here first. So what the source holds back for a lagging target is
// at most one chunk index per chunk of the volume, however long the target is away.
// This holds for every target in target_states, also one no longer in `targets`, so a
// target named again later gets exactly what it lacks (since format 2; a format-1 file
// did not track dropped targets, so loading one gives them a full copy). Format 3 keeps
// the pending chunks in the pending files instead of a JSON array: a format-2 file is
// read as before and converted by the next save.
// Thread-safety: plain data; MirrorEngine guards it.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/chunk_bitmap.h"
#include "base/status.h"
#include "node/pending_file.h"
#include "repl/compression.h"
#include "store/file_system.h"

namespace amirror::node {

struct TargetState {
  uint64_t applied_cycle = 0;           // 0 = no replica yet (next transfer is a full one)
  int64_t applied_freeze_time_unix_ms = 0;
  uint64_t inflight_cycle = 0;          // a transfer to this cycle may have been applied
  uint64_t bytes_sent = 0;              // every byte ever sent to this target for this volume
  // The same bytes as they went on the wire, after compression (<= bytes_sent).
  uint64_t wire_bytes_sent = 0;
  ChunkBitmap pending_chunks;           // chunks changed in layers merged before it applied them
  // The last `mirror verify` of this target: at which cycle, and how many chunks of its
  // replica differed from the source then (still, after a --repair). While nonzero,
  // status shows the mirror as "differs", never idle: incremental deltas do not resend
  // those chunks. Cleared by a verify that finds it equal, or by a full copy.
  uint64_t verify_cycle = 0;
  uint64_t verify_differing_chunks = 0;
};

struct MirrorState {
  std::string unit;                     // "volume:NAME" or "group:NAME"
  std::vector<std::string> targets;
  uint64_t interval_ms = 10'000;
  uint32_t keep = 1;                    // points each target keeps
  uint64_t bandwidth_bytes_per_second = 0;  // `--bandwidth`: this mirror's cap; 0 = none
  repl::Compression compression = repl::Compression::kZstd;  // `--compress`
  bool running = false;
  std::map<std::string, TargetState> target_states;
};

// Written by this version; formats 1 and 2 are still read.
constexpr int kMirrorStateFormat = 3;

// By target: the pages its pending file is known to hold (node/pending_file.h).
using DurablePendingPages = std::map<std::string, DurablePages>;

Result<MirrorState> load_mirror_state(FileSystem& fs, const std::string& path);
// Writes the JSON and each target's pending file (pending_file.h says in what order).
// `durable`, if given, is what the pending files are known to hold and is updated, so
// a save writes only the pages that changed without reading any; null or missing
// entries: the files are read to compare (once per page).
Status save_mirror_state(FileSystem& fs, const std::string& dir, const std::string& volume,
                         const MirrorState& state, DurablePendingPages* durable = nullptr);
// Removes the volume's state: the JSON first (then the pending files mean nothing),
// then its pending files; syncs the directory.
Status remove_mirror_state(FileSystem& fs, const std::string& dir, const std::string& volume);

}  // namespace amirror::node
