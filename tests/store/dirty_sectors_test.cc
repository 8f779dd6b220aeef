// SPDX-License-Identifier: Apache-2.0
// Sectors within a chunk (store/layer.h, "Sectors"): which sectors of a chunk a layer's
// writes changed, as Volume::changed_chunks reports them to the sender; a layer's slot
// holds only those sectors (copy-on-first-write copies only a write's partial ends),
// reads and merges take the others from below, and the masks survive a reopen. Layers
// of map format 1 (whole chunks) are still read and written.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "base/checksum.h"
#include "base/coding.h"
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

TEST_F(DirtySectorsVolumeTest, ReopenedLayersKeepTheirSectors) {
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
  EXPECT_EQ(delta(volume, 0, 1)[0].dirty_sectors, 0x4u);
  write(volume, 64 * kKiB + 8 * kKiB, 4 * kKiB);  // adds sector 2 to the reopened active layer
  ASSERT_TRUE(volume.freeze().ok());
  EXPECT_EQ(delta(volume, 1, 2)[1].dirty_sectors, 0x5u);
}

// The bytes a 64 KiB chunk reads after small writes in several layers, checked against
// a plain array after each step: in the layers, after a merge into the base, reopened.
TEST_F(DirtySectorsVolumeTest, SectorsComeFromTheNewestLayerDefiningThem) {
  const uint64_t chunk = 64 * kKiB;
  auto volume = create(4 * chunk, chunk);
  std::vector<uint8_t> model(4 * chunk, 0);
  auto put = [&](Volume& v, uint64_t offset, uint64_t length, uint8_t fill) {
    write(v, offset, length, fill);
    std::fill(model.begin() + offset, model.begin() + offset + length, fill);
  };
  auto expect_model = [&](Volume& v, const std::string& when) {
    std::vector<uint8_t> bytes(model.size());
    ASSERT_TRUE(v.read(0, bytes).ok());
    auto differ = std::mismatch(bytes.begin(), bytes.end(), model.begin());
    EXPECT_TRUE(differ.first == bytes.end()) << when << ": differs at byte " << (differ.first - bytes.begin());
  };
  put(*volume, 0, 2 * chunk, 0x11);
  ASSERT_TRUE(volume->freeze().ok());
  put(*volume, 4000, 100, 0x22);             // straddles sectors 0 and 1: both ends filled from below
  put(*volume, chunk + 8 * kKiB, 4 * kKiB, 0x33);  // one whole sector
  put(*volume, 3 * chunk + 10, 5, 0x44);     // over a chunk never written: zeros below
  expect_model(*volume, "first writes after the freeze");
  ASSERT_TRUE(volume->freeze().ok());
  put(*volume, 4090, 20, 0x55);              // sector 0 defined below, sector 1 too
  put(*volume, chunk + 30 * kKiB, 10, 0x66);  // a sector the layers below leave to the base
  ASSERT_TRUE(volume->write_zeroes(chunk + 9 * kKiB, 2 * kKiB).ok());  // partial zeroing
  std::fill(model.begin() + chunk + 9 * kKiB, model.begin() + chunk + 11 * kKiB, 0);
  expect_model(*volume, "second layer");
  put(*volume, chunk + 40 * kKiB, 100, 0x77);  // a later write adds a sector to an entry
  expect_model(*volume, "a sector added to the active entry");
  ASSERT_TRUE(volume->flush().ok());
  volume.reset();
  auto reopened = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  expect_model(*reopened.value(), "reopened");
  ASSERT_TRUE(reopened.value()->freeze().ok());
  while (reopened.value()->points().size() > 1) ASSERT_TRUE(reopened.value()->merge_oldest().ok());
  expect_model(*reopened.value(), "every layer merged into the base");
}

// A first 4 KiB write after a freeze writes 4 KiB into the layer, not a 64 KiB copy.
TEST_F(DirtySectorsVolumeTest, FirstWriteAfterAFreezeWritesOnlyItsSector) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 0, kMiB, 0x11);
  ASSERT_TRUE(volume->freeze().ok());
  ASSERT_TRUE(volume->merge_oldest().ok());
  for (uint64_t chunk = 0; chunk < 16; ++chunk) write(*volume, chunk * 64 * kKiB + 8 * kKiB, 4 * kKiB, 0x22);
  ASSERT_TRUE(volume->flush().ok());
  std::vector<LayerInfo> layers = volume->layers();
  ASSERT_EQ(layers.size(), 1u);
  std::string data_file = dir_.path() + "/" + Layer::data_file_name(layers.back().id);
  struct stat info {};
  ASSERT_EQ(::stat(data_file.c_str(), &info), 0);
  // 16 sectors of 4 KiB written; whole-chunk copies would allocate 1 MiB.
  EXPECT_LE(static_cast<uint64_t>(info.st_blocks) * 512, 16 * 8 * kKiB) << data_file;
  std::vector<uint8_t> bytes(64 * kKiB);
  ASSERT_TRUE(volume->read(15 * 64 * kKiB, bytes).ok());
  EXPECT_EQ(bytes[0], 0x11);
  EXPECT_EQ(bytes[8 * kKiB], 0x22);
  EXPECT_EQ(bytes[12 * kKiB], 0x11);
}

