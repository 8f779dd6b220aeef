// SPDX-License-Identifier: Apache-2.0
// Byte formats: docs/formats/replica.md.
#include "repl/replica.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "base/assert.h"
#include "base/checksum.h"
#include "base/coding.h"
#include "base/names.h"
#include "base/uuid.h"
#include "base/units.h"

namespace amirror::repl {
namespace {

constexpr char kMetaMagic[8] = {'A', 'M', 'R', 'E', 'P', 'L', 'I', 'C'};
constexpr uint32_t kMetaVersion = 2;
constexpr const char* kMetaName = "replica.meta";
constexpr const char* kVolumeMetaName = "volume.meta";
// Format 1 files (docs/formats/replica.md, "Format 1"), converted on open.
constexpr const char* kFormat1ImageName = "replica.img";
constexpr const char* kFormat1StageName = "delta.stage";
constexpr const char* kBaseName = "base.img";
constexpr const char* kResyncName = "resync.meta";
constexpr char kResyncMagic[8] = {'A', 'M', 'R', 'E', 'S', 'Y', 'N', 'C'};
// staged_flags bits (docs/formats/replica.md).
constexpr uint64_t kStagedFull = 1;
constexpr uint64_t kStagedSealed = 2;
constexpr uint64_t kStagedIntoBase = 4;  // written straight into base.img (a base fill)


bool valid_geometry(uint64_t size_bytes, uint64_t chunk_size_bytes) {
  VolumeOptions options;
  options.size_bytes = size_bytes;
  options.chunk_size_bytes = chunk_size_bytes;
  return validate_volume_options(options).ok();
}

}  // namespace

std::string Replica::encode_meta(const Meta& meta) {
  std::string out(kMetaMagic, 8);
  append_u32(out, kMetaVersion);
  append_u32(out, 0);
  append_u64(out, meta.size_bytes);
  append_u64(out, meta.chunk_size_bytes);
  append_u32(out, meta.keep);
  append_u32(out, 0);
  append_uuid(out, meta.source_uuid);
  const BeginDelta& header = meta.staging.header;
  append_u64(out, header.base_cycle);
  append_u64(out, header.target_cycle);
  append_u64(out, static_cast<uint64_t>(header.freeze_time_unix_ms));
  append_u64(out, header.record_count);
  append_u64(out, (header.full ? kStagedFull : 0) | (meta.staging.sealed ? kStagedSealed : 0) |
                      (meta.staging.into_base ? kStagedIntoBase : 0));
  append_u64(out, meta.staging.durable_records);
  append_u64(out, meta.staging.last_chunk_index);
  append_u32(out, static_cast<uint32_t>(meta.source_node.size()));
  out += meta.source_node;
  append_u32(out, static_cast<uint32_t>(meta.volume_name.size()));
  out += meta.volume_name;
  append_u32(out, static_cast<uint32_t>(meta.group.size()));
  out += meta.group;
  append_u64(out, checksum64(out.data(), out.size()));
  return out;
}

Result<Replica::Meta> Replica::decode_meta(const std::string& contents, const std::string& where) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  constexpr size_t kFixedBytes = 8 + 4 + 4 + 8 + 8 + 4 + 4 + kUuidBytes + 7 * 8;
  if (contents.size() < kFixedBytes + 4 + 4 + 4 + 8 || std::memcmp(bytes, kMetaMagic, 8) != 0) {
    return corruption(where + " is not an amirror replica file");
  }
  const size_t checksum_at = contents.size() - 8;
  if (checksum64(bytes, checksum_at) != get_u64(bytes + checksum_at)) {
    return corruption(where + " failed its checksum; the replica metadata is damaged");
  }
  if (get_u32(bytes + 8) != kMetaVersion) {
    return corruption(where + ": format version " + std::to_string(get_u32(bytes + 8)) + " is not " +
                      std::to_string(kMetaVersion));
  }
  Meta meta;
  meta.size_bytes = get_u64(bytes + 16);
  meta.chunk_size_bytes = get_u64(bytes + 24);
  meta.keep = get_u32(bytes + 32);
  meta.source_uuid = read_uuid(bytes + 40);
  size_t position = 40 + kUuidBytes;
  BeginDelta& header = meta.staging.header;
  header.base_cycle = get_u64(bytes + position);
  header.target_cycle = get_u64(bytes + position + 8);
  header.freeze_time_unix_ms = static_cast<int64_t>(get_u64(bytes + position + 16));
  header.record_count = get_u64(bytes + position + 24);
  const uint64_t flags = get_u64(bytes + position + 32);
  header.full = (flags & kStagedFull) != 0;
  meta.staging.sealed = (flags & kStagedSealed) != 0;
  meta.staging.into_base = (flags & kStagedIntoBase) != 0;
  meta.staging.durable_records = get_u64(bytes + position + 40);
  meta.staging.last_chunk_index = get_u64(bytes + position + 48);
  position = kFixedBytes;
  auto read_name = [&](std::string& out) {
    if (checksum_at < position + 4) return false;
    uint32_t length = get_u32(bytes + position);
    position += 4;
    if (length > kMaxNameBytes || checksum_at < position + length) return false;
    out.assign(contents.data() + position, length);
    position += length;
    return true;
  };
  if (!read_name(meta.source_node) || !read_name(meta.volume_name) || !read_name(meta.group) || position != checksum_at ||
      (!meta.group.empty() && !validate_name(meta.group, "group name").ok()) ||
      !validate_name(meta.source_node, "node name").ok() || !validate_name(meta.volume_name, "volume name").ok() ||
      !valid_geometry(meta.size_bytes, meta.chunk_size_bytes) || meta.keep == 0 || meta.keep > kMaxKeep ||
      meta.staging.durable_records > meta.staging.header.record_count ||
      (flags & ~(kStagedFull | kStagedSealed | kStagedIntoBase)) != 0 ||
      (meta.staging.sealed && meta.staging.durable_records != meta.staging.header.record_count)) {
    return corruption(where + ": malformed replica metadata");
  }
  return meta;
}

