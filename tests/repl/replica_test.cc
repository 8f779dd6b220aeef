// SPDX-License-Identifier: Apache-2.0
// The target's replica: staging, commit, apply, refusal of deltas that do not fit,
// resume of a partly staged delta, and recovery of an interrupted apply.
#include "repl/replica.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <random>

#include "base/coding.h"
#include "base/uuid.h"

namespace amirror::repl {
namespace {

constexpr uint64_t kChunk = 4096;
constexpr uint64_t kSize = 64 * kChunk + 512;  // last chunk partial

class ReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/amirror-replica-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<Replica> create() {
    auto replica = Replica::open_or_create(posix_file_system(), dir_, "site-a", "db", kSize, kChunk);
    EXPECT_TRUE(replica.ok()) << replica.status().to_string();
    return std::move(replica).value();
  }

  std::vector<uint8_t> chunk_data(uint64_t chunk_index, uint8_t seed) {
    uint64_t length = std::min(kChunk, kSize - chunk_index * kChunk);
    std::vector<uint8_t> data(length);
    for (size_t i = 0; i < length; ++i) data[i] = static_cast<uint8_t>(seed + i * 7 + chunk_index);
    return data;
  }

  // Stages a delta of the given chunks (data) and returns the expected image.
  void stage_delta(Replica& replica, BeginDelta begin, const std::vector<uint64_t>& chunks, uint8_t seed,
                   std::vector<uint8_t>& image) {
    ASSERT_TRUE(replica.begin_delta(begin).ok());
    uint64_t index = 0;
    for (uint64_t chunk_index : chunks) {
      std::vector<uint8_t> data = chunk_data(chunk_index, seed);
      ASSERT_TRUE(replica.stage({index++, chunk_index, RecordKind::kData, data}).ok());
      std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(chunk_index * kChunk));
    }
  }

  std::vector<uint8_t> read_all(Replica& replica) {
    std::vector<uint8_t> out(kSize);
    EXPECT_TRUE(replica.read(0, out).ok());
    return out;
  }

  std::string dir_;
};

TEST_F(ReplicaTest, AppliesDeltasInOrderAndRefusesOthers) {
  auto replica = create();
  std::vector<uint8_t> image(kSize, 0);
  stage_delta(*replica, {0, 3, 1000, 3, 0, true}, {1, 5, 64}, 1, image);
  ASSERT_TRUE(replica->end_delta(3).ok());
  ASSERT_TRUE(replica->apply([] {}).ok());
  EXPECT_EQ(replica->state().applied_cycle, 3u);
  EXPECT_EQ(read_all(*replica), image);

  // A delta whose base is not the replica's cycle is refused, like a replayed or
  // out-of-order ZFS incremental stream; nothing changes.
  EXPECT_FALSE(replica->begin_delta({2, 4, 0, 1, 0, false}).ok());
  EXPECT_FALSE(replica->begin_delta({3, 3, 0, 1, 0, false}).ok());
  EXPECT_EQ(read_all(*replica), image);

  // An incremental delta with a zero record.
  ASSERT_TRUE(replica->begin_delta({3, 5, 2000, 2, 0, false}).ok());
  std::vector<uint8_t> data = chunk_data(2, 9);
  ASSERT_TRUE(replica->stage({0, 2, RecordKind::kData, data}).ok());
  ASSERT_TRUE(replica->stage({1, 5, RecordKind::kZero, {}}).ok());
  std::copy(data.begin(), data.end(), image.begin() + 2 * kChunk);
  std::fill(image.begin() + 5 * kChunk, image.begin() + 6 * kChunk, 0);
  ASSERT_TRUE(replica->end_delta(2).ok());
  ASSERT_TRUE(replica->apply([] {}).ok());
  EXPECT_EQ(replica->state().applied_cycle, 5u);
  EXPECT_EQ(read_all(*replica), image);
}

