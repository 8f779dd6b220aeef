// SPDX-License-Identifier: Apache-2.0
// The node's Prometheus metrics (`[node] metrics_listen`): an HTTP endpoint serving
// the text format at /metrics (prometheus-cpp's Exposer), fed from two places:
//  - At every scrape, the node's status document (what `status --json` prints) is read
//    and turned into gauges: mirror lag, applied cycle, bytes pending/sent, state; the
//    volumes' cycle, layers and size; the replicas' applied cycle and kept points;
//    plus process basics from /proc/self. So metrics and status never disagree, and
//    nothing is counted twice.
//  - Events the status does not keep are counted as they happen through the hooks
//    below: freeze stalls, cycle and apply durations, mirror errors by kind, and NBD
//    traffic (nbd_observer()).
// Every series and its meaning: docs/operations.md, "Metrics".
//
// Cost: the NBD hooks run on every request. They take no lock: a connection gets its
// export's counters once (after the handshake), and a request only adds to atomic
// counters (prometheus-cpp Counter; the latency histograms are atomic bucket counters
// read at scrape time). The other hooks run once per cycle or per delta.
// Thread-safety: every method is thread-safe. Only metrics.cc includes prometheus-cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"

namespace amirror::nbd {
class ServerObserver;
}

namespace amirror::node {

// The `kind` label of amirror_mirror_errors_total for a failed transfer: the error
// code as a token ("io", "timeout", "corruption", ...). Freeze, merge and state-file
// failures use "freeze", "merge" and "state_save".
std::string_view transfer_error_kind(ErrorCode code);

class NodeMetrics {
 public:
  struct Options {
    std::string listen_address;  // HOST:PORT; port 0 = any free port
    // Returns the status document (`status --json`); called on every scrape.
    std::function<std::string()> status_json;
  };
  // Binds the endpoint. An address in use or not local is an error naming it.
  static Result<std::unique_ptr<NodeMetrics>> start(Options options);
  // Hooks and the text format without an endpoint (tests).
  static std::unique_ptr<NodeMetrics> without_endpoint(std::function<std::string()> status_json);
  ~NodeMetrics();
  NodeMetrics(const NodeMetrics&) = delete;
  NodeMetrics& operator=(const NodeMetrics&) = delete;

  // Closes the endpoint (waiting for a scrape in progress); the hooks keep working.
  void stop_endpoint();
  // The bound port (the one chosen for port 0); 0 without an endpoint.
  uint16_t port() const;
  // What /metrics serves now.
  std::string text() const;

  // A group's freeze held the volume's writes this long.
  void observe_freeze_stall(const std::string& volume, double seconds);
  // A transfer of one point to `target` succeeded, this long after it began.
  void observe_cycle(const std::string& volume, const std::string& target, double seconds);
  // `target` is "" for errors that are not a target's (freeze, merge, state_save).
  void count_mirror_error(const std::string& volume, const std::string& target, std::string_view kind);
  // A delta from `source` was made durable and applied to its replica in this long.
  void observe_apply(const std::string& source, const std::string& volume, double seconds);
  // For nbd::ServerOptions::observer. Lives as long as this object or the server.
  std::shared_ptr<nbd::ServerObserver> nbd_observer();

 private:
  struct Impl;
  explicit NodeMetrics(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace amirror::node
