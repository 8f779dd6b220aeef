// SPDX-License-Identifier: Apache-2.0
// The amirror subcommands. main.cc parses arguments (CLI11) and calls these; each
// returns the process exit code, one of the kExit* below.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace amirror::cli {

// Exit codes of every command. Documented in README.md ("Exit codes") and in
// `amirror --help` (so in amirror(8)); scripts depend on them: keep them.
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;            // the node refused, or the operation failed
constexpr int kExitUsage = 2;             // bad command line; nothing was sent
constexpr int kExitDiffers = 3;           // `mirror verify`: replicas differ
constexpr int kExitNodeUnreachable = 4;   // nothing answers on the control socket

struct DemoArgs {
  std::string work_dir;  // empty = a fresh temporary directory, removed afterwards
  bool keep = false;     // keep the temporary directory for inspection
  bool store_only = false;  // the single-process store walkthrough instead of two nodes
};
int run_demo(const DemoArgs& args);

struct ServeArgs {
  std::string data_dir;
  std::string socket_path;     // Unix socket, permissions 0600
  std::string tcp_address;     // "host:port"; empty = no TCP listener
  std::string create_volume;   // create this volume first if it does not exist
  uint64_t create_size_bytes = 0;
  uint64_t create_chunk_size_bytes = 0;  // 0 = default
  // Testing and benchmarking aid until the node schedules cycles: every interval,
  // freeze every volume and merge its oldest frozen layer. 0 = never.
  uint64_t freeze_interval_ms = 0;
  bool quiet = false;  // no per-connection log lines
  // NBD STARTTLS: "off", "allow" or "require" (required on TCP only; the Unix socket
  // allows it). The three files are needed unless "off" (main.cc checks).
  std::string tls_mode = "off";
  std::string tls_certificate_path;
  std::string tls_key_path;
  std::string tls_ca_path;
  std::string log_level = "info";  // --log-level: trace, debug, info, warn or error
};
int run_serve(const ServeArgs& args);

// `amirror node --config FILE [--log-level LEVEL]`: runs a node in the foreground until
// SIGTERM/SIGINT. `log_level` ("" = the config's log_level) wins over the config.
int run_node(const std::string& config_path, const std::string& log_level);

// Client commands: talk to a running node through its control socket.
struct ClientArgs {
  std::string node_socket;
  bool json = false;  // print the node's JSON answer instead of a summary
};
struct VolumeArgs {
  std::string name;
  uint64_t size_bytes = 0;
  uint64_t chunk_size_bytes = 0;  // 0 = the node's default
  std::string group;
  std::string from;  // import only
  bool force = false;  // delete only
  std::string path;     // adopt only: the file or block device
  std::string storage;  // create/import/adopt: the pool; "" = the node's default
};
struct MirrorArgs {
  std::string volume;
  std::string group;
  std::vector<std::string> targets;
  uint64_t interval_ms = 0;  // 0 = the node's default
  uint32_t keep = 0;         // 0 = unchanged (1 for a new mirror)
  uint64_t timeout_ms = 0;   // sync and verify; 0 = default
  std::string to;            // verify only: one target (empty: all of the mirror's)
  bool repair = false;       // verify only: resend the differing chunks
  std::string bandwidth;     // start only: "50MB/s", "off"; empty = unchanged (no cap for a new mirror)
  std::string compress;      // start only: "zstd", "off"; empty = unchanged (zstd for a new mirror)
};
int run_volume_create(const ClientArgs& client, const VolumeArgs& args);
int run_volume_import(const ClientArgs& client, const VolumeArgs& args);
int run_volume_list(const ClientArgs& client);
// Grow only: args.size_bytes is the new size.
int run_volume_resize(const ClientArgs& client, const VolumeArgs& args);
int run_volume_delete(const ClientArgs& client, const VolumeArgs& args);
int run_volume_adopt(const ClientArgs& client, const VolumeArgs& args);
int run_volume_release(const ClientArgs& client, const VolumeArgs& args);
int run_replica_list(const ClientArgs& client);
int run_replica_points(const ClientArgs& client, const std::string& replica);
// `replica`: "SOURCE/VOLUME".
int run_replica_delete(const ClientArgs& client, const std::string& replica);
struct PromoteArgs {
  std::string replica;  // SOURCE/VOLUME
  std::string as;       // the new volume's name (default: VOLUME)
  uint64_t at = 0;      // the point (default: the newest kept)
  std::string source;   // with group: every replica of that group from that node
  std::string group;
};
int run_replica_promote(const ClientArgs& client, const PromoteArgs& args);
int run_volume_demote(const ClientArgs& client, const std::string& name);
int run_mirror_start(const ClientArgs& client, const MirrorArgs& args);
int run_mirror_switchover(const ClientArgs& client, const MirrorArgs& args);
int run_mirror_break(const ClientArgs& client, const MirrorArgs& args);
int run_mirror_sync(const ClientArgs& client, const MirrorArgs& args);
// Exit codes of `mirror verify`: every compared target equal (after --repair: equal
// now); the node refused or a target could not be verified (unreachable, no point in
// time, refused); differences found (and, with --repair, some still differ). When a
// target could not be verified, that wins over differences found on another: the
// answer is incomplete.
constexpr int kExitVerifyEqual = kExitOk;
constexpr int kExitVerifyFailed = kExitFailed;
constexpr int kExitVerifyDiffers = kExitDiffers;
int run_mirror_verify(const ClientArgs& client, const MirrorArgs& args);
struct StatusArgs {
  bool watch = false;  // redraw every interval until Ctrl-C (client.cc: watch_status)
  uint64_t watch_interval_ms = 2000;
};
int run_status(const ClientArgs& client, const StatusArgs& args);

}  // namespace amirror::cli
