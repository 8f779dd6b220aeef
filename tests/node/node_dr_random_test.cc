// SPDX-License-Identifier: Apache-2.0
// The disaster-recovery runbook (docs/operations.md) on two real nodes in one process
// on the Env seam (a manual clock, the loopback network), driven through
// Node::handle_control by a seeded random schedule. One volume `v` whose primary
// moves between a and b; the other node holds its replica. Operations, each checked
// against a model (the primary's bytes as written; per point the primary froze, the
// bytes it held then; the points the replica is believed to keep; `--keep`):
//  - write to the primary; `mirror sync`: OK means the replica equals the primary and
//    keeps the newest min(keep, ...) points, each with the bytes of its cycle;
//  - read a kept point (`replica points`, then the point): retained points never change;
//  - `mirror break` + `mirror start --keep N` (N random, 1..8), then a sync;
//  - `mirror switchover` to the other node: it is primary with every acknowledged
//    byte, and the old primary's volume becomes its replica;
//  - disaster (partition, or the primary stops), promote of a random kept point (or
//    the newest): the volume equals that point; the new primary takes writes; the old
//    one returns with writes of its own: both directions are refused as split brain and
//    change nothing; demote + `mirror start` + `mirror sync` fail back: both sides equal
//    the new primary and the old primary's own writes are gone;
//  - `mirror verify` on the primary finds the replica equal.
// The engines run with an interval of a day, so a point is frozen only inside a call
// the test waits for (sync, start, switchover, verify): each holds the bytes the model
// had when that call began. Not covered: consistency groups (group promote and group
// switchover do not exist yet; docs/operations.md, "Known limits").
// The schedule replays from its seed (AMIRROR_SEED=n); the nodes' threads interleave
// as the OS schedules them. AMIRROR_SEEDS (3) and AMIRROR_DR_STEPS (40).
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <nlohmann/json.hpp>

#include "in_process_node.h"
#include "node/node.h"
#include "testing/loopback_network.h"
#include "testing/manual_env.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;
using Bytes = std::vector<uint8_t>;

constexpr uint64_t kVolumeBytes = 1 << 20;
constexpr uint64_t kChunkBytes = 64 << 10;
constexpr uint64_t kBlockBytes = 4096;
// Longer than any schedule's simulated time: the engines freeze only when asked.
constexpr uint64_t kIntervalMs = 24ULL * 3600 * 1000;
constexpr uint64_t kWaitMs = 600'000;  // simulated: a call's timeout, a wait's bound
constexpr uint64_t kMaxTestKeep = 8;
constexpr size_t kHistoryLines = 40;
constexpr int kSplitBrainSyncAttempts = 20;  // syncs that time out before the refusal   // the operations a failure shows
const std::vector<std::string> kNodes = {"a", "b"};
const std::string kVolume = "v";

std::string other(const std::string& node) { return node == "a" ? "b" : "a"; }

// What the test knows of `v`.
struct DrModel {
  std::string primary = "a";
  std::string role = "primary";  // of the primary's volume in status: "primary" or "promoted"
  Bytes bytes;                   // the primary's, as written
  bool running = false;          // the primary's mirror to the other node
  uint64_t keep = 1;
  // The primary's points (this history: a promote forgets later ones): cycle -> bytes.
  std::map<uint64_t, Bytes> points;
  uint64_t recorded_cycle = 0;         // the newest cycle in `points`
  std::vector<uint64_t> replica_points;  // the replica keeps these, oldest first
};

class NodeDrSchedule {
 public:
  explicit NodeDrSchedule(uint64_t seed) : seed_(seed), random_(seed), node_random_(seed) {}

  ~NodeDrSchedule() {
    for (auto& [name, node] : nodes_) {
      if (node) node->stop();
    }
  }

