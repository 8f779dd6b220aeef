// SPDX-License-Identifier: Apache-2.0
#include "node/receiver.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>

#include "base/log.h"
#include "base/names.h"
#include "node/metrics.h"
#include "repl/group_commit.h"
#include "repl/receiver_session.h"

namespace amirror::node {

Status ReplicaRegistry::load() {
  AMIRROR_RETURN_IF_ERROR(load_root(replicas_dir_));
  std::set<std::string> roots;
  for (const auto& [peer, placement] : placements_) {
    if (placement.error.empty() && placement.dir != replicas_dir_) roots.insert(placement.dir);
  }
  for (const std::string& root : roots) {
    // A pool's replicas directory is made with its first replica; a bad one costs only
    // the replicas in it.
    AMIRROR_ASSIGN_OR_RETURN(bool exists, fs_.exists(root));
    if (!exists) continue;
    if (Status loaded = load_root(root); !loaded.ok()) {
      log::error("receiver", "replicas in a storage pool are not served", {{"dir", root}, {"error", loaded.to_string()}});
    }
  }
  return Status();
}

const std::string& ReplicaRegistry::root_of(const std::string& source) const {
  auto placement = placements_.find(source);
  return placement == placements_.end() ? replicas_dir_ : placement->second.dir;
}

Status ReplicaRegistry::load_root(const std::string& root) {
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(root));
  // Its entry in the data directory must be durable before any replica in it is.
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(root.substr(0, root.rfind('/'))));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> sources, fs_.list_dir(root));
  for (const std::string& source : sources) {
    if (!validate_name(source, "source node").ok()) continue;
    auto volumes = fs_.list_dir(root + "/" + source);
    if (!volumes.ok()) {
      // No volume name to show it under: say so loudly instead.
      log::error("receiver", "replicas of a source are not served", {{"source", source}, {"error", volumes.status().to_string()}});
      continue;
    }
    if (root_of(source) != root) {
      for (const std::string& volume : volumes.value()) {
        if (!validate_name(volume, "volume").ok()) continue;
        std::string dir = root + "/" + source + "/" + volume;
        std::string why = "it is in " + dir + ", but " + source + "'s replicas go to " + root_of(source) +
                          " ([[peers]] storage); move it there, or `amirror replica delete " + source + "/" + volume +
                          "` for a fresh copy";
        log::error("receiver", "replica not served", {{"replica", source + "/" + volume}, {"error", why}});
        std::lock_guard lock(mutex_);
        failed_[source + "/" + volume] = FailedReplica{source, volume, dir, why};
      }
      continue;
    }
    for (const std::string& volume : volumes.value()) {
      if (validate_name(volume, "volume").ok()) load_one(source, volume);
    }
    finish_group_commits_at_load(source);
  }
  return Status();
}

void ReplicaRegistry::finish_group_commits_at_load(const std::string& source) {
  const std::string source_dir = this->source_dir(source);
  auto intents = repl::pending_group_commits(fs_, source_dir);
  std::vector<std::pair<std::string, std::string>> failures;  // volume, why
  if (!intents.ok()) {
    for (const auto& replica : all()) {
      if (replica->source_node() == source && !replica->group().empty()) {
        failures.emplace_back(replica->volume(), intents.status().message());
      }
    }
  }
  for (const repl::GroupCommit& intent : intents.ok() ? intents.value() : std::vector<repl::GroupCommit>{}) {
    auto replicas = members(source, intent);
    Status status = replicas.status();
    if (status.ok()) status = repl::finish_group_commit(fs_, source_dir, intent, replicas.value(), commit_gate_);
    if (status.ok()) continue;
    for (const repl::GroupPoint& member : intent.members) {
      failures.emplace_back(member.volume, "the commit of group '" + intent.group + "' to its next point could not "
                                           "be finished, so the group's replicas may be at different points: " +
                                           status.message());
    }
  }
  for (const auto& [volume, why] : failures) {
    std::string key = source + "/" + volume;
    log::error("receiver", "replica is not served", {{"replica", key}, {"error", why}});
    std::lock_guard lock(mutex_);
    replicas_.erase(key);
    failed_[key] = FailedReplica{source, volume, dir_of(source, volume), why};
  }
}

