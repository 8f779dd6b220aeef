// SPDX-License-Identifier: Apache-2.0
// Three real nodes in one process on the Env seam (a manual clock, the loopback
// network), driven through Node::handle_control by a seeded random schedule: writes,
// `mirror start` with random target sets and intervals, `break`, `sync`, partitions and
// heals, target restarts, time passing. Checked against a model of the source's bytes:
//  - a `mirror sync` that returns OK means every target's replica equals the source;
//  - a target's applied cycle never goes back;
//  - at the end, with the network healed and both targets named, a sync brings both
//    to the source's bytes — whatever they missed while off the list (issue 9, bug 1).
// The schedule replays from its seed (AMIRROR_SEED=n); the nodes' own threads still
// interleave as the OS schedules them, so a replay repeats the operations and the
// times, not every thread switch. AMIRROR_SEEDS (3) and AMIRROR_NODE_STEPS (60).
#include <gtest/gtest.h>

#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "node/config.h"
#include "node/node.h"
#include "testing/loopback_network.h"
#include "testing/manual_env.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr uint64_t kVolumeBytes = 2 << 20;
constexpr uint64_t kChunkBytes = 64 << 10;
constexpr uint64_t kSyncTimeoutMs = 600'000;  // simulated
const std::vector<std::string> kTargets = {"b", "c"};

class NodeRandomSchedule {
 public:
  explicit NodeRandomSchedule(uint64_t seed) : seed_(seed), random_(seed), node_random_(seed) {}

  void run(uint64_t steps) {
    start("a");
    for (const std::string& target : kTargets) start(target);
    ASSERT_TRUE(call("a", {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", kVolumeBytes},
                           {"chunk_size_bytes", kChunkBytes}})["ok"]);
    model_.assign(kVolumeBytes, 0);
    for (uint64_t step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
      one_step(step);
      if (!::testing::Test::HasFatalFailure()) check_applied_never_goes_back(step);
    }
    if (::testing::Test::HasFatalFailure()) return;
    finish();
  }

  ~NodeRandomSchedule() {
    for (auto& [name, node] : nodes_) {
      if (node) node->stop();
    }
  }

 private:
  void one_step(uint64_t step) {
    uint64_t pick = random_.uniform(0, 99);
    if (pick < 35) return write();
    if (pick < 47) return start_mirror(step);
    if (pick < 55) return break_mirror(step);
    if (pick < 70) return sync(step, /*expect_ok=*/partitioned_.empty());
    if (pick < 78) return toggle_partition(step);
    if (pick < 84) return restart_target(step);
    advance(std::chrono::milliseconds(random_.uniform(1, 3000)), step);
  }

  void write() {
    uint64_t offset = random_.uniform(0, kVolumeBytes / 4096 - 1) * 4096;
    std::vector<uint8_t> data(4096, static_cast<uint8_t>(random_.uniform(1, 255)));
    ASSERT_TRUE(nodes_["a"]->find_volume("v")->volume->write(offset, data).ok());
    std::copy(data.begin(), data.end(), model_.begin() + offset);
  }

