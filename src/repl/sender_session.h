// SPDX-License-Identifier: Apache-2.0
// The source side of one peer connection as a sans-I/O state machine: it decides what
// a target lacks and streams it as one coalesced delta per volume. Frames in
// (on_frame), frames out (through a FrameSink, repl/receiver_session.h), what the source
// believes about the target through a SenderHost. No sockets, threads or clocks here:
// the node's mirror engine and the deterministic simulation (tests/sim/) drive this one
// implementation.
//
// Per connection: start() sends HELLO; HELLO_ACK must name the expected target. Then per
// volume, begin_volume() sends OPEN_REPLICA and on REPLICA_STATE the session reconciles:
//   - the target is where the source believes (applied cycle equal): keep;
//   - it applied the cycle that was in flight (the APPLIED was lost): adopt it;
//   - anything else (replica deleted, replaced, or older): a full copy.
// Then it sends BEGIN_DELTA (after the host durably recorded the point as in flight),
// the CHUNK frames one send_next() at a time (a chunk whose layers know which sectors
// changed goes as partial records, one per run of dirty sectors, when the target
// speaks version 5; otherwise whole), END_DELTA, and on DELTA_DURABLE + APPLIED
// tells the host the target applied the point.
//
// Phases: hello -> idle -> awaiting-state -> streaming -> awaiting-durable ->
//         awaiting-applied -> idle (volume done; begin_volume() for the next)
// Invariant: the host is told "applied s" only after the target said APPLIED s, and
// a delta's chunk set is every chunk the target lacks up to s: its pending chunks, the
// layers since its applied cycle, or everything allocated for a full copy.
// Thread-safety: one thread at a time; the host may be called from it.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/chunk_bitmap.h"
#include "base/status.h"
#include "repl/receiver_session.h"
#include "repl/wire.h"
#include "store/volume.h"

namespace amirror::repl {

// What the source believes about one target for one volume.
struct TargetView {
  uint64_t applied_cycle = 0;  // 0: no replica yet, the next delta is a full copy
  int64_t applied_freeze_time_unix_ms = 0;
  uint64_t inflight_cycle = 0;  // a delta to this cycle was sent and may have been applied
  ChunkBitmap pending_chunks;  // chunks of merged layers it has not applied
};

// The source's record of its targets. Each call that changes it must be durable when
// it returns (the node saves its mirror state), since the session acts on it next.
class SenderHost {
 public:
  virtual ~SenderHost() = default;
  virtual TargetView view(const std::string& volume) = 0;
  // The target reported its state (for progress tracking; no decision needed).
  virtual void observed(const std::string& volume, const ReplicaState& remote) = 0;
  // The target applied `cycle` although its APPLIED never arrived.
  virtual Status adopt_applied(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms) = 0;
  // Failback: the target holds point `cycle` that this volume shares with its origin,
  // plus changes of its own to `resync_chunks`; the next delta overwrites those too.
  virtual Status adopt_common_point(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms,
                                    const std::set<uint64_t>& resync_chunks) = 0;
  // The target's replica is not what the source believed: the next delta is a full copy.
  virtual Status reset_to_full(const std::string& volume, uint64_t remote_cycle) = 0;
  virtual Status set_inflight(const std::string& volume, uint64_t cycle) = 0;
  // The target applied `cycle`; every pending chunk was in that delta.
  virtual Status applied(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms) = 0;
};

class SenderSession {
 public:
  enum class Phase { kHello, kIdle, kAwaitingState, kStreaming, kAwaitingDurable, kAwaitingApplied, kAwaitingGroupApplied };

  SenderSession(std::string source_node, std::string target_node, SenderHost& host, FrameSink& sink)
      : source_node_(std::move(source_node)), target_node_(std::move(target_node)), host_(host), sink_(sink) {}

