// SPDX-License-Identifier: Apache-2.0
// Only this file includes toml++ (a large header-only library).
#include "node/config.h"

#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "base/names.h"
#include "base/units.h"

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

}  // namespace

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
  AMIRROR_RETURN_IF_ERROR(check_keys(root, source_name, {"node", "peers"}));
  const toml::table* node_table = root["node"].as_table();
  if (node_table == nullptr) return invalid_argument(source_name + ": missing [node] table");
  std::string where = source_name + " [node]";
  AMIRROR_RETURN_IF_ERROR(check_keys(*node_table, where,
                                     {"name", "data_dir", "control_socket", "nbd_socket", "nbd_listen", "listen",
                                      "peer_timeout", "default_interval"}));
  NodeConfig config;
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "name", true, config.name));
  AMIRROR_RETURN_IF_ERROR(validate_name(config.name, "node name").with_context(where));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "data_dir", true, config.data_dir));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "control_socket", true, config.control_socket));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "nbd_socket", false, config.nbd_socket));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "nbd_listen", false, config.nbd_listen));
  AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, "listen", false, config.listen));
  for (const char* key : {"peer_timeout", "default_interval"}) {
    std::string duration;
    AMIRROR_RETURN_IF_ERROR(get_string(*node_table, where, key, false, duration));
    if (duration.empty()) continue;
    auto parsed = parse_duration_ms(duration);
    if (!parsed.ok()) return parsed.status().with_context(where + " " + key);
    if (parsed.value() < 100) return invalid_argument(where + ": '" + key + "' must be at least 100ms");
    (std::string(key) == "peer_timeout" ? config.peer_timeout_ms : config.default_interval_ms) = parsed.value();
  }
  if (const toml::node* peers = root.get("peers")) {
    const toml::array* list = peers->as_array();
    if (list == nullptr) return invalid_argument(source_name + ": 'peers' must be an array of tables ([[peers]])");
    for (size_t i = 0; i < list->size(); ++i) {
      const toml::table* peer_table = (*list)[i].as_table();
      std::string peer_where = source_name + " [[peers]] #" + std::to_string(i + 1);
      if (peer_table == nullptr) return invalid_argument(peer_where + ": must be a table");
      AMIRROR_RETURN_IF_ERROR(check_keys(*peer_table, peer_where, {"name", "address"}));
      PeerConfig peer;
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "name", true, peer.name));
      AMIRROR_RETURN_IF_ERROR(validate_name(peer.name, "peer name").with_context(peer_where));
      AMIRROR_RETURN_IF_ERROR(get_string(*peer_table, peer_where, "address", true, peer.address));
      if (peer.name == config.name) return invalid_argument(peer_where + ": a node cannot be its own peer");
      if (config.find_peer(peer.name) != nullptr) {
        return invalid_argument(peer_where + ": peer '" + peer.name + "' is listed twice");
      }
      config.peers.push_back(std::move(peer));
    }
  }
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