  void start_mirror(uint64_t step) {
    if (running_) return;
    std::vector<std::string> targets;
    for (const std::string& target : kTargets) {
      if (random_.percent(60)) targets.push_back(target);
    }
    if (targets.empty()) targets.push_back(kTargets[random_.uniform(0, 1)]);
    uint64_t interval_ms = std::vector<uint64_t>{1000, 5000, 60'000}[random_.uniform(0, 2)];
    json result = call("a", {{"command", "mirror_start"}, {"volume", "v"}, {"targets", targets}, {"interval_ms", interval_ms}});
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    running_ = true;
    targets_ = targets;
    log(step, "mirror start --to " + json(targets).dump() + " interval " + std::to_string(interval_ms) + " ms");
  }

  void break_mirror(uint64_t step) {
    if (!running_) return;
    json result = call("a", {{"command", "mirror_break"}, {"volume", "v"}});
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    running_ = false;
    log(step, "mirror break");
  }

  // `mirror sync` waits on the node's (manual) clock: time passes here in 500 ms steps
  // until it answers, as it would for a real caller.
  void sync(uint64_t step, bool expect_ok) {
    if (!running_) return;
    Node& a = *nodes_["a"];
    auto answer = std::async(std::launch::async, [&a] {
      return json::parse(a.handle_control(json{{"command", "mirror_sync"}, {"volume", "v"}, {"timeout_ms", kSyncTimeoutMs}}.dump()));
    });
    for (uint64_t waited_ms = 0; answer.wait_for(2ms) != std::future_status::ready; ) {
      if (waited_ms <= kSyncTimeoutMs + 10'000) {
        clock_.advance(500ms);
        waited_ms += 500;
      }
    }
    json result = answer.get();
    log(step, "mirror sync -> " + result.dump());
    if (expect_ok) ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    if (!result["ok"]) return;
    // OK means: every target holds the source's bytes at the synced point, and no
    // write came since (this thread is the only writer).
    for (const std::string& target : targets_) expect_replica_equals_model(target, step);
  }

  void toggle_partition(uint64_t step) {
    const std::string& target = kTargets[random_.uniform(0, 1)];
    if (partitioned_.erase(target)) {
      network_.heal(target + ":1");
      log(step, "heal " + target);
    } else {
      partitioned_.insert(target);
      network_.partition(target + ":1");
      log(step, "partition " + target);
    }
  }

  void restart_target(uint64_t step) {
    const std::string& target = kTargets[random_.uniform(0, 1)];
    nodes_[target]->stop();
    nodes_[target].reset();
    start(target);
    log(step, "restart " + target);
  }

  void advance(std::chrono::milliseconds step_ms, uint64_t step) {
    clock_.advance(step_ms);
    log(step, "time +" + std::to_string(step_ms.count()) + " ms");
  }

  void check_applied_never_goes_back(uint64_t step) {
    json status = call("a", {{"command", "status"}});
    for (const json& volume : status["volumes"]) {
      for (const json& mirror : volume["mirrors"]) {
        if (!mirror["applied_cycle"].is_number()) continue;
        uint64_t applied = mirror["applied_cycle"].get<uint64_t>();
        uint64_t& highest = highest_applied_[mirror["target"].get<std::string>()];
        ASSERT_GE(applied, highest) << trace(step) << "applied cycle of " << mirror["target"] << " went back";
        highest = applied;
      }
    }
  }

  void finish() {
    for (const std::string& target : partitioned_) network_.heal(target + ":1");
    partitioned_.clear();
    if (running_) break_mirror(9999);
    ASSERT_TRUE(call("a", {{"command", "mirror_start"}, {"volume", "v"}, {"targets", kTargets}, {"interval_ms", 60'000}})["ok"]);
    running_ = true;
    targets_ = kTargets;
    log(9999, "final: mirror start --to b,c, then sync");
    sync(9999, /*expect_ok=*/true);
  }

  void expect_replica_equals_model(const std::string& target, uint64_t step) {
    auto replica = nodes_[target]->find_replica("a", "v");
    ASSERT_NE(replica, nullptr) << trace(step) << target << " has no replica after a successful sync";
    std::vector<uint8_t> bytes(kVolumeBytes);
    ASSERT_TRUE(replica->read(0, bytes).ok());
    for (uint64_t offset = 0; offset < kVolumeBytes; offset += 4096) {
      ASSERT_TRUE(std::equal(bytes.begin() + offset, bytes.begin() + offset + 4096, model_.begin() + offset))
          << trace(step) << target << "'s replica differs from the source at byte " << offset
          << " after `mirror sync` returned OK";
    }
  }

  NodeConfig config(const std::string& name) {
    NodeConfig config;
    config.name = name;
    config.data_dir = scratch_.sub(name + ".d");
    config.listen = name + ":1";
    config.insecure = true;
    config.peer_timeout_ms = 600'000;  // real time; cuts come from partitions
    for (const std::string peer : {"a", "b", "c"}) {
      if (peer != name) config.peers.push_back(PeerConfig{peer, peer + ":1", peer, {}});
    }
    return config;
  }
  void start(const std::string& name) {
    auto node = Node::start(config(name), Env{&posix_file_system(), &clock_, &network_, &node_random_, &threads_});
    ASSERT_TRUE(node.ok()) << node.status().to_string();
    nodes_[name] = std::move(node).value();
  }
  json call(const std::string& node, const json& request) {
    return json::parse(nodes_[node]->handle_control(request.dump()));
  }
  void log(uint64_t step, const std::string& what) { history_ += "  step " + std::to_string(step) + ": " + what + "\n"; }
  std::string trace(uint64_t step) {
    return "seed " + std::to_string(seed_) + " (replay: AMIRROR_SEED=" + std::to_string(seed_) + "), step " +
           std::to_string(step) + ", after:\n" + history_;
  }

  const uint64_t seed_;
  testing::Random random_;
  testing::ScratchDir scratch_{"node-random"};
  testing::ManualClock clock_;
  testing::LoopbackNetwork network_;
  testing::SeededRandom node_random_;
  testing::CountedThreads threads_;
  std::map<std::string, std::unique_ptr<Node>> nodes_;  // destroyed before the network and clock
  std::vector<uint8_t> model_;
  bool running_ = false;
  std::vector<std::string> targets_;
  std::set<std::string> partitioned_;
  std::map<std::string, uint64_t> highest_applied_;
  std::string history_;
};

TEST(NodeRandomSchedule, MirrorsThroughStartsBreaksPartitionsAndRestarts) {
  uint64_t steps = testing::env_uint("AMIRROR_NODE_STEPS", 60);
  for (uint64_t seed : testing::seeds_to_run(3)) {
    std::printf("node random schedule: seed %llu, %llu steps\n", static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(steps));
    NodeRandomSchedule schedule(seed);
    schedule.run(steps);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace amirror::node
