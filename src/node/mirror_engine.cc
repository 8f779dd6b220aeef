// SPDX-License-Identifier: Apache-2.0
#include "node/mirror_engine.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "base/units.h"
#include "repl/wire.h"

namespace amirror::node {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kFirstBackoffMs = 1000;
constexpr uint64_t kMaxBackoffMs = 10'000;
constexpr auto kMinLagGrace = std::chrono::seconds(5);
constexpr uint32_t kMaxPinnedFailures = 6;
// bytes_sent is saved at least this often during a transfer, so a crash loses little
// of the count.
constexpr uint64_t kSaveEveryBytes = 16ull << 20;

bool all_zero(std::span<const uint8_t> data) {
  // Compare in words; chunks are at least 4 KiB.
  static const uint8_t kZeros[4096] = {};
  for (size_t offset = 0; offset < data.size(); offset += sizeof kZeros) {
    size_t length = std::min(sizeof kZeros, data.size() - offset);
    if (std::memcmp(data.data() + offset, kZeros, length) != 0) return false;
  }
  return true;
}

std::string now_text() {
  return fmt::format("{:.3f}", std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
}

}  // namespace

MirrorEngine::MirrorEngine(EngineContext context, std::vector<std::shared_ptr<VolumeEntry>> volumes)
    : context_(std::move(context)), volumes_(std::move(volumes)) {
  AMIRROR_ASSERT(!volumes_.empty());
  const MirrorState& first = volumes_.front()->state;
  interval_ = std::chrono::milliseconds(first.interval_ms);
  for (const std::string& name : first.targets) {
    auto target = std::make_unique<TargetRuntime>();
    target->name = name;
    targets_.push_back(std::move(target));
  }
}

MirrorEngine::~MirrorEngine() { stop(); }

void MirrorEngine::start() {
  std::lock_guard lock(mutex_);
  next_freeze_at_ = Clock::now();  // cycle 1 right away
  for (const auto& entry : volumes_) latest_points_[entry->name] = 0;
  thread_ = std::thread([this] { run(); });
}

void MirrorEngine::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    for (auto& target : targets_) {
      if (target->socket != nullptr) target->socket->shutdown();
    }
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& target : targets_) {
    if (target->thread.joinable()) target->thread.join();
  }
  // With no transfer running, every frozen layer can be merged (targets that lack it
  // get its chunks in their pending set), so a broken mirror holds no layers back.
  merge_what_is_possible();
}

bool MirrorEngine::target_has_all_locked(const std::string& target,
                                         const std::map<std::string, uint64_t>& points) const {
  for (const auto& entry : volumes_) {
    auto point = points.find(entry->name);
    if (point == points.end() || point->second == 0) continue;
    auto state = entry->state.target_states.find(target);
    if (state == entry->state.target_states.end() || state->second.applied_cycle < point->second) return false;
  }
  return true;
}

uint64_t MirrorEngine::pinned_point_locked(const VolumeEntry& entry, const TargetRuntime& target) const {
  auto state = entry.state.target_states.find(target.name);
  if (state == entry.state.target_states.end()) return 0;
  uint64_t inflight = state->second.inflight_cycle;
  if (inflight == 0 || inflight <= state->second.applied_cycle || target.consecutive_failures >= kMaxPinnedFailures) {
    return 0;
  }
  if (inflight < entry.volume->base_cycle() || inflight > entry.volume->cycle()) return 0;
  return inflight;
}

bool MirrorEngine::freeze_due_locked(Clock::time_point now) const {
  if (!freeze_requested_ && now < next_freeze_at_) return false;
  auto lag_grace = std::max<Clock::duration>(2 * interval_, kMinLagGrace);
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
  AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> cycles, Volume::freeze_group(members));
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < volumes_.size(); ++i) latest_points_[volumes_[i]->name] = cycles[i];
  freeze_count_ += 1;
  return Status();
}

