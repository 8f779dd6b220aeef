// SPDX-License-Identifier: Apache-2.0
// PeerSocket's wire options over a real socketpair: compression only once the peer's
// HELLO_ACK announces a version that decodes it (an old peer gets plain frames), the
// receiver gets the original payload back either way, and the byte counters tell data
// from wire bytes.
#include "repl/socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include "testing/manual_env.h"

namespace amirror::repl {
namespace {

struct Pair {
  std::unique_ptr<PeerSocket> source;
  std::unique_ptr<PeerSocket> target;
};

Pair connected_pair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Pair pair{std::make_unique<PeerSocket>(Connection{fds[0], "target"}),
            std::make_unique<PeerSocket>(Connection{fds[1], "source"})};
  pair.source->set_timeout_ms(10'000);
  pair.target->set_timeout_ms(10'000);
  return pair;
}

// 64 KiB that compress well, as a CHUNK frame.
std::vector<uint8_t> text_chunk_frame() {
  std::vector<uint8_t> data(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>("mirror cycle freeze\n"[i % 20]);
  return encode_chunk_frame(0, 5, RecordKind::kData, data);
}

// The source sends one chunk frame; the target receives it. Returns the wire bytes.
uint64_t send_chunk(Pair& pair, const std::vector<uint8_t>& frame) {
  uint64_t before = pair.source->bytes_sent();
  EXPECT_TRUE(pair.source->send_encoded(frame).ok());
  auto received = pair.target->receive_frame();
  EXPECT_TRUE(received.ok()) << received.status().to_string();
  if (received.ok()) {
    EXPECT_EQ(received->type, FrameType::kChunk);
    EXPECT_EQ(received->payload, std::vector<uint8_t>(frame.begin() + kFrameHeaderBytes, frame.end()));
  }
  return pair.source->bytes_sent() - before;
}

void ack(Pair& pair, uint32_t version) {
  ASSERT_TRUE(pair.target->send_frame(FrameType::kHelloAck, encode(Hello{version, "b"})).ok());
  ASSERT_TRUE(pair.source->receive_frame().ok());
}

TEST(SocketWire, CompressesOnlyForAPeerThatSaidItDecodes) {
  const std::vector<uint8_t> frame = text_chunk_frame();
  Pair pair = connected_pair();
  pair.source->set_compression(Compression::kZstd);
  EXPECT_EQ(send_chunk(pair, frame), frame.size());  // no HELLO_ACK yet: version 2 assumed
  ack(pair, kProtocolVersion);
  uint64_t wire = send_chunk(pair, frame);
  EXPECT_LT(wire, frame.size() / 10);
  EXPECT_EQ(pair.source->frame_bytes_sent(), 2 * frame.size());
  EXPECT_EQ(pair.source->bytes_sent(), frame.size() + wire);
}

TEST(SocketWire, AnOldPeerGetsPlainFrames) {
  const std::vector<uint8_t> frame = text_chunk_frame();
  Pair pair = connected_pair();
  pair.source->set_compression(Compression::kZstd);
  ack(pair, kOldestProtocolVersion);  // a version-3 target (before compression)
  EXPECT_EQ(send_chunk(pair, frame), frame.size());
}

TEST(SocketWire, CompressionOffSendsPlainFrames) {
  const std::vector<uint8_t> frame = text_chunk_frame();
  Pair pair = connected_pair();
  ack(pair, kProtocolVersion);
  EXPECT_EQ(send_chunk(pair, frame), frame.size());
}

TEST(SocketWire, AThrottledSocketStillDeliversWholeFrames) {
  // Unlimited buckets: the piece loop runs, no waiting, and frames arrive whole.
  testing::ManualClock clock;
  const std::vector<uint8_t> frame = text_chunk_frame();
  Pair pair = connected_pair();
  pair.source->set_throttle(std::make_shared<SendThrottle>(clock, std::vector{std::make_shared<TokenBucket>()}));
  EXPECT_EQ(send_chunk(pair, frame), frame.size());
  ASSERT_TRUE(pair.source->send_frame(FrameType::kEndDelta, encode(EndDelta{1})).ok());
  auto end = pair.target->receive_frame();
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->type, FrameType::kEndDelta);
}

}  // namespace
}  // namespace amirror::repl
