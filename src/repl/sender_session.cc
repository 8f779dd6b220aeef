// SPDX-License-Identifier: Apache-2.0
#include "repl/sender_session.h"

#include <algorithm>
#include <map>
#include <optional>

#include "base/zeros.h"

namespace amirror::repl {

Status SenderSession::start() {
  AMIRROR_ASSERT(phase_ == Phase::kHello);
  return sink_.send(FrameType::kHello, encode(Hello{kHelloVersion, source_node_}));
}

Status SenderSession::begin_volume(const std::string& name, Volume& volume, uint64_t point, uint32_t keep,
                                   bool hold) {
  AMIRROR_ASSERT(phase_ == Phase::kIdle);
  AMIRROR_ASSERT(point > 0);
  name_ = name;
  volume_ = &volume;
  point_ = point;
  hold_ = hold;
  phase_ = Phase::kAwaitingState;
  VolumeLineage lineage = volume.lineage();
  opened_size_bytes_ = volume.size_bytes();
  OpenReplica open{name,         opened_size_bytes_, volume.chunk_size_bytes(), keep, lineage.uuid,
                   lineage.origin_uuid, lineage.origin_point, volume.group()};
  return sink_.send(FrameType::kOpenReplica, encode(open));
}

Status SenderSession::on_frame(const Frame& frame) {
  if (frame.type == FrameType::kKeepAlive) return Status();
  if (frame.type == FrameType::kError) return Status(ErrorCode::kIo, target_node_ + " refused: " + decode_error(frame.payload));
  auto unexpected = [&](const char* wanted) {
    return corruption(std::string("expected ") + wanted + " from " + target_node_ + ", got " +
                      frame_type_name(frame.type));
  };
  switch (phase_) {
    case Phase::kHello: {
      AMIRROR_RETURN_IF_ERROR(check_hello_ack(frame, target_node_));
      AMIRROR_ASSIGN_OR_RETURN(Hello ack, decode_hello(frame.payload));
      // An older target does not know partial records: it gets whole chunks.
      partial_records_ = ack.protocol_version >= kFirstPartialRecordVersion;
      phase_ = Phase::kIdle;
      return Status();
    }
    case Phase::kAwaitingState:
      if (frame.type != FrameType::kReplicaState) return unexpected("REPLICA_STATE");
      return on_replica_state(frame);
    case Phase::kStreaming:
      // The target talks during a delta only to refuse it (ERROR, handled above).
      return corruption(std::string(frame_type_name(frame.type)) + " from " + target_node_ + " before END_DELTA");
    case Phase::kAwaitingDurable:
      if (frame.type != FrameType::kDeltaDurable) return unexpected("DELTA_DURABLE");
      if (hold_) {
        held_.push_back(GroupPoint{name_, point_, begin_.freeze_time_unix_ms});
        phase_ = Phase::kIdle;
        return Status();
      }
      phase_ = Phase::kAwaitingApplied;
      return Status();
    case Phase::kAwaitingApplied:
      if (frame.type != FrameType::kApplied) return unexpected("APPLIED");
      return on_applied(frame);
    case Phase::kAwaitingGroupApplied:
      if (frame.type != FrameType::kGroupApplied) return unexpected("GROUP_APPLIED");
      return on_group_applied(frame);
    case Phase::kIdle: break;
  }
  return corruption(std::string("unexpected ") + frame_type_name(frame.type) + " from " + target_node_);
}

Status SenderSession::on_replica_state(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(ReplicaState remote, decode_replica_state(frame.payload));
  host_.observed(name_, remote);
  TargetView local = host_.view(name_);
  if (remote.applied_cycle != local.applied_cycle) {
    if (local.inflight_cycle != 0 && remote.applied_cycle == local.inflight_cycle) {
      // Our last delta was applied but its acknowledgement was lost.
      AMIRROR_RETURN_IF_ERROR(host_.adopt_applied(name_, remote.applied_cycle, remote.applied_freeze_time_unix_ms));
    } else if (shares_point_with(remote)) {
      // Failback: the target is the old primary this volume was promoted from. It has
      // the common point plus its own later writes; send the chunks changed on either side.
      std::set<uint64_t> resync;
      for (const auto& [first, count] : remote.resync_runs) {
        for (uint64_t chunk = first; chunk < first + count; ++chunk) resync.insert(chunk);
      }
      AMIRROR_RETURN_IF_ERROR(
          host_.adopt_common_point(name_, remote.applied_cycle, remote.applied_freeze_time_unix_ms, resync));
    } else {
      AMIRROR_RETURN_IF_ERROR(host_.reset_to_full(name_, remote.applied_cycle));
    }
    local = host_.view(name_);
  }
  if (local.applied_cycle >= point_) {
    phase_ = Phase::kIdle;  // it has this point already
    return Status();
  }
  AMIRROR_RETURN_IF_ERROR(plan_delta(local, remote));
  AMIRROR_RETURN_IF_ERROR(host_.set_inflight(name_, point_));
  phase_ = Phase::kStreaming;
  return sink_.send(FrameType::kBeginDelta, encode(begin_));
}

bool SenderSession::shares_point_with(const ReplicaState& remote) const {
  VolumeLineage lineage = volume_->lineage();
  return !remote.point_uuid.empty() && remote.point_uuid == lineage.origin_uuid &&
         remote.applied_cycle == lineage.origin_point && volume_->has_point(lineage.origin_point) &&
         remote.applied_cycle < point_;
}

Status SenderSession::plan_delta(const TargetView& local, const ReplicaState& remote) {
  // The chunks the target lacks, coalesced: a chunk changed in many cycles appears once.
  bool full = local.applied_cycle == 0;
  chunks_.clear();
  if (full) {
    AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> allocated, volume_->allocated_chunks(point_));
    for (uint64_t chunk_index : allocated) chunks_.push_back({chunk_index, ChunkState::kData});
  } else {
    std::map<uint64_t, DeltaChunk> merged;
    // A damaged page of the pending file reads as all ones: past the end is no chunk.
    // Pending chunks come from merged layers, whose masks are gone: they ship whole.
    const uint64_t chunk_count = volume_->geometry().chunk_count();
    local.pending_chunks.for_each_set([&](uint64_t chunk_index) {
      if (chunk_index < chunk_count) merged[chunk_index] = DeltaChunk{chunk_index, ChunkState::kData};
    });
    uint64_t from = std::max(local.applied_cycle, volume_->base_cycle());
    if (from < point_) {
      AMIRROR_ASSIGN_OR_RETURN(std::vector<DeltaChunk> changed, volume_->changed_chunks(from, point_));
      for (const DeltaChunk& chunk : changed) {
        auto [it, inserted] = merged.try_emplace(chunk.chunk_index, chunk);
        // The layers' state wins; the sectors to ship are the union with the pending ones.
        if (!inserted) it->second = DeltaChunk{chunk.chunk_index, chunk.state, it->second.dirty_sectors | chunk.dirty_sectors};
      }
    }
    for (const auto& [chunk_index, chunk] : merged) chunks_.push_back(chunk);
  }
  // Whole chunks where parts cannot be shipped, or where every sector is dirty anyway.
  const uint64_t full_mask = full_sector_mask(volume_->chunk_size_bytes());
  for (DeltaChunk& chunk : chunks_) {
    if (full || !partial_records_ || (chunk.dirty_sectors & full_mask) == full_mask) {
      chunk.dirty_sectors = kAllSectorsDirty;
    }
  }
  begin_ = BeginDelta{};
  begin_.base_cycle = full ? 0 : local.applied_cycle;
  begin_.target_cycle = point_;
  begin_.freeze_time_unix_ms = volume_->freeze_time_unix_ms(point_);
  begin_.full = full;
  first_chunk_ = 0;
  if (remote.staged_record_count > 0 && remote.staged_target_cycle == point_ && remote.staged_base_cycle == begin_.base_cycle) {
    // Resume where the target's durable staging ends, not from the start. The target
    // reports a resume point only after a chunk's last record (a chunk cut between its
    // partial records is resent whole from its first record).
    while (first_chunk_ < chunks_.size() && chunks_[first_chunk_].chunk_index <= remote.staged_last_chunk_index) {
      ++first_chunk_;
    }
    begin_.first_record = remote.staged_record_count;
  }
  next_chunk_ = first_chunk_;
  next_sector_ = 0;
  hinted_chunk_ = first_chunk_;
  record_index_ = begin_.first_record;
  const ChunkGeometry geometry(opened_size_bytes_, volume_->chunk_size_bytes());
  bytes_total_ = bytes_done_ = 0;
  begin_.record_count = 0;  // an upper bound for a full copy (it skips zero chunks)
  for (size_t i = 0; i < chunks_.size(); ++i) {
    if (chunks_[i].chunk_index >= geometry.chunk_count()) {
      begin_.record_count += 1;  // send_next refuses it (the volume grew)
      continue;
    }
    auto [bytes, records] = payload_of(chunks_[i], geometry);
    bytes_total_ += bytes;
    begin_.record_count += records;
    if (i < first_chunk_) bytes_done_ += bytes;
  }
  buffer_.resize(kPartialChunkFrameDataOffset + volume_->chunk_size_bytes());
  return Status();
}

