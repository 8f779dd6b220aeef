// SPDX-License-Identifier: Apache-2.0
// The free space of a packed layer (store/free_runs.h): freed runs join their
// neighbours, requests take the best fit, and — checked against a bitmap of free
// sectors under random frees and takes — a request succeeds exactly when some stretch
// of free sectors holds it, and never gets a sector that is not free.
#include <gtest/gtest.h>

#include <iostream>
#include <random>
#include <vector>

#include "store/free_runs.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kSector = 4096;

TEST(FreeRunsTest, FreedNeighboursServeALargerRequest) {
  FreeRuns runs(kSector);
  runs.free(0 * kSector, 16);
  runs.free(32 * kSector, 16);
  EXPECT_EQ(runs.take(32), std::nullopt) << "two runs of 16 with a gap are not one of 32";
  runs.free(16 * kSector, 16);  // the gap: all three are one run now
  EXPECT_EQ(runs.run_count(), 1u);
  EXPECT_EQ(runs.free_sectors(), 48u);
  EXPECT_EQ(runs.take(48), 0u);
  EXPECT_EQ(runs.run_count(), 0u);
}

TEST(FreeRunsTest, TakesTheSmallestRunThatFitsFromItsStart) {
  FreeRuns runs(kSector);
  runs.free(0, 64);
  runs.free(100 * kSector, 4);
  runs.free(200 * kSector, 2);
  EXPECT_EQ(runs.take(3), 100 * kSector);
  EXPECT_EQ(runs.take(1), 103 * kSector);  // the rest of that run, smaller than 2
  EXPECT_EQ(runs.take(2), 200 * kSector);
  EXPECT_EQ(runs.take(65), std::nullopt);
  EXPECT_EQ(runs.take(64), 0u);
  EXPECT_EQ(runs.free_sectors(), 0u);
}

// Model: a bitmap of the sectors below `kSpan`, true = free.
TEST(FreeRunsTest, RandomFreesAndTakesMatchABitmap) {
  constexpr uint64_t kSpan = 512;
  for (uint64_t seed : seeds_to_run(20)) {
    std::cout << "FreeRunsTest seed " << seed << " (replay: AMIRROR_SEED=" << seed << ")\n";
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 random(seed);
    FreeRuns runs(kSector);
    std::vector<bool> free(kSpan, false);
    std::vector<std::pair<uint64_t, uint64_t>> taken;  // (sector, count) in use
    // Everything starts in use, as pieces of 1..64 sectors.
    for (uint64_t sector = 0; sector < kSpan;) {
      uint64_t count = std::min<uint64_t>(1 + random() % 64, kSpan - sector);
      taken.emplace_back(sector, count);
      sector += count;
    }
    auto longest_free = [&] {
      uint64_t best = 0, current = 0;
      for (bool is_free : free) {
        current = is_free ? current + 1 : 0;
        best = std::max(best, current);
      }
      return best;
    };
    for (int step = 0; step < 3000; ++step) {
      if (!taken.empty() && random() % 2 == 0) {
        const size_t index = random() % taken.size();
        const auto [sector, count] = taken[index];
        taken.erase(taken.begin() + static_cast<ptrdiff_t>(index));
        runs.free(sector * kSector, count);
        for (uint64_t s = sector; s < sector + count; ++s) free[s] = true;
      } else {
        const uint64_t count = 1 + random() % 64;
        std::optional<uint64_t> offset = runs.take(count);
        ASSERT_EQ(offset.has_value(), longest_free() >= count) << "step " << step << ": take(" << count << ")";
        if (!offset) continue;
        ASSERT_EQ(*offset % kSector, 0u);
        const uint64_t sector = *offset / kSector;
        ASSERT_LE(sector + count, kSpan);
        for (uint64_t s = sector; s < sector + count; ++s) {
          ASSERT_TRUE(free[s]) << "step " << step << ": sector " << s << " handed out while in use";
          free[s] = false;
        }
        taken.emplace_back(sector, count);
      }
      uint64_t free_count = 0;
      for (bool is_free : free) free_count += is_free;
      ASSERT_EQ(runs.free_sectors(), free_count) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace amirror::testing
