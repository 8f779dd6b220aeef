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
// Format 2 adds each record's defined-sector mask; format 3 packs sectors into pieces
// (layer.h). Maps of formats 1 and 2 are still read and appended to in their format.
constexpr uint32_t kMapFormatVersion = 3;
constexpr uint32_t kMapFormatSlots = 2;
constexpr uint32_t kMapFormatWholeChunks = 1;
constexpr size_t kMapHeaderBytes = 40;      // magic, version, reserved, layer id, chunk size, checksum
constexpr uint32_t kBatchMagic = 0x31424d41;  // "AMB1"
constexpr size_t kBatchHeaderBytes = 16;    // magic, record count, sequence
constexpr size_t kRecordBytesV1 = 16;       // chunk index, slot (kZeroSlot = zeroed chunk)
constexpr size_t kRecordBytesV2 = 24;       // chunk index, slot, defined sectors
constexpr size_t kRecordBytesV3 = 32;       // chunk index, defined sectors (0 = zeroed), piece sectors, piece offset
constexpr uint64_t kNoPiece = std::numeric_limits<uint64_t>::max();
constexpr size_t kBatchTrailerBytes = 8;    // checksum of header + records
constexpr uint64_t kZeroSlot = std::numeric_limits<uint64_t>::max();
// Bounds that make a corrupt count or slot fail validation instead of driving
// allocations: one batch never holds more records than this, and no slot lies
// beyond 2^40 chunks.
constexpr uint32_t kMaxRecordsPerBatch = 1u << 20;
constexpr uint64_t kMaxSlot = 1ull << 40;
constexpr uint64_t kMaxPieceOffset = 1ull << 56;

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

// How many sectors a mask names.
uint64_t sector_count(uint64_t sectors) { return static_cast<uint64_t>(std::popcount(sectors)); }

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
    : fs_(fs),
      dir_(std::move(dir)),
      id_(id),
      chunk_size_bytes_(chunk_size_bytes),
      free_runs_(dirty_sector_bytes(chunk_size_bytes)) {}

size_t Layer::record_bytes() const {
  return packed() ? kRecordBytesV3 : sector_granular() ? kRecordBytesV2 : kRecordBytesV1;
}

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
  if (map_version_ != kMapFormatVersion && map_version_ != kMapFormatSlots && map_version_ != kMapFormatWholeChunks) {
    map_version_ = kMapFormatVersion;
  }
  std::string expected_header = encode_map_header(id_, chunk_size_bytes_, map_version_);
  if (std::memcmp(contents.data(), expected_header.data(), kMapHeaderBytes) != 0) {
    return corruption(where + " has a bad header (not a layer map of format 1, 2 or 3, or for another layer or " +
                      "chunk size)");
  }
  const size_t record_size = record_bytes();

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
      AMIRROR_RETURN_IF_ERROR(replay_record(header + kBatchHeaderBytes + uint64_t{i} * record_size, where));
    }
    sequence += 1;
    position += batch_bytes + kBatchTrailerBytes;
  }
  if (position != file_size_bytes) AMIRROR_RETURN_IF_ERROR(map_file_->truncate(position));
  map_end_bytes_ = position;
  batch_sequence_ = sequence;
  return rebuild_allocator(where);
}

Status Layer::replay_record(const uint8_t* record, const std::string& where) {
  const uint64_t full = full_sector_mask(chunk_size_bytes_);
  const uint64_t chunk_index = get_u64(record);
  const std::string chunk = where + ": chunk " + std::to_string(chunk_index);
  if (!packed()) {
    uint64_t slot = get_u64(record + 8);
    if (slot == kZeroSlot) {
      map_[chunk_index] = ChunkEntry{ChunkState::kZero, 0};
      return Status();
    }
    if (slot >= kMaxSlot) return corruption(where + ": slot " + std::to_string(slot) + " out of range");
    uint64_t defined = sector_granular() ? get_u64(record + 16) : kAllSectorsDirty;
    if ((defined & full) == 0) return corruption(chunk + " defines no sector");
    map_[chunk_index] = ChunkEntry{ChunkState::kData, slot, defined, defined};
    return Status();
  }
  const uint64_t defined = get_u64(record + 8);
  const Piece piece{get_u64(record + 16), get_u64(record + 24)};
  auto [it, inserted] = map_.try_emplace(chunk_index, ChunkEntry{ChunkState::kZero, 0});
  if (defined == 0) {  // zeroed: the chunk's pieces are free
    if (it->second.state == ChunkState::kData) {
      slot_pieces_[it->second.slot] = SlotPieces{};
      free_slots_.push_back(it->second.slot);
    }
    it->second = ChunkEntry{ChunkState::kZero, 0};
    return Status();
  }
  if ((defined & ~full) != 0) return corruption(chunk + " defines sectors past the chunk");
  if (inserted || it->second.state == ChunkState::kZero) it->second = ChunkEntry{ChunkState::kData, reserve_slot_locked()};
  SlotPieces& pieces = slot_pieces_[it->second.slot];
  if (piece.sectors != 0) {
    // A piece holding sectors placed before must hold them all: it replaces the
    // chunk's pieces (a chunk made whole, see place_locked).
    const bool replaces = (piece.sectors & pieces.placed) != 0;
    if ((piece.sectors & ~full) != 0 || (replaces && (pieces.placed & ~piece.sectors) != 0) ||
        piece.offset_bytes % sector_bytes() != 0 || piece.offset_bytes >= kMaxPieceOffset) {
      return corruption(chunk + " has a bad piece (sectors " + std::to_string(piece.sectors) + " at offset " +
                        std::to_string(piece.offset_bytes) + ")");
    }
    if (replaces) {
      pieces.pieces.clear();
      pieces.placed = 0;
    }
    pieces.pieces.push_back(piece);
    pieces.recorded = pieces.pieces.size();
    pieces.placed |= piece.sectors;
  }
  it->second.defined_sectors = defined;
  it->second.dirty_sectors = defined;
  return Status();
}