Status Replica::write_meta_locked() { return write_file_atomically(fs_, dir_, kMetaName, encode_meta(meta_)); }

Result<std::unique_ptr<Replica>> Replica::open_or_create(FileSystem& fs, const std::string& dir,
                                                         const std::string& source_node,
                                                         const std::string& volume, uint64_t size_bytes,
                                                         uint64_t chunk_size_bytes, const std::string& device) {
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs.exists(dir + "/" + kMetaName));
  if (exists) {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Replica> replica, open(fs, dir));
    AMIRROR_RETURN_IF_ERROR(replica->follow_source_geometry(size_bytes, chunk_size_bytes));
    return replica;
  }
  if (!valid_geometry(size_bytes, chunk_size_bytes)) {
    return invalid_argument("bad replica geometry from the source: size " + std::to_string(size_bytes) +
                            ", chunk size " + std::to_string(chunk_size_bytes));
  }
  // replica.meta first: a replica.meta without volume.meta is an empty replica whose
  // volume open() creates; volume files without replica.meta are never looked at.
  Meta meta;
  meta.source_node = source_node;
  meta.volume_name = volume;
  meta.size_bytes = size_bytes;
  meta.chunk_size_bytes = chunk_size_bytes;
  AMIRROR_RETURN_IF_ERROR(write_file_atomically(fs, dir, kMetaName, encode_meta(meta)));
  return open(fs, dir, device);
}

Result<std::unique_ptr<Replica>> Replica::open(FileSystem& fs, const std::string& dir, const std::string& device) {
  std::unique_ptr<Replica> replica(new Replica(fs, dir));
  std::string where = dir + "/" + kMetaName;
  AMIRROR_ASSIGN_OR_RETURN(std::string contents, read_small_file(fs, where, 4096));
  if (contents.size() >= 12 && std::memcmp(contents.data(), kMetaMagic, 8) == 0 &&
      get_u32(reinterpret_cast<const uint8_t*>(contents.data()) + 8) == 1) {
    AMIRROR_RETURN_IF_ERROR(replica->convert_format_1(contents).with_context("convert replica " + dir +
                                                                             " from format 1"));
    AMIRROR_ASSIGN_OR_RETURN(contents, read_small_file(fs, where, 4096));
  }
  AMIRROR_ASSIGN_OR_RETURN(replica->meta_, decode_meta(contents, where));
  replica->source_node_ = replica->meta_.source_node;
  replica->volume_name_ = replica->meta_.volume_name;
  AMIRROR_ASSIGN_OR_RETURN(bool has_volume, fs.exists(dir + "/" + kVolumeMetaName));
  if (has_volume) {
    AMIRROR_ASSIGN_OR_RETURN(replica->volume_, Volume::open(fs, dir));
  } else {
    // Created, then cut short before its volume existed: it never held a point.
    for (const char* name : {kBaseName, "layer-1.data", "layer-1.map"}) (void)fs.remove(dir + "/" + name);
    VolumeOptions options;
    options.size_bytes = replica->meta_.size_bytes;
    options.chunk_size_bytes = replica->meta_.chunk_size_bytes;
    options.base_path = device;
    options.base_may_be_larger = !device.empty();
    AMIRROR_ASSIGN_OR_RETURN(replica->volume_, Volume::create(fs, dir, options));
  }
  if (replica->current()->size_bytes() < replica->meta_.size_bytes ||
      replica->current()->chunk_size_bytes() != replica->meta_.chunk_size_bytes) {
    return corruption(dir + ": replica.meta and volume.meta disagree on size or chunk size");
  }
  if (replica->current()->size_bytes() > replica->meta_.size_bytes) {
    // A grow was cut short after the volume's resize: only replica.meta lags.
    AMIRROR_RETURN_IF_ERROR(replica->record_size(replica->current()->size_bytes())
                                .with_context("finish growing replica " + dir));
  }
  // The replica's own volume takes no client writes; deltas go through write_staged.
  if (!replica->current()->read_only()) AMIRROR_RETURN_IF_ERROR(replica->current()->set_read_only(true));
  const BeginDelta& staged = replica->meta_.staging.header;
  if (staged.target_cycle != 0 && replica->current()->cycle() >= staged.target_cycle) {
    // The commit (freeze) happened; only clearing the record of the delta was lost.
    AMIRROR_RETURN_IF_ERROR(replica->clear_staging());
  }
  AMIRROR_RETURN_IF_ERROR(replica->load_resync());
  replica->staged_records_ = replica->meta_.staging.durable_records;
  replica->last_staged_chunk_ = replica->meta_.staging.last_chunk_index;
  AMIRROR_RETURN_IF_ERROR(replica->apply([] {}));
  return replica;
}

