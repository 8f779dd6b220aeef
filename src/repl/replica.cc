// SPDX-License-Identifier: Apache-2.0
// Byte formats: docs/formats/replica.md.
#include "repl/replica.h"

#include <chrono>
#include <cstring>

#include "base/assert.h"
#include "base/checksum.h"
#include "base/coding.h"
#include "base/names.h"
#include "base/units.h"

namespace amirror::repl {
namespace {

constexpr char kMetaMagic[8] = {'A', 'M', 'R', 'E', 'P', 'L', 'I', 'C'};
constexpr uint32_t kMetaVersion = 1;
// replica_meta's fixed part (docs/formats/replica.md): magic, version, reserved, four
// u64 fields, then two u32 name lengths and the checksum. The names add 1..64 bytes
// each; their lengths are checked field by field, not guessed here.
constexpr size_t kMetaHeaderBytes = 8 + 4 + 4 + 4 * 8;  // up to source_length
constexpr size_t kMetaChecksumBytes = 8;
constexpr size_t kMetaMinBytes = kMetaHeaderBytes + 4 + 4 + kMetaChecksumBytes;  // both names empty
constexpr char kStageMagic[8] = {'A', 'M', 'S', 'T', 'A', 'G', 'E', '1'};
constexpr size_t kStageHeaderBytes = 56;
constexpr uint32_t kRecordMagic = 0x31524d41;  // "AMR1"
constexpr size_t kRecordHeaderBytes = 40;
constexpr uint32_t kCommitMagic = 0x31434d41;  // "AMC1"
constexpr size_t kCommitBytes = 24;
constexpr const char* kMetaName = "replica.meta";
constexpr const char* kImageName = "replica.img";
constexpr const char* kStageName = "delta.stage";

std::span<const uint8_t> bytes_of(const std::string& text) {
  return std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

std::string encode_stage_header(const BeginDelta& begin) {
  std::string out(kStageMagic, 8);
  append_u64(out, begin.base_cycle);
  append_u64(out, begin.target_cycle);
  append_u64(out, static_cast<uint64_t>(begin.freeze_time_unix_ms));
  append_u64(out, begin.record_count);
  append_u64(out, begin.full ? 1 : 0);
  append_u64(out, checksum64(out.data(), out.size()));
  return out;
}

}  // namespace

Result<std::unique_ptr<Replica>> Replica::open_or_create(FileSystem& fs, const std::string& dir,
                                                         const std::string& source_node,
                                                         const std::string& volume, uint64_t size_bytes,
                                                         uint64_t chunk_size_bytes) {
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs.exists(dir + "/" + kMetaName));
  if (exists) {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Replica> replica, open(fs, dir));
    if (replica->size_bytes_ != size_bytes || replica->chunk_size_bytes_ != chunk_size_bytes) {
      return invalid_argument("replica " + source_node + "/" + volume + " is " +
                              std::to_string(replica->size_bytes_) + " bytes with " +
                              std::to_string(replica->chunk_size_bytes_) + "-byte chunks, but the source sends " +
                              std::to_string(size_bytes) + " bytes with " + std::to_string(chunk_size_bytes) +
                              "-byte chunks; remove the replica directory " + dir + " to start over");
    }
    return replica;
  }
  if (size_bytes == 0 || size_bytes % 512 != 0 || size_bytes > 64 * kTiB || !is_power_of_two(chunk_size_bytes) ||
      chunk_size_bytes < 4096 || chunk_size_bytes > 4 * kMiB) {
    return invalid_argument("bad replica geometry from the source: size " + std::to_string(size_bytes) +
                            ", chunk size " + std::to_string(chunk_size_bytes));
  }
  std::unique_ptr<Replica> replica(new Replica(fs, dir));
  replica->source_node_ = source_node;
  replica->volume_ = volume;
  replica->size_bytes_ = size_bytes;
  replica->chunk_size_bytes_ = chunk_size_bytes;
  AMIRROR_ASSIGN_OR_RETURN(replica->image_, fs.open(dir + "/" + kImageName, OpenMode::kOpenOrCreate));
  AMIRROR_RETURN_IF_ERROR(replica->image_->truncate(0));
  AMIRROR_RETURN_IF_ERROR(replica->image_->truncate(size_bytes));
  AMIRROR_RETURN_IF_ERROR(replica->image_->sync());
  AMIRROR_RETURN_IF_ERROR(replica->write_meta());
  return replica;
}

