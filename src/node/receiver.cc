// SPDX-License-Identifier: Apache-2.0
#include "node/receiver.h"

#include <fmt/core.h>

#include "base/names.h"

namespace amirror::node {

Status ReplicaRegistry::load() {
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(replicas_dir_));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> sources, fs_.list_dir(replicas_dir_));
  for (const std::string& source : sources) {
    if (!validate_name(source, "source node").ok()) continue;
    auto volumes = fs_.list_dir(replicas_dir_ + "/" + source);
    if (!volumes.ok()) {
      // No volume name to show it under: say so loudly instead.
      fmt::print(stderr, "replicas from {} are not served: {}\n", source, volumes.status().to_string());
      continue;
    }
    for (const std::string& volume : volumes.value()) {
      if (validate_name(volume, "volume").ok()) load_one(source, volume);
    }
  }
  return Status();
}

void ReplicaRegistry::load_one(const std::string& source, const std::string& volume) {
  std::string dir = replicas_dir_ + "/" + source + "/" + volume;
  Result<std::unique_ptr<repl::Replica>> replica = [&]() -> Result<std::unique_ptr<repl::Replica>> {
    AMIRROR_ASSIGN_OR_RETURN(bool has_meta, fs_.exists(dir + "/replica.meta"));
    if (!has_meta) return std::unique_ptr<repl::Replica>();  // created but never initialized
    return repl::Replica::open(fs_, dir);
  }();
  std::string key = source + "/" + volume;
  std::lock_guard lock(mutex_);
  if (!replica.ok()) {
    fmt::print(stderr, "replica {} failed to open and is not served: {}\n", key, replica.status().to_string());
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
  std::lock_guard lock(mutex_);
  if (auto failed = failed_.find(source + "/" + volume); failed != failed_.end()) {
    return Status(ErrorCode::kCorruption, "replica " + failed->first + " failed to open when the target started (" +
                                              failed->second.error + "); it is not overwritten: repair or remove " +
                                              failed->second.dir + " on the target and restart it");
  }
  auto it = replicas_.find(source + "/" + volume);
  if (it != replicas_.end()) {
    if (it->second->size_bytes() != size_bytes || it->second->chunk_size_bytes() != chunk_size_bytes) {
      return invalid_argument("replica " + source + "/" + volume + " has another size or chunk size than the source sends");
    }
    return it->second;
  }
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(replicas_dir_ + "/" + source));
  std::string dir = replicas_dir_ + "/" + source + "/" + volume;
  AMIRROR_RETURN_IF_ERROR(fs_.make_dir(dir));
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<repl::Replica> replica,
                           repl::Replica::open_or_create(fs_, dir, source, volume, size_bytes, chunk_size_bytes));
  AMIRROR_RETURN_IF_ERROR(fs_.sync_dir(replicas_dir_ + "/" + source));
  std::shared_ptr<repl::Replica> shared = std::move(replica);
  replicas_[source + "/" + volume] = shared;
  return shared;
}

bool ReplicaRegistry::acquire(const std::string& key, uint64_t wait_ms) {
  std::unique_lock lock(mutex_);
  released_.wait_for(lock, std::chrono::milliseconds(wait_ms), [&] { return !in_use_.count(key); });
  return in_use_.insert(key).second;
}

void ReplicaRegistry::release(const std::string& key) {
  std::lock_guard lock(mutex_);
  in_use_.erase(key);
  released_.notify_all();
}

namespace {

// Per-connection protocol state machine.
class PeerSession {
 public:
  PeerSession(repl::PeerSocket& socket, const NodeConfig& config, ReplicaRegistry& registry)
      : socket_(socket), config_(config), registry_(registry) {}
  ~PeerSession() { release(); }

  Status run(const std::atomic<bool>& stopping) {
    AMIRROR_RETURN_IF_ERROR(handshake());
    while (!stopping.load()) {
      auto frame = socket_.receive_frame();
      if (!frame.ok()) {
        // A clean close between deltas is the normal end of a session.
        if (!in_delta_ && frame.status().message().find("closed the connection") != std::string::npos) return Status();
        return frame.status();
      }
      AMIRROR_RETURN_IF_ERROR(handle(frame.value()));
    }
    return Status(ErrorCode::kCancelled, "node stopping");
  }

  const std::string& peer_name() const { return peer_name_; }

 private:
  Status handshake() {
    AMIRROR_ASSIGN_OR_RETURN(repl::Frame frame, socket_.receive_frame());
    if (frame.type != repl::FrameType::kHello) return invalid_argument("expected HELLO first");
    AMIRROR_ASSIGN_OR_RETURN(repl::Hello hello, repl::decode_hello(frame.payload));
    if (hello.protocol_version != repl::kProtocolVersion) {
      return invalid_argument("peer speaks protocol version " + std::to_string(hello.protocol_version) +
                              ", this node speaks " + std::to_string(repl::kProtocolVersion));
    }
    const PeerConfig* peer = config_.find_peer(hello.node_name);
    if (peer == nullptr) {
      return invalid_argument("node '" + hello.node_name + "' is not a configured peer of " + config_.name);
    }
    // TLS proved the certificate is the CA's; this proves it is this peer's.
    if (socket_.tls() != nullptr && !socket_.tls()->peer_has_identity(peer->identity)) {
      return invalid_argument("a client calling itself '" + hello.node_name + "' presented certificate " +
                              socket_.tls()->peer_subject() + ", which does not name '" + peer->identity +
                              "' as that peer must");
    }
    peer_name_ = hello.node_name;
    return socket_.send_frame(repl::FrameType::kHelloAck, repl::encode(repl::Hello{repl::kProtocolVersion, config_.name}));
  }