// Format 1: replica.img (the applied point as a raw image), replica.meta version 1, and
// maybe delta.stage. Every step can be redone after a crash; the new replica.meta is
// the last write, so until it lands the replica is still "format 1" and converted again.
// A staged delta, even a committed one, is dropped: its APPLIED was never sent, so the
// source still holds it and sends it again.
Status Replica::convert_format_1(const std::string& contents) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  if (contents.size() < 64 + 2 || checksum64(bytes, contents.size() - 8) != get_u64(bytes + contents.size() - 8)) {
    return corruption(dir_ + "/" + kMetaName + " (format 1) is damaged");
  }
  Meta meta;
  meta.size_bytes = get_u64(bytes + 16);
  meta.chunk_size_bytes = get_u64(bytes + 24);
  uint64_t applied_cycle = get_u64(bytes + 32);
  auto applied_time = static_cast<int64_t>(get_u64(bytes + 40));
  size_t position = 48;
  auto read_name = [&](std::string& out) {
    if (contents.size() - 8 < position + 4) return false;
    uint32_t length = get_u32(bytes + position);
    position += 4;
    if (length > kMaxNameBytes || contents.size() - 8 < position + length) return false;
    out.assign(contents.data() + position, length);
    position += length;
    return true;
  };
  if (!read_name(meta.source_node) || !read_name(meta.volume_name) ||
      !valid_geometry(meta.size_bytes, meta.chunk_size_bytes)) {
    return corruption(dir_ + "/" + kMetaName + " (format 1) is malformed");
  }
  Status removed = fs_.remove(dir_ + "/" + kFormat1StageName);
  if (!removed.ok() && removed.code() != ErrorCode::kNotFound) return removed;
  AMIRROR_ASSIGN_OR_RETURN(bool has_image, fs_.exists(dir_ + "/" + kFormat1ImageName));
  if (has_image) AMIRROR_RETURN_IF_ERROR(fs_.rename(dir_ + "/" + kFormat1ImageName, dir_ + "/" + kBaseName));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_));
  AMIRROR_ASSIGN_OR_RETURN(bool has_volume, fs_.exists(dir_ + "/" + kVolumeMetaName));
  if (!has_volume) {
    VolumeOptions options;
    options.size_bytes = meta.size_bytes;
    options.chunk_size_bytes = meta.chunk_size_bytes;
    AMIRROR_ASSIGN_OR_RETURN(auto volume, Volume::create_over_base(fs_, dir_, options, applied_cycle, applied_time));
  }
  return write_file_atomically(fs_, dir_, kMetaName, encode_meta(meta));
}

Status Replica::write_resync(FileSystem& fs, const std::string& dir, const Resync& resync) {
  std::string out(kResyncMagic, 8);
  append_u32(out, 1);
  append_u32(out, 0);
  append_u64(out, resync.cycle);
  append_uuid(out, resync.point_uuid);
  append_u64(out, resync.runs.size());
  for (const auto& [first, count] : resync.runs) {
    append_u64(out, first);
    append_u64(out, count);
  }
  append_u64(out, checksum64(out.data(), out.size()));
  return write_file_atomically(fs, dir, kResyncName, out);
}

Status Replica::load_resync() {
  std::string where = dir_ + "/" + kResyncName;
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs_.exists(where));
  if (!exists) return Status();
  AMIRROR_ASSIGN_OR_RETURN(std::string contents, read_small_file(fs_, where, 64 * kMiB));
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  constexpr size_t kFixedBytes = 8 + 4 + 4 + 8 + kUuidBytes + 8;
  if (contents.size() < kFixedBytes + 8 || std::memcmp(bytes, kResyncMagic, 8) != 0 ||
      checksum64(bytes, contents.size() - 8) != get_u64(bytes + contents.size() - 8)) {
    return corruption(where + " is damaged");
  }
  Resync resync;
  resync.cycle = get_u64(bytes + 16);
  resync.point_uuid = read_uuid(bytes + 24);
  uint64_t runs = get_u64(bytes + 24 + kUuidBytes);
  if (runs > kMaxResyncRuns || contents.size() != kFixedBytes + 16 * runs + 8) return corruption(where + " is damaged");
  for (uint64_t i = 0; i < runs; ++i) {
    resync.runs.emplace_back(get_u64(bytes + kFixedBytes + 16 * i), get_u64(bytes + kFixedBytes + 16 * i + 8));
  }
  if (current()->cycle() > resync.cycle) return finish_resync(resync.cycle);  // its delta committed; the rest was cut short
  std::unique_lock lock(state_mutex_);
  resync_ = std::move(resync);
  return Status();
}

Status Replica::finish_resync(uint64_t common_cycle) {
  // The base is labelled as the common point but holds this side's own writes after it
  // in the resync chunks: it is not that point, so it must not stay a kept point (NBD
  // SOURCE/VOLUME@CYCLE, promote --at). Merging the delta's layer into it makes it the
  // delta's point; resync.meta goes only after, so a crash in between merges at open.
  std::shared_ptr<Volume> volume = current();
  while (volume->base_cycle() == common_cycle && volume->cycle() > common_cycle) {
    AMIRROR_RETURN_IF_ERROR(volume->merge_oldest());
  }
  return clear_resync();
}

Status Replica::clear_resync() {
  Status removed = fs_.remove(dir_ + "/" + kResyncName);
  if (!removed.ok() && removed.code() != ErrorCode::kNotFound) return removed;
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_));
  std::unique_lock lock(state_mutex_);
  resync_.reset();
  return Status();
}

