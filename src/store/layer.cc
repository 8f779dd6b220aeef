// SPDX-License-Identifier: Apache-2.0
// Layer files and the map log. Byte format: docs/formats/store.md ("Layer map file").
#include "store/layer.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "base/checksum.h"
#include "base/coding.h"

namespace amirror {
namespace {

constexpr char kMapMagic[8] = {'A', 'M', 'L', 'A', 'Y', 'M', 'A', 'P'};
// Format 2 adds each record's defined-sector mask; format 1 maps are still read and
// appended to (their records have no mask: whole chunks).
constexpr uint32_t kMapFormatVersion = 2;
constexpr uint32_t kMapFormatWholeChunks = 1;
constexpr size_t kMapHeaderBytes = 40;      // magic, version, reserved, layer id, chunk size, checksum
constexpr uint32_t kBatchMagic = 0x31424d41;  // "AMB1"
constexpr size_t kBatchHeaderBytes = 16;    // magic, record count, sequence
constexpr size_t kRecordBytesV1 = 16;       // chunk index, slot (kZeroSlot = zeroed chunk)
constexpr size_t kRecordBytesV2 = 24;       // chunk index, slot, defined sectors
constexpr size_t kBatchTrailerBytes = 8;    // checksum of header + records
constexpr uint64_t kZeroSlot = std::numeric_limits<uint64_t>::max();
// Bounds that make a corrupt count or slot fail validation instead of driving
// allocations: one batch never holds more records than this, and no slot lies
// beyond 2^40 chunks.
constexpr uint32_t kMaxRecordsPerBatch = 1u << 20;
constexpr uint64_t kMaxSlot = 1ull << 40;

std::string encode_map_header(uint64_t layer_id, uint64_t chunk_size_bytes, uint32_t version) {
  std::string header(kMapMagic, sizeof kMapMagic);
  append_u32(header, version);
  append_u32(header, 0);
  append_u64(header, layer_id);
  append_u64(header, chunk_size_bytes);
  append_u64(header, checksum64(header.data(), header.size()));
  AMIRROR_ASSERT(header.size() == kMapHeaderBytes);
  return header;
}

std::span<const uint8_t> as_bytes(const std::string& text) {
  return std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace

std::string Layer::data_file_name(uint64_t layer_id) {
  return "layer-" + std::to_string(layer_id) + ".data";
}
std::string Layer::map_file_name(uint64_t layer_id) {
  return "layer-" + std::to_string(layer_id) + ".map";
}

Layer::Layer(FileSystem& fs, std::string dir, uint64_t id, uint64_t chunk_size_bytes)
    : fs_(fs), dir_(std::move(dir)), id_(id), chunk_size_bytes_(chunk_size_bytes) {}

size_t Layer::record_bytes() const { return sector_granular() ? kRecordBytesV2 : kRecordBytesV1; }

Result<std::shared_ptr<Layer>> Layer::create(FileSystem& fs, const std::string& dir,
                                             uint64_t layer_id, uint64_t chunk_size_bytes,
                                             const std::string& reuse_data_path) {
  std::shared_ptr<Layer> layer(new Layer(fs, dir, layer_id, chunk_size_bytes));
  const std::string data_path = dir + "/" + data_file_name(layer_id);
  if (!reuse_data_path.empty() && fs.rename(reuse_data_path, data_path).ok()) {
    AMIRROR_ASSIGN_OR_RETURN(layer->data_file_, fs.open(data_path, OpenMode::kOpenExisting));
  } else {
    AMIRROR_ASSIGN_OR_RETURN(layer->data_file_, fs.open(data_path, OpenMode::kCreateNew));
  }
  AMIRROR_ASSIGN_OR_RETURN(layer->map_file_,
                           fs.open(dir + "/" + map_file_name(layer_id), OpenMode::kCreateNew));
  std::string header = encode_map_header(layer_id, chunk_size_bytes, kMapFormatVersion);
  AMIRROR_RETURN_IF_ERROR(layer->map_file_->write_at(0, as_bytes(header)));
  AMIRROR_RETURN_IF_ERROR(layer->map_file_->sync());
  layer->map_end_bytes_ = kMapHeaderBytes;
  return layer;
}

Result<std::shared_ptr<Layer>> Layer::open(FileSystem& fs, const std::string& dir,
                                           uint64_t layer_id, uint64_t chunk_size_bytes) {
  std::shared_ptr<Layer> layer(new Layer(fs, dir, layer_id, chunk_size_bytes));
  AMIRROR_ASSIGN_OR_RETURN(layer->data_file_,
                           fs.open(dir + "/" + data_file_name(layer_id), OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(layer->map_file_,
                           fs.open(dir + "/" + map_file_name(layer_id), OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t map_size, layer->map_file_->size_bytes());
  AMIRROR_RETURN_IF_ERROR(layer->replay_map(map_size));
  // A killed process may have left writes in the page cache that were never synced;
  // sync them now, before anything new is promised durable on top of them.
  AMIRROR_RETURN_IF_ERROR(layer->data_file_->sync());
  AMIRROR_RETURN_IF_ERROR(layer->map_file_->sync());
  return layer;
}

// Replays committed batches. A batch that is incomplete or fails its checksum ends
// the log: it is the torn tail of a sync that never returned, so nothing in it was
// promised durable. The file is truncated there so later batches follow valid ones.
Status Layer::replay_map(uint64_t file_size_bytes) {
  std::string where = dir_ + "/" + map_file_name(id_);
  if (file_size_bytes < kMapHeaderBytes) {
    return corruption(where + " is too short to be a layer map (" +
                      std::to_string(file_size_bytes) + " bytes)");
  }
  std::vector<uint8_t> contents(file_size_bytes);
  AMIRROR_RETURN_IF_ERROR(map_file_->read_at(0, contents));
  map_version_ = get_u32(contents.data() + sizeof kMapMagic);
  if (map_version_ != kMapFormatVersion && map_version_ != kMapFormatWholeChunks) map_version_ = kMapFormatVersion;
  std::string expected_header = encode_map_header(id_, chunk_size_bytes_, map_version_);
  if (std::memcmp(contents.data(), expected_header.data(), kMapHeaderBytes) != 0) {
    return corruption(where + " has a bad header (not a layer map of format 1 or 2, or for another layer or " +
                      "chunk size)");
  }
  const size_t record_size = record_bytes();
  const uint64_t full = full_sector_mask(chunk_size_bytes_);

  uint64_t position = kMapHeaderBytes;
  uint64_t sequence = 0;
  while (file_size_bytes - position >= kBatchHeaderBytes + kBatchTrailerBytes) {
    const uint8_t* header = contents.data() + position;
    uint32_t record_count = get_u32(header + 4);
    if (get_u32(header) != kBatchMagic || get_u64(header + 8) != sequence + 1 ||
        record_count > kMaxRecordsPerBatch) {
      break;
    }
    uint64_t batch_bytes = kBatchHeaderBytes + uint64_t{record_count} * record_size;
    if (file_size_bytes - position < batch_bytes + kBatchTrailerBytes) break;
    if (checksum64(header, batch_bytes) != get_u64(header + batch_bytes)) break;
    for (uint32_t i = 0; i < record_count; ++i) {
      const uint8_t* record = header + kBatchHeaderBytes + uint64_t{i} * record_size;
      uint64_t chunk_index = get_u64(record);
      uint64_t slot = get_u64(record + 8);
      if (slot == kZeroSlot) {
        map_[chunk_index] = ChunkEntry{ChunkState::kZero, 0};
      } else {
        if (slot >= kMaxSlot) return corruption(where + ": slot " + std::to_string(slot) + " out of range");
        uint64_t defined = sector_granular() ? get_u64(record + 16) : kAllSectorsDirty;
        if ((defined & full) == 0) {
          return corruption(where + ": chunk " + std::to_string(chunk_index) + " defines no sector");
        }
        map_[chunk_index] = ChunkEntry{ChunkState::kData, slot, defined, defined};
      }
    }
    sequence += 1;
    position += batch_bytes + kBatchTrailerBytes;
  }
  if (position != file_size_bytes) AMIRROR_RETURN_IF_ERROR(map_file_->truncate(position));
  map_end_bytes_ = position;
  batch_sequence_ = sequence;

  // Rebuild the slot allocator: every slot below the highest used one that no
  // entry references is free.
  std::vector<uint64_t> used;
  for (const auto& [chunk_index, entry] : map_) {
    if (entry.state == ChunkState::kData) used.push_back(entry.slot);
  }
  std::sort(used.begin(), used.end());
  for (size_t i = 1; i < used.size(); ++i) {
    if (used[i] == used[i - 1]) {
      return corruption(where + ": slot " + std::to_string(used[i]) + " is mapped twice");
    }
  }
  next_slot_ = used.empty() ? 0 : used.back() + 1;
  data_chunk_count_ = used.size();
  size_t used_index = 0;
  for (uint64_t slot = 0; slot < next_slot_; ++slot) {
    if (used_index < used.size() && used[used_index] == slot) {
      ++used_index;
    } else {
      free_slots_.push_back(slot);
    }
  }
  return Status();
}

std::optional<ChunkEntry> Layer::find(uint64_t chunk_index) const {
  if (frozen_.load(std::memory_order_acquire)) {
    auto it = map_.find(chunk_index);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  std::shared_lock lock(map_mutex_);
  auto it = map_.find(chunk_index);
  if (it == map_.end()) return std::nullopt;
  return it->second;
}

size_t Layer::chunk_count() const {
  std::shared_lock lock(map_mutex_);
  return map_.size();
}

uint64_t Layer::data_bytes() const {
  std::shared_lock lock(map_mutex_);
  return data_chunk_count_ * chunk_size_bytes_;
}

uint64_t Layer::dirty_bytes() const {
  const uint64_t full = full_sector_mask(chunk_size_bytes_);
  const uint64_t sector_bytes = std::min(dirty_sector_bytes(chunk_size_bytes_), chunk_size_bytes_);
  uint64_t sectors = 0;
  std::shared_lock lock(map_mutex_);
  for (const auto& [chunk_index, entry] : map_) {
    if (entry.state == ChunkState::kData) sectors += static_cast<uint64_t>(std::popcount(entry.dirty_sectors & full));
  }
  return sectors * sector_bytes;
}

std::vector<std::pair<uint64_t, ChunkEntry>> Layer::entries() const {
  std::vector<std::pair<uint64_t, ChunkEntry>> result;
  {
    std::shared_lock lock(map_mutex_);
    result.assign(map_.begin(), map_.end());
  }
  std::sort(result.begin(), result.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return result;
}

Status Layer::read_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<uint8_t> out) {
  AMIRROR_ASSERT(offset_in_chunk_bytes + out.size() <= chunk_size_bytes_);
  return data_file_->read_at(slot * chunk_size_bytes_ + offset_in_chunk_bytes, out);
}

Status Layer::write_slot(uint64_t slot, uint64_t offset_in_chunk_bytes,
                         std::span<const uint8_t> data) {
  AMIRROR_ASSERT(offset_in_chunk_bytes + data.size() <= chunk_size_bytes_);
  Status status = data_file_->write_at(slot * chunk_size_bytes_ + offset_in_chunk_bytes, data);
  // Set after the write completed: a sync that starts later must include it. Only
  // stored when clear, so steady writers do not bounce the cache line.
  if (!data_dirty_.load(std::memory_order_relaxed)) data_dirty_.store(true, std::memory_order_release);
  return status;
}

uint64_t Layer::reserve_slot() {
  std::unique_lock lock(map_mutex_);
  if (!free_slots_.empty()) {
    uint64_t slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  return next_slot_++;
}

void Layer::release_slot(uint64_t slot) {
  std::unique_lock lock(map_mutex_);
  free_slots_.push_back(slot);
}

void Layer::publish_data(uint64_t chunk_index, uint64_t slot, uint64_t dirty_sectors) {
  AMIRROR_ASSERT(!frozen_.load());
  AMIRROR_ASSERT(dirty_sectors != 0);
  std::unique_lock lock(map_mutex_);
  const uint64_t defined = sector_granular() ? dirty_sectors : kAllSectorsDirty;
  auto [it, inserted] = map_.try_emplace(chunk_index, ChunkEntry{ChunkState::kData, slot, dirty_sectors, defined});
  if (!inserted) {
    AMIRROR_ASSERT(it->second.state == ChunkState::kZero);
    // Zeroed earlier in this layer: relative to the point below, every sector changed
    // (and the slot holds them all: the caller filled it with zeros around the write).
    it->second = ChunkEntry{ChunkState::kData, slot, kAllSectorsDirty, kAllSectorsDirty};
  }
  ++data_chunk_count_;
  pending_records_.push_back({chunk_index, it->second});
}

void Layer::mark_dirty(uint64_t chunk_index, uint64_t dirty_sectors) {
  AMIRROR_ASSERT(!frozen_.load());
  std::unique_lock lock(map_mutex_);
  auto it = map_.find(chunk_index);
  AMIRROR_ASSERT(it != map_.end() && it->second.state == ChunkState::kData);
  it->second.dirty_sectors |= dirty_sectors;
  if (!sector_granular() || (it->second.defined_sectors | dirty_sectors) == it->second.defined_sectors) return;
  it->second.defined_sectors |= dirty_sectors;
  pending_records_.push_back({chunk_index, it->second});
}

void Layer::publish_zero(uint64_t chunk_index) {
  AMIRROR_ASSERT(!frozen_.load());
  std::unique_lock lock(map_mutex_);
  auto [it, inserted] = map_.try_emplace(chunk_index, ChunkEntry{ChunkState::kZero, 0});
  if (!inserted) {
    if (it->second.state == ChunkState::kZero) return;  // already zero, nothing to record
    pending_free_slots_.push_back(it->second.slot);
    --data_chunk_count_;
    it->second = ChunkEntry{ChunkState::kZero, 0};
  }
  pending_records_.push_back({chunk_index, ChunkEntry{ChunkState::kZero, 0}});
}

Status Layer::sync() {
  std::lock_guard sync_lock(sync_mutex_);
  std::vector<PendingRecord> batch;
  std::vector<uint64_t> freed;
  {
    std::unique_lock lock(map_mutex_);
    batch.swap(pending_records_);
    freed.swap(pending_free_slots_);
  }
  auto restore = [&] {
    std::unique_lock lock(map_mutex_);
    batch.insert(batch.end(), pending_records_.begin(), pending_records_.end());
    pending_records_.swap(batch);
    freed.insert(freed.end(), pending_free_slots_.begin(), pending_free_slots_.end());
    pending_free_slots_.swap(freed);
  };

  // Data first: a durable record must never point at content that is not durable.
  if (data_dirty_.exchange(false, std::memory_order_acq_rel) || !batch.empty()) {
    Status status = data_file_->sync();
    if (!status.ok()) {
      data_dirty_.store(true);
      restore();
      return status;
    }
  }
  if (batch.empty()) return Status();

  std::string encoded;
  encoded.reserve(batch.size() * record_bytes() + (batch.size() / kMaxRecordsPerBatch + 1) * 32);
  uint64_t sequence = batch_sequence_;
  for (size_t start = 0; start < batch.size(); start += kMaxRecordsPerBatch) {
    size_t count = std::min<size_t>(kMaxRecordsPerBatch, batch.size() - start);
    size_t batch_start = encoded.size();
    append_u32(encoded, kBatchMagic);
    append_u32(encoded, static_cast<uint32_t>(count));
    append_u64(encoded, ++sequence);
    for (size_t i = start; i < start + count; ++i) {
      append_u64(encoded, batch[i].chunk_index);
      const bool zero = batch[i].entry.state == ChunkState::kZero;
      append_u64(encoded, zero ? kZeroSlot : batch[i].entry.slot);
      if (sector_granular()) append_u64(encoded, zero ? 0 : batch[i].entry.defined_sectors);
    }
    append_u64(encoded, checksum64(encoded.data() + batch_start, encoded.size() - batch_start));
  }
  Status status = map_file_->write_at(map_end_bytes_, as_bytes(encoded));
  if (status.ok()) status = map_file_->sync();
  if (!status.ok()) {
    // The bytes written (if any) form an invalid tail that the next sync overwrites.
    restore();
    return status;
  }
  map_end_bytes_ += encoded.size();
  batch_sequence_ = sequence;
  std::unique_lock lock(map_mutex_);
  free_slots_.insert(free_slots_.end(), freed.begin(), freed.end());
  return Status();
}

Result<uint64_t> Layer::allocated_data_bytes() {
  AMIRROR_ASSIGN_OR_RETURN(uint64_t size, data_file_->size_bytes());
  if (size == 0) return uint64_t{0};
  AMIRROR_ASSIGN_OR_RETURN(std::vector<Extent> extents, data_file_->allocated_extents(0, size));
  uint64_t bytes = 0;
  for (const Extent& extent : extents) bytes += extent.length_bytes;
  return bytes;
}

Status Layer::remove_files() {
  Status data_status = fs_.remove(dir_ + "/" + data_file_name(id_));
  Status map_status = fs_.remove(dir_ + "/" + map_file_name(id_));
  return data_status.ok() ? map_status : data_status;
}

}  // namespace amirror
