// SPDX-License-Identifier: Apache-2.0
// A layer: the chunks written to a volume between two freezes (the patent's local
// auxiliary volume AVL_s with its freeze table). On disk it is two files
// (docs/formats/store.md):
//   layer-<id>.data  the content of the sectors the map defines (format 3: packed;
//                    formats 1 and 2: slot i holds one chunk at offset i * chunk_size)
//   layer-<id>.map   append-only log of committed batches of chunk-map records
//
// The chunk map says, for each chunk the layer holds, either kData (content in a
// slot) or kZero (the chunk was trimmed or zeroed as a whole: reads as zero, no slot).
// A chunk absent from the map is unchanged in this layer (the patent's -1).
//
// Sectors (map format 2): each kData entry also says which sectors of the chunk this
// layer defines (defined_sectors, one bit per sector of dirty_sector_bytes(chunk
// size): chunk/64, at least 4 KiB). Only those sectors of its slot hold content; the
// others read through to the layers below (and the base), so a 4 KiB write into a
// 64 KiB chunk writes 4 KiB, not a copy of the whole chunk, and a merge writes only
// the defined sectors. The mask is persisted in the map record, so it survives a
// restart. dirty_sectors (what the sender ships) equals it in format 2.
// Format 1 layers (written by amirror before sectors existed) hold whole chunks:
// every entry defines every sector, the dirty mask lives in memory only (a reopened
// format-1 layer reports every chunk fully dirty), and Volume fills their slots whole
// (sector_granular() is false).
//
// Packed sectors (map format 3, every layer created now): a slot is a handle, not a
// place in the data file. Each slot owns pieces: runs of data-file space holding some
// of its chunk's sectors in ascending order, one after another. A sector is given a
// place the first time it is written (place_sectors, or write_slot); later writes go
// to the same place. So the data file holds only sectors that were written, packed
// from its start, instead of one sparse chunk-sized slot per chunk: a layer of
// scattered 4 KiB writes into 64 KiB chunks is 16x smaller, has few extents, and a
// reused spare data file (Volume) is written over instead of growing. Each record
// names one new piece and the chunk's defined mask (docs/formats/store.md).
// Free space (a zeroed chunk's pieces, once durable) is reused, best fit, with freed
// neighbours joined (store/free_runs.h); a layer reopened after a restart finds it
// again as the gaps between its pieces. A chunk that would get a
// fifth piece gets one whole-chunk piece instead (its sectors copied there, in chunk
// order), so a chunk written piecemeal for a long time still reads with one call.
//
// Durability protocol (why it is crash-safe):
//  - New map entries are visible in memory at once but reach the .map file only in
//    sync(): first the .data file is fdatasync'ed, then the batch of new records is
//    appended and the .map file fdatasync'ed. So a durable record never points at a
//    slot whose content is not durable.
//  - A slot freed by a kData -> kZero change is reused only after the record of that
//    change is durable, so the durable map never points at a slot someone else
//    overwrote.
//  - A torn batch at the end of the .map file (crash during sync) fails its checksum
//    and is dropped on open: the layer comes back as of its last completed sync.
//
// Thread-safety: all methods are thread-safe. Callers serialize the first write to
// a given chunk (Volume does, with striped locks); see Volume.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/file_system.h"
#include "store/free_runs.h"

