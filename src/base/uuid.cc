// SPDX-License-Identifier: Apache-2.0
#include "base/uuid.h"

#include <algorithm>
#include <random>

namespace amirror {
namespace {
constexpr char kDigits[] = "0123456789abcdef";
}  // namespace

// std::random_device reads the kernel's getrandom pool on Linux; a volume id needs
// uniqueness, not secrecy.
std::string new_uuid() {
  std::random_device device;
  std::string text;
  for (size_t i = 0; i < kUuidBytes; i += 4) {
    uint32_t bits = device();
    for (int nibble = 0; nibble < 8; ++nibble) text += kDigits[(bits >> (4 * nibble)) & 15];
  }
  return text;
}

void append_uuid(std::string& out, const std::string& uuid) {
  uint8_t bytes[kUuidBytes] = {};
  if (is_uuid_text(uuid)) {
    for (size_t i = 0; i < kUuidBytes; ++i) {
      bytes[i] = static_cast<uint8_t>(std::stoul(uuid.substr(2 * i, 2), nullptr, 16));
    }
  }
  out.append(reinterpret_cast<const char*>(bytes), kUuidBytes);
}

std::string read_uuid(const uint8_t* bytes) {
  if (std::all_of(bytes, bytes + kUuidBytes, [](uint8_t b) { return b == 0; })) return "";
  std::string text;
  for (size_t i = 0; i < kUuidBytes; ++i) {
    text += kDigits[bytes[i] >> 4];
    text += kDigits[bytes[i] & 15];
  }
  return text;
}

bool is_uuid_text(const std::string& text) {
  return text.size() == 2 * kUuidBytes && text.find_first_not_of(kDigits) == std::string::npos;
}

}  // namespace amirror
