// SPDX-License-Identifier: Apache-2.0
// The data directory's volume life cycle: a volume under construction is invisible,
// can be abandoned, becomes visible only once complete, and is removed if the process
// died before completing it (a crash mid-import never leaves a half volume). A deleted
// volume goes through the trash, which the next open empties (a crash mid-delete never
// leaves a half volume under its name either).
#include "store/data_dir.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "testing/test_support.h"

namespace amirror {
namespace {

VolumeOptions small_volume() {
  VolumeOptions options;
  options.size_bytes = 1 << 20;
  options.chunk_size_bytes = 64 << 10;
  return options;
}

TEST(DataDirTest, AVolumeBeingBuiltIsInvisibleUntilComplete) {
  testing::ScratchDir scratch("data-dir");
  auto data_dir = DataDir::open(posix_file_system(), scratch.path());
  ASSERT_TRUE(data_dir.ok()) << data_dir.status().to_string();
  auto building = data_dir.value()->begin_volume("v", small_volume());
  ASSERT_TRUE(building.ok()) << building.status().to_string();
  EXPECT_TRUE(data_dir.value()->list_volumes().value().empty());
  // The name is taken while it is being built.
  EXPECT_EQ(data_dir.value()->begin_volume("v", small_volume()).status().code(),
            ErrorCode::kAlreadyExists);
  std::vector<uint8_t> data(4096, 0x42);
  ASSERT_TRUE(building.value()->write(8192, data).ok());
  auto complete = data_dir.value()->complete_volume("v", std::move(building).value());
  ASSERT_TRUE(complete.ok()) << complete.status().to_string();
  EXPECT_EQ(data_dir.value()->list_volumes().value(), std::vector<std::string>{"v"});
  std::vector<uint8_t> read_back(4096);
  ASSERT_TRUE(complete.value()->read(8192, read_back).ok());
  EXPECT_EQ(read_back, data);
}

TEST(DataDirTest, AnAbandonedVolumeLeavesNothingAndTheNameIsFreeAgain) {
  testing::ScratchDir scratch("data-dir");
  auto data_dir = DataDir::open(posix_file_system(), scratch.path());
  ASSERT_TRUE(data_dir.ok());
  {
    auto building = data_dir.value()->begin_volume("v", small_volume());
    ASSERT_TRUE(building.ok());
  }
  ASSERT_TRUE(data_dir.value()->abandon_volume("v").ok());
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("volumes")));
  EXPECT_TRUE(data_dir.value()->create_volume("v", small_volume()).ok());
}

TEST(DataDirTest, AVolumeNeverCompletedIsRemovedAtTheNextOpen) {
  testing::ScratchDir scratch("data-dir");
  {
    auto data_dir = DataDir::open(posix_file_system(), scratch.path());
    ASSERT_TRUE(data_dir.ok());
    auto building = data_dir.value()->begin_volume("v", small_volume());
    ASSERT_TRUE(building.ok());
    std::vector<uint8_t> data(4096, 0x42);
    ASSERT_TRUE(building.value()->write(0, data).ok());
    ASSERT_TRUE(building.value()->flush().ok());
    // The process "dies" here: neither completed nor abandoned.
  }
  ASSERT_TRUE(std::filesystem::exists(scratch.sub("volumes/v.creating")));
  auto reopened = DataDir::open(posix_file_system(), scratch.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_TRUE(reopened.value()->list_volumes().value().empty());
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("volumes")));
  // A volume may not take a name the next open would remove.
  EXPECT_EQ(reopened.value()->create_volume("db.creating", small_volume()).status().code(),
            ErrorCode::kInvalidArgument);
}

TEST(DataDirTest, AVolumeCrashedMidDeleteIsGoneAtTheNextOpenAndItsNameIsFresh) {
  testing::ScratchDir scratch("data-dir");
  {
    auto data_dir = DataDir::open(posix_file_system(), scratch.path());
    ASSERT_TRUE(data_dir.ok());
    auto volume = data_dir.value()->create_volume("v", small_volume());
    ASSERT_TRUE(volume.ok());
    std::vector<uint8_t> data(4096, 0x42);
    ASSERT_TRUE(volume.value()->write(0, data).ok());
    ASSERT_TRUE(volume.value()->flush().ok());
    volume.value().reset();
    auto trashed = data_dir.value()->move_to_trash(data_dir.value()->volume_dir("v"));
    ASSERT_TRUE(trashed.ok()) << trashed.status().to_string();
    EXPECT_TRUE(data_dir.value()->list_volumes().value().empty());
    // The process "dies" here: the volume is in the trash, its files not yet removed.
    ASSERT_FALSE(std::filesystem::is_empty(trashed.value()));
  }
  auto reopened = DataDir::open(posix_file_system(), scratch.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_TRUE(reopened.value()->list_volumes().value().empty());
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("trash")));
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("volumes")));
  auto recreated = reopened.value()->create_volume("v", small_volume());
  ASSERT_TRUE(recreated.ok()) << recreated.status().to_string();
  std::vector<uint8_t> read_back(4096, 0xff);
  ASSERT_TRUE(recreated.value()->read(0, read_back).ok());
  EXPECT_EQ(read_back, std::vector<uint8_t>(4096, 0));
}

TEST(DataDirTest, RemoveFromTrashLeavesNothing) {
  testing::ScratchDir scratch("data-dir");
  auto data_dir = DataDir::open(posix_file_system(), scratch.path());
  ASSERT_TRUE(data_dir.ok());
  ASSERT_TRUE(data_dir.value()->create_volume("a", small_volume()).ok());
  ASSERT_TRUE(data_dir.value()->create_volume("b", small_volume()).ok());
  auto first = data_dir.value()->move_to_trash(data_dir.value()->volume_dir("a"));
  auto second = data_dir.value()->move_to_trash(data_dir.value()->volume_dir("b"));
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE(first.value(), second.value());
  ASSERT_TRUE(data_dir.value()->remove_from_trash(first.value()).ok());
  ASSERT_TRUE(data_dir.value()->remove_from_trash(second.value()).ok());
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("trash")));
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("volumes")));
}

}  // namespace
}  // namespace amirror
