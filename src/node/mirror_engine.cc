// SPDX-License-Identifier: Apache-2.0
#include "node/mirror_engine.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "base/log.h"
#include "base/units.h"
#include "node/metrics.h"
#include "node/mirror_bookkeeping.h"
#include "repl/wire.h"

namespace amirror::node {
namespace {

constexpr uint64_t kFirstBackoffMs = 1000;
constexpr uint64_t kMaxBackoffMs = 10'000;
constexpr auto kMinLagGrace = std::chrono::seconds(5);
constexpr uint32_t kMaxPinnedFailures = 6;
// bytes_sent is saved at least this often during a transfer, so a crash loses little
// of the count.
constexpr uint64_t kSaveEveryBytes = 16ull << 20;

std::chrono::milliseconds unit_interval(const std::vector<std::shared_ptr<VolumeEntry>>& volumes,
                                        const std::map<std::string, MirrorState>& states) {
  AMIRROR_ASSERT(!volumes.empty());
  for (const auto& entry : volumes) AMIRROR_ASSERT(states.count(entry->name) == 1);
  return std::chrono::milliseconds(states.at(volumes.front()->name).interval_ms);
}

}  // namespace

void WireOptions::apply_to(MirrorState& state) const {
  if (bandwidth_bytes_per_second) state.bandwidth_bytes_per_second = *bandwidth_bytes_per_second;
  if (compression) state.compression = *compression;
}

MirrorEngine::MirrorEngine(EngineContext context, std::vector<std::shared_ptr<VolumeEntry>> volumes,
                           std::map<std::string, MirrorState> states)
    : context_(std::move(context)), volumes_(std::move(volumes)), interval_(unit_interval(volumes_, states)),
      keep_(states.at(volumes_.front()->name).keep),
      bucket_(std::make_shared<repl::TokenBucket>(states.at(volumes_.front()->name).bandwidth_bytes_per_second)) {
  // No other thread exists yet: no lock needed (the analysis does not check constructors).
  for (const std::string& name : states.at(volumes_.front()->name).targets) {
    auto target = std::make_unique<TargetRuntime>();
    target->name = name;
    targets_.push_back(std::move(target));
  }
  for (const auto& entry : volumes_) {
    states_[entry->name].state = std::move(states.at(entry->name));
    save_slots_[entry->name] = std::make_unique<SaveSlot>();
  }
}

MirrorEngine::~MirrorEngine() { stop(); }

void MirrorEngine::start() {
  EngineScheduler* scheduler = context_.scheduler;
  if (scheduler == nullptr) {
    own_scheduler_ = std::make_unique<EngineScheduler>(clock(), *context_.env.threads, 1);
    scheduler = own_scheduler_.get();
  }
  MutexLock lock(mutex_);
  AMIRROR_ASSERT(scheduler_ == nullptr);  // started once
  next_freeze_at_ = clock().now();  // cycle 1 right away
  for (const auto& entry : volumes_) latest_points_[entry->name] = 0;
  scheduler_ = scheduler;
  // The first round may begin on a worker at once; it waits for mutex_ until this returns.
  task_id_ = scheduler_->add([this] { return run_round(); });
}

void MirrorEngine::notify_changed_locked() {
  changed_.notify_all();
  if (scheduler_ != nullptr) scheduler_->wake(task_id_);
}

void MirrorEngine::stop() {
  MutexLock stop_lock(stop_mutex_);
  if (stopped_) return;
  EngineScheduler* scheduler = nullptr;
  EngineScheduler::TaskId task_id = 0;
  {
    MutexLock lock(mutex_);
    stopping_ = true;
    for (auto& target : targets_) {
      if (target->socket != nullptr) target->socket->shutdown();
    }
    for (repl::PeerSocket* socket : verify_sockets_) socket->shutdown();
    notify_changed_locked();
    // A verify may still record its result; the final state is the caller's to write
    // once stop() returns, so wait for it to let go (its connection is cut: it ends soon).
    while (verify_holds_ > 0) changed_.wait(lock);
    scheduler = scheduler_;
    task_id = task_id_;
  }
  changed_.notify_all();
  // Waits for the round in progress (it sees stopping_ and ends); none starts after,
  // so no transfer starts any more.
  if (scheduler != nullptr) scheduler->remove(task_id);
  if (own_scheduler_) own_scheduler_->stop();
  for (auto& target : targets_) {
    if (target->thread.joinable()) target->thread.join();
  }
  // Its queued targets leave the queue; slots granted to them pass on.
  if (context_.transfer_slots != nullptr) context_.transfer_slots->cancel(this);
  // With no transfer running, every frozen layer can be merged (targets that lack it
  // get its chunks in their pending set), so a broken mirror holds no layers back.
  merge_what_is_possible();
  stopped_ = true;
}

std::map<std::string, MirrorState> MirrorEngine::states() {
  MutexLock lock(mutex_);
  std::map<std::string, MirrorState> result;
  for (const auto& [volume, versioned] : states_) result[volume] = versioned.state;
  return result;
}

const MirrorState& MirrorEngine::state_locked(const std::string& volume) const { return states_.at(volume).state; }

MirrorState& MirrorEngine::mutable_state_locked(const std::string& volume) {
  VersionedState& versioned = states_.at(volume);
  versioned.version += 1;
  return versioned.state;
}

Status MirrorEngine::save(const std::string& volume) {
  SaveSlot& slot = *save_slots_.at(volume);
  // Snapshot and write under the slot's lock: files are written in snapshot order.
  MutexLock save_lock(slot.save_mutex);
  MirrorState snapshot;
  uint64_t version = 0;
  {
    MutexLock lock(mutex_);
    const VersionedState& current = states_.at(volume);
    if (slot.saved_version >= current.version) return Status();  // this state, or a newer one, is on disk
    snapshot = current.state;
    version = current.version;
  }
  Status status = save_mirror_state(*context_.env.fs, context_.mirrors_dir, volume, snapshot, &slot.durable_pending);
  if (!status.ok()) {
    log::error("mirror", "cannot save mirror state", {{"volume", volume}, {"error", status.to_string()}});
    if (context_.metrics != nullptr) context_.metrics->count_mirror_error(volume, "", "state_save");
    return status;
  }
  slot.saved_version = version;
  return Status();
}

bool MirrorEngine::target_has_all_locked(const std::string& target,
                                         const std::map<std::string, uint64_t>& points) const {
  for (const auto& entry : volumes_) {
    auto point = points.find(entry->name);
    if (point == points.end() || point->second == 0) continue;
    const auto& target_states = state_locked(entry->name).target_states;
    auto state = target_states.find(target);
    if (state == target_states.end() || state->second.applied_cycle < point->second) return false;
  }
  return true;
}

bool MirrorEngine::all_targets_have_locked(const std::map<std::string, uint64_t>& points) const {
  for (const auto& target : targets_) {
    if (!target_has_all_locked(target->name, points)) return false;
  }
  return true;
}

uint64_t MirrorEngine::pinned_point_locked(const VolumeEntry& entry, const TargetRuntime& target) const {
  const auto& target_states = state_locked(entry.name).target_states;
  auto state = target_states.find(target.name);
  if (state == target_states.end()) return 0;
  uint64_t inflight = state->second.inflight_cycle;
  if (inflight == 0 || inflight <= state->second.applied_cycle || target.consecutive_failures >= kMaxPinnedFailures) {
    return 0;
  }
  if (inflight < entry.volume->base_cycle() || inflight > entry.volume->cycle()) return 0;
  return inflight;
}

bool MirrorEngine::commits_as_group() const {
  return volumes_.size() > 1 && !volumes_.front()->volume->group().empty();
}

std::map<std::string, uint64_t> MirrorEngine::points_to_send_locked(const TargetRuntime& target) const {
  std::map<std::string, uint64_t> points = latest_points_;
  std::optional<int64_t> pinned_time;
  for (const auto& entry : volumes_) {
    if (uint64_t pinned = pinned_point_locked(*entry, target)) {
      points[entry->name] = pinned;
      pinned_time = entry->volume->freeze_time_unix_ms(pinned);
    }
  }
  if (!pinned_time || !commits_as_group()) return points;
  // A group goes to the target as one freeze: a member resuming an earlier point takes
  // the others to that same freeze (one freeze time for all), or, if one of them no
  // longer has it, every member goes to the latest freeze instead.
  std::map<std::string, uint64_t> same_freeze;
  for (const auto& entry : volumes_) {
    for (const PointInfo& point : entry->volume->points()) {
      if (point.cycle != 0 && point.freeze_time_unix_ms == *pinned_time) same_freeze[entry->name] = point.cycle;
    }
    if (!same_freeze.contains(entry->name)) return latest_points_;
  }
  return same_freeze;
}

bool MirrorEngine::freeze_due_locked(Clock::TimePoint now) const {
  if (verify_holds_ > 0) return false;  // a verify compares the newest point: keep it newest
  if (!freeze_requested_locked() && now < next_freeze_at_) return false;
  auto lag_grace = std::max<std::chrono::steady_clock::duration>(2 * interval_, kMinLagGrace);
  for (const auto& target : targets_) {
    // A target still copying the latest point holds the next freeze back, unless it
    // has been at it so long that it counts as lagging.
    if (target->busy && target->busy_points == latest_points_ && now - target->busy_since < lag_grace) {
      return false;
    }
  }
  return true;
}

Status MirrorEngine::freeze_all() {
  std::vector<Volume*> members;
  for (const auto& entry : volumes_) members.push_back(entry->volume.get());
  AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> cycles, Volume::freeze_group(members, clock()));
  MutexLock lock(mutex_);
  for (size_t i = 0; i < volumes_.size(); ++i) latest_points_[volumes_[i]->name] = cycles[i];
  for (const auto& entry : volumes_) {
    log::debug("mirror", "frozen", {{"volume", entry->name}, {"cycle", latest_points_[entry->name]},
                                    {"stall_us", entry->volume->last_freeze_stall_us()}});
    if (context_.metrics != nullptr) {
      context_.metrics->observe_freeze_stall(entry->name, entry->volume->last_freeze_stall_us() / 1e6);
    }
  }
  return Status();
}

