// SPDX-License-Identifier: Apache-2.0
#include "repl/verify_session.h"

#include <algorithm>

#include "base/zeros.h"
#include "store/chunk_math.h"

namespace amirror::repl {
namespace {

// A repair batch also holds at most this many chunks (zero chunks carry no data, so the
// byte bound alone would not limit them).
constexpr size_t kMaxRepairBatchChunks = 65536;

}  // namespace

// ---- Source ------------------------------------------------------------------------

Status VerifySession::start() {
  AMIRROR_ASSERT(phase_ == Phase::kHello);
  return sink_.send(FrameType::kHello, encode(Hello{kHelloVersion, source_node_}));
}

Status VerifySession::corrupt(const std::string& what) const {
  return corruption(target_node_ + " " + what + " while verifying " + name_ + " at cycle " + std::to_string(cycle_));
}

Status VerifySession::begin_volume(const std::string& name, PointReader& source, uint64_t cycle) {
  AMIRROR_ASSERT(phase_ == Phase::kIdle);
  AMIRROR_ASSERT(cycle > 0);
  name_ = name;
  source_ = &source;
  cycle_ = cycle;
  outcome_ = VerifyOutcome{};
  target_allocated_.clear();
  AMIRROR_ASSIGN_OR_RETURN(source_allocated_, source.allocated_ranges());
  phase_ = Phase::kAwaitingAllocation;
  return sink_.send(FrameType::kVerifyBegin,
                    encode(VerifyBegin{name, source.size_bytes(), source.chunk_size_bytes(), cycle}));
}

Status VerifySession::on_frame(const Frame& frame) {
  if (frame.type == FrameType::kKeepAlive) return Status();
  if (frame.type == FrameType::kError) {
    return Status(ErrorCode::kIo, target_node_ + " refused: " + decode_error(frame.payload));
  }
  auto expect = [&](FrameType wanted) {
    return frame.type == wanted ? Status()
                                : corruption(std::string("expected ") + frame_type_name(wanted) + " from " +
                                             target_node_ + ", got " + frame_type_name(frame.type));
  };
  switch (phase_) {
    case Phase::kHello:
      AMIRROR_RETURN_IF_ERROR(check_hello_ack(frame, target_node_));
      phase_ = Phase::kIdle;
      return Status();
    case Phase::kAwaitingAllocation:
      AMIRROR_RETURN_IF_ERROR(expect(FrameType::kVerifyAllocated));
      return on_allocated(frame);
    case Phase::kComparing:
      AMIRROR_RETURN_IF_ERROR(expect(FrameType::kVerifyHashes));
      return on_hashes(frame);
    case Phase::kAwaitingRepairDone:
      AMIRROR_RETURN_IF_ERROR(expect(FrameType::kRepairDone));
      return on_repair_done(frame);
    case Phase::kIdle:
    case Phase::kRepairing: break;
  }
  return corruption(std::string("unexpected ") + frame_type_name(frame.type) + " from " + target_node_);
}

Status VerifySession::on_allocated(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(VerifyAllocated allocated, decode_verify_allocated(frame.payload));
  const uint64_t chunk_count = chunk_count_of(source_->size_bytes(), source_->chunk_size_bytes());
  for (const ChunkRange& range : allocated.ranges) {
    // Ascending across frames too, and inside the volume: the list stays bounded by
    // the volume's chunk count whatever the target sends.
    if (range.end_chunk() > chunk_count ||
        (!target_allocated_.empty() && range.first_chunk < target_allocated_.back().end_chunk())) {
      return corrupt("sent allocated chunks out of order or beyond the volume");
    }
    target_allocated_.push_back(range);
  }
  if (!allocated.last) return Status();
  std::vector<ChunkRange> all = union_of(source_allocated_, target_allocated_);
  source_allocated_ = {};
  target_allocated_ = {};
  outcome_.chunks_compared = chunks_in(all);
  outcome_.bytes_compared = bytes_in(all, source_->size_bytes(), source_->chunk_size_bytes());
  compare(std::move(all));
  return Status();
}

void VerifySession::compare(std::vector<ChunkRange> ranges) {
  const uint32_t window_chunks =
      window_chunks_ != 0 ? std::min(window_chunks_, kMaxVerifyWindowChunks) : verify_window_chunks(source_->chunk_size_bytes());
  cursor_ = WindowCursor(std::move(ranges), window_chunks);
  in_flight_.clear();
  differing_ = RangeCollector();
  phase_ = Phase::kComparing;
  if (cursor_.done()) {
    outcome_.differing.clear();
    outcome_.differing_chunks = 0;
    phase_ = Phase::kIdle;
  }
}

bool VerifySession::needs_frame() const {
  switch (phase_) {
    case Phase::kHello:
    case Phase::kAwaitingAllocation:
    case Phase::kAwaitingRepairDone: return true;
    case Phase::kComparing:
      return !in_flight_.empty() && in_flight_.front().digested &&
             (in_flight_.size() >= kVerifyWindowsInFlight || cursor_.done());
    case Phase::kIdle:
    case Phase::kRepairing: return false;
  }
  return false;
}

Status VerifySession::advance() {
  if (phase_ == Phase::kRepairing) return send_next_repair_chunk();
  if (phase_ != Phase::kComparing) return Status();
  // Windows first, so the target works on them while the source digests its side.
  if (in_flight_.size() < kVerifyWindowsInFlight && !cursor_.done()) {
    Window window;
    window.ranges = cursor_.next();
    AMIRROR_RETURN_IF_ERROR(sink_.send(FrameType::kVerifyWindow, encode(VerifyWindow{window.ranges})));
    in_flight_.push_back(std::move(window));
    return Status();
  }
  if (!in_flight_.empty() && !in_flight_.front().digested) return digest_source_side(in_flight_.front());
  return Status();
}

Status VerifySession::digest_source_side(Window& window) {
  AMIRROR_RETURN_IF_ERROR(digest_window(*source_, hasher_, window.ranges, buffer_, window.source_digests)
                              .with_context("reading " + name_ + " at cycle " + std::to_string(cycle_)));
  window.digested = true;
  return Status();
}

Status VerifySession::on_hashes(const Frame& frame) {
  if (in_flight_.empty()) return corrupt("sent VERIFY_HASHES for no window");
  AMIRROR_ASSIGN_OR_RETURN(VerifyHashes hashes, decode_verify_hashes(frame.payload));
  Window& window = in_flight_.front();
  if (!window.digested) AMIRROR_RETURN_IF_ERROR(digest_source_side(window));
  if (hashes.digests.size() != window.source_digests.size()) {
    return corrupt("answered a window of " + std::to_string(window.source_digests.size()) + " chunks with " +
                   std::to_string(hashes.digests.size()) + " digests");
  }
  for (size_t i = 0; i < hashes.digests.size(); ++i) {
    const ChunkDigest& ours = window.source_digests[i];
    const ChunkDigest& theirs = hashes.digests[i];
    if (theirs.chunk_index != ours.chunk_index) return corrupt("sent digests for other chunks than asked");
    if (theirs != ours) differing_.add(ours.chunk_index);
  }
  in_flight_.pop_front();
  if (in_flight_.empty() && cursor_.done()) {
    outcome_.differing = differing_.ranges();
    outcome_.differing_chunks = differing_.chunk_count();
    phase_ = Phase::kIdle;
  }
  return Status();
}

Status VerifySession::begin_repair() {
  AMIRROR_ASSERT(phase_ == Phase::kIdle && source_ != nullptr);
  AMIRROR_ASSERT(outcome_.differing_chunks > 0 && !outcome_.repaired);
  outcome_.repaired = true;
  outcome_.differing_before_repair = outcome_.differing;
  outcome_.differing_chunks_before_repair = outcome_.differing_chunks;
  repair_chunks_.clear();
  // One index per differing chunk: bounded by the volume's chunk count, like the
  // pending chunks a source keeps for a lagging target.
  for (const ChunkRange& range : outcome_.differing) {
    for (uint64_t chunk_index = range.first_chunk; chunk_index < range.end_chunk(); ++chunk_index) {
      repair_chunks_.push_back(chunk_index);
    }
  }
  next_repair_ = 0;
  phase_ = Phase::kRepairing;
  return Status();
}

Status VerifySession::send_next_repair_chunk() {
  if (next_repair_ == repair_chunks_.size()) {
    phase_ = Phase::kAwaitingRepairDone;
    return sink_.send(FrameType::kRepairEnd, encode(RepairEnd{outcome_.repaired_chunks}));
  }
  ChunkGeometry geometry(source_->size_bytes(), source_->chunk_size_bytes());
  const uint64_t chunk_index = repair_chunks_[next_repair_++];
  buffer_.resize(source_->chunk_size_bytes());
  std::span<uint8_t> content(buffer_.data(), geometry.chunk_length_bytes(chunk_index));
  AMIRROR_RETURN_IF_ERROR(source_->read(geometry.chunk_offset_bytes(chunk_index), content)
                              .with_context("reading " + name_ + " at cycle " + std::to_string(cycle_)));
  const bool zero = all_zero(content);
  std::vector<uint8_t> frame =
      encode_chunk_frame(outcome_.repaired_chunks, chunk_index, zero ? RecordKind::kZero : RecordKind::kData,
                         zero ? std::span<const uint8_t>() : std::span<const uint8_t>(content), FrameType::kRepairChunk);
  outcome_.repaired_chunks += 1;
  if (!zero) outcome_.repair_bytes += content.size();
  return sink_.send_encoded(frame);
}

Status VerifySession::on_repair_done(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(RepairDone done, decode_repair_done(frame.payload));
  if (done.record_count != outcome_.repaired_chunks) {
    return corrupt("acknowledged " + std::to_string(done.record_count) + " repaired chunks, " +
                   std::to_string(outcome_.repaired_chunks) + " were sent");
  }
  repair_chunks_ = {};
  // Only the repaired chunks can have changed: compare them again.
  compare(outcome_.differing_before_repair);
  return Status();
}

// ---- Target ------------------------------------------------------------------------

Result<std::unique_ptr<VerifyResponder>> VerifyResponder::start(std::shared_ptr<Replica> replica,
                                                                 const VerifyBegin& begin, FrameSink& sink) {
  const std::string name = replica->source_node() + "/" + replica->volume();
  if (replica->size_bytes() != begin.size_bytes || replica->chunk_size_bytes() != begin.chunk_size_bytes) {
    return invalid_argument("replica " + name + " is " + std::to_string(replica->size_bytes()) + " bytes with " +
                            std::to_string(replica->chunk_size_bytes()) + "-byte chunks, the source's volume " +
                            std::to_string(begin.size_bytes) + " bytes with " +
                            std::to_string(begin.chunk_size_bytes) + "-byte chunks");
  }
  // One point on both sides: the raw image must hold exactly the verified cycle.
  const std::string activity = replica->activity();
  const uint64_t applied_cycle = replica->state().applied_cycle;
  if (activity != "idle" || applied_cycle != begin.cycle || replica->readable_cycle() != begin.cycle) {
    return invalid_argument("replica " + name + " is " + activity + " at cycle " + std::to_string(applied_cycle) +
                            ", not idle at cycle " + std::to_string(begin.cycle) +
                            ", the point the source verifies");
  }
  std::unique_ptr<VerifyResponder> responder(new VerifyResponder(std::move(replica), begin.cycle, sink));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<ChunkRange> allocated, responder->reader_.allocated_ranges());
  size_t sent = 0;
  do {
    size_t count = std::min<size_t>(kMaxVerifyRangesPerFrame, allocated.size() - sent);
    VerifyAllocated frame;
    frame.ranges.assign(allocated.begin() + static_cast<ptrdiff_t>(sent),
                        allocated.begin() + static_cast<ptrdiff_t>(sent + count));
    sent += count;
    frame.last = sent == allocated.size();
    AMIRROR_RETURN_IF_ERROR(sink.send(FrameType::kVerifyAllocated, encode(frame)));
  } while (sent < allocated.size());
  return responder;
}

