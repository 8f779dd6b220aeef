// SPDX-License-Identifier: Apache-2.0
// Everything a node takes from the outside world, passed into Node::start and from
// there to its mirror engines and receivers: files (store/file_system.h), time, the
// network, randomness and new threads (base/env.h). Production uses Env::posix();
// tests pass a manual clock, an in-process network and counted threads
// (src/testing/), so they drive whole nodes without sleeps or real ports.
// Every pointer is non-null and outlives the node.
#pragma once

#include "base/env.h"
#include "store/file_system.h"

namespace amirror::node {

struct Env {
  FileSystem* fs = nullptr;
  Clock* clock = nullptr;
  Network* network = nullptr;
  RandomSource* random = nullptr;
  Threads* threads = nullptr;

  static Env posix() { return Env{&posix_file_system(), &real_clock(), &tcp_network(), &system_random(), &os_threads()}; }
};

}  // namespace amirror::node
