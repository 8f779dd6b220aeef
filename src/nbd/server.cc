// SPDX-License-Identifier: Apache-2.0
#include "nbd/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/log.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace amirror::nbd {

namespace {

// Reads exactly `length` bytes. false on EOF, error or shutdown.
bool recv_exact(int fd, uint8_t* out, size_t length) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::recv(fd, out + done, length - done, MSG_WAITALL);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return false;
    }
  }
  return true;
}

// Sends every byte of the iovecs. false when the peer is gone or the socket shut down.
bool send_all(int fd, iovec* iov, int count) {
  while (count > 0) {
    msghdr message{};
    message.msg_iov = iov;
    message.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = ::sendmsg(fd, &message, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    size_t sent = static_cast<size_t>(n);
    while (count > 0 && sent >= iov->iov_len) {
      sent -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + sent;
      iov->iov_len -= sent;
    }
  }
  return true;
}

// Replies up to this size are copied into one buffer and sent as one TLS record (the
// largest record holds 16 KiB); larger ones go out piece by piece, the header in a
// record of its own, which costs a few dozen bytes against at least 16 KiB of data.
constexpr size_t kTlsCoalesceBytes = 16 * 1024;

// A reply up to this size, finished while another worker is writing to the socket, is
// copied and sent by that worker after its own (Connection::send). Covers every reply
// without data and 4 KiB reads; copying more would cost more than the wait it saves.
constexpr size_t kCombinedReplyBytes = 16 * 1024;

size_t total_length(const iovec* iov, int count) {
  size_t total_bytes = 0;
  for (int i = 0; i < count; ++i) total_bytes += iov[i].iov_len;
  return total_bytes;
}

void append_pieces(std::vector<uint8_t>& out, const iovec* iov, int count) {
  for (int i = 0; i < count; ++i) {
    const uint8_t* piece = static_cast<const uint8_t*>(iov[i].iov_base);
    out.insert(out.end(), piece, piece + iov[i].iov_len);
  }
}

// The handshake's transport: the socket in plaintext, then the TLS session once
// start_tls() succeeded. Plaintext receives are exact-length with no buffer of our own
// (recv_exact), so when STARTTLS is acknowledged every byte the client sent after it
// is still in the kernel, and goes to the TLS handshake, which fails unless it is one
// (TlsContext::accept refuses a first byte that is not a TLS handshake record).
class HandshakeStream final : public ByteStream {
 public:
  HandshakeStream(int fd, const net::TlsContext* tls, const std::string& peer)
      : fd_(fd), tls_(tls), peer_(peer) {}
  Status read_exact(std::span<uint8_t> out) override {
    if (session_ != nullptr) {
      for (size_t done = 0; done < out.size();) {
        AMIRROR_ASSIGN_OR_RETURN(size_t received, session_->read_some(out.subspan(done)));
        if (received == 0) return Status(ErrorCode::kCancelled, "client closed the connection");
        done += received;
      }
      return Status();
    }
    if (!recv_exact(fd_, out.data(), out.size())) {
      return Status(ErrorCode::kCancelled, "client closed the connection or timed out");
    }
    return Status();
  }
  Status write_all(std::span<const uint8_t> data) override {
    if (session_ != nullptr) return session_->write_all(data);
    iovec iov{const_cast<uint8_t*>(data.data()), data.size()};
    if (!send_all(fd_, &iov, 1)) return Status(ErrorCode::kCancelled, "client went away");
    return Status();
  }
  Status start_tls() override {
    AMIRROR_ASSERT(tls_ != nullptr && session_ == nullptr);
    Result<std::unique_ptr<net::TlsSession>> session =
        tls_->accept(fd_, peer_, kHandshakeTimeoutSeconds * 1000);
    if (!session.ok()) {
      tls_failed_ = true;
      return session.status();
    }
    session_ = std::move(*session);
    return Status();
  }
  // The TLS session, if STARTTLS succeeded; the transmission phase continues on it.
  std::unique_ptr<net::TlsSession> take_session() { return std::move(session_); }
  bool tls_failed() const { return tls_failed_; }

 private:
  const int fd_;
  const net::TlsContext* const tls_;  // null when the mode is kOff
  const std::string& peer_;
  std::unique_ptr<net::TlsSession> session_;
  bool tls_failed_ = false;
};

// A worker's request buffer: grows on demand, kept while small (see kRetainedBufferBytes).
class Buffer {
 public:
  uint8_t* ensure(size_t length) {
    if (length > capacity_) {
      size_t rounded = (length + 65535) & ~size_t{65535};
      data_.reset(new uint8_t[rounded]);  // uninitialised on purpose: fully overwritten
      capacity_ = rounded;
    }
    return data_.get();
  }
  uint8_t* data() { return data_.get(); }
  void trim() {
    if (capacity_ > kRetainedBufferBytes) {
      data_.reset();
      capacity_ = 0;
    }
  }

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t capacity_ = 0;
};

}  // namespace

