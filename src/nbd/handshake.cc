// SPDX-License-Identifier: Apache-2.0
#include "nbd/handshake.h"

#include <cstring>
#include <string_view>
#include <vector>

namespace amirror::nbd {

Status MemoryStream::read_exact(std::span<uint8_t> out) {
  if (out.size() > input_.size() - position_) {
    position_ = input_.size();
    return Status(ErrorCode::kCancelled, "peer closed the connection");
  }
  if (out.empty()) return Status();  // memcpy from/to a null span pointer is UB
  std::memcpy(out.data(), input_.data() + position_, out.size());
  position_ += out.size();
  return Status();
}

Status MemoryStream::write_all(std::span<const uint8_t> data) {
  output.append(reinterpret_cast<const char*>(data.data()), data.size());
  return Status();
}

Status MemoryStream::start_tls() {
  if (!simulate_tls) return ByteStream::start_tls();
  AMIRROR_ASSERT(!tls_started && "negotiation must not start TLS twice");
  tls_started = true;
  tls_input_offset = position_;
  tls_output_offset = output.size();
  return Status();
}

Result<TlsMode> parse_tls_mode(std::string_view text) {
  if (text == "off") return TlsMode::kOff;
  if (text == "allow") return TlsMode::kAllow;
  if (text == "require") return TlsMode::kRequire;
  return invalid_argument("TLS mode must be off, allow or require, not '" + std::string(text) +
                          "'");
}

const char* tls_mode_name(TlsMode mode) {
  switch (mode) {
    case TlsMode::kOff: return "off";
    case TlsMode::kAllow: return "allow";
    case TlsMode::kRequire: return "require";
  }
  return "?";
}

uint16_t transmission_flags(const Export& target, bool structured_replies) {
  uint16_t flags = kTransHasFlags | kTransSendFlush;
  if (target.read_only()) {
    flags |= kTransReadOnly;
  } else {
    flags |= kTransSendFua | kTransSendTrim | kTransSendWriteZeroes;
  }
  // Reads are always answered with one data chunk, so "don't fragment" holds trivially.
  if (structured_replies) flags |= kTransSendDf;
  // CAN_MULTI_CONN is truthful: Export::flush (Volume::flush) syncs the whole active
  // layer and base, not per-connection state, so a flush on any connection makes every
  // write completed on every connection durable. Each connection sees others' completed
  // writes because all share one Volume (no per-connection cache).
  flags |= kTransCanMultiConn;
  return flags;
}

namespace {

class Negotiation {
 public:
  Negotiation(ByteStream& stream, const ExportCatalog& catalog, TlsMode tls_mode)
      : stream_(stream), catalog_(catalog), tls_mode_(tls_mode) {}

  Result<Negotiated> run();

 private:
  Status send_reply(uint32_t option, uint32_t type, std::span<const uint8_t> data = {});
  Status send_error(uint32_t option, uint32_t type, std::string_view message);
  // Returns true (in *done) when the option finished negotiation.
  Status handle_option(uint32_t option, std::span<const uint8_t> payload, bool* done);
  Status handle_info_or_go(uint32_t option, std::span<const uint8_t> payload, bool* done);
  Status handle_meta_context(uint32_t option, std::span<const uint8_t> payload);
  Status handle_export_name(std::span<const uint8_t> payload, bool* done);
  Status handle_start_tls(std::span<const uint8_t> payload);
  // kRequire before TLS, for every option but STARTTLS and ABORT: EXPORT_NAME closes,
  // everything else is refused unread.
  Status refuse_without_tls(uint32_t option);