void MirrorEngine::note_freeze_locked(const Status& status) {
  if (!status.ok()) {
    freeze_error_ = status.to_string();
    for (const auto& entry : volumes_) {
      log::error("mirror", "freeze failed", {{"volume", entry->name}, {"error", freeze_error_}});
      if (context_.metrics != nullptr) context_.metrics->count_mirror_error(entry->name, "", "freeze");
    }
    next_freeze_at_ = clock().now() + std::chrono::seconds(1);
  } else {
    freeze_error_.clear();
    next_freeze_at_ = clock().now() + interval_;
    for (auto& target : targets_) {
      if (!target->busy) target->retry_at = {};  // a new point: try stragglers again now
    }
  }
  notify_changed_locked();
}

void MirrorEngine::start_transfers_locked(Clock::TimePoint now) {
  for (auto& target : targets_) {
    if (target->busy || now < target->retry_at || target_has_all_locked(target->name, latest_points_)) continue;
    bool any_point = false;
    for (const auto& [volume, point] : latest_points_) any_point = any_point || point > 0;
    if (!any_point) continue;
    // Bounded node-wide: without a slot the target waits its turn; the slot's grant
    // wakes the engine's next round (stop() cancels the wait before it lets go of the
    // scheduler, so the grant never wakes a task of an engine that is gone).
    auto wake = [scheduler = scheduler_, task_id = task_id_] { scheduler->wake(task_id); };
    if (context_.transfer_slots != nullptr && !context_.transfer_slots->try_acquire({this, target->name}, wake)) {
      target->queued = true;
      continue;
    }
    target->queued = false;
    if (target->thread.joinable()) target->thread.join();  // finished earlier
    std::map<std::string, uint64_t> points = points_to_send_locked(*target);
    target->busy = true;
    target->busy_points = points;
    target->busy_since = now;
    target->thread = context_.env.threads->start([this, runtime = target.get(), points] { transfer(runtime, points); });
  }
}

