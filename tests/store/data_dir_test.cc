// SPDX-License-Identifier: Apache-2.0
// The data directory's volume life cycle: a volume under construction is invisible,
// can be abandoned, becomes visible only once complete, and is removed if the process
// died before completing it (a crash mid-import never leaves a half volume).
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

}  // namespace
}  // namespace amirror
