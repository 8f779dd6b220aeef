// SPDX-License-Identifier: Apache-2.0
#include "nbd/protocol.h"

namespace amirror::nbd {

RequestHeader parse_request_header(const uint8_t* bytes) {
  RequestHeader header;
  header.magic = get_be32(bytes);
  header.flags = get_be16(bytes + 4);
  header.type = get_be16(bytes + 6);
  header.cookie = get_be64(bytes + 8);
  header.offset_bytes = get_be64(bytes + 16);
  header.length_bytes = get_be32(bytes + 24);
  return header;
}

void encode_request_header(const RequestHeader& header, uint8_t* out) {
  put_be32(out, header.magic);
  put_be16(out + 4, header.flags);
  put_be16(out + 6, header.type);
  put_be64(out + 8, header.cookie);
  put_be64(out + 16, header.offset_bytes);
  put_be32(out + 24, header.length_bytes);
}

namespace {

Validation reply_error(uint32_t error, const char* reason, uint32_t payload_bytes = 0) {
  return Validation{Verdict::kReplyError, error, payload_bytes, reason};
}

// Flags each command accepts, given what was advertised.
uint16_t allowed_flags(uint16_t type, const ConnectionLimits& limits) {
  const uint16_t fua = (limits.transmission_flags & kTransSendFua) ? kCmdFlagFua : 0;
  switch (type) {
    case kCmdRead:
      return (limits.structured_replies && (limits.transmission_flags & kTransSendDf))
                 ? kCmdFlagDf
                 : 0;
    case kCmdWrite:
    case kCmdTrim:
      return fua;
    case kCmdWriteZeroes:
      return fua | kCmdFlagNoHole;
    case kCmdBlockStatus:
      return kCmdFlagReqOne;
    default:
      return 0;
  }
}

}  // namespace

Validation validate_request(const RequestHeader& header, const ConnectionLimits& limits) {
  if (header.magic != kRequestMagic) {
    return Validation{Verdict::kDisconnect, kNbdEinval, 0, "bad request magic"};
  }
  const uint16_t type = header.type;
  const uint64_t offset = header.offset_bytes;
  const uint64_t length = header.length_bytes;

  // A WRITE's payload follows the header whatever we think of it; it must be consumed
  // to keep the stream in sync, or the connection dropped if it is absurdly large.
  uint32_t payload_bytes = 0;
  if (type == kCmdWrite) {
    if (length > kMaxPayloadBytes) {
      return Validation{Verdict::kDisconnect, kNbdEinval, 0,
                        "write payload larger than the advertised maximum"};
    }
    payload_bytes = header.length_bytes;
  }

  switch (type) {
    case kCmdRead:
    case kCmdWrite:
    case kCmdDisc:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdWriteZeroes:
      break;
    case kCmdBlockStatus:
      if (!limits.base_allocation) {
        return reply_error(kNbdEinval, "block status without a negotiated metadata context");
      }
      break;
    default:
      return reply_error(kNbdEinval, "unknown or unadvertised command");
  }

  if ((header.flags & ~allowed_flags(type, limits)) != 0) {
    return reply_error(kNbdEinval, "flags not valid for this command", payload_bytes);
  }

  const bool is_write_like = type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
  if (is_write_like && (limits.transmission_flags & kTransReadOnly)) {
    return reply_error(kNbdEperm, "export is read-only", payload_bytes);
  }

  switch (type) {
    case kCmdDisc:
      return Validation{Verdict::kOk, kNbdOk, 0, ""};
    case kCmdFlush:
      if (offset != 0 || length != 0) {
        return reply_error(kNbdEinval, "flush with nonzero offset or length");
      }
      return Validation{Verdict::kOk, kNbdOk, 0, ""};
    default:
      break;
  }

  if (length == 0) return reply_error(kNbdEinval, "zero-length request", payload_bytes);
  if (type == kCmdRead && length > kMaxPayloadBytes) {
    return reply_error(kNbdEinval, "read longer than the advertised maximum");
  }
  // Overflow-safe: offset + length never computed.
  const uint64_t size = limits.export_size_bytes;
  if (offset > size || length > size - offset) {
    const bool past_end_write = type == kCmdWrite || type == kCmdWriteZeroes;
    return reply_error(past_end_write ? kNbdEnospc : kNbdEinval,
                       "request beyond the end of the export", payload_bytes);
  }
  return Validation{Verdict::kOk, kNbdOk, payload_bytes, ""};
}

uint32_t nbd_error_from_status(const Status& status) {
  switch (status.code()) {
    case ErrorCode::kOk:
      return kNbdOk;
    case ErrorCode::kNoSpace:
      return kNbdEnospc;
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kOutOfRange:
      return kNbdEinval;
    case ErrorCode::kUnsupported:
      return kNbdEnotsup;
    case ErrorCode::kCancelled:
      return kNbdEshutdown;
    case ErrorCode::kReadOnly:
      return kNbdEperm;  // NBD has no EROFS; EPERM is what a read-only export returns
    default:
      // kIo, kCorruption, kBusy, kTimeout, ...: the client can only retry or give up.
      return kNbdEio;
  }
}

const char* command_name(uint16_t type) {
  switch (type) {
    case kCmdRead: return "READ";
    case kCmdWrite: return "WRITE";
    case kCmdDisc: return "DISC";
    case kCmdFlush: return "FLUSH";
    case kCmdTrim: return "TRIM";
    case kCmdCache: return "CACHE";
    case kCmdWriteZeroes: return "WRITE_ZEROES";
    case kCmdBlockStatus: return "BLOCK_STATUS";
    default: return "UNKNOWN";
  }
}

}  // namespace amirror::nbd