Clock::TimePoint MirrorEngine::run_round() {
  MutexLock lock(mutex_);
  if (stopping_) return EngineScheduler::kNoTimer;
  // One reading of the clock per round: deciding by one time and sleeping by a
  // later one could sleep past a freeze that became due in between.
  const Clock::TimePoint now = clock().now();
  // A transfer ending, or stop(), while the lock is dropped below wakes the task while
  // this round runs: the scheduler runs another round right after this one, instead
  // of waiting for the time returned here.
  if (freeze_due_locked(now)) {
    const uint64_t attempt = ++freezes_started_;
    freezing_ = true;
    lock.unlock();
    Status status = freeze_all();
    lock.lock();
    freezing_ = false;
    if (status.ok()) last_good_freeze_ = attempt;
    note_freeze_locked(status);
  }
  start_transfers_locked(now);
  lock.unlock();
  merge_what_is_possible();
  lock.lock();
  if (stopping_) return EngineScheduler::kNoTimer;
  return next_wake_locked(now);
}

Clock::TimePoint MirrorEngine::next_wake_locked(Clock::TimePoint now) const {
  // At least once a second, so a change nobody notified about is noticed.
  Clock::TimePoint wake = now + std::chrono::seconds(1);
  // While a verify holds the mirror no freeze starts, however late (a lag grace already
  // past would wake it at once, again and again); the end of the hold notifies.
  if (verify_holds_ == 0 && next_freeze_at_ > now) wake = std::min(wake, next_freeze_at_);
  if (verify_holds_ == 0 && (next_freeze_at_ <= now || freeze_requested_locked())) {
    // A freeze is due but a target still copying the latest point holds it back: the
    // end of that transfer notifies; past the lag grace it no longer holds it back.
    auto lag_grace = std::max<std::chrono::steady_clock::duration>(2 * interval_, kMinLagGrace);
    for (const auto& target : targets_) {
      if (target->busy && target->busy_points == latest_points_) wake = std::min(wake, target->busy_since + lag_grace);
    }
  }
  for (const auto& target : targets_) {
    if (!target->busy && target->retry_at > now) wake = std::min(wake, target->retry_at);
  }
  return wake;
}

Status MirrorEngine::authenticate_target(repl::PeerSocket& socket, const PeerConfig& peer) const {
  AMIRROR_RETURN_IF_ERROR(socket.start_tls(*context_.tls, false));
  if (!socket.tls()->peer_has_identity(peer.identity)) {
    return invalid_argument("peer at " + peer.address + " presented certificate " + socket.tls()->peer_subject() +
                            ", which does not name '" + peer.identity + "' as peer '" + peer.name +
                            "' must; refusing to send to it");
  }
  return Status();
}

Result<std::unique_ptr<repl::PeerSocket>> MirrorEngine::connect_peer(const std::string& name) const {
  const PeerConfig* peer = context_.config->find_peer(name);
  if (peer == nullptr) return not_found("peer '" + name + "' is not in the node's config");
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<repl::PeerSocket> socket,
                           repl::PeerSocket::connect(*context_.env.network, peer->address, static_cast<int>(context_.config->peer_timeout_ms)));
  if (context_.tls != nullptr) AMIRROR_RETURN_IF_ERROR(authenticate_target(*socket, *peer));
  attach_wire_options(*socket, name);
  return socket;
}

void MirrorEngine::attach_wire_options(repl::PeerSocket& socket, const std::string& peer) const {
  std::vector<std::shared_ptr<repl::TokenBucket>> buckets{bucket_};
  if (context_.peer_buckets != nullptr) {
    if (auto found = context_.peer_buckets->find(peer); found != context_.peer_buckets->end()) {
      buckets.push_back(found->second);
    }
  }
  socket.set_throttle(std::make_shared<repl::SendThrottle>(clock(), std::move(buckets)));
  MutexLock lock(mutex_);
  socket.set_compression(state_locked(volumes_.front()->name).compression);
}