Result<std::unique_ptr<Replica>> Replica::open(FileSystem& fs, const std::string& dir) {
  std::unique_ptr<Replica> replica(new Replica(fs, dir));
  AMIRROR_RETURN_IF_ERROR(replica->load_meta());
  AMIRROR_ASSIGN_OR_RETURN(replica->image_, fs.open(dir + "/" + kImageName, OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t image_size, replica->image_->size_bytes());
  if (image_size != replica->size_bytes_) {
    return corruption(dir + "/" + kImageName + " is " + std::to_string(image_size) + " bytes, expected " +
                      std::to_string(replica->size_bytes_));
  }
  AMIRROR_ASSIGN_OR_RETURN(bool has_stage, fs.exists(dir + "/" + kStageName));
  if (has_stage) {
    std::lock_guard delta(replica->delta_mutex_);
    AMIRROR_RETURN_IF_ERROR(replica->scan_stage());
    if (replica->committed_) {
      // The commit record may not be durable (end_delta's fdatasync failed, then the
      // process restarted): make it so before acting on it, else a power loss after the
      // apply could bring this stage back without its commit, stale and "receiving".
      AMIRROR_RETURN_IF_ERROR(replica->stage_->sync());
      AMIRROR_RETURN_IF_ERROR(replica->apply_locked([] {}));
    }
  }
  return replica;
}

Status Replica::write_meta() {
  std::string meta(kMetaMagic, 8);
  append_u32(meta, kMetaVersion);
  append_u32(meta, 0);
  append_u64(meta, size_bytes_);
  append_u64(meta, chunk_size_bytes_);
  append_u64(meta, applied_cycle_);
  append_u64(meta, static_cast<uint64_t>(applied_freeze_time_unix_ms_));
  append_u32(meta, static_cast<uint32_t>(source_node_.size()));
  meta += source_node_;
  append_u32(meta, static_cast<uint32_t>(volume_.size()));
  meta += volume_;
  append_u64(meta, checksum64(meta.data(), meta.size()));
  // What load_meta() will accept: the same bound before writing as after reading.
  AMIRROR_ASSERT(meta.size() == kMetaMinBytes + source_node_.size() + volume_.size());
  return write_file_atomically(fs_, dir_, kMetaName, meta);
}

Status Replica::load_meta() {
  std::string where = dir_ + "/" + kMetaName;
  AMIRROR_ASSIGN_OR_RETURN(std::string meta, read_small_file(fs_, where, 4096));
  const auto* bytes = reinterpret_cast<const uint8_t*>(meta.data());
  if (meta.size() < kMetaMinBytes || std::memcmp(bytes, kMetaMagic, 8) != 0) {
    return corruption(where + " is not an amirror replica file");
  }
  const size_t checksum_at = meta.size() - kMetaChecksumBytes;
  if (checksum64(bytes, checksum_at) != get_u64(bytes + checksum_at)) {
    return corruption(where + " failed its checksum; the replica metadata is damaged");
  }
  if (get_u32(bytes + 8) != kMetaVersion) return corruption(where + ": unknown format version");
  size_bytes_ = get_u64(bytes + 16);
  chunk_size_bytes_ = get_u64(bytes + 24);
  applied_cycle_ = get_u64(bytes + 32);
  applied_freeze_time_unix_ms_ = static_cast<int64_t>(get_u64(bytes + 40));
  size_t position = kMetaHeaderBytes;
  auto read_name = [&](std::string& out) {
    if (checksum_at < position + 4) return false;
    uint32_t length = get_u32(bytes + position);
    position += 4;
    if (length > kMaxNameBytes || checksum_at < position + length) return false;
    out.assign(meta.data() + position, length);
    position += length;
    return true;
  };
  if (!read_name(source_node_) || !read_name(volume_) || position != checksum_at ||
      !validate_name(source_node_, "node name").ok() || !validate_name(volume_, "volume name").ok() ||
      !is_power_of_two(chunk_size_bytes_)) {
    return corruption(where + ": malformed replica metadata");
  }
  return Status();
}

ReplicaState Replica::state() const {
  std::shared_lock lock(state_mutex_);
  ReplicaState state;
  state.applied_cycle = applied_cycle_;
  state.applied_freeze_time_unix_ms = applied_freeze_time_unix_ms_;
  if (stage_valid_ && !committed_) {
    state.staged_target_cycle = stage_header_.target_cycle;
    state.staged_base_cycle = stage_header_.full ? 0 : stage_header_.base_cycle;
    state.staged_record_count = staged_records_;
    state.staged_last_chunk_index = last_staged_chunk_;
  }
  return state;
}

uint64_t Replica::readable_cycle() const {
  std::shared_lock lock(state_mutex_);
  return committed_ ? stage_header_.target_cycle : applied_cycle_;
}

std::string Replica::activity() const {
  std::shared_lock lock(state_mutex_);
  if (applying_) return "applying";
  if (committed_) return "committed";  // durable, waiting to be applied (or a retry of it)
  if (stage_valid_) return "receiving";
  return "idle";
}

Status Replica::scan_stage() {
  std::string where = dir_ + "/" + kStageName;
  AMIRROR_ASSIGN_OR_RETURN(stage_, fs_.open(where, OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t size, stage_->size_bytes());
  std::unique_lock lock(state_mutex_);
  stage_valid_ = false;
  committed_ = false;
  staged_records_ = 0;
  committed_index_.clear();
  staging_index_.clear();
  uint8_t header[kStageHeaderBytes];
  if (size < kStageHeaderBytes) {
    // Torn while being created: nothing was staged.
    stage_.reset();
    return fs_.remove(where);
  }
  AMIRROR_RETURN_IF_ERROR(stage_->read_at(0, header));
  if (std::memcmp(header, kStageMagic, 8) != 0 || checksum64(header, 48) != get_u64(header + 48)) {
    stage_.reset();
    return fs_.remove(where);  // an unfinished header: nothing was staged either
  }
  stage_header_.base_cycle = get_u64(header + 8);
  stage_header_.target_cycle = get_u64(header + 16);
  stage_header_.freeze_time_unix_ms = static_cast<int64_t>(get_u64(header + 24));
  stage_header_.record_count = get_u64(header + 32);
  stage_header_.full = get_u64(header + 40) == 1;
  stage_valid_ = true;

  uint64_t position = kStageHeaderBytes;
  std::vector<uint8_t> data;
  while (true) {
    uint8_t record[kRecordHeaderBytes];
    if (size - position < kCommitBytes) break;
    AMIRROR_RETURN_IF_ERROR(stage_->read_at(position, std::span(record, kCommitBytes)));
    if (get_u32(record) == kCommitMagic) {
      if (checksum64(record, 16) == get_u64(record + 16) && get_u64(record + 8) == staged_records_) {
        committed_ = true;
        position += kCommitBytes;
      }
      break;
    }
    if (size - position < kRecordHeaderBytes) break;
    AMIRROR_RETURN_IF_ERROR(stage_->read_at(position, std::span(record, kRecordHeaderBytes)));
    uint32_t data_bytes = get_u32(record + 24);
    uint64_t chunk_index = get_u64(record + 16);
    auto kind = static_cast<RecordKind>(record[4]);
    if (get_u32(record) != kRecordMagic || get_u64(record + 8) != staged_records_ ||
        data_bytes > chunk_size_bytes_ || size - position - kRecordHeaderBytes < data_bytes ||
        (staged_records_ > 0 && chunk_index <= last_staged_chunk_)) {
      break;
    }
    data.resize(data_bytes);
    AMIRROR_RETURN_IF_ERROR(stage_->read_at(position + kRecordHeaderBytes, data));
    uint64_t sum = checksum64(record, 32) ^ checksum64(data.data(), data.size());
    if (sum != get_u64(record + 32)) break;
    committed_index_[chunk_index] = {position + kRecordHeaderBytes, kind};
    last_staged_chunk_ = chunk_index;
    staged_records_ += 1;
    position += kRecordHeaderBytes + data_bytes;
  }
  stage_end_bytes_ = position;
  if (position != size) AMIRROR_RETURN_IF_ERROR(stage_->truncate(position));
  if (!committed_) committed_index_.swap(staging_index_);  // only a committed delta is served
  return Status();
}

Status Replica::begin_delta(const BeginDelta& begin) {
  std::lock_guard delta(delta_mutex_);
  std::string where = dir_ + "/" + kStageName;
  {
    std::shared_lock lock(state_mutex_);
    if (!begin.full && begin.base_cycle != applied_cycle_) {
      return invalid_argument("refusing delta " + std::to_string(begin.base_cycle) + "->" +
                              std::to_string(begin.target_cycle) + " for replica " + source_node_ + "/" +
                              volume_ + ": the replica is at cycle " + std::to_string(applied_cycle_) +
                              " (replayed, duplicated or out-of-order delta)");
    }
    if (begin.target_cycle <= applied_cycle_ && !begin.full) {
      return invalid_argument("refusing delta to cycle " + std::to_string(begin.target_cycle) +
                              ": the replica already has cycle " + std::to_string(applied_cycle_));
    }
  }
  if (begin.first_record > 0) {
    // Resume: the stage must hold this very delta with at least that many records.
    std::unique_lock lock(state_mutex_);
    if (!stage_valid_ || committed_ || stage_header_.base_cycle != begin.base_cycle ||
        stage_header_.target_cycle != begin.target_cycle || stage_header_.full != begin.full ||
        staged_records_ != begin.first_record) {
      return invalid_argument("cannot resume delta to cycle " + std::to_string(begin.target_cycle) +
                              " at record " + std::to_string(begin.first_record) +
                              ": the staged delta does not match; the source must restart it");
    }
    stage_header_.record_count = begin.record_count;
    return Status();
  }
  // A fresh delta replaces whatever was staged. If the old stage cannot be removed,
  // that is the error to report (not the "File exists" of creating the new one over
  // it), and the old stage stays what the replica holds, in memory as on disk.
  Status removed = fs_.remove(where);
  if (!removed.ok() && removed.code() != ErrorCode::kNotFound) return removed.with_context("replacing the staged delta");
  {
    std::unique_lock lock(state_mutex_);
    stage_.reset();
    stage_valid_ = false;
    committed_ = false;
    committed_index_.clear();
    staging_index_.clear();
    staged_records_ = 0;
  }
  // Durably gone before anything new is staged: the old stage may carry a commit record
  // (written before a failed sync), and a power loss that brought it back would apply a
  // delta the source no longer has in flight.
  if (removed.ok()) AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_).with_context("replacing the staged delta"));
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> stage, fs_.open(where, OpenMode::kCreateNew));
  std::string header = encode_stage_header(begin);
  AMIRROR_RETURN_IF_ERROR(stage->write_at(0, bytes_of(header)));
  std::unique_lock lock(state_mutex_);
  stage_ = std::move(stage);
  stage_header_ = begin;
  stage_valid_ = true;
  stage_end_bytes_ = kStageHeaderBytes;
  return Status();
}