Status VerifyResponder::on_window(const VerifyWindow& window) {
  AMIRROR_RETURN_IF_ERROR(digest_window(reader_, hasher_, window.ranges, buffer_, digests_));
  return sink_.send(FrameType::kVerifyHashes, encode(VerifyHashes{std::move(digests_)}));
}

Status VerifyResponder::on_repair_chunk(const ChunkRecord& record) {
  // A repair rewrites whole chunks: a partial record (CHUNK only) has no place here.
  if (record.kind == RecordKind::kPartial) return invalid_argument("REPAIR_CHUNK with a partial record");
  if (record.record_index != repair_records_ || (repair_records_ > 0 && record.chunk_index <= last_repair_chunk_)) {
    return invalid_argument("REPAIR_CHUNK record " + std::to_string(record.record_index) + " (chunk " +
                            std::to_string(record.chunk_index) + ") out of sequence");
  }
  repair_records_ += 1;
  last_repair_chunk_ = record.chunk_index;
  // Owned copies: the frame's payload goes away after this call.
  batch_data_.emplace_back(record.data.begin(), record.data.end());  // empty for a zero chunk
  batch_bytes_ += record.data.size();
  batch_.push_back({record.chunk_index, {}});
  if (batch_bytes_ >= kRepairBatchBytes || batch_.size() >= kMaxRepairBatchChunks) return write_repair_batch();
  return Status();
}

Status VerifyResponder::write_repair_batch() {
  for (size_t i = 0; i < batch_.size(); ++i) batch_[i].data = batch_data_[i];
  Status status = replica_->repair_chunks(cycle_, batch_);
  batch_.clear();
  batch_data_.clear();
  batch_bytes_ = 0;
  return status;
}

Status VerifyResponder::on_repair_end(const RepairEnd& end) {
  if (end.record_count != repair_records_) {
    return invalid_argument("REPAIR_END says " + std::to_string(end.record_count) + " records, " +
                            std::to_string(repair_records_) + " arrived");
  }
  AMIRROR_RETURN_IF_ERROR(write_repair_batch());
  repair_records_ = 0;
  return sink_.send(FrameType::kRepairDone, encode(RepairDone{end.record_count}));
}

}  // namespace amirror::repl
