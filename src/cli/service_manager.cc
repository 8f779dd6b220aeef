// SPDX-License-Identifier: Apache-2.0
#include "cli/service_manager.h"

#include <fmt/core.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "node/node.h"

namespace amirror::cli {
namespace {

std::string count_of(size_t count, const char* noun) {
  return fmt::format("{} {}{}", count, noun, count == 1 ? "" : "s");
}

// What the node holds, for `systemctl status`: counted from the node's own status
// answer, so it says what `amirror status` would.
std::string status_line(node::Node& node) {
  auto answer =
      nlohmann::json::parse(node.handle_control(R"({"command":"status"})"), nullptr, false);
  if (answer.is_discarded() || !answer.value("ok", false)) return "serving";
  size_t mirror_count = 0;
  for (const auto& volume : answer["volumes"]) {
    for (const auto& mirror : volume.value("mirrors", nlohmann::json::array())) {
      if (mirror.value("state", "") != "stopped") ++mirror_count;
    }
  }
  return fmt::format("serving {}, {}; {}", count_of(answer["volumes"].size(), "volume"),
                     count_of(answer["replicas"].size(), "replica"),
                     count_of(mirror_count, "mirror"));
}

}  // namespace

void notify_ready(node::Node& node) {
  if (std::getenv("NOTIFY_SOCKET") == nullptr) return;  // not under systemd: skip the status call
  sd_notifyf(0, "READY=1\nSTATUS=%s", status_line(node).c_str());
}

void notify_stopping() { sd_notify(0, "STOPPING=1\nSTATUS=stopping"); }

}  // namespace amirror::cli