std::pair<uint64_t, uint64_t> SenderSession::payload_of(const DeltaChunk& chunk, const ChunkGeometry& geometry) const {
  const uint64_t chunk_length = geometry.chunk_length_bytes(chunk.chunk_index);
  if (chunk.state == ChunkState::kZero) return {0, 1};
  if (chunk.dirty_sectors == kAllSectorsDirty) return {chunk_length, 1};
  uint64_t bytes = 0;
  uint64_t runs = 0;
  for_each_sector_run(volume_->chunk_size_bytes(), chunk_length, chunk.dirty_sectors, [&](uint64_t begin, uint64_t end) {
    bytes += end - begin;
    runs += 1;
  });
  return {bytes, runs};
}

Status SenderSession::send_next() {
  AMIRROR_ASSERT(phase_ == Phase::kStreaming);
  const ChunkGeometry geometry(opened_size_bytes_, volume_->chunk_size_bytes());
  hint_ahead(geometry);
  while (next_chunk_ < chunks_.size()) {
    const DeltaChunk& chunk = chunks_[next_chunk_];
    if (chunk.chunk_index >= geometry.chunk_count()) {
      // Written after a resize that came after OPEN_REPLICA: the next connection
      // opens the replica with the new size and sends it.
      return Status(ErrorCode::kBusy, "volume " + name_ + " grew while its delta to " + target_node_ +
                                          " was sent; the next attempt sends the new size");
    }
    if (chunk.state == ChunkState::kData && chunk.dirty_sectors != kAllSectorsDirty) {
      std::optional<SectorRun> run = next_run(chunk, geometry);
      if (!run) {
        ++next_chunk_;
        next_sector_ = 0;
        continue;
      }
      return send_run(chunk, geometry, *run);
    }
    ++next_chunk_;
    next_sector_ = 0;
    // The chunk is read straight into the frame it is sent in (no copy per chunk).
    std::span<uint8_t> content(buffer_.data() + kChunkFrameDataOffset, geometry.chunk_length_bytes(chunk.chunk_index));
    RecordKind kind = RecordKind::kZero;
    if (chunk.state == ChunkState::kData) {
      AMIRROR_RETURN_IF_ERROR(volume_->read_frozen(point_, geometry.chunk_offset_bytes(chunk.chunk_index), content));
      if (!all_zero(content)) kind = RecordKind::kData;
      bytes_done_ += content.size();
    }
    // A full copy starts from an empty (all-zero) replica: zero chunks need no record.
    if (begin_.full && kind == RecordKind::kZero) continue;
    std::span<uint8_t> frame(buffer_.data(), kChunkFrameDataOffset + (kind == RecordKind::kData ? content.size() : 0));
    seal_chunk_frame(frame, record_index_++, chunk.chunk_index, kind);
    return sink_.send_encoded(frame);
  }
  phase_ = Phase::kAwaitingDurable;
  return sink_.send(FrameType::kEndDelta, encode(EndDelta{record_index_, hold_}));
}

