// SPDX-License-Identifier: Apache-2.0
// Packed layers (store/layer.h, "Packed sectors"; map format 3): a layer's data file
// holds only the sectors written, packed from its start, each chunk's sectors in
// pieces; rewrites go in place, a zeroed chunk's space is reused once that is durable,
// and the pieces survive a reopen. Layers of map format 2 (one chunk-sized slot per
// chunk) are still read and appended to.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "base/checksum.h"
#include "base/coding.h"
#include "store/layer.h"
#include "store/volume.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 64 * kKiB;
constexpr uint64_t kSector = 4 * kKiB;

uint64_t file_size(const std::string& path) { return std::filesystem::file_size(path); }

class PackedLayerTest : public ::testing::Test {
 protected:
  std::shared_ptr<Layer> create() {
    auto layer = Layer::create(fs_, scratch_.path(), 1, kChunk);
    EXPECT_TRUE(layer.ok()) << layer.status().to_string();
    return layer.ok() ? layer.value() : nullptr;
  }
  std::shared_ptr<Layer> reopen() {
    auto layer = Layer::open(fs_, scratch_.path(), 1, kChunk);
    EXPECT_TRUE(layer.ok()) << layer.status().to_string();
    return layer.ok() ? layer.value() : nullptr;
  }
  // Writes `length` bytes of `fill` at `offset` of chunk `chunk_index` as Volume does:
  // a new slot on the chunk's first write; the sectors it adds get one place and are
  // filled whole first (from the reference: zeros below); then the write, in place.
  void write(Layer& layer, uint64_t chunk_index, uint64_t offset, uint64_t length, uint8_t fill) {
    auto& image = images_[chunk_index];
    image.resize(kChunk, 0);
    std::fill(image.begin() + static_cast<ptrdiff_t>(offset), image.begin() + static_cast<ptrdiff_t>(offset + length), fill);
    const uint64_t sectors = sectors_touched(kChunk, offset, length);
    std::optional<ChunkEntry> entry = layer.find(chunk_index);
    const bool fresh = !entry || entry->state != ChunkState::kData;
    const uint64_t slot = fresh ? layer.reserve_slot() : entry->slot;
    const uint64_t added = fresh ? sectors : sectors & ~entry->defined_sectors;
    ASSERT_TRUE(layer.place_sectors(slot, added).ok());
    for_each_sector_run(kChunk, kChunk, added, [&](uint64_t begin, uint64_t end) {
      ASSERT_TRUE(layer.write_slot(slot, begin, std::span(image).subspan(begin, end - begin)).ok());
    });
    std::vector<uint8_t> data(length, fill);
    ASSERT_TRUE(layer.write_slot(slot, offset, data).ok());
    if (fresh) {
      layer.publish_data(chunk_index, slot, sectors);
    } else {
      layer.mark_dirty(chunk_index, sectors);
    }
  }
  // Every defined sector of every chunk reads as written (the others are not read:
  // they come from below in a volume).
  void expect_contents(Layer& layer) { expect_contents(layer, images_); }
  void expect_contents(Layer& layer, const std::map<uint64_t, std::vector<uint8_t>>& images) {
    for (const auto& [chunk_index, image] : images) {
      std::optional<ChunkEntry> entry = layer.find(chunk_index);
      ASSERT_TRUE(entry.has_value()) << "chunk " << chunk_index;
      ASSERT_EQ(entry->state, ChunkState::kData);
      for_each_sector_run(kChunk, kChunk, entry->defined_sectors, [&](uint64_t begin, uint64_t end) {
        std::vector<uint8_t> out(end - begin);
        ASSERT_TRUE(layer.read_slot(entry->slot, begin, out).ok());
        EXPECT_TRUE(std::equal(out.begin(), out.end(), image.begin() + static_cast<ptrdiff_t>(begin)))
            << "chunk " << chunk_index << " bytes " << begin << ".." << end;
      });
    }
  }
  // Syncs `layer`, closes it and opens it again, as a restart does; null on failure.
  std::shared_ptr<Layer> sync_and_reopen(std::shared_ptr<Layer>& layer) {
    Status synced = layer->sync();
    EXPECT_TRUE(synced.ok()) << synced.to_string();
    layer.reset();
    return synced.ok() ? reopen() : nullptr;
  }
  std::string data_path() { return scratch_.sub(Layer::data_file_name(1)); }
  void random_writes(uint64_t seed);

