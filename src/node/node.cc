// SPDX-License-Identifier: Apache-2.0
#include "node/node.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/assert.h"
#include "base/log.h"
#include "base/names.h"
#include "base/units.h"
#include "node/metrics.h"
#include "node/mirror_bookkeeping.h"
#include "nbd/server.h"
#include "node/node_catalog.h"

namespace amirror::node {

using nlohmann::json;

namespace {

constexpr size_t kMaxPeerConnections = 64;

std::string iso_time(int64_t unix_ms) {
  if (unix_ms <= 0) return "";
  std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[40];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03d}Z", text, static_cast<int>(unix_ms % 1000));
}

// The points a replica keeps, oldest first: the applied one (one point until
// `mirror start --keep N` exists).
// status's "open_files": descriptors the node has open and its RLIMIT_NOFILE (null:
// none or unknown); idle volumes rest to keep the first well below the second.
json open_files_json() {
  rlimit limit{};
  bool limited = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY;
  return {{"count", open_file_count()}, {"limit", limited ? json(uint64_t{limit.rlim_cur}) : json(nullptr)}};
}

json points_json(const std::vector<PointInfo>& kept) {
  json points = json::array();
  for (const PointInfo& point : kept) {
    points.push_back({{"cycle", point.cycle},
                      {"freeze_time", point.freeze_time_unix_ms > 0 ? json(iso_time(point.freeze_time_unix_ms)) : json(nullptr)}});
  }
  return points;
}



// [[peers]] storage: replicas of a peer with a pool other than the default go to
// <pool>/replicas (node/storage_pools.h).
std::map<std::string, ReplicaPlacement> replica_placement(const NodeConfig& config, const StoragePools& pools) {
  std::map<std::string, ReplicaPlacement> placements;
  for (const PeerConfig& peer : config.peers) {
    if (peer.storage == kDefaultStorageName) continue;
    const StoragePool* pool = pools.find(peer.storage);
    AMIRROR_ASSERT(pool != nullptr);  // the config names only known pools
    placements[peer.name] = {pool->path + "/replicas",
                             pool->dir ? "" : "storage '" + pool->name + "' (" + pool->path + "): " + pool->error};
  }
  return placements;
}

// The threads of this process (/proc/self/status), for status: with the scheduler's
// bounded pool it should not grow with the number of mirrors. 0 if unreadable.
uint64_t process_thread_count() {
  std::ifstream status_file("/proc/self/status");
  for (std::string line; std::getline(status_file, line);) {
    if (line.rfind("Threads:", 0) == 0) return std::strtoull(line.c_str() + 8, nullptr, 10);
  }
  return 0;
}

// One bucket per peer with a bandwidth_limit; peers without one are not in the map.
std::shared_ptr<const PeerBuckets> make_peer_buckets(const NodeConfig& config) {
  auto buckets = std::make_shared<PeerBuckets>();
  for (const PeerConfig& peer : config.peers) {
    if (peer.bandwidth_bytes_per_second != 0) {
      (*buckets)[peer.name] = std::make_shared<repl::TokenBucket>(peer.bandwidth_bytes_per_second);
    }
  }
  return buckets;
}

// "bandwidth" ("50MB/s", or "off" for no cap) and "compress" ("zstd", "off") of a
// mirror_start request; absent = unchanged.
Result<WireOptions> parse_wire_options(const json& request) {
  WireOptions options;
  if (auto bandwidth = request.find("bandwidth"); bandwidth != request.end()) {
    std::string text = bandwidth->is_string() ? bandwidth->get<std::string>() : bandwidth->dump();
    if (text == "off") {
      options.bandwidth_bytes_per_second = 0;
    } else {
      auto rate = parse_rate_bytes_per_second(text);
      if (!rate.ok()) return invalid_argument("--bandwidth: " + rate.status().message() + ", or off for no cap");
      if (rate.value() < repl::TokenBucket::kMinRateBytesPerSecond) {
        return invalid_argument("--bandwidth: " + text + " is below the lowest limit, " +
                                format_rate(repl::TokenBucket::kMinRateBytesPerSecond));
      }
      options.bandwidth_bytes_per_second = rate.value();
    }
  }
  if (auto compress = request.find("compress"); compress != request.end()) {
    auto compression = repl::parse_compression(compress->is_string() ? compress->get<std::string>() : compress->dump());
    if (!compression.ok()) return invalid_argument("--compress: " + compression.status().message());
    options.compression = compression.value();
  }
  return options;
}

}  // namespace

Node::Node(NodeConfig config, Env env)
    : config_(std::move(config)), env_(env), peer_buckets_(make_peer_buckets(config_)),
      catalog_(std::make_shared<NodeCatalog>(this)) {}

json Node::error_response(const Status& status) { return {{"ok", false}, {"error", status.message()}}; }

Node::~Node() { stop(); }