Result<std::vector<std::shared_ptr<repl::Replica>>> ReplicaRegistry::members(const std::string& source,
                                                                             const repl::GroupCommit& commit) const {
  std::vector<std::shared_ptr<repl::Replica>> replicas;
  for (const repl::GroupPoint& member : commit.members) {
    std::shared_ptr<repl::Replica> replica = find(source, member.volume);
    if (replica == nullptr) {
      return not_found("group '" + commit.group + "' member " + source + "/" + member.volume +
                       " is not a replica here (or failed to open)");
    }
    replicas.push_back(std::move(replica));
  }
  return replicas;
}

Status ReplicaRegistry::finish_group_commit(const std::string& source, const std::string& group,
                                            const std::set<std::string>& held, uint64_t wait_ms) {
  const std::string source_dir = this->source_dir(source);
  AMIRROR_ASSIGN_OR_RETURN(bool pending, repl::group_commit_pending(fs_, source_dir, group));
  if (!pending) return Status();
  AMIRROR_ASSIGN_OR_RETURN(std::vector<repl::GroupCommit> intents, repl::pending_group_commits(fs_, source_dir));
  for (const repl::GroupCommit& intent : intents) {
    if (intent.group != group) continue;
    std::vector<std::string> acquired;
    Status status;
    for (const repl::GroupPoint& member : intent.members) {
      if (held.contains(member.volume)) continue;
      if (!acquire(source + "/" + member.volume, wait_ms)) {
        status = Status(ErrorCode::kBusy, "replica " + source + "/" + member.volume + " is in use");
        break;
      }
      acquired.push_back(source + "/" + member.volume);
    }
    if (status.ok()) {
      auto replicas = members(source, intent);
      status = replicas.ok() ? repl::finish_group_commit(fs_, source_dir, intent, replicas.value(), commit_gate_)
                             : replicas.status();
    }
    for (const std::string& key : acquired) release(key);
    AMIRROR_RETURN_IF_ERROR(status.with_context("finish the cut-short commit of group '" + group + "'"));
  }
  return Status();
}

Result<repl::GroupCommit> ReplicaRegistry::commit_group(const std::string& source, const repl::GroupCommit& request,
                                                        const std::function<void()>& progress, uint64_t wait_ms) {
  std::set<std::string> held;
  for (const repl::GroupPoint& member : request.members) held.insert(member.volume);
  AMIRROR_RETURN_IF_ERROR(finish_group_commit(source, request.group, held, wait_ms));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::shared_ptr<repl::Replica>> replicas, members(source, request));
  for (const auto& replica : replicas) {
    if (replica->group() != request.group) {
      return invalid_argument("GROUP_COMMIT of group '" + request.group + "' names replica " + source + "/" +
                              replica->volume() + " of group '" + replica->group() + "'");
    }
  }
  AMIRROR_RETURN_IF_ERROR(repl::commit_group(fs_, source_dir(source), request, replicas, commit_gate_));
  repl::GroupCommit applied = request;
  for (size_t i = 0; i < replicas.size(); ++i) {
    // Old points beyond keep go now; the group's points are all there already.
    AMIRROR_RETURN_IF_ERROR(replicas[i]->apply(progress));
    applied.members[i].cycle = replicas[i]->readable_cycle();
  }
  return applied;
}

