// SPDX-License-Identifier: Apache-2.0
// Recognising all-zero data: a full copy and an import skip zero blocks, so sparse
// volumes stay sparse and cost nothing to send.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

namespace amirror {

// Compares against a static zero block with memcmp, which is vectorised, instead of
// byte by byte.
inline bool all_zero(std::span<const uint8_t> data) {
  static const uint8_t kZeros[4096] = {};
  for (size_t offset = 0; offset < data.size(); offset += sizeof kZeros) {
    size_t length = std::min(sizeof kZeros, data.size() - offset);
    if (std::memcmp(data.data() + offset, kZeros, length) != 0) return false;
  }
  return true;
}

}  // namespace amirror