  ScratchDir scratch_{"packed-layer"};
  FileSystem& fs_ = posix_file_system();
  std::map<uint64_t, std::vector<uint8_t>> images_;
};

TEST_F(PackedLayerTest, ScatteredSectorsArePackedFromTheStartOfTheDataFile) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  EXPECT_TRUE(layer->packed());
  for (uint64_t chunk = 0; chunk < 100; ++chunk) {
    write(*layer, chunk * 7, (chunk % 16) * kSector, kSector, static_cast<uint8_t>(chunk + 1));
  }
  // One sector each: 100 sectors, where one slot per chunk would span 700 chunks.
  EXPECT_EQ(file_size(data_path()), 100 * kSector);
  EXPECT_EQ(layer->data_bytes(), 100 * kSector);
  expect_contents(*layer);
  auto reopened = sync_and_reopen(layer);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->data_bytes(), 100 * kSector);
  EXPECT_EQ(reopened->find(7)->defined_sectors, 0x2u);
  expect_contents(*reopened);
}

TEST_F(PackedLayerTest, SectorsWrittenOutOfOrderAreRewrittenInPlace) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  write(*layer, 3, 9 * kSector, kSector, 0x09);
  write(*layer, 3, 2 * kSector, kSector, 0x02);
  write(*layer, 3, 5 * kSector + 100, 200, 0x05);  // part of a sector: gets a whole place
  write(*layer, 3, 2 * kSector + 10, 2 * kSector - 10, 0x22);  // sector 2 again and new sector 3
  write(*layer, 3, 9 * kSector, kSector, 0x99);
  EXPECT_EQ(layer->find(3)->defined_sectors, (1u << 9) | (1u << 2) | (1u << 3) | (1u << 5));
  EXPECT_EQ(file_size(data_path()), 4 * kSector);  // rewrites took no new space
  expect_contents(*layer);
  auto reopened = sync_and_reopen(layer);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->find(3)->defined_sectors, (1u << 9) | (1u << 2) | (1u << 3) | (1u << 5));
  expect_contents(*reopened);
  // Reopened (no gaps between its pieces), it appends after the last one and rewrites in place.
  write(*reopened, 3, 9 * kSector, 10, 0x42);
  write(*reopened, 4, 0, kChunk, 0x44);
  EXPECT_EQ(file_size(data_path()), 4 * kSector + kChunk);
  expect_contents(*reopened);
}

// A chunk's fifth piece is the whole chunk: its sectors are copied there in chunk
// order, so a chunk written piecemeal reads with one call; the old pieces stay until
// the record naming the whole one is durable, so a crash before that finds them.
TEST_F(PackedLayerTest, AChunkWrittenInManyPiecesIsMadeWholeOnce) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  for (uint64_t sector : {7, 1, 12, 4}) write(*layer, 0, sector * kSector, kSector, static_cast<uint8_t>(sector + 1));
  ASSERT_TRUE(layer->sync().ok());
  EXPECT_EQ(file_size(data_path()), 4 * kSector);
  const auto durable_images = images_;
  write(*layer, 0, 9 * kSector + 5, 100, 0x99);  // the fifth piece: the whole chunk instead
  EXPECT_EQ(file_size(data_path()), 4 * kSector + kChunk);
  EXPECT_EQ(layer->data_bytes(), 4 * kSector + kChunk);  // the old pieces until durable
  expect_contents(*layer);
  write(*layer, 0, 15 * kSector, kSector, 0x16);  // a sector it had no place for: in place now
  EXPECT_EQ(file_size(data_path()), 4 * kSector + kChunk);
  {  // A crash now: the durable map still names the four pieces, and they are intact.
    auto durable = Layer::open(fs_, scratch_.path(), 1, kChunk);
    ASSERT_TRUE(durable.ok()) << durable.status().to_string();
    expect_contents(*durable.value(), durable_images);
  }
  ASSERT_TRUE(layer->sync().ok());
  EXPECT_EQ(layer->data_bytes(), kChunk);
  write(*layer, 5, 0, kSector, 0x55);  // takes a freed sector: no growth
  EXPECT_EQ(file_size(data_path()), 4 * kSector + kChunk);
  expect_contents(*layer);
  auto reopened = sync_and_reopen(layer);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->find(0)->defined_sectors, (1u << 7) | (1u << 1) | (1u << 12) | (1u << 4) | (1u << 9) | (1u << 15));
  expect_contents(*reopened);
}

