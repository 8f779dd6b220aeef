// SPDX-License-Identifier: Apache-2.0
// `amirror node --config FILE`: runs a node in the foreground until SIGTERM or SIGINT.
#include <fmt/core.h>
#include <signal.h>

#include "cli/commands.h"
#include "cli/service_manager.h"
#include "cli/stop_signals.h"
#include "node/node.h"

namespace amirror::cli {

int run_node(const std::string& config_path) {
  auto config = node::load_node_config(config_path);
  if (!config.ok()) {
    fmt::print(stderr, "amirror node: {}\n", config.status().message());
    return 2;
  }
  sigset_t stop_signals = block_stop_signals();

  auto running = node::Node::start(config.value());
  if (!running.ok()) {
    fmt::print(stderr, "amirror node {}: cannot start: {}\n", config->name, running.status().message());
    return 1;
  }
  fmt::print(stderr, "amirror node {} running (control {}{}{})\n", config->name, config->control_socket,
             config->nbd_socket.empty() ? "" : ", nbd " + config->nbd_socket,
             config->listen.empty() ? "" : ", peers " + config->listen);
  notify_ready(*running.value());
  int signal_number = wait_for_stop_signal(stop_signals);
  notify_stopping();
  fmt::print(stderr, "amirror node {}: stopping ({})\n", config->name, signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  running.value()->stop();
  fmt::print(stderr, "amirror node {}: stopped\n", config->name);
  return 0;
}

}  // namespace amirror::cli