Result<std::string> ReplicaRegistry::device_of(const std::string& source, const std::string& volume) const {
  auto device_dir = device_dirs_.find(source);
  if (device_dir == device_dirs_.end()) return std::string();
  const std::string path = device_dir->second + "/" + volume;
  const std::string needed = "replica " + source + "/" + volume + " needs the block device " + path +
                             " ([[peers]] replica_device_dir of " + source + ")";
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    if (errno == ENOENT) return not_found(needed + ", which does not exist; create it at least as large as the volume");
    return Status::from_errno(errno, "resolve " + path);
  }
  struct stat info;
  if (::stat(resolved, &info) != 0) return Status::from_errno(errno, "stat " + path);
  if (!S_ISBLK(info.st_mode)) return invalid_argument(needed + ", but " + resolved + " is not a block device");
  return std::string(resolved);
}

void ReplicaRegistry::load_one(const std::string& source, const std::string& volume) {
  std::string dir = dir_of(source, volume);
  Result<std::unique_ptr<repl::Replica>> replica = [&]() -> Result<std::unique_ptr<repl::Replica>> {
    AMIRROR_ASSIGN_OR_RETURN(bool has_meta, fs_.exists(dir + "/replica.meta"));
    if (!has_meta) return std::unique_ptr<repl::Replica>();  // created but never initialized
    // Used only if its volume was never created; then a bad device fails it, named.
    Result<std::string> device = device_of(source, volume);
    auto found = device_dirs_.find(source);
    return repl::Replica::open(fs_, dir, device.ok() ? device.value() : found == device_dirs_.end() ? "" : found->second + "/" + volume);
  }();
  std::string key = source + "/" + volume;
  std::lock_guard lock(mutex_);
  if (!replica.ok()) {
    log::error("receiver", "replica failed to open; not served", {{"replica", key}, {"error", replica.status().to_string()}});
    failed_[key] = FailedReplica{source, volume, dir, replica.status().message()};
  } else if (replica.value() != nullptr) {
    replicas_[key] = std::move(replica).value();
  }
}

std::vector<FailedReplica> ReplicaRegistry::failed() const {
  std::lock_guard lock(mutex_);
  std::vector<FailedReplica> result;
  for (const auto& [key, failed] : failed_) result.push_back(failed);
  return result;
}

std::shared_ptr<repl::Replica> ReplicaRegistry::find(const std::string& source, const std::string& volume) const {
  std::lock_guard lock(mutex_);
  auto it = replicas_.find(source + "/" + volume);
  return it == replicas_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<repl::Replica>> ReplicaRegistry::all() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<repl::Replica>> result;
  for (const auto& [key, replica] : replicas_) result.push_back(replica);
  return result;
}

Result<std::shared_ptr<repl::Replica>> ReplicaRegistry::open_or_create(const std::string& source,
                                                                       const std::string& volume,
                                                                       uint64_t size_bytes, uint64_t chunk_size_bytes) {
  if (std::shared_ptr<repl::Replica> existing = find(source, volume)) {
    // Grows it when the source volume grew (a few syncs): outside mutex_, so status
    // goes on; the caller holds the replica (acquire), so no delete races this.
    AMIRROR_RETURN_IF_ERROR(existing->follow_source_geometry(size_bytes, chunk_size_bytes));
    return existing;
  }
  std::lock_guard lock(mutex_);
  if (auto failed = failed_.find(source + "/" + volume); failed != failed_.end()) {
    return Status(ErrorCode::kCorruption, "replica " + failed->first + " failed to open when the target started (" +
                                              failed->second.error + "); it is not overwritten: repair " + failed->second.dir +
                                              " and restart the target, or run `amirror replica delete " +
                                              failed->first + "` on it");
  }
  auto it = replicas_.find(source + "/" + volume);
  if (it != replicas_.end()) {  // created since the look-up above
    AMIRROR_RETURN_IF_ERROR(it->second->follow_source_geometry(size_bytes, chunk_size_bytes));
    return it->second;
  }
  if (auto placement = placements_.find(source); placement != placements_.end() && !placement->second.error.empty()) {
    return Status(ErrorCode::kIo, "replicas from " + source + " go to a storage pool that failed when the target "
                                  "started: " + placement->second.error + "; fix it and restart the target");
  }
  // Every directory entry on the way is durable before the replica is used: a replica
  // the source was told is applied must not vanish in a power loss.
  const std::string& root = root_of(source);
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(root));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(root.substr(0, root.rfind('/'))));
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(source_dir(source)));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(root));
  std::string dir = dir_of(source, volume);
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(dir));
  // Not there yet unless before_create put a demoted volume in its place (failback),
  // which keeps its own base.
  AMIRROR_ASSIGN_OR_RETURN(bool existed, fs_.exists(dir + "/replica.meta"));
  std::string device;
  if (!existed) {
    AMIRROR_ASSIGN_OR_RETURN(device, device_of(source, volume));
  }
  auto replica = repl::Replica::open_or_create(fs_, dir, source, volume, size_bytes, chunk_size_bytes, device);
  if (!replica.ok() && !device.empty() && !existed) {
    // Refused (device too small, in use): nothing of it stays, so the next try (a larger
    // device, or the config changed) starts clean. Volume::create failed before it made
    // any file but replica.meta.
    (void)fs_.remove(dir + "/replica.meta");
    (void)fs_.remove_dir(dir);
    return replica.status().with_context("replica " + source + "/" + volume);
  }
  if (!replica.ok()) return replica.status();
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(source_dir(source)));
  std::shared_ptr<repl::Replica> shared = std::move(replica).value();
  replicas_[source + "/" + volume] = shared;
  return shared;
}

