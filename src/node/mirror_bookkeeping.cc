// SPDX-License-Identifier: Apache-2.0
#include "node/mirror_bookkeeping.h"

namespace amirror::node {

void set_targets(MirrorState& state, const std::vector<std::string>& targets) {
  state.targets = targets;
  for (const std::string& target : targets) state.target_states[target];  // ensure present
}

bool lacks_layer(const TargetState& target, uint64_t layer) {
  if (target.applied_cycle >= layer) return false;
  // With a delta in flight the target may have applied it without the source hearing
  // so; once the source adopts that point, it lacks every layer merged since.
  return target.applied_cycle != 0 || target.inflight_cycle != 0;
}

bool note_merged_layer(MirrorState& state, uint64_t layer, std::span<const DeltaChunk> chunks) {
  bool changed = false;
  for (auto& [name, target] : state.target_states) {
    if (!lacks_layer(target, layer)) continue;
    for (const DeltaChunk& chunk : chunks) target.pending_chunks.set(chunk.chunk_index);
    changed = true;
  }
  return changed;
}

repl::TargetView view_of(const TargetState& target) {
  return {target.applied_cycle, target.applied_freeze_time_unix_ms, target.inflight_cycle, target.pending_chunks};
}

void adopt_applied(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms) {
  target.applied_cycle = cycle;
  target.applied_freeze_time_unix_ms = freeze_time_unix_ms;
  target.inflight_cycle = 0;
}

void adopt_common_point(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms,
                        const std::set<uint64_t>& resync_chunks) {
  target.applied_cycle = cycle;
  target.applied_freeze_time_unix_ms = freeze_time_unix_ms;
  target.inflight_cycle = 0;
  target.pending_chunks.clear();
  for (uint64_t chunk_index : resync_chunks) target.pending_chunks.set(chunk_index);
}

void reset_to_full(TargetState& target) {
  target.applied_cycle = 0;
  target.pending_chunks.clear();
  // The full copy replaces the whole image, differing chunks included.
  target.verify_cycle = 0;
  target.verify_differing_chunks = 0;
}

void mark_applied(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms) {
  target.applied_cycle = cycle;
  target.applied_freeze_time_unix_ms = freeze_time_unix_ms;
  target.inflight_cycle = 0;
  target.pending_chunks.clear();
}

void note_verified(TargetState& target, uint64_t cycle, uint64_t differing_chunks) {
  target.verify_cycle = cycle;
  target.verify_differing_chunks = differing_chunks;
}

std::string verify_differs_message(const std::string& volume, const std::string& target, const TargetState& state) {
  return "mirror verify at cycle " + std::to_string(state.verify_cycle) + " found " +
         std::to_string(state.verify_differing_chunks) + " chunk(s) of the replica on " + target +
         " different from the source; run `amirror mirror verify " + volume + " --to " + target + " --repair`";
}

}  // namespace amirror::node