Status Replica::stage(const ChunkRecord& record) {
  std::lock_guard delta(delta_mutex_);
  uint64_t chunk_count = (size_bytes_ + chunk_size_bytes_ - 1) / chunk_size_bytes_;
  uint64_t expected_bytes = 0;
  {
    std::shared_lock lock(state_mutex_);
    if (!stage_valid_ || committed_) return invalid_argument("CHUNK outside a delta");
    if (record.record_index != staged_records_) {
      return invalid_argument("CHUNK record " + std::to_string(record.record_index) + " out of sequence (expected " +
                              std::to_string(staged_records_) + ")");
    }
    if (record.chunk_index >= chunk_count || (staged_records_ > 0 && record.chunk_index <= last_staged_chunk_)) {
      return invalid_argument("CHUNK for chunk " + std::to_string(record.chunk_index) +
                              " is out of range or out of order");
    }
    expected_bytes = std::min<uint64_t>(chunk_size_bytes_, size_bytes_ - record.chunk_index * chunk_size_bytes_);
  }
  if (record.kind == RecordKind::kData && record.data.size() != expected_bytes) {
    return invalid_argument("CHUNK data for chunk " + std::to_string(record.chunk_index) + " is " +
                            std::to_string(record.data.size()) + " bytes, expected " + std::to_string(expected_bytes));
  }
  uint32_t data_bytes = record.kind == RecordKind::kData ? static_cast<uint32_t>(record.data.size()) : 0;
  std::vector<uint8_t> buffer(kRecordHeaderBytes + data_bytes);
  put_u32(buffer.data(), kRecordMagic);
  buffer[4] = static_cast<uint8_t>(record.kind);
  buffer[5] = buffer[6] = buffer[7] = 0;
  put_u64(buffer.data() + 8, record.record_index);
  put_u64(buffer.data() + 16, record.chunk_index);
  put_u32(buffer.data() + 24, data_bytes);
  put_u32(buffer.data() + 28, 0);
  if (data_bytes > 0) std::memcpy(buffer.data() + kRecordHeaderBytes, record.data.data(), data_bytes);
  put_u64(buffer.data() + 32, checksum64(buffer.data(), 32) ^ checksum64(buffer.data() + kRecordHeaderBytes, data_bytes));
  AMIRROR_RETURN_IF_ERROR(stage_->write_at(stage_end_bytes_, buffer));
  std::unique_lock lock(state_mutex_);
  staging_index_[record.chunk_index] = {stage_end_bytes_ + kRecordHeaderBytes, record.kind};
  stage_end_bytes_ += buffer.size();
  staged_records_ += 1;
  last_staged_chunk_ = record.chunk_index;
  return Status();
}