void MirrorEngine::start_transfers_locked(Clock::time_point now) {
  for (auto& target : targets_) {
    if (target->busy || now < target->retry_at || target_has_all_locked(target->name, latest_points_)) continue;
    bool any_point = false;
    for (const auto& [volume, point] : latest_points_) any_point = any_point || point > 0;
    if (!any_point) continue;
    if (target->thread.joinable()) target->thread.join();  // finished earlier
    std::map<std::string, uint64_t> points = latest_points_;
    for (const auto& entry : volumes_) {
      if (uint64_t pinned = pinned_point_locked(*entry, *target)) points[entry->name] = pinned;
    }
    target->busy = true;
    target->busy_points = points;
    target->busy_since = now;
    target->thread = std::thread([this, runtime = target.get(), points] { transfer(runtime, points); });
  }
}

void MirrorEngine::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    Clock::time_point now = Clock::now();
    if (freeze_due_locked(now)) {
      lock.unlock();
      Status status = freeze_all();
      lock.lock();
      if (!status.ok()) {
        freeze_error_ = status.to_string();
        fmt::print(stderr, "{} mirror: freeze failed: {}\n", now_text(), freeze_error_);
        next_freeze_at_ = Clock::now() + std::chrono::seconds(1);
      } else {
        freeze_error_.clear();
        freeze_requested_ = false;
        next_freeze_at_ = Clock::now() + interval_;
        for (auto& target : targets_) {
          if (!target->busy) target->retry_at = {};  // a new point: try stragglers again now
        }
      }
      changed_.notify_all();
    }
    start_transfers_locked(Clock::now());
    lock.unlock();
    merge_what_is_possible();
    lock.lock();
    Clock::time_point wake = next_freeze_at_;
    for (const auto& target : targets_) {
      if (!target->busy && target->retry_at > Clock::now()) wake = std::min(wake, target->retry_at);
    }
    wake = std::min(wake, Clock::now() + std::chrono::seconds(1));
    changed_.wait_until(lock, wake);
  }
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

void MirrorEngine::transfer(TargetRuntime* target, std::map<std::string, uint64_t> points) {
  Status status;
  const PeerConfig* peer = context_.config->find_peer(target->name);
  std::unique_ptr<repl::PeerSocket> socket;
  if (peer == nullptr) {
    status = not_found("peer '" + target->name + "' is not in the node's config");
  } else {
    auto connected = repl::PeerSocket::connect(peer->address, static_cast<int>(context_.config->peer_timeout_ms));
    if (!connected.ok()) {
      status = connected.status();
    } else {
      socket = std::move(connected).value();
      if (context_.tls != nullptr) status = authenticate_target(*socket, *peer);
    }
  }
  if (status.ok()) {
    std::lock_guard lock(mutex_);
    if (stopping_) status = Status(ErrorCode::kCancelled, "mirror stopped");
    target->socket = socket.get();
  }
  if (status.ok()) {
    repl::Hello hello{repl::kProtocolVersion, context_.config->name};
    status = socket->send_frame(repl::FrameType::kHello, repl::encode(hello));
    if (status.ok()) {
      auto frame = socket->receive_frame();
      if (!frame.ok()) {
        status = frame.status();
      } else if (frame->type == repl::FrameType::kError) {
        status = Status(ErrorCode::kIo, "target refused: " + repl::decode_error(frame->payload));
      } else if (frame->type != repl::FrameType::kHelloAck) {
        status = corruption(std::string("expected HELLO_ACK, got ") + repl::frame_type_name(frame->type));
      } else {
        auto ack = repl::decode_hello(frame->payload);
        if (!ack.ok()) {
          status = ack.status();
        } else if (ack->node_name != target->name) {
          status = invalid_argument("peer at " + peer->address + " says it is '" + ack->node_name + "', not '" +
                                    target->name + "'; check the peer's address in the config");
        }
      }
    }
  }
  for (const auto& entry : volumes_) {
    if (!status.ok()) break;
    auto point = points.find(entry->name);
    if (point == points.end() || point->second == 0) continue;
    status = transfer_volume(target, *socket, *entry, point->second);
  }
  std::lock_guard lock(mutex_);
  target->socket = nullptr;
  target->busy = false;
  target->busy_points.clear();
  target->copy_total_bytes = target->copy_done_bytes = 0;
  if (status.ok()) {
    target->last_error.clear();
    target->backoff_ms = 0;
    target->consecutive_failures = 0;
    target->retry_at = {};  // it may have caught up to an older point: go on at once
  } else {
    target->consecutive_failures += 1;
    target->last_error = status.to_string();
    target->backoff_ms = std::min(kMaxBackoffMs, target->backoff_ms == 0 ? kFirstBackoffMs : target->backoff_ms * 2);
    target->retry_at = Clock::now() + std::chrono::milliseconds(target->backoff_ms);
    if (!stopping_) {
      fmt::print(stderr, "{} mirror to {}: {} (retry in {} s)\n", now_text(), target->name, target->last_error,
                 target->backoff_ms / 1000.0);
    }
  }
  changed_.notify_all();
}

