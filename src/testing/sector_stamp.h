// SPDX-License-Identifier: Apache-2.0
// Self-describing sector content for crash and concurrency tests: every 512-byte
// sector written carries who wrote it (a sequence number and a tag), where it belongs
// (its sector index) and pseudo-random filler derived from both, so a reader can tell
// exactly which write a sector came from, or that it is garbage or misplaced.
//
//   bytes 0..8    magic "AMSTAMP1"
//   bytes 8..16   sequence number (> 0)
//   bytes 16..24  sector index in the volume
//   bytes 24..32  tag (free for the test: writer id, region id, ...)
//   bytes 32..512 filler = f(sequence, sector index, tag)
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

namespace amirror::testing {

constexpr uint64_t kStampSectorBytes = 512;

inline uint64_t stamp_mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills one sector. REQUIRES: out.size() == kStampSectorBytes.
inline void stamp_sector(std::span<uint8_t> out, uint64_t sequence, uint64_t sector_index,
                         uint64_t tag) {
  std::memcpy(out.data(), "AMSTAMP1", 8);
  std::memcpy(out.data() + 8, &sequence, 8);
  std::memcpy(out.data() + 16, &sector_index, 8);
  std::memcpy(out.data() + 24, &tag, 8);
  uint64_t state = stamp_mix(sequence * 0x100000001b3ull ^ sector_index) ^ tag;
  for (uint64_t i = 32; i < kStampSectorBytes; i += 8) {
    state = stamp_mix(state);
    std::memcpy(out.data() + i, &state, 8);
  }
}

// Fills `out` (a whole number of sectors starting at sector `first_sector`).
inline void stamp_range(std::span<uint8_t> out, uint64_t sequence, uint64_t first_sector,
                        uint64_t tag) {
  for (uint64_t i = 0; i * kStampSectorBytes < out.size(); i++) {
    stamp_sector(out.subspan(i * kStampSectorBytes, kStampSectorBytes), sequence,
                 first_sector + i, tag);
  }
}

enum class StampKind { kZero, kValid, kGarbage };

struct StampInfo {
  StampKind kind = StampKind::kGarbage;
  uint64_t sequence = 0;
  uint64_t tag = 0;
};

// Decodes a sector read back from `sector_index`: all zero, a valid stamp written for
// this very sector, or garbage (torn, misplaced or foreign content).
inline StampInfo parse_sector(std::span<const uint8_t> sector, uint64_t sector_index) {
  StampInfo info;
  bool all_zero = true;
  for (uint8_t b : sector) {
    if (b != 0) {
      all_zero = false;
      break;
    }
  }
  if (all_zero) {
    info.kind = StampKind::kZero;
    return info;
  }
  if (std::memcmp(sector.data(), "AMSTAMP1", 8) != 0) return info;
  uint64_t index = 0;
  std::memcpy(&info.sequence, sector.data() + 8, 8);
  std::memcpy(&index, sector.data() + 16, 8);
  std::memcpy(&info.tag, sector.data() + 24, 8);
  if (index != sector_index || info.sequence == 0) return info;
  uint8_t expected[kStampSectorBytes];
  stamp_sector(expected, info.sequence, sector_index, info.tag);
  if (std::memcmp(expected, sector.data(), kStampSectorBytes) != 0) return info;
  info.kind = StampKind::kValid;
  return info;
}

}  // namespace amirror::testing
