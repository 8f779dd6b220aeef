// SPDX-License-Identifier: Apache-2.0
// The peer protocol's two sans-I/O state machines against each other over a SimLink:
// no sockets, threads or sleeps. (The simulation in tests/sim/ runs them through
// random schedules with faults; these are the plain cases, one at a time.)
#include <gtest/gtest.h>

#include <map>

#include "repl/receiver_session.h"
#include "repl/replica.h"
#include "repl/sender_session.h"
#include "store/volume.h"
#include "testing/sim_link.h"
#include "testing/test_support.h"
#include "volume_and_replica.h"

namespace amirror::repl {
namespace {

using testing::SimLink;

constexpr uint64_t kChunkBytes = 4096;
constexpr uint64_t kVolumeBytes = 32 * kChunkBytes;
constexpr uint64_t kShortVolumeBytes = 10 * kChunkBytes + 2048;  // a short last chunk

// What a source believes about its one target, kept in memory.
class MemoryHost : public SenderHost {
 public:
  TargetView view(const std::string&) override { return view_; }
  void observed(const std::string&, const ReplicaState&) override {}
  Status adopt_applied(const std::string&, uint64_t cycle, int64_t) override {
    view_.applied_cycle = cycle;
    view_.inflight_cycle = 0;
    adopted += 1;
    return Status();
  }
  Status adopt_common_point(const std::string&, uint64_t cycle, int64_t, const std::set<uint64_t>& chunks) override {
    view_ = TargetView{cycle, 0, 0, {}};
    for (uint64_t chunk_index : chunks) view_.pending_chunks.set(chunk_index);
    return Status();
  }
  Status reset_to_full(const std::string&, uint64_t) override {
    view_ = TargetView{};
    resets += 1;
    return Status();
  }
  Status set_inflight(const std::string&, uint64_t cycle) override {
    view_.inflight_cycle = cycle;
    return Status();
  }
  Status applied(const std::string&, uint64_t cycle, int64_t) override {
    view_ = TargetView{cycle, 0, 0, {}};
    return Status();
  }
  TargetView view_;
  int adopted = 0;
  int resets = 0;
};

class OneReplica : public ReplicaAccess {
 public:
  explicit OneReplica(std::shared_ptr<Replica> replica) : replica_(std::move(replica)) {}
  Status admit_peer(const std::string& node) override {
    return node == "a" ? Status() : invalid_argument("'" + node + "' is not a peer");
  }
  // As the node's registry does: the replica follows the size the source announces.
  Result<std::shared_ptr<Replica>> acquire(const std::string&, const OpenReplica& open) override {
    AMIRROR_RETURN_IF_ERROR(replica_->follow_source_geometry(open.size_bytes, open.chunk_size_bytes));
    return replica_;
  }
  void release(const std::string&, const std::string&) override {}

 private:
  std::shared_ptr<Replica> replica_;
};

class SessionsTest : public VolumeAndReplicaTest {
 protected:
  explicit SessionsTest(uint64_t volume_bytes = kVolumeBytes, uint64_t chunk_bytes = kChunkBytes)
      : VolumeAndReplicaTest("sessions", volume_bytes, chunk_bytes, 7) {}

  // One connection: HELLO, then the volume to `point`. Moves at most `max_frames`
  // frames; returns the sender's state when it stopped (or an error).
  Status connect_and_send(uint64_t point, size_t max_frames = SIZE_MAX) {
    receiver_.reset();  // before what it refers to
    sender_.reset();
    link_ = std::make_unique<SimLink>();
    access_ = std::make_unique<OneReplica>(replica_);
    sender_ = std::make_unique<SenderSession>("a", "b", host_, link_->sink(SimLink::kSource));
    receiver_ = std::make_unique<ReceiverSession>("b", *access_, link_->sink(SimLink::kTarget), stager_.get());
    AMIRROR_RETURN_IF_ERROR(sender_->start());
    bool begun = false;
    for (size_t moved = 0; moved < max_frames; ++moved) {
      if (auto frame = link_->receive(SimLink::kTarget)) {
        AMIRROR_RETURN_IF_ERROR(frame->status());
        AMIRROR_RETURN_IF_ERROR(receiver_->on_frame(frame->value()));
      } else if (auto reply = link_->receive(SimLink::kSource)) {
        AMIRROR_RETURN_IF_ERROR(reply->status());
        Frame frame = reply->value();
        // An older target: its HELLO_ACK names an older version.
        if (frame.type == FrameType::kHelloAck && ack_version_ != 0) frame.payload = encode(Hello{ack_version_, "b"});
        AMIRROR_RETURN_IF_ERROR(sender_->on_frame(frame));
      } else if (sender_->phase() == SenderSession::Phase::kStreaming) {
        AMIRROR_RETURN_IF_ERROR(sender_->send_next());
      } else if (sender_->phase() == SenderSession::Phase::kIdle && !begun) {
        begun = true;
        AMIRROR_RETURN_IF_ERROR(sender_->begin_volume("v", *volume_, point));
      } else {
        return Status();  // idle again: done
      }
    }
    return Status(ErrorCode::kCancelled, "cut");
  }