TEST_F(ReplicaTest, RefusesBadRecords) {
  auto replica = create();
  ASSERT_TRUE(replica->begin_delta({0, 1, 0, 2, 0, true}).ok());
  std::vector<uint8_t> short_data(100, 1);
  EXPECT_FALSE(replica->stage({0, 1, RecordKind::kData, short_data}).ok()) << "wrong length";
  std::vector<uint8_t> data = chunk_data(1, 1);
  EXPECT_FALSE(replica->stage({1, 1, RecordKind::kData, data}).ok()) << "record out of sequence";
  EXPECT_FALSE(replica->stage({0, 65, RecordKind::kData, data}).ok()) << "chunk beyond the end";
  ASSERT_TRUE(replica->stage({0, 3, RecordKind::kData, data.size() == kChunk ? chunk_data(3, 1) : data}).ok());
  EXPECT_FALSE(replica->stage({1, 2, RecordKind::kData, chunk_data(2, 1)}).ok()) << "chunks must ascend";
  EXPECT_FALSE(replica->end_delta(5).ok()) << "count mismatch";
}

TEST_F(ReplicaTest, ResumesAPartlyStagedDeltaAfterReopen) {
  std::vector<uint8_t> image(kSize, 0);
  {
    auto replica = create();
    stage_delta(*replica, {0, 2, 0, 4, 0, true}, {0, 7}, 3, image);
  }  // connection and process gone before END_DELTA
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  ReplicaState state = reopened.value()->state();
  // A clean close recorded how far the delta got: the source resumes there.
  EXPECT_EQ(state.staged_target_cycle, 2u);
  EXPECT_EQ(state.staged_record_count, 2u);
  EXPECT_EQ(state.staged_last_chunk_index, 7u);
  Replica& replica = *reopened.value();
  ASSERT_TRUE(replica.begin_delta({0, 2, 0, 4, 2, true}).ok());
  for (uint64_t chunk_index : {9, 64}) {
    std::vector<uint8_t> data = chunk_data(chunk_index, 3);
    ASSERT_TRUE(replica.stage({replica.state().staged_record_count, chunk_index, RecordKind::kData, data}).ok());
    std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(chunk_index * kChunk));
  }
  ASSERT_TRUE(replica.end_delta(4).ok());
  ASSERT_TRUE(replica.apply([] {}).ok());
  EXPECT_EQ(read_all(replica), image);
  // A resume that does not match the staged delta is refused.
  EXPECT_FALSE(replica.begin_delta({2, 3, 0, 4, 1, false}).ok());
}

// Resume points: 16 MiB apart at first, then an eighth of what was staged, at most
// 256 MiB: a crash costs at most an eighth of the work done (or 16 MiB) to resend.
TEST(ReplicaProgressTest, ResumePointsGrowRarerWithTheCopyWithinBounds) {
  EXPECT_EQ(progress_interval_bytes(0), 16 * kMiB);
  EXPECT_EQ(progress_interval_bytes(128 * kMiB), 16 * kMiB);
  EXPECT_EQ(progress_interval_bytes(512 * kMiB), 64 * kMiB);
  EXPECT_EQ(progress_interval_bytes(2 * kGiB), 256 * kMiB);
  EXPECT_EQ(progress_interval_bytes(64 * kGiB), 256 * kMiB);
  // How many a 1 GiB stream of 64 KiB records makes (was 64 at a fixed 16 MiB).
  uint64_t staged = 0, since = 0, points = 0;
  for (; staged < kGiB;) {
    staged += 64 * kKiB;
    since += 64 * kKiB;
    if (since >= progress_interval_bytes(staged)) {
      since = 0;
      points++;
    }
  }
  EXPECT_LE(points, 32u);
  EXPECT_GE(points, 16u);
}

