// SPDX-License-Identifier: Apache-2.0
// The POSIX file system, every operation passed through: a base for test file systems
// that change one or two operations (GatedFileSystem) and inherit the rest.
// Thread-safety: as FileSystem.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "store/file_system.h"

namespace amirror::testing {

class ForwardingFileSystem : public FileSystem {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override { return real_.open(path, mode); }
  Status rename(const std::string& from, const std::string& to) override { return real_.rename(from, to); }
  Status remove(const std::string& path) override { return real_.remove(path); }
  Status remove_dir(const std::string& path) override { return real_.remove_dir(path); }
  Status sync_dir(const std::string& path) override { return real_.sync_dir(path); }
  Status make_dir(const std::string& path) override { return real_.make_dir(path); }
  Result<bool> exists(const std::string& path) override { return real_.exists(path); }
  Result<std::vector<std::string>> list_dir(const std::string& path) override { return real_.list_dir(path); }
  Result<std::unique_ptr<DirectoryLock>> lock_file(const std::string& path) override { return real_.lock_file(path); }

 protected:
  FileSystem& real_ = posix_file_system();
};

}  // namespace amirror::testing