Status MirrorEngine::save_locked(VolumeEntry& entry) {
  Status status = save_mirror_state(*context_.fs, context_.mirrors_dir, entry.name, entry.state);
  if (!status.ok()) fmt::print(stderr, "{} mirror: cannot save state of {}: {}\n", now_text(), entry.name, status.to_string());
  return status;
}

Status MirrorEngine::transfer_volume(TargetRuntime* target, repl::PeerSocket& socket, VolumeEntry& entry,
                                     uint64_t point) {
  Volume& volume = *entry.volume;
  uint64_t sent_before = socket.bytes_sent();
  uint64_t unsaved_bytes = 0;
  auto account = [&] {
    // Every byte on the wire for this volume counts, payload and framing.
    std::lock_guard lock(mutex_);
    uint64_t sent = socket.bytes_sent() - sent_before;
    entry.state.target_states[target->name].bytes_sent += sent;
    sent_before = socket.bytes_sent();
    unsaved_bytes += sent;
    if (unsaved_bytes >= kSaveEveryBytes) {
      (void)save_locked(entry);
      unsaved_bytes = 0;
    }
  };
  // Whatever way this returns, the bytes that went out are counted and saved.
  struct AccountOnExit {
    std::function<void()> flush;
    ~AccountOnExit() { flush(); }
  } account_on_exit{[&] {
    account();
    std::lock_guard lock(mutex_);
    if (unsaved_bytes > 0) (void)save_locked(entry);
  }};
  auto expect = [&](repl::FrameType wanted) -> Result<repl::Frame> {
    while (true) {
      AMIRROR_ASSIGN_OR_RETURN(repl::Frame frame, socket.receive_frame());
      if (frame.type == repl::FrameType::kKeepAlive) continue;
      if (frame.type == repl::FrameType::kError) {
        return Status(ErrorCode::kIo, target->name + " refused: " + repl::decode_error(frame.payload));
      }
      if (frame.type != wanted) {
        return corruption(std::string("expected ") + repl::frame_type_name(wanted) + " from " + target->name +
                          ", got " + repl::frame_type_name(frame.type));
      }
      return frame;
    }
  };

  repl::OpenReplica open{entry.name, volume.size_bytes(), volume.chunk_size_bytes()};
  AMIRROR_RETURN_IF_ERROR(socket.send_frame(repl::FrameType::kOpenReplica, repl::encode(open)));
  AMIRROR_ASSIGN_OR_RETURN(repl::Frame state_frame, expect(repl::FrameType::kReplicaState));
  AMIRROR_ASSIGN_OR_RETURN(repl::ReplicaState remote, repl::decode_replica_state(state_frame.payload));
  {
    // Progress since the previous attempt (more applied or more durably staged) means
    // the link works, if flakily: keep resuming this point and retry soon.
    std::lock_guard lock(mutex_);
    auto observed = std::make_pair(remote.applied_cycle, remote.staged_record_count);
    auto& previous = target->last_observed[entry.name];
    if (observed > previous) {
      target->consecutive_failures = 0;
      target->backoff_ms = 0;
    }
    previous = observed;
  }

  // Reconcile what we believe the target applied with what it says.
  TargetState local;
  {
    std::lock_guard lock(mutex_);
    TargetState& stored = entry.state.target_states[target->name];
    if (remote.applied_cycle != stored.applied_cycle) {
      if (stored.inflight_cycle != 0 && remote.applied_cycle == stored.inflight_cycle) {
        // Our last transfer was applied but its acknowledgement was lost.
        stored.applied_cycle = remote.applied_cycle;
        stored.applied_freeze_time_unix_ms = remote.applied_freeze_time_unix_ms;
        stored.inflight_cycle = 0;
      } else {
        fmt::print(stderr, "{} mirror {} -> {}: replica is at cycle {}, expected {}; sending a full copy\n",
                   now_text(), entry.name, target->name, remote.applied_cycle, stored.applied_cycle);
        stored.applied_cycle = 0;
        stored.pending_chunks.clear();
      }
      (void)save_locked(entry);
    }
    local = stored;
  }
  if (local.applied_cycle >= point) return Status();

  // The chunks the target lacks, coalesced: a chunk changed in many cycles appears once.
  bool full = local.applied_cycle == 0;
  std::vector<DeltaChunk> chunks;
  if (full) {
    AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> allocated, volume.allocated_chunks(point));
    for (uint64_t chunk_index : allocated) chunks.push_back({chunk_index, ChunkState::kData});
  } else {
    std::map<uint64_t, ChunkState> merged;
    for (uint64_t chunk_index : local.pending_chunks) merged[chunk_index] = ChunkState::kData;
    uint64_t from = std::max(local.applied_cycle, volume.base_cycle());
    if (from < point) {
      AMIRROR_ASSIGN_OR_RETURN(std::vector<DeltaChunk> changed, volume.changed_chunks(from, point));
      for (const DeltaChunk& chunk : changed) merged[chunk.chunk_index] = chunk.state;
    }
    for (const auto& [chunk_index, state] : merged) chunks.push_back({chunk_index, state});
  }

  repl::BeginDelta begin;
  begin.base_cycle = full ? 0 : local.applied_cycle;
  begin.target_cycle = point;
  begin.freeze_time_unix_ms = volume.freeze_time_unix_ms(point);
  begin.record_count = chunks.size();
  begin.full = full;
  size_t first_chunk = 0;
  if (remote.staged_record_count > 0 && remote.staged_target_cycle == point && remote.staged_base_cycle == begin.base_cycle) {
    // Resume where the target's durable staging ends, not from the start.
    while (first_chunk < chunks.size() && chunks[first_chunk].chunk_index <= remote.staged_last_chunk_index) ++first_chunk;
    begin.first_record = remote.staged_record_count;
  }
  {
    std::lock_guard lock(mutex_);
    entry.state.target_states[target->name].inflight_cycle = point;
    AMIRROR_RETURN_IF_ERROR(save_locked(entry));
    target->copy_volume = entry.name;
    target->copy_cycle = point;
    target->copy_done_bytes = first_chunk * volume.chunk_size_bytes();
    target->copy_total_bytes = chunks.size() * volume.chunk_size_bytes();
    target->copy_started = Clock::now();
  }
  AMIRROR_RETURN_IF_ERROR(socket.send_frame(repl::FrameType::kBeginDelta, repl::encode(begin)));

  uint64_t record_index = begin.first_record;
  std::vector<uint8_t> buffer(volume.chunk_size_bytes());
  const ChunkGeometry& geometry = volume.geometry();
  Status status;
  for (size_t i = first_chunk; i < chunks.size() && status.ok(); ++i) {
    const DeltaChunk& chunk = chunks[i];
    uint64_t length = geometry.chunk_length_bytes(chunk.chunk_index);
    std::span<uint8_t> content(buffer.data(), length);
    repl::RecordKind kind = repl::RecordKind::kZero;
    if (chunk.state == ChunkState::kData) {
      status = volume.read_frozen(point, geometry.chunk_offset_bytes(chunk.chunk_index), content);
      if (!status.ok()) break;
      if (!all_zero(content)) kind = repl::RecordKind::kData;
    }
    // An initial sync starts from an empty (all-zero) replica: zero chunks need no record.
    if (full && kind == repl::RecordKind::kZero) continue;
    std::vector<uint8_t> frame = repl::encode_chunk_frame(
        record_index, chunk.chunk_index, kind,
        kind == repl::RecordKind::kData ? std::span<const uint8_t>(content) : std::span<const uint8_t>());
    status = socket.send_encoded(frame);
    record_index += 1;
    if ((i & 63) == 0) {
      // The target talks during a delta only to refuse it (ERROR, then it closes):
      // notice that now instead of streaming into a dead connection until a timeout.
      if (status.ok() && socket.readable_now()) {
        auto refusal = expect(repl::FrameType::kDeltaDurable);
        status = refusal.ok() ? corruption("DELTA_DURABLE before END_DELTA from " + target->name) : refusal.status();
      }
      account();
      std::lock_guard lock(mutex_);
      target->copy_done_bytes = (i + 1) * volume.chunk_size_bytes();
      if (stopping_) status = Status(ErrorCode::kCancelled, "mirror stopped");
    }
  }
  account();
  AMIRROR_RETURN_IF_ERROR(status);
  AMIRROR_RETURN_IF_ERROR(socket.send_frame(repl::FrameType::kEndDelta, repl::encode(repl::EndDelta{record_index})));
  account();
  {
    std::lock_guard lock(mutex_);
    target->copy_done_bytes = target->copy_total_bytes;
  }
  AMIRROR_RETURN_IF_ERROR(expect(repl::FrameType::kDeltaDurable).status());
  AMIRROR_ASSIGN_OR_RETURN(repl::Frame applied_frame, expect(repl::FrameType::kApplied));
  AMIRROR_ASSIGN_OR_RETURN(repl::Applied applied, repl::decode_applied(applied_frame.payload));
  if (applied.applied_cycle != point) {
    return corruption(target->name + " acknowledged cycle " + std::to_string(applied.applied_cycle) + ", expected " +
                      std::to_string(point));
  }
  std::lock_guard lock(mutex_);
  TargetState& stored = entry.state.target_states[target->name];
  stored.applied_cycle = point;
  stored.applied_freeze_time_unix_ms = begin.freeze_time_unix_ms;
  stored.inflight_cycle = 0;
  stored.pending_chunks.clear();  // every pending chunk was in this delta
  return save_locked(entry);
}

