// SPDX-License-Identifier: Apache-2.0
// A peer connection: sending/receiving whole checked frames (repl/wire.h) over a
// stream the Network of base/env.h made (TCP in production, in-process in tests), with
// per-operation timeouts, so a silently dead peer is noticed within a bounded time. After start_tls() every byte
// goes through TLS 1.3 (net/tls.h); before it, the socket is plaintext, which a node
// only uses with `insecure = true`.
// Below the sessions it also (repl/compression.h, repl/throttle.h):
//  - compresses outgoing CHUNK/REPAIR_CHUNK frames with zstd when set_compression()
//    asked for it and the peer's HELLO_ACK, which the socket notes as it passes,
//    announced a version that decodes them; decompresses flagged incoming frames;
//  - sends through a SendThrottle, if set: data frames wait for the bandwidth buckets
//    in pieces, other frames are only counted (they are small and must not queue).
// Thread-safety: a PeerSocket is used by one thread at a time, except shutdown(),
// which any thread may call to wake a blocked send or receive.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/env.h"
#include "base/status.h"
#include "net/tls.h"
#include "repl/compression.h"
#include "repl/frame_sink.h"
#include "repl/throttle.h"
#include "repl/wire.h"

namespace amirror::repl {

class PeerSocket {
 public:
  // Owns `connection.fd` from now on.
  explicit PeerSocket(Connection connection);
  ~PeerSocket();
  PeerSocket(const PeerSocket&) = delete;
  PeerSocket& operator=(const PeerSocket&) = delete;

  // Connects through `network`; every send and receive then times out after timeout_ms.
  static Result<std::unique_ptr<PeerSocket>> connect(Network& network, const std::string& address, int timeout_ms);

  // Runs the TLS handshake as client (the connecting side) or server; on success every
  // later send and receive is encrypted. The peer's identity is checked by the caller
  // (tls()->peer_has_identity), which knows whom to expect.
  Status start_tls(const net::TlsContext& context, bool as_server);
  // Null on a plaintext connection.
  const net::TlsSession* tls() const { return tls_.get(); }

  // Every send and receive fails with kTimeout after this long without progress.
  void set_timeout_ms(int timeout_ms);
  // Compress data frames from now on, once the peer's HELLO_ACK allows it.
  void set_compression(Compression compression) { compression_ = compression; }
  // Every later send goes through `throttle` (null: none).
  void set_throttle(std::shared_ptr<SendThrottle> throttle);
  Status send_frame(FrameType type, std::span<const uint8_t> payload);
  Status send_encoded(std::span<const uint8_t> frame);
  // Receives one frame whose header and checksum are valid.
  Result<Frame> receive_frame();
  // True when a frame (or the end of the stream) is waiting to be received.
  bool readable_now() const;
  // Wakes any blocked send/receive; later calls fail.
  void shutdown();

  const std::string& peer() const { return peer_; }
  // Bytes on the wire (after compression; TLS records not counted).
  uint64_t bytes_sent() const { return bytes_sent_.load(); }
  // Bytes of the frames as encoded, before compression: what bytes_sent() would be
  // without it.
  uint64_t frame_bytes_sent() const { return frame_bytes_sent_.load(); }
  uint64_t bytes_received() const { return bytes_received_.load(); }

 private:
  Status read_exact(std::span<uint8_t> out);
  Status write_all(std::span<const uint8_t> bytes);
  // Notes the protocol version of a HELLO_ACK passing by (what the peer can decode).
  void note_hello_ack(const Frame& frame);
  int fd_;
  int timeout_ms_ = 0;
  std::unique_ptr<net::TlsSession> tls_;
  std::string peer_;
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> frame_bytes_sent_{0};
  Compression compression_ = Compression::kOff;
  uint32_t peer_version_ = kOldestProtocolVersion;  // until a HELLO_ACK says more
  FrameCompressor compressor_;
  FrameDecompressor decompressor_;
  std::vector<uint8_t> compressed_;  // reused output buffer
  std::shared_ptr<SendThrottle> throttle_;  // set before use; read-only afterwards
};

// A session's frames out, written to a socket.
class SocketSink : public FrameSink {
 public:
  explicit SocketSink(PeerSocket& socket) : socket_(socket) {}
  Status send_encoded(std::span<const uint8_t> frame) override { return socket_.send_encoded(frame); }

 private:
  PeerSocket& socket_;
};

}  // namespace amirror::repl
