// SPDX-License-Identifier: Apache-2.0
#include "node/node_catalog.h"

#include <shared_mutex>

#include "base/log.h"
#include "nbd/volume_export.h"
#include "node/node.h"

namespace amirror::node {

namespace {

// A replica served read-only over NBD as SOURCE/VOLUME.
class ReplicaExport final : public nbd::Export {
 public:
  explicit ReplicaExport(std::shared_ptr<repl::Replica> replica) : replica_(std::move(replica)) {}
  uint64_t size_bytes() const override { return replica_->size_bytes(); }
  bool read_only() const override { return true; }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override { return replica_->read(offset_bytes, out); }
  Status write(uint64_t, std::span<const uint8_t>, bool) override { return refuse(); }
  Status write_zeroes(uint64_t, uint64_t, bool) override { return refuse(); }
  Status trim(uint64_t, uint64_t) override { return refuse(); }
  Status flush() override { return Status(); }
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) override {
    return replica_->allocated_extents(offset_bytes, length_bytes);
  }

 private:
  static Status refuse() { return Status(ErrorCode::kUnsupported, "replicas are read-only"); }
  std::shared_ptr<repl::Replica> replica_;
};

// One kept point of a replica, read-only, as SOURCE/VOLUME@CYCLE. Once the replica
// merges the point away (fewer --keep, or time), reads fail instead of showing another.
class PointExport final : public nbd::Export {
 public:
  PointExport(std::shared_ptr<repl::Replica> replica, uint64_t cycle) : replica_(std::move(replica)), cycle_(cycle) {}
  uint64_t size_bytes() const override { return replica_->size_bytes(); }
  bool read_only() const override { return true; }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override {
    return gone_if_merged(replica_->read_point(cycle_, offset_bytes, out));
  }
  Status write(uint64_t, std::span<const uint8_t>, bool) override { return refuse(); }
  Status write_zeroes(uint64_t, uint64_t, bool) override { return refuse(); }
  Status trim(uint64_t, uint64_t) override { return refuse(); }
  Status flush() override { return Status(); }
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) override {
    auto extents = replica_->allocated_extents_at(cycle_, offset_bytes, length_bytes);
    if (!extents.ok()) return gone_if_merged(extents.status());
    return extents;
  }

 private:
  Status gone_if_merged(Status status) const {
    if (status.code() != ErrorCode::kOutOfRange || replica_->store_volume()->has_point(cycle_)) return status;
    return Status(ErrorCode::kIo, "point " + std::to_string(cycle_) + " of replica " + replica_->source_node() + "/" +
                                      replica_->volume() + " is no longer kept");
  }
  static Status refuse() { return Status(ErrorCode::kReadOnly, "retained points are read-only"); }
  std::shared_ptr<repl::Replica> replica_;
  const uint64_t cycle_;
};

}  // namespace

// "SOURCE/VOLUME@CYCLE" -> (replica name, cycle); false if there is no valid @CYCLE.
bool split_point_name(const std::string& name, std::string& replica_name, uint64_t& cycle) {
  size_t at = name.rfind('@');
  if (at == std::string::npos || at + 1 >= name.size() || name.size() - at > 20) return false;
  cycle = 0;
  for (size_t i = at + 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    cycle = cycle * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  replica_name = name.substr(0, at);
  return cycle > 0;
}

bool NodeCatalog::merged_point(const std::string& name) const {
  std::string replica_name;
  uint64_t cycle = 0;
  if (!split_point_name(name, replica_name, cycle)) return false;
  auto parsed = parse_replica_name(replica_name);
  auto replica = parsed.ok() ? node_->find_replica(parsed->first, parsed->second) : nullptr;
  return replica == nullptr || !replica->store_volume()->has_point(cycle);
}

template <typename Operation>
auto WithdrawableExport::unless_withdrawn(Operation&& operation) -> decltype(operation()) {
  std::shared_lock lock(withdraw_lock_);
  // kIoError: the client sees EIO, the one errno every NBD client reports as a failure.
  if (withdrawn_) return Status(ErrorCode::kIo, "this export was deleted on the node");
  return operation();
}

Status WithdrawableExport::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  return unless_withdrawn([&] { return inner_->read(offset_bytes, out); });
}

Status WithdrawableExport::write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) {
  return unless_withdrawn([&] { return inner_->write(offset_bytes, data, fua); });
}

Status WithdrawableExport::write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) {
  return unless_withdrawn([&] { return inner_->write_zeroes(offset_bytes, length_bytes, fua); });
}

