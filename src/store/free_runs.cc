// SPDX-License-Identifier: Apache-2.0
#include "store/free_runs.h"

#include "base/assert.h"

namespace amirror {

void FreeRuns::insert(uint64_t offset_bytes, uint64_t sectors) {
  by_offset_.emplace(offset_bytes, sectors);
  by_size_.emplace(sectors, offset_bytes);
  free_sectors_ += sectors;
}

void FreeRuns::erase(std::map<uint64_t, uint64_t>::iterator run) {
  by_size_.erase({run->second, run->first});
  free_sectors_ -= run->second;
  by_offset_.erase(run);
}

void FreeRuns::free(uint64_t offset_bytes, uint64_t sectors) {
  AMIRROR_ASSERT(sectors > 0 && offset_bytes % sector_bytes_ == 0);
  uint64_t begin = offset_bytes;
  uint64_t end = offset_bytes + sectors * sector_bytes_;
  auto next = by_offset_.lower_bound(begin);
  AMIRROR_ASSERT(next == by_offset_.end() || next->first >= end);  // not free already
  if (next != by_offset_.end() && next->first == end) {
    end += next->second * sector_bytes_;
    next = std::next(next);
    erase(std::prev(next));
  }
  if (next != by_offset_.begin()) {
    auto previous = std::prev(next);
    const uint64_t previous_end = previous->first + previous->second * sector_bytes_;
    AMIRROR_ASSERT(previous_end <= begin);  // not free already
    if (previous_end == begin) {
      begin = previous->first;
      erase(previous);
    }
  }
  insert(begin, (end - begin) / sector_bytes_);
}

std::optional<uint64_t> FreeRuns::take(uint64_t sectors) {
  auto fit = by_size_.lower_bound({sectors, 0});
  if (fit == by_size_.end()) return std::nullopt;
  const auto [size, offset] = *fit;
  erase(by_offset_.find(offset));
  if (size > sectors) insert(offset + sectors * sector_bytes_, size - sectors);
  return offset;
}

}  // namespace amirror
