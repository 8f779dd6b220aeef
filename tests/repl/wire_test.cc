// SPDX-License-Identifier: Apache-2.0
#include "repl/wire.h"

#include <gtest/gtest.h>

#include <random>

namespace amirror::repl {
namespace {

std::span<const uint8_t, kFrameHeaderBytes> header_of(const std::vector<uint8_t>& frame) {
  return std::span<const uint8_t, kFrameHeaderBytes>(frame.data(), kFrameHeaderBytes);
}

TEST(Wire, FrameRoundTrip) {
  std::vector<uint8_t> payload = encode(Hello{kProtocolVersion, "site-a"});
  std::vector<uint8_t> frame = encode_frame(FrameType::kHello, payload);
  FrameType type;
  auto length = decode_frame_header(header_of(frame), type);
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(type, FrameType::kHello);
  ASSERT_EQ(length.value(), payload.size());
  std::span<const uint8_t> body(frame.data() + kFrameHeaderBytes, length.value());
  EXPECT_TRUE(verify_frame(header_of(frame), body).ok());
  auto hello = decode_hello(body);
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->node_name, "site-a");
}

TEST(Wire, EveryFlippedBitIsDetected) {
  std::vector<uint8_t> data(4096);
  std::mt19937 random(7);
  for (auto& byte : data) byte = static_cast<uint8_t>(random());
  std::vector<uint8_t> frame = encode_chunk_frame(3, 17, RecordKind::kData, data);
  for (size_t bit = 0; bit < frame.size() * 8; bit += 7) {
    std::vector<uint8_t> damaged = frame;
    damaged[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    FrameType type;
    auto length = decode_frame_header(header_of(damaged), type);
    if (!length.ok()) continue;  // refused at the header: fine
    if (length.value() != damaged.size() - kFrameHeaderBytes) continue;  // would read a different length
    std::span<const uint8_t> body(damaged.data() + kFrameHeaderBytes, length.value());
    EXPECT_FALSE(verify_frame(header_of(damaged), body).ok()) << "bit " << bit;
  }
}

TEST(Wire, RefusesOversizedAndUnknownFrames) {
  std::vector<uint8_t> frame = encode_frame(FrameType::kKeepAlive, {});
  FrameType type;
  std::vector<uint8_t> huge = frame;
  huge[8] = huge[9] = huge[10] = huge[11] = 0xff;  // 4 GiB payload
  EXPECT_FALSE(decode_frame_header(header_of(huge), type).ok());
  std::vector<uint8_t> unknown = frame;
  unknown[4] = 99;
  EXPECT_FALSE(decode_frame_header(header_of(unknown), type).ok());
  std::vector<uint8_t> bad_magic = frame;
  bad_magic[0] ^= 1;
  EXPECT_FALSE(decode_frame_header(header_of(bad_magic), type).ok());
}

TEST(Wire, MessagesRoundTripAndRejectGarbage) {
  BeginDelta begin{4, 9, 1234567, 100, 10, false};
  auto decoded = decode_begin_delta(encode(begin));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->base_cycle, 4u);
  EXPECT_EQ(decoded->target_cycle, 9u);
  EXPECT_EQ(decoded->first_record, 10u);

  BeginDelta backwards{9, 4, 0, 0, 0, false};
  EXPECT_FALSE(decode_begin_delta(encode(backwards)).ok());

  std::vector<uint8_t> truncated = encode(ReplicaState{});
  truncated.pop_back();
  EXPECT_FALSE(decode_replica_state(truncated).ok());

  EXPECT_FALSE(decode_hello(encode(Hello{1, "../etc"})).ok()) << "names from peers are validated";
  EXPECT_FALSE(decode_open_replica(encode(OpenReplica{"a/b", 512, 4096})).ok());

  std::vector<uint8_t> zero_frame = encode_chunk_frame(0, 5, RecordKind::kZero, {});
  auto record = decode_chunk(std::span(zero_frame).subspan(kFrameHeaderBytes));
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->kind, RecordKind::kZero);
  EXPECT_EQ(record->chunk_index, 5u);
  std::vector<uint8_t> bad_kind = zero_frame;
  bad_kind[kFrameHeaderBytes + 16] = 7;
  EXPECT_FALSE(decode_chunk(std::span(bad_kind).subspan(kFrameHeaderBytes)).ok());
}

TEST(Wire, RandomBytesNeverCrashTheDecoders) {
  std::mt19937 random(11);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> bytes(random() % 64);
    for (auto& byte : bytes) byte = static_cast<uint8_t>(random());
    (void)decode_hello(bytes);
    (void)decode_open_replica(bytes);
    (void)decode_replica_state(bytes);
    (void)decode_begin_delta(bytes);
    (void)decode_chunk(bytes);
    (void)decode_end_delta(bytes);
    (void)decode_applied(bytes);
    (void)decode_error(bytes);
  }
}

}  // namespace
}  // namespace amirror::repl
