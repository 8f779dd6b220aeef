// SPDX-License-Identifier: Apache-2.0
// A volume: a base image plus an ordered stack of layers (patent Figs. 3-6).
//
//   base            the image as of freeze point `base_cycle()` (a sparse file)
//   layer base+1 .. the writes between consecutive freezes, oldest first
//   layer cycle+1   the active layer: takes every write now
//
// Freeze point s is the image clients saw at the s-th freeze: base + layers with
// id <= s. freeze() makes the active layer read-only and opens a new one; merge_oldest()
// folds the oldest frozen layer into the base (the patent's local synchronize).
// Layer ids are contiguous: base_cycle()+1 .. cycle()+1.
//
// Routing: a read of a chunk comes from the newest layer whose map holds it, else the
// base. A write to a chunk the active layer holds goes in place; the first write to a
// chunk since the freeze takes a new slot filled with the chunk's current content
// (skipped when the write covers the whole chunk).
//
// Durability: after flush() (or a write with fua) returns, every write completed
// before it survives a crash. freeze() is itself a durable point: a frozen layer is
// fully synced before freeze() returns, so a frozen point never changes after a crash.
// Metadata (size, chunk size, cycle, base_cycle) lives in volume.meta, replaced
// atomically (write-new-then-rename) by freeze and merge.
//
// Thread-safety: all methods are thread-safe. Reads and writes run concurrently;
// freeze() waits for in-flight reads and writes to drain and holds new ones back only
// while it syncs the active layer's last changes and writes the metadata. merge_oldest()
// runs concurrently with reads and writes.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/rwlock.h"
#include "store/chunk_math.h"
#include "store/file_system.h"
#include "store/layer.h"

namespace amirror {

struct VolumeOptions {
  uint64_t size_bytes = 0;  // multiple of 512, up to kMaxVolumeSizeBytes
  uint64_t chunk_size_bytes = kDefaultChunkSizeBytes;
  std::string group;  // consistency group; empty = none
};

// Checks size and chunk size; the error names the bad value and the allowed range.
Status validate_volume_options(const VolumeOptions& options);

// One chunk of a delta between two frozen points.
struct DeltaChunk {
  uint64_t chunk_index = 0;
  ChunkState state = ChunkState::kData;  // kZero: reads as zero, no payload to ship
};

struct LayerInfo {
  uint64_t id = 0;
  bool frozen = false;
  uint64_t chunk_count = 0;
  uint64_t data_bytes = 0;
  int64_t freeze_time_unix_ms = 0;  // 0 for the active layer
};

class Volume {
 public:
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // Creates the volume in `dir` (which must exist and be empty of volume files).
  static Result<std::unique_ptr<Volume>> create(FileSystem& fs, const std::string& dir,
                                                const VolumeOptions& options);
  // Opens an existing volume, recovering from any crash (see docs/formats/store.md).
  // A missing, foreign or corrupt volume.meta is an error; nothing is repaired by guessing.
  static Result<std::unique_ptr<Volume>> open(FileSystem& fs, const std::string& dir);

  uint64_t size_bytes() const { return geometry_.volume_size_bytes(); }
  uint64_t chunk_size_bytes() const { return geometry_.chunk_size_bytes(); }
  const ChunkGeometry& geometry() const { return geometry_; }
  const std::string& group() const { return group_; }
  const std::string& dir() const { return dir_; }
  // Number of the latest freeze; 0 before the first.
  uint64_t cycle() const;
  // The freeze point the base image represents.
  uint64_t base_cycle() const;
  // Wall-clock time of freeze `cycle` (ms since the Unix epoch); 0 if unknown.
  int64_t freeze_time_unix_ms(uint64_t cycle) const;