TEST_F(PackedLayerTest, AZeroedChunksSpaceIsReusedOnlyOnceTheZeroingIsDurable) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  write(*layer, 0, 0, kChunk, 0x11);
  ASSERT_TRUE(layer->sync().ok());
  layer->publish_zero(0);
  images_.erase(0);
  // Not durable yet: the durable map still names chunk 0's piece, so it stays.
  write(*layer, 1, 0, kSector, 0x22);
  EXPECT_EQ(file_size(data_path()), kChunk + kSector);
  ASSERT_TRUE(layer->sync().ok());
  // Durable now: chunk 2's two sectors take the start of chunk 0's old place.
  write(*layer, 2, 4 * kSector, 2 * kSector, 0x33);
  EXPECT_EQ(file_size(data_path()), kChunk + kSector);
  EXPECT_EQ(layer->data_bytes(), 3 * kSector);
  expect_contents(*layer);
  auto reopened = sync_and_reopen(layer);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->find(0)->state, ChunkState::kZero);
  expect_contents(*reopened);
}

// Pieces freed side by side become one free run, which serves a larger piece later.
TEST_F(PackedLayerTest, NeighbouringFreedPiecesServeAWholeChunk) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  for (uint64_t chunk = 0; chunk < 4; ++chunk) {
    write(*layer, chunk, 0, 4 * kSector, static_cast<uint8_t>(chunk + 1));  // [4 * chunk, +4) sectors
  }
  write(*layer, 9, 0, kSector, 0x99);  // [16, 17)
  ASSERT_TRUE(layer->sync().ok());
  for (uint64_t chunk = 0; chunk < 4; ++chunk) {
    layer->publish_zero(chunk);
    images_.erase(chunk);
  }
  ASSERT_TRUE(layer->sync().ok());
  const uint64_t size_before = file_size(data_path());
  write(*layer, 5, 0, kChunk, 0x55);  // 16 sectors: the four freed pieces together
  EXPECT_EQ(file_size(data_path()), size_before);
  expect_contents(*layer);
  auto reopened = sync_and_reopen(layer);
  ASSERT_NE(reopened, nullptr);
  expect_contents(*reopened);
}

// A restart forgets the free lists; the reopened layer finds the free space again as
// the gaps between its pieces, so a volume that restarts often does not grow its layer.
TEST_F(PackedLayerTest, SpaceFreedBeforeAReopenIsReusedAfterIt) {
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  write(*layer, 0, 0, kChunk, 0x11);                 // [0, 16) sectors
  write(*layer, 1, 0, 2 * kSector, 0x22);            // [16, 18)
  write(*layer, 2, 0, kChunk, 0x33);                 // [18, 34)
  write(*layer, 3, 3 * kSector, kSector, 0x44);      // [34, 35)
  ASSERT_TRUE(layer->sync().ok());
  layer->publish_zero(0);
  layer->publish_zero(2);
  images_.erase(0);
  images_.erase(2);
  ASSERT_TRUE(layer->sync().ok());
  layer.reset();
  const uint64_t size_before = file_size(data_path());
  ASSERT_EQ(size_before, 35 * kSector);

  auto reopened = reopen();
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->data_bytes(), 3 * kSector);
  // 32 free sectors in two gaps of 16: two whole chunks and eight single sectors fit.
  write(*reopened, 10, 0, kChunk, 0x55);
  write(*reopened, 11, 0, kChunk, 0x66);
  EXPECT_EQ(file_size(data_path()), size_before);
  write(*reopened, 12, 5 * kSector, kSector, 0x77);  // no gap left: appended
  EXPECT_EQ(file_size(data_path()), size_before + kSector);
  expect_contents(*reopened);
  auto again = sync_and_reopen(reopened);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->find(0)->state, ChunkState::kZero);
  expect_contents(*again);
}

