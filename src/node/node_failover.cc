// SPDX-License-Identifier: Apache-2.0
// Node: roles (docs/operations.md has the runbook).
//
// replica_promote {"replica": "SOURCE/VOLUME", "as"?, "at"?}: the replica's volume
// becomes a writable volume here, at once (no copy). Steps, and why in this order:
//  1. the registry holds the replica's name (no source connection can use it), its NBD
//     exports are withdrawn;
//  2. on the replica's own volume: points after the chosen one are discarded, the
//     volume gets a new id whose origin is (source volume id, chosen point) — what
//     failback and split-brain checks compare later — and becomes writable;
//  3. the directory moves from replicas/SOURCE/VOLUME to volumes/NAME with one rename;
//     replica.meta is removed after. A crash before 3 leaves the replica (opened as one
//     again: read-only, same points up to the chosen one); after it, the volume.
//
// volume_demote {"name"}: the volume takes no more writes (NBD clients get EPERM) and
// waits to become the replica of the side that was promoted from it. Refused while
// the volume is mirrored.
//
// When a peer sends a volume this node has no replica of (before_create_replica):
//  - the peer's volume was promoted from a volume here (its origin is our volume's id):
//    if ours is demoted, ours becomes the replica (failback): it is labelled as the
//    common point, with the chunks it changed after that point listed in resync.meta,
//    so the peer sends only the chunks changed on either side; if ours is not demoted,
//    both sides took writes after the common point: split brain, refused;
//  - one of our volumes was promoted from the peer's volume: the peer still sends the
//    volume we took over: split brain, refused.
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "base/assert.h"
#include "base/log.h"
#include "base/names.h"
#include "base/units.h"
#include "base/uuid.h"
#include "node/node.h"
#include "node/node_catalog.h"

