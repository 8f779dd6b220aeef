// SPDX-License-Identifier: Apache-2.0
// Node: `volume adopt` and `volume release` — an existing regular file or block device
// as a volume's base in place (no copy), and giving it back.
//
// volume_adopt {"name", "path", "chunk_size_bytes"?, "group"?, "storage"?}: the path is
// resolved (symlinks, so /dev/vg/lv and /dev/dm-3 are one device) and refused when it
// is missing, not a regular file or block device, inside one of the node's storage pools,
// adopted already (by a volume of this node: named; by another process: its flock is
// held), mounted or claimed (a block device opened O_EXCL), or not whole sectors. The
// volume is then built like `volume create` (DataDir: <name>.creating, renamed once
// durable) with volume.meta naming the path. Adopt never writes the file: a crash
// before the rename leaves a .creating directory the next start removes, and the file
// as it was; after it, the volume exists.
//
// volume_release {"name"}: refused for a volume that is not adopted, mirrored (say
// which `mirror break` to run) or open by NBD clients (their later writes would be
// lost). Steps, and why in this order:
//  1. under mutex_: the name leaves volumes_ and is reserved in reserved_ (as for
//     `volume delete`), so no command finds it;
//  2. the NBD export is withdrawn: no client writes any more;
//  3. Volume::merge_everything(): a freeze, then every frozen layer merged into the
//     file (each merge crash-safe, docs/formats/store.md), then the file is synced;
//  4. the volume directory moves to the trash with one durable rename: from here the
//     volume is forgotten and the file holds exactly what clients last wrote;
//  5. the Volume is closed, which drops the lock on the file.
// A crash (or failure) before 4 rolls the release back: the volume is still adopted
// (a merge cut short is finished when it opens) with nothing lost, and `volume release`
// runs again. After 4, the trash is emptied (at the next start, if we die first);
// emptying never touches the adopted path: it is not in the volume's directory.
#include <climits>
#include <cstdlib>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/names.h"
#include "base/units.h"
#include "nbd/server.h"
#include "node/node.h"
#include "node/node_catalog.h"

namespace amirror::node {

using nlohmann::json;

namespace {

// The path with symlinks and "." / ".." resolved, or why not.
Result<std::string> canonical_path(const std::string& path) {
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    if (errno == ENOENT) return not_found(path + " does not exist");
    return Status::from_errno(errno, "resolve " + path);
  }
  return std::string(resolved);
}

bool is_inside(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

}  // namespace

Result<VolumeOptions> Node::adopt_options(const std::string& path, const json& request) const {
  if (path.empty()) return invalid_argument("name the file or block device to adopt with --path");
  VolumeOptions options;
  options.chunk_size_bytes = request.value("chunk_size_bytes", kDefaultChunkSizeBytes);
  options.group = request.value("group", "");
  AMIRROR_ASSIGN_OR_RETURN(options.base_path, canonical_path(path));
  // No pool's files may become a base: the node would write them two ways at once.
  for (const StoragePool& pool : pools_->pools()) {
    auto pool_path = canonical_path(pool.path);
    if (pool_path.ok() && is_inside(options.base_path, pool_path.value())) {
      return invalid_argument(path + " is inside the node's storage '" + pool.name + "' (" + pool_path.value() +
                              "); adopt only files and devices amirror does not manage");
    }
  }
  // A probe: the same checks and lock the volume will take, released at once.
  {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> probe, env_.fs->open(options.base_path, OpenMode::kAdopt));
    AMIRROR_ASSIGN_OR_RETURN(options.size_bytes, probe->size_bytes());
  }
  if (options.size_bytes == 0) return invalid_argument(path + " is empty; there is nothing to adopt");
  if (options.size_bytes % kSectorSizeBytes != 0) {
    return invalid_argument(path + " is " + std::to_string(options.size_bytes) +
                            " bytes, not a multiple of 512; a volume is whole sectors");
  }
  AMIRROR_RETURN_IF_ERROR(validate_volume_options(options));
  return options;
}