  void write_random(uint64_t offset_bytes, uint64_t length_bytes);

  uint32_t ack_version_ = 0;  // 0: the target's own HELLO_ACK
  MemoryHost host_;
  std::unique_ptr<ChunkStager> stager_;  // null: the session stages inline; outlives receiver_
  std::unique_ptr<SimLink> link_;
  std::unique_ptr<OneReplica> access_;
  std::unique_ptr<SenderSession> sender_;
  std::unique_ptr<ReceiverSession> receiver_;
};

TEST_F(SessionsTest, FullCopyThenOnlyTheChangedChunks) {
  uint64_t first = write_and_freeze({0, 5, 31});
  ASSERT_TRUE(connect_and_send(first).ok());
  expect_replica_equals(first);
  EXPECT_EQ(host_.view_.applied_cycle, first);
  uint64_t full_bytes = link_->bytes_sent(SimLink::kSource);

  uint64_t second = write_and_freeze({5});
  ASSERT_TRUE(connect_and_send(second).ok());
  expect_replica_equals(second);
  EXPECT_LT(link_->bytes_sent(SimLink::kSource), full_bytes / 2) << "an incremental delta resent more than its chunk";
}

TEST_F(SessionsTest, ACutDeltaResumesFromTheDurableStaging) {
  uint64_t point = write_and_freeze({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Status cut = connect_and_send(point, 12);  // HELLO, OPEN, state, BEGIN and a few chunks
  ASSERT_EQ(cut.code(), ErrorCode::kCancelled);
  EXPECT_EQ(host_.view_.inflight_cycle, point);
  ASSERT_GT(replica_->state().staged_record_count, 0u);
  ASSERT_TRUE(connect_and_send(point).ok());
  EXPECT_GT(sender_->first_chunk(), 0u) << "the second attempt started over instead of resuming";
  expect_replica_equals(point);
}

TEST_F(SessionsTest, AnAppliedDeltaWhoseAcknowledgementWasLostIsAdopted) {
  uint64_t point = write_and_freeze({3});
  ASSERT_TRUE(connect_and_send(point).ok());
  host_.view_ = TargetView{0, 0, point, {}};  // as if APPLIED never arrived
  uint64_t next = write_and_freeze({4});
  ASSERT_TRUE(connect_and_send(next).ok());
  EXPECT_EQ(host_.adopted, 1);
  EXPECT_EQ(host_.resets, 0) << "a full copy where adopting the applied point was enough";
  expect_replica_equals(next);
}

TEST_F(SessionsTest, AReplicaThatIsNotWhereTheSourceBelievesGetsAFullCopy) {
  uint64_t point = write_and_freeze({1, 2});
  ASSERT_TRUE(connect_and_send(point).ok());
  host_.view_ = TargetView{point + 5, 0, 0, {}};  // the source's record is wrong
  uint64_t next = write_and_freeze({9});
  ASSERT_TRUE(connect_and_send(next).ok());
  EXPECT_EQ(host_.resets, 1);
  expect_replica_equals(next);
}

// Stages CHUNK frames only when drained: the latest a ChunkStager may stage them. A
// session that lets any other frame, or the replica's release, pass before the
// records before it are staged sees a short delta.
class StageOnDrain : public ChunkStager {
 public:
  Status stage(const std::shared_ptr<Replica>& replica, Frame frame) override {
    queued_.emplace_back(replica, std::move(frame));
    return Status();
  }
  Status drain() override {
    for (auto& [replica, frame] : queued_) AMIRROR_RETURN_IF_ERROR(stage_chunk_frame(*replica, frame));
    queued_.clear();
    return Status();
  }

 private:
  std::vector<std::pair<std::shared_ptr<Replica>, Frame>> queued_;
};

TEST_F(SessionsTest, EveryFrameAfterChunksWaitsUntilTheyAreStaged) {
  stager_ = std::make_unique<StageOnDrain>();
  uint64_t first = write_and_freeze({0, 5, 31});
  ASSERT_TRUE(connect_and_send(first).ok());  // END_DELTA must see all three records
  expect_replica_equals(first);
  uint64_t second = write_and_freeze({1, 2, 3, 4, 6, 7, 8});
  Status cut = connect_and_send(second, 10);  // a few CHUNKs, then the connection ends
  ASSERT_EQ(cut.code(), ErrorCode::kCancelled);
  receiver_.reset();  // the session lets the replica go: its queued records are staged first
  EXPECT_GT(replica_->state().staged_record_count, 0u) << "the records queued at the cut were never staged";
  ASSERT_TRUE(connect_and_send(second).ok());
  EXPECT_GT(sender_->first_chunk(), 0u) << "the second attempt started over instead of resuming";
  expect_replica_equals(second);
}

TEST_F(SessionsTest, ChunksStagedOnABackgroundThreadGiveTheSameReplica) {
  stager_ = std::make_unique<BackgroundChunkStager>(2 * kChunkBytes);  // a small queue: stage() waits often
  uint64_t first = write_and_freeze({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 31});
  ASSERT_TRUE(connect_and_send(first).ok());
  expect_replica_equals(first);
  uint64_t second = write_and_freeze({2, 9, 30});
  ASSERT_TRUE(connect_and_send(second).ok());
  expect_replica_equals(second);
}

TEST_F(SessionsTest, TheReceiverRefusesAStrangerAndFramesOutOfSequence) {
  SimLink link;
  OneReplica access(replica_);
  ReceiverSession receiver("b", access, link.sink(SimLink::kTarget));
  Status stranger = receiver.on_frame(Frame{FrameType::kHello, encode(Hello{kProtocolVersion, "z"})});
  EXPECT_FALSE(stranger.ok());
  EXPECT_NE(stranger.message().find("'z' is not a peer"), std::string::npos) << stranger.message();

  ReceiverSession second("b", access, link.sink(SimLink::kTarget));
  ASSERT_TRUE(second.on_frame(Frame{FrameType::kHello, encode(Hello{kProtocolVersion, "a"})}).ok());
  Status early = second.on_frame(Frame{FrameType::kEndDelta, encode(EndDelta{0})});
  EXPECT_FALSE(early.ok());
  EXPECT_EQ(replica_->state().applied_cycle, 0u);
}

void SessionsTest::write_random(uint64_t offset_bytes, uint64_t length_bytes) {
  std::vector<uint8_t> data(length_bytes);
  random_.fill(data);
  ASSERT_TRUE(volume_->write(offset_bytes, data).ok());
}

// The source grows (`volume resize`) while its target lags a point behind: the next
// connection opens the replica with the new size, the replica grows, the old point is
// sent cut to the new size (zeros past its old end) and then the new one, with only
// the chunks written since (also in the new region). A full copy works at the new size.
TEST_F(SessionsTest, TheReplicaGrowsWithItsSourceAndGetsTheNewRegion) {
  start_with(kShortVolumeBytes, "v2", "r2");  // a short last chunk
  write_random(0, kShortVolumeBytes);
  uint64_t first = volume_->freeze().value();
  ASSERT_TRUE(connect_and_send(first).ok());
  expect_replica_equals(first);

  write_random(3 * kChunkBytes, kChunkBytes);
  uint64_t before_growth = volume_->freeze().value();  // of the old size, not sent yet
  ASSERT_TRUE(volume_->resize(kShortVolumeBytes + 10 * kChunkBytes).ok());
  write_random(10 * kChunkBytes + 1024, 6000);  // across the old end
  write_random(19 * kChunkBytes, kChunkBytes);
  uint64_t after_growth = volume_->freeze().value();

  ASSERT_TRUE(connect_and_send(before_growth).ok());
  expect_replica_equals(before_growth);
  ASSERT_TRUE(connect_and_send(after_growth).ok());
  expect_replica_equals(after_growth);
  EXPECT_LT(link_->bytes_sent(SimLink::kSource), 4 * kChunkBytes)
      << "the delta after the growth sent more than the three chunks written (10, 11, 19)";

  host_.view_ = TargetView{};  // the source lost its record: a full copy at the new size
  write_random(15 * kChunkBytes, 100);
  uint64_t full = volume_->freeze().value();
  ASSERT_TRUE(connect_and_send(full).ok());
  EXPECT_EQ(host_.resets, 1);
  expect_replica_equals(full);
}

// A delta cut after every record was staged, among them the short last chunk; then the
// source grows; the next connection grows the replica (the staged short chunk gets
// zeros past the old end) and resumes the delta instead of starting over.
TEST_F(SessionsTest, ADeltaCutBeforeTheSourceGrewResumesAfterIt) {
  start_with(kShortVolumeBytes, "v2", "r2");  // a short last chunk
  write_random(0, kShortVolumeBytes);
  uint64_t point = volume_->freeze().value();
  // HELLO, OPEN, state and BEGIN take 6 steps; each record 2 (send, stage).
  Status cut = connect_and_send(point, 6 + 2 * 11);
  ASSERT_EQ(cut.code(), ErrorCode::kCancelled);
  ASSERT_EQ(replica_->state().staged_record_count, 11u) << "the cut should come after the last record";
  ASSERT_TRUE(volume_->resize(kShortVolumeBytes + 3 * kChunkBytes).ok());
  ASSERT_TRUE(connect_and_send(point).ok());
  EXPECT_EQ(sender_->first_chunk(), 11u) << "the delta started over instead of resuming";
  expect_replica_equals(point);
}

// ---- Partial records: only the dirty 4 KiB sectors of a 64 KiB chunk ----

class PartialRecordsTest : public SessionsTest {
 protected:
  PartialRecordsTest() : SessionsTest(2 * kMiB, 64 * kKiB) {}

  // Writes 4 KiB at sectors `sectors` (4 KiB each) of every 64 KiB chunk in `chunks`,
  // freezes; returns the cycle.
  uint64_t write_sectors_and_freeze(const std::vector<uint64_t>& chunks, const std::vector<uint64_t>& sectors) {
    for (uint64_t chunk : chunks) {
      for (uint64_t sector : sectors) write_random(chunk * 64 * kKiB + sector * 4 * kKiB, 4 * kKiB);
    }
    auto cycle = volume_->freeze();
    EXPECT_TRUE(cycle.ok());
    return cycle.value();
  }
  uint64_t full_copy() {
    uint64_t first = write_and_freeze({0, 1, 2, 3, 4, 5, 6, 7});
    EXPECT_TRUE(connect_and_send(first).ok());
    return first;
  }
};

TEST_F(PartialRecordsTest, SmallWritesShipOnlyTheirSectorsAndTheReplicaIsExact) {
  full_copy();
  EXPECT_EQ(sender_->partial_records_sent(), 0u) << "a full copy ships whole chunks";
  // Two runs in chunk 1 (sectors 0-1 and 5), one in chunk 3 (sector 15), chunk 6 whole,
  // and chunk 20 (never written, so copy-on-first-write reads zeros) partly.
  uint64_t point = write_sectors_and_freeze({1}, {0, 1, 5});
  write_sectors_and_freeze({3}, {15});
  write_and_freeze({6});
  point = write_sectors_and_freeze({20}, {7});
  ASSERT_TRUE(connect_and_send(point).ok());
  expect_replica_equals(point);
  EXPECT_EQ(sender_->partial_records_sent(), 4u);  // 2 in chunk 1, 1 in chunk 3, 1 in chunk 20
  const uint64_t changed_bytes = 5 * 4 * kKiB + 64 * kKiB;
  EXPECT_EQ(sender_->bytes_total(), changed_bytes);
  EXPECT_EQ(sender_->bytes_done(), changed_bytes);
  EXPECT_LE(link_->bytes_sent(SimLink::kSource), changed_bytes * 105 / 100) << "more than 1.05x what changed";
}

TEST_F(PartialRecordsTest, AnOlderTargetGetsWholeChunks) {
  full_copy();
  ack_version_ = kFirstPartialRecordVersion - 1;
  uint64_t point = write_sectors_and_freeze({1, 2}, {3});
  ASSERT_TRUE(connect_and_send(point).ok());
  expect_replica_equals(point);
  EXPECT_EQ(sender_->partial_records_sent(), 0u);
  EXPECT_EQ(sender_->bytes_total(), 2 * 64 * kKiB);
}

TEST_F(PartialRecordsTest, ACutBetweenTheRunsOfAChunkResumesAndIsExact) {
  full_copy();
  // Every chunk gets three runs; cut the stream at every frame count in turn.
  std::vector<uint64_t> chunks;
  for (uint64_t chunk = 0; chunk < 12; ++chunk) chunks.push_back(chunk);
  uint64_t point = write_sectors_and_freeze(chunks, {0, 4, 5, 9});
  uint64_t resumed = 0;
  for (size_t frames = 8; frames < 40; frames += 3) {
    Status cut = connect_and_send(point, frames);
    if (cut.ok()) break;
    ASSERT_EQ(cut.code(), ErrorCode::kCancelled) << cut.to_string();
    if (sender_->first_chunk() > 0) resumed += 1;
  }
  ASSERT_TRUE(connect_and_send(point).ok());
  expect_replica_equals(point);
  EXPECT_GT(resumed, 0u) << "no attempt resumed: the test lost its point";
}

TEST_F(PartialRecordsTest, ARestartedSourceStillShipsOnlyItsSectors) {
  full_copy();
  uint64_t point = write_sectors_and_freeze({2}, {1});
  // Reopened from disk: its layers keep their sectors (layer map format 2).
  std::string dir = volume_->dir();
  volume_.reset();
  auto reopened = Volume::open(posix_file_system(), dir);
  ASSERT_TRUE(reopened.ok()) << reopened.status().to_string();
  volume_ = std::move(reopened).value();
  ASSERT_TRUE(connect_and_send(point).ok());
  expect_replica_equals(point);
  EXPECT_EQ(sender_->partial_records_sent(), 1u);
  EXPECT_EQ(sender_->bytes_total(), 4 * kKiB);
}

TEST_F(PartialRecordsTest, TheReplicaRefusesBadPartialRecords) {
  full_copy();
  uint64_t base = replica_->state().applied_cycle;
  ASSERT_TRUE(replica_->begin_delta(BeginDelta{base, base + 1, 0, 3, 0, false}).ok());
  std::vector<uint8_t> data(4 * kKiB, 1);
  auto partial = [&](uint64_t record, uint64_t chunk, uint64_t offset, std::span<const uint8_t> bytes) {
    return replica_->stage(ChunkRecord{record, chunk, RecordKind::kPartial, bytes, offset});
  };
  EXPECT_FALSE(partial(0, 1, 64 * kKiB - 512, data).ok()) << "past the chunk's end";
  ASSERT_TRUE(partial(0, 1, 8 * kKiB, data).ok());
  EXPECT_FALSE(partial(1, 1, 4 * kKiB, data).ok()) << "an earlier offset in the same chunk";
  EXPECT_FALSE(replica_->stage(ChunkRecord{1, 1, RecordKind::kData, std::vector<uint8_t>(64 * kKiB)}).ok())
      << "a whole record for a chunk that got partial ones";
  ASSERT_TRUE(partial(1, 1, 12 * kKiB, data).ok());
  ASSERT_TRUE(partial(2, 2, 0, data).ok());
  EXPECT_EQ(replica_->state().staged_record_count, 2u) << "the resume point lies after chunk 1's last run";
  ASSERT_TRUE(replica_->end_delta(3).ok());

  // A full delta replaces the image chunk by chunk: no partial records in it.
  ASSERT_TRUE(replica_->begin_delta(BeginDelta{0, base + 5, 0, 1, 0, true}).ok());
  EXPECT_FALSE(partial(0, 1, 0, data).ok());
}

}  // namespace
}  // namespace amirror::repl
