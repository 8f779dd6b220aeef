// SPDX-License-Identifier: Apache-2.0
#include "node/control_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace amirror::node {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) {
    return invalid_argument("socket path " + path + " is too long (max " + std::to_string(sizeof address.sun_path - 1) + ")");
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

bool write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads up to a newline; false on EOF/error/oversize.
bool read_line(int fd, std::string& line) {
  line.clear();
  char buffer[4096];
  while (line.size() < kMaxControlLineBytes) {
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    line.append(buffer, static_cast<size_t>(n));
    size_t newline = line.find('\n');
    if (newline != std::string::npos) {
      line.resize(newline);
      return true;
    }
  }
  return false;
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& socket_path, Threads& threads,
                                                            Handler handler) {
  AMIRROR_ASSIGN_OR_RETURN(sockaddr_un address, unix_address(socket_path));
  // A socket file left by a dead node is replaced; a live node's is not (the data
  // directory lock already guarantees only one node per data directory).
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe >= 0) {
    bool alive = ::connect(probe, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    ::close(probe);
    if (alive) return Status(ErrorCode::kBusy, "another node is listening on control socket " + socket_path);
  }
  ::unlink(socket_path.c_str());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::from_errno(errno, "control socket");
  mode_t old_mask = ::umask(0177);  // the socket is created 0600
  int bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  int saved = errno;
  ::umask(old_mask);
  if (bound != 0 || ::listen(fd, 16) != 0) {
    if (bound == 0) saved = errno;
    ::close(fd);
    return Status::from_errno(saved, "listen on control socket " + socket_path);
  }
  std::unique_ptr<ControlServer> server(new ControlServer(fd, socket_path, threads, std::move(handler)));
  server->accept_thread_ = threads.start([raw = server.get()] { raw->accept_loop(); });
  return server;
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::accept_loop() {
  while (!stopping_.load()) {
    pollfd waiter{fd_, POLLIN, 0};
    if (::poll(&waiter, 1, 200) <= 0) continue;
    int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    std::lock_guard lock(clients_mutex_);
    if (client_fds_.size() >= kMaxControlClients) {
      write_all(client, "{\"ok\":false,\"error\":\"node busy: too many control clients\"}\n");
      ::close(client);
      continue;
    }
    client_fds_.push_back(client);
    threads_.start([this, client] { serve(client); }).detach();
  }
}

void ControlServer::serve(int client_fd) {
  std::string request;
  if (read_line(client_fd, request)) write_all(client_fd, handler_(request) + "\n");
  std::lock_guard lock(clients_mutex_);
  std::erase(client_fds_, client_fd);
  ::close(client_fd);
  clients_done_.notify_all();
}

void ControlServer::stop() {
  if (stopping_.exchange(true)) return;
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    std::unique_lock lock(clients_mutex_);
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
    clients_done_.wait(lock, [&] { return client_fds_.empty(); });
  }
  ::close(fd_);
  ::unlink(path_.c_str());
}

Result<std::string> control_call(const std::string& socket_path, const std::string& request, uint64_t timeout_ms) {
  AMIRROR_ASSIGN_OR_RETURN(sockaddr_un address, unix_address(socket_path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::from_errno(errno, "socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    int saved = errno;
    ::close(fd);
    // kUnavailable whatever the errno (no socket, nobody listening, not permitted):
    // the CLI gives "node unreachable" its own exit code.
    return Status(ErrorCode::kUnavailable,
                  Status::from_errno(saved, "cannot reach the node at " + socket_path + " (is `amirror node` running?)")
                      .message());
  }
  timeval timeout{static_cast<time_t>(timeout_ms / 1000), static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  std::string response;
  bool ok = write_all(fd, request + "\n") && read_line(fd, response);
  ::close(fd);
  if (!ok) return Status(ErrorCode::kIo, "no answer from the node at " + socket_path);
  return response;
}

}  // namespace amirror::node
