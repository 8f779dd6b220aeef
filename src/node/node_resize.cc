// SPDX-License-Identifier: Apache-2.0
// Node: `volume resize` (grow only).
//
// volume_resize {"name", "size_bytes"} -> {"name", "old_size_bytes", "size_bytes",
// "changed", "targets", "mirror_running", "nbd_clients"}. Steps, and why:
//  1. under mutex_: the volume must be in service (not failed, importing or being
//     deleted) and writable (a read-only volume follows its primary's size); its name
//     is reserved in resizing_, so a `volume delete` waits for the resize instead of
//     moving the directory away under it;
//  2. unlocked: Volume::resize (crash-safe, online; it waits for a running merge and
//     drains in-flight client I/O, which must not hold up status or other commands);
//  3. the reservation is dropped. The mirror needs nothing: its next cycle opens the
//     replicas with the new size (OPEN_REPLICA) and they grow (Replica::follow_source_geometry).
// NBD clients connected now keep the size they were told at connection (NBD has no
// resize notification); new connections see the new size.

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/names.h"
#include "base/units.h"
#include "nbd/server.h"
#include "node/node.h"
#include "node/node_catalog.h"

namespace amirror::node {

using nlohmann::json;

std::string Node::control_volume_resize(const json& request) {
  std::string name = request.value("name", "");
  if (Status valid = validate_name(name, "volume name"); !valid.ok()) return error_response(valid).dump();
  uint64_t size_bytes = request.value("size_bytes", uint64_t{0});
  std::shared_ptr<VolumeEntry> entry;
  {
    MutexLock lock(mutex_);
    auto claimed = claim_for_resize_locked(name);
    if (!claimed.ok()) return error_response(claimed.status()).dump();
    entry = std::move(claimed).value();
  }
  // Open (or kept open) for the resize and the answer below.
  Result<std::shared_ptr<Volume>> lease = entry->lease();
  Result<uint64_t> resized = lease.ok() ? lease.value()->resize(size_bytes) : Result<uint64_t>(lease.status());
  MutexLock lock(mutex_);
  resizing_.erase(name);
  settled_.notify_all();  // a `volume delete` of it may be waiting
  if (!resized.ok()) return error_response(resized.status().with_context("resize volume " + name)).dump();
  uint64_t old_size_bytes = resized.value();
  Volume& volume = *lease.value();
  bool changed = old_size_bytes != volume.size_bytes();
  auto unit = unit_of_volume_.find(name);
  bool running = unit != unit_of_volume_.end() && engines_.contains(unit->second);
  uint32_t clients = 0;
  if (nbd_server_ != nullptr) {
    if (std::shared_ptr<WithdrawableExport> exported = catalog_->cached(name)) {
      clients = nbd_server_->connections_serving(*exported);
    }
  }
  if (changed) {
    log::info("node", "volume grew",
              {{"volume", name}, {"old_size_bytes", old_size_bytes}, {"size_bytes", volume.size_bytes()}});
  }
  return json{{"ok", true},
              {"name", name},
              {"old_size_bytes", old_size_bytes},
              {"size_bytes", volume.size_bytes()},
              {"changed", changed},
              {"targets", entry->state.targets},
              {"mirror_running", running},
              {"nbd_clients", clients}}
      .dump();
}

Result<std::shared_ptr<VolumeEntry>> Node::claim_for_resize_locked(const std::string& name) {
  if (auto failed = failed_volumes_.find(name); failed != failed_volumes_.end()) {
    return Status(ErrorCode::kCorruption, "volume '" + name + "' failed to open when the node started (" +
                                              failed->second.error + "); it cannot be resized: repair " +
                                              pools_->volume_dir(name) + " and restart the node, or `amirror volume delete " +
                                              name + "`");
  }
  if (imports_.contains(name)) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is still being imported; resize it once `volume import` finished");
  }
  if (reserved_.contains(name)) return Status(ErrorCode::kBusy, reserved_why_locked(name));
  if (resizing_.contains(name)) {
    return Status(ErrorCode::kBusy, "volume '" + name + "' is being resized by another command; try again in a moment");
  }
  auto found = volumes_.find(name);
  if (found == volumes_.end()) return not_found("no volume named '" + name + "' (see `amirror volume list`)");
  if (found->second->facts().read_only) {
    return Status(ErrorCode::kReadOnly, "volume '" + name + "' is read-only (demoted); only a primary volume is resized");
  }
  resizing_.insert(name);
  return found->second;
}

}  // namespace amirror::node
