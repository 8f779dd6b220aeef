// SPDX-License-Identifier: Apache-2.0
// Concurrency test: 4 writer threads write stamped regions (sector_stamp.h) while 2
// readers read and one thread freezes, checks and merges repeatedly. The volume is
// cut into regions of 1-40 sectors, each owned by one writer; regions of different
// writers share chunks, so concurrent first writes after a freeze race on the same
// chunk. Checked:
//  - readers only ever see zeros or a valid stamp of the region's owner (no garbage,
//    no misplaced data);
//  - every freeze point is a consistent cut: each region is uniform (a write lands
//    wholly before or after a freeze), and for each writer, the writes it contains are
//    a prefix of that writer's sequence (if write g is in, so is every earlier one);
//  - a point read again after merges of older layers is unchanged;
//  - the final image holds each region's last write.
// Meant to run under ThreadSanitizer too (-DAMIRROR_TSAN=ON). AMIRROR_LONG=1 writes more.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "store/volume.h"
#include "testing/sector_stamp.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr int kWriters = 4;
constexpr int kReaders = 2;
constexpr uint64_t kVolumeSizeBytes = 2 * kMiB + 512;
constexpr uint64_t kChunkSizeBytes = 16 * kKiB;
constexpr uint64_t kSectors = kVolumeSizeBytes / kStampSectorBytes;
// The freezer must run this often while writers write, or the test proves little;
// writers go on (up to kMaxWritesFactor x their quota) until it has.
constexpr uint64_t kMinFreezes = 4;
constexpr uint64_t kMaxWritesFactor = 100;

struct Region {
  uint64_t first_sector;
  uint64_t sector_count;
  int owner;
};

struct WriterLog {
  std::mutex mutex;
  std::vector<std::pair<uint64_t, uint64_t>> writes;  // (region, g), g = 1, 2, ...
};

uint64_t tag_of(int writer, uint64_t region) { return (uint64_t(writer) << 32) | region; }

class ConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Random random(seed_);
    for (uint64_t sector = 0; sector < kSectors;) {
      uint64_t count = std::min<uint64_t>(random.uniform(1, 40), kSectors - sector);
      regions_.push_back({sector, count, static_cast<int>(regions_.size() % kWriters)});
      for (uint64_t s = sector; s < sector + count; s++) region_of_sector_.push_back(regions_.size() - 1);
      sector += count;
    }
    for (uint64_t r = 0; r < regions_.size(); r++) owned_[regions_[r].owner].push_back(r);
  }

  // "" if a point (whole image) is a consistent cut of the writers' logs.
  std::string check_cut(const std::vector<uint8_t>& image, uint64_t cycle) {
    // Per region: uniform content.
    std::vector<uint64_t> region_g(regions_.size(), 0);
    for (uint64_t r = 0; r < regions_.size(); r++) {
      const Region& region = regions_[r];
      for (uint64_t i = 0; i < region.sector_count; i++) {
        uint64_t s = region.first_sector + i;
        StampInfo info = parse_sector(std::span(image).subspan(s * kStampSectorBytes, kStampSectorBytes), s);
        if (info.kind == StampKind::kGarbage) return "point " + std::to_string(cycle) + ": garbage in sector " + std::to_string(s);
        uint64_t g = info.kind == StampKind::kZero ? 0 : info.sequence;
        if (info.kind == StampKind::kValid && info.tag != tag_of(region.owner, r)) {
          return "point " + std::to_string(cycle) + ": sector " + std::to_string(s) + " holds another region's data";
        }
        if (i == 0) {
          region_g[r] = g;
        } else if (g != region_g[r]) {
          return "point " + std::to_string(cycle) + ": region " + std::to_string(r) +
                 " is torn (sectors from writes " + std::to_string(region_g[r]) + " and " +
                 std::to_string(g) + "): a write straddles the freeze";
        }
      }
    }
    // Per writer: a prefix of its writes.
    for (int w = 0; w < kWriters; w++) {
      uint64_t cut = 0;
      for (uint64_t r : owned_[w]) cut = std::max(cut, region_g[r]);
      std::vector<std::pair<uint64_t, uint64_t>> writes;
      {
        std::lock_guard lock(logs_[w].mutex);
        writes.assign(logs_[w].writes.begin(), logs_[w].writes.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(cut, logs_[w].writes.size())));
      }
      std::map<uint64_t, uint64_t> expected;  // region -> latest g <= cut
      for (const auto& [region, g] : writes) expected[region] = g;
      for (uint64_t r : owned_[w]) {
        uint64_t want = expected.count(r) ? expected[r] : 0;
        if (region_g[r] != want) {
          return "point " + std::to_string(cycle) + " is not a consistent cut: writer " +
                 std::to_string(w) + " has write " + std::to_string(cut) + " in, but region " +
                 std::to_string(r) + " holds write " + std::to_string(region_g[r]) +
                 " instead of " + std::to_string(want);
        }
      }
    }
    return "";
  }

  uint64_t seed_ = env_uint("AMIRROR_SEED", 12345);
  std::vector<Region> regions_;
  std::vector<uint64_t> region_of_sector_;
  std::vector<uint64_t> owned_[kWriters];
  WriterLog logs_[kWriters];
};

