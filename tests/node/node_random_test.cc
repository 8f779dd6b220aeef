// SPDX-License-Identifier: Apache-2.0
// Three real nodes in one process on the Env seam (a manual clock, the loopback
// network) that mirror to each other — a's volume v to b and c, b's volume w to a —
// driven through Node::handle_control by a seeded random schedule: writes,
// `mirror start` with random target sets and intervals, `break`, `sync`, partitions and
// heals, target restarts, time passing. Checked against a model of the source's bytes:
//  - a `mirror sync` that returns OK means every target's replica equals its source;
//  - a target's applied cycle never goes back;
//  - at the end, with the network healed and every target named, a sync brings each
//    to its source's bytes — whatever it missed while off the list (issue 9, bug 1).
// The schedule replays from its seed (AMIRROR_SEED=n); the nodes' own threads still
// interleave as the OS schedules them, so a replay repeats the operations and the
// times, not every thread switch. AMIRROR_SEEDS (3) and AMIRROR_NODE_STEPS (60).
#include <gtest/gtest.h>

#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "node/config.h"
#include "in_process_node.h"
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
const std::vector<std::string> kNodes = {"a", "b", "c"};

// One mirrored volume and what the test knows of it.
struct Unit {
  std::string source;
  std::string volume;
  std::vector<std::string> candidates;  // the targets it may be mirrored to
  std::vector<uint8_t> model;           // the source's bytes, as written
  bool running = false;
  std::vector<std::string> targets;     // while running
  std::map<std::string, uint64_t> highest_applied;  // by target
};

class NodeRandomSchedule {
 public:
  explicit NodeRandomSchedule(uint64_t seed) : seed_(seed), random_(seed), node_random_(seed) {
    units_ = {Unit{"a", "v", {"b", "c"}}, Unit{"b", "w", {"a"}}};
  }

