// SPDX-License-Identifier: Apache-2.0
// BackgroundChunkStager (repl/chunk_stager.h) on a real replica: records are staged in
// order, drain() waits for all of them, and after an error nothing more is staged.
#include "repl/chunk_stager.h"

#include <gtest/gtest.h>

#include <vector>

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

}  // namespace
}  // namespace amirror::repl
