// SPDX-License-Identifier: Apache-2.0
// Little-endian fixed-width integer coding for on-disk and wire formats.
// Every format in docs/formats/ is little-endian; these are the only helpers used.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace amirror {

inline void put_u32(uint8_t* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}
inline void put_u64(uint8_t* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}
inline uint32_t get_u32(const uint8_t* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(in[i]) << (8 * i);
  return value;
}
inline uint64_t get_u64(const uint8_t* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(in[i]) << (8 * i);
  return value;
}

// Appends to a growing byte string (used for small metadata records).
inline void append_u32(std::string& out, uint32_t value) {
  uint8_t bytes[4];
  put_u32(bytes, value);
  out.append(reinterpret_cast<const char*>(bytes), 4);
}
inline void append_u64(std::string& out, uint64_t value) {
  uint8_t bytes[8];
  put_u64(bytes, value);
  out.append(reinterpret_cast<const char*>(bytes), 8);
}

}  // namespace amirror
