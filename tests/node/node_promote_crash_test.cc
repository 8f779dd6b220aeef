// SPDX-License-Identifier: Apache-2.0
// Power loss during `replica promote` and `volume demote`, at every file operation.
// Two real nodes in one process (Env seam: manual clock, loopback network); the target
// b runs on a FaultFileSystem. For k = 0, 1, 2, ...: build the same state afresh (a's
// volume mirrored to b with --keep 2, two points), make b's file system fail from its
// k-th mutating operation on (as if the power went), drop everything b had not synced,
// restart b, and check that exactly one of these holds:
//  - the replica a/v is still there, both kept points read exactly as they were, and
//    promoting it again now works and gives the chosen point's bytes; or
//  - the volume v is there, promoted, reading exactly the chosen point's bytes, and
//    the replica is gone.
// Never both, never neither, never a mix. The loop ends when promote needs no more
// operations than k. The same for demote (the volume takes writes, or refuses them,
// and its bytes are intact).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "in_process_node.h"
#include "node/node.h"
#include "testing/fault_file_system.h"
#include "testing/loopback_network.h"
#include "testing/manual_env.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kGenerous = 120s;
constexpr uint64_t kVolumeBytes = 1 << 20;
constexpr uint64_t kChunkBytes = 64 << 10;

json call(Node& node, const json& request) { return json::parse(node.handle_control(request.dump())); }

