// SPDX-License-Identifier: Apache-2.0
// The pending file of one (volume, target): <data_dir>/mirrors/<volume>@<target>.pending
// holds TargetState::pending_chunks (node/mirror_state.h) as one bit per chunk, in
// 4 KiB pages that are rewritten only when they change. Format:
// docs/formats/mirror-state.md ("Pending file").
//
// Crash safety without a journal. A page carries its own checksum; a page that fails
// it (a write torn by power loss, or damage) reads as all ones: every chunk it covers
// is resent, which is always safe (the sender ignores chunk indices past the volume's
// end). Beyond that, a save changes bits in two steps around the JSON state that
// depends on them (save_mirror_state):
//   1. add_bits(): every bit set in the new state is set on disk (old bits kept), synced;
//   2. the JSON is replaced atomically;
//   3. drop_bits(): the file holds exactly the new bits, synced.
// At any crash the file holds at least the bits the durable JSON needs, so a torn or
// stale page errs only on the side of resending.
// Thread-safety: none; the caller serialises saves of one volume.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/chunk_bitmap.h"
#include "base/status.h"
#include "store/file_system.h"

namespace amirror::node {

constexpr uint64_t kPendingPageBytes = 4096;
constexpr uint32_t kPendingFileFormat = 1;

// The file name of `target`'s pending file for `volume` ('@' is not allowed in names,
// so no two pairs share one).
std::string pending_file_name(const std::string& volume, const std::string& target);

// Reads a pending file. A page with a bad checksum reads as all ones (see above).
// A damaged header is an error naming the file.
Result<ChunkBitmap> read_pending_file(FileSystem& fs, const std::string& path);

// The pages of a pending file as last written (null = zero), shared with the bitmap
// that was saved: a save compares pointers to find what changed, reading nothing.
using DurablePages = std::vector<ChunkBitmap::PagePtr>;

// One save of one pending file: add_bits(), then (the caller replaces the JSON) drop_bits().
class PendingFileUpdate {
 public:
  // `durable`: what the file is known to hold, or null (unknown: the file's pages are
  // read to compare). Creates the file (atomically, with its header) if absent.
  // `bits` and `durable` must outlive the update.
  static Result<std::unique_ptr<PendingFileUpdate>> begin(FileSystem& fs, const std::string& dir,
                                                          const std::string& name, const ChunkBitmap& bits,
                                                          const DurablePages* durable);
  // Step 1: the file has every bit of `bits` (and those it had), durably.
  Status add_bits();
  // Step 3: the file holds exactly `bits`, durably. Returns what it now holds.
  Result<DurablePages> drop_bits();

 private:
  PendingFileUpdate(std::unique_ptr<File> file, const ChunkBitmap& bits, const DurablePages* durable,
                    uint64_t disk_page_count)
      : file_(std::move(file)), bits_(bits), durable_(durable), disk_page_count_(disk_page_count) {}
  // What page `page_index` holds on disk now: known (durable_, plus what step 1 added)
  // or read.
  Result<ChunkBitmap::PagePtr> current_page(size_t page_index, bool bits_added);
  Status write_page(size_t page_index, const ChunkBitmap::PagePtr& page);

  std::unique_ptr<File> file_;
  const ChunkBitmap& bits_;
  const DurablePages* durable_;
  uint64_t disk_page_count_;  // data pages the file spans
};

}  // namespace amirror::node