  void run(uint64_t steps) {
    for (const std::string& node : kNodes) start_node(node);
    ASSERT_TRUE(call("a", {{"command", "volume_create"}, {"name", kVolume}, {"size_bytes", kVolumeBytes},
                           {"chunk_size_bytes", kChunkBytes}})["ok"]);
    model_.bytes.assign(kVolumeBytes, 0);
    write_blocks(model_.primary, model_.bytes, 8);
    start_mirror(random_.uniform(1, kMaxTestKeep), 0);
    if (::testing::Test::HasFatalFailure()) return;
    sync(0);
    for (uint64_t step = 1; step <= steps && !::testing::Test::HasFatalFailure(); ++step) {
      one_step(step);
      if (!::testing::Test::HasFatalFailure()) check_roles(step);
    }
    std::string summary;
    for (const auto& [what, count] : counts_) summary += " " + what + "=" + std::to_string(count);
    std::printf("  seed %llu did:%s\n", static_cast<unsigned long long>(seed_), summary.c_str());
  }

 private:
  void one_step(uint64_t step) {
    uint64_t pick = random_.uniform(0, 99);
    if (pick < 28) return write(step);
    if (pick < 46) return sync(step);
    if (pick < 58) return read_kept_point(step);
    if (pick < 66) return change_keep(step);
    if (pick < 70) return break_mirror(step);
    if (pick < 79) return switchover(step);
    if (pick < 90) return disaster(step);
    verify(step);
  }

  // ---- operations ----

  void write(uint64_t step) {
    uint64_t count = random_.uniform(1, 4);
    write_blocks(model_.primary, model_.bytes, count);
    log(step, model_.primary + ": " + std::to_string(count) + " writes");
  }

  void sync(uint64_t step) {
    if (!model_.running) return;
    json result = call_waiting(model_.primary, {{"command", "mirror_sync"}, {"volume", kVolume}, {"timeout_ms", kWaitMs}});
    note_points(primary_cycle());
    log(step, model_.primary + ": mirror sync -> " + result.dump() + " at cycle " + std::to_string(primary_cycle()));
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    ++counts_["sync"];
    // No write since the call began (this thread is the only writer).
    expect_replica_equals_model(step);
    observe_replica(step, /*after_sync=*/true);
  }

  void read_kept_point(uint64_t step) {
    const std::string replica_node = other(model_.primary);
    json listed = call(replica_node, {{"command", "replica_points"}, {"replica", model_.primary + "/" + kVolume}});
    ASSERT_TRUE(listed["ok"]) << trace(step) << listed.dump();
    if (listed["points"].empty()) return;
    uint64_t cycle = listed["points"][random_.uniform(0, listed["points"].size() - 1)]["cycle"];
    log(step, replica_node + ": read point " + std::to_string(cycle) + " of " + listed.dump());
    auto replica = nodes_[replica_node]->find_replica(model_.primary, kVolume);
    ASSERT_NE(replica, nullptr) << trace(step);
    Bytes bytes(kVolumeBytes);
    Status read = replica->read_point(cycle, 0, bytes);
    if (!read.ok()) {
      // Only a point merged since it was listed may be unreadable.
      for (const PointInfo& point : replica->points()) {
        ASSERT_NE(point.cycle, cycle) << trace(step) << "kept point " << cycle << " is unreadable: " << read.to_string();
      }
      return;
    }
    expect_point(bytes, cycle, replica_node + "'s kept point " + std::to_string(cycle), step);
    ++counts_["point-read"];
  }

  void change_keep(uint64_t step) {
    if (model_.running) break_mirror(step);
    start_mirror(random_.uniform(1, kMaxTestKeep), step);
    if (::testing::Test::HasFatalFailure()) return;
    sync(step);
  }

  void break_mirror(uint64_t step) {
    if (!model_.running) return;
    json result = call(model_.primary, {{"command", "mirror_break"}, {"volume", kVolume}});
    log(step, model_.primary + ": mirror break -> " + result.dump());
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    model_.running = false;
  }