// The first full copy into an empty replica goes straight into base.img: one write per
// byte, no layer and no merge; nothing is readable until it commits; an abandoned fill
// is emptied by the next one and never becomes part of a point.
TEST_F(ReplicaTest, AFirstFullCopyIsWrittenStraightIntoTheBase) {
  std::vector<uint8_t> image(kSize, 0);
  {
    auto replica = create();
    std::vector<uint8_t> abandoned(kSize, 0);
    stage_delta(*replica, {0, 2, 0, 3, 0, true}, {4, 6, 8}, 5, abandoned);
    EXPECT_TRUE(replica->filling_base());
    EXPECT_EQ(replica->activity(), "receiving");
    EXPECT_EQ(replica->image_cycle(), std::nullopt) << "base.img holds no point while it is filled";
    std::vector<uint8_t> out(kChunk);
    EXPECT_EQ(replica->read(0, out).code(), ErrorCode::kBusy);
    EXPECT_EQ(replica->read_point(0, 0, out).code(), ErrorCode::kBusy);
    EXPECT_FALSE(replica->allocated_extents(0, kSize).ok());
    // A delta that does not start from point 0 is refused and changes nothing.
    EXPECT_FALSE(replica->begin_delta({1, 3, 0, 1, 0, false}).ok());
    EXPECT_TRUE(replica->filling_base());
    // Given up for a newer point: chunks 4 and 8 of the abandoned fill must not survive.
    stage_delta(*replica, {0, 3, 3000, 2, 0, true}, {1, 6}, 7, image);
    for (const auto& layer : replica->store_volume()->layers()) EXPECT_EQ(layer.chunk_count, 0u);
    ASSERT_TRUE(replica->end_delta(2).ok());
    EXPECT_FALSE(replica->filling_base());
    EXPECT_EQ(replica->state().applied_cycle, 3u);
    EXPECT_EQ(replica->state().applied_freeze_time_unix_ms, 3000);
    EXPECT_EQ(replica->image_cycle(), std::optional<uint64_t>(3));
    EXPECT_EQ(read_all(*replica), image);
  }
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->state().applied_cycle, 3u);
  EXPECT_EQ(read_all(*reopened.value()), image);
  // The raw image is the point, as status promises for image_path.
  auto base = posix_file_system().open(reopened.value()->image_path(), OpenMode::kOpenExisting);
  ASSERT_TRUE(base.ok());
  std::vector<uint8_t> raw(kSize);
  ASSERT_TRUE(base.value()->read_at(0, raw).ok());
  EXPECT_EQ(raw, image);
  // The next delta is incremental and goes through a layer as before.
  ASSERT_TRUE(reopened.value()->begin_delta({3, 4, 4000, 1, 0, false}).ok());
  EXPECT_FALSE(reopened.value()->filling_base());
}

// A replica that already holds a point takes a full delta the old way (into a layer,
// then merged), so its point stays readable until the new one commits.
TEST_F(ReplicaTest, AFullDeltaOverAnExistingPointIsStagedInALayer) {
  auto replica = create();
  std::vector<uint8_t> image(kSize, 0);
  stage_delta(*replica, {0, 1, 1000, 1, 0, true}, {2}, 1, image);
  ASSERT_TRUE(replica->end_delta(1).ok());
  std::vector<uint8_t> second(kSize, 0);
  stage_delta(*replica, {0, 5, 5000, 1, 0, true}, {3}, 2, second);
  EXPECT_FALSE(replica->filling_base());
  EXPECT_EQ(read_all(*replica), image) << "point 1 stays readable while the full delta is staged";
  ASSERT_TRUE(replica->end_delta(1).ok());
  ASSERT_TRUE(replica->apply([] {}).ok());
  EXPECT_EQ(read_all(*replica), second);
}

TEST_F(ReplicaTest, ACommittedDeltaIsServedBeforeMergeAndMergedOnOpen) {
  std::vector<uint8_t> image(kSize, 0);
  {
    auto replica = create();
    // The first (full) delta fills base.img directly; the next one goes through a layer.
    stage_delta(*replica, {0, 2, 0, 1, 0, true}, {1}, 4, image);
    ASSERT_TRUE(replica->end_delta(1).ok());
    stage_delta(*replica, {2, 6, 0, 3, 0, false}, {2, 3, 40}, 5, image);
    ASSERT_TRUE(replica->end_delta(3).ok());
    // Committed (frozen as point 6), not merged: readers already see the new point.
    EXPECT_EQ(read_all(*replica), image);
    EXPECT_EQ(replica->state().applied_cycle, 6u);
    EXPECT_EQ(replica->image_cycle(), 2u) << "base.img still holds the old point";
  }  // crash before the merge
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->state().applied_cycle, 6u);
  EXPECT_EQ(reopened.value()->image_cycle(), 6u) << "open merges down to keep 1";
  EXPECT_EQ(read_all(*reopened.value()), image);
}

TEST_F(ReplicaTest, RefusesAnotherGeometryAndCorruptMetadata) {
  { auto replica = create(); }
  // Smaller, or another chunk size (a larger size is a grow: GrowsWithItsSource...).
  EXPECT_FALSE(Replica::open_or_create(posix_file_system(), dir_, "site-a", "db", kSize - 512, kChunk).ok());
  EXPECT_FALSE(Replica::open_or_create(posix_file_system(), dir_, "site-a", "db", kSize, kChunk * 2).ok());
  {
    FILE* meta = std::fopen((dir_ + "/replica.meta").c_str(), "r+b");
    ASSERT_NE(meta, nullptr);
    std::fseek(meta, 20, SEEK_SET);
    std::fputc(0x5a, meta);
    std::fclose(meta);
  }
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(reopened.status().message().find("checksum"), std::string::npos) << reopened.status().message();
}

