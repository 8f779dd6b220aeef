// SPDX-License-Identifier: Apache-2.0
// Telling systemd where `amirror node` is in its life (sd_notify(3), for the
// Type=notify unit dist/systemd/amirror@.service): READY=1 once the node serves —
// control socket, NBD and peer listeners open, volumes, replicas and peers loaded —
// and STOPPING=1 when it begins to stop. Without NOTIFY_SOCKET (not run by systemd)
// every call does nothing.
// Thread-safety: call from the main thread.
#pragma once

namespace amirror::node {
class Node;
}

namespace amirror::cli {

// READY=1 with a STATUS= line such as "serving 3 volumes, 2 replicas; 2 mirrors".
void notify_ready(node::Node& node);
// STOPPING=1 (systemd then waits TimeoutStopSec= for the exit).
void notify_stopping();

}  // namespace amirror::cli
