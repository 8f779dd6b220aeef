// SPDX-License-Identifier: Apache-2.0
#include "base/checksum.h"

#include <xxhash.h>

namespace amirror {

uint64_t checksum64(const void* data, size_t length) { return XXH3_64bits(data, length); }

}  // namespace amirror
