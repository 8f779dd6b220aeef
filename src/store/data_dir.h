// SPDX-License-Identifier: Apache-2.0
// A node's data directory: the marker that says it is amirror's, the lock that keeps
// a second process out, and one subdirectory per volume.
//
//   <data_dir>/AMIRROR              marker: "amirror data directory v1\n"
//   <data_dir>/LOCK                 flock'ed while a process uses the directory
//   <data_dir>/volumes/<name>/      one volume (see store/volume.h)
//
// A non-empty directory without the marker, or with another marker, is refused: we
// never write into a directory that may hold someone else's data.
// Thread-safety: open_volume/create_volume are thread-safe; callers own the returned
// volumes.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "store/file_system.h"
#include "store/volume.h"

namespace amirror {

class DataDir {
 public:
  // Opens (creating if absent or empty) and locks the data directory.
  static Result<std::unique_ptr<DataDir>> open(FileSystem& fs, const std::string& path);

  const std::string& path() const { return path_; }
  FileSystem& fs() { return fs_; }
  std::string volume_dir(const std::string& name) const;

  Result<std::vector<std::string>> list_volumes();
  Result<std::unique_ptr<Volume>> create_volume(const std::string& name,
                                                const VolumeOptions& options);
  Result<std::unique_ptr<Volume>> open_volume(const std::string& name);

 private:
  DataDir(FileSystem& fs, std::string path, std::unique_ptr<DirectoryLock> lock);

  FileSystem& fs_;
  std::string path_;
  std::unique_ptr<DirectoryLock> lock_;
  std::mutex create_mutex_;
};

}  // namespace amirror
