// SPDX-License-Identifier: Apache-2.0
// What a node offers over NBD: its volumes by name and its replicas as SOURCE/VOLUME,
// each wrapped so the node can withdraw it when it is deleted.
//
// The NBD server relies on one name yielding the same Export object between
// SET_META_CONTEXT and GO, so exports are cached by name. Deletion breaks the
// "forever" of that cache on purpose: withdraw() drops the name from the cache and
// fails every later request on the old object, so a client still holding it gets an
// error instead of reading or writing files that are being removed, and a volume
// created again under the name gets a fresh Export, never the deleted one.
// The cache holds exports weakly: an export lives while a client (or a negotiation)
// holds it, and a volume's export holds a lease that keeps the volume open
// (volume_entry.h), so the volume rests once its last client is gone.
// Thread-safety: all methods are thread-safe. Lock order: catalog → node (find asks
// the node under the catalog's lock), so the node calls withdraw() without its own.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "base/rwlock.h"
#include "nbd/export.h"

namespace amirror::node {

class Node;

// An Export that can be withdrawn. Requests hold a shared lock while they run, so
// withdraw() returns only once none touches the inner export any more.
class WithdrawableExport final : public nbd::Export {
 public:
  explicit WithdrawableExport(std::shared_ptr<nbd::Export> inner) : inner_(std::move(inner)) {}
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  bool read_only() const override { return inner_->read_only(); }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override;
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) override;
  Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) override;
  Status trim(uint64_t offset_bytes, uint64_t length_bytes) override;
  Status flush() override;
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes, uint64_t length_bytes) override;
  // Every request from now on fails; waits for the ones running.
  void withdraw();

 private:
  template <typename Operation>
  auto unless_withdrawn(Operation&& operation) -> decltype(operation());

  const std::shared_ptr<nbd::Export> inner_;
  RwLock withdraw_lock_;  // requests shared, withdraw() exclusive
  bool withdrawn_ = false;  // written under withdraw_lock_ exclusively, read under it shared
};

class NodeCatalog final : public nbd::ExportCatalog {
 public:
  explicit NodeCatalog(const Node* node) : node_(node) {}
  std::vector<std::string> names() const override;
  std::string unavailable_reason(const std::string& name) const override;
  std::shared_ptr<nbd::Export> find(const std::string& name) const override;
  // The export cached under `name` (one that a client opened), or null.
  std::shared_ptr<WithdrawableExport> cached(const std::string& name) const;
  // Drops `name` from the cache and withdraws its export, if any; returns it so the
  // caller can close the connections serving it. Call after the node forgot the name,
  // so no find() caches it again.
  std::shared_ptr<WithdrawableExport> withdraw(const std::string& name);

 private:
  // True if `name` is SOURCE/VOLUME@CYCLE and that point is not kept (any more).
  bool merged_point(const std::string& name) const;

  const Node* node_;
  mutable Mutex mutex_;
  mutable std::map<std::string, std::weak_ptr<WithdrawableExport>> cache_ GUARDED_BY(mutex_);
};

}  // namespace amirror::node
