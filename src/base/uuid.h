// SPDX-License-Identifier: Apache-2.0
// Volume ids: 128 random bits, written as 32 lowercase hex digits in text and as 16
// raw bytes in metadata files (all zero = none).
#pragma once

#include <cstdint>
#include <string>

namespace amirror {

constexpr size_t kUuidBytes = 16;

std::string new_uuid();
// Appends the 16 bytes of `uuid` (zeros for an empty one).
void append_uuid(std::string& out, const std::string& uuid);
// Reads 16 bytes; "" when they are all zero.
std::string read_uuid(const uint8_t* bytes);
bool is_uuid_text(const std::string& text);  // 32 lowercase hex digits

}  // namespace amirror