Status Replica::end_delta(uint64_t record_count) {
  std::lock_guard delta(delta_mutex_);
  {
    std::shared_lock lock(state_mutex_);
    if (!stage_valid_ || committed_) return invalid_argument("END_DELTA outside a delta");
    if (record_count != staged_records_) {
      return invalid_argument("END_DELTA says " + std::to_string(record_count) + " records, but " +
                              std::to_string(staged_records_) + " were staged");
    }
  }
  AMIRROR_RETURN_IF_ERROR(stage_->sync());
  std::string commit;
  append_u32(commit, kCommitMagic);
  append_u32(commit, 0);
  append_u64(commit, record_count);
  append_u64(commit, checksum64(commit.data(), commit.size()));
  AMIRROR_RETURN_IF_ERROR(stage_->write_at(stage_end_bytes_, bytes_of(commit)));
  AMIRROR_RETURN_IF_ERROR(stage_->sync());
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_));
  // The index built while staging now serves reads until the apply is done.
  std::unique_lock lock(state_mutex_);
  stage_end_bytes_ += commit.size();
  committed_ = true;
  committed_index_.swap(staging_index_);
  staging_index_.clear();
  return Status();
}

Status Replica::apply(const std::function<void()>& progress) {
  std::lock_guard delta(delta_mutex_);
  return apply_locked(progress);
}

