// SPDX-License-Identifier: Apache-2.0
// Parsing and printing of sizes and durations as operators type them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace amirror {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr uint64_t kTiB = 1024 * kGiB;

// "4096", "64K", "64KiB", "1.5G" is refused (integers only), "1T". Suffixes are
// binary (K = 1024). Overflow and empty input are errors naming the input.
Result<uint64_t> parse_size_bytes(std::string_view text);
// A rate as operators type it: "50MB/s", "1GB/s", "800Mbit/s", "512KiB/s", "1000B/s".
// Decimal units for bytes (MB = 10^6, as link speeds are sold) and bits (Mbit =
// 10^6 bits), binary ones as KiB/s, MiB/s, GiB/s; a whole number before the unit. The
// error names the input and shows examples; 0 is refused (say "off" where allowed).
Result<uint64_t> parse_rate_bytes_per_second(std::string_view text);
// 50'000'000 -> "50MB/s", 1'048'576 -> "1MiB/s", else bytes: "1234B/s" (parses back).
std::string format_rate(uint64_t bytes_per_second);
// "10s", "500ms", "2m", "1h", plain number = seconds.
Result<uint64_t> parse_duration_ms(std::string_view text);
// 1536 -> "1.5 KiB"
std::string format_bytes(uint64_t bytes);

inline bool is_power_of_two(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

}  // namespace amirror
