// SPDX-License-Identifier: Apache-2.0
// Validation of every name that comes from outside (volume, group, node, export):
// [A-Za-z0-9._-]{1,64}, not "." or "..". Such names become path components, so
// nothing else may pass.
#pragma once

#include <string_view>

#include "base/status.h"

namespace amirror {

constexpr size_t kMaxNameBytes = 64;

// `what` is "volume name", "group name", ... and appears in the error.
Status validate_name(std::string_view name, std::string_view what);

}  // namespace amirror
