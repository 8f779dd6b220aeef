// SPDX-License-Identifier: Apache-2.0
// Volume: routing of client I/O through the layer stack, freeze, merge and the
// volume.meta file. Byte formats: docs/formats/store.md.
#include "store/volume.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "base/checksum.h"
#include "base/coding.h"
#include "base/names.h"
#include "base/uuid.h"
#include "base/zeros.h"

namespace amirror {
namespace {

constexpr char kMetaMagic[8] = {'A', 'M', 'V', 'O', 'L', 'U', 'M', 'E'};
// Format 2 for a volume whose base is base.img (readable by older amirror); format 3
// adds the path of an adopted base, which older amirror refuses instead of opening the
// volume with a base.img that does not exist.
constexpr uint32_t kMetaFormatVersion = 2;
constexpr uint32_t kMetaFormatVersionAdopted = 3;
constexpr uint32_t kMaxBasePathBytes = 4096;
constexpr uint32_t kMetaFlagReadOnly = 1;
// Format 3 only: VolumeOptions::base_may_be_larger.
constexpr uint32_t kMetaFlagBaseMayBeLarger = 2;
constexpr const char* kMetaFileName = "volume.meta";
constexpr const char* kBaseFileName = "base.img";
// A merged layer's data file kept for the next layer (Layer::create): freeing a
// layer's blocks and allocating new ones every cycle costs a discard per extent on a
// file system mounted with `discard`, and a layer of scattered small writes has
// thousands of extents (one per sector written). And its page cache is written over
// too: a volume written faster than it is frozen (a 512 MiB layer every second) spent
// a fifth of its server's CPU copying into freshly allocated cache pages every cycle
// (bench/README.md, "Writes while frozen every second"). Several, as a catch-up
// merges several layers in a row. All of a volume's spares together hold at most
// kSpareBudgetBytes on disk: one large spare or a few small ones.
constexpr uint64_t kMaxSpares = 4;
constexpr uint64_t kSpareBudgetBytes = 1ULL << 30;
std::string spare_data_file_name(uint64_t index) { return "spare-layer-" + std::to_string(index) + ".data"; }
constexpr uint64_t kMaxMetaBytes = 16 * kMiB;

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A read-only zero chunk, for zeroing parts of slots without allocating.
const uint8_t* zero_chunk() {
  static const std::vector<uint8_t>* const zeros = new std::vector<uint8_t>(kMaxChunkSizeBytes, 0);
  return zeros->data();
}

// Per-thread scratch chunk for copy-on-first-write and merge; grows to the largest
// chunk size used, never shrinks (bounded by kMaxChunkSizeBytes).
std::span<uint8_t> scratch_chunk(uint64_t size_bytes) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < size_bytes) buffer.resize(size_bytes);
  return std::span(buffer.data(), size_bytes);
}


bool parse_layer_file_name(const std::string& name, uint64_t& layer_id) {
  const std::string prefix = "layer-";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  std::string suffix = name.substr(dot);
  if (suffix != ".data" && suffix != ".map") return false;
  layer_id = 0;
  for (size_t i = prefix.size(); i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9' || layer_id > (1ull << 60)) return false;
    layer_id = layer_id * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  return true;
}

}  // namespace

Status validate_volume_options(const VolumeOptions& options) {
  if (options.size_bytes == 0) return invalid_argument("volume size must be greater than 0");
  if (options.size_bytes % kSectorSizeBytes != 0) {
    return invalid_argument("volume size " + std::to_string(options.size_bytes) +
                            " is not a multiple of 512 bytes");
  }
  if (options.size_bytes > kMaxVolumeSizeBytes) {
    return invalid_argument("volume size " + format_bytes(options.size_bytes) +
                            " exceeds the maximum of " + format_bytes(kMaxVolumeSizeBytes));
  }
  if (!is_power_of_two(options.chunk_size_bytes) ||
      options.chunk_size_bytes < kMinChunkSizeBytes ||
      options.chunk_size_bytes > kMaxChunkSizeBytes) {
    return invalid_argument("chunk size " + std::to_string(options.chunk_size_bytes) +
                            " must be a power of two from 4 KiB to 4 MiB");
  }
  if (!options.group.empty()) AMIRROR_RETURN_IF_ERROR(validate_name(options.group, "group name"));
  if (!options.base_path.empty() && (options.base_path[0] != '/' || options.base_path.size() > kMaxBasePathBytes)) {
    return invalid_argument("adopted path '" + options.base_path + "' must be absolute and at most 4096 bytes");
  }
  return Status();
}

Status base_too_small(const std::string& base_path, uint64_t base_bytes, uint64_t needed_bytes) {
  return invalid_argument(base_path + " is " + format_bytes(base_bytes) + " (" + std::to_string(base_bytes) +
                          " bytes) but the volume needs " + format_bytes(needed_bytes) + " (" +
                          std::to_string(needed_bytes) + " bytes); give it a device at least that large");
}

// A volume's base is one file, so its size is bounded by the file system's largest
// file (ext4 with 4 KiB blocks: 16 TiB - 4 KiB; XFS, btrfs: 8 EiB). Say so, and the way
// out, instead of the kernel's "File too large".
static Status too_large_for_file_system(const Status& truncated, uint64_t size_bytes, const std::string& dir) {
  if (truncated.code() != ErrorCode::kOutOfRange) return truncated;
  return invalid_argument("volume size " + format_bytes(size_bytes) + " is larger than the largest file the file "
                          "system under " + dir + " allows (ext4 with 4 KiB blocks: 16 TiB - 4 KiB); use a "
                          "smaller size, or put the data directory on XFS or btrfs (files up to 8 EiB)");
}

Volume::Volume(FileSystem& fs, std::string dir, const VolumeOptions& options)
    : fs_(fs),
      dir_(std::move(dir)),
      chunk_size_bytes_(options.chunk_size_bytes),
      size_bytes_(options.size_bytes),
      group_(options.group),
      base_path_(options.base_path) {
  AMIRROR_ASSERT(is_power_of_two(chunk_size_bytes_));
}

Volume::~Volume() = default;

std::string Volume::base_file_path() const { return base_path_.empty() ? dir_ + "/" + kBaseFileName : base_path_; }

Result<std::unique_ptr<File>> Volume::open_base(OpenMode owned_mode) const {
  if (base_path_.empty()) return fs_.open(base_file_path(), owned_mode);
  auto file = fs_.open(base_path_, OpenMode::kAdopt);
  if (!file.ok()) return file.status().with_context("open the adopted base of " + dir_);
  return file;
}

Result<std::unique_ptr<Volume>> Volume::create(FileSystem& fs, const std::string& dir,
                                               const VolumeOptions& options) {
  AMIRROR_RETURN_IF_ERROR(validate_volume_options(options));
  AMIRROR_ASSIGN_OR_RETURN(bool meta_exists, fs.exists(dir + "/" + kMetaFileName));
  if (meta_exists) return Status(ErrorCode::kAlreadyExists, "a volume already exists in " + dir);
  std::unique_ptr<Volume> volume(new Volume(fs, dir, options));
  AMIRROR_ASSIGN_OR_RETURN(volume->base_, volume->open_base(OpenMode::kCreateNew));
  if (options.base_path.empty()) {
    // Sparse: truncate allocates nothing, so a 1 TiB volume costs no space until written.
    AMIRROR_RETURN_IF_ERROR(too_large_for_file_system(volume->base_->truncate(options.size_bytes), options.size_bytes, dir));
  } else {
    // Adopted in place: used as it is, never truncated or extended.
    AMIRROR_ASSIGN_OR_RETURN(uint64_t adopted_bytes, volume->base_->size_bytes());
    if (options.base_may_be_larger && adopted_bytes < options.size_bytes) {
      return base_too_small(options.base_path, adopted_bytes, options.size_bytes);
    }
    if (!options.base_may_be_larger && adopted_bytes != options.size_bytes) {
      return invalid_argument(options.base_path + " is " + std::to_string(adopted_bytes) + " bytes, not " +
                              std::to_string(options.size_bytes) + " (did it change during the adopt?)");
    }
  }
  AMIRROR_RETURN_IF_ERROR(volume->base_->sync());
  AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Layer> active,
                           Layer::create(fs, dir, 1, options.chunk_size_bytes));
  volume->layers_.push_back(std::move(active));
  std::lock_guard meta_lock(volume->meta_mutex_);
  volume->meta_.options = options;
  volume->meta_.lineage.uuid = new_uuid();
  volume->meta_.base_freeze_time_unix_ms = now_unix_ms();
  volume->meta_.active_layer = 1;
  AMIRROR_RETURN_IF_ERROR(volume->write_meta());
  return volume;
}

Result<std::unique_ptr<Volume>> Volume::create_over_base(FileSystem& fs, const std::string& dir,
                                                         const VolumeOptions& options, uint64_t base_cycle,
                                                         int64_t base_freeze_time_unix_ms) {
  AMIRROR_ASSERT(options.base_path.empty());  // an adopted base is never built by a copy
  AMIRROR_RETURN_IF_ERROR(validate_volume_options(options));
  AMIRROR_ASSIGN_OR_RETURN(bool meta_exists, fs.exists(dir + "/" + kMetaFileName));
  if (meta_exists) return Status(ErrorCode::kAlreadyExists, "a volume already exists in " + dir);
  std::unique_ptr<Volume> volume(new Volume(fs, dir, options));
  AMIRROR_ASSIGN_OR_RETURN(volume->base_, fs.open(dir + "/" + kBaseFileName, OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t base_size, volume->base_->size_bytes());
  if (base_size != options.size_bytes) {
    return invalid_argument(dir + "/" + kBaseFileName + " is " + std::to_string(base_size) + " bytes, not " +
                            std::to_string(options.size_bytes));
  }
  AMIRROR_RETURN_IF_ERROR(volume->base_->sync());
  (void)fs.remove(dir + "/" + Layer::data_file_name(1));
  (void)fs.remove(dir + "/" + Layer::map_file_name(1));
  AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Layer> active, Layer::create(fs, dir, 1, options.chunk_size_bytes));
  volume->layers_.push_back(std::move(active));
  std::lock_guard meta_lock(volume->meta_mutex_);
  volume->meta_.options = options;
  volume->meta_.lineage.uuid = new_uuid();
  volume->meta_.base_cycle = base_cycle;
  volume->meta_.base_freeze_time_unix_ms = base_freeze_time_unix_ms;
  volume->meta_.active_layer = 1;
  AMIRROR_RETURN_IF_ERROR(volume->write_meta());
  return volume;
}