  ByteStream& stream_;
  const ExportCatalog& catalog_;
  const TlsMode tls_mode_;
  bool tls_active_ = false;
  bool told_tls_required_ = false;  // for a clearer log line when the client gives up
  bool no_zeroes_ = false;
  // Option state below is what STARTTLS must reset (handle_start_tls).
  bool structured_ = false;
  bool base_allocation_ = false;
  std::shared_ptr<Export> meta_context_export_;  // export SET_META_CONTEXT chose for
  Negotiated result_;
};

Status Negotiation::send_reply(uint32_t option, uint32_t type, std::span<const uint8_t> data) {
  uint8_t header[20];
  put_be64(header, kOptionReplyMagic);
  put_be32(header + 8, option);
  put_be32(header + 12, type);
  put_be32(header + 16, static_cast<uint32_t>(data.size()));
  AMIRROR_RETURN_IF_ERROR(stream_.write_all(header));
  if (!data.empty()) AMIRROR_RETURN_IF_ERROR(stream_.write_all(data));
  return Status();
}

Status Negotiation::send_error(uint32_t option, uint32_t type, std::string_view message) {
  return send_reply(option, type,
                    std::span(reinterpret_cast<const uint8_t*>(message.data()), message.size()));
}

Result<Negotiated> Negotiation::run() {
  uint8_t greeting[18];
  put_be64(greeting, kNbdMagic);
  put_be64(greeting + 8, kOptionMagic);
  put_be16(greeting + 16, kFlagFixedNewstyle | kFlagNoZeroes);
  AMIRROR_RETURN_IF_ERROR(stream_.write_all(greeting));

  uint8_t client_flags_bytes[4];
  AMIRROR_RETURN_IF_ERROR(stream_.read_exact(client_flags_bytes));
  const uint32_t client_flags = get_be32(client_flags_bytes);
  if ((client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) != 0) {
    return invalid_argument("NBD client sent unknown handshake flags; not an NBD client?");
  }
  if (!(client_flags & kClientFlagFixedNewstyle)) {
    return invalid_argument("NBD client does not speak fixed newstyle negotiation");
  }
  no_zeroes_ = (client_flags & kClientFlagNoZeroes) != 0;

  std::vector<uint8_t> payload;
  for (uint32_t option_count = 0; option_count < kMaxOptionsPerHandshake; ++option_count) {
    uint8_t header[16];
    AMIRROR_RETURN_IF_ERROR(stream_.read_exact(header));
    if (get_be64(header) != kOptionMagic) {
      return invalid_argument("NBD client sent an option with bad magic");
    }
    const uint32_t option = get_be32(header + 8);
    const uint32_t length = get_be32(header + 12);
    if (length > kMaxOptionPayloadBytes) {
      // Reading and discarding up to 4 GiB would let a client keep us busy; refuse.
      if (option != kOptExportName) {
        (void)send_error(option, kRepErrTooBig, "option payload too large");
      }
      return invalid_argument("NBD client sent an option payload of " + std::to_string(length) +
                              " bytes (limit " + std::to_string(kMaxOptionPayloadBytes) + ")");
    }
    payload.resize(length);
    AMIRROR_RETURN_IF_ERROR(stream_.read_exact(payload));
    bool done = false;
    AMIRROR_RETURN_IF_ERROR(handle_option(option, payload, &done));
    if (done) {
      AMIRROR_ASSERT(tls_active_ || tls_mode_ != TlsMode::kRequire);
      result_.tls = tls_active_;
      return std::move(result_);
    }
  }
  (void)send_error(0, kRepErrPolicy, "too many options");
  return invalid_argument("NBD client sent more than " +
                          std::to_string(kMaxOptionsPerHandshake) + " options");
}

Status Negotiation::refuse_without_tls(uint32_t option) {
  AMIRROR_ASSERT(option != kOptStartTls && option != kOptAbort);
  if (option == kOptExportName) {
    // It has no error reply, so the spec's answer is to end the session.
    return invalid_argument(
        "NBD client sent NBD_OPT_EXPORT_NAME before STARTTLS; this server requires TLS "
        "(use a client with TLS credentials)");
  }
  told_tls_required_ = true;
  return send_error(option, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
}

Status Negotiation::handle_start_tls(std::span<const uint8_t> payload) {
  const uint32_t option = kOptStartTls;
  if (tls_mode_ == TlsMode::kOff) {
    return send_error(option, kRepErrPolicy, "TLS is not enabled on this server");
  }
  if (tls_active_) return send_error(option, kRepErrInvalid, "TLS is already active");
  if (!payload.empty()) return send_error(option, kRepErrInvalid, "STARTTLS takes no data");
  AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepAck));
  Status upgraded = stream_.start_tls();
  if (!upgraded.ok()) {
    return Status(upgraded.code(), "TLS handshake failed: " + upgraded.message());
  }
  tls_active_ = true;
  // Nothing negotiated in plaintext survives (spec, NBD_OPT_STARTTLS; CVE-2021-3716).
  structured_ = false;
  base_allocation_ = false;
  meta_context_export_.reset();
  return Status();
}

Status Negotiation::handle_option(uint32_t option, std::span<const uint8_t> payload,
                                  bool* done) {
  if (tls_mode_ == TlsMode::kRequire && !tls_active_ && option != kOptStartTls &&
      option != kOptAbort) {
    return refuse_without_tls(option);
  }
  switch (option) {
    case kOptExportName:
      return handle_export_name(payload, done);
    case kOptGo:
    case kOptInfo:
      return handle_info_or_go(option, payload, done);
    case kOptAbort:
      (void)send_reply(option, kRepAck);  // best effort; the client may be gone
      return Status(ErrorCode::kCancelled,
                    told_tls_required_
                        ? "NBD client aborted the handshake after being told TLS is required"
                        : "NBD client aborted the handshake");
    case kOptList: {
      if (!payload.empty()) return send_error(option, kRepErrInvalid, "LIST takes no data");
      for (const std::string& name : catalog_.names()) {
        std::vector<uint8_t> data(4 + name.size());
        put_be32(data.data(), static_cast<uint32_t>(name.size()));
        std::memcpy(data.data() + 4, name.data(), name.size());
        AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepServer, data));
      }
      return send_reply(option, kRepAck);
    }
    case kOptStructuredReply:
      if (!payload.empty()) {
        return send_error(option, kRepErrInvalid, "STRUCTURED_REPLY takes no data");
      }
      if (structured_) {
        return send_error(option, kRepErrInvalid, "structured replies already negotiated");
      }
      structured_ = true;
      return send_reply(option, kRepAck);
    case kOptListMetaContext:
    case kOptSetMetaContext:
      return handle_meta_context(option, payload);
    case kOptStartTls:
      return handle_start_tls(payload);
    default:
      return send_error(option, kRepErrUnsup, "unknown option");
  }
}

