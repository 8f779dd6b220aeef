// SPDX-License-Identifier: Apache-2.0
// A freeze stops writes only while it syncs the last changes (Volume::freeze_group):
// when the sync before the stall is slow (a busy volume with much in the page cache),
// the writes it let in are synced by another sync, still outside the stall, instead of
// under it.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "store/volume.h"
#include "testing/forwarding_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kChunk = 64 * kKiB;

// The POSIX file system, except that a sync of a layer's data file first calls
// `on_data_sync` with the number of that sync (1, 2, ...).
class DataSyncHookFileSystem final : public ForwardingFileSystem {
 public:
  std::function<void(int)> on_data_sync;

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file, real_.open(path, mode));
    if (!path.ends_with(".data")) return file;
    return std::unique_ptr<File>(new HookedFile(std::move(file), *this));
  }

 private:
  class HookedFile final : public File {
   public:
    HookedFile(std::unique_ptr<File> file, DataSyncHookFileSystem& fs) : file_(std::move(file)), fs_(fs) {}
    Status read_at(uint64_t offset_bytes, std::span<uint8_t> out) override { return file_->read_at(offset_bytes, out); }
    Status write_at(uint64_t offset_bytes, std::span<const uint8_t> data) override {
      return file_->write_at(offset_bytes, data);
    }
    Status sync() override {
      int number;
      {
        std::lock_guard lock(fs_.mutex_);
        number = ++fs_.data_syncs_;
      }
      if (fs_.on_data_sync) fs_.on_data_sync(number);
      return file_->sync();
    }
    Status truncate(uint64_t size_bytes) override { return file_->truncate(size_bytes); }
    Status punch_hole(uint64_t offset_bytes, uint64_t length_bytes) override {
      return file_->punch_hole(offset_bytes, length_bytes);
    }
    Result<uint64_t> size_bytes() override { return file_->size_bytes(); }
    Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) override {
      return file_->allocated_extents(offset_bytes, length_bytes);
    }

   private:
    std::unique_ptr<File> file_;
    DataSyncHookFileSystem& fs_;
  };

  std::mutex mutex_;
  int data_syncs_ = 0;  // GUARDED_BY(mutex_)
};

TEST(FreezeStallTest, WritesLetInByASlowSyncAreSyncedBeforeWritesStop) {
  ScratchDir dir("freeze-stall");
  DataSyncHookFileSystem fs;
  VolumeOptions options;
  options.size_bytes = 16 * kChunk;
  options.chunk_size_bytes = kChunk;
  auto created = Volume::create(fs, dir.path(), options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();
  auto write_chunk = [&](uint64_t chunk, uint8_t value) {
    std::vector<uint8_t> data(kChunk, value);
    return volume.write(chunk * kChunk, data);
  };
  ASSERT_TRUE(write_chunk(0, 0x10).ok());

  // Sync 1, before the stall: slow (twice the quick limit, on any machine), and a write
  // lands meanwhile. Sync 2 then syncs that write: a client write issued during it must
  // complete while it runs, so it is not under the stall. (Before the fix, sync 2 was
  // the one under the stall, and this write waited for the freeze.)
  std::atomic<bool> write_during_second_sync_done{false};
  // Outside the hook: if the write waits for the freeze, it must be waited for after it.
  std::future<Status> write;
  fs.on_data_sync = [&](int number) {
    if (number == 1) {
      std::this_thread::sleep_for(2 * Volume::kQuickSync);
      std::thread([&] { EXPECT_TRUE(write_chunk(1, 0x11).ok()); }).join();
    } else if (number == 2) {
      write = std::async(std::launch::async, [&] { return write_chunk(2, 0x12); });
      // A bound for a hang only: a 64 KiB write into the page cache takes far less.
      if (write.wait_for(std::chrono::seconds(30)) == std::future_status::ready) {
        write_during_second_sync_done = true;
      }
    }
  };
  Result<uint64_t> cycle = volume.freeze();
  fs.on_data_sync = nullptr;
  ASSERT_TRUE(write.valid()) << "the freeze synced only once: the slow sync was not followed by another";
  EXPECT_TRUE(write.get().ok());
  ASSERT_TRUE(cycle.ok()) << cycle.status().to_string();
  EXPECT_TRUE(write_during_second_sync_done.load())
      << "a write issued during the second sync waited for the freeze: that sync ran under the stall";

  // Whichever side of the cut the last write fell on, the image holds all three, and
  // the point holds the two written before the last sync began.
  std::vector<uint8_t> out(kChunk);
  for (uint64_t chunk = 0; chunk < 3; ++chunk) {
    ASSERT_TRUE(volume.read(chunk * kChunk, out).ok());
    EXPECT_EQ(out[0], 0x10 + chunk) << "chunk " << chunk;
  }
  for (uint64_t chunk = 0; chunk < 2; ++chunk) {
    ASSERT_TRUE(volume.read_frozen(*cycle, chunk * kChunk, out).ok());
    EXPECT_EQ(out[0], 0x10 + chunk) << "point " << *cycle << " chunk " << chunk;
  }
}

}  // namespace
}  // namespace amirror::testing