Status Replica::apply_locked(const std::function<void()>& progress) {
  BeginDelta header;
  std::map<uint64_t, StagedRecord> index;
  {
    std::unique_lock lock(state_mutex_);
    if (!committed_) return invalid_argument("no committed delta to apply");
    header = stage_header_;
    index = committed_index_;
    if (applied_cycle_ == header.target_cycle) {
      // Applied before a crash, only the stage removal was lost.
      stage_.reset();
      stage_valid_ = committed_ = false;
      committed_index_.clear();
      return fs_.remove(dir_ + "/" + kStageName);
    }
    if (!header.full && applied_cycle_ != header.base_cycle) {
      return corruption("staged delta " + std::to_string(header.base_cycle) + "->" +
                        std::to_string(header.target_cycle) + " does not fit replica cycle " +
                        std::to_string(applied_cycle_));
    }
    applying_ = true;
  }
  auto finish = [&](Status status) {
    std::unique_lock lock(state_mutex_);
    applying_ = false;
    return status;
  };
  if (header.full) {
    Status status = image_->punch_hole(0, size_bytes_);
    if (!status.ok()) return finish(status);
  }
  std::vector<uint8_t> data(chunk_size_bytes_);
  auto last_progress = std::chrono::steady_clock::now();
  for (const auto& [chunk_index, record] : index) {
    uint64_t offset = chunk_index * chunk_size_bytes_;
    uint64_t length = std::min<uint64_t>(chunk_size_bytes_, size_bytes_ - offset);
    Status status;
    if (record.kind == RecordKind::kZero) {
      status = image_->punch_hole(offset, length);
    } else {
      status = stage_->read_at(record.file_offset_bytes, std::span(data.data(), length));
      if (status.ok()) status = image_->write_at(offset, std::span(data.data(), length));
    }
    if (!status.ok()) return finish(status.with_context("apply to " + image_path()));
    if (std::chrono::steady_clock::now() - last_progress > std::chrono::seconds(1)) {
      progress();
      last_progress = std::chrono::steady_clock::now();
    }
  }
  Status status = image_->sync();
  if (!status.ok()) return finish(status);
  {
    std::unique_lock lock(state_mutex_);
    uint64_t previous_cycle = applied_cycle_;
    int64_t previous_time = applied_freeze_time_unix_ms_;
    applied_cycle_ = header.target_cycle;
    applied_freeze_time_unix_ms_ = header.freeze_time_unix_ms;
    status = write_meta();
    if (!status.ok()) {
      applied_cycle_ = previous_cycle;
      applied_freeze_time_unix_ms_ = previous_time;
      applying_ = false;
      return status;
    }
    stage_.reset();
    stage_valid_ = committed_ = applying_ = false;
    committed_index_.clear();
  }
  return fs_.remove(dir_ + "/" + kStageName);
}