// Random writes, zeroings and syncs against a reference; reopened halfway and at the
// end (the second half allocates from the gaps the reopen found).
TEST_F(PackedLayerTest, RandomWritesMatchAReference) {
  for (uint64_t seed : seeds_to_run(5)) {
    std::cout << "PackedLayerTest seed " << seed << " (replay: AMIRROR_SEED=" << seed << ")\n";
    random_writes(seed);
    if (HasFailure()) return;
  }
}

void PackedLayerTest::random_writes(uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::filesystem::remove(data_path());
  std::filesystem::remove(scratch_.sub(Layer::map_file_name(1)));
  images_.clear();
  std::mt19937_64 random(seed);
  auto layer = create();
  ASSERT_NE(layer, nullptr);
  for (int step = 0; step < 4000; ++step) {
    if (step == 2000) {
      layer = sync_and_reopen(layer);
      ASSERT_NE(layer, nullptr);
      expect_contents(*layer);
    }
    const uint64_t chunk = random() % 24;
    const uint64_t what = random() % 20;
    if (what == 0) {
      layer->publish_zero(chunk);
      images_.erase(chunk);
    } else if (what == 1) {
      ASSERT_TRUE(layer->sync().ok());
    } else {
      const uint64_t offset = random() % kChunk;
      const uint64_t length = 1 + random() % std::min<uint64_t>(kChunk - offset, 3 * kSector);
      if (layer->find(chunk) && layer->find(chunk)->state == ChunkState::kZero) {
        write(*layer, chunk, 0, kChunk, 0);  // as Volume does: a zeroed chunk is filled whole
      }
      write(*layer, chunk, offset, length, static_cast<uint8_t>(random()));
    }
  }
  expect_contents(*layer);
  ASSERT_TRUE(layer->sync().ok());
  EXPECT_LE(layer->data_bytes(), 24 * kChunk);
  layer.reset();
  auto reopened = reopen();
  ASSERT_NE(reopened, nullptr);
  expect_contents(*reopened);
}

// Format-3 maps written by hand: header, then one batch of 32-byte records.
class PackedMapTest : public PackedLayerTest {
 protected:
  struct Record {
    uint64_t chunk_index, defined, piece_sectors, piece_offset;
  };
  void write_map(const std::vector<Record>& records) {
    std::string map;
    map.append("AMLAYMAP", 8);
    append_u32(map, 3);
    append_u32(map, 0);
    append_u64(map, 1);
    append_u64(map, kChunk);
    append_u64(map, checksum64(map.data(), map.size()));
    const size_t batch = map.size();
    append_u32(map, 0x31424d41);
    append_u32(map, static_cast<uint32_t>(records.size()));
    append_u64(map, 1);
    for (const Record& record : records) {
      append_u64(map, record.chunk_index);
      append_u64(map, record.defined);
      append_u64(map, record.piece_sectors);
      append_u64(map, record.piece_offset);
    }
    append_u64(map, checksum64(map.data() + batch, map.size() - batch));
    std::ofstream(scratch_.sub(Layer::map_file_name(1)), std::ios::binary | std::ios::trunc)
        .write(map.data(), static_cast<std::streamsize>(map.size()));
    std::ofstream(data_path(), std::ios::binary | std::ios::app).flush();
  }
  std::string open_error() {
    auto layer = Layer::open(fs_, scratch_.path(), 1, kChunk);
    return layer.ok() ? "opened" : layer.status().to_string();
  }
};

TEST_F(PackedMapTest, ARecordDefiningASectorWithNoPlaceIsRefused) {
  write_map({{0, 0x3, 0x1, 0}});
  EXPECT_NE(open_error().find("defines sectors it holds no piece for"), std::string::npos) << open_error();
}

