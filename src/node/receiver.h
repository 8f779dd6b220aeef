// SPDX-License-Identifier: Apache-2.0
// The target side of mirroring: the replicas this node holds, by source node and
// volume, and the handler for one incoming peer connection.
//
// Connection protocol (docs/formats/wire.md): TLS (docs/security.md), HELLO from a
// configured peer whose certificate names its identity, then for
// each volume OPEN_REPLICA -> REPLICA_STATE, BEGIN_DELTA, CHUNK..., END_DELTA ->
// DELTA_DURABLE -> (apply) -> APPLIED. Anything out of sequence, malformed, or from a
// node that is not a configured peer gets an ERROR frame and the connection closes;
// nothing is staged from a frame that failed its checks.
// Thread-safety: ReplicaRegistry is thread-safe; a replica is used by one connection
// at a time (a second one is refused as busy).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "node/config.h"
#include "repl/replica.h"
#include "repl/socket.h"

namespace amirror::node {

class NodeMetrics;

// A replica's name as operators and NBD clients give it, "SOURCE/VOLUME", split and
// checked (each part a valid name); the error says what is wrong with it.
Result<std::pair<std::string, std::string>> parse_replica_name(const std::string& name);

// A replica that could not be opened: not served, not overwritten, shown as failed.
struct FailedReplica {
  std::string source;
  std::string volume;
  std::string dir;
  std::string error;
};

// Where one peer's replicas go on this node ([[peers]] storage): `dir` is the replicas
// directory of its pool, <pool>/replicas. A peer whose pool failed to open has an
// `error`: none of its replicas is opened or created (a sender is told why).
struct ReplicaPlacement {
  std::string dir;
  std::string error;
};

class ReplicaRegistry {
 public:
  // `replicas_dir`: the data directory's, for every peer not in `placements`.
  ReplicaRegistry(FileSystem& fs, std::string replicas_dir, std::map<std::string, ReplicaPlacement> placements = {})
      : fs_(fs), replicas_dir_(std::move(replicas_dir)), placements_(std::move(placements)) {}
  // Opens every replica under the replicas directories (finishing interrupted
  // applies). One that cannot be opened is recorded as failed (and logged), never
  // fatal: one damaged replica must not keep the node from serving the others. So is
  // one found in another pool than its peer's `storage` names (moved config): it is
  // not overwritten by a fresh copy behind the operator's back. Errors only when the
  // data directory's replicas directory itself cannot be read.
  Status load();
  std::vector<FailedReplica> failed() const;
  // "SOURCE/VOLUME" -> replica; nullptr when unknown.
  std::shared_ptr<repl::Replica> find(const std::string& source, const std::string& volume) const;
  std::vector<std::shared_ptr<repl::Replica>> all() const;
  // A failed replica is refused with its reason (the sender must not overwrite it).
  // An existing one follows the source's size: it grows when the source volume grew
  // (Replica::follow_source_geometry).
  Result<std::shared_ptr<repl::Replica>> open_or_create(const std::string& source, const std::string& volume,
                                                        uint64_t size_bytes, uint64_t chunk_size_bytes);
  // Marks a replica as used by a connection. If another connection holds it (often the
  // source's previous connection, not yet seen closing), waits up to `wait_ms` for it.
  bool acquire(const std::string& key, uint64_t wait_ms);
  void release(const std::string& key);
  bool in_use(const std::string& key) const;
  // Deletes the replica (or failed replica) SOURCE/VOLUME: refused while a connection
  // holds it (it is receiving) for longer than `wait_ms`. `remove_dir` runs while the
  // name is held, so no connection recreates the replica halfway; if it fails, the
  // replica is loaded again from what is left, as at start. A later send creates a
  // fresh replica (full copy).
  Status remove(const std::string& source, const std::string& volume,
                const std::function<Status(const std::string& dir)>& remove_dir, uint64_t wait_ms = 0);
  // Asked before a peer's first delta creates a replica here: may refuse it (split
  // brain) or put a demoted volume in its place (failback). Set once, before load().
  using BeforeCreate =
      std::function<Status(const std::string& source, const repl::OpenReplica& open, const std::string& dir)>;
  void set_before_create(BeforeCreate hook) { before_create_ = std::move(hook); }
  // `[[peers]] replica_device_dir` by peer: a new replica of VOLUME from that peer lives
  // on the block device <dir>/VOLUME (Replica::open_or_create). Set once, before load().
  void set_device_dirs(std::map<std::string, std::string> device_dirs) { device_dirs_ = std::move(device_dirs); }
  // Takes a planned switchover from a peer (see repl::ReplicaAccess::switchover).
  using Switchover = std::function<Result<uint64_t>(const std::string& peer, const repl::Switchover& request)>;
  void set_switchover(Switchover hook) { switchover_ = std::move(hook); }
  const Switchover& switchover_hook() const { return switchover_; }
  const BeforeCreate& before_create() const { return before_create_; }
  std::string dir_of(const std::string& source, const std::string& volume) const {
    return source_dir(source) + "/" + volume;
  }