Result<std::unique_ptr<Node>> Node::start(const NodeConfig& config, Env env) {
  std::unique_ptr<Node> node(new Node(config, env));
  // Volumes in use keep their files open (volume_entry.h): use all the hard limit allows.
  const uint64_t open_file_limit = raise_open_file_limit();
  log::info("node", "open file limit", {{"RLIMIT_NOFILE", open_file_limit}});
  if (config.has_tls()) {
    auto tls = net::TlsContext::load(config.tls);
    if (!tls.ok()) return tls.status().with_context("[tls]");
    node->tls_ = std::move(tls).value();
    // The same files for NBD, whose specification requires servers to offer TLS 1.2.
    auto nbd_tls = net::TlsContext::load(config.tls, net::TlsVersions::k12AndLater);
    if (!nbd_tls.ok()) return nbd_tls.status().with_context("[tls]");
    node->nbd_tls_ = std::move(nbd_tls).value();
  }
  AMIRROR_RETURN_IF_ERROR(node->open_everything());
  // Before the listeners: a `mirror start` may come as soon as the control socket answers.
  node->scheduler_ = std::make_unique<EngineScheduler>(*env.clock, *env.threads, config.workers);
  AMIRROR_RETURN_IF_ERROR(node->start_listeners());
  AMIRROR_RETURN_IF_ERROR(node->resume_mirrors());
  return node;
}

// Mirrors that were running before the restart resume. The control socket already
// answers, so this holds mutex_ like any `mirror start`; a unit that such a start got
// to first is left to it.
Status Node::resume_mirrors() {
  MutexLock lock(mutex_);
  std::map<std::string, std::vector<std::shared_ptr<VolumeEntry>>> units;
  for (const auto& [name, entry] : volumes_) {
    if (entry->state.running && !unit_of_volume_.contains(name)) units[entry->state.unit].push_back(entry);
  }
  for (auto& [unit, members] : units) {
    if (std::string why = unit_blocked_reason(unit); !why.empty()) {
      log::warn("node", "mirror not resumed", {{"unit", unit}, {"reason", why}});
      blocked_units_[unit] = why;
      continue;
    }
    const MirrorState& state = members.front()->state;
    // A member that cannot be opened now (e.g. over the open file limit) blocks only
    // its own mirror; status says why.
    if (Status started = start_mirror(unit, members, state.targets, state.interval_ms, state.keep, false);
        !started.ok()) {
      log::error("node", "mirror not resumed", {{"unit", unit}, {"reason", started.message()}});
      blocked_units_[unit] = started.message();
    }
  }
  return Status();
}

Status Node::open_everything() {
  FileSystem& fs = *env_.fs;
  AMIRROR_ASSIGN_OR_RETURN(pools_, StoragePools::open(fs, config_));
  mirrors_dir_ = config_.data_dir + "/mirrors";
  AMIRROR_RETURN_IF_ERROR(fs.make_dir(mirrors_dir_));
  AMIRROR_ASSIGN_OR_RETURN(auto located, pools_->load_volumes());
  MutexLock lock(mutex_);
  for (const auto& [name, pool] : located) open_volume_entry(fs, name);
  replicas_ = std::make_unique<ReplicaRegistry>(fs, config_.data_dir + "/replicas", replica_placement(config_, *pools_));
  std::map<std::string, std::string> device_dirs;
  for (const PeerConfig& peer : config_.peers) {
    if (!peer.replica_device_dir.empty()) device_dirs[peer.name] = peer.replica_device_dir;
  }
  replicas_->set_device_dirs(std::move(device_dirs));
  replicas_->set_before_create([this](const std::string& peer, const repl::OpenReplica& open, const std::string& dir) {
    return before_create_replica(peer, open, dir);
  });
  replicas_->set_switchover(
      [this](const std::string& peer, const repl::Switchover& request) { return accept_switchover(peer, request); });
  return replicas_->load();
}

void Node::open_volume_entry(FileSystem& fs, const std::string& name) {
  // Volumes open one at a time here (each rests before the next opens), so the check
  // is whether one more fits: the ones kept open (adopted) may already fill the limit.
  Status files = check_open_files("volume '" + name + "'", kFilesPerOpenVolume);
  auto volume = files.ok() ? volume_opener(name)() : Result<std::unique_ptr<Volume>>(files);
  std::string state_path = mirrors_dir_ + "/" + name + ".json";
  Result<std::optional<MirrorState>> state = [&]() -> Result<std::optional<MirrorState>> {
    AMIRROR_ASSIGN_OR_RETURN(bool has_state, fs.exists(state_path));
    if (!has_state) return std::optional<MirrorState>();
    AMIRROR_ASSIGN_OR_RETURN(MirrorState loaded, load_mirror_state(fs, state_path));
    return std::optional<MirrorState>(std::move(loaded));
  }();
  if (volume.ok() && state.ok()) {
    // Opened for recovery; it rests until used, unless adopted (volume_entry.h).
    auto entry = std::make_shared<VolumeEntry>(name, std::move(volume).value(), volume_opener(name));
    if (!entry->volume->adopted_path().empty()) entry->keep_open();
    entry->settle();
    if (state.value()) entry->state = std::move(*state.value());
    volumes_[name] = std::move(entry);
    return;
  }
  // Keep what is known (its group, its mirror's targets): status shows it, and a
  // mirror it belongs to is not resumed without it.
  FailedVolume failed;
  failed.error = !volume.ok() ? volume.status().message() : "mirror state " + state.status().message();
  if (volume.ok()) failed.group = volume.value()->group();
  if (state.ok()) failed.state = state.value();
  // With volume.meta unreadable, a group mirror's state still names the group.
  const std::string group_unit = "group:";
  if (failed.group.empty() && failed.state && failed.state->unit.starts_with(group_unit)) {
    failed.group = failed.state->unit.substr(group_unit.size());
  }
  log::error("node", "volume failed to open; not served", {{"volume", name}, {"error", failed.error}});
  failed_volumes_[name] = std::move(failed);
}