Status Layer::rebuild_allocator(const std::string& where) {
  if (packed()) {
    // Every defined sector has a place, and no two pieces overlap. The gaps between
    // pieces (space freed before the restart, or placed but never recorded) are free:
    // the replayed map is the durable one, so no durable record names them.
    std::vector<std::pair<uint64_t, uint64_t>> extents;  // offset, end
    for (const auto& [chunk_index, entry] : map_) {
      if (entry.state != ChunkState::kData) continue;
      const SlotPieces& pieces = slot_pieces_[entry.slot];
      if ((entry.defined_sectors & ~pieces.placed) != 0) {
        return corruption(where + ": chunk " + std::to_string(chunk_index) + " defines sectors it holds no piece for");
      }
      ++data_chunk_count_;
      for (const Piece& piece : pieces.pieces) {
        const uint64_t count = sector_count(piece.sectors);
        placed_sector_count_ += count;
        extents.emplace_back(piece.offset_bytes, piece.offset_bytes + count * sector_bytes());
      }
    }
    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i) {
      if (extents[i].first < extents[i - 1].second) {
        return corruption(where + ": data offset " + std::to_string(extents[i].first) + " is mapped twice");
      }
    }
    uint64_t free_from = 0;
    for (const auto& [offset, end] : extents) {
      // Pieces lie on the sector grid from offset 0, so gaps are whole sectors.
      if (offset > free_from) free_runs_.free(free_from, (offset - free_from) / sector_bytes());
      free_from = end;
    }
    data_end_bytes_ = free_from;
    return Status();
  }
  // Formats 1 and 2: every slot below the highest used one that no entry references
  // is free.
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
  return packed() ? placed_sector_count_ * std::min(sector_bytes(), chunk_size_bytes_)
                  : data_chunk_count_ * chunk_size_bytes_;
}

