// SPDX-License-Identifier: Apache-2.0
// Volume::resize (grow only): the new region is writable and survives reopen; points
// frozen before read zeros past their old end, including the old short last chunk
// whose slot held someone else's bytes; copy-on-first-write of the grown chunk;
// refusals change nothing; a crash at every file operation of a resize leaves the
// old size or the new one, wholly, with every point intact; and growth beside client
// reads, writes and freezes (meant for ThreadSanitizer too). (tests/store/model_test.cc
// also grows volumes among its random operations and crashes.)
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <thread>

#include "store/volume.h"
#include "testing/fault_file_system.h"
#include "testing/sector_stamp.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 4 * kKiB;
constexpr uint64_t kOldSize = 10 * kKiB;  // chunk 2 is short: 2 KiB
constexpr uint64_t kNewSize = 20 * kKiB;
constexpr uint64_t kShortChunk = 2;

std::vector<uint8_t> pattern(uint64_t length, uint8_t seed) {
  std::vector<uint8_t> data(length);
  for (uint64_t i = 0; i < length; i++) data[i] = static_cast<uint8_t>(seed + i * 13 + i / 251);
  return data;
}

std::vector<uint8_t> read_all(Volume& volume) {
  std::vector<uint8_t> out(volume.size_bytes());
  Status status = volume.read(0, out);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

std::vector<uint8_t> read_point(Volume& volume, uint64_t cycle) {
  std::vector<uint8_t> out(volume.size_bytes());
  Status status = volume.read_frozen(cycle, 0, out);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

// `image` padded with zeros to `size`: how a point of the old size reads after growth.
std::vector<uint8_t> padded(std::vector<uint8_t> image, uint64_t size) {
  image.resize(size, 0);
  return image;
}

void copy_into(std::vector<uint8_t>& image, uint64_t offset, const std::vector<uint8_t>& data) {
  std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(offset));
}

VolumeOptions options(uint64_t size_bytes) {
  VolumeOptions result;
  result.size_bytes = size_bytes;
  result.chunk_size_bytes = kChunk;
  return result;
}

std::string read_file(const std::string& path) {
  auto contents = read_small_file(posix_file_system(), path, 1 << 20);
  EXPECT_TRUE(contents.ok()) << contents.status().to_string();
  return contents.ok() ? contents.value() : "";
}

// Puts the short last chunk into a slot that held a whole chunk of other bytes before
// (slots are reused once a zeroing is durable), so the slot's bytes past the old end
// are garbage, not zeros: exactly what a grown chunk must never show.
// REQUIRES: the active layer is empty (a fresh volume, or just after a freeze).
void short_chunk_into_a_reused_slot(Volume& volume, std::vector<uint8_t>& image) {
  ASSERT_TRUE(volume.write(0, std::vector<uint8_t>(kChunk, 0xAB)).ok());  // chunk 0: slot 0
  ASSERT_TRUE(volume.flush().ok());
  ASSERT_TRUE(volume.trim(0, kChunk).ok());  // slot 0 free once this is durable
  ASSERT_TRUE(volume.flush().ok());
  std::vector<uint8_t> tail = pattern(kOldSize - kShortChunk * kChunk, 7);
  ASSERT_TRUE(volume.write(kShortChunk * kChunk, tail).ok());  // whole short chunk: reuses slot 0
  std::fill(image.begin(), image.begin() + kChunk, 0);
  copy_into(image, kShortChunk * kChunk, tail);
  std::string data_file = volume.dir() + "/" + Layer::data_file_name(volume.layers().back().id);
  ASSERT_EQ(std::filesystem::file_size(data_file), kChunk) << "the short chunk did not reuse slot 0";
}

TEST(VolumeResizeTest, GrowsOnlineAndOldPointsReadZerosPastTheirEnd) {
  ScratchDir dir("resize");
  auto created = Volume::create(posix_file_system(), dir.path(), options(kOldSize));
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& v = *created.value();
  std::vector<uint8_t> image = pattern(kOldSize, 1);
  ASSERT_TRUE(v.write(0, image).ok());
  ASSERT_TRUE(v.freeze().ok());
  short_chunk_into_a_reused_slot(v, image);
  auto first = v.freeze();  // holds the short chunk in the reused slot
  ASSERT_TRUE(first.ok());
  const std::vector<uint8_t> point1 = image;
  // The active layer holds the short chunk too (in place at the resize).
  std::vector<uint8_t> active_tail = pattern(kOldSize - kShortChunk * kChunk - 512, 9);
  ASSERT_TRUE(v.write(kShortChunk * kChunk + 512, active_tail).ok());
  copy_into(image, kShortChunk * kChunk + 512, active_tail);

  auto resized = v.resize(kNewSize);
  ASSERT_TRUE(resized.ok()) << resized.status().to_string();
  EXPECT_EQ(resized.value(), kOldSize);
  EXPECT_EQ(v.size_bytes(), kNewSize);
  EXPECT_EQ(v.geometry().chunk_count(), 5u);
  EXPECT_EQ(read_all(v), padded(image, kNewSize)) << "the new region must read as zeros";
  EXPECT_EQ(read_point(v, *first), padded(point1, kNewSize))
      << "a point frozen before the resize exposed bytes past its old end";
  EXPECT_EQ(std::filesystem::file_size(dir.path() + "/base.img"), kNewSize);

  // Writes into the new region and across the old end, then a reopen.
  image = padded(image, kNewSize);
  std::vector<uint8_t> across = pattern(3 * kKiB, 21);  // [9 KiB, 12 KiB): old end inside
  ASSERT_TRUE(v.write(9 * kKiB, across).ok());
  copy_into(image, 9 * kKiB, across);
  std::vector<uint8_t> last = pattern(kNewSize - 16 * kKiB, 31);
  ASSERT_TRUE(v.write(16 * kKiB, last, /*fua=*/true).ok());
  copy_into(image, 16 * kKiB, last);
  auto second = v.freeze();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(read_point(v, *second), image);
  EXPECT_EQ(read_point(v, *first), padded(point1, kNewSize));
  created.value().reset();

  auto reopened = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  Volume& r = *reopened.value();
  EXPECT_EQ(r.size_bytes(), kNewSize);
  EXPECT_EQ(read_all(r), image);
  EXPECT_EQ(read_point(r, *first), padded(point1, kNewSize));
  // Merging the old points into the base keeps every point right.
  ASSERT_TRUE(r.merge_oldest().ok());
  ASSERT_TRUE(r.merge_oldest().ok());
  EXPECT_EQ(r.base_cycle(), *first);
  EXPECT_EQ(read_point(r, *first), padded(point1, kNewSize));
  EXPECT_EQ(read_point(r, *second), image);
  EXPECT_EQ(read_all(r), image);
  // What the store reports for deltas covers the new region.
  auto allocated = r.allocated_chunks(*second);
  ASSERT_TRUE(allocated.ok());
  EXPECT_EQ(allocated.value(), (std::vector<uint64_t>{1, 2, 4})) << "chunk 0 was trimmed, chunk 3 never written";
}

// The grown short chunk's first write after a freeze copies the chunk from the point
// below: its old bytes, then zeros (not the reused slot's garbage), then the write.
TEST(VolumeResizeTest, CopyOnFirstWriteOfTheGrownChunk) {
  ScratchDir dir("resize-cow");
  auto created = Volume::create(posix_file_system(), dir.path(), options(kOldSize));
  ASSERT_TRUE(created.ok());
  Volume& v = *created.value();
  std::vector<uint8_t> image(kOldSize, 0);
  short_chunk_into_a_reused_slot(v, image);
  auto first = v.freeze();
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(v.resize(kNewSize).ok());
  image = padded(image, kNewSize);
  std::vector<uint8_t> small = pattern(512, 41);  // inside the grown part of chunk 2
  ASSERT_TRUE(v.write(11 * kKiB, small).ok());
  copy_into(image, 11 * kKiB, small);
  EXPECT_EQ(read_all(v), image);
  auto second = v.freeze();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(read_point(v, *second), image);
  auto delta = v.changed_chunks(*first, *second);
  ASSERT_TRUE(delta.ok());
  ASSERT_EQ(delta.value().size(), 1u);
  EXPECT_EQ(delta.value()[0].chunk_index, kShortChunk);
  // A short chunk grown twice: only the bytes the second growth exposes are zeroed.
  ASSERT_TRUE(v.resize(kNewSize + 512).ok());
  ASSERT_TRUE(v.write(kNewSize, pattern(512, 51)).ok());
  ASSERT_TRUE(v.resize(kNewSize + 8 * kKiB).ok());
  std::vector<uint8_t> grown_twice = padded(image, kNewSize + 8 * kKiB);
  copy_into(grown_twice, kNewSize, pattern(512, 51));
  EXPECT_EQ(read_all(v), grown_twice);
  EXPECT_EQ(read_point(v, *second), padded(image, kNewSize + 8 * kKiB));
}

// The active layer holds the short chunk in a reused slot when the volume grows: the
// chunk's new bytes read as zeros right away, and after a crash.
TEST(VolumeResizeTest, TheActiveLayersShortChunkGrowsWithZeros) {
  ScratchDir dir("resize-active", /*in_memory=*/true);
  FaultFileSystem fs;
  auto created = Volume::create(fs, dir.path(), options(kOldSize));
  ASSERT_TRUE(created.ok());
  std::vector<uint8_t> image(kOldSize, 0);
  short_chunk_into_a_reused_slot(*created.value(), image);
  ASSERT_TRUE(created.value()->resize(kNewSize).ok());
  image = padded(image, kNewSize);
  EXPECT_EQ(read_all(*created.value()), image);
  created.value().reset();
  ASSERT_TRUE(fs.drop_unsynced().ok());
  auto reopened = Volume::open(fs, dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(read_all(*reopened.value()), image);
}

TEST(VolumeResizeTest, ShrinkSameAndBadSizesChangeNothing) {
  ScratchDir dir("resize-refused");
  auto created = Volume::create(posix_file_system(), dir.path(), options(kOldSize));
  ASSERT_TRUE(created.ok());
  Volume& v = *created.value();
  ASSERT_TRUE(v.write(0, pattern(kOldSize, 3)).ok());
  ASSERT_TRUE(v.flush().ok());
  const std::string meta_before = read_file(dir.path() + "/volume.meta");
  const std::vector<uint8_t> image = read_all(v);
  auto expect_unchanged = [&](const char* what) {
    EXPECT_EQ(v.size_bytes(), kOldSize) << what;
    EXPECT_EQ(read_file(dir.path() + "/volume.meta"), meta_before) << what;
    EXPECT_EQ(std::filesystem::file_size(dir.path() + "/base.img"), kOldSize) << what;
    EXPECT_EQ(read_all(v), image) << what;
  };

  auto shrink = v.resize(kOldSize - 512);
  ASSERT_FALSE(shrink.ok());
  EXPECT_EQ(shrink.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(shrink.status().message().rfind("shrinking is not supported; ", 0), 0u) << shrink.status().message();
  EXPECT_NE(shrink.status().message().find("10240"), std::string::npos) << shrink.status().message();
  expect_unchanged("shrink");

  auto same = v.resize(kOldSize);
  ASSERT_TRUE(same.ok()) << same.status().to_string();
  EXPECT_EQ(same.value(), kOldSize) << "the same size is a no-op that says the size it kept";
  expect_unchanged("same size");

  auto unaligned = v.resize(kNewSize + 100);
  ASSERT_FALSE(unaligned.ok());
  EXPECT_NE(unaligned.status().message().find(std::to_string(kNewSize + 100)), std::string::npos)
      << unaligned.status().message();
  expect_unchanged("not a multiple of 512");

  auto huge = v.resize(kMaxVolumeSizeBytes + 512);
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("exceeds the maximum"), std::string::npos) << huge.status().message();
  expect_unchanged("beyond the maximum");
  created.value().reset();
  auto reopened = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(reopened.value()->size_bytes(), kOldSize);
}

// A resize that extended base.img and died before volume.meta changed: open() keeps
// the old size and trims base.img back.
TEST(VolumeResizeTest, OpenTrimsABaseLeftLongerByAnInterruptedResize) {
  ScratchDir dir("resize-trim");
  std::vector<uint8_t> image = pattern(kOldSize, 5);
  {
    auto created = Volume::create(posix_file_system(), dir.path(), options(kOldSize));
    ASSERT_TRUE(created.ok());
    ASSERT_TRUE(created.value()->write(0, image).ok());
    ASSERT_TRUE(created.value()->freeze().ok());
    ASSERT_TRUE(created.value()->merge_oldest().ok());  // the data is in base.img
  }
  std::filesystem::resize_file(dir.path() + "/base.img", kNewSize);
  auto reopened = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->size_bytes(), kOldSize);
  EXPECT_EQ(std::filesystem::file_size(dir.path() + "/base.img"), kOldSize);
  EXPECT_EQ(read_all(*reopened.value()), image);
  // A shorter base.img is still damage, not something to guess about.
  reopened.value().reset();
  std::filesystem::resize_file(dir.path() + "/base.img", kOldSize - 512);
  auto damaged = Volume::open(posix_file_system(), dir.path());
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), ErrorCode::kCorruption);
}

