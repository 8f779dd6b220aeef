// SPDX-License-Identifier: Apache-2.0
#include "node/node_catalog.h"

#include <shared_mutex>

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

}  // namespace

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
  if (cached != cache_.end()) return cached->second;
  std::shared_ptr<nbd::Export> found;
  if (resolved.find('/') != std::string::npos) {
    auto replica_name = parse_replica_name(resolved);
    auto replica = replica_name.ok() ? node_->find_replica(replica_name->first, replica_name->second) : nullptr;
    if (replica) found = std::make_shared<ReplicaExport>(replica);
  } else if (auto entry = node_->find_volume(resolved)) {
    found = std::make_shared<nbd::VolumeExport>(entry->volume);
  }
  if (!found) return nullptr;
  auto wrapped = std::make_shared<WithdrawableExport>(std::move(found));
  cache_[resolved] = wrapped;
  return wrapped;
}

std::shared_ptr<WithdrawableExport> NodeCatalog::cached(const std::string& name) const {
  MutexLock lock(mutex_);
  auto it = cache_.find(name);
  return it == cache_.end() ? nullptr : it->second;
}

std::shared_ptr<WithdrawableExport> NodeCatalog::withdraw(const std::string& name) {
  std::shared_ptr<WithdrawableExport> withdrawn;
  {
    MutexLock lock(mutex_);
    auto it = cache_.find(name);
    if (it == cache_.end()) return nullptr;
    withdrawn = std::move(it->second);
    cache_.erase(it);
  }
  withdrawn->withdraw();  // outside mutex_: it waits for running requests
  return withdrawn;
}

}  // namespace amirror::node
