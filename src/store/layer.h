// SPDX-License-Identifier: Apache-2.0
// A layer: the chunks written to a volume between two freezes (the patent's local
// auxiliary volume AVL_s with its freeze table). On disk it is two files
// (docs/formats/store.md):
//   layer-<id>.data  slot i holds one chunk at offset i * chunk_size
//   layer-<id>.map   append-only log of committed batches of chunk-map records
//
// The chunk map says, for each chunk the layer holds, either kData (content in a
// slot) or kZero (the chunk was trimmed or zeroed as a whole: reads as zero, no slot).
// A chunk absent from the map is unchanged in this layer (the patent's -1).
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

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/file_system.h"

namespace amirror {

enum class ChunkState : uint8_t { kData = 1, kZero = 2 };

struct ChunkEntry {
  ChunkState state = ChunkState::kData;
  uint64_t slot = 0;  // meaningful only for kData
};

class Layer {
 public:
  // Creates empty layer files; fails if they exist.
  static Result<std::shared_ptr<Layer>> create(FileSystem& fs, const std::string& dir,
                                               uint64_t layer_id, uint64_t chunk_size_bytes);
  // Opens existing layer files and replays the map log.
  static Result<std::shared_ptr<Layer>> open(FileSystem& fs, const std::string& dir,
                                             uint64_t layer_id, uint64_t chunk_size_bytes);
  static std::string data_file_name(uint64_t layer_id);
  static std::string map_file_name(uint64_t layer_id);

  uint64_t id() const { return id_; }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }

  std::optional<ChunkEntry> find(uint64_t chunk_index) const;
  // Declares the layer immutable (it was frozen and synced): later lookups skip the
  // map lock. REQUIRES: no further publish_* calls, and write_slot only to slot bytes
  // outside every chunk's content (Volume::resize zeroing the tail of a slot that holds
  // a volume's old short last chunk).
  void mark_frozen() { frozen_.store(true, std::memory_order_release); }
  size_t chunk_count() const;
  // A sorted copy of the map: (chunk_index, entry).
  std::vector<std::pair<uint64_t, ChunkEntry>> entries() const;
  // Bytes of slot space in use (kData entries times chunk size).
  uint64_t data_bytes() const;

  // Reads part of a slot. REQUIRES: slot belongs to a kData entry of this layer.
  Status read_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<uint8_t> out);
  // Writes part of a slot in place.
  Status write_slot(uint64_t slot, uint64_t offset_in_chunk_bytes, std::span<const uint8_t> data);

  // Reserves a free slot for a chunk about to be written for the first time. Pair
  // with publish_data() once the slot holds the chunk's full content, or
  // release_slot() if writing it failed.
  uint64_t reserve_slot();
  void release_slot(uint64_t slot);
  // Makes chunk_index -> kData(slot) visible. REQUIRES: chunk absent or kZero.
  void publish_data(uint64_t chunk_index, uint64_t slot);
  // Makes chunk_index -> kZero visible (freeing its slot once that is durable).
  void publish_zero(uint64_t chunk_index);

  // Makes every write and map change completed before the call durable.
  Status sync();

  // Removes both files (after a merge). The object stays readable until destroyed.
  Status remove_files();

 private:
  Layer(FileSystem& fs, std::string dir, uint64_t id, uint64_t chunk_size_bytes);
  Status replay_map(uint64_t file_size_bytes);

  struct PendingRecord {
    uint64_t chunk_index;
    ChunkEntry entry;
  };

  FileSystem& fs_;
  const std::string dir_;
  const uint64_t id_;
  const uint64_t chunk_size_bytes_;
  std::unique_ptr<File> data_file_;
  std::unique_ptr<File> map_file_;

  mutable std::shared_mutex map_mutex_;
  std::unordered_map<uint64_t, ChunkEntry> map_;       // GUARDED_BY(map_mutex_)
  std::vector<PendingRecord> pending_records_;         // GUARDED_BY(map_mutex_)
  std::vector<uint64_t> pending_free_slots_;           // GUARDED_BY(map_mutex_)
  std::vector<uint64_t> free_slots_;                   // GUARDED_BY(map_mutex_)
  uint64_t next_slot_ = 0;                             // GUARDED_BY(map_mutex_)
  uint64_t data_chunk_count_ = 0;                      // GUARDED_BY(map_mutex_)

  std::atomic<bool> frozen_{false};
  std::atomic<bool> data_dirty_{false};  // a slot was written since the last data sync
  std::mutex sync_mutex_;      // one sync at a time
  uint64_t map_end_bytes_ = 0; // GUARDED_BY(sync_mutex_): end of the last durable batch
  uint64_t batch_sequence_ = 0;  // GUARDED_BY(sync_mutex_)
};

}  // namespace amirror
