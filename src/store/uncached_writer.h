// SPDX-License-Identifier: Apache-2.0
// Gathers a stream of adjacent writes (a replica's first full copy, arriving chunk by
// chunk) into large aligned writes that bypass the page cache (File::write_uncached_at),
// written by a thread of its own while the next one is gathered.
// Why around the cache: such a copy is written once and not read back soon. Through
// the page cache each byte costs a copy into freshly allocated cache pages — on the
// virtual machine we measure on, pages the host had reclaimed, ~1.4 s per GiB, two
// thirds of the target's CPU in the initial sync (bench/README.md) — and the copy
// evicts what clients read. Why a thread: a write that bypasses the cache waits for
// the device; the receive loop feeding this writer goes on meanwhile.
// Invariants: writes reach the file in the order they were given, one at a time; once
// flush() returns ok, every byte given to write() is in the file (durable only after
// File::sync()). A write that failed keeps its bytes: the next flush() tries again, so
// nothing is lost that flush() did not report. Bytes never flushed are lost with the
// writer, as unsynced writes are lost in a crash.
// Thread-safety: one caller at a time (the writer's own thread is internal).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <span>
#include <thread>

#include "base/status.h"
#include "base/units.h"
#include "store/file_system.h"

namespace amirror {

class UncachedWriter {
 public:
  // Large enough that each write is an efficient device request stream, small enough
  // that a receive loop blocked on a full writer is backed up only by its socket buffer.
  static constexpr size_t kDefaultCapacityBytes = 2 * kMiB;

  explicit UncachedWriter(File& file, size_t capacity_bytes = kDefaultCapacityBytes);
  ~UncachedWriter();  // waits for a write in flight; drops what is gathered
  UncachedWriter(const UncachedWriter&) = delete;
  UncachedWriter& operator=(const UncachedWriter&) = delete;

  // Gathers `data` for `offset_bytes`. What was gathered before goes to the writer
  // thread first when this does not continue it, or when the buffer is full. Reports a
  // failure of an earlier write (whose bytes are kept for flush()).
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data);
  // Writes everything gathered and waits until it is in the file.
  Status flush();
  // Forgets what is gathered or failed, unwritten (after a write in flight ends).
  void discard();
  bool empty() const;

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  struct Buffer {
    std::unique_ptr<uint8_t, Free> bytes;  // aligned to kUncachedWriteAlignment
    uint64_t start = 0;                    // file offset of bytes[0]
    size_t used = 0;
  };
  // Hands the gathering buffer to the thread, once the other one is free: written, or
  // its failed write retried here.
  Status submit();
  // Waits until no write is in flight; then retries a failed one here.
  Status settle(std::unique_lock<std::mutex>& lock);
  void run();

  File& file_;
  const size_t capacity_;
  Buffer gathering_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  Buffer other_;             // GUARDED_BY(mutex_): in flight, failed, or empty
  bool in_flight_ = false;   // GUARDED_BY(mutex_): the thread owns other_
  Status failed_;            // GUARDED_BY(mutex_): other_'s write failed with this
  bool stopping_ = false;    // GUARDED_BY(mutex_)
  std::thread thread_;       // started on the first submit
};

}  // namespace amirror
