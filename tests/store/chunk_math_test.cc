// SPDX-License-Identifier: Apache-2.0
// Unit tests of ChunkGeometry: splitting requests at chunk boundaries.
#include "store/chunk_math.h"

#include <gtest/gtest.h>

#include <vector>

namespace amirror {
namespace {

std::vector<ChunkPiece> pieces(const ChunkGeometry& geometry, uint64_t offset, uint64_t length) {
  std::vector<ChunkPiece> out;
  geometry.for_each_piece(offset, length, [&](const ChunkPiece& piece) { out.push_back(piece); });
  return out;
}

TEST(ChunkMathTest, CountsAndLastPartialChunk) {
  ChunkGeometry geometry(10 * 4096 + 512, 4096);
  EXPECT_EQ(geometry.chunk_count(), 11u);
  EXPECT_EQ(geometry.chunk_length_bytes(0), 4096u);
  EXPECT_EQ(geometry.chunk_length_bytes(10), 512u);
  EXPECT_EQ(geometry.chunk_offset_bytes(10), 40960u);
  ChunkGeometry exact(8 * 65536, 65536);
  EXPECT_EQ(exact.chunk_count(), 8u);
  EXPECT_EQ(exact.chunk_length_bytes(7), 65536u);
}

TEST(ChunkMathTest, RequestInsideOneChunk) {
  ChunkGeometry geometry(1 << 20, 4096);
  auto p = pieces(geometry, 4096 + 100, 200);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].chunk_index, 1u);
  EXPECT_EQ(p[0].offset_in_chunk_bytes, 100u);
  EXPECT_EQ(p[0].length_bytes, 200u);
  EXPECT_EQ(p[0].offset_in_request_bytes, 0u);
  EXPECT_FALSE(p[0].covers_whole_chunk);
}

TEST(ChunkMathTest, UnalignedRequestSpanningChunks) {
  ChunkGeometry geometry(1 << 20, 4096);
  // From the last byte of chunk 0 through chunk 1 to the first byte of chunk 3.
  auto p = pieces(geometry, 4095, 1 + 4096 * 2 + 1);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0].chunk_index, 0u);
  EXPECT_EQ(p[0].offset_in_chunk_bytes, 4095u);
  EXPECT_EQ(p[0].length_bytes, 1u);
  EXPECT_FALSE(p[0].covers_whole_chunk);
  EXPECT_EQ(p[1].chunk_index, 1u);
  EXPECT_TRUE(p[1].covers_whole_chunk);
  EXPECT_EQ(p[1].offset_in_request_bytes, 1u);
  EXPECT_EQ(p[2].chunk_index, 2u);
  EXPECT_TRUE(p[2].covers_whole_chunk);
  EXPECT_EQ(p[3].chunk_index, 3u);
  EXPECT_EQ(p[3].offset_in_chunk_bytes, 0u);
  EXPECT_EQ(p[3].length_bytes, 1u);
  EXPECT_EQ(p[3].offset_in_request_bytes, 1u + 2 * 4096);
  uint64_t total = 0;
  for (const auto& piece : p) total += piece.length_bytes;
  EXPECT_EQ(total, 1u + 4096 * 2 + 1);
}

TEST(ChunkMathTest, LastPartialChunkIsWholeWhenCoveredToTheEnd) {
  ChunkGeometry geometry(3 * 8192 + 1024, 8192);
  auto p = pieces(geometry, 3 * 8192, 1024);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].chunk_index, 3u);
  EXPECT_TRUE(p[0].covers_whole_chunk) << "the clipped last chunk is covered whole";
  auto partial = pieces(geometry, 3 * 8192 + 512, 512);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_FALSE(partial[0].covers_whole_chunk);
  auto whole_volume = pieces(geometry, 0, geometry.volume_size_bytes());
  ASSERT_EQ(whole_volume.size(), 4u);
  for (const auto& piece : whole_volume) EXPECT_TRUE(piece.covers_whole_chunk);
}

TEST(ChunkMathTest, EmptyRequestHasNoPieces) {
  ChunkGeometry geometry(1 << 20, 4096);
  EXPECT_TRUE(pieces(geometry, 12345, 0).empty());
  EXPECT_TRUE(pieces(geometry, 1 << 20, 0).empty());
}

TEST(ChunkMathTest, InRangeIsOverflowSafe) {
  const uint64_t size = 1 << 20;
  ChunkGeometry geometry(size, 4096);
  EXPECT_TRUE(geometry.in_range(0, size));
  EXPECT_TRUE(geometry.in_range(size, 0));
  EXPECT_TRUE(geometry.in_range(size - 1, 1));
  EXPECT_FALSE(geometry.in_range(size - 1, 2));
  EXPECT_FALSE(geometry.in_range(size + 1, 0));
  EXPECT_FALSE(geometry.in_range(1, UINT64_MAX));  // offset + length wraps to 0
  EXPECT_FALSE(geometry.in_range(UINT64_MAX, 1));
  EXPECT_FALSE(geometry.in_range(UINT64_MAX - 10, 4096));
}

TEST(ChunkMathTest, LargestVolumeAndChunkSizes) {
  ChunkGeometry geometry(kMaxVolumeSizeBytes, kMaxChunkSizeBytes);
  EXPECT_EQ(geometry.chunk_count(), kMaxVolumeSizeBytes / kMaxChunkSizeBytes);
  auto p = pieces(geometry, kMaxVolumeSizeBytes - 512, 512);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].chunk_index, geometry.chunk_count() - 1);
  EXPECT_EQ(p[0].offset_in_chunk_bytes, kMaxChunkSizeBytes - 512);
}

}  // namespace
}  // namespace amirror
