// SPDX-License-Identifier: Apache-2.0
// NBD fixed-newstyle option negotiation, server side (nbd-proto.md "Handshake").
//
// negotiate() runs the whole handshake over a ByteStream: the server runs it over a
// socket, unit tests and the fuzzer over memory buffers. It handles NBD_OPT_GO, INFO,
// LIST, EXPORT_NAME, ABORT, STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT
// (base:allocation); every other option gets NBD_REP_ERR_UNSUP and negotiation goes on.
//
// Bounds: option payloads above kMaxOptionPayloadBytes are refused without being read
// (the connection is then dropped: the stream cannot be resynchronised cheaply);
// export names above kMaxExportNameBytes get NBD_REP_ERR_INVALID; at most
// kMaxOptionsPerHandshake options. No export is opened here: the catalog only hands out
// exports the server opened at startup.
// Thread-safety: negotiate() keeps all state on its stack.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "base/status.h"
#include "nbd/export.h"
#include "nbd/protocol.h"

namespace amirror::nbd {

// A byte transport. Errors: kCancelled when the peer closed, kIo otherwise.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  virtual Status read_exact(std::span<uint8_t> out) = 0;
  virtual Status write_all(std::span<const uint8_t> data) = 0;
};

// Reads from a fixed buffer, appends writes to `output` (tests and fuzzer).
class MemoryStream final : public ByteStream {
 public:
  explicit MemoryStream(std::span<const uint8_t> input) : input_(input) {}
  Status read_exact(std::span<uint8_t> out) override;
  Status write_all(std::span<const uint8_t> data) override;
  std::span<const uint8_t> remaining() const { return input_.subspan(position_); }
  std::string output;

 private:
  std::span<const uint8_t> input_;
  size_t position_ = 0;
};

struct Negotiated {
  std::string export_name;  // as the client sent it ("" = default export)
  std::shared_ptr<Export> target;
  ConnectionLimits limits;
};

// The transmission flags amirror advertises for `target`.
uint16_t transmission_flags(const Export& target, bool structured_replies);

// Runs negotiation to the transmission phase. An error means: close the connection
// (client aborted, vanished, broke the protocol or asked for an unknown export with
// NBD_OPT_EXPORT_NAME); the message says which, for the server's log.
Result<Negotiated> negotiate(ByteStream& stream, const ExportCatalog& catalog);

}  // namespace amirror::nbd