bool Replica::resyncing() const {
  std::shared_lock lock(state_mutex_);
  return resync_.has_value();
}

Status Replica::follow_source_geometry(uint64_t size_bytes, uint64_t chunk_size_bytes) {
  std::lock_guard delta(delta_mutex_);  // no delta is staged while the volume grows
  std::shared_ptr<Volume> volume = current();
  if (volume->size_bytes() == size_bytes && volume->chunk_size_bytes() == chunk_size_bytes) return Status();
  if (size_bytes < volume->size_bytes() || chunk_size_bytes != volume->chunk_size_bytes()) {
    return invalid_argument("replica " + source_node_ + "/" + volume_name_ + " is " +
                            std::to_string(volume->size_bytes()) + " bytes with " +
                            std::to_string(volume->chunk_size_bytes()) + "-byte chunks, but the source sends " +
                            std::to_string(size_bytes) + " bytes with " + std::to_string(chunk_size_bytes) +
                            "-byte chunks (a replica only grows, in whole chunks of the same size); delete it "
                            "(amirror replica delete " + source_node_ + "/" + volume_name_ + ") to start over");
  }
  AMIRROR_RETURN_IF_ERROR(volume->resize(size_bytes).status().with_context("grow replica " + source_node_ + "/" +
                                                                          volume_name_));
  return record_size(size_bytes);
}

Status Replica::record_size(uint64_t size_bytes) {
  std::unique_lock lock(state_mutex_);
  if (meta_.size_bytes == size_bytes) return Status();
  uint64_t old = meta_.size_bytes;
  meta_.size_bytes = size_bytes;
  Status status = write_meta_locked();
  if (!status.ok()) meta_.size_bytes = old;  // open() finishes it from volume.meta
  return status;
}

Status Replica::clear_staging() {
  std::unique_lock lock(state_mutex_);
  Staging old = meta_.staging;
  meta_.staging = Staging{};
  Status status = write_meta_locked();
  if (!status.ok()) {
    meta_.staging = old;
    return status;
  }
  staged_records_ = 0;
  open_chunk_records_ = 0;
  last_staged_chunk_ = 0;
  bytes_since_progress_ = bytes_this_attempt_ = 0;
  return Status();
}

std::optional<uint64_t> Replica::image_cycle() const {
  {
    std::shared_lock lock(state_mutex_);
    if (applying_ || filling_base_locked()) return std::nullopt;
  }
  std::shared_ptr<Volume> volume = current();
  if (volume->merge_pending()) return std::nullopt;
  return volume->base_cycle();
}

ReplicaState Replica::state() const {
  ReplicaState state;
  state.applied_cycle = current()->cycle();
  // Point 0 is "nothing received yet"; its time is the volume's creation, not a freeze.
  if (state.applied_cycle != 0) state.applied_freeze_time_unix_ms = current()->freeze_time_unix_ms(state.applied_cycle);
  std::shared_lock lock(state_mutex_);
  state.point_uuid = resync_ ? resync_->point_uuid : meta_.source_uuid;
  if (resync_) state.resync_runs = resync_->runs;
  const BeginDelta& header = meta_.staging.header;
  if (header.target_cycle != 0) {
    state.staged_target_cycle = header.target_cycle;
    state.staged_base_cycle = header.full ? 0 : header.base_cycle;
    state.staged_record_count = staged_records_;
    state.staged_last_chunk_index = last_staged_chunk_;
  }
  return state;
}

std::string Replica::activity() const {
  std::shared_lock lock(state_mutex_);
  if (applying_) return "applying";
  if (resync_) return "resyncing";
  if (meta_.staging.header.target_cycle != 0) return "receiving";
  return "idle";
}

std::vector<PointInfo> Replica::points() const {
  std::vector<PointInfo> points = current()->points();
  std::erase_if(points, [](const PointInfo& point) { return point.cycle == 0; });
  return points;
}

uint32_t Replica::keep() const {
  std::shared_lock lock(state_mutex_);
  return meta_.keep;
}

Status Replica::set_keep(uint32_t keep) {
  if (keep == 0 || keep > kMaxKeep) {
    return invalid_argument("keep " + std::to_string(keep) + " is out of range: 1 to " + std::to_string(kMaxKeep));
  }
  return set_meta_field(&Meta::keep, keep);
}

std::string Replica::group() const {
  std::shared_lock lock(state_mutex_);
  return meta_.group;
}

Status Replica::set_group(const std::string& group) { return set_meta_field(&Meta::group, group); }

std::string Replica::source_uuid() const {
  std::shared_lock lock(state_mutex_);
  return meta_.source_uuid;
}

Status Replica::set_source_uuid(const std::string& uuid) { return set_meta_field(&Meta::source_uuid, uuid); }

template <typename Field, typename Value>
Status Replica::set_meta_field(Field Meta::*field, const Value& value) {
  std::unique_lock lock(state_mutex_);
  if (meta_.*field == value) return Status();
  Field old = meta_.*field;
  meta_.*field = value;
  Status status = write_meta_locked();
  if (!status.ok()) meta_.*field = std::move(old);  // memory says what the disk says
  return status;
}