Status MirrorEngine::set_wire_options(const WireOptions& options) {
  {
    MutexLock lock(mutex_);
    if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
    for (const auto& entry : volumes_) options.apply_to(mutable_state_locked(entry->name));
  }
  if (options.bandwidth_bytes_per_second) bucket_->set_rate(*options.bandwidth_bytes_per_second, clock().now());
  for (const auto& entry : volumes_) AMIRROR_RETURN_IF_ERROR(save(entry->name));
  return Status();
}

Result<std::unique_ptr<repl::PeerSocket>> MirrorEngine::connect_target(TargetRuntime* target) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<repl::PeerSocket> socket, connect_peer(target->name));
  MutexLock lock(mutex_);
  if (stopping_) return Status(ErrorCode::kCancelled, "mirror stopped");
  target->socket = socket.get();  // from now on stop() can cut it
  return socket;
}

// The engine's record of one target for its SenderSession: each change goes through
// the bookkeeping rules under mutex_ and is on disk before the session acts on it.
class MirrorEngine::TargetHost : public repl::SenderHost {
 public:
  TargetHost(MirrorEngine& engine, TargetRuntime& target) : engine_(engine), target_(target) {}

  repl::TargetView view(const std::string& volume) override {
    MutexLock lock(engine_.mutex_);
    const auto& states = engine_.state_locked(volume).target_states;
    auto state = states.find(target_.name);
    return state == states.end() ? repl::TargetView{} : view_of(state->second);
  }
  // Progress since the previous attempt (more applied or more durably staged) means
  // the link works, if flakily: keep resuming this point and retry soon.
  void observed(const std::string& volume, const repl::ReplicaState& remote) override {
    MutexLock lock(engine_.mutex_);
    auto observed = std::make_pair(remote.applied_cycle, remote.staged_record_count);
    auto& previous = target_.last_observed[volume];
    if (observed > previous) {
      target_.consecutive_failures = 0;
      target_.backoff_ms = 0;
    }
    previous = observed;
  }
  Status adopt_applied(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms) override {
    return change(volume, [&](TargetState& state) { node::adopt_applied(state, cycle, freeze_time_unix_ms); });
  }
  Status adopt_common_point(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms,
                            const std::set<uint64_t>& resync_chunks) override {
    return change(volume, [&](TargetState& state) {
      log::warn("mirror", "the target changed chunks after the common point; sending the chunks changed on either side",
                {{"volume", volume}, {"target", target_.name}, {"common_cycle", cycle},
                 {"target_changed_chunks", resync_chunks.size()}});
      node::adopt_common_point(state, cycle, freeze_time_unix_ms, resync_chunks);
    });
  }
  Status reset_to_full(const std::string& volume, uint64_t remote_cycle) override {
    return change(volume, [&](TargetState& state) {
      log::warn("mirror", "sending a full copy",
                {{"volume", volume}, {"target", target_.name}, {"replica_cycle", remote_cycle},
                 {"expected_cycle", state.applied_cycle}, {"full_copy", true}});
      node::reset_to_full(state);
    });
  }
  Status set_inflight(const std::string& volume, uint64_t cycle) override {
    return change(volume, [&](TargetState& state) { state.inflight_cycle = cycle; });
  }
  Status applied(const std::string& volume, uint64_t cycle, int64_t freeze_time_unix_ms) override {
    return change(volume, [&](TargetState& state) { mark_applied(state, cycle, freeze_time_unix_ms); });
  }

 private:
  Status change(const std::string& volume, const std::function<void(TargetState&)>& apply) {
    {
      MutexLock lock(engine_.mutex_);
      apply(engine_.mutable_state_locked(volume).target_states[target_.name]);
    }
    return engine_.save(volume);
  }
  MirrorEngine& engine_;
  TargetRuntime& target_;
};

void MirrorEngine::transfer(TargetRuntime* target, std::map<std::string, uint64_t> points) {
  auto connected = connect_target(target);
  Status status = connected.status();
  if (status.ok()) {
    repl::SocketSink sink(*connected.value());
    TargetHost host(*this, *target);
    repl::SenderSession session(context_.config->name, target->name, host, sink);
    status = session.start();
    if (status.ok()) status = exchange(*connected.value(), session);
    for (const auto& entry : volumes_) {
      if (!status.ok()) break;
      auto point = points.find(entry->name);
      if (point == points.end() || point->second == 0) continue;
      status = transfer_volume(target, *connected.value(), session, *entry, point->second);
    }
    // A group's members were sent with hold: they become points on the target together.
    if (status.ok() && session.held_count() > 0) {
      status = session.commit_group(volumes_.front()->volume->group());
      if (status.ok()) status = exchange(*connected.value(), session);  // GROUP_APPLIED
    }
  }
  // Declared after `connected`, so released before the socket is destroyed.
  MutexLock lock(mutex_);
  finish_transfer_locked(target, status);
}