bool ReplicaRegistry::acquire(const std::string& key, uint64_t wait_ms) {
  std::unique_lock lock(mutex_);
  released_.wait_for(lock, std::chrono::milliseconds(wait_ms), [&] { return !in_use_.count(key); });
  return in_use_.insert(key).second;
}

bool ReplicaRegistry::in_use(const std::string& key) const {
  std::lock_guard lock(mutex_);
  return in_use_.contains(key);
}

void ReplicaRegistry::release(const std::string& key) {
  std::lock_guard lock(mutex_);
  in_use_.erase(key);
  released_.notify_all();
}

Result<std::pair<std::string, std::string>> parse_replica_name(const std::string& name) {
  size_t slash = name.find('/');
  if (slash == std::string::npos) {
    return invalid_argument("name the replica as SOURCE/VOLUME (see `amirror replica list`), not '" + name + "'");
  }
  std::string source = name.substr(0, slash);
  std::string volume = name.substr(slash + 1);
  AMIRROR_RETURN_IF_ERROR(validate_name(source, "source node name"));
  AMIRROR_RETURN_IF_ERROR(validate_name(volume, "volume name"));
  return std::make_pair(std::move(source), std::move(volume));
}

Status ReplicaRegistry::remove(const std::string& source, const std::string& volume,
                               const std::function<Status(const std::string& dir)>& remove_dir, uint64_t wait_ms) {
  std::string key = source + "/" + volume;
  std::string dir = dir_of(source, volume);
  {
    std::unique_lock lock(mutex_);
    released_.wait_for(lock, std::chrono::milliseconds(wait_ms), [&] { return !in_use_.contains(key); });
    if (!replicas_.contains(key) && !failed_.contains(key)) {
      return not_found("no replica " + key + " on this node (see `amirror replica list`)");
    }
    if (in_use_.contains(key)) {
      return Status(ErrorCode::kBusy, "replica " + key + " is receiving from " + source +
                                          " now; try again once its cycle is applied, or run `amirror mirror break " +
                                          volume + "` on " + source + " first");
    }
    in_use_.insert(key);  // a connection from the source waits until we are done
    replicas_.erase(key);
    if (auto failed = failed_.find(key); failed != failed_.end()) {
      dir = failed->second.dir;  // perhaps not where its peer's replicas go (load())
      failed_.erase(failed);
    }
  }
  Status status = remove_dir(dir);
  if (!status.ok()) load_one(source, volume);
  release(key);
  return status;
}

