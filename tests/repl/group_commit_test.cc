// SPDX-License-Identifier: Apache-2.0
// Group-atomic commit on the target (src/repl/group_commit.h) under power loss.
//
// Three replicas of one group, each at point 1, each with a sealed delta to point 2
// (END_DELTA with hold). commit_group() is then cut by a power loss after every
// possible number of file operations (0, 1, 2, ... until it completes untouched), and
// with the unsynced writes dropped whole or in random pieces. After each, the node's
// registry loads the directory as at start, which rolls a recorded commit forward.
// Checked every time:
//  1. every member is at the same point, 1 or 2, never a mix;
//  2. each reads exactly that point's bytes;
//  3. if commit_group() returned OK, the point is 2;
//  4. no commit record is left behind.
// Also: a commit refused because a member is not sealed changes nothing, and a
// member sealed again (a resumed connection ends its delta again) commits once.
// Seeds: AMIRROR_SEED / AMIRROR_SEEDS (default 3; the seed picks data and write-back).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "node/receiver.h"
#include "repl/group_commit.h"
#include "repl/replica.h"
#include "testing/fault_file_system.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

using repl::BeginDelta;
using repl::ChunkRecord;
using repl::GroupCommit;
using repl::GroupPoint;
using repl::RecordKind;
using repl::Replica;

constexpr uint64_t kChunkBytes = 4096;
constexpr uint64_t kChunks = 8;
constexpr uint64_t kVolumeBytes = kChunks * kChunkBytes;
const std::vector<std::string> kMembers = {"a", "bb", "c"};

using Image = std::vector<uint8_t>;

class GroupCommitPowerLoss {
 public:
  GroupCommitPowerLoss(uint64_t seed, const std::string& dir) : random_(seed), dir_(dir) {}

  // Member replicas at point 1, each with a sealed delta to point 2.
  void prepare() {
    ASSERT_TRUE(fs_.make_dir(dir_ + "/src").ok());
    for (const std::string& volume : kMembers) {
      std::string path = source_dir() + "/" + volume;
      ASSERT_TRUE(fs_.make_dir(path).ok());
      auto opened = Replica::open_or_create(fs_, path, "src", volume, kVolumeBytes, kChunkBytes);
      ASSERT_TRUE(opened.ok()) << opened.status().to_string();
      std::shared_ptr<Replica> replica = std::move(opened).value();
      ASSERT_TRUE(replica->set_group("g").ok());
      images_[volume][0] = Image(kVolumeBytes, 0);
      send(*replica, volume, 1, /*hold=*/false);
      send(*replica, volume, 2, /*hold=*/true);
      replicas_.push_back(replica);
    }
    fs_.mark_all_synced();
  }

  // Power loss after `operations` file operations of the commit. Returns whether the
  // commit ran to its end without meeting the fault.
  bool cut_after(uint64_t operations, bool random_write_back, uint64_t seed) {
    GroupCommit commit{"g", {}};
    for (const std::string& volume : kMembers) commit.members.push_back(GroupPoint{volume, 2, 2000});
    fs_.fail_after(operations, ErrorCode::kIo, FaultFileSystem::kOpAllMutating);
    std::shared_mutex gate;
    Status status = repl::commit_group(fs_, source_dir(), commit, replicas_, gate);
    const bool untouched = fs_.injected_failure_count() == 0;
    fs_.clear_faults();
    replicas_.clear();
    EXPECT_TRUE(random_write_back ? fs_.drop_random_unsynced(seed).ok() : fs_.drop_unsynced().ok());
    check_after_restart(status.ok(), "cut after " + std::to_string(operations) + " operations: " + status.to_string());
    return untouched;
  }

 private:
  std::string source_dir() const { return dir_ + "/src"; }

  // One delta to `cycle` rewriting two random chunks; sealed only with `hold`.
  void send(Replica& replica, const std::string& volume, uint64_t cycle, bool hold) {
    Image image = images_[volume][cycle - 1];
    BeginDelta begin;
    begin.base_cycle = cycle - 1;
    begin.target_cycle = cycle;
    begin.freeze_time_unix_ms = static_cast<int64_t>(cycle * 1000);
    begin.record_count = 2;
    begin.full = cycle == 1;
    ASSERT_TRUE(replica.begin_delta(begin).ok());
    uint64_t first = random_.uniform(0, kChunks - 2);
    uint64_t second = random_.uniform(first + 1, kChunks - 1);
    uint64_t record = 0;
    for (uint64_t chunk : {first, second}) {
      std::vector<uint8_t> data(kChunkBytes);
      random_.fill(data);
      std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(chunk * kChunkBytes));
      ASSERT_TRUE(replica.stage(ChunkRecord{record++, chunk, RecordKind::kData, data}).ok());
    }
    ASSERT_TRUE((hold ? replica.seal(2) : replica.end_delta(2)).ok());
    if (hold) ASSERT_TRUE(replica.seal(2).ok());  // ended again by a resumed connection: no change
    images_[volume][cycle] = image;
  }

  void check_after_restart(bool committed, const std::string& context) {
    node::ReplicaRegistry registry(fs_, dir_);
    ASSERT_TRUE(registry.load().ok()) << context;
    EXPECT_TRUE(registry.failed().empty()) << context << ": " << registry.failed().front().error;
    std::map<uint64_t, int> at;
    for (const std::string& volume : kMembers) {
      std::shared_ptr<Replica> replica = registry.find("src", volume);
      ASSERT_NE(replica, nullptr) << context;
      uint64_t cycle = replica->readable_cycle();
      at[cycle] += 1;
      ASSERT_TRUE(cycle == 1 || cycle == 2) << context << ": " << volume << " at " << cycle;
      Image actual(kVolumeBytes);
      ASSERT_TRUE(replica->read(0, actual).ok());
      EXPECT_TRUE(actual == images_[volume][cycle]) << context << ": " << volume << " is not point " << cycle;
      replicas_.push_back(replica);
    }
    EXPECT_EQ(at.size(), 1u) << context << ": the group is split";
    if (committed) EXPECT_EQ(at.begin()->first, 2u) << context << ": an acknowledged commit was lost";
    auto pending = repl::pending_group_commits(fs_, source_dir());
    ASSERT_TRUE(pending.ok());
    EXPECT_TRUE(pending.value().empty()) << context << ": a commit record is left";
  }

  FaultFileSystem fs_;
  Random random_;
  const std::string dir_;
  std::map<std::string, std::map<uint64_t, Image>> images_;  // volume -> cycle -> image
  std::vector<std::shared_ptr<Replica>> replicas_;
};

