// SPDX-License-Identifier: Apache-2.0
// A node: one `amirror node` process. It owns the data directory and the storage pools
// (volumes, mirror state, replicas), serves volumes and replicas over NBD, runs mirrors
// as a source and receives replicas as a target — all at once — and answers the CLI
// on its control socket.
//
// Control requests are JSON objects with a "command" field; responses are
// {"ok": true, ...} or {"ok": false, "error": "..."}. Commands: volume_create,
// volume_import, volume_list, volume_delete, volume_resize, volume_demote, replica_list,
// replica_points, replica_delete, replica_promote, mirror_start, mirror_break, mirror_sync,
// mirror_verify, mirror_switchover, status (fields next to each handler: node.cc,
// node_delete.cc, node_resize.cc, node_failover.cc, mirror_verify.cc). Errors change nothing.
//
// A volume or replica that cannot be opened at start is "failed": the node starts
// anyway, serves and mirrors everything else, and shows it in status with the reason;
// it is not exported over NBD, commands naming it say why, and a mirror it belongs to
// is not resumed. A volume being imported is reserved by name ("importing" in status)
// and published only when its copy is complete (node_volumes.cc).
// Thread-safety: handle_control may be called from many threads at once. Commands on
// one mirror are linearisable: whatever order concurrent `mirror start`/`break`/`sync`
// run in, the node ends with at most one engine per volume and the state file's
// `running` says whether it exists.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "node/config.h"
#include "node/control_socket.h"
#include "node/env.h"
#include "node/mirror_engine.h"
#include "node/receiver.h"
#include "node/storage_pools.h"
#include "store/data_dir.h"

namespace amirror::nbd {
class Server;
}

namespace amirror::node {

class ImportSource;
class NodeCatalog;
class NodeMetrics;

// How long `mirror sync` (and a switchover's last cycle) waits when not told.
constexpr uint64_t kDefaultSyncTimeoutMs = 300'000;

class Node {
 public:
  // `env`: where files, time, the network and threads come from (node/env.h).
  static Result<std::unique_ptr<Node>> start(const NodeConfig& config, Env env = Env::posix());
  ~Node();
  // Stops mirrors, listeners and NBD; flushes every volume. Idempotent. Once it has
  // begun, `mirror start` is refused, so no engine outlives it.
  void stop();
  std::string handle_control(const std::string& request);

  // For the NBD catalog.
  std::vector<std::string> export_names() const;
  std::shared_ptr<VolumeEntry> find_volume(const std::string& name) const;
  std::shared_ptr<repl::Replica> find_replica(const std::string& source, const std::string& volume) const;
  // A peer connection holds the replica now (it is receiving); for tests.
  bool replica_in_use(const std::string& source, const std::string& volume) const;
  // Why an export name that is not served is known anyway (failed, being imported); "" if unknown.
  std::string unavailable_reason(const std::string& export_name) const;
  // Unit keys ("volume:NAME", "group:NAME") with a mirror engine now; for tests and
  // diagnostics.
  std::vector<std::string> running_units() const;

 private:
  // One control command; `request` is the parsed JSON object, the result the response.
  using ControlHandler = std::string (Node::*)(const nlohmann::json& request);
  static const std::map<std::string, ControlHandler>& control_handlers();
  // {"ok": false, "error": message}: every handler's refusal.
  static nlohmann::json error_response(const Status& status);

  Node(NodeConfig config, Env env);
  Status open_everything() EXCLUDES(mutex_);
  Status start_listeners();
  void peer_accept_loop();
  Status resume_mirrors() EXCLUDES(mutex_);

