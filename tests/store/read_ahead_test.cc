// SPDX-License-Identifier: Apache-2.0
// Volume::will_read_frozen: the read-ahead hints a sender gives before it reads a
// freeze point must name the file ranges read_frozen then reads (base image or a
// layer's packed data file), joined into few calls.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <vector>

#include "store/volume.h"
#include "testing/forwarding_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

struct Range {
  uint64_t offset;
  uint64_t length;
};

// The POSIX file system, recording each file's reads and read hints.
class RecordingFileSystem final : public ForwardingFileSystem {
 public:
  struct Log {
    std::mutex mutex;
    std::map<std::string, std::vector<Range>> reads, hints;
  };

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file, real_.open(path, mode));
    return std::unique_ptr<File>(new RecordingFile(std::move(file), path, log_));
  }
  Log& log() { return log_; }

 private:
  class RecordingFile final : public File {
   public:
    RecordingFile(std::unique_ptr<File> file, std::string path, Log& log)
        : file_(std::move(file)), path_(std::move(path)), log_(log) {}
    Status read_at(uint64_t offset, std::span<uint8_t> out) override {
      record(log_.reads, offset, out.size());
      return file_->read_at(offset, out);
    }
    void will_read(uint64_t offset, uint64_t length) override {
      record(log_.hints, offset, length);
      file_->will_read(offset, length);
    }
    Status write_at(uint64_t offset, std::span<const uint8_t> data) override { return file_->write_at(offset, data); }
    Status sync() override { return file_->sync(); }
    Status truncate(uint64_t size) override { return file_->truncate(size); }
    Status punch_hole(uint64_t offset, uint64_t length) override { return file_->punch_hole(offset, length); }
    Result<uint64_t> size_bytes() override { return file_->size_bytes(); }
    Result<std::vector<Extent>> allocated_extents(uint64_t offset, uint64_t length) override {
      return file_->allocated_extents(offset, length);
    }

   private:
    void record(std::map<std::string, std::vector<Range>>& to, uint64_t offset, uint64_t length) {
      std::lock_guard lock(log_.mutex);
      to[path_].push_back({offset, length});
    }
    std::unique_ptr<File> file_;
    const std::string path_;
    Log& log_;
  };
  Log log_;
};

bool covered(const std::vector<Range>& hints, const Range& read) {
  // Hints may split a read at a file boundary; walk the read's bytes through them.
  uint64_t at = read.offset;
  const uint64_t end = read.offset + read.length;
  bool progressed = true;
  while (at < end && progressed) {
    progressed = false;
    for (const Range& hint : hints) {
      if (hint.offset <= at && at < hint.offset + hint.length) {
        at = hint.offset + hint.length;
        progressed = true;
      }
    }
  }
  return at >= end;
}

TEST(ReadAheadTest, HintsNameEveryFileRangeThatReadingAPointReads) {
  constexpr uint64_t kChunk = 64 * kKiB;
  constexpr uint64_t kChunks = 64;
  ScratchDir dir("read-ahead");
  RecordingFileSystem fs;
  VolumeOptions options;
  options.size_bytes = kChunks * kChunk;
  options.chunk_size_bytes = kChunk;
  auto created = Volume::create(fs, dir.path(), options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();
  Random random(5);
  auto write = [&](uint64_t offset, uint64_t length) {
    std::vector<uint8_t> data(length);
    random.fill(data);
    ASSERT_TRUE(volume.write(offset, data).ok());
  };
  // Point 1, merged into the base: chunks 0-31 written in order.
  write(0, 32 * kChunk);
  ASSERT_TRUE(volume.freeze().ok());
  // Point 2 in a frozen layer: whole chunks out of order, and a few sectors of others
  // (read partly from this layer, partly from the base).
  for (uint64_t chunk : {40, 33, 34, 35, 50}) write(chunk * kChunk, kChunk);
  write(3 * kChunk + 4096, 8192);
  write(36 * kChunk, 4096);
  auto point = volume.freeze();
  ASSERT_TRUE(point.ok());
  ASSERT_TRUE(volume.merge_oldest().ok());
  ASSERT_EQ(volume.base_cycle(), 1u);
  write(10 * kChunk, kChunk);  // the active layer: not part of point 2

  std::vector<uint8_t> out(kChunks * kChunk);
  for (Range request : {Range{0, kChunks * kChunk}, Range{3 * kChunk, 2 * kChunk}, Range{33 * kChunk, 18 * kChunk}}) {
    {
      std::lock_guard lock(fs.log().mutex);
      fs.log().reads.clear();
      fs.log().hints.clear();
    }
    volume.will_read_frozen(point.value(), request.offset, request.length);
    ASSERT_TRUE(volume.read_frozen(point.value(), request.offset, std::span(out.data(), request.length)).ok());
    std::lock_guard lock(fs.log().mutex);
    size_t read_count = 0, hint_count = 0;
    for (const auto& [path, reads] : fs.log().reads) {
      for (const Range& read : reads) {
        EXPECT_TRUE(covered(fs.log().hints[path], read))
            << path << " read at " << read.offset << " + " << read.length << " was not hinted (request at "
            << request.offset << ")";
      }
      read_count += reads.size();
    }
    for (const auto& [path, hints] : fs.log().hints) hint_count += hints.size();
    EXPECT_GT(read_count, 0u);
    EXPECT_LE(hint_count, 12u) << "hints for consecutive chunks were not joined";
  }
  // A hint outside the volume or of a point that does not exist is ignored.
  volume.will_read_frozen(point.value(), kChunks * kChunk, kChunk);
  volume.will_read_frozen(99, 0, kChunk);
}

}  // namespace
}  // namespace amirror::testing