uint64_t Layer::dirty_bytes() const {
  const uint64_t full = full_sector_mask(chunk_size_bytes_);
  const uint64_t sector_bytes = std::min(dirty_sector_bytes(chunk_size_bytes_), chunk_size_bytes_);
  uint64_t sectors = 0;
  std::shared_lock lock(map_mutex_);
  for (const auto& [chunk_index, entry] : map_) {
    if (entry.state == ChunkState::kData) sectors += sector_count(entry.dirty_sectors & full);
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

Result<Layer::Segments> Layer::segments_locked(uint64_t slot, uint64_t offset_in_chunk_bytes,
                                              uint64_t length_bytes) const {
  const uint64_t sector = sector_bytes();
  const SlotPieces& pieces = slot_pieces_[slot];
  Segments segments;
  for (uint64_t at = offset_in_chunk_bytes, end = offset_in_chunk_bytes + length_bytes; at < end;) {
    const uint64_t index = at / sector;
    const uint64_t run_end = std::min((index + 1) * sector, end);
    auto piece = std::find_if(pieces.pieces.begin(), pieces.pieces.end(),
                              [&](const Piece& p) { return ((p.sectors >> index) & 1) != 0; });
    if (piece == pieces.pieces.end()) {
      return corruption("layer " + std::to_string(id_) + " of " + dir_ + " holds no place for sector " +
                        std::to_string(index) + " of slot " + std::to_string(slot));
    }
    const uint64_t rank = sector_count(piece->sectors & ((uint64_t{1} << index) - 1));
    const uint64_t file_offset = piece->offset_bytes + rank * sector + (at - index * sector);
    Segment* last = segments.count == 0 ? nullptr : &segments.items[segments.count - 1];
    if (last != nullptr && last->file_offset_bytes + last->length_bytes == file_offset) {
      last->length_bytes += run_end - at;
    } else {
      segments.items[segments.count++] = {file_offset, at, run_end - at};
    }
    at = run_end;
  }
  return segments;
}

uint64_t Layer::allocate_locked(uint64_t sector_count) {
  if (std::optional<uint64_t> offset = free_runs_.take(sector_count)) return *offset;
  const uint64_t offset = data_end_bytes_;
  data_end_bytes_ += sector_count * sector_bytes();
  return offset;
}

Status Layer::place_locked(uint64_t slot, uint64_t sectors) {
  SlotPieces& pieces = slot_pieces_[slot];
  const uint64_t added = sectors & ~pieces.placed;
  if (added == 0) return Status();
  if (pieces.pieces.size() < kMaxPiecesPerChunk) {
    const uint64_t count = sector_count(added);
    pieces.pieces.push_back({added, allocate_locked(count)});
    pieces.placed |= added;
    placed_sector_count_ += count;
    return Status();
  }
  // A chunk written piecemeal (a volume that is never frozen, taking random writes for
  // a long time) would scatter its sectors over many pieces and turn one read of it
  // into many. Its next piece is the whole chunk instead, in chunk order: the sectors
  // held so far are copied there (the others read as zeros until written), once per
  // chunk and layer. The old pieces stay until the record naming the new one is
  // durable (record_new_pieces_locked). Under the map lock: the copy is one chunk, and
  // happens at most once per chunk.
  const uint64_t sector = sector_bytes();
  const uint64_t whole = full_sector_mask(chunk_size_bytes_);
  const uint64_t count = sector_count(whole);
  std::vector<uint8_t> image(count * sector, 0);
  for (const Piece& piece : pieces.pieces) {
    std::vector<uint8_t> content(sector_count(piece.sectors) * sector);
    AMIRROR_RETURN_IF_ERROR(data_file_->read_at(piece.offset_bytes, content));
    uint64_t rank = 0;
    for (uint64_t index = 0; index < kMaxDirtySectorsPerChunk; ++index) {
      if (((piece.sectors >> index) & 1) == 0) continue;
      std::memcpy(image.data() + index * sector, content.data() + rank * sector, sector);
      ++rank;
    }
  }
  const uint64_t offset = allocate_locked(count);
  if (Status status = data_file_->write_at(offset, image); !status.ok()) {
    free_runs_.free(offset, count);
    return status;
  }
  note_data_written();
  placed_sector_count_ += count;
  pieces.superseded.insert(pieces.superseded.end(), pieces.pieces.begin(), pieces.pieces.end());
  pieces.pieces.assign(1, Piece{whole, offset});
  pieces.recorded = 0;
  pieces.placed = whole;
  return Status();
}

void Layer::free_piece_locked(const Piece& piece) {
  const uint64_t count = sector_count(piece.sectors);
  free_runs_.free(piece.offset_bytes, count);
  placed_sector_count_ -= count;
}

void Layer::free_pieces_locked(uint64_t slot) {
  SlotPieces& pieces = slot_pieces_[slot];
  for (const Piece& piece : pieces.pieces) free_piece_locked(piece);
  for (const Piece& piece : pieces.superseded) free_piece_locked(piece);
  pieces = SlotPieces{};
}

Status Layer::place_sectors(uint64_t slot, uint64_t sectors) {
  if (!packed()) return Status();
  AMIRROR_ASSERT(!frozen_.load());
  std::unique_lock lock(map_mutex_);
  return place_locked(slot, sectors);
}

Result<Layer::Segments> Layer::locate(uint64_t slot, uint64_t offset_in_chunk_bytes, uint64_t length_bytes,
                                      bool place) {
  // A frozen layer's pieces never change: no lock.
  if (frozen_.load(std::memory_order_acquire)) return segments_locked(slot, offset_in_chunk_bytes, length_bytes);
  const uint64_t touched = sectors_touched(chunk_size_bytes_, offset_in_chunk_bytes, length_bytes);
  {
    std::shared_lock lock(map_mutex_);
    if (!place || (touched & ~slot_pieces_[slot].placed) == 0) {
      return segments_locked(slot, offset_in_chunk_bytes, length_bytes);
    }
  }
  std::unique_lock lock(map_mutex_);
  AMIRROR_RETURN_IF_ERROR(place_locked(slot, touched));
  return segments_locked(slot, offset_in_chunk_bytes, length_bytes);
}

namespace {

// Joins file accesses that are back to back both in the file and in memory into one,
// issued by `issue(file_offset, bytes)` when the next access does not continue it.
template <typename Byte, typename Issue>
class RunJoiner {
 public:
  explicit RunJoiner(Issue issue) : issue_(std::move(issue)) {}
  Status add(uint64_t file_offset_bytes, Byte* memory, uint64_t length_bytes) {
    if (length_ != 0 && file_offset_ + length_ == file_offset_bytes && memory_ + length_ == memory) {
      length_ += length_bytes;
      return Status();
    }
    AMIRROR_RETURN_IF_ERROR(flush());
    file_offset_ = file_offset_bytes;
    memory_ = memory;
    length_ = length_bytes;
    return Status();
  }
  Status flush() {
    if (length_ == 0) return Status();
    const uint64_t length = length_;
    length_ = 0;
    return issue_(file_offset_, std::span<Byte>(memory_, length));
  }

 private:
  Issue issue_;
  uint64_t file_offset_ = 0;
  Byte* memory_ = nullptr;
  uint64_t length_ = 0;
};

template <typename Byte, typename Issue>
RunJoiner<Byte, Issue> make_joiner(Issue issue) {
  return RunJoiner<Byte, Issue>(std::move(issue));
}

}  // namespace

// Adds the file accesses of one slot part to `joiner`; `place` gives sectors without
// a place one first (a write).
template <typename Byte, typename Joiner>
Status Layer::join_slot_access(Joiner& joiner, uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<Byte> bytes,
                               bool place) {
  AMIRROR_ASSERT(offset_in_chunk_bytes + bytes.size() <= chunk_size_bytes_);
  if (bytes.empty()) return Status();
  if (!packed()) return joiner.add(slot * chunk_size_bytes_ + offset_in_chunk_bytes, bytes.data(), bytes.size());
  // A frozen layer has no place to give: its segments_locked refuses sectors without one.
  AMIRROR_ASSIGN_OR_RETURN(Segments segments, locate(slot, offset_in_chunk_bytes, bytes.size(), place));
  for (const Segment& segment : segments.view()) {
    AMIRROR_RETURN_IF_ERROR(joiner.add(segment.file_offset_bytes,
                                       bytes.data() + (segment.chunk_offset_bytes - offset_in_chunk_bytes),
                                       segment.length_bytes));
  }
  return Status();
}

Status Layer::read_slots(std::span<const SlotRead> reads) {
  auto joiner = make_joiner<uint8_t>(
      [this](uint64_t offset, std::span<uint8_t> out) { return data_file_->read_at(offset, out); });
  for (const SlotRead& read : reads) {
    AMIRROR_RETURN_IF_ERROR(join_slot_access(joiner, read.slot, read.offset_in_chunk_bytes, read.out, false));
  }
  return joiner.flush();
}

void Layer::hint_slot_read(uint64_t slot, uint64_t offset_in_chunk_bytes, uint64_t length_bytes, ReadHints& hints) {
  if (length_bytes == 0) return;
  if (!packed()) return hints.add(*data_file_, slot * chunk_size_bytes_ + offset_in_chunk_bytes, length_bytes);
  Result<Segments> segments = locate(slot, offset_in_chunk_bytes, length_bytes, /*place=*/false);
  if (!segments.ok()) return;  // sectors without a place: read from older layers
  for (const Segment& segment : segments.value().view()) {
    hints.add(*data_file_, segment.file_offset_bytes, segment.length_bytes);
  }
}

Status Layer::write_slots(std::span<const SlotWrite> writes) {
  auto joiner = make_joiner<const uint8_t>(
      [this](uint64_t offset, std::span<const uint8_t> data) { return data_file_->write_at(offset, data); });
  Status status;
  for (const SlotWrite& write : writes) {
    status = join_slot_access(joiner, write.slot, write.offset_in_chunk_bytes, write.data, true);
    if (!status.ok()) break;
  }
  if (status.ok()) status = joiner.flush();
  note_data_written();  // even after an error: some bytes may have been written
  return status;
}

Status Layer::read_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<uint8_t> out) {
  const SlotRead read{slot, offset_in_chunk_bytes, out};
  return read_slots(std::span(&read, 1));
}

Status Layer::write_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<const uint8_t> data) {
  const SlotWrite write{slot, offset_in_chunk_bytes, data};
  return write_slots(std::span(&write, 1));
}

