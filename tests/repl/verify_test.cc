// SPDX-License-Identifier: Apache-2.0
// `mirror verify` without sockets: the digest and range pieces (repl/verify.h), the
// source's VerifySession against the target's ReceiverSession over a SimLink (a replica
// damaged in its raw file is found chunk for chunk and repaired), the target's
// refusals, a lying target, and Replica::repair_chunks' contract including power loss.
#include <gtest/gtest.h>

#include <fcntl.h>

#include "repl/receiver_session.h"
#include "repl/replica.h"
#include "repl/verify.h"
#include "repl/verify_session.h"
#include "store/volume.h"
#include "testing/fault_file_system.h"
#include "testing/sim_link.h"
#include "testing/test_support.h"
#include "volume_and_replica.h"

namespace amirror::repl {
namespace {

using testing::Random;
using testing::ScratchDir;
using testing::SimLink;

constexpr uint64_t kChunkBytes = 4096;
// 64 whole chunks and a 512-byte one at the end, which every digest must clip.
constexpr uint64_t kVolumeBytes = 64 * kChunkBytes + 512;
constexpr uint64_t kLastChunk = 64;

std::vector<ChunkRange> ranges(std::initializer_list<std::pair<uint64_t, uint64_t>> list) {
  std::vector<ChunkRange> result;
  for (auto [first, count] : list) result.push_back({first, count});
  return result;
}

TEST(VerifyPieces, Sha256OfKnownInputAndZerosAsAMarker) {
  ChunkHasher hasher;
  const std::string abc = "abc";
  ChunkDigest digest = hasher.digest(7, std::span(reinterpret_cast<const uint8_t*>(abc.data()), abc.size()));
  EXPECT_EQ(digest.chunk_index, 7u);
  ASSERT_EQ(digest.kind, DigestKind::kHash);
  const uint8_t expected[kChunkDigestBytes] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                               0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                               0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  EXPECT_TRUE(std::equal(digest.digest.begin(), digest.digest.end(), expected)) << "not SHA-256";
  std::vector<uint8_t> zeros(kChunkBytes);
  EXPECT_EQ(hasher.digest(1, zeros).kind, DigestKind::kZero);
  zeros[kChunkBytes - 1] = 1;  // one byte, at the very end, is enough
  EXPECT_EQ(hasher.digest(1, zeros).kind, DigestKind::kHash);
  // The same content under another index differs only by index (a copy is found equal).
  EXPECT_EQ(hasher.digest(1, zeros).digest, hasher.digest(2, zeros).digest);
}

TEST(VerifyPieces, RangesFromExtentsUnionsWindowsAndCollection) {
  // An extent's partial chunks count; two extents in one chunk give one range.
  std::vector<Extent> extents = {{0, 10}, {20, 10}, {3 * kChunkBytes + 5, 2 * kChunkBytes}, {9 * kChunkBytes, 1}};
  EXPECT_EQ(ranges_of_extents(extents, kChunkBytes), ranges({{0, 1}, {3, 3}, {9, 1}}));

  // Overlapping and adjacent ranges are joined.
  EXPECT_EQ(union_of(ranges({{0, 2}, {5, 1}, {20, 2}}), ranges({{1, 3}, {6, 2}, {30, 1}})),
            ranges({{0, 4}, {5, 3}, {20, 2}, {30, 1}}));
  EXPECT_EQ(union_of({}, ranges({{4, 1}})), ranges({{4, 1}}));

  WindowCursor cursor(ranges({{0, 5}, {10, 3}, {20, 1}}), 4);
  EXPECT_EQ(cursor.next(), ranges({{0, 4}}));
  EXPECT_EQ(cursor.next(), ranges({{4, 1}, {10, 3}}));
  EXPECT_EQ(cursor.next(), ranges({{20, 1}}));
  EXPECT_TRUE(cursor.done());

  RangeCollector collector;
  for (uint64_t chunk : {1, 2, 3, 7, 9, 10}) collector.add(chunk);
  EXPECT_EQ(collector.ranges(), ranges({{1, 3}, {7, 1}, {9, 2}}));
  EXPECT_EQ(collector.chunk_count(), 6u);

  EXPECT_EQ(chunks_in(ranges({{0, 3}, {kLastChunk, 1}})), 4u);
  EXPECT_EQ(bytes_in(ranges({{0, 3}, {kLastChunk, 1}}), kVolumeBytes, kChunkBytes), 3 * kChunkBytes + 512);
  EXPECT_EQ(verify_window_chunks(4096), kMaxVerifyWindowChunks);
  EXPECT_EQ(verify_window_chunks(64 * 1024), 1024u);
  EXPECT_EQ(verify_window_chunks(4 << 20), 16u);
}

// The target's side: one peer "a" whose one replica may be verified (never created).
class VerifyAccess : public ReplicaAccess {
 public:
  explicit VerifyAccess(std::shared_ptr<Replica> replica) : replica_(std::move(replica)) {}
  Status admit_peer(const std::string& node) override {
    return node == "a" ? Status() : invalid_argument("'" + node + "' is not a peer");
  }
  Result<std::shared_ptr<Replica>> acquire(const std::string&, const OpenReplica&) override {
    ADD_FAILURE() << "a verify must not open (or create) a replica for a delta";
    return invalid_argument("no deltas here");
  }
  Result<std::shared_ptr<Replica>> acquire_existing(const std::string&, const OpenReplica& open) override {
    if (replica_ == nullptr || open.volume != "v") return not_found("there is no replica a/" + open.volume);
    return replica_;
  }
  void release(const std::string&, const std::string&) override {}

