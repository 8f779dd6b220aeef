// SPDX-License-Identifier: Apache-2.0
// Node: creating and importing volumes, and which names and units are usable now.
//
// Import without the node's lock (so status, NBD and every other command go on):
//  1. under mutex_: the name is checked and reserved in imports_ (status shows it
//     "importing" with progress; NBD does not export it: it is not in volumes_);
//  2. unlocked: the volume is built under <name>.creating (DataDir::begin_volume) and
//     filled; the copy aborts within kImportPollMs once the node is stopping;
//  3. success: flushed, renamed to its real name, then published in volumes_ under
//     mutex_; failure or cancel: the partial volume is removed, so a retry works. A
//     crash leaves only <name>.creating, which the next start removes.

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/names.h"
#include "base/units.h"
#include "node/node.h"
#include "node/volume_import.h"

namespace amirror::node {

using nlohmann::json;

namespace {

std::string created_text(const std::string& name, const Volume& volume, const std::string& storage) {
  return json{{"ok", true},
              {"name", name},
              {"storage", storage},
              {"size_bytes", volume.size_bytes()},
              {"chunk_size_bytes", volume.chunk_size_bytes()}}
      .dump();
}

}  // namespace

std::string Node::create_or_import_volume(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  VolumeOptions options;
  options.chunk_size_bytes = request.value("chunk_size_bytes", kDefaultChunkSizeBytes);
  options.group = request.value("group", "");
  auto pool = storage_for_new_volume(request);
  if (!pool.ok()) return error_response(pool.status()).dump();
  if (request.value("command", "") == "volume_import") {
    return import_volume(*pool.value(), name, request.value("from", ""), request.value("size_bytes", uint64_t{0}),
                         options);
  }
  options.size_bytes = request.value("size_bytes", uint64_t{0});
  // Creating an empty volume is quick (no data is written): it stays under the lock.
  MutexLock lock(mutex_);
  if (Status free = check_name_free(name); !free.ok()) return error_response(free).dump();
  if (Status files = check_open_files("volume '" + name + "'", kFilesPerOpenVolume); !files.ok()) {
    return error_response(files).dump();
  }
  auto created = pool.value()->dir->create_volume(name, options);
  if (!created.ok()) return error_response(created.status()).dump();
  record_pool(name, pool.value()->name);
  return publish_new_volume(name, std::move(created).value(), pool.value()->name);
}

std::string Node::publish_new_volume(const std::string& name, std::unique_ptr<Volume> volume,
                                     const std::string& pool_name) {
  auto entry = std::make_shared<VolumeEntry>(name, std::move(volume), volume_opener(name));
  std::string text = created_text(name, *entry->volume, pool_name);
  entry->settle();  // nobody uses a new volume yet: it rests until its first use
  volumes_[name] = std::move(entry);
  return text;
}

Result<const StoragePool*> Node::storage_for_new_volume(const json& request) const {
  const std::string name = request.value("storage", kDefaultStorageName);
  const StoragePool* pool = pools_->find(name);
  if (pool == nullptr) {
    return not_found("unknown storage '" + name + "'; this node has: " + pools_->known_names() +
                     " (add a [[storage]] table to its config for another)");
  }
  if (pool->dir == nullptr) {
    return Status(ErrorCode::kIo, "storage '" + name + "' (" + pool->path + ") failed when the node started: " +
                                      pool->error + "; fix it and restart the node, or use another --storage");
  }
  return pool;
}

json Node::storage_json() const {
  json pools = json::array();
  for (const StoragePool& pool : pools_->pools()) {
    json item = {{"name", pool.name}, {"path", pool.path}, {"state", pool.dir ? "ok" : "failed"},
                 {"free_bytes", nullptr}, {"total_bytes", nullptr}};
    if (!pool.dir) {
      // Its path may still answer (a file in its place), but that space is of no use.
      item["error"] = pool.error;
    } else if (auto space = StoragePools::space(pool.path); space.ok()) {
      item["free_bytes"] = space->free_bytes;
      item["total_bytes"] = space->total_bytes;
    }
    pools.push_back(std::move(item));
  }
  return pools;
}

// The volume is complete in its pool already; if the catalog write fails, the next
// start finds it there and records it (node/storage_pools.h), so it is not lost.
void Node::record_pool(const std::string& name, const std::string& pool_name) {
  if (Status recorded = pools_->record(name, pool_name); !recorded.ok()) {
    log::warn("node", "volume created, but the storage catalog was not updated; the next start records it",
              {{"volume", name}, {"storage", pool_name}, {"error", recorded.message()}});
  }
}

std::string Node::import_volume(const StoragePool& pool, const std::string& name, const std::string& from,
                                uint64_t declared_size_bytes, VolumeOptions options) {
  if (from.empty()) return error_response(invalid_argument("name the file to import with --from FILE")).dump();
  auto source = ImportSource::open(from, declared_size_bytes);
  if (!source.ok()) return error_response(source.status()).dump();
  options.size_bytes = source->volume_size_bytes();
  if (Status valid = validate_volume_options(options); !valid.ok()) return error_response(valid).dump();
  auto progress = std::make_shared<ImportProgress>();
  progress->source = from;
  progress->storage = pool.name;
  progress->options = options;
  progress->total_bytes = source->data_bytes();
  {
    MutexLock lock(mutex_);
    if (Status free = check_name_free(name); !free.ok()) return error_response(free).dump();
    imports_[name] = progress;
  }
  auto imported = copy_import(*pool.dir, name, source.value(), options, progress->done_bytes);
  MutexLock lock(mutex_);
  imports_.erase(name);
  if (!imported.ok()) {
    Status status = imported.status().with_context("import " + from + " into volume " + name);
    log::warn("node", "import failed", {{"volume", name}, {"from", from}, {"error", status.message()}});
    return error_response(status).dump();
  }
  record_pool(name, pool.name);
  return publish_new_volume(name, std::move(imported).value(), pool.name);
}

Result<std::unique_ptr<Volume>> Node::copy_import(DataDir& pool, const std::string& name, ImportSource& source,
                                                  const VolumeOptions& options,
                                                  std::atomic<uint64_t>& done_bytes) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> building,
                           pool.begin_volume(name, options));
  Status status = source.copy_into(*building, done_bytes, stopping_);
  if (status.ok()) {
    auto completed = pool.complete_volume(name, std::move(building));
    if (completed.ok()) return completed;
    status = completed.status();
  }
  building.reset();
  if (Status removed = pool.abandon_volume(name); !removed.ok()) {
    log::warn("node", "the partial volume stays until the next start, which removes it",
              {{"volume", name}, {"error", removed.message()}});
  }
  return status;
}