namespace amirror::node {

using nlohmann::json;

namespace {

// Sorted chunk indexes -> [first, count) runs.
std::vector<std::pair<uint64_t, uint64_t>> to_runs(const std::set<uint64_t>& chunks) {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (uint64_t chunk : chunks) {
    if (!runs.empty() && runs.back().first + runs.back().second == chunk) {
      runs.back().second += 1;
    } else {
      runs.emplace_back(chunk, 1);
    }
  }
  return runs;
}

std::string role_of(const Volume& volume) {
  if (volume.read_only()) return "demoted";
  return volume.lineage().origin_uuid.empty() ? "primary" : "promoted";
}

}  // namespace

std::string Node::volume_role(const Volume& volume) { return role_of(volume); }

std::string Node::volume_role(const VolumeFacts& facts) {
  if (facts.read_only) return "demoted";
  return facts.lineage.origin_uuid.empty() ? "primary" : "promoted";
}

std::string Node::control_replica_promote(const json& request) {
  std::string source = request.value("source", ""), group = request.value("group", "");
  if (!source.empty() || !group.empty()) return promote_group(request);
  std::string replica_name = request.value("replica", "");
  auto promoted = promote_replica(replica_name, request.value("as", ""), request.value("at", uint64_t{0}));
  if (!promoted.ok()) return error_response(promoted.status()).dump();
  const auto& [name, cycle] = promoted.value();
  return json{{"ok", true}, {"volume", name}, {"replica", replica_name}, {"cycle", cycle}}.dump();
}

Result<std::pair<std::string, uint64_t>> Node::promote_replica(const std::string& replica_name, std::string name,
                                                               uint64_t cycle, uint64_t wait_ms) {
  AMIRROR_ASSIGN_OR_RETURN(auto parsed, parse_replica_name(replica_name));
  const auto [source, source_volume] = parsed;
  if (name.empty()) name = source_volume;
  AMIRROR_RETURN_IF_ERROR(validate_name(name, "volume name (--as)"));
  std::shared_ptr<repl::Replica> replica = replicas_->find(source, source_volume);
  if (replica == nullptr) {
    return not_found("no replica " + replica_name + " on node " + config_.name +
                     " (`amirror replica list` shows what is here)");
  }
  if (replica->resyncing()) {
    return Status(ErrorCode::kBusy, "replica " + replica_name + " is resyncing after a failback and holds no whole point yet");
  }
  if (cycle == 0) cycle = replica->readable_cycle();
  std::string kept;
  for (const PointInfo& point : replica->points()) kept += (kept.empty() ? "" : ", ") + std::to_string(point.cycle);
  if (cycle == 0 || !replica->store_volume()->has_point(cycle)) {
    return invalid_argument("replica " + replica_name + " does not keep point " + std::to_string(cycle) + " (kept: " +
                            (kept.empty() ? "none yet" : kept) + ")");
  }
  {
    MutexLock lock(mutex_);
    AMIRROR_RETURN_IF_ERROR(
        check_name_free(name).with_context("promote " + replica_name + " as '" + name + "' (choose another name with --as)"));
    reserved_[name] = Reservation::kPromoting;  // until the volume is in volumes_
  }
  // A rename, not a copy: the volume stays in the pool that holds the replica.
  const std::string storage = pools_->pool_holding(replicas_->dir_of(source, source_volume));
  AMIRROR_ASSERT(!storage.empty());  // every replicas directory is in a pool
  std::string volume_dir = DataDir::volume_dir_at(config_.storage_path(storage), name);
  Status status = replicas_->remove(source, source_volume, [&](const std::string& dir) -> Status {
    withdraw_export(replica_name);
    replica->close_without_saving();
    std::shared_ptr<Volume> volume = replica->store_volume();
    AMIRROR_RETURN_IF_ERROR(volume->discard_after(cycle));
    AMIRROR_RETURN_IF_ERROR(volume->set_lineage(VolumeLineage{new_uuid(), replica->source_uuid(), cycle}));
    AMIRROR_RETURN_IF_ERROR(volume->set_read_only(false));
    FileSystem& fs = *env_.fs;
    AMIRROR_RETURN_IF_ERROR(fs.rename(dir, volume_dir));
    AMIRROR_RETURN_IF_ERROR(fs.sync_dir(dir.substr(0, dir.rfind('/'))));
    AMIRROR_RETURN_IF_ERROR(fs.sync_dir(volume_dir.substr(0, volume_dir.rfind('/'))));
    for (const char* leftover : {"/replica.meta", "/resync.meta"}) (void)fs.remove(volume_dir + leftover);
    AMIRROR_RETURN_IF_ERROR(fs.sync_dir(volume_dir));
    record_pool(name, storage);
    return Status();
  }, wait_ms);
  MutexLock lock(mutex_);
  reserved_.erase(name);
  AMIRROR_RETURN_IF_ERROR(status.with_context("promote " + replica_name));
  open_volume_entry(*env_.fs, name);
  if (!volumes_.contains(name)) {
    return Status(ErrorCode::kIo, "promoted " + replica_name + " to volume '" + name + "', but it failed to open: " +
                                      failed_volumes_[name].error);
  }
  log::info("node", "replica promoted", {{"replica", replica_name}, {"cycle", cycle}, {"volume", name}});
  return std::make_pair(name, cycle);
}

// replica_promote {"source", "group"}: every replica of `group` from `source`, each at
// its point of the newest freeze they all kept (a group freezes at one instant, with
// one freeze time), under the same volume names and in the same group here.
std::string Node::promote_group(const json& request) {
  std::string source = request.value("source", ""), group = request.value("group", "");
  if (source.empty() || group.empty() || !request.value("replica", "").empty()) {
    return error_response(invalid_argument("name a replica as SOURCE/VOLUME, or a group with both --source NODE and "
                                           "--group G")).dump();
  }
  if (!request.value("as", "").empty() || request.value("at", uint64_t{0}) != 0) {
    return error_response(invalid_argument("--as and --at name one replica; a group is promoted under its volume "
                                           "names at its newest common point")).dump();
  }
  std::vector<std::shared_ptr<repl::Replica>> members;
  for (const auto& replica : replicas_->all()) {
    if (replica->source_node() == source && replica->group() == group) members.push_back(replica);
  }
  if (members.empty()) {
    return error_response(not_found("no replica of group '" + group + "' from " + source + " here (`amirror replica "
                                    "list` shows what is here)")).dump();
  }
  // The newest freeze time every member kept a point of.
  std::map<int64_t, std::map<std::string, uint64_t>> by_time;  // time -> member -> cycle
  for (const auto& member : members) {
    for (const PointInfo& point : member->points()) by_time[point.freeze_time_unix_ms][member->volume()] = point.cycle;
  }
  std::erase_if(by_time, [&](const auto& item) { return item.second.size() != members.size(); });
  if (by_time.empty()) {
    return error_response(invalid_argument("the replicas of group '" + group + "' from " + source +
                                           " keep no common point (one is still being copied?); promote them one "
                                           "by one with --at, or wait for the next cycle")).dump();
  }
  const auto& [time, cycles] = *by_time.rbegin();
  json promoted = json::array();
  for (const auto& [volume, cycle] : cycles) {
    auto done = promote_replica(source + "/" + volume, volume, cycle);
    Status status = done.ok() ? Status() : done.status();
    if (status.ok()) {
      std::shared_ptr<VolumeEntry> entry = find_volume(volume);
      auto lease = entry ? entry->lease() : Result<std::shared_ptr<Volume>>(nullptr);
      if (!lease.ok()) status = lease.status();
      else if (entry) status = lease.value()->set_group(group);
    }
    if (!status.ok()) {
      return error_response(status.with_context("promote group '" + group + "' (promoted so far: " +
                                                promoted.dump() + ")")).dump();
    }
    promoted.push_back({{"volume", volume}, {"cycle", cycle}});
  }
  log::info("node", "group promoted", {{"group", group}, {"source", source}, {"volumes", promoted.dump()}});
  return json{{"ok", true}, {"group", group}, {"volumes", promoted}, {"freeze_time_unix_ms", time}}.dump();
}

// mirror_switchover {"volume" | "group", "to", "timeout_ms"?}: on the primary. Client
// writes are held (they wait), a last cycle reaches the peer, the volume (every member
// of the group) becomes read-only here and the mirror stops; the peer promotes that
// cycle and mirrors back here, so this volume becomes its replica with nothing to
// resend (failback with no changes on either side). The held writes then fail with
// EPERM; if any step fails, the volume is writable again and they go on.
std::string Node::control_mirror_switchover(const json& request) {
  std::string volume_name = request.value("volume", "");
  std::string group = request.value("group", "");
  std::string to = request.value("to", "");
  const std::string what = group.empty() ? "volume '" + volume_name + "'" : "group '" + group + "'";
  std::shared_ptr<MirrorEngine> engine;
  std::vector<std::shared_ptr<VolumeEntry>> members;
  // Open until the end: the mirror's own leases go with the break below.
  std::vector<std::shared_ptr<Volume>> leases;
  {
    MutexLock lock(mutex_);
    std::string unit_key;
    auto resolved = resolve_unit(volume_name, group, unit_key);
    if (!resolved.ok()) return error_response(resolved.status()).dump();
    auto found = find_engine_locked(resolved.value(), unit_key);
    if (!found.ok()) return error_response(found.status()).dump();
    engine = std::move(found).value();
    members = std::move(resolved).value();
    if (auto unit = unit_of_volume_.find(members.front()->name); unit != unit_of_volume_.end() && unit->second != unit_key) {
      const std::string its_group = members.front()->facts().group;
      return error_response(invalid_argument(what + " is mirrored with its group '" + its_group +
                                             "'; switch the whole group over: `amirror mirror switchover --group " +
                                             its_group + " --to " + to + "`")).dump();
    }
    auto leased = lease_all(members);
    if (!leased.ok()) return error_response(leased.status()).dump();
    leases = std::move(leased).value();
    const auto& targets = members.front()->state.targets;
    if (std::find(targets.begin(), targets.end(), to) == targets.end()) {
      return error_response(invalid_argument(what + " is not mirrored to '" + to +
                                             "'; switch over to one of its targets")).dump();
    }
  }
  std::map<std::string, MirrorState> states = engine->states();
  for (const auto& member : members) member->volume->hold_writes();
  std::vector<std::shared_ptr<VolumeEntry>> made_read_only;
  auto undo = [&](const Status& why, const std::string& step) {
    Status writable;
    for (const auto& member : made_read_only) {
      Status status = member->volume->set_read_only(false);
      if (writable.ok()) writable = status;
    }
    for (const auto& member : members) member->volume->release_writes();
    return error_response(why.with_context("switchover of " + what + " to " + to + " failed while " + step +
                                           (writable.ok() ? "; it is writable here again"
                                                          : "; and it could not be made writable again: " +
                                                                writable.message())))
        .dump();
  };
  if (Status synced = engine->sync(request.value("timeout_ms", kDefaultSyncTimeoutMs)); !synced.ok()) {
    return undo(synced, "copying the last cycle (the mirror still runs)");
  }
  // Read-only on disk before the peer promotes: a crash from here on never leaves
  // both sides writable.
  for (const auto& member : members) {
    if (Status status = member->volume->set_read_only(true); !status.ok()) return undo(status, "demoting it here");
    made_read_only.push_back(member);
  }
  if (Status broken = break_mirror(volume_name, group); !broken.ok()) return undo(broken, "stopping the mirror");
  const MirrorState& state = states.at(members.front()->name);
  repl::Switchover handover{members.front()->name, members.front()->volume->cycle(), state.keep, state.interval_ms};
  json cycles = json::object();
  for (const auto& member : members) {
    if (!group.empty()) handover.members.emplace_back(member->name, member->volume->cycle());
    cycles[member->name] = member->volume->cycle();
  }
  handover.group = group;
  auto promoted = engine->hand_over(to, handover);
  if (!promoted.ok()) {
    return undo(promoted.status(), "asking " + to + " to take over (the mirror is stopped: `amirror mirror start " +
                                       (group.empty() ? volume_name : "--group " + group) + " --to " + to +
                                       "` resumes it)");
  }
  for (const auto& member : members) member->volume->release_writes();  // they fail: read-only
  log::info("node", "switched over; this copy follows the new primary now",
            {{"unit", what}, {"to", to}, {"cycles", cycles.dump()}});
  json response{{"ok", true}, {"to", to}, {"cycle", handover.cycle}, {"cycles", cycles}};
  if (group.empty()) response["volume"] = volume_name;
  else response["group"] = group;
  return response.dump();
}

Result<uint64_t> Node::accept_switchover(const std::string& peer, const repl::Switchover& request) {
  std::vector<std::pair<std::string, uint64_t>> members = request.members;
  if (request.group.empty()) members = {{request.volume, request.cycle}};
  // Every member is checked before any is promoted.
  for (const auto& [volume, cycle] : members) {
    std::string replica_name = peer + "/" + volume;
    std::shared_ptr<repl::Replica> replica = replicas_->find(peer, volume);
    if (replica == nullptr) return not_found("no replica " + replica_name + " on " + config_.name);
    if (replica->readable_cycle() != cycle) {
      return invalid_argument("replica " + replica_name + " is at cycle " + std::to_string(replica->readable_cycle()) +
                              ", not the final cycle " + std::to_string(cycle));
    }
    if (replica->group() != request.group) {
      return invalid_argument("replica " + replica_name + " is in group '" + replica->group() + "', not '" +
                              request.group + "'");
    }
  }
  std::string first_name;
  for (const auto& [volume, cycle] : members) {
    // The peer stopped its mirror before it asked, but the connection that carried the
    // last cycle may not have ended here yet: wait for it as a new connection would.
    AMIRROR_ASSIGN_OR_RETURN(auto promoted,
                             promote_replica(peer + "/" + volume, volume, cycle, config_.peer_timeout_ms));
    if (first_name.empty()) first_name = promoted.first;
    if (request.group.empty()) continue;
    std::shared_ptr<VolumeEntry> entry = find_volume(promoted.first);
    if (entry) {
      AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Volume> lease, entry->lease());
      AMIRROR_RETURN_IF_ERROR(lease->set_group(request.group));
    }
  }
  MutexLock lock(mutex_);
  std::string unit_key;
  AMIRROR_ASSIGN_OR_RETURN(auto units, resolve_unit(request.group.empty() ? first_name : "", request.group, unit_key));
  const std::string what = request.group.empty() ? peer + "/" + request.volume + " as '" + first_name + "'"
                                                 : "group '" + request.group + "' from " + peer;
  AMIRROR_RETURN_IF_ERROR(start_mirror(unit_key, units, {peer}, request.interval_ms, request.keep, true)
                              .with_context("promoted " + what + ", but mirroring it back to " + peer + " failed"));
  log::info("node", "took over by switchover; mirroring back", {{"unit", unit_key}, {"from", peer}, {"cycle", request.cycle}});
  return request.cycle;
}

