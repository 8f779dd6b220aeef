// SPDX-License-Identifier: Apache-2.0
// `mirror verify` over one peer connection, as sans-I/O state machines like the
// delta sessions (repl/sender_session.h, receiver_session.h): VerifySession on the
// source, VerifyResponder on the target (driven by ReceiverSession). Frames in,
// frames out through a FrameSink; no sockets, threads or clocks. The node wires the
// source side to a socket (node/mirror_verify.cc); tests/repl/verify_test.cc wires both
// through a SimLink. Grammar: docs/formats/wire.md.
//
// Conversation, per volume (after HELLO / HELLO_ACK):
//   source: VERIFY_BEGIN(volume, geometry, cycle s)
//   target: VERIFY_ALLOCATED* (its replica's allocated chunk ranges, the last flagged),
//           or ERROR when the replica is missing, of another geometry, or not idle at s
//   source: the chunks to compare = its own allocated chunks at s ∪ the target's
//           (a chunk allocated on one side only is compared against zeros), cut into
//           windows of ~64 MiB; up to kVerifyWindowsInFlight VERIFY_WINDOW frames ahead
//   target: VERIFY_HASHES per window, in order (one digest per chunk)
//   source: digests its own side of the oldest window while the target works on the
//           next ones, compares, sends the next window
//  --repair, when chunks differed:
//   source: REPAIR_CHUNK* (each differing chunk's content at s), REPAIR_END
//   target: Replica::repair_chunks in batches, REPAIR_DONE (all durable)
//   source: compares the repaired chunks again (VERIFY_WINDOW / VERIFY_HASHES)
// Only digests cross the wire unless repairing. Each side reads every compared chunk
// once; either waits for the other at most the time it takes to digest one window,
// so a peer timeout of a few seconds is enough whatever the volume's size.
//
// VerifySession phases: hello -> idle -> awaiting-allocation -> comparing -> idle
//                       idle -> repairing -> awaiting-repair-done -> comparing -> idle
// Invariant: a comparison ends (phase idle, outcome() filled) only after every chunk of
// the union was compared; a target that answers for other chunks than asked is a
// protocol error, never a silent "equal".
// Thread-safety: one thread at a time.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "repl/frame_sink.h"
#include "repl/replica.h"
#include "repl/verify.h"
#include "repl/wire.h"

namespace amirror::repl {

constexpr size_t kVerifyWindowsInFlight = 4;
// The target writes repaired chunks in batches of about this much (bounded memory;
// one fdatasync per batch).
constexpr uint64_t kRepairBatchBytes = 16ull << 20;

// What one comparison of a volume found.
struct VerifyOutcome {
  uint64_t chunks_compared = 0;  // the union of both sides' allocated chunks
  uint64_t bytes_compared = 0;
  std::vector<ChunkRange> differing;  // ascending, coalesced; after a repair: what still differs
  uint64_t differing_chunks = 0;
  // After begin_repair(): what the first comparison found, and what was resent.
  bool repaired = false;
  std::vector<ChunkRange> differing_before_repair;
  uint64_t differing_chunks_before_repair = 0;
  uint64_t repaired_chunks = 0;
  uint64_t repair_bytes = 0;  // chunk data resent (zero chunks send none)
};

class VerifySession {
 public:
  enum class Phase { kHello, kIdle, kAwaitingAllocation, kComparing, kRepairing, kAwaitingRepairDone };

  VerifySession(std::string source_node, std::string target_node, FrameSink& sink)
      : source_node_(std::move(source_node)), target_node_(std::move(target_node)), sink_(sink) {}

