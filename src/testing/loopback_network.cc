// SPDX-License-Identifier: Apache-2.0
#include "testing/loopback_network.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

namespace amirror::testing {

// Copies bytes both ways between two inner ends (`ends[0]` faces the connecting side,
// `ends[1]` the accepting side) until both directions ended or cut() was called.
// Non-blocking with a bounded buffer per direction, so neither side can block the other.
struct LoopbackNetwork::Relay {
  static constexpr size_t kBufferBytes = 256 * 1024;
  std::array<int, 2> ends{-1, -1};
  std::atomic<bool> cut_requested{false};
  std::atomic<bool> finished{false};
  std::thread thread;

  void cut() {
    cut_requested = true;
    for (int fd : ends) ::shutdown(fd, SHUT_RDWR);  // wakes poll; the relay still owns fd
  }
  void run() {
    struct Direction {
      int from, to;
      std::vector<uint8_t> buffer;
      bool eof = false, shut = false;
    };
    std::array<Direction, 2> directions{Direction{ends[0], ends[1], {}}, Direction{ends[1], ends[0], {}}};
    while (!cut_requested && !(directions[0].shut && directions[1].shut)) {
      std::array<pollfd, 2> polls{pollfd{ends[0], 0, 0}, pollfd{ends[1], 0, 0}};
      for (size_t i = 0; i < 2; ++i) {
        Direction& d = directions[i];
        if (!d.eof && d.buffer.size() < kBufferBytes) polls[i].events |= POLLIN;
        if (!d.buffer.empty()) polls[1 - i].events |= POLLOUT;
      }
      if (::poll(polls.data(), 2, -1) < 0 && errno != EINTR) break;
      bool failed = false;
      for (size_t i = 0; i < 2 && !failed; ++i) {
        Direction& d = directions[i];
        if (!d.eof && d.buffer.size() < kBufferBytes && (polls[i].revents & (POLLIN | POLLHUP | POLLERR))) {
          uint8_t chunk[65536];
          ssize_t got = ::recv(d.from, chunk, std::min(sizeof chunk, kBufferBytes - d.buffer.size()), MSG_DONTWAIT);
          if (got > 0) d.buffer.insert(d.buffer.end(), chunk, chunk + got);
          if (got == 0) d.eof = true;
          if (got < 0 && errno != EAGAIN && errno != EINTR) failed = true;
        }
        if (!d.buffer.empty()) {
          ssize_t put = ::send(d.to, d.buffer.data(), d.buffer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
          if (put > 0) d.buffer.erase(d.buffer.begin(), d.buffer.begin() + put);
          if (put < 0 && errno != EAGAIN && errno != EINTR) failed = true;
        }
        if (d.eof && d.buffer.empty() && !d.shut) {
          ::shutdown(d.to, SHUT_WR);  // the end of the stream reaches the other side
          d.shut = true;
        }
      }
      if (failed) break;
    }
    for (int fd : ends) {
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
    }
    finished = true;
  }
};

namespace {

class LoopbackListener final : public Listener {
 public:
  LoopbackListener(std::shared_ptr<LoopbackNetwork::Queue> queue, std::function<void()> on_close)
      : queue_(std::move(queue)), on_close_(std::move(on_close)) {}
  ~LoopbackListener() override { close(); }

  Result<Connection> accept() override {
    std::unique_lock lock(queue_->mutex);
    queue_->arrived.wait(lock, [&] { return queue_->closed || !queue_->pending.empty(); });
    if (queue_->closed) return Status(ErrorCode::kCancelled, "listener closed");
    Connection connection = std::move(queue_->pending.front());
    queue_->pending.pop_front();
    return connection;
  }
  void close() override {
    {
      std::lock_guard lock(queue_->mutex);
      if (queue_->closed) return;
      queue_->closed = true;
      for (Connection& connection : queue_->pending) ::close(connection.fd);
      queue_->pending.clear();
    }
    queue_->arrived.notify_all();
    on_close_();
  }
  uint16_t port() const override { return 0; }

 private:
  std::shared_ptr<LoopbackNetwork::Queue> queue_;
  std::function<void()> on_close_;
};

}  // namespace

LoopbackNetwork::~LoopbackNetwork() {
  for (auto& [address, relays] : relays_) {
    for (auto& relay : relays) {
      relay->cut();
      relay->thread.join();
    }
  }
}

Result<Connection> LoopbackNetwork::connect(const std::string& address, int /*timeout_ms*/) {
  std::shared_ptr<Queue> queue;
  {
    std::lock_guard lock(mutex_);
    attempts_[address] += 1;
    auto listener = listeners_.find(address);
    if (partitioned_.contains(address) || listener == listeners_.end()) {
      return Status(ErrorCode::kIo, "connect to " + address + ": Connection refused");
    }
    queue = listener->second;
  }
  int client[2], server[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, client) != 0) {
    return Status::from_errno(errno, "socketpair for " + address);
  }
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, server) != 0) {
    Status error = Status::from_errno(errno, "socketpair for " + address);
    ::close(client[0]);
    ::close(client[1]);
    return error;
  }
  {
    std::lock_guard lock(queue->mutex);
    if (queue->closed) {
      for (int fd : {client[0], client[1], server[0], server[1]}) ::close(fd);
      return Status(ErrorCode::kIo, "connect to " + address + ": Connection refused");
    }
    queue->pending.push_back(Connection{server[0], "loopback peer of " + address});
  }
  queue->arrived.notify_one();
  auto relay = std::make_shared<Relay>();
  relay->ends = {client[1], server[1]};
  relay->thread = std::thread([raw = relay.get()] { raw->run(); });
  std::lock_guard lock(mutex_);
  auto& relays = relays_[address];
  std::erase_if(relays, [](const std::shared_ptr<Relay>& old) {
    if (!old->finished) return false;
    old->thread.join();
    return true;
  });
  relays.push_back(std::move(relay));
  if (partitioned_.contains(address)) relays.back()->cut();  // partitioned meanwhile
  return Connection{client[0], address};
}

Result<std::unique_ptr<Listener>> LoopbackNetwork::listen(const std::string& address) {
  std::lock_guard lock(mutex_);
  if (listeners_.contains(address)) {
    return Status(ErrorCode::kBusy, "listen on " + address + ": Address already in use");
  }
  auto queue = std::make_shared<Queue>();
  listeners_[address] = queue;
  return std::unique_ptr<Listener>(new LoopbackListener(queue, [this, address, queue] {
    std::lock_guard lock(mutex_);
    auto found = listeners_.find(address);
    if (found != listeners_.end() && found->second == queue) listeners_.erase(found);
  }));
}

void LoopbackNetwork::partition(const std::string& address) {
  std::lock_guard lock(mutex_);
  partitioned_.insert(address);
  for (auto& relay : relays_[address]) relay->cut();
}

void LoopbackNetwork::heal(const std::string& address) {
  std::lock_guard lock(mutex_);
  partitioned_.erase(address);
}

uint64_t LoopbackNetwork::connect_attempts(const std::string& address) const {
  std::lock_guard lock(mutex_);
  auto found = attempts_.find(address);
  return found == attempts_.end() ? 0 : found->second;
}

}  // namespace amirror::testing
