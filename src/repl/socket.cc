// SPDX-License-Identifier: Apache-2.0
#include "repl/socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <array>
#include <cstring>

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

Status PeerSocket::send_encoded(std::span<const uint8_t> frame) {
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
  Frame frame;
  AMIRROR_ASSIGN_OR_RETURN(uint32_t length, decode_frame_header(header, frame.type));
  frame.payload.resize(length);
  AMIRROR_RETURN_IF_ERROR(read_exact(frame.payload));
  AMIRROR_RETURN_IF_ERROR(verify_frame(header, frame.payload));
  return frame;
}

void PeerSocket::shutdown() { ::shutdown(fd_, SHUT_RDWR); }

bool PeerSocket::readable_now() const {
  if (tls_ != nullptr && tls_->has_buffered_input()) return true;
  pollfd waiter{fd_, POLLIN, 0};
  return ::poll(&waiter, 1, 0) > 0;
}

}  // namespace amirror::repl
