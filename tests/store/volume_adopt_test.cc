// SPDX-License-Identifier: Apache-2.0
// A volume whose base is an adopted file (`volume adopt` / `volume release`): the file
// is the base in place (no copy) and changes only by merges; it is locked while the
// volume is open; its size is never changed; merge_everything() leaves the file holding
// exactly the image; and a power loss at every file operation of that merge leaves a
// volume that reopens with every flushed write (and, once it returned, a file that
// holds them all). Block devices take the same path (their size comes from
// BLKGETSIZE64); tests/e2e/test-volume-adopt.sh adopts a loop device.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "store/data_dir.h"
#include "store/volume.h"
#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 4 * kKiB;
constexpr uint64_t kSize = 18 * kKiB;  // the last chunk (4) is short: 2 KiB

std::vector<uint8_t> pattern(uint64_t length, uint8_t seed) {
  std::vector<uint8_t> data(length);
  for (uint64_t i = 0; i < length; i++) data[i] = static_cast<uint8_t>(seed + i * 7 + i / 509);
  return data;
}

void write_file(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::vector<uint8_t> read_all(Volume& volume) {
  std::vector<uint8_t> out(volume.size_bytes());
  Status status = volume.read(0, out);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

VolumeOptions adopt_options(const std::string& path, uint64_t size_bytes = kSize) {
  VolumeOptions options;
  options.size_bytes = size_bytes;
  options.chunk_size_bytes = kChunk;
  options.base_path = path;
  return options;
}

void copy_into(std::vector<uint8_t>& image, uint64_t offset, const std::vector<uint8_t>& data) {
  std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(offset));
}

TEST(VolumeAdoptTest, TheFileIsTheBaseInPlaceAndChangesOnlyByMerges) {
  ScratchDir dir("adopt");
  const std::string file = dir.sub("disk.img");
  const std::vector<uint8_t> original = pattern(kSize, 1);
  write_file(file, original);
  std::filesystem::create_directory(dir.sub("volume"));
  auto created = Volume::create(posix_file_system(), dir.sub("volume"), adopt_options(file));
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();
  EXPECT_EQ(volume.adopted_path(), file);
  EXPECT_FALSE(std::filesystem::exists(dir.sub("volume/base.img"))) << "adopting copied the file";
  EXPECT_EQ(read_all(volume), original);

  std::vector<uint8_t> image = original;
  std::vector<uint8_t> data = pattern(kChunk + 1000, 9);
  ASSERT_TRUE(volume.write(3000, data).ok());
  ASSERT_TRUE(volume.write(kSize - 512, std::vector<uint8_t>(512, 0xee), /*fua=*/true).ok());  // the short chunk
  copy_into(image, 3000, data);
  copy_into(image, kSize - 512, std::vector<uint8_t>(512, 0xee));
  EXPECT_EQ(read_all(volume), image);
  EXPECT_EQ(read_file(file), original) << "a client write reached the adopted file before a merge";

  ASSERT_TRUE(volume.merge_everything().ok());
  EXPECT_EQ(read_file(file), image);
  EXPECT_EQ(std::filesystem::file_size(file), kSize);
  created.value().reset();

  auto reopened = Volume::open(posix_file_system(), dir.sub("volume"));
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->adopted_path(), file);
  EXPECT_EQ(read_all(*reopened.value()), image);
  // volume.meta names the path: format 3, so an older amirror refuses it.
  std::vector<uint8_t> meta = read_file(dir.sub("volume/volume.meta"));
  ASSERT_GT(meta.size(), 12u);
  EXPECT_EQ(meta[8], 3);
}

TEST(VolumeAdoptTest, TheAdoptedPathIsLockedWhileTheVolumeIsOpen) {
  ScratchDir dir("adopt-lock");
  const std::string file = dir.sub("disk.img");
  write_file(file, pattern(kSize, 2));
  std::filesystem::create_directory(dir.sub("a"));
  std::filesystem::create_directory(dir.sub("b"));
  auto first = Volume::create(posix_file_system(), dir.sub("a"), adopt_options(file));
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  auto second = Volume::create(posix_file_system(), dir.sub("b"), adopt_options(file));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kBusy) << second.status().to_string();
  EXPECT_NE(second.status().message().find("already adopted"), std::string::npos) << second.status().to_string();
  // Released when the volume closes (or its process dies).
  first.value().reset();
  auto reopened = Volume::open(posix_file_system(), dir.sub("a"));
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
}

