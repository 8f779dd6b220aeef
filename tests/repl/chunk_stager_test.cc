// SPDX-License-Identifier: Apache-2.0
// BackgroundChunkStager (repl/chunk_stager.h) on a real replica: records are staged in
// order, drain() waits for all of them, and after an error nothing more is staged.
#include "repl/chunk_stager.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "testing/gated_file_system.h"
#include "testing/test_support.h"

namespace amirror::repl {
namespace {

constexpr uint64_t kChunk = 4096;
constexpr uint64_t kSize = 64 * kChunk;

class ChunkStagerTest : public ::testing::Test {
 protected:
  ChunkStagerTest() : scratch_("chunk-stager", /*in_memory=*/true), random_(11) {}

  void SetUp() override {
    auto replica = Replica::open_or_create(posix_file_system(), scratch_.path(), "a", "v", kSize, kChunk);
    ASSERT_TRUE(replica.ok()) << replica.status().to_string();
    replica_ = std::move(replica).value();
    image_.assign(kSize, 0);
  }

  // A CHUNK frame as the socket delivers it (header stripped), with random data that
  // the expected image takes too.
  Frame chunk_frame(uint64_t record_index, uint64_t chunk_index) {
    std::vector<uint8_t> data(kChunk);
    random_.fill(data);
    std::copy(data.begin(), data.end(), image_.begin() + static_cast<ptrdiff_t>(chunk_index * kChunk));
    std::vector<uint8_t> encoded = encode_chunk_frame(record_index, chunk_index, RecordKind::kData, data);
    return Frame{FrameType::kChunk, std::vector<uint8_t>(encoded.begin() + kFrameHeaderBytes, encoded.end())};
  }

  testing::ScratchDir scratch_;
  testing::Random random_;
  std::shared_ptr<Replica> replica_;
  std::vector<uint8_t> image_;
};

TEST_F(ChunkStagerTest, StagesEveryRecordInOrderBeforeDrainReturns) {
  const uint64_t count = kSize / kChunk;
  ASSERT_TRUE(replica_->begin_delta({0, 1, 0, count, 0, true}).ok());
  BackgroundChunkStager stager(3 * kChunk);  // smaller than the delta: stage() waits for the thread
  for (uint64_t i = 0; i < count; ++i) ASSERT_TRUE(stager.stage(replica_, chunk_frame(i, i)).ok()) << "record " << i;
  ASSERT_TRUE(stager.drain().ok());
  ASSERT_TRUE(replica_->end_delta(count).ok()) << "drain() returned before every record was staged";
  ASSERT_TRUE(replica_->apply([] {}).ok());
  std::vector<uint8_t> actual(kSize);
  ASSERT_TRUE(replica_->read(0, actual).ok());
  EXPECT_TRUE(actual == image_) << "the replica differs from the records staged";
}

TEST_F(ChunkStagerTest, AfterAnErrorNothingMoreIsStagedAndTheErrorIsReported) {
  ASSERT_TRUE(replica_->begin_delta({0, 1, 0, 10, 0, true}).ok());
  BackgroundChunkStager stager;
  ASSERT_TRUE(stager.stage(replica_, chunk_frame(0, 0)).ok());
  ASSERT_TRUE(stager.stage(replica_, chunk_frame(1, 1)).ok());
  (void)stager.stage(replica_, chunk_frame(5, 2));  // out of sequence: the replica refuses it
  (void)stager.stage(replica_, chunk_frame(2, 3));  // would be in sequence, but comes after the error
  Status drained = stager.drain();
  EXPECT_EQ(drained.code(), ErrorCode::kInvalidArgument) << drained.to_string();
  EXPECT_NE(drained.message().find("out of sequence"), std::string::npos) << drained.to_string();
  EXPECT_EQ(stager.stage(replica_, chunk_frame(2, 3)).code(), ErrorCode::kInvalidArgument)
      << "a stager that failed took another frame";
  EXPECT_EQ(replica_->state().staged_record_count, 2u) << "a record after the refused one was staged";
}

// While the disk holds the staging thread, the session may queue only up to the bound
// (plus the frame that crosses it): then stage() waits, so a target's memory stays
// bounded however far receiving runs ahead of writing. The thread is held at the first
// resume point (replica.meta written after 16 MiB staged), with 4 MiB chunks.
TEST(ChunkStagerBoundTest, StageWaitsOnceTheQueueHoldsTheBound) {
  constexpr uint64_t kBigChunk = 4 * kMiB;
  constexpr uint64_t kCount = 12;
  constexpr uint64_t kBound = 2 * kBigChunk;
  testing::ScratchDir scratch("chunk-stager-bound", /*in_memory=*/true);
  testing::GatedFileSystem fs(testing::GatedFileSystem::Gate::kOpen, "replica.meta.tmp", /*armed=*/false);
  auto opened = Replica::open_or_create(fs, scratch.path(), "a", "v", kCount * kBigChunk, kBigChunk);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  std::shared_ptr<Replica> replica = std::move(opened).value();
  ASSERT_TRUE(replica->begin_delta({0, 1, 0, kCount, 0, true}).ok());
  fs.arm();

  testing::Random random(5);
  std::vector<Frame> frames;
  std::vector<uint8_t> image(kCount * kBigChunk);
  for (uint64_t i = 0; i < kCount; ++i) {
    std::span<uint8_t> data(image.data() + i * kBigChunk, kBigChunk);
    random.fill(data);
    std::vector<uint8_t> encoded = encode_chunk_frame(i, i, RecordKind::kData, data);
    frames.push_back(Frame{FrameType::kChunk, std::vector<uint8_t>(encoded.begin() + kFrameHeaderBytes, encoded.end())});
  }
  const uint64_t frame_bytes = frames.front().payload.size();

  BackgroundChunkStager stager(kBound);
  std::atomic<uint64_t> returned{0};
  std::atomic<bool> failed{false};
  std::thread session([&] {
    for (Frame& frame : frames) {
      if (!stager.stage(replica, std::move(frame)).ok()) failed = true;
      returned.fetch_add(1);
    }
  });
  ASSERT_TRUE(fs.wait_until_one_waits(std::chrono::minutes(2))) << "staging never reached its first resume point";
  // Wait on state, not time: either stage() waits for room, or (the bound broken) the
  // session handed over every frame.
  while (!stager.stage_waits_for_room() && returned.load() < kCount) std::this_thread::yield();
  const uint64_t handed_over = returned.load();
  const uint64_t queued = stager.queued_bytes();
  fs.open_gate();
  session.join();
  ASSERT_TRUE(stager.drain().ok());
  EXPECT_FALSE(failed.load());
  EXPECT_LT(handed_over, kCount) << "stage() never waited with the staging thread held";
  EXPECT_LE(queued, kBound + frame_bytes) << "the queue held more than its bound while the disk was held";
  // Records 0-3 taken by the staging thread (held in record 3's resume point), 4 and 5
  // queued (two frames cross the bound): the seventh stage() call waits.
  EXPECT_EQ(handed_over, 4u + 2u);
  ASSERT_TRUE(replica->end_delta(kCount).ok());
  ASSERT_TRUE(replica->apply([] {}).ok());
  std::vector<uint8_t> actual(image.size());
  ASSERT_TRUE(replica->read(0, actual).ok());
  EXPECT_TRUE(actual == image) << "the replica differs from the records staged";
}

}  // namespace
}  // namespace amirror::repl