Result<std::unique_ptr<Volume>> Volume::open(FileSystem& fs, const std::string& dir) {
  std::string meta_path = dir + "/" + kMetaFileName;
  auto contents = read_small_file(fs, meta_path, kMaxMetaBytes);
  if (!contents.ok()) {
    if (contents.status().code() == ErrorCode::kNotFound) {
      return not_found(dir + " holds no volume (" + kMetaFileName + " is missing)");
    }
    return contents.status();
  }
  AMIRROR_ASSIGN_OR_RETURN(VolumeMeta meta, decode_meta(contents.value(), meta_path));
  std::unique_ptr<Volume> volume(new Volume(fs, dir, meta.options));
  bool upgrade = meta.from_version_1;
  volume->read_only_.store(meta.read_only);
  volume->meta_ = std::move(meta);

  AMIRROR_ASSIGN_OR_RETURN(volume->base_, volume->open_base(OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t base_size, volume->base_->size_bytes());
  if (!volume->base_path_.empty() && volume->meta_.options.base_may_be_larger && base_size < volume->size_bytes()) {
    return corruption(base_too_small(volume->base_path_, base_size, volume->size_bytes()).message() +
                      " (it shrank outside amirror)");
  }
  if (!volume->base_path_.empty() && !volume->meta_.options.base_may_be_larger && base_size != volume->size_bytes()) {
    // amirror never changes an adopted base's size, so someone else did: its content
    // cannot be trusted either.
    return corruption("the adopted " + volume->base_path_ + " is " + std::to_string(base_size) +
                      " bytes but the volume is " + std::to_string(volume->size_bytes()) +
                      "; it was changed outside amirror while adopted");
  }
  if (base_size < volume->size_bytes()) {
    return corruption(dir + "/" + kBaseFileName + " is " + std::to_string(base_size) +
                      " bytes but the volume is " + std::to_string(volume->size_bytes()));
  }
  if (volume->base_path_.empty() && base_size > volume->size_bytes()) {
    // A resize extended base.img and died before volume.meta recorded the new size:
    // the tail is a hole no point reads, so the old size stands and the tail goes.
    AMIRROR_RETURN_IF_ERROR(volume->base_->truncate(volume->size_bytes())
                                .with_context("trim " + dir + "/" + kBaseFileName + " left by an interrupted resize"));
  }
  // Writes of a killed process may still sit in the page cache; sync them before
  // anything new is promised durable on top of them.
  AMIRROR_RETURN_IF_ERROR(volume->base_->sync());
  AMIRROR_RETURN_IF_ERROR(volume->remove_orphan_files());
  std::vector<uint64_t> ids;
  for (const FrozenLayer& frozen : volume->meta_.frozen) ids.push_back(frozen.layer_id);
  ids.push_back(volume->meta_.active_layer);
  for (uint64_t id : ids) {
    auto layer = Layer::open(fs, dir, id, volume->chunk_size_bytes());
    if (!layer.ok()) {
      return layer.status().with_context("open layer " + std::to_string(id) + " of " + dir);
    }
    if (id != volume->meta_.active_layer) layer.value()->mark_frozen();
    volume->layers_.push_back(std::move(layer).value());
  }
  if (upgrade) {
    // Format 1 had no volume id: give it one now, once (a crash before this rename
    // leaves format 1, and the next open tries again).
    std::lock_guard meta_lock(volume->meta_mutex_);
    AMIRROR_RETURN_IF_ERROR(volume->write_meta().with_context("upgrade " + meta_path + " to format 2"));
  }
  if (volume->meta_.merging_layer != 0) {
    // A merge was cut short: its layer is immutable, so redoing it is safe.
    AMIRROR_RETURN_IF_ERROR(volume->merge_oldest().with_context("finish the interrupted merge of " + dir));
  }
  return volume;
}

// Files an interrupted freeze (a new layer not yet in volume.meta) or merge (a merged
// layer not yet removed) can leave behind. Their state is decided by volume.meta, the
// single source of truth, so removing them is recovery, not guessing.
Status Volume::remove_orphan_files() {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.list_dir(dir_));
  bool removed = false;
  for (const std::string& name : names) {
    uint64_t layer_id = 0;
    bool orphan = false;
    if (parse_layer_file_name(name, layer_id)) {
      orphan = layer_id != meta_.active_layer &&
               std::none_of(meta_.frozen.begin(), meta_.frozen.end(),
                            [&](const FrozenLayer& frozen) { return frozen.layer_id == layer_id; });
    } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      orphan = true;
    }
    if (orphan) {
      AMIRROR_RETURN_IF_ERROR(fs_.remove(dir_ + "/" + name));
      removed = true;
    }
  }
  if (removed) AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(dir_));
  return Status();
}

std::string Volume::encode_meta() const {
  std::string out(kMetaMagic, sizeof kMetaMagic);
  append_u32(out, base_path_.empty() ? kMetaFormatVersion : kMetaFormatVersionAdopted);
  append_u32(out, (meta_.read_only ? kMetaFlagReadOnly : 0) |
                      (!base_path_.empty() && meta_.options.base_may_be_larger ? kMetaFlagBaseMayBeLarger : 0));
  // meta_'s size, not size_bytes(): resize() writes the new size before it uses it.
  append_u64(out, meta_.options.size_bytes);
  append_u64(out, chunk_size_bytes_);
  append_uuid(out, meta_.lineage.uuid);
  append_uuid(out, meta_.lineage.origin_uuid);
  append_u64(out, meta_.lineage.origin_point);
  append_u64(out, meta_.base_cycle);
  append_u64(out, static_cast<uint64_t>(meta_.base_freeze_time_unix_ms));
  append_u64(out, meta_.merging_layer);
  append_u64(out, meta_.active_layer);
  append_u32(out, static_cast<uint32_t>(group_.size()));
  out += group_;
  append_u32(out, static_cast<uint32_t>(meta_.frozen.size()));
  for (const FrozenLayer& frozen : meta_.frozen) {
    append_u64(out, frozen.layer_id);
    append_u64(out, frozen.cycle);
    append_u64(out, static_cast<uint64_t>(frozen.freeze_time_unix_ms));
  }
  if (!base_path_.empty()) {
    append_u32(out, static_cast<uint32_t>(base_path_.size()));
    out += base_path_;
  }
  append_u64(out, checksum64(out.data(), out.size()));
  return out;
}

Status Volume::write_meta() { return write_file_atomically(fs_, dir_, kMetaFileName, encode_meta()); }

namespace {

// Reads fields front to back, refusing to go past the checksum.
class MetaReader {
 public:
  MetaReader(const std::string& contents, size_t start)
      : bytes_(reinterpret_cast<const uint8_t*>(contents.data())), end_(contents.size() - 8), position_(start) {}
  bool u32(uint32_t& value) { return take(4) && (value = get_u32(bytes_ + position_ - 4), true); }
  bool u64(uint64_t& value) { return take(8) && (value = get_u64(bytes_ + position_ - 8), true); }
  bool raw(size_t count, const uint8_t*& at) { return take(count) && (at = bytes_ + position_ - count, true); }
  bool at_end() const { return position_ == end_; }

 private:
  bool take(size_t count) {
    if (end_ - position_ < count) return false;
    position_ += count;
    return true;
  }
  const uint8_t* bytes_;
  size_t end_;
  size_t position_;
};

}  // namespace

Result<Volume::VolumeMeta> Volume::decode_meta(const std::string& contents, const std::string& where) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  size_t size = contents.size();
  if (size < 8 + 4 + 4 + 8 || std::memcmp(bytes, kMetaMagic, 8) != 0) {
    return corruption(where + " is not an amirror volume file");
  }
  if (checksum64(bytes, size - 8) != get_u64(bytes + size - 8)) {
    return corruption(where + " failed its checksum; the volume metadata is damaged");
  }
  uint32_t version = get_u32(bytes + 8);
  if (version == 1) return decode_meta_version_1(contents, where);
  if (version != kMetaFormatVersion && version != kMetaFormatVersionAdopted) {
    return corruption(where + " has format version " + std::to_string(version) + "; this amirror reads versions 1 to " +
                      std::to_string(kMetaFormatVersionAdopted));
  }
  VolumeMeta meta;
  MetaReader reader(contents, 12);
  uint32_t flags = 0, group_bytes = 0, frozen_count = 0;
  const uint8_t* uuid = nullptr;
  const uint8_t* origin_uuid = nullptr;
  const uint8_t* group = nullptr;
  uint64_t base_time = 0;
  bool ok = reader.u32(flags) && reader.u64(meta.options.size_bytes) && reader.u64(meta.options.chunk_size_bytes) &&
            reader.raw(kUuidBytes, uuid) && reader.raw(kUuidBytes, origin_uuid) &&
            reader.u64(meta.lineage.origin_point) && reader.u64(meta.base_cycle) && reader.u64(base_time) &&
            reader.u64(meta.merging_layer) && reader.u64(meta.active_layer) && reader.u32(group_bytes) &&
            group_bytes <= kMaxNameBytes && reader.raw(group_bytes, group) && reader.u32(frozen_count);
  for (uint32_t i = 0; ok && i < frozen_count; ++i) {
    FrozenLayer frozen;
    uint64_t time = 0;
    ok = reader.u64(frozen.layer_id) && reader.u64(frozen.cycle) && reader.u64(time);
    frozen.freeze_time_unix_ms = static_cast<int64_t>(time);
    meta.frozen.push_back(frozen);
  }
  uint32_t base_path_bytes = 0;
  const uint8_t* base_path = nullptr;
  if (ok && version == kMetaFormatVersionAdopted) {
    ok = reader.u32(base_path_bytes) && base_path_bytes > 0 && base_path_bytes <= kMaxBasePathBytes &&
         reader.raw(base_path_bytes, base_path);
    if (ok) meta.options.base_path.assign(reinterpret_cast<const char*>(base_path), base_path_bytes);
  }
  if (!ok || !reader.at_end()) return corruption(where + ": fields do not fit the file's length");
  meta.read_only = (flags & kMetaFlagReadOnly) != 0;
  meta.options.base_may_be_larger = version == kMetaFormatVersionAdopted && (flags & kMetaFlagBaseMayBeLarger) != 0;
  meta.lineage.uuid = read_uuid(uuid);
  meta.lineage.origin_uuid = read_uuid(origin_uuid);
  meta.base_freeze_time_unix_ms = static_cast<int64_t>(base_time);
  meta.options.group.assign(reinterpret_cast<const char*>(group), group_bytes);
  // The stack must be ordered: layer ids and points increase; the merging layer is the
  // oldest and completes the base's point.
  uint64_t last_id = 0, last_cycle = meta.base_cycle;
  bool consistent = meta.lineage.uuid.size() == 2 * kUuidBytes && meta.active_layer != 0;
  for (size_t i = 0; consistent && i < meta.frozen.size(); ++i) {
    const FrozenLayer& frozen = meta.frozen[i];
    bool merging = i == 0 && meta.merging_layer != 0;
    consistent = frozen.layer_id > last_id && (merging ? frozen.cycle == meta.base_cycle && frozen.layer_id == meta.merging_layer
                                                       : frozen.cycle > last_cycle);
    last_id = frozen.layer_id;
    last_cycle = frozen.cycle;
  }
  if (!consistent || meta.active_layer <= last_id || (meta.merging_layer != 0 && meta.frozen.empty())) {
    return corruption(where + ": the layer stack is inconsistent");
  }
  Status valid = validate_volume_options(meta.options);
  if (!valid.ok()) return corruption(where + ": " + valid.message());
  return meta;
}