 private:
  std::shared_ptr<Replica> replica_;
};

class VerifySessionTest : public VolumeAndReplicaTest {
 protected:
  VerifySessionTest() : VolumeAndReplicaTest("verify", kVolumeBytes, kChunkBytes, 11) {}

  void SetUp() override {
    VolumeAndReplicaTest::SetUp();
    point_ = write_and_freeze({0, 1, 2, 7, 20, 63, kLastChunk});
    copy_point_to_replica(point_);
  }

  // A full delta of point `cycle`, staged and applied as a target does.
  void copy_point_to_replica(uint64_t cycle) {
    auto chunks = volume_->allocated_chunks(cycle);
    ASSERT_TRUE(chunks.ok());
    ASSERT_TRUE(replica_->begin_delta(BeginDelta{0, cycle, 1000, chunks->size(), 0, true}).ok());
    std::vector<uint8_t> data(kChunkBytes);
    uint64_t record = 0;
    for (uint64_t chunk : chunks.value()) {
      std::span<uint8_t> content(data.data(), std::min(kChunkBytes, kVolumeBytes - chunk * kChunkBytes));
      ASSERT_TRUE(volume_->read_frozen(cycle, chunk * kChunkBytes, content).ok());
      ASSERT_TRUE(replica_->stage(ChunkRecord{record++, chunk, RecordKind::kData, content}).ok());
    }
    ASSERT_TRUE(replica_->end_delta(record).ok());
    ASSERT_TRUE(replica_->apply([] {}).ok());
  }

  // Garbage or a hole in the replica's raw file, behind the node's back.
  void damage(uint64_t offset, uint64_t length) {
    std::vector<uint8_t> garbage(length);
    random_.fill(garbage);
    auto file = posix_file_system().open(replica_->image_path(), OpenMode::kOpenExisting);
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file.value()->write_at(offset, garbage).ok());
  }
  void punch(uint64_t chunk) {
    auto file = posix_file_system().open(replica_->image_path(), OpenMode::kOpenExisting);
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file.value()->punch_hole(chunk * kChunkBytes, kChunkBytes).ok());
  }

  // Moves frames as the node's driver does (node/mirror_verify.cc): the target answers
  // at once; the source takes a frame only when it needs one (or, with `eager`, as soon
  // as one is there). An error if the two wait for each other.
  Status pump(VerifySession& source, ReceiverSession& target, SimLink& link, bool eager) {
    for (int steps = 0; steps < 1'000'000; ++steps) {
      if (auto frame = link.receive(SimLink::kTarget)) {
        AMIRROR_RETURN_IF_ERROR(frame->status());
        AMIRROR_RETURN_IF_ERROR(target.on_frame(frame->value()));
      } else if ((eager || source.needs_frame()) && link.waiting(SimLink::kSource) > 0) {
        auto reply = link.receive(SimLink::kSource);
        AMIRROR_RETURN_IF_ERROR(reply->status());
        AMIRROR_RETURN_IF_ERROR(source.on_frame(reply->value()));
      } else if (!source.busy()) {
        return Status();
      } else if (source.needs_frame()) {
        return Status(ErrorCode::kTimeout, "stuck: the source waits for a frame that never comes");
      } else {
        AMIRROR_RETURN_IF_ERROR(source.advance());
      }
    }
    return Status(ErrorCode::kTimeout, "no end after a million steps");
  }

