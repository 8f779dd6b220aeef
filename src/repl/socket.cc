// SPDX-License-Identifier: Apache-2.0
#include "repl/socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <array>
#include <cstring>

#include "base/assert.h"

namespace amirror::repl {

PeerSocket::PeerSocket(Connection connection) : fd_(connection.fd), peer_(std::move(connection.peer)) {}

PeerSocket::~PeerSocket() {
  if (tls_ != nullptr) tls_->close_notify();
  ::close(fd_);
}

Result<std::unique_ptr<PeerSocket>> PeerSocket::connect(Network& network, const std::string& address,
                                                        int timeout_ms) {
  AMIRROR_ASSIGN_OR_RETURN(Connection connection, network.connect(address, timeout_ms));
  auto socket = std::make_unique<PeerSocket>(std::move(connection));
  socket->set_timeout_ms(timeout_ms);
  return socket;
}

Status PeerSocket::start_tls(const net::TlsContext& context, bool as_server) {
  AMIRROR_ASSIGN_OR_RETURN(tls_, as_server ? context.accept(fd_, peer_, timeout_ms_)
                                           : context.connect(fd_, peer_, timeout_ms_));
  return Status();
}

void PeerSocket::set_timeout_ms(int timeout_ms) {
  timeout_ms_ = timeout_ms;
  if (tls_ != nullptr) tls_->set_timeout_ms(timeout_ms);
  timeval timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
}

void PeerSocket::set_throttle(std::shared_ptr<SendThrottle> throttle) { throttle_ = std::move(throttle); }

Status PeerSocket::send_encoded(std::span<const uint8_t> frame) {
  AMIRROR_ASSERT(frame.size() >= kFrameHeaderBytes);
  const auto type = static_cast<FrameType>(frame[4] | (frame[5] << 8));
  std::span<const uint8_t> wire = frame;
  if (compression_ == Compression::kZstd && peer_version_ >= kFirstCompressingVersion &&
      compressor_.compress(frame, compressed_)) {
    wire = compressed_;
  }
  frame_bytes_sent_.fetch_add(frame.size());
  if (throttle_ == nullptr) return write_all(wire);
  if (!is_compressible_frame_type(type)) {
    throttle_->charge(wire.size());
    return write_all(wire);
  }
  // In pieces, each let through by the buckets, so the rate holds within a frame too.
  const uint64_t piece_bytes = throttle_->piece_bytes();
  for (size_t offset = 0; offset < wire.size(); offset += piece_bytes) {
    std::span<const uint8_t> piece = wire.subspan(offset, std::min<size_t>(piece_bytes, wire.size() - offset));
    throttle_->acquire(piece.size());
    AMIRROR_RETURN_IF_ERROR(write_all(piece));
  }
  return Status();
}

Status PeerSocket::write_all(std::span<const uint8_t> frame) {
  if (tls_ != nullptr) {
    AMIRROR_RETURN_IF_ERROR(tls_->write_all(frame));
    bytes_sent_.fetch_add(frame.size());
    return Status();
  }
  size_t done = 0;
  while (done < frame.size()) {
    ssize_t sent = ::send(fd_, frame.data() + done, frame.size() - done, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Status(ErrorCode::kTimeout, "sending to " + peer_ + " timed out (peer not reading)");
      }
      return Status::from_errno(errno, "send to " + peer_);
    }
    done += static_cast<size_t>(sent);
    bytes_sent_.fetch_add(static_cast<uint64_t>(sent));
  }
  return Status();
}

Status PeerSocket::send_frame(FrameType type, std::span<const uint8_t> payload) {
  std::vector<uint8_t> frame = encode_frame(type, payload);
  return send_encoded(frame);
}

Status PeerSocket::read_exact(std::span<uint8_t> out) {
  if (tls_ != nullptr) {
    Status status = tls_->read_exact(out);
    if (status.code() == ErrorCode::kTimeout) {
      return Status(ErrorCode::kTimeout, "no data from " + peer_ + " within the peer timeout");
    }
    AMIRROR_RETURN_IF_ERROR(status);
    bytes_received_.fetch_add(out.size());
    return Status();
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t received = ::recv(fd_, out.data() + done, out.size() - done, 0);
    if (received < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Status(ErrorCode::kTimeout, "no data from " + peer_ + " within the peer timeout");
      }
      return Status::from_errno(errno, "receive from " + peer_);
    }
    if (received == 0) return Status(ErrorCode::kIo, peer_ + " closed the connection");
    done += static_cast<size_t>(received);
    bytes_received_.fetch_add(static_cast<uint64_t>(received));
  }
  return Status();
}

Result<Frame> PeerSocket::receive_frame() {
  std::array<uint8_t, kFrameHeaderBytes> header;
  AMIRROR_RETURN_IF_ERROR(read_exact(header));
  AMIRROR_ASSIGN_OR_RETURN(FrameHeader parsed, parse_frame_header(header));
  std::vector<uint8_t> payload(parsed.payload_bytes);
  AMIRROR_RETURN_IF_ERROR(read_exact(payload));
  AMIRROR_ASSIGN_OR_RETURN(Frame frame, decompressor_.finish(header, std::move(payload)));
  if (frame.type == FrameType::kHelloAck) note_hello_ack(frame);
  return frame;
}

void PeerSocket::note_hello_ack(const Frame& frame) {
  // A malformed one is the session's to refuse (check_hello_ack); here it just means
  // nothing beyond the oldest version.
  auto ack = decode_hello(frame.payload);
  if (ack.ok()) peer_version_ = std::min(ack.value().protocol_version, kProtocolVersion);
}

void PeerSocket::shutdown() {
  if (throttle_ != nullptr) throttle_->cancel();
  ::shutdown(fd_, SHUT_RDWR);
}

bool PeerSocket::readable_now() const {
  if (tls_ != nullptr && tls_->has_buffered_input()) return true;
  pollfd waiter{fd_, POLLIN, 0};
  return ::poll(&waiter, 1, 0) > 0;
}

}  // namespace amirror::repl