// Format 1 (docs/formats/store.md): contiguous layer ids equal to points.
Result<Volume::VolumeMeta> Volume::decode_meta_version_1(const std::string& contents,
                                                         const std::string& where) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  size_t size = contents.size();
  constexpr size_t kFixedBytes = 8 + 4 + 4 + 8 * 5 + 4;
  if (size < kFixedBytes + 4 + 8) return corruption(where + " is not an amirror volume file");
  VolumeMeta meta;
  meta.from_version_1 = true;
  meta.options.size_bytes = get_u64(bytes + 16);
  meta.options.chunk_size_bytes = get_u64(bytes + 24);
  uint64_t cycle = get_u64(bytes + 32);
  meta.base_cycle = get_u64(bytes + 40);
  meta.merging_layer = get_u64(bytes + 48);
  uint32_t group_bytes = get_u32(bytes + 56);
  size_t position = kFixedBytes;
  if (group_bytes > kMaxNameBytes || size - 8 < position + group_bytes + 4) {
    return corruption(where + ": bad group name length");
  }
  meta.options.group.assign(contents.data() + position, group_bytes);
  position += group_bytes;
  uint32_t time_count = get_u32(bytes + position);
  position += 4;
  if (meta.base_cycle > cycle || time_count != cycle - meta.base_cycle + 1 ||
      (meta.merging_layer != 0 && meta.merging_layer != meta.base_cycle) ||
      size - 8 - position != uint64_t{time_count} * 8) {
    return corruption(where + ": cycle numbers are inconsistent");
  }
  auto time_of = [&](uint64_t point) {
    return static_cast<int64_t>(get_u64(bytes + position + 8 * (point - meta.base_cycle)));
  };
  meta.base_freeze_time_unix_ms = time_of(meta.base_cycle);
  uint64_t first = meta.merging_layer != 0 ? meta.merging_layer : meta.base_cycle + 1;
  for (uint64_t id = first; id <= cycle; ++id) meta.frozen.push_back({id, id, time_of(id)});
  meta.active_layer = cycle + 1;
  meta.lineage.uuid = new_uuid();
  Status valid = validate_volume_options(meta.options);
  if (!valid.ok()) return corruption(where + ": " + valid.message());
  return meta;
}

uint64_t Volume::cycle() const {
  std::lock_guard lock(meta_mutex_);
  return cycle_locked();
}

uint64_t Volume::base_cycle() const {
  std::lock_guard lock(meta_mutex_);
  return meta_.base_cycle;
}

int64_t Volume::freeze_time_unix_ms(uint64_t cycle) const {
  std::lock_guard lock(meta_mutex_);
  if (cycle == meta_.base_cycle) return meta_.base_freeze_time_unix_ms;
  for (const FrozenLayer& frozen : meta_.frozen) {
    if (frozen.cycle == cycle) return frozen.freeze_time_unix_ms;
  }
  return 0;
}

std::vector<PointInfo> Volume::points() const {
  std::lock_guard lock(meta_mutex_);
  std::vector<PointInfo> points = {{meta_.base_cycle, meta_.base_freeze_time_unix_ms}};
  for (const FrozenLayer& frozen : meta_.frozen) {
    if (frozen.cycle != meta_.base_cycle) points.push_back({frozen.cycle, frozen.freeze_time_unix_ms});
  }
  return points;
}

bool Volume::merge_pending() const {
  std::lock_guard lock(meta_mutex_);
  return meta_.merging_layer != 0;
}

bool Volume::has_point(uint64_t cycle) const {
  std::lock_guard lock(meta_mutex_);
  return top_layer_id_locked(cycle).has_value();
}

std::optional<uint64_t> Volume::top_layer_id_locked(uint64_t cycle) const {
  if (cycle == meta_.base_cycle) {
    if (meta_.merging_layer != 0) return meta_.merging_layer;
    return (meta_.frozen.empty() ? meta_.active_layer : meta_.frozen.front().layer_id) - 1;
  }
  for (const FrozenLayer& frozen : meta_.frozen) {
    if (frozen.cycle == cycle) return frozen.layer_id;
  }
  return std::nullopt;
}

uint64_t Volume::next_layer_id_locked() {
  highest_layer_id_ = std::max(highest_layer_id_, meta_.active_layer) + 1;
  return highest_layer_id_;
}

Result<size_t> Volume::layers_in_point_locked(uint64_t cycle) const {
  std::optional<uint64_t> top_id;
  {
    std::lock_guard meta(meta_mutex_);
    top_id = top_layer_id_locked(cycle);
  }
  if (!top_id) return out_of_range("freeze point " + std::to_string(cycle) + " does not exist");
  // Layer ids increase up the stack; those with id <= top_id form the point.
  size_t top = 0;
  while (top < layers_.size() && layers_[top]->id() <= *top_id) ++top;
  AMIRROR_ASSERT(top < layers_.size());  // the active layer is never part of a point
  return top;
}

std::string Volume::points_text_locked() const {
  std::string text = std::to_string(meta_.base_cycle);
  for (const FrozenLayer& frozen : meta_.frozen) {
    if (frozen.cycle != meta_.base_cycle) text += ", " + std::to_string(frozen.cycle);
  }
  return text;
}

VolumeLineage Volume::lineage() const {
  std::lock_guard lock(meta_mutex_);
  return meta_.lineage;
}

Status Volume::set_lineage(const VolumeLineage& lineage) {
  std::lock_guard lock(meta_mutex_);
  VolumeLineage old = meta_.lineage;
  meta_.lineage = lineage;
  if (meta_.lineage.uuid.empty()) meta_.lineage.uuid = new_uuid();
  Status status = write_meta();
  if (!status.ok()) meta_.lineage = old;
  return status;
}

Status Volume::set_group(const std::string& group) {
  if (!group.empty()) AMIRROR_RETURN_IF_ERROR(validate_name(group, "group name"));
  std::lock_guard lock(meta_mutex_);
  std::string old = group_;
  group_ = group;
  meta_.options.group = group;
  Status status = write_meta();
  if (!status.ok()) {
    group_ = old;
    meta_.options.group = old;
  }
  return status;
}

void Volume::hold_writes() {
  {
    std::lock_guard hold(hold_mutex_);
    writes_held_.store(true);
  }
  // Writes admitted before the flag was set finish before this returns.
  std::unique_lock io(io_lock_);
}

void Volume::release_writes() {
  {
    std::lock_guard hold(hold_mutex_);
    writes_held_.store(false);
  }
  writes_released_.notify_all();
}

Status Volume::set_read_only(bool read_only) {
  // Exclusive: a write that passed the check finishes before the flag is durable.
  std::unique_lock io(io_lock_);
  std::lock_guard lock(meta_mutex_);
  meta_.read_only = read_only;
  Status status = write_meta();
  if (!status.ok()) {
    meta_.read_only = !read_only;
    return status;
  }
  read_only_.store(read_only);
  return Status();
}

// ---- Reads ----------------------------------------------------------------

// The newest of layers[0, top) holding `chunk_index`: its index and entry, or
// index SIZE_MAX when the chunk comes from the base.
std::pair<size_t, std::optional<ChunkEntry>> Volume::resolve(
    const std::vector<std::shared_ptr<Layer>>& layers, size_t top, uint64_t chunk_index) {
  for (size_t i = top; i-- > 0;) {
    if (auto entry = layers[i]->find(chunk_index)) return {i, entry};
  }
  return {SIZE_MAX, std::nullopt};
}

Status Volume::read_from(Layer& layer, const ChunkEntry& entry, const ChunkPiece& piece, uint8_t* out) {
  if (entry.state == ChunkState::kZero) {
    std::memset(out, 0, piece.length_bytes);
    return Status();
  }
  return layer.read_slot(entry.slot, piece.offset_in_chunk_bytes, std::span(out, piece.length_bytes));
}

template <typename From>
Status Volume::for_each_source(const std::vector<std::shared_ptr<Layer>>& layers, size_t index,
                               const ChunkEntry& entry, const ChunkPiece& piece, const From& from) {
  const uint64_t piece_end = piece.offset_in_chunk_bytes + piece.length_bytes;
  const uint64_t chunk_length = geometry().chunk_length_bytes(piece.chunk_index);
  uint64_t remaining = sectors_touched(chunk_size_bytes_, piece.offset_in_chunk_bytes, piece.length_bytes);
  Status status;
  // Calls `from` for the piece's bytes in each run of `sectors`.
  auto runs = [&](uint64_t sectors, size_t layer_index, const ChunkEntry* at) {
    for_each_sector_run(chunk_size_bytes_, chunk_length, sectors, [&](uint64_t begin, uint64_t end) {
      begin = std::max(begin, piece.offset_in_chunk_bytes);
      end = std::min(end, piece_end);
      if (begin < end && status.ok()) status = from(layer_index, at, begin, end);
    });
  };
  size_t i = index;
  std::optional<ChunkEntry> at = entry;
  while (remaining != 0 && status.ok()) {
    if (!at) {
      runs(remaining, 0, nullptr);
      break;
    }
    const uint64_t here = at->state == ChunkState::kZero ? remaining : remaining & at->defined_sectors;
    runs(here, i, &*at);
    remaining &= ~here;
    at.reset();
    while (i > 0 && !at) at = layers[--i]->find(piece.chunk_index);
  }
  return status;
}

Status Volume::read_resolved(const std::vector<std::shared_ptr<Layer>>& layers, size_t index, const ChunkEntry& entry,
                             const ChunkPiece& piece, uint8_t* out) {
  const uint64_t touched = sectors_touched(chunk_size_bytes_, piece.offset_in_chunk_bytes, piece.length_bytes);
  if (entry.state == ChunkState::kZero || (touched & ~entry.defined_sectors) == 0) {
    return read_from(*layers[index], entry, piece, out);
  }
  // The sectors this layer does not define come from the layers below it, then the
  // base: each sector from the newest that defines it.
  const uint64_t chunk_offset = geometry().chunk_offset_bytes(piece.chunk_index);
  return for_each_source(layers, index, entry, piece,
                         [&](size_t i, const ChunkEntry* at, uint64_t begin, uint64_t end) -> Status {
                           std::span<uint8_t> bytes(out + (begin - piece.offset_in_chunk_bytes), end - begin);
                           if (at == nullptr) return base_->read_at(chunk_offset + begin, bytes);
                           if (at->state == ChunkState::kZero) {
                             std::memset(bytes.data(), 0, bytes.size());
                             return Status();
                           }
                           return layers[i]->read_slot(at->slot, begin, bytes);
                         });
}