// Failback (node_failover.cc) turns a demoted volume into a replica whose base is
// labelled as the common point, with resync.meta listing the chunks it changed after
// that point. The base is not that point (it holds the writes being discarded): it is
// not readable as one while resyncing, and it is not kept once the first delta commits
// — also when the process stopped between that commit and the removal of resync.meta.
TEST_F(ReplicaTest, AFailedBackBaseIsNotKeptAsTheCommonPoint) {
  std::vector<uint8_t> image(kSize, 0);
  {
    auto replica = create();
    stage_delta(*replica, {0, 3, 0, 2, 0, true}, {1, 5}, 1, image);  // base 3: this side's own data
    ASSERT_TRUE(replica->end_delta(2).ok());
    ASSERT_TRUE(replica->apply([] {}).ok());
    ASSERT_TRUE(replica->set_keep(4).ok());
  }
  ASSERT_TRUE(Replica::write_resync(posix_file_system(), dir_, {3, new_uuid(), {{1, 1}}}).ok());
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  Replica& replica = *reopened.value();
  ASSERT_TRUE(replica.resyncing());
  std::vector<uint8_t> out(kSize);
  EXPECT_FALSE(replica.read_point(3, 0, out).ok()) << "the labelled base read as point 3";
  // The source's delta from 3 overwrites chunk 1 (changed here) and chunk 2 (there).
  stage_delta(replica, {3, 5, 0, 2, 0, false}, {1, 2}, 7, image);
  ASSERT_TRUE(replica.end_delta(2).ok());
  ASSERT_TRUE(replica.apply([] {}).ok());
  EXPECT_FALSE(replica.resyncing());
  ASSERT_EQ(replica.points().size(), 1u);
  EXPECT_EQ(replica.points().front().cycle, 5u);
  EXPECT_EQ(read_all(replica), image);

  // resync.meta left behind by a stop after the commit: open finishes the resync.
  stage_delta(replica, {5, 6, 0, 1, 0, false}, {9}, 8, image);
  ASSERT_TRUE(replica.end_delta(1).ok());
  reopened.value().reset();
  ASSERT_TRUE(Replica::write_resync(posix_file_system(), dir_, {5, new_uuid(), {{1, 1}}}).ok());
  auto again = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_FALSE(again.value()->resyncing());
  ASSERT_EQ(again.value()->points().size(), 1u);
  EXPECT_EQ(again.value()->points().front().cycle, 6u);
  EXPECT_EQ(read_all(*again.value()), image);
}

// Names of one character are valid everywhere (validate_name: {1,64}); the shortest
// replica.meta (134 bytes) must load, keep its names and cycle, and still be refused
// when cut below the format's fixed part.
TEST_F(ReplicaTest, OneCharacterNamesRoundTripThroughMeta) {
  std::vector<uint8_t> image(kSize, 0);
  {
    auto created = Replica::open_or_create(posix_file_system(), dir_, "a", "v", kSize, kChunk);
    ASSERT_TRUE(created.ok()) << created.status().to_string();
    stage_delta(*created.value(), {0, 1, 1234, 2, 0, false}, {0, 5}, 9, image);
    ASSERT_TRUE(created.value()->end_delta(2).ok());
    ASSERT_TRUE(created.value()->apply([] {}).ok());
  }
  EXPECT_EQ(std::filesystem::file_size(dir_ + "/replica.meta"), 134u);
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->source_node(), "a");
  EXPECT_EQ(reopened.value()->volume(), "v");
  EXPECT_EQ(reopened.value()->state().applied_cycle, 1u);
  EXPECT_EQ(reopened.value()->state().applied_freeze_time_unix_ms, 1234);
  EXPECT_EQ(read_all(*reopened.value()), image);
  reopened.value().reset();
  std::filesystem::resize_file(dir_ + "/replica.meta", 127);
  auto truncated = Replica::open(posix_file_system(), dir_);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find("not an amirror replica file"), std::string::npos)
      << truncated.status().message();
}

