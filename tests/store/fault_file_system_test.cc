// SPDX-License-Identifier: Apache-2.0
// Tests of the test tool itself: if FaultFileSystem did not really drop unsynced data,
// every power-loss test built on it would pass vacuously.
#include "testing/fault_file_system.h"

#include <gtest/gtest.h>

#include "testing/test_support.h"

namespace amirror::testing {
namespace {

std::span<const uint8_t> bytes(const std::string& text) {
  return std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

std::string contents(FileSystem& fs, const std::string& path) {
  auto text = read_small_file(fs, path, 1 << 20);
  return text.ok() ? text.value() : "<" + text.status().to_string() + ">";
}

class FaultFileSystemTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) { return scratch_.sub(name); }
  std::unique_ptr<File> create(const std::string& name) {
    auto file = fs_.open(path(name), OpenMode::kCreateNew);
    EXPECT_TRUE(file.ok()) << file.status().to_string();
    return std::move(file).value();
  }

  ScratchDir scratch_{"faultfs"};
  FaultFileSystem fs_;
};

TEST_F(FaultFileSystemTest, UnsyncedWritesAreDroppedSyncedOnesKept) {
  auto file = create("a");
  ASSERT_TRUE(file->write_at(0, bytes("hello world")).ok());
  ASSERT_TRUE(file->sync().ok());
  ASSERT_TRUE(fs_.sync_dir(scratch_.path()).ok());
  ASSERT_TRUE(file->write_at(0, bytes("HELLO")).ok());
  ASSERT_TRUE(file->write_at(11, bytes(" and more")).ok());
  ASSERT_TRUE(file->truncate(8).ok());
  ASSERT_TRUE(file->punch_hole(0, 4).ok());
  EXPECT_GT(fs_.unsynced_bytes(), 0u);
  ASSERT_TRUE(fs_.drop_unsynced().ok());
  EXPECT_EQ(contents(fs_, path("a")), "hello world");
  // Handles from before the crash are dead.
  EXPECT_EQ(file->write_at(0, bytes("x")).code(), ErrorCode::kIo);
  EXPECT_EQ(contents(fs_, path("a")), "hello world");
}

TEST_F(FaultFileSystemTest, FileCreatedWithoutDirSyncVanishes) {
  auto file = create("new");
  ASSERT_TRUE(file->write_at(0, bytes("data")).ok());
  ASSERT_TRUE(file->sync().ok());  // content synced, directory entry not
  ASSERT_TRUE(fs_.drop_unsynced().ok());
  EXPECT_FALSE(fs_.exists(path("new")).value());
}

TEST_F(FaultFileSystemTest, RenameAndRemoveAreUndoneUntilDirSync) {
  {
    auto a = create("a");
    ASSERT_TRUE(a->write_at(0, bytes("old")).ok());
    ASSERT_TRUE(a->sync().ok());
    auto b = create("b");
    ASSERT_TRUE(b->write_at(0, bytes("new")).ok());
    ASSERT_TRUE(b->sync().ok());
    auto c = create("c");
    ASSERT_TRUE(c->sync().ok());
  }
  ASSERT_TRUE(fs_.sync_dir(scratch_.path()).ok());
  ASSERT_TRUE(fs_.rename(path("b"), path("a")).ok());  // replaces a
  ASSERT_TRUE(fs_.remove(path("c")).ok());
  EXPECT_EQ(contents(fs_, path("a")), "new");
  EXPECT_FALSE(fs_.exists(path("c")).value());
  EXPECT_EQ(fs_.list_dir(scratch_.path()).value(), std::vector<std::string>{"a"});
  ASSERT_TRUE(fs_.drop_unsynced().ok());
  EXPECT_EQ(contents(fs_, path("a")), "old");
  EXPECT_EQ(contents(fs_, path("b")), "new");
  EXPECT_TRUE(fs_.exists(path("c")).value());

  // Made durable by sync_dir: survives.
  ASSERT_TRUE(fs_.rename(path("b"), path("a")).ok());
  ASSERT_TRUE(fs_.remove(path("c")).ok());
  ASSERT_TRUE(fs_.sync_dir(scratch_.path()).ok());
  ASSERT_TRUE(fs_.drop_unsynced().ok());
  EXPECT_EQ(contents(fs_, path("a")), "new");
  EXPECT_EQ(fs_.list_dir(scratch_.path()).value(), std::vector<std::string>{"a"});
}

TEST_F(FaultFileSystemTest, WriteFileAtomicallySurvivesAndOldVersionOtherwise) {
  ASSERT_TRUE(write_file_atomically(fs_, scratch_.path(), "meta", "version 1").ok());
  ASSERT_TRUE(fs_.drop_unsynced().ok());
  EXPECT_EQ(contents(fs_, path("meta")), "version 1");
  // Every prefix of the replacement's file operations either keeps the old or installs
  // the new content.
  for (uint64_t allowed = 0; allowed < 8; allowed++) {
    fs_.fail_after(allowed, ErrorCode::kIo, FaultFileSystem::kOpAllMutating);
    Status status = write_file_atomically(fs_, scratch_.path(), "meta", "version 2");
    fs_.clear_faults();
    ASSERT_TRUE(fs_.drop_unsynced().ok());
    std::string now = contents(fs_, path("meta"));
    EXPECT_TRUE(now == "version 1" || now == "version 2") << allowed << ": " << now;
    if (status.ok()) EXPECT_EQ(now, "version 2");
    if (now == "version 2") break;
    EXPECT_FALSE(status.ok());
  }
}

TEST_F(FaultFileSystemTest, RandomDropKeepsEachPieceOldOrNew) {
  std::vector<uint8_t> old_data(64 * 1024, 0x11);
  std::vector<uint8_t> new_data(64 * 1024, 0x22);
  bool saw_old = false, saw_new = false;
  for (uint64_t seed = 1; seed <= 8; seed++) {
    std::string name = "r" + std::to_string(seed);
    auto file = create(name);
    ASSERT_TRUE(file->write_at(0, old_data).ok());
    ASSERT_TRUE(file->sync().ok());
    ASSERT_TRUE(fs_.sync_dir(scratch_.path()).ok());
    ASSERT_TRUE(file->write_at(0, new_data).ok());
    ASSERT_TRUE(fs_.drop_random_unsynced(seed).ok());
    auto reopened = fs_.open(path(name), OpenMode::kOpenExisting);
    ASSERT_TRUE(reopened.ok());
    std::vector<uint8_t> now(old_data.size());
    ASSERT_TRUE(reopened.value()->read_at(0, now).ok());
    for (uint8_t b : now) {
      ASSERT_TRUE(b == 0x11 || b == 0x22);
      saw_old |= b == 0x11;
      saw_new |= b == 0x22;
    }
  }
  EXPECT_TRUE(saw_old && saw_new) << "random drop should keep some and drop some pieces";
}

TEST_F(FaultFileSystemTest, InjectedErrorsAndBudget) {
  auto file = create("f");
  fs_.fail_after(2, ErrorCode::kNoSpace, FaultFileSystem::kOpWrite, /*sticky=*/false);
  EXPECT_TRUE(file->write_at(0, bytes("1")).ok());
  EXPECT_TRUE(file->sync().ok());  // not selected by the mask, not counted
  EXPECT_TRUE(file->write_at(1, bytes("2")).ok());
  EXPECT_EQ(file->write_at(2, bytes("3")).code(), ErrorCode::kNoSpace);
  EXPECT_TRUE(file->write_at(2, bytes("4")).ok());  // not sticky
  fs_.clear_faults();
  EXPECT_EQ(contents(fs_, path("f")), "124");

  fs_.fail_after(0, ErrorCode::kIo, FaultFileSystem::kOpSync);
  EXPECT_EQ(file->sync().code(), ErrorCode::kIo);
  EXPECT_EQ(file->sync().code(), ErrorCode::kIo);  // sticky
  fs_.clear_faults();
  EXPECT_TRUE(file->sync().ok());

  fs_.set_write_budget_bytes(10);
  EXPECT_TRUE(file->write_at(0, bytes("12345678")).ok());
  Status full = file->write_at(0, bytes("abc"));
  EXPECT_EQ(full.code(), ErrorCode::kNoSpace);
  EXPECT_EQ(contents(fs_, path("f")), "12345678") << "a failed write must change nothing";
  EXPECT_GE(fs_.injected_failure_count(), 4u);
}

}  // namespace
}  // namespace amirror::testing
