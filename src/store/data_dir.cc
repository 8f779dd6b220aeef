// SPDX-License-Identifier: Apache-2.0
#include "store/data_dir.h"

#include "base/assert.h"
#include "base/names.h"

namespace amirror {
namespace {

constexpr const char* kMarkerName = "AMIRROR";
constexpr const char* kMarkerContents = "amirror data directory v1\n";
constexpr const char* kLockName = "LOCK";
constexpr const char* kVolumesDirName = "volumes";
// A volume is built under this suffix and renamed into place once complete, so a
// crash during creation never leaves a half-made volume under its real name.
constexpr const char* kCreatingSuffix = ".creating";
constexpr const char* kTrashDirName = "trash";
// Bounds the search for a free trash name when earlier entries could not be removed.
constexpr uint64_t kMaxTrashProbes = 1'000'000;

std::string parent_of(const std::string& path) { return path.substr(0, path.rfind('/')); }

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

DataDir::DataDir(FileSystem& fs, std::string path, std::unique_ptr<DirectoryLock> lock)
    : fs_(fs), path_(std::move(path)), lock_(std::move(lock)) {}

Result<std::unique_ptr<DataDir>> DataDir::open(FileSystem& fs, const std::string& path,
                                               const DataDirOptions& options) {
  if (!options.create_missing) {
    AMIRROR_ASSIGN_OR_RETURN(bool exists, fs.exists(path));
    if (!exists) return not_found("directory " + path + " does not exist (is its file system mounted?)");
  }
  AMIRROR_RETURN_IF_ERROR(fs.make_dir(path));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.list_dir(path));
  std::string marker_path = path + "/" + kMarkerName;
  bool has_marker = false;
  for (const std::string& name : names) has_marker = has_marker || name == kMarkerName;
  if (has_marker) {
    AMIRROR_ASSIGN_OR_RETURN(std::string marker, read_small_file(fs, marker_path, 4096));
    if (marker != kMarkerContents) {
      return corruption(marker_path + " is not a marker this amirror understands; refusing to use " + path);
    }
  } else if (!names.empty()) {
    return invalid_argument(path + " is not empty and is not an amirror data directory (no " +
                            kMarkerName + " file); refusing to touch it. Use an empty directory.");
  } else if (!options.initialize_empty) {
    return not_found(path + " is empty, but volumes were kept there (is the right file system mounted?)");
  }
  auto lock = fs.lock_file(path + "/" + kLockName);
  if (!lock.ok()) {
    if (lock.status().code() == ErrorCode::kBusy) {
      return Status(ErrorCode::kBusy, "data directory " + path +
                                          " is in use by another amirror process; stop it first");
    }
    return lock.status();
  }
  if (!has_marker) {
    AMIRROR_RETURN_IF_ERROR(write_file_atomically(fs, path, kMarkerName, kMarkerContents));
    // A new data directory: its own entry must be durable too, or a power loss could
    // take the whole directory, with every volume acknowledged in it, away.
    AMIRROR_RETURN_IF_ERROR(fs.sync_dir(path.find('/') == std::string::npos ? "." : parent_of(path)));
  }
  AMIRROR_RETURN_IF_ERROR(fs.make_dir(path + "/" + kVolumesDirName));
  std::unique_ptr<DataDir> data_dir(new DataDir(fs, path, std::move(lock).value()));
  AMIRROR_RETURN_IF_ERROR(data_dir->remove_unfinished_volumes());
  AMIRROR_RETURN_IF_ERROR(data_dir->empty_trash());
  return data_dir;
}

Status DataDir::remove_unfinished_volumes() {
  std::string volumes_dir = path_ + "/" + kVolumesDirName;
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.list_dir(volumes_dir));
  bool removed = false;
  for (const std::string& name : names) {
    if (!ends_with(name, kCreatingSuffix)) continue;
    AMIRROR_RETURN_IF_ERROR(remove_volume_files(volumes_dir + "/" + name)
                                .with_context("remove the unfinished volume " + volumes_dir + "/" + name));
    removed = true;
  }
  return removed ? fs_.sync_dir(volumes_dir) : Status();
}

// A volume directory holds only files (docs/formats/store.md), so no recursion.
Status DataDir::remove_volume_files(const std::string& dir) {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> files, fs_.list_dir(dir));
  for (const std::string& file : files) AMIRROR_RETURN_IF_ERROR(fs_.remove(dir + "/" + file));
  return fs_.remove_dir(dir);
}

std::string DataDir::trash_dir() const { return path_ + "/" + kTrashDirName; }