// Power loss at every file operation of a resize (fail every mutating operation from
// the n-th on, then drop what was not synced, either all of it or a random part):
// the volume reopens at the old size or the new one, never between; a resize that
// returned ok is durable; the image and every point read as before (zeros past the
// old end); and a resize after the crash works.
TEST(VolumeResizeTest, PowerLossAtEveryStepLeavesTheOldOrTheNewSize) {
  bool saw_old = false, saw_new = false;
  for (uint64_t allowed = 0;; allowed++) {
    for (bool random_subset : {false, true}) {
      SCOPED_TRACE("crash after " + std::to_string(allowed) + " file operations" +
                   (random_subset ? ", random write-back" : ""));
      ScratchDir dir("resize-crash", /*in_memory=*/true);
      FaultFileSystem fs;
      auto created = Volume::create(fs, dir.path(), options(kOldSize));
      ASSERT_TRUE(created.ok());
      std::vector<uint8_t> image = pattern(kOldSize, 11);
      ASSERT_TRUE(created.value()->write(0, image).ok());
      ASSERT_TRUE(created.value()->freeze().ok());
      short_chunk_into_a_reused_slot(*created.value(), image);
      auto first = created.value()->freeze();
      ASSERT_TRUE(first.ok());
      const std::vector<uint8_t> point1 = image;
      std::vector<uint8_t> more = pattern(kChunk, 12);
      ASSERT_TRUE(created.value()->write(kChunk, more).ok());  // in the active layer, not flushed
      copy_into(image, kChunk, more);

      uint64_t failures_before = fs.injected_failure_count();
      fs.fail_after(allowed, ErrorCode::kIo, FaultFileSystem::kOpAllMutating);
      auto resized = created.value()->resize(kNewSize);
      bool faulted = fs.injected_failure_count() != failures_before;
      fs.clear_faults();
      if (!faulted) {
        ASSERT_TRUE(resized.ok()) << resized.status().to_string();
      }
      if (!resized.ok()) {
        EXPECT_EQ(created.value()->size_bytes(), kOldSize) << "a failed resize changed the size";
      }
      created.value().reset();
      ASSERT_TRUE((random_subset ? fs.drop_random_unsynced(allowed) : fs.drop_unsynced()).ok());

      auto reopened = Volume::open(fs, dir.path());
      ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
      Volume& r = *reopened.value();
      uint64_t size = r.size_bytes();
      ASSERT_TRUE(size == kOldSize || size == kNewSize) << "size " << size;
      if (resized.ok()) {
        EXPECT_EQ(size, kNewSize) << "a resize that returned ok was lost";
        EXPECT_EQ(read_all(r), padded(image, kNewSize)) << "a resize is a durable point";
      }
      (size == kOldSize ? saw_old : saw_new) = true;
      EXPECT_EQ(std::filesystem::file_size(dir.path() + "/base.img"), size);
      EXPECT_EQ(read_point(r, *first), padded(point1, size));
      // The active layer's unflushed chunk 1: old or new bytes, nothing else.
      std::vector<uint8_t> now = read_all(r);
      std::vector<uint8_t> before_write = padded(point1, size), after_write = padded(image, size);
      for (uint64_t i = 0; i < size; i++) {
        ASSERT_TRUE(now[i] == before_write[i] || now[i] == after_write[i]) << "byte " << i;
      }
      // And it grows (again) fine after the crash, old points still zero past their end.
      ASSERT_TRUE(r.resize(kNewSize + kChunk).ok());
      EXPECT_EQ(read_point(r, *first), padded(point1, kNewSize + kChunk));
      std::vector<uint8_t> expected = padded(now, kNewSize + kChunk);
      EXPECT_EQ(read_all(r), expected);
      if (::testing::Test::HasFailure()) return;
      if (!faulted && !random_subset) {
        EXPECT_TRUE(saw_old) << "no crash point left the old size";
        EXPECT_TRUE(saw_new) << "no crash point left the new size";
        EXPECT_GT(allowed, 3u) << "a resize of so few file operations cannot be crash-safe as described";
        return;
      }
    }
  }
}

