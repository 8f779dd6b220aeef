// SPDX-License-Identifier: Apache-2.0
// Points that are not numbered 1, 2, 3 (a replica freezing as the source's cycles),
// going back to an older point, read-only volumes, lineage, and opening format 1.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <sstream>

#include "base/checksum.h"
#include "base/coding.h"
#include "store/volume.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 4096;

std::unique_ptr<Volume> make_volume(const std::string& dir, uint64_t chunks = 16) {
  VolumeOptions options;
  options.size_bytes = chunks * kChunk;
  options.chunk_size_bytes = kChunk;
  auto volume = Volume::create(posix_file_system(), dir, options);
  EXPECT_TRUE(volume.ok()) << volume.status().to_string();
  return std::move(volume).value();
}

std::unique_ptr<Volume> reopen(const std::string& dir) {
  auto volume = Volume::open(posix_file_system(), dir);
  EXPECT_TRUE(volume.ok()) << volume.status().to_string();
  return std::move(volume).value();
}

void fill_chunk(Volume& volume, uint64_t chunk, uint8_t value) {
  std::vector<uint8_t> data(kChunk, value);
  ASSERT_TRUE(volume.write_staged(chunk * kChunk, data).ok());
}

uint8_t chunk_at(Volume& volume, uint64_t cycle, uint64_t chunk) {
  std::vector<uint8_t> data(kChunk);
  Status status = volume.read_frozen(cycle, chunk * kChunk, data);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return data[0];
}

std::vector<uint64_t> cycles_of(const Volume& volume) {
  std::vector<uint64_t> cycles;
  for (const PointInfo& point : volume.points()) cycles.push_back(point.cycle);
  return cycles;
}

TEST(VolumePointsTest, FreezeAsSkipsNumbersAndEveryPointReadsBack) {
  ScratchDir dir("points");
  auto volume = make_volume(dir.path());
  fill_chunk(*volume, 1, 0x11);
  ASSERT_TRUE(volume->freeze_as(5, 5000).ok());
  fill_chunk(*volume, 1, 0x22);
  fill_chunk(*volume, 2, 0x22);
  ASSERT_TRUE(volume->freeze_as(9, 9000).ok());
  EXPECT_FALSE(volume->freeze_as(9, 9001).ok()) << "a point number must increase";
  EXPECT_FALSE(volume->freeze_as(3, 9001).ok());
  EXPECT_EQ(volume->cycle(), 9u);
  EXPECT_EQ(cycles_of(*volume), (std::vector<uint64_t>{0, 5, 9}));
  EXPECT_EQ(volume->freeze_time_unix_ms(5), 5000);
  EXPECT_FALSE(volume->has_point(7));
  std::vector<uint8_t> out(kChunk);
  EXPECT_EQ(volume->read_frozen(7, 0, out).code(), ErrorCode::kOutOfRange);

  auto delta = volume->changed_chunks(5, 9);
  ASSERT_TRUE(delta.ok());
  ASSERT_EQ(delta.value().size(), 2u);
  EXPECT_EQ(delta.value()[0].chunk_index, 1u);
  EXPECT_EQ(delta.value()[1].chunk_index, 2u);

  volume = reopen(dir.path());
  EXPECT_EQ(cycles_of(*volume), (std::vector<uint64_t>{0, 5, 9}));
  EXPECT_EQ(chunk_at(*volume, 0, 1), 0);
  EXPECT_EQ(chunk_at(*volume, 5, 1), 0x11);
  EXPECT_EQ(chunk_at(*volume, 9, 1), 0x22);
  ASSERT_TRUE(volume->merge_oldest().ok());
  EXPECT_EQ(cycles_of(*volume), (std::vector<uint64_t>{5, 9}));
  EXPECT_EQ(volume->base_cycle(), 5u);
  EXPECT_EQ(volume->freeze_time_unix_ms(5), 5000);
  EXPECT_EQ(chunk_at(*volume, 5, 2), 0);
  EXPECT_EQ(chunk_at(*volume, 9, 2), 0x22);
  // A primary's next freeze continues from the last number.
  auto next = volume->freeze();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next.value(), 10u);
}