  // Planned: no acknowledged write is lost, the old primary follows the new one.
  void switchover(uint64_t step) {
    if (!model_.running) start_mirror(model_.keep, step);
    if (::testing::Test::HasFatalFailure()) return;
    const std::string from = model_.primary;
    const std::string to = other(from);
    json result = call_waiting(from, {{"command", "mirror_switchover"}, {"volume", kVolume}, {"to", to},
                                      {"timeout_ms", kWaitMs}});
    log(step, from + ": mirror switchover --to " + to + " -> " + result.dump());
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    const uint64_t cycle = result["cycle"];
    note_points(cycle);  // its last cycle, frozen while writes were refused
    ++counts_["switchover"];
    model_.primary = to;
    model_.role = "promoted";
    model_.replica_points.clear();
    ASSERT_EQ(volume_role(to), "promoted") << trace(step) << status(to).dump();
    expect_bytes(read_volume(to), model_.bytes, to + "'s volume after the switchover", step);
    // The new primary mirrors back at once (a freeze after `cycle`); the old one's
    // volume becomes that replica (failback with nothing changed on either side).
    ASSERT_TRUE(advance_until(clock_, [&] { return replica_caught_up() && primary_cycle() > cycle; }, kWaitMs))
        << trace(step) << from << " did not become the idle replica of " << to << "'s volume\n"
        << status(from).dump() << "\n" << status(to).dump();
    note_points(primary_cycle());
    ASSERT_EQ(nodes_[from]->find_volume(kVolume), nullptr) << trace(step) << from << " still has volume " << kVolume;
    expect_replica_equals_model(step);
    observe_replica(step, /*after_sync=*/false);
  }

  // Unplanned: the primary is cut off or stops, the other node promotes a kept point,
  // the old primary returns with writes of its own, split brain, failback.
  void disaster(uint64_t step) {
    const std::string old_primary = model_.primary;
    const std::string survivor = other(old_primary);
    const bool was_running = model_.running;
    const bool partition = random_.percent(50);
    Bytes old_bytes = model_.bytes;
    write_blocks(old_primary, old_bytes, random_.uniform(0, 3));  // acknowledged, never mirrored
    if (partition) {
      for (const std::string& node : kNodes) network_.partition(node + ":1");
      write_blocks(old_primary, old_bytes, random_.uniform(0, 3));
    } else {
      nodes_[old_primary]->stop();
      nodes_[old_primary].reset();
    }
    log(step, partition ? "partition a and b" : "stop " + old_primary);
    ++counts_[partition ? "disaster-partition" : "disaster-stop"];
    Promoted promoted;
    promote(old_primary, survivor, step, promoted);
    if (::testing::Test::HasFatalFailure()) return;
    take_over(survivor, promoted.cycle);
    write_blocks(survivor, model_.bytes, random_.uniform(1, 4));
    if (partition) {
      for (const std::string& node : kNodes) network_.heal(node + ":1");
    } else {
      start_node(old_primary);
    }
    log(step, partition ? "heal a and b" : "restart " + old_primary);
    refuse_split_brain(old_primary, was_running, old_bytes, step);
    if (::testing::Test::HasFatalFailure()) return;
    fail_back(old_primary, promoted.newest, step);
  }

  void verify(uint64_t step) {
    if (!model_.running) return;
    json result = call_waiting(model_.primary, {{"command", "mirror_verify"}, {"volume", kVolume}, {"timeout_ms", kWaitMs}});
    note_points(primary_cycle());  // the verify froze
    log(step, model_.primary + ": mirror verify -> " + result.dump());
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    ASSERT_TRUE(result["equal"]) << trace(step) << result.dump();
    ++counts_["verify"];
    observe_replica(step, /*after_sync=*/true);  // the replica applied the verified point
  }

  // ---- the steps of a disaster ----

