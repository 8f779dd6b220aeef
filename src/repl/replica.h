// SPDX-License-Identifier: Apache-2.0
// A replica on the target node: a store Volume (src/store/volume.h) whose points arrive
// over the wire, numbered as the source numbered them (the patent's RVx/1 and RVx/s).
// Files, under <data_dir>/replicas/<source_node>/<volume>/ (docs/formats/replica.md):
//   replica.meta   source, volume, keep, the source volume's id, and the delta being
//                  received (write-new-then-rename)
//   volume.meta, base.img, layer-*   the replica's volume (docs/formats/store.md)
//
// The delta protocol on top of the volume's crash-tested freeze and merge:
//  1. begin_delta(): the active layer is emptied (discard_after) and the delta is
//     recorded in replica.meta;
//  2. stage(): each record is written into the active layer (a partial record, the
//     dirty sectors of a chunk, over the newest point by copy-on-first-write); every
//     progress_interval_bytes() the layer is synced and replica.meta records how many
//     records are durable (the resume point, always after the last record of a chunk);
//  3. end_delta() = commit: sync the layer, then freeze it as the source's point s
//     (one volume.meta rename). From here the replica reads as s and the source is told
//     so; a crash before the rename leaves the previous point and a resumable delta.
//  4. apply(): merge the oldest points into base.img until `keep` points are left.
// So a reader (NBD, verify, promote) always sees one whole freeze point, never a mix,
// and the points kept never change content.
//
// Thread-safety: all methods are thread-safe; one delta at a time (callers receiving
// for the same replica are serialized by the node).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "repl/wire.h"
#include "store/file_system.h"
#include "store/volume.h"

namespace amirror::repl {

// How much may be staged between resume points (what a crash may cost to resend), given
// what this attempt at the delta has staged so far: 16 MiB, or an eighth of that, up
// to 256 MiB. Each resume point stalls receiving for a device flush and a replica.meta
// replacement (~10 ms measured; at every 16 MiB a third of a 1 GiB initial sync's
// time), so a long copy makes them rarer while a crash still costs at most an eighth
// of the work done, or 16 MiB.
inline constexpr uint64_t kMinProgressBytes = 16 * kMiB;
inline constexpr uint64_t kMaxProgressBytes = 256 * kMiB;
inline constexpr uint64_t kProgressFraction = 8;
constexpr uint64_t progress_interval_bytes(uint64_t staged_bytes) {
  return std::clamp(staged_bytes / kProgressFraction, kMinProgressBytes, kMaxProgressBytes);
}

constexpr uint32_t kDefaultKeep = 1;
constexpr uint32_t kMaxKeep = 1024;

class Replica {
 public:
  // Opens the replica in `dir`, creating an empty one (all zeros, cycle 0) if absent.
  // An existing replica follows the source's geometry (follow_source_geometry).
  // `device`: empty, or the absolute path of a block device (`[[peers]]
  // replica_device_dir`) that a new replica's volume uses as its base instead of
  // base.img (an adopted base that may be longer than the volume, VolumeOptions).
  // A device too small, or in use, refuses the replica naming the device.
  static Result<std::unique_ptr<Replica>> open_or_create(FileSystem& fs, const std::string& dir,
                                                         const std::string& source_node,
                                                         const std::string& volume,
                                                         uint64_t size_bytes, uint64_t chunk_size_bytes,
                                                         const std::string& device = "");
  // Opens an existing replica: converts the format-1 layout once (crash-safe), drops
  // a delta whose commit was cut short, and merges down to `keep` points. `device`: as
  // for open_or_create, used only when the replica's volume was never created (a crash
  // right after replica.meta); an existing volume.meta names its own base.
  static Result<std::unique_ptr<Replica>> open(FileSystem& fs, const std::string& dir, const std::string& device = "");