  // Client I/O. Out-of-range requests return kOutOfRange and change nothing.
  Status read(uint64_t offset_bytes, std::span<uint8_t> out);
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua = false);
  Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua = false);
  // Discard. amirror makes trimmed ranges read as zero, so replicas stay exact.
  Status trim(uint64_t offset_bytes, uint64_t length_bytes);
  Status flush();
  // Allocated ranges of the current image in [offset, offset + length): chunks held
  // by a layer as kData plus allocated base extents, minus chunks zeroed by a layer.
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes);

  // Freezes now; returns the new cycle number (the frozen point's number). The freeze
  // time recorded is `clock`'s wall time.
  Result<uint64_t> freeze(Clock& clock = real_clock());
  // Freezes several volumes at one instant: no write to any of them lands between the
  // first and the last freeze. Returns each volume's new cycle, in order.
  static Result<std::vector<uint64_t>> freeze_group(std::span<Volume* const> volumes, Clock& clock = real_clock());

  // Folds the oldest frozen layer into the base and deletes it. kNotFound if no layer
  // is frozen. Runs concurrently with client I/O; one merge at a time.
  Status merge_oldest();

  // Reads freeze point `cycle` (base_cycle() <= cycle <= cycle()).
  Status read_frozen(uint64_t cycle, uint64_t offset_bytes, std::span<uint8_t> out);
  // The chunks that differ between freeze points from_cycle and to_cycle
  // (from_cycle < to_cycle, both >= base_cycle()): the union of layers
  // from_cycle+1 .. to_cycle, newest state winning (a chunk changed in ten cycles
  // appears once). Sorted by chunk_index. Read content with read_frozen(to_cycle, ...).
  Result<std::vector<DeltaChunk>> changed_chunks(uint64_t from_cycle, uint64_t to_cycle);
  // Every chunk of freeze point `cycle` that may hold non-zero data (for an initial
  // sync): allocated base extents plus kData chunks of layers <= cycle, minus kZero.
  Result<std::vector<uint64_t>> allocated_chunks(uint64_t cycle);

  std::vector<LayerInfo> layers() const;
  // How long the last freeze held client writes back (drain + final sync + metadata).
  uint64_t last_freeze_stall_us() const { return last_freeze_stall_us_.load(); }

 private:
  Volume(FileSystem& fs, std::string dir, const VolumeOptions& options);

  // Metadata persisted in volume.meta.
  std::string encode_meta() const;  // REQUIRES: meta_mutex_ held
  Status write_meta();              // REQUIRES: meta_mutex_ held
  struct VolumeMeta {
    VolumeOptions options;
    uint64_t cycle = 0;
    uint64_t base_cycle = 0;
    uint64_t merging_layer = 0;
    std::vector<int64_t> freeze_times_unix_ms;
  };
  static Result<VolumeMeta> decode_meta(const std::string& contents, const std::string& where);
  Status remove_orphan_files();

  // Routing helpers. REQUIRES: io_lock_ held (shared or exclusive). `top` = how
  // many layers from the bottom form the image read; `lock_active` = the active layer
  // is among them and its slots must be read under the chunk's stripe lock.
  static std::pair<size_t, std::optional<ChunkEntry>> resolve(
      const std::vector<std::shared_ptr<Layer>>& layers, size_t top, uint64_t chunk_index);
  static Status read_from(Layer& layer, const ChunkEntry& entry, const ChunkPiece& piece, uint8_t* out);
  Status read_layers(const std::vector<std::shared_ptr<Layer>>& layers, size_t top,
                     uint64_t offset_bytes, std::span<uint8_t> out, bool lock_active);
  Status write_piece(const ChunkPiece& piece, const uint8_t* data);  // data null = zeroes
  Status modify(uint64_t offset_bytes, uint64_t length_bytes, const uint8_t* data, bool fua);
  Status freeze_locked(int64_t now_unix_ms);  // REQUIRES: io_lock_ held exclusive

  FileSystem& fs_;
  const std::string dir_;
  const ChunkGeometry geometry_;
  const std::string group_;
  std::unique_ptr<File> base_;

  // Shared by reads and writes, exclusive for freeze and for removing a merged layer.
  mutable RwLock io_lock_;
  // Oldest first; back() is the active layer. GUARDED_BY(io_lock_)
  std::vector<std::shared_ptr<Layer>> layers_;

  // Striped per-chunk locks for the active layer: writers hold one exclusively while
  // changing a chunk (in place, copy-on-first-write, zeroing); readers of an active
  // slot hold it shared, so a slot is never freed and reused under them.
  static constexpr size_t kStripeCount = 256;
  std::shared_mutex stripes_[kStripeCount];

  mutable std::mutex meta_mutex_;
  uint64_t cycle_ = 0;       // GUARDED_BY(meta_mutex_), changed only under io_lock_ too
  uint64_t base_cycle_ = 0;  // GUARDED_BY(meta_mutex_)
  // Nonzero while layer base_cycle_ is being merged into the base (it is then still
  // the bottom of the stack). GUARDED_BY(meta_mutex_)
  uint64_t merging_layer_ = 0;
  uint64_t first_layer_id() const { return merging_layer_ != 0 ? merging_layer_ : base_cycle_ + 1; }
  // freeze_times_unix_ms_[i] = time of freeze base_cycle_ + i. GUARDED_BY(meta_mutex_)
  std::vector<int64_t> freeze_times_unix_ms_;

  std::atomic<uint64_t> last_freeze_stall_us_{0};
  std::mutex merge_mutex_;                 // one merge at a time
  // Held exclusively by a merge while it rewrites the base, shared by readers of the
  // base point itself (read_frozen(base_cycle()), allocated_chunks).
  std::shared_mutex base_point_lock_;
};

}  // namespace amirror