// The stripes a batch holds until its pieces are done. Taken in ascending index order
// only (a batch ends where the chunk index wraps around the stripe count), by readers
// and writers alike, so stripe waits cannot form a cycle. Lock: std::shared_lock
// (readers) or std::unique_lock (writers) of a stripe.
template <typename Lock>
class Volume::HeldStripes {
 public:
  static constexpr size_t kCapacity = 64;  // 4 MiB of 64 KiB chunks
  // Whether `stripe_index` may join: the batch must be done and released first if not.
  bool can_take(size_t stripe_index) const {
    return count_ == 0 || (stripe_index > last_ && count_ < kCapacity);
  }
  void take(Lock lock, size_t stripe_index) {
    AMIRROR_ASSERT(can_take(stripe_index));
    locks_[count_++] = std::move(lock);
    last_ = stripe_index;
  }
  void release() {
    for (size_t i = 0; i < count_; ++i) locks_[i].unlock();
    count_ = 0;
  }

 private:
  std::array<Lock, kCapacity> locks_;
  size_t count_ = 0;
  size_t last_ = 0;
};

// Pieces of one request that one layer holds whole, read with Layer::read_slots so
// that chunks lying together in its data file cost one system call. Pieces of the
// active layer keep their chunk's stripe (shared) until read.
struct Volume::LayerReadBatch {
  static constexpr size_t kCapacity = HeldStripes<std::shared_lock<std::shared_mutex>>::kCapacity;
  size_t layer_index = SIZE_MAX;
  std::array<Layer::SlotRead, kCapacity> reads;
  size_t count = 0;
  HeldStripes<std::shared_lock<std::shared_mutex>> stripes;
};

// Whole-chunk and in-place pieces of one client write, written with Layer::write_slots
// so that a large write costs one system call per run of adjacent slot bytes. Each
// piece keeps its chunk's stripe (exclusive) until written and published.
struct Volume::LayerWriteBatch {
  struct Item {
    uint64_t chunk_index;
    std::optional<ChunkEntry> entry;  // the kData entry written in place; none = a new slot
    uint64_t touched;                 // sectors the piece writes
  };
  std::array<Layer::SlotWrite, HeldStripes<std::unique_lock<std::shared_mutex>>::kCapacity> writes;
  std::array<Item, HeldStripes<std::unique_lock<std::shared_mutex>>::kCapacity> items;
  HeldStripes<std::unique_lock<std::shared_mutex>> stripes;
  size_t count = 0;
};

Status Volume::read_layers(const std::vector<std::shared_ptr<Layer>>& layers, size_t top,
                           uint64_t offset_bytes, std::span<uint8_t> out, bool lock_active) {
  // Consecutive pieces that come from the base are read with one call.
  uint64_t base_run_start = 0, base_run_length = 0;
  Status status;
  auto flush_base_run = [&] {
    if (base_run_length == 0 || !status.ok()) return;
    status = base_->read_at(offset_bytes + base_run_start,
                            out.subspan(base_run_start, base_run_length));
    base_run_length = 0;
  };
  // Built only for a request spanning chunks: most small reads fit in one.
  std::optional<LayerReadBatch> batches;
  auto flush_batch = [&] {
    if (!batches) return;
    if (batches->count != 0 && status.ok()) {
      status = layers[batches->layer_index]->read_slots(std::span(batches->reads.data(), batches->count));
    }
    batches->count = 0;
    batches->stripes.release();
  };
  geometry().for_each_piece(offset_bytes, out.size(), [&](const ChunkPiece& piece) {
    if (!status.ok()) return;
    auto [index, entry] = resolve(layers, top, piece.chunk_index);
    if (!entry) {
      flush_batch();
      if (base_run_length == 0) base_run_start = piece.offset_in_request_bytes;
      base_run_length += piece.length_bytes;
      return;
    }
    flush_base_run();
    if (!status.ok()) return;
    uint8_t* destination = out.data() + piece.offset_in_request_bytes;
    LayerReadBatch* batch = piece.length_bytes == out.size() ? nullptr : batches ? &*batches : &batches.emplace();
    if (batch != nullptr && batch->count != 0 &&
        (batch->layer_index != index || batch->count == LayerReadBatch::kCapacity)) {
      flush_batch();
    }
    std::shared_lock<std::shared_mutex> stripe;
    const size_t stripe_index = piece.chunk_index % kStripeCount;
    if (lock_active && index + 1 == layers.size()) {
      // An active slot may be freed and reused by a concurrent zeroing; look the entry
      // up again under the chunk's stripe. Entries never leave a layer's map.
      if (batch != nullptr && !batch->stripes.can_take(stripe_index)) flush_batch();
      stripe = std::shared_lock(stripes_[stripe_index]);
      entry = layers[index]->find(piece.chunk_index);
      AMIRROR_ASSERT(entry.has_value());
    }
    const uint64_t touched = sectors_touched(chunk_size_bytes_, piece.offset_in_chunk_bytes, piece.length_bytes);
    if (batch != nullptr && entry->state == ChunkState::kData && (touched & ~entry->defined_sectors) == 0) {
      batch->layer_index = index;
      batch->reads[batch->count++] = {entry->slot, piece.offset_in_chunk_bytes, std::span(destination, piece.length_bytes)};
      if (stripe.owns_lock()) batch->stripes.take(std::move(stripe), stripe_index);
      return;
    }
    status = read_resolved(layers, index, *entry, piece, destination);
  });
  flush_base_run();
  flush_batch();
  return status;
}

Status Volume::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  std::shared_lock io(io_lock_);  // before the range check: the size is stable under it
  if (!geometry().in_range(offset_bytes, out.size())) {
    return out_of_range("read of " + std::to_string(out.size()) + " bytes at offset " +
                        std::to_string(offset_bytes) + " is beyond the volume's end (" +
                        std::to_string(size_bytes()) + " bytes)");
  }
  return read_layers(layers_, layers_.size(), offset_bytes, out, /*lock_active=*/true);
}

Status Volume::read_frozen(uint64_t cycle, uint64_t offset_bytes, std::span<uint8_t> out) {
  // Checked again under io_lock_ below; this early answer only saves the locks (the
  // size never shrinks, so a request in range now stays in range).
  if (!geometry().in_range(offset_bytes, out.size())) {
    return out_of_range("read beyond the volume's end");
  }
  // Reading the base point itself must not overlap a merge rewriting the base: wait
  // for a running merge, then check again (the merge may have moved past this point).
  // A point above the base needs no such lock: a merge only rewrites the base sectors
  // that the layer being merged defines, and that layer is part of the point.
  std::shared_lock base_point(base_point_lock_, std::defer_lock);
  for (int attempt = 0;; ++attempt) {
    {
      std::lock_guard meta(meta_mutex_);
      if (!top_layer_id_locked(cycle)) {
        return out_of_range("freeze point " + std::to_string(cycle) + " does not exist (points " +
                            points_text_locked() + " do)");
      }
      // While layer m merges, point m = base + layer m: the layer covers every base
      // chunk the merge rewrites, so that read needs no lock.
      if (cycle != meta_.base_cycle || meta_.merging_layer != 0 || base_point.owns_lock()) break;
    }
    AMIRROR_ASSERT(attempt == 0);
    base_point.lock();
  }
  std::shared_lock io(io_lock_);
  // discard_after() may have dropped the point between the checks.
  AMIRROR_ASSIGN_OR_RETURN(size_t top, layers_in_point_locked(cycle));
  // A point frozen before a resize reads as zeros past its old end: no layer of it
  // holds a chunk there and the base's tail is a hole (see resize()).
  return read_layers(layers_, top, offset_bytes, out, /*lock_active=*/false);
}

void Volume::will_read_frozen(uint64_t cycle, uint64_t offset_bytes, uint64_t length_bytes) {
  if (length_bytes == 0 || !geometry().in_range(offset_bytes, length_bytes)) return;
  // No base-point lock as in read_frozen: a hint read during a merge is only wasted.
  std::shared_lock io(io_lock_);
  Result<size_t> top = layers_in_point_locked(cycle);
  if (!top.ok()) return;
  ReadHints hints;
  const ChunkGeometry geometry = this->geometry();
  geometry.for_each_piece(offset_bytes, length_bytes, [&](const ChunkPiece& piece) {
    auto [index, entry] = resolve(layers_, top.value(), piece.chunk_index);
    if (!entry) return hints.add(*base_, offset_bytes + piece.offset_in_request_bytes, piece.length_bytes);
    // Where read_resolved reads each sector: this layer, older ones, or the base.
    const uint64_t chunk_offset = geometry.chunk_offset_bytes(piece.chunk_index);
    (void)for_each_source(layers_, index, *entry, piece,
                          [&](size_t i, const ChunkEntry* at, uint64_t begin, uint64_t end) {
                            if (at == nullptr) {
                              hints.add(*base_, chunk_offset + begin, end - begin);
                            } else if (at->state == ChunkState::kData) {
                              layers_[i]->hint_slot_read(at->slot, begin, end - begin, hints);
                            }
                            return Status();
                          });
  });
}

// ---- Writes ---------------------------------------------------------------

Status Volume::fill_around(Layer& active, uint64_t slot, const ChunkPiece& piece, uint64_t sectors,
                           uint64_t chunk_length) {
  const uint64_t chunk_offset = geometry().chunk_offset_bytes(piece.chunk_index);
  const uint64_t piece_end = piece.offset_in_chunk_bytes + piece.length_bytes;
  Status status;
  for_each_sector_run(chunk_size_bytes_, chunk_length, sectors, [&](uint64_t begin, uint64_t end) {
    // The piece is one range, so only the run's ends can lie outside it.
    const std::pair<uint64_t, uint64_t> gaps[] = {{begin, std::min(end, piece.offset_in_chunk_bytes)},
                                                  {std::max(begin, piece_end), end}};
    for (const auto& [from, to] : gaps) {
      if (from >= to || !status.ok()) continue;
      std::span<uint8_t> gap = scratch_chunk(to - from);
      // The writer holds this chunk's stripe, so the lower layers' content is stable.
      status = read_layers(layers_, layers_.size() - 1, chunk_offset + from, gap, /*lock_active=*/false);
      if (status.ok()) status = active.write_slot(slot, from, gap);
    }
  });
  return status;
}

