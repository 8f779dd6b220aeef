// SPDX-License-Identifier: Apache-2.0
// The source side of mirroring (patent Figs. 7-8): one MirrorEngine per mirrored unit
// (a volume, or a consistency group frozen together) runs the cycle
//   freeze -> copy to every target concurrently -> merge -> wait for the interval
// until stopped (`mirror break`).
//
// Scheduling rules:
//  - A new freeze happens when the interval has passed (or `mirror sync` asks), and
//    no target that is keeping up is still copying the latest freeze point. A target
//    that copies the latest point for longer than the lag grace (2 x interval, at
//    least 5 s) is lagging and no longer holds the others back.
//  - Every idle target that lacks the latest point gets a transfer of it: one
//    coalesced delta per volume (pending chunks + layers since its applied cycle), read
//    from that frozen point. A failed transfer is retried with exponential backoff
//    (1 s .. 10 s) and always aims at the newest point.
//  - A transfer cut short (dropped connection, target or source restart) resumes at
//    the same freeze point, from where the target's durable staging ends, as long as
//    that point still exists and the target failed fewer than kMaxPinnedFailures times
//    in a row without progress (its applied cycle or durably staged records grew
//    since the previous attempt); after that the point is released and the target catches up from a new
//    one, so a dead target cannot pin layers forever.
//  - A frozen layer is merged into the base once no running or resumable transfer
//    still needs to read a point below it. Every target with a replica that has not
//    applied it gets its chunks added to its pending set first — also a target that
//    is not in the mirror's target list now, so that when it is named again it gets
//    exactly what it lacks (see mirror_state.h).
// Thread-safety: public methods are thread-safe. One engine thread plus one thread per
// running transfer; mutex_ guards all runtime state and each VolumeEntry's MirrorState.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "node/config.h"
#include "node/mirror_state.h"
#include "repl/socket.h"
#include "store/volume.h"

namespace amirror::node {

// A volume known to the node, with its persisted mirror state.
struct VolumeEntry {
  std::string name;
  std::shared_ptr<Volume> volume;
  MirrorState state;  // guarded by the engine's mutex while an engine runs, else the node's
};

struct MirrorStatus {
  std::string volume;
  std::string target;
  std::string state;  // "initial-sync", "copying", "idle", "lagging", "error", "stopped"
  uint64_t applied_cycle = 0;
  int64_t applied_freeze_time_unix_ms = 0;
  uint64_t bytes_pending = 0;
  uint64_t bytes_sent = 0;
  std::string last_error;
  // While copying: progress of the current delta.
  uint64_t copy_cycle = 0;
  uint64_t copy_done_bytes = 0;
  uint64_t copy_total_bytes = 0;
  double copy_rate_bytes_per_second = 0;
};

struct EngineContext {
  FileSystem* fs = nullptr;
  const NodeConfig* config = nullptr;
  std::string mirrors_dir;  // where MirrorState files live
  // Null only with `insecure = true`: then peer connections are plaintext.
  std::shared_ptr<const net::TlsContext> tls;
};

class MirrorEngine {
 public:
  MirrorEngine(EngineContext context, std::vector<std::shared_ptr<VolumeEntry>> volumes);
  ~MirrorEngine();
  MirrorEngine(const MirrorEngine&) = delete;
  MirrorEngine& operator=(const MirrorEngine&) = delete;

  void start();
  // Stops the cycle, aborts running transfers, merges what can be merged, and saves
  // state. Returns once every thread has exited.
  void stop();
  // Freezes now (as soon as the rules allow) and waits until every target applied
  // that point, or fails after timeout_ms with each lagging target's reason.
  Status sync(uint64_t timeout_ms);
  std::vector<MirrorStatus> status();

 private:
  struct TargetRuntime {
    std::string name;
    bool busy = false;
    std::map<std::string, uint64_t> busy_points;  // volume -> cycle being sent
    std::chrono::steady_clock::time_point busy_since;
    std::chrono::steady_clock::time_point retry_at;
    uint64_t backoff_ms = 0;
    std::string last_error;
    uint32_t consecutive_failures = 0;
    // Per volume: (applied cycle, staged records) the target last reported.
    std::map<std::string, std::pair<uint64_t, uint64_t>> last_observed;
    std::thread thread;
    repl::PeerSocket* socket = nullptr;  // the running transfer's socket, for abort
    std::string copy_volume;
    uint64_t copy_cycle = 0;
    uint64_t copy_done_bytes = 0;
    uint64_t copy_total_bytes = 0;
    std::chrono::steady_clock::time_point copy_started;
  };

  void run();
  bool freeze_due_locked(std::chrono::steady_clock::time_point now) const;
  Status freeze_all();
  void start_transfers_locked(std::chrono::steady_clock::time_point now);
  void transfer(TargetRuntime* target, std::map<std::string, uint64_t> points);
  // TLS handshake, then checks the target's certificate names the peer's identity.
  Status authenticate_target(repl::PeerSocket& socket, const PeerConfig& peer) const;
  Status transfer_volume(TargetRuntime* target, repl::PeerSocket& socket, VolumeEntry& entry, uint64_t point);
  void merge_what_is_possible();
  Status save_locked(VolumeEntry& entry);
  bool target_has_all_locked(const std::string& target, const std::map<std::string, uint64_t>& points) const;
  // The point a target's interrupted transfer aimed at, if it should be resumed rather
  // than restarted at a newer point (0 if none). Such a point is kept from merging.
  uint64_t pinned_point_locked(const VolumeEntry& entry, const TargetRuntime& target) const;

  EngineContext context_;
  std::vector<std::shared_ptr<VolumeEntry>> volumes_;
  std::chrono::milliseconds interval_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<TargetRuntime>> targets_;
  std::map<std::string, uint64_t> latest_points_;  // volume -> newest frozen point
  uint64_t freeze_count_ = 0;                       // freezes since start
  bool freeze_requested_ = false;
  std::chrono::steady_clock::time_point next_freeze_at_;
  std::string freeze_error_;
  std::thread thread_;
};

}  // namespace amirror::node
