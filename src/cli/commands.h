// SPDX-License-Identifier: Apache-2.0
// The amirror subcommands. main.cc parses arguments (CLI11) and calls these; each
// returns the process exit code (0 ok, 1 operation failed, 2 bad usage).
#pragma once

#include <cstdint>
#include <string>

namespace amirror::cli {

struct DemoArgs {
  std::string work_dir;  // empty = a fresh temporary directory, removed afterwards
  bool keep = false;     // keep the temporary directory for inspection
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
};
int run_serve(const ServeArgs& args);

}  // namespace amirror::cli