void MirrorEngine::merge_what_is_possible() {
  for (const auto& entry : volumes_) {
    Volume& volume = *entry->volume;
    while (true) {
      uint64_t layer_to_merge = volume.base_cycle() + 1;
      {
        std::lock_guard lock(mutex_);
        // Transfers read their point; the base must not pass it.
        uint64_t limit = volume.cycle();
        for (const auto& target : targets_) {
          auto busy = target->busy_points.find(entry->name);
          // Keep the layer a running transfer reads from unmerged until it is done:
          // merging it meanwhile would only compete with the copy for I/O.
          if (target->busy && busy != target->busy_points.end()) limit = std::min(limit, busy->second - 1);
          if (uint64_t pinned = pinned_point_locked(*entry, *target)) limit = std::min(limit, pinned);
        }
        if (layer_to_merge > limit) break;
      }
      auto delta = volume.changed_chunks(layer_to_merge - 1, layer_to_merge);
      if (!delta.ok()) break;
      {
        std::lock_guard lock(mutex_);
        bool changed = false;
        // Every target with a replica, not only those in the target list now: a target
        // dropped from the mirror keeps its applied cycle, and when it is named again
        // it must get the chunks of each layer merged while it was away.
        for (auto& [target, state] : entry->state.target_states) {
          if (state.applied_cycle >= layer_to_merge || state.applied_cycle == 0) continue;  // has it / gets a full copy
          for (const DeltaChunk& chunk : delta.value()) state.pending_chunks.insert(chunk.chunk_index);
          changed = true;
        }
        if (changed && !save_locked(*entry).ok()) break;
      }
      Status status = volume.merge_oldest();
      if (!status.ok()) {
        fmt::print(stderr, "{} mirror: merge of {} layer {} failed: {}\n", now_text(), entry->name, layer_to_merge,
                   status.to_string());
        break;
      }
    }
  }
}