namespace {

// The node's rules for who may send what, over its replica registry.
class NodeReplicaAccess : public repl::ReplicaAccess {
 public:
  NodeReplicaAccess(const repl::PeerSocket& socket, const NodeConfig& config, ReplicaRegistry& registry)
      : socket_(socket), config_(config), registry_(registry) {}

  Status admit_peer(const std::string& node_name) override {
    const PeerConfig* peer = config_.find_peer(node_name);
    if (peer == nullptr) return invalid_argument("node '" + node_name + "' is not a configured peer of " + config_.name);
    // TLS proved the certificate is the CA's; this proves it is this peer's.
    if (socket_.tls() != nullptr && !socket_.tls()->peer_has_identity(peer->identity)) {
      return invalid_argument("a client calling itself '" + node_name + "' presented certificate " +
                              socket_.tls()->peer_subject() + ", which does not name '" + peer->identity +
                              "' as that peer must");
    }
    return Status();
  }

  Result<std::shared_ptr<repl::Replica>> acquire(const std::string& peer_name, const repl::OpenReplica& open) override {
    AMIRROR_ASSIGN_OR_RETURN(std::string key, claim(peer_name, open.volume, "send"));
    if (registry_.before_create() && registry_.find(peer_name, open.volume) == nullptr) {
      Status allowed = registry_.before_create()(peer_name, open, registry_.dir_of(peer_name, open.volume));
      if (!allowed.ok()) {
        registry_.release(key);
        return allowed;
      }
    }
    auto replica = registry_.open_or_create(peer_name, open.volume, open.size_bytes, open.chunk_size_bytes);
    if (replica.ok() && !open.group.empty()) {
      // Never touch a member while its group is split by a commit an error cut short.
      Status finished = registry_.finish_group_commit(peer_name, open.group, {open.volume}, config_.peer_timeout_ms);
      if (!finished.ok()) replica = finished;
    }
    if (!replica.ok()) registry_.release(key);
    if (replica.ok()) volume_ = open.volume;
    return replica;
  }

  // `mirror verify`: the same rights, but only a replica that exists (and opened).
  Result<std::shared_ptr<repl::Replica>> acquire_existing(const std::string& peer_name,
                                                          const repl::OpenReplica& open) override {
    AMIRROR_ASSIGN_OR_RETURN(std::string key, claim(peer_name, open.volume, "verify"));
    if (auto replica = registry_.find(peer_name, open.volume)) return replica;
    registry_.release(key);
    for (const FailedReplica& failed : registry_.failed()) {
      if (failed.source == peer_name && failed.volume == open.volume) {
        return Status(ErrorCode::kCorruption, "replica " + key + " on " + config_.name +
                                                  " failed to open when the node started: " + failed.error);
      }
    }
    return not_found("there is no replica " + key + " on " + config_.name);
  }

  Result<repl::GroupCommit> commit_group(const std::string& peer_name, const repl::GroupCommit& request,
                                         const std::function<void()>& progress) override {
    std::vector<std::string> keys;
    Status refused;
    for (const repl::GroupPoint& member : request.members) {
      auto key = claim(peer_name, member.volume, "commit");
      if (!key.ok()) {
        refused = key.status();
        break;
      }
      keys.push_back(key.value());
    }
    Result<repl::GroupCommit> result =
        refused.ok() ? registry_.commit_group(peer_name, request, progress, config_.peer_timeout_ms)
                     : Result<repl::GroupCommit>(refused);
    for (const std::string& key : keys) registry_.release(key);
    return result;
  }

  Result<uint64_t> switchover(const std::string& peer_name, const repl::Switchover& request) override {
    if (!registry_.switchover_hook()) return repl::ReplicaAccess::switchover(peer_name, request);
    return registry_.switchover_hook()(peer_name, request);
  }

  void release(const std::string& peer_name, const std::string& volume) override {
    registry_.release(peer_name + "/" + volume);
  }