void MirrorEngine::finish_transfer_locked(TargetRuntime* target, const Status& status) {
  target->socket = nullptr;
  target->busy = false;
  if (context_.transfer_slots != nullptr) context_.transfer_slots->release();
  target->copy_total_bytes = target->copy_done_bytes = 0;
  note_transfer_end_locked(*target, status);
  if (status.ok()) {
    target->last_error.clear();
    target->backoff_ms = 0;
    target->consecutive_failures = 0;
    target->retry_at = {};  // it may have caught up to an older point: go on at once
  } else {
    target->consecutive_failures += 1;
    target->failed_transfers += 1;
    target->last_error = status.to_string();
    target->backoff_ms = std::min(kMaxBackoffMs, target->backoff_ms == 0 ? kFirstBackoffMs : target->backoff_ms * 2);
    uint64_t wait_ms = target->backoff_ms + context_.env.random->uniform(target->backoff_ms / 4 + 1);
    target->retry_at = clock().now() + std::chrono::milliseconds(wait_ms);
    if (!stopping_) {
      log::warn("mirror", "transfer failed; retrying",
                {{"target", target->name}, {"retry_in_ms", wait_ms}, {"error", target->last_error}});
    }
  }
  notify_changed_locked();
}

void MirrorEngine::note_transfer_end_locked(TargetRuntime& target, const Status& status) {
  const double seconds = std::chrono::duration<double>(clock().now() - target.busy_since).count();
  for (const auto& [volume, point] : target.busy_points) {
    if (status.ok()) {
      log::debug("mirror", "cycle applied",
                 {{"volume", volume}, {"target", target.name}, {"cycle", point}, {"seconds", seconds}});
      if (context_.metrics != nullptr) context_.metrics->observe_cycle(volume, target.name, seconds);
    } else if (context_.metrics != nullptr && !stopping_) {
      context_.metrics->count_mirror_error(volume, target.name, transfer_error_kind(status.code()));
    }
  }
  target.busy_points.clear();
}

Status MirrorEngine::exchange(repl::PeerSocket& socket, repl::SenderSession& session) {
  while (session.phase() != repl::SenderSession::Phase::kIdle &&
         session.phase() != repl::SenderSession::Phase::kStreaming) {
    AMIRROR_ASSIGN_OR_RETURN(repl::Frame frame, socket.receive_frame());
    AMIRROR_RETURN_IF_ERROR(session.on_frame(frame));
  }
  return Status();
}

Status MirrorEngine::stream_delta(TargetRuntime* target, repl::PeerSocket& socket, repl::SenderSession& session,
                                  VolumeEntry& entry, uint64_t point, const std::function<void()>& account) {
  {
    MutexLock lock(mutex_);
    target->copy_volume = entry.name;
    target->copy_cycle = point;
    target->copy_done_bytes = session.bytes_done();
    target->copy_total_bytes = session.bytes_total();
    target->copy_started = clock().now();
  }
  for (uint64_t sent = 0; session.phase() == repl::SenderSession::Phase::kStreaming; ++sent) {
    AMIRROR_RETURN_IF_ERROR(session.send_next());
    if ((sent & 63) != 0) continue;
    // The target talks during a delta only to refuse it (ERROR, then it closes):
    // notice that now instead of streaming into a dead connection until a timeout.
    if (socket.readable_now()) {
      AMIRROR_ASSIGN_OR_RETURN(repl::Frame frame, socket.receive_frame());
      AMIRROR_RETURN_IF_ERROR(session.on_frame(frame));
    }
    account();
    MutexLock lock(mutex_);
    target->copy_done_bytes = session.bytes_done();
    if (stopping_) return Status(ErrorCode::kCancelled, "mirror stopped");
  }
  account();
  MutexLock lock(mutex_);
  target->copy_done_bytes = target->copy_total_bytes;
  return Status();
}

Status MirrorEngine::transfer_volume(TargetRuntime* target, repl::PeerSocket& socket, repl::SenderSession& session,
                                     VolumeEntry& entry, uint64_t point) {
  uint64_t sent_before = socket.frame_bytes_sent();
  uint64_t wire_sent_before = socket.bytes_sent();
  uint64_t unsaved_bytes = 0;
  // The periodic saves run beside the stream: each is an fsync and a rename (~15 ms
  // here), and 64 per GiB on the sending thread stalled an initial sync for a third of
  // its time. At most one runs at a time (the next due waits for it), so a crash loses
  // at most two kSaveEveryBytes of the count.
  std::thread saver;
  // Every byte of every frame for this volume counts, payload and framing; as encoded
  // (bytes_sent) and as it went on the wire, compressed (wire_bytes_sent).
  auto account = [&] {
    bool save_due = false;
    {
      MutexLock lock(mutex_);
      uint64_t sent = socket.frame_bytes_sent() - sent_before;
      sent_before = socket.frame_bytes_sent();
      uint64_t wire_sent = socket.bytes_sent() - wire_sent_before;
      wire_sent_before = socket.bytes_sent();
      if (sent == 0) return;
      TargetState& counted = mutable_state_locked(entry.name).target_states[target->name];
      counted.bytes_sent += sent;
      counted.wire_bytes_sent += wire_sent;
      unsaved_bytes += sent;
      save_due = unsaved_bytes >= kSaveEveryBytes;
    }
    if (!save_due) return;
    if (saver.joinable()) saver.join();
    unsaved_bytes = 0;  // a failed save is logged; the next one is due after as many bytes
    saver = context_.env.threads->start([this, &entry] { (void)save(entry.name); });
  };
  // Whatever way this returns, the bytes that went out are counted and saved.
  struct AccountOnExit {
    std::function<void()> flush;
    ~AccountOnExit() { flush(); }
  } account_on_exit{[&] {
    account();
    if (saver.joinable()) saver.join();
    if (unsaved_bytes > 0) (void)save(entry.name);
  }};

  AMIRROR_RETURN_IF_ERROR(session.begin_volume(entry.name, *entry.volume, point, keep_, commits_as_group()));
  AMIRROR_RETURN_IF_ERROR(exchange(socket, session));  // REPLICA_STATE: reconcile and plan
  if (session.phase() == repl::SenderSession::Phase::kIdle) return Status();  // it has this point
  AMIRROR_RETURN_IF_ERROR(stream_delta(target, socket, session, entry, point, account));
  return exchange(socket, session);  // DELTA_DURABLE, APPLIED
}

