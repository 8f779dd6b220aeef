// SPDX-License-Identifier: Apache-2.0
#include "nbd/export.h"

#include <algorithm>
#include <cstring>

namespace amirror::nbd {

void StaticCatalog::add(std::string name, std::shared_ptr<Export> e) {
  AMIRROR_ASSERT(e != nullptr);
  auto position = std::lower_bound(
      exports_.begin(), exports_.end(), name,
      [](const auto& entry, const std::string& key) { return entry.first < key; });
  AMIRROR_ASSERT(position == exports_.end() || position->first != name);
  exports_.insert(position, {std::move(name), std::move(e)});
}

std::vector<std::string> StaticCatalog::names() const {
  std::vector<std::string> result;
  result.reserve(exports_.size());
  for (const auto& entry : exports_) result.push_back(entry.first);
  return result;
}

std::shared_ptr<Export> StaticCatalog::find(const std::string& name) const {
  if (name.empty()) return exports_.size() == 1 ? exports_[0].second : nullptr;
  auto position = std::lower_bound(
      exports_.begin(), exports_.end(), name,
      [](const auto& entry, const std::string& key) { return entry.first < key; });
  if (position == exports_.end() || position->first != name) return nullptr;
  return position->second;
}

MemoryExport::MemoryExport(uint64_t size_bytes)
    : data_(size_bytes, 0), allocated_((size_bytes + kBlockBytes - 1) / kBlockBytes, false) {}

void MemoryExport::mark(uint64_t offset_bytes, uint64_t length_bytes, bool allocated) {
  if (length_bytes == 0) return;
  uint64_t first = offset_bytes / kBlockBytes;
  uint64_t last = (offset_bytes + length_bytes - 1) / kBlockBytes;
  for (uint64_t block = first; block <= last; ++block) {
    // Deallocating needs the whole block covered; allocating needs any byte.
    uint64_t start = block * kBlockBytes;
    bool whole = offset_bytes <= start && offset_bytes + length_bytes >= start + kBlockBytes;
    if (allocated || whole) allocated_[block] = allocated;
  }
}

Status MemoryExport::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  std::lock_guard lock(mutex_);
  if (offset_bytes > data_.size() || out.size() > data_.size() - offset_bytes) {
    return out_of_range("memory export: read beyond end");
  }
  std::memcpy(out.data(), data_.data() + offset_bytes, out.size());
  return Status();
}

Status MemoryExport::write(uint64_t offset_bytes, std::span<const uint8_t> data, bool) {
  std::lock_guard lock(mutex_);
  if (offset_bytes > data_.size() || data.size() > data_.size() - offset_bytes) {
    return out_of_range("memory export: write beyond end");
  }
  std::memcpy(data_.data() + offset_bytes, data.data(), data.size());
  mark(offset_bytes, data.size(), true);
  return Status();
}

Status MemoryExport::write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool) {
  std::lock_guard lock(mutex_);
  if (offset_bytes > data_.size() || length_bytes > data_.size() - offset_bytes) {
    return out_of_range("memory export: zero beyond end");
  }
  std::memset(data_.data() + offset_bytes, 0, length_bytes);
  mark(offset_bytes, length_bytes, false);
  return Status();
}

Status MemoryExport::trim(uint64_t offset_bytes, uint64_t length_bytes) {
  return write_zeroes(offset_bytes, length_bytes, false);
}

Result<std::vector<Extent>> MemoryExport::allocated_extents(uint64_t offset_bytes,
                                                             uint64_t length_bytes) {
  std::lock_guard lock(mutex_);
  std::vector<Extent> extents;
  uint64_t end = std::min<uint64_t>(offset_bytes + length_bytes, data_.size());
  uint64_t position = offset_bytes;
  while (position < end) {
    uint64_t block = position / kBlockBytes;
    uint64_t block_end = std::min(end, (block + 1) * kBlockBytes);
    if (allocated_[block]) {
      if (!extents.empty() &&
          extents.back().offset_bytes + extents.back().length_bytes == position) {
        extents.back().length_bytes += block_end - position;
      } else {
        extents.push_back(Extent{position, block_end - position});
      }
    }
    position = block_end;
  }
  return extents;
}

}  // namespace amirror::nbd
