// SPDX-License-Identifier: Apache-2.0
// `mirror verify` on the source node: the control handler, and the verify of each
// target over its own connection (repl::VerifySession wired to a socket).
//
// Which point is compared, and why it stays put (docs/ARCHITECTURE.md, "Verify"):
//  1. The mirror's engine freezes now and holds: no freeze starts until the verify
//     ends (MirrorEngine::begin_verify_hold). Transfers go on, so each chosen target
//     catches up to the held point s; merges go on too, but fold only layers <= s,
//     which Volume::read_frozen(s) survives.
//  2. Each target that applied s is compared at s, all of them at once (one thread
//     each): its replica must be idle at s, and the source reads s. A target that did
//     not get s (unreachable, timed out) is reported with the reason.
//  3. What a target's comparison found is recorded in the mirror state
//     (verify_differing_chunks), so status shows "differs" rather than idle until a
//     later verify finds it equal or a full copy replaces it.
//  4. The hold ends; the engine freezes again on its schedule. Status shows the held
//     targets as "verifying" meanwhile.
// A result is only reported if the volume's newest point was still s at the end
// (MirrorEngine::still_at): a `mirror break` and a new start during the verify void it.
//
// Request: {"command": "mirror_verify", "volume" | "group", "to": PEER (optional: all
// targets), "repair": bool, "timeout_ms": wait for the point (default 5 min)}.
// Answer: {"ok": true, "unit", "equal": bool, "results": [one per target and volume]}
// (fields in README.md, "mirror verify"); {"ok": false, "error"} when nothing could be
// started (unknown volume or peer, not mirrored, no freeze in time).
#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/names.h"
#include "node/mirror_bookkeeping.h"
#include "node/node.h"
#include "repl/verify_session.h"

namespace amirror::node {

using nlohmann::json;

namespace {

constexpr uint64_t kDefaultVerifyTimeoutMs = 300'000;
// Ranges listed per target and volume in the answer, which travels as one control line
// (kMaxControlLineBytes); the counts are always complete.
constexpr size_t kMaxReportedRanges = 100;

// What the verify of one volume on one target found.
struct VolumeVerify {
  std::shared_ptr<VolumeEntry> entry;
  uint64_t cycle = 0;
  std::string error;  // not empty: could not be verified, and why
  repl::VerifyOutcome outcome;
  uint64_t wire_bytes_sent = 0;  // on the verify connection, for this volume
  uint64_t wire_bytes_received = 0;
};

struct TargetVerify {
  std::string target;
  std::vector<VolumeVerify> volumes;
};

// Feeds the session frames and lets it work until it is idle again.
Status drive(repl::PeerSocket& socket, repl::VerifySession& session) {
  while (session.busy()) {
    if (session.needs_frame()) {
      AMIRROR_ASSIGN_OR_RETURN(repl::Frame frame, socket.receive_frame());
      AMIRROR_RETURN_IF_ERROR(session.on_frame(frame));
    } else {
      AMIRROR_RETURN_IF_ERROR(session.advance());
    }
  }
  return Status();
}

// One connection to the target; reopened after an error (the target closes after ERROR),
// so one volume's refusal does not keep the others of a group from being verified.
class TargetConnection {
 public:
  TargetConnection(MirrorEngine& engine, std::string source_node, std::string target)
      : engine_(engine), source_node_(std::move(source_node)), target_(std::move(target)) {}
  ~TargetConnection() { close(); }

  Result<repl::VerifySession*> session() {
    if (session_ != nullptr) return session_.get();
    AMIRROR_ASSIGN_OR_RETURN(socket_, engine_.connect_for_verify(target_));
    sink_ = std::make_unique<repl::SocketSink>(*socket_);
    session_ = std::make_unique<repl::VerifySession>(source_node_, target_, *sink_);
    Status status = session_->start();
    if (status.ok()) status = drive(*socket_, *session_);
    if (!status.ok()) {
      close();
      return status;
    }
    return session_.get();
  }
  repl::PeerSocket& socket() { return *socket_; }
  void close() {
    session_.reset();
    sink_.reset();
    if (socket_ != nullptr) engine_.forget_verify_socket(socket_.get());
    socket_.reset();
  }

