// SPDX-License-Identifier: Apache-2.0
// Unit tests of Layer: the chunk map, its log on disk, and recovery of a torn tail.
#include "store/layer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 4096;

class LayerTest : public ::testing::Test {
 protected:
  std::shared_ptr<Layer> create(uint64_t id = 1) {
    auto layer = Layer::create(fs_, scratch_.path(), id, kChunk);
    EXPECT_TRUE(layer.ok()) << layer.status().to_string();
    return layer.ok() ? layer.value() : nullptr;
  }
  Result<std::shared_ptr<Layer>> reopen(uint64_t id = 1) {
    return Layer::open(fs_, scratch_.path(), id, kChunk);
  }
  // Writes a whole chunk of `fill` bytes into a new slot and publishes it.
  void put(Layer& layer, uint64_t chunk_index, uint8_t fill) {
    uint64_t slot = layer.reserve_slot();
    std::vector<uint8_t> data(kChunk, fill);
    ASSERT_TRUE(layer.write_slot(slot, 0, data).ok());
    layer.publish_data(chunk_index, slot);
  }
  uint8_t first_byte(Layer& layer, uint64_t chunk_index) {
    auto entry = layer.find(chunk_index);
    EXPECT_TRUE(entry.has_value());
    if (!entry || entry->state != ChunkState::kData) return 0;
    std::vector<uint8_t> out(1);
    EXPECT_TRUE(layer.read_slot(entry->slot, 0, out).ok());
    return out[0];
  }
  std::string map_path(uint64_t id = 1) { return scratch_.sub(Layer::map_file_name(id)); }
  uint64_t file_size(const std::string& path) {
    auto file = posix_file_system().open(path, OpenMode::kOpenExisting);
    return file.ok() ? file.value()->size_bytes().value() : 0;
  }

  ScratchDir scratch_{"layer"};
  FileSystem& fs_ = posix_file_system();
};

TEST_F(LayerTest, PublishIsVisibleAtOnceAndDurableAfterSync) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  EXPECT_FALSE(layer->find(7).has_value());
  put(*layer, 7, 0xAB);
  put(*layer, 9, 0xCD);
  layer->publish_zero(3);
  EXPECT_EQ(layer->chunk_count(), 3u);
  EXPECT_EQ(layer->data_bytes(), 2 * kChunk);
  EXPECT_EQ(layer->find(3)->state, ChunkState::kZero);
  ASSERT_TRUE(layer->sync().ok());
  layer.reset();

  auto reopened = reopen();
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  auto& again = *reopened.value();
  auto entries = again.entries();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].first, 3u);
  EXPECT_EQ(entries[0].second.state, ChunkState::kZero);
  EXPECT_EQ(entries[1].first, 7u);
  EXPECT_EQ(entries[2].first, 9u);
  EXPECT_EQ(first_byte(again, 7), 0xAB);
  EXPECT_EQ(first_byte(again, 9), 0xCD);
  EXPECT_EQ(again.data_bytes(), 2 * kChunk);
}

TEST_F(LayerTest, UnsyncedPublishIsNotOnDisk) {
  auto layer = create();
  put(*layer, 1, 1);
  ASSERT_TRUE(layer->sync().ok());
  put(*layer, 2, 2);  // never synced
  layer.reset();
  auto reopened = reopen();
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE(reopened.value()->find(1).has_value());
  EXPECT_FALSE(reopened.value()->find(2).has_value());
}

TEST_F(LayerTest, TornMapTailIsDroppedOnOpen) {
  auto layer = create();
  put(*layer, 1, 0x11);
  ASSERT_TRUE(layer->sync().ok());
  uint64_t after_first = file_size(map_path());
  put(*layer, 2, 0x22);
  put(*layer, 3, 0x33);
  ASSERT_TRUE(layer->sync().ok());
  uint64_t after_second = file_size(map_path());
  ASSERT_GT(after_second, after_first);
  layer.reset();

  // Cut the second batch at every length short of complete: only batch 1 survives.
  for (uint64_t cut = after_first + 1; cut < after_second; cut += 5) {
    ScratchDir copy("layer-torn");
    for (const char* name : {"layer-1.data", "layer-1.map"}) {
      std::filesystem::copy_file(scratch_.sub(name), copy.sub(name));
    }
    ASSERT_EQ(::truncate(copy.sub("layer-1.map").c_str(), static_cast<off_t>(cut)), 0);
    auto torn = Layer::open(fs_, copy.path(), 1, kChunk);
    ASSERT_TRUE(torn.ok()) << "cut at " << cut << ": " << torn.status().to_string();
    EXPECT_TRUE(torn.value()->find(1).has_value());
    EXPECT_FALSE(torn.value()->find(2).has_value()) << "cut at " << cut;
    EXPECT_FALSE(torn.value()->find(3).has_value()) << "cut at " << cut;
    // The layer keeps working: a new batch after the dropped tail is replayed.
    put(*torn.value(), 4, 0x44);
    ASSERT_TRUE(torn.value()->sync().ok());
    torn.value().reset();
    auto again = Layer::open(fs_, copy.path(), 1, kChunk);
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(again.value()->find(4).has_value()) << "cut at " << cut;
    EXPECT_EQ(first_byte(*again.value(), 4), 0x44);
  }
}

