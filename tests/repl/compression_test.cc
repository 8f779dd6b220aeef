// SPDX-License-Identifier: Apache-2.0
// zstd frames both ways: compressible, incompressible and all-zero payloads, frames
// that must never be compressed, and damaged compressed payloads (refused with a clear
// error before any session could see them).
#include "repl/compression.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <random>

#include "base/coding.h"

namespace amirror::repl {
namespace {

std::span<const uint8_t, kFrameHeaderBytes> header_of(const std::vector<uint8_t>& frame) {
  return std::span<const uint8_t, kFrameHeaderBytes>(frame.data(), kFrameHeaderBytes);
}

// What a PeerSocket does on receipt: the header, then the payload that followed it.
Result<Frame> receive(FrameDecompressor& decompressor, const std::vector<uint8_t>& wire) {
  std::vector<uint8_t> payload(wire.begin() + kFrameHeaderBytes, wire.end());
  return decompressor.finish(header_of(wire), std::move(payload));
}

std::vector<uint8_t> random_bytes(size_t size, uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::vector<uint8_t> bytes(size);
  for (auto& byte : bytes) byte = static_cast<uint8_t>(engine());
  return bytes;
}

std::vector<uint8_t> text_bytes(size_t size) {
  const std::string line = "2026-12-01T23:54:51Z site-a mirror db -> site-b: copying cycle 42, 17 chunks\n";
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(line[i % line.size()] + (i / 4096) % 3);
  return bytes;
}

TEST(Compression, ParsesItsNames) {
  EXPECT_EQ(parse_compression("zstd").value(), Compression::kZstd);
  EXPECT_EQ(parse_compression("off").value(), Compression::kOff);
  auto bad = parse_compression("lz4");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'lz4'"), std::string::npos);
  EXPECT_STREQ(compression_name(Compression::kZstd), "zstd");
}

TEST(Compression, CompressibleAndZeroChunksRoundTripSmaller) {
  for (const auto& data : {text_bytes(65536), std::vector<uint8_t>(4 * 1024 * 1024, 0), text_bytes(4096)}) {
    std::vector<uint8_t> frame = encode_chunk_frame(7, 42, RecordKind::kData, data);
    FrameCompressor compressor;
    std::vector<uint8_t> wire;
    ASSERT_TRUE(compressor.compress(frame, wire));
    EXPECT_LT(wire.size(), frame.size() / 4) << data.size();
    FrameDecompressor decompressor;
    auto received = receive(decompressor, wire);
    ASSERT_TRUE(received.ok()) << received.status().to_string();
    EXPECT_EQ(received->type, FrameType::kChunk);
    auto record = decode_chunk(received->payload);
    ASSERT_TRUE(record.ok());
    EXPECT_EQ(record->record_index, 7u);
    EXPECT_EQ(record->chunk_index, 42u);
    EXPECT_TRUE(std::equal(record->data.begin(), record->data.end(), data.begin(), data.end()));
  }
}

TEST(Compression, IncompressibleDataGoesAsItIsAndCostsLessCpuAfterwards) {
  FrameCompressor compressor;
  std::vector<uint8_t> wire;
  for (uint64_t i = 0; i < 100; ++i) {
    std::vector<uint8_t> frame = encode_chunk_frame(i, i, RecordKind::kData, random_bytes(65536, i));
    // Never expands: not compressed, so the frame goes exactly as encoded.
    EXPECT_FALSE(compressor.compress(frame, wire)) << i;
    FrameDecompressor decompressor;
    auto received = receive(decompressor, frame);
    ASSERT_TRUE(received.ok());
    EXPECT_EQ(received->payload, std::vector<uint8_t>(frame.begin() + kFrameHeaderBytes, frame.end()));
  }
  // Compressible data after a random run is compressed again within kMaxSkip frames.
  std::vector<uint8_t> text = encode_chunk_frame(1, 1, RecordKind::kData, text_bytes(65536));
  int tries = 0;
  while (!compressor.compress(text, wire)) ASSERT_LE(++tries, 32);
  EXPECT_GT(tries, 0);  // it did skip some
}

TEST(Compression, OnlyDataFramesAreCompressed) {
  FrameCompressor compressor;
  std::vector<uint8_t> wire;
  std::vector<uint8_t> error = encode_frame(FrameType::kError, encode_error(std::string(2000, 'x')));
  EXPECT_FALSE(compressor.compress(error, wire));
  std::vector<uint8_t> small = encode_chunk_frame(0, 0, RecordKind::kData, std::vector<uint8_t>(100, 0));
  EXPECT_FALSE(compressor.compress(small, wire));  // below the size where it pays
  // A compressed frame of another type is refused by the header check.
  std::vector<uint8_t> forged = encode_frame(FrameType::kEndDelta, encode(EndDelta{3}));
  forged[6] = kFrameFlagZstd;
  auto parsed = parse_frame_header(header_of(forged));
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("compressed END_DELTA"), std::string::npos);
  // The plain decoder (uncompressed frames only) refuses the flag.
  std::vector<uint8_t> chunk = encode_chunk_frame(0, 0, RecordKind::kData, text_bytes(65536));
  ASSERT_TRUE(compressor.compress(chunk, wire));
  FrameType type;
  EXPECT_FALSE(decode_frame_header(header_of(wire), type).ok());
}

class CorruptCompressed : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = text_bytes(65536);
    ASSERT_TRUE(FrameCompressor().compress(encode_chunk_frame(3, 9, RecordKind::kData, data_), wire_));
  }
  std::string refusal(const std::vector<uint8_t>& wire) {
    FrameDecompressor decompressor;
    auto received = receive(decompressor, wire);
    EXPECT_FALSE(received.ok());
    return received.ok() ? "" : received.status().message();
  }
  std::vector<uint8_t> data_;
  std::vector<uint8_t> wire_;
};

