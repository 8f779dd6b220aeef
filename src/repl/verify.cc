// SPDX-License-Identifier: Apache-2.0
#include "repl/verify.h"

#include <openssl/evp.h>

#include <algorithm>

#include "base/zeros.h"
#include "store/chunk_math.h"

namespace amirror::repl {

ChunkHasher::ChunkHasher() {
  // Fetched once: EVP_sha256() would look the implementation up on every init.
  sha256_ = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  context_ = EVP_MD_CTX_new();
  AMIRROR_ASSERT(sha256_ != nullptr && context_ != nullptr);
  AMIRROR_ASSERT(EVP_MD_get_size(sha256_) == static_cast<int>(kChunkDigestBytes));
}

ChunkHasher::~ChunkHasher() {
  EVP_MD_CTX_free(context_);
  EVP_MD_free(sha256_);
}

ChunkDigest ChunkHasher::digest(uint64_t chunk_index, std::span<const uint8_t> data) {
  ChunkDigest result;
  result.chunk_index = chunk_index;
  if (all_zero(data)) return result;  // kZero
  result.kind = DigestKind::kHash;
  unsigned int length = 0;
  // These fail only on allocation failure or a broken provider: nothing to recover.
  AMIRROR_ASSERT(EVP_DigestInit_ex2(context_, sha256_, nullptr) == 1);
  AMIRROR_ASSERT(EVP_DigestUpdate(context_, data.data(), data.size()) == 1);
  AMIRROR_ASSERT(EVP_DigestFinal_ex(context_, result.digest.data(), &length) == 1);
  AMIRROR_ASSERT(length == kChunkDigestBytes);
  return result;
}

Status ReplicaPointReader::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  return replica_.read(offset_bytes, out);
}

Result<std::vector<ChunkRange>> ReplicaPointReader::allocated_ranges() {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<Extent> extents, replica_.allocated_extents(0, replica_.size_bytes()));
  return ranges_of_extents(extents, replica_.chunk_size_bytes());
}

uint32_t verify_window_chunks(uint64_t chunk_size_bytes) {
  AMIRROR_ASSERT(chunk_size_bytes > 0);
  return static_cast<uint32_t>(std::clamp<uint64_t>(kVerifyWindowBytes / chunk_size_bytes, 1, kMaxVerifyWindowChunks));
}

uint64_t chunk_count_of(uint64_t size_bytes, uint64_t chunk_size_bytes) {
  return ChunkGeometry(size_bytes, chunk_size_bytes).chunk_count();
}

uint64_t chunks_in(std::span<const ChunkRange> ranges) {
  uint64_t count = 0;
  for (const ChunkRange& range : ranges) count += range.chunk_count;
  return count;
}

uint64_t bytes_in(std::span<const ChunkRange> ranges, uint64_t size_bytes, uint64_t chunk_size_bytes) {
  ChunkGeometry geometry(size_bytes, chunk_size_bytes);
  uint64_t bytes = 0;
  for (const ChunkRange& range : ranges) {
    AMIRROR_ASSERT(range.chunk_count > 0 && range.end_chunk() <= geometry.chunk_count());
    // Every chunk is whole except perhaps the volume's last one.
    bytes += (range.chunk_count - 1) * chunk_size_bytes + geometry.chunk_length_bytes(range.end_chunk() - 1);
  }
  return bytes;
}

std::vector<ChunkRange> ranges_of_extents(std::span<const Extent> extents, uint64_t chunk_size_bytes) {
  std::vector<ChunkRange> ranges;
  for (const Extent& extent : extents) {
    if (extent.length_bytes == 0) continue;
    uint64_t first = extent.offset_bytes / chunk_size_bytes;
    uint64_t end = (extent.offset_bytes + extent.length_bytes - 1) / chunk_size_bytes + 1;
    // Two extents can touch the same chunk (a hole inside it): join them.
    if (!ranges.empty() && first <= ranges.back().end_chunk()) {
      AMIRROR_ASSERT(first >= ranges.back().first_chunk);
      ranges.back().chunk_count = std::max(ranges.back().end_chunk(), end) - ranges.back().first_chunk;
    } else {
      ranges.push_back({first, end - first});
    }
  }
  return ranges;
}

std::vector<ChunkRange> union_of(std::span<const ChunkRange> a, std::span<const ChunkRange> b) {
  std::vector<ChunkRange> result;
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    bool take_a = j == b.size() || (i < a.size() && a[i].first_chunk <= b[j].first_chunk);
    const ChunkRange& next = take_a ? a[i++] : b[j++];
    if (!result.empty() && next.first_chunk <= result.back().end_chunk()) {
      result.back().chunk_count = std::max(result.back().end_chunk(), next.end_chunk()) - result.back().first_chunk;
    } else {
      result.push_back(next);
    }
  }
  return result;
}

Status digest_window(PointReader& reader, ChunkHasher& hasher, std::span<const ChunkRange> window,
                     std::vector<uint8_t>& buffer, std::vector<ChunkDigest>& out) {
  ChunkGeometry geometry(reader.size_bytes(), reader.chunk_size_bytes());
  out.clear();
  buffer.resize(reader.chunk_size_bytes());
  for (const ChunkRange& range : window) {
    if (range.end_chunk() > geometry.chunk_count() || range.end_chunk() < range.first_chunk) {
      return out_of_range("chunks " + std::to_string(range.first_chunk) + ".." +
                          std::to_string(range.end_chunk() - 1) + " are beyond the volume's " +
                          std::to_string(geometry.chunk_count()) + " chunks");
    }
    for (uint64_t chunk_index = range.first_chunk; chunk_index < range.end_chunk(); ++chunk_index) {
      std::span<uint8_t> content(buffer.data(), geometry.chunk_length_bytes(chunk_index));
      AMIRROR_RETURN_IF_ERROR(reader.read(geometry.chunk_offset_bytes(chunk_index), content));
      out.push_back(hasher.digest(chunk_index, content));
    }
  }
  return Status();
}

void RangeCollector::add(uint64_t chunk_index) {
  if (!ranges_.empty() && chunk_index == ranges_.back().end_chunk()) {
    ranges_.back().chunk_count += 1;
  } else {
    AMIRROR_ASSERT(ranges_.empty() || chunk_index > ranges_.back().end_chunk());
    ranges_.push_back({chunk_index, 1});
  }
  chunk_count_ += 1;
}

WindowCursor::WindowCursor(std::vector<ChunkRange> ranges, uint32_t max_chunks)
    : ranges_(std::move(ranges)), max_chunks_(max_chunks) {
  AMIRROR_ASSERT(max_chunks_ >= 1);
}

std::vector<ChunkRange> WindowCursor::next() {
  AMIRROR_ASSERT(!done());
  std::vector<ChunkRange> window;
  uint64_t room = max_chunks_;
  while (room > 0 && !done()) {
    const ChunkRange& range = ranges_[index_];
    uint64_t take = std::min(room, range.chunk_count - offset_in_range_);
    window.push_back({range.first_chunk + offset_in_range_, take});
    room -= take;
    offset_in_range_ += take;
    if (offset_in_range_ == range.chunk_count) {
      index_ += 1;
      offset_in_range_ = 0;
    }
  }
  return window;
}

}  // namespace amirror::repl