Status Volume::write_piece(const ChunkPiece& piece, const uint8_t* data, const std::optional<ChunkEntry>& entry) {
  Layer& active = *layers_.back();
  const uint8_t* source = data != nullptr ? data : zero_chunk();

  if (data == nullptr && piece.covers_whole_chunk) {
    active.publish_zero(piece.chunk_index);
    return Status();
  }
  // The sectors this piece changes (a partial zeroing too): the sender ships only these.
  const uint64_t touched = sectors_touched(chunk_size_bytes_, piece.offset_in_chunk_bytes, piece.length_bytes);
  const ChunkGeometry geometry = this->geometry();  // stable: the caller holds io_lock_
  const uint64_t chunk_length = geometry.chunk_length_bytes(piece.chunk_index);
  if (entry && entry->state == ChunkState::kData) {
    // Sectors the slot does not hold yet: the piece's partial ends are filled from below.
    if (const uint64_t added = touched & ~entry->defined_sectors; added != 0) {
      // Together, not one piece per write below.
      AMIRROR_RETURN_IF_ERROR(active.place_sectors(entry->slot, added));
      AMIRROR_RETURN_IF_ERROR(fill_around(active, entry->slot, piece, added, chunk_length));
    }
    AMIRROR_RETURN_IF_ERROR(active.write_slot(entry->slot, piece.offset_in_chunk_bytes,
                                              std::span(source, piece.length_bytes)));
    mark_written(active, piece.chunk_index, *entry, touched);
    return Status();
  }

  // First write to this chunk since the freeze (patent step C10). Copy-on-first-write
  // copies only what the piece leaves of the sectors it touches (a sector-granular
  // layer); the other sectors stay below.
  uint64_t slot = active.reserve_slot();
  Status status;
  if (piece.covers_whole_chunk) {
    status = active.write_slot(slot, 0, std::span(source, chunk_length));
  } else if (!entry && active.sector_granular()) {
    status = active.place_sectors(slot, touched);
    if (status.ok()) status = fill_around(active, slot, piece, touched, chunk_length);
    if (status.ok()) status = active.write_slot(slot, piece.offset_in_chunk_bytes, std::span(source, piece.length_bytes));
  } else {
    std::span<uint8_t> chunk = scratch_chunk(chunk_length);
    if (entry) {  // kZero in the active layer: the current content is zeros
      std::memset(chunk.data(), 0, chunk_length);
    } else {
      // The writer holds this chunk's stripe, so the lower layers' content is stable.
      status = read_layers(layers_, layers_.size() - 1, geometry.chunk_offset_bytes(piece.chunk_index),
                           chunk, /*lock_active=*/false);
    }
    if (status.ok()) {
      std::memcpy(chunk.data() + piece.offset_in_chunk_bytes, source, piece.length_bytes);
      status = active.write_slot(slot, 0, chunk);
    }
  }
  if (!status.ok()) {
    active.release_slot(slot);
    return status;
  }
  // The other sectors are unchanged: not dirty, and (sector-granular) not in the slot.
  // A kZero entry of this layer before makes publish_data mark every sector.
  active.publish_data(piece.chunk_index, slot, piece.covers_whole_chunk ? kAllSectorsDirty : touched);
  return Status();
}

void Volume::mark_written(Layer& active, uint64_t chunk_index, const ChunkEntry& entry, uint64_t sectors) {
  // Marked after the write: a freeze (which waits for this write) sees both. A packed
  // layer's whole-chunk write of a short last chunk marks every sector dirty but
  // defines none past the chunk's end; after a resize such a sector is added here.
  if ((sectors & ~entry.dirty_sectors) != 0 || (sectors & ~entry.defined_sectors) != 0) {
    active.mark_dirty(chunk_index, sectors);
  }
}

Status Volume::write_batch(Layer& active, LayerWriteBatch& batch) {
  Status status = active.write_slots(std::span(batch.writes.data(), batch.count));
  for (size_t i = 0; i < batch.count; ++i) {
    const LayerWriteBatch::Item& item = batch.items[i];
    if (!item.entry) {
      // A whole chunk written for the first time since the freeze: visible only once
      // all of it is in its slot; a kZero entry before makes publish_data mark every sector.
      if (status.ok()) {
        active.publish_data(item.chunk_index, batch.writes[i].slot, kAllSectorsDirty);
      } else {
        active.release_slot(batch.writes[i].slot);
      }
      continue;
    }
    // In place. After a failure some of the bytes may be new: their sectors are marked
    // dirty too (shipping a sector that did not change is harmless), but a sector the
    // slot did not hold yet is not defined, since it may not have been written whole.
    const ChunkEntry& entry = *item.entry;
    mark_written(active, item.chunk_index, entry, status.ok() ? item.touched : item.touched & entry.defined_sectors);
  }
  batch.stripes.release();
  batch.count = 0;
  return status;
}

Status Volume::modify(uint64_t offset_bytes, uint64_t length_bytes, const uint8_t* data, bool fua,
                      bool staged) {
  while (true) {
    if (!staged && writes_held_.load()) {
      // Waits outside io_lock_, so the freeze the holder waits for is not blocked.
      std::unique_lock hold(hold_mutex_);
      writes_released_.wait(hold, [&] { return !writes_held_.load(); });
    }
    std::shared_lock io(io_lock_);  // before the range check: the size is stable under it
    // hold_writes() sets the flag before it waits for io_lock_: seen here if it returned.
    if (!staged && writes_held_.load()) continue;
    const ChunkGeometry geometry = this->geometry();
    if (!geometry.in_range(offset_bytes, length_bytes)) {
      return out_of_range("write of " + std::to_string(length_bytes) + " bytes at offset " +
                          std::to_string(offset_bytes) + " is beyond the volume's end (" +
                          std::to_string(geometry.volume_size_bytes()) + " bytes)");
    }
    if (!staged && read_only_.load()) {
      return Status(ErrorCode::kReadOnly, dir_ + " is read-only (a replica or a demoted volume)");
    }
    Layer& active = *layers_.back();
    Status status;
    // Built only for a request spanning chunks: most small writes fit in one.
    std::optional<LayerWriteBatch> batches;
    geometry.for_each_piece(offset_bytes, length_bytes, [&](const ChunkPiece& piece) {
      if (!status.ok()) return;
      const uint8_t* source = data != nullptr ? data + piece.offset_in_request_bytes : nullptr;
      if (piece.length_bytes == length_bytes) {
        std::unique_lock stripe(stripes_[piece.chunk_index % kStripeCount]);
        status = write_piece(piece, source, active.find(piece.chunk_index));
        return;
      }
      LayerWriteBatch& batch = batches ? *batches : batches.emplace();
      // Every change to a chunk of the active layer holds its stripe, so a slot is never
      // freed, reused or filled by copy-on-first-write under a concurrent writer.
      const size_t stripe_index = piece.chunk_index % kStripeCount;
      if (!batch.stripes.can_take(stripe_index)) {
        status = write_batch(active, batch);
        if (!status.ok()) return;
      }
      std::unique_lock stripe(stripes_[stripe_index]);
      std::optional<ChunkEntry> entry = active.find(piece.chunk_index);
      const uint64_t touched = sectors_touched(chunk_size_bytes_, piece.offset_in_chunk_bytes, piece.length_bytes);
      const bool in_place = entry && entry->state == ChunkState::kData &&
                            (piece.covers_whole_chunk || (touched & ~entry->defined_sectors) == 0);
      const bool whole_new = piece.covers_whole_chunk && (!entry || entry->state == ChunkState::kZero);
      if (source == nullptr || (!in_place && !whole_new)) {
        // Zeroing, or a partial first write (copy-on-first-write): one chunk at a time.
        status = write_piece(piece, source, entry);
        return;
      }
      const uint64_t slot = in_place ? entry->slot : active.reserve_slot();
      batch.writes[batch.count] = {slot, piece.offset_in_chunk_bytes, std::span(source, piece.length_bytes)};
      batch.items[batch.count] = {piece.chunk_index, in_place ? entry : std::nullopt, touched};
      batch.stripes.take(std::move(stripe), stripe_index);
      ++batch.count;
    });
    if (batches && batches->count != 0) {
      Status flushed = write_batch(active, *batches);
      if (status.ok()) status = flushed;
    }
    AMIRROR_RETURN_IF_ERROR(status);
    break;
  }
  return fua ? flush() : Status();
}

Status Volume::write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) {
  return modify(offset_bytes, data.size(), data.data(), fua);
}

Status Volume::write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) {
  return modify(offset_bytes, length_bytes, nullptr, fua);
}

Status Volume::trim(uint64_t offset_bytes, uint64_t length_bytes) {
  return modify(offset_bytes, length_bytes, nullptr, false);
}

Status Volume::write_staged(uint64_t offset_bytes, std::span<const uint8_t> data) {
  return modify(offset_bytes, data.size(), data.data(), false, /*staged=*/true);
}

Status Volume::write_zeroes_staged(uint64_t offset_bytes, uint64_t length_bytes) {
  return modify(offset_bytes, length_bytes, nullptr, false, /*staged=*/true);
}

Status Volume::flush() {
  std::shared_ptr<Layer> active;
  {
    std::shared_lock io(io_lock_);
    active = layers_.back();
  }
  // If a freeze intervenes, it synced this layer itself; syncing again is harmless.
  // Not holding io_lock_ here keeps a flush from stalling a freeze (and so writes).
  return active->sync();
}

// ---- Freeze and merge -----------------------------------------------------

Status Volume::freeze_locked(int64_t time_unix_ms, uint64_t cycle) {
  Layer& active = *layers_.back();
  AMIRROR_RETURN_IF_ERROR(active.sync());
  uint64_t next_id;
  {
    std::lock_guard meta(meta_mutex_);
    next_id = next_layer_id_locked();
    if (cycle == 0) cycle = cycle_locked() + 1;
    if (cycle <= cycle_locked()) {
      return invalid_argument("cannot freeze " + dir_ + " as point " + std::to_string(cycle) +
                              ": point " + std::to_string(cycle_locked()) + " exists");
    }
  }
  // Files of this id can only be leftovers of an earlier failed freeze.
  (void)fs_.remove(dir_ + "/" + Layer::data_file_name(next_id));
  (void)fs_.remove(dir_ + "/" + Layer::map_file_name(next_id));
  AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Layer> next, Layer::create(fs_, dir_, next_id, chunk_size_bytes(),
                                                                       spare_data_path(/*existing=*/true)));
  std::lock_guard meta(meta_mutex_);
  meta_.frozen.push_back({meta_.active_layer, cycle, time_unix_ms});
  meta_.active_layer = next_id;
  Status status = write_meta();
  if (!status.ok()) {
    meta_.active_layer = meta_.frozen.back().layer_id;
    meta_.frozen.pop_back();
    // Not removed: if the rename did land before the error (say only the directory
    // sync failed), volume.meta names this layer. Unnamed, it is an orphan that the
    // next open removes; its id is never used again meanwhile.
    return status.with_context("freeze " + dir_);
  }
  active.mark_frozen();
  layers_.push_back(std::move(next));
  return Status();
}

Status Volume::freeze_as(uint64_t cycle, int64_t freeze_time_unix_ms) {
  AMIRROR_RETURN_IF_ERROR(flush());
  std::unique_lock io(io_lock_);
  return freeze_locked(freeze_time_unix_ms, cycle);
}

