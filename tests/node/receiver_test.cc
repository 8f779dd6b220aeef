// SPDX-License-Identifier: Apache-2.0
// The replica registry at start: one damaged replica is recorded as failed with its
// reason while the others load, and a sender is refused rather than allowed to
// overwrite it.
#include "node/receiver.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "testing/test_support.h"

namespace amirror::node {
namespace {

constexpr uint64_t kSize = 1 << 20;
constexpr uint64_t kChunk = 64 << 10;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ReplicaRegistry, ADamagedReplicaFailsAloneAndIsNotOverwritten) {
  testing::ScratchDir scratch("registry");
  std::string dir = scratch.sub("replicas");
  {
    ReplicaRegistry registry(posix_file_system(), dir);
    ASSERT_TRUE(registry.load().ok());
    ASSERT_TRUE(registry.open_or_create("a", "good", kSize, kChunk).ok());
    ASSERT_TRUE(registry.open_or_create("a", "bad", kSize, kChunk).ok());
  }
  std::string bad_meta = dir + "/a/bad/replica.meta";
  std::filesystem::resize_file(bad_meta, 20);
  std::string damaged = read_file(bad_meta);

  ReplicaRegistry registry(posix_file_system(), dir);
  ASSERT_TRUE(registry.load().ok());
  EXPECT_NE(registry.find("a", "good"), nullptr);
  EXPECT_EQ(registry.find("a", "bad"), nullptr);
  ASSERT_EQ(registry.failed().size(), 1u);
  const FailedReplica failed = registry.failed().front();
  EXPECT_EQ(failed.source, "a");
  EXPECT_EQ(failed.volume, "bad");
  EXPECT_NE(failed.error.find("replica.meta"), std::string::npos) << failed.error;

  auto refused = registry.open_or_create("a", "bad", kSize, kChunk);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("a/bad failed to open"), std::string::npos)
      << refused.status().message();
  EXPECT_NE(refused.status().message().find(failed.error), std::string::npos)
      << refused.status().message();
  EXPECT_EQ(read_file(bad_meta), damaged);
  EXPECT_TRUE(registry.open_or_create("a", "good", kSize, kChunk).ok());
}

}  // namespace
}  // namespace amirror::node