Status DataDir::empty_trash() {
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(trash_dir()));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(path_));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.list_dir(trash_dir()));
  for (const std::string& name : names) {
    AMIRROR_RETURN_IF_ERROR(remove_volume_files(trash_dir() + "/" + name)
                                .with_context("empty the trash entry " + trash_dir() + "/" + name));
  }
  return names.empty() ? Status() : fs_.sync_dir(trash_dir());
}

Result<std::string> DataDir::move_to_trash(const std::string& dir) {
  AMIRROR_ASSERT(dir.starts_with(path_ + "/"));
  std::string trashed;
  {
    std::lock_guard lock(create_mutex_);
    for (uint64_t probe = 0;; ++probe) {
      AMIRROR_ASSERT(probe < kMaxTrashProbes);
      trashed = trash_dir() + "/" + std::to_string(next_trash_id_++);
      AMIRROR_ASSIGN_OR_RETURN(bool taken, fs_.exists(trashed));
      if (!taken) break;
    }
  }
  AMIRROR_RETURN_IF_ERROR(fs_.rename(dir, trashed));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(parent_of(dir)));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(trash_dir()));
  return trashed;
}

Status DataDir::remove_from_trash(const std::string& trashed_dir) {
  AMIRROR_ASSERT(parent_of(trashed_dir) == trash_dir());
  AMIRROR_RETURN_IF_ERROR(remove_volume_files(trashed_dir));
  return fs_.sync_dir(trash_dir());
}

std::string DataDir::volume_dir(const std::string& name) const { return volume_dir_at(path_, name); }

std::string DataDir::volume_dir_at(const std::string& path, const std::string& name) {
  return path + "/" + kVolumesDirName + "/" + name;
}

Result<std::vector<std::string>> DataDir::list_volumes() {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.list_dir(path_ + "/" + kVolumesDirName));
  std::vector<std::string> volumes;
  for (std::string& name : names) {
    if (!ends_with(name, kCreatingSuffix)) volumes.push_back(std::move(name));
  }
  return volumes;
}

Result<std::unique_ptr<Volume>> DataDir::create_volume(const std::string& name,
                                                       const VolumeOptions& options) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> building, begin_volume(name, options));
  return complete_volume(name, std::move(building));
}

Result<std::unique_ptr<Volume>> DataDir::begin_volume(const std::string& name, const VolumeOptions& options) {
  AMIRROR_RETURN_IF_ERROR(validate_name(name, "volume name"));
  // Such a directory would be taken for an unfinished volume, and removed at the next open.
  if (ends_with(name, kCreatingSuffix)) {
    return invalid_argument("volume name '" + name + "' ends in " + kCreatingSuffix + ", which amirror reserves; pick another");
  }
  AMIRROR_RETURN_IF_ERROR(validate_volume_options(options));
  std::lock_guard lock(create_mutex_);
  std::string final_dir = volume_dir(name);
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs_.exists(final_dir));
  if (exists || building_.count(name)) return Status(ErrorCode::kAlreadyExists, "volume '" + name + "' already exists");

  std::string building_dir = final_dir + kCreatingSuffix;
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(building_dir));
  // Leftovers of an earlier interrupted creation of the same name.
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> leftovers, fs_.list_dir(building_dir));
  for (const std::string& leftover : leftovers) {
    AMIRROR_RETURN_IF_ERROR(fs_.remove(building_dir + "/" + leftover));
  }
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> volume, Volume::create(fs_, building_dir, options));
  building_.insert(name);
  return volume;
}

Result<std::unique_ptr<Volume>> DataDir::complete_volume(const std::string& name, std::unique_ptr<Volume> building) {
  AMIRROR_ASSERT(building != nullptr);
  // Durable before the rename: a volume under its real name is always complete.
  AMIRROR_RETURN_IF_ERROR(building->flush());
  building.reset();
  std::string final_dir = volume_dir(name);
  AMIRROR_RETURN_IF_ERROR(fs_.rename(final_dir + kCreatingSuffix, final_dir));
  {
    std::lock_guard lock(create_mutex_);
    building_.erase(name);
  }
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(path_ + "/" + kVolumesDirName));
  return Volume::open(fs_, final_dir);
}

Status DataDir::abandon_volume(const std::string& name) {
  std::string building_dir = volume_dir(name) + kCreatingSuffix;
  Status status = remove_volume_files(building_dir);
  if (status.ok()) status = fs_.sync_dir(path_ + "/" + kVolumesDirName);
  std::lock_guard lock(create_mutex_);
  building_.erase(name);
  return status;
}

Result<std::unique_ptr<Volume>> DataDir::open_volume(const std::string& name) {
  AMIRROR_RETURN_IF_ERROR(validate_name(name, "volume name"));
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs_.exists(volume_dir(name)));
  if (!exists) return not_found("no volume named '" + name + "' in " + path_);
  return Volume::open(fs_, volume_dir(name));
}

}  // namespace amirror