Status WithdrawableExport::trim(uint64_t offset_bytes, uint64_t length_bytes) {
  return unless_withdrawn([&] { return inner_->trim(offset_bytes, length_bytes); });
}

Status WithdrawableExport::flush() {
  return unless_withdrawn([&] { return inner_->flush(); });
}

Result<std::vector<Extent>> WithdrawableExport::allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) {
  return unless_withdrawn([&] { return inner_->allocated_extents(offset_bytes, length_bytes); });
}

void WithdrawableExport::withdraw() {
  std::unique_lock lock(withdraw_lock_);  // waits for the requests running now
  withdrawn_ = true;
}

std::vector<std::string> NodeCatalog::names() const { return node_->export_names(); }

std::string NodeCatalog::unavailable_reason(const std::string& name) const { return node_->unavailable_reason(name); }

std::shared_ptr<nbd::Export> NodeCatalog::find(const std::string& name) const {
  std::string resolved = name;
  if (resolved.empty()) {
    std::vector<std::string> all = names();
    if (all.size() != 1) return nullptr;
    resolved = all.front();
  }
  // The node is asked under mutex_, so a withdraw() after the node forgot the name
  // cannot be overtaken by a find() that saw the name before.
  MutexLock lock(mutex_);
  auto cached = cache_.find(resolved);
  std::shared_ptr<WithdrawableExport> held = cached != cache_.end() ? cached->second.lock() : nullptr;
  if (cached != cache_.end() && held == nullptr) {
    cache_.erase(cached);  // no client holds it any more
    cached = cache_.end();
  }
  if (cached != cache_.end()) {
    if (!merged_point(resolved)) return held;
    // Opened while kept, merged since: a new client is refused at open (the handshake
    // says "not kept"), not handed an export whose every read fails. Clients already
    // holding it keep that export and get its "no longer kept" errors.
    cache_.erase(cached);
  }
  std::shared_ptr<nbd::Export> found;
  std::string point_of;
  uint64_t point_cycle = 0;
  if (split_point_name(resolved, point_of, point_cycle)) {
    auto replica_name = parse_replica_name(point_of);
    auto replica = replica_name.ok() ? node_->find_replica(replica_name->first, replica_name->second) : nullptr;
    if (replica && replica->store_volume()->has_point(point_cycle)) {
      found = std::make_shared<PointExport>(replica, point_cycle);
    }
  } else if (resolved.find('/') != std::string::npos) {
    auto replica_name = parse_replica_name(resolved);
    auto replica = replica_name.ok() ? node_->find_replica(replica_name->first, replica_name->second) : nullptr;
    if (replica) found = std::make_shared<ReplicaExport>(replica);
  } else if (auto entry = node_->find_volume(resolved)) {
    auto lease = entry->lease();  // opens a resting volume for as long as the export lives
    if (!lease.ok()) {
      log::warn("nbd", "volume could not be opened for an NBD client",
                {{"volume", resolved}, {"error", lease.status().message()}});
      return nullptr;
    }
    found = std::make_shared<nbd::VolumeExport>(std::move(lease).value());
  }
  if (!found) return nullptr;
  auto wrapped = std::make_shared<WithdrawableExport>(std::move(found));
  cache_[resolved] = wrapped;
  return wrapped;
}

std::shared_ptr<WithdrawableExport> NodeCatalog::cached(const std::string& name) const {
  MutexLock lock(mutex_);
  auto it = cache_.find(name);
  return it == cache_.end() ? nullptr : it->second.lock();
}

std::shared_ptr<WithdrawableExport> NodeCatalog::withdraw(const std::string& name) {
  std::shared_ptr<WithdrawableExport> withdrawn;
  std::vector<std::shared_ptr<WithdrawableExport>> points;
  {
    MutexLock lock(mutex_);
    for (auto it = cache_.begin(); it != cache_.end();) {
      std::string replica_name;
      uint64_t cycle = 0;
      if (it->first == name) {
        withdrawn = it->second.lock();
      } else if (split_point_name(it->first, replica_name, cycle) && replica_name == name) {
        if (auto point = it->second.lock()) points.push_back(std::move(point));  // NAME@CYCLE goes with NAME
      } else {
        ++it;
        continue;
      }
      it = cache_.erase(it);
    }
  }
  // Outside mutex_: each waits for its running requests.
  for (const auto& point : points) point->withdraw();
  if (withdrawn) withdrawn->withdraw();
  return withdrawn;
}

}  // namespace amirror::node
