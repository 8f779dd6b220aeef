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

std::string created_text(const std::string& name, const Volume& volume) {
  return json{{"ok", true},
              {"name", name},
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
  if (request.value("command", "") == "volume_import") {
    return import_volume(name, request.value("from", ""), request.value("size_bytes", uint64_t{0}),
                         options);
  }
  options.size_bytes = request.value("size_bytes", uint64_t{0});
  // Creating an empty volume is quick (no data is written): it stays under the lock.
  MutexLock lock(mutex_);
  if (Status free = check_name_free(name); !free.ok()) return error_response(free).dump();
  auto created = data_dir_->create_volume(name, options);
  if (!created.ok()) return error_response(created.status()).dump();
  auto entry = std::make_shared<VolumeEntry>();
  entry->name = name;
  entry->volume = std::move(created).value();
  volumes_[name] = entry;
  return created_text(name, *entry->volume);
}

std::string Node::import_volume(const std::string& name, const std::string& from,
                                uint64_t declared_size_bytes, VolumeOptions options) {
  if (from.empty()) return error_response(invalid_argument("name the file to import with --from FILE")).dump();
  auto source = ImportSource::open(from, declared_size_bytes);
  if (!source.ok()) return error_response(source.status()).dump();
  options.size_bytes = source->volume_size_bytes();
  if (Status valid = validate_volume_options(options); !valid.ok()) return error_response(valid).dump();
  auto progress = std::make_shared<ImportProgress>();
  progress->source = from;
  progress->options = options;
  progress->total_bytes = source->data_bytes();
  {
    MutexLock lock(mutex_);
    if (Status free = check_name_free(name); !free.ok()) return error_response(free).dump();
    imports_[name] = progress;
  }
  auto imported = copy_import(name, source.value(), options, progress->done_bytes);
  MutexLock lock(mutex_);
  imports_.erase(name);
  if (!imported.ok()) {
    Status status = imported.status().with_context("import " + from + " into volume " + name);
    log::warn("node", "import failed", {{"volume", name}, {"from", from}, {"error", status.message()}});
    return error_response(status).dump();
  }
  auto entry = std::make_shared<VolumeEntry>();
  entry->name = name;
  entry->volume = std::move(imported).value();
  volumes_[name] = entry;
  return created_text(name, *entry->volume);
}

Result<std::unique_ptr<Volume>> Node::copy_import(const std::string& name, ImportSource& source,
                                                  const VolumeOptions& options,
                                                  std::atomic<uint64_t>& done_bytes) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> building,
                           data_dir_->begin_volume(name, options));
  Status status = source.copy_into(*building, done_bytes, stopping_);
  if (status.ok()) {
    auto completed = data_dir_->complete_volume(name, std::move(building));
    if (completed.ok()) return completed;
    status = completed.status();
  }
  building.reset();
  if (Status removed = data_dir_->abandon_volume(name); !removed.ok()) {
    log::warn("node", "the partial volume stays until the next start, which removes it",
              {{"volume", name}, {"error", removed.message()}});
  }
  return status;
}

Status Node::check_name_free(const std::string& name) const {
  if (volumes_.count(name))
    return Status(ErrorCode::kAlreadyExists, "volume '" + name + "' already exists");
  if (auto failed = failed_volumes_.find(name); failed != failed_volumes_.end()) {
    return Status(ErrorCode::kAlreadyExists, "volume '" + name + "' exists but failed to open (" +
                                                 failed->second.error + "); repair " +
                                                 data_dir_->volume_dir(name) +
                                                 " and restart the node, or `amirror volume delete " + name + "`");
  }
  if (deleting_.contains(name)) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is being deleted; try again in a moment");
  }
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
                        "; repair " + data_dir_->volume_dir(name) +
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
