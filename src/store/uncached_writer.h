// SPDX-License-Identifier: Apache-2.0
// Gathers a stream of adjacent writes (a replica's first full copy, arriving chunk by
// chunk) into large aligned writes that bypass the page cache (File::write_uncached_at).
// Why: such a copy is written once and not read back soon. Through the page cache each
// byte costs a copy into freshly allocated cache pages — on the virtual machine we
// measure on, pages the host had reclaimed, ~1.4 s per GiB, two thirds of the target's
// CPU in the initial sync (bench/README.md) — and the copy evicts what clients read.
// Writes happen on the caller's thread, inside write() and flush(): the file changes
// only during a call, as every other store write does (a writer thread was faster, but
// changed files after the call that caused it returned, which the power-loss tests
// and their "a refused call changes nothing" check cannot allow).
// Invariants: writes reach the file in the order they were given; once flush() returns
// ok, every byte given to write() is in the file (durable only after File::sync()). A
// write that failed keeps its bytes: the next flush() tries again. Bytes never flushed
// are lost with the writer, as unsynced writes are lost in a crash.
// Not thread-safe: one stream, one caller at a time.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>

#include "base/status.h"
#include "base/units.h"
#include "store/file_system.h"

namespace amirror {

class UncachedWriter {
 public:
  // Large enough that each write is an efficient device request stream. 8 MiB rather
  // than 2: with receiving and staging on separate threads (repl/chunk_stager.h) the
  // disk writes bound an initial sync, and 8 MiB took 8-15 % less time in three
  // interleaved A/B pairs (bench/README.md, "The copy overlapped on both nodes").
  static constexpr size_t kDefaultCapacityBytes = 8 * kMiB;

  explicit UncachedWriter(File& file, size_t capacity_bytes = kDefaultCapacityBytes);

  // Gathers `data` for `offset_bytes`; what was gathered before is written first when
  // this does not continue it, and the buffer is written whenever it is full.
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data);
  // Writes what is gathered.
  Status flush();
  // Forgets what is gathered, unwritten.
  void discard() { used_ = 0; }
  bool empty() const { return used_ == 0; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  File& file_;
  const size_t capacity_;
  std::unique_ptr<uint8_t, Free> buffer_;  // aligned to kUncachedWriteAlignment
  uint64_t start_ = 0;                     // file offset of buffer_[0]
  size_t used_ = 0;
};

}  // namespace amirror
