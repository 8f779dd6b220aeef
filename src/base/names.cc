// SPDX-License-Identifier: Apache-2.0
#include "base/names.h"

#include <string>

namespace amirror {

Status validate_name(std::string_view name, std::string_view what) {
  std::string prefix = "bad " + std::string(what) + " '";
  if (name.empty()) return invalid_argument(std::string(what) + " is empty");
  if (name.size() > kMaxNameBytes) {
    return invalid_argument(prefix + std::string(name.substr(0, 16)) +
                            "...': longer than 64 characters");
  }
  if (name == "." || name == "..") return invalid_argument(prefix + std::string(name) + "'");
  for (char c : name) {
    bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '.' || c == '_' || c == '-';
    if (!allowed) {
      return invalid_argument(prefix + "...': only letters, digits, '.', '_' and '-' are allowed");
    }
  }
  return Status();
}

}  // namespace amirror
