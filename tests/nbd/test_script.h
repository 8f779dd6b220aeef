// SPDX-License-Identifier: Apache-2.0
// Test helpers for NBD negotiation: ClientScript builds what a client sends (client
// flags, options with their payloads), replies() parses the server's option replies.
// Shared by tests/nbd/*_test.cc. Not thread-safe; test code only.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nbd/protocol.h"

namespace amirror::nbd {

class ClientScript {
 public:
  ClientScript& flags(uint32_t value) {
    put(value, 4);
    return *this;
  }
  ClientScript& option(uint32_t option, const std::string& payload) {
    put(kOptionMagic, 8);
    put(option, 4);
    put(payload.size(), 4);
    bytes_ += payload;
    return *this;
  }
  static std::string go_payload(const std::string& name, std::vector<uint16_t> infos = {}) {
    ClientScript s;
    s.put(name.size(), 4);
    s.bytes_ += name;
    s.put(infos.size(), 2);
    for (uint16_t info : infos) s.put(info, 2);
    return s.bytes_;
  }
  static std::string meta_payload(const std::string& name, std::vector<std::string> queries) {
    ClientScript s;
    s.put(name.size(), 4);
    s.bytes_ += name;
    s.put(queries.size(), 4);
    for (const std::string& query : queries) {
      s.put(query.size(), 4);
      s.bytes_ += query;
    }
    return s.bytes_;
  }
  std::span<const uint8_t> bytes() const {
    return {reinterpret_cast<const uint8_t*>(bytes_.data()), bytes_.size()};
  }

 private:
  void put(uint64_t value, int width) {
    for (int i = width - 1; i >= 0; --i) bytes_.push_back(static_cast<char>(value >> (8 * i)));
  }
  std::string bytes_;
};

struct OptionReply {
  uint32_t option, type;
  std::string data;
};

// Parses the server's output after the 18-byte greeting into option replies.
inline std::vector<OptionReply> replies(const std::string& output) {
  std::vector<OptionReply> result;
  size_t position = 18;
  auto* bytes = reinterpret_cast<const uint8_t*>(output.data());
  while (position + 20 <= output.size() && get_be64(bytes + position) == kOptionReplyMagic) {
    uint32_t length = get_be32(bytes + position + 16);
    result.push_back({get_be32(bytes + position + 8), get_be32(bytes + position + 12),
                      output.substr(position + 20, length)});
    position += 20 + length;
  }
  return result;
}

}  // namespace amirror::nbd