VolumeEntry::Opener Node::volume_opener(const std::string& name) const {
  return [pools = pools_.get(), name]() -> Result<std::unique_ptr<Volume>> {
    std::string pool_failed;
    DataDir* pool = pools->dir_of(name, &pool_failed);
    if (pool == nullptr) return Status(ErrorCode::kIo, pool_failed);
    return pool->open_volume(name);
  };
}

std::string Node::unit_blocked_reason(const std::string& unit_key) const {
  for (const auto& [name, failed] : failed_volumes_) {
    bool member = (failed.state && failed.state->unit == unit_key) ||
                  (!failed.group.empty() && unit_key == "group:" + failed.group);
    if (member) return "its volume '" + name + "' failed to open: " + failed.error;
  }
  return "";
}

Status Node::start_listeners() {
  if (!config_.metrics_listen.empty()) {
    AMIRROR_ASSIGN_OR_RETURN(metrics_, NodeMetrics::start({config_.metrics_listen, [this] {
                                                             return handle_control(R"({"command": "status"})");
                                                           }}));
    log::info("node", "serving metrics", {{"address", config_.metrics_listen}, {"port", metrics_->port()}});
  }
  if (!config_.nbd_socket.empty() || !config_.nbd_listen.empty()) {
    nbd::ServerOptions options;
    options.unix_socket_path = config_.nbd_socket;
    options.tcp_address = config_.nbd_listen;
    options.tls = nbd_tls_;
    options.tls_mode = config_.nbd_tls;
    options.quiet = true;
    if (metrics_) options.observer = metrics_->nbd_observer();
    AMIRROR_ASSIGN_OR_RETURN(nbd_server_, nbd::Server::start(options, catalog_));
  }
  if (!config_.listen.empty()) {
    AMIRROR_ASSIGN_OR_RETURN(peer_listener_, env_.network->listen(config_.listen));
    peer_accept_thread_ = env_.threads->start([this] { peer_accept_loop(); });
  }
  if (config_.control_socket.empty()) return Status();  // in-process tests call handle_control
  AMIRROR_ASSIGN_OR_RETURN(control_, ControlServer::start(config_.control_socket, *env_.threads,
                                                          [this](const std::string& request) { return handle_control(request); }));
  return Status();
}

void Node::peer_accept_loop() {
  while (!stopping_.load()) {
    auto accepted = peer_listener_->accept();
    if (!accepted.ok()) {
      if (accepted.status().code() == ErrorCode::kCancelled) return;
      continue;
    }
    std::unique_lock lock(peers_mutex_);
    if (peer_sockets_.size() >= kMaxPeerConnections) {
      ::close(accepted.value().fd);  // over the bound: dropped
      continue;
    }
    auto* socket = new repl::PeerSocket(std::move(accepted).value());
    peer_sockets_.push_back(socket);
    env_.threads->start([this, socket] {
      serve_peer_connection(*socket, config_, tls_.get(), *replicas_, stopping_, metrics_.get());
      std::lock_guard done_lock(peers_mutex_);
      std::erase(peer_sockets_, socket);
      delete socket;
      peers_done_.notify_all();
    }).detach();
  }
}

void Node::stop() {
  if (stopping_.exchange(true)) return;
  // First: a scrape reads the status, which must not race the teardown below. The
  // hooks stay until the node is destroyed: engines and connections report until stopped.
  if (metrics_) metrics_->stop_endpoint();
  std::map<std::string, std::shared_ptr<MirrorEngine>> engines;
  {
    MutexLock lock(mutex_);
    refusing_starts_ = true;  // from here on no engine is created: each one is in `engines`
    engines = engines_;
  }
  // Engines before the control server: stopping one ends any `mirror sync` waiting on
  // it, and the control server's stop waits for every handler still running (a
  // `mirror break` finishing its state write, a start being refused).
  for (auto& [unit, engine] : engines) engine->stop();
  if (control_) control_->stop();
  // After every engine: each has let go of its task (a `mirror break` still stopping
  // one had, once that engine's stop() above returned).
  if (scheduler_) scheduler_->stop();
  if (peer_listener_) peer_listener_->close();
  if (peer_accept_thread_.joinable()) peer_accept_thread_.join();
  {
    std::unique_lock lock(peers_mutex_);
    for (repl::PeerSocket* socket : peer_sockets_) socket->shutdown();
    peers_done_.wait(lock, [&] { return peer_sockets_.empty(); });
  }
  if (nbd_server_) nbd_server_->stop();
  MutexLock lock(mutex_);
  for (auto& [name, entry] : volumes_) {
    std::shared_ptr<Volume> volume = entry->lease_if_open();
    if (volume == nullptr) continue;  // at rest: flushed when it went to rest
    Status status = volume->flush();
    if (!status.ok()) log::error("node", "flush at shutdown failed", {{"volume", name}, {"error", status.to_string()}});
  }
}

