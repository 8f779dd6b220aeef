// SPDX-License-Identifier: Apache-2.0
// The free space of a packed layer's data file (layer.h, "Packed sectors"): runs of
// whole sectors. A freed run joins the free runs it touches, so space freed piece by
// piece serves a larger request later; a request takes the start of the smallest run
// that holds it (lowest offset among equal sizes), keeping large runs for large
// requests and filling the file from its start.
// Invariant: no two runs overlap or touch (touching runs are one run).
// Thread-safety: none; Layer guards it with its map lock.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace amirror {

class FreeRuns {
 public:
  explicit FreeRuns(uint64_t sector_bytes) : sector_bytes_(sector_bytes) {}

  // Frees `sectors` sectors at offset_bytes. REQUIRES: sectors > 0, offset on the
  // sector grid, and none of them free already.
  void free(uint64_t offset_bytes, uint64_t sectors);
  // Takes `sectors` sectors from the best-fitting run; nullopt when no run holds them.
  std::optional<uint64_t> take(uint64_t sectors);

  uint64_t free_sectors() const { return free_sectors_; }
  size_t run_count() const { return by_offset_.size(); }

 private:
  void insert(uint64_t offset_bytes, uint64_t sectors);
  void erase(std::map<uint64_t, uint64_t>::iterator run);

  const uint64_t sector_bytes_;
  std::map<uint64_t, uint64_t> by_offset_;           // offset -> sectors
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (sectors, offset)
  uint64_t free_sectors_ = 0;
};

}  // namespace amirror