// One client connection. Lives until its last worker exits.
class Connection {
 public:
  Connection(uint64_t id, int fd, std::string peer, bool quiet, TlsMode tls_mode,
             const net::TlsContext* tls_context, ServerObserver* observer)
      : id_(id),
        fd_(fd),
        peer_(std::move(peer)),
        quiet_(quiet),
        tls_mode_(tls_mode),
        tls_context_(tls_context),
        observer_(observer) {}

  uint64_t id() const { return id_; }
  int fd() const { return fd_; }
  const std::string& peer() const { return peer_; }
  void set_fd_closed() { fd_ = -1; }
  // The export this connection serves; null during the handshake.
  const Export* serving() const { return serving_.load(); }

  // Negotiates, then serves until the client leaves or the server stops.
  void serve(const ExportCatalog& catalog);
  // Wakes every thread blocked on this socket. REQUIRES: fd still open.
  void shut_down() {
    closing_.store(true);
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }

 private:
  void worker_loop();
  // Stops taking new requests; in-flight ones still get their replies.
  void stop_reading() {
    closing_.store(true);
    ::shutdown(fd_, SHUT_RD);
  }
  bool reserve_payload(uint64_t length_bytes);
  void release_payload(uint64_t length_bytes);
  void execute(const RequestHeader& header, Buffer& buffer);
  void reply_error(const RequestHeader& header, uint32_t error, const char* reason);
  // Reads exactly `length` bytes of the request stream. REQUIRES: recv_mutex_ held.
  bool receive(uint8_t* out, size_t length);
  // Sends one whole reply, or hands it to the worker writing now (see send_mutex_).
  // false once the connection is broken.
  bool send(iovec* iov, int count);
  // REQUIRES: this worker is the one writing (set sending_).
  bool write_out(iovec* iov, int count);
  // REQUIRES: as write_out, and tls_ set.
  bool send_tls(const iovec* iov, int count);

  const uint64_t id_;
  int fd_;
  const std::string peer_;
  const bool quiet_;
  const TlsMode tls_mode_;
  const net::TlsContext* const tls_context_;  // null when tls_mode_ is kOff
  ServerObserver* const observer_;            // null = not counted; outlives the connection
  // Set by serve() before the workers start; null = not counted.
  std::shared_ptr<ExportObserver> export_observer_;
  std::atomic<bool> closing_{false};
  std::shared_ptr<Export> target_;
  std::atomic<const Export*> serving_{nullptr};  // target_, for other threads
  ConnectionLimits limits_;
  // Set by serve() before the workers start, when the client negotiated TLS; then
  // every request byte and reply byte goes through it.
  std::unique_ptr<net::TlsSession> tls_;

  std::mutex recv_mutex_;  // one worker reads from the socket at a time
  // Replies: one worker writes to the socket at a time (sending_). A small reply that
  // is finished meanwhile is appended to pending_replies_ and the worker goes on; the
  // writer sends those after its own, all in one call. So a burst of completions costs
  // one system call and one wakeup of the client, and no worker sleeps on a lock just
  // to answer. Larger replies wait for the writer (send_idle_). Replies may leave in
  // any order (the protocol matches them by cookie), but each leaves whole.
  std::mutex send_mutex_;
  std::condition_variable send_idle_;
  bool sending_ = false;                  // GUARDED_BY(send_mutex_)
  uint32_t waiting_to_send_ = 0;          // GUARDED_BY(send_mutex_): large replies
  std::vector<uint8_t> pending_replies_;  // GUARDED_BY(send_mutex_)
  // Owned by the worker that set sending_.
  std::vector<uint8_t> sending_replies_;
  std::vector<uint8_t> tls_send_buffer_;

  std::mutex budget_mutex_;
  std::condition_variable budget_released_;
  uint64_t in_flight_payload_bytes_ = 0;  // GUARDED_BY(budget_mutex_)
};