uint64_t MirrorEngine::merge_limit_locked(const VolumeEntry& entry) const {
  uint64_t limit = entry.volume->cycle();
  for (const auto& target : targets_) {
    auto busy = target->busy_points.find(entry.name);
    // Keep the layer a running transfer reads from unmerged until it is done:
    // merging it meanwhile would only compete with the copy for I/O.
    if (target->busy && busy != target->busy_points.end()) limit = std::min(limit, busy->second - 1);
    if (uint64_t pinned = pinned_point_locked(entry, *target)) limit = std::min(limit, pinned);
  }
  // A promoted volume keeps the point it was promoted at while a target is new to it:
  // that target may be the old primary, and failback sends it the changes since that
  // point (sessions_test, test-failover-failback).
  VolumeLineage lineage = entry.volume->lineage();
  if (!lineage.origin_uuid.empty()) {
    const auto& states = state_locked(entry.name).target_states;
    for (const auto& target : targets_) {
      auto state = states.find(target->name);
      if (state == states.end() || (state->second.applied_cycle == 0 && state->second.inflight_cycle == 0)) {
        limit = std::min(limit, lineage.origin_point);
      }
    }
  }
  return limit;
}

bool MirrorEngine::add_pending_locked(const std::string& volume, uint64_t layer,
                                      const std::vector<DeltaChunk>& chunks) {
  const auto& targets = state_locked(volume).target_states;
  bool any = std::any_of(targets.begin(), targets.end(), [&](const auto& item) { return lacks_layer(item.second, layer); });
  // mutable_state_locked bumps the version (a save writes): only when something changes.
  return any && note_merged_layer(mutable_state_locked(volume), layer, chunks);
}

void MirrorEngine::merge_what_is_possible() {
  for (const auto& entry : volumes_) {
    Volume& volume = *entry->volume;
    while (true) {
      // Points need not be consecutive (a promoted replica kept the source's numbers).
      std::vector<PointInfo> points = volume.points();
      if (points.size() < 2) break;
      uint64_t layer_to_merge = points[1].cycle;
      {
        MutexLock lock(mutex_);
        if (layer_to_merge > merge_limit_locked(*entry)) break;
      }
      auto delta = volume.changed_chunks(points[0].cycle, layer_to_merge);
      if (!delta.ok()) break;
      bool pending_added = false;
      {
        MutexLock lock(mutex_);
        pending_added = add_pending_locked(entry->name, layer_to_merge, delta.value());
      }
      // The pending chunks must be on disk before the layer that records them is gone.
      if (pending_added && !save(entry->name).ok()) break;
      Status status = volume.merge_oldest();
      if (!status.ok()) {
        log::error("mirror", "merge failed", {{"volume", entry->name}, {"layer", layer_to_merge},
                                               {"error", status.to_string()}});
        if (context_.metrics != nullptr) context_.metrics->count_mirror_error(entry->name, "", "merge");
        break;
      }
    }
  }
}

Status MirrorEngine::sync(uint64_t timeout_ms) {
  auto deadline = clock().now() + std::chrono::milliseconds(timeout_ms);
  MutexLock lock(mutex_);
  // A freeze that started before this request may have cut before writes the caller
  // finished before calling: only one that starts after it counts.
  uint64_t wanted_freeze = freezes_started_ + 1;
  freeze_wanted_ = std::max(freeze_wanted_, wanted_freeze);
  notify_changed_locked();
  while (!stopping_ && last_good_freeze_ < wanted_freeze && clock().now() < deadline) clock().wait_until(changed_, lock, deadline);
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  if (last_good_freeze_ < wanted_freeze) {
    return Status(ErrorCode::kTimeout, "timed out before the freeze could happen" +
                                           (freeze_error_.empty() ? std::string() : ": " + freeze_error_));
  }
  std::map<std::string, uint64_t> points = latest_points_;
  while (!stopping_ && !all_targets_have_locked(points) && clock().now() < deadline) clock().wait_until(changed_, lock, deadline);
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  if (all_targets_have_locked(points)) return Status();
  std::string reasons;
  for (const auto& target : targets_) {
    if (target_has_all_locked(target->name, points)) continue;
    reasons += "; " + target->name + ": " +
               (target->last_error.empty() ? std::string(target->busy ? "still copying" : "waiting to copy")
                                           : target->last_error);
  }
  return Status(ErrorCode::kTimeout, "not every target applied the new cycle in time" + reasons);
}

