// SPDX-License-Identifier: Apache-2.0
// A volume: a base image plus an ordered stack of layers (patent Figs. 3-6).
//
//   base            the image as of freeze point `base_cycle()` (a sparse file: base.img,
//                   or an adopted file or block device used in place, see base_path)
//   layer base+1 .. the writes between consecutive freezes, oldest first
//   layer cycle+1   the active layer: takes every write now
//
// Freeze point s is the image clients saw at the freeze numbered s: base + the frozen
// layers up to the one frozen as s. freeze() makes the active layer read-only and
// opens a new one; merge_oldest() folds the oldest frozen layer into the base (the
// patent's local synchronize).
// Point numbers ("cycles") increase but need not be contiguous: a primary numbers its
// freezes 1, 2, 3, ...; a replica freezes each delta it receives as the source's
// number (freeze_as), which skips numbers when one delta spans several source cycles.
// Layer file ids are a separate, increasing counter; volume.meta maps each frozen
// layer to its point.
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
// atomically (write-new-then-rename) by freeze, merge and resize.
//
// Size: a volume grows online (resize()); it never shrinks. Points carry no size of
// their own: a point frozen before a growth reads as its image followed by zeros up
// to the current size, because nothing in its layers covers the new chunks, the
// base's new tail is a hole, and resize() zeroes the bytes past the old end in every
// slot of the old short last chunk (see resize()).
//
// Thread-safety: all methods are thread-safe. Reads and writes run concurrently;
// freeze() waits for in-flight reads and writes to drain and holds new ones back only
// while it syncs the active layer's last changes and writes the metadata. merge_oldest()
// runs concurrently with reads and writes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/rwlock.h"
#include "base/units.h"
#include "store/chunk_math.h"
#include "store/file_system.h"
#include "store/layer.h"
#include "store/uncached_writer.h"

namespace amirror {

struct VolumeOptions {
  uint64_t size_bytes = 0;  // multiple of 512, up to kMaxVolumeSizeBytes
  uint64_t chunk_size_bytes = kDefaultChunkSizeBytes;
  std::string group;  // consistency group; empty = none
  // Empty: the base is <dir>/base.img, owned by the volume. Otherwise the absolute path
  // of an adopted regular file or block device (`volume adopt`) that is the base in
  // place: opened with OpenMode::kAdopt (locked while the volume is open), exactly
  // size_bytes long, never truncated or extended; it changes only by merges.
  std::string base_path;
  // With base_path: the base may be longer than the volume (a replica on a block device,
  // `[[peers]] replica_device_dir`). Only [0, size_bytes) is the volume's; the tail is
  // never read or written, and resize() grows the volume up to the base's length
  // (zeroing the new range in place) and no further. Without it the base's length must
  // equal size_bytes: a changed length means someone else changed the file (`volume adopt`).
  bool base_may_be_larger = false;
};

// The error for a base device or file of `base_bytes` that cannot hold a volume of
// `needed_bytes`: names both, and what to do.
Status base_too_small(const std::string& base_path, uint64_t base_bytes, uint64_t needed_bytes);

// Checks size and chunk size; the error names the bad value and the allowed range.
Status validate_volume_options(const VolumeOptions& options);

// One chunk of a delta between two frozen points.
struct DeltaChunk {
  uint64_t chunk_index = 0;
  ChunkState state = ChunkState::kData;  // kZero: reads as zero, no payload to ship
  // kData: the sectors that may differ (layer.h, "Sectors"); kAllSectorsDirty
  // when unknown (a format-1 layer opened from disk) or the whole chunk changed.
  uint64_t dirty_sectors = kAllSectorsDirty;
};

// Where a volume's history comes from: what failback and split-brain checks compare.
struct VolumeLineage {
  std::string uuid;           // 32 hex digits, fixed when the volume is created
  std::string origin_uuid;    // empty, or the volume whose history this one continues
  uint64_t origin_point = 0;  // points <= this equal origin_uuid's points of the same number
};

struct PointInfo {
  uint64_t cycle = 0;
  int64_t freeze_time_unix_ms = 0;
};

struct LayerInfo {
  uint64_t id = 0;
  bool frozen = false;
  uint64_t chunk_count = 0;
  uint64_t data_bytes = 0;
  int64_t freeze_time_unix_ms = 0;  // 0 for the active layer
  uint64_t cycle = 0;  // the point this layer completes; 0 for the active layer
  uint64_t dirty_bytes = 0;  // Layer::dirty_bytes(): what shipping this layer alone costs
};

class Volume {
 public:
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // Creates the volume in `dir` (which must exist and be empty of volume files).
  static Result<std::unique_ptr<Volume>> create(FileSystem& fs, const std::string& dir,
                                                const VolumeOptions& options);
  // Creates a volume in `dir` around an existing base.img of exactly options.size_bytes,
  // which becomes point `base_cycle` as it is (no copy). Leftovers of an earlier
  // attempt (layer files) are removed first, so a crash here can simply be retried.
  static Result<std::unique_ptr<Volume>> create_over_base(FileSystem& fs, const std::string& dir,
                                                          const VolumeOptions& options, uint64_t base_cycle,
                                                          int64_t base_freeze_time_unix_ms);
  // Opens an existing volume, recovering from any crash (see docs/formats/store.md).
  // A missing, foreign or corrupt volume.meta is an error; nothing is repaired by guessing.
  static Result<std::unique_ptr<Volume>> open(FileSystem& fs, const std::string& dir);