template <class Predicate>
bool eventually(Predicate done) {
  auto give_up = std::chrono::steady_clock::now() + kGenerous;
  while (std::chrono::steady_clock::now() < give_up) {
    if (done()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return done();
}

std::vector<uint8_t> read_all(Volume& volume) {
  std::vector<uint8_t> out(volume.size_bytes());
  EXPECT_TRUE(volume.read(0, out).ok());
  return out;
}

// One attempt: fresh directories, fresh nodes.
class Attempt {
 public:
  Attempt() {
    start("a", posix_file_system(), a_);
    start("b", fs_, b_);
  }
  ~Attempt() {
    fs_.clear_faults();
    if (a_) a_->stop();
    if (b_) b_->stop();
  }

  // a's v mirrored to b with keep 2; two points on b, with different bytes. Returns
  // the bytes of each point by cycle.
  std::map<uint64_t, std::vector<uint8_t>> mirror_two_points() {
    std::map<uint64_t, std::vector<uint8_t>> points;
    EXPECT_TRUE(call(*a_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", kVolumeBytes},
                           {"chunk_size_bytes", kChunkBytes}})["ok"]);
    std::shared_ptr<Volume> lease = a_->find_volume("v")->lease().value();  // open for the whole test
    Volume& v = *lease;
    EXPECT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}},
                           {"interval_ms", 3'600'000}, {"keep", 2}})["ok"]);
    for (uint8_t fill : {0x31, 0x42}) {
      std::vector<uint8_t> data(3 * kChunkBytes, fill);
      EXPECT_TRUE(v.write(fill * 1024ull, data).ok());
      json synced = call(*a_, {{"command", "mirror_sync"}, {"volume", "v"}, {"timeout_ms", 600'000}});
      EXPECT_TRUE(synced["ok"]) << synced.dump();
      points[v.cycle()] = read_all(v);
    }
    EXPECT_TRUE(call(*a_, {{"command", "mirror_break"}, {"volume", "v"}})["ok"]);
    // b lets go of the replica once it sees the source's connection close.
    EXPECT_TRUE(eventually([&] { return b_->replica_in_use("a", "v") == false; }));
    std::erase_if(points, [&](const auto& item) { return !b_->find_replica("a", "v")->store_volume()->has_point(item.first); });
    EXPECT_EQ(points.size(), 2u);
    return points;
  }

  // The power goes at b's k-th mutating file operation from now on; b is restarted on
  // what was durable.
  void fail_from(uint64_t k) { fs_.fail_after(k, ErrorCode::kIo, testing::FaultFileSystem::kOpAllMutating); }
  void power_loss_and_restart_b() {
    b_->stop();
    b_.reset();
    fs_.clear_faults();
    ASSERT_TRUE(fs_.drop_unsynced().ok());
    start("b", fs_, b_);
  }
  uint64_t failures() const { return fs_.injected_failure_count(); }
  Node& a() { return *a_; }
  Node& b() { return *b_; }

 private:
  void start(const std::string& name, FileSystem& fs, std::unique_ptr<Node>& node) {
    auto started = Node::start(in_process_node_config(name, scratch_.sub(name + ".d"), {"a", "b"}),
                               Env{&fs, &clock_, &network_, &random_, &threads_});
    ASSERT_TRUE(started.ok()) << started.status().to_string();
    node = std::move(started).value();
  }
  testing::ScratchDir scratch_{"promote-crash"};
  testing::FaultFileSystem fs_;
  testing::ManualClock clock_;
  testing::LoopbackNetwork network_;
  testing::SeededRandom random_{7};
  testing::CountedThreads threads_;
  std::unique_ptr<Node> a_;
  std::unique_ptr<Node> b_;
};

std::vector<uint8_t> read_replica_point(repl::Replica& replica, uint64_t cycle) {
  std::vector<uint8_t> out(replica.size_bytes());
  Status status = replica.read_point(cycle, 0, out);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

TEST(NodePromoteCrashTest, PowerLossAtEveryStepLeavesTheReplicaOrTheVolumeNeverAMix) {
  uint64_t crashed_as_replica = 0, crashed_as_volume = 0;
  for (uint64_t k = 0;; ++k) {
    SCOPED_TRACE("power lost at b's mutating file operation " + std::to_string(k));
    Attempt attempt;
    auto points = attempt.mirror_two_points();
    ASSERT_EQ(points.size(), 2u);
    uint64_t older = points.begin()->first;  // promote the older point: a discard too
    attempt.fail_from(k);
    json promoted = call(attempt.b(), {{"command", "replica_promote"}, {"replica", "a/v"}, {"at", older}});
    bool completed = attempt.failures() == 0;
    if (completed) {
      ASSERT_TRUE(promoted["ok"]) << promoted.dump();
    }
    attempt.power_loss_and_restart_b();
    auto volume = attempt.b().find_volume("v");
    auto replica = attempt.b().find_replica("a", "v");
    ASSERT_NE(volume == nullptr, replica == nullptr) << "after the power loss b has "
                                                     << (volume ? "both the volume and the replica" : "neither")
                                                     << ": " << call(attempt.b(), {{"command", "status"}}).dump();
    if (volume != nullptr) {
      crashed_as_volume += completed ? 0 : 1;
      EXPECT_EQ(read_all(*volume->lease().value()), points.at(older)) << "the promoted volume is not the chosen point";
      EXPECT_FALSE(volume->lease().value()->read_only());
      EXPECT_EQ(volume->lease().value()->lineage().origin_point, older);
    } else {
      ASSERT_FALSE(completed) << "a promote that returned OK was lost";
      crashed_as_replica += 1;
      for (const auto& [cycle, bytes] : points) {
        if (replica->store_volume()->has_point(cycle)) {
          EXPECT_EQ(read_replica_point(*replica, cycle), bytes) << "kept point " << cycle << " changed";
        } else {
          EXPECT_GT(cycle, older) << "the point to promote was lost";
        }
      }
      json again = call(attempt.b(), {{"command", "replica_promote"}, {"replica", "a/v"}, {"at", older}});
      ASSERT_TRUE(again["ok"]) << again.dump();
      EXPECT_EQ(read_all(*attempt.b().find_volume("v")->lease().value()), points.at(older));
    }
    if (completed) break;
    ASSERT_LT(k, 500u) << "promote never completed";
  }
  std::printf("promote: power lost at each step; %llu times the replica came back, %llu times the volume\n",
              static_cast<unsigned long long>(crashed_as_replica), static_cast<unsigned long long>(crashed_as_volume));
  EXPECT_GT(crashed_as_replica, 0u);
}

TEST(NodePromoteCrashTest, PowerLossDuringDemoteLeavesTheVolumeIntact) {
  for (uint64_t k = 0;; ++k) {
    SCOPED_TRACE("power lost at b's mutating file operation " + std::to_string(k));
    Attempt attempt;
    auto points = attempt.mirror_two_points();
    ASSERT_TRUE(call(attempt.b(), {{"command", "replica_promote"}, {"replica", "a/v"}})["ok"]);
    std::vector<uint8_t> bytes = read_all(*attempt.b().find_volume("v")->lease().value());
    attempt.fail_from(k);
    json demoted = call(attempt.b(), {{"command", "volume_demote"}, {"name", "v"}});
    bool completed = attempt.failures() == 0;
    attempt.power_loss_and_restart_b();
    auto volume = attempt.b().find_volume("v");
    ASSERT_NE(volume, nullptr);
    EXPECT_EQ(read_all(*volume->lease().value()), bytes);
    if (completed) {
      ASSERT_TRUE(demoted["ok"]) << demoted.dump();
      EXPECT_TRUE(volume->lease().value()->read_only()) << "a demote that returned OK was lost";
      break;
    }
    ASSERT_LT(k, 100u) << "demote never completed";
  }
}

}  // namespace
}  // namespace amirror::node