Status Negotiation::handle_export_name(std::span<const uint8_t> payload, bool* done) {
  // NBD_OPT_EXPORT_NAME has no error reply: the only refusal is to disconnect.
  if (payload.size() > kMaxExportNameBytes) {
    return invalid_argument("NBD client asked for an export name longer than 4096 bytes");
  }
  std::string name(payload.begin(), payload.end());
  std::shared_ptr<Export> target = catalog_.find(name);
  if (target == nullptr) {
    return not_found("NBD client asked for unknown export '" + name + "'");
  }
  uint8_t reply[10 + 124] = {};
  const uint16_t flags = transmission_flags(*target, structured_);
  put_be64(reply, target->size_bytes());
  put_be16(reply + 8, flags);
  AMIRROR_RETURN_IF_ERROR(
      stream_.write_all(std::span<const uint8_t>(reply, no_zeroes_ ? 10 : sizeof reply)));
  result_.export_name = std::move(name);
  result_.limits = ConnectionLimits{target->size_bytes(), flags, structured_,
                                    base_allocation_ && meta_context_export_ == target};
  result_.target = std::move(target);
  *done = true;
  return Status();
}

Status Negotiation::handle_info_or_go(uint32_t option, std::span<const uint8_t> payload,
                                      bool* done) {
  // 32-bit name length, name, 16-bit count of info requests, the requests.
  if (payload.size() < 6) return send_error(option, kRepErrInvalid, "option data too short");
  const uint32_t name_length = get_be32(payload.data());
  if (name_length > payload.size() - 6) {
    return send_error(option, kRepErrInvalid, "export name length exceeds option data");
  }
  if (name_length > kMaxExportNameBytes) {
    return send_error(option, kRepErrInvalid, "export name longer than 4096 bytes");
  }
  const uint16_t request_count = get_be16(payload.data() + 4 + name_length);
  if (payload.size() != 6 + name_length + 2ULL * request_count) {
    return send_error(option, kRepErrInvalid, "info request count does not match option data");
  }
  std::string name(payload.begin() + 4, payload.begin() + 4 + name_length);
  bool want_name = false;
  for (uint32_t i = 0; i < request_count; ++i) {
    if (get_be16(payload.data() + 6 + name_length + 2 * i) == kInfoName) want_name = true;
  }
  std::shared_ptr<Export> target = catalog_.find(name);
  if (target == nullptr) {
    std::string message = name.empty() ? "no default export: this server has " +
                                             std::to_string(catalog_.names().size()) +
                                             " volumes; name one"
                                       : "unknown export '" + name + "'";
    if (std::string why = catalog_.unavailable_reason(name); !why.empty()) message = "export '" + name + "' is unavailable: " + why;
    return send_error(option, kRepErrUnknown, message);
  }

  const uint16_t flags = transmission_flags(*target, structured_);
  uint8_t export_info[12];
  put_be16(export_info, kInfoExport);
  put_be64(export_info + 2, target->size_bytes());
  put_be16(export_info + 10, flags);
  AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepInfo, export_info));
  if (want_name) {
    std::vector<uint8_t> data(2 + name.size());
    put_be16(data.data(), kInfoName);
    std::memcpy(data.data() + 2, name.data(), name.size());
    AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepInfo, data));
  }
  // Minimum 1 means "no alignment needed", so sending it unasked is always safe.
  uint8_t block_size[14];
  put_be16(block_size, kInfoBlockSize);
  put_be32(block_size + 2, kMinBlockSizeBytes);
  put_be32(block_size + 6, kPreferredBlockSizeBytes);
  put_be32(block_size + 10, kMaxPayloadBytes);
  AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepInfo, block_size));
  AMIRROR_RETURN_IF_ERROR(send_reply(option, kRepAck));
  if (option == kOptGo) {
    result_.export_name = std::move(name);
    // A metadata context chosen for another export does not carry over (spec).
    result_.limits = ConnectionLimits{target->size_bytes(), flags, structured_,
                                      base_allocation_ && meta_context_export_ == target};
    result_.target = std::move(target);
    *done = true;
  }
  return Status();
}

