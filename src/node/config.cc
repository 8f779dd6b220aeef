// SPDX-License-Identifier: Apache-2.0
// Only this file includes toml++ (a large header-only library).
#include "node/config.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "base/names.h"
#include "base/units.h"
#include "repl/throttle.h"

namespace amirror::node {
namespace {

Status check_keys(const toml::table& table, const std::string& where, const std::set<std::string>& allowed) {
  for (const auto& [key, value] : table) {
    if (!allowed.count(std::string(key.str()))) {
      return invalid_argument(where + ": unknown key '" + std::string(key.str()) + "'");
    }
  }
  return Status();
}

Status get_string(const toml::table& table, const std::string& where, const char* key, bool required,
                  std::string& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) {
    if (required) return invalid_argument(where + ": missing required key '" + key + "'");
    return Status();
  }
  const auto* text = node->as_string();
  if (text == nullptr) return invalid_argument(where + ": '" + key + "' must be a string");
  out = text->get();
  if (required && out.empty()) return invalid_argument(where + ": '" + key + "' must not be empty");
  return Status();
}

// An optional whole number from 1 to `max` (a count of threads or slots); absent = `out` unchanged.
Status get_count(const toml::table& table, const std::string& where, const char* key, int64_t max, uint32_t& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return Status();
  std::optional<int64_t> value = node->value<int64_t>();
  if (!node->is_integer() || !value || *value < 1 || *value > max) {
    return invalid_argument(where + ": '" + key + "' must be a whole number from 1 to " + std::to_string(max));
  }
  out = static_cast<uint32_t>(*value);
  return Status();
}

bool is_loopback_address(const std::string& address) {
  std::string host = address.substr(0, address.rfind(':'));
  return host == "localhost" || host == "[::1]" || host == "::1" || host.starts_with("127.");
}

Status parse_tls_table(const toml::table& root, const std::string& source_name, NodeConfig& config) {
  const toml::node* node = root.get("tls");
  if (node == nullptr) return Status();
  const toml::table* table = node->as_table();
  std::string where = source_name + " [tls]";
  if (table == nullptr) return invalid_argument(where + ": must be a table");
  AMIRROR_RETURN_IF_ERROR(check_keys(*table, where, {"certificate", "key", "ca", "insecure"}));
  AMIRROR_RETURN_IF_ERROR(get_string(*table, where, "certificate", false, config.tls.certificate_path));
  AMIRROR_RETURN_IF_ERROR(get_string(*table, where, "key", false, config.tls.key_path));
  AMIRROR_RETURN_IF_ERROR(get_string(*table, where, "ca", false, config.tls.ca_path));
  if (const toml::node* insecure = table->get("insecure")) {
    if (insecure->as_boolean() == nullptr) return invalid_argument(where + ": 'insecure' must be true or false");
    config.insecure = insecure->as_boolean()->get();
  }
  int files = !config.tls.certificate_path.empty() + !config.tls.key_path.empty() + !config.tls.ca_path.empty();
  if (files != 0 && files != 3) {
    return invalid_argument(where + ": 'certificate', 'key' and 'ca' go together; set all three");
  }
  if (files == 3 && config.insecure) {
    return invalid_argument(where + ": 'insecure = true' turns TLS off; remove it or the certificate files");
  }
  return Status();
}

// The security rules that span keys: plaintext only when asked for by name.
Status check_transport(const NodeConfig& config, const std::string& source_name) {
  bool talks_to_peers = !config.listen.empty() || !config.peers.empty();
  if (talks_to_peers && !config.has_tls() && !config.insecure) {
    return invalid_argument(source_name +
                            ": peer connections need TLS: add a [tls] table with certificate, key and ca "
                            "(docs/security.md shows how to make them), or set 'insecure = true' in [tls] "
                            "for plaintext on a trusted network");
  }
  if (config.nbd_tls != nbd::TlsMode::kOff && !config.has_tls()) {
    return invalid_argument(source_name + " [node]: 'nbd_tls' needs the [tls] certificate, key and ca");
  }
  if (!config.nbd_listen.empty() && !is_loopback_address(config.nbd_listen) &&
      config.nbd_tls != nbd::TlsMode::kRequire && !config.insecure) {
    return invalid_argument(source_name + " [node]: 'nbd_listen' " + config.nbd_listen +
                            " is not a loopback address: set nbd_tls = \"require\" so strangers cannot read "
                            "or write volumes, or 'insecure = true' in [tls]");
  }
  return Status();
}

// log_level, metrics_listen (+ metrics_allow_remote) and lag_alert.
Status parse_operations_keys(const toml::table& table, const std::string& where, NodeConfig& config) {
  std::string level;
  AMIRROR_RETURN_IF_ERROR(get_string(table, where, "log_level", false, level));
  if (!level.empty()) {
    auto parsed = log::parse_level(level);
    if (!parsed.ok()) return invalid_argument(where + ": 'log_level': " + parsed.status().message());
    config.log_level = parsed.value();
  }
  if (const toml::node* allow = table.get("metrics_allow_remote")) {
    if (allow->as_boolean() == nullptr) return invalid_argument(where + ": 'metrics_allow_remote' must be true or false");
    config.metrics_allow_remote = allow->as_boolean()->get();
  }
  AMIRROR_RETURN_IF_ERROR(get_string(table, where, "metrics_listen", false, config.metrics_listen));
  if (!config.metrics_listen.empty()) {
    size_t colon = config.metrics_listen.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == config.metrics_listen.size()) {
      return invalid_argument(where + ": 'metrics_listen' must be HOST:PORT, e.g. \"127.0.0.1:9464\", got '" +
                              config.metrics_listen + "'");
    }
    if (!is_loopback_address(config.metrics_listen) && !config.metrics_allow_remote) {
      return invalid_argument(where + ": 'metrics_listen' " + config.metrics_listen +
                              " is not a loopback address: the metrics name every volume and peer of this node; "
                              "set metrics_allow_remote = true to serve them there anyway");
    }
  }
  std::string lag_alert;
  AMIRROR_RETURN_IF_ERROR(get_string(table, where, "lag_alert", false, lag_alert));
  if (!lag_alert.empty()) {
    auto parsed = parse_duration_ms(lag_alert);
    if (!parsed.ok()) return parsed.status().with_context(where + " lag_alert");
    if (parsed.value() < 1000) return invalid_argument(where + ": 'lag_alert' must be at least 1s");
    config.lag_alert_ms = parsed.value();
  }
  return Status();
}

