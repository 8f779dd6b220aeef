// SPDX-License-Identifier: Apache-2.0
// The config of a node that runs in a test's process on the loopback network
// (testing/loopback_network.h): it listens on "NAME:1", knows every other node of
// `nodes` as a peer at "PEER:1", is plaintext, and has no control or NBD socket (the
// test calls Node::handle_control). Its peer timeout is long and real (the kernel's):
// cuts come from the test's partitions, not from a slow machine.
// Also the ways such a test talks to a node and lets time pass on its ManualClock.
#pragma once

#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "node/config.h"
#include "node/node.h"
#include "testing/manual_env.h"

namespace amirror::node {

inline NodeConfig in_process_node_config(const std::string& name, const std::string& data_dir,
                                         const std::vector<std::string>& nodes) {
  NodeConfig config;
  config.name = name;
  config.data_dir = data_dir;
  config.listen = name + ":1";
  config.insecure = true;
  config.peer_timeout_ms = 600'000;
  for (const std::string& peer : nodes) {
    if (peer != name) config.peers.push_back(PeerConfig{peer, peer + ":1", peer, {}});
  }
  return config;
}

// How far simulated time moves per look, while a test waits for a node.
constexpr std::chrono::milliseconds kSimulatedStep{500};
// How long (real time) the node's threads get to act on one step before the next.
constexpr std::chrono::milliseconds kRealPoll{2};

// One control command, as the CLI would send it.
inline nlohmann::json call_control(Node& node, const nlohmann::json& request) {
  return nlohmann::json::parse(node.handle_control(request.dump()));
}

// A control command that waits on the node's clock (`mirror sync`, `mirror switchover`,
// `mirror verify`): simulated time passes in steps while it runs, as it would for a
// real caller, until `simulated_bound_ms` have passed (more than any timeout_ms it
// names, so its own timeout answers); after that the clock stands and the call is
// awaited as it is.
inline nlohmann::json call_while_time_passes(Node& node, testing::ManualClock& clock, const nlohmann::json& request,
                                             uint64_t simulated_bound_ms) {
  auto answer = std::async(std::launch::async, [&node, request] { return call_control(node, request); });
  for (uint64_t waited_ms = 0; answer.wait_for(kRealPoll) != std::future_status::ready;) {
    if (waited_ms < simulated_bound_ms) {
      clock.advance(kSimulatedStep);
      waited_ms += kSimulatedStep.count();
    }
  }
  return answer.get();
}

// Waits for observable state: `done()` is asked after each simulated step (retries,
// backoff and timeouts run on the clock), at most until `simulated_bound_ms` passed.
// False if it never held.
template <class Done>
bool advance_until(testing::ManualClock& clock, Done done, uint64_t simulated_bound_ms) {
  for (uint64_t waited_ms = 0; waited_ms <= simulated_bound_ms; waited_ms += kSimulatedStep.count()) {
    if (done()) return true;
    std::this_thread::sleep_for(kRealPoll);
    clock.advance(kSimulatedStep);
  }
  return done();
}

}  // namespace amirror::node
