// SPDX-License-Identifier: Apache-2.0
#include "repl/throttle.h"

#include <algorithm>

#include "base/assert.h"

namespace amirror::repl {
namespace {

// Nanoseconds that `bytes` take at `rate` bytes per second, rounded up. bytes <= 2^32
// and 10^9 < 2^30, so the product fits 64 bits.
std::chrono::nanoseconds cost_of(uint64_t bytes, uint64_t rate) {
  AMIRROR_ASSERT(bytes <= (1ull << 32) && rate > 0);
  return std::chrono::nanoseconds((bytes * 1'000'000'000ull + rate - 1) / rate);
}

}  // namespace

void TokenBucket::set_rate(uint64_t rate_bytes_per_second, TimePoint now) {
  AMIRROR_ASSERT(rate_bytes_per_second == 0 || rate_bytes_per_second >= kMinRateBytesPerSecond);
  MutexLock lock(mutex_);
  rate_ = rate_bytes_per_second;
  // Debt run up at the old rate would otherwise hold the new one back (a limit raised
  // from 1MB/s to 1GB/s must not wait out seconds of old debt).
  ready_at_ = std::min(ready_at_, now);
}

uint64_t TokenBucket::rate() const {
  MutexLock lock(mutex_);
  return rate_;
}

TokenBucket::TimePoint TokenBucket::reserve(uint64_t bytes, TimePoint now) {
  MutexLock lock(mutex_);
  if (rate_ == 0) return now;
  const uint64_t burst_bytes = std::max<uint64_t>(kMinBurstBytes, rate_ * kBurstTime.count() / 1000);
  ready_at_ = std::max(ready_at_, now) + cost_of(bytes, rate_);
  return std::max(now, ready_at_ - cost_of(burst_bytes, rate_));
}

void SendThrottle::acquire(uint64_t bytes) {
  Clock::TimePoint now = clock_.now();
  Clock::TimePoint go_at = now;
  for (const auto& bucket : buckets_) go_at = std::max(go_at, bucket->reserve(bytes, now));
  MutexLock lock(mutex_);
  while (!cancelled_ && clock_.now() < go_at) clock_.wait_until(cancelled_changed_, lock, go_at);
}

void SendThrottle::charge(uint64_t bytes) {
  Clock::TimePoint now = clock_.now();
  for (const auto& bucket : buckets_) (void)bucket->reserve(bytes, now);
}

void SendThrottle::cancel() {
  MutexLock lock(mutex_);
  cancelled_ = true;
  cancelled_changed_.notify_all();
}

uint64_t SendThrottle::piece_bytes() const {
  constexpr uint64_t kMinPiece = 4 * 1024, kMaxPiece = 64 * 1024;
  uint64_t piece = kMaxPiece;
  for (const auto& bucket : buckets_) {
    if (uint64_t rate = bucket->rate(); rate != 0) piece = std::min(piece, std::max(kMinPiece, rate / 16));
  }
  return piece;
}

}  // namespace amirror::repl