TEST(GroupCommit, PowerLossAtEveryStepLeavesTheGroupWhole) {
  for (uint64_t seed : seeds_to_run(3)) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " (replay: AMIRROR_SEED=" + std::to_string(seed) + ")");
    for (bool random_write_back : {false, true}) {
      bool untouched = false;
      for (uint64_t operations = 0; !untouched && operations < 500; ++operations) {
        ScratchDir scratch("group-commit", /*in_memory=*/true);
        GroupCommitPowerLoss run(seed * 1000 + operations, scratch.path());
        run.prepare();
        if (::testing::Test::HasFatalFailure()) return;
        untouched = run.cut_after(operations, random_write_back, seed * 7919 + operations);
        if (::testing::Test::HasFailure()) return;
      }
      EXPECT_TRUE(untouched) << "the commit never ran to its end";
    }
  }
}

TEST(GroupCommit, RefusedWhenAMemberIsNotSealedAndChangesNothing) {
  ScratchDir scratch("group-commit-refused", /*in_memory=*/true);
  FileSystem& fs = posix_file_system();
  ASSERT_TRUE(fs.make_dir(scratch.sub("src")).ok());
  std::vector<std::shared_ptr<Replica>> replicas;
  for (const std::string& volume : {"x", "y"}) {
    ASSERT_TRUE(fs.make_dir(scratch.sub("src/" + volume)).ok());
    auto replica = Replica::open_or_create(fs, scratch.sub("src/" + volume), "src", volume, kVolumeBytes, kChunkBytes);
    ASSERT_TRUE(replica.ok());
    BeginDelta begin;
    begin.target_cycle = 1;
    begin.full = true;
    begin.record_count = 1;
    ASSERT_TRUE(replica.value()->begin_delta(begin).ok());
    std::vector<uint8_t> data(kChunkBytes, 7);
    ASSERT_TRUE(replica.value()->stage(ChunkRecord{0, 3, RecordKind::kData, data}).ok());
    replicas.push_back(std::move(replica).value());
  }
  ASSERT_TRUE(replicas[0]->seal(1).ok());  // y is staged but not sealed
  std::shared_mutex gate;
  GroupCommit commit{"g", {GroupPoint{"x", 1, 0}, GroupPoint{"y", 1, 0}}};
  Status status = repl::commit_group(fs, scratch.sub("src"), commit, replicas, gate);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("src/y"), std::string::npos) << status.message();
  EXPECT_EQ(replicas[0]->readable_cycle(), 0u);
  EXPECT_EQ(replicas[1]->readable_cycle(), 0u);
  EXPECT_TRUE(repl::pending_group_commits(fs, scratch.sub("src")).value().empty());
  // Sealed, it commits; a second commit of the same points is a no-op.
  ASSERT_TRUE(replicas[1]->seal(1).ok());
  ASSERT_TRUE(repl::commit_group(fs, scratch.sub("src"), commit, replicas, gate).ok());
  ASSERT_TRUE(repl::commit_group(fs, scratch.sub("src"), commit, replicas, gate).ok());
  EXPECT_EQ(replicas[0]->readable_cycle(), 1u);
  EXPECT_EQ(replicas[1]->readable_cycle(), 1u);
  // CHUNK after a sealed END_DELTA is refused.
  BeginDelta next;
  next.base_cycle = 1;
  next.target_cycle = 2;
  next.record_count = 0;
  ASSERT_TRUE(replicas[0]->begin_delta(next).ok());
  ASSERT_TRUE(replicas[0]->seal(0).ok());
  std::vector<uint8_t> data(kChunkBytes, 9);
  EXPECT_FALSE(replicas[0]->stage(ChunkRecord{0, 1, RecordKind::kData, data}).ok());
}

}  // namespace
}  // namespace amirror::testing
