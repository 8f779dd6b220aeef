// SPDX-License-Identifier: Apache-2.0
// The file system interface. Every file operation of the store goes through it, so
// tests can substitute a fault-injecting implementation (src/testing/fault_file_system.h)
// that simulates power loss (dropping what was not synced), ENOSPC and EIO — without
// mocking the store itself.
//
// Thread-safety: File methods may be called concurrently from many threads (they map
// to pread/pwrite). FileSystem methods are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace amirror {

// What write_uncached_at needs to bypass the page cache: offset, length and buffer
// aligned to this (the largest logical block size of common devices).
inline constexpr size_t kUncachedWriteAlignment = 4096;

struct Extent {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
};

class File {
 public:
  virtual ~File() = default;

  // Reads exactly out.size() bytes at `offset_bytes`; bytes past the end of the file
  // read as zero.
  virtual Status read_at(uint64_t offset_bytes, std::span<uint8_t> out) = 0;
  // Writes all of `data` at `offset_bytes`, extending the file if needed.
  virtual Status write_at(uint64_t offset_bytes, std::span<const uint8_t> data) = 0;
  // Writes like write_at, for a stream that will not be read back soon (a replica's
  // first full copy): may bypass the page cache (O_DIRECT) for the part that starts at
  // an offset aligned to kUncachedWriteAlignment, in whole aligned blocks, from a
  // buffer so aligned; the rest goes through the cache. Durable only after sync().
  // Default: write_at.
  virtual Status write_uncached_at(uint64_t offset_bytes, std::span<const uint8_t> data) {
    return write_at(offset_bytes, data);
  }
  // Makes every completed write durable (fdatasync).
  virtual Status sync() = 0;
  // A hint, no durability: starts writing that range back to the device now, so a later
  // sync() finds little left to do (a stream of writes overlaps with its writeback
  // instead of stalling on it at each sync). Default: nothing.
  virtual void start_writeback(uint64_t /*offset_bytes*/, uint64_t /*length_bytes*/) {}
  // A hint: that range will be read soon, so reading it from the device may start now
  // (a stream of reads then finds its pages cached instead of waiting for each).
  // Default: nothing.
  virtual void will_read(uint64_t /*offset_bytes*/, uint64_t /*length_bytes*/) {}
  virtual Status truncate(uint64_t size_bytes) = 0;
  // Deallocates a range so it reads as zero; the file size is unchanged.
  virtual Status punch_hole(uint64_t offset_bytes, uint64_t length_bytes) = 0;
  virtual Result<uint64_t> size_bytes() = 0;
  // The allocated (data) ranges within [offset, offset + length), in order. A file
  // system without hole reporting returns the whole range as one extent.
  virtual Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                        uint64_t length_bytes) = 0;
};

// Gathers File::will_read hints: ranges that continue each other in one file become one
// call. The last run is given by flush() or on destruction.
class ReadHints {
 public:
  ReadHints() = default;
  ReadHints(const ReadHints&) = delete;
  ReadHints& operator=(const ReadHints&) = delete;
  ~ReadHints() { flush(); }

  void add(File& file, uint64_t offset_bytes, uint64_t length_bytes) {
    if (&file == file_ && offset_bytes == start_bytes_ + length_bytes_) {
      length_bytes_ += length_bytes;
      return;
    }
    flush();
    file_ = &file;
    start_bytes_ = offset_bytes;
    length_bytes_ = length_bytes;
  }
  void flush() {
    if (file_ != nullptr && length_bytes_ != 0) file_->will_read(start_bytes_, length_bytes_);
    file_ = nullptr;
  }

 private:
  File* file_ = nullptr;
  uint64_t start_bytes_ = 0;
  uint64_t length_bytes_ = 0;
};

enum class OpenMode : uint8_t {
  kOpenExisting,  // fail with kNotFound if absent
  kCreateNew,     // fail with kAlreadyExists if present
  kOpenOrCreate,
  // An existing regular file or block device that a volume adopts as its base (`volume
  // adopt`): kNotFound if absent, kInvalidArgument if it is anything else, kBusy if it
  // is in use — another open File of this mode holds it (flock LOCK_EX, held until the
  // File is destroyed), or a block device is mounted or claimed (O_EXCL). Its size is
  // the file's size or the device's (BLKGETSIZE64).
  kAdopt,
};

// Held while a data directory is in use; released on destruction (or process death).
class DirectoryLock {
 public:
  virtual ~DirectoryLock() = default;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  virtual Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) = 0;
  // Atomically replaces `to` with `from` (rename(2)). Durable after sync_dir.
  virtual Status rename(const std::string& from, const std::string& to) = 0;
  virtual Status remove(const std::string& path) = 0;
  // Removes an empty directory (rmdir(2)). Durable after sync_dir of its parent.
  virtual Status remove_dir(const std::string& path) = 0;
  // Makes creations, renames and removals in directory `path` durable.
  virtual Status sync_dir(const std::string& path) = 0;
  // Creates the directory (not its parents); ok if it already exists.
  virtual Status make_dir(const std::string& path) = 0;
  virtual Result<bool> exists(const std::string& path) = 0;
  // Names in the directory, without "." and "..", sorted.
  virtual Result<std::vector<std::string>> list_dir(const std::string& path) = 0;
  // Takes an exclusive advisory lock on `path` (created if needed); kBusy if another
  // process holds it.
  virtual Result<std::unique_ptr<DirectoryLock>> lock_file(const std::string& path) = 0;
};

// The real POSIX file system. Lives for the whole process.
FileSystem& posix_file_system();

// The bytes a file holds on disk: its allocated extents (holes not counted).
Result<uint64_t> allocated_file_bytes(File& file);

// Reads a whole small file (metadata) into a string.
Result<std::string> read_small_file(FileSystem& fs, const std::string& path,
                                    uint64_t max_size_bytes);
// Durably replaces `path` with `contents`: write path.tmp, sync, rename, sync dir.
// After a crash the file holds either the old or the new contents, never a mix.
Status write_file_atomically(FileSystem& fs, const std::string& dir, const std::string& name,
                             const std::string& contents);

}  // namespace amirror