std::vector<std::string> Node::export_names() const {
  std::vector<std::string> names;
  {
    MutexLock lock(mutex_);
    for (const auto& [name, entry] : volumes_) names.push_back(name);
  }
  for (const auto& replica : replicas_->all()) {
    std::string name = replica->source_node() + "/" + replica->volume();
    names.push_back(name);
    // Older kept points by number; the newest is NAME itself (and NAME@newest too).
    for (const PointInfo& point : replica->points()) names.push_back(name + "@" + std::to_string(point.cycle));
  }
  return names;
}

std::shared_ptr<VolumeEntry> Node::find_volume(const std::string& name) const {
  MutexLock lock(mutex_);
  auto it = volumes_.find(name);
  return it == volumes_.end() ? nullptr : it->second;
}

std::shared_ptr<repl::Replica> Node::find_replica(const std::string& source, const std::string& volume) const {
  return replicas_->find(source, volume);
}

bool Node::replica_in_use(const std::string& source, const std::string& volume) const {
  return replicas_->in_use(source + "/" + volume);
}

std::string Node::unavailable_reason(const std::string& export_name) const {
  for (const FailedReplica& failed : replicas_->failed()) {
    if (failed.source + "/" + failed.volume == export_name) return "replica failed to open: " + failed.error;
  }
  MutexLock lock(mutex_);
  if (auto failed = failed_volumes_.find(export_name); failed != failed_volumes_.end()) {
    return "volume failed to open: " + failed->second.error;
  }
  if (imports_.count(export_name)) return "volume is still being imported";
  // Known but at rest, and could not be opened for the client (node_catalog.cc).
  if (auto entry = volumes_.find(export_name); entry != volumes_.end() && !entry->second->is_open()) {
    if (Status files = check_open_files("volume '" + export_name + "'", kFilesPerOpenVolume); !files.ok()) {
      return files.message();
    }
  }
  if (size_t at = export_name.rfind('@'); at != std::string::npos) {
    auto parsed = parse_replica_name(export_name.substr(0, at));
    if (auto replica = parsed.ok() ? replicas_->find(parsed->first, parsed->second) : nullptr) {
      std::string kept;
      for (const PointInfo& point : replica->points()) kept += (kept.empty() ? "" : ", ") + std::to_string(point.cycle);
      return "point " + export_name.substr(at + 1) + " is not kept (kept: " + (kept.empty() ? "none" : kept) +
             "; see `amirror replica points " + export_name.substr(0, at) + "`)";
    }
  }
  return "";
}

std::vector<std::string> Node::running_units() const {
  MutexLock lock(mutex_);
  std::vector<std::string> units;
  for (const auto& [unit, engine] : engines_) units.push_back(unit);
  return units;
}

Result<std::vector<std::shared_ptr<VolumeEntry>>> Node::resolve_unit(const std::string& volume, const std::string& group,
                                                                     std::string& unit_key) {
  if (volume.empty() == group.empty()) return invalid_argument("name exactly one of a volume or --group GROUP");
  AMIRROR_RETURN_IF_ERROR(check_unit_available(volume, group));
  std::vector<std::shared_ptr<VolumeEntry>> members;
  if (!volume.empty()) {
    AMIRROR_RETURN_IF_ERROR(validate_name(volume, "volume name"));
    auto it = volumes_.find(volume);
    if (it == volumes_.end()) return not_found("no volume named '" + volume + "' (see `amirror volume list`)");
    members.push_back(it->second);
    unit_key = "volume:" + volume;
  } else {
    AMIRROR_RETURN_IF_ERROR(validate_name(group, "group name"));
    for (const auto& [name, entry] : volumes_) {
      if (entry->facts().group == group) members.push_back(entry);
    }
    if (members.empty()) return not_found("no volume is in group '" + group + "'");
    unit_key = "group:" + group;
  }
  return members;
}

Status Node::start_mirror(const std::string& unit_key, std::vector<std::shared_ptr<VolumeEntry>> members,
                          std::vector<std::string> targets, uint64_t interval_ms, uint32_t keep, bool persist,
                          const WireOptions& wire) {
  // Also for a peer's switchover, which no control handler checks: once stop() began,
  // an engine made now would outlive the scheduler that runs it.
  if (refusing_starts_) return Status(ErrorCode::kCancelled, "node " + config_.name + " is shutting down");
  // The engine reads its members' volumes for as long as it runs: they stay open
  // until break_mirror has stopped it.
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::shared_ptr<Volume>> leases, lease_all(members));
  std::map<std::string, MirrorState> states;
  for (const auto& entry : members) {
    MirrorState state = entry->state;
    state.unit = unit_key;
    set_targets(state, targets);
    state.interval_ms = interval_ms;
    if (keep != 0) state.keep = keep;
    wire.apply_to(state);
    state.running = true;
    Status saved = persist ? save_mirror_state(*env_.fs, mirrors_dir_, entry->name, state) : Status();
    if (!saved.ok()) {
      // All or none: a group whose first members say running would resume without
      // the rest after a restart. Best effort; the error below is what matters.
      for (const auto& [name, ignored] : states) {
        (void)save_mirror_state(*env_.fs, mirrors_dir_, name, volumes_.at(name)->state);
      }
      return saved;
    }
    states[entry->name] = std::move(state);
  }
  for (const auto& entry : members) {
    entry->state = states.at(entry->name);
    unit_of_volume_[entry->name] = unit_key;
  }
  auto engine = std::make_shared<MirrorEngine>(EngineContext{env_, &config_, mirrors_dir_, tls_, metrics_.get(), peer_buckets_, &transfer_slots_, scheduler_.get()},
                                               members, std::move(states));
  engine->start();
  engines_[unit_key] = std::move(engine);
  for (size_t i = 0; i < members.size(); ++i) engine_leases_[members[i]->name] = std::move(leases[i]);
  return Status();
}