Status parse_bandwidth_limit(const toml::table& table, const std::string& where, PeerConfig& peer) {
  std::string text;
  AMIRROR_RETURN_IF_ERROR(get_string(table, where, "bandwidth_limit", false, text));
  if (text.empty()) return Status();
  auto rate = parse_rate_bytes_per_second(text);
  if (!rate.ok()) return invalid_argument(where + ": bandwidth_limit: " + rate.status().message());
  if (rate.value() < repl::TokenBucket::kMinRateBytesPerSecond) {
    return invalid_argument(where + ": bandwidth_limit: " + text + " is below the lowest limit, " +
                            format_rate(repl::TokenBucket::kMinRateBytesPerSecond));
  }
  peer.bandwidth_bytes_per_second = rate.value();
  return Status();
}

// "/a/b/" and "/a/b" are one directory; so are "a//b" and "a/b". Only spelling, no
// symlinks: two spellings of one directory through a link are the operator's to avoid.
std::string normalized_path(std::string path) {
  std::string out;
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out += c;
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

// [[storage]] tables: each a named directory beside data_dir (the pool "default").
Status parse_storage_tables(const toml::table& root, const std::string& source_name, NodeConfig& config) {
  const toml::node* node = root.get("storage");
  if (node == nullptr) return Status();
  const toml::array* list = node->as_array();
  if (list == nullptr) return invalid_argument(source_name + ": 'storage' must be an array of tables ([[storage]])");
  for (size_t i = 0; i < list->size(); ++i) {
    const toml::table* table = (*list)[i].as_table();
    std::string where = source_name + " [[storage]] #" + std::to_string(i + 1);
    if (table == nullptr) return invalid_argument(where + ": must be a table");
    AMIRROR_RETURN_IF_ERROR(check_keys(*table, where, {"name", "path"}));
    StorageConfig pool;
    AMIRROR_RETURN_IF_ERROR(get_string(*table, where, "name", true, pool.name));
    AMIRROR_RETURN_IF_ERROR(validate_name(pool.name, "storage name").with_context(where));
    if (pool.name == kDefaultStorageName) {
      return invalid_argument(where + ": the name 'default' is the data directory's pool; pick another name");
    }
    AMIRROR_RETURN_IF_ERROR(get_string(*table, where, "path", true, pool.path));
    if (!config.storage_path(pool.name).empty()) {
      return invalid_argument(where + ": storage '" + pool.name + "' is listed twice");
    }
    const std::string path = normalized_path(pool.path);
    if (path == normalized_path(config.data_dir)) {
      return invalid_argument(where + ": path " + pool.path + " is the data_dir, which is the pool 'default' already");
    }
    for (const StorageConfig& other : config.storage) {
      if (normalized_path(other.path) == path) {
        return invalid_argument(where + ": path " + pool.path + " is the path of storage '" + other.name +
                                "' too; each pool needs its own directory");
      }
    }
    config.storage.push_back(std::move(pool));
  }
  return Status();
}

std::string known_storage_names(const NodeConfig& config) {
  std::string names = kDefaultStorageName;
  for (const StorageConfig& pool : config.storage) names += ", " + pool.name;
  return names;
}

}  // namespace

