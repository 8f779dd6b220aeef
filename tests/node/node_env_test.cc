// SPDX-License-Identifier: Apache-2.0
// Whole nodes in one process on the Env seam (node/env.h): a manual clock, an
// in-process network and counted threads. Time moves only when a test says so, so the
// mirror engine's scheduling — when it freezes, when it retries, that it sleeps in
// between — is checked exactly, without sleeps and on any machine speed. "Nothing
// happened" is checked once every thread is asleep again (ManualClock::wait_until_quiet);
// "something happened" by waiting on the state that shows it.
#include <gtest/gtest.h>

#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "node/config.h"
#include "in_process_node.h"
#include "node/node.h"
#include "testing/gated_file_system.h"
#include "testing/loopback_network.h"
#include "testing/manual_env.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Real-time bounds on waits for observable state; generous, never a schedule.
constexpr auto kGenerous = 120s;
// Threads that wait on the clock while mirrors run: the node's scheduler has one timer
// thread that sleeps until the earliest engine round is due (node/engine_scheduler.h);
// its workers and a node without mirrors wait on no clock. So one however many engines
// run — and with one engine, quiet means its round is not running either (the timer
// thread waits on the clock only while some engine waits for a time).
constexpr size_t kOneEngine = 1;
constexpr uint64_t kVolumeBytes = 4 << 20;

class NodeEnvTest : public ::testing::Test {
 protected:
  Env env(FileSystem& fs) { return Env{&fs, &clock_, &network_, &random_, &threads_}; }

  NodeConfig config(const std::string& name) { return in_process_node_config(name, scratch_.sub(name + ".d"), {"a", "b"}); }

