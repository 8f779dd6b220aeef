// SPDX-License-Identifier: Apache-2.0
// NBD fixed-newstyle option negotiation, server side (nbd-proto.md "Handshake").
//
// negotiate() runs the whole handshake over a ByteStream: the server runs it over a
// socket, unit tests and the fuzzer over memory buffers. It handles NBD_OPT_GO, INFO,
// LIST, EXPORT_NAME, ABORT, STARTTLS, STRUCTURED_REPLY, LIST_META_CONTEXT and
// SET_META_CONTEXT (base:allocation); every other option gets NBD_REP_ERR_UNSUP and
// negotiation goes on.
//
// TLS (nbd-proto.md "TLS support"), per TlsMode:
//   kOff      NOTLS: STARTTLS gets NBD_REP_ERR_POLICY; never NBD_REP_ERR_TLS_REQD.
//   kAllow    SELECTIVETLS with no TLS-only export: STARTTLS is accepted, and so is
//             everything else in plaintext.
//   kRequire  FORCEDTLS: before TLS, every option but STARTTLS and ABORT gets
//             NBD_REP_ERR_TLS_REQD without being looked at (its payload is read, within
//             the usual bound, and dropped), and NBD_OPT_EXPORT_NAME, which cannot be
//             refused, closes the connection. The catalog is not consulted before TLS.
// In both TLS modes: STARTTLS with data gets NBD_REP_ERR_INVALID; a second STARTTLS
// gets NBD_REP_ERR_INVALID. After the plaintext NBD_REP_ACK the stream's start_tls()
// runs the TLS handshake; if it fails the connection is closed (too late to go back).
// Everything negotiated before STARTTLS (structured replies, the metadata context
// selection) is forgotten, as the spec requires, so a man in the middle cannot inject
// plaintext state into the encrypted session (nbdkit CVE-2021-3716). The client flags
// (NO_ZEROES) belong to the greeting, not to option haggling, and are kept.
// The plaintext stream must not read ahead: bytes after the STARTTLS option belong to
// the TLS handshake, and a client that sends plaintext there fails it (see start_tls).
//
// Bounds: option payloads above kMaxOptionPayloadBytes are refused without being read
// (the connection is then dropped: the stream cannot be resynchronised cheaply);
// export names above kMaxExportNameBytes get NBD_REP_ERR_INVALID; at most
// kMaxOptionsPerHandshake options (STARTTLS included). No export is opened here: the
// catalog only hands out exports the server opened at startup, and with kRequire it is
// not even consulted before TLS is up (the lesson of nbdkit's CVE-2019-14850).
// Thread-safety: negotiate() keeps all state on its stack.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "nbd/export.h"
#include "nbd/protocol.h"

namespace amirror::nbd {

// How the server treats TLS on one connection (see the top of this file).
enum class TlsMode : uint8_t { kOff, kAllow, kRequire };

// "off", "allow", "require" (config files and --tls use these words).
Result<TlsMode> parse_tls_mode(std::string_view text);
const char* tls_mode_name(TlsMode mode);

// A byte transport. Errors: kCancelled when the peer closed, kIo otherwise.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  virtual Status read_exact(std::span<uint8_t> out) = 0;
  virtual Status write_all(std::span<const uint8_t> data) = 0;
  // Upgrades the stream to TLS (server side), right after STARTTLS's NBD_REP_ACK went
  // out; on success every later read and write goes through TLS. Must not use any
  // byte received before the call, and must fail when the client's next bytes are not
  // a TLS handshake. Only called when negotiate() runs with a TlsMode other than kOff.
  virtual Status start_tls() { return Status(ErrorCode::kUnsupported, "this stream has no TLS"); }
};

// Reads from a fixed buffer, appends writes to `output` (tests and fuzzer).
// With simulate_tls, start_tls() succeeds without changing the bytes and records where
// the "TLS" part of each direction begins; without it, start_tls() fails.
class MemoryStream final : public ByteStream {
 public:
  explicit MemoryStream(std::span<const uint8_t> input) : input_(input) {}
  Status read_exact(std::span<uint8_t> out) override;
  Status write_all(std::span<const uint8_t> data) override;
  Status start_tls() override;
  std::span<const uint8_t> remaining() const { return input_.subspan(position_); }
  std::string output;
  bool simulate_tls = false;
  bool tls_started = false;
  size_t tls_input_offset = 0;   // input bytes consumed before the upgrade
  size_t tls_output_offset = 0;  // output bytes written before the upgrade

 private:
  std::span<const uint8_t> input_;
  size_t position_ = 0;
};

struct Negotiated {
  std::string export_name;  // as the client sent it ("" = default export)
  std::shared_ptr<Export> target;
  ConnectionLimits limits;
  bool tls = false;  // STARTTLS succeeded: the transmission phase must use TLS too
};

// The transmission flags amirror advertises for `target`.
uint16_t transmission_flags(const Export& target, bool structured_replies);

// Runs negotiation to the transmission phase. An error means: close the connection
// (client aborted, vanished, broke the protocol, failed the TLS handshake, or asked for
// an unknown export with NBD_OPT_EXPORT_NAME); the message says which, for the
// server's log. A TLS handshake failure has a message starting "TLS handshake failed".
Result<Negotiated> negotiate(ByteStream& stream, const ExportCatalog& catalog,
                             TlsMode tls_mode = TlsMode::kOff);

}  // namespace amirror::nbd
