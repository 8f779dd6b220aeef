// SPDX-License-Identifier: Apache-2.0
#include "store/uncached_writer.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <utility>

namespace amirror {

UncachedWriter::UncachedWriter(File& file, size_t capacity_bytes)
    : file_(file),
      capacity_((std::max<size_t>(capacity_bytes, 1) + kUncachedWriteAlignment - 1) / kUncachedWriteAlignment *
                kUncachedWriteAlignment) {
  for (Buffer* buffer : {&gathering_, &other_}) {
    buffer->bytes.reset(static_cast<uint8_t*>(std::aligned_alloc(kUncachedWriteAlignment, capacity_)));
    if (buffer->bytes == nullptr) throw std::bad_alloc();
  }
}

UncachedWriter::~UncachedWriter() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status UncachedWriter::write(uint64_t offset_bytes, std::span<const uint8_t> data) {
  if (gathering_.used != 0 && gathering_.start + gathering_.used != offset_bytes) AMIRROR_RETURN_IF_ERROR(submit());
  while (!data.empty()) {
    if (gathering_.used == 0) gathering_.start = offset_bytes;
    const size_t step = std::min(capacity_ - gathering_.used, data.size());
    std::memcpy(gathering_.bytes.get() + gathering_.used, data.data(), step);
    gathering_.used += step;
    offset_bytes += step;
    data = data.subspan(step);
    if (gathering_.used == capacity_) AMIRROR_RETURN_IF_ERROR(submit());
  }
  return Status();
}

Status UncachedWriter::flush() {
  if (gathering_.used != 0) AMIRROR_RETURN_IF_ERROR(submit());
  std::unique_lock lock(mutex_);
  return settle(lock);
}

void UncachedWriter::discard() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return !in_flight_; });
  other_.used = 0;
  failed_ = Status();
  gathering_.used = 0;
}

bool UncachedWriter::empty() const {
  std::lock_guard lock(mutex_);
  return gathering_.used == 0 && other_.used == 0;
}

Status UncachedWriter::settle(std::unique_lock<std::mutex>& lock) {
  changed_.wait(lock, [&] { return !in_flight_; });
  if (failed_.ok()) return Status();
  // Retried on the caller's thread: it reports the outcome, and order is kept (nothing
  // newer was handed over while this write stood failed).
  Status status = file_.write_uncached_at(other_.start, std::span<const uint8_t>(other_.bytes.get(), other_.used));
  if (status.ok()) other_.used = 0;
  failed_ = status;
  return status;
}

Status UncachedWriter::submit() {
  std::unique_lock lock(mutex_);
  AMIRROR_RETURN_IF_ERROR(settle(lock));
  std::swap(gathering_, other_);
  in_flight_ = true;
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  lock.unlock();
  changed_.notify_all();
  return Status();
}

void UncachedWriter::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return stopping_ || in_flight_; });
    if (!in_flight_) return;  // stopping, nothing to write
    const Buffer& job = other_;
    lock.unlock();
    Status status = file_.write_uncached_at(job.start, std::span<const uint8_t>(job.bytes.get(), job.used));
    lock.lock();
    if (status.ok()) other_.used = 0;
    failed_ = status;
    in_flight_ = false;
    changed_.notify_all();
    if (stopping_) return;
  }
}

}  // namespace amirror
