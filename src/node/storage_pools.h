// SPDX-License-Identifier: Apache-2.0
// A node's storage pools: the default pool at data_dir and one per [[storage]] table,
// each a DataDir (marker, lock, volumes/, trash/) on whatever file system holds it.
// Volumes live in exactly one pool; a volume name is unique across the node.
//
// What stays in the data directory whatever pool a volume is in: mirror state
// (mirrors/), the replicas of peers without `storage` (replicas/), and the catalog
// below. A pool holds its volumes and, for peers with `storage = POOL`, their
// replicas under <pool>/replicas/<peer>/<volume>/.
//
// The catalog, <data_dir>/storage.json (replaced atomically; docs/formats/store.md),
// names the pool of every volume outside the default one. A pool may be gone at start
// (unmounted, removed, a file in its place): the node still starts, and the catalog
// tells which volumes that takes away, so they show as failed with the reason instead
// of vanishing. It is written after a volume's directory is complete (create) and
// after it left its name (delete): a crash between leaves a volume the catalog lacks,
// which the next start finds in its pool and records again.
// Thread-safety: all methods are thread-safe.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "node/config.h"
#include "store/data_dir.h"

namespace amirror::node {

struct StoragePool {
  std::string name;
  std::string path;
  std::unique_ptr<DataDir> dir;  // null when the pool failed to open
  std::string error;             // why it failed; "" when open
};

// Free and total bytes of a pool's file system (statvfs).
struct StorageSpace {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

class StoragePools {
 public:
  // Opens the default pool (an error here is fatal, as for the data directory) and
  // every [[storage]] pool (a failure is recorded in its StoragePool, not returned).
  static Result<std::unique_ptr<StoragePools>> open(FileSystem& fs, const NodeConfig& config);

  DataDir& default_dir() { return *pools_.front().dir; }
  // The pools, default first, then in config order. The list never changes.
  const std::vector<StoragePool>& pools() const { return pools_; }
  const StoragePool* find(const std::string& pool_name) const;
  // "default, fast, bulk": for errors that list the choices.
  std::string known_names() const;

  // Every volume the node has, by name, with its pool: those found in the open pools,
  // and those the catalog places in a pool that failed (or is no longer configured).
  // Records found volumes the catalog lacks. Call once, at start.
  Result<std::map<std::string, std::string>> load_volumes();
  // The pool volume `name` lives in ("default" when not in the catalog).
  std::string pool_of(const std::string& name) const;
  // Its directory there, whether that pool is open or not.
  std::string volume_dir(const std::string& name) const;
  // The open pool holding volume `name`; null (and `why`) when its pool failed.
  DataDir* dir_of(const std::string& name, std::string* why = nullptr) const;
  // The open pool whose directory holds `path` (a volume or replica directory).
  DataDir* dir_holding(const std::string& path) const;
  // The pool name holding `path`; "" when none.
  std::string pool_holding(const std::string& path) const;
  // Records that volume `name` now lives in `pool_name` (nothing to do for "default",
  // unless the catalog placed it elsewhere before), or forgets it.
  Status record(const std::string& name, const std::string& pool_name);
  Status forget(const std::string& name);

  static Result<StorageSpace> space(const std::string& path);

 private:
  StoragePools(FileSystem& fs, std::string catalog_dir) : fs_(fs), catalog_dir_(std::move(catalog_dir)) {}
  Status load_catalog() EXCLUDES(mutex_);
  Status save_catalog_locked() REQUIRES(mutex_);

  FileSystem& fs_;
  const std::string catalog_dir_;  // the data directory
  std::vector<StoragePool> pools_;
  mutable Mutex mutex_;
  std::map<std::string, std::string> catalog_ GUARDED_BY(mutex_);  // volume -> pool, never "default"
};

}  // namespace amirror::node