std::string Node::reserved_why_locked(const std::string& name) const {
  const std::string volume = "volume '" + name + "' is ";
  switch (reserved_.at(name)) {
    case Reservation::kDeleting: return volume + "being deleted; try again in a moment";
    case Reservation::kReleasing: return volume + "being released into its adopted file; try again once that is done";
    case Reservation::kPromoting: return volume + "being made from a promoted replica; try again in a moment";
    case Reservation::kFailingBack:
      return volume + "being turned into its peer's replica (failback); try again in a moment";
  }
  return volume + "busy";
}

Status Node::check_name_free(const std::string& name) const {
  if (volumes_.count(name))
    return Status(ErrorCode::kAlreadyExists, "volume '" + name + "' already exists");
  if (auto failed = failed_volumes_.find(name); failed != failed_volumes_.end()) {
    return Status(ErrorCode::kAlreadyExists, "volume '" + name + "' exists but failed to open (" +
                                                 failed->second.error + "); repair " +
                                                 pools_->volume_dir(name) +
                                                 " and restart the node, or `amirror volume delete " + name + "`");
  }
  if (reserved_.contains(name)) return Status(ErrorCode::kBusy, reserved_why_locked(name));
  if (auto import = imports_.find(name); import != imports_.end()) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is being imported from " +
                                        import->second->source + " (" +
                                        format_bytes(import->second->done_bytes.load()) + " of " +
                                        format_bytes(import->second->total_bytes) + " copied)");
  }
  return Status();
}

Status Node::check_unit_available(const std::string& volume, const std::string& group) const {
  for (const auto& [name, failed] : failed_volumes_) {
    if (name == volume) {
      return Status(ErrorCode::kCorruption,
                    "volume '" + name + "' failed to open when the node started: " + failed.error +
                        "; repair " + pools_->volume_dir(name) +
                        " and restart the node, or `amirror volume delete " + name + "`");
    }
    if (!group.empty() && failed.group == group) {
      return Status(ErrorCode::kCorruption,
                    "volume '" + name + "' of group '" + group + "' failed to open (" +
                        failed.error +
                        "); its group freezes together, so it is not mirrored without it");
    }
  }
  for (const auto& [name, import] : imports_) {
    if (name == volume || (!group.empty() && import->options.group == group)) {
      return Status(ErrorCode::kBusy, "volume '" + name + "' is still being imported (" +
                                          format_bytes(import->done_bytes.load()) + " of " +
                                          format_bytes(import->total_bytes) +
                                          "); wait for `volume import` to finish");
    }
  }
  return Status();
}

}  // namespace amirror::node