 private:
  MirrorEngine& engine_;
  const std::string source_node_;
  const std::string target_;
  std::unique_ptr<repl::PeerSocket> socket_;
  std::unique_ptr<repl::SocketSink> sink_;
  std::unique_ptr<repl::VerifySession> session_;
};

// Compares (and with `repair` repairs) one volume; the outcome is in the session.
Status verify_volume(MirrorEngine& engine, TargetConnection& connection, const std::string& target,
                     VolumeVerify& result, bool repair) {
  AMIRROR_ASSIGN_OR_RETURN(repl::VerifySession * session, connection.session());
  repl::PeerSocket& socket = connection.socket();
  const uint64_t sent_before = socket.bytes_sent();
  const uint64_t frame_bytes_before = socket.frame_bytes_sent();
  const uint64_t received_before = socket.bytes_received();
  repl::VolumePointReader reader(*result.entry->volume, result.cycle);
  Status status = session->begin_volume(result.entry->name, reader, result.cycle);
  if (status.ok()) status = drive(socket, *session);
  if (status.ok() && repair && session->outcome().differing_chunks > 0) {
    status = session->begin_repair();
    if (status.ok()) status = drive(socket, *session);
  }
  result.wire_bytes_sent = socket.bytes_sent() - sent_before;
  const uint64_t frame_bytes_sent = socket.frame_bytes_sent() - frame_bytes_before;
  result.wire_bytes_received = socket.bytes_received() - received_before;
  if (!status.ok()) {
    connection.close();
    return status;
  }
  if (!engine.still_at(result.entry->name, result.cycle)) {
    return Status(ErrorCode::kCancelled, "the mirror was stopped or froze again while verifying; compare again");
  }
  result.outcome = session->outcome();
  return engine.note_verified(target, result.entry->name, result.cycle, result.outcome.differing_chunks,
                              frame_bytes_sent, result.wire_bytes_sent);
}

void verify_target(MirrorEngine& engine, const std::string& source_node, TargetVerify& result, bool repair) {
  TargetConnection connection(engine, source_node, result.target);
  for (VolumeVerify& volume : result.volumes) {
    Status status = verify_volume(engine, connection, result.target, volume, repair);
    if (!status.ok()) volume.error = status.message();
  }
}

json ranges_json(const std::vector<repl::ChunkRange>& ranges, uint64_t size_bytes, uint64_t chunk_size_bytes) {
  json list = json::array();
  for (size_t i = 0; i < ranges.size() && i < kMaxReportedRanges; ++i) {
    const repl::ChunkRange& range = ranges[i];
    list.push_back({{"first_chunk", range.first_chunk},
                    {"last_chunk", range.end_chunk() - 1},
                    {"offset_bytes", range.first_chunk * chunk_size_bytes},
                    {"length_bytes", repl::bytes_in(std::span(&range, 1), size_bytes, chunk_size_bytes)}});
  }
  return list;
}

// "equal", "differ" (after --repair too, if some still do), "repaired" or "error".
const char* result_word(const VolumeVerify& volume) {
  if (!volume.error.empty()) return "error";
  if (volume.outcome.differing_chunks > 0) return "differ";
  return volume.outcome.repaired ? "repaired" : "equal";
}

json result_json(const TargetVerify& target, const VolumeVerify& volume) {
  const uint64_t size_bytes = volume.entry->volume->size_bytes();
  const uint64_t chunk_bytes = volume.entry->volume->chunk_size_bytes();
  const repl::VerifyOutcome& outcome = volume.outcome;
  // What the (first) comparison found, also when a repair fixed it since.
  const auto& found = outcome.repaired ? outcome.differing_before_repair : outcome.differing;
  const uint64_t found_chunks = outcome.repaired ? outcome.differing_chunks_before_repair : outcome.differing_chunks;
  json item = {{"volume", volume.entry->name},
               {"target", target.target},
               {"cycle", volume.cycle},
               {"result", result_word(volume)},
               {"error", volume.error.empty() ? json(nullptr) : json(volume.error)},
               {"size_bytes", size_bytes},
               {"chunk_size_bytes", chunk_bytes},
               {"chunks_compared", outcome.chunks_compared},
               {"bytes_compared", outcome.bytes_compared},
               {"differing_chunks", found_chunks},
               {"differing_ranges", ranges_json(found, size_bytes, chunk_bytes)},
               {"ranges_truncated", found.size() > kMaxReportedRanges},
               {"repaired_chunks", outcome.repaired_chunks},
               {"repair_bytes_sent", outcome.repair_bytes},
               {"still_differing_chunks", outcome.repaired ? json(outcome.differing_chunks) : json(nullptr)},
               {"wire_bytes_sent", volume.wire_bytes_sent},
               {"wire_bytes_received", volume.wire_bytes_received}};
  if (outcome.repaired) item["still_differing_ranges"] = ranges_json(outcome.differing, size_bytes, chunk_bytes);
  return item;
}

// The targets to verify: all of the mirror's, or the one `to` names.
Result<std::vector<std::string>> chosen_targets(const MirrorEngine& engine, const NodeConfig& config,
                                                const std::string& to, const std::string& unit_name) {
  std::vector<std::string> targets = engine.target_names();
  if (to.empty()) return targets;
  AMIRROR_RETURN_IF_ERROR(validate_name(to, "peer name"));
  if (config.find_peer(to) == nullptr) {
    return not_found("unknown peer '" + to + "'; " + config.name + "'s config has no [[peers]] entry of that name");
  }
  if (std::find(targets.begin(), targets.end(), to) == targets.end()) {
    std::string list;
    for (const std::string& name : targets) list += (list.empty() ? "" : ", ") + name;
    return not_found("peer '" + to + "' is not a target of the mirror of " + unit_name + " (its targets: " + list + ")");
  }
  return std::vector<std::string>{to};
}

}  // namespace

std::string Node::control_mirror_verify(const json& request) {
  std::shared_ptr<MirrorEngine> engine;  // alive while we verify, even if a break stops it
  std::vector<std::shared_ptr<VolumeEntry>> members;
  std::vector<std::shared_ptr<Volume>> leases;  // open while we read them, even after a break
  std::string unit_key;
  {
    MutexLock lock(mutex_);
    auto resolved = resolve_unit(request.value("volume", ""), request.value("group", ""), unit_key);
    if (!resolved.ok()) return error_response(resolved.status()).dump();
    members = std::move(resolved).value();
    auto found = find_engine_locked(members, unit_key);
    if (!found.ok()) return error_response(found.status()).dump();
    engine = std::move(found).value();
    auto leased = lease_all(members);
    if (!leased.ok()) return error_response(leased.status()).dump();
    leases = std::move(leased).value();
  }
  const std::string unit_name = unit_key.substr(unit_key.find(':') + 1);
  auto targets = chosen_targets(*engine, config_, request.value("to", ""), unit_name);
  if (!targets.ok()) return error_response(targets.status()).dump();
  const bool repair = request.value("repair", false);

  auto held = engine->begin_verify_hold(targets.value(), request.value("timeout_ms", kDefaultVerifyTimeoutMs));
  if (!held.ok()) return error_response(held.status().with_context("mirror verify of " + unit_name)).dump();
  struct Release {
    MirrorEngine& engine;
    const std::vector<std::string>& targets;
    ~Release() { engine.end_verify_hold(targets); }
  } release{*engine, targets.value()};

  std::vector<TargetVerify> results;
  for (const std::string& target : targets.value()) {
    TargetVerify result{target, {}};
    for (const auto& entry : members) {
      VolumeVerify volume;
      volume.entry = entry;
      volume.cycle = held->points.at(entry->name);
      auto not_ready = held->not_ready.find(target);
      if (not_ready != held->not_ready.end()) {
        volume.error = "it has not applied cycle " + std::to_string(volume.cycle) + " to compare: " + not_ready->second;
      }
      result.volumes.push_back(std::move(volume));
    }
    results.push_back(std::move(result));
  }
  // Every target at once: the hold lasts as long as the slowest, not their sum.
  std::vector<std::thread> threads;
  for (TargetVerify& result : results) {
    if (held->not_ready.contains(result.target)) continue;
    threads.push_back(env_.threads->start(
        [&engine = *engine, &result, repair, source = config_.name] { verify_target(engine, source, result, repair); }));
  }
  for (std::thread& thread : threads) thread.join();

  json items = json::array();
  bool equal = true;
  for (const TargetVerify& result : results) {
    for (const VolumeVerify& volume : result.volumes) {
      const char* word = result_word(volume);
      equal = equal && (std::string(word) == "equal" || std::string(word) == "repaired");
      items.push_back(result_json(result, volume));
    }
  }
  return json{{"ok", true}, {"unit", unit_key}, {"equal", equal}, {"results", items}}.dump();
}

}  // namespace amirror::node