// A layer map of format 1 (no sector masks, written before sectors existed) reads as
// whole chunks, and its active layer goes on taking writes in format 1.
TEST_F(DirtySectorsVolumeTest, Format1LayersHoldWholeChunks) {
  uint64_t layer_id = 0;
  {
    auto volume = create(kMiB, 64 * kKiB);
    write(*volume, 0, 64 * kKiB, 0x11);
    ASSERT_TRUE(volume->flush().ok());
    layer_id = volume->layers().back().id;
  }
  // The same map in format 1: header version 1, one batch of one 16-byte record (chunk
  // 0 in slot 0).
  std::string map;
  map.append("AMLAYMAP", 8);
  append_u32(map, 1);
  append_u32(map, 0);
  append_u64(map, layer_id);
  append_u64(map, 64 * kKiB);
  append_u64(map, checksum64(map.data(), map.size()));
  const size_t batch = map.size();
  append_u32(map, 0x31424d41);
  append_u32(map, 1);
  append_u64(map, 1);
  append_u64(map, 0);
  append_u64(map, 0);
  append_u64(map, checksum64(map.data() + batch, map.size() - batch));
  {
    std::ofstream out(dir_.path() + "/" + Layer::map_file_name(layer_id), std::ios::binary | std::ios::trunc);
    out.write(map.data(), static_cast<std::streamsize>(map.size()));
  }
  {
    auto reopened = Volume::open(posix_file_system(), dir_.path());
    ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
    Volume& volume = *reopened.value();
    write(volume, 64 * kKiB + 100, 10, 0x33);  // a new chunk in the format-1 layer: copied whole
    ASSERT_TRUE(volume.flush().ok());
    auto frozen = volume.freeze();
    ASSERT_TRUE(frozen.ok()) << frozen.status().to_string();
    auto chunks = delta(volume, 0, frozen.value());
    EXPECT_EQ(chunks[0].dirty_sectors, kAllSectorsDirty);  // replayed: no mask in format 1
    EXPECT_EQ(chunks[1].dirty_sectors, 0x1u);              // written in this run
  }
  // Now frozen: write into a format-2 active layer above the format-1 one, and reopen.
  auto reopened = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  write(*reopened.value(), 4 * kKiB, 10, 0x22);
  ASSERT_TRUE(reopened.value()->flush().ok());
  reopened.value().reset();
  auto again = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  std::vector<uint8_t> bytes(128 * kKiB);
  ASSERT_TRUE(again.value()->read(0, bytes).ok());
  std::vector<uint8_t> expected(128 * kKiB, 0);
  std::fill(expected.begin(), expected.begin() + 64 * kKiB, 0x11);
  std::fill(expected.begin() + 4 * kKiB, expected.begin() + 4 * kKiB + 10, 0x22);
  std::fill(expected.begin() + 64 * kKiB + 100, expected.begin() + 64 * kKiB + 110, 0x33);
  EXPECT_TRUE(bytes == expected);
  ASSERT_TRUE(again.value()->merge_oldest().ok());
  ASSERT_TRUE(again.value()->read(0, bytes).ok());
  EXPECT_TRUE(bytes == expected);
}