  void start_nodes(FileSystem& a_fs = posix_file_system(), FileSystem& b_fs = posix_file_system()) {
    auto a = Node::start(config("a"), env(a_fs));
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    a_ = std::move(a).value();
    auto b = Node::start(config("b"), env(b_fs));
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    b_ = std::move(b).value();
    ASSERT_TRUE(call(*a_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", kVolumeBytes}})["ok"]);
  }

  void TearDown() override {
    if (gated_fs_) gated_fs_->open_gate();  // a failed test must not leave b stuck in it
    if (a_) a_->stop();
    if (b_) b_->stop();
    a_.reset();
    b_.reset();
  }

  static json call(Node& node, const json& request) { return json::parse(node.handle_control(request.dump())); }

  json mirror_of_v() {
    json status = call(*a_, {{"command", "status"}});
    for (const json& volume : status["volumes"]) {
      if (volume["name"] == "v" && !volume["mirrors"].empty()) return volume["mirrors"][0];
    }
    return json::object();
  }
  uint64_t source_cycle() { return a_->find_volume("v")->lease().value()->cycle(); }
  uint64_t applied_on_b() {
    json mirror = mirror_of_v();
    return mirror.contains("applied_cycle") && mirror["applied_cycle"].is_number() ? mirror["applied_cycle"].get<uint64_t>() : 0;
  }

  template <class Predicate>
  static bool eventually(Predicate done) {
    auto give_up = std::chrono::steady_clock::now() + kGenerous;
    while (std::chrono::steady_clock::now() < give_up) {
      if (done()) return true;
      std::this_thread::sleep_for(2ms);
    }
    return done();
  }

  void write_v(uint64_t offset, uint8_t fill) {
    std::vector<uint8_t> data(4096, fill);
    ASSERT_TRUE(a_->find_volume("v")->lease().value()->write(offset, data).ok());
  }

  testing::ScratchDir scratch_{"node-env"};
  testing::ManualClock clock_;
  testing::LoopbackNetwork network_;
  testing::SeededRandom random_{20261201};
  testing::CountedThreads threads_;
  // Declared before the nodes, so it outlives them.
  std::unique_ptr<testing::GatedFileSystem> gated_fs_;
  std::unique_ptr<Node> a_;
  std::unique_ptr<Node> b_;
};

TEST_F(NodeEnvTest, FreezesWhenTheIntervalHasPassedAndNotBefore) {
  start_nodes();
  write_v(0, 0x11);
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 60'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return applied_on_b() == 1; })) << mirror_of_v().dump();

  write_v(8192, 0x22);
  clock_.advance(59'999ms);
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous)) << "the engine never went back to sleep";
  EXPECT_EQ(source_cycle(), 1u) << "froze before the interval had passed";
  EXPECT_EQ(applied_on_b(), 1u);
  EXPECT_EQ(mirror_of_v()["lag_seconds"].get<double>(), 59.999) << "lag is measured on the node's clock";

  clock_.advance(1ms);
  ASSERT_TRUE(eventually([&] { return applied_on_b() == 2; })) << mirror_of_v().dump();
  EXPECT_EQ(mirror_of_v()["state"], "idle");
  std::vector<uint8_t> replica(4096);
  ASSERT_TRUE(b_->find_replica("a", "v")->read(8192, replica).ok());
  EXPECT_EQ(replica, std::vector<uint8_t>(4096, 0x22));
}

TEST_F(NodeEnvTest, RetriesAnUnreachableTargetWithGrowingBackoff) {
  start_nodes();
  network_.partition("b:1");
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 3'600'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return network_.connect_attempts("b:1") == 1 && !mirror_of_v()["last_error"].empty(); }));
  EXPECT_EQ(mirror_of_v()["state"], "error");

  // Backoff 1 s, 2 s, 4 s, 8 s, 10 s, 10 s, each plus up to a quarter of random jitter.
  uint64_t attempts = 1;
  for (uint64_t backoff_ms : {1000, 2000, 4000, 8000, 10'000, 10'000}) {
    ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
    clock_.advance(std::chrono::milliseconds(backoff_ms - 1));
    ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
    EXPECT_EQ(network_.connect_attempts("b:1"), attempts) << "retried before " << backoff_ms << " ms";
    clock_.advance(std::chrono::milliseconds(backoff_ms / 4 + 1));
    attempts += 1;
    ASSERT_TRUE(eventually([&] { return network_.connect_attempts("b:1") == attempts; }))
        << "no retry within " << backoff_ms * 5 / 4 << " ms";
  }

  // The last failed attempt must have set its retry timer before time moves on, or
  // the timer is set after the advance and never comes due (a flake seen in CI).
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
  network_.heal("b:1");
  clock_.advance(12'500ms);
  // Applied is recorded as the target acknowledges, the error cleared as the transfer ends.
  ASSERT_TRUE(eventually([&] { return mirror_of_v()["state"] == "idle"; })) << mirror_of_v().dump();
  EXPECT_EQ(applied_on_b(), 1u);
  EXPECT_TRUE(mirror_of_v()["last_error"].is_null()) << mirror_of_v().dump();
}

// A freeze that is due while the target still copies the latest point waits for it
// (up to the lag grace). The engine must sleep meanwhile: it used to loop without
// sleeping, one core at 100% for as long as the copy lasted.
TEST_F(NodeEnvTest, EngineSleepsWhileATargetHoldsTheNextFreezeBack) {
  // Held while it takes point 1: the first volume.meta b writes is its new replica's,
  // as it opens it (a first full copy goes straight into the base, so no layer file
  // marks its commit).
  gated_fs_ = std::make_unique<testing::GatedFileSystem>(testing::GatedFileSystem::Gate::kRenameOnto, "volume.meta");
  testing::GatedFileSystem& b_fs = *gated_fs_;
  start_nodes(posix_file_system(), b_fs);
  write_v(0, 0x33);
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 10'000}})["ok"]);
  ASSERT_TRUE(b_fs.wait_until_one_waits(kGenerous)) << "b never started taking point 1";

  clock_.advance(10'001ms);  // the next freeze is due, held back by b (lag grace 20 s)
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous)) << "the engine does not sleep while b copies";
  uint64_t waits = clock_.waits();
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
  EXPECT_EQ(clock_.waits(), waits) << "the engine woke up with nothing to do";
  EXPECT_EQ(source_cycle(), 1u) << "froze while the only target was still copying the latest point";

  clock_.advance(10'000ms);  // past the lag grace: b no longer holds the freeze back
  ASSERT_TRUE(eventually([&] { return source_cycle() == 2; }));
  EXPECT_EQ(mirror_of_v()["state"], "initial-sync") << mirror_of_v().dump();
  b_fs.open_gate();
  ASSERT_TRUE(eventually([&] { return applied_on_b() == 2; })) << mirror_of_v().dump();
}

