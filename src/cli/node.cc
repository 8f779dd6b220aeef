// SPDX-License-Identifier: Apache-2.0
// `amirror node --config FILE`: runs a node in the foreground until SIGTERM or SIGINT.
#include <fmt/core.h>
#include <malloc.h>
#include <signal.h>

#include "base/log.h"
#include "cli/commands.h"
#include "cli/service_manager.h"
#include "cli/stop_signals.h"
#include "node/node.h"

namespace amirror::cli {

namespace {

// A node cycles tens of MiB of frame buffers per peer connection (a receiver queues up to
// 16 MiB of CHUNK frames ahead of its disk, repl/chunk_stager.h). glibc's defaults give
// freed heap tops back to the kernel and map large frames afresh, so every buffer is
// faulted in and zeroed again: on a VM that reclaims free guest pages that doubled the
// receiving node's CPU per GiB. Keeping up to 64 MiB of freed heap, and taking frames of
// up to 32 MiB (glibc's largest threshold) from it, reuses warm pages instead.
void keep_freed_buffers() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

}  // namespace

int run_node(const std::string& config_path, const std::string& log_level) {
  keep_freed_buffers();
  auto config = node::load_node_config(config_path);
  if (!config.ok()) {
    // Before the logger is set up, and for the operator at the terminal: plain text.
    fmt::print(stderr, "amirror node: {}\n", config.status().message());
    return 2;
  }
  log::Level level = config->log_level;
  if (!log_level.empty()) level = log::parse_level(log_level).value();  // main.cc checked it
  log::configure(level);
  sigset_t stop_signals = block_stop_signals();

  auto running = node::Node::start(config.value());
  if (!running.ok()) {
    log::error("node", "cannot start", {{"node", config->name}, {"error", running.status().message()}});
    return 1;
  }
  log::info("node", "running",
            {{"node", config->name},
             {"control", config->control_socket},
             {"nbd", config->nbd_socket},
             {"peers", config->listen},
             {"metrics", config->metrics_listen},
             {"log_level", log::level_name(level)},
             {"log_output", log::output_name()}});
  notify_ready(*running.value());
  int signal_number = wait_for_stop_signal(stop_signals);
  notify_stopping();
  log::info("node", "stopping", {{"node", config->name}, {"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  running.value()->stop();
  log::info("node", "stopped", {{"node", config->name}});
  return 0;
}

}  // namespace amirror::cli
