// SPDX-License-Identifier: Apache-2.0
#include "repl/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <array>
#include <cstring>

namespace amirror::repl {
namespace {

constexpr int kListenBacklog = 64;

void configure_connected(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // Kernel keep-alives as a second line behind the protocol's own timeouts.
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  int idle_seconds = 10, interval_seconds = 5, probes = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds, sizeof idle_seconds);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_seconds, sizeof interval_seconds);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  int buffer_bytes = 4 * 1024 * 1024;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
}

Result<addrinfo*> resolve(const HostPort& host_port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* result = nullptr;
  std::string port = std::to_string(host_port.port);
  int error = ::getaddrinfo(host_port.host.c_str(), port.c_str(), &hints, &result);
  if (error != 0) {
    return invalid_argument("cannot resolve '" + host_port.host + "': " + ::gai_strerror(error));
  }
  return result;
}

}  // namespace

Result<HostPort> parse_host_port(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return invalid_argument("bad address '" + address + "': expected HOST:PORT, e.g. 127.0.0.1:7401");
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  uint32_t port = 0;
  for (size_t i = colon + 1; i < address.size(); ++i) {
    if (address[i] < '0' || address[i] > '9' || port > 65535) {
      return invalid_argument("bad port in address '" + address + "'");
    }
    port = port * 10 + static_cast<uint32_t>(address[i] - '0');
  }
  if (port > 65535) return invalid_argument("bad port in address '" + address + "'");
  return HostPort{host, static_cast<uint16_t>(port)};
}

PeerSocket::PeerSocket(int fd, std::string peer_description) : fd_(fd), peer_(std::move(peer_description)) {
  configure_connected(fd_);
}

PeerSocket::~PeerSocket() {
  if (tls_ != nullptr) tls_->close_notify();
  ::close(fd_);
}

Result<std::unique_ptr<PeerSocket>> PeerSocket::connect(const std::string& address, int timeout_ms) {
  AMIRROR_ASSIGN_OR_RETURN(HostPort host_port, parse_host_port(address));
  AMIRROR_ASSIGN_OR_RETURN(addrinfo * addresses, resolve(host_port, false));
  Status last_error(ErrorCode::kIo, "no address for " + address);
  for (addrinfo* candidate = addresses; candidate != nullptr; candidate = candidate->ai_next) {
    int fd = ::socket(candidate->ai_family, candidate->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      last_error = Status::from_errno(errno, "socket for " + address);
      continue;
    }
    int result = ::connect(fd, candidate->ai_addr, candidate->ai_addrlen);
    if (result != 0 && errno == EINPROGRESS) {
      pollfd waiter{fd, POLLOUT, 0};
      int ready = ::poll(&waiter, 1, timeout_ms);
      if (ready == 0) {
        ::close(fd);
        last_error = Status(ErrorCode::kTimeout, "connect to " + address + " timed out");
        continue;
      }
      int socket_error = 0;
      socklen_t length = sizeof socket_error;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &socket_error, &length);
      result = socket_error == 0 ? 0 : -1;
      errno = socket_error;
    }
    if (result != 0) {
      last_error = Status::from_errno(errno, "connect to " + address);
      ::close(fd);
      continue;
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    ::freeaddrinfo(addresses);
    auto socket = std::make_unique<PeerSocket>(fd, address);
    socket->set_timeout_ms(timeout_ms);
    return socket;
  }
  ::freeaddrinfo(addresses);
  return last_error;
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

Result<std::unique_ptr<PeerListener>> PeerListener::listen(const std::string& address) {
  AMIRROR_ASSIGN_OR_RETURN(HostPort host_port, parse_host_port(address));
  AMIRROR_ASSIGN_OR_RETURN(addrinfo * addresses, resolve(host_port, true));
  Status last_error(ErrorCode::kIo, "no address for " + address);
  for (addrinfo* candidate = addresses; candidate != nullptr; candidate = candidate->ai_next) {
    int fd = ::socket(candidate->ai_family, candidate->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, candidate->ai_addr, candidate->ai_addrlen) != 0 || ::listen(fd, kListenBacklog) != 0) {
      last_error = Status::from_errno(errno, "listen on " + address);
      ::close(fd);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
    uint16_t port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                 : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    ::freeaddrinfo(addresses);
    return std::unique_ptr<PeerListener>(new PeerListener(fd, port));
  }
  ::freeaddrinfo(addresses);
  return last_error;
}

PeerListener::~PeerListener() { close(); }

Result<std::unique_ptr<PeerSocket>> PeerListener::accept() {
  while (true) {
    int listen_fd = fd_.load();
    if (listen_fd < 0) return Status(ErrorCode::kCancelled, "listener closed");
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&address), &length, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (fd_.load() < 0) return Status(ErrorCode::kCancelled, "listener closed");
      return Status::from_errno(errno, "accept");
    }
    char text[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (address.ss_family == AF_INET) {
      auto* ipv4 = reinterpret_cast<sockaddr_in*>(&address);
      ::inet_ntop(AF_INET, &ipv4->sin_addr, text, sizeof text);
      port = ntohs(ipv4->sin_port);
    } else if (address.ss_family == AF_INET6) {
      auto* ipv6 = reinterpret_cast<sockaddr_in6*>(&address);
      ::inet_ntop(AF_INET6, &ipv6->sin6_addr, text, sizeof text);
      port = ntohs(ipv6->sin6_port);
    }
    return std::make_unique<PeerSocket>(fd, std::string(text) + ":" + std::to_string(port));
  }
}

void PeerListener::close() {
  int fd = fd_.exchange(-1);
  if (fd >= 0) {
    ::shutdown(fd, SHUT_RDWR);  // wakes a blocked accept
    ::close(fd);
  }
}

}  // namespace amirror::repl