  // One connection; compares point `cycle` (and repairs with `repair`).
  Result<VerifyOutcome> verify(uint64_t cycle, bool repair = false, uint32_t window_chunks = 0, bool eager = false) {
    SimLink link;
    VerifyAccess access(replica_);
    VerifySession source("a", "b", link.sink(SimLink::kSource));
    ReceiverSession target("b", access, link.sink(SimLink::kTarget));
    source.set_window_chunks(window_chunks);
    VolumePointReader reader(*volume_, cycle);
    AMIRROR_RETURN_IF_ERROR(source.start());
    AMIRROR_RETURN_IF_ERROR(pump(source, target, link, eager));
    AMIRROR_RETURN_IF_ERROR(source.begin_volume("v", reader, cycle));
    AMIRROR_RETURN_IF_ERROR(pump(source, target, link, eager));
    if (repair && source.outcome().differing_chunks > 0) {
      AMIRROR_RETURN_IF_ERROR(source.begin_repair());
      AMIRROR_RETURN_IF_ERROR(pump(source, target, link, eager));
    }
    source_bytes_sent_ = link.bytes_sent(SimLink::kSource);
    return source.outcome();
  }

  uint64_t point_ = 0;
  uint64_t source_bytes_sent_ = 0;
};

TEST_F(VerifySessionTest, AnExactReplicaComparesEqualSendingDigestsOnly) {
  auto outcome = verify(point_);
  ASSERT_TRUE(outcome.ok()) << outcome.status().to_string();
  EXPECT_EQ(outcome->differing_chunks, 0u);
  EXPECT_TRUE(outcome->differing.empty());
  EXPECT_EQ(outcome->chunks_compared, 7u);
  EXPECT_EQ(outcome->bytes_compared, 6 * kChunkBytes + 512);
  EXPECT_LT(source_bytes_sent_, kChunkBytes) << "more than digests crossed the wire";
}

TEST_F(VerifySessionTest, DamageInTheRawFileIsFoundChunkForChunk) {
  damage(2 * kChunkBytes + 100, 10);             // data on both sides
  damage(30 * kChunkBytes, 1);                    // zero on the source, allocated now on the replica
  punch(20);                                      // data on the source, a hole on the replica
  damage(kLastChunk * kChunkBytes + 511, 1);      // the clipped last chunk, its last byte
  damage(40 * kChunkBytes - 1, 2);                // across a boundary: chunks 39 and 40 (zero on the source)
  for (bool eager : {false, true}) {
    // Windows of 3 chunks: many windows, several in flight, split inside the ranges.
    auto outcome = verify(point_, false, 3, eager);
    ASSERT_TRUE(outcome.ok()) << outcome.status().to_string();
    EXPECT_EQ(outcome->differing, ranges({{2, 1}, {20, 1}, {30, 1}, {39, 2}, {kLastChunk, 1}}));
    EXPECT_EQ(outcome->differing_chunks, 6u);
    EXPECT_EQ(outcome->chunks_compared, 10u) << "the union of both sides' allocated chunks";
    EXPECT_FALSE(outcome->repaired);
  }
  auto unchanged = verify(point_, false, 3);
  ASSERT_TRUE(unchanged.ok());
  EXPECT_EQ(unchanged->differing_chunks, 6u) << "a verify without --repair changed the replica";
}