Status Replica::reset(const std::string& uuid) {
  std::lock_guard delta(delta_mutex_);
  if (const std::string& device = current()->adopted_path(); !device.empty()) {
    // The fresh volume would need the device while the old one (and its readers) still
    // hold it claimed.
    return Status(ErrorCode::kUnsupported,
                  "replica " + source_node_ + "/" + volume_name_ + " on " + device + " holds points of another source "
                  "volume; run `amirror replica delete " + source_node_ + "/" + volume_name_ + "` here to start over");
  }
  VolumeOptions options;
  options.size_bytes = current()->size_bytes();
  options.chunk_size_bytes = current()->chunk_size_bytes();
  {
    std::unique_lock lock(state_mutex_);
    meta_.staging = Staging{};
    meta_.source_uuid = uuid;
    AMIRROR_RETURN_IF_ERROR(write_meta_locked());
    staged_records_ = last_staged_chunk_ = bytes_since_progress_ = bytes_this_attempt_ = open_chunk_records_ = 0;
  }
  // Readers holding the old volume keep reading its (unlinked) files until they let go.
  AMIRROR_RETURN_IF_ERROR(fs_.remove(dir_ + "/" + kVolumeMetaName));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.list_dir(dir_));
  for (const std::string& name : names) {
    if (name != kMetaName) AMIRROR_RETURN_IF_ERROR(fs_.remove(dir_ + "/" + name));
  }
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> fresh, Volume::create(fs_, dir_, options));
  AMIRROR_RETURN_IF_ERROR(fresh->set_read_only(true));
  std::unique_lock lock(state_mutex_);
  volume_ = std::move(fresh);
  return Status();
}

Status Replica::begin_delta(const BeginDelta& begin) {
  std::lock_guard delta(delta_mutex_);
  uint64_t newest = current()->cycle();
  if (!begin.full && begin.base_cycle != newest) {
    return invalid_argument("refusing delta " + std::to_string(begin.base_cycle) + "->" +
                            std::to_string(begin.target_cycle) + " for replica " + source_node_ + "/" +
                            volume_name_ + ": the replica is at cycle " + std::to_string(newest) +
                            " (replayed, duplicated or out-of-order delta)");
  }
  if (!begin.full && begin.target_cycle <= newest) {
    return invalid_argument("refusing delta to cycle " + std::to_string(begin.target_cycle) +
                            ": the replica already has cycle " + std::to_string(newest));
  }
  if (begin.target_cycle == 0) return invalid_argument("refusing a delta to cycle 0");
  if (begin.first_record > 0) {
    // Resume: the staging must hold this very delta with exactly that many records.
    std::unique_lock lock(state_mutex_);
    const BeginDelta& staged = meta_.staging.header;
    if (staged.target_cycle != begin.target_cycle || staged.base_cycle != begin.base_cycle ||
        staged.full != begin.full || staged_records_ != begin.first_record ||
        (meta_.staging.sealed && begin.record_count != staged.record_count)) {
      return invalid_argument("cannot resume delta to cycle " + std::to_string(begin.target_cycle) +
                              " at record " + std::to_string(begin.first_record) +
                              ": the staged delta does not match; the source must restart it");
    }
    meta_.staging.header.record_count = begin.record_count;
    // Partial records of a chunk cut short are resent from its first one (stage()).
    open_chunk_records_ = 0;
    bytes_this_attempt_ = 0;
    return Status();
  }
  // A fresh delta: what the active layer holds of an earlier one goes. A full delta
  // to a number this replica already passed (the source volume was recreated) cannot
  // be frozen above its points: those points belong to another history, so they go.
  if (begin.full && begin.target_cycle <= newest) {
    AMIRROR_RETURN_IF_ERROR(current()->discard_after(current()->base_cycle()));
    if (current()->base_cycle() >= begin.target_cycle) {
      return invalid_argument("refusing full delta to cycle " + std::to_string(begin.target_cycle) + ": replica " +
                              source_node_ + "/" + volume_name_ + " holds cycle " +
                              std::to_string(current()->base_cycle()) + " of another history; delete it (amirror "
                              "replica delete " + source_node_ + "/" + volume_name_ + ") and the source sends it again");
    }
  } else if (!current()->active_changes().empty()) {
    AMIRROR_RETURN_IF_ERROR(current()->discard_after(current()->cycle()));
  }
  const bool into_base = can_fill_base(begin);
  if (!into_base && filling_base()) {
    // Cannot happen (a filling replica holds nothing, so any fresh delta fills), but a
    // delta on top of a half-filled base would make that part of a point: never.
    return invalid_argument("refusing delta to cycle " + std::to_string(begin.target_cycle) + " for replica " +
                            source_node_ + "/" + volume_name_ + ": its base is being filled");
  }
  {
    std::unique_lock lock(state_mutex_);
    Staging old = meta_.staging;
    meta_.staging = Staging{begin, 0, 0, false, into_base};
    Status status = write_meta_locked();
    if (!status.ok()) {
      meta_.staging = old;
      return status.with_context("record the delta being received");
    }
    staged_records_ = 0;
    open_chunk_records_ = 0;
    last_staged_chunk_ = 0;
    bytes_since_progress_ = bytes_this_attempt_ = 0;
  }
  // After replica.meta says "filling, 0 records durable": a crash from here on resumes
  // from the start, and this empties the base again first.
  return into_base ? current()->begin_base_fill() : Status();
}

