// SPDX-License-Identifier: Apache-2.0
// The production environment: real clocks, TCP, OS threads, a random seed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <random>

#include "base/env.h"

namespace amirror {
namespace {

constexpr int kListenBacklog = 64;
constexpr int kSocketBufferBytes = 4 * 1024 * 1024;

class RealClock final : public Clock {
 public:
  TimePoint now() override { return std::chrono::steady_clock::now(); }
  int64_t unix_ms() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  bool wait_until(CondVar& changed, MutexLock& lock, TimePoint deadline) override {
    return changed.wait_until(lock, deadline);
  }
};

// Options of every connected peer socket, on both sides.
void configure_connected(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // Kernel keep-alives as a second line behind the protocol's own timeouts.
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  int idle_seconds = 10, interval_seconds = 5, probes = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds, sizeof idle_seconds);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_seconds, sizeof interval_seconds);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  int buffer_bytes = kSocketBufferBytes;
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

// Connects one resolved address within `timeout_ms`; the fd is blocking on success.
Result<int> connect_one(const addrinfo& candidate, const std::string& address, int timeout_ms) {
  int fd = ::socket(candidate.ai_family, candidate.ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::from_errno(errno, "socket for " + address);
  int result = ::connect(fd, candidate.ai_addr, candidate.ai_addrlen);
  if (result != 0 && errno == EINPROGRESS) {
    pollfd waiter{fd, POLLOUT, 0};
    if (::poll(&waiter, 1, timeout_ms) == 0) {
      ::close(fd);
      return Status(ErrorCode::kTimeout, "connect to " + address + " timed out");
    }
    int socket_error = 0;
    socklen_t length = sizeof socket_error;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &socket_error, &length);
    result = socket_error == 0 ? 0 : -1;
    errno = socket_error;
  }
  if (result != 0) {
    Status error = Status::from_errno(errno, "connect to " + address);
    ::close(fd);
    return error;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  configure_connected(fd);
  return fd;
}

std::string describe(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (address.ss_family == AF_INET) {
    const auto* ipv4 = reinterpret_cast<const sockaddr_in*>(&address);
    ::inet_ntop(AF_INET, &ipv4->sin_addr, text, sizeof text);
    port = ntohs(ipv4->sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto* ipv6 = reinterpret_cast<const sockaddr_in6*>(&address);
    ::inet_ntop(AF_INET6, &ipv6->sin6_addr, text, sizeof text);
    port = ntohs(ipv6->sin6_port);
  }
  return std::string(text) + ":" + std::to_string(port);
}

class TcpListener final : public Listener {
 public:
  TcpListener(int fd, uint16_t port) : fd_(fd), port_(port) {}
  ~TcpListener() override { close(); }

  Result<Connection> accept() override {
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
      configure_connected(fd);
      return Connection{fd, describe(address)};
    }
  }
  void close() override {
    int fd = fd_.exchange(-1);
    if (fd >= 0) {
      ::shutdown(fd, SHUT_RDWR);  // wakes a blocked accept
      ::close(fd);
    }
  }
  uint16_t port() const override { return port_; }

 private:
  std::atomic<int> fd_;
  const uint16_t port_;
};

class TcpNetwork final : public Network {
 public:
  Result<Connection> connect(const std::string& address, int timeout_ms) override {
    AMIRROR_ASSIGN_OR_RETURN(HostPort host_port, parse_host_port(address));
    AMIRROR_ASSIGN_OR_RETURN(addrinfo * addresses, resolve(host_port, false));
    Status last_error(ErrorCode::kIo, "no address for " + address);
    for (addrinfo* candidate = addresses; candidate != nullptr; candidate = candidate->ai_next) {
      Result<int> fd = connect_one(*candidate, address, timeout_ms);
      if (fd.ok()) {
        ::freeaddrinfo(addresses);
        return Connection{fd.value(), address};
      }
      last_error = fd.status();
    }
    ::freeaddrinfo(addresses);
    return last_error;
  }

  Result<std::unique_ptr<Listener>> listen(const std::string& address) override {
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
      return std::unique_ptr<Listener>(new TcpListener(fd, port));
    }
    ::freeaddrinfo(addresses);
    return last_error;
  }
};

class SystemRandom final : public RandomSource {
 public:
  uint64_t uniform(uint64_t bound) override {
    AMIRROR_ASSERT(bound > 0);
    std::lock_guard lock(mutex_);
    return std::uniform_int_distribution<uint64_t>(0, bound - 1)(generator_);
  }

 private:
  std::mutex mutex_;
  std::mt19937_64 generator_{std::random_device{}()};
};

class OsThreads final : public Threads {
 public:
  std::thread start(std::function<void()> body) override { return std::thread(std::move(body)); }
};

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

Clock& real_clock() {
  static RealClock* const clock = new RealClock();
  return *clock;
}

Network& tcp_network() {
  static TcpNetwork* const network = new TcpNetwork();
  return *network;
}

RandomSource& system_random() {
  static SystemRandom* const random = new SystemRandom();
  return *random;
}

Threads& os_threads() {
  static OsThreads* const threads = new OsThreads();
  return *threads;
}

}  // namespace amirror
