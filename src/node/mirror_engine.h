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
//    (1 s .. 10 s, plus up to a quarter at random, so the sources of a target that
//    comes back do not all reconnect at once) and always aims at the newest point.
//  - A transfer cut short (dropped connection, target or source restart) resumes at
//    the same freeze point, from where the target's durable staging ends, as long as
//    that point still exists and the target failed fewer than kMaxPinnedFailures times
//    in a row without progress (its applied cycle or durably staged records grew
//    since the previous attempt); after that the point is released and the target catches up from a new
//    one, so a dead target cannot pin layers forever.
//  - A frozen layer is merged into the base once no running or resumable transfer
//    still needs to read a point below it. Every target with a replica that has not
//    applied it gets its chunks added to its pending set first — also targets that are
//    not in the mirror's target list right now, so that one named again later gets
//    exactly what it lacks (see mirror_state.h).
//
// State and locks:
//  - The engine owns its members' MirrorStates while it runs (a copy handed in at
//    construction, handed back by states()); mutex_ guards them and all runtime state.
//    The node's copy in VolumeEntry is not touched by the engine.
//  - A state file is written outside mutex_ (status() must not wait for an fsync): a
//    snapshot is taken and written under the volume's save_mutex, so files are written
//    in the order their snapshots were taken and an older one never replaces a newer
//    one. Lock order: save_mutex -> mutex_.
// Threads: the engine has no thread of its own. Its scheduling runs as rounds (run_round:
// freeze if due, start transfers, merge) on the node's EngineScheduler
// (node/engine_scheduler.h, `[node] workers`): a round runs when the time it asked for
// comes (the next freeze, a retry, a lag grace; at least once a second) or at once when
// notify_changed_locked() wakes it (a transfer ended, sync, verify hold, stop, a slot
// granted). Rounds of one engine never overlap, and a wake during a round runs another
// right after, so no change goes unseen. A freeze (fsync) and merges run inside a round
// and hold one worker meanwhile: other engines wait for a worker only when every worker
// is in such a round. Each running transfer has a thread; a transfer starts only with
// a slot of the node's TransferSlots (`max_transfers`), so those are bounded node-wide
// too. Without a scheduler in the context the engine makes its own with one worker.
// Thread-safety: public methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "node/config.h"
#include "node/engine_scheduler.h"
#include "node/env.h"
#include "node/mirror_state.h"
#include "node/transfer_slots.h"
#include "node/volume_entry.h"
#include "repl/sender_session.h"
#include "repl/socket.h"
#include "repl/throttle.h"
#include "repl/wire.h"
#include "store/volume.h"

namespace amirror::node {

class NodeMetrics;

struct MirrorStatus {
  std::string volume;
  std::string target;
  // "initial-sync", "copying", "idle", "lagging", "error", "stopped"; "queued" while a
  // transfer waits for one of the node's max_transfers slots; "verifying" while a
  // `mirror verify` holds the mirror; "differs" after one found the replica different
  // (last_error says how to repair).
  std::string state;
  uint64_t applied_cycle = 0;
  int64_t applied_freeze_time_unix_ms = 0;
  uint64_t bytes_pending = 0;
  uint64_t bytes_sent = 0;
  uint64_t wire_bytes_sent = 0;  // bytes_sent as it went on the wire (after compression)
  repl::Compression compression = repl::Compression::kZstd;
  // What limits this mirror's sending to the target: the lower of its --bandwidth and
  // the peer's bandwidth_limit; 0 = none.
  uint64_t bandwidth_limit_bytes_per_second = 0;
  std::string last_error;
  // While copying: progress of the current delta.
  uint64_t copy_cycle = 0;
  uint64_t copy_done_bytes = 0;
  uint64_t copy_total_bytes = 0;
  double copy_rate_bytes_per_second = 0;
};

// One token bucket per peer with a `bandwidth_limit`, shared by every connection to it
// (all mirrors, verifies, switchovers). Built once from the config.
using PeerBuckets = std::map<std::string, std::shared_ptr<repl::TokenBucket>>;

// `mirror start ... --bandwidth RATE --compress zstd|off`; unset = as before (no cap
// and zstd for a new mirror).
struct WireOptions {
  std::optional<uint64_t> bandwidth_bytes_per_second;  // 0 = no cap
  std::optional<repl::Compression> compression;
  bool empty() const { return !bandwidth_bytes_per_second && !compression; }
  void apply_to(MirrorState& state) const;
};

struct EngineContext {
  Env env;  // files, clock (intervals, backoff, freeze times), network, threads
  const NodeConfig* config = nullptr;
  std::string mirrors_dir;  // where MirrorState files live
  // Null only with `insecure = true`: then peer connections are plaintext.
  std::shared_ptr<const net::TlsContext> tls;
  NodeMetrics* metrics = nullptr;  // null = not counted; outlives the engine
  std::shared_ptr<const PeerBuckets> peer_buckets;  // null = no peer limits
  // The node's bound on concurrent transfers; null = none (each target its own thread).
  TransferSlots* transfer_slots = nullptr;
  // Runs the engine's rounds; null = the engine makes its own with one worker.
  // Outlives the engine's stop().
  EngineScheduler* scheduler = nullptr;
};

class MirrorEngine {
 public:
  // `states`: each member volume's mirror state by volume name (targets, interval and
  // what each target applied), as persisted.
  MirrorEngine(EngineContext context, std::vector<std::shared_ptr<VolumeEntry>> volumes,
               std::map<std::string, MirrorState> states);
  ~MirrorEngine();
  MirrorEngine(const MirrorEngine&) = delete;
  MirrorEngine& operator=(const MirrorEngine&) = delete;