Status Volume::discard_after(uint64_t cycle) {
  std::lock_guard merge_lock(merge_mutex_);
  std::unique_lock io(io_lock_);
  std::lock_guard meta(meta_mutex_);
  std::optional<uint64_t> top_id = top_layer_id_locked(cycle);
  if (!top_id) {
    return out_of_range("cannot go back to point " + std::to_string(cycle) + " of " + dir_ + ": it is not kept (points " +
                        points_text_locked() + " are)");
  }
  // An unfinished merge (cut short by ENOSPC) keeps its layer: top_id is at least the
  // merging layer's id, since the oldest kept point is the one it completes.
  uint64_t next_id = next_layer_id_locked();
  (void)fs_.remove(dir_ + "/" + Layer::data_file_name(next_id));
  (void)fs_.remove(dir_ + "/" + Layer::map_file_name(next_id));
  AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Layer> next, Layer::create(fs_, dir_, next_id, chunk_size_bytes()));
  VolumeMeta old = meta_;
  std::erase_if(meta_.frozen, [&](const FrozenLayer& frozen) { return frozen.layer_id > *top_id; });
  meta_.active_layer = next_id;
  Status status = write_meta();
  if (!status.ok()) {
    meta_ = std::move(old);  // the new layer's files stay: see freeze_locked
    return status.with_context("discard the points after " + std::to_string(cycle) + " of " + dir_);
  }
  // volume.meta no longer names them: from here on they are orphans, removed now or
  // on the next open.
  std::vector<std::shared_ptr<Layer>> kept;
  for (auto& layer : layers_) {
    if (layer->id() <= *top_id) {
      kept.push_back(std::move(layer));
    } else {
      (void)layer->remove_files();
    }
  }
  kept.push_back(std::move(next));
  layers_ = std::move(kept);
  return Status();
}

Status Volume::rewrite_chunk_of_newest_point(uint64_t chunk_index, std::span<const uint8_t> data) {
  std::lock_guard merge_lock(merge_mutex_);  // the base and the stack stay as they are
  std::shared_lock io(io_lock_);
  uint64_t newest;
  {
    std::lock_guard meta(meta_mutex_);
    if (meta_.merging_layer != 0) return Status(ErrorCode::kBusy, dir_ + " has a merge to finish first");
    newest = cycle_locked();
  }
  AMIRROR_ASSIGN_OR_RETURN(size_t top, layers_in_point_locked(newest));
  const uint64_t offset = geometry().chunk_offset_bytes(chunk_index);
  const uint64_t length = geometry().chunk_length_bytes(chunk_index);
  // Each sector goes where a read of the point finds it: the newest layer that defines
  // it, else the base. Planned first, so a chunk that cannot be fixed changes nothing.
  struct Target {
    size_t index;  // SIZE_MAX: the base
    ChunkEntry entry;
    uint64_t sectors;
  };
  std::vector<Target> targets;
  uint64_t remaining = kAllSectorsDirty;
  for (size_t i = top; remaining != 0;) {
    std::optional<ChunkEntry> at;
    while (i > 0 && !at) at = layers_[--i]->find(chunk_index);
    if (!at) {
      targets.push_back({SIZE_MAX, {}, remaining});
      break;
    }
    const uint64_t here = at->state == ChunkState::kZero ? remaining : remaining & at->defined_sectors;
    if (here == 0) continue;
    if (at->state == ChunkState::kZero && !data.empty()) {
      bool zeros = true;
      for_each_sector_run(chunk_size_bytes_, length, here, [&](uint64_t begin, uint64_t end) {
        zeros = zeros && all_zero(data.subspan(begin, end - begin));
      });
      if (!zeros) {
        return Status(ErrorCode::kUnsupported, "chunk " + std::to_string(chunk_index) + " is recorded as zero in layer " +
                                                   std::to_string(layers_[i]->id()) + " of " + dir_ +
                                                   "; it cannot be fixed in place");
      }
    }
    if (at->state == ChunkState::kData) targets.push_back({i, *at, here});
    remaining &= ~here;
  }
  for (const Target& target : targets) {
    Status status;
    for_each_sector_run(chunk_size_bytes_, length, target.sectors, [&](uint64_t begin, uint64_t end) {
      if (!status.ok()) return;
      std::span<const uint8_t> bytes = data.empty() ? std::span<const uint8_t>(zero_chunk(), end - begin)
                                                    : data.subspan(begin, end - begin);
      if (target.index != SIZE_MAX) {
        status = layers_[target.index]->write_slot(target.entry.slot, begin, bytes);
      } else {
        status = data.empty() ? base_->punch_hole(offset + begin, end - begin) : base_->write_at(offset + begin, bytes);
      }
    });
    AMIRROR_RETURN_IF_ERROR(status);
    AMIRROR_RETURN_IF_ERROR(target.index != SIZE_MAX ? layers_[target.index]->sync() : base_->sync());
  }
  return Status();
}

Status Volume::relabel_base(uint64_t cycle) {
  std::lock_guard merge_lock(merge_mutex_);
  std::unique_lock io(io_lock_);
  std::lock_guard meta(meta_mutex_);
  if (!meta_.frozen.empty() || meta_.merging_layer != 0 || layers_.back()->chunk_count() != 0) {
    return invalid_argument("cannot renumber the base of " + dir_ + ": it has layers above it");
  }
  uint64_t old = meta_.base_cycle;
  meta_.base_cycle = cycle;
  Status status = write_meta();
  if (!status.ok()) meta_.base_cycle = old;
  return status;
}

// Resize protocol: see volume.h and docs/formats/store.md ("Resize").
Result<uint64_t> Volume::resize(uint64_t size_bytes) {
  {
    std::lock_guard meta(meta_mutex_);
    AMIRROR_RETURN_IF_ERROR(check_resize_locked(size_bytes));
    if (size_bytes == meta_.options.size_bytes) return size_bytes;
  }
  // Like freeze: sync outside the locks first, so the stall covers only the last changes.
  AMIRROR_RETURN_IF_ERROR(flush());
  // After a merge, not beside it: the merge reads the geometry once for its layer.
  std::lock_guard merge_lock(merge_mutex_);
  std::unique_lock io(io_lock_);  // client I/O waits; what it sees next is the new size
  const uint64_t old_size_bytes = this->size_bytes();
  {
    std::lock_guard meta(meta_mutex_);  // again: another resize may have run meanwhile
    AMIRROR_RETURN_IF_ERROR(check_resize_locked(size_bytes));
  }
  if (size_bytes == old_size_bytes) return old_size_bytes;
  AMIRROR_RETURN_IF_ERROR(zero_slot_tails_locked(old_size_bytes, size_bytes).with_context("resize " + dir_));
  // A durable point, like freeze: every write before resize() survives a crash after it.
  AMIRROR_RETURN_IF_ERROR(layers_.back()->sync().with_context("resize " + dir_));
  if (base_path_.empty()) {
    // A hole: no data is written, and a crash from here on leaves a longer base.img
    // that open() trims back to the size volume.meta records.
    AMIRROR_RETURN_IF_ERROR(too_large_for_file_system(base_->truncate(size_bytes), size_bytes, dir_).with_context("resize " + dir_));
  } else {
    // A base longer than the volume (base_may_be_larger; check_resize_locked): the new
    // range is zeroed in place, never truncated. A crash before volume.meta leaves it
    // zeroed past the old size, which no point reads.
    AMIRROR_RETURN_IF_ERROR(base_->punch_hole(old_size_bytes, size_bytes - old_size_bytes).with_context("resize " + dir_));
  }
  AMIRROR_RETURN_IF_ERROR(base_->sync().with_context("resize " + dir_));
  {
    std::lock_guard meta(meta_mutex_);
    meta_.options.size_bytes = size_bytes;
    Status status = write_meta();
    if (!status.ok()) {
      // base.img stays longer: harmless in memory (nothing reads past the size) and
      // trimmed by the next open if volume.meta did not change after all.
      meta_.options.size_bytes = old_size_bytes;
      return status.with_context("resize " + dir_);
    }
  }
  size_bytes_.store(size_bytes, std::memory_order_release);
  return old_size_bytes;
}

Status Volume::check_resize_locked(uint64_t size_bytes) const {
  const uint64_t old_size_bytes = meta_.options.size_bytes;
  VolumeOptions options = meta_.options;
  options.size_bytes = size_bytes;
  AMIRROR_RETURN_IF_ERROR(validate_volume_options(options));  // names a bad value
  if (size_bytes < old_size_bytes) {
    return invalid_argument("shrinking is not supported; the volume is " + format_bytes(old_size_bytes) + " (" +
                            std::to_string(old_size_bytes) + " bytes) and " + format_bytes(size_bytes) + " (" +
                            std::to_string(size_bytes) + " bytes) is smaller; a volume only grows");
  }
  if (!base_path_.empty() && meta_.options.base_may_be_larger && size_bytes != old_size_bytes) {
    // Grows within the device it has, never past it.
    AMIRROR_ASSIGN_OR_RETURN(uint64_t base_bytes, base_->size_bytes());
    if (size_bytes > base_bytes) return base_too_small(base_path_, base_bytes, size_bytes);
    return Status();
  }
  if (!base_path_.empty() && size_bytes != old_size_bytes) {
    // Growing would truncate a file or device amirror only borrows.
    return invalid_argument("the volume's base is the adopted " + base_path_ +
                            ", which amirror never resizes; `amirror volume release` it, grow the file or device, "
                            "and adopt it again");
  }
  return Status();
}

// The old last chunk was short: each slot holding it has bytes past the old end that
// were never part of any point, and may hold another chunk's old bytes (slots are
// reused). Once the chunk is longer they would be read, so they become zeros first,
// synced before volume.meta changes. Bytes outside every point's image change: no
// point changes, not even a frozen layer's, so a crash anywhere here is harmless.
Status Volume::zero_slot_tails_locked(uint64_t old_size_bytes, uint64_t new_size_bytes) {
  uint64_t old_tail_bytes = old_size_bytes % chunk_size_bytes_;
  if (old_tail_bytes == 0) return Status();
  uint64_t chunk_index = old_size_bytes / chunk_size_bytes_;
  uint64_t new_length_bytes = ChunkGeometry(new_size_bytes, chunk_size_bytes_).chunk_length_bytes(chunk_index);
  std::span<const uint8_t> zeros(zero_chunk(), new_length_bytes - old_tail_bytes);
  const uint64_t sector_bytes = dirty_sector_bytes(chunk_size_bytes_);
  const uint64_t straddling = old_tail_bytes / sector_bytes;  // the sector the old end cuts
  for (const auto& layer : layers_) {
    std::optional<ChunkEntry> entry = layer->find(chunk_index);
    if (!entry || entry->state != ChunkState::kData) continue;
    std::span<const uint8_t> tail = zeros;
    if (layer->packed()) {
      // A packed layer defines only sectors that were written, so none past the old
      // end: just the rest of the sector the old end cuts, if it is defined.
      if (old_tail_bytes % sector_bytes == 0 || ((entry->defined_sectors >> straddling) & 1) == 0) continue;
      tail = zeros.first(std::min((straddling + 1) * sector_bytes, new_length_bytes) - old_tail_bytes);
    }
    AMIRROR_RETURN_IF_ERROR(layer->write_slot(entry->slot, old_tail_bytes, tail));
    AMIRROR_RETURN_IF_ERROR(layer->sync());
  }
  return Status();
}