  struct Promoted {
    uint64_t cycle = 0;
    bool newest = false;  // the replica's newest point
  };
  // Promotes a kept point of `survivor`'s replica: the newest, or a random one (named
  // with "at", or left out when it is the newest).
  void promote(const std::string& old_primary, const std::string& survivor, uint64_t step, Promoted& promoted) {
    auto replica = nodes_[survivor]->find_replica(old_primary, kVolume);
    ASSERT_NE(replica, nullptr) << trace(step);
    std::vector<PointInfo> kept = replica->points();
    ASSERT_FALSE(kept.empty()) << trace(step);
    promoted.cycle = random_.percent(50) ? kept.back().cycle : kept[random_.uniform(0, kept.size() - 1)].cycle;
    promoted.newest = promoted.cycle == kept.back().cycle;
    json request = {{"command", "replica_promote"}, {"replica", old_primary + "/" + kVolume}};
    if (!promoted.newest || random_.percent(50)) request["at"] = promoted.cycle;
    // The connection the disaster cut may still hold the replica for a moment.
    json result;
    advance_until(clock_, [&] {
      result = call(survivor, request);
      return result["ok"] || result["error"].get<std::string>().find("receiving") == std::string::npos;
    }, kWaitMs);
    json listed = json::array();
    for (const PointInfo& point : kept) listed.push_back(point.cycle);
    log(step, survivor + ": replica promote " + request.dump() + " of points " + listed.dump() + " -> " + result.dump());
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    ASSERT_EQ(result["cycle"].get<uint64_t>(), promoted.cycle) << trace(step) << result.dump();
    ASSERT_EQ(volume_role(survivor), "promoted") << trace(step) << status(survivor).dump();
    expect_point(read_volume(survivor), promoted.cycle, survivor + "'s promoted volume", step);
    ++counts_[promoted.newest ? "promote-newest" : "promote-older"];
  }

  // The model follows the promoted volume: its bytes are those of `cycle`, and the old
  // primary's points after it belong to another history now.
  void take_over(const std::string& survivor, uint64_t cycle) {
    model_.primary = survivor;
    model_.role = "promoted";
    model_.bytes = model_.points.at(cycle);
    model_.points.erase(model_.points.upper_bound(cycle), model_.points.end());
    model_.recorded_cycle = cycle;
    model_.running = false;
    model_.replica_points.clear();
  }

