// SPDX-License-Identifier: Apache-2.0
// `amirror serve`: placeholder until the NBD server lands (issue 3).
#include <cstdio>

#include "cli/commands.h"

namespace amirror::cli {

int run_serve(const ServeArgs&) {
  std::fprintf(stderr, "amirror serve: the NBD server is not built yet\n");
  return 1;
}

}  // namespace amirror::cli
