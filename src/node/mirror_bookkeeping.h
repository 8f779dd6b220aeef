// SPDX-License-Identifier: Apache-2.0
// The rules that change a source's MirrorState (node/mirror_state.h), in one place: the
// mirror engine applies them under its lock, the deterministic simulation (tests/sim/)
// applies the same functions, so what the simulation proves holds for the engine.
//
// Invariant they keep: for every target with a replica (applied_cycle > 0), the chunks
// it lacks up to the newest freeze point are exactly its pending_chunks plus the
// chunks of the source's unmerged layers above its applied cycle.
// Thread-safety: plain functions on plain data; the caller serialises.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "node/mirror_state.h"
#include "repl/sender_session.h"
#include "store/volume.h"

namespace amirror::node {

// `mirror start --to TARGETS`: the list changes; every target gets a state entry. A
// target's stored state survives being left off the list.
void set_targets(MirrorState& state, const std::vector<std::string>& targets);

// Whether `target` may lack layer `layer` once it is merged: it has not applied it, and
// it has a replica or a delta in flight (which it may have applied unacknowledged).
// Without either, its next delta is a full copy anyway.
bool lacks_layer(const TargetState& target, uint64_t layer);
// Before layer `layer` is folded into the base, every target that lacks it (listed now
// or not: a dropped target may be named again) keeps the layer's chunks as pending.
// Returns true if any changed.
bool note_merged_layer(MirrorState& state, uint64_t layer, std::span<const DeltaChunk> chunks);

repl::TargetView view_of(const TargetState& target);
// The target applied the cycle that was in flight, though its APPLIED was lost.
void adopt_applied(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms);
// The target's replica is not what the source believed: the next delta is a full copy.
void reset_to_full(TargetState& target);
// Failback: the target holds point `cycle` of this volume's history, plus its own
// changes to `resync_chunks`, which the next delta overwrites.
void adopt_common_point(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms,
                        const std::set<uint64_t>& resync_chunks);
// The target applied `cycle` (its delta held every pending chunk).
void mark_applied(TargetState& target, uint64_t cycle, int64_t freeze_time_unix_ms);
// `mirror verify` compared the target's replica with the source at `cycle`:
// `differing_chunks` differed (0: equal). A full copy (reset_to_full) forgets it.
void note_verified(TargetState& target, uint64_t cycle, uint64_t differing_chunks);
// What status says of a target whose last verify found differences.
std::string verify_differs_message(const std::string& volume, const std::string& target, const TargetState& state);

}  // namespace amirror::node