Result<std::shared_ptr<MirrorEngine>> Node::find_engine_locked(const std::vector<std::shared_ptr<VolumeEntry>>& members,
                                                               const std::string& unit_key) {
  auto running = unit_of_volume_.find(members.front()->name);
  auto engine = running == unit_of_volume_.end() ? engines_.end() : engines_.find(running->second);
  if (engine == engines_.end()) {
    return not_found(unit_key.substr(unit_key.find(':') + 1) + " is not being mirrored; `amirror mirror start` it first");
  }
  return engine->second;
}

void Node::wait_until_settled_locked(MutexLock& lock, const std::vector<std::shared_ptr<VolumeEntry>>& members) {
  // Bounded by the engine's stop, which aborts its transfers.
  while (true) {
    bool settling = false;
    for (const auto& entry : members) settling = settling || volumes_settling_.contains(entry->name);
    if (!settling) return;
    settled_.wait(lock);
  }
}

const std::map<std::string, Node::ControlHandler>& Node::control_handlers() {
  static const std::map<std::string, ControlHandler> handlers = {
      {"status", &Node::control_status},
      {"volume_list", &Node::control_volume_list},
      {"replica_list", &Node::control_replica_list},
      {"replica_points", &Node::control_replica_points},
      {"volume_create", &Node::control_volume_create},
      {"volume_import", &Node::control_volume_create},
      {"volume_resize", &Node::control_volume_resize},
      {"mirror_start", &Node::control_mirror_start},
      {"mirror_break", &Node::control_mirror_break},
      {"mirror_sync", &Node::control_mirror_sync},
      {"mirror_verify", &Node::control_mirror_verify},
      {"volume_delete", &Node::control_volume_delete},
      {"volume_adopt", &Node::control_volume_adopt},
      {"volume_release", &Node::control_volume_release},
      {"replica_delete", &Node::control_replica_delete},
      {"replica_promote", &Node::control_replica_promote},
      {"volume_demote", &Node::control_volume_demote},
      {"mirror_switchover", &Node::control_mirror_switchover},
  };
  return handlers;
}

std::string Node::handle_control(const std::string& request_text) {
  json request;
  try {
    request = json::parse(request_text);
  } catch (const json::exception&) {
    return error_response(invalid_argument("control request is not valid JSON")).dump();
  }
  try {
    std::string command = request.value("command", "");
    auto handler = control_handlers().find(command);
    if (handler == control_handlers().end()) {
      return error_response(invalid_argument("unknown command '" + command + "'")).dump();
    }
    return (this->*handler->second)(request);
  } catch (const json::exception& error) {
    return error_response(invalid_argument(std::string("bad control request: ") + error.what())).dump();
  }
}

void Node::list_unavailable_volumes(json& volumes) const {
  for (json& item : volumes) item["state"] = "ok";
  // Every field a healthy volume has, null where unknown, so tooling need not special-case.
  for (const auto& [name, failed] : failed_volumes_) {
    json mirrors = json::array();
    if (failed.state) {
      for (const auto& [target, state] : failed.state->target_states) {
        mirrors.push_back({{"target", target}, {"state", "stopped"}, {"applied_cycle", state.applied_cycle},
                           {"applied_freeze_time", state.applied_freeze_time_unix_ms > 0 ? json(iso_time(state.applied_freeze_time_unix_ms)) : json(nullptr)},
                           {"lag_seconds", nullptr}, {"lag_alert", false}, {"bytes_pending", 0}, {"bytes_sent", state.bytes_sent},
                           {"last_error", "volume failed: " + failed.error}});
      }
    }
    volumes.push_back({{"name", name}, {"state", "failed"}, {"error", failed.error}, {"storage", pools_->pool_of(name)},
                       {"size_bytes", nullptr},
                       {"chunk_size_bytes", nullptr}, {"group", failed.group.empty() ? json(nullptr) : json(failed.group)},
                       {"cycle", nullptr}, {"mirrors", mirrors}});
  }
  for (const auto& [name, progress] : imports_) {
    const VolumeOptions& options = progress->options;
    volumes.push_back({{"name", name}, {"state", "importing"}, {"storage", progress->storage}, {"size_bytes", options.size_bytes},
                       {"chunk_size_bytes", options.chunk_size_bytes},
                       {"group", options.group.empty() ? json(nullptr) : json(options.group)}, {"cycle", 0},
                       {"mirrors", json::array()},
                       {"import", {{"source", progress->source}, {"done_bytes", progress->done_bytes.load()},
                                   {"total_bytes", progress->total_bytes}}}});
  }
}