TEST_F(ConcurrencyTest, WritersReadersFreezesAndMerges) {
  const uint64_t writes_per_writer = env_uint("AMIRROR_WRITES", long_mode() ? 100000 : 12000);
  ScratchDir scratch("concurrency", /*in_memory=*/true);
  VolumeOptions options;
  options.size_bytes = kVolumeSizeBytes;
  options.chunk_size_bytes = kChunkSizeBytes;
  auto created = Volume::create(posix_file_system(), scratch.path(), options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Volume& volume = *created.value();

  std::atomic<int> writers_running{kWriters};
  std::atomic<bool> failed{false};
  std::mutex failure_mutex;
  std::string failure;
  auto fail = [&](const std::string& what) {
    std::lock_guard lock(failure_mutex);
    if (failure.empty()) failure = what;
    failed = true;
  };

  std::atomic<uint64_t> freezes{0};
  uint64_t merges = 0;
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; w++) {
    threads.emplace_back([&, w] {
      Random random(seed_ * 31 + static_cast<uint64_t>(w));
      std::vector<uint8_t> buffer;
      // Write at least writes_per_writer, and on until the freezer has frozen kMinFreezes
      // times: the test needs freezes under writes however fast either side runs.
      auto more = [&](uint64_t g) {
        return g <= writes_per_writer || (freezes.load() < kMinFreezes && g <= kMaxWritesFactor * writes_per_writer);
      };
      for (uint64_t g = 1; more(g) && !failed; g++) {
        uint64_t r = owned_[w][random.uniform(0, owned_[w].size() - 1)];
        const Region& region = regions_[r];
        {
          std::lock_guard lock(logs_[w].mutex);
          logs_[w].writes.push_back({r, g});
        }
        buffer.resize(region.sector_count * kStampSectorBytes);
        stamp_range(buffer, g, region.first_sector, tag_of(w, r));
        Status status = volume.write(region.first_sector * kStampSectorBytes, buffer, random.percent(1));
        if (!status.ok()) fail("write: " + status.to_string());
        if (random.percent(2)) {
          if (Status flushed = volume.flush(); !flushed.ok()) fail("flush: " + flushed.to_string());
        }
      }
      writers_running--;
    });
  }
  for (int reader = 0; reader < kReaders; reader++) {
    threads.emplace_back([&, reader] {
      Random random(seed_ * 77 + static_cast<uint64_t>(reader));
      std::vector<uint8_t> buffer;
      while (writers_running > 0 && !failed) {
        uint64_t first = random.uniform(0, kSectors - 1);
        uint64_t count = std::min<uint64_t>(random.uniform(1, 96), kSectors - first);
        buffer.resize(count * kStampSectorBytes);
        if (Status status = volume.read(first * kStampSectorBytes, buffer); !status.ok()) {
          fail("read: " + status.to_string());
          break;
        }
        for (uint64_t i = 0; i < count; i++) {
          uint64_t s = first + i;
          StampInfo info = parse_sector(std::span(buffer).subspan(i * kStampSectorBytes, kStampSectorBytes), s);
          uint64_t r = region_of_sector_[s];
          if (info.kind == StampKind::kGarbage ||
              (info.kind == StampKind::kValid && info.tag != tag_of(regions_[r].owner, r))) {
            fail("reader saw garbage or foreign data in sector " + std::to_string(s));
          }
        }
      }
    });
  }
  std::thread freezer([&] {
    Random random(seed_ * 5);
    std::map<uint64_t, std::vector<uint8_t>> snapshots;
    std::vector<uint8_t> image(kVolumeSizeBytes);
    while (writers_running > 0 && !failed) {
      auto cycle = random.percent(50) ? volume.freeze()
                                      : [&]() -> Result<uint64_t> {
                                          Volume* one[] = {&volume};
                                          auto cycles = Volume::freeze_group(one);
                                          if (!cycles.ok()) return cycles.status();
                                          return cycles.value()[0];
                                        }();
      if (!cycle.ok()) {
        fail("freeze: " + cycle.status().to_string());
        break;
      }
      freezes++;
      if (Status status = volume.read_frozen(cycle.value(), 0, image); !status.ok()) {
        fail("read_frozen: " + status.to_string());
        break;
      }
      if (std::string e = check_cut(image, cycle.value()); !e.empty()) {
        fail(e);
        break;
      }
      snapshots[cycle.value()] = image;
      while (volume.cycle() - volume.base_cycle() >= random.uniform(1, 4)) {
        if (Status status = volume.merge_oldest(); !status.ok()) {
          fail("merge_oldest: " + status.to_string());
          break;
        }
        merges++;
        uint64_t base = volume.base_cycle();
        std::erase_if(snapshots, [&](const auto& entry) { return entry.first < base; });
        if (snapshots.count(base)) {
          if (Status status = volume.read_frozen(base, 0, image); !status.ok()) {
            fail("read_frozen of the new base: " + status.to_string());
            break;
          }
          if (image != snapshots[base]) fail("point " + std::to_string(base) + " changed after a merge");
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(random.uniform(0, 500)));
    }
  });
  for (auto& thread : threads) thread.join();
  freezer.join();
  ASSERT_FALSE(failed) << failure << " (seed " << seed_ << ")";

  // Final image: each region holds its owner's last write to it.
  std::vector<uint8_t> image(kVolumeSizeBytes);
  ASSERT_TRUE(volume.read(0, image).ok());
  std::vector<uint64_t> last(regions_.size(), 0);
  for (int w = 0; w < kWriters; w++) {
    for (const auto& [region, g] : logs_[w].writes) last[region] = g;
  }
  for (uint64_t r = 0; r < regions_.size(); r++) {
    for (uint64_t i = 0; i < regions_[r].sector_count; i++) {
      uint64_t s = regions_[r].first_sector + i;
      StampInfo info = parse_sector(std::span(image).subspan(s * kStampSectorBytes, kStampSectorBytes), s);
      uint64_t g = info.kind == StampKind::kValid ? info.sequence : 0;
      ASSERT_EQ(g, last[r]) << "region " << r << " sector " << s << " (seed " << seed_ << ")";
    }
  }
  std::printf("concurrency: %d writers x %llu writes, %llu freezes, %llu merges\n", kWriters,
              static_cast<unsigned long long>(writes_per_writer),
              static_cast<unsigned long long>(freezes.load()), static_cast<unsigned long long>(merges));
  EXPECT_GE(freezes.load(), kMinFreezes);
}

}  // namespace
}  // namespace amirror::testing