MirrorStatus MirrorEngine::target_status_locked(const VolumeEntry& entry, const TargetRuntime& target,
                                                const std::vector<LayerInfo>& layers) const {
  static const TargetState kNoReplica;
  MirrorStatus status;
  status.volume = entry.name;
  status.target = target.name;
  const auto& target_states = state_locked(entry.name).target_states;
  auto found = target_states.find(target.name);
  const TargetState& state = found == target_states.end() ? kNoReplica : found->second;
  status.applied_cycle = state.applied_cycle;
  status.applied_freeze_time_unix_ms = state.applied_freeze_time_unix_ms;
  status.bytes_sent = state.bytes_sent;
  status.wire_bytes_sent = state.wire_bytes_sent;
  status.compression = state_locked(entry.name).compression;
  status.bandwidth_limit_bytes_per_second = bandwidth_limit_of(target.name);
  status.last_error = target.last_error;
  auto latest = latest_points_.find(entry.name);
  uint64_t latest_point = latest == latest_points_.end() ? 0 : latest->second;
  bool copying_this = target.busy && target.copy_volume == entry.name && target.copy_cycle > state.applied_cycle;
  if (copying_this) {
    status.state = state.applied_cycle == 0 ? "initial-sync" : "copying";
    status.copy_cycle = target.copy_cycle;
    status.copy_done_bytes = target.copy_done_bytes;
    status.copy_total_bytes = target.copy_total_bytes;
    double seconds = std::chrono::duration<double>(clock().now() - target.copy_started).count();
    if (seconds > 0) status.copy_rate_bytes_per_second = static_cast<double>(target.copy_done_bytes) / seconds;
    status.bytes_pending = status.copy_total_bytes - std::min(status.copy_total_bytes, status.copy_done_bytes);
    return status;
  }
  if (target.queued && !target.busy) {
    status.state = "queued";  // waits for one of the node's transfer slots
  } else if (!target.last_error.empty()) {
    status.state = "error";
  } else if (target.verify_holds > 0) {
    status.state = "verifying";  // held at its point: not keeping up with writes meanwhile
  } else if (state.verify_differing_chunks > 0) {
    status.state = "differs";
    status.last_error = verify_differs_message(entry.name, target.name, state);
  } else if (state.applied_cycle >= latest_point) {
    status.state = "idle";
  } else {
    // Busy but not streaming yet (connecting, reconciling): named as when it streams.
    status.state = !target.busy ? "lagging" : state.applied_cycle == 0 ? "initial-sync" : "copying";
  }
  // A damaged pending page reads as all ones, also past the end: count only real chunks.
  uint64_t chunks = std::min(state.pending_chunks.count(), entry.volume->geometry().chunk_count());
  // Layers ship only their dirty sectors (pending chunks ship whole).
  uint64_t layer_bytes = 0;
  for (const LayerInfo& layer : layers) {
    if (layer.id > state.applied_cycle) layer_bytes += layer.dirty_bytes;
  }
  status.bytes_pending =
      state.applied_cycle == 0 ? entry.volume->size_bytes() : chunks * entry.volume->chunk_size_bytes() + layer_bytes;
  return status;
}

uint64_t MirrorEngine::bandwidth_limit_of(const std::string& target) const {
  uint64_t limit = bucket_->rate();
  if (context_.peer_buckets != nullptr) {
    if (auto found = context_.peer_buckets->find(target); found != context_.peer_buckets->end()) {
      uint64_t peer = found->second->rate();
      limit = limit == 0 ? peer : peer == 0 ? limit : std::min(limit, peer);
    }
  }
  return limit;
}

std::vector<MirrorStatus> MirrorEngine::status() {
  MutexLock lock(mutex_);
  std::vector<MirrorStatus> result;
  for (const auto& entry : volumes_) {
    std::vector<LayerInfo> layers = entry->volume->layers();
    for (const auto& target : targets_) result.push_back(target_status_locked(*entry, *target, layers));
  }
  return result;
}

}  // namespace amirror::node