  Status handle(const repl::Frame& frame) {
    switch (frame.type) {
      case repl::FrameType::kKeepAlive: return Status();
      case repl::FrameType::kOpenReplica: {
        if (in_delta_) return invalid_argument("OPEN_REPLICA in the middle of a delta");
        AMIRROR_ASSIGN_OR_RETURN(repl::OpenReplica open, repl::decode_open_replica(frame.payload));
        release();
        const PeerConfig* peer = config_.find_peer(peer_name_);  // non-null: handshake() checked
        if (peer == nullptr || !peer->may_send(open.volume)) {
          return invalid_argument("peer '" + peer_name_ + "' may not send volume '" + open.volume +
                                  "': it is not in that peer's 'volumes' list on " + config_.name);
        }
        std::string key = peer_name_ + "/" + open.volume;
        if (!registry_.acquire(key, config_.peer_timeout_ms)) return Status(ErrorCode::kBusy, "replica " + key + " is in use by another connection");
        held_key_ = key;
        AMIRROR_ASSIGN_OR_RETURN(replica_, registry_.open_or_create(peer_name_, open.volume, open.size_bytes,
                                                                    open.chunk_size_bytes));
        // A delta committed earlier whose apply failed (e.g. the disk was full) is
        // applied now, rather than having the source send it again.
        if (replica_->activity() == "committed") AMIRROR_RETURN_IF_ERROR(replica_->apply([] {}));
        return socket_.send_frame(repl::FrameType::kReplicaState, repl::encode(replica_->state()));
      }
      case repl::FrameType::kBeginDelta: {
        if (replica_ == nullptr || in_delta_) return invalid_argument("BEGIN_DELTA out of sequence");
        AMIRROR_ASSIGN_OR_RETURN(repl::BeginDelta begin, repl::decode_begin_delta(frame.payload));
        AMIRROR_RETURN_IF_ERROR(replica_->begin_delta(begin));
        in_delta_ = true;
        return Status();
      }
      case repl::FrameType::kChunk: {
        if (!in_delta_) return invalid_argument("CHUNK outside a delta");
        AMIRROR_ASSIGN_OR_RETURN(repl::ChunkRecord record, repl::decode_chunk(frame.payload));
        return replica_->stage(record);
      }
      case repl::FrameType::kEndDelta: {
        if (!in_delta_) return invalid_argument("END_DELTA outside a delta");
        AMIRROR_ASSIGN_OR_RETURN(repl::EndDelta end, repl::decode_end_delta(frame.payload));
        AMIRROR_RETURN_IF_ERROR(replica_->end_delta(end.record_count));
        in_delta_ = false;
        AMIRROR_RETURN_IF_ERROR(socket_.send_frame(repl::FrameType::kDeltaDurable, {}));
        Status keepalive_status;
        AMIRROR_RETURN_IF_ERROR(replica_->apply([&] {
          if (keepalive_status.ok()) keepalive_status = socket_.send_frame(repl::FrameType::kKeepAlive, {});
        }));
        repl::Applied applied{replica_->state().applied_cycle};
        return socket_.send_frame(repl::FrameType::kApplied, repl::encode(applied));
      }
      default:
        return invalid_argument(std::string("unexpected ") + repl::frame_type_name(frame.type) + " frame");
    }
  }

  void release() {
    if (!held_key_.empty()) registry_.release(held_key_);
    held_key_.clear();
    replica_.reset();
  }

  repl::PeerSocket& socket_;
  const NodeConfig& config_;
  ReplicaRegistry& registry_;
  std::string peer_name_;
  std::string held_key_;
  std::shared_ptr<repl::Replica> replica_;
  bool in_delta_ = false;
};

}  // namespace

void serve_peer_connection(repl::PeerSocket& socket, const NodeConfig& config, const net::TlsContext* tls,
                           ReplicaRegistry& registry, const std::atomic<bool>& stopping) {
  socket.set_timeout_ms(static_cast<int>(config.peer_timeout_ms));
  if (tls != nullptr) {
    Status handshake = socket.start_tls(*tls, true);
    if (!handshake.ok()) {
      bool plaintext = handshake.code() == ErrorCode::kUnsupported;
      fmt::print(stderr, "peer {}: refused: {}{}\n", socket.peer(), handshake.message(),
                 plaintext ? "; configure [tls] on both nodes (or insecure = true on both, trusted networks only)" : "");
      // A plaintext peer can still read why (it would otherwise just see a closed socket).
      if (plaintext) {
        (void)socket.send_frame(repl::FrameType::kError,
                                repl::encode_error(config.name + " requires TLS on peer connections"));
      }
      return;
    }
  }
  PeerSession session(socket, config, registry);
  Status status = session.run(stopping);
  if (!status.ok() && status.code() != ErrorCode::kCancelled) {
    fmt::print(stderr, "peer {} ({}): {}; closing the connection\n", socket.peer(),
               session.peer_name().empty() ? "unidentified" : session.peer_name(), status.to_string());
    (void)socket.send_frame(repl::FrameType::kError, repl::encode_error(status.message()));
  }
}

}  // namespace amirror::node