std::string NodeConfig::storage_path(const std::string& pool_name) const {
  if (pool_name == kDefaultStorageName) return data_dir;
  for (const StorageConfig& pool : storage) {
    if (pool.name == pool_name) return pool.path;
  }
  return "";
}

bool PeerConfig::may_send(const std::string& volume) const {
  return volumes.empty() || std::find(volumes.begin(), volumes.end(), volume) != volumes.end();
}

const PeerConfig* NodeConfig::find_peer(const std::string& peer_name) const {
  for (const PeerConfig& peer : peers) {
    if (peer.name == peer_name) return &peer;
  }
  return nullptr;
}

Result<NodeConfig> parse_node_config(const std::string& text, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    std::ostringstream message;
    message << source_name << ":" << error.source().begin.line << ":" << error.source().begin.column << ": "
            << error.description();
    return invalid_argument(message.str());
  }
  AMIRROR_RETURN_IF_ERROR(check_keys(root, source_name, {"node", "peers", "tls", "storage"}));
  const toml::table* node_table = root["node"].as_table();
  if (node_table == nullptr) return invalid_argument(source_name + ": missing [node] table");
  std::string where = source_name + " [node]";
  AMIRROR_RETURN_IF_ERROR(check_keys(*node_table, where,
                                     {"name", "data_dir", "control_socket", "nbd_socket", "nbd_listen", "listen",
                                      "nbd_tls", "peer_timeout", "default_interval", "log_level", "metrics_listen",
                                      "metrics_allow_remote", "lag_alert", "max_transfers", "workers"}));
  NodeConfig config;
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "name", true, config.name));
  AMIRROR_RETURN_IF_ERROR(validate_name(config.name, "node name").with_context(where));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "data_dir", true, config.data_dir));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "control_socket", true, config.control_socket));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "nbd_socket", false, config.nbd_socket));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "nbd_listen", false, config.nbd_listen));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "listen", false, config.listen));
  std::string nbd_tls;
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "nbd_tls", false, nbd_tls));
  if (!nbd_tls.empty()) {
    auto mode = nbd::parse_tls_mode(nbd_tls);
    if (!mode.ok()) return invalid_argument(where + ": 'nbd_tls': " + mode.status().message());
    config.nbd_tls = mode.value();
  }
  AMIRROR_RETURN_IF_ERROR(parse_tls_table(root, source_name, config));
  for (const char* key : {"peer_timeout", "default_interval"}) {
    std::string duration;
    AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, key, false, duration));
    if (duration.empty()) continue;
    auto parsed = parse_duration_ms(duration);
    if (!parsed.ok()) return parsed.status().with_context(where + " " + key);
    if (parsed.value() < 100) return invalid_argument(where + ": '" + key + "' must be at least 100ms");
    (std::string(key) == "peer_timeout" ? config.peer_timeout_ms : config.default_interval_ms) = parsed.value();
  }
  AMIRROR_RETURN_IF_ERROR(parse_operations_keys(*node_table, where, config));
  AMIRROR_RETURN_IF_ERROR(get_count(*node_table, where, "max_transfers", 4096, config.max_transfers));
  AMIRROR_RETURN_IF_ERROR(get_count(*node_table, where, "workers", 256, config.workers));
  AMIRROR_RETURN_IF_ERROR(parse_storage_tables(root, source_name, config));
  if (const toml::node* peers = root.get("peers")) {
    const toml::array* list = peers->as_array();
    if (list == nullptr) return invalid_argument(source_name + ": 'peers' must be an array of tables ([[peers]])");
    for (size_t i = 0; i < list->size(); ++i) {
      const toml::table* peer_table = (*list)[i].as_table();
      std::string peer_where = source_name + " [[peers]] #" + std::to_string(i + 1);
      if (peer_table == nullptr) return invalid_argument(peer_where + ": must be a table");
      AMIRROR_RETURN_IF_ERROR(check_keys(*peer_table, peer_where, {"name", "address", "identity", "volumes", "bandwidth_limit", "storage",
                                                                  "replica_device_dir"}));
      PeerConfig peer;
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "name", true, peer.name));
      AMIRROR_RETURN_IF_ERROR(validate_name(peer.name, "peer name").with_context(peer_where));
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "address", true, peer.address));
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "identity", false, peer.identity));
      if (peer.identity.empty()) peer.identity = peer.name;
      AMIRROR_RETURN_IF_ERROR(validate_name(peer.identity, "peer identity").with_context(peer_where));
      if (const toml::node* volumes = peer_table->get("volumes")) {
        const toml::array* list = volumes->as_array();
        if (list == nullptr) return invalid_argument(peer_where + ": 'volumes' must be a list of volume names");
        for (const toml::node& item : *list) {
          const auto* volume = item.as_string();
          if (volume == nullptr) return invalid_argument(peer_where + ": 'volumes' must be a list of volume names");
          AMIRROR_RETURN_IF_ERROR(validate_name(volume->get(), "volume name").with_context(peer_where + " volumes"));
          peer.volumes.push_back(volume->get());
        }
        if (peer.volumes.empty()) {
          return invalid_argument(peer_where + ": 'volumes' is empty; remove it to accept any volume from this peer");
        }
      }
      AMIRROR_RETURN_IF_ERROR(parse_bandwidth_limit(*peer_table, peer_where, peer));
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "storage", false, peer.storage));
      if (config.storage_path(peer.storage).empty()) {
        return invalid_argument(peer_where + ": storage '" + peer.storage + "' is not a pool of this node (known: " +
                                known_storage_names(config) + ")");
      }
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "replica_device_dir", false, peer.replica_device_dir));
      if (peer_table->contains("replica_device_dir") && (peer.replica_device_dir.empty() || peer.replica_device_dir[0] != '/')) {
        return invalid_argument(peer_where + ": 'replica_device_dir' must be an absolute path (a directory of block "
                                "devices named like the volumes, e.g. /dev/vg_dr), not '" + peer.replica_device_dir + "'");
      }
      if (peer.name == config.name) return invalid_argument(peer_where + ": a node cannot be its own peer");
      if (config.find_peer(peer.name) != nullptr) {
        return invalid_argument(peer_where + ": peer '" + peer.name + "' is listed twice");
      }
      config.peers.push_back(std::move(peer));
    }
  }
  AMIRROR_RETURN_IF_ERROR(check_transport(config, source_name));
  return config;
}

Result<NodeConfig> load_node_config(const std::string& path) {
  std::ifstream file(path);
  if (!file) return not_found("cannot read config file " + path);
  std::stringstream contents;
  contents << file.rdbuf();
  return parse_node_config(contents.str(), path);
}

}  // namespace amirror::node