json Node::replicas_json() const {
  json replicas = json::array();
  // A group commit moves all of a group's members at once: never show it halfway.
  std::shared_lock gate(replicas_->commit_gate());
  for (const auto& replica : replicas_->all()) {
    repl::ReplicaState state = replica->state();
    const std::string activity = replica->activity();
    std::optional<uint64_t> image_cycle = replica->image_cycle();
    replicas.push_back({{"source", replica->source_node()},
                        {"volume", replica->volume()},
                        {"size_bytes", replica->size_bytes()},
                        {"applied_cycle", state.applied_cycle},
                        {"freeze_time", state.applied_freeze_time_unix_ms > 0 ? json(iso_time(state.applied_freeze_time_unix_ms)) : json(nullptr)},
                        {"image_path", replica->image_path()},
                        {"state", activity},
                        {"role", "replica"},
                        {"keep", replica->keep()},
                        // The raw file holds the oldest kept point except while a merge rewrites it.
                        {"image_cycle", image_cycle ? json(*image_cycle) : json(nullptr)},
                        {"points", points_json(replica->points())}});
  }
  // Every field a healthy replica has, null where unknown, so tooling need not special-case.
  for (const FailedReplica& failed : replicas_->failed()) {
    replicas.push_back({{"source", failed.source}, {"volume", failed.volume}, {"size_bytes", nullptr},
                        {"applied_cycle", nullptr}, {"freeze_time", nullptr},
                        {"image_path", failed.dir + "/base.img"}, {"state", "failed"}, {"error", failed.error},
                        {"role", "replica"}, {"image_cycle", nullptr}, {"points", nullptr}});
  }
  return replicas;
}

std::string Node::control_status(const json&) { return status_json(); }

// replica_points {"replica": "SOURCE/VOLUME"}: {"points": [{"cycle", "freeze_time"}]}.
std::string Node::control_replica_points(const json& request) {
  const std::string name = request.value("replica", "");
  auto parsed = parse_replica_name(name);
  if (!parsed.ok()) return error_response(parsed.status()).dump();
  const auto& [source, volume] = parsed.value();
  for (const FailedReplica& failed : replicas_->failed()) {
    if (failed.source == source && failed.volume == volume) {
      return error_response(Status(ErrorCode::kIo, "replica " + name + " failed to open: " + failed.error)).dump();
    }
  }
  auto replica = replicas_->find(source, volume);
  if (replica == nullptr) {
    return error_response(not_found("no replica " + name + " on node " + config_.name + " (`replica list` shows what is here)")).dump();
  }
  return json{{"ok", true}, {"replica", name}, {"points", points_json(replica->points())}}.dump();
}

// replica_list: {"replicas": [...]}, the same objects as status's "replicas".
std::string Node::control_replica_list(const json&) { return json{{"ok", true}, {"replicas", replicas_json()}}.dump(); }

std::string Node::control_volume_list(const json&) {
  MutexLock lock(mutex_);
  json volumes = json::array();
  for (const auto& [name, entry] : volumes_) {
    const VolumeFacts facts = entry->facts();
    volumes.push_back({{"name", name},
                       {"size_bytes", facts.size_bytes},
                       {"chunk_size_bytes", facts.chunk_size_bytes},
                       {"role", volume_role(facts)},
                       {"storage", pools_->pool_of(name)},
                       {"group", facts.group},
                       {"cycle", facts.cycle},
                       {"open", entry->is_open()}});
  }
  list_unavailable_volumes(volumes);
  return json{{"ok", true}, {"volumes", volumes}}.dump();
}

// volume_create and volume_import (node_volumes.cc).
std::string Node::control_volume_create(const json& request) { return create_or_import_volume(request); }

std::string Node::control_mirror_start(const json& request) {
  MutexLock lock(mutex_);
  std::string unit_key;
  auto members = resolve_unit(request.value("volume", ""), request.value("group", ""), unit_key);
  if (!members.ok()) return error_response(members.status()).dump();
  std::vector<std::string> targets = request.value("targets", std::vector<std::string>{});
  if (targets.empty()) return error_response(invalid_argument("name at least one target with --to PEER")).dump();
  for (const std::string& target : targets) {
    if (config_.find_peer(target) == nullptr) {
      return error_response(not_found("unknown peer '" + target + "'; add it under [[peers]] in " + config_.name +
                                      "'s config")).dump();
    }
  }
  uint64_t interval_ms = request.value("interval_ms", config_.default_interval_ms);
  if (interval_ms < 100) return error_response(invalid_argument("interval must be at least 100ms")).dump();
  // Absent: as before (1 for a new mirror). Given, it is 1..kMaxKeep: 0 must not pass as
  // "absent", nor a negative or huge number wrap into range on the way to uint32_t.
  uint32_t keep = 0;
  if (const auto asked = request.find("keep"); asked != request.end()) {
    if (!asked->is_number_unsigned() || asked->get<uint64_t>() == 0 || asked->get<uint64_t>() > repl::kMaxKeep) {
      return error_response(invalid_argument("--keep must be a whole number from 1 to " +
                                             std::to_string(repl::kMaxKeep) + ", not " + asked->dump())).dump();
    }
    keep = asked->get<uint32_t>();
  }
  auto wire = parse_wire_options(request);
  if (!wire.ok()) return error_response(wire.status()).dump();
  wait_until_settled_locked(lock, members.value());  // a break of these volumes finishes first
  if (refusing_starts_) {
    return error_response(Status(ErrorCode::kCancelled, "node " + config_.name +
                                                            " is shutting down; start the mirror once it runs again"))
        .dump();
  }
  for (const auto& entry : members.value()) {
    auto running = unit_of_volume_.find(entry->name);
    if (running != unit_of_volume_.end() && engines_.contains(running->second)) {
      if (running->second == unit_key && !wire.value().empty()) return restart_running_mirror(request, unit_key, wire.value());
      return error_response(Status(ErrorCode::kAlreadyExists, "volume '" + entry->name + "' is already mirrored (" +
                                                                  running->second + "); `mirror break` it first")).dump();
    }
  }
  Status status = start_mirror(unit_key, members.value(), targets, interval_ms, keep, true, wire.value());
  if (!status.ok()) return error_response(status).dump();
  return json{{"ok", true}, {"unit", unit_key}}.dump();
}

