// SPDX-License-Identifier: Apache-2.0
#include "base/chunk_bitmap.h"

#include <algorithm>

#include "base/assert.h"

namespace amirror {

bool ChunkBitmap::test(uint64_t chunk_index) const {
  size_t page_index = chunk_index / kBitsPerPage;
  if (page_index >= pages_.size() || pages_[page_index] == nullptr) return false;
  uint64_t bit = chunk_index % kBitsPerPage;
  return ((*pages_[page_index])[bit / 64] >> (bit % 64)) & 1;
}

ChunkBitmap::Page& ChunkBitmap::writable_page(size_t page_index) {
  if (page_index >= pages_.size()) pages_.resize(page_index + 1);
  PagePtr& page = pages_[page_index];
  // Shared with a snapshot or with what a save knows is on disk: copy first, so they
  // keep seeing the bits as they were.
  if (page == nullptr) {
    page = std::make_shared<Page>(Page{});
  } else if (page.use_count() > 1) {
    page = std::make_shared<Page>(*page);
  }
  return const_cast<Page&>(*page);  // now owned by this bitmap alone
}

void ChunkBitmap::set(uint64_t chunk_index) {
  if (test(chunk_index)) return;  // no copy of a shared page for nothing
  uint64_t bit = chunk_index % kBitsPerPage;
  writable_page(chunk_index / kBitsPerPage)[bit / 64] |= uint64_t{1} << (bit % 64);
  count_ += 1;
}

void ChunkBitmap::set_range(uint64_t first_chunk_index, uint64_t chunk_count) {
  AMIRROR_ASSERT(first_chunk_index + chunk_count >= first_chunk_index);
  for (uint64_t chunk_index = first_chunk_index; chunk_index < first_chunk_index + chunk_count; ++chunk_index) {
    set(chunk_index);
  }
}

void ChunkBitmap::clear() {
  pages_.clear();
  count_ = 0;
}

std::set<uint64_t> ChunkBitmap::to_set() const {
  std::set<uint64_t> result;
  for_each_set([&](uint64_t chunk_index) { result.insert(result.end(), chunk_index); });
  return result;
}

uint64_t ChunkBitmap::count_page(const PagePtr& page) {
  if (page == nullptr) return 0;
  uint64_t count = 0;
  for (uint64_t word : *page) count += static_cast<uint64_t>(std::popcount(word));
  return count;
}

void ChunkBitmap::set_page(size_t page_index, PagePtr page) {
  if (page_index >= pages_.size()) pages_.resize(page_index + 1);
  count_ -= count_page(pages_[page_index]);
  count_ += count_page(page);
  pages_[page_index] = std::move(page);
}

bool operator==(const ChunkBitmap& left, const ChunkBitmap& right) {
  if (left.count_ != right.count_) return false;
  size_t pages = std::max(left.pages_.size(), right.pages_.size());
  static const ChunkBitmap::Page kZero{};
  for (size_t page_index = 0; page_index < pages; ++page_index) {
    const ChunkBitmap::PagePtr* a = page_index < left.pages_.size() ? &left.pages_[page_index] : nullptr;
    const ChunkBitmap::PagePtr* b = page_index < right.pages_.size() ? &right.pages_[page_index] : nullptr;
    const ChunkBitmap::Page& a_bits = a != nullptr && *a != nullptr ? **a : kZero;
    const ChunkBitmap::Page& b_bits = b != nullptr && *b != nullptr ? **b : kZero;
    if (&a_bits != &b_bits && a_bits != b_bits) return false;
  }
  return true;
}

}  // namespace amirror
