// SPDX-License-Identifier: Apache-2.0
#include "store/uncached_writer.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace amirror {

UncachedWriter::UncachedWriter(File& file, size_t capacity_bytes)
    : file_(file),
      capacity_((std::max<size_t>(capacity_bytes, 1) + kUncachedWriteAlignment - 1) / kUncachedWriteAlignment *
                kUncachedWriteAlignment),
      buffer_(static_cast<uint8_t*>(std::aligned_alloc(kUncachedWriteAlignment, capacity_))) {
  if (buffer_ == nullptr) throw std::bad_alloc();
}

Status UncachedWriter::write(uint64_t offset_bytes, std::span<const uint8_t> data) {
  if (used_ != 0 && start_ + used_ != offset_bytes) AMIRROR_RETURN_IF_ERROR(flush());
  while (!data.empty()) {
    if (used_ == 0) start_ = offset_bytes;
    const size_t step = std::min(capacity_ - used_, data.size());
    std::memcpy(buffer_.get() + used_, data.data(), step);
    used_ += step;
    offset_bytes += step;
    data = data.subspan(step);
    if (used_ == capacity_) AMIRROR_RETURN_IF_ERROR(flush());
  }
  return Status();
}

Status UncachedWriter::flush() {
  if (used_ == 0) return Status();
  Status status = file_.write_uncached_at(start_, std::span<const uint8_t>(buffer_.get(), used_));
  if (status.ok()) used_ = 0;  // on failure the bytes stay gathered for the next flush
  return status;
}

}  // namespace amirror