TEST(VolumeAdoptTest, RefusesWhatCannotBeAdopted) {
  ScratchDir dir("adopt-refuse");
  std::filesystem::create_directory(dir.sub("volume"));
  auto missing = Volume::create(posix_file_system(), dir.sub("volume"), adopt_options(dir.sub("nope")));
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound) << missing.status().to_string();
  std::filesystem::create_directory(dir.sub("a-directory"));
  auto directory = Volume::create(posix_file_system(), dir.sub("volume"), adopt_options(dir.sub("a-directory")));
  EXPECT_EQ(directory.status().code(), ErrorCode::kInvalidArgument) << directory.status().to_string();
  EXPECT_NE(directory.status().message().find("not a regular file or a block device"), std::string::npos);
  auto relative = Volume::create(posix_file_system(), dir.sub("volume"), adopt_options("disk.img"));
  EXPECT_EQ(relative.status().code(), ErrorCode::kInvalidArgument) << relative.status().to_string();
  EXPECT_FALSE(std::filesystem::exists(dir.sub("volume/volume.meta")));
}

TEST(VolumeAdoptTest, ResizeIsRefusedAndAChangedSizeFailsTheOpen) {
  ScratchDir dir("adopt-size");
  const std::string file = dir.sub("disk.img");
  write_file(file, pattern(kSize, 3));
  std::filesystem::create_directory(dir.sub("volume"));
  auto created = Volume::create(posix_file_system(), dir.sub("volume"), adopt_options(file));
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  auto resized = created.value()->resize(2 * kSize);
  ASSERT_FALSE(resized.ok());
  EXPECT_NE(resized.status().message().find("never resizes"), std::string::npos) << resized.status().to_string();
  EXPECT_EQ(std::filesystem::file_size(file), kSize);
  created.value().reset();

  std::filesystem::resize_file(file, kSize + 4096);  // someone else changed it
  auto reopened = Volume::open(posix_file_system(), dir.sub("volume"));
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(reopened.status().message().find("changed outside amirror"), std::string::npos)
      << reopened.status().to_string();
  EXPECT_EQ(std::filesystem::file_size(file), kSize + 4096) << "open changed an adopted file";
}