// The source volume grew (`volume resize`): OPEN_REPLICA brings the larger size and
// the replica grows instead of refusing; its point reads zeros past the old end, the
// old short last chunk takes a whole chunk, and the new region takes deltas. A smaller
// size or another chunk size is still refused and changes nothing.
TEST_F(ReplicaTest, GrowsWithItsSourceAndRefusesToShrink) {
  constexpr uint64_t kGrown = kSize + 40 * kChunk;  // chunk 64 becomes whole, 65.. new
  std::vector<uint8_t> image(kSize, 0);
  {
    auto replica = create();
    stage_delta(*replica, {0, 3, 1000, 2, 0, true}, {1, 64}, 1, image);
    ASSERT_TRUE(replica->end_delta(2).ok());
    ASSERT_TRUE(replica->apply([] {}).ok());
  }
  auto grown = Replica::open_or_create(posix_file_system(), dir_, "site-a", "db", kGrown, kChunk);
  ASSERT_TRUE(grown.ok()) << grown.status().to_string();
  Replica& replica = *grown.value();
  EXPECT_EQ(replica.size_bytes(), kGrown);
  image.resize(kGrown, 0);
  std::vector<uint8_t> actual(kGrown);
  ASSERT_TRUE(replica.read(0, actual).ok());
  EXPECT_EQ(actual, image) << "the applied point must read zeros past its old end";
  EXPECT_EQ(replica.state().applied_cycle, 3u) << "growing keeps the applied point";

  for (auto [size, chunk] : {std::pair{kSize, kChunk}, std::pair{kGrown - 512, kChunk}, std::pair{kGrown, 2 * kChunk}}) {
    Status refused = replica.follow_source_geometry(size, chunk);
    ASSERT_FALSE(refused.ok()) << size << " bytes, " << chunk << "-byte chunks";
    EXPECT_NE(refused.message().find("replica delete site-a/db"), std::string::npos) << refused.message();
    EXPECT_EQ(replica.size_bytes(), kGrown);
  }

  // A delta after the growth: the old short chunk whole, and a chunk of the new region.
  ASSERT_TRUE(replica.begin_delta({3, 4, 2000, 2, 0, false}).ok());
  std::vector<uint8_t> whole(kChunk), fresh(kChunk);
  for (size_t i = 0; i < kChunk; ++i) whole[i] = static_cast<uint8_t>(i * 3 + 1), fresh[i] = static_cast<uint8_t>(i * 5 + 2);
  ASSERT_TRUE(replica.stage({0, 64, RecordKind::kData, whole}).ok());
  ASSERT_TRUE(replica.stage({1, 100, RecordKind::kData, fresh}).ok());
  ASSERT_TRUE(replica.end_delta(2).ok());
  ASSERT_TRUE(replica.apply([] {}).ok());
  std::copy(whole.begin(), whole.end(), image.begin() + 64 * kChunk);
  std::copy(fresh.begin(), fresh.end(), image.begin() + 100 * kChunk);
  ASSERT_TRUE(replica.read(0, actual).ok());
  EXPECT_EQ(actual, image);
  grown.value().reset();

  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->size_bytes(), kGrown);
  ASSERT_TRUE(reopened.value()->read(0, actual).ok());
  EXPECT_EQ(actual, image);
}

// A grow cut short after the volume grew and before replica.meta recorded it: open()
// finishes it (the volume is the truth; only a grow makes it larger).
TEST_F(ReplicaTest, OpenFinishesAGrowCutShortBeforeReplicaMeta) {
  {
    auto replica = create();
    ASSERT_TRUE(replica->store_volume()->resize(kSize + kChunk).ok());  // step 1 only
  }
  auto reopened = Replica::open(posix_file_system(), dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  EXPECT_EQ(reopened.value()->size_bytes(), kSize + kChunk);
  reopened.value().reset();
  // replica.meta says so itself now (size_bytes: the u64 at byte 16).
  auto meta = read_small_file(posix_file_system(), dir_ + "/replica.meta", 4096);
  ASSERT_TRUE(meta.ok());
  EXPECT_EQ(get_u64(reinterpret_cast<const uint8_t*>(meta.value().data()) + 16), kSize + kChunk);
}

}  // namespace
}  // namespace amirror::repl
