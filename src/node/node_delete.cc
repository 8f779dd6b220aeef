// SPDX-License-Identifier: Apache-2.0
// Node: `volume delete` and `replica delete`.
//
// volume_delete {"name", "force"}: refused while a mirror runs for the volume (alone or
// with its group) or NBD clients have it open, unless force; then the mirror is broken
// through the same path as `mirror break` (engine stopped, state files final) and the
// clients are cut off. Steps, and why in this order:
//  1. under mutex_: the name leaves volumes_ (or failed_volumes_) and is reserved in
//     reserved_, so no command finds it and no create or import takes the name while
//     its files still exist;
//  2. the NBD export is withdrawn (requests running on it finish first; later ones
//     fail) and its connections are closed: nothing touches the files any more, and a
//     later volume of the same name gets a fresh export;
//  3. the mirror state file goes first, synced: a state file left behind would be
//     taken as the mirror state of a new volume of the same name;
//  4. the directory moves to the trash with one durable rename (DataDir): after a
//     crash from here on the volume is gone, never half there;
//  5. the name is free again; the files are removed from the trash (the next start
//     finishes that if we die first).
// A failure in 3 or 4 puts the volume back as it was (a state file already removed
// stays removed: the volume is then like one never mirrored).
//
// replica_delete {"replica": "SOURCE/VOLUME"}: the registry holds the name while the
// export is withdrawn and the directory goes to the trash the same way; refused while
// the source is sending into it.
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/names.h"
#include "nbd/server.h"
#include "node/node.h"
#include "node/node_catalog.h"

namespace amirror::node {

using nlohmann::json;

namespace {

// "volume:v" -> the `mirror break` arguments for it.
std::string unit_name(const std::string& unit) { return unit.substr(unit.find(':') + 1); }
bool is_group_unit(const std::string& unit) { return unit.starts_with("group:"); }

}  // namespace

struct Node::ClaimedVolume {
  std::shared_ptr<VolumeEntry> entry;  // null for a volume that failed to open
  std::optional<FailedVolume> failed;
};

std::string Node::control_volume_delete(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  Status status = delete_volume(name, request.value("force", false));
  if (!status.ok()) return error_response(status).dump();
  return json{{"ok", true}, {"name", name}}.dump();
}

Status Node::delete_volume(const std::string& name, bool force) {
  AMIRROR_RETURN_IF_ERROR(check_nbd_clients(name, force));
  ClaimedVolume claimed;
  // With force, at most one break: a `mirror start` that slips in after it is
  // refused below rather than chased.
  for (bool broke = false;;) {
    std::string unit;
    {
      MutexLock lock(mutex_);
      // A `mirror break`, `volume resize` or failback attempt of it finishes first.
      while (volumes_settling_.contains(name) || resizing_.contains(name) ||
             (reserved_.contains(name) && reserved_.at(name) == Reservation::kFailingBack)) {
        settled_.wait(lock);
      }
      AMIRROR_ASSIGN_OR_RETURN(unit, deletable_locked(name));
      const std::string adopted_path = volumes_.contains(name) ? volumes_.at(name)->facts().adopted_path : "";
      if (!force && !adopted_path.empty()) {
        // Its file holds only what was merged so far; release gives it every write.
        return Status(ErrorCode::kBusy, "volume '" + name + "' is adopted from " + adopted_path +
                                            "; `amirror volume release " + name + "` merges every write into it and "
                                            "lets it go (delete --force leaves only what was merged so far)");
      }
      if (unit.empty()) {
        claimed = claim_for_delete_locked(name);
        break;
      }
      if (!force || broke) return refuse_mirrored_locked(name, unit);
    }
    log::info("node", "volume delete --force: breaking its mirror", {{"volume", name}, {"unit", unit}});
    AMIRROR_RETURN_IF_ERROR(is_group_unit(unit) ? break_mirror("", unit_name(unit)) : break_mirror(name, ""));
    broke = true;
  }
  Result<std::string> trashed = retire_volume_files(name);
  MutexLock lock(mutex_);
  reserved_.erase(name);
  if (!trashed.ok()) {
    if (claimed.entry) volumes_[name] = claimed.entry;
    if (claimed.failed) failed_volumes_[name] = std::move(*claimed.failed);
    return trashed.status().with_context("delete volume " + name + " (it is still there)");
  }
  lock.unlock();
  DataDir* pool = trashed.value().empty() ? nullptr : pools_->dir_holding(trashed.value());
  if (Status removed = pool ? pool->remove_from_trash(trashed.value()) : Status(); !removed.ok()) {
    log::warn("node", "volume deleted; its files stay in the trash until the next start",
              {{"volume", name}, {"trash", trashed.value()}, {"error", removed.message()}});
  }
  log::info("node", "volume deleted", {{"volume", name}});
  return Status();
}

Status Node::check_nbd_clients(const std::string& name, bool force) const {
  if (force || nbd_server_ == nullptr) return Status();
  std::shared_ptr<WithdrawableExport> exported = catalog_->cached(name);
  uint32_t clients = exported ? nbd_server_->connections_serving(*exported) : 0;
  if (clients == 0) return Status();
  // A client connecting after this check is cut off by the delete like a forced one.
  return Status(ErrorCode::kBusy, fmt::format("volume '{}' is open by {} NBD client{}; disconnect {}, or use "
                                              "`amirror volume delete {} --force` to cut {} off",
                                              name, clients, clients == 1 ? "" : "s", clients == 1 ? "it" : "them",
                                              name, clients == 1 ? "it" : "them"));
}

Result<std::string> Node::deletable_locked(const std::string& name) const {
  if (reserved_.contains(name)) return Status(ErrorCode::kBusy, reserved_why_locked(name));
  if (imports_.contains(name)) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is being imported; wait for `volume import` to finish " +
                                        "(or stop it), then delete it");
  }
  if (failed_volumes_.contains(name)) return std::string();  // nothing runs for a failed volume
  if (!volumes_.contains(name)) return not_found("no volume named '" + name + "' (see `amirror volume list`)");
  auto unit = unit_of_volume_.find(name);
  if (unit == unit_of_volume_.end() || !engines_.contains(unit->second)) return std::string();
  return unit->second;
}

