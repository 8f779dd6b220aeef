// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "cli/commands.h"

namespace amirror::cli {

// The single-process walkthrough of the volume store (demo --store).
int run_store_demo(const DemoArgs& args);

}  // namespace amirror::cli