TEST(VolumePointsTest, DiscardAfterForgetsNewerPointsAndActiveWrites) {
  ScratchDir dir("discard");
  auto volume = make_volume(dir.path());
  fill_chunk(*volume, 0, 1);
  ASSERT_TRUE(volume->freeze().ok());  // 1
  fill_chunk(*volume, 0, 2);
  fill_chunk(*volume, 3, 2);
  ASSERT_TRUE(volume->freeze().ok());  // 2
  fill_chunk(*volume, 0, 3);
  fill_chunk(*volume, 4, 3);
  ASSERT_TRUE(volume->flush().ok());
  EXPECT_EQ(volume->active_changes().size(), 2u);
  EXPECT_EQ(volume->discard_after(7).code(), ErrorCode::kOutOfRange);
  ASSERT_TRUE(volume->discard_after(1).ok());
  EXPECT_EQ(volume->cycle(), 1u);
  EXPECT_TRUE(volume->active_changes().empty());
  std::vector<uint8_t> all(volume->size_bytes());
  ASSERT_TRUE(volume->read(0, all).ok());
  EXPECT_EQ(all[0], 1);
  EXPECT_EQ(all[3 * kChunk], 0);
  EXPECT_EQ(all[4 * kChunk], 0);
  // Nothing of the dropped layers survives a reopen, and numbering goes on from 1.
  volume = reopen(dir.path());
  ASSERT_TRUE(volume->read(0, all).ok());
  EXPECT_EQ(all[0], 1);
  EXPECT_EQ(all[3 * kChunk], 0);
  EXPECT_EQ(cycles_of(*volume), (std::vector<uint64_t>{0, 1}));
  fill_chunk(*volume, 5, 9);
  auto next = volume->freeze();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next.value(), 2u);
  EXPECT_EQ(chunk_at(*volume, 2, 5), 9);
  EXPECT_EQ(chunk_at(*volume, 2, 3), 0);
  // Only the files volume.meta names are left.
  auto names = posix_file_system().list_dir(dir.path());
  ASSERT_TRUE(names.ok());
  size_t layer_files = 0;
  for (const auto& name : names.value()) layer_files += name.rfind("layer-", 0) == 0;
  EXPECT_EQ(layer_files, 2u * volume->layers().size());
}

TEST(VolumePointsTest, ReadOnlyRefusesClientWritesAndPersists) {
  ScratchDir dir("readonly");
  auto volume = make_volume(dir.path());
  ASSERT_TRUE(volume->set_read_only(true).ok());
  std::vector<uint8_t> data(kChunk, 7);
  EXPECT_EQ(volume->write(0, data).code(), ErrorCode::kReadOnly);
  EXPECT_EQ(volume->write_zeroes(0, kChunk).code(), ErrorCode::kReadOnly);
  EXPECT_EQ(volume->trim(0, kChunk).code(), ErrorCode::kReadOnly);
  EXPECT_TRUE(volume->write_staged(0, data).ok());
  volume = reopen(dir.path());
  EXPECT_TRUE(volume->read_only());
  EXPECT_EQ(volume->write(0, data).code(), ErrorCode::kReadOnly);
  ASSERT_TRUE(volume->set_read_only(false).ok());
  volume = reopen(dir.path());
  EXPECT_TRUE(volume->write(0, data).ok());
}

// A switchover holds client writes while its last cycle is copied: a write that comes
// in meanwhile lands in no point, and fails once the volume turned read-only; if the
// switchover is given up instead, it goes on and lands.
TEST(VolumePointsTest, HeldWritesWaitThenFailOrGoOn) {
  ScratchDir dir("held");
  auto volume = make_volume(dir.path());
  for (bool switched : {true, false}) {
    SCOPED_TRACE(switched ? "switched over" : "given up");
    volume->hold_writes();
    std::atomic<bool> started{false};
    Status result;
    std::thread writer([&] {
      std::vector<uint8_t> data(kChunk, switched ? 0x5a : 0x6b);
      started = true;
      result = volume->write(3 * kChunk, data);
    });
    while (!started.load()) std::this_thread::yield();
    auto cycle = volume->freeze();  // the last cycle, while the writer waits or is refused
    ASSERT_TRUE(cycle.ok());
    if (switched) ASSERT_TRUE(volume->set_read_only(true).ok());
    volume->release_writes();
    writer.join();
    EXPECT_EQ(chunk_at(*volume, cycle.value(), 3), 0) << "a held write reached the last cycle";
    if (switched) {
      EXPECT_EQ(result.code(), ErrorCode::kReadOnly);
      EXPECT_TRUE(volume->active_changes().empty()) << "a held write landed after the switchover";
      ASSERT_TRUE(volume->set_read_only(false).ok());
    } else {
      EXPECT_TRUE(result.ok()) << result.to_string();
      std::vector<uint8_t> now(kChunk);
      ASSERT_TRUE(volume->read(3 * kChunk, now).ok());
      EXPECT_EQ(now[0], 0x6b);
    }
  }
}

