// SPDX-License-Identifier: Apache-2.0
// The environment seam (after LevelDB's Env): everything a node takes from the outside
// world besides files — time, the network, randomness and new threads — goes through
// these interfaces, so tests run whole nodes on a manual clock and an in-process
// network (src/testing/) and production runs on the real ones (posix_env.cc). Files
// go through FileSystem (store/file_system.h); node/env.h bundles all five.
//
// Thread-safety: every method of every interface here is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "base/mutex.h"
#include "base/status.h"

namespace amirror {

class Clock {
 public:
  // Monotonic time: intervals, deadlines, backoff.
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint now() = 0;
  // Wall time for freeze times and lag, milliseconds since the Unix epoch.
  virtual int64_t unix_ms() = 0;
  // Waits on `changed` (releasing `lock`) until notified or until now() >= deadline.
  // False once the deadline has passed; may return true spuriously before it. Every
  // timed wait of a node goes through here, so a manual clock can move it.
  virtual bool wait_until(CondVar& changed, MutexLock& lock, TimePoint deadline) = 0;
};

// A connected byte stream: the caller owns `fd` and closes it.
struct Connection {
  int fd = -1;
  std::string peer;  // who is at the other end, for messages: "10.0.0.2:40112"
};

class Listener {
 public:
  virtual ~Listener() = default;
  // Blocks until a connection arrives, or until close() (then kCancelled).
  virtual Result<Connection> accept() = 0;
  virtual void close() = 0;
  virtual uint16_t port() const = 0;
};

class Network {
 public:
  virtual ~Network() = default;
  // `address` is HOST:PORT ("127.0.0.1:7401", "[::1]:7401", "localhost:7401").
  virtual Result<Connection> connect(const std::string& address, int timeout_ms) = 0;
  virtual Result<std::unique_ptr<Listener>> listen(const std::string& address) = 0;
};

class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Uniform in [0, bound); bound > 0.
  virtual uint64_t uniform(uint64_t bound) = 0;
};

class Threads {
 public:
  virtual ~Threads() = default;
  // Starts `body` on a new thread; the caller joins or detaches it.
  virtual std::thread start(std::function<void()> body) = 0;
};

// The real ones: steady_clock and system_clock, TCP (with keep-alives and large
// buffers), a randomly seeded generator, OS threads. Each lives for the process.
Clock& real_clock();
Network& tcp_network();
RandomSource& system_random();
Threads& os_threads();

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
// "127.0.0.1:7401", "[::1]:7401", "localhost:7401".
Result<HostPort> parse_host_port(const std::string& address);

}  // namespace amirror