  // The size now; only resize() changes it, and only upwards.
  uint64_t size_bytes() const { return size_bytes_.load(std::memory_order_acquire); }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }
  // A snapshot of the geometry at the current size.
  ChunkGeometry geometry() const { return ChunkGeometry(size_bytes(), chunk_size_bytes_); }
  // The consistency group. Changed only by set_group(), which callers make while
  // nothing else uses the volume (promote of a group).
  const std::string& group() const { return group_; }
  Status set_group(const std::string& group);
  const std::string& dir() const { return dir_; }
  // The adopted file or device that is the base, or empty for <dir>/base.img. Fixed at
  // creation.
  const std::string& adopted_path() const { return base_path_; }
  // Number of the latest freeze; 0 before the first.
  uint64_t cycle() const;
  // The freeze point the base image represents.
  uint64_t base_cycle() const;
  // Wall-clock time of freeze `cycle` (ms since the Unix epoch); 0 if unknown.
  int64_t freeze_time_unix_ms(uint64_t cycle) const;
  // Every point still readable, oldest first: the base's, then each frozen layer's.
  std::vector<PointInfo> points() const;
  bool has_point(uint64_t cycle) const;
  // A merge started and did not finish (base.img is being rewritten; merge_oldest()
  // or the next open() finishes it).
  bool merge_pending() const;

  VolumeLineage lineage() const;
  Status set_lineage(const VolumeLineage& lineage);
  // A read-only volume refuses client writes with kReadOnly (a demoted primary, or a
  // replica's volume). Freeze, merge and the replica's own staging still work.
  bool read_only() const { return read_only_.load(); }
  Status set_read_only(bool read_only);
  // A planned switchover holds client writes (in memory, not durable): from when
  // hold_writes() returns (every write already admitted has finished) until
  // release_writes(), a client write waits; then it goes on, or fails with kReadOnly
  // if the volume was made read-only meanwhile. Staged writes are never held.
  void hold_writes();
  void release_writes();