bool Replica::can_fill_base(const BeginDelta& begin) const {
  std::shared_ptr<Volume> volume = current();
  // A delta from point 0 (full, or incremental from the empty image) onto a replica
  // holding nothing: written into an empty base, its records give the same image.
  return (begin.full || begin.base_cycle == 0) && begin.first_record == 0 && !resyncing() && volume->cycle() == 0 &&
         volume->points().size() == 1 && !volume->merge_pending() && volume->active_changes().empty();
}

bool Replica::filling_base() const {
  std::shared_lock lock(state_mutex_);
  return filling_base_locked();
}

void Replica::close_without_saving() {
  std::unique_lock lock(state_mutex_);
  closed_ = true;
}

Replica::~Replica() {
  bool behind;
  {
    std::shared_lock lock(state_mutex_);
    behind = !closed_ && volume_ != nullptr && meta_.staging.header.target_cycle != 0 &&
             staged_records_ > meta_.staging.durable_records;
  }
  if (behind) (void)record_progress();  // best effort: a failure only costs a resend
}

Status Replica::record_progress() {
  AMIRROR_RETURN_IF_ERROR(filling_base() ? current()->sync_base() : current()->flush());
  std::unique_lock lock(state_mutex_);
  Staging old = meta_.staging;
  meta_.staging.durable_records = staged_records_;
  meta_.staging.last_chunk_index = last_staged_chunk_;
  Status status = write_meta_locked();
  if (!status.ok()) {
    meta_.staging = old;
    return status;
  }
  bytes_since_progress_ = 0;
  return Status();
}

Status Replica::stage(const ChunkRecord& record) {
  std::lock_guard delta(delta_mutex_);
  const ChunkGeometry& geometry = current()->geometry();
  const bool partial = record.kind == RecordKind::kPartial;
  {
    std::shared_lock lock(state_mutex_);
    if (meta_.staging.header.target_cycle == 0) return invalid_argument("CHUNK outside a delta");
    if (meta_.staging.sealed) return invalid_argument("CHUNK after the delta's END_DELTA");
    if (record.record_index != staged_records_ + open_chunk_records_) {
      return invalid_argument("CHUNK record " + std::to_string(record.record_index) + " out of sequence (expected " +
                              std::to_string(staged_records_ + open_chunk_records_) + ")");
    }
    // Chunks ascend; only partial records of one chunk share it, at ascending offsets.
    bool in_order = open_chunk_records_ > 0
                        ? record.chunk_index > open_chunk_ ||
                              (partial && record.chunk_index == open_chunk_ &&
                               record.offset_in_chunk_bytes >= open_chunk_end_bytes_)
                        : staged_records_ == 0 || record.chunk_index > last_staged_chunk_;
    if (record.chunk_index >= geometry.chunk_count() || !in_order) {
      return invalid_argument("CHUNK for chunk " + std::to_string(record.chunk_index) +
                              " is out of range or out of order");
    }
    // A full delta replaces the image chunk by chunk: a chunk it sends in part would keep old bytes.
    if (partial && meta_.staging.header.full) return invalid_argument("partial CHUNK record in a full delta");
  }
  uint64_t offset = geometry.chunk_offset_bytes(record.chunk_index);
  uint64_t length = geometry.chunk_length_bytes(record.chunk_index);
  if (record.kind == RecordKind::kData && record.data.size() != length) {
    return invalid_argument("CHUNK data for chunk " + std::to_string(record.chunk_index) + " is " +
                            std::to_string(record.data.size()) + " bytes, expected " + std::to_string(length));
  }
  if (partial && (record.offset_in_chunk_bytes > length || record.data.size() > length - record.offset_in_chunk_bytes)) {
    return invalid_argument("CHUNK partial record for chunk " + std::to_string(record.chunk_index) + " at " +
                            std::to_string(record.offset_in_chunk_bytes) + " + " + std::to_string(record.data.size()) +
                            " bytes exceeds the chunk's " + std::to_string(length));
  }
  Status written;
  if (partial) {
    // The rest of the chunk stays as the newest point has it: in the active layer by
    // copy-on-first-write, or in a base fill (a delta from the empty point 0, whose
    // base began as holes) by leaving it zero.
    written = filling_base() ? current()->write_base_fill(offset + record.offset_in_chunk_bytes, record.data)
                             : current()->write_staged(offset + record.offset_in_chunk_bytes, record.data);
  } else if (filling_base()) {
    written = record.kind == RecordKind::kData ? current()->write_base_fill(offset, record.data)
                                               : current()->zero_base_fill(offset, length);
  } else {
    written = record.kind == RecordKind::kData ? current()->write_staged(offset, record.data)
                                               : current()->write_zeroes_staged(offset, length);
  }
  AMIRROR_RETURN_IF_ERROR(written);
  bool progress_due;
  {
    std::unique_lock lock(state_mutex_);
    if (open_chunk_records_ > 0 && record.chunk_index != open_chunk_) close_open_chunk_locked();
    if (partial) {
      // Counted in staged_records_ (the resume point) only once the next chunk starts:
      // the source resumes after whole chunks, so a chunk cut between its runs is resent.
      open_chunk_ = record.chunk_index;
      open_chunk_records_ += 1;
      open_chunk_end_bytes_ = record.offset_in_chunk_bytes + record.data.size();
    } else {
      staged_records_ += 1;
      last_staged_chunk_ = record.chunk_index;
    }
    const uint64_t bytes = record.kind == RecordKind::kZero ? 0 : record.data.size();
    bytes_since_progress_ += bytes;
    bytes_this_attempt_ += bytes;
    progress_due = bytes_since_progress_ >= progress_interval_bytes(bytes_this_attempt_);
  }
  return progress_due ? record_progress() : Status();
}