  // Registers the engine's rounds with the scheduler; the first one freezes cycle 1.
  void start() EXCLUDES(mutex_);
  // Stops the cycle, aborts running transfers, merges what can be merged, and saves
  // state. Returns once its round in progress and every transfer thread has ended and
  // it is no longer registered with the scheduler. Idempotent; concurrent calls wait for
  // the first.
  void stop() EXCLUDES(mutex_, stop_mutex_);
  // Freezes now (as soon as the rules allow) and waits until every target applied
  // that point, or fails after timeout_ms with each lagging target's reason.
  Status sync(uint64_t timeout_ms) EXCLUDES(mutex_);
  std::vector<MirrorStatus> status() EXCLUDES(mutex_);

  // ---- `mirror verify` (node/mirror_verify.cc drives these) ----
  struct VerifyPoint {
    std::map<std::string, uint64_t> points;        // volume -> the held freeze point
    std::map<std::string, std::string> not_ready;  // target -> why it does not hold that point
  };
  // Freezes now (as `mirror sync` does), then holds the mirror: no freeze starts until
  // end_verify_hold(), so the newest point stays the newest and readable on the source
  // (merges fold only layers at or below it). Waits until each of `targets` applied
  // it, failed a transfer since the hold began, or timeout_ms passed; those that did not
  // apply it are in not_ready with the reason. On error there is no hold.
  // REQUIRES: `targets` are targets of this mirror.
  Result<VerifyPoint> begin_verify_hold(const std::vector<std::string>& targets, uint64_t timeout_ms)
      EXCLUDES(mutex_);
  void end_verify_hold(const std::vector<std::string>& targets) EXCLUDES(mutex_);
  // A connection to `target` (TLS, its identity checked) that stop() cuts;
  // forget_verify_socket() before destroying it.
  Result<std::unique_ptr<repl::PeerSocket>> connect_for_verify(const std::string& target) EXCLUDES(mutex_);
  // Switchover: asks `target` to promote its replica at request.cycle and mirror it
  // back (one connection of its own). Returns the cycle it promoted.
  Result<uint64_t> hand_over(const std::string& target, const repl::Switchover& request) const;
  void forget_verify_socket(repl::PeerSocket* socket) EXCLUDES(mutex_);
  // Whether `volume`'s newest freeze is still `cycle` and the engine runs: a verify's
  // result is only trusted if so.
  bool still_at(const std::string& volume, uint64_t cycle) const EXCLUDES(mutex_);
  // Records what a verify of `target` found at `cycle` (node/mirror_bookkeeping.h,
  // note_verified) and the bytes it sent (bytes_sent counts every byte sent to the
  // target for the volume), and saves it. Refused once the engine stops (its final
  // state is the break's to write).
  Status note_verified(const std::string& target, const std::string& volume, uint64_t cycle,
                       uint64_t differing_chunks, uint64_t bytes_sent, uint64_t wire_bytes_sent) EXCLUDES(mutex_);
  std::vector<std::string> target_names() const;
  std::chrono::milliseconds interval() const { return interval_; }
  uint32_t keep() const { return keep_; }
  // `mirror start` again with only --bandwidth / --compress: saved, and the bandwidth
  // applies at once to running transfers, the compression from the next connection.
  Status set_wire_options(const WireOptions& options) EXCLUDES(mutex_);
  // The members' mirror states as they are now; after stop(), final.
  std::map<std::string, MirrorState> states() EXCLUDES(mutex_);