TEST_F(LayerTest, GarbageAppendedToMapIsIgnored) {
  auto layer = create();
  put(*layer, 5, 0x55);
  ASSERT_TRUE(layer->sync().ok());
  layer.reset();
  {
    auto file = posix_file_system().open(map_path(), OpenMode::kOpenExisting);
    ASSERT_TRUE(file.ok());
    std::vector<uint8_t> garbage(100);
    Random(7).fill(garbage);
    ASSERT_TRUE(file.value()->write_at(file.value()->size_bytes().value(), garbage).ok());
  }
  auto reopened = reopen();
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->chunk_count(), 1u);
  EXPECT_EQ(first_byte(*reopened.value(), 5), 0x55);
}

TEST_F(LayerTest, BadHeaderOrWrongLayerIsRefused) {
  auto layer = create(3);
  ASSERT_TRUE(layer->sync().ok());
  layer.reset();
  // Another chunk size or id than the file was made for: refused, not guessed.
  EXPECT_EQ(Layer::open(fs_, scratch_.path(), 3, 2 * kChunk).status().code(), ErrorCode::kCorruption);
  ASSERT_EQ(::rename(map_path(3).c_str(), map_path(4).c_str()), 0);
  ASSERT_EQ(::rename(scratch_.sub(Layer::data_file_name(3)).c_str(),
                     scratch_.sub(Layer::data_file_name(4)).c_str()), 0);
  EXPECT_EQ(reopen(4).status().code(), ErrorCode::kCorruption);
  ASSERT_EQ(::truncate(map_path(4).c_str(), 3), 0);
  EXPECT_EQ(reopen(4).status().code(), ErrorCode::kCorruption);
  EXPECT_FALSE(reopen(5).ok()) << "missing files";
}

TEST_F(LayerTest, CreateRefusesExistingFiles) {
  auto layer = create(1);
  ASSERT_NE(layer, nullptr);
  EXPECT_FALSE(Layer::create(fs_, scratch_.path(), 1, kChunk).ok());
}

TEST_F(LayerTest, SlotFreedByZeroIsNotReusedBeforeSync) {
  auto layer = create();
  put(*layer, 1, 0x11);
  ASSERT_TRUE(layer->sync().ok());
  uint64_t slot = layer->find(1)->slot;
  layer->publish_zero(1);
  // Until the kZero record is durable the durable map still points at `slot`.
  uint64_t next = layer->reserve_slot();
  EXPECT_NE(next, slot);
  layer->release_slot(next);
}

TEST_F(LayerTest, PowerLossAfterSyncKeepsEverythingSynced) {
  FaultFileSystem fault;
  ScratchDir dir("layer-fault");
  {
    auto layer = Layer::create(fault, dir.path(), 1, kChunk);
    ASSERT_TRUE(layer.ok());
    ASSERT_TRUE(fault.sync_dir(dir.path()).ok());
    uint64_t slot = layer.value()->reserve_slot();
    std::vector<uint8_t> data(kChunk, 0x5A);
    ASSERT_TRUE(layer.value()->write_slot(slot, 0, data).ok());
    layer.value()->publish_data(0, slot);
    ASSERT_TRUE(layer.value()->sync().ok());
    uint64_t slot2 = layer.value()->reserve_slot();
    ASSERT_TRUE(layer.value()->write_slot(slot2, 0, data).ok());
    layer.value()->publish_data(1, slot2);  // not synced
    ASSERT_TRUE(fault.drop_unsynced().ok());
  }
  auto reopened = Layer::open(fault, dir.path(), 1, kChunk);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_TRUE(reopened.value()->find(0).has_value());
  EXPECT_FALSE(reopened.value()->find(1).has_value());
  std::vector<uint8_t> out(kChunk);
  ASSERT_TRUE(reopened.value()->read_slot(reopened.value()->find(0)->slot, 0, out).ok());
  EXPECT_EQ(out, std::vector<uint8_t>(kChunk, 0x5A));
}

}  // namespace
}  // namespace amirror::testing