  // A clean close records how much of a delta is staged, so a restart resumes there
  // (a crash resumes from the last 16 MiB mark instead).
  ~Replica();
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  const std::string& source_node() const { return source_node_; }
  const std::string& volume_name() const { return volume_name_; }
  // Kept for callers that name the source volume "volume".
  const std::string& volume() const { return volume_name_; }
  uint64_t size_bytes() const { return current()->size_bytes(); }
  uint64_t chunk_size_bytes() const { return current()->chunk_size_bytes(); }
  const std::string& dir() const { return dir_; }
  // The raw image file (base.img, or the block device the replica lives on): holds
  // image_cycle() while no merge runs.
  std::string image_path() const {
    std::shared_ptr<Volume> volume = current();
    return volume->adopted_path().empty() ? dir_ + "/base.img" : volume->adopted_path();
  }
  std::optional<uint64_t> image_cycle() const;
  ReplicaState state() const;
  // "idle", "receiving" (a delta is being staged), "applying" (merging old points)
  std::string activity() const;
  // The newest point: what read() serves.
  uint64_t readable_cycle() const { return current()->cycle(); }
  // The points kept, oldest first (an empty replica has none).
  std::vector<PointInfo> points() const;
  uint32_t keep() const;
  // How many points to keep from the next apply() on (1..kMaxKeep).
  Status set_keep(uint32_t keep);
  // The source volume's consistency group, as it last said ("" = none).
  std::string group() const;
  Status set_group(const std::string& group);
  // The id of the source volume whose points these are (empty: not known yet).
  std::string source_uuid() const;
  Status set_source_uuid(const std::string& uuid);
  // Forgets every point (they belong to another source volume) and becomes an empty
  // replica of `uuid`: the source's next delta is a full copy. Crash-safe: volume.meta
  // goes first, and a replica.meta without it is an empty replica.
  Status reset(const std::string& uuid);

  // The geometry OPEN_REPLICA announces. Equal: nothing to do. Larger with the same
  // chunk size (the source volume grew, `volume resize`): the replica grows to it
  // online; its kept points read as zeros past their old end, as the source's do.
  // Order: the volume's own crash-safe resize, then replica.meta; open() finishes a
  // grow cut short between them. Smaller, or another chunk size: refused, nothing changes.
  Status follow_source_geometry(uint64_t size_bytes, uint64_t chunk_size_bytes);

  // Starts (or resumes, when begin.first_record > 0) staging a delta.
  // Refuses a delta whose base is not the newest point (replayed, duplicated or out of
  // order), unless it is a full delta.
  Status begin_delta(const BeginDelta& begin);
  Status stage(const ChunkRecord& record);
  // Commits the staged delta as the source's point (durable and atomic): the checks of
  // seal(), then the commit; no seal record is written first. REQUIRES: record_count staged.
  Status end_delta(uint64_t record_count);
  // A group member's END_DELTA (repl/group_commit.h): makes the whole delta durable
  // and records it as complete, but does not commit it. A sealed delta survives
  // restarts and is committed by commit_sealed() once every member is sealed.
  // Idempotent for a delta already sealed.
  Status seal(uint64_t record_count);
  bool sealed_at(uint64_t cycle) const;
  // Makes the sealed delta to `cycle` the newest point (one volume.meta rename).
  // OK without doing anything when the replica already holds `cycle` (a commit rolled
  // forward earlier); refused when no whole delta to `cycle` is staged.
  Status commit_sealed(uint64_t cycle);
  // Merges points older than the newest `keep` into the base. `progress` is called
  // now and then (keep-alives).
  Status apply(const std::function<void()>& progress);

  // One chunk for repair_chunks(): `data` is the chunk's whole content (the volume's
  // last chunk clipped at its end), or empty for a chunk that reads as zero.
  struct RepairChunk {
    uint64_t chunk_index = 0;
    std::span<const uint8_t> data;
  };
  // `mirror verify --repair` (repl/verify_session.h): overwrites these chunks of the
  // newest point `cycle` in place (in base.img, or in the frozen layer that point reads
  // the chunk from), durably (fdatasync).
  // - REQUIRES, else refused with nothing written: the replica is idle (no delta staged,
  //   being merged or resyncing) and its newest point is `cycle`; chunk indexes
  //   strictly ascending and within the volume; each `data` empty or exactly the chunk's
  //   length. A zero chunk is deallocated (punch_hole), so it reads as zero.
  // - Returns OK once every chunk is written and durable.
  // - Not atomic: after an error or a crash some chunks may hold the new content and
  //   others the old. Each new one is point `cycle`'s own content, so the image is never
  //   further from that point than before; verify again to find what is left.
  // - Changes nothing else: applied cycle, freeze time and replica.meta stay; a delta
  //   waits for it (delta_mutex_); NBD readers see each chunk before or after its repair.
  Status repair_chunks(uint64_t cycle, std::span<const RepairChunk> chunks);

  // Reads the newest point.
  Status read(uint64_t offset_bytes, std::span<uint8_t> out);
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes);
  // Reads a kept point (served over NBD as SOURCE/VOLUME@CYCLE).
  Status read_point(uint64_t cycle, uint64_t offset_bytes, std::span<uint8_t> out);
  Result<std::vector<Extent>> allocated_extents_at(uint64_t cycle, uint64_t offset_bytes, uint64_t length_bytes);

