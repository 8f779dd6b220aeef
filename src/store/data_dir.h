// SPDX-License-Identifier: Apache-2.0
// A node's data directory: the marker that says it is amirror's, the lock that keeps
// a second process out, and one subdirectory per volume.
//
//   <data_dir>/AMIRROR              marker: "amirror data directory v1\n"
//   <data_dir>/LOCK                 flock'ed while a process uses the directory
//   <data_dir>/volumes/<name>/      one volume (see store/volume.h)
//   <data_dir>/volumes/<name>.creating/  a volume being built (created or imported);
//                                   never listed, and removed by the next open(), so
//                                   a crash mid-import leaves no half volume
//   <data_dir>/trash/<n>/           a deleted volume or replica on its way out
//
// Deleting (a volume or a replica) is a rename into trash/ first, made durable, then
// the removal of its files. A crash between leaves a whole object in the trash, which
// the next open() empties: a half-deleted volume or replica is never found under its
// name, so a restart never serves one as if it were healthy.
//
// A non-empty directory without the marker, or with another marker, is refused: we
// never write into a directory that may hold someone else's data.
// Thread-safety: all methods are thread-safe; callers own the returned volumes. A name
// being built (begin_volume .. complete/abandon_volume) is refused by other creates.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "store/file_system.h"
#include "store/volume.h"

namespace amirror {

// How open() treats a directory that is not (yet) amirror's. The defaults suit a
// node's data directory; a storage pool is opened stricter (node/storage_pools.h).
struct DataDirOptions {
  // Make the directory when it does not exist. Off for a pool: a missing pool
  // directory is often an unmounted file system, and making it would put the pool's
  // volumes on the wrong one.
  bool create_missing = true;
  // Set up an empty directory as a new one. Off when volumes are known to live there:
  // an empty directory is then a wrong (or freshly formatted) mount, not a new one.
  bool initialize_empty = true;
};

class DataDir {
 public:
  // Opens (creating if absent or empty, as `options` allow) and locks the directory.
  static Result<std::unique_ptr<DataDir>> open(FileSystem& fs, const std::string& path,
                                               const DataDirOptions& options = {});
  // Where volume `name` lives in the directory at `path` (open or not).
  static std::string volume_dir_at(const std::string& path, const std::string& name);

  const std::string& path() const { return path_; }
  FileSystem& fs() { return fs_; }
  std::string volume_dir(const std::string& name) const;

  Result<std::vector<std::string>> list_volumes();
  // begin_volume + complete_volume: an empty volume, visible once complete.
  Result<std::unique_ptr<Volume>> create_volume(const std::string& name,
                                                const VolumeOptions& options);
  // A new volume under <name>.creating, to be filled and then completed or abandoned.
  Result<std::unique_ptr<Volume>> begin_volume(const std::string& name, const VolumeOptions& options);
  // Flushes and closes `building`, renames it to its real name (durably) and opens it
  // there. REQUIRES: `building` came from begin_volume(name).
  Result<std::unique_ptr<Volume>> complete_volume(const std::string& name, std::unique_ptr<Volume> building);
  // Removes the unfinished volume `name` (after a failed or cancelled import).
  // REQUIRES: its Volume object from begin_volume() was destroyed.
  Status abandon_volume(const std::string& name);
  Result<std::unique_ptr<Volume>> open_volume(const std::string& name);

  // Moves `dir` (a volume or replica directory under this data directory) into the
  // trash with one rename and syncs both parents: from here on, even after a power
  // loss, it is gone from its name. Returns where it went, for remove_from_trash().
  Result<std::string> move_to_trash(const std::string& dir);
  // Removes a directory of files that move_to_trash() returned, durably.
  Status remove_from_trash(const std::string& trashed_dir);

 private:
  DataDir(FileSystem& fs, std::string path, std::unique_ptr<DirectoryLock> lock);
  // Removes every <name>.creating directory: volumes whose creation never completed.
  Status remove_unfinished_volumes();
  Status remove_volume_files(const std::string& dir);
  // Removes whatever a crash left in the trash (see the top of this file).
  Status empty_trash();
  std::string trash_dir() const;

  FileSystem& fs_;
  std::string path_;
  std::unique_ptr<DirectoryLock> lock_;
  std::mutex create_mutex_;
  std::set<std::string> building_;  // names between begin_volume and complete/abandon. GUARDED_BY(create_mutex_)
  uint64_t next_trash_id_ = 0;      // GUARDED_BY(create_mutex_)
};

}  // namespace amirror
