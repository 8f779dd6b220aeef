// SPDX-License-Identifier: Apache-2.0
// A set of chunk indices kept as one bit per chunk: what a lagging target lacks beyond
// the source's unmerged layers (node/mirror_state.h). However long a target is away,
// it takes at most one bit per chunk of the volume, in memory and on disk
// (node/pending_file.h writes it page by page).
//
// The bits are split in pages of kBitsPerPage, the unit the pending file writes and
// checksums (4 KiB with its checksum). Pages are shared and copy-on-write: copying a
// bitmap (a snapshot to save while the engine goes on) copies one pointer per page,
// and a save tells which pages changed since the last one by pointer, without a
// second copy of the bits. An all-zero page may be null (a never-touched range costs
// one pointer). Why not boost::dynamic_bitset or std::vector<bool>: both are one
// contiguous allocation, so every snapshot would copy all the bits and every save
// would have to compare all of them.
//
// Invariants: count() is the number of set bits; a page is never changed in place
// while another bitmap shares it (use_count() > 1 means clone first).
// Thread-safety: none; the owner serialises. Copies may be used on other threads
// (they share only immutable pages).
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <memory>
#include <set>
#include <vector>

namespace amirror {

class ChunkBitmap {
 public:
  // 511 words = 4088 bytes: with an 8-byte checksum a page is exactly 4 KiB on disk.
  static constexpr size_t kWordsPerPage = 511;
  static constexpr uint64_t kBitsPerPage = kWordsPerPage * 64;
  using Page = std::array<uint64_t, kWordsPerPage>;
  using PagePtr = std::shared_ptr<const Page>;

  ChunkBitmap() = default;
  ChunkBitmap(std::initializer_list<uint64_t> chunk_indices) {
    for (uint64_t chunk_index : chunk_indices) set(chunk_index);
  }

  bool test(uint64_t chunk_index) const;
  void set(uint64_t chunk_index);
  // Sets [first_chunk_index, first_chunk_index + chunk_count).
  void set_range(uint64_t first_chunk_index, uint64_t chunk_count);
  void clear();  // every bit
  uint64_t count() const { return count_; }
  bool empty() const { return count_ == 0; }
  // Calls visit(chunk_index) for each set bit, ascending.
  template <typename Visit>
  void for_each_set(Visit&& visit) const;
  std::set<uint64_t> to_set() const;

  // ---- pages, for the pending file ----
  size_t page_count() const { return pages_.size(); }
  const PagePtr& page(size_t page_index) const { return pages_[page_index]; }
  // Replaces page `page_index` (null = all zero), growing the bitmap if needed.
  void set_page(size_t page_index, PagePtr page);
  static uint64_t count_page(const PagePtr& page);

  // Equal bits (pages may differ in sharing and trailing zero pages).
  friend bool operator==(const ChunkBitmap& left, const ChunkBitmap& right);

 private:
  Page& writable_page(size_t page_index);

  std::vector<PagePtr> pages_;
  uint64_t count_ = 0;
};

template <typename Visit>
void ChunkBitmap::for_each_set(Visit&& visit) const {
  for (size_t page_index = 0; page_index < pages_.size(); ++page_index) {
    if (pages_[page_index] == nullptr) continue;
    const Page& page = *pages_[page_index];
    for (size_t word_index = 0; word_index < kWordsPerPage; ++word_index) {
      for (uint64_t word = page[word_index]; word != 0; word &= word - 1) {
        visit(page_index * kBitsPerPage + word_index * 64 + static_cast<uint64_t>(std::countr_zero(word)));
      }
    }
  }
}

}  // namespace amirror
