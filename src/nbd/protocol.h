// SPDX-License-Identifier: Apache-2.0
// The NBD wire protocol as amirror speaks it: constants, big-endian coding, the
// transmission-phase request header, and the one place where requests are validated
// and where store errors become NBD errnos. Spec: shared/reference/nbd-proto.md.
//
// Everything here is a pure function over byte buffers (no sockets, no threads), so
// the request parser can be unit-tested and fuzzed (fuzz/nbd_fuzz.cc) in isolation.
//
// Note: NBD is big-endian on the wire, unlike amirror's own formats (base/coding.h),
// so this file has its own put_be*/get_be* helpers.
// Thread-safety: stateless.
#pragma once

#include <cstdint>
#include <cstring>

#include "base/status.h"
#include "base/units.h"

namespace amirror::nbd {

// --- Handshake -------------------------------------------------------------------
constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;       // "NBDMAGIC"
constexpr uint64_t kOptionMagic = 0x49484156454F5054ULL;    // "IHAVEOPT"
constexpr uint64_t kOptionReplyMagic = 0x3e889045565a9ULL;

constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
constexpr uint16_t kFlagNoZeroes = 1 << 1;
constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

constexpr uint32_t kOptExportName = 1;
constexpr uint32_t kOptAbort = 2;
constexpr uint32_t kOptList = 3;
constexpr uint32_t kOptStartTls = 5;
constexpr uint32_t kOptInfo = 6;
constexpr uint32_t kOptGo = 7;
constexpr uint32_t kOptStructuredReply = 8;
constexpr uint32_t kOptListMetaContext = 9;
constexpr uint32_t kOptSetMetaContext = 10;

constexpr uint32_t kRepAck = 1;
constexpr uint32_t kRepServer = 2;
constexpr uint32_t kRepInfo = 3;
constexpr uint32_t kRepMetaContext = 4;
constexpr uint32_t kRepErrorBit = 1U << 31;
constexpr uint32_t kRepErrUnsup = kRepErrorBit | 1;
constexpr uint32_t kRepErrPolicy = kRepErrorBit | 2;
constexpr uint32_t kRepErrInvalid = kRepErrorBit | 3;
constexpr uint32_t kRepErrPlatform = kRepErrorBit | 4;
constexpr uint32_t kRepErrTlsReqd = kRepErrorBit | 5;
constexpr uint32_t kRepErrUnknown = kRepErrorBit | 6;
constexpr uint32_t kRepErrShutdown = kRepErrorBit | 7;
constexpr uint32_t kRepErrTooBig = kRepErrorBit | 9;

constexpr uint16_t kInfoExport = 0;
constexpr uint16_t kInfoName = 1;
constexpr uint16_t kInfoDescription = 2;
constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags (16 bits, sent with the export's size).
constexpr uint16_t kTransHasFlags = 1 << 0;
constexpr uint16_t kTransReadOnly = 1 << 1;
constexpr uint16_t kTransSendFlush = 1 << 2;
constexpr uint16_t kTransSendFua = 1 << 3;
constexpr uint16_t kTransRotational = 1 << 4;
constexpr uint16_t kTransSendTrim = 1 << 5;
constexpr uint16_t kTransSendWriteZeroes = 1 << 6;
constexpr uint16_t kTransSendDf = 1 << 7;
constexpr uint16_t kTransCanMultiConn = 1 << 8;

// The one metadata context amirror offers.
constexpr char kBaseAllocationContext[] = "base:allocation";
constexpr uint32_t kBaseAllocationContextId = 1;  // nonzero, our choice
constexpr uint32_t kStateHole = 1 << 0;
constexpr uint32_t kStateZero = 1 << 1;

// --- Transmission ----------------------------------------------------------------
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

constexpr uint16_t kCmdRead = 0;
constexpr uint16_t kCmdWrite = 1;
constexpr uint16_t kCmdDisc = 2;
constexpr uint16_t kCmdFlush = 3;
constexpr uint16_t kCmdTrim = 4;
constexpr uint16_t kCmdCache = 5;
constexpr uint16_t kCmdWriteZeroes = 6;
constexpr uint16_t kCmdBlockStatus = 7;

constexpr uint16_t kCmdFlagFua = 1 << 0;
constexpr uint16_t kCmdFlagNoHole = 1 << 1;
constexpr uint16_t kCmdFlagDf = 1 << 2;
constexpr uint16_t kCmdFlagReqOne = 1 << 3;
constexpr uint16_t kCmdFlagFastZero = 1 << 4;

constexpr uint16_t kReplyFlagDone = 1 << 0;
constexpr uint16_t kReplyTypeNone = 0;
constexpr uint16_t kReplyTypeOffsetData = 1;
constexpr uint16_t kReplyTypeBlockStatus = 5;
constexpr uint16_t kReplyTypeError = (1 << 15) + 1;

// NBD errnos (fixed values, independent of the host's errno numbering).
constexpr uint32_t kNbdOk = 0;
constexpr uint32_t kNbdEperm = 1;
constexpr uint32_t kNbdEio = 5;
constexpr uint32_t kNbdEnomem = 12;
constexpr uint32_t kNbdEinval = 22;
constexpr uint32_t kNbdEnospc = 28;
constexpr uint32_t kNbdEoverflow = 75;
constexpr uint32_t kNbdEnotsup = 95;
constexpr uint32_t kNbdEshutdown = 108;

// --- Bounds (learned by nbdkit from CVEs in qemu-nbd and nbd-server) --------------
constexpr uint32_t kMaxExportNameBytes = 4096;
// Option payloads larger than this are refused without reading them (nbdkit's bound
// is similar); the biggest legitimate option is a 4 KiB name plus a few queries.
constexpr uint32_t kMaxOptionPayloadBytes = 64 * 1024;
// Options per handshake; a client looping on NBD_OPT_LIST is cut off after this.
constexpr uint32_t kMaxOptionsPerHandshake = 64;
// Meta context queries per LIST/SET option.
constexpr uint32_t kMaxMetaContextQueries = 128;
// Largest READ/WRITE payload; advertised as NBD_INFO_BLOCK_SIZE's maximum.
constexpr uint32_t kMaxPayloadBytes = 32 * 1024 * 1024;
constexpr uint32_t kMinBlockSizeBytes = 1;
constexpr uint32_t kPreferredBlockSizeBytes = 4096;
// Descriptors in one BLOCK_STATUS reply; the client asks again for the rest.
constexpr uint32_t kMaxBlockStatusDescriptors = 16 * 1024;

constexpr size_t kRequestHeaderBytes = 28;
constexpr size_t kSimpleReplyHeaderBytes = 16;
constexpr size_t kStructuredReplyHeaderBytes = 20;

// --- Big-endian coding ------------------------------------------------------------
inline void put_be16(uint8_t* out, uint16_t value) {
  out[0] = static_cast<uint8_t>(value >> 8);
  out[1] = static_cast<uint8_t>(value);
}
inline void put_be32(uint8_t* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(value >> (24 - 8 * i));
}
inline void put_be64(uint8_t* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (56 - 8 * i));
}
inline uint16_t get_be16(const uint8_t* in) {
  return static_cast<uint16_t>((in[0] << 8) | in[1]);
}
inline uint32_t get_be32(const uint8_t* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value = (value << 8) | in[i];
  return value;
}
inline uint64_t get_be64(const uint8_t* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | in[i];
  return value;
}

// --- Requests ---------------------------------------------------------------------
struct RequestHeader {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;  // opaque to the server, echoed in the reply
  uint64_t offset_bytes = 0;
  uint32_t length_bytes = 0;
};

// Decodes the fixed 28-byte header. Never fails: checks belong to validate_request.
RequestHeader parse_request_header(const uint8_t* bytes /* kRequestHeaderBytes */);
void encode_request_header(const RequestHeader& header, uint8_t* out /* 28 bytes */);

// What the server negotiated for this connection, all validate_request needs.
struct ConnectionLimits {
  uint64_t export_size_bytes = 0;
  uint16_t transmission_flags = 0;
  bool structured_replies = false;
  bool base_allocation = false;  // base:allocation selected via SET_META_CONTEXT
};

enum class Verdict : uint8_t {
  kOk,          // dispatch it
  kReplyError,  // reply with `error` and keep the connection; for WRITE, first
                // consume `payload_to_discard_bytes` from the stream
  kDisconnect,  // the stream cannot be trusted (bad magic, unreadable payload)
};

struct Validation {
  Verdict verdict = Verdict::kOk;
  uint32_t error = kNbdOk;             // NBD errno for kReplyError
  uint32_t payload_bytes = 0;          // bytes of payload that follow the header
  const char* reason = "";             // for logs and structured error messages
};

// The edge check every request passes before dispatch (nbdkit's validate_request):
// magic, command, flags per command, length bounds, range against the export
// (overflow-safe), and what was negotiated. Pure function.
Validation validate_request(const RequestHeader& header, const ConnectionLimits& limits);

// The only mapping from store errors to NBD errnos.
uint32_t nbd_error_from_status(const Status& status);

const char* command_name(uint16_t type);

// --- Reply encoding ---------------------------------------------------------------
inline void encode_simple_reply(uint8_t* out /* 16 */, uint32_t error, uint64_t cookie) {
  put_be32(out, kSimpleReplyMagic);
  put_be32(out + 4, error);
  put_be64(out + 8, cookie);
}
inline void encode_structured_header(uint8_t* out /* 20 */, uint16_t flags, uint16_t type,
                                     uint64_t cookie, uint32_t length_bytes) {
  put_be32(out, kStructuredReplyMagic);
  put_be16(out + 4, flags);
  put_be16(out + 6, type);
  put_be64(out + 8, cookie);
  put_be32(out + 16, length_bytes);
}

}  // namespace amirror::nbd
