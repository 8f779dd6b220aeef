// SPDX-License-Identifier: Apache-2.0
// The NBD server: listeners (Unix socket, optional TCP), one connection object per
// client, and per connection a small pool of workers that read, run and answer
// requests concurrently (nbdkit's "parallel" thread model).
//
// Per connection, each worker loops: take the receive lock, read one request header
// (and a WRITE's payload) into its own reused buffer, validate it at the edge
// (protocol.h validate_request), drop the lock, run it against the Export, then send
// the reply with one sendmsg (header + payload). One worker writes at a time; a small
// reply finished meanwhile is handed to it and sent with its own in one call (flat
// combining: fewer system calls and client wakeups under load, no worker asleep on
// a lock to answer). Replies may thus leave out of order, as the protocol allows. No
// request is handed between threads, so iodepth 1 costs one wakeup per request.
//
// TLS (NBD STARTTLS, handshake.h): ServerOptions.tls_mode applies to TCP connections.
// The Unix socket is mode 0600, so only this user (and root) can reach it; there TLS
// is never required, but a client may still ask for it when the server has a TLS
// context (kAllow), so the same client configuration works on both listeners. After a
// successful STARTTLS the whole transmission phase runs over the TLS session: requests
// are read under the receive lock and replies written under the send lock, which
// TlsSession allows concurrently (one reader, one writer). Plaintext connections keep
// the zero-copy recv/sendmsg path. Clients must present a certificate that verifies
// against the CA (net::TlsContext); which CA-signed certificate it is does not matter.
//
// Bounds: kMaxConnections clients (more are closed at accept), kWorkersPerConnection
// requests in flight per connection, kMaxInFlightPayloadBytesPerConnection bytes of
// READ/WRITE buffers in flight per connection, handshakes must finish within
// kHandshakeTimeoutSeconds.
//
// Shutdown (stop()): close the listeners, shutdown(2) every client socket so blocked
// receives and sends return, let in-flight requests finish, join every thread. Bounded
// by the slowest in-flight store operation.
// Thread-safety: start/stop from one controlling thread; everything else is internal.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "nbd/export.h"
#include "nbd/handshake.h"
#include "net/tls.h"

namespace amirror::nbd {

constexpr uint32_t kMaxConnections = 128;
constexpr uint32_t kWorkersPerConnection = 16;
constexpr uint64_t kMaxInFlightPayloadBytesPerConnection = 128ULL * 1024 * 1024;
// Buffers up to this size stay with their worker for the next request; bigger ones
// are freed after use so an idle connection does not pin 32 MiB per worker.
constexpr uint64_t kRetainedBufferBytes = 4ULL * 1024 * 1024;
constexpr int kHandshakeTimeoutSeconds = 30;

// What the server tells about its traffic (node/metrics.cc counts it for Prometheus).
// on_request runs on every request: an implementation must not take a lock shared by
// connections (atomic counters), which is why a connection asks for its export's
// observer once, after the handshake.
class ExportObserver {
 public:
  virtual ~ExportObserver() = default;
  // One request answered: its command (kCmd*), payload length, and the seconds from
  // its header being read to its reply being sent.
  virtual void on_request(uint16_t command, uint32_t length_bytes, double seconds) = 0;
};
class ServerObserver {
 public:
  virtual ~ServerObserver() = default;
  virtual void on_connection_open() = 0;
  virtual void on_connection_close() = 0;
  // For a connection that negotiated `export_name`; may be null (not counted).
  virtual std::shared_ptr<ExportObserver> for_export(const std::string& export_name) = 0;
};

struct ServerOptions {
  std::string unix_socket_path;  // empty = none
  // "HOST:PORT", or "PORT" / ":PORT" for loopback (127.0.0.1); empty = none; port 0 =
  // any free port. Binding beyond loopback takes an explicit host (e.g. 0.0.0.0:10809).
  std::string tcp_address;
  bool quiet = false;  // no per-connection log lines
  // TLS for STARTTLS; required unless tls_mode is kOff (start() refuses otherwise).
  std::shared_ptr<const net::TlsContext> tls;
  TlsMode tls_mode = TlsMode::kOff;  // for TCP; the Unix socket never requires TLS
  std::shared_ptr<ServerObserver> observer;  // null = nothing counted
};

class Connection;

class Server {
 public:
  static Result<std::unique_ptr<Server>> start(const ServerOptions& options,
                                               std::shared_ptr<const ExportCatalog> catalog);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Idempotent. Returns once every connection thread has exited.
  void stop();
  // The bound TCP port (useful with port 0); 0 without TCP.
  uint16_t tcp_port() const { return tcp_port_; }
  uint32_t connection_count() const;
  // Connections past their handshake that serve `target` (compared by identity).
  uint32_t connections_serving(const Export& target) const;
  // Shuts down every connection serving `target`, as stop() does for all: blocked
  // receives return, in-flight requests finish, the client sees the connection end.
  // For an export that is going away. Returns how many were shut down.
  uint32_t close_connections_serving(const Export& target);

 private:
  Server(ServerOptions options, std::shared_ptr<const ExportCatalog> catalog);
  Status listen_unix();
  Status listen_tcp();
  void accept_loop();
  // The mode a connection on that listener gets (see the top of this file).
  TlsMode tls_mode_for(bool is_tcp) const;
  void run_connection(std::shared_ptr<Connection> connection);

  const ServerOptions options_;
  const std::shared_ptr<const ExportCatalog> catalog_;
  int unix_fd_ = -1;
  int tcp_fd_ = -1;
  uint16_t tcp_port_ = 0;
  int wake_pipe_[2] = {-1, -1};
  std::thread accept_thread_;
  std::atomic<bool> stopped_{false};

  mutable std::mutex connections_mutex_;
  std::condition_variable connections_changed_;
  bool stopping_ = false;                                 // GUARDED_BY(connections_mutex_)
  std::vector<std::shared_ptr<Connection>> connections_;  // GUARDED_BY(connections_mutex_)
  uint64_t next_connection_id_ = 1;                       // GUARDED_BY(connections_mutex_)
};

}  // namespace amirror::nbd
