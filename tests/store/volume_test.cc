// SPDX-License-Identifier: Apache-2.0
// Unit tests of Volume and DataDir: creation and validation, sparse base, refusal of
// foreign or corrupt metadata, out-of-range requests, ENOSPC/EIO surfacing, locking.
#include "store/volume.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "store/data_dir.h"
#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

VolumeOptions options(uint64_t size_bytes, uint64_t chunk_size_bytes = 4096) {
  VolumeOptions result;
  result.size_bytes = size_bytes;
  result.chunk_size_bytes = chunk_size_bytes;
  return result;
}

std::vector<uint8_t> pattern(uint64_t length, uint8_t seed) {
  std::vector<uint8_t> data(length);
  for (uint64_t i = 0; i < length; i++) data[i] = static_cast<uint8_t>(seed + i * 7);
  return data;
}

std::vector<uint8_t> read_all(Volume& volume) {
  std::vector<uint8_t> out(volume.size_bytes());
  EXPECT_TRUE(volume.read(0, out).ok());
  return out;
}

TEST(VolumeTest, CreateWriteReopenRead) {
  ScratchDir dir("volume");
  VolumeOptions opts = options(100 * 4096 + 512);
  opts.group = "prod";
  {
    auto volume = Volume::create(posix_file_system(), dir.path(), opts);
    ASSERT_TRUE(volume.ok()) << volume.status().to_string();
    EXPECT_EQ(volume.value()->cycle(), 0u);
    EXPECT_EQ(volume.value()->base_cycle(), 0u);
    EXPECT_EQ(read_all(*volume.value()), std::vector<uint8_t>(opts.size_bytes, 0));
    auto data = pattern(10000, 3);
    ASSERT_TRUE(volume.value()->write(4000, data).ok());
    ASSERT_TRUE(volume.value()->flush().ok());
    EXPECT_FALSE(Volume::create(posix_file_system(), dir.path(), opts).ok())
        << "create over an existing volume must fail";
  }
  auto volume = Volume::open(posix_file_system(), dir.path());
  ASSERT_TRUE(volume.ok()) << volume.status().to_string();
  EXPECT_EQ(volume.value()->size_bytes(), opts.size_bytes);
  EXPECT_EQ(volume.value()->chunk_size_bytes(), 4096u);
  EXPECT_EQ(volume.value()->group(), "prod");
  std::vector<uint8_t> out(10000);
  ASSERT_TRUE(volume.value()->read(4000, out).ok());
  EXPECT_EQ(out, pattern(10000, 3));
}

