// SPDX-License-Identifier: Apache-2.0
// TransferSlots: never more than max_transfers taken; waiters get freed slots in the
// order they asked (a newcomer does not jump the queue); a stopping engine's grants
// pass on.
#include "node/transfer_slots.h"

#include <gtest/gtest.h>

namespace amirror::node {
namespace {

TEST(TransferSlotsTest, BoundedAndFirstComeFirstServed) {
  TransferSlots slots(2);
  int engine_a = 0, engine_b = 0;
  int woken_a = 0, woken_b = 0;
  auto wake_a = [&] { woken_a += 1; };
  auto wake_b = [&] { woken_b += 1; };
  EXPECT_TRUE(slots.try_acquire({&engine_a, "t1"}, wake_a));
  EXPECT_TRUE(slots.try_acquire({&engine_a, "t2"}, wake_a));
  EXPECT_FALSE(slots.try_acquire({&engine_b, "t1"}, wake_b));
  EXPECT_FALSE(slots.try_acquire({&engine_a, "t3"}, wake_a));
  EXPECT_FALSE(slots.try_acquire({&engine_b, "t1"}, wake_b));  // asking again keeps its place
  EXPECT_TRUE(slots.queued({&engine_b, "t1"}));
  EXPECT_EQ(slots.in_use(), 2u);

  slots.release();  // goes to b/t1, the first in line
  EXPECT_EQ(woken_b, 1);
  EXPECT_EQ(woken_a, 0);
  EXPECT_FALSE(slots.try_acquire({&engine_a, "t3"}, wake_a)) << "jumped the queue";
  EXPECT_TRUE(slots.try_acquire({&engine_b, "t1"}, wake_b));
  EXPECT_EQ(slots.in_use(), 2u);

  slots.release();  // to a/t3
  slots.release();
  EXPECT_TRUE(slots.try_acquire({&engine_a, "t3"}, wake_a));
  EXPECT_EQ(slots.in_use(), 1u);
}

TEST(TransferSlotsTest, CancelPassesGrantsOn) {
  TransferSlots slots(1);
  int engine_a = 0, engine_b = 0;
  int woken_a = 0, woken_b = 0;
  auto wake_a = [&] { woken_a += 1; };
  auto wake_b = [&] { woken_b += 1; };
  ASSERT_TRUE(slots.try_acquire({&engine_a, "t"}, wake_a));
  EXPECT_FALSE(slots.try_acquire({&engine_b, "t"}, wake_b));
  EXPECT_FALSE(slots.try_acquire({&engine_a, "u"}, wake_a));
  slots.release();  // granted to b, which stops before taking it
  slots.cancel(&engine_b);
  EXPECT_FALSE(slots.queued({&engine_b, "t"}));
  EXPECT_TRUE(slots.try_acquire({&engine_a, "u"}, wake_a));
  slots.cancel(&engine_a);  // a's running transfer still holds its slot until released
  EXPECT_EQ(slots.in_use(), 1u);
  slots.release();
  EXPECT_EQ(slots.in_use(), 0u);
}

}  // namespace
}  // namespace amirror::node
