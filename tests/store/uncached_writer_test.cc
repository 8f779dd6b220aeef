// SPDX-License-Identifier: Apache-2.0
// Uncached writes (File::write_uncached_at, store/uncached_writer.h) and the base fill
// built on them: whatever goes around the page cache, the file reads back exactly
// what was written, in the order it was written, and a sync or punch never overtakes
// a write gathered before it.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "store/file_system.h"
#include "store/uncached_writer.h"
#include "store/volume.h"
#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

std::vector<uint8_t> random_bytes(Random& random, size_t length) {
  std::vector<uint8_t> data(length);
  random.fill(data);
  return data;
}

std::vector<uint8_t> read_all(File& file, uint64_t length) {
  std::vector<uint8_t> out(length);
  EXPECT_TRUE(file.read_at(0, out).ok());
  return out;
}

// Aligned blocks, an unaligned tail, an unaligned start and an unaligned buffer: each
// must land exactly, whichever part bypasses the cache.
TEST(UncachedWriteTest, EveryAlignmentReadsBackExactly) {
  ScratchDir dir("uncached");
  auto file = posix_file_system().open(dir.sub("f"), OpenMode::kCreateNew);
  ASSERT_TRUE(file.ok()) << file.status().message();
  Random random(7);
  std::vector<uint8_t> model(1 * kMiB, 0);
  // Cached bytes first, so the uncached writes must replace what the cache holds.
  std::vector<uint8_t> cached = random_bytes(random, model.size());
  ASSERT_TRUE((*file)->write_at(0, cached).ok());
  model = cached;
  UncachedWriter writer(**file, 64 * kKiB);  // the writer's buffer is aligned
  struct Case {
    uint64_t offset;
    size_t length;
  };
  for (Case c : {Case{0, 64 * kKiB}, Case{128 * kKiB, 4096 + 1000}, Case{300 * kKiB + 512, 20 * kKiB},
                 Case{600 * kKiB, 200 * kKiB + 7}, Case{1 * kMiB - 512, 512}}) {
    std::vector<uint8_t> data = random_bytes(random, c.length);
    ASSERT_TRUE(writer.write(c.offset, data).ok());
    ASSERT_TRUE(writer.flush().ok());
    std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>(c.offset));
    ASSERT_EQ(read_all(**file, model.size()), model) << "after the write at " << c.offset;
  }
  // Straight from an unaligned buffer: all of it through the cache.
  std::vector<uint8_t> odd = random_bytes(random, 8 * kKiB + 1);
  ASSERT_TRUE((*file)->write_uncached_at(64 * kKiB, std::span(odd).subspan(1)).ok());
  std::copy(odd.begin() + 1, odd.end(), model.begin() + 64 * kKiB);
  ASSERT_EQ(read_all(**file, model.size()), model);
  ASSERT_TRUE((*file)->sync().ok());
}

// A random stream of mostly adjacent writes of every length, through a small writer,
// against a byte model; a flush at random points. Seeds are printed.
TEST(UncachedWriteTest, RandomStreamsMatchTheModel) {
  for (uint64_t seed : seeds_to_run(20)) {
    std::cout << "UncachedWriteTest seed " << seed << " (replay: AMIRROR_SEED=" << seed << ")\n";
    SCOPED_TRACE("seed " + std::to_string(seed));
    Random random(seed);
    ScratchDir dir("uncached-model");
    auto file = posix_file_system().open(dir.sub("f"), OpenMode::kCreateNew);
    ASSERT_TRUE(file.ok());
    const uint64_t size = 2 * kMiB;
    ASSERT_TRUE((*file)->truncate(size).ok());
    std::vector<uint8_t> model(size, 0);
    UncachedWriter writer(**file, random.uniform(1, 8) * 4096);
    uint64_t offset = 0;
    for (int op = 0; op < 300; op++) {
      if (random.percent(15)) offset = random.uniform(0, size / 512 - 1) * 512;      // a jump
      if (random.percent(5)) offset = random.uniform(0, size - 1);                   // unaligned
      const size_t length = std::min<uint64_t>(size - offset, random.uniform(1, 5) * 4096 - random.uniform(0, 1) * 700);
      std::vector<uint8_t> data = random_bytes(random, length);
      ASSERT_TRUE(writer.write(offset, data).ok());
      std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>(offset));
      offset = (offset + length) % size;
      if (random.percent(10)) {
        ASSERT_TRUE(writer.flush().ok());
        ASSERT_TRUE(writer.empty());
      }
    }
    ASSERT_TRUE(writer.flush().ok());
    ASSERT_EQ(read_all(**file, size), model);
  }
}

// A failed flush keeps the bytes gathered: the next flush writes them.
TEST(UncachedWriteTest, AFailedFlushLosesNothing) {
  ScratchDir dir("uncached-fail", true);
  FaultFileSystem fs;
  auto file = fs.open(dir.sub("f"), OpenMode::kCreateNew);
  ASSERT_TRUE(file.ok());
  Random random(3);
  std::vector<uint8_t> data = random_bytes(random, 12 * kKiB);
  UncachedWriter writer(**file, 64 * kKiB);
  ASSERT_TRUE(writer.write(4096, data).ok());
  fs.fail_after(0, ErrorCode::kIo, FaultFileSystem::kOpWrite);
  EXPECT_FALSE(writer.flush().ok());
  EXPECT_FALSE(writer.empty());
  fs.clear_faults();
  ASSERT_TRUE(writer.flush().ok());
  std::vector<uint8_t> out(data.size());
  ASSERT_TRUE((*file)->read_at(4096, out).ok());
  EXPECT_EQ(out, data);
}