  // Client I/O. Out-of-range requests return kOutOfRange and change nothing.
  Status read(uint64_t offset_bytes, std::span<uint8_t> out);
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua = false);
  Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua = false);
  // Discard. amirror makes trimmed ranges read as zero, so replicas stay exact.
  Status trim(uint64_t offset_bytes, uint64_t length_bytes);
  Status flush();
  // The same, ignoring read_only(): for a replica writing a delta into its active layer.
  Status write_staged(uint64_t offset_bytes, std::span<const uint8_t> data);
  Status write_zeroes_staged(uint64_t offset_bytes, uint64_t length_bytes);
  // Allocated ranges of the current image in [offset, offset + length): chunks held
  // by a layer as kData plus allocated base extents, minus chunks zeroed by a layer.
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes);
  // The same for freeze point `cycle` (block status of a replica's point).
  Result<std::vector<Extent>> allocated_extents_at(uint64_t cycle, uint64_t offset_bytes, uint64_t length_bytes);

  // Freezes now; returns the new cycle number (the frozen point's number). The freeze
  // time recorded is `clock`'s wall time.
  Result<uint64_t> freeze(Clock& clock = real_clock());
  // Freezes several volumes at one instant: no write to any of them lands between the
  // first and the last freeze. Returns each volume's new cycle, in order.
  static Result<std::vector<uint64_t>> freeze_group(std::span<Volume* const> volumes, Clock& clock = real_clock());
  // Before it stops writes, freeze_group syncs each volume until a sync takes less than
  // kQuickSync (at most kMaxPreFreezeSyncs times), so the sync under the stall is short.
  static constexpr int kMaxPreFreezeSyncs = 4;
  static constexpr std::chrono::milliseconds kQuickSync{20};
  // Freezes now as point `cycle` (> cycle()) with the given freeze time: a replica
  // committing the source's point s.
  Status freeze_as(uint64_t cycle, int64_t freeze_time_unix_ms);
  // Forgets every point after `cycle` (which must be kept) and every change in the
  // active layer: the volume reads as point `cycle` and the next write starts a new
  // layer. Durable and atomic (one volume.meta replacement). Not during a merge.
  Status discard_after(uint64_t cycle);
  // Repairs one chunk of the newest point in place: writes each sector of `data`
  // (empty = zeros) where that point reads it from — the slot of the newest layer that
  // defines the sector, or base.img — and fdatasyncs those files. For `mirror verify --repair` on a replica; older
  // points sharing that storage change with it. kBusy during a merge; kUnsupported
  // when a frozen layer records the chunk as zero and `data` is not (no slot to fix).
  Status rewrite_chunk_of_newest_point(uint64_t chunk_index, std::span<const uint8_t> data);
  // Renumbers the base's point as `cycle`. REQUIRES (else kInvalidArgument): no frozen
  // layer, no merge pending, nothing in the active layer. For failback: the flattened
  // old primary is labelled as the point it shares with the new one.
  Status relabel_base(uint64_t cycle);
  // Chunks the active layer changed since the last freeze (kZero for zeroed ones).
  std::vector<DeltaChunk> active_changes() const;

  // Base fill: a replica's full copy written straight into base.img, instead of into a
  // layer that a merge then copies into the base (every byte written once, not twice).
  // Only for a volume that holds nothing yet: point 0 in the base, no frozen layer, no
  // merge pending, an empty active layer (else kInvalidArgument, nothing changed).
  // While a fill runs, base.img is NOT point 0: the caller must keep readers away and
  // record durably, before begin_base_fill(), that a fill is under way (the replica's
  // replica.meta does), so a crash never shows the partial base as a point.
  // - begin_base_fill(): base.img becomes all holes (reads zero) and is synced.
  // - write_base_fill() / zero_base_fill(): write into base.img (no sync). Writes are
  //   gathered and bypass the page cache (store/uncached_writer.h): a fill is written
  //   once and not read until it is committed.
  // - sync_base(): fdatasync base.img (a resume point).
  // - commit_base_fill(): syncs base.img, then one volume.meta replacement labels it as
  //   point `cycle` with that freeze time: the commit point.
  Status begin_base_fill();
  Status write_base_fill(uint64_t offset_bytes, std::span<const uint8_t> data);
  Status zero_base_fill(uint64_t offset_bytes, uint64_t length_bytes);
  Status sync_base();
  Status commit_base_fill(uint64_t cycle, int64_t freeze_time_unix_ms);

  // Grows the volume to `size_bytes` while clients read and write (they wait only
  // while it runs, after a running merge; no data is copied) and returns the size
  // before. Like freeze(), a durable point: every write before it survives a crash
  // once it returns. The same size changes nothing. Shrinking, a size not a multiple
  // of 512 or above the maximum is refused naming the value, and changes nothing.
  // Crash protocol (docs/formats/store.md, "Resize"): (1) in every layer whose slot
  // holds the old short last chunk, the slot's bytes past the old end are zeroed and
  // synced (they were never part of any point, so no point changes), and the active
  // layer is synced; (2) base.img is extended with truncate (a hole) and synced;
  // (3) one volume.meta replacement records the new size. A crash before (3) leaves
  // the old size with a longer base.img, which open() trims back.
  // Clients that learned the size earlier (an NBD connection) keep using the old one.
  Result<uint64_t> resize(uint64_t size_bytes);

  // Folds the oldest frozen layer into the base and deletes it. kNotFound if no layer
  // is frozen. Runs concurrently with client I/O; one merge at a time. `progress` is
  // called after every kMergeProgressBytes written into the base, whose writeback is
  // started then, so neither a caller that must show life (a replica's apply sends
  // keep-alives to its source) nor the final sync waits on gigabytes at once.
  static constexpr uint64_t kMergeProgressBytes = 16 * kMiB;
  Status merge_oldest(const std::function<void()>& progress = {});
  // For `volume release`: freezes, then merges every frozen layer, so the base (synced)
  // alone holds the current image and every layer is empty. REQUIRES: no client writes
  // any more (the caller withdrew the export); a write racing it would stay in the new
  // active layer, which the final check reports as kBusy. Each step is a freeze or a
  // merge with their own crash safety, so a crash anywhere leaves a whole volume.
  Status merge_everything(Clock& clock = real_clock());

  // Reads freeze point `cycle` (base_cycle() <= cycle <= cycle()).
  Status read_frozen(uint64_t cycle, uint64_t offset_bytes, std::span<uint8_t> out);
  // A hint that read_frozen of that range follows soon: the files' reads may start now
  // (File::will_read). Wrong or stale hints cost nothing but the read-ahead.
  void will_read_frozen(uint64_t cycle, uint64_t offset_bytes, uint64_t length_bytes);
  // The chunks that differ between freeze points from_cycle and to_cycle
  // (from_cycle < to_cycle, both >= base_cycle()): the union of layers
  // from_cycle+1 .. to_cycle, newest state winning (a chunk changed in ten cycles
  // appears once), with the union of the layers' dirty sectors. Sorted by chunk_index. Read content with read_frozen(to_cycle, ...).
  Result<std::vector<DeltaChunk>> changed_chunks(uint64_t from_cycle, uint64_t to_cycle);
  // Every chunk of freeze point `cycle` that may hold non-zero data (for an initial
  // sync): allocated base extents plus kData chunks of layers <= cycle, minus kZero.
  Result<std::vector<uint64_t>> allocated_chunks(uint64_t cycle);

  std::vector<LayerInfo> layers() const;
  // How long the last freeze held client writes back (drain + final sync + metadata).
  uint64_t last_freeze_stall_us() const { return last_freeze_stall_us_.load(); }
  // Disk space held by spare layer data files: merged layers' files kept for the next
  // freezes to write over (at most 4, together at most 1 GiB; see retire_merged_layer).
  uint64_t spare_bytes() const;

 private:
  Volume(FileSystem& fs, std::string dir, const VolumeOptions& options);
  // The error for a resize to `size_bytes`, or ok. REQUIRES: meta_mutex_ held.
  Status check_resize_locked(uint64_t size_bytes) const;
  // resize() step 1. REQUIRES: io_lock_ held exclusive.
  Status zero_slot_tails_locked(uint64_t old_size_bytes, uint64_t new_size_bytes);

  // One frozen layer: its file id and the point it completes.
  struct FrozenLayer {
    uint64_t layer_id = 0;
    uint64_t cycle = 0;
    int64_t freeze_time_unix_ms = 0;
  };
  // Metadata persisted in volume.meta.
  struct VolumeMeta {
    VolumeOptions options;
    VolumeLineage lineage;
    bool read_only = false;
    uint64_t base_cycle = 0;
    int64_t base_freeze_time_unix_ms = 0;
    uint64_t merging_layer = 0;  // 0, or frozen.front().layer_id while it is merged
    uint64_t active_layer = 0;
    std::vector<FrozenLayer> frozen;  // oldest first
    bool from_version_1 = false;
  };
  std::string encode_meta() const;  // REQUIRES: meta_mutex_ held
  Status write_meta();              // REQUIRES: meta_mutex_ held
  static Result<VolumeMeta> decode_meta(const std::string& contents, const std::string& where);
  static Result<VolumeMeta> decode_meta_version_1(const std::string& contents, const std::string& where);
  Status remove_orphan_files();
  // Opens the base: base.img, or the adopted path with its lock.
  Result<std::unique_ptr<File>> open_base(OpenMode owned_mode) const;
  std::string base_file_path() const;
  // allocated_extents over layers_[0, top) and the base. REQUIRES: io_lock_ held.
  Result<std::vector<Extent>> allocated_extents_locked(size_t top, uint64_t offset_bytes, uint64_t length_bytes);
  // The highest layer id that is part of point `cycle`, or nullopt if the point is not
  // kept. REQUIRES: meta_mutex_ held.
  std::optional<uint64_t> top_layer_id_locked(uint64_t cycle) const;
  uint64_t cycle_locked() const { return meta_.frozen.empty() ? meta_.base_cycle : meta_.frozen.back().cycle; }
  std::string points_text_locked() const;
  // A layer id never used before in this process: a failed freeze may have left its
  // files named by volume.meta after all, so they are never reused. REQUIRES: meta_mutex_.
  uint64_t next_layer_id_locked();
  uint64_t highest_layer_id_ = 0;  // GUARDED_BY(meta_mutex_)
  // How many layers from the bottom form point `cycle`. REQUIRES: io_lock_ held.
  Result<size_t> layers_in_point_locked(uint64_t cycle) const;

  // Routing helpers. REQUIRES: io_lock_ held (shared or exclusive). `top` = how
  // many layers from the bottom form the image read; `lock_active` = the active layer
  // is among them and its slots must be read under the chunk's stripe lock.
  static std::pair<size_t, std::optional<ChunkEntry>> resolve(
      const std::vector<std::shared_ptr<Layer>>& layers, size_t top, uint64_t chunk_index);
  static Status read_from(Layer& layer, const ChunkEntry& entry, const ChunkPiece& piece, uint8_t* out);
  // Calls from(layer_index, entry, begin, end) for each run of the piece's bytes
  // (offsets in the chunk) with the newest entry that defines them (entry null: the
  // base). Stops at the first error it returns. Defined in volume.cc, used there only.
  template <typename From>
  Status for_each_source(const std::vector<std::shared_ptr<Layer>>& layers, size_t index, const ChunkEntry& entry,
                         const ChunkPiece& piece, const From& from);
  // Reads a piece whose newest entry is `entry` in layers[index]: the sectors it does
  // not define from the layers below, then the base.
  Status read_resolved(const std::vector<std::shared_ptr<Layer>>& layers, size_t index, const ChunkEntry& entry,
                       const ChunkPiece& piece, uint8_t* out);
  // Copies into `slot` of the active layer the parts of `sectors` the piece does not
  // cover, from the layers below: once the piece is written, those sectors are whole.
  // REQUIRES: the chunk's stripe held exclusive.
  Status fill_around(Layer& active, uint64_t slot, const ChunkPiece& piece, uint64_t sectors, uint64_t chunk_length);
  Status read_layers(const std::vector<std::shared_ptr<Layer>>& layers, size_t top,
                     uint64_t offset_bytes, std::span<uint8_t> out, bool lock_active);
  // One piece of a write (data null = zeroes). REQUIRES: the chunk's stripe held
  // exclusive; `entry` = the active layer's entry for the chunk, looked up under it.
  Status write_piece(const ChunkPiece& piece, const uint8_t* data, const std::optional<ChunkEntry>& entry);
  template <typename Lock>
  class HeldStripes;
  struct LayerReadBatch;
  struct LayerWriteBatch;
  // After `sectors` of a kData chunk were written in place: marks them dirty (and
  // defined) unless `entry` already has them so. REQUIRES: the chunk's stripe held.
  static void mark_written(Layer& active, uint64_t chunk_index, const ChunkEntry& entry, uint64_t sectors);
  // Writes a batch of pieces, publishes or marks them, and releases their stripes.
  Status write_batch(Layer& active, LayerWriteBatch& batch);
  // Removes a merged layer's files, or keeps its data file as a spare that a later
  // freeze reuses (spare_data_file_name in volume.cc).
  void retire_merged_layer(Layer& merged);
  std::string spare_data_path(bool existing);
  Status modify(uint64_t offset_bytes, uint64_t length_bytes, const uint8_t* data, bool fua,
                bool staged = false);
  // REQUIRES: io_lock_ held exclusive. `cycle` 0 = the next number.
  Status freeze_locked(int64_t now_unix_ms, uint64_t cycle);
  // The error if base_fill is not allowed now (see begin_base_fill), or ok.
  // REQUIRES: io_lock_ and meta_mutex_ held.
  Status check_base_fill_locked() const;
  // Writes what the base fill gathered (base_fill_writer_) to base.img.
  Status flush_base_fill();

  FileSystem& fs_;
  const std::string dir_;
  const uint64_t chunk_size_bytes_;
  // Changes only in resize(), under io_lock_ exclusive: whoever holds io_lock_ (shared
  // or exclusive) sees one stable size; others get a size that only grows.
  std::atomic<uint64_t> size_bytes_;
  std::string group_;
  const std::string base_path_;  // empty, or the adopted file or device (VolumeOptions)
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
  // What volume.meta says. GUARDED_BY(meta_mutex_); the layer stack (frozen, active)
  // changes only under io_lock_ exclusive too. While a merge runs, frozen.front() is
  // the layer being merged and its cycle equals base_cycle.
  VolumeMeta meta_;
  std::atomic<bool> read_only_{false};
  std::atomic<bool> writes_held_{false};
  std::mutex hold_mutex_;
  std::condition_variable writes_released_;

  std::atomic<uint64_t> last_freeze_stall_us_{0};
  std::mutex merge_mutex_;                 // one merge (or resize) at a time
  // Base fill: its writes gathered into large ones that bypass the page cache (see
  // write_base_fill). Flushed before every sync and punch of the base.
  std::mutex base_fill_mutex_;
  std::unique_ptr<UncachedWriter> base_fill_writer_;  // GUARDED_BY(base_fill_mutex_)
  // Held exclusively by a merge while it rewrites the base, shared by readers of the
  // base point itself (read_frozen(base_cycle()), allocated_chunks).
  std::shared_mutex base_point_lock_;
};

}  // namespace amirror
