// SPDX-License-Identifier: Apache-2.0
// A replica on the target node: the image of one source volume as of its last applied
// freeze point (the patent's RVx/1), plus at most one delta being received or applied
// (RVx/s). Files, under <data_dir>/replicas/<source_node>/<volume>/ (formats in
// docs/formats/replica.md):
//   replica.img    the plain raw image (served read-only over NBD as SOURCE/VOLUME)
//   replica.meta   size, chunk size, applied cycle and freeze time (write-new-then-rename)
//   delta.stage    the delta being staged: header, checksummed records, commit record
//
// Apply protocol (why the replica is always the image of some freeze point):
//  1. records are appended to delta.stage as they arrive (checksums already verified);
//  2. end_delta(): fdatasync delta.stage, append the commit record, fdatasync again —
//     from here on the delta is durable and the source is told so;
//  3. apply(): write every record into replica.img, fdatasync it, then replace
//     replica.meta with the new cycle, then remove delta.stage.
//  A crash in 3 leaves a committed delta.stage whose base is still the applied cycle;
//  open() finishes the apply (it is idempotent) before anything reads the replica.
//  While a committed delta is being applied, read() serves its chunks from the stage
//  file, so NBD readers see the old point before the commit and the new one after —
//  never a mix. (The raw image file itself is only consistent while state is "idle".)
//
// Thread-safety: all methods are thread-safe; one delta at a time (callers receiving
// for the same replica are serialized by the node).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>

#include "repl/wire.h"
#include "store/file_system.h"

namespace amirror::repl {

class Replica {
 public:
  // Opens the replica in `dir`, creating an empty one (all zeros, applied cycle 0) if
  // absent. An existing replica of another size or chunk size is refused.
  static Result<std::unique_ptr<Replica>> open_or_create(FileSystem& fs, const std::string& dir,
                                                         const std::string& source_node,
                                                         const std::string& volume,
                                                         uint64_t size_bytes, uint64_t chunk_size_bytes);
  // Opens an existing replica, finishing an interrupted apply.
  static Result<std::unique_ptr<Replica>> open(FileSystem& fs, const std::string& dir);

  const std::string& source_node() const { return source_node_; }
  const std::string& volume() const { return volume_; }
  uint64_t size_bytes() const { return size_bytes_; }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }
  std::string image_path() const { return dir_ + "/replica.img"; }
  ReplicaState state() const;
  // "idle", "receiving", "committed" (durable, not yet applied), "applying"
  std::string activity() const;
  // The freeze point read() serves: a committed delta's target cycle from its commit
  // on (even while its apply waits, e.g. for disk space), else the applied cycle.
  uint64_t readable_cycle() const;

  // Starts (or resumes, when begin.first_record > 0) staging a delta.
  // Refuses a delta whose base is not the applied cycle (replayed, duplicated or out of
  // order), unless it is a full delta.
  Status begin_delta(const BeginDelta& begin);
  Status stage(const ChunkRecord& record);
  // Makes the staged delta durable (commit record). REQUIRES: record_count records staged.
  Status end_delta(uint64_t record_count);
  // Applies the committed delta. `progress` is called now and then (keep-alives).
  Status apply(const std::function<void()>& progress);

  // One chunk for repair_chunks(): `data` is the chunk's whole content (the volume's
  // last chunk clipped at its end), or empty for a chunk that reads as zero.
  struct RepairChunk {
    uint64_t chunk_index = 0;
    std::span<const uint8_t> data;
  };
  // `mirror verify --repair` (repl/verify_session.h): overwrites these chunks of the
  // image with the source's content at freeze point `cycle`, then fdatasyncs the image.
  // - REQUIRES, else refused with nothing written: the replica is idle (no delta staged,
  //   committed or being applied) and its applied cycle is `cycle`; chunk indexes
  //   strictly ascending and within the volume; each `data` empty or exactly the chunk's
  //   length. A zero chunk is deallocated (punch_hole), so it reads as zero.
  // - Returns OK once every chunk is written and durable.
  // - Not atomic: after an error or a crash some chunks may hold the new content and
  //   others the old. Each new one is point `cycle`'s own content, so the image is never
  //   further from that point than before; verify again to find what is left.
  // - Changes nothing else: applied cycle, freeze time and replica.meta stay; a delta
  //   waits for it (delta_mutex_); NBD readers see each chunk before or after its repair.
  Status repair_chunks(uint64_t cycle, std::span<const RepairChunk> chunks);

  // Reads the image as of the applied cycle, or of the committed delta being applied.
  Status read(uint64_t offset_bytes, std::span<uint8_t> out);
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes);

 private:
  Replica(FileSystem& fs, std::string dir) : fs_(fs), dir_(std::move(dir)) {}
  Status load_meta();
  Status write_meta();
  // Scans delta.stage: header, valid records (indexing them), commit; truncates a torn tail.
  Status scan_stage();
  Status apply_locked(const std::function<void()>& progress);  // REQUIRES: delta_mutex_

  struct StagedRecord {
    uint64_t file_offset_bytes;  // of the record's data in delta.stage
    RecordKind kind;
  };

  FileSystem& fs_;
  const std::string dir_;
  std::string source_node_;
  std::string volume_;
  uint64_t size_bytes_ = 0;
  uint64_t chunk_size_bytes_ = 0;
  std::unique_ptr<File> image_;

  std::mutex delta_mutex_;  // one delta operation at a time
  mutable std::shared_mutex state_mutex_;  // guards everything below; readers shared
  uint64_t applied_cycle_ = 0;
  int64_t applied_freeze_time_unix_ms_ = 0;
  std::unique_ptr<File> stage_;       // open while a delta is staged
  bool stage_valid_ = false;          // stage_ holds a header
  BeginDelta stage_header_;
  uint64_t staged_records_ = 0;
  uint64_t stage_end_bytes_ = 0;
  uint64_t last_staged_chunk_ = 0;
  bool committed_ = false;
  bool applying_ = false;
  std::map<uint64_t, StagedRecord> committed_index_;  // chunk -> record, while applying
  std::map<uint64_t, StagedRecord> staging_index_;    // the same, built while staging
};

}  // namespace amirror::repl