  Status start();  // sends HELLO
  // Compares the source's point `cycle` of volume `name`, read through `source`, with
  // the target's replica. REQUIRES: idle. `source` must outlive the comparison.
  Status begin_volume(const std::string& name, PointReader& source, uint64_t cycle);
  // Feeds one checked frame from the target. An error ends the connection.
  Status on_frame(const Frame& frame);
  // Does what needs no frame from the target: sends windows (or repair chunks) and
  // digests the source's side of the oldest window. Call while busy() and
  // !needs_frame(); it always makes progress.
  Status advance();
  // Waiting for HELLO_ACK after start(), or in a comparison or repair.
  bool busy() const { return phase_ != Phase::kIdle; }
  // True when nothing more can happen until the target's next frame.
  bool needs_frame() const;
  // Resends every differing chunk, then compares them again. REQUIRES: idle after a
  // comparison that found differences.
  Status begin_repair();

  // Windows of at most this many chunks instead of ~kVerifyWindowBytes (tests use small
  // ones to exercise many windows in flight on a small volume). 0 = the default.
  void set_window_chunks(uint32_t chunks) { window_chunks_ = chunks; }

  Phase phase() const { return phase_; }
  // The last comparison's result; complete once the phase is idle again.
  const VerifyOutcome& outcome() const { return outcome_; }

 private:
  struct Window {
    std::vector<ChunkRange> ranges;
    std::vector<ChunkDigest> source_digests;
    bool digested = false;
  };
  Status on_allocated(const Frame& frame);
  Status on_hashes(const Frame& frame);
  Status on_repair_done(const Frame& frame);
  // Starts comparing `ranges` (phase comparing; idle at once when empty).
  void compare(std::vector<ChunkRange> ranges);
  Status digest_source_side(Window& window);
  Status send_next_repair_chunk();
  Status corrupt(const std::string& what) const;

  const std::string source_node_;
  const std::string target_node_;
  FrameSink& sink_;
  Phase phase_ = Phase::kHello;

  std::string name_;
  PointReader* source_ = nullptr;
  uint64_t cycle_ = 0;
  std::vector<ChunkRange> source_allocated_;
  std::vector<ChunkRange> target_allocated_;
  uint32_t window_chunks_ = 0;
  WindowCursor cursor_;
  std::deque<Window> in_flight_;
  RangeCollector differing_;
  ChunkHasher hasher_;
  std::vector<uint8_t> buffer_;
  VerifyOutcome outcome_;
  // Repair: the chunks being resent, and the next one.
  std::vector<uint64_t> repair_chunks_;
  size_t next_repair_ = 0;
};

// The target's half of one verify, for ReceiverSession, which holds the replica
// exclusively (ReplicaAccess::acquire_existing) while this exists.
class VerifyResponder {
 public:
  // Checks the replica is idle at begin.cycle with the source's geometry, then sends its
  // allocated chunk ranges. An error says why the replica cannot be verified.
  static Result<std::unique_ptr<VerifyResponder>> start(std::shared_ptr<Replica> replica, const VerifyBegin& begin,
                                                        FrameSink& sink);
  // VERIFY_WINDOW -> VERIFY_HASHES.
  Status on_window(const VerifyWindow& window);
  // REPAIR_CHUNK: collected (records numbered from 0, chunk indexes ascending) and
  // written in batches of about kRepairBatchBytes.
  Status on_repair_chunk(const ChunkRecord& record);
  // REPAIR_END: writes what is left, then REPAIR_DONE.
  Status on_repair_end(const RepairEnd& end);

 private:
  VerifyResponder(std::shared_ptr<Replica> replica, uint64_t cycle, FrameSink& sink)
      : replica_(std::move(replica)), cycle_(cycle), sink_(sink), reader_(*replica_) {}
  Status write_repair_batch();

  std::shared_ptr<Replica> replica_;
  const uint64_t cycle_;
  FrameSink& sink_;
  ReplicaPointReader reader_;
  ChunkHasher hasher_;
  std::vector<uint8_t> buffer_;
  std::vector<ChunkDigest> digests_;
  // Repair in progress: records so far, the last chunk, the batch not yet written.
  uint64_t repair_records_ = 0;
  uint64_t last_repair_chunk_ = 0;
  uint64_t batch_bytes_ = 0;
  std::vector<std::vector<uint8_t>> batch_data_;
  std::vector<Replica::RepairChunk> batch_;
};

}  // namespace amirror::repl