void Layer::note_data_written() {
  // Set after the write completed: a sync that starts later must include it. Only
  // stored when clear, so steady writers do not bounce the cache line.
  if (!data_dirty_.load(std::memory_order_relaxed)) data_dirty_.store(true, std::memory_order_release);
}

uint64_t Layer::reserve_slot() {
  std::unique_lock lock(map_mutex_);
  return reserve_slot_locked();
}

uint64_t Layer::reserve_slot_locked() {
  if (!free_slots_.empty()) {
    uint64_t slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  if (packed()) slot_pieces_.emplace_back();
  return next_slot_++;
}

void Layer::release_slot(uint64_t slot) {
  std::unique_lock lock(map_mutex_);
  // Never named by a record: its pieces are free at once.
  if (packed()) free_pieces_locked(slot);
  free_slots_.push_back(slot);
}

void Layer::record_new_pieces_locked(uint64_t chunk_index, const ChunkEntry& entry) {
  SlotPieces& pieces = slot_pieces_[entry.slot];
  if (pieces.recorded == pieces.pieces.size()) {
    pending_records_.push_back({chunk_index, entry, Piece{}});
    return;
  }
  for (; pieces.recorded < pieces.pieces.size(); ++pieces.recorded) {
    pending_records_.push_back({chunk_index, entry, pieces.pieces[pieces.recorded]});
  }
  // The pieces a whole-chunk piece replaced are free once its record is durable.
  pending_free_pieces_.insert(pending_free_pieces_.end(), pieces.superseded.begin(), pieces.superseded.end());
  pieces.superseded.clear();
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
  if (packed()) {
    it->second.defined_sectors &= slot_pieces_[slot].placed;
    AMIRROR_ASSERT(it->second.defined_sectors != 0);
    record_new_pieces_locked(chunk_index, it->second);
    return;
  }
  pending_records_.push_back({chunk_index, it->second, Piece{}});
}

void Layer::mark_dirty(uint64_t chunk_index, uint64_t dirty_sectors) {
  AMIRROR_ASSERT(!frozen_.load());
  std::unique_lock lock(map_mutex_);
  auto it = map_.find(chunk_index);
  AMIRROR_ASSERT(it != map_.end() && it->second.state == ChunkState::kData);
  it->second.dirty_sectors |= dirty_sectors;
  const uint64_t defined =
      it->second.defined_sectors | (packed() ? dirty_sectors & slot_pieces_[it->second.slot].placed : dirty_sectors);
  if (!sector_granular() || defined == it->second.defined_sectors) return;
  it->second.defined_sectors = defined;
  if (packed()) {
    record_new_pieces_locked(chunk_index, it->second);
    return;
  }
  pending_records_.push_back({chunk_index, it->second, Piece{}});
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
  pending_records_.push_back({chunk_index, ChunkEntry{ChunkState::kZero, 0}, Piece{}});
}

Status Layer::sync() {
  std::lock_guard sync_lock(sync_mutex_);
  std::vector<PendingRecord> batch;
  std::vector<uint64_t> freed;
  std::vector<Piece> freed_pieces;
  {
    std::unique_lock lock(map_mutex_);
    batch.swap(pending_records_);
    freed.swap(pending_free_slots_);
    freed_pieces.swap(pending_free_pieces_);
  }
  auto restore = [&] {
    std::unique_lock lock(map_mutex_);
    batch.insert(batch.end(), pending_records_.begin(), pending_records_.end());
    pending_records_.swap(batch);
    freed.insert(freed.end(), pending_free_slots_.begin(), pending_free_slots_.end());
    pending_free_slots_.swap(freed);
    freed_pieces.insert(freed_pieces.end(), pending_free_pieces_.begin(), pending_free_pieces_.end());
    pending_free_pieces_.swap(freed_pieces);
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
      if (packed()) {
        append_u64(encoded, zero ? 0 : batch[i].entry.defined_sectors);
        append_u64(encoded, batch[i].piece.sectors);
        append_u64(encoded, batch[i].piece.sectors == 0 ? kNoPiece : batch[i].piece.offset_bytes);
        continue;
      }
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
  for (uint64_t slot : freed) {
    if (packed()) free_pieces_locked(slot);
    free_slots_.push_back(slot);
  }
  for (const Piece& piece : freed_pieces) free_piece_locked(piece);
  return Status();
}

Result<uint64_t> Layer::allocated_data_bytes() { return allocated_file_bytes(*data_file_); }

Status Layer::remove_files() {
  Status data_status = fs_.remove(dir_ + "/" + data_file_name(id_));
  Status map_status = fs_.remove(dir_ + "/" + map_file_name(id_));
  return data_status.ok() ? map_status : data_status;
}

}  // namespace amirror