std::string Node::control_volume_demote(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  std::shared_ptr<VolumeEntry> entry;
  {
    MutexLock lock(mutex_);
    auto unit = deletable_locked(name);
    if (!unit.ok()) return error_response(unit.status()).dump();
    if (!unit.value().empty()) {
      return error_response(Status(ErrorCode::kBusy, "volume '" + name + "' is mirrored (" + unit.value() +
                                                         "); run `amirror mirror break " + name + "` first"))
          .dump();
    }
    if (failed_volumes_.contains(name)) {
      return error_response(Status(ErrorCode::kCorruption, "volume '" + name + "' failed to open: " +
                                                               failed_volumes_.at(name).error)).dump();
    }
    entry = volumes_.at(name);
  }
  auto lease = entry->lease();
  if (!lease.ok()) return error_response(lease.status().with_context("demote " + name)).dump();
  Volume& volume = *lease.value();
  if (volume.read_only()) {
    return json{{"ok", true}, {"volume", name}, {"role", "demoted"}, {"cycle", volume.cycle()},
                {"note", "already demoted"}}.dump();
  }
  if (Status status = volume.set_read_only(true); !status.ok()) {
    return error_response(status.with_context("demote " + name)).dump();
  }
  log::info("node", "volume demoted; it takes no writes now", {{"volume", name}, {"cycle", volume.cycle()}});
  return json{{"ok", true}, {"volume", name}, {"role", "demoted"}, {"cycle", volume.cycle()}}.dump();
}