TEST_F(VerifySessionTest, RepairResendsExactlyTheDifferingChunksAndComparesThemAgain) {
  damage(2 * kChunkBytes + 100, 10);
  damage(30 * kChunkBytes, 1);
  punch(20);
  damage(kLastChunk * kChunkBytes, 512);
  auto outcome = verify(point_, true, 2);
  ASSERT_TRUE(outcome.ok()) << outcome.status().to_string();
  EXPECT_TRUE(outcome->repaired);
  EXPECT_EQ(outcome->differing_before_repair, ranges({{2, 1}, {20, 1}, {30, 1}, {kLastChunk, 1}}));
  EXPECT_EQ(outcome->repaired_chunks, 4u);
  EXPECT_EQ(outcome->repair_bytes, 2 * kChunkBytes + 512) << "chunk 30 is zero on the source: no data to send";
  EXPECT_EQ(outcome->differing_chunks, 0u) << "still different after the repair";
  expect_replica_equals(point_);
  EXPECT_EQ(replica_->state().applied_cycle, point_) << "a repair changes no cycle";
  auto again = verify(point_);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->differing_chunks, 0u);
  EXPECT_EQ(again->chunks_compared, 7u) << "the repaired zero chunk is deallocated again";
}

TEST_F(VerifySessionTest, TheTargetRefusesAReplicaThatIsNotIdleAtThePoint) {
  uint64_t next = write_and_freeze({5});
  auto behind = verify(next);
  ASSERT_FALSE(behind.ok());
  EXPECT_NE(behind.status().message().find("replica a/v is idle at cycle " + std::to_string(point_) +
                                           ", not idle at cycle " + std::to_string(next)),
            std::string::npos)
      << behind.status().message();
  // A delta being received: the raw image is no point at all.
  ASSERT_TRUE(replica_->begin_delta(BeginDelta{point_, next, 0, 1, 0, false}).ok());
  auto receiving = verify(point_);
  ASSERT_FALSE(receiving.ok());
  EXPECT_NE(receiving.status().message().find("is receiving at cycle"), std::string::npos)
      << receiving.status().message();
}

TEST_F(VerifySessionTest, NoReplicaIsCreatedAndStrangersAndStrayFramesAreRefused) {
  SimLink link;
  VerifyAccess nothing(nullptr);
  ReceiverSession target("b", nothing, link.sink(SimLink::kTarget));
  ASSERT_TRUE(target.on_frame(Frame{FrameType::kHello, encode(Hello{kProtocolVersion, "a"})}).ok());
  Status missing = target.on_frame(Frame{FrameType::kVerifyBegin, encode(VerifyBegin{"v", kVolumeBytes, kChunkBytes, 1})});
  EXPECT_EQ(missing.code(), ErrorCode::kNotFound) << missing.to_string();

  VerifyAccess access(replica_);
  ReceiverSession fresh("b", access, link.sink(SimLink::kTarget));
  ASSERT_TRUE(fresh.on_frame(Frame{FrameType::kHello, encode(Hello{kProtocolVersion, "a"})}).ok());
  Status stray = fresh.on_frame(Frame{FrameType::kVerifyWindow, encode(VerifyWindow{ranges({{0, 1}})})});
  EXPECT_NE(stray.message().find("outside a verify"), std::string::npos) << stray.message();
  Status geometry = fresh.on_frame(Frame{FrameType::kVerifyBegin, encode(VerifyBegin{"v", kVolumeBytes, 8192, point_})});
  EXPECT_NE(geometry.message().find("8192-byte chunks"), std::string::npos) << geometry.message();
}

TEST_F(VerifySessionTest, ATargetThatAnswersForOtherChunksIsAnErrorNeverEqual) {
  SimLink link;
  VerifyAccess access(replica_);
  VerifySession source("a", "b", link.sink(SimLink::kSource));
  ReceiverSession target("b", access, link.sink(SimLink::kTarget));
  VolumePointReader reader(*volume_, point_);
  source.set_window_chunks(1);
  ASSERT_TRUE(source.start().ok());
  ASSERT_TRUE(pump(source, target, link, false).ok());
  ASSERT_TRUE(source.begin_volume("v", reader, point_).ok());
  // Let the target see VERIFY_BEGIN and the source its allocation, then send a window.
  while (source.phase() != VerifySession::Phase::kComparing) {
    if (auto frame = link.receive(SimLink::kTarget)) {
      ASSERT_TRUE(target.on_frame(frame->value()).ok());
    } else {
      auto reply = link.receive(SimLink::kSource);
      ASSERT_TRUE(reply.has_value());
      ASSERT_TRUE(source.on_frame(reply->value()).ok());
    }
  }
  ASSERT_TRUE(source.advance().ok());  // the first window: chunk 0
  VerifyHashes forged;
  forged.digests.push_back(ChunkDigest{1, DigestKind::kZero, {}});
  Status status = source.on_frame(Frame{FrameType::kVerifyHashes, encode(forged)});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), ErrorCode::kCorruption) << status.to_string();
  EXPECT_NE(status.message().find("other chunks than asked"), std::string::npos) << status.message();
  EXPECT_NE(source.phase(), VerifySession::Phase::kIdle) << "a lying target ended the comparison";
}