void Replica::close_open_chunk_locked() {
  staged_records_ += open_chunk_records_;
  if (open_chunk_records_ > 0) last_staged_chunk_ = open_chunk_;
  open_chunk_records_ = 0;
}

Status Replica::end_delta(uint64_t record_count) {
  // Committed at once: the freeze (or the base's label) makes the delta durable, so the
  // seal need not be written down first (a crash before the commit resumes the delta).
  AMIRROR_RETURN_IF_ERROR(seal_delta(record_count, /*durable=*/false));
  uint64_t target_cycle;
  {
    std::shared_lock lock(state_mutex_);
    target_cycle = meta_.staging.header.target_cycle;
  }
  return commit_staged(target_cycle, /*require_seal=*/false);
}

Status Replica::seal(uint64_t record_count) { return seal_delta(record_count, /*durable=*/true); }

Status Replica::seal_delta(uint64_t record_count, bool durable) {
  std::lock_guard delta(delta_mutex_);
  BeginDelta header;
  {
    std::unique_lock lock(state_mutex_);
    close_open_chunk_locked();  // END_DELTA completes the last chunk
    header = meta_.staging.header;
    if (header.target_cycle == 0) return invalid_argument("END_DELTA outside a delta");
    if (record_count != staged_records_) {
      return invalid_argument("END_DELTA says " + std::to_string(record_count) + " records, but " +
                              std::to_string(staged_records_) + " were staged");
    }
    if (meta_.staging.sealed) return Status();  // a resumed connection ends it again
  }
  // A full delta replaces the whole image: what it did not send reads as zero (a base
  // fill began empty, so it does already).
  const bool into_base = filling_base();
  if (!into_base && header.full) {
    std::set<uint64_t> sent;
    for (const DeltaChunk& change : current()->active_changes()) sent.insert(change.chunk_index);
    AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> allocated, current()->allocated_chunks(current()->cycle()));
    const ChunkGeometry& geometry = current()->geometry();
    for (uint64_t chunk_index : allocated) {
      if (sent.count(chunk_index)) continue;
      AMIRROR_RETURN_IF_ERROR(current()->write_zeroes_staged(geometry.chunk_offset_bytes(chunk_index),
                                                           geometry.chunk_length_bytes(chunk_index)));
    }
  }
  if (!durable) return Status();
  AMIRROR_RETURN_IF_ERROR(into_base ? current()->sync_base() : current()->flush());
  std::unique_lock lock(state_mutex_);
  Staging old = meta_.staging;
  meta_.staging.header.record_count = record_count;
  meta_.staging.durable_records = staged_records_;
  meta_.staging.last_chunk_index = last_staged_chunk_;
  meta_.staging.sealed = true;
  Status status = write_meta_locked();
  if (!status.ok()) meta_.staging = old;
  bytes_since_progress_ = 0;
  return status.with_context("record the delta to cycle " + std::to_string(header.target_cycle) + " as received");
}

bool Replica::sealed_at(uint64_t cycle) const {
  std::shared_lock lock(state_mutex_);
  return meta_.staging.sealed && meta_.staging.header.target_cycle == cycle;
}

Status Replica::commit_sealed(uint64_t cycle) { return commit_staged(cycle, /*require_seal=*/true); }

Status Replica::commit_staged(uint64_t cycle, bool require_seal) {
  std::lock_guard delta(delta_mutex_);
  BeginDelta header;
  bool sealed, into_base;
  {
    std::shared_lock lock(state_mutex_);
    header = meta_.staging.header;
    sealed = meta_.staging.sealed || !require_seal;
    into_base = filling_base_locked();
  }
  if (current()->cycle() >= cycle && (header.target_cycle == 0 || header.target_cycle == cycle)) {
    // Committed before (a group commit rolled forward, or a lost acknowledgement).
    if (header.target_cycle != 0) (void)clear_staging();
    return Status();
  }
  if (!sealed || header.target_cycle != cycle) {
    return invalid_argument("cannot commit cycle " + std::to_string(cycle) + " of replica " + source_node_ + "/" +
                            volume_name_ + ": no whole delta to that cycle is staged");
  }
  // The commit point: one volume.meta rename makes the whole delta point s (for a base
  // fill, labels the filled base as s).
  AMIRROR_RETURN_IF_ERROR(into_base ? current()->commit_base_fill(header.target_cycle, header.freeze_time_unix_ms)
                                    : current()->freeze_as(header.target_cycle, header.freeze_time_unix_ms));
  // Committed. What follows is bookkeeping that open() redoes from the volume's cycle
  // if it fails here (say the disk is full), so it does not make the commit fail:
  // the replica is at the new point either way, in memory as on disk.
  if (!clear_staging().ok()) {
    std::unique_lock lock(state_mutex_);
    meta_.staging = Staging{};
    staged_records_ = last_staged_chunk_ = bytes_since_progress_ = bytes_this_attempt_ = open_chunk_records_ = 0;
  }
  // The first delta after a failback overwrote every chunk the target had changed.
  if (!resyncing()) return Status();
  uint64_t common_cycle;
  {
    std::shared_lock lock(state_mutex_);
    common_cycle = resync_->cycle;
  }
  // If this fails (a full disk), the replica stays "resyncing" (unreadable) and the next
  // commit or open finishes it; the commit itself stands.
  (void)finish_resync(common_cycle);
  return Status();
}