namespace amirror {

enum class ChunkState : uint8_t { kData = 1, kZero = 2 };

// Sub-chunk dirty tracking: a chunk has at most 64 sectors of at least 4 KiB, so a
// mask is one u64 (bit i = sector i). 64 KiB chunks: 16 sectors of 4 KiB; 4 KiB
// chunks: one; 4 MiB chunks: 64 sectors of 64 KiB.
constexpr uint64_t kMinDirtySectorBytes = 4096;
constexpr uint64_t kMaxDirtySectorsPerChunk = 64;
constexpr uint64_t kAllSectorsDirty = ~uint64_t{0};
constexpr uint64_t dirty_sector_bytes(uint64_t chunk_size_bytes) {
  return chunk_size_bytes / kMaxDirtySectorsPerChunk > kMinDirtySectorBytes
             ? chunk_size_bytes / kMaxDirtySectorsPerChunk
             : kMinDirtySectorBytes;
}
// The mask with every sector of a chunk set (the bits a full chunk has).
constexpr uint64_t full_sector_mask(uint64_t chunk_size_bytes) {
  uint64_t sectors = (chunk_size_bytes + dirty_sector_bytes(chunk_size_bytes) - 1) /
                     dirty_sector_bytes(chunk_size_bytes);
  return sectors >= 64 ? kAllSectorsDirty : (uint64_t{1} << sectors) - 1;
}
// The sectors that [offset, offset + length) within a chunk touches. REQUIRES: length > 0.
constexpr uint64_t sectors_touched(uint64_t chunk_size_bytes, uint64_t offset_in_chunk_bytes,
                                   uint64_t length_bytes) {
  uint64_t sector = dirty_sector_bytes(chunk_size_bytes);
  uint64_t first = offset_in_chunk_bytes / sector;
  uint64_t last = (offset_in_chunk_bytes + length_bytes - 1) / sector;
  uint64_t upper = last >= 63 ? kAllSectorsDirty : (uint64_t{1} << (last + 1)) - 1;
  return upper & ~((uint64_t{1} << first) - 1);
}

// Calls fn(begin, end) for each run of consecutive sectors set in `sectors`, as byte
// offsets within a chunk of `chunk_length_bytes` (a volume's last chunk may be short):
// runs are clipped to it, and runs wholly past it are skipped.
template <typename Fn>
void for_each_sector_run(uint64_t chunk_size_bytes, uint64_t chunk_length_bytes, uint64_t sectors, Fn&& fn) {
  const uint64_t sector_bytes = dirty_sector_bytes(chunk_size_bytes);
  uint64_t sector = 0;
  while (sector < kMaxDirtySectorsPerChunk && sector * sector_bytes < chunk_length_bytes) {
    if (((sectors >> sector) & 1) == 0) {
      ++sector;
      continue;
    }
    uint64_t end = sector + 1;
    while (end < kMaxDirtySectorsPerChunk && ((sectors >> end) & 1) != 0) ++end;
    fn(sector * sector_bytes, std::min(end * sector_bytes, chunk_length_bytes));
    sector = end;
  }
}

struct ChunkEntry {
  ChunkState state = ChunkState::kData;
  uint64_t slot = 0;  // meaningful only for kData
  // kData only: sectors changed in this layer (what a delta ships). kZero entries
  // changed the whole chunk.
  uint64_t dirty_sectors = kAllSectorsDirty;
  // kData only: sectors whose content is in the slot; the others read from below.
  uint64_t defined_sectors = kAllSectorsDirty;
};

class Layer {
 public:
  // Creates empty layer files; fails if they exist. With `reuse_data_path` naming an
  // existing file (if it cannot be renamed, a new file is created) (a merged layer's data file kept as a spare), that file becomes the
  // data file, renamed: its blocks are written over instead of freed and allocated
  // again. Its old bytes are never read: a slot is read only after the write a record
  // names.
  static Result<std::shared_ptr<Layer>> create(FileSystem& fs, const std::string& dir,
                                               uint64_t layer_id, uint64_t chunk_size_bytes,
                                               const std::string& reuse_data_path = "");
  // Opens existing layer files and replays the map log.
  static Result<std::shared_ptr<Layer>> open(FileSystem& fs, const std::string& dir,
                                             uint64_t layer_id, uint64_t chunk_size_bytes);
  static std::string data_file_name(uint64_t layer_id);
  static std::string map_file_name(uint64_t layer_id);

  uint64_t id() const { return id_; }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }
  // Formats 2 and 3: entries may define only some sectors (see above). Format 1: whole chunks.
  bool sector_granular() const { return map_version_ >= 2; }
  // Format 3: sectors packed into pieces (see above).
  bool packed() const { return map_version_ >= 3; }

  std::optional<ChunkEntry> find(uint64_t chunk_index) const;
  // Declares the layer immutable (it was frozen and synced): later lookups skip the
  // map lock. REQUIRES: no further publish_* calls, and write_slot only to slot bytes
  // outside every chunk's content (Volume::resize zeroing the tail of a slot that holds
  // a volume's old short last chunk).
  void mark_frozen() { frozen_.store(true, std::memory_order_release); }
  size_t chunk_count() const;
  // A sorted copy of the map: (chunk_index, entry).
  std::vector<std::pair<uint64_t, ChunkEntry>> entries() const;
  // Bytes of data-file space in use: placed sectors (format 3), else kData entries
  // times chunk size.
  uint64_t data_bytes() const;
  // Bytes of the kData entries' dirty sectors (what a delta of this layer alone ships).
  uint64_t dirty_bytes() const;

