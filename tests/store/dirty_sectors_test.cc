// SPDX-License-Identifier: Apache-2.0
// Sub-chunk dirty tracking (store/layer.h, "Dirty sectors"): which sectors of a chunk a
// layer's writes changed, as Volume::changed_chunks reports them to the sender. The
// masks live in memory only: a reopened volume reports every chunk fully dirty.
#include <gtest/gtest.h>

#include <map>

#include "store/layer.h"
#include "store/volume.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

VolumeOptions options(uint64_t size_bytes, uint64_t chunk_size_bytes) {
  VolumeOptions result;
  result.size_bytes = size_bytes;
  result.chunk_size_bytes = chunk_size_bytes;
  return result;
}

// chunk_index -> DeltaChunk of the delta from point `from` to `to`.
std::map<uint64_t, DeltaChunk> delta(Volume& volume, uint64_t from, uint64_t to) {
  auto changed = volume.changed_chunks(from, to);
  EXPECT_TRUE(changed.ok()) << changed.status().to_string();
  std::map<uint64_t, DeltaChunk> result;
  if (changed.ok()) {
    for (const DeltaChunk& chunk : changed.value()) result[chunk.chunk_index] = chunk;
  }
  return result;
}

void write(Volume& volume, uint64_t offset_bytes, uint64_t length_bytes, uint8_t fill = 0xab) {
  std::vector<uint8_t> data(length_bytes, fill);
  ASSERT_TRUE(volume.write(offset_bytes, data).ok());
}

TEST(DirtySectorsTest, SectorSizeIsAChunkOver64ButAtLeast4KiB) {
  EXPECT_EQ(dirty_sector_bytes(4 * kKiB), 4 * kKiB);
  EXPECT_EQ(dirty_sector_bytes(64 * kKiB), 4 * kKiB);
  EXPECT_EQ(dirty_sector_bytes(256 * kKiB), 4 * kKiB);
  EXPECT_EQ(dirty_sector_bytes(4 * kMiB), 64 * kKiB);
  EXPECT_EQ(full_sector_mask(4 * kKiB), 0x1u);
  EXPECT_EQ(full_sector_mask(64 * kKiB), 0xffffu);
  EXPECT_EQ(full_sector_mask(4 * kMiB), kAllSectorsDirty);
  EXPECT_EQ(sectors_touched(64 * kKiB, 0, 1), 0x1u);
  EXPECT_EQ(sectors_touched(64 * kKiB, 4095, 2), 0x3u);  // straddles sectors 0 and 1
  EXPECT_EQ(sectors_touched(64 * kKiB, 60 * kKiB, 4 * kKiB), 0x8000u);
  EXPECT_EQ(sectors_touched(4 * kMiB, 4 * kMiB - 512, 512), uint64_t{1} << 63);
}

class DirtySectorsVolumeTest : public ::testing::Test {
 protected:
  std::unique_ptr<Volume> create(uint64_t size_bytes, uint64_t chunk_size_bytes) {
    auto volume = Volume::create(posix_file_system(), dir_.path(), options(size_bytes, chunk_size_bytes));
    EXPECT_TRUE(volume.ok()) << volume.status().to_string();
    return volume.ok() ? std::move(volume).value() : nullptr;
  }
  ScratchDir dir_{"dirty-sectors"};
};

TEST_F(DirtySectorsVolumeTest, FirstAndSecondWritesMarkOnlyTheirSectors) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 8 * kKiB, 4 * kKiB);  // first write to chunk 0: sector 2
  write(*volume, 40 * kKiB, 512);      // second write, same chunk: sector 10
  write(*volume, 8 * kKiB + 512, 512);  // again sector 2: nothing new
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 0, 1);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].state, ChunkState::kData);
  EXPECT_EQ(chunks[0].dirty_sectors, (uint64_t{1} << 2) | (uint64_t{1} << 10));
  // The slot still holds the whole chunk: reads are exact.
  std::vector<uint8_t> chunk(64 * kKiB);
  ASSERT_TRUE(volume->read_frozen(1, 0, chunk).ok());
  for (uint64_t i = 0; i < chunk.size(); ++i) {
    bool written = (i >= 8 * kKiB && i < 12 * kKiB) || (i >= 40 * kKiB && i < 40 * kKiB + 512);
    ASSERT_EQ(chunk[i], written ? 0xab : 0) << "byte " << i;
  }
}

TEST_F(DirtySectorsVolumeTest, WriteSpanningChunksMarksBothEnds) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 60 * kKiB, 8 * kKiB);            // last sector of chunk 0, first of chunk 1
  write(*volume, 2 * 64 * kKiB, 64 * kKiB + 4 * kKiB);  // chunk 2 whole, sector 0 of chunk 3
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 0, 1);
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_EQ(chunks[0].dirty_sectors, uint64_t{1} << 15);
  EXPECT_EQ(chunks[1].dirty_sectors, 0x1u);
  EXPECT_EQ(chunks[2].dirty_sectors, kAllSectorsDirty);
  EXPECT_EQ(chunks[3].dirty_sectors, 0x1u);
}