namespace amirror::node {

// ---- mirror verify ---------------------------------------------------------------

MirrorEngine::TargetRuntime* MirrorEngine::find_target(const std::string& name) const {
  for (const auto& target : targets_) {
    if (target->name == name) return target.get();
  }
  return nullptr;
}

std::vector<std::string> MirrorEngine::target_names() const {
  std::vector<std::string> names;
  for (const auto& target : targets_) names.push_back(target->name);
  return names;
}

std::string MirrorEngine::not_ready_reason_locked(const TargetRuntime& target,
                                                  const std::map<std::string, uint64_t>& points) const {
  if (!target.last_error.empty()) return target.last_error;
  std::string cycles;
  for (const auto& [volume, cycle] : points) cycles += (cycles.empty() ? "" : ", ") + volume + " " + std::to_string(cycle);
  return std::string(target.busy ? "still copying" : "has not copied") + " the point to verify (" + cycles +
         ") when the wait timed out";
}

Result<MirrorEngine::VerifyPoint> MirrorEngine::begin_verify_hold(const std::vector<std::string>& targets,
                                                                   uint64_t timeout_ms) {
  std::vector<TargetRuntime*> chosen;
  for (const std::string& name : targets) {
    chosen.push_back(find_target(name));
    AMIRROR_ASSERT(chosen.back() != nullptr);
  }
  const auto deadline = clock().now() + std::chrono::milliseconds(timeout_ms);
  MutexLock lock(mutex_);
  // A target counts as failed for this verify once a transfer to it fails from now on.
  // (The freeze below makes one that waits out a backoff try again at once.)
  std::map<TargetRuntime*, uint64_t> failures_before;
  for (TargetRuntime* target : chosen) failures_before[target] = target->failed_transfers;
  // A fresh point, as `mirror sync` makes: the verify covers every write finished
  // before it was asked for.
  const uint64_t wanted_freeze = freezes_started_ + 1;
  freeze_wanted_ = std::max(freeze_wanted_, wanted_freeze);
  notify_changed_locked();
  while (!stopping_ && last_good_freeze_ < wanted_freeze && clock().now() < deadline) {
    clock().wait_until(changed_, lock, deadline);
  }
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  if (last_good_freeze_ < wanted_freeze) {
    return Status(ErrorCode::kTimeout, "timed out before the freeze to verify could happen" +
                                           (freeze_error_.empty() ? std::string() : ": " + freeze_error_));
  }
  // From here no freeze starts; one already under way ends first (bounded by its sync).
  verify_holds_ += 1;
  for (TargetRuntime* target : chosen) target->verify_holds += 1;
  while (freezing_) changed_.wait(lock);
  VerifyPoint result;
  result.points = latest_points_;
  while (!stopping_ && !verify_settled_locked(chosen, failures_before, result.points) && clock().now() < deadline) {
    clock().wait_until(changed_, lock, deadline);
  }
  if (stopping_) {
    verify_holds_ -= 1;
    for (TargetRuntime* target : chosen) target->verify_holds -= 1;
    notify_changed_locked();
    return Status(ErrorCode::kCancelled, "the mirror was stopped");
  }
  for (TargetRuntime* target : chosen) {
    if (!target_has_all_locked(target->name, result.points)) {
      result.not_ready[target->name] = not_ready_reason_locked(*target, result.points);
    }
  }
  return result;
}

bool MirrorEngine::verify_settled_locked(const std::vector<TargetRuntime*>& chosen,
                                         const std::map<TargetRuntime*, uint64_t>& failures_before,
                                         const std::map<std::string, uint64_t>& points) const {
  for (TargetRuntime* target : chosen) {
    bool failed_since = !target->busy && target->failed_transfers > failures_before.at(target);
    if (!target_has_all_locked(target->name, points) && !failed_since) return false;
  }
  return true;
}

void MirrorEngine::end_verify_hold(const std::vector<std::string>& targets) {
  MutexLock lock(mutex_);
  AMIRROR_ASSERT(verify_holds_ > 0);
  verify_holds_ -= 1;
  for (const std::string& name : targets) {
    TargetRuntime* target = find_target(name);
    AMIRROR_ASSERT(target != nullptr && target->verify_holds > 0);
    target->verify_holds -= 1;
  }
  notify_changed_locked();  // the round (a freeze may be due) and stop()
}

Result<uint64_t> MirrorEngine::hand_over(const std::string& target, const repl::Switchover& request) const {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<repl::PeerSocket> socket, connect_peer(target));
  AMIRROR_RETURN_IF_ERROR(
      socket->send_frame(repl::FrameType::kHello, repl::encode(repl::Hello{repl::kHelloVersion, context_.config->name})));
  AMIRROR_ASSIGN_OR_RETURN(repl::Frame ack, socket->receive_frame());
  if (ack.type == repl::FrameType::kError) return Status(ErrorCode::kIo, target + " refused: " + repl::decode_error(ack.payload));
  AMIRROR_RETURN_IF_ERROR(repl::check_hello_ack(ack, target));
  AMIRROR_RETURN_IF_ERROR(socket->send_frame(repl::FrameType::kSwitchover, repl::encode(request)));
  for (;;) {
    AMIRROR_ASSIGN_OR_RETURN(repl::Frame answer, socket->receive_frame());
    if (answer.type == repl::FrameType::kKeepAlive) continue;
    if (answer.type == repl::FrameType::kError) {
      return Status(ErrorCode::kIo, target + " refused: " + repl::decode_error(answer.payload));
    }
    if (answer.type != repl::FrameType::kSwitchoverDone) {
      return corruption("expected SWITCHOVER_DONE from " + target + ", got " + repl::frame_type_name(answer.type));
    }
    AMIRROR_ASSIGN_OR_RETURN(repl::Applied done, repl::decode_applied(answer.payload));
    return done.applied_cycle;
  }
}

Result<std::unique_ptr<repl::PeerSocket>> MirrorEngine::connect_for_verify(const std::string& target) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<repl::PeerSocket> socket, connect_peer(target));
  MutexLock lock(mutex_);
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  verify_sockets_.insert(socket.get());
  return socket;
}

void MirrorEngine::forget_verify_socket(repl::PeerSocket* socket) {
  MutexLock lock(mutex_);
  verify_sockets_.erase(socket);
}

bool MirrorEngine::still_at(const std::string& volume, uint64_t cycle) const {
  MutexLock lock(mutex_);
  auto latest = latest_points_.find(volume);
  if (stopping_ || latest == latest_points_.end() || latest->second != cycle) return false;
  for (const auto& entry : volumes_) {
    if (entry->name == volume) return entry->volume->cycle() == cycle;
  }
  return false;
}

Status MirrorEngine::note_verified(const std::string& target, const std::string& volume, uint64_t cycle,
                                   uint64_t differing_chunks, uint64_t bytes_sent, uint64_t wire_bytes_sent) {
  {
    MutexLock lock(mutex_);
    if (stopping_) {
      return Status(ErrorCode::kCancelled, "the mirror was stopped while verifying; the result is not recorded");
    }
    TargetState& state = mutable_state_locked(volume).target_states[target];
    node::note_verified(state, cycle, differing_chunks);
    state.bytes_sent += bytes_sent;
    state.wire_bytes_sent += wire_bytes_sent;
  }
  return save(volume);
}

}  // namespace amirror::node