Status MirrorEngine::sync(uint64_t timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::unique_lock lock(mutex_);
  uint64_t wanted_freeze = freeze_count_ + 1;
  freeze_requested_ = true;
  changed_.notify_all();
  if (!changed_.wait_until(lock, deadline, [&] { return stopping_ || freeze_count_ >= wanted_freeze; })) {
    return Status(ErrorCode::kTimeout, "timed out before the freeze could happen" +
                                           (freeze_error_.empty() ? std::string() : ": " + freeze_error_));
  }
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  std::map<std::string, uint64_t> points = latest_points_;
  auto done = [&] {
    for (const auto& target : targets_) {
      if (!target_has_all_locked(target->name, points)) return false;
    }
    return true;
  };
  if (changed_.wait_until(lock, deadline, [&] { return stopping_ || done(); }) && !stopping_) return Status();
  if (stopping_) return Status(ErrorCode::kCancelled, "the mirror was stopped");
  std::string reasons;
  for (const auto& target : targets_) {
    if (target_has_all_locked(target->name, points)) continue;
    reasons += "; " + target->name + ": " +
               (target->last_error.empty() ? std::string(target->busy ? "still copying" : "waiting to copy")
                                           : target->last_error);
  }
  return Status(ErrorCode::kTimeout, "not every target applied the new cycle in time" + reasons);
}