 private:
  // Checks `peer_name` may `verb` (send, verify) `volume`, then marks the replica in use
  // (waiting for a previous connection of the peer to let go). Returns its key.
  Result<std::string> claim(const std::string& peer_name, const std::string& volume, const char* verb) {
    const PeerConfig* peer = config_.find_peer(peer_name);  // non-null: admit_peer checked
    if (peer == nullptr || !peer->may_send(volume)) {
      return invalid_argument("peer '" + peer_name + "' may not " + verb + " volume '" + volume +
                              "': it is not in that peer's 'volumes' list on " + config_.name);
    }
    std::string key = peer_name + "/" + volume;
    if (!registry_.acquire(key, config_.peer_timeout_ms)) {
      return Status(ErrorCode::kBusy, "replica " + key + " is in use by another connection");
    }
    return key;
  }

  const repl::PeerSocket& socket_;
  const NodeConfig& config_;
  ReplicaRegistry& registry_;
  std::string volume_;  // the replica acquired last, for metrics

 public:
  const std::string& volume() const { return volume_; }
};

// Feeds the socket's frames to the session until the peer closes or the node stops.
Status run_session(repl::PeerSocket& socket, repl::ReceiverSession& session, const NodeReplicaAccess& access,
                   const std::atomic<bool>& stopping, NodeMetrics* metrics) {
  while (!stopping.load()) {
    auto frame = socket.receive_frame();
    if (!frame.ok()) {
      // A clean close between deltas is the normal end of a session.
      if (!session.in_delta() && frame.status().message().find("closed the connection") != std::string::npos) {
        return Status();
      }
      return frame.status();
    }
    // END_DELTA makes the delta durable and applies it: that is the apply duration.
    const bool end_delta = frame.value().type == repl::FrameType::kEndDelta && session.in_delta();
    const auto started = std::chrono::steady_clock::now();
    AMIRROR_RETURN_IF_ERROR(session.on_frame(std::move(frame).value()));
    if (end_delta) {
      std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - started;
      log::debug("receiver", "delta applied",
                 {{"source", session.peer_name()}, {"volume", access.volume()}, {"seconds", seconds.count()}});
      if (metrics != nullptr) metrics->observe_apply(session.peer_name(), access.volume(), seconds.count());
    }
  }
  return Status(ErrorCode::kCancelled, "node stopping");
}

}  // namespace

void serve_peer_connection(repl::PeerSocket& socket, const NodeConfig& config, const net::TlsContext* tls,
                           ReplicaRegistry& registry, const std::atomic<bool>& stopping, NodeMetrics* metrics) {
  socket.set_timeout_ms(static_cast<int>(config.peer_timeout_ms));
  if (tls != nullptr) {
    Status handshake = socket.start_tls(*tls, true);
    if (!handshake.ok()) {
      bool plaintext = handshake.code() == ErrorCode::kUnsupported;
      log::warn("receiver", "peer refused",
                {{"peer", socket.peer()},
                 {"error", handshake.message() + (plaintext ? "; configure [tls] on both nodes (or insecure = true on "
                                                              "both, trusted networks only)"
                                                            : "")}});
      // A plaintext peer can still read why (it would otherwise just see a closed socket).
      if (plaintext) {
        (void)socket.send_frame(repl::FrameType::kError,
                                repl::encode_error(config.name + " requires TLS on peer connections"));
      }
      return;
    }
  }
  repl::SocketSink sink(socket);
  NodeReplicaAccess access(socket, config, registry);
  // Records are written on the stager's thread while this one receives the next frames.
  repl::BackgroundChunkStager stager;
  repl::ReceiverSession session(config.name, access, sink, &stager);
  Status status = run_session(socket, session, access, stopping, metrics);
  if (!status.ok() && status.code() != ErrorCode::kCancelled) {
    log::warn("receiver", "closing the peer connection",
              {{"peer", socket.peer()},
               {"source", session.peer_name().empty() ? "unidentified" : session.peer_name()},
               {"error", status.to_string()}});
    (void)socket.send_frame(repl::FrameType::kError, repl::encode_error(status.message()));
  }
}

}  // namespace amirror::node
