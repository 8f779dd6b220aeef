// SPDX-License-Identifier: Apache-2.0
// Splitting byte ranges at chunk boundaries. Pure arithmetic, no state.
//
// Invariants: chunk_size_bytes is a power of two in [kMinChunkSizeBytes,
// kMaxChunkSizeBytes]; the last chunk of a volume may be shorter than a chunk
// (volume size need only be a multiple of 512).
#pragma once

#include <cstdint>

#include "base/assert.h"
#include "base/units.h"

namespace amirror {

constexpr uint64_t kMinChunkSizeBytes = 4 * kKiB;
constexpr uint64_t kMaxChunkSizeBytes = 4 * kMiB;
constexpr uint64_t kDefaultChunkSizeBytes = 64 * kKiB;
constexpr uint64_t kSectorSizeBytes = 512;
constexpr uint64_t kMaxVolumeSizeBytes = 64 * kTiB;

// One piece of a request that falls inside a single chunk.
struct ChunkPiece {
  uint64_t chunk_index = 0;
  uint64_t offset_in_chunk_bytes = 0;
  uint64_t length_bytes = 0;
  uint64_t offset_in_request_bytes = 0;  // where this piece starts within the request
  bool covers_whole_chunk = false;       // the piece spans the chunk's full (clipped) length
};

class ChunkGeometry {
 public:
  ChunkGeometry(uint64_t volume_size_bytes, uint64_t chunk_size_bytes)
      : volume_size_bytes_(volume_size_bytes), chunk_size_bytes_(chunk_size_bytes) {
    AMIRROR_ASSERT(is_power_of_two(chunk_size_bytes));
    chunk_shift_ = static_cast<uint32_t>(__builtin_ctzll(chunk_size_bytes));
  }

  uint64_t volume_size_bytes() const { return volume_size_bytes_; }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }
  uint64_t chunk_count() const {
    return (volume_size_bytes_ + chunk_size_bytes_ - 1) >> chunk_shift_;
  }
  uint64_t chunk_offset_bytes(uint64_t chunk_index) const { return chunk_index << chunk_shift_; }
  // Length of the chunk clipped to the volume's end.
  uint64_t chunk_length_bytes(uint64_t chunk_index) const {
    uint64_t start = chunk_offset_bytes(chunk_index);
    AMIRROR_ASSERT(start < volume_size_bytes_);
    uint64_t remaining = volume_size_bytes_ - start;
    return remaining < chunk_size_bytes_ ? remaining : chunk_size_bytes_;
  }
  // True when [offset, offset + length) lies inside the volume (overflow-safe).
  bool in_range(uint64_t offset_bytes, uint64_t length_bytes) const {
    return offset_bytes <= volume_size_bytes_ && length_bytes <= volume_size_bytes_ - offset_bytes;
  }

  // Calls visit(const ChunkPiece&) for each chunk the range touches, in order.
  // REQUIRES: in_range(offset_bytes, length_bytes).
  template <typename Visit>
  void for_each_piece(uint64_t offset_bytes, uint64_t length_bytes, Visit&& visit) const {
    AMIRROR_ASSERT(in_range(offset_bytes, length_bytes));
    uint64_t done = 0;
    while (done < length_bytes) {
      uint64_t position = offset_bytes + done;
      ChunkPiece piece;
      piece.chunk_index = position >> chunk_shift_;
      piece.offset_in_chunk_bytes = position & (chunk_size_bytes_ - 1);
      uint64_t room = chunk_size_bytes_ - piece.offset_in_chunk_bytes;
      piece.length_bytes = length_bytes - done < room ? length_bytes - done : room;
      piece.offset_in_request_bytes = done;
      piece.covers_whole_chunk = piece.offset_in_chunk_bytes == 0 &&
                                 piece.length_bytes == chunk_length_bytes(piece.chunk_index);
      visit(piece);
      done += piece.length_bytes;
    }
  }

 private:
  uint64_t volume_size_bytes_;
  uint64_t chunk_size_bytes_;
  uint32_t chunk_shift_;
};

}  // namespace amirror