void Connection::serve(const ExportCatalog& catalog) {
  // A client that never finishes the handshake must not hold a slot forever.
  timeval timeout{kHandshakeTimeoutSeconds, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  HandshakeStream stream(fd_, tls_context_, peer_);
  Result<Negotiated> negotiated = negotiate(stream, catalog, tls_mode_);
  if (!negotiated.ok()) {
    if (stream.tls_failed()) {
      // A refused client is a security event: logged even when quiet.
      log::warn("nbd", "refused", {{"connection", id_}, {"peer", peer_}, {"error", negotiated.status().message()}});
    } else if (!quiet_ || negotiated.status().code() != ErrorCode::kCancelled) {
      log::info("nbd", "handshake ended",
                {{"connection", id_}, {"peer", peer_}, {"reason", negotiated.status().to_string()}});
    }
    if (std::unique_ptr<net::TlsSession> session = stream.take_session()) session->close_notify();
    return;
  }
  timeval no_timeout{0, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &no_timeout, sizeof no_timeout);
  target_ = negotiated->target;
  serving_.store(target_.get());
  limits_ = negotiated->limits;
  tls_ = stream.take_session();
  AMIRROR_ASSERT(negotiated->tls == (tls_ != nullptr));
  if (tls_ != nullptr) tls_->set_timeout_ms(0);  // idle clients may stay, as in plaintext
  if (observer_ != nullptr) export_observer_ = observer_->for_export(negotiated->export_name);
  if (!quiet_) {
    log::info("nbd", "serving export",
              {{"connection", id_},
               {"peer", peer_},
               {"export", negotiated->export_name},
               {"structured_replies", limits_.structured_replies},
               {"base_allocation", limits_.base_allocation},
               {"tls_client", tls_ != nullptr ? tls_->peer_subject() : std::string("none")}});
  }

  std::vector<std::thread> workers;
  workers.reserve(kWorkersPerConnection - 1);
  for (uint32_t i = 1; i < kWorkersPerConnection; ++i) {
    workers.emplace_back([this] { worker_loop(); });
  }
  worker_loop();
  for (std::thread& worker : workers) worker.join();
  // The spec asks for a TLS shutdown before the TCP close (best effort: the peer may
  // be gone, or the socket already shut down after an error).
  if (tls_ != nullptr) tls_->close_notify();
  // Drop the export here, on a joined path, not in whichever thread happens to destroy
  // the Connection last: the server's owner may be closing volumes right after stop().
  target_.reset();
  if (!quiet_) {
    log::info("nbd", "connection closed", {{"connection", id_}, {"peer", peer_}});
  }
}

bool Connection::reserve_payload(uint64_t length_bytes) {
  std::unique_lock lock(budget_mutex_);
  // A single request never exceeds kMaxPayloadBytes < the budget, so this ends once
  // other workers finish; it holds the receive lock meanwhile, which is the backpressure.
  budget_released_.wait(lock, [&] {
    return in_flight_payload_bytes_ + length_bytes <= kMaxInFlightPayloadBytesPerConnection ||
           closing_.load();
  });
  in_flight_payload_bytes_ += length_bytes;
  return true;
}

void Connection::release_payload(uint64_t length_bytes) {
  {
    std::lock_guard lock(budget_mutex_);
    in_flight_payload_bytes_ -= length_bytes;
  }
  budget_released_.notify_one();
}

bool Connection::receive(uint8_t* out, size_t length) {
  if (tls_ == nullptr) return recv_exact(fd_, out, length);
  return tls_->read_exact(std::span(out, length)).ok();
}

bool Connection::send_tls(const iovec* iov, int count) {
  if (total_length(iov, count) <= kTlsCoalesceBytes) {
    tls_send_buffer_.clear();
    append_pieces(tls_send_buffer_, iov, count);
    return tls_->write_all(tls_send_buffer_).ok();
  }
  for (int i = 0; i < count; ++i) {
    std::span piece(static_cast<const uint8_t*>(iov[i].iov_base), iov[i].iov_len);
    if (!tls_->write_all(piece).ok()) return false;
  }
  return true;
}

bool Connection::write_out(iovec* iov, int count) {
  return tls_ == nullptr ? send_all(fd_, iov, count) : send_tls(iov, count);
}

bool Connection::send(iovec* iov, int count) {
  {
    std::unique_lock lock(send_mutex_);
    if (sending_ && total_length(iov, count) <= kCombinedReplyBytes) {
      append_pieces(pending_replies_, iov, count);
      return true;  // the writer sends it; if that fails, the connection closes
    }
    ++waiting_to_send_;
    send_idle_.wait(lock, [&] { return !sending_; });
    --waiting_to_send_;
    sending_ = true;
  }
  bool ok = write_out(iov, count);
  for (;;) {
    {
      std::lock_guard lock(send_mutex_);
      // Stop when nothing is pending, or hand over to a waiting large reply, whose
      // writer then sends what is pending: a reply appended is always sent by someone.
      if (!ok || pending_replies_.empty() || waiting_to_send_ > 0) {
        if (!ok) pending_replies_.clear();  // the connection is closing
        sending_ = false;
        break;
      }
      sending_replies_.swap(pending_replies_);  // leaves pending_replies_ empty
    }
    iovec combined{sending_replies_.data(), sending_replies_.size()};
    ok = write_out(&combined, 1);
    sending_replies_.clear();
  }
  send_idle_.notify_one();
  if (ok) return true;
  closing_.store(true);
  ::shutdown(fd_, SHUT_RDWR);  // wake the worker blocked in recv
  return false;
}

void Connection::reply_error(const RequestHeader& header, uint32_t error, const char* reason) {
  if (limits_.structured_replies) {
    const size_t message_length = std::min<size_t>(std::strlen(reason), 4096);
    uint8_t head[kStructuredReplyHeaderBytes + 6];
    encode_structured_header(head, kReplyFlagDone, kReplyTypeError, header.cookie,
                             static_cast<uint32_t>(6 + message_length));
    put_be32(head + kStructuredReplyHeaderBytes, error);
    put_be16(head + kStructuredReplyHeaderBytes + 4, static_cast<uint16_t>(message_length));
    iovec iov[2] = {{head, sizeof head}, {const_cast<char*>(reason), message_length}};
    send(iov, 2);
  } else {
    uint8_t head[kSimpleReplyHeaderBytes];
    encode_simple_reply(head, error, header.cookie);
    iovec iov{head, sizeof head};
    send(&iov, 1);
  }
}

void Connection::worker_loop() {
  Buffer buffer;
  for (;;) {
    RequestHeader header;
    uint64_t reserved_bytes = 0;
    {
      std::lock_guard recv_lock(recv_mutex_);
      if (closing_.load()) return;
      uint8_t raw[kRequestHeaderBytes];
      if (!receive(raw, sizeof raw)) {
        stop_reading();
        return;
      }
      header = parse_request_header(raw);
      Validation validation = validate_request(header, limits_);
      if (validation.verdict == Verdict::kDisconnect) {
        log::warn("nbd", "closing on a bad request",
                  {{"connection", id_}, {"peer", peer_}, {"reason", validation.reason},
                   {"command", header.type}, {"length", header.length_bytes}});
        stop_reading();
        ::shutdown(fd_, SHUT_RDWR);
        return;
      }
      if (validation.verdict == Verdict::kReplyError) {
        // Consume the payload of a refused WRITE so the next header lines up. Its size
        // was bounded by validate_request; drain it through a small buffer.
        uint8_t* scratch = buffer.ensure(std::min<size_t>(validation.payload_bytes, 65536));
        uint64_t remaining = validation.payload_bytes;
        while (remaining > 0) {
          size_t piece = std::min<uint64_t>(remaining, 65536);
          if (!receive(scratch, piece)) {
            stop_reading();
            return;
          }
          remaining -= piece;
        }
        reply_error(header, validation.error, validation.reason);
        continue;
      }
      if (header.type == kCmdDisc) {
        // Requests already taken still get their replies; then the workers exit.
        stop_reading();
        return;
      }
      if (header.type == kCmdRead || header.type == kCmdWrite) {
        reserved_bytes = header.length_bytes;
        reserve_payload(reserved_bytes);
        uint8_t* data = buffer.ensure(header.length_bytes);
        if (header.type == kCmdWrite && !receive(data, header.length_bytes)) {
          release_payload(reserved_bytes);
          stop_reading();  // client vanished mid-write: nothing of it is applied
          return;
        }
      }
    }
    if (export_observer_ != nullptr) {
      auto started = std::chrono::steady_clock::now();
      execute(header, buffer);
      std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
      export_observer_->on_request(header.type, header.length_bytes, took.count());
    } else {
      execute(header, buffer);
    }
    if (reserved_bytes > 0) release_payload(reserved_bytes);
    buffer.trim();
  }
}

void Connection::execute(const RequestHeader& header, Buffer& buffer) {
  const bool fua = (header.flags & kCmdFlagFua) != 0;
  Status status;
  switch (header.type) {
    case kCmdRead: {
      uint8_t* data = buffer.ensure(header.length_bytes);
      status = target_->read(header.offset_bytes, std::span(data, header.length_bytes));
      if (!status.ok()) break;
      if (limits_.structured_replies) {
        uint8_t head[kStructuredReplyHeaderBytes + 8];
        encode_structured_header(head, kReplyFlagDone, kReplyTypeOffsetData, header.cookie,
                                 8 + header.length_bytes);
        put_be64(head + kStructuredReplyHeaderBytes, header.offset_bytes);
        iovec iov[2] = {{head, sizeof head}, {data, header.length_bytes}};
        send(iov, 2);
      } else {
        uint8_t head[kSimpleReplyHeaderBytes];
        encode_simple_reply(head, kNbdOk, header.cookie);
        iovec iov[2] = {{head, sizeof head}, {data, header.length_bytes}};
        send(iov, 2);
      }
      return;
    }
    case kCmdWrite:
      status = target_->write(header.offset_bytes,
                              std::span<const uint8_t>(buffer.data(), header.length_bytes),
                              fua);
      break;
    case kCmdWriteZeroes:
      // NO_HOLE or not, amirror writes zeroes that read back as zero; whether the
      // store keeps them as a hole is its business (both are allowed by the spec).
      status = target_->write_zeroes(header.offset_bytes, header.length_bytes, fua);
      break;
    case kCmdTrim:
      status = target_->trim(header.offset_bytes, header.length_bytes);
      if (status.ok() && fua) status = target_->flush();
      break;
    case kCmdFlush:
      status = target_->flush();
      break;
    case kCmdBlockStatus: {
      Result<std::vector<Extent>> extents =
          target_->allocated_extents(header.offset_bytes, header.length_bytes);
      if (!extents.ok()) {
        status = extents.status();
        break;
      }
      const bool only_one = (header.flags & kCmdFlagReqOne) != 0;
      const uint32_t max_descriptors = only_one ? 1 : kMaxBlockStatusDescriptors;
      uint8_t* payload = buffer.ensure(4 + 8ULL * (2 * extents->size() + 1));
      uint32_t count = 0;
      uint64_t position = header.offset_bytes;
      const uint64_t end = header.offset_bytes + header.length_bytes;  // validated
      auto add = [&](uint64_t length_bytes, uint32_t flags) {
        if (length_bytes == 0 || count >= max_descriptors) return;
        put_be32(payload + 4 + 8 * count, static_cast<uint32_t>(length_bytes));
        put_be32(payload + 8 + 8 * count, flags);
        ++count;
      };
      for (const Extent& extent : *extents) {
        uint64_t start = std::max(extent.offset_bytes, position);
        uint64_t stop = std::min(extent.offset_bytes + extent.length_bytes, end);
        if (stop <= start) continue;
        add(start - position, kStateHole | kStateZero);
        add(stop - start, 0);
        position = stop;
      }
      add(end - position, kStateHole | kStateZero);
      put_be32(payload, kBaseAllocationContextId);
      uint8_t head[kStructuredReplyHeaderBytes];
      encode_structured_header(head, kReplyFlagDone, kReplyTypeBlockStatus, header.cookie,
                               4 + 8 * count);
      iovec iov[2] = {{head, sizeof head}, {payload, 4 + 8ULL * count}};
      send(iov, 2);
      return;
    }
    default:
      AMIRROR_ASSERT(false && "validate_request let an unknown command through");
  }
  if (!status.ok()) {
    log::error("nbd", "request failed",
               {{"connection", id_}, {"command", command_name(header.type)}, {"offset", header.offset_bytes},
                {"length", header.length_bytes}, {"error", status.to_string()}});
    reply_error(header, nbd_error_from_status(status), status.message().c_str());
    return;
  }
  uint8_t head[kSimpleReplyHeaderBytes];
  encode_simple_reply(head, kNbdOk, header.cookie);
  iovec iov{head, sizeof head};
  send(&iov, 1);
}

// --- Server -----------------------------------------------------------------------

Server::Server(ServerOptions options, std::shared_ptr<const ExportCatalog> catalog)
    : options_(std::move(options)), catalog_(std::move(catalog)) {}

Server::~Server() { stop(); }

Result<std::unique_ptr<Server>> Server::start(const ServerOptions& options,
                                              std::shared_ptr<const ExportCatalog> catalog) {
  if (options.unix_socket_path.empty() && options.tcp_address.empty()) {
    return invalid_argument("NBD server needs a Unix socket path or a TCP address");
  }
  if (options.tls_mode != TlsMode::kOff && options.tls == nullptr) {
    return invalid_argument(std::string("NBD TLS mode '") + tls_mode_name(options.tls_mode) +
                            "' needs a TLS certificate, key and CA");
  }
  std::unique_ptr<Server> server(new Server(options, std::move(catalog)));
  if (::pipe2(server->wake_pipe_, O_CLOEXEC) != 0) {
    return Status::from_errno(errno, "create wake pipe");
  }
  if (!options.unix_socket_path.empty()) AMIRROR_RETURN_IF_ERROR(server->listen_unix());
  if (!options.tcp_address.empty()) AMIRROR_RETURN_IF_ERROR(server->listen_tcp());
  server->accept_thread_ = std::thread([raw = server.get()] { raw->accept_loop(); });
  return server;
}

Status Server::listen_unix() {
  const std::string& path = options_.unix_socket_path;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) {
    return invalid_argument("NBD socket path '" + path + "' is longer than " +
                            std::to_string(sizeof address.sun_path - 1) + " bytes");
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::from_errno(errno, "create Unix socket");
  // A leftover socket file from a dead server is replaced; a live one is not.
  struct stat info {};
  if (::lstat(path.c_str(), &info) == 0) {
    if (!S_ISSOCK(info.st_mode)) {
      ::close(fd);
      return Status(ErrorCode::kAlreadyExists,
                    "NBD socket path '" + path + "' exists and is not a socket; not touching it");
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      ::close(fd);
      return Status(ErrorCode::kBusy, "another server is listening on '" + path +
                                          "'; stop it or choose another --socket");
    }
    ::close(fd);
    ::unlink(path.c_str());
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::from_errno(errno, "create Unix socket");
  }
  // Created 0600 from the start (umask), so no other user can ever connect.
  mode_t old_mask = ::umask(0177);
  int bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  int bind_errno = errno;
  ::umask(old_mask);
  if (bound != 0) {
    ::close(fd);
    return Status::from_errno(bind_errno, "bind NBD socket " + path);
  }
  ::chmod(path.c_str(), 0600);
  if (::listen(fd, 64) != 0) {
    int listen_errno = errno;
    ::close(fd);
    return Status::from_errno(listen_errno, "listen on NBD socket " + path);
  }
  unix_fd_ = fd;
  return Status();
}

Status Server::listen_tcp() {
  const std::string& text = options_.tcp_address;
  // "PORT" alone means loopback, like ":PORT": reaching beyond this machine must be asked
  // for by naming the address.
  const bool port_only = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  size_t colon = port_only ? std::string::npos : text.rfind(':');
  if (!port_only && (colon == std::string::npos || colon + 1 == text.size())) {
    return invalid_argument("TCP address '" + text +
                            "' must be PORT (loopback) or HOST:PORT, e.g. 127.0.0.1:10809");
  }
  std::string host = port_only ? "" : text.substr(0, colon);
  std::string port = port_only ? text : text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "127.0.0.1";  // loopback unless asked otherwise
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* results = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &results);
  if (rc != 0) {
    return invalid_argument("cannot resolve TCP address '" + text + "': " + gai_strerror(rc));
  }
  Status last = invalid_argument("no usable address for '" + text + "'");
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      last = Status::from_errno(errno, "listen on TCP " + text);
      ::close(fd);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t bound_length = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_length);
    tcp_port_ = bound.ss_family == AF_INET6
                    ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                    : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    tcp_fd_ = fd;
    ::freeaddrinfo(results);
    return Status();
  }
  ::freeaddrinfo(results);
  return last;
}