Status Replica::apply(const std::function<void()>& progress) {
  std::lock_guard delta(delta_mutex_);
  uint32_t keep;
  {
    std::unique_lock lock(state_mutex_);
    keep = meta_.keep;
    applying_ = true;
  }
  Status status;
  while (status.ok() && current()->points().size() > keep) {
    status = current()->merge_oldest(progress);
    progress();
  }
  std::unique_lock lock(state_mutex_);
  applying_ = false;
  return status.with_context("merge old points of replica " + source_node_ + "/" + volume_name_);
}

Status Replica::repair_chunks(uint64_t cycle, std::span<const RepairChunk> chunks) {
  std::lock_guard delta(delta_mutex_);
  std::shared_ptr<Volume> volume = current();
  {
    std::shared_lock lock(state_mutex_);
    const char* activity = applying_ ? "applying" : resync_ ? "resyncing"
                           : meta_.staging.header.target_cycle != 0 ? "receiving"
                           : volume->merge_pending()                ? "merging"
                                                                    : "idle";
    if (std::string(activity) != "idle" || volume->cycle() != cycle) {
      return invalid_argument("refusing to repair replica " + source_node_ + "/" + volume_name_ + " at cycle " +
                              std::to_string(cycle) + ": it is " + activity + " at cycle " +
                              std::to_string(volume->cycle()));
    }
  }
  const ChunkGeometry& geometry = volume->geometry();
  for (size_t i = 0; i < chunks.size(); ++i) {
    const RepairChunk& chunk = chunks[i];
    if (chunk.chunk_index >= geometry.chunk_count() || (i > 0 && chunk.chunk_index <= chunks[i - 1].chunk_index)) {
      return invalid_argument("repair of chunk " + std::to_string(chunk.chunk_index) +
                              " is out of range or out of order");
    }
    uint64_t length = geometry.chunk_length_bytes(chunk.chunk_index);
    if (!chunk.data.empty() && chunk.data.size() != length) {
      return invalid_argument("repair data for chunk " + std::to_string(chunk.chunk_index) + " is " +
                              std::to_string(chunk.data.size()) + " bytes, expected " + std::to_string(length));
    }
  }
  for (const RepairChunk& chunk : chunks) {
    Status status = volume->rewrite_chunk_of_newest_point(chunk.chunk_index, chunk.data);
    if (!status.ok()) {
      return status.with_context("repair of replica " + source_node_ + "/" + volume_name_ +
                                 " (if it persists: `amirror replica delete " + source_node_ + "/" + volume_name_ +
                                 "` and the source sends a full copy)");
    }
  }
  return Status();
}

Status Replica::initial_copy_busy() const {
  return Status(ErrorCode::kBusy, "replica " + source_node_ + "/" + volume_name_ +
                                      " is receiving its first full copy; it is readable once that is applied");
}

Status Replica::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  std::shared_ptr<Volume> volume;
  bool in_resync;
  {
    std::shared_lock lock(state_mutex_);  // once per request: this is the NBD read path
    volume = volume_;
    in_resync = resync_.has_value();
    if (filling_base_locked()) return initial_copy_busy();
  }
  if (in_resync) {
    return Status(ErrorCode::kBusy, "replica " + source_node_ + "/" + volume_name_ +
                                        " is resyncing after a failback; it is readable once " + source_node_ +
                                        "'s next cycle is applied");
  }
  // A merge or commit between reading the number and reading the point is harmless:
  // a kept point reads the same until it is merged, and then the newer one is read.
  for (;;) {
    uint64_t cycle = volume->cycle();
    Status status = volume->read_frozen(cycle, offset_bytes, out);
    if (status.code() != ErrorCode::kOutOfRange || volume->has_point(cycle) ||
        !volume->geometry().in_range(offset_bytes, out.size())) {
      return status;
    }
  }
}

Result<std::vector<Extent>> Replica::allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) {
  if (filling_base()) return initial_copy_busy();
  for (;;) {
    std::shared_ptr<Volume> volume = current();
    uint64_t cycle = volume->cycle();
    auto extents = volume->allocated_extents_at(cycle, offset_bytes, length_bytes);
    if (extents.ok() || volume->has_point(cycle) || !volume->geometry().in_range(offset_bytes, length_bytes)) {
      return extents;
    }
  }
}

Status Replica::read_point(uint64_t cycle, uint64_t offset_bytes, std::span<uint8_t> out) {
  // The only point held while resyncing is the labelled base, which is not that point yet.
  if (resyncing()) {
    return Status(ErrorCode::kBusy, "replica " + source_node_ + "/" + volume_name_ +
                                        " is resyncing after a failback; its points are readable once " +
                                        source_node_ + "'s next cycle is applied");
  }
  if (filling_base()) return initial_copy_busy();
  return current()->read_frozen(cycle, offset_bytes, out);
}

Result<std::vector<Extent>> Replica::allocated_extents_at(uint64_t cycle, uint64_t offset_bytes,
                                                          uint64_t length_bytes) {
  if (filling_base()) return initial_copy_busy();
  return current()->allocated_extents_at(cycle, offset_bytes, length_bytes);
}

}  // namespace amirror::repl