  // Reads part of a slot. REQUIRES: slot belongs to a kData entry of this layer, and
  // (format 3) every sector read was written (it is defined).
  Status read_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<uint8_t> out);
  // Writes part of a slot in place. Format 3: sectors without a place get one (a new
  // piece); a frozen layer refuses that (it writes only sectors it holds).
  Status write_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<const uint8_t> data);
  // One part of a batched slot access: bytes [offset_in_chunk, +size) of the slot.
  struct SlotRead {
    uint64_t slot;
    uint64_t offset_in_chunk_bytes;
    std::span<uint8_t> out;
  };
  struct SlotWrite {
    uint64_t slot;
    uint64_t offset_in_chunk_bytes;
    std::span<const uint8_t> data;
  };
  // As read_slot / write_slot for each part, but parts that lie back to back both in
  // the data file and in memory go in one system call: consecutive chunks written in
  // order sit together in the file, so a 1 MiB client request costs one pread or
  // pwrite instead of one per chunk. write_slots places new sectors part by part, in
  // order, so the new pieces of consecutive parts are adjacent too.
  Status read_slots(std::span<const SlotRead> reads);
  // Adds to `hints` where that part of the slot lies in the data file (read ahead; a
  // part with sectors this layer does not define is skipped).
  void hint_slot_read(uint64_t slot, uint64_t offset_in_chunk_bytes, uint64_t length_bytes, ReadHints& hints);
  Status write_slots(std::span<const SlotWrite> writes);
  // Format 3: gives the slot's `sectors` that have no place one new piece, so sectors
  // about to be written by several write_slot calls lie together. No-op otherwise.
  // REQUIRES: not frozen; the caller serializes changes to this slot.
  // A chunk's fifth piece is the whole chunk instead (its sectors copied there), so a
  // chunk has at most kMaxPiecesPerChunk pieces.
  Status place_sectors(uint64_t slot, uint64_t sectors);
  static constexpr size_t kMaxPiecesPerChunk = 4;

  // Reserves a free slot for a chunk about to be written for the first time. Pair
  // with publish_data() once the slot holds the chunk's full content, or
  // release_slot() if writing it failed.
  uint64_t reserve_slot();
  void release_slot(uint64_t slot);
  // Makes chunk_index -> kData(slot) visible, with `dirty_sectors` the sectors the
  // write changed. In a sector-granular layer the slot holds exactly those sectors
  // (after a kZero entry: every sector); else the whole chunk. Format 3 defines only
  // sectors that were written (none past a short last chunk's end). REQUIRES: chunk
  // absent or kZero; the slot's content written first.
  void publish_data(uint64_t chunk_index, uint64_t slot, uint64_t dirty_sectors = kAllSectorsDirty);
  // Adds sectors to a kData entry's masks (a later write to a chunk the layer holds);
  // in a sector-granular layer they become defined, recorded at the next sync.
  // REQUIRES: not frozen; the caller serializes changes to this chunk and wrote the
  // added sectors' whole content into the slot first.
  void mark_dirty(uint64_t chunk_index, uint64_t dirty_sectors);
  // Makes chunk_index -> kZero visible (freeing its slot once that is durable).
  void publish_zero(uint64_t chunk_index);

  // Makes every write and map change completed before the call durable.
  Status sync();

  // Removes both files (after a merge). The object stays readable until destroyed.
  Status remove_files();
  // The data file's bytes on disk (its allocated extents).
  Result<uint64_t> allocated_data_bytes();

 private:
  Layer(FileSystem& fs, std::string dir, uint64_t id, uint64_t chunk_size_bytes);
  size_t record_bytes() const;
  Status replay_map(uint64_t file_size_bytes);

  // Format 3: `sectors` of a slot's chunk, in ascending order at offset_bytes.
  struct Piece {
    uint64_t sectors = 0;
    uint64_t offset_bytes = 0;
  };
  struct SlotPieces {
    std::vector<Piece> pieces;
    std::vector<Piece> superseded;  // replaced by a whole-chunk piece not yet recorded
    size_t recorded = 0;  // pieces[0, recorded) are in a pending or durable record
    uint64_t placed = 0;  // union of the pieces' sectors
  };
  // One contiguous run of a slot access: file bytes [file_offset, +length) are bytes
  // [chunk_offset, +length) of the chunk.
  struct Segment {
    uint64_t file_offset_bytes;
    uint64_t chunk_offset_bytes;
    uint64_t length_bytes;
  };
  // The segments of one access: at most one per sector, so no allocation per I/O.
  struct Segments {
    std::array<Segment, kMaxDirtySectorsPerChunk> items;
    size_t count = 0;
    std::span<const Segment> view() const { return std::span(items.data(), count); }
  };
  struct PendingRecord {
    uint64_t chunk_index;
    ChunkEntry entry;
    Piece piece;  // format 3: the new piece this record names (sectors 0: none)
  };

  Status replay_record(const uint8_t* record, const std::string& where);
  Status rebuild_allocator(const std::string& where);
  // Format 3 helpers. REQUIRE: map_mutex_ held (or frozen).
  Status place_locked(uint64_t slot, uint64_t sectors);
  void free_piece_locked(const Piece& piece);
  uint64_t allocate_locked(uint64_t sector_count);
  void free_pieces_locked(uint64_t slot);
  Result<Segments> segments_locked(uint64_t slot, uint64_t offset_in_chunk_bytes, uint64_t length_bytes) const;
  // The segments of a slot access, taking the lock a live layer needs; `place` gives
  // sectors without a place one first (a write).
  Result<Segments> locate(uint64_t slot, uint64_t offset_in_chunk_bytes, uint64_t length_bytes, bool place);
  uint64_t reserve_slot_locked();
  template <typename Byte, typename Joiner>
  Status join_slot_access(Joiner& joiner, uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<Byte> bytes,
                          bool place);
  void note_data_written();
  void record_new_pieces_locked(uint64_t chunk_index, const ChunkEntry& entry);
  uint64_t sector_bytes() const { return dirty_sector_bytes(chunk_size_bytes_); }

  FileSystem& fs_;
  const std::string dir_;
  const uint64_t id_;
  const uint64_t chunk_size_bytes_;
  uint32_t map_version_ = 3;  // set before the layer is shared, never after
  std::unique_ptr<File> data_file_;
  std::unique_ptr<File> map_file_;

  mutable std::shared_mutex map_mutex_;
  std::unordered_map<uint64_t, ChunkEntry> map_;       // GUARDED_BY(map_mutex_)
  std::vector<PendingRecord> pending_records_;         // GUARDED_BY(map_mutex_)
  std::vector<uint64_t> pending_free_slots_;           // GUARDED_BY(map_mutex_)
  std::vector<Piece> pending_free_pieces_;             // GUARDED_BY(map_mutex_): free once synced
  std::vector<uint64_t> free_slots_;                   // GUARDED_BY(map_mutex_)
  uint64_t next_slot_ = 0;                             // GUARDED_BY(map_mutex_)
  uint64_t data_chunk_count_ = 0;                      // GUARDED_BY(map_mutex_)
  // Format 3 (see above); mutated only before mark_frozen, so a frozen layer reads
  // them without the lock.
  std::vector<SlotPieces> slot_pieces_;                // GUARDED_BY(map_mutex_), by slot
  FreeRuns free_runs_;                                 // GUARDED_BY(map_mutex_): format 3
  uint64_t data_end_bytes_ = 0;                        // GUARDED_BY(map_mutex_): append point
  uint64_t placed_sector_count_ = 0;                   // GUARDED_BY(map_mutex_)

  std::atomic<bool> frozen_{false};
  std::atomic<bool> data_dirty_{false};  // a slot was written since the last data sync
  std::mutex sync_mutex_;      // one sync at a time
  uint64_t map_end_bytes_ = 0; // GUARDED_BY(sync_mutex_): end of the last durable batch
  uint64_t batch_sequence_ = 0;  // GUARDED_BY(sync_mutex_)
};

}  // namespace amirror