TEST(VolumeTest, BadOptionsAreRefusedWithClearErrors) {
  ScratchDir dir("volume-bad");
  struct Case {
    VolumeOptions options;
    std::string mentions;
  };
  std::vector<Case> cases = {
      {options(0), "size"},
      {options(1000), "512"},
      {options(kMaxVolumeSizeBytes + 512), "maximum"},
      {options(1 << 20, 3000), "power of two"},
      {options(1 << 20, 2048), "4 KiB"},
      {options(1 << 20, 8 * kMiB), "4 MiB"},
  };
  VolumeOptions bad_group = options(1 << 20);
  bad_group.group = "../etc";
  cases.push_back({bad_group, "group"});
  for (const Case& c : cases) {
    Status status = validate_volume_options(c.options);
    EXPECT_EQ(status.code(), ErrorCode::kInvalidArgument) << c.mentions;
    EXPECT_NE(status.message().find(c.mentions), std::string::npos) << status.message();
    auto volume = Volume::create(posix_file_system(), dir.path(), c.options);
    EXPECT_EQ(volume.status().code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "refused creates leave nothing behind";
}

// A replica's apply sends its source a keep-alive at each progress call: a merge of one
// big point that called it only at the end let the source time out (peer_timeout) and
// resend (bench/run-scale.sh: 1.11x bytes for a 4 GiB catch-up).
TEST(VolumeTest, MergeOfOneBigLayerReportsProgressAsItGoes) {
  ScratchDir dir("volume-merge-progress");
  auto volume = Volume::create(posix_file_system(), dir.path(), options(kGiB, 64 * kKiB));
  ASSERT_TRUE(volume.ok()) << volume.status().to_string();
  const uint64_t written = 3 * Volume::kMergeProgressBytes + 64 * kKiB;
  auto data = pattern(written, 4);
  ASSERT_TRUE(volume.value()->write(0, data).ok());
  ASSERT_TRUE(volume.value()->freeze().ok());
  uint64_t calls = 0;
  ASSERT_TRUE(volume.value()->merge_oldest([&] { ++calls; }).ok());
  EXPECT_EQ(calls, written / Volume::kMergeProgressBytes);
  std::vector<uint8_t> out(written);
  ASSERT_TRUE(volume.value()->read(0, out).ok());
  EXPECT_EQ(out, data);
}

TEST(VolumeTest, OneTebibyteVolumeIsSparse) {
  ScratchDir dir("volume-sparse");
  auto volume = Volume::create(posix_file_system(), dir.path(), options(kTiB, 64 * kKiB));
  ASSERT_TRUE(volume.ok()) << volume.status().to_string();
  auto data = pattern(64 * kKiB, 9);
  ASSERT_TRUE(volume.value()->write(kTiB - 64 * kKiB, data).ok());
  ASSERT_TRUE(volume.value()->write(512 * kGiB + 100, data).ok());
  ASSERT_TRUE(volume.value()->flush().ok());
  ASSERT_TRUE(volume.value()->freeze().ok());
  ASSERT_TRUE(volume.value()->merge_oldest().ok());
  uint64_t allocated_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    struct stat info;
    ASSERT_EQ(::stat(entry.path().c_str(), &info), 0);
    allocated_bytes += static_cast<uint64_t>(info.st_blocks) * 512;
  }
  EXPECT_LT(allocated_bytes, 16 * kMiB) << "space must grow with data written, not volume size";
  std::vector<uint8_t> out(data.size());
  ASSERT_TRUE(volume.value()->read(kTiB - 64 * kKiB, out).ok());
  EXPECT_EQ(out, data);
  auto chunks = volume.value()->allocated_chunks(volume.value()->cycle());
  ASSERT_TRUE(chunks.ok());
  EXPECT_LE(chunks.value().size(), 8u) << "allocated_chunks must not list the empty terabyte";
}

TEST(VolumeTest, MissingForeignOrCorruptMetaIsRefused) {
  ScratchDir dir("volume-meta");
  EXPECT_EQ(Volume::open(posix_file_system(), dir.path()).status().code(), ErrorCode::kNotFound);
  {
    auto volume = Volume::create(posix_file_system(), dir.path(), options(1 << 20));
    ASSERT_TRUE(volume.ok());
    ASSERT_TRUE(volume.value()->freeze().ok());
  }
  std::string meta = dir.sub("volume.meta");
  std::string original;
  {
    std::ifstream in(meta, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_GT(original.size(), 40u);
  auto write_meta = [&](const std::string& text) {
    std::ofstream out(meta, std::ios::binary | std::ios::trunc);
    out << text;
  };
  std::vector<std::pair<std::string, std::string>> bad = {
      {"foreign", "[volume]\nsize = 1G\n"},
      {"empty", ""},
      {"truncated", original.substr(0, original.size() / 2)},
  };
  for (size_t i = 0; i < original.size(); i += 7) {
    std::string flipped = original;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x40);
    bad.push_back({"bit flip at " + std::to_string(i), flipped});
  }
  for (const auto& [what, text] : bad) {
    write_meta(text);
    auto volume = Volume::open(posix_file_system(), dir.path());
    EXPECT_FALSE(volume.ok()) << what;
    if (!volume.ok()) {
      EXPECT_EQ(volume.status().code(), ErrorCode::kCorruption) << what << ": " << volume.status().to_string();
      EXPECT_NE(volume.status().message().find("volume.meta"), std::string::npos)
          << "the error should name the file: " << volume.status().message();
    }
  }
  write_meta(original);
  EXPECT_TRUE(Volume::open(posix_file_system(), dir.path()).ok()) << "refusal repaired nothing";
}

TEST(VolumeTest, OutOfRangeRequestsAreRefusedAndChangeNothing) {
  ScratchDir dir("volume-range");
  const uint64_t size = 10 * 4096 + 1024;
  auto volume = Volume::create(posix_file_system(), dir.path(), options(size));
  ASSERT_TRUE(volume.ok());
  Volume& v = *volume.value();
  ASSERT_TRUE(v.write(0, pattern(size, 1)).ok());
  std::vector<uint8_t> one(1, 0xFF), two(2, 0xFF);
  EXPECT_EQ(v.write(size, one).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.write(size - 1, two).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.write(UINT64_MAX, one).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.write_zeroes(1, UINT64_MAX).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.trim(4096, UINT64_MAX - 4095).code(), ErrorCode::kOutOfRange);  // wraps to 0
  EXPECT_EQ(v.trim(0, size + 512).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.read(size - 1, two).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(v.read_frozen(0, size, one).code(), ErrorCode::kOutOfRange);
  EXPECT_FALSE(v.read_frozen(1, 0, one).ok()) << "cycle 1 does not exist yet";
  EXPECT_FALSE(v.changed_chunks(0, 1).ok());
  EXPECT_FALSE(v.allocated_chunks(5).ok());
  EXPECT_EQ(read_all(v), pattern(size, 1));
  EXPECT_TRUE(v.write(size - 1, one).ok()) << "the last byte is in range";
}

// A full disk (simulated) surfaces as kNoSpace; nothing stored before is harmed, and
// the volume works again once space is back.
TEST(VolumeTest, NoSpaceSurfacesAndStoredDataIsIntact) {
  ScratchDir dir("volume-enospc");
  FaultFileSystem fs;
  const uint64_t size = 64 * 4096;
  auto created = Volume::create(fs, dir.path(), options(size));
  ASSERT_TRUE(created.ok());
  Volume& v = *created.value();
  ASSERT_TRUE(v.write(0, pattern(size, 5)).ok());
  ASSERT_TRUE(v.freeze().ok());
  ASSERT_TRUE(v.write(8192, pattern(8192, 6), /*fua=*/true).ok());
  std::vector<uint8_t> expected = pattern(size, 5);
  auto six = pattern(8192, 6);
  std::copy(six.begin(), six.end(), expected.begin() + 8192);
  std::vector<uint8_t> frozen_expected = pattern(size, 5);

  fs.set_write_budget_bytes(100);
  Status status = v.write(20000, pattern(30000, 7));  // first writes to new chunks
  EXPECT_EQ(status.code(), ErrorCode::kNoSpace) << status.to_string();
  Status zeroes = v.write_zeroes(100000, 5000);
  EXPECT_TRUE(zeroes.ok() || zeroes.code() == ErrorCode::kNoSpace) << zeroes.to_string();
  fs.clear_faults();
  // Outside the failed request nothing changed; inside, old or new bytes.
  auto now = read_all(v);
  auto seven = pattern(30000, 7);
  for (uint64_t i = 0; i < size; i++) {
    bool in_failed = i >= 20000 && i < 50000;
    bool in_zeroes = i >= 100000 && i < 105000;
    bool ok = now[i] == expected[i] || (in_failed && now[i] == seven[i - 20000]) ||
              (in_zeroes && now[i] == 0);
    ASSERT_TRUE(ok) << "byte " << i;
  }
  std::vector<uint8_t> frozen(size);
  ASSERT_TRUE(v.read_frozen(1, 0, frozen).ok());
  EXPECT_EQ(frozen, frozen_expected);

  fs.fail_after(0, ErrorCode::kIo, FaultFileSystem::kOpSync);
  ASSERT_TRUE(v.write(0, pattern(100, 8)).ok());
  EXPECT_EQ(v.flush().code(), ErrorCode::kIo);
  fs.clear_faults();
  // Space is back: the volume works and a flush makes everything durable.
  ASSERT_TRUE(v.write(20000, seven).ok());
  ASSERT_TRUE(v.flush().ok());
  auto durable = read_all(v);
  ASSERT_TRUE(fs.drop_unsynced().ok());
  created.value().reset();
  auto reopened = Volume::open(fs, dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(read_all(*reopened.value()), durable);
}

TEST(VolumeTest, FreezeFailureKeepsVolumeConsistent) {
  ScratchDir dir("volume-freeze-fail");
  FaultFileSystem fs;
  auto created = Volume::create(fs, dir.path(), options(32 * 4096));
  ASSERT_TRUE(created.ok());
  Volume& v = *created.value();
  ASSERT_TRUE(v.write(0, pattern(4096 * 3, 1)).ok());
  for (uint64_t allowed = 0; allowed < 12; allowed++) {
    uint64_t cycle_before = v.cycle();
    fs.fail_after(allowed, ErrorCode::kNoSpace, FaultFileSystem::kOpAllMutating);
    auto frozen = v.freeze();
    fs.clear_faults();
    if (frozen.ok()) {
      EXPECT_EQ(frozen.value(), cycle_before + 1);
    } else {
      EXPECT_EQ(frozen.status().code(), ErrorCode::kNoSpace) << frozen.status().to_string();
      EXPECT_EQ(v.cycle(), cycle_before) << "a failed freeze must not advance the cycle";
    }
    // Still writable, and the image is right.
    ASSERT_TRUE(v.write(4096 * allowed, pattern(4096, static_cast<uint8_t>(allowed))).ok());
  }
  auto image = read_all(v);
  ASSERT_TRUE(v.flush().ok());
  created.value().reset();
  auto reopened = Volume::open(fs, dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(read_all(*reopened.value()), image);
}

TEST(DataDirTest, MarkerLockAndForeignDirectories) {
  ScratchDir scratch("datadir");
  std::string path = scratch.sub("data");
  {
    auto data_dir = DataDir::open(posix_file_system(), path);
    ASSERT_TRUE(data_dir.ok()) << data_dir.status().to_string();
    EXPECT_TRUE(std::filesystem::exists(path + "/AMIRROR"));
    // A second open while the first holds the lock is refused.
    auto second = DataDir::open(posix_file_system(), path);
    EXPECT_EQ(second.status().code(), ErrorCode::kBusy) << second.status().to_string();
    auto volume = data_dir.value()->create_volume("db", options(1 << 20));
    ASSERT_TRUE(volume.ok()) << volume.status().to_string();
    EXPECT_EQ(data_dir.value()->create_volume("db", options(1 << 20)).status().code(),
              ErrorCode::kAlreadyExists);
    EXPECT_EQ(data_dir.value()->create_volume("../evil", options(1 << 20)).status().code(),
              ErrorCode::kInvalidArgument);
    EXPECT_EQ(data_dir.value()->list_volumes().value(), std::vector<std::string>{"db"});
  }
  {
    auto again = DataDir::open(posix_file_system(), path);
    ASSERT_TRUE(again.ok()) << "the lock is released with the DataDir";
    EXPECT_TRUE(again.value()->open_volume("db").ok());
    EXPECT_FALSE(again.value()->open_volume("nope").ok());
  }
  // A non-empty directory that is not ours is refused and left untouched.
  std::string foreign = scratch.sub("foreign");
  std::filesystem::create_directories(foreign);
  { std::ofstream(foreign + "/precious.txt") << "keep me"; }
  auto refused = DataDir::open(posix_file_system(), foreign);
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(foreign), std::string::npos);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(foreign), {}), 1);
  // A wrong marker is refused too.
  { std::ofstream(path + "/AMIRROR", std::ios::trunc) << "something else v9\n"; }
  EXPECT_FALSE(DataDir::open(posix_file_system(), path).ok());
}

}  // namespace
}  // namespace amirror::testing
