// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <functional>
#include <string>

#include "cli/commands.h"

namespace amirror::cli {

// The single-process walkthrough of the volume store (demo --store).
int run_store_demo(const DemoArgs& args);

// Runs `body(dir)` in args.work_dir, or in a fresh /tmp/amirror-demo-XXXXXX that is
// removed afterwards (unless args.keep). Returns the exit code: 0 if body returned true.
int run_in_demo_dir(const DemoArgs& args, const char* title, const std::function<bool(const std::string&)>& body);

}  // namespace amirror::cli