  // Failback: a demoted volume taken over as this replica holds its own data,
  // labelled as point `cycle` of volume `point_uuid` (the last point both sides share),
  // with the chunks in `runs` changed after it. It is "resyncing" and unreadable until
  // the source's next delta (which overwrites those chunks too) commits.
  struct Resync {
    uint64_t cycle = 0;
    std::string point_uuid;
    std::vector<std::pair<uint64_t, uint64_t>> runs;  // [first, first + count)
  };
  // Writes resync.meta into `dir` (before the directory becomes a replica).
  static Status write_resync(FileSystem& fs, const std::string& dir, const Resync& resync);
  bool resyncing() const;
  // A full copy into a replica that held nothing is being written straight into
  // base.img: reads (NBD, verify) are refused until it commits.
  bool filling_base() const;

  // Promote takes the directory over: from now on this object writes nothing of its
  // own (no progress record on destruction).
  void close_without_saving();

  // The volume underneath, for promote (which takes the directory over).
  std::shared_ptr<Volume> store_volume() const { return current(); }

 private:
  Replica(FileSystem& fs, std::string dir) : fs_(fs), dir_(std::move(dir)) {}
  struct Staging {
    BeginDelta header;               // target_cycle 0 = nothing staged
    uint64_t durable_records = 0;    // records known to be on disk
    uint64_t last_chunk_index = 0;   // of the last durable record
    bool sealed = false;             // END_DELTA received, every record durable
    // A delta into a replica that holds nothing yet, written straight into
    // base.img (Volume::begin_base_fill): no layer, no merge. Until it commits, the
    // base is no point at all, so reads are refused (filling_base()).
    bool into_base = false;
  };
  // REQUIRES: state_mutex_ held.
  bool filling_base_locked() const { return meta_.staging.header.target_cycle != 0 && meta_.staging.into_base; }
  // Whether a fresh delta `begin` may be written into base.img (see Staging::into_base).
  bool can_fill_base(const BeginDelta& begin) const;
  Status initial_copy_busy() const;  // the error for a read while filling_base()
  struct Meta {
    std::string source_node;
    std::string volume_name;
    uint64_t size_bytes = 0;
    uint64_t chunk_size_bytes = 0;
    uint32_t keep = kDefaultKeep;
    std::string source_uuid;
    std::string group;
    Staging staging;
  };
  static std::string encode_meta(const Meta& meta);
  static Result<Meta> decode_meta(const std::string& contents, const std::string& where);
  Status write_meta_locked();  // REQUIRES: state_mutex_ held exclusive
  // Sets one field of replica.meta durably; on failure memory keeps the old value.
  template <typename Field, typename Value>
  Status set_meta_field(Field Meta::*field, const Value& value);
  // replica.meta records the volume's size (the last step of a grow).
  Status record_size(uint64_t size_bytes);
  // seal(), or with durable false only its checks and the zeroing of a full delta:
  // end_delta() commits right after, and the commit makes the delta durable.
  Status seal_delta(uint64_t record_count, bool durable);
  // commit_sealed(), or for end_delta() (require_seal false) the delta just ended.
  Status commit_staged(uint64_t cycle, bool require_seal);
  Status convert_format_1(const std::string& contents);
  Status clear_staging();
  Status record_progress();  // syncs the layer, then records the durable count
  Status load_resync();
  // After the resync's delta committed: merges away the base labelled `common_cycle`
  // (it holds this side's discarded writes), then removes resync.meta.
  Status finish_resync(uint64_t common_cycle);
  Status clear_resync();

  FileSystem& fs_;
  const std::string dir_;
  std::string source_node_;
  std::string volume_name_;
  // Replaced only by reset(); everything else reads it through current().
  std::shared_ptr<Volume> volume_;  // GUARDED_BY(state_mutex_)
  std::shared_ptr<Volume> current() const {
    std::shared_lock lock(state_mutex_);
    return volume_;
  }

  std::mutex delta_mutex_;                 // one delta operation at a time
  mutable std::shared_mutex state_mutex_;  // guards everything below
  Meta meta_;
  uint64_t staged_records_ = 0;     // records staged in this process (>= durable)
  uint64_t last_staged_chunk_ = 0;
  // Partial records (RecordKind::kPartial) of the chunk being received, not yet in
  // staged_records_: the resume point always lies after a chunk's last record.
  uint64_t open_chunk_ = 0;
  uint64_t open_chunk_records_ = 0;
  uint64_t open_chunk_end_bytes_ = 0;  // end of the last one within the chunk
  void close_open_chunk_locked();  // counts them once the chunk is complete. REQUIRES: state_mutex_
  uint64_t bytes_since_progress_ = 0;
  uint64_t bytes_this_attempt_ = 0;  // staged since this delta began or resumed
  bool applying_ = false;
  bool closed_ = false;
  std::optional<Resync> resync_;
};

}  // namespace amirror::repl