TEST_F(PackedMapTest, TwoPiecesInOnePlaceAreRefused) {
  write_map({{0, 0x3, 0x3, 0}, {1, 0x1, 0x1, kSector}});
  EXPECT_NE(open_error().find("is mapped twice"), std::string::npos) << open_error();
}

TEST_F(PackedMapTest, APieceOffTheSectorGridIsRefused) {
  write_map({{0, 0x1, 0x1, 100}});
  EXPECT_NE(open_error().find("bad piece"), std::string::npos) << open_error();
}

TEST_F(PackedMapTest, AZeroedChunksPiecesAreNoLongerMapped) {
  write_map({{0, 0x3, 0x3, 0}, {0, 0, 0, ~uint64_t{0}}, {1, 0x1, 0x1, kSector}});
  EXPECT_EQ(open_error(), "opened");
}

// Volume level: a layer of scattered 4 KiB writes into 64 KiB chunks is as small as
// the writes, and a freeze after a merge writes over the merged layer's file (kept as
// a spare) without making it any bigger.
TEST(PackedVolumeTest, ScatteredWritesKeepLayerFilesAsSmallAsTheWrites) {
  ScratchDir dir("packed-volume");
  VolumeOptions options;
  options.size_bytes = 2 * kMiB;
  options.chunk_size_bytes = kChunk;
  auto created = Volume::create(posix_file_system(), dir.path(), options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();
  const uint64_t seed = seeds_to_run(1).front();
  std::cout << "PackedVolumeTest seed " << seed << " (replay: AMIRROR_SEED=" << seed << ")\n";
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 random(seed);
  std::vector<uint8_t> image(options.size_bytes, 0);
  uint64_t largest_layer_file = 0;
  for (int cycle = 0; cycle < 6; ++cycle) {
    for (uint64_t chunk = 0; chunk < 32; ++chunk) {  // one 4 KiB write into each chunk
      const uint64_t offset = chunk * kChunk + (random() % 16) * kSector;
      std::vector<uint8_t> data(kSector, static_cast<uint8_t>(random()));
      ASSERT_TRUE(volume.write(offset, data).ok());
      std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(offset));
    }
    ASSERT_TRUE(volume.flush().ok());
    const std::string active = dir.sub(Layer::data_file_name(volume.layers().back().id));
    EXPECT_EQ(file_size(active), 32 * kSector) << "cycle " << cycle;
    largest_layer_file = std::max(largest_layer_file, file_size(active));
    ASSERT_TRUE(volume.freeze().ok());
    while (volume.points().size() > 1) ASSERT_TRUE(volume.merge_oldest().ok());
    std::vector<uint8_t> bytes(options.size_bytes);
    ASSERT_TRUE(volume.read(0, bytes).ok());
    ASSERT_TRUE(bytes == image) << "cycle " << cycle;
  }
  EXPECT_EQ(largest_layer_file, 32 * kSector);
}

// A whole-chunk write of a short last chunk defines its sectors up to the chunk's end
// (and marks the chunk wholly dirty); after a resize grows the chunk, a write into one
// of its new sectors must define that sector too (found by the model test, seed 11).
TEST(PackedVolumeTest, AWriteIntoAShortChunkGrownByAResizeIsKept) {
  ScratchDir dir("packed-grow");
  VolumeOptions options;
  options.size_bytes = 6 * kChunk + 2 * kSector + 1024;  // chunk 6 is short: 2.25 sectors
  options.chunk_size_bytes = kChunk;
  std::vector<uint8_t> expected(7 * kChunk, 0);
  {
    auto created = Volume::create(posix_file_system(), dir.path(), options);
    ASSERT_TRUE(created.ok()) << created.status().to_string();
    Volume& volume = *created.value();
    std::vector<uint8_t> whole(2 * kSector + 1024, 0x66);
    ASSERT_TRUE(volume.write(6 * kChunk, whole).ok());
    std::fill(expected.begin() + 6 * kChunk, expected.begin() + 6 * kChunk + 2 * kSector + 1024, 0x66);
    ASSERT_TRUE(volume.resize(7 * kChunk).ok());
    std::vector<uint8_t> five(5, 0x77);
    ASSERT_TRUE(volume.write(6 * kChunk + 3 * kSector + 27, five).ok());
    std::fill(expected.begin() + 6 * kChunk + 3 * kSector + 27, expected.begin() + 6 * kChunk + 3 * kSector + 32, 0x77);
    std::vector<uint8_t> bytes(7 * kChunk);
    ASSERT_TRUE(volume.read(0, bytes).ok());
    EXPECT_TRUE(bytes == expected) << "before reopen";
    ASSERT_TRUE(volume.flush().ok());
  }
  auto reopened = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  std::vector<uint8_t> bytes(7 * kChunk);
  ASSERT_TRUE(reopened.value()->read(0, bytes).ok());
  EXPECT_TRUE(bytes == expected) << "after reopen";
}