// Two writers stamp sectors (each owns every other sector) anywhere below the size they
// see, a reader reads everything below the size it sees, and a third thread grows the
// volume 40 times (often to a short last chunk) and freezes now and then. No request
// within a size once seen may be refused; every sector reads as zeros or a stamp of its
// owner; at the end each sector holds its owner's last write.
TEST(VolumeResizeTest, GrowsBesideReadsWritesAndFreezes) {
  ScratchDir dir("resize-concurrent");
  auto created = Volume::create(posix_file_system(), dir.path(), options(kOldSize));
  ASSERT_TRUE(created.ok());
  Volume& v = *created.value();
  constexpr int kWriters = 2;
  constexpr uint64_t kGrowths = 40;
  std::atomic<bool> growing{true};
  std::atomic<uint64_t> failures{0};
  std::vector<std::map<uint64_t, uint64_t>> last_sequence(kWriters);  // sector -> sequence
  auto fail = [&](const std::string& what) {
    if (failures.fetch_add(1) == 0) ADD_FAILURE() << what;
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      Random random(100 + static_cast<uint64_t>(w));
      std::vector<uint8_t> sector(kStampSectorBytes);
      for (uint64_t sequence = 1; growing.load() || sequence < 200; ++sequence) {
        uint64_t sectors = v.size_bytes() / kStampSectorBytes;
        uint64_t index = random.uniform(0, sectors / kWriters - 1) * kWriters + static_cast<uint64_t>(w);
        stamp_sector(sector, sequence, index, static_cast<uint64_t>(w));
        Status status = v.write(index * kStampSectorBytes, sector);
        if (!status.ok()) return fail("write: " + status.to_string());
        last_sequence[static_cast<size_t>(w)][index] = sequence;
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<uint8_t> image;
    while (growing.load()) {
      image.resize(v.size_bytes());
      Status status = v.read(0, image);
      if (!status.ok()) return fail("read of a size once seen: " + status.to_string());
      for (uint64_t index = 0; index < image.size() / kStampSectorBytes; ++index) {
        StampInfo info = parse_sector(std::span(image).subspan(index * kStampSectorBytes, kStampSectorBytes), index);
        if (info.kind == StampKind::kGarbage || (info.kind == StampKind::kValid && info.tag != index % kWriters)) {
          return fail("sector " + std::to_string(index) + " holds another sector's or writer's bytes");
        }
      }
    }
  });
  Random random(7);
  for (uint64_t growth = 0; growth < kGrowths && failures.load() == 0; ++growth) {
    uint64_t size = v.size_bytes() + (random.percent(50) ? 512 * random.uniform(1, 7) : kChunk);
    auto resized = v.resize(size);
    if (!resized.ok()) fail("resize: " + resized.status().to_string());
    if (growth % 4 == 0 && !v.freeze().ok()) fail("freeze");
  }
  growing.store(false);
  for (std::thread& thread : threads) thread.join();
  ASSERT_EQ(failures.load(), 0u);
  std::vector<uint8_t> image = read_all(v);
  for (uint64_t index = 0; index < image.size() / kStampSectorBytes; ++index) {
    StampInfo info = parse_sector(std::span(image).subspan(index * kStampSectorBytes, kStampSectorBytes), index);
    const auto& written = last_sequence[index % kWriters];
    auto last = written.find(index);
    if (last == written.end()) {
      ASSERT_EQ(info.kind, StampKind::kZero) << "sector " << index << " was never written";
    } else {
      ASSERT_EQ(info.kind, StampKind::kValid) << "sector " << index;
      ASSERT_EQ(info.sequence, last->second) << "sector " << index << " lost its last write";
    }
  }
}

}  // namespace
}  // namespace amirror::testing