// A flipped bit either is refused with a clear error or (a bit zstd does not use) still
// yields exactly the original bytes: never different data.
TEST_F(CorruptCompressed, EveryFlippedBitOfThePayloadIsRefusedOrHarmless) {
  const std::vector<uint8_t> original = encode_chunk_frame(3, 9, RecordKind::kData, data_);
  size_t refused = 0, harmless = 0;
  for (size_t bit = kFrameHeaderBytes * 8; bit < wire_.size() * 8; bit += 7) {
    std::vector<uint8_t> damaged = wire_;
    damaged[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    FrameDecompressor decompressor;
    auto received = receive(decompressor, damaged);
    if (received.ok()) {
      EXPECT_EQ(received->payload, std::vector<uint8_t>(original.begin() + kFrameHeaderBytes, original.end()))
          << "bit " << bit;
      harmless += 1;
      continue;
    }
    refused += 1;
    std::string message = received.status().message();
    EXPECT_TRUE(message.find("does not decompress") != std::string::npos ||
                message.find("checksum") != std::string::npos || message.find("not a zstd frame") != std::string::npos ||
                message.find("fewer bytes") != std::string::npos || message.find("would decompress") != std::string::npos)
        << "bit " << bit << ": " << message;
  }
  EXPECT_GT(refused, 20 * harmless);
}

TEST_F(CorruptCompressed, GarbageTruncationAndBombsAreRefused) {
  std::vector<uint8_t> garbage = wire_;
  std::fill(garbage.begin() + kFrameHeaderBytes, garbage.end(), 0xAB);
  EXPECT_NE(refusal(garbage).find("not a zstd frame"), std::string::npos);
  std::vector<uint8_t> truncated(wire_.begin(), wire_.end() - 5);
  put_u32(truncated.data() + 8, static_cast<uint32_t>(truncated.size() - kFrameHeaderBytes));
  EXPECT_NE(refusal(truncated).find("does not decompress"), std::string::npos);
  // A small zstd frame claiming 64 MiB of zeros: refused before anything is allocated.
  std::vector<uint8_t> zeros(64 << 20, 0);
  std::vector<uint8_t> bomb_payload(ZSTD_compressBound(zeros.size()));
  bomb_payload.resize(ZSTD_compress(bomb_payload.data(), bomb_payload.size(), zeros.data(), zeros.size(), 1));
  std::vector<uint8_t> bomb(wire_.begin(), wire_.begin() + kFrameHeaderBytes);
  put_u32(bomb.data() + 8, static_cast<uint32_t>(bomb_payload.size()));
  bomb.insert(bomb.end(), bomb_payload.begin(), bomb_payload.end());
  EXPECT_NE(refusal(bomb).find("would decompress to 67108864 bytes"), std::string::npos);
}

TEST_F(CorruptCompressed, ValidZstdOfOtherBytesFailsTheChecksum) {
  // Well-formed zstd, but not what the checksum was taken over (a forged payload).
  std::vector<uint8_t> other_frame = encode_chunk_frame(3, 9, RecordKind::kData, text_bytes(65536 - 1));
  std::vector<uint8_t> other;
  ASSERT_TRUE(FrameCompressor().compress(other_frame, other));
  std::vector<uint8_t> forged(wire_.begin(), wire_.begin() + kFrameHeaderBytes);
  put_u32(forged.data() + 8, static_cast<uint32_t>(other.size() - kFrameHeaderBytes));
  forged.insert(forged.end(), other.begin() + kFrameHeaderBytes, other.end());
  EXPECT_NE(refusal(forged).find("checksum"), std::string::npos);
}

}  // namespace
}  // namespace amirror::repl