std::string Node::restart_running_mirror(const json& request, const std::string& unit_key, const WireOptions& wire) {
  MirrorEngine& engine = *engines_.at(unit_key);
  std::vector<std::string> targets = request.value("targets", std::vector<std::string>{});
  std::vector<std::string> running_targets = engine.target_names();
  std::sort(targets.begin(), targets.end());
  std::sort(running_targets.begin(), running_targets.end());
  bool same_interval = !request.contains("interval_ms") ||
                       request["interval_ms"] == static_cast<uint64_t>(engine.interval().count());
  bool same_keep = !request.contains("keep") || request["keep"] == engine.keep();
  if (targets != running_targets || !same_interval || !same_keep) {
    return error_response(Status(ErrorCode::kAlreadyExists,
                                 unit_key + " is already mirrored: on a running mirror only --bandwidth and "
                                            "--compress change (with the same --to); `mirror break` it first to change "
                                            "targets, interval or keep")).dump();
  }
  Status status = engine.set_wire_options(wire);
  if (!status.ok()) return error_response(status).dump();
  return json{{"ok", true}, {"unit", unit_key}, {"updated", true}}.dump();
}

std::string Node::control_mirror_sync(const json& request) {
  std::shared_ptr<MirrorEngine> engine;  // alive while we wait, even if a break stops it
  {
    MutexLock lock(mutex_);
    std::string unit_key;
    auto members = resolve_unit(request.value("volume", ""), request.value("group", ""), unit_key);
    if (!members.ok()) return error_response(members.status()).dump();
    auto found = find_engine_locked(members.value(), unit_key);
    if (!found.ok()) return error_response(found.status()).dump();
    engine = std::move(found).value();
  }
  Status status = engine->sync(request.value("timeout_ms", kDefaultSyncTimeoutMs));
  if (!status.ok()) return error_response(status).dump();
  return json{{"ok", true}}.dump();
}

std::string Node::control_mirror_break(const json& request) {
  Status status = break_mirror(request.value("volume", ""), request.value("group", ""));
  if (!status.ok()) return error_response(status).dump();
  return json{{"ok", true}}.dump();
}

// The engine stays in engines_ while it stops, its volumes marked settling: a start or
// break of them waits, and status keeps showing the engine's view until the final
// state is both on disk and in the node's copy.
Status Node::break_mirror(const std::string& volume, const std::string& group) {
  MutexLock lock(mutex_);
  std::string unit_key;
  auto members = resolve_unit(volume, group, unit_key);
  if (!members.ok()) return members.status();
  wait_until_settled_locked(lock, members.value());  // a concurrent break of these goes first
  auto found = find_engine_locked(members.value(), unit_key);
  if (!found.ok()) return found.status();
  std::shared_ptr<MirrorEngine> engine = std::move(found).value();
  std::string running_unit = unit_of_volume_.at(members.value().front()->name);
  std::vector<std::shared_ptr<VolumeEntry>> unit_members;
  for (const auto& [name, entry] : volumes_) {
    auto unit = unit_of_volume_.find(name);
    if (unit != unit_of_volume_.end() && unit->second == running_unit) unit_members.push_back(entry);
  }
  for (const auto& entry : unit_members) volumes_settling_.insert(entry->name);
  lock.unlock();

  engine->stop();  // slow: aborts transfers, merges layers; status() meanwhile still answers
  std::map<std::string, MirrorState> final_states = engine->states();
  Status saved;
  for (auto& [member, state] : final_states) {
    state.running = false;
    Status status = save_mirror_state(*env_.fs, mirrors_dir_, member, state);
    if (saved.ok()) saved = status;
  }

  lock.lock();
  for (const auto& entry : unit_members) {
    auto state = final_states.find(entry->name);
    if (state != final_states.end()) entry->state = state->second;
    unit_of_volume_.erase(entry->name);
    volumes_settling_.erase(entry->name);
    engine_leases_.erase(entry->name);  // stopped: the volume may rest
  }
  engines_.erase(running_unit);
  settled_.notify_all();
  if (!saved.ok()) {
    return Status(saved.code(), "the mirror of " + unit_key.substr(unit_key.find(':') + 1) +
                                    " stopped, but its state file could not be updated (" + saved.message() +
                                    "): it resumes when the node restarts");
  }
  return Status();
}