Status Negotiation::handle_meta_context(uint32_t option, std::span<const uint8_t> payload) {
  const bool is_set = option == kOptSetMetaContext;
  if (!structured_) {
    return send_error(option, kRepErrInvalid, "negotiate structured replies first");
  }
  // 32-bit name length, name, 32-bit query count, queries (32-bit length, string).
  size_t position = 0;
  auto take_u32 = [&](uint32_t* value) {
    if (payload.size() - position < 4) return false;
    *value = get_be32(payload.data() + position);
    position += 4;
    return true;
  };
  uint32_t name_length = 0;
  if (!take_u32(&name_length) || name_length > payload.size() - position) {
    return send_error(option, kRepErrInvalid, "malformed meta context request");
  }
  if (name_length > kMaxExportNameBytes) {
    return send_error(option, kRepErrInvalid, "export name longer than 4096 bytes");
  }
  std::string name(payload.begin() + position, payload.begin() + position + name_length);
  position += name_length;
  uint32_t query_count = 0;
  if (!take_u32(&query_count)) {
    return send_error(option, kRepErrInvalid, "malformed meta context request");
  }
  if (query_count > kMaxMetaContextQueries) {
    return send_error(option, kRepErrTooBig, "too many meta context queries");
  }
  bool matched = query_count == 0 && !is_set;  // empty LIST = list everything
  for (uint32_t i = 0; i < query_count; ++i) {
    uint32_t query_length = 0;
    if (!take_u32(&query_length) || query_length > payload.size() - position) {
      return send_error(option, kRepErrInvalid, "meta context query exceeds option data");
    }
    std::string_view query(reinterpret_cast<const char*>(payload.data()) + position,
                           query_length);
    position += query_length;
    if (query == kBaseAllocationContext || (!is_set && query == "base:")) matched = true;
  }
  if (position != payload.size()) {
    return send_error(option, kRepErrInvalid, "trailing bytes in meta context request");
  }
  std::shared_ptr<Export> target = catalog_.find(name);
  if (target == nullptr) {
    return send_error(option, kRepErrUnknown, "unknown export '" + name + "'");
  }
  if (is_set) {
    // Each SET replaces the previous selection.
    base_allocation_ = matched;
    meta_context_export_ = target;
  }
  if (matched) {
    const size_t context_length = sizeof(kBaseAllocationContext) - 1;
    uint8_t data[4 + sizeof(kBaseAllocationContext)];
    put_be32(data, kBaseAllocationContextId);
    std::memcpy(data + 4, kBaseAllocationContext, context_length);
    AMIRROR_RETURN_IF_ERROR(
        send_reply(option, kRepMetaContext, std::span<const uint8_t>(data, 4 + context_length)));
  }
  return send_reply(option, kRepAck);
}

}  // namespace

Result<Negotiated> negotiate(ByteStream& stream, const ExportCatalog& catalog,
                             TlsMode tls_mode) {
  Negotiation negotiation(stream, catalog, tls_mode);
  return negotiation.run();
}

}  // namespace amirror::nbd
