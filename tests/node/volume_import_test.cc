// SPDX-License-Identifier: Apache-2.0
// The import copy: a file round-trips, a FIFO must deliver exactly --size bytes, and a
// set cancel flag aborts a copy whose source has nothing to read (no timing involved:
// the flag is set before the copy starts waiting).
#include "node/volume_import.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "store/data_dir.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto data_dir = DataDir::open(posix_file_system(), scratch_.sub("data"));
    ASSERT_TRUE(data_dir.ok()) << data_dir.status().to_string();
    data_dir_ = std::move(data_dir).value();
  }

  std::unique_ptr<Volume> volume_for(const ImportSource& source) {
    VolumeOptions options;
    options.size_bytes = source.volume_size_bytes();
    auto volume = data_dir_->begin_volume("v", options);
    EXPECT_TRUE(volume.ok()) << volume.status().to_string();
    return std::move(volume).value();
  }

  std::string make_fifo() {
    std::string path = scratch_.sub("feed.fifo");
    EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0);
    return path;
  }

  testing::ScratchDir scratch_{"import"};
  std::unique_ptr<DataDir> data_dir_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint64_t> done_bytes_{0};
};

TEST_F(ImportTest, AFileRoundTripsAndItsTailIsPaddedToASector) {
  std::string path = scratch_.sub("source.bin");
  std::vector<uint8_t> data(3 * kImportBufferBytes / 2 + 100);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), file), data.size());
  std::fclose(file);
  auto source = ImportSource::open(path, 0);
  ASSERT_TRUE(source.ok()) << source.status().to_string();
  EXPECT_EQ(source->volume_size_bytes() % 512, 0u);
  EXPECT_GE(source->volume_size_bytes(), data.size());
  auto volume = volume_for(source.value());
  ASSERT_TRUE(source->copy_into(*volume, done_bytes_, cancel_).ok());
  EXPECT_EQ(done_bytes_.load(), data.size());
  std::vector<uint8_t> read_back(source->volume_size_bytes());
  ASSERT_TRUE(volume->read(0, read_back).ok());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), read_back.begin()));
  EXPECT_TRUE(std::all_of(read_back.begin() + static_cast<ptrdiff_t>(data.size()), read_back.end(),
                          [](uint8_t byte) { return byte == 0; }));
  EXPECT_FALSE(ImportSource::open(path, 512).ok());  // --size below the file's size
}

TEST_F(ImportTest, AStreamNeedsASizeAndMustDeliverAllOfIt) {
  std::string fifo = make_fifo();
  auto unsized = ImportSource::open(fifo, 0);
  ASSERT_FALSE(unsized.ok());
  EXPECT_NE(unsized.status().message().find("--size"), std::string::npos)
      << unsized.status().message();

  auto source = ImportSource::open(fifo, 8192);
  ASSERT_TRUE(source.ok()) << source.status().to_string();
  auto volume = volume_for(source.value());
  std::thread writer([&] {
    FILE* out = std::fopen(fifo.c_str(), "wb");  // waits for the reader: the source is open
    std::vector<uint8_t> some(4096, 1);
    std::fwrite(some.data(), 1, some.size(), out);
    std::fclose(out);
  });
  Status status = source->copy_into(*volume, done_bytes_, cancel_);
  writer.join();
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("ended after 4096 of the 8192 bytes"), std::string::npos)
      << status.message();
}

TEST_F(ImportTest, CancelAbortsACopyWaitingForASilentStream) {
  std::string fifo = make_fifo();
  auto source = ImportSource::open(fifo, 8192);
  ASSERT_TRUE(source.ok());
  auto volume = volume_for(source.value());
  cancel_ = true;
  Status status = source->copy_into(*volume, done_bytes_, cancel_);
  EXPECT_EQ(status.code(), ErrorCode::kCancelled) << status.to_string();
}

}  // namespace
}  // namespace amirror::node