// A `mirror sync` that arrives while a freeze is past its cut must wait for a freeze
// begun after it (writes finished just before the sync may be missing from the one in
// progress), and that freeze must happen: the one in progress must not use up the
// request. The freeze is held in its metadata write, under the volume's lock.
TEST_F(NodeEnvTest, SyncDuringAFreezeWaitsForTheNextOne) {
  gated_fs_ = std::make_unique<testing::GatedFileSystem>(testing::GatedFileSystem::Gate::kRenameOnto, "volume.meta",
                                                         /*armed=*/false);
  start_nodes(*gated_fs_, posix_file_system());
  write_v(0, 0x44);
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 3'600'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return mirror_of_v()["state"] == "idle" && a_->find_volume("v")->lease().value()->base_cycle() == 1; }))
      << mirror_of_v().dump();  // point 1 applied and merged: no metadata write pending
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));

  gated_fs_->arm();
  clock_.advance(3'600'000ms);  // freeze 2 begins and stops in its metadata write
  ASSERT_TRUE(gated_fs_->wait_until_one_waits(kGenerous));
  auto sync = std::async(std::launch::async, [&] {
    return call(*a_, {{"command", "mirror_sync"}, {"volume", "v"}, {"timeout_ms", 600'000}});
  });
  ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous)) << "the sync never waited";  // the engine is in the gate
  gated_fs_->open_gate();
  while (sync.wait_for(2ms) != std::future_status::ready) clock_.advance(1000ms);  // a stuck sync times out
  json answer = sync.get();
  EXPECT_TRUE(answer["ok"]) << answer.dump();
  EXPECT_EQ(source_cycle(), 3u) << "the sync counted the freeze that was already under way";
  EXPECT_GE(applied_on_b(), 3u);
}

// `mirror verify` compares one point on both sides, so it holds the mirror: no freeze
// starts while it runs, however long a target takes to get the point, even past the
// interval and the lag grace. The freeze that became due happens once it lets go.
TEST_F(NodeEnvTest, AVerifyHoldsTheMirrorAtOnePointUntilItEnds) {
  // b's replica records each delta it begins in replica.meta: hold that.
  gated_fs_ = std::make_unique<testing::GatedFileSystem>(testing::GatedFileSystem::Gate::kOpen, "replica.meta.tmp",
                                                         /*armed=*/false);
  start_nodes(posix_file_system(), *gated_fs_);
  write_v(0, 0x55);
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 60'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return applied_on_b() == 1 && mirror_of_v()["state"] == "idle"; })) << mirror_of_v().dump();

  gated_fs_->arm();  // b stops as it begins to stage the next point
  auto verify = std::async(std::launch::async, [&] {
    return call(*a_, {{"command", "mirror_verify"}, {"volume", "v"}, {"timeout_ms", 3'600'000}});
  });
  ASSERT_TRUE(gated_fs_->wait_until_one_waits(kGenerous)) << "the verify did not freeze a point to compare";
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine + 1, kGenerous)) << "the engine and the verify never slept";
  EXPECT_EQ(source_cycle(), 2u);
  clock_.advance(600'000ms);  // far past the interval and the lag grace (2 min)
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine + 1, kGenerous));
  EXPECT_EQ(source_cycle(), 2u) << "froze while a verify held the mirror";

  gated_fs_->open_gate();
  json answer = verify.get();
  ASSERT_TRUE(answer["ok"]) << answer.dump();
  EXPECT_TRUE(answer["equal"]) << answer.dump();
  ASSERT_EQ(answer["results"].size(), 1u);
  EXPECT_EQ(answer["results"][0]["result"], "equal");
  EXPECT_EQ(answer["results"][0]["cycle"], 2u) << "compared another point than the one held";
  ASSERT_TRUE(eventually([&] { return source_cycle() == 3; })) << "the freeze due meanwhile never happened";
}

