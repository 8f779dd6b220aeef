// SPDX-License-Identifier: Apache-2.0
// Concurrent `mirror start` / `mirror break` / `mirror sync` on one volume, straight
// through Node::handle_control from several threads (issue 9, item 4). Whatever order
// they run in, the node must end with one engine or none, and what it says (status,
// running_units) must agree with what it persisted (mirrors/<volume>.json "running"),
// so a restart resumes exactly what status showed. The target peer is unreachable
// (port 1): engines start, fail to connect and retry, which is all this needs.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "node/config.h"
#include "node/node.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;

constexpr int kThreads = 4;
constexpr int kOperationsPerThread = 40;

class NodeControlRaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text = "[node]\nname = \"a\"\ndata_dir = \"" + dir_ + "/a.d\"\ncontrol_socket = \"" + dir_ +
                       "/a.sock\"\npeer_timeout = \"1s\"\n\n[tls]\ninsecure = true\n\n"
                       "[[peers]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n";
    auto config = parse_node_config(text, "a.toml");
    ASSERT_TRUE(config.ok()) << config.status().to_string();
    auto started = Node::start(config.value());
    ASSERT_TRUE(started.ok()) << started.status().to_string();
    node_ = std::move(started).value();
    json created = call({{"command", "volume_create"}, {"name", "v"}, {"size_bytes", 1 << 20}});
    ASSERT_TRUE(created["ok"].get<bool>()) << created.dump();
  }
  void TearDown() override {
    if (node_) node_->stop();
    node_.reset();
  }

  json call(const json& request) { return json::parse(node_->handle_control(request.dump())); }

  bool engine_runs() {
    auto units = node_->running_units();
    return std::find(units.begin(), units.end(), "volume:v") != units.end();
  }
  bool persisted_running() {
    std::ifstream file(dir_ + "/a.d/mirrors/v.json");
    return json::parse(file).at("running").get<bool>();
  }
  std::string status_state() {
    json status = call({{"command", "status"}});
    for (const json& volume : status["volumes"]) {
      for (const json& mirror : volume["mirrors"]) return mirror["state"].get<std::string>();
    }
    return "";
  }
  // Engine, status and state file tell the same story.
  void expect_consistent(const std::string& when) {
    bool runs = engine_runs();
    EXPECT_EQ(persisted_running(), runs) << when << ": engine " << (runs ? "runs" : "is gone")
                                         << " but mirrors/v.json says otherwise";
    EXPECT_EQ(status_state() != "stopped", runs) << when << ": status shows '" << status_state() << "'";
  }

  testing::ScratchDir scratch_{"node-race"};
  const std::string dir_ = scratch_.path();
  std::unique_ptr<Node> node_;
};

TEST_F(NodeControlRaceTest, ConcurrentStartBreakSyncLeaveOneTruth) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      std::mt19937 random(static_cast<uint32_t>(t + 1));
      for (int i = 0; i < kOperationsPerThread; ++i) {
        switch (random() % 3) {
          case 0:
            call({{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 100}});
            break;
          case 1:
            call({{"command", "mirror_break"}, {"volume", "v"}});
            break;
          default:
            call({{"command", "mirror_sync"}, {"volume", "v"}, {"timeout_ms", 1}});
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  expect_consistent("after the storm");

  // From a known state, each command does what it says.
  call({{"command", "mirror_break"}, {"volume", "v"}});
  expect_consistent("after a final break");
  EXPECT_FALSE(engine_runs());
  json started = call({{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 100}});
  EXPECT_TRUE(started["ok"].get<bool>()) << started.dump();
  expect_consistent("after a start");
  EXPECT_TRUE(engine_runs());
}

TEST_F(NodeControlRaceTest, NoMirrorStartsOnceTheNodeStops) {
  json started = call({{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 100}});
  ASSERT_TRUE(started["ok"].get<bool>()) << started.dump();
  ASSERT_TRUE(call({{"command", "mirror_break"}, {"volume", "v"}})["ok"].get<bool>());
  node_->stop();
  json refused = call({{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 100}});
  EXPECT_FALSE(refused["ok"].get<bool>()) << "a start after stop() would create an engine nobody stops";
  EXPECT_NE(refused.value("error", "").find("shutting down"), std::string::npos) << refused.dump();
  EXPECT_FALSE(engine_runs());
  EXPECT_FALSE(persisted_running());
}

}  // namespace
}  // namespace amirror::node
