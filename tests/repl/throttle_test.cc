// SPDX-License-Identifier: Apache-2.0
// The token bucket on exact time points (no clock, no sleeping), and the SendThrottle
// on a manual clock: a waiting sender is released by advancing time, not by waiting.
#include "repl/throttle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "testing/manual_env.h"

namespace amirror::repl {
namespace {

using std::chrono::milliseconds;
using TimePoint = TokenBucket::TimePoint;

constexpr uint64_t kRate = 1'000'000;  // 1 MB/s: 1 byte per microsecond
// The burst at 1 MB/s is kMinBurstBytes (50 ms would be only 50 kB).
constexpr uint64_t kBurst = TokenBucket::kMinBurstBytes;

TEST(TokenBucket, UnlimitedNeverWaits) {
  TokenBucket bucket;
  TimePoint now{};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(bucket.reserve(4 << 20, now), now);
}

TEST(TokenBucket, BurstGoesAtOnceThenTheRateHolds) {
  TokenBucket bucket(kRate);
  const TimePoint start = TimePoint{} + std::chrono::hours(1);
  EXPECT_EQ(bucket.reserve(kBurst, start), start);  // a full bucket
  // Empty now: each further 1000 bytes waits 1 ms more, exactly.
  for (int i = 1; i <= 10; ++i) EXPECT_EQ(bucket.reserve(1000, start), start + milliseconds(i));
}

TEST(TokenBucket, RefillsWithTimeUpToTheBurstOnly) {
  TokenBucket bucket(kRate);
  const TimePoint start = TimePoint{} + std::chrono::hours(1);
  EXPECT_EQ(bucket.reserve(kBurst, start), start);
  // 100 ms later 100 kB are back.
  EXPECT_EQ(bucket.reserve(100'000, start + milliseconds(100)), start + milliseconds(100));
  EXPECT_EQ(bucket.reserve(1000, start + milliseconds(100)), start + milliseconds(101));
  // After an hour idle the bucket holds one burst, not an hour's worth.
  const TimePoint later = start + std::chrono::hours(1);
  EXPECT_EQ(bucket.reserve(kBurst, later), later);
  EXPECT_EQ(bucket.reserve(1000, later), later + milliseconds(1));
}

TEST(TokenBucket, ManyCallersShareTheRate) {
  // 64 MiB reserved in 64 KiB pieces by "different connections" at the same instant:
  // the last piece may go exactly when the rate allows all of it, minus the burst.
  TokenBucket bucket(20'000'000);
  const TimePoint start = TimePoint{} + std::chrono::hours(1);
  const uint64_t burst = 20'000'000 / 20;  // 50 ms at 20 MB/s, above kMinBurstBytes
  TimePoint last = start;
  uint64_t total = 0;
  for (int i = 0; i < 1024; ++i) {
    last = bucket.reserve(65536, start);
    total += 65536;
  }
  auto expected = std::chrono::nanoseconds((total - burst) * 1'000'000'000ull / 20'000'000);
  EXPECT_EQ(last - start, expected);
}

TEST(TokenBucket, LargeReservationsWaitLongerButAreNeverRefused) {
  TokenBucket bucket(kRate);
  const TimePoint start = TimePoint{} + std::chrono::hours(1);
  // 4 MiB at 1 MB/s: goes once 4 MiB - burst has been paid for.
  EXPECT_EQ(bucket.reserve(4 * 1024 * 1024, start),
            start + std::chrono::microseconds(4 * 1024 * 1024 - kBurst));
}

TEST(TokenBucket, ANewRateAppliesAtOnceAndForgivesOldDebt) {
  TokenBucket bucket(TokenBucket::kMinRateBytesPerSecond);
  const TimePoint start = TimePoint{} + std::chrono::hours(1);
  (void)bucket.reserve(kBurst, start);
  // 16 kB/s: 1.6 MB of debt would take 100 s.
  EXPECT_EQ(bucket.reserve(1'600'000, start), start + std::chrono::seconds(100));
  bucket.set_rate(kRate, start);
  EXPECT_EQ(bucket.rate(), kRate);
  // The old debt is gone; the new rate starts from a full bucket... at most.
  EXPECT_EQ(bucket.reserve(kBurst, start), start);
  EXPECT_EQ(bucket.reserve(1000, start), start + milliseconds(1));
  bucket.set_rate(0, start);
  EXPECT_EQ(bucket.reserve(1 << 30, start), start);
}

TEST(SendThrottle, PiecesKeepGapsShortAtLowRates) {
  testing::ManualClock clock;
  auto slow = std::make_shared<TokenBucket>(TokenBucket::kMinRateBytesPerSecond);
  auto fast = std::make_shared<TokenBucket>(1'000'000'000);
  EXPECT_EQ(SendThrottle(clock, {fast}).piece_bytes(), 64u * 1024);
  EXPECT_EQ(SendThrottle(clock, {fast, slow}).piece_bytes(), 4u * 1024);
  EXPECT_EQ(SendThrottle(clock, {std::make_shared<TokenBucket>()}).piece_bytes(), 64u * 1024);
}

TEST(SendThrottle, WaitsForTheSlowestBucketOnTheClock) {
  testing::ManualClock clock;
  auto mirror = std::make_shared<TokenBucket>(kRate);
  auto peer = std::make_shared<TokenBucket>(10 * kRate);
  SendThrottle throttle(clock, {mirror, peer});
  throttle.acquire(kBurst);  // the burst: no wait
  std::atomic<bool> done{false};
  std::thread sender([&] {
    throttle.acquire(100'000);  // 100 ms at the mirror's 1 MB/s (10 ms at the peer's)
    done = true;
  });
  ASSERT_TRUE(clock.wait_until_quiet(1, std::chrono::seconds(10)));
  clock.advance(milliseconds(99));
  ASSERT_TRUE(clock.wait_until_quiet(1, std::chrono::seconds(10)));
  EXPECT_FALSE(done.load());
  clock.advance(milliseconds(1));
  sender.join();
  EXPECT_TRUE(done.load());
}

TEST(SendThrottle, CancelWakesAWaitingSender) {
  testing::ManualClock clock;
  SendThrottle throttle(clock, {std::make_shared<TokenBucket>(TokenBucket::kMinRateBytesPerSecond)});
  throttle.charge(kBurst + 1'600'000);  // control frames: counted, never waited for
  std::thread sender([&] { throttle.acquire(1000); });  // would wait 100 s
  ASSERT_TRUE(clock.wait_until_quiet(1, std::chrono::seconds(10)));
  throttle.cancel();
  sender.join();
  throttle.acquire(1000);  // returns at once once cancelled
}

}  // namespace
}  // namespace amirror::repl
