// SPDX-License-Identifier: Apache-2.0
// TLS 1.3 with mutual authentication (OpenSSL), for peer connections and NBD STARTTLS.
//
// Trust model (docs/security.md): every node has a key and a certificate signed by a
// CA the operator controls; each side verifies the other's chain against that CA, and
// the caller then checks that the peer's certificate names the identity it must have
// (a subjectAltName DNS entry, or the subject CN when there is no DNS entry), so a
// certificate that is valid but belongs to another node is refused.
//
// Protocol choices: TLS 1.3 only (NBD may allow 1.2); no renegotiation; no session tickets (a server never sends
// post-handshake data, so "readable" on the socket means application data or an
// alert); no renegotiation exists in 1.3.
//
// Thread-safety: a TlsContext is immutable after load() and shared freely. A
// TlsSession may be used by one reader and one writer at the same time (the NBD server
// reads requests in one thread while workers send replies): every OpenSSL call on the
// session is made under one mutex, the socket is non-blocking, and waiting for the
// socket happens outside the mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "base/status.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace amirror::net {

// Peer connections use TLS 1.3 only. The NBD specification requires servers to offer
// TLS 1.2 as well, so NBD listeners may allow it (still without renegotiation).
enum class TlsVersions { k13Only, k12AndLater };

struct TlsFiles {
  std::string certificate_path;  // PEM: this node's certificate (may include the chain)
  std::string key_path;          // PEM: its private key (keep it mode 0600)
  std::string ca_path;           // PEM: the CA(s) that sign every node's certificate
};

class TlsSession;

class TlsContext {
 public:
  // Loads and checks the files: the key must match the certificate, and the certificate
  // must verify against the CA (a node whose own certificate is not trusted by its
  // peers is a configuration error better reported at startup).
  static Result<std::shared_ptr<TlsContext>> load(const TlsFiles& files,
                                                   TlsVersions versions = TlsVersions::k13Only);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Runs the client or server side of the handshake on a connected socket, waiting at
  // most `timeout_ms` for each step. The socket stays owned by the caller (and is
  // switched to non-blocking). `peer` names the other end in error messages. accept()
  // fails with kUnsupported when the client speaks plaintext instead of TLS.
  Result<std::unique_ptr<TlsSession>> connect(int fd, const std::string& peer, int timeout_ms) const;
  Result<std::unique_ptr<TlsSession>> accept(int fd, const std::string& peer, int timeout_ms) const;

  // The subject of this node's own certificate, e.g. "CN=node-a".
  const std::string& subject() const { return subject_; }
  // When this node's certificate expires (Unix seconds): status warns ahead of time.
  int64_t not_after_unix_s() const { return not_after_unix_s_; }

 private:
  explicit TlsContext(SSL_CTX* context) : context_(context) {}
  Result<std::unique_ptr<TlsSession>> handshake(int fd, const std::string& peer, int timeout_ms,
                                                bool is_server) const;
  SSL_CTX* context_;
  std::string subject_;
  int64_t not_after_unix_s_ = 0;
};

class TlsSession {
 public:
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Each read or write fails with kTimeout after this long without progress
  // (<= 0: wait forever).
  void set_timeout_ms(int timeout_ms) { timeout_ms_ = timeout_ms; }
  // Reads at least one byte; returns 0 when the peer closed the connection.
  Result<size_t> read_some(std::span<uint8_t> out);
  Status read_exact(std::span<uint8_t> out);
  Status write_all(std::span<const uint8_t> data);
  // True when bytes are buffered inside OpenSSL, decrypted or read ahead but not yet
  // decrypted (the socket may look idle).
  bool has_buffered_input() const;
  // Best effort close_notify; the caller still closes the socket.
  void close_notify();

  // True when the peer's certificate names `identity` (subjectAltName DNS, or CN when
  // the certificate has no DNS names). Exact, case-insensitive, no wildcards.
  bool peer_has_identity(const std::string& identity) const;
  // The peer certificate's subject, e.g. "CN=node-b", for logs.
  const std::string& peer_subject() const { return peer_subject_; }
  const std::string& peer() const { return peer_; }

 private:
  friend class TlsContext;
  TlsSession(SSL* ssl, int fd, std::string peer) : ssl_(ssl), fd_(fd), peer_(std::move(peer)) {}
  // Waits until the socket is readable (want_write false) or writable.
  Status wait(bool want_write, const char* doing);
  Status error_status(int ssl_error, const char* doing);

  mutable std::mutex mutex_;  // every SSL_* call on ssl_ holds it
  SSL* ssl_;
  int fd_;
  std::string peer_;
  std::string peer_subject_;
  int timeout_ms_ = 0;
};

}  // namespace amirror::net
