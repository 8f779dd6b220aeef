// SPDX-License-Identifier: Apache-2.0
// The engine writes a mirror state file (write, fsync, rename) without holding the
// lock that `status` needs (issue 9, item 6): with the file system stuck in that
// write, status still answers. The state file is held in its rename by a gate; the
// wait for status is bounded generously, it is not a timing assertion.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>

#include "node/mirror_engine.h"
#include "store/data_dir.h"
#include "testing/gated_file_system.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

constexpr auto kGenerousWait = std::chrono::seconds(60);

TEST(MirrorEngineSave, StatusAnswersWhileAStateFileIsBeingWritten) {
  testing::ScratchDir scratch("engine-save");
  auto data_dir = DataDir::open(posix_file_system(), scratch.sub("data"));
  ASSERT_TRUE(data_dir.ok()) << data_dir.status().to_string();
  auto created = data_dir.value()->create_volume("v", VolumeOptions{1 << 20, kDefaultChunkSizeBytes, ""});
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  // Never leased, so it stays open for the test.
  auto entry = std::make_shared<VolumeEntry>("v", std::shared_ptr<Volume>(std::move(created).value()), nullptr);
  // b holds point 1; the layer after it, once merged, must be recorded as pending for
  // b in the state file before it goes — that is the save the gate holds.
  std::vector<uint8_t> data(4096, 0x5a);
  ASSERT_TRUE(entry->volume->write(0, data).ok());
  ASSERT_TRUE(entry->volume->freeze().ok());
  ASSERT_TRUE(entry->volume->write(65536, data).ok());
  MirrorState state;
  state.unit = "volume:v";
  state.targets = {"b"};
  state.interval_ms = 3'600'000;
  state.running = true;
  state.target_states["b"].applied_cycle = 1;

  NodeConfig config;
  config.name = "a";
  config.insecure = true;
  config.peer_timeout_ms = 1000;
  config.peers.push_back(PeerConfig{"b", "127.0.0.1:1", "b", {}});  // unreachable: transfers fail fast
  ASSERT_TRUE(posix_file_system().make_dir(scratch.sub("mirrors")).ok());
  testing::GatedFileSystem fs(testing::GatedFileSystem::Gate::kRenameOnto, "v.json");
  Env env = Env::posix();
  env.fs = &fs;
  MirrorEngine engine(EngineContext{env, &config, scratch.sub("mirrors"), nullptr}, {entry}, {{"v", state}});
  engine.start();  // freezes point 2 at once; merging layer 2 saves b's pending chunks

  ASSERT_TRUE(fs.wait_until_one_waits(kGenerousWait)) << "the engine never wrote its state file";
  auto status = std::async(std::launch::async, [&] { return engine.status(); });
  bool answered = status.wait_for(kGenerousWait) == std::future_status::ready;
  fs.open_gate();
  EXPECT_TRUE(answered) << "status waited for a state file write";
  ASSERT_EQ(status.get().size(), 1u);
  engine.stop();

  auto saved = load_mirror_state(posix_file_system(), scratch.sub("mirrors") + "/v.json");
  ASSERT_TRUE(saved.ok()) << saved.status().to_string();
  EXPECT_EQ(saved->target_states.at("b").applied_cycle, 1u) << "the file claims more than b applied";
  EXPECT_FALSE(saved->target_states.at("b").pending_chunks.empty()) << "b's missing chunks were not recorded";
}

}  // namespace
}  // namespace amirror::node
