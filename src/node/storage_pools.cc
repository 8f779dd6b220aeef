// SPDX-License-Identifier: Apache-2.0
#include "node/storage_pools.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "base/log.h"

namespace amirror::node {

using nlohmann::json;

namespace {

constexpr const char* kCatalogName = "storage.json";
constexpr uint64_t kMaxCatalogBytes = 64 << 20;  // ~1M volume names

bool holds(const std::string& dir, const std::string& path) { return path.starts_with(dir + "/"); }

}  // namespace

Result<std::unique_ptr<StoragePools>> StoragePools::open(FileSystem& fs, const NodeConfig& config) {
  std::unique_ptr<StoragePools> pools(new StoragePools(fs, config.data_dir));
  StoragePool default_pool{kDefaultStorageName, config.data_dir, nullptr, ""};
  AMIRROR_ASSIGN_OR_RETURN(default_pool.dir, DataDir::open(fs, config.data_dir));
  pools->pools_.push_back(std::move(default_pool));
  AMIRROR_RETURN_IF_ERROR(pools->load_catalog());
  std::set<std::string> holding_volumes;  // pools the catalog places volumes in
  {
    MutexLock lock(pools->mutex_);
    for (const auto& [volume, pool_name] : pools->catalog_) holding_volumes.insert(pool_name);
  }
  for (const StorageConfig& configured : config.storage) {
    StoragePool pool{configured.name, configured.path, nullptr, ""};
    DataDirOptions options;
    options.create_missing = false;
    options.initialize_empty = !holding_volumes.contains(configured.name);
    auto opened = DataDir::open(fs, configured.path, options);
    if (opened.ok()) {
      pool.dir = std::move(opened).value();
    } else {
      pool.error = opened.status().message();
      log::error("node", "storage pool failed to open; its volumes are not served",
                 {{"storage", configured.name}, {"path", configured.path}, {"error", pool.error}});
    }
    pools->pools_.push_back(std::move(pool));
  }
  return pools;
}

Status StoragePools::load_catalog() {
  const std::string path = catalog_dir_ + "/" + kCatalogName;
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs_.exists(path));
  if (!exists) return Status();
  AMIRROR_ASSIGN_OR_RETURN(std::string text, read_small_file(fs_, path, kMaxCatalogBytes));
  MutexLock lock(mutex_);
  try {
    json parsed = json::parse(text);
    if (parsed.value("version", 0) != 1) return corruption(path + ": unknown version; written by a newer amirror?");
    for (const auto& [volume, pool_name] : parsed.at("volumes").items()) catalog_[volume] = pool_name.get<std::string>();
  } catch (const json::exception& error) {
    return corruption(path + " is damaged (" + error.what() + "); it names the storage pool of each volume");
  }
  return Status();
}

Status StoragePools::save_catalog_locked() {
  json volumes = json::object();
  for (const auto& [volume, pool_name] : catalog_) volumes[volume] = pool_name;
  return write_file_atomically(fs_, catalog_dir_, kCatalogName, json{{"version", 1}, {"volumes", volumes}}.dump(1) + "\n");
}

const StoragePool* StoragePools::find(const std::string& pool_name) const {
  for (const StoragePool& pool : pools_) {
    if (pool.name == pool_name) return &pool;
  }
  return nullptr;
}

std::string StoragePools::known_names() const {
  std::string names;
  for (const StoragePool& pool : pools_) names += (names.empty() ? "" : ", ") + pool.name;
  return names;
}

Result<std::map<std::string, std::string>> StoragePools::load_volumes() {
  std::map<std::string, std::string> found;
  MutexLock lock(mutex_);
  bool catalog_changed = false;
  for (const StoragePool& pool : pools_) {
    if (pool.dir == nullptr) continue;
    AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, pool.dir->list_volumes());
    for (const std::string& name : names) {
      if (auto other = found.find(name); other != found.end()) {
        log::error("node", "a volume name is in two storage pools; only the first is served",
                   {{"volume", name}, {"served_from", other->second}, {"ignored_in", pool.name}});
        continue;
      }
      found[name] = pool.name;
      auto recorded = catalog_.find(name);
      const std::string recorded_pool = recorded == catalog_.end() ? kDefaultStorageName : recorded->second;
      if (recorded_pool == pool.name) continue;
      // Created (or promoted) into this pool just before a crash: the catalog never heard.
      if (pool.name == kDefaultStorageName) {
        catalog_.erase(name);
      } else {
        catalog_[name] = pool.name;
      }
      catalog_changed = true;
    }
  }
  // Volumes recorded in a pool that failed, or that lacks them: the caller shows them failed.
  for (const auto& [name, pool_name] : catalog_) found.emplace(name, pool_name);
  if (catalog_changed) AMIRROR_RETURN_IF_ERROR(save_catalog_locked());
  return found;
}

std::string StoragePools::pool_of(const std::string& name) const {
  MutexLock lock(mutex_);
  auto recorded = catalog_.find(name);
  return recorded == catalog_.end() ? kDefaultStorageName : recorded->second;
}

std::string StoragePools::volume_dir(const std::string& name) const {
  const StoragePool* pool = find(pool_of(name));
  return pool == nullptr ? "" : DataDir::volume_dir_at(pool->path, name);
}

DataDir* StoragePools::dir_of(const std::string& name, std::string* why) const {
  const std::string pool_name = pool_of(name);
  const StoragePool* pool = find(pool_name);
  if (pool == nullptr) {
    if (why) *why = "volume '" + name + "' is in storage '" + pool_name + "', which is not in the config (any more)";
    return nullptr;
  }
  if (pool->dir == nullptr) {
    if (why) *why = "storage '" + pool_name + "' (" + pool->path + ") failed: " + pool->error;
    return nullptr;
  }
  return pool->dir.get();
}

DataDir* StoragePools::dir_holding(const std::string& path) const {
  for (const StoragePool& pool : pools_) {
    if (pool.dir != nullptr && holds(pool.path, path)) return pool.dir.get();
  }
  return nullptr;
}

std::string StoragePools::pool_holding(const std::string& path) const {
  for (const StoragePool& pool : pools_) {
    if (holds(pool.path, path)) return pool.name;
  }
  return "";
}

Status StoragePools::record(const std::string& name, const std::string& pool_name) {
  MutexLock lock(mutex_);
  auto recorded = catalog_.find(name);
  if (pool_name == kDefaultStorageName) {
    if (recorded == catalog_.end()) return Status();
    catalog_.erase(recorded);
  } else {
    if (recorded != catalog_.end() && recorded->second == pool_name) return Status();
    catalog_[name] = pool_name;
  }
  return save_catalog_locked();
}

Status StoragePools::forget(const std::string& name) { return record(name, kDefaultStorageName); }

Result<StorageSpace> StoragePools::space(const std::string& path) {
  struct statvfs info {};
  if (::statvfs(path.c_str(), &info) != 0) {
    return Status(ErrorCode::kIo, "statvfs " + path + ": " + std::strerror(errno));
  }
  return StorageSpace{static_cast<uint64_t>(info.f_bavail) * info.f_frsize,
                      static_cast<uint64_t>(info.f_blocks) * info.f_frsize};
}

}  // namespace amirror::node
