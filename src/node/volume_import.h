// SPDX-License-Identifier: Apache-2.0
// The copy behind `volume import`: a file, block device or FIFO read into a new volume
// while the node's lock is NOT held (the node reserves the name first and publishes
// the volume only when the copy succeeded; see Node::import_volume).
//
// Sources: a regular file or block device is copied up to the size it had when
// opened. A stream (FIFO, pipe, character device) has no size: the operator gives it
// (`--size`), and the stream must deliver exactly that many bytes — fewer or more is
// an error, so a wrong --size never silently truncates an image.
// All-zero 4 KiB blocks are not written, so the volume stays sparse.
// Cancellation: every read first waits in poll() for at most kImportPollMs and checks
// `cancel`, so a stopping node aborts an import promptly even while a FIFO's writer is
// silent.
// Thread-safety: one thread per ImportSource; `done_bytes` may be read concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "base/status.h"
#include "store/volume.h"

namespace amirror::node {

constexpr int kImportPollMs = 100;
constexpr size_t kImportBufferBytes = 1 << 20;

class ImportSource {
 public:
  // Opens `path` without blocking (a FIFO with no writer yet is fine: the copy waits).
  // `declared_size_bytes` (0 = none) is required for a stream; for a file it may make
  // the volume larger than the file (the rest reads as zero), never smaller.
  static Result<ImportSource> open(const std::string& path, uint64_t declared_size_bytes);
  ImportSource(ImportSource&& other) noexcept;
  ImportSource& operator=(ImportSource&&) = delete;
  ~ImportSource();

  // A multiple of 512 (the source's length rounded up, or the declared size).
  uint64_t volume_size_bytes() const { return volume_size_bytes_; }
  uint64_t data_bytes() const { return data_bytes_; }
  // Copies the source into `volume` (size volume_size_bytes()), counting progress in
  // `done_bytes`. kCancelled once `cancel` is set. Does not flush the volume.
  Status copy_into(Volume& volume, std::atomic<uint64_t>& done_bytes,
                   const std::atomic<bool>& cancel);

 private:
  ImportSource(int fd, std::string path, uint64_t data_bytes, uint64_t volume_size_bytes,
               bool stream);
  // Reads up to `length` bytes at `offset` (streams: the next bytes); 0 = end of source.
  Result<size_t> read_some(uint8_t* out, size_t length, uint64_t offset,
                           const std::atomic<bool>& cancel);
  Status fill(uint8_t* out, size_t length, uint64_t offset, const std::atomic<bool>& cancel);

  int fd_ = -1;
  std::string path_;
  uint64_t data_bytes_ = 0;  // bytes to read from the source
  uint64_t volume_size_bytes_ = 0;
  bool stream_ = false;
};

}  // namespace amirror::node