void SenderSession::hint_ahead(const ChunkGeometry& geometry) {
  const uint64_t window = std::max<uint64_t>(2, kReadAheadBytes / volume_->chunk_size_bytes());
  if (hinted_chunk_ > next_chunk_ + window / 2) return;  // still half a window ahead
  const uint64_t end = std::min<uint64_t>(chunks_.size(), next_chunk_ + window);
  // Whole chunks only: a chunk shipped as runs of dirty sectors reads just those, and
  // a hint for all of it would read the rest from the base for nothing.
  auto readable = [&](uint64_t i) {
    return chunks_[i].state == ChunkState::kData && chunks_[i].dirty_sectors == kAllSectorsDirty &&
           chunks_[i].chunk_index < geometry.chunk_count();
  };
  for (uint64_t i = std::max(hinted_chunk_, next_chunk_); i < end;) {
    if (!readable(i)) {
      ++i;
      continue;
    }
    // One hint per run of consecutive chunks.
    uint64_t last = i;
    while (last + 1 < end && readable(last + 1) && chunks_[last + 1].chunk_index == chunks_[last].chunk_index + 1) ++last;
    const uint64_t offset = geometry.chunk_offset_bytes(chunks_[i].chunk_index);
    const uint64_t stop = geometry.chunk_offset_bytes(chunks_[last].chunk_index) +
                          geometry.chunk_length_bytes(chunks_[last].chunk_index);
    volume_->will_read_frozen(point_, offset, stop - offset);
    i = last + 1;
  }
  hinted_chunk_ = std::max(hinted_chunk_, end);
}