std::string Node::control_volume_adopt(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  std::string path = request.value("path", "");
  // The pool holds the volume's layers; the base stays where it is.
  auto pool = storage_for_new_volume(request);
  if (!pool.ok()) return error_response(pool.status()).dump();
  // Outside the lock: the probe opens the file (which may be a slow device).
  auto options = adopt_options(path, request);
  MutexLock lock(mutex_);
  if (Status free = check_name_free(name); !free.ok()) return error_response(free).dump();
  if (!options.ok()) {
    // Name the volume of this node that holds it, rather than "locked".
    auto canonical = canonical_path(path);
    for (const auto& [other, entry] : volumes_) {
      if (canonical.ok() && entry->facts().adopted_path == canonical.value()) {
        return error_response(Status(ErrorCode::kBusy, path + " is already adopted by volume '" + other + "'")).dump();
      }
    }
    return error_response(options.status()).dump();
  }
  auto created = pool.value()->dir->create_volume(name, options.value());
  if (!created.ok()) return error_response(created.status().with_context("adopt " + path)).dump();
  record_pool(name, pool.value()->name);
  auto entry = std::make_shared<VolumeEntry>(name, std::move(created).value(), volume_opener(name));
  // Never at rest: closing the base would drop its flock, and another process could
  // then take the file or device (volume_entry.h).
  entry->keep_open();
  volumes_[name] = entry;
  log::info("node", "volume adopted", {{"volume", name}, {"path", options->base_path}, {"storage", pool.value()->name},
                                       {"size_bytes", options->size_bytes}});
  return json{{"ok", true},
              {"name", name},
              {"path", options->base_path},
              {"storage", pool.value()->name},
              {"size_bytes", entry->volume->size_bytes()},
              {"chunk_size_bytes", entry->volume->chunk_size_bytes()}}
      .dump();
}

std::string Node::control_volume_release(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  auto released = release_volume(name);
  if (!released.ok()) return error_response(released.status()).dump();
  return json{{"ok", true}, {"name", name}, {"path", released.value()}}.dump();
}

Result<std::string> Node::release_volume(const std::string& name) {
  std::shared_ptr<VolumeEntry> entry;
  {
    MutexLock lock(mutex_);
    // A `mirror break` or `volume resize` of it finishes first.
    while (volumes_settling_.contains(name) || resizing_.contains(name)) settled_.wait(lock);
    AMIRROR_ASSIGN_OR_RETURN(std::string unit, deletable_locked(name));
    if (failed_volumes_.contains(name)) {
      return Status(ErrorCode::kCorruption, "volume '" + name + "' failed to open (" + failed_volumes_.at(name).error +
                                                "); it cannot be merged into its file until it opens again");
    }
    entry = volumes_.at(name);
    if (const VolumeFacts facts = entry->facts(); facts.adopted_path.empty()) {
      return invalid_argument("volume '" + name + "' was not adopted (its base is in " + facts.dir +
                              "); `volume release` gives back adopted files and devices; see `amirror volume delete`");
    }
    if (!unit.empty()) {
      std::string group = unit.substr(unit.find(':') + 1);
      std::string command = unit.starts_with("group:") ? "mirror break --group " + group : "mirror break " + name;
      return Status(ErrorCode::kBusy, "volume '" + name + "' is mirrored; run `amirror " + command + "` first");
    }
    std::shared_ptr<WithdrawableExport> exported = catalog_->cached(name);
    if (uint32_t clients = exported && nbd_server_ ? nbd_server_->connections_serving(*exported) : 0; clients > 0) {
      return Status(ErrorCode::kBusy, fmt::format("volume '{}' is open by {} NBD client{}; disconnect {} first "
                                                  "(writes after the release would be lost)",
                                                  name, clients, clients == 1 ? "" : "s", clients == 1 ? "it" : "them"));
    }
    volumes_.erase(name);
    reserved_[name] = Reservation::kReleasing;
  }
  const std::string path = entry->volume->adopted_path();
  withdraw_export(name);
  log::info("node", "volume release: merging every layer into the adopted file", {{"volume", name}, {"path", path}});
  Status merged = entry->volume->merge_everything(*env_.clock);
  Result<std::string> trashed = merged.ok() ? retire_volume_files(name) : Result<std::string>(merged);
  MutexLock lock(mutex_);
  reserved_.erase(name);
  if (!trashed.ok()) {
    volumes_[name] = entry;
    return trashed.status().with_context("release volume " + name + " (it is still adopted; nothing is lost)");
  }
  entry.reset();  // closes the file once no one else holds the volume: the lock goes
  lock.unlock();
  DataDir* trash_pool = trashed.value().empty() ? nullptr : pools_->dir_holding(trashed.value());
  if (Status removed = trash_pool ? trash_pool->remove_from_trash(trashed.value()) : Status(); !removed.ok()) {
    log::warn("node", "volume released; its layer files stay in the trash until the next start",
              {{"volume", name}, {"trash", trashed.value()}, {"error", removed.message()}});
  }
  log::info("node", "volume released", {{"volume", name}, {"path", path}});
  return path;
}

}  // namespace amirror::node