Status Replica::repair_chunks(uint64_t cycle, std::span<const RepairChunk> chunks) {
  std::lock_guard delta(delta_mutex_);
  {
    std::shared_lock lock(state_mutex_);
    if (stage_valid_ || committed_ || applying_ || applied_cycle_ != cycle) {
      const char* activity = applying_ ? "applying" : committed_ ? "committed" : stage_valid_ ? "receiving" : "idle";
      return invalid_argument("refusing to repair replica " + source_node_ + "/" + volume_ + " at cycle " +
                              std::to_string(cycle) + ": it is " + activity + " at cycle " +
                              std::to_string(applied_cycle_));
    }
  }
  const uint64_t chunk_count = (size_bytes_ + chunk_size_bytes_ - 1) / chunk_size_bytes_;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const RepairChunk& chunk = chunks[i];
    if (chunk.chunk_index >= chunk_count || (i > 0 && chunk.chunk_index <= chunks[i - 1].chunk_index)) {
      return invalid_argument("repair of chunk " + std::to_string(chunk.chunk_index) +
                              " is out of range or out of order");
    }
    uint64_t length = std::min<uint64_t>(chunk_size_bytes_, size_bytes_ - chunk.chunk_index * chunk_size_bytes_);
    if (!chunk.data.empty() && chunk.data.size() != length) {
      return invalid_argument("repair data for chunk " + std::to_string(chunk.chunk_index) + " is " +
                              std::to_string(chunk.data.size()) + " bytes, expected " + std::to_string(length));
    }
  }
  for (const RepairChunk& chunk : chunks) {
    uint64_t offset = chunk.chunk_index * chunk_size_bytes_;
    uint64_t length = std::min<uint64_t>(chunk_size_bytes_, size_bytes_ - offset);
    Status status = chunk.data.empty() ? image_->punch_hole(offset, length) : image_->write_at(offset, chunk.data);
    if (!status.ok()) return status.with_context("repair of " + image_path());
  }
  return image_->sync().with_context("repair of " + image_path());
}

Status Replica::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  if (offset_bytes > size_bytes_ || out.size() > size_bytes_ - offset_bytes) {
    return out_of_range("read beyond the replica's end");
  }
  std::shared_lock lock(state_mutex_);
  if (!committed_) return image_->read_at(offset_bytes, out);
  // A committed delta is being applied: its chunks come from the stage; others from
  // the image (or are zero for a full delta, which replaces the whole image).
  uint64_t done = 0;
  while (done < out.size()) {
    uint64_t position = offset_bytes + done;
    uint64_t chunk_index = position / chunk_size_bytes_;
    uint64_t in_chunk = position % chunk_size_bytes_;
    uint64_t length = std::min<uint64_t>(chunk_size_bytes_ - in_chunk, out.size() - done);
    std::span<uint8_t> piece = out.subspan(done, length);
    auto it = committed_index_.find(chunk_index);
    if (it != committed_index_.end()) {
      if (it->second.kind == RecordKind::kZero) {
        std::memset(piece.data(), 0, length);
      } else {
        AMIRROR_RETURN_IF_ERROR(stage_->read_at(it->second.file_offset_bytes + in_chunk, piece));
      }
    } else if (stage_header_.full) {
      std::memset(piece.data(), 0, length);
    } else {
      AMIRROR_RETURN_IF_ERROR(image_->read_at(position, piece));
    }
    done += length;
  }
  return Status();
}

Result<std::vector<Extent>> Replica::allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) {
  if (offset_bytes > size_bytes_ || length_bytes > size_bytes_ - offset_bytes) {
    return out_of_range("extent query beyond the replica's end");
  }
  std::shared_lock lock(state_mutex_);
  if (committed_) return std::vector<Extent>{{offset_bytes, length_bytes}};  // conservative while applying
  return image_->allocated_extents(offset_bytes, length_bytes);
}

}  // namespace amirror::repl