  Status start();  // sends HELLO
  // Sends OPEN_REPLICA for `volume`, aiming at freeze point `point`. REQUIRES: idle.
  // `keep`: how many points the target keeps of it. `hold`: a consistency group's
  // member: its delta is made durable but committed only by commit_group().
  Status begin_volume(const std::string& name, Volume& volume, uint64_t point, uint32_t keep = 1,
                      bool hold = false);
  // After every member of `group` was sent with hold: commits their points together on
  // the target (GROUP_COMMIT), then each is applied (host's applied()). Nothing to do
  // when no member needed a delta. REQUIRES: idle.
  Status commit_group(const std::string& group);
  // Members sent with hold and not yet committed.
  size_t held_count() const { return held_.size(); }
  // Feeds one checked frame from the target. An error ends the connection.
  Status on_frame(const Frame& frame);
  // While streaming: sends the next CHUNK (or END_DELTA after the last one).
  Status send_next();

  Phase phase() const { return phase_; }
  // Progress of the delta being streamed (records of this delta sent, and in all).
  uint64_t chunks_done() const { return next_chunk_; }
  uint64_t chunks_total() const { return chunks_.size(); }
  // First chunk index sent by this attempt (after a resume, > 0).
  uint64_t first_chunk() const { return first_chunk_; }
  // Payload bytes of the delta being streamed, as shipped (dirty sector runs, not whole
  // chunks; an upper bound for a full copy, which skips chunks that read as zero), and
  // how many of them are sent (after a resume, counting what the target had).
  uint64_t bytes_total() const { return bytes_total_; }
  uint64_t bytes_done() const { return bytes_done_; }
  // Partial CHUNK records this session sent, in all deltas (tests and benchmarks).
  uint64_t partial_records_sent() const { return partial_records_sent_; }

 private:
  // The target holds this volume's origin point (it is the primary this volume was
  // promoted from), and this volume still has that point to compute a delta from.
  bool shares_point_with(const ReplicaState& remote) const;
  Status on_replica_state(const Frame& frame);
  Status plan_delta(const TargetView& local, const ReplicaState& remote);
  Status on_applied(const Frame& frame);
  // A run of dirty sectors of one chunk, in bytes (clipped at the volume's end).
  struct SectorRun {
    uint64_t offset_in_chunk_bytes = 0;
    uint64_t length_bytes = 0;
  };
  // What `chunk` costs: payload bytes and records.
  std::pair<uint64_t, uint64_t> payload_of(const DeltaChunk& chunk, const ChunkGeometry& geometry) const;
  std::optional<SectorRun> next_run(const DeltaChunk& chunk, const ChunkGeometry& geometry);
  Status send_run(const DeltaChunk& chunk, const ChunkGeometry& geometry, const SectorRun& run);
  // Tells the volume which chunks are read next, up to kReadAheadBytes ahead, so the
  // disk reads them while this one is sent: a source whose data is not cached would
  // otherwise wait for each chunk's read in turn.
  void hint_ahead(const ChunkGeometry& geometry);
  static constexpr uint64_t kReadAheadBytes = 16ull << 20;
  Status on_group_applied(const Frame& frame);

  const std::string source_node_;
  const std::string target_node_;
  SenderHost& host_;
  FrameSink& sink_;
  Phase phase_ = Phase::kHello;

  // The volume being sent.
  std::string name_;
  Volume* volume_ = nullptr;
  uint64_t point_ = 0;
  bool hold_ = false;
  std::vector<GroupPoint> held_;  // sealed on the target, awaiting GROUP_COMMIT
  // The size OPEN_REPLICA told the target: chunks are cut to it even if the volume
  // grows (volume resize) while this delta streams.
  uint64_t opened_size_bytes_ = 0;
  BeginDelta begin_;
  std::vector<DeltaChunk> chunks_;
  uint64_t next_chunk_ = 0;
  uint64_t first_chunk_ = 0;
  uint64_t next_sector_ = 0;  // within chunks_[next_chunk_], for partial chunks
  uint64_t hinted_chunk_ = 0;  // chunks_ before this one were given to will_read_frozen
  uint64_t record_index_ = 0;
  uint64_t bytes_total_ = 0;
  uint64_t bytes_done_ = 0;
  uint64_t partial_records_sent_ = 0;
  // The target's HELLO_ACK says it takes partial CHUNK records (version 5).
  bool partial_records_ = false;
  std::vector<uint8_t> buffer_;  // one CHUNK frame: its headers, then the chunk read from the volume
};

}  // namespace amirror::repl