Status Node::before_create_replica(const std::string& peer, const repl::OpenReplica& open, const std::string& dir) {
  std::shared_ptr<VolumeEntry> ours;
  bool ours_is_origin = false;
  {
    MutexLock lock(mutex_);
    for (const auto& [name, entry] : volumes_) {
      const VolumeFacts facts = entry->facts();
      const VolumeLineage& lineage = facts.lineage;
      if (!open.volume_uuid.empty() && lineage.origin_uuid == open.volume_uuid) {
        return Status(ErrorCode::kAlreadyExists,
                      fmt::format("split brain: {}/{} was promoted here to volume '{}' at cycle {} (now cycle {}), "
                                  "and {} still sends it. Keep {}'s data: on {} run `amirror mirror break {}` and "
                                  "`amirror volume demote {}`, then here `amirror mirror start {} --to {}`. Keep {}'s "
                                  "data instead: `amirror volume delete {}` here",
                                  peer, open.volume, name, lineage.origin_point, facts.cycle, peer,
                                  config_.name, peer, open.volume, open.volume, name, peer, peer, name));
      }
      if (!open.origin_uuid.empty() && lineage.uuid == open.origin_uuid) {
        ours = entry;
        ours_is_origin = true;
        break;
      }
    }
    if (!ours_is_origin) return Status();
    if (const VolumeFacts facts = ours->facts(); !facts.read_only) {
      return Status(ErrorCode::kAlreadyExists,
                    fmt::format("split brain: {}/{} was promoted from volume '{}' here at cycle {}, and both sides "
                                "took writes since (this side is at cycle {}). Keep {}'s data: `amirror volume demote "
                                "{}` here (its writes after cycle {} are discarded). Keep this side's: on {} run "
                                "`amirror mirror break {}` and `amirror volume delete {}`",
                                peer, open.volume, ours->name, open.origin_point, facts.cycle, peer,
                                ours->name, open.origin_point, peer, open.volume, open.volume));
    }
    auto unit = unit_of_volume_.find(ours->name);
    if ((unit != unit_of_volume_.end() && engines_.contains(unit->second)) || reserved_.contains(ours->name)) {
      return Status(ErrorCode::kBusy, "volume '" + ours->name + "' is in use here; try again");
    }
    reserved_[ours->name] = Reservation::kFailingBack;
    volumes_.erase(ours->name);
  }
  // Open while it is turned into the replica; closed (as before) once this returns.
  auto lease = ours->lease();
  Result<uint64_t> discarded = lease.ok() ? take_over_as_replica(*ours, peer, open, dir) : Result<uint64_t>(lease.status());
  MutexLock lock(mutex_);
  reserved_.erase(ours->name);
  settled_.notify_all();  // a `volume delete` of it may be waiting
  if (!discarded.ok()) {
    volumes_[ours->name] = ours;  // still the demoted volume, nothing lost
    return discarded.status().with_context("failback of volume '" + ours->name + "' from " + peer);
  }
  log::warn("node", "failback: the volume becomes a replica; writes made here after the common point are discarded",
            {{"volume", ours->name}, {"replica", peer + "/" + open.volume}, {"common_cycle", open.origin_point},
             {"discarded_bytes", discarded.value()}});
  return Status();
}

