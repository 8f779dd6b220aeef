// SPDX-License-Identifier: Apache-2.0
#include "net/tls.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>

namespace amirror::net {
namespace {

// What one read() of a TLS connection may take in (read-ahead): 8 full records.
constexpr size_t kReadAheadBytes = 128 * 1024;
// What one send() may carry: a 64 KiB data frame's records with room to spare.
constexpr long kWriteBufferBytes = 256 * 1024;

// The newest OpenSSL error on this thread's queue, as text; empties the queue.
std::string openssl_error_text() {
  unsigned long code = ERR_get_error();
  unsigned long next;
  while ((next = ERR_get_error()) != 0) code = next;  // the last one is the most specific
  if (code == 0) return "unknown TLS error";
  const char* reason = ERR_reason_error_string(code);
  return reason != nullptr ? reason : "TLS error " + std::to_string(code);
}

Status check_readable(const std::string& path, const char* what) {
  std::ifstream file(path);
  if (!file) return invalid_argument(std::string("cannot read the TLS ") + what + " file '" + path + "': " + std::strerror(errno));
  return Status();
}

std::string subject_of(X509* certificate) {
  if (certificate == nullptr) return "(none)";
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio, &data);
  std::string text(data, static_cast<size_t>(length));
  BIO_free(bio);
  return text;
}

}  // namespace

