// SPDX-License-Identifier: Apache-2.0
// Bandwidth limits on the peer send path (`[[peers]] bandwidth_limit`, `mirror start
// --bandwidth`): token buckets that every connection to a peer draws from, and the
// per-connection SendThrottle that waits for them.
//
//  - TokenBucket: a rate in bytes per second with a burst of kBurstTime worth of
//    bytes (at least kMinBurstBytes). Pure arithmetic over time points handed in, so
//    its unit test is exact: reserve(bytes, now) answers when those bytes may go. It
//    is the "virtual scheduling" form of a token bucket (GCRA): `ready_at_` is when
//    the bucket would be full again if nothing more were taken; a reservation moves it
//    on by bytes / rate, and may go once ready_at_ - burst has passed. A reservation
//    is never refused, only delayed, so callers of any size share the rate fairly in
//    arrival order and a large one (a 4 MiB chunk) just waits longer.
//    Invariant: over any interval of length T, the bytes whose reservations fall due
//    in it are at most rate * T + burst.
//  - SendThrottle: what one PeerSocket holds: the buckets it draws from (the peer's
//    and the mirror's, so a mirror's cap applies on top of the link's), and the clock
//    it waits on. acquire() blocks until every bucket lets the bytes go; cancel()
//    (PeerSocket::shutdown) wakes it at once.
// Rates change at runtime (set_rate), for connections already running: the new rate
// applies from the next reservation, and debt run up at the old rate is forgiven.
// Thread-safety: all methods are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/env.h"
#include "base/mutex.h"

namespace amirror::repl {

class TokenBucket {
 public:
  using TimePoint = Clock::TimePoint;
  static constexpr auto kBurstTime = std::chrono::milliseconds(50);
  static constexpr uint64_t kMinBurstBytes = 256 * 1024;
  // The lowest rate accepted: below it one 4 MiB chunk takes minutes, and peers time out.
  static constexpr uint64_t kMinRateBytesPerSecond = 16'000;

  // 0 = unlimited.
  explicit TokenBucket(uint64_t rate_bytes_per_second = 0) : rate_(rate_bytes_per_second) {}

  // 0 = unlimited. REQUIRES: 0 or at least kMinRateBytesPerSecond.
  void set_rate(uint64_t rate_bytes_per_second, TimePoint now) EXCLUDES(mutex_);
  uint64_t rate() const EXCLUDES(mutex_);
  // Takes `bytes` out of the bucket; returns when they may be sent (`now` if at once).
  TimePoint reserve(uint64_t bytes, TimePoint now) EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  uint64_t rate_ GUARDED_BY(mutex_);
  TimePoint ready_at_ GUARDED_BY(mutex_){};
};

class SendThrottle {
 public:
  SendThrottle(Clock& clock, std::vector<std::shared_ptr<TokenBucket>> buckets)
      : clock_(clock), buckets_(std::move(buckets)) {}

  // Blocks until `bytes` may go through every bucket, or until cancel().
  void acquire(uint64_t bytes) EXCLUDES(mutex_);
  // Counts `bytes` that go now regardless (small control frames must not queue
  // behind data): later data waits for them instead.
  void charge(uint64_t bytes);
  // Wakes acquire() now and makes later ones return at once.
  void cancel() EXCLUDES(mutex_);
  // The largest piece to acquire at a time: the gap between two pieces on the wire
  // stays short (about 1/16 s at the lowest rate of the buckets), so the receiver's
  // peer_timeout never mistakes a throttled sender for a dead one.
  uint64_t piece_bytes() const;

 private:
  Clock& clock_;
  const std::vector<std::shared_ptr<TokenBucket>> buckets_;
  Mutex mutex_;
  CondVar cancelled_changed_;
  bool cancelled_ GUARDED_BY(mutex_) = false;
};

}  // namespace amirror::repl