// The next run of contiguous dirty sectors of `chunk` at or after next_sector_,
// clipped at the chunk's (volume-clipped) end; advances next_sector_ past it.
std::optional<SenderSession::SectorRun> SenderSession::next_run(const DeltaChunk& chunk, const ChunkGeometry& geometry) {
  const uint64_t sector_bytes = dirty_sector_bytes(volume_->chunk_size_bytes());
  const uint64_t chunk_length = geometry.chunk_length_bytes(chunk.chunk_index);
  uint64_t sector = next_sector_;
  while (sector < kMaxDirtySectorsPerChunk && !((chunk.dirty_sectors >> sector) & 1)) ++sector;
  if (sector >= kMaxDirtySectorsPerChunk || sector * sector_bytes >= chunk_length) return std::nullopt;
  uint64_t end = sector;
  while (end < kMaxDirtySectorsPerChunk && ((chunk.dirty_sectors >> end) & 1)) ++end;
  next_sector_ = end;
  const uint64_t offset = sector * sector_bytes;
  return SectorRun{offset, std::min(end * sector_bytes, chunk_length) - offset};
}

Status SenderSession::send_run(const DeltaChunk& chunk, const ChunkGeometry& geometry, const SectorRun& run) {
  // Read straight into the frame, as for whole chunks.
  std::span<uint8_t> content(buffer_.data() + kPartialChunkFrameDataOffset, run.length_bytes);
  AMIRROR_RETURN_IF_ERROR(
      volume_->read_frozen(point_, geometry.chunk_offset_bytes(chunk.chunk_index) + run.offset_in_chunk_bytes, content));
  bytes_done_ += run.length_bytes;
  partial_records_sent_ += 1;
  std::span<uint8_t> frame(buffer_.data(), kPartialChunkFrameDataOffset + run.length_bytes);
  seal_partial_chunk_frame(frame, record_index_++, chunk.chunk_index, static_cast<uint32_t>(run.offset_in_chunk_bytes));
  return sink_.send_encoded(frame);
}

Status SenderSession::on_applied(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(Applied applied, decode_applied(frame.payload));
  if (applied.applied_cycle != point_) {
    return corruption(target_node_ + " acknowledged cycle " + std::to_string(applied.applied_cycle) + ", expected " +
                      std::to_string(point_));
  }
  phase_ = Phase::kIdle;
  return host_.applied(name_, point_, begin_.freeze_time_unix_ms);
}

Status SenderSession::commit_group(const std::string& group) {
  AMIRROR_ASSERT(phase_ == Phase::kIdle);
  if (held_.empty()) return Status();
  phase_ = Phase::kAwaitingGroupApplied;
  return sink_.send(FrameType::kGroupCommit, encode(GroupCommit{group, held_}));
}

Status SenderSession::on_group_applied(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(GroupCommit applied, decode_group_commit(frame.payload, "GROUP_APPLIED"));
  if (applied.members.size() != held_.size()) {
    return corruption(target_node_ + " acknowledged " + std::to_string(applied.members.size()) + " of " +
                      std::to_string(held_.size()) + " group members");
  }
  for (size_t i = 0; i < held_.size(); ++i) {
    if (applied.members[i].volume != held_[i].volume || applied.members[i].cycle != held_[i].cycle) {
      return corruption(target_node_ + " acknowledged " + applied.members[i].volume + " at cycle " +
                        std::to_string(applied.members[i].cycle) + ", expected " + held_[i].volume + " at " +
                        std::to_string(held_[i].cycle));
    }
  }
  std::vector<GroupPoint> held = std::move(held_);
  held_.clear();
  phase_ = Phase::kIdle;
  for (const GroupPoint& member : held) {
    AMIRROR_RETURN_IF_ERROR(host_.applied(member.volume, member.cycle, member.freeze_time_unix_ms));
  }
  return Status();
}

}  // namespace amirror::repl
