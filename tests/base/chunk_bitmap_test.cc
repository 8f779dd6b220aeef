// SPDX-License-Identifier: Apache-2.0
// ChunkBitmap against a std::set: the same chunks, in order, counted; copies share
// pages but never see each other's later changes.
#include "base/chunk_bitmap.h"

#include <gtest/gtest.h>

#include "testing/test_support.h"

namespace amirror {
namespace {

TEST(ChunkBitmapTest, MatchesASetUnderRandomChanges) {
  for (uint64_t seed : testing::seeds_to_run(3)) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " (replay: AMIRROR_SEED=" + std::to_string(seed) + ")");
    testing::Random random(seed);
    ChunkBitmap bits;
    std::set<uint64_t> model;
    for (int step = 0; step < 2000; ++step) {
      uint64_t choice = random.uniform(0, 99);
      uint64_t chunk_index = random.uniform(0, 4 * ChunkBitmap::kBitsPerPage);
      if (choice < 80) {
        bits.set(chunk_index);
        model.insert(chunk_index);
      } else if (choice < 98) {
        uint64_t count = random.uniform(0, 200);
        bits.set_range(chunk_index, count);
        for (uint64_t i = 0; i < count; ++i) model.insert(chunk_index + i);
      } else {
        bits.clear();
        model.clear();
      }
      ASSERT_EQ(bits.count(), model.size());
      ASSERT_EQ(bits.test(chunk_index), model.contains(chunk_index));
    }
    EXPECT_EQ(bits.to_set(), model);
  }
}

TEST(ChunkBitmapTest, CopiesDoNotSeeLaterChanges) {
  ChunkBitmap original{1, ChunkBitmap::kBitsPerPage + 5};
  ChunkBitmap copy = original;
  EXPECT_EQ(copy.page(0), original.page(0));  // shared until one changes
  original.set(2);
  copy.set(ChunkBitmap::kBitsPerPage + 6);
  EXPECT_EQ(original.to_set(), (std::set<uint64_t>{1, 2, ChunkBitmap::kBitsPerPage + 5}));
  EXPECT_EQ(copy.to_set(), (std::set<uint64_t>{1, ChunkBitmap::kBitsPerPage + 5, ChunkBitmap::kBitsPerPage + 6}));
  EXPECT_NE(copy.page(0), original.page(0));
}

TEST(ChunkBitmapTest, EqualityIgnoresTrailingEmptyPages) {
  ChunkBitmap with_empty_page;
  with_empty_page.set_page(3, nullptr);
  EXPECT_EQ(with_empty_page, ChunkBitmap());
  EXPECT_EQ(with_empty_page.count(), 0u);
  EXPECT_FALSE(ChunkBitmap{7} == ChunkBitmap{8});
}

}  // namespace
}  // namespace amirror
