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

Result<uint64_t> parse_rate_bytes_per_second(std::string_view text) {
  constexpr uint64_t kKB = 1000, kMB = 1000 * kKB, kGB = 1000 * kMB;
  // Bits per second are whole bytes only in multiples of 8 bits: every bit unit here is.
  auto rate = apply_suffix(text, "rate",
                           {{"B/s", 1},          {"kB/s", kKB},          {"KB/s", kKB},
                            {"MB/s", kMB},       {"GB/s", kGB},          {"KiB/s", kKiB},
                            {"MiB/s", kMiB},     {"GiB/s", kGiB},        {"kbit/s", kKB / 8},
                            {"Kbit/s", kKB / 8}, {"Mbit/s", kMB / 8},    {"Gbit/s", kGB / 8}});
  if (!rate.ok() || rate.value() == 0) {
    return invalid_argument("'" + std::string(text) + "' is not a rate; use e.g. 50MB/s, 1GB/s, 800Mbit/s");
  }
  return rate;
}

std::string format_rate(uint64_t bytes_per_second) {
  static constexpr Suffix kUnits[] = {{"GB/s", 1'000'000'000}, {"GiB/s", kGiB}, {"MB/s", 1'000'000},
                                      {"MiB/s", kMiB},         {"kB/s", 1000},  {"KiB/s", kKiB}};
  for (const Suffix& unit : kUnits) {
    if (bytes_per_second != 0 && bytes_per_second % unit.multiplier == 0) {
      return std::to_string(bytes_per_second / unit.multiplier) + std::string(unit.text);
    }
  }
  return std::to_string(bytes_per_second) + "B/s";
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