  void run(uint64_t steps) {
    for (const std::string& node : kNodes) start(node);
    for (Unit& unit : units_) {
      ASSERT_TRUE(call(unit.source, {{"command", "volume_create"}, {"name", unit.volume}, {"size_bytes", kVolumeBytes},
                                     {"chunk_size_bytes", kChunkBytes}})["ok"]);
      unit.model.assign(kVolumeBytes, 0);
    }
    for (uint64_t step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
      one_step(step);
      if (!::testing::Test::HasFatalFailure()) check_applied_never_goes_back(step);
      if (std::getenv("AMIRROR_NODE_TRACE") != nullptr) trace_state(step);
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
    Unit& unit = units_[random_.uniform(0, units_.size() - 1)];
    if (pick < 35) return write(unit);
    if (pick < 47) return start_mirror(unit, step);
    if (pick < 55) return break_mirror(unit, step);
    if (pick < 70) return sync(unit, step, /*expect_ok=*/partitioned_.empty());
    if (pick < 78) return toggle_partition(step);
    if (pick < 84) return restart_node(step);
    advance(std::chrono::milliseconds(random_.uniform(1, 3000)), step);
  }

  void write(Unit& unit) {
    uint64_t offset = random_.uniform(0, kVolumeBytes / 4096 - 1) * 4096;
    std::vector<uint8_t> data(4096, static_cast<uint8_t>(random_.uniform(1, 255)));
    ASSERT_TRUE(nodes_[unit.source]->find_volume(unit.volume)->lease().value()->write(offset, data).ok());
    std::copy(data.begin(), data.end(), unit.model.begin() + offset);
  }

  void start_mirror(Unit& unit, uint64_t step) {
    if (unit.running) return;
    std::vector<std::string> targets;
    for (const std::string& target : unit.candidates) {
      if (random_.percent(60)) targets.push_back(target);
    }
    if (targets.empty()) targets.push_back(unit.candidates[random_.uniform(0, unit.candidates.size() - 1)]);
    uint64_t interval_ms = std::vector<uint64_t>{1000, 5000, 60'000}[random_.uniform(0, 2)];
    json result = call(unit.source, {{"command", "mirror_start"}, {"volume", unit.volume}, {"targets", targets},
                                     {"interval_ms", interval_ms}});
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    unit.running = true;
    unit.targets = targets;
    log(step, unit.source + ": mirror start " + unit.volume + " --to " + json(targets).dump() + " interval " +
                  std::to_string(interval_ms) + " ms");
  }

  void break_mirror(Unit& unit, uint64_t step) {
    if (!unit.running) return;
    json result = call(unit.source, {{"command", "mirror_break"}, {"volume", unit.volume}});
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    unit.running = false;
    log(step, unit.source + ": mirror break " + unit.volume);
  }

  // `mirror sync` waits on the node's (manual) clock: time passes here in 500 ms steps
  // until it answers, as it would for a real caller.
  void sync(Unit& unit, uint64_t step, bool expect_ok) {
    if (!unit.running) return;
    Node& source = *nodes_[unit.source];
    json request = {{"command", "mirror_sync"}, {"volume", unit.volume}, {"timeout_ms", kSyncTimeoutMs}};
    auto answer = std::async(std::launch::async, [&source, request] { return json::parse(source.handle_control(request.dump())); });
    for (uint64_t waited_ms = 0; answer.wait_for(2ms) != std::future_status::ready;) {
      if (waited_ms <= kSyncTimeoutMs + 10'000) {
        clock_.advance(500ms);
        waited_ms += 500;
      }
    }
    json result = answer.get();
    log(step, unit.source + ": mirror sync " + unit.volume + " -> " + result.dump());
    if (expect_ok) ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    if (!result["ok"]) return;
    // OK means: every target holds the source's bytes at the synced point, and no
    // write came since (this thread is the only writer).
    for (const std::string& target : unit.targets) expect_replica_equals_model(unit, target, step);
  }

  void toggle_partition(uint64_t step) {
    const std::string& node = kNodes[random_.uniform(0, kNodes.size() - 1)];
    if (partitioned_.erase(node)) {
      network_.heal(node + ":1");
      log(step, "heal " + node);
    } else {
      partitioned_.insert(node);
      network_.partition(node + ":1");
      log(step, "partition " + node);
    }
  }

  // Restarts b or c: b is a target of v and the source of w, whose mirror resumes.
  void restart_node(uint64_t step) {
    const std::string& node = kNodes[random_.uniform(1, kNodes.size() - 1)];
    nodes_[node]->stop();
    nodes_[node].reset();
    start(node);
    log(step, "restart " + node);
  }

  void advance(std::chrono::milliseconds step_ms, uint64_t step) {
    clock_.advance(step_ms);
    log(step, "time +" + std::to_string(step_ms.count()) + " ms");
  }

  void check_applied_never_goes_back(uint64_t step) {
    for (Unit& unit : units_) {
      json status = call(unit.source, {{"command", "status"}});
      for (const json& volume : status["volumes"]) {
        if (volume["name"] != unit.volume) continue;
        for (const json& mirror : volume["mirrors"]) {
          if (!mirror["applied_cycle"].is_number()) continue;
          uint64_t applied = mirror["applied_cycle"].get<uint64_t>();
          uint64_t& highest = unit.highest_applied[mirror["target"].get<std::string>()];
          ASSERT_GE(applied, highest) << trace(step) << "applied cycle of " << unit.volume << " on " << mirror["target"]
                                      << " went back";
          highest = applied;
        }
      }
    }
  }

  // AMIRROR_NODE_TRACE=1: what each source believes and each target holds, per step.
  void trace_state(uint64_t step) {
    for (Unit& unit : units_) {
      json status = call(unit.source, {{"command", "status"}});
      for (const json& volume : status["volumes"]) {
        if (volume["name"] != unit.volume) continue;
        std::string line = unit.volume + " cycle " + volume["cycle"].dump() + " base " + volume["base_cycle"].dump();
        for (const json& mirror : volume["mirrors"]) {
          line += " | " + mirror["target"].get<std::string>() + " " + mirror["state"].get<std::string>() + " applied " +
                  mirror["applied_cycle"].dump() + " pending " + mirror["bytes_pending"].dump();
        }
        for (const std::string& target : unit.candidates) {
          auto replica = nodes_[target]->find_replica(unit.source, unit.volume);
          if (replica) line += " | on " + target + ": " + std::to_string(replica->state().applied_cycle) + " " + replica->activity();
        }
        log(step, "  " + line);
      }
    }
  }

  void finish() {
    for (const std::string& node : partitioned_) network_.heal(node + ":1");
    partitioned_.clear();
    for (Unit& unit : units_) {
      if (unit.running) break_mirror(unit, 9999);
      ASSERT_TRUE(call(unit.source, {{"command", "mirror_start"}, {"volume", unit.volume}, {"targets", unit.candidates},
                                     {"interval_ms", 60'000}})["ok"]);
      unit.running = true;
      unit.targets = unit.candidates;
      log(9999, "final: " + unit.source + ": mirror start " + unit.volume + " to every candidate, then sync");
      sync(unit, 9999, /*expect_ok=*/true);
    }
  }

  void expect_replica_equals_model(const Unit& unit, const std::string& target, uint64_t step) {
    auto replica = nodes_[target]->find_replica(unit.source, unit.volume);
    ASSERT_NE(replica, nullptr) << trace(step) << target << " has no replica of " << unit.volume
                                << " after a successful sync";
    std::vector<uint8_t> bytes(kVolumeBytes);
    ASSERT_TRUE(replica->read(0, bytes).ok());
    for (uint64_t offset = 0; offset < kVolumeBytes; offset += 4096) {
      ASSERT_TRUE(std::equal(bytes.begin() + offset, bytes.begin() + offset + 4096, unit.model.begin() + offset))
          << trace(step) << target << "'s replica of " << unit.source << "/" << unit.volume
          << " differs from the source at byte " << offset << " after `mirror sync` returned OK\nsource status: "
          << call(unit.source, {{"command", "status"}}).dump() << "\ntarget status: " << call(target, {{"command", "status"}}).dump();
    }
  }

  void start(const std::string& name) {
    Env env{&posix_file_system(), &clock_, &network_, &node_random_, &threads_};
    auto node = Node::start(in_process_node_config(name, scratch_.sub(name + ".d"), kNodes), env);
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
  std::vector<Unit> units_;
  std::set<std::string> partitioned_;
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