std::vector<DeltaChunk> Volume::active_changes() const {
  std::shared_ptr<Layer> active;
  {
    std::shared_lock io(io_lock_);
    active = layers_.back();
  }
  std::vector<DeltaChunk> changes;
  for (const auto& [chunk_index, entry] : active->entries()) changes.push_back({chunk_index, entry.state});
  return changes;
}

Result<uint64_t> Volume::freeze(Clock& clock) {
  Volume* self = this;
  AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> cycles, freeze_group(std::span(&self, 1), clock));
  return cycles.front();
}

Result<std::vector<uint64_t>> Volume::freeze_group(std::span<Volume* const> volumes, Clock& clock) {
  // Sync outside the locks first, so the stall below covers only the last changes.
  // Writes go on during a sync; after a long one (a busy volume: hundreds of MB dirty)
  // the changes it let in would make the stall as long again, so sync again while
  // syncs are slow. Bounded: a volume written faster than the disk never gets quick.
  for (Volume* volume : volumes) {
    for (int round = 0; round < kMaxPreFreezeSyncs; ++round) {
      auto started = std::chrono::steady_clock::now();
      AMIRROR_RETURN_IF_ERROR(volume->flush());
      if (std::chrono::steady_clock::now() - started < kQuickSync) break;
    }
  }
  std::vector<Volume*> ordered(volumes.begin(), volumes.end());
  std::sort(ordered.begin(), ordered.end(),
            [](const Volume* a, const Volume* b) { return a->dir_ < b->dir_; });
  AMIRROR_ASSERT(std::adjacent_find(ordered.begin(), ordered.end()) == ordered.end());
  std::vector<std::unique_lock<RwLock>> locks;
  for (Volume* volume : ordered) locks.emplace_back(volume->io_lock_);
  auto stall_start = std::chrono::steady_clock::now();
  // While every lock is held no write reaches any member, so the points are one cut.
  // If a member fails, the ones already frozen stay frozen; freezing the rest later
  // still yields a consistent cut, because nothing was written in between.
  int64_t time_unix_ms = clock.unix_ms();
  std::vector<uint64_t> cycles;
  for (Volume* volume : volumes) {
    AMIRROR_RETURN_IF_ERROR(volume->freeze_locked(time_unix_ms, 0));
    std::lock_guard meta(volume->meta_mutex_);
    cycles.push_back(volume->cycle_locked());
  }
  auto stall_us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - stall_start).count();
  for (Volume* volume : volumes) volume->last_freeze_stall_us_.store(static_cast<uint64_t>(stall_us));
  return cycles;
}

// Merge protocol (docs/formats/store.md): first volume.meta records base_cycle = m with
// merging_layer = m (point m-1 is given up; layer m stays in the stack), then layer m's
// chunks are written into the base and synced, then merging_layer is cleared and the
// layer removed. A merge cut short anywhere (crash, ENOSPC, EIO) is redone, never
// leaving a freeze point that reads a half-updated base.
Status Volume::merge_everything(Clock& clock) {
  AMIRROR_RETURN_IF_ERROR(freeze(clock).status());
  // Bounded: each merge removes one frozen layer and nothing freezes meanwhile.
  for (;;) {
    Status merged = merge_oldest();
    if (merged.code() == ErrorCode::kNotFound) break;
    AMIRROR_RETURN_IF_ERROR(merged);
  }
  AMIRROR_RETURN_IF_ERROR(base_->sync());
  std::vector<LayerInfo> stack = layers();
  if (stack.size() != 1 || stack.back().chunk_count != 0) {
    return Status(ErrorCode::kBusy, dir_ + " was written while everything was merged into its base");
  }
  std::lock_guard meta_lock(meta_mutex_);
  if (!meta_.frozen.empty() || meta_.merging_layer != 0) {
    return Status(ErrorCode::kBusy, dir_ + " froze again while everything was merged into its base");
  }
  return Status();
}

Status Volume::merge_oldest(const std::function<void()>& progress) {
  std::lock_guard merge_lock(merge_mutex_);
  std::shared_ptr<Layer> oldest;
  bool resuming = false;
  {
    std::shared_lock io(io_lock_);
    std::lock_guard meta(meta_mutex_);
    resuming = meta_.merging_layer != 0;
    if (!resuming && layers_.size() < 2) return not_found("no frozen layer to merge in " + dir_);
    oldest = layers_.front();
    AMIRROR_ASSERT(!resuming || oldest->id() == meta_.merging_layer);
  }
  std::unique_lock base_point(base_point_lock_);
  if (!resuming) {
    std::lock_guard meta(meta_mutex_);
    VolumeMeta old = meta_;
    AMIRROR_ASSERT(meta_.frozen.front().layer_id == oldest->id());
    meta_.base_cycle = meta_.frozen.front().cycle;
    meta_.base_freeze_time_unix_ms = meta_.frozen.front().freeze_time_unix_ms;
    meta_.merging_layer = oldest->id();
    Status status = write_meta();
    if (!status.ok()) {
      meta_ = std::move(old);
      return status.with_context("merge layer " + std::to_string(oldest->id()) + " of " + dir_);
    }
  }
  // Chunk order keeps the base writes sequential where the layer is dense.
  std::span<uint8_t> chunk = scratch_chunk(chunk_size_bytes());
  const ChunkGeometry geometry = this->geometry();  // stable: resize() waits for merge_mutex_
  uint64_t unsynced_bytes = 0;  // written into the base since the last writeback start
  uint64_t unsynced_from = 0;   // the range they lie in (chunk order: ascending)
  for (const auto& [chunk_index, entry] : oldest->entries()) {
    uint64_t chunk_offset = geometry.chunk_offset_bytes(chunk_index);
    uint64_t chunk_length = geometry.chunk_length_bytes(chunk_index);
    if (entry.state == ChunkState::kZero) {
      AMIRROR_RETURN_IF_ERROR(base_->punch_hole(chunk_offset, chunk_length));
      continue;
    }
    // Only the sectors the layer defines; the base keeps the others.
    Status status;
    for_each_sector_run(chunk_size_bytes(), chunk_length, entry.defined_sectors, [&](uint64_t begin, uint64_t end) {
      std::span<uint8_t> content = chunk.subspan(0, end - begin);
      if (status.ok()) status = oldest->read_slot(entry.slot, begin, content);
      if (status.ok()) status = base_->write_at(chunk_offset + begin, content);
    });
    AMIRROR_RETURN_IF_ERROR(status);
    if (unsynced_bytes == 0) unsynced_from = chunk_offset;
    unsynced_bytes += chunk_length;
    if (unsynced_bytes >= kMergeProgressBytes) {
      base_->start_writeback(unsynced_from, chunk_offset + chunk_length - unsynced_from);
      unsynced_bytes = 0;
      if (progress) progress();
    }
  }
  AMIRROR_RETURN_IF_ERROR(base_->sync());
  {
    std::lock_guard meta(meta_mutex_);
    VolumeMeta old = meta_;
    meta_.merging_layer = 0;
    meta_.frozen.erase(meta_.frozen.begin());
    Status status = write_meta();
    if (!status.ok()) {
      meta_ = std::move(old);
      return status.with_context("finish merge of layer " + std::to_string(oldest->id()) + " of " + dir_);
    }
  }
  {
    std::unique_lock io(io_lock_);
    AMIRROR_ASSERT(layers_.front() == oldest);
    layers_.erase(layers_.begin());
  }
  retire_merged_layer(*oldest);
  return Status();
}

// The path of a spare data file that exists (`existing`) or of a free spare name, or ""
// when there is none.
std::string Volume::spare_data_path(bool existing) {
  for (uint64_t index = 0; index < kMaxSpares; ++index) {
    const std::string path = dir_ + "/" + spare_data_file_name(index);
    Result<bool> exists = fs_.exists(path);
    if (exists.ok() && exists.value() == existing) return path;
  }
  return "";
}

uint64_t Volume::spare_bytes() const {
  uint64_t bytes = 0;
  for (uint64_t index = 0; index < kMaxSpares; ++index) {
    // Status only: a spare that cannot be read now counts as none.
    Result<std::unique_ptr<File>> file = fs_.open(dir_ + "/" + spare_data_file_name(index), OpenMode::kOpenExisting);
    if (!file.ok()) continue;
    Result<uint64_t> allocated = allocated_file_bytes(**file);
    if (allocated.ok()) bytes += *allocated;
  }
  return bytes;
}

void Volume::retire_merged_layer(Layer& merged) {
  const std::string spare = spare_data_path(/*existing=*/false);
  Result<uint64_t> allocated = spare.empty() ? Result<uint64_t>(kSpareBudgetBytes + 1) : merged.allocated_data_bytes();
  if (allocated.ok() && allocated.value() + spare_bytes() <= kSpareBudgetBytes &&
      fs_.rename(dir_ + "/" + Layer::data_file_name(merged.id()), spare).ok()) {
    // No directory sync needed: a crash that undoes the rename leaves an orphan layer
    // file, which the next open removes, as below.
    (void)fs_.remove(dir_ + "/" + Layer::map_file_name(merged.id()));
    return;
  }
  // A failure here leaves an orphan that the next open removes.
  (void)merged.remove_files();
}

// ---- Base fill (a replica's full copy, written once) -------------------------

Status Volume::check_base_fill_locked() const {
  if (!meta_.frozen.empty() || meta_.merging_layer != 0 || meta_.base_cycle != 0 ||
      layers_.back()->chunk_count() != 0) {
    return invalid_argument("cannot fill the base of " + dir_ + " directly: it already holds points or changes");
  }
  return Status();
}

Status Volume::begin_base_fill() {
  std::lock_guard merge_lock(merge_mutex_);
  std::unique_lock io(io_lock_);
  {
    std::lock_guard meta(meta_mutex_);
    AMIRROR_RETURN_IF_ERROR(check_base_fill_locked());
  }
  // What an earlier, abandoned fill wrote goes: the new one sends only non-zero chunks.
  // Ranged, never a truncate: on a block device (an adopted base) the kernel zeroes the
  // range (BLKZEROOUT semantics, or written zeros), and a longer device's tail past
  // size_bytes() is left as it is. What the abandoned fill gathered and never wrote
  // goes too: written after the punch, it would be stale data in the new fill.
  {
    std::lock_guard lock(base_fill_mutex_);
    if (base_fill_writer_ != nullptr) base_fill_writer_->discard();
  }
  AMIRROR_RETURN_IF_ERROR(base_->punch_hole(0, size_bytes()));
  return base_->sync();
}