std::string Node::status_json() {
  MutexLock lock(mutex_);
  json volumes = json::array();
  int64_t now_ms = env_.clock->unix_ms();
  for (const auto& [name, entry] : volumes_) {
    std::vector<MirrorStatus> mirrors;
    auto unit = unit_of_volume_.find(name);
    if (unit != unit_of_volume_.end() && engines_.count(unit->second)) {
      for (MirrorStatus& status : engines_[unit->second]->status()) {
        if (status.volume == name) mirrors.push_back(std::move(status));
      }
    } else {
      for (const auto& [target, state] : entry->state.target_states) {
        MirrorStatus status;
        status.volume = name;
        status.target = target;
        status.state = "stopped";
        status.applied_cycle = state.applied_cycle;
        status.applied_freeze_time_unix_ms = state.applied_freeze_time_unix_ms;
        status.bytes_sent = state.bytes_sent;
        status.wire_bytes_sent = state.wire_bytes_sent;
        status.compression = entry->state.compression;
        if (auto blocked = blocked_units_.find(entry->state.unit); entry->state.running && blocked != blocked_units_.end()) {
          status.last_error = "not resumed at start: " + blocked->second;
        } else if (state.verify_differing_chunks > 0) {
          status.last_error = verify_differs_message(name, target, state);
        }
        mirrors.push_back(std::move(status));
      }
    }
    json mirror_list = json::array();
    for (const MirrorStatus& status : mirrors) {
      json item = {{"target", status.target},
                   {"state", status.state},
                   {"applied_cycle", status.applied_cycle},
                   {"applied_freeze_time", status.applied_freeze_time_unix_ms > 0 ? json(iso_time(status.applied_freeze_time_unix_ms)) : json(nullptr)},
                   {"lag_seconds", status.applied_freeze_time_unix_ms > 0 ? json((now_ms - status.applied_freeze_time_unix_ms) / 1000.0) : json(nullptr)},
                   // Over [node] lag_alert; a target that never applied a point has no lag yet.
                   {"lag_alert", config_.lag_alert_ms > 0 && status.applied_freeze_time_unix_ms > 0 &&
                                     now_ms - status.applied_freeze_time_unix_ms > static_cast<int64_t>(config_.lag_alert_ms)},
                   {"bytes_pending", status.bytes_pending},
                   {"bytes_sent", status.bytes_sent},
                   {"wire_bytes_sent", status.wire_bytes_sent},
                   {"compress", repl::compression_name(status.compression)},
                   {"bandwidth_limit_bytes_per_second",
                    status.bandwidth_limit_bytes_per_second > 0 ? json(status.bandwidth_limit_bytes_per_second) : json(nullptr)},
                   {"last_error", status.last_error.empty() ? json(nullptr) : json(status.last_error)}};
      if (status.copy_total_bytes > 0) {
        item["copy"] = {{"cycle", status.copy_cycle},
                        {"done_bytes", status.copy_done_bytes},
                        {"total_bytes", status.copy_total_bytes},
                        {"rate_bytes_per_second", status.copy_rate_bytes_per_second}};
      }
      mirror_list.push_back(std::move(item));
    }
    // Live while open, as it went to rest otherwise (a resting volume does not change).
    const VolumeFacts facts = entry->facts();
    json layers = json::array();
    for (const LayerInfo& layer : facts.layers) {
      layers.push_back({{"id", layer.id}, {"frozen", layer.frozen}, {"chunks", layer.chunk_count}, {"data_bytes", layer.data_bytes}});
    }
    volumes.push_back({{"name", name},
                       {"size_bytes", facts.size_bytes},
                       {"chunk_size_bytes", facts.chunk_size_bytes},
                       {"role", volume_role(facts)},
                       {"storage", pools_->pool_of(name)},
                       {"group", facts.group.empty() ? json(nullptr) : json(facts.group)},
                       {"cycle", facts.cycle},
                       {"base_cycle", facts.base_cycle},
                       {"last_freeze_stall_us", facts.last_freeze_stall_us},
                       {"layers", layers},
                       {"spare_bytes", facts.spare_bytes},
                       {"open", entry->is_open()},
                       {"mirrors", mirror_list}});
    // `volume adopt`: the file or device that is the base in place.
    if (!facts.adopted_path.empty()) volumes.back()["adopted_path"] = facts.adopted_path;
  }
  list_unavailable_volumes(volumes);
  json replicas = replicas_json();
  // How replicas travel: "tls" (TLS 1.3, both ends authenticated) or "insecure".
  json transport = {{"mode", tls_ != nullptr ? "tls" : config_.insecure ? "insecure" : "none"}};
  if (tls_ != nullptr) {
    transport["certificate"] = tls_->subject();
    transport["certificate_expires_unix_s"] = tls_->not_after_unix_s();
  }
  json lag_alert_seconds = config_.lag_alert_ms > 0 ? json(config_.lag_alert_ms / 1000.0) : json(nullptr);
  return json{{"ok", true},         {"node", config_.name},     {"peer_transport", transport},
              {"lag_alert_seconds", lag_alert_seconds}, {"volumes", volumes}, {"replicas", replicas},
              {"storage", storage_json()}, {"workers", config_.workers}, {"threads", process_thread_count()},
              {"open_files", open_files_json()}}.dump();
}

}  // namespace amirror::node