// ---- Replica::repair_chunks ---------------------------------------------------------

class ReplicaRepairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs_.make_dir(scratch_.sub("r")).ok());
    open_replica();
    // Cycle 3: chunk 1 holds 0x11, chunk 2 0x22.
    ASSERT_TRUE(replica_->begin_delta(BeginDelta{0, 3, 0, 2, 0, true}).ok());
    std::vector<uint8_t> one(kChunkBytes, 0x11), two(kChunkBytes, 0x22);
    ASSERT_TRUE(replica_->stage(ChunkRecord{0, 1, RecordKind::kData, one}).ok());
    ASSERT_TRUE(replica_->stage(ChunkRecord{1, 2, RecordKind::kData, two}).ok());
    ASSERT_TRUE(replica_->end_delta(2).ok());
    ASSERT_TRUE(replica_->apply([] {}).ok());
    fs_.mark_all_synced();
  }
  void open_replica() {
    replica_.reset();
    auto replica = Replica::open_or_create(fs_, scratch_.sub("r"), "a", "v", kVolumeBytes, kChunkBytes);
    ASSERT_TRUE(replica.ok()) << replica.status().to_string();
    replica_ = std::move(replica).value();
  }
  std::vector<uint8_t> chunk(uint64_t index) {
    std::vector<uint8_t> data(std::min(kChunkBytes, kVolumeBytes - index * kChunkBytes));
    EXPECT_TRUE(replica_->read(index * kChunkBytes, data).ok());
    return data;
  }

  ScratchDir scratch_{"repair", /*in_memory=*/true};
  testing::FaultFileSystem fs_;
  std::unique_ptr<Replica> replica_;
};

TEST_F(ReplicaRepairTest, WritesAndZeroesChunksDurablyAndChangesNoCycle) {
  std::vector<uint8_t> fresh(kChunkBytes, 0x33), last(512, 0x44);
  std::vector<Replica::RepairChunk> chunks = {{1, fresh}, {2, {}}, {kLastChunk, last}};
  ASSERT_TRUE(replica_->repair_chunks(3, chunks).ok());
  replica_.reset();
  ASSERT_TRUE(fs_.drop_unsynced().ok());  // power loss: what was not synced is gone
  open_replica();
  EXPECT_EQ(chunk(1), fresh);
  EXPECT_EQ(chunk(2), std::vector<uint8_t>(kChunkBytes, 0));
  EXPECT_EQ(chunk(kLastChunk), last);
  EXPECT_EQ(replica_->state().applied_cycle, 3u);
  EXPECT_EQ(replica_->activity(), "idle");
}

TEST_F(ReplicaRepairTest, RefusesWithNothingWritten) {
  std::vector<uint8_t> fresh(kChunkBytes, 0x55), short_data(100, 0x55);
  auto refused = [&](uint64_t cycle, std::vector<Replica::RepairChunk> chunks, const std::string& why) {
    Status status = replica_->repair_chunks(cycle, chunks);
    EXPECT_EQ(status.code(), ErrorCode::kInvalidArgument) << why;
    EXPECT_NE(status.message().find(why), std::string::npos) << status.message();
    EXPECT_EQ(chunk(1), std::vector<uint8_t>(kChunkBytes, 0x11)) << why << ": something was written";
  };
  refused(4, {{1, fresh}}, "it is idle at cycle 3");
  refused(3, {{2, fresh}, {1, fresh}}, "out of range or out of order");
  refused(3, {{1, fresh}, {kLastChunk + 1, fresh}}, "out of range or out of order");
  refused(3, {{1, short_data}}, "is 100 bytes, expected 4096");
  refused(3, {{1, fresh}, {kLastChunk, fresh}}, "is 4096 bytes, expected 512");
  ASSERT_TRUE(replica_->begin_delta(BeginDelta{3, 4, 0, 1, 0, false}).ok());
  refused(3, {{1, fresh}}, "it is receiving at cycle 3");
}

}  // namespace
}  // namespace amirror::repl