  // The handlers below hold mutex_ only for short steps: a `mirror sync` waits for
  // its engine without it, `mirror break` stops its engine without it.
  std::string status_json() EXCLUDES(mutex_);
  std::string control_status(const nlohmann::json& request);
  std::string control_volume_list(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_replica_list(const nlohmann::json& request);
  std::string control_replica_points(const nlohmann::json& request);
  std::string control_volume_create(const nlohmann::json& request) EXCLUDES(mutex_);
  // volume_resize (node_resize.cc).
  std::string control_volume_resize(const nlohmann::json& request) EXCLUDES(mutex_);
  // The volume `name` if it can be resized now (else why not), reserved in resizing_.
  Result<std::shared_ptr<VolumeEntry>> claim_for_resize_locked(const std::string& name) REQUIRES(mutex_);
  std::string control_mirror_start(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_mirror_break(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_mirror_sync(const nlohmann::json& request) EXCLUDES(mutex_);
  // mirror_verify (mirror_verify.cc).
  std::string control_mirror_verify(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_volume_delete(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_replica_delete(const nlohmann::json& request) EXCLUDES(mutex_);
  // volume_adopt / volume_release (node_adopt.cc).
  std::string control_volume_adopt(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_volume_release(const nlohmann::json& request) EXCLUDES(mutex_);
  // The options adopting `path` takes (canonical path, its size), or why it cannot be.
  Result<VolumeOptions> adopt_options(const std::string& path, const nlohmann::json& request) const;
  // REQUIRES: `name` adopted, in service. Merges it into its file or device, then
  // forgets it; returns the path given back.
  Result<std::string> release_volume(const std::string& name) EXCLUDES(mutex_);

  // replica_promote, volume_demote, and what a peer sending a volume this node has no
  // replica of may find here: failback or split brain (node_failover.cc).
  std::string control_replica_promote(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_volume_demote(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string control_mirror_switchover(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string promote_group(const nlohmann::json& request) EXCLUDES(mutex_);
  // The replica SOURCE/VOLUME's point `cycle` (0: newest) becomes volume `name` ("":
  // VOLUME). Returns the name and the cycle. Refused while the source sends into the
  // replica for longer than `wait_ms`.
  Result<std::pair<std::string, uint64_t>> promote_replica(const std::string& replica_name, std::string name,
                                                           uint64_t cycle, uint64_t wait_ms = 0) EXCLUDES(mutex_);
  // A peer's planned switchover: promote its replica at the cycle, mirror it back.
  Result<uint64_t> accept_switchover(const std::string& peer, const repl::Switchover& request) EXCLUDES(mutex_);
  Status before_create_replica(const std::string& peer, const repl::OpenReplica& open, const std::string& dir)
      EXCLUDES(mutex_);
  // Turns the demoted `ours` into the replica at `dir`; returns the bytes of its
  // writes after the common point (discarded: the peer's next delta overwrites them).
  Result<uint64_t> take_over_as_replica(const VolumeEntry& ours, const std::string& peer,
                                        const repl::OpenReplica& open, const std::string& dir);
  // "primary", "promoted" (from a replica) or "demoted" (takes no writes).
  static std::string volume_role(const Volume& volume);
  static std::string volume_role(const VolumeFacts& facts);
  // `mirror break` of the unit `volume` or `group` names (exactly one non-empty).
  Status break_mirror(const std::string& volume, const std::string& group) EXCLUDES(mutex_);

  // volume_delete / replica_delete (node_delete.cc).
  struct ClaimedVolume;
  Status delete_volume(const std::string& name, bool force) EXCLUDES(mutex_);
  // Refuses when NBD clients have `name` open (unless `force`).
  Status check_nbd_clients(const std::string& name, bool force) const;
  // Why `name` cannot be deleted now (unknown, importing, reserved_), or the unit
  // key of the mirror that runs for it ("" when none).
  Result<std::string> deletable_locked(const std::string& name) const REQUIRES(mutex_);
  Status refuse_mirrored_locked(const std::string& name, const std::string& unit) const REQUIRES(mutex_);
  // Takes `name` out of volumes_ (or failed_volumes_) and reserves it in reserved_.
  ClaimedVolume claim_for_delete_locked(const std::string& name) REQUIRES(mutex_);
  // Withdraws the export, removes the state file and moves the directory to the trash.
  Result<std::string> retire_volume_files(const std::string& name);
  // Withdraws the NBD export `name` and closes the connections that serve it.
  void withdraw_export(const std::string& name);

  // Adds "state" to each volume of `volumes` (a status or volume_list array) and
  // appends the failed and importing ones.
  void list_unavailable_volumes(nlohmann::json& volumes) const REQUIRES(mutex_);
  // status's "replicas": the served ones, then the failed ones.
  nlohmann::json replicas_json() const;
  // Opens one volume and its mirror state into volumes_, or records it as failed.
  void open_volume_entry(FileSystem& fs, const std::string& name) REQUIRES(mutex_);
  // How a resting volume `name` is reopened (from its storage pool).
  VolumeEntry::Opener volume_opener(const std::string& name) const;
  // Why a mirror unit that was running must not be resumed (a member failed); "" if none.
  std::string unit_blocked_reason(const std::string& unit_key) const REQUIRES(mutex_);

  // volume_create / volume_import (node_volumes.cc).
  std::string create_or_import_volume(const nlohmann::json& request) EXCLUDES(mutex_);
  std::string import_volume(const StoragePool& pool, const std::string& name, const std::string& from, uint64_t declared_size_bytes,
                            VolumeOptions options);
  // Adds the new `volume` to volumes_, at rest; returns the create/import response.
  std::string publish_new_volume(const std::string& name, std::unique_ptr<Volume> volume, const std::string& pool_name)
      REQUIRES(mutex_);
  Result<std::unique_ptr<Volume>> copy_import(DataDir& pool, const std::string& name, ImportSource& source,
                                              const VolumeOptions& options, std::atomic<uint64_t>& done_bytes);
  // The open pool a new volume goes to (request's "storage"; absent = "default"), or
  // why none: an unknown pool (the error lists the known ones) or a failed one.
  Result<const StoragePool*> storage_for_new_volume(const nlohmann::json& request) const;
  // status's "storage": each pool's name, path, state, error, free and total bytes.
  nlohmann::json storage_json() const;
  // Records a new volume's pool in the catalog (logs, but does not fail, if it cannot).
  void record_pool(const std::string& name, const std::string& pool_name);
  // Why `name` cannot be created now (exists, failed, being imported), or ok.
  Status check_name_free(const std::string& name) const REQUIRES(mutex_);
  // Why a volume or group cannot be mirrored now (it or a member failed or is being
  // imported), or ok. For a group: a failed volume counts when its group is known.
  Status check_unit_available(const std::string& volume, const std::string& group) const REQUIRES(mutex_);
  Result<std::vector<std::shared_ptr<VolumeEntry>>> resolve_unit(const std::string& volume, const std::string& group,
                                                                 std::string& unit_key) REQUIRES(mutex_);
  // The engine mirroring the unit's volumes, or why there is none.
  Result<std::shared_ptr<MirrorEngine>> find_engine_locked(const std::vector<std::shared_ptr<VolumeEntry>>& members,
                                                           const std::string& unit_key) REQUIRES(mutex_);
  // Waits until no `mirror break` is stopping an engine of any of `members`.
  void wait_until_settled_locked(MutexLock& lock, const std::vector<std::shared_ptr<VolumeEntry>>& members)
      REQUIRES(mutex_);
  Status start_mirror(const std::string& unit_key, std::vector<std::shared_ptr<VolumeEntry>> members,
                      std::vector<std::string> targets, uint64_t interval_ms, uint32_t keep, bool persist,
                      const WireOptions& wire = {}) REQUIRES(mutex_);
  // `mirror start` of a unit that is mirrored already: only --bandwidth / --compress may
  // change (live); anything else must be broken first. Returns the response.
  std::string restart_running_mirror(const nlohmann::json& request, const std::string& unit_key,
                                     const WireOptions& wire) REQUIRES(mutex_);

  const NodeConfig config_;
  const Env env_;
  const std::shared_ptr<const PeerBuckets> peer_buckets_;  // from config_: [[peers]] bandwidth_limit
  TransferSlots transfer_slots_{config_.max_transfers};  // every engine's transfers share it
  // Runs every engine's rounds on `[node] workers` threads; made by start(), stopped
  // by stop() after the engines. Declared before engines_, so it outlives them.
  std::unique_ptr<EngineScheduler> scheduler_;
  // The storage pools (node/storage_pools.h). The default one, the data directory,
  // also holds mirror state, the catalog and the replicas of peers without `storage`.
  std::unique_ptr<StoragePools> pools_;
  std::string mirrors_dir_;
  std::unique_ptr<ReplicaRegistry> replicas_;

  // Guards the maps below, and each VolumeEntry's MirrorState (the node's copy; a
  // running engine works on its own).
  mutable Mutex mutex_;
  std::map<std::string, std::shared_ptr<VolumeEntry>> volumes_ GUARDED_BY(mutex_);
  // By unit key. Shared: a `mirror sync` keeps its engine alive while it waits, even if
  // a `mirror break` stops it meanwhile.
  std::map<std::string, std::shared_ptr<MirrorEngine>> engines_ GUARDED_BY(mutex_);
  std::map<std::string, std::string> unit_of_volume_ GUARDED_BY(mutex_);  // volume -> unit key
  // volume -> the lease that keeps it open while its engine runs (volume_entry.h).
  std::map<std::string, std::shared_ptr<Volume>> engine_leases_ GUARDED_BY(mutex_);
  // Volumes whose engine a `mirror break` is stopping (outside mutex_). A `mirror
  // start` or `break` touching them waits on settled_, so at most one engine per
  // volume exists and the break's final state is the one on disk.
  std::set<std::string> volumes_settling_ GUARDED_BY(mutex_);
  CondVar settled_;
  bool refusing_starts_ GUARDED_BY(mutex_) = false;  // set when stop() begins

  struct FailedVolume {
    std::string error;
    std::string group;                  // from volume.meta, when that was readable
    std::optional<MirrorState> state;   // when <name>.json was readable
  };
  std::map<std::string, FailedVolume> failed_volumes_ GUARDED_BY(mutex_);  // never in volumes_
  // Mirror units that were running but were not resumed at start: unit -> why.
  std::map<std::string, std::string> blocked_units_ GUARDED_BY(mutex_);
  struct ImportProgress {
    std::string source;
    std::string storage;  // the pool it goes to
    VolumeOptions options;
    std::atomic<uint64_t> done_bytes{0};
    uint64_t total_bytes = 0;
  };
  // Names reserved by running imports: not in volumes_ (so not exported) until done.
  std::map<std::string, std::shared_ptr<ImportProgress>> imports_ GUARDED_BY(mutex_);
  // Names a command holds while it moves the volume's directory (delete, release,
  // promote, failback): in neither volumes_ nor failed_volumes_, and not free for
  // create or import until the command is done. A failback ends by notifying settled_
  // (a `volume delete` waits for it: the volume may come back).
  enum class Reservation { kDeleting, kReleasing, kPromoting, kFailingBack };
  std::map<std::string, Reservation> reserved_ GUARDED_BY(mutex_);
  // "volume 'v' is being deleted", for a reserved name.
  std::string reserved_why_locked(const std::string& name) const REQUIRES(mutex_);
  // Names a `volume resize` is growing (outside mutex_): a `volume delete` of one
  // waits on settled_ until it is done.
  std::set<std::string> resizing_ GUARDED_BY(mutex_);

  // Null only with insecure = true (or a node with no peers and no TLS files).
  std::shared_ptr<const net::TlsContext> tls_;      // peers: TLS 1.3 only
  std::shared_ptr<const net::TlsContext> nbd_tls_;  // NBD STARTTLS: TLS 1.2 or 1.3
  // What NBD serves; the node withdraws a deleted volume's or replica's export from it.
  const std::shared_ptr<NodeCatalog> catalog_;
  std::unique_ptr<nbd::Server> nbd_server_;
  std::unique_ptr<Listener> peer_listener_;
  std::thread peer_accept_thread_;
  std::atomic<bool> stopping_{false};
  std::mutex peers_mutex_;
  std::condition_variable peers_done_;
  std::vector<repl::PeerSocket*> peer_sockets_;
  std::unique_ptr<ControlServer> control_;
  // With metrics_listen: the /metrics endpoint and the counters engines, receivers and
  // NBD report to. Created before any of them, destroyed after.
  std::unique_ptr<NodeMetrics> metrics_;
};

}  // namespace amirror::node