  // Group-atomic commit (repl/group_commit.h). Commits `request`'s members together
  // and merges each down to its keep; first finishes a commit of the same group that
  // an error cut short. REQUIRES: the caller holds (acquire) every member of `request`.
  Result<repl::GroupCommit> commit_group(const std::string& source, const repl::GroupCommit& request,
                                         const std::function<void()>& progress, uint64_t wait_ms);
  // Finishes a commit of `group` from `source` that an error cut short, if there is
  // one, so a member is never used while the group is split. `held`: members the
  // caller holds already; the others are acquired for it (waiting up to `wait_ms`).
  Status finish_group_commit(const std::string& source, const std::string& group, const std::set<std::string>& held,
                             uint64_t wait_ms);
  // Held shared by readers of several replicas' points (status, group promote):
  // a group commit holds it exclusively while it moves the members.
  std::shared_mutex& commit_gate() { return commit_gate_; }

 private:
  // The replicas directory `source`'s replicas go to, and its directory there.
  const std::string& root_of(const std::string& source) const;
  std::string source_dir(const std::string& source) const { return root_of(source) + "/" + source; }
  // Loads the replicas under `root` (one replicas directory).
  Status load_root(const std::string& root);
  void load_one(const std::string& source, const std::string& volume);
  // The block device a new replica of `volume` from `source` uses (symlinks resolved),
  // "" for none, or why it cannot be used (missing, not a block device).
  Result<std::string> device_of(const std::string& source, const std::string& volume) const;
  // At load: rolls forward the group commits a crash cut short; a member that cannot
  // be is marked failed (its group may be split).
  void finish_group_commits_at_load(const std::string& source);
  Result<std::vector<std::shared_ptr<repl::Replica>>> members(const std::string& source,
                                                              const repl::GroupCommit& commit) const;

  FileSystem& fs_;
  const std::string replicas_dir_;
  const std::map<std::string, ReplicaPlacement> placements_;  // by peer
  BeforeCreate before_create_;
  Switchover switchover_;
  std::map<std::string, std::string> device_dirs_;  // by peer
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<repl::Replica>> replicas_;  // key "source/volume"
  std::map<std::string, FailedReplica> failed_;                     // same key; never in replicas_
  std::set<std::string> in_use_;
  std::condition_variable released_;
  std::shared_mutex commit_gate_;
};

// Serves one peer connection until it closes or `stopping` becomes true. With `tls`
// (null only with insecure = true), the TLS handshake comes first and the HELLO's node
// must be a configured peer whose identity the client certificate names.
// `metrics` (may be null) times each delta's apply.
void serve_peer_connection(repl::PeerSocket& socket, const NodeConfig& config, const net::TlsContext* tls,
                           ReplicaRegistry& registry, const std::atomic<bool>& stopping, NodeMetrics* metrics);

}  // namespace amirror::node
