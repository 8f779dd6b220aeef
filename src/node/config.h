// SPDX-License-Identifier: Apache-2.0
// The node's TOML configuration (`amirror node --config FILE`). Every key is checked:
// an unknown key, a missing required one or a bad value is an error naming the key,
// so a typo never silently changes behaviour. Example and reference: README.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/status.h"
#include "nbd/handshake.h"
#include "net/tls.h"

namespace amirror::node {

struct PeerConfig {
  std::string name;
  std::string address;   // HOST:PORT where that peer listens for replicas
  std::string identity;  // the name its TLS certificate must carry (default: name)
  // Volumes this peer may send here as a source; empty = any. Bounds what a peer
  // (or whoever holds its key) can create or overwrite on this node.
  std::vector<std::string> volumes;
  // `bandwidth_limit`: bytes per second all connections to this peer share; 0 = none.
  uint64_t bandwidth_bytes_per_second = 0;
  // `storage`: the pool ([[storage]] name) this peer's replicas go to on this node;
  // "default" = the data directory.
  std::string storage = "default";
  // `replica_device_dir`: a directory of block devices (e.g. /dev/vg_dr); a new replica
  // of VOLUME from this peer uses <replica_device_dir>/VOLUME as its base instead of
  // base.img (docs/formats/store.md). Empty = none.
  std::string replica_device_dir;

  bool may_send(const std::string& volume) const;
};

// A `[[storage]]` table: a storage pool, a directory (on any file system) that holds
// volumes beside the data directory (the pool named "default"). Docs: README.md.
struct StorageConfig {
  std::string name;  // [A-Za-z0-9._-]{1,64}, not "default"
  std::string path;
};

// The name of the pool at data_dir; reserved, so no [[storage]] table takes it.
inline constexpr const char* kDefaultStorageName = "default";

struct NodeConfig {
  std::string name;            // [A-Za-z0-9._-]{1,64}
  std::string data_dir;
  std::string control_socket;  // Unix socket for the CLI
  std::string nbd_socket;      // Unix socket for NBD clients (mode 0600); may be empty
  std::string nbd_listen;      // HOST:PORT for NBD over TCP; empty = none
  std::string listen;          // HOST:PORT where peers connect to send replicas; empty = none
  uint64_t peer_timeout_ms = 30'000;   // a silent peer is given up after this long
  uint64_t default_interval_ms = 10'000;
  // At most this many transfers (each with its thread) run at once on this node, over
  // all mirrors; the others wait their turn (status: queued). node/transfer_slots.h.
  uint32_t max_transfers = 16;
  // Threads that run every mirror engine's scheduling rounds (freeze, start transfers,
  // merge), however many mirrors there are. node/engine_scheduler.h.
  uint32_t workers = 4;
  nbd::TlsMode nbd_tls = nbd::TlsMode::kOff;  // STARTTLS policy of the NBD TCP listener
  // [tls]: this node's certificate, key and CA. Peer connections use TLS 1.3 with
  // mutual authentication whenever a node has peers or listens for them, unless
  // `insecure = true` (plaintext, for trusted networks and tests only).
  net::TlsFiles tls;
  bool insecure = false;
  std::vector<PeerConfig> peers;
  std::vector<StorageConfig> storage;  // [[storage]]: pools beside the default one
  // Operations (docs/operations.md): the lowest log level written; HOST:PORT serving
  // Prometheus text at /metrics (empty = off; not loopback only with
  // metrics_allow_remote, since the series name every volume and peer); mirrors whose
  // lag exceeds lag_alert_ms are flagged in status and metrics (0 = never).
  log::Level log_level = log::Level::kInfo;
  std::string metrics_listen;
  bool metrics_allow_remote = false;
  uint64_t lag_alert_ms = 0;

  bool has_tls() const { return !tls.certificate_path.empty(); }

  const PeerConfig* find_peer(const std::string& peer_name) const;
  // The path of pool `name` ("default": data_dir); "" when there is no such pool.
  std::string storage_path(const std::string& name) const;
};

// Parses and validates. `source_name` is used in error messages (the file's path).
Result<NodeConfig> parse_node_config(const std::string& text, const std::string& source_name);
Result<NodeConfig> load_node_config(const std::string& path);

}  // namespace amirror::node