Status Volume::write_base_fill(uint64_t offset_bytes, std::span<const uint8_t> data) {
  std::shared_lock io(io_lock_);
  if (!geometry().in_range(offset_bytes, data.size())) return out_of_range("base fill beyond the volume's end");
  {
    std::lock_guard meta(meta_mutex_);
    AMIRROR_RETURN_IF_ERROR(check_base_fill_locked());
  }
  std::lock_guard lock(base_fill_mutex_);
  if (base_fill_writer_ == nullptr) base_fill_writer_ = std::make_unique<UncachedWriter>(*base_);
  return base_fill_writer_->write(offset_bytes, data);
}

Status Volume::flush_base_fill() {
  std::lock_guard lock(base_fill_mutex_);
  return base_fill_writer_ == nullptr ? Status() : base_fill_writer_->flush();
}

Status Volume::zero_base_fill(uint64_t offset_bytes, uint64_t length_bytes) {
  std::shared_lock io(io_lock_);
  if (!geometry().in_range(offset_bytes, length_bytes)) return out_of_range("base fill beyond the volume's end");
  {
    std::lock_guard meta(meta_mutex_);
    AMIRROR_RETURN_IF_ERROR(check_base_fill_locked());
  }
  AMIRROR_RETURN_IF_ERROR(flush_base_fill());  // in order with the writes before it
  return base_->punch_hole(offset_bytes, length_bytes);
}

Status Volume::sync_base() {
  AMIRROR_RETURN_IF_ERROR(flush_base_fill());
  return base_->sync();
}

Status Volume::commit_base_fill(uint64_t cycle, int64_t freeze_time_unix_ms) {
  std::lock_guard merge_lock(merge_mutex_);
  std::unique_lock io(io_lock_);
  std::lock_guard meta(meta_mutex_);
  AMIRROR_RETURN_IF_ERROR(check_base_fill_locked());
  if (cycle == 0) return invalid_argument("cannot commit a base fill as point 0");
  // The data is durable before volume.meta names it a point.
  AMIRROR_RETURN_IF_ERROR(sync_base());
  VolumeMeta old = meta_;
  meta_.base_cycle = cycle;
  meta_.base_freeze_time_unix_ms = freeze_time_unix_ms;
  Status status = write_meta();
  if (!status.ok()) {
    meta_ = std::move(old);
    return status;
  }
  std::lock_guard lock(base_fill_mutex_);
  base_fill_writer_.reset();  // its buffer is not needed after the fill
  return Status();
}

// ---- Deltas and extents -----------------------------------------------------

Result<std::vector<DeltaChunk>> Volume::changed_chunks(uint64_t from_cycle, uint64_t to_cycle) {
  std::vector<std::shared_ptr<Layer>> selected;
  {
    std::shared_lock io(io_lock_);
    std::lock_guard meta(meta_mutex_);
    std::optional<uint64_t> from_id = top_layer_id_locked(from_cycle);
    std::optional<uint64_t> to_id = top_layer_id_locked(to_cycle);
    if (from_cycle >= to_cycle || !from_id || !to_id) {
      return out_of_range("no delta from point " + std::to_string(from_cycle) + " to " +
                          std::to_string(to_cycle) + " (points " + points_text_locked() + " exist)");
    }
    for (const auto& layer : layers_) {
      if (layer->id() > *from_id && layer->id() <= *to_id) selected.push_back(layer);
    }
  }
  // The newest state wins; the dirty sectors are the union over the layers (a kZero
  // entry counts as every sector), so they cover every byte that differs.
  std::map<uint64_t, DeltaChunk> merged;
  for (const auto& layer : selected) {  // oldest first: newer states overwrite
    for (const auto& [chunk_index, entry] : layer->entries()) {
      uint64_t dirty = entry.state == ChunkState::kZero ? kAllSectorsDirty : entry.dirty_sectors;
      auto [it, inserted] = merged.try_emplace(chunk_index, DeltaChunk{chunk_index, entry.state, dirty});
      if (!inserted) it->second = DeltaChunk{chunk_index, entry.state, it->second.dirty_sectors | dirty};
    }
  }
  std::vector<DeltaChunk> delta;
  delta.reserve(merged.size());
  for (const auto& [chunk_index, chunk] : merged) delta.push_back(chunk);
  return delta;
}

Result<std::vector<uint64_t>> Volume::allocated_chunks(uint64_t cycle) {
  std::vector<std::shared_ptr<Layer>> selected;
  std::shared_lock base_point(base_point_lock_);
  {
    std::shared_lock io(io_lock_);
    std::lock_guard meta(meta_mutex_);
    std::optional<uint64_t> top_id = top_layer_id_locked(cycle);
    if (!top_id) return out_of_range("freeze point " + std::to_string(cycle) + " does not exist");
    for (const auto& layer : layers_) {
      if (layer->id() <= *top_id) selected.push_back(layer);
    }
  }
  std::set<uint64_t> chunks;
  AMIRROR_ASSIGN_OR_RETURN(std::vector<Extent> extents, base_->allocated_extents(0, size_bytes()));
  for (const Extent& extent : extents) {
    uint64_t first = extent.offset_bytes / chunk_size_bytes();
    uint64_t last = (extent.offset_bytes + extent.length_bytes - 1) / chunk_size_bytes();
    for (uint64_t chunk_index = first; chunk_index <= last; ++chunk_index) chunks.insert(chunk_index);
  }
  for (const auto& layer : selected) {
    for (const auto& [chunk_index, entry] : layer->entries()) {
      if (entry.state == ChunkState::kData) {
        chunks.insert(chunk_index);
      } else {
        chunks.erase(chunk_index);
      }
    }
  }
  return std::vector<uint64_t>(chunks.begin(), chunks.end());
}

Result<std::vector<Extent>> Volume::allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) {
  std::shared_lock io(io_lock_);  // before the range check: the size is stable under it
  if (!geometry().in_range(offset_bytes, length_bytes)) {
    return out_of_range("extent query beyond the volume's end");
  }
  if (length_bytes == 0) return std::vector<Extent>{};
  return allocated_extents_locked(layers_.size(), offset_bytes, length_bytes);
}

Result<std::vector<Extent>> Volume::allocated_extents_at(uint64_t cycle, uint64_t offset_bytes, uint64_t length_bytes) {
  std::shared_lock io(io_lock_);  // before the range check: the size is stable under it
  if (!geometry().in_range(offset_bytes, length_bytes)) {
    return out_of_range("extent query beyond the volume's end");
  }
  if (length_bytes == 0) return std::vector<Extent>{};
  AMIRROR_ASSIGN_OR_RETURN(size_t top, layers_in_point_locked(cycle));
  // Base extents are read without the base-point lock: a merge only adds data to the
  // base under a layer that covers it, so at worst a chunk is reported allocated.
  return allocated_extents_locked(top, offset_bytes, length_bytes);
}

Result<std::vector<Extent>> Volume::allocated_extents_locked(size_t top, uint64_t offset_bytes,
                                                             uint64_t length_bytes) {
  const ChunkGeometry geometry = this->geometry();
  uint64_t range_end = offset_bytes + length_bytes;
  uint64_t first_chunk = offset_bytes / chunk_size_bytes();
  uint64_t last_chunk = (range_end - 1) / chunk_size_bytes();
  // Newest layer state per chunk in range (true = data, false = zero). Look chunks up
  // one by one when the range is small, else scan the maps: whichever is less work.
  std::map<uint64_t, bool> overrides;
  size_t layer_entries = 0;
  for (size_t i = 0; i < top; ++i) layer_entries += layers_[i]->chunk_count();
  if (last_chunk - first_chunk + 1 <= layer_entries) {
    for (uint64_t chunk_index = first_chunk; chunk_index <= last_chunk; ++chunk_index) {
      for (size_t i = top; i-- > 0;) {
        if (auto entry = layers_[i]->find(chunk_index)) {
          overrides[chunk_index] = entry->state == ChunkState::kData;
          break;
        }
      }
    }
  } else {
    for (size_t i = 0; i < top; ++i) {  // oldest first: newer states overwrite
      for (const auto& [chunk_index, entry] : layers_[i]->entries()) {
        if (chunk_index >= first_chunk && chunk_index <= last_chunk) {
          overrides[chunk_index] = entry.state == ChunkState::kData;
        }
      }
    }
  }
  AMIRROR_ASSIGN_OR_RETURN(std::vector<Extent> base_extents,
                           base_->allocated_extents(offset_bytes, length_bytes));

  // Allocated = (base extents minus chunks a layer decides) + chunks a layer holds as data.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [start, end)
  for (const Extent& extent : base_extents) {
    uint64_t position = extent.offset_bytes;
    uint64_t end = extent.offset_bytes + extent.length_bytes;
    for (auto it = overrides.lower_bound(position / chunk_size_bytes());
         it != overrides.end() && geometry.chunk_offset_bytes(it->first) < end; ++it) {
      uint64_t chunk_start = geometry.chunk_offset_bytes(it->first);
      if (chunk_start > position) ranges.push_back({position, chunk_start});
      position = std::max(position, chunk_start + chunk_size_bytes());
    }
    if (position < end) ranges.push_back({position, end});
  }
  for (const auto& [chunk_index, holds_data] : overrides) {
    if (!holds_data) continue;
    uint64_t chunk_start = geometry.chunk_offset_bytes(chunk_index);
    ranges.push_back({chunk_start, chunk_start + geometry.chunk_length_bytes(chunk_index)});
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<Extent> result;
  for (auto [start, end] : ranges) {
    start = std::max(start, offset_bytes);
    end = std::min(end, range_end);
    if (start >= end) continue;
    if (!result.empty() && result.back().offset_bytes + result.back().length_bytes >= start) {
      uint64_t merged_end = std::max(result.back().offset_bytes + result.back().length_bytes, end);
      result.back().length_bytes = merged_end - result.back().offset_bytes;
    } else {
      result.push_back({start, end - start});
    }
  }
  return result;
}

std::vector<LayerInfo> Volume::layers() const {
  std::shared_lock io(io_lock_);
  std::lock_guard meta(meta_mutex_);
  std::vector<LayerInfo> infos;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = *layers_[i];
    bool frozen = i + 1 < layers_.size();
    LayerInfo info{layer.id(), frozen, layer.chunk_count(), layer.data_bytes(), 0, 0, layer.dirty_bytes()};
    for (const FrozenLayer& frozen_layer : meta_.frozen) {
      if (frozen_layer.layer_id == layer.id()) {
        info.cycle = frozen_layer.cycle;
        info.freeze_time_unix_ms = frozen_layer.freeze_time_unix_ms;
      }
    }
    infos.push_back(info);
  }
  return infos;
}

}  // namespace amirror
