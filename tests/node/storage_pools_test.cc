// SPDX-License-Identifier: Apache-2.0
// Storage pools: each volume is found in its pool; a pool that is missing, or an empty
// directory where volumes were recorded, fails alone (never created, never set up
// over), and the catalog still names the volumes it took away; a volume a crash kept
// out of the catalog is recorded when found.
#include "node/storage_pools.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "testing/test_support.h"

namespace amirror::node {
namespace {

VolumeOptions small_volume() {
  VolumeOptions options;
  options.size_bytes = 1 << 20;
  options.chunk_size_bytes = 64 << 10;
  return options;
}

NodeConfig config_with_pool(const testing::ScratchDir& scratch) {
  NodeConfig config;
  config.name = "a";
  config.data_dir = scratch.sub("data");
  config.storage.push_back({"p", scratch.sub("pool")});
  return config;
}

// Volume "v" in pool "p", recorded in the catalog; the pools closed again.
void create_recorded_volume(const NodeConfig& config) {
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok()) << pools.status().to_string();
  ASSERT_TRUE(pools.value()->find("p")->dir->create_volume("v", small_volume()).ok());
  ASSERT_TRUE(pools.value()->record("v", "p").ok());
}

TEST(StoragePools, VolumesAreFoundInTheirPoolsAfterARestart) {
  testing::ScratchDir scratch("storage-pools");
  std::filesystem::create_directory(scratch.sub("pool"));
  NodeConfig config = config_with_pool(scratch);
  {
    auto pools = StoragePools::open(posix_file_system(), config);
    ASSERT_TRUE(pools.ok()) << pools.status().to_string();
    ASSERT_TRUE(pools.value()->find("p")->dir->create_volume("v", small_volume()).ok());
    ASSERT_TRUE(pools.value()->record("v", "p").ok());
    ASSERT_TRUE(pools.value()->default_dir().create_volume("w", small_volume()).ok());
    EXPECT_EQ(pools.value()->known_names(), "default, p");
  }
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok()) << pools.status().to_string();
  auto volumes = pools.value()->load_volumes();
  ASSERT_TRUE(volumes.ok()) << volumes.status().to_string();
  EXPECT_EQ(volumes.value(), (std::map<std::string, std::string>{{"v", "p"}, {"w", "default"}}));
  EXPECT_EQ(pools.value()->volume_dir("v"), scratch.sub("pool") + "/volumes/v");
  EXPECT_EQ(pools.value()->dir_of("v"), pools.value()->find("p")->dir.get());
  EXPECT_EQ(pools.value()->pool_holding(scratch.sub("pool") + "/replicas/b/x"), "p");
}

TEST(StoragePools, AMissingPoolFailsAloneAndIsNotCreated) {
  testing::ScratchDir scratch("storage-pools");
  std::filesystem::create_directory(scratch.sub("pool"));
  NodeConfig config = config_with_pool(scratch);
  create_recorded_volume(config);
  std::filesystem::remove_all(scratch.sub("pool"));
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok()) << pools.status().to_string();
  const StoragePool* pool = pools.value()->find("p");
  EXPECT_EQ(pool->dir, nullptr);
  EXPECT_NE(pool->error.find("does not exist"), std::string::npos) << pool->error;
  EXPECT_FALSE(std::filesystem::exists(scratch.sub("pool")));
  auto volumes = pools.value()->load_volumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_EQ(volumes.value().at("v"), "p");  // still named, so it is shown failed
  std::string why;
  EXPECT_EQ(pools.value()->dir_of("v", &why), nullptr);
  EXPECT_NE(why.find("storage 'p' (" + scratch.sub("pool") + ") failed: "), std::string::npos) << why;
}

TEST(StoragePools, AnEmptyDirectoryWhereVolumesWereIsNotSetUpAgain) {
  testing::ScratchDir scratch("storage-pools");
  std::filesystem::create_directory(scratch.sub("pool"));
  NodeConfig config = config_with_pool(scratch);
  create_recorded_volume(config);
  // Like a file system that did not mount: its mount point is empty.
  std::filesystem::remove_all(scratch.sub("pool"));
  std::filesystem::create_directory(scratch.sub("pool"));
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok());
  EXPECT_NE(pools.value()->find("p")->error.find("is empty, but volumes were kept there"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_empty(scratch.sub("pool")));
  // Once forgotten (deleted), an empty directory is a new pool again.
  ASSERT_TRUE(pools.value()->forget("v").ok());
  pools.value().reset();  // unlocks the data directory
  pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok());
  EXPECT_NE(pools.value()->find("p")->dir, nullptr) << pools.value()->find("p")->error;
}

TEST(StoragePools, AVolumeTheCatalogMissedIsRecordedWhenFound) {
  testing::ScratchDir scratch("storage-pools");
  std::filesystem::create_directory(scratch.sub("pool"));
  NodeConfig config = config_with_pool(scratch);
  {
    auto pools = StoragePools::open(posix_file_system(), config);
    ASSERT_TRUE(pools.ok());
    // A crash right after the create: the catalog never heard of it.
    ASSERT_TRUE(pools.value()->find("p")->dir->create_volume("v", small_volume()).ok());
  }
  {
    auto pools = StoragePools::open(posix_file_system(), config);
    ASSERT_TRUE(pools.ok());
    ASSERT_TRUE(pools.value()->load_volumes().ok());
    EXPECT_EQ(pools.value()->pool_of("v"), "p");
  }
  // Recorded on disk: the pool failing now still names it.
  std::filesystem::remove_all(scratch.sub("pool"));
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok());
  EXPECT_EQ(pools.value()->load_volumes().value().at("v"), "p");
}

TEST(StoragePools, AFileWherePoolShouldBeFailsIt) {
  testing::ScratchDir scratch("storage-pools");
  NodeConfig config = config_with_pool(scratch);
  ASSERT_TRUE(write_file_atomically(posix_file_system(), scratch.path(), "pool", "not a directory").ok());
  auto pools = StoragePools::open(posix_file_system(), config);
  ASSERT_TRUE(pools.ok()) << pools.status().to_string();
  EXPECT_EQ(pools.value()->find("p")->dir, nullptr);
  EXPECT_FALSE(pools.value()->find("p")->error.empty());
  EXPECT_NE(pools.value()->find("default")->dir, nullptr);
}

}  // namespace
}  // namespace amirror::node
