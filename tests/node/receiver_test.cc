// SPDX-License-Identifier: Apache-2.0
// The replica registry at start: one damaged replica is recorded as failed with its
// reason while the others load, and a sender is refused rather than allowed to
// overwrite it.
#include "node/receiver.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <thread>

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

// [[peers]] storage: a peer's replicas go to its pool's replicas directory; one found
// elsewhere (the setting changed) is failed, not overwritten by a fresh copy; a peer
// whose pool failed gets no replica at all, with the reason.
TEST(ReplicaRegistry, PlacementByPeerStorage) {
  testing::ScratchDir scratch("registry");
  const std::string data = scratch.sub("replicas"), pool = scratch.sub("pool-replicas");
  {
    ReplicaRegistry registry(posix_file_system(), data);
    ASSERT_TRUE(registry.load().ok());
    ASSERT_TRUE(registry.open_or_create("moved", "v", kSize, kChunk).ok());
  }
  std::map<std::string, ReplicaPlacement> placements = {
      {"a", {pool, ""}}, {"moved", {pool, ""}}, {"down", {scratch.sub("gone/replicas"), "storage 'gone': broken"}}};
  ReplicaRegistry registry(posix_file_system(), data, placements);
  ASSERT_TRUE(registry.load().ok());
  ASSERT_TRUE(registry.open_or_create("a", "v", kSize, kChunk).ok());
  EXPECT_TRUE(std::filesystem::exists(pool + "/a/v/replica.meta"));
  EXPECT_EQ(registry.dir_of("a", "v"), pool + "/a/v");
  EXPECT_EQ(registry.dir_of("b", "v"), data + "/b/v");

  ASSERT_EQ(registry.failed().size(), 1u);
  EXPECT_EQ(registry.failed().front().dir, data + "/moved/v");
  EXPECT_NE(registry.failed().front().error.find("replicas go to " + pool), std::string::npos)
      << registry.failed().front().error;
  EXPECT_FALSE(registry.open_or_create("moved", "v", kSize, kChunk).ok());

  auto refused = registry.open_or_create("down", "v", kSize, kChunk);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("storage 'gone': broken"), std::string::npos) << refused.status().message();
  EXPECT_FALSE(std::filesystem::exists(scratch.sub("gone")));

  // A misplaced replica is deleted where it is.
  ASSERT_TRUE(registry.remove("moved", "v", [&](const std::string& dir) {
    EXPECT_EQ(dir, data + "/moved/v");
    std::filesystem::remove_all(dir);
    return Status();
  }).ok());
  EXPECT_TRUE(registry.failed().empty());
}

// A switchover's takeover arrives on a new connection right after the source stopped
// the one that carried the last cycle; that one may still hold the replica here for a
// moment. An operator's remove is refused at once; the takeover's waits for it.
TEST(ReplicaRegistry, RemoveCanWaitForTheConnectionStillHoldingTheReplica) {
  testing::ScratchDir scratch("registry");
  ReplicaRegistry registry(posix_file_system(), scratch.sub("replicas"));
  ASSERT_TRUE(registry.load().ok());
  ASSERT_TRUE(registry.open_or_create("a", "v", kSize, kChunk).ok());
  ASSERT_TRUE(registry.acquire("a/v", 0));
  int removed_dirs = 0;
  auto remove_dir = [&](const std::string&) {
    ++removed_dirs;
    return Status();
  };
  Status refused = registry.remove("a", "v", remove_dir);
  EXPECT_EQ(refused.code(), ErrorCode::kBusy) << refused.to_string();
  EXPECT_NE(refused.message().find("receiving from a"), std::string::npos) << refused.message();
  EXPECT_EQ(removed_dirs, 0);
  ASSERT_NE(registry.find("a", "v"), nullptr);

  // The old connection ends a little later, on its own thread. (Its delay only makes
  // the wait likely to be needed; the test passes however the threads interleave.)
  std::thread old_connection([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    registry.release("a/v");
  });
  Status removed = registry.remove("a", "v", remove_dir, /*wait_ms=*/600'000);
  old_connection.join();
  EXPECT_TRUE(removed.ok()) << removed.to_string();
  EXPECT_EQ(removed_dirs, 1);
  EXPECT_EQ(registry.find("a", "v"), nullptr);
  EXPECT_FALSE(registry.in_use("a/v"));
}

}  // namespace
}  // namespace amirror::node