 private:
  // Runtime of one target. Fields other than `name` are guarded by mutex_ (the
  // analysis cannot name the engine's mutex from a nested type); `thread` is touched
  // only by rounds (never two at once), and by stop() once no round runs any more.
  struct TargetRuntime {
    std::string name;  // immutable
    bool busy = false;
    bool queued = false;  // waiting for a transfer slot (TransferSlots)
    std::map<std::string, uint64_t> busy_points;  // volume -> cycle being sent
    Clock::TimePoint busy_since;
    Clock::TimePoint retry_at;
    uint64_t backoff_ms = 0;
    std::string last_error;
    uint32_t consecutive_failures = 0;
    uint64_t failed_transfers = 0;  // ever: a verify waits for one more, or for the point
    uint32_t verify_holds = 0;      // verifies of this target holding the mirror now
    // Per volume: (applied cycle, staged records) the target last reported.
    std::map<std::string, std::pair<uint64_t, uint64_t>> last_observed;
    std::thread thread;
    repl::PeerSocket* socket = nullptr;  // the running transfer's socket, for abort
    std::string copy_volume;
    uint64_t copy_cycle = 0;
    uint64_t copy_done_bytes = 0;
    uint64_t copy_total_bytes = 0;
    Clock::TimePoint copy_started;
  };
  // A member's state with a version that grows with every change, so a save can tell
  // whether what it would write is already on disk.
  struct VersionedState {
    MirrorState state;
    uint64_t version = 1;
  };
  // Per member volume: serialises writes of its state file.
  struct SaveSlot {
    Mutex save_mutex;
    uint64_t saved_version GUARDED_BY(save_mutex) = 0;
    // What the pending files hold, so a save writes only changed pages (mirror_state.h).
    DurablePendingPages durable_pending GUARDED_BY(save_mutex);
  };
  // What this engine believes about one target, for its SenderSession (mirror_engine.cc).
  class TargetHost;
  friend class TargetHost;

  Clock& clock() const { return *context_.env.clock; }
  bool freeze_requested_locked() const REQUIRES(mutex_) { return freeze_wanted_ > last_good_freeze_; }
  // One round on a scheduler worker; returns when the next one is due unless woken.
  Clock::TimePoint run_round() EXCLUDES(mutex_);
  // Wakes whoever waits for a change: sync and verify waiters, stop(), and the round.
  void notify_changed_locked() REQUIRES(mutex_);
  bool freeze_due_locked(Clock::TimePoint now) const REQUIRES(mutex_);
  // When the next round must look again without being woken: the next freeze,
  // a held-back freeze's lag grace, a retry; never in the past, so it never spins.
  Clock::TimePoint next_wake_locked(Clock::TimePoint now) const REQUIRES(mutex_);
  Status freeze_all() EXCLUDES(mutex_);
  void note_freeze_locked(const Status& status) REQUIRES(mutex_);
  void start_transfers_locked(Clock::TimePoint now) REQUIRES(mutex_);
  void transfer(TargetRuntime* target, std::map<std::string, uint64_t> points) EXCLUDES(mutex_);
  Result<std::unique_ptr<repl::PeerSocket>> connect_target(TargetRuntime* target) EXCLUDES(mutex_);
  // Connects to the peer `name` and authenticates it (TLS unless insecure).
  Result<std::unique_ptr<repl::PeerSocket>> connect_peer(const std::string& name) const;
  TargetRuntime* find_target(const std::string& name) const;
  // A verify may go on: each of `chosen` applied `points`, or failed a transfer since
  // the verify began (its count in `failures_before` then).
  bool verify_settled_locked(const std::vector<TargetRuntime*>& chosen,
                             const std::map<TargetRuntime*, uint64_t>& failures_before,
                             const std::map<std::string, uint64_t>& points) const REQUIRES(mutex_);
  // Why `target` does not hold `points` (for a verify that cannot go on with it).
  std::string not_ready_reason_locked(const TargetRuntime& target, const std::map<std::string, uint64_t>& points) const
      REQUIRES(mutex_);
  // The buckets (this mirror's, the peer's) and compression a new connection uses.
  void attach_wire_options(repl::PeerSocket& socket, const std::string& peer) const EXCLUDES(mutex_);
  uint64_t bandwidth_limit_of(const std::string& target) const;
  // TLS handshake, then checks the target's certificate names the peer's identity.
  Status authenticate_target(repl::PeerSocket& socket, const PeerConfig& peer) const;
  void finish_transfer_locked(TargetRuntime* target, const Status& status) REQUIRES(mutex_);
  // Logs and counts the end of a transfer of target.busy_points, and clears them.
  void note_transfer_end_locked(TargetRuntime& target, const Status& status) REQUIRES(mutex_);
  // Feeds the socket's frames to the session until it is idle again.
  Status exchange(repl::PeerSocket& socket, repl::SenderSession& session) EXCLUDES(mutex_);
  // One volume's delta to the target: the session plans and streams it; this counts
  // the bytes, shows progress and notices a refusal or a stop.
  Status transfer_volume(TargetRuntime* target, repl::PeerSocket& socket, repl::SenderSession& session,
                         VolumeEntry& entry, uint64_t point) EXCLUDES(mutex_);
  Status stream_delta(TargetRuntime* target, repl::PeerSocket& socket, repl::SenderSession& session,
                      VolumeEntry& entry, uint64_t point, const std::function<void()>& account) EXCLUDES(mutex_);
  void merge_what_is_possible() EXCLUDES(mutex_);
  // The newest layer of `entry` that may be merged now: below every point a running or
  // resumable transfer reads.
  uint64_t merge_limit_locked(const VolumeEntry& entry) const REQUIRES(mutex_);
  // Records the chunks of `layer` as pending for every target that lacks it
  // (node/mirror_bookkeeping.h). True if a state changed.
  bool add_pending_locked(const std::string& volume, uint64_t layer, const std::vector<DeltaChunk>& chunks)
      REQUIRES(mutex_);
  // Makes the volume's state file hold its state as of this call or newer. Blocks on
  // the file, not on mutex_.
  Status save(const std::string& volume) EXCLUDES(mutex_);
  const MirrorState& state_locked(const std::string& volume) const REQUIRES(mutex_);
  // For changes: bumps the version, so the next save() writes.
  MirrorState& mutable_state_locked(const std::string& volume) REQUIRES(mutex_);
  bool target_has_all_locked(const std::string& target, const std::map<std::string, uint64_t>& points) const
      REQUIRES(mutex_);
  bool all_targets_have_locked(const std::map<std::string, uint64_t>& points) const REQUIRES(mutex_);
  MirrorStatus target_status_locked(const VolumeEntry& entry, const TargetRuntime& target,
                                    const std::vector<LayerInfo>& layers) const REQUIRES(mutex_);
  // The point a target's interrupted transfer aimed at, if it should be resumed rather
  // than restarted at a newer point (0 if none). Such a point is kept from merging.
  uint64_t pinned_point_locked(const VolumeEntry& entry, const TargetRuntime& target) const REQUIRES(mutex_);
  // The point of each member a transfer to `target` sends: the latest, or the one a
  // resumable transfer is pinned to; for a group, all of one freeze.
  std::map<std::string, uint64_t> points_to_send_locked(const TargetRuntime& target) const REQUIRES(mutex_);
  // A consistency group of several volumes: the target commits their points together.
  bool commits_as_group() const;

