// SPDX-License-Identifier: Apache-2.0
// An in-process Network (base/env.h) for tests that run several nodes in one process:
// addresses are names ("b:1"), connections are Unix socket pairs (so TLS and the
// kernel's timeouts work as on TCP) joined by a relay thread, and a test can
// partition an address — cut every connection to it and refuse new ones — and heal
// it, without ports or external proxies. Listeners must not outlive the network.
// Thread-safety: all methods are thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "base/env.h"

namespace amirror::testing {

class LoopbackNetwork final : public Network {
 public:
  ~LoopbackNetwork() override;
  Result<Connection> connect(const std::string& address, int timeout_ms) override;
  Result<std::unique_ptr<Listener>> listen(const std::string& address) override;

  // Cuts the connections made to `address` and refuses new ones until heal(address).
  void partition(const std::string& address);
  void heal(const std::string& address);
  // connect() calls to `address` so far, refused ones included.
  uint64_t connect_attempts(const std::string& address) const;

  // One listening address's queue of accepted-to-be connections.
  struct Queue {
    std::mutex mutex;
    std::condition_variable arrived;
    std::deque<Connection> pending;
    bool closed = false;
  };

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Queue>> listeners_;
  std::set<std::string> partitioned_;
  std::map<std::string, uint64_t> attempts_;
  // Each connection runs through a relay that owns the inner ends, so cutting it
  // never touches a descriptor its owners may have closed and reused.
  struct Relay;
  std::map<std::string, std::vector<std::shared_ptr<Relay>>> relays_;
};

}  // namespace amirror::testing
