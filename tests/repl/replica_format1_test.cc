// SPDX-License-Identifier: Apache-2.0
// Upgrading: a replica written by the previous format (replica.img + replica.meta
// version 1 + maybe delta.stage) opens as the new layout, converted once, and the
// conversion can be cut short at any step and redone.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "base/checksum.h"
#include "base/coding.h"
#include "repl/replica.h"
#include "store/volume.h"

namespace amirror::repl {
namespace {

constexpr uint64_t kChunk = 4096;
constexpr uint64_t kSize = 16 * kChunk;

std::string format_1_meta(uint64_t applied_cycle, int64_t freeze_time) {
  std::string meta = "AMREPLIC";
  append_u32(meta, 1);
  append_u32(meta, 0);
  append_u64(meta, kSize);
  append_u64(meta, kChunk);
  append_u64(meta, applied_cycle);
  append_u64(meta, static_cast<uint64_t>(freeze_time));
  append_u32(meta, 6);
  meta += "site-a";
  append_u32(meta, 2);
  meta += "db";
  append_u64(meta, checksum64(meta.data(), meta.size()));
  return meta;
}

class ReplicaFormat1Test : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/amirror-replica-format1-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    image_.assign(kSize, 0);
    for (uint64_t i = 0; i < kSize; i += 3) image_[i] = static_cast<uint8_t>(i / kChunk + 1);
    write_file("replica.img", std::string(image_.begin(), image_.end()));
    write_file("replica.meta", format_1_meta(7, 7000));
    write_file("delta.stage", "AMSTAGE1 a committed delta the source still has in flight");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write_file(const std::string& name, const std::string& contents) {
    std::ofstream out(dir_ + "/" + name, std::ios::binary | std::ios::trunc);
    out << contents;
  }
  void expect_converted() {
    auto replica = Replica::open(posix_file_system(), dir_);
    ASSERT_TRUE(replica.ok()) << replica.status().to_string();
    EXPECT_EQ(replica.value()->source_node(), "site-a");
    EXPECT_EQ(replica.value()->volume(), "db");
    EXPECT_EQ(replica.value()->state().applied_cycle, 7u);
    EXPECT_EQ(replica.value()->state().applied_freeze_time_unix_ms, 7000);
    EXPECT_EQ(replica.value()->activity(), "idle");
    std::vector<uint8_t> out(kSize);
    ASSERT_TRUE(replica.value()->read(0, out).ok());
    EXPECT_EQ(out, image_);
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/replica.img"));
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/delta.stage")) << "its APPLIED was never sent: the source resends it";
    EXPECT_TRUE(std::filesystem::exists(dir_ + "/base.img"));
    // The next delta continues from cycle 7.
    ASSERT_TRUE(replica.value()->begin_delta(BeginDelta{7, 8, 8000, 1, 0, false}).ok());
    std::vector<uint8_t> chunk(kChunk, 0xee);
    ASSERT_TRUE(replica.value()->stage(ChunkRecord{0, 2, RecordKind::kData, chunk}).ok());
    ASSERT_TRUE(replica.value()->end_delta(1).ok());
    ASSERT_TRUE(replica.value()->read(0, out).ok());
    std::copy(chunk.begin(), chunk.end(), image_.begin() + 2 * kChunk);
    EXPECT_EQ(out, image_);
  }
  std::string dir_;
  std::vector<uint8_t> image_;
};

TEST_F(ReplicaFormat1Test, OpensConvertedOnce) {
  expect_converted();
  auto again = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again.value()->state().applied_cycle, 8u);
}

// Each step of the conversion done, the rest not (a crash in between): open redoes it.
TEST_F(ReplicaFormat1Test, ConversionCutAfterTheStageWentIsRedone) {
  std::filesystem::remove(dir_ + "/delta.stage");
  expect_converted();
}

TEST_F(ReplicaFormat1Test, ConversionCutAfterTheImageWasRenamedIsRedone) {
  std::filesystem::remove(dir_ + "/delta.stage");
  std::filesystem::rename(dir_ + "/replica.img", dir_ + "/base.img");
  expect_converted();
}

TEST_F(ReplicaFormat1Test, ConversionCutAfterVolumeMetaIsRedone) {
  std::filesystem::remove(dir_ + "/delta.stage");
  std::filesystem::rename(dir_ + "/replica.img", dir_ + "/base.img");
  VolumeOptions options;
  options.size_bytes = kSize;
  options.chunk_size_bytes = kChunk;
  ASSERT_TRUE(Volume::create_over_base(posix_file_system(), dir_, options, 7, 7000).ok());
  expect_converted();
}

TEST_F(ReplicaFormat1Test, ADamagedFormat1MetaIsRefusedAndNothingChanges) {
  write_file("replica.meta", format_1_meta(7, 7000).substr(0, 40));
  auto replica = Replica::open(posix_file_system(), dir_);
  ASSERT_FALSE(replica.ok());
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/replica.img"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/delta.stage"));
}

}  // namespace
}  // namespace amirror::repl
