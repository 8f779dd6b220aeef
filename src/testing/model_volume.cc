// SPDX-License-Identifier: Apache-2.0
#include "testing/model_volume.h"

#include <algorithm>
#include <cstring>

#include "base/assert.h"

namespace amirror::testing {

ModelVolume::ModelVolume(uint64_t size_bytes, uint64_t chunk_size_bytes)
    : chunk_size_bytes_(chunk_size_bytes), image_(size_bytes, 0), durable_(size_bytes, 0) {
  frozen_[0] = image_;  // freeze point 0: the empty base
}

void ModelVolume::note_pending(uint64_t offset_bytes, std::span<const uint8_t> data) {
  pending_.push_back({offset_bytes, std::vector<uint8_t>(data.begin(), data.end())});
}

void ModelVolume::durable_point() {
  durable_ = image_;
  durable_exact_ = true;
  pending_.clear();
}

void ModelVolume::write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) {
  AMIRROR_ASSERT(offset_bytes + data.size() <= image_.size());
  std::copy(data.begin(), data.end(), image_.begin() + static_cast<ptrdiff_t>(offset_bytes));
  if (fua) {
    durable_point();
  } else {
    note_pending(offset_bytes, data);
  }
}

void ModelVolume::write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) {
  std::vector<uint8_t> zeros(length_bytes, 0);
  write(offset_bytes, zeros, fua);
}

void ModelVolume::flush() { durable_point(); }

uint64_t ModelVolume::freeze() {
  cycle_++;
  frozen_[cycle_] = image_;
  durable_point();
  return cycle_;
}

void ModelVolume::merge_oldest() {
  AMIRROR_ASSERT(cycle_ > base_cycle_);
  frozen_.erase(base_cycle_);
  base_cycle_++;
}

void ModelVolume::grow(uint64_t size_bytes) {
  AMIRROR_ASSERT(size_bytes >= image_.size());
  image_.resize(size_bytes, 0);
  durable_.resize(size_bytes, 0);
  for (auto& [cycle, image] : frozen_) image.resize(size_bytes, 0);
}

void ModelVolume::uncertain_write(uint64_t offset_bytes, std::span<const uint8_t> attempted,
                                  std::span<const uint8_t> actual) {
  AMIRROR_ASSERT(attempted.size() == actual.size());
  note_pending(offset_bytes, attempted);
  std::copy(actual.begin(), actual.end(), image_.begin() + static_cast<ptrdiff_t>(offset_bytes));
  note_pending(offset_bytes, actual);
  durable_exact_ = false;
}

void ModelVolume::unknown_write(uint64_t offset_bytes, std::span<const uint8_t> attempted) {
  note_pending(offset_bytes, attempted);
  durable_exact_ = false;
}

const std::vector<uint8_t>& ModelVolume::frozen(uint64_t cycle) const {
  auto it = frozen_.find(cycle);
  AMIRROR_ASSERT(it != frozen_.end());
  return it->second;
}

std::string ModelVolume::check_after_crash(std::span<const uint8_t> actual) const {
  AMIRROR_ASSERT(actual.size() == image_.size());
  for (uint64_t i = 0; i < actual.size(); i++) {
    if (actual[i] == durable_[i]) continue;
    bool explained = false;
    for (const PendingWrite& write : pending_) {
      if (i >= write.offset_bytes && i < write.offset_bytes + write.data.size() &&
          write.data[i - write.offset_bytes] == actual[i]) {
        explained = true;
        break;
      }
    }
    if (!explained) {
      return "byte " + std::to_string(i) + " (chunk " + std::to_string(i / chunk_size_bytes_) +
             ") is " + std::to_string(actual[i]) + ": neither its durable value " +
             std::to_string(durable_[i]) + " nor written by any of the " +
             std::to_string(pending_.size()) + " writes since the last durable point";
    }
  }
  return "";
}

void ModelVolume::adopt_after_crash(std::span<const uint8_t> actual, bool exact) {
  std::copy(actual.begin(), actual.end(), image_.begin());
  if (!exact) durable_exact_ = false;
}

std::string describe_difference(std::span<const uint8_t> expected, std::span<const uint8_t> actual,
                                uint64_t base_offset_bytes, uint64_t chunk_size_bytes) {
  if (expected.size() != actual.size()) {
    return "size differs: expected " + std::to_string(expected.size()) + ", got " +
           std::to_string(actual.size());
  }
  auto mismatch = std::mismatch(expected.begin(), expected.end(), actual.begin());
  if (mismatch.first == expected.end()) return "";
  uint64_t index = static_cast<uint64_t>(mismatch.first - expected.begin());
  uint64_t differing = 0;
  for (uint64_t i = index; i < expected.size(); i++) differing += expected[i] != actual[i];
  uint64_t offset = base_offset_bytes + index;
  return "first difference at byte " + std::to_string(offset) + " (chunk " +
         std::to_string(offset / chunk_size_bytes) + ", offset in chunk " +
         std::to_string(offset % chunk_size_bytes) + "): expected " +
         std::to_string(*mismatch.first) + ", got " + std::to_string(*mismatch.second) + "; " +
         std::to_string(differing) + " bytes differ";
}

}  // namespace amirror::testing