// A file system without O_DIRECT (ramfs refuses to open a file with it; so did tmpfs
// before Linux 6.6): every byte goes through the page cache instead, and a whole base
// fill — aligned writes, a punched (here: zero-written) chunk, a short last chunk —
// reads back exactly, also after a reopen. Needs root to mount ramfs.
TEST(UncachedWriteTest, AFileSystemWithoutDirectIoGetsEveryByteThroughTheCache) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount ramfs";
  ScratchDir dir("uncached-ramfs");
  const std::string mount_point = dir.sub("ramfs");
  std::filesystem::create_directory(mount_point);
  if (::mount("ramfs", mount_point.c_str(), "ramfs", 0, nullptr) != 0) {
    GTEST_SKIP() << "cannot mount ramfs: " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mount_point};

  constexpr uint64_t kChunk = 64 * kKiB;
  constexpr uint64_t kSize = 40 * kChunk + 3 * 512;  // a short last chunk
  VolumeOptions options;
  options.size_bytes = kSize;
  options.chunk_size_bytes = kChunk;
  std::filesystem::create_directory(mount_point + "/v");
  auto created = Volume::create(posix_file_system(), mount_point + "/v", options);
  ASSERT_TRUE(created.ok()) << created.status().message();
  std::unique_ptr<Volume> volume = std::move(*created);
  ASSERT_TRUE(volume->begin_base_fill().ok());
  Random random(5);
  std::vector<uint8_t> model(kSize, 0);
  std::vector<uint8_t> data = random_bytes(random, kSize);
  // In pieces of a few chunks: more than one writer buffer's worth in all.
  for (uint64_t offset = 0; offset < kSize; offset += 3 * kChunk) {
    const uint64_t length = std::min<uint64_t>(3 * kChunk, kSize - offset);
    ASSERT_TRUE(volume->write_base_fill(offset, std::span(data).subspan(offset, length)).ok()) << offset;
  }
  model = data;
  ASSERT_TRUE(volume->zero_base_fill(7 * kChunk, kChunk).ok());
  std::fill(model.begin() + 7 * kChunk, model.begin() + 8 * kChunk, 0);
  ASSERT_TRUE(volume->commit_base_fill(1, 1000).ok());
  std::vector<uint8_t> out(kSize);
  ASSERT_TRUE(volume->read(0, out).ok());
  EXPECT_TRUE(out == model) << "the base fill on ramfs differs from what was written";
  volume.reset();
  auto reopened = Volume::open(posix_file_system(), mount_point + "/v");
  ASSERT_TRUE(reopened.ok()) << reopened.status().message();
  ASSERT_TRUE((*reopened)->read(0, out).ok());
  EXPECT_TRUE(out == model) << "after a reopen";
}

class BaseFillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VolumeOptions options;
    options.size_bytes = kSize;
    options.chunk_size_bytes = kChunk;
    auto created = Volume::create(posix_file_system(), dir_.path(), options);
    ASSERT_TRUE(created.ok()) << created.status().message();
    volume_ = std::move(*created);
    ASSERT_TRUE(volume_->begin_base_fill().ok());
  }
  std::vector<uint8_t> read_volume() {
    std::vector<uint8_t> out(kSize);
    EXPECT_TRUE(volume_->read(0, out).ok());
    return out;
  }
  static constexpr uint64_t kChunk = 64 * kKiB;
  static constexpr uint64_t kSize = 1 * kMiB + 3 * 512;  // a short last chunk
  ScratchDir dir_{"base-fill"};
  std::unique_ptr<Volume> volume_;
  Random random_{11};
};

// Zeroing a chunk after writing it (both only gathered or pending) leaves zeros: the
// gathered write reaches the file before the punch, never after it.
TEST_F(BaseFillTest, AZeroedChunkStaysZeroAfterAGatheredWrite) {
  std::vector<uint8_t> model(kSize, 0);
  std::vector<uint8_t> data = random_bytes(random_, 3 * kChunk);
  ASSERT_TRUE(volume_->write_base_fill(0, data).ok());
  std::copy(data.begin(), data.end(), model.begin());
  ASSERT_TRUE(volume_->zero_base_fill(kChunk, kChunk).ok());
  std::fill(model.begin() + kChunk, model.begin() + 2 * kChunk, 0);
  std::vector<uint8_t> tail = random_bytes(random_, kSize - 15 * kChunk);
  ASSERT_TRUE(volume_->write_base_fill(15 * kChunk, tail).ok());
  std::copy(tail.begin(), tail.end(), model.begin() + 15 * kChunk);
  ASSERT_TRUE(volume_->commit_base_fill(1, 1000).ok());
  EXPECT_EQ(read_volume(), model);
  // And after a reopen, from the file itself.
  volume_.reset();
  auto reopened = Volume::open(posix_file_system(), dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().message();
  volume_ = std::move(*reopened);
  EXPECT_EQ(read_volume(), model);
}

// A fill begun again drops what the abandoned one gathered and never wrote.
TEST_F(BaseFillTest, ABegunAgainFillForgetsWhatTheAbandonedOneGathered) {
  std::vector<uint8_t> stale = random_bytes(random_, kChunk);
  ASSERT_TRUE(volume_->write_base_fill(2 * kChunk, stale).ok());
  ASSERT_TRUE(volume_->begin_base_fill().ok());
  std::vector<uint8_t> data = random_bytes(random_, kChunk);
  ASSERT_TRUE(volume_->write_base_fill(5 * kChunk, data).ok());
  ASSERT_TRUE(volume_->commit_base_fill(1, 1000).ok());
  std::vector<uint8_t> model(kSize, 0);
  std::copy(data.begin(), data.end(), model.begin() + 5 * kChunk);
  EXPECT_EQ(read_volume(), model);
}

}  // namespace
}  // namespace amirror::testing