TEST(VolumePointsTest, LineageIsKeptAcrossReopen) {
  ScratchDir dir("lineage");
  auto volume = make_volume(dir.path());
  VolumeLineage lineage = volume->lineage();
  EXPECT_EQ(lineage.uuid.size(), 32u);
  EXPECT_TRUE(lineage.origin_uuid.empty());
  ScratchDir other("lineage-other");
  EXPECT_NE(make_volume(other.path())->lineage().uuid, lineage.uuid);
  lineage.origin_uuid = "0123456789abcdef0123456789abcdef";
  lineage.origin_point = 42;
  ASSERT_TRUE(volume->set_lineage(lineage).ok());
  volume = reopen(dir.path());
  EXPECT_EQ(volume->lineage().uuid, lineage.uuid);
  EXPECT_EQ(volume->lineage().origin_uuid, lineage.origin_uuid);
  EXPECT_EQ(volume->lineage().origin_point, 42u);
}

// A volume.meta as format 1 wrote it (docs/formats/store.md, "Format 1").
std::string format_1_meta(uint64_t size, uint64_t chunk, uint64_t cycle, uint64_t base_cycle,
                          const std::string& group) {
  std::string meta = "AMVOLUME";
  append_u32(meta, 1);
  append_u32(meta, 0);
  append_u64(meta, size);
  append_u64(meta, chunk);
  append_u64(meta, cycle);
  append_u64(meta, base_cycle);
  append_u64(meta, 0);
  append_u32(meta, static_cast<uint32_t>(group.size()));
  meta += group;
  append_u32(meta, static_cast<uint32_t>(cycle - base_cycle + 1));
  for (uint64_t c = base_cycle; c <= cycle; ++c) append_u64(meta, 1000 * c);
  append_u64(meta, checksum64(meta.data(), meta.size()));
  return meta;
}

TEST(VolumePointsTest, Format1VolumeOpensAndIsUpgradedOnce) {
  ScratchDir dir("format1");
  {
    auto volume = make_volume(dir.path());
    fill_chunk(*volume, 0, 1);
    ASSERT_TRUE(volume->freeze().ok());
    fill_chunk(*volume, 1, 2);
    ASSERT_TRUE(volume->freeze().ok());
    fill_chunk(*volume, 2, 3);
    ASSERT_TRUE(volume->flush().ok());
  }
  {
    std::ofstream out(dir.sub("volume.meta"), std::ios::binary | std::ios::trunc);
    out << format_1_meta(16 * kChunk, kChunk, 2, 0, "g");
  }
  auto volume = reopen(dir.path());
  EXPECT_EQ(cycles_of(*volume), (std::vector<uint64_t>{0, 1, 2}));
  EXPECT_EQ(volume->freeze_time_unix_ms(2), 2000);
  EXPECT_EQ(volume->group(), "g");
  EXPECT_EQ(chunk_at(*volume, 1, 0), 1);
  EXPECT_EQ(chunk_at(*volume, 2, 1), 2);
  std::vector<uint8_t> data(kChunk);
  ASSERT_TRUE(volume->read(2 * kChunk, data).ok());
  EXPECT_EQ(data[0], 3) << "the active layer's writes survive the upgrade";
  std::string uuid = volume->lineage().uuid;
  EXPECT_EQ(uuid.size(), 32u);
  volume = reopen(dir.path());
  EXPECT_EQ(volume->lineage().uuid, uuid) << "the id given at the upgrade is kept";
  std::ifstream in(dir.sub("volume.meta"), std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  EXPECT_EQ(get_u32(reinterpret_cast<const uint8_t*>(contents.str().data()) + 8), 2u);
}

}  // namespace
}  // namespace amirror::testing
