// SPDX-License-Identifier: Apache-2.0
#include "base/units.h"

#include <cctype>
#include <cstdio>
#include <limits>

namespace amirror {
namespace {

struct Suffix {
  std::string_view text;
  uint64_t multiplier;
};

// Splits "64KiB" into digits and suffix; returns false if there are no digits or a
// digit follows the suffix.
bool split_number(std::string_view text, uint64_t& number, std::string_view& suffix) {
  size_t digit_count = 0;
  number = 0;
  while (digit_count < text.size() && std::isdigit(static_cast<unsigned char>(text[digit_count]))) {
    uint64_t digit = static_cast<uint64_t>(text[digit_count] - '0');
    if (number > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    number = number * 10 + digit;
    ++digit_count;
  }
  if (digit_count == 0) return false;
  suffix = text.substr(digit_count);
  return true;
}

Result<uint64_t> apply_suffix(std::string_view text, std::string_view what,
                              std::initializer_list<Suffix> suffixes) {
  uint64_t number = 0;
  std::string_view suffix;
  if (!split_number(text, number, suffix)) {
    return invalid_argument("bad " + std::string(what) + " '" + std::string(text) +
                            "': expected a whole number with an optional unit");
  }
  for (const Suffix& candidate : suffixes) {
    if (candidate.text != suffix) continue;
    if (number != 0 && candidate.multiplier > std::numeric_limits<uint64_t>::max() / number) {
      return invalid_argument("bad " + std::string(what) + " '" + std::string(text) +
                              "': too large");
    }
    return number * candidate.multiplier;
  }
  return invalid_argument("bad " + std::string(what) + " '" + std::string(text) +
                          "': unknown unit '" + std::string(suffix) + "'");
}

}  // namespace

Result<uint64_t> parse_size_bytes(std::string_view text) {
  return apply_suffix(text, "size",
                      {{"", 1},           {"B", 1},           {"K", kKiB},  {"KiB", kKiB},
                       {"k", kKiB},       {"M", kMiB},        {"MiB", kMiB}, {"G", kGiB},
                       {"GiB", kGiB},     {"T", kTiB},        {"TiB", kTiB}});
}

Result<uint64_t> parse_duration_ms(std::string_view text) {
  return apply_suffix(text, "duration",
                      {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}});
}

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof text, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  }
  return text;
}

}  // namespace amirror