std::vector<MirrorStatus> MirrorEngine::status() {
  std::lock_guard lock(mutex_);
  std::vector<MirrorStatus> result;
  for (const auto& entry : volumes_) {
    std::vector<LayerInfo> layers = entry->volume->layers();
    for (const auto& target : targets_) {
      MirrorStatus status;
      status.volume = entry->name;
      status.target = target->name;
      const TargetState& state = entry->state.target_states[target->name];
      status.applied_cycle = state.applied_cycle;
      status.applied_freeze_time_unix_ms = state.applied_freeze_time_unix_ms;
      status.bytes_sent = state.bytes_sent;
      status.last_error = target->last_error;
      uint64_t latest = latest_points_[entry->name];
      bool copying_this = target->busy && target->copy_volume == entry->name && target->copy_cycle > state.applied_cycle;
      if (copying_this) {
        status.state = state.applied_cycle == 0 ? "initial-sync" : "copying";
        status.copy_cycle = target->copy_cycle;
        status.copy_done_bytes = target->copy_done_bytes;
        status.copy_total_bytes = target->copy_total_bytes;
        double seconds = std::chrono::duration<double>(Clock::now() - target->copy_started).count();
        if (seconds > 0) status.copy_rate_bytes_per_second = static_cast<double>(target->copy_done_bytes) / seconds;
        status.bytes_pending = status.copy_total_bytes - std::min(status.copy_total_bytes, status.copy_done_bytes);
      } else {
        if (!target->last_error.empty()) {
          status.state = "error";
        } else if (state.applied_cycle >= latest) {
          status.state = "idle";
        } else {
          status.state = target->busy ? "copying" : "lagging";
        }
        uint64_t chunks = state.pending_chunks.size();
        for (const LayerInfo& layer : layers) {
          if (layer.id > state.applied_cycle) chunks += layer.chunk_count;
        }
        status.bytes_pending = state.applied_cycle == 0 ? entry->volume->size_bytes() : chunks * entry->volume->chunk_size_bytes();
      }
      result.push_back(std::move(status));
    }
  }
  return result;
}

}  // namespace amirror::node