Result<std::shared_ptr<TlsContext>> TlsContext::load(const TlsFiles& files, TlsVersions versions) {
  AMIRROR_RETURN_IF_ERROR(check_readable(files.certificate_path, "certificate"));
  AMIRROR_RETURN_IF_ERROR(check_readable(files.key_path, "key"));
  AMIRROR_RETURN_IF_ERROR(check_readable(files.ca_path, "CA"));
  ERR_clear_error();
  SSL_CTX* raw = SSL_CTX_new(TLS_method());
  if (raw == nullptr) return Status(ErrorCode::kIo, "cannot create a TLS context: " + openssl_error_text());
  std::shared_ptr<TlsContext> context(new TlsContext(raw));
  SSL_CTX_set_min_proto_version(raw, versions == TlsVersions::k13Only ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(raw, TLS1_3_VERSION);
  // Framed protocols detect truncation themselves, so a peer vanishing without
  // close_notify is an ordinary "connection closed", not a TLS error. No
  // renegotiation (TLS 1.2): a reader and a writer share a session, which is only safe
  // while neither can be asked to redo the handshake.
  SSL_CTX_set_options(raw, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(raw, 0);
  SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(raw, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Read ahead: one read() takes in whatever has arrived, up to several 16 KiB records,
  // instead of two per record (its 5-byte header, then its body). A stream of data
  // frames made twice as many receive calls as records, each costly on a virtual
  // machine. Buffered bytes are invisible to poll(): has_buffered_input() counts them.
  SSL_CTX_set_read_ahead(raw, 1);
  SSL_CTX_set_default_read_buffer_len(raw, kReadAheadBytes);
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  if (SSL_CTX_use_certificate_chain_file(raw, files.certificate_path.c_str()) != 1) {
    return invalid_argument("TLS certificate '" + files.certificate_path + "' is not a usable PEM certificate: " +
                            openssl_error_text());
  }
  if (SSL_CTX_use_PrivateKey_file(raw, files.key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    std::string reason = openssl_error_text();
    if (reason.find("mismatch") == std::string::npos) {
      return invalid_argument("TLS key '" + files.key_path + "' is not a usable PEM private key: " + reason);
    }
  }
  if (SSL_CTX_check_private_key(raw) != 1) {
    return invalid_argument("TLS key '" + files.key_path + "' does not belong to certificate '" +
                            files.certificate_path + "'");
  }
  if (SSL_CTX_load_verify_locations(raw, files.ca_path.c_str(), nullptr) != 1) {
    return invalid_argument("TLS CA '" + files.ca_path + "' is not a usable PEM certificate: " + openssl_error_text());
  }
  // Our own certificate must verify against the CA, or every peer would refuse us.
  X509* own = SSL_CTX_get0_certificate(raw);
  context->subject_ = subject_of(own);
  struct tm expiry {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(own), &expiry) == 1) context->not_after_unix_s_ = timegm(&expiry);
  X509_STORE_CTX* check = X509_STORE_CTX_new();
  X509_STORE_CTX_init(check, SSL_CTX_get_cert_store(raw), own, nullptr);
  int verified = X509_verify_cert(check);
  int verify_error = X509_STORE_CTX_get_error(check);
  X509_STORE_CTX_free(check);
  if (verified != 1) {
    return invalid_argument("TLS certificate '" + files.certificate_path + "' (" + context->subject_ +
                            ") does not verify against CA '" + files.ca_path +
                            "': " + X509_verify_cert_error_string(verify_error));
  }
  return context;
}

TlsContext::~TlsContext() { SSL_CTX_free(context_); }

Result<std::unique_ptr<TlsSession>> TlsContext::connect(int fd, const std::string& peer, int timeout_ms) const {
  return handshake(fd, peer, timeout_ms, false);
}

Result<std::unique_ptr<TlsSession>> TlsContext::accept(int fd, const std::string& peer, int timeout_ms) const {
  return handshake(fd, peer, timeout_ms, true);
}

Result<std::unique_ptr<TlsSession>> TlsContext::handshake(int fd, const std::string& peer, int timeout_ms,
                                                          bool is_server) const {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  SSL* ssl = SSL_new(context_);
  if (ssl == nullptr) return Status(ErrorCode::kIo, "cannot create a TLS session: " + openssl_error_text());
  std::unique_ptr<TlsSession> session(new TlsSession(ssl, fd, peer));
  session->set_timeout_ms(timeout_ms);
  // One deadline for the whole handshake, so a peer trickling bytes cannot hold the
  // connection (and its thread) longer than timeout_ms.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  // Reads straight from the socket; writes through a buffer that write_all() flushes
  // once at its end: a 64 KiB frame goes out in one send() instead of one per 16 KiB
  // record (system calls cost the sender more than the bytes on a virtual machine).
  BIO* socket_bio = BIO_new_socket(fd, BIO_NOCLOSE);
  BIO* write_buffer = BIO_new(BIO_f_buffer());
  if (socket_bio == nullptr || write_buffer == nullptr || BIO_set_write_buffer_size(write_buffer, kWriteBufferBytes) != 1) {
    BIO_free(socket_bio);
    BIO_free(write_buffer);
    return Status(ErrorCode::kIo, "cannot create a TLS session: " + openssl_error_text());
  }
  BIO_push(write_buffer, socket_bio);
  BIO_up_ref(socket_bio);  // one reference for each side that SSL_set_bio hands over
  SSL_set_bio(ssl, socket_bio, write_buffer);
  if (is_server) {
    SSL_set_accept_state(ssl);
    // A TLS connection starts with a handshake record (type 22). Anything else is a
    // peer speaking plaintext: say so rather than report a cryptic TLS error.
    AMIRROR_RETURN_IF_ERROR(session->wait(false, "waiting for the TLS handshake"));
    uint8_t first = 0;
    ssize_t peeked = ::recv(fd, &first, 1, MSG_PEEK);
    if (peeked == 1 && first != 22) {
      return Status(ErrorCode::kUnsupported, peer + " sent plaintext where a TLS handshake was expected");
    }
  } else {
    SSL_set_connect_state(ssl);
  }
  const char* doing = "TLS handshake with";
  while (true) {
    ERR_clear_error();
    int result = SSL_do_handshake(ssl);
    if (result == 1) break;
    int error = SSL_get_error(ssl, result);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      if (timeout_ms > 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
          return Status(ErrorCode::kTimeout, std::string(doing) + " " + peer + ": not finished within " +
                                                 std::to_string(timeout_ms) + " ms");
        }
        session->set_timeout_ms(static_cast<int>(left.count()));
      }
      AMIRROR_RETURN_IF_ERROR(session->wait(error == SSL_ERROR_WANT_WRITE, doing));
      continue;
    }
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
      return Status(ErrorCode::kInvalidArgument, "TLS: the certificate of " + peer +
                                                     " is not trusted: " + X509_verify_cert_error_string(verify));
    }
    unsigned long code = ERR_peek_last_error();
    std::string reason = error == SSL_ERROR_SYSCALL && code == 0 ? "connection closed" : openssl_error_text();
    std::string hint;
    if (ERR_GET_REASON(code) == SSL_R_WRONG_VERSION_NUMBER || ERR_GET_REASON(code) == SSL_R_PACKET_LENGTH_TOO_LONG) {
      hint = " (the peer does not speak TLS: is it configured with insecure = true?)";
    } else if (reason.find("alert") != std::string::npos) {
      hint = " (the peer ended the handshake: it does not trust this node's certificate or CA; see its log)";
    }
    return Status(ErrorCode::kInvalidArgument, std::string(doing) + " " + peer + " failed: " + reason + hint);
  }
  session->peer_subject_ = subject_of(SSL_get0_peer_certificate(ssl));
  session->set_timeout_ms(timeout_ms);
  return session;
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

Status TlsSession::wait(bool want_write, const char* doing) {
  pollfd waiter{fd_, static_cast<short>(want_write ? POLLOUT : POLLIN), 0};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  while (true) {
    int wait_ms = -1;
    if (timeout_ms_ > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      wait_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    int ready = ::poll(&waiter, 1, wait_ms);
    if (ready > 0) return Status();  // readable, writable, or hung up: the next call tells
    if (ready == 0) {
      return Status(ErrorCode::kTimeout, std::string(doing) + " " + peer_ + ": no progress within " +
                                             std::to_string(timeout_ms_) + " ms");
    }
    if (errno != EINTR) return Status::from_errno(errno, std::string(doing) + " " + peer_);
  }
}

Status TlsSession::error_status(int ssl_error, const char* doing) {
  if (ssl_error == SSL_ERROR_SYSCALL) {
    if (errno == 0) return Status(ErrorCode::kIo, peer_ + " closed the connection");
    return Status::from_errno(errno, std::string(doing) + " " + peer_);
  }
  std::string reason = openssl_error_text();
  std::string hint;
  if (reason.find("alert") != std::string::npos) hint = " (the peer refused this connection; see its log)";
  return Status(ErrorCode::kIo, std::string(doing) + " " + peer_ + " failed: " + reason + hint);
}

Result<size_t> TlsSession::read_some(std::span<uint8_t> out) {
  if (out.empty()) return size_t{0};
  while (true) {
    int result, error;
    {
      std::lock_guard lock(mutex_);
      ERR_clear_error();
      errno = 0;
      result = SSL_read(ssl_, out.data(), static_cast<int>(std::min<size_t>(out.size(), 1 << 30)));
      error = SSL_get_error(ssl_, result);
    }
    if (result > 0) return static_cast<size_t>(result);
    switch (error) {
      case SSL_ERROR_ZERO_RETURN: return size_t{0};
      case SSL_ERROR_WANT_READ: AMIRROR_RETURN_IF_ERROR(wait(false, "receiving from")); break;
      case SSL_ERROR_WANT_WRITE: AMIRROR_RETURN_IF_ERROR(wait(true, "receiving from")); break;
      case SSL_ERROR_SYSCALL:
        if (errno == 0) return size_t{0};  // the socket ended without close_notify
        [[fallthrough]];
      default: return error_status(error, "receiving from");
    }
  }
}

Status TlsSession::read_exact(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    AMIRROR_ASSIGN_OR_RETURN(size_t received, read_some(out.subspan(done)));
    if (received == 0) return Status(ErrorCode::kIo, peer_ + " closed the connection");
    done += received;
  }
  return Status();
}

Status TlsSession::write_all(std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    int result, error;
    {
      std::lock_guard lock(mutex_);
      ERR_clear_error();
      errno = 0;
      result = SSL_write(ssl_, data.data() + done, static_cast<int>(std::min<size_t>(data.size() - done, 1 << 30)));
      error = SSL_get_error(ssl_, result);
    }
    if (result > 0) {
      done += static_cast<size_t>(result);
      continue;
    }
    switch (error) {
      case SSL_ERROR_WANT_WRITE: AMIRROR_RETURN_IF_ERROR(wait(true, "sending to")); break;
      case SSL_ERROR_WANT_READ: AMIRROR_RETURN_IF_ERROR(wait(false, "sending to")); break;
      default: return error_status(error, "sending to");
    }
  }
  // What the records left in the write buffer goes out now: a caller that wrote a
  // whole message waits for an answer.
  while (true) {
    bool retry;
    {
      std::lock_guard lock(mutex_);
      BIO* buffer = SSL_get_wbio(ssl_);
      errno = 0;
      if (BIO_flush(buffer) > 0) return Status();
      retry = BIO_should_retry(buffer);
    }
    if (!retry) {
      if (errno != 0) return Status::from_errno(errno, "sending to " + peer_);
      return Status(ErrorCode::kIo, "sending to " + peer_ + " failed: " + openssl_error_text());
    }
    AMIRROR_RETURN_IF_ERROR(wait(true, "sending to"));
  }
}

bool TlsSession::has_buffered_input() const {
  std::lock_guard lock(mutex_);
  return SSL_has_pending(ssl_) == 1;
}

void TlsSession::close_notify() {
  std::lock_guard lock(mutex_);
  ERR_clear_error();
  (void)SSL_shutdown(ssl_);  // one attempt; a non-blocking socket may refuse, that is fine
  (void)BIO_flush(SSL_get_wbio(ssl_));  // the alert, out of the write buffer
  ERR_clear_error();
}

bool TlsSession::peer_has_identity(const std::string& identity) const {
  std::lock_guard lock(mutex_);
  X509* certificate = SSL_get0_peer_certificate(ssl_);
  if (certificate == nullptr || identity.empty()) return false;
  return X509_check_host(certificate, identity.data(), identity.size(), X509_CHECK_FLAG_NO_WILDCARDS, nullptr) == 1;
}

}  // namespace amirror::net