// What a verify found is kept (also across a restart): status calls the mirror
// "differs", not idle, until a repair (or a later verify) finds the replica equal.
TEST_F(NodeEnvTest, ADifferingReplicaIsShownUntilRepairedEvenAfterARestart) {
  start_nodes();
  write_v(0, 0x66);
  write_v(65536, 0x67);
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 3'600'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return applied_on_b() == 1 && mirror_of_v()["state"] == "idle"; })) << mirror_of_v().dump();
  auto image = posix_file_system().open(b_->find_replica("a", "v")->image_path(), OpenMode::kOpenExisting);
  ASSERT_TRUE(image.ok());
  std::vector<uint8_t> garbage(16, 0xee);
  ASSERT_TRUE(image.value()->write_at(65536 + 100, garbage).ok());

  json found = call(*a_, {{"command", "mirror_verify"}, {"volume", "v"}});
  ASSERT_TRUE(found["ok"]) << found.dump();
  EXPECT_FALSE(found["equal"]);
  EXPECT_EQ(found["results"][0]["result"], "differ") << found.dump();
  EXPECT_EQ(found["results"][0]["differing_ranges"][0]["first_chunk"], 1u) << found.dump();
  EXPECT_EQ(mirror_of_v()["state"], "differs") << mirror_of_v().dump();

  a_->stop();
  a_.reset();  // lets go of the data directory's lock
  auto restarted = Node::start(config("a"), env(posix_file_system()));
  ASSERT_TRUE(restarted.ok()) << restarted.status().to_string();
  a_ = std::move(restarted).value();
  ASSERT_TRUE(eventually([&] { return mirror_of_v()["state"] == "differs"; })) << mirror_of_v().dump();

  json repaired = call(*a_, {{"command", "mirror_verify"}, {"volume", "v"}, {"repair", true}});
  ASSERT_TRUE(repaired["ok"]) << repaired.dump();
  EXPECT_TRUE(repaired["equal"]) << repaired.dump();
  EXPECT_EQ(repaired["results"][0]["result"], "repaired") << repaired.dump();
  EXPECT_EQ(repaired["results"][0]["repaired_chunks"], 1u) << repaired.dump();
  EXPECT_EQ(mirror_of_v()["state"], "idle") << mirror_of_v().dump();
  std::vector<uint8_t> replica(4096);
  ASSERT_TRUE(b_->find_replica("a", "v")->read(65536, replica).ok());
  EXPECT_EQ(replica, std::vector<uint8_t>(4096, 0x67));
}

TEST_F(NodeEnvTest, StoppedNodesLeaveNoThreadBehind) {
  start_nodes();
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 1000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return applied_on_b() >= 1; }));
  clock_.advance(1000ms);
  ASSERT_TRUE(eventually([&] { return applied_on_b() >= 2; }))
      << mirror_of_v().dump() << " source cycle " << source_cycle();
  EXPECT_GT(threads_.running(), 0u);
  a_->stop();
  b_->stop();
  // Threads decrement the count as their last step, just after the node stopped waiting.
  ASSERT_TRUE(eventually([&] { return threads_.running() == 0; })) << threads_.running() << " threads still run";
  EXPECT_GE(threads_.started(), 6u);  // 2 accept loops, 2 schedulers, transfers, receivers
}

}  // namespace
}  // namespace amirror::node