// A layer written by the previous version (map format 2: chunk-sized slots, sector
// masks) is read, written into and merged.
TEST(PackedVolumeTest, Format2LayersAreStillReadAndAppendedTo) {
  ScratchDir dir("format2");
  VolumeOptions options;
  options.size_bytes = kMiB;
  options.chunk_size_bytes = kChunk;
  uint64_t layer_id = 0;
  {
    auto created = Volume::create(posix_file_system(), dir.path(), options);
    ASSERT_TRUE(created.ok()) << created.status().to_string();
    ASSERT_TRUE(created.value()->flush().ok());
    layer_id = created.value()->layers().back().id;
  }
  // Chunk 3 in slot 1 with sector 2 defined (bytes 8 KiB .. 12 KiB of the slot).
  {
    std::vector<uint8_t> data(2 * kChunk, 0xEE);  // stale bytes everywhere else
    std::fill(data.begin() + kChunk + 2 * kSector, data.begin() + kChunk + 3 * kSector, 0x33);
    std::ofstream(dir.sub(Layer::data_file_name(layer_id)), std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    std::string map;
    map.append("AMLAYMAP", 8);
    append_u32(map, 2);
    append_u32(map, 0);
    append_u64(map, layer_id);
    append_u64(map, kChunk);
    append_u64(map, checksum64(map.data(), map.size()));
    const size_t batch = map.size();
    append_u32(map, 0x31424d41);
    append_u32(map, 1);
    append_u64(map, 1);
    append_u64(map, 3);    // chunk
    append_u64(map, 1);    // slot
    append_u64(map, 0x4);  // defined: sector 2
    append_u64(map, checksum64(map.data() + batch, map.size() - batch));
    std::ofstream(dir.sub(Layer::map_file_name(layer_id)), std::ios::binary | std::ios::trunc)
        .write(map.data(), static_cast<std::streamsize>(map.size()));
  }
  std::vector<uint8_t> expected(kMiB, 0);
  std::fill(expected.begin() + 3 * kChunk + 2 * kSector, expected.begin() + 3 * kChunk + 3 * kSector, 0x33);
  auto check = [&](Volume& volume, const char* when) {
    std::vector<uint8_t> bytes(kMiB);
    ASSERT_TRUE(volume.read(0, bytes).ok());
    EXPECT_TRUE(bytes == expected) << when;
  };
  {
    auto opened = Volume::open(posix_file_system(), dir.path());
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    Volume& volume = *opened.value();
    check(volume, "opened");
    std::vector<uint8_t> data(100, 0x55);  // a new sector of chunk 3, and a new chunk 0
    ASSERT_TRUE(volume.write(3 * kChunk + 5 * kSector + 10, data).ok());
    ASSERT_TRUE(volume.write(10, data).ok());
    std::fill(expected.begin() + 3 * kChunk + 5 * kSector + 10, expected.begin() + 3 * kChunk + 5 * kSector + 110, 0x55);
    std::fill(expected.begin() + 10, expected.begin() + 110, 0x55);
    check(volume, "written");
    ASSERT_TRUE(volume.flush().ok());
  }
  auto reopened = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  check(*reopened.value(), "reopened");
  ASSERT_TRUE(reopened.value()->freeze().ok());
  while (reopened.value()->points().size() > 1) ASSERT_TRUE(reopened.value()->merge_oldest().ok());
  check(*reopened.value(), "merged");
}

}  // namespace
}  // namespace amirror::testing