Status Node::refuse_mirrored_locked(const std::string& name, const std::string& unit) const {
  std::string targets;
  for (const std::string& target : volumes_.at(name)->state.targets) targets += (targets.empty() ? "" : ",") + target;
  if (is_group_unit(unit)) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is mirrored with its group '" + unit_name(unit) + "' to " +
                                        targets + "; run `amirror mirror break --group " + unit_name(unit) +
                                        "` first, or delete with --force (which breaks the whole group's mirror)");
  }
  return Status(ErrorCode::kBusy, "volume '" + name + "' is mirrored to " + targets + "; run `amirror mirror break " +
                                      name + "` first, or delete with --force (which breaks the mirror)");
}

Node::ClaimedVolume Node::claim_for_delete_locked(const std::string& name) {
  ClaimedVolume claimed;
  if (auto entry = volumes_.find(name); entry != volumes_.end()) {
    claimed.entry = std::move(entry->second);
    volumes_.erase(entry);
  } else if (auto failed = failed_volumes_.find(name); failed != failed_volumes_.end()) {
    claimed.failed = std::move(failed->second);
    failed_volumes_.erase(failed);
  }
  reserved_[name] = Reservation::kDeleting;
  return claimed;
}

// REQUIRES: `name` is reserved_ for deleting, in neither volumes_ nor failed_volumes_. The
// volume's files are not used by anything once its export is withdrawn: client I/O
// goes through the export, and no engine runs for it.
Result<std::string> Node::retire_volume_files(const std::string& name) {
  std::string pool_failed;
  DataDir* pool = pools_->dir_of(name, &pool_failed);
  // A configured pool that failed may come back (remounted): its files must not
  // reappear as a volume nobody deleted, so the delete waits for it. A pool no longer
  // in the config is gone for good: forgetting the name is all there is to do.
  if (pool == nullptr && pools_->find(pools_->pool_of(name)) != nullptr) {
    return Status(ErrorCode::kIo, pool_failed + "; fix it and restart the node, then delete the volume");
  }
  withdraw_export(name);
  FileSystem& fs = *env_.fs;
  AMIRROR_RETURN_IF_ERROR(remove_mirror_state(fs, mirrors_dir_, name));
  std::string trashed;
  if (pool != nullptr) {
    // Missing only when its pool lost it (a failed volume): nothing to move.
    AMIRROR_ASSIGN_OR_RETURN(bool exists, fs.exists(pool->volume_dir(name)));
    if (exists) {
      AMIRROR_ASSIGN_OR_RETURN(trashed, pool->move_to_trash(pool->volume_dir(name)));
    }
  }
  // After the move, and never undoing it: a catalog left behind (a crash, or this
  // failing) shows the name failed ("no volume named ... in PATH") until deleted again.
  if (Status forgotten = pools_->forget(name); !forgotten.ok()) {
    log::warn("node", "volume deleted, but the storage catalog still names it; `volume delete` it again",
              {{"volume", name}, {"error", forgotten.message()}});
  }
  return trashed;
}

void Node::withdraw_export(const std::string& name) {
  std::shared_ptr<WithdrawableExport> withdrawn = catalog_->withdraw(name);
  if (withdrawn == nullptr || nbd_server_ == nullptr) return;
  if (uint32_t closed = nbd_server_->close_connections_serving(*withdrawn); closed > 0) {
    log::info("node", "closed NBD connections to a deleted export", {{"export", name}, {"connections", closed}});
  }
}

std::string Node::control_replica_delete(const json& request) {
  std::string key = request.value("replica", "");
  auto parsed = parse_replica_name(key);
  if (!parsed.ok()) return error_response(parsed.status()).dump();
  const auto& [source, volume] = parsed.value();
  std::string trashed;
  Status status = replicas_->remove(source, volume, [&](const std::string& dir) -> Status {
    withdraw_export(key);
    DataDir* pool = pools_->dir_holding(dir);
    if (pool == nullptr) return Status(ErrorCode::kIo, "no open storage pool holds " + dir);
    AMIRROR_ASSIGN_OR_RETURN(trashed, pool->move_to_trash(dir));
    return Status();
  });
  if (!status.ok()) return error_response(status).dump();
  if (Status removed = pools_->dir_holding(trashed)->remove_from_trash(trashed); !removed.ok()) {
    log::warn("node", "replica deleted; its files stay in the trash until the next start",
              {{"replica", key}, {"trash", trashed}, {"error", removed.message()}});
  }
  log::info("node", "replica deleted", {{"replica", key}});
  return json{{"ok", true}, {"replica", key}}.dump();
}

}  // namespace amirror::node