void Server::accept_loop() {
  for (;;) {
    pollfd fds[3];
    nfds_t count = 0;
    fds[count++] = pollfd{wake_pipe_[0], POLLIN, 0};
    if (unix_fd_ >= 0) fds[count++] = pollfd{unix_fd_, POLLIN, 0};
    if (tcp_fd_ >= 0) fds[count++] = pollfd{tcp_fd_, POLLIN, 0};
    int ready = ::poll(fds, count, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      log::error("nbd", "poll on listeners failed; no longer accepting", {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[0].revents != 0) return;  // stop() woke us
    for (nfds_t i = 1; i < count; ++i) {
      if (!(fds[i].revents & POLLIN)) continue;
      const bool is_tcp = fds[i].fd == tcp_fd_;
      sockaddr_storage peer{};
      socklen_t peer_length = sizeof peer;
      int fd = ::accept4(fds[i].fd, reinterpret_cast<sockaddr*>(&peer), &peer_length,
                         SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
          log::error("nbd", "accept failed", {{"error", std::strerror(errno)}});
          ::usleep(10000);  // e.g. EMFILE: do not spin
        }
        continue;
      }
      std::string peer_name = "unix socket";
      if (is_tcp) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
        ::getnameinfo(reinterpret_cast<sockaddr*>(&peer), peer_length, host, sizeof host, port,
                      sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
        peer_name = std::string(host) + ":" + port;
      }
      std::unique_lock lock(connections_mutex_);
      if (stopping_) {
        ::close(fd);
        continue;
      }
      if (connections_.size() >= kMaxConnections) {
        lock.unlock();
        log::warn("nbd", "refusing connection: at the connection limit",
                  {{"peer", peer_name}, {"limit", kMaxConnections}});
        ::close(fd);
        continue;
      }
      const TlsMode tls_mode = tls_mode_for(is_tcp);
      auto connection = std::make_shared<Connection>(
          next_connection_id_++, fd, peer_name, options_.quiet, tls_mode,
          tls_mode == TlsMode::kOff ? nullptr : options_.tls.get(), options_.observer.get());
      connections_.push_back(connection);
      lock.unlock();
      std::thread([this, connection] { run_connection(connection); }).detach();
    }
  }
}

TlsMode Server::tls_mode_for(bool is_tcp) const {
  if (options_.tls_mode == TlsMode::kOff) return TlsMode::kOff;
  return is_tcp ? options_.tls_mode : TlsMode::kAllow;
}

void Server::run_connection(std::shared_ptr<Connection> connection) {
  if (options_.observer != nullptr) options_.observer->on_connection_open();
  connection->serve(*catalog_);
  if (options_.observer != nullptr) options_.observer->on_connection_close();
  std::lock_guard lock(connections_mutex_);
  // Closed under the mutex so stop() never shuts down a recycled descriptor.
  ::close(connection->fd());
  connection->set_fd_closed();
  connections_.erase(std::find(connections_.begin(), connections_.end(), connection));
  connections_changed_.notify_all();
}

uint32_t Server::connection_count() const {
  std::lock_guard lock(connections_mutex_);
  return static_cast<uint32_t>(connections_.size());
}

uint32_t Server::connections_serving(const Export& target) const {
  std::lock_guard lock(connections_mutex_);
  return static_cast<uint32_t>(std::count_if(connections_.begin(), connections_.end(),
                                             [&](const auto& connection) { return connection->serving() == &target; }));
}

uint32_t Server::close_connections_serving(const Export& target) {
  // Under the mutex: run_connection closes descriptors under it too, so we never shut
  // down a recycled one.
  std::lock_guard lock(connections_mutex_);
  uint32_t closed = 0;
  for (const auto& connection : connections_) {
    if (connection->serving() != &target) continue;
    connection->shut_down();
    closed += 1;
  }
  return closed;
}

void Server::stop() {
  if (stopped_.exchange(true)) return;
  if (wake_pipe_[1] >= 0) {
    uint8_t byte = 1;
    (void)!::write(wake_pipe_[1], &byte, 1);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (unix_fd_ >= 0) {
    ::close(unix_fd_);
    ::unlink(options_.unix_socket_path.c_str());
  }
  if (tcp_fd_ >= 0) ::close(tcp_fd_);
  std::unique_lock lock(connections_mutex_);
  stopping_ = true;
  for (const auto& connection : connections_) connection->shut_down();
  connections_changed_.wait(lock, [&] { return connections_.empty(); });
  lock.unlock();
  for (int fd : wake_pipe_) {
    if (fd >= 0) ::close(fd);
  }
}

}  // namespace amirror::nbd
