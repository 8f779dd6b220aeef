// SPDX-License-Identifier: Apache-2.0
// The config of a node that runs in a test's process on the loopback network
// (testing/loopback_network.h): it listens on "NAME:1", knows every other node of
// `nodes` as a peer at "PEER:1", is plaintext, and has no control or NBD socket (the
// test calls Node::handle_control). Its peer timeout is long and real (the kernel's):
// cuts come from the test's partitions, not from a slow machine.
#pragma once

#include <string>
#include <vector>

#include "node/config.h"

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

}  // namespace amirror::node
