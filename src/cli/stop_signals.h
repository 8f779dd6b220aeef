// SPDX-License-Identifier: Apache-2.0
// SIGTERM/SIGINT handling for the long-running commands (node, serve, status --watch):
// block the stop signals before any thread starts, so every thread inherits the mask
// and only the main thread, waiting for them (wait_for_stop_signal, sigtimedwait),
// receives them.
#pragma once

#include <signal.h>

namespace amirror::cli {

// Call first thing, before creating threads. Also ignores SIGPIPE (peers vanish).
inline sigset_t block_stop_signals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return stop_signals;
}

// Blocks until SIGTERM or SIGINT; returns which.
inline int wait_for_stop_signal(const sigset_t& stop_signals) {
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  return signal_number;
}

}  // namespace amirror::cli