// REQUIRES: `ours` is demoted and out of volumes_ (reserved_ for failback).
Result<uint64_t> Node::take_over_as_replica(const VolumeEntry& ours, const std::string& peer,
                                            const repl::OpenReplica& open, const std::string& dir) {
  withdraw_export(ours.name);
  Volume& volume = *ours.volume;
  const uint64_t common = open.origin_point;
  FileSystem& fs = *env_.fs;
  std::string volume_dir = pools_->volume_dir(ours.name);
  if (open.size_bytes != volume.size_bytes() || open.chunk_size_bytes != volume.chunk_size_bytes()) {
    return invalid_argument("the promoted volume's size or chunk size differs from this one's");
  }
  // The volume becomes the replica by a rename, which cannot cross file systems.
  if (const std::string storage = pools_->pool_of(ours.name); pools_->pool_holding(dir) != storage) {
    return invalid_argument(fmt::format("volume '{}' is in storage '{}', but {}'s replicas go to storage '{}' here; "
                                        "`amirror volume delete {}` here and {} sends a full copy",
                                        ours.name, storage, peer, pools_->pool_holding(dir), ours.name, peer));
  }
  // The chunks written here after the common point: changed in layers above it, in
  // the active layer, and (if layers past it were merged) those recorded as pending
  // for this very peer when they were merged.
  std::set<uint64_t> changed;
  if (common > volume.cycle()) {
    return invalid_argument(fmt::format("this volume is at cycle {}, before the common point {}; it is not the one {} "
                                        "was promoted from", volume.cycle(), common, peer));
  }
  uint64_t from = common;
  if (!volume.has_point(common)) {
    auto state = ours.state.target_states.find(peer);
    if (volume.base_cycle() < common || state == ours.state.target_states.end() ||
        state->second.applied_cycle != common) {
      return invalid_argument(fmt::format("cannot tell which chunks changed here after cycle {} (merged since); "
                                          "`amirror volume delete {}` here and {} sends a full copy",
                                          common, ours.name, peer));
    }
    changed = state->second.pending_chunks.to_set();
    from = volume.base_cycle();
  }
  if (from < volume.cycle()) {
    AMIRROR_ASSIGN_OR_RETURN(std::vector<DeltaChunk> layers, volume.changed_chunks(from, volume.cycle()));
    for (const DeltaChunk& chunk : layers) changed.insert(chunk.chunk_index);
  }
  for (const DeltaChunk& chunk : volume.active_changes()) changed.insert(chunk.chunk_index);
  repl::Replica::Resync resync{common, volume.lineage().uuid, to_runs(changed)};
  if (resync.runs.size() > repl::kMaxResyncRuns) {
    return invalid_argument("too many scattered chunks changed here to list; `amirror volume delete " + ours.name +
                            "` here and " + peer + " sends a full copy");
  }
  // resync.meta first: from here a restart would still find the demoted volume, but
  // the chunk list survives the flattening below, which would hide it.
  AMIRROR_ASSIGN_OR_RETURN(bool has_resync, fs.exists(volume_dir + "/resync.meta"));
  if (!has_resync) AMIRROR_RETURN_IF_ERROR(repl::Replica::write_resync(fs, volume_dir, resync));
  // Fold everything into base.img and call it the common point; the resync list says
  // which chunks are not that point's yet.
  if (!volume.active_changes().empty()) AMIRROR_RETURN_IF_ERROR(volume.freeze().status());
  while (volume.points().size() > 1 || volume.merge_pending()) AMIRROR_RETURN_IF_ERROR(volume.merge_oldest());
  if (volume.base_cycle() != common) AMIRROR_RETURN_IF_ERROR(volume.relabel_base(common));
  AMIRROR_RETURN_IF_ERROR(fs.make_dir(dir.substr(0, dir.rfind('/'))));
  AMIRROR_RETURN_IF_ERROR(fs.sync_dir(dir.substr(0, dir.rfind('/', dir.rfind('/') - 1))));
  AMIRROR_RETURN_IF_ERROR(fs.rename(volume_dir, dir));
  AMIRROR_RETURN_IF_ERROR(fs.sync_dir(volume_dir.substr(0, volume_dir.rfind('/'))));
  AMIRROR_RETURN_IF_ERROR(fs.sync_dir(dir.substr(0, dir.rfind('/'))));
  if (Status forgotten = pools_->forget(ours.name); !forgotten.ok()) {
    log::warn("node", "the storage catalog still names the volume that became a replica",
              {{"volume", ours.name}, {"error", forgotten.message()}});
  }
  // The volume's mirror state (its targets, what they lack) is meaningless now.
  AMIRROR_RETURN_IF_ERROR(remove_mirror_state(fs, mirrors_dir_, ours.name));
  return changed.size() * volume.chunk_size_bytes();
}

}  // namespace amirror::node