TEST_F(DirtySectorsVolumeTest, PartialZeroesAreDirtyWholeZeroesAreZeroChunks) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 0, 2 * 64 * kKiB);
  ASSERT_TRUE(volume->freeze().ok());
  ASSERT_TRUE(volume->write_zeroes(4 * kKiB, 4 * kKiB).ok());  // partial: sector 1 of chunk 0
  ASSERT_TRUE(volume->trim(64 * kKiB, 64 * kKiB).ok());        // chunk 1 whole
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 1, 2);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].state, ChunkState::kData);
  EXPECT_EQ(chunks[0].dirty_sectors, 0x2u);
  EXPECT_EQ(chunks[1].state, ChunkState::kZero);
}

TEST_F(DirtySectorsVolumeTest, DeltaOverSeveralLayersIsTheUnionAndZeroMeansEverySector) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 0, 4 * kKiB);                 // layer 1: chunk 0 sector 0
  ASSERT_TRUE(volume->trim(64 * kKiB, 64 * kKiB).ok());  // layer 1: chunk 1 zeroed whole
  ASSERT_TRUE(volume->freeze().ok());
  write(*volume, 12 * kKiB, 4 * kKiB);         // layer 2: chunk 0 sector 3
  write(*volume, 64 * kKiB, 4 * kKiB);         // layer 2: chunk 1 sector 0, after the zeroing
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 0, 2);
  EXPECT_EQ(chunks[0].dirty_sectors, 0x9u);
  EXPECT_EQ(chunks[1].state, ChunkState::kData);
  EXPECT_EQ(chunks[1].dirty_sectors, kAllSectorsDirty);  // the target must zero the rest too
  // Zeroed and then written again within one layer: every sector changed.
  ASSERT_TRUE(volume->trim(128 * kKiB, 64 * kKiB).ok());
  write(*volume, 128 * kKiB, 4 * kKiB);
  ASSERT_TRUE(volume->freeze().ok());
  EXPECT_EQ(delta(*volume, 2, 3)[2].dirty_sectors, kAllSectorsDirty);
}

TEST_F(DirtySectorsVolumeTest, FourKiBChunksHaveOneSector) {
  auto volume = create(kMiB, 4 * kKiB);
  write(*volume, 4 * kKiB + 512, 512);
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 0, 1);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[1].dirty_sectors & full_sector_mask(4 * kKiB), full_sector_mask(4 * kKiB));
}

TEST_F(DirtySectorsVolumeTest, FourMiBChunksHave64SectorsOf64KiB) {
  auto volume = create(8 * kMiB, 4 * kMiB);
  write(*volume, 130 * kKiB, 4 * kKiB);            // sector 2
  write(*volume, 4 * kMiB + 4 * kMiB - 512, 512);  // chunk 1, sector 63
  ASSERT_TRUE(volume->freeze().ok());
  auto chunks = delta(*volume, 0, 1);
  EXPECT_EQ(chunks[0].dirty_sectors, 0x4u);
  EXPECT_EQ(chunks[1].dirty_sectors, uint64_t{1} << 63);
}

TEST_F(DirtySectorsVolumeTest, ReopenedLayersReportEveryChunkFullyDirty) {
  {
    auto volume = create(kMiB, 64 * kKiB);
    write(*volume, 8 * kKiB, 4 * kKiB);
    ASSERT_TRUE(volume->freeze().ok());
    EXPECT_EQ(delta(*volume, 0, 1)[0].dirty_sectors, 0x4u);
    write(*volume, 64 * kKiB, 4 * kKiB);  // in the active layer when closed
    ASSERT_TRUE(volume->flush().ok());
  }
  auto reopened = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  Volume& volume = *reopened.value();
  EXPECT_EQ(delta(volume, 0, 1)[0].dirty_sectors, kAllSectorsDirty);
  write(volume, 64 * kKiB + 8 * kKiB, 4 * kKiB);  // the reopened active layer knows nothing either
  ASSERT_TRUE(volume.freeze().ok());
  EXPECT_EQ(delta(volume, 1, 2)[1].dirty_sectors, kAllSectorsDirty);
}

TEST_F(DirtySectorsVolumeTest, LayerInfoCountsDirtyBytes) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 0, 4 * kKiB);
  write(*volume, 64 * kKiB + 4 * kKiB, 8 * kKiB);
  ASSERT_TRUE(volume->freeze().ok());
  std::vector<LayerInfo> layers = volume->layers();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].dirty_bytes, 12 * kKiB);
  EXPECT_EQ(layers[0].data_bytes, 2 * 64 * kKiB);
}

}  // namespace
}  // namespace amirror::testing