namespace amirror::node {
namespace {

// `[node] max_transfers = 1`: while one mirror's transfer runs (held on b), another
// mirror's transfer waits its turn and shows as queued, never failed; it runs once the
// slot is free.
TEST_F(NodeEnvTest, TransfersBeyondMaxTransfersWaitTheirTurn) {
  gated_fs_ = std::make_unique<testing::GatedFileSystem>(testing::GatedFileSystem::Gate::kRenameOnto, "volume.meta");
  testing::GatedFileSystem& b_fs = *gated_fs_;
  NodeConfig a_config = config("a");
  a_config.max_transfers = 1;
  auto a = Node::start(a_config, env(posix_file_system()));
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  a_ = std::move(a).value();
  auto b = Node::start(config("b"), env(b_fs));
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  b_ = std::move(b).value();
  for (const char* name : {"v", "w"}) {
    ASSERT_TRUE(call(*a_, {{"command", "volume_create"}, {"name", name}, {"size_bytes", kVolumeBytes}})["ok"]);
  }
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 10'000}})["ok"]);
  ASSERT_TRUE(b_fs.wait_until_one_waits(kGenerous)) << "b never started taking v's point 1";
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "w"}, {"targets", {"b"}}, {"interval_ms", 10'000}})["ok"]);
  auto mirror_of = [&](const std::string& name) {
    json status = call(*a_, {{"command", "status"}});
    for (const json& volume : status["volumes"]) {
      if (volume["name"] == name && !volume["mirrors"].empty()) return volume["mirrors"][0];
    }
    return json::object();
  };
  ASSERT_TRUE(eventually([&] { return mirror_of("w")["state"] == "queued"; })) << mirror_of("w").dump();
  EXPECT_EQ(mirror_of("v")["state"], "initial-sync") << mirror_of("v").dump();
  b_fs.open_gate();
  for (const char* name : {"v", "w"}) {
    ASSERT_TRUE(eventually([&] { return mirror_of(name)["applied_cycle"] == 1; })) << mirror_of(name).dump();
  }
  EXPECT_EQ(mirror_of("w")["last_error"], nullptr) << mirror_of("w").dump();
}

}  // namespace
}  // namespace amirror::node

namespace amirror::node {
namespace {

// Issue 12: mirrors run on the node's bounded pool (`[node] workers`), so the threads
// of a node with 50 mirrors, all idle, are those it had with none: no thread per
// mirror. (Transfer threads come and go with transfers, bounded by max_transfers.)
TEST_F(NodeEnvTest, FiftyMirrorsRunOnTheThreadsOfNone) {
  constexpr int kMirrors = 50;
  start_nodes();
  // Accept loops and the schedulers' workers and timer threads of both nodes.
  const uint64_t without_mirrors = threads_.running();
  json status = call(*a_, {{"command", "status"}});
  EXPECT_EQ(status["workers"], 4) << "the default [node] workers";
  EXPECT_GT(status["threads"].get<uint64_t>(), 0u);
  auto idle_mirrors = [&] {
    int idle = 0;
    const json now = call(*a_, {{"command", "status"}});
    for (const json& volume : now["volumes"]) {
      for (const json& mirror : volume["mirrors"]) idle += mirror["state"] == "idle" && mirror["applied_cycle"] == 1;
    }
    return idle;
  };
  ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 3'600'000}})["ok"]);
  ASSERT_TRUE(eventually([&] { return idle_mirrors() == 1; })) << mirror_of_v().dump();
  ASSERT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
  for (int i = 1; i < kMirrors; ++i) {
    std::string name = "m" + std::to_string(i);
    ASSERT_TRUE(call(*a_, {{"command", "volume_create"}, {"name", name}, {"size_bytes", 1 << 20}})["ok"]);
    ASSERT_TRUE(call(*a_, {{"command", "mirror_start"}, {"volume", name}, {"targets", {"b"}}, {"interval_ms", 3'600'000}})["ok"]);
  }
  ASSERT_TRUE(eventually([&] { return idle_mirrors() == kMirrors; }));
  // Transfer and receiver threads exit as their last step, just after the transfer ended.
  EXPECT_TRUE(eventually([&] { return threads_.running() == without_mirrors; }))
      << threads_.running() << " threads run with " << kMirrors << " idle mirrors, " << without_mirrors << " with none";
  // Still one thread on the clock: the scheduler's timer thread, for all 50 engines.
  EXPECT_TRUE(clock_.wait_until_quiet(kOneEngine, kGenerous));
  EXPECT_EQ(a_->running_units().size(), static_cast<size_t>(kMirrors));
}

}  // namespace
}  // namespace amirror::node
