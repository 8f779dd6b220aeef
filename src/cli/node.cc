// SPDX-License-Identifier: Apache-2.0
// `amirror node --config FILE`: runs a node in the foreground until SIGTERM or SIGINT.
#include <fmt/core.h>
#include <signal.h>

#include "base/log.h"
#include "cli/commands.h"
#include "cli/service_manager.h"
#include "cli/stop_signals.h"
#include "node/node.h"

namespace amirror::cli {

int run_node(const std::string& config_path, const std::string& log_level) {
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