// A replica on a block device (`[[peers]] replica_device_dir`): the base may be longer
// than the volume. Its tail is never read or written — not by the base fill's zeroing,
// not by a merge, not by a grow within it — the size stays the volume's across an
// open, a grow past the base is refused naming it and the size needed, and a shorter
// base is refused at create and fails the open.
TEST(VolumeAdoptTest, ABaseLargerThanTheVolumeKeepsItsTailAndBoundsTheGrowth) {
  ScratchDir dir("adopt-larger");
  const std::string file = dir.sub("device.img");
  const uint64_t base_bytes = 2 * kSize + 2048;
  const std::vector<uint8_t> original(base_bytes, 0xab);
  write_file(file, original);
  std::filesystem::create_directory(dir.sub("volume"));
  VolumeOptions options = adopt_options(file);
  options.base_may_be_larger = true;
  auto created = Volume::create(posix_file_system(), dir.sub("volume"), options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();
  EXPECT_EQ(volume.size_bytes(), kSize);
  ASSERT_TRUE(volume.begin_base_fill().ok());
  std::vector<uint8_t> data = pattern(kChunk, 5);
  ASSERT_TRUE(volume.write_base_fill(kChunk, data).ok());
  ASSERT_TRUE(volume.commit_base_fill(1, 1000).ok());
  std::vector<uint8_t> image(kSize, 0);
  copy_into(image, kChunk, data);
  EXPECT_EQ(read_all(volume), image) << "the base fill did not zero [0, size)";
  ASSERT_TRUE(volume.write(kSize - 100, std::vector<uint8_t>(100, 0x31)).ok());
  copy_into(image, kSize - 100, std::vector<uint8_t>(100, 0x31));
  ASSERT_TRUE(volume.freeze().ok());
  ASSERT_TRUE(volume.merge_oldest().ok());
  std::vector<uint8_t> on_file = read_file(file);
  ASSERT_EQ(on_file.size(), base_bytes) << "the base's length changed";
  EXPECT_TRUE(std::equal(image.begin(), image.end(), on_file.begin())) << "the merge did not reach the base";
  EXPECT_TRUE(std::all_of(on_file.begin() + kSize, on_file.end(), [](uint8_t b) { return b == 0xab; }))
      << "the tail past the volume's size changed";

  // Grows within the base: the new range reads zero (in the base too), the rest stays.
  auto grown = volume.resize(2 * kSize);
  ASSERT_TRUE(grown.ok()) << grown.status().to_string();
  image.resize(2 * kSize, 0);
  EXPECT_EQ(read_all(volume), image);
  on_file = read_file(file);
  EXPECT_TRUE(std::all_of(on_file.begin() + kSize, on_file.begin() + 2 * kSize, [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::all_of(on_file.begin() + 2 * kSize, on_file.end(), [](uint8_t b) { return b == 0xab; }));
  auto past = volume.resize(base_bytes + 2048);
  ASSERT_FALSE(past.ok());
  EXPECT_NE(past.status().message().find(file + " is"), std::string::npos) << past.status().to_string();
  EXPECT_NE(past.status().message().find(std::to_string(base_bytes + 2048) + " bytes"), std::string::npos)
      << past.status().to_string();
  EXPECT_EQ(volume.size_bytes(), 2 * kSize);
  created.value().reset();

  auto reopened = Volume::open(posix_file_system(), dir.sub("volume"));
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->size_bytes(), 2 * kSize);
  EXPECT_EQ(read_all(*reopened.value()), image);
  reopened.value().reset();
  EXPECT_EQ(std::filesystem::file_size(file), base_bytes) << "open trimmed the base";

  std::filesystem::resize_file(file, kSize);  // shrunk underneath: shorter than the volume
  auto shrunk = Volume::open(posix_file_system(), dir.sub("volume"));
  ASSERT_FALSE(shrunk.ok());
  EXPECT_NE(shrunk.status().message().find("shrank outside amirror"), std::string::npos) << shrunk.status().to_string();

  std::filesystem::create_directory(dir.sub("small"));
  options.size_bytes = 2 * kSize;
  auto small = Volume::create(posix_file_system(), dir.sub("small"), options);
  ASSERT_FALSE(small.ok());
  EXPECT_NE(small.status().message().find("needs"), std::string::npos) << small.status().to_string();
}

// Power loss at every file operation of an adopt (DataDir builds the volume under
// <name>.creating and renames it, as `volume adopt` does): after the crash the data
// directory holds no volume or the whole adopted one, the file is untouched either way,
// and the lock is free for a retry.
TEST(VolumeAdoptTest, PowerLossDuringTheAdoptLeavesNoVolumeOrAWholeOne) {
  bool saw_none = false, saw_volume = false;
  for (uint64_t allowed = 0;; allowed++) {
    SCOPED_TRACE("crash after " + std::to_string(allowed) + " file operations");
    ScratchDir dir("adopt-create-crash", /*in_memory=*/true);
    const std::string file = dir.sub("disk.img");
    const std::vector<uint8_t> original = pattern(kSize, 5);
    write_file(file, original);
    FaultFileSystem fs;
    bool faulted = false;
    Status adopted;
    {
      auto data_dir = DataDir::open(fs, dir.sub("data"));
      ASSERT_TRUE(data_dir.ok()) << data_dir.status().to_string();
      uint64_t failures_before = fs.injected_failure_count();
      fs.fail_after(allowed, ErrorCode::kIo, FaultFileSystem::kOpAllMutating);
      auto created = data_dir.value()->create_volume("disk", adopt_options(file));
      faulted = fs.injected_failure_count() != failures_before;
      fs.clear_faults();
      adopted = created.status();
      if (!faulted) ASSERT_TRUE(created.ok()) << created.status().to_string();
    }
    ASSERT_TRUE(fs.drop_unsynced().ok());
    EXPECT_EQ(read_file(file), original) << "adopting wrote the file";

    auto reopened = DataDir::open(fs, dir.sub("data"));
    ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
    auto names = reopened.value()->list_volumes();
    ASSERT_TRUE(names.ok());
    if (adopted.ok()) EXPECT_EQ(names.value().size(), 1u) << "an adopt that returned ok was lost";
    if (names.value().empty()) {
      saw_none = true;
    } else {
      saw_volume = true;
      auto volume = reopened.value()->open_volume("disk");
      ASSERT_TRUE(volume.ok()) << volume.status().to_string();
      EXPECT_EQ(volume.value()->adopted_path(), file);
      EXPECT_EQ(read_all(*volume.value()), original);
    }
    if (::testing::Test::HasFailure()) return;
    if (!faulted) {
      EXPECT_TRUE(saw_none) << "no crash point left the directory without the volume";
      EXPECT_TRUE(saw_volume);
      return;
    }
  }
}

// Power loss at every file operation of release's merge (fail every mutating operation
// from the n-th on, then drop what was not synced): the volume reopens (finishing an
// interrupted merge) with every flushed write; when merge_everything() returned ok, the
// file alone holds the image, so the release can forget the volume.
TEST(VolumeAdoptTest, PowerLossDuringTheReleaseMergeLosesNothing) {
  for (uint64_t allowed = 0;; allowed++) {
    SCOPED_TRACE("crash after " + std::to_string(allowed) + " file operations");
    ScratchDir dir("adopt-crash", /*in_memory=*/true);
    const std::string file = dir.sub("disk.img");
    std::vector<uint8_t> image = pattern(kSize, 4);
    write_file(file, image);
    std::filesystem::create_directory(dir.sub("volume"));
    FaultFileSystem fs;
    auto created = Volume::create(fs, dir.sub("volume"), adopt_options(file));
    ASSERT_TRUE(created.ok()) << created.status().to_string();
    for (uint64_t round = 0; round < 3; round++) {  // two frozen layers and the active one
      std::vector<uint8_t> data = pattern(kChunk * 2, static_cast<uint8_t>(20 + round));
      uint64_t offset = round * 5000;
      ASSERT_TRUE(created.value()->write(offset, data).ok());
      copy_into(image, offset, data);
      if (round < 2) ASSERT_TRUE(created.value()->freeze().ok());
    }
    ASSERT_TRUE(created.value()->write_zeroes(kSize - kChunk, kChunk).ok());
    std::fill(image.end() - kChunk, image.end(), 0);
    ASSERT_TRUE(created.value()->flush().ok());

    uint64_t failures_before = fs.injected_failure_count();
    fs.fail_after(allowed, ErrorCode::kIo, FaultFileSystem::kOpAllMutating);
    Status released = created.value()->merge_everything();
    bool faulted = fs.injected_failure_count() != failures_before;
    fs.clear_faults();
    if (!faulted) ASSERT_TRUE(released.ok()) << released.to_string();
    created.value().reset();
    ASSERT_TRUE(fs.drop_unsynced().ok());

    if (released.ok()) EXPECT_EQ(read_file(file), image) << "the merge returned but the file misses writes";
    auto reopened = Volume::open(fs, dir.sub("volume"));
    ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
    EXPECT_EQ(read_all(*reopened.value()), image);
    // And the release finishes after the crash.
    ASSERT_TRUE(reopened.value()->merge_everything().ok());
    reopened.value().reset();
    EXPECT_EQ(read_file(file), image);
    if (::testing::Test::HasFailure() || !faulted) {
      EXPECT_GT(allowed, 5u) << "a merge of three layers in so few file operations cannot be crash-safe";
      return;
    }
  }
}

}  // namespace
}  // namespace amirror::testing
