// SPDX-License-Identifier: Apache-2.0
// The pending files (node/pending_file.h) through mirror state saves: a torn or damaged
// page reads as all ones (resend, never lose a chunk); a save cut by power loss at any
// point leaves, for the JSON that survived, at least the chunks it needs and nothing
// outside what the old or new state had (model test against std::set, seeded);
// a format-2 file converts; a save rewrites only changed pages.
#include "node/pending_file.h"

#include <gtest/gtest.h>

#include <fstream>

#include "node/mirror_state.h"
#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

class PendingFileTest : public ::testing::Test {
 protected:
  MirrorState state_with(std::map<std::string, ChunkBitmap> pending, uint64_t tag) {
    MirrorState state;
    state.unit = "volume:v";
    state.targets = {"a", "b"};
    state.interval_ms = tag;  // which save this is, to find the model of what was loaded
    for (auto& [target, bits] : pending) {
      state.target_states[target].applied_cycle = 3;
      state.target_states[target].pending_chunks = std::move(bits);
    }
    return state;
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  testing::ScratchDir scratch_{"pending-file"};
  const std::string dir_ = scratch_.path();
};

TEST_F(PendingFileTest, TornPageReadsAsAllOnesAndTheOthersSurvive) {
  ChunkBitmap bits{5, ChunkBitmap::kBitsPerPage + 9, 2 * ChunkBitmap::kBitsPerPage + 1};
  ASSERT_TRUE(save_mirror_state(posix_file_system(), dir_, "v", state_with({{"a", bits}}, 1)).ok());
  {
    // A write of page 1 (the second data page) with one more bit, torn: only its second
    // half (where that bit is) reached the disk.
    testing::ScratchDir other("pending-file-new");
    ChunkBitmap more = bits;
    more.set(ChunkBitmap::kBitsPerPage + 300 * 64);  // word 300: byte 8 + 2400 of the page
    ASSERT_TRUE(save_mirror_state(posix_file_system(), other.path(), "v", state_with({{"a", more}}, 2)).ok());
    std::ifstream newer(other.path() + "/v@a.pending", std::ios::binary);
    std::string half(2048, '\0');
    newer.seekg(2 * kPendingPageBytes + 2048);
    newer.read(half.data(), static_cast<std::streamsize>(half.size()));
    std::fstream file(path("v@a.pending"), std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(2 * kPendingPageBytes + 2048);
    file.write(half.data(), static_cast<std::streamsize>(half.size()));
  }
  auto loaded = read_pending_file(posix_file_system(), path("v@a.pending"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_TRUE(loaded->test(5));
  EXPECT_TRUE(loaded->test(2 * ChunkBitmap::kBitsPerPage + 1));
  EXPECT_FALSE(loaded->test(6));
  for (uint64_t chunk_index = ChunkBitmap::kBitsPerPage; chunk_index < 2 * ChunkBitmap::kBitsPerPage; ++chunk_index) {
    ASSERT_TRUE(loaded->test(chunk_index)) << "chunk " << chunk_index << " of the torn page was dropped";
  }
}

TEST_F(PendingFileTest, DamagedHeaderIsAnErrorNamingTheFile) {
  ASSERT_TRUE(save_mirror_state(posix_file_system(), dir_, "v", state_with({{"a", ChunkBitmap{1}}}, 1)).ok());
  {
    std::fstream file(path("v@a.pending"), std::ios::in | std::ios::out | std::ios::binary);
    file.write("X", 1);
  }
  auto loaded = load_mirror_state(posix_file_system(), path("v.json"));
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().to_string().find("v@a.pending: damaged header"), std::string::npos)
      << loaded.status().to_string();
}

TEST_F(PendingFileTest, MissingFileGivesAFullCopy) {
  ASSERT_TRUE(save_mirror_state(posix_file_system(), dir_, "v", state_with({{"a", ChunkBitmap{1}}}, 1)).ok());
  ASSERT_TRUE(posix_file_system().remove(path("v@a.pending")).ok());
  auto loaded = load_mirror_state(posix_file_system(), path("v.json"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->target_states.at("a").applied_cycle, 0u);
}

TEST_F(PendingFileTest, SaveWritesOnlyChangedPages) {
  testing::FaultFileSystem fs;
  ChunkBitmap bits;
  bits.set_range(0, 40 * ChunkBitmap::kBitsPerPage);  // 40 pages
  MirrorState state = state_with({{"a", bits}}, 1);
  DurablePendingPages durable;
  ASSERT_TRUE(save_mirror_state(fs, dir_, "v", state, &durable).ok());
  uint64_t writes_before = fs.operation_count(testing::FaultFileSystem::kOpWrite);
  state.target_states["a"].pending_chunks.set(40 * ChunkBitmap::kBitsPerPage + 3);  // page 40 only
  ASSERT_TRUE(save_mirror_state(fs, dir_, "v", state, &durable).ok());
  // Page 40 in each of the two steps would be two; it is new, so step 1 writes it and
  // step 2 has nothing to drop: one page write, plus the JSON's.
  EXPECT_EQ(fs.operation_count(testing::FaultFileSystem::kOpWrite) - writes_before, 2u);
  auto loaded = load_mirror_state(fs, path("v.json"));
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->target_states.at("a").pending_chunks, state.target_states["a"].pending_chunks);
}

TEST_F(PendingFileTest, FormatTwoConvertsOnTheNextSave) {
  {
    std::ofstream file(path("v.json"));
    file << R"({"format": 2, "unit": "volume:v", "targets": ["a"], "interval_ms": 1000, "running": true,
      "target_states": {"a": {"applied_cycle": 4, "applied_freeze_time_unix_ms": 0, "inflight_cycle": 0,
                              "bytes_sent": 0, "pending_chunks": [3, 70000]}}})";
  }
  testing::FaultFileSystem fs;
  auto loaded = load_mirror_state(fs, path("v.json"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->target_states.at("a").pending_chunks.to_set(), (std::set<uint64_t>{3, 70000}));
  // A power loss anywhere in the converting save leaves a file that loads the same.
  for (uint64_t cut = 0;; ++cut) {
    fs.mark_all_synced();
    fs.fail_after(cut, ErrorCode::kIo, testing::FaultFileSystem::kOpAllMutating);
    Status saved = save_mirror_state(fs, dir_, "v", *loaded);
    fs.clear_faults();
    if (!saved.ok()) {
      ASSERT_TRUE(fs.drop_random_unsynced(cut).ok());
    }
    auto again = load_mirror_state(fs, path("v.json"));
    ASSERT_TRUE(again.ok()) << "cut after " << cut << ": " << again.status().to_string();
    EXPECT_EQ(again->target_states.at("a").pending_chunks.to_set(), (std::set<uint64_t>{3, 70000})) << "cut " << cut;
    if (saved.ok()) break;
  }
  std::string text = read_small_file(fs, path("v.json"), 1 << 20).value();
  EXPECT_NE(text.find("\"format\":3"), std::string::npos) << text;
}

// Random set / clear / save with power loss cut into saves at random points, against a
// std::set per target and per save. After a crash the JSON loaded is the last saved
// one or the one being saved (`interval_ms` tags it); its pending chunks must hold all
// of that save's, and only chunks of that save or the other one (or of a page torn to
// all ones).
TEST_F(PendingFileTest, PowerLossNeverLosesAPendingChunk) {
  for (uint64_t seed : testing::seeds_to_run(4)) {
    std::printf("pending file model: seed %llu\n", static_cast<unsigned long long>(seed));
    SCOPED_TRACE("seed " + std::to_string(seed) + " (replay: AMIRROR_SEED=" + std::to_string(seed) + ")");
    testing::ScratchDir scratch("pending-model");
    const std::string dir = scratch.path();
    testing::FaultFileSystem fs;
    testing::Random random(seed);
    std::map<uint64_t, std::map<std::string, std::set<uint64_t>>> saved_models;  // tag -> target -> chunks
    std::map<std::string, ChunkBitmap> live{{"a", {}}, {"b", {}}};
    DurablePendingPages durable;
    uint64_t last_tag = 0;
    const uint64_t max_chunk = 5 * ChunkBitmap::kBitsPerPage;
    for (uint64_t tag = 1; tag <= 60; ++tag) {
      for (auto& [target, bits] : live) {
        uint64_t choice = random.uniform(0, 99);
        if (choice < 60) {
          for (uint64_t n = random.uniform(0, 50); n > 0; --n) bits.set(random.uniform(0, max_chunk));
        } else if (choice < 75) {
          bits.set_range(random.uniform(0, max_chunk), random.uniform(0, ChunkBitmap::kBitsPerPage / 4));
        } else if (choice < 90) {
          bits.clear();  // applied
        }
      }
      MirrorState state = state_with(live, tag);
      for (const auto& [target, bits] : live) saved_models[tag][target] = bits.to_set();
      const bool crash = random.percent(30);
      if (crash) fs.fail_after(random.uniform(0, 12), ErrorCode::kIo, testing::FaultFileSystem::kOpAllMutating);
      Status saved = save_mirror_state(fs, dir, "v", state, &durable);
      fs.clear_faults();
      if (!crash) {
        ASSERT_TRUE(saved.ok()) << saved.to_string();
        last_tag = tag;
        continue;
      }
      ASSERT_TRUE(fs.drop_random_unsynced(random.next()).ok());
      durable.clear();  // a restart knows nothing
      if (last_tag == 0 && !fs.exists(dir + "/v.json").value()) continue;
      auto loaded = load_mirror_state(fs, dir + "/v.json");
      ASSERT_TRUE(loaded.ok()) << "step " << tag << ": " << loaded.status().to_string();
      const uint64_t loaded_tag = loaded->interval_ms;
      ASSERT_TRUE(loaded_tag == tag || loaded_tag == last_tag) << "step " << tag << " loaded " << loaded_tag;
      for (auto& [target, bits] : live) {
        const ChunkBitmap& got = loaded->target_states.at(target).pending_chunks;
        for (uint64_t chunk_index : saved_models[loaded_tag][target]) {
          ASSERT_TRUE(got.test(chunk_index)) << "step " << tag << ": target " << target << " lost chunk " << chunk_index;
        }
        const uint64_t other_tag = loaded_tag == tag ? last_tag : tag;
        uint64_t unknown = 0;
        got.for_each_set([&](uint64_t chunk_index) {
          const ChunkBitmap::PagePtr& page = got.page(chunk_index / ChunkBitmap::kBitsPerPage);
          if (ChunkBitmap::count_page(page) == ChunkBitmap::kBitsPerPage) return;  // torn: all ones
          bool known = saved_models[loaded_tag][target].contains(chunk_index) ||
                       (other_tag != 0 && saved_models[other_tag][target].contains(chunk_index));
          unknown += known ? 0 : 1;
        });
        EXPECT_EQ(unknown, 0u) << "step " << tag << ": target " << target << " gained chunks nobody set";
        // The node goes on with what it loaded: a superset is what it must resend.
        bits = got;
        saved_models[loaded_tag][target] = got.to_set();
      }
      last_tag = loaded_tag;
    }
  }
}

}  // namespace
}  // namespace amirror::node