  // Neither side is demoted: the old primary's mirror and the new primary's are both
  // refused as split brain, and neither volume changes.
  void refuse_split_brain(const std::string& old_primary, bool was_running, const Bytes& old_bytes, uint64_t step) {
    const std::string survivor = model_.primary;
    if (!was_running) {  // else it still runs (partition) or resumed at its restart
      json started = call(old_primary, {{"command", "mirror_start"}, {"volume", kVolume}, {"targets", {survivor}},
                                        {"interval_ms", kIntervalMs}});
      log(step, old_primary + ": mirror start --to " + survivor + " -> " + started.dump());
      ASSERT_TRUE(started["ok"]) << trace(step) << started.dump();
    }
    // With nothing new to send it would not connect before its interval: a sync makes
    // a point of its own writes and tries.
    // Simulated time runs while the call waits, at a pace set by real time (see
    // call_while_time_passes): on a loaded machine the sync's timeout can pass before
    // its transfer reached the survivor ("still copying"). Such an answer says nothing
    // either way, so ask again; only the split-brain refusal ends the wait.
    json synced;
    for (int attempt = 0; attempt < kSplitBrainSyncAttempts; ++attempt) {
      synced = call_waiting(old_primary, {{"command", "mirror_sync"}, {"volume", kVolume}, {"timeout_ms", 60'000}});
      log(step, old_primary + ": mirror sync -> " + synced.dump());
      if (synced["ok"] || synced["error"].get<std::string>().find("split brain") != std::string::npos) break;
    }
    ASSERT_FALSE(synced["ok"]) << trace(step) << synced.dump();
    ASSERT_NE(synced["error"].get<std::string>().find("split brain"), std::string::npos) << trace(step) << synced.dump();
    ASSERT_NE(mirror_error(old_primary).find("split brain"), std::string::npos) << trace(step) << status(old_primary).dump();
    start_mirror(random_.uniform(1, kMaxTestKeep), step);
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_TRUE(advance_until(clock_, [&] { return mirror_error(survivor).find("split brain") != std::string::npos; },
                              kWaitMs))
        << trace(step) << survivor << "'s mirror to " << old_primary << " was not refused as split brain: "
        << status(survivor).dump();
    log(step, "split brain, both ways: " + mirror_error(old_primary) + " | " + mirror_error(survivor));
    expect_bytes(read_volume(old_primary), old_bytes, old_primary + "'s volume after refusing split brain", step);
    expect_bytes(read_volume(survivor), model_.bytes, survivor + "'s volume after refusing split brain", step);
    EXPECT_NE(volume_role(old_primary), "demoted") << trace(step);
    EXPECT_EQ(nodes_[survivor]->find_replica(old_primary, kVolume), nullptr) << trace(step);
    EXPECT_EQ(nodes_[old_primary]->find_replica(survivor, kVolume), nullptr) << trace(step);
  }

  // The runbook's failback: break and demote on the old primary, sync on the new one.
  void fail_back(const std::string& old_primary, bool promoted_newest, uint64_t step) {
    json refused = call(old_primary, {{"command", "volume_demote"}, {"name", kVolume}});
    ASSERT_FALSE(refused["ok"]) << trace(step) << "demote of a mirrored volume: " << refused.dump();
    ASSERT_TRUE(call(old_primary, {{"command", "mirror_break"}, {"volume", kVolume}})["ok"]) << trace(step);
    json demoted = call(old_primary, {{"command", "volume_demote"}, {"name", kVolume}});
    log(step, old_primary + ": mirror break, volume demote -> " + demoted.dump());
    ASSERT_TRUE(demoted["ok"]) << trace(step) << demoted.dump();
    ASSERT_EQ(volume_role(old_primary), "demoted") << trace(step);
    Bytes block(kBlockBytes, 0x5a);
    ASSERT_FALSE(nodes_[old_primary]->find_volume(kVolume)->lease().value()->write(0, block).ok())
        << trace(step) << "the demoted volume took a write";
    if (random_.percent(50)) {  // the runbook's order: start the new primary's mirror after the demote
      break_mirror(step);
      start_mirror(random_.uniform(1, kMaxTestKeep), step);
      if (::testing::Test::HasFatalFailure()) return;
    }
    json synced = call_waiting(model_.primary, {{"command", "mirror_sync"}, {"volume", kVolume}, {"timeout_ms", kWaitMs}});
    note_points(primary_cycle());
    log(step, model_.primary + ": mirror sync -> " + synced.dump());
    if (!synced["ok"]) {
      // Documented: an old primary that merged past an older promoted point cannot say
      // which chunks it changed since; it is deleted and gets a full copy.
      ASSERT_FALSE(promoted_newest) << trace(step) << "failback from the newest point failed: " << synced.dump();
      ASSERT_NE(synced["error"].get<std::string>().find("cannot tell which chunks"), std::string::npos)
          << trace(step) << synced.dump();
      json deleted = call(old_primary, {{"command", "volume_delete"}, {"name", kVolume}});
      log(step, old_primary + ": volume delete -> " + deleted.dump());
      ASSERT_TRUE(deleted["ok"]) << trace(step) << deleted.dump();
      ++counts_["failback-full-copy"];
      sync(step);
      return;
    }
    ASSERT_EQ(nodes_[old_primary]->find_volume(kVolume), nullptr) << trace(step) << old_primary << " kept its volume";
    expect_replica_equals_model(step);
    observe_replica(step, /*after_sync=*/true);
    ++counts_["failback"];
  }

  // ---- the model's points and the replica's ----

  // Points the primary froze since the last call hold the model's bytes: no write
  // happened since the call that froze them began.
  void note_points(uint64_t cycle) {
    for (uint64_t frozen = model_.recorded_cycle + 1; frozen <= cycle; ++frozen) model_.points[frozen] = model_.bytes;
    model_.recorded_cycle = std::max(model_.recorded_cycle, cycle);
  }

  // Every kept point holds its cycle's bytes. After a sync the kept points are the
  // newest `keep` of those kept before and those that arrived since.
  void observe_replica(uint64_t step, bool after_sync) {
    auto replica = nodes_[other(model_.primary)]->find_replica(model_.primary, kVolume);
    ASSERT_NE(replica, nullptr) << trace(step);
    std::vector<uint64_t> kept;
    for (const PointInfo& point : replica->points()) kept.push_back(point.cycle);
    ASSERT_FALSE(kept.empty()) << trace(step);
    for (uint64_t cycle : kept) {
      Bytes bytes(kVolumeBytes);
      Status read = replica->read_point(cycle, 0, bytes);
      ASSERT_TRUE(read.ok()) << trace(step) << read.to_string();
      expect_point(bytes, cycle, "kept point " + std::to_string(cycle) + " of the replica", step);
      if (::testing::Test::HasFatalFailure()) return;
    }
    if (after_sync) {
      std::vector<uint64_t> expected = model_.replica_points;
      expected.insert(expected.end(), kept.begin(), kept.end());
      std::sort(expected.begin(), expected.end());
      expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
      if (expected.size() > model_.keep) expected.erase(expected.begin(), expected.end() - model_.keep);
      ASSERT_EQ(kept, expected) << trace(step) << "the replica keeps other points than the newest " << model_.keep;
    }
    model_.replica_points = kept;
    // Older points are gone for good: their bytes are no longer needed.
    model_.points.erase(model_.points.begin(), model_.points.lower_bound(kept.front()));
  }

  bool replica_caught_up() {
    auto replica = nodes_[other(model_.primary)]->find_replica(model_.primary, kVolume);
    return replica != nullptr && replica->activity() == "idle" && replica->readable_cycle() == primary_cycle();
  }

  void expect_replica_equals_model(uint64_t step) {
    const std::string replica_node = other(model_.primary);
    auto replica = nodes_[replica_node]->find_replica(model_.primary, kVolume);
    ASSERT_NE(replica, nullptr) << trace(step) << replica_node << " has no replica of " << model_.primary << "/v";
    ASSERT_EQ(replica->readable_cycle(), primary_cycle()) << trace(step);
    Bytes bytes(kVolumeBytes);
    ASSERT_TRUE(replica->read(0, bytes).ok()) << trace(step);
    expect_bytes(bytes, model_.bytes, replica_node + "'s replica", step);
  }

  void expect_point(const Bytes& got, uint64_t cycle, const std::string& what, uint64_t step) {
    auto point = model_.points.find(cycle);
    ASSERT_NE(point, model_.points.end()) << trace(step) << what << ": the primary froze no point " << cycle;
    expect_bytes(got, point->second, what + " (cycle " + std::to_string(cycle) + ")", step);
  }

  void expect_bytes(const Bytes& got, const Bytes& want, const std::string& what, uint64_t step) {
    ASSERT_EQ(got.size(), want.size()) << trace(step) << what;
    auto differ = std::mismatch(got.begin(), got.end(), want.begin());
    ASSERT_TRUE(differ.first == got.end())
        << trace(step) << what << " differs from the model at byte " << (differ.first - got.begin()) << " (chunk "
        << (differ.first - got.begin()) / kChunkBytes << ")\n" << status("a").dump() << "\n" << status("b").dump();
  }

  // Status shows the primary's role, and the other node holds v only as its replica.
  void check_roles(uint64_t step) {
    const std::string replica_node = other(model_.primary);
    ASSERT_EQ(volume_role(model_.primary), model_.role) << trace(step) << status(model_.primary).dump();
    ASSERT_EQ(volume_role(replica_node), "") << trace(step) << status(replica_node).dump();
    bool listed = false;
    const json replica_status = status(replica_node);  // outlives the loop
    for (const json& replica : replica_status["replicas"]) {
      listed = listed || (replica["source"] == model_.primary && replica["volume"] == kVolume && replica["role"] == "replica");
    }
    ASSERT_TRUE(listed) << trace(step) << status(replica_node).dump();
  }

  // ---- nodes ----

  void start_mirror(uint64_t keep, uint64_t step) {
    const uint64_t before = primary_cycle();
    json result = call(model_.primary, {{"command", "mirror_start"}, {"volume", kVolume},
                                        {"targets", {other(model_.primary)}}, {"interval_ms", kIntervalMs}, {"keep", keep}});
    log(step, model_.primary + ": mirror start --keep " + std::to_string(keep) + " -> " + result.dump());
    ASSERT_TRUE(result["ok"]) << trace(step) << result.dump();
    model_.running = true;
    ++counts_[keep == model_.keep ? "start" : "start-new-keep"];
    model_.keep = keep;
    // Its first freeze is at once: wait for it, so no later write can land in it.
    ASSERT_TRUE(advance_until(clock_, [&] { return primary_cycle() > before; }, kWaitMs)) << trace(step);
    note_points(primary_cycle());
  }

  void write_blocks(const std::string& node, Bytes& model, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t offset = random_.uniform(0, kVolumeBytes / kBlockBytes - 1) * kBlockBytes;
      Bytes data(kBlockBytes);
      random_.fill(data);
      ASSERT_TRUE(nodes_[node]->find_volume(kVolume)->lease().value()->write(offset, data).ok());
      std::copy(data.begin(), data.end(), model.begin() + offset);
    }
  }

  Bytes read_volume(const std::string& node) {
    Bytes bytes(kVolumeBytes);
    auto entry = nodes_[node]->find_volume(kVolume);
    EXPECT_NE(entry, nullptr) << node << " has no volume " << kVolume;
    if (entry != nullptr) {
      EXPECT_TRUE(entry->lease().value()->read(0, bytes).ok());
    }
    return bytes;
  }

  uint64_t primary_cycle() {
    auto entry = nodes_[model_.primary]->find_volume(kVolume);
    return entry == nullptr ? 0 : entry->facts().cycle;
  }

  // {} for a node that is stopped now.
  json status(const std::string& node) {
    return nodes_[node] == nullptr ? json::object() : call(node, {{"command", "status"}});
  }

  // v's role in the node's status; "" when the node has no volume v.
  std::string volume_role(const std::string& node) {
    const json node_status = status(node);  // outlives the loop
    for (const json& volume : node_status["volumes"]) {
      if (volume["name"] == kVolume) return volume["role"];
    }
    return "";
  }

  // The last error of v's mirror on `node`; "" when none.
  std::string mirror_error(const std::string& node) {
    const json node_status = status(node);  // outlives the loop
    for (const json& volume : node_status["volumes"]) {
      if (volume["name"] != kVolume) continue;
      for (const json& mirror : volume["mirrors"]) {
        if (mirror["last_error"].is_string()) return mirror["last_error"];
      }
    }
    return "";
  }

  void start_node(const std::string& name) {
    Env env{&posix_file_system(), &clock_, &network_, &node_random_, &threads_};
    auto node = Node::start(in_process_node_config(name, scratch_.sub(name + ".d"), kNodes), env);
    ASSERT_TRUE(node.ok()) << node.status().to_string();
    nodes_[name] = std::move(node).value();
  }
  json call(const std::string& node, const json& request) { return call_control(*nodes_[node], request); }
  json call_waiting(const std::string& node, const json& request) {
    return call_while_time_passes(*nodes_[node], clock_, request, kWaitMs + 10'000);
  }

  void log(uint64_t step, const std::string& what) {
    history_.push_back("  step " + std::to_string(step) + ": " + what);
    if (history_.size() > kHistoryLines) history_.pop_front();
  }
  std::string trace(uint64_t step) {
    std::string text = "seed " + std::to_string(seed_) + " (replay: AMIRROR_SEED=" + std::to_string(seed_) +
                       "), step " + std::to_string(step) + ", after:\n";
    for (const std::string& line : history_) text += line + "\n";
    return text;
  }

  const uint64_t seed_;
  testing::Random random_;
  testing::ScratchDir scratch_{"node-dr-random"};
  testing::ManualClock clock_;
  testing::LoopbackNetwork network_;
  testing::SeededRandom node_random_;
  testing::CountedThreads threads_;
  std::map<std::string, std::unique_ptr<Node>> nodes_;  // destroyed before the network and clock
  DrModel model_;
  std::deque<std::string> history_;
  std::map<std::string, uint64_t> counts_;  // what the schedule did, for the summary line
};

TEST(NodeDrRandomSchedule, PromotesSwitchesOverFailsBackAndKeepsPoints) {
  uint64_t steps = testing::env_uint("AMIRROR_DR_STEPS", 40);
  for (uint64_t seed : testing::seeds_to_run(3)) {
    std::printf("node DR random schedule: seed %llu, %llu steps\n", static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(steps));
    NodeDrSchedule schedule(seed);
    schedule.run(steps);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace amirror::node