// A merged layer's data file is kept (up to four, together up to 1 GiB on disk) and the
// next freeze's layer writes over it, so its blocks are not freed and allocated again
// every cycle (a discard per extent on a file system mounted with `discard`).
// The spares share one budget of 1 GiB: a 300 MiB layer (a busy volume frozen every
// second) is kept whole, so its blocks and cache pages are written over next cycle; a
// merged layer that would take the spares past the budget is freed instead.
TEST(SpareBudgetTest, ALargeLayerIsKeptWhileTheSparesStayWithinTheBudget) {
  ScratchDir dir("spare-budget", /*in_memory=*/true);
  constexpr uint64_t kSize = 800 * kMiB;
  auto created = Volume::create(posix_file_system(), dir.path(), options(kSize, 64 * kKiB));
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  std::unique_ptr<Volume> volume = std::move(created).value();
  auto fill = [&](uint64_t length_bytes, uint8_t value) {
    std::vector<uint8_t> data(64 * kMiB, value);
    for (uint64_t offset = 0; offset < length_bytes; offset += data.size()) {
      ASSERT_TRUE(volume->write(offset, std::span(data).first(std::min<uint64_t>(data.size(), length_bytes - offset))).ok());
    }
  };
  fill(300 * kMiB, 0x11);  // layer 1: 300 MiB
  ASSERT_TRUE(volume->freeze().ok());
  fill(kSize, 0x22);       // layer 2: 800 MiB
  ASSERT_TRUE(volume->freeze().ok());
  ASSERT_TRUE(volume->merge_oldest().ok());
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/spare-layer-0.data")) << "a 300 MiB layer was not kept";
  EXPECT_GE(volume->spare_bytes(), 300 * kMiB);
  ASSERT_TRUE(volume->merge_oldest().ok());  // 300 + 800 MiB > 1 GiB: freed
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/spare-layer-1.data")) << "the spares exceed their budget";
  EXPECT_LE(volume->spare_bytes(), 1024 * kMiB);
  std::vector<uint8_t> bytes(kMiB);
  ASSERT_TRUE(volume->read(kSize - kMiB, bytes).ok());
  EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0x22; }));
}

TEST_F(DirtySectorsVolumeTest, MergedLayerDataFilesAreReusedNotFreed) {
  auto volume = create(kMiB, 64 * kKiB);
  const std::string spare = dir_.path() + "/spare-layer-0.data";
  write(*volume, 0, kMiB, 0x11);
  EXPECT_EQ(volume->spare_bytes(), 0u);
  ASSERT_TRUE(volume->freeze().ok());
  const uint64_t merged_id = volume->layers().front().id;
  ASSERT_TRUE(volume->merge_oldest().ok());
  EXPECT_TRUE(std::filesystem::exists(spare));
  EXPECT_GE(volume->spare_bytes(), kMiB) << "status shows the spare's space";
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/" + Layer::data_file_name(merged_id)));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/" + Layer::map_file_name(merged_id)));
  write(*volume, 8 * kKiB, 10, 0x22);  // lands in the active layer, then frozen:
  ASSERT_TRUE(volume->freeze().ok());  // the new active layer takes the spare
  EXPECT_FALSE(std::filesystem::exists(spare));
  EXPECT_EQ(volume->spare_bytes(), 0u);
  write(*volume, 64 * kKiB + 100, 10, 0x33);  // slot 0 of the reused file: old bytes under it
  std::vector<uint8_t> expected(kMiB, 0x11);
  std::fill(expected.begin() + 8 * kKiB, expected.begin() + 8 * kKiB + 10, 0x22);
  std::fill(expected.begin() + 64 * kKiB + 100, expected.begin() + 64 * kKiB + 110, 0x33);
  std::vector<uint8_t> bytes(kMiB);
  ASSERT_TRUE(volume->read(0, bytes).ok());
  EXPECT_TRUE(bytes == expected);
  ASSERT_TRUE(volume->flush().ok());
  volume.reset();
  auto reopened = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  ASSERT_TRUE(reopened.value()->read(0, bytes).ok());
  EXPECT_TRUE(bytes == expected);
  while (reopened.value()->points().size() > 1) ASSERT_TRUE(reopened.value()->merge_oldest().ok());
  ASSERT_TRUE(reopened.value()->freeze().ok());
  while (reopened.value()->points().size() > 1) ASSERT_TRUE(reopened.value()->merge_oldest().ok());
  ASSERT_TRUE(reopened.value()->read(0, bytes).ok());
  EXPECT_TRUE(bytes == expected);
}

TEST_F(DirtySectorsVolumeTest, LayerInfoCountsDirtyBytes) {
  auto volume = create(kMiB, 64 * kKiB);
  write(*volume, 0, 4 * kKiB);
  write(*volume, 64 * kKiB + 4 * kKiB, 8 * kKiB);
  ASSERT_TRUE(volume->freeze().ok());
  std::vector<LayerInfo> layers = volume->layers();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].dirty_bytes, 12 * kKiB);
  EXPECT_EQ(layers[0].data_bytes, 12 * kKiB);  // packed: only the sectors written
}

}  // namespace
}  // namespace amirror::testing