  const EngineContext context_;
  const std::vector<std::shared_ptr<VolumeEntry>> volumes_;
  const std::chrono::milliseconds interval_;
  const uint32_t keep_;  // points each target keeps (the same for every member)
  // This mirror's --bandwidth cap; every connection of it draws from it (and from the
  // peer's bucket). Its rate changes in place (set_wire_options).
  const std::shared_ptr<repl::TokenBucket> bucket_;
  // Keys fixed at construction (one per member volume); each slot locks itself.
  std::map<std::string, std::unique_ptr<SaveSlot>> save_slots_;

  mutable Mutex mutex_;
  CondVar changed_;
  std::map<std::string, VersionedState> states_ GUARDED_BY(mutex_);  // by volume name
  bool stopping_ GUARDED_BY(mutex_) = false;
  // The container is fixed at construction; see TargetRuntime for its fields.
  std::vector<std::unique_ptr<TargetRuntime>> targets_;
  std::map<std::string, uint64_t> latest_points_ GUARDED_BY(mutex_);  // volume -> newest frozen point
  // Freeze attempts since start, counted before each cut, and the number of the last
  // one that succeeded: `mirror sync` waits for one begun after its request.
  uint64_t freezes_started_ GUARDED_BY(mutex_) = 0;
  uint64_t last_good_freeze_ GUARDED_BY(mutex_) = 0;
  // The freeze attempt a `mirror sync` waits for; requested until one that numbered
  // succeeded (an attempt begun before the request does not clear it).
  uint64_t freeze_wanted_ GUARDED_BY(mutex_) = 0;
  Clock::TimePoint next_freeze_at_ GUARDED_BY(mutex_);
  std::string freeze_error_ GUARDED_BY(mutex_);
  // While > 0 no freeze starts (`mirror verify`); freezing_ while freeze_all() runs.
  uint32_t verify_holds_ GUARDED_BY(mutex_) = 0;
  bool freezing_ GUARDED_BY(mutex_) = false;
  // Verify connections, for stop() to cut.
  std::set<repl::PeerSocket*> verify_sockets_ GUARDED_BY(mutex_);

  // Serialises stop(): it joins threads, which two callers must not do at once.
  Mutex stop_mutex_;
  bool stopped_ GUARDED_BY(stop_mutex_) = false;
  // Set by start(): the scheduler that runs the rounds and the engine's task there.
  EngineScheduler* scheduler_ GUARDED_BY(mutex_) = nullptr;
  EngineScheduler::TaskId task_id_ GUARDED_BY(mutex_) = 0;
  std::unique_ptr<EngineScheduler> own_scheduler_;  // without context_.scheduler; set by start()
};

}  // namespace amirror::node
