// SPDX-License-Identifier: Apache-2.0
// Transport between the CLI and a running node: a Unix socket (mode 0600), one
// request line and one response line of JSON per connection. The node's requests and
// responses are defined in node.h; this file only moves lines.
// Thread-safety: ControlServer runs one thread per client (bounded); stop() from one thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/env.h"
#include "base/status.h"

namespace amirror::node {

constexpr size_t kMaxControlLineBytes = 1 << 20;
constexpr size_t kMaxControlClients = 32;

class ControlServer {
 public:
  using Handler = std::function<std::string(const std::string& request)>;
  // Its threads (one accepting, one per client) come from `threads`.
  static Result<std::unique_ptr<ControlServer>> start(const std::string& socket_path, Threads& threads,
                                                      Handler handler);
  ~ControlServer();
  void stop();

 private:
  ControlServer(int fd, std::string path, Threads& threads, Handler handler)
      : fd_(fd), path_(std::move(path)), threads_(threads), handler_(std::move(handler)) {}
  void accept_loop();
  void serve(int client_fd);

  int fd_;
  std::string path_;
  Threads& threads_;
  Handler handler_;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  // Client threads are detached; stop() shuts their sockets and waits for them here.
  std::mutex clients_mutex_;
  std::condition_variable clients_done_;
  std::vector<int> client_fds_;
};

// Sends one request line and returns the response line. `timeout_ms` bounds the wait.
Result<std::string> control_call(const std::string& socket_path, const std::string& request, uint64_t timeout_ms);

}  // namespace amirror::node
