// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the NBD edge: the input is everything a client sends. It runs
// option negotiation (handshake.h) over a memory stream against two in-memory exports,
// then parses the rest as transmission-phase requests (protocol.h) and executes the
// ones validate_request accepts against the in-memory export.
//
// Properties checked (a failure traps):
//   - no crash, leak or UB anywhere in negotiation or parsing (ASan/UBSan);
//   - every server option reply is well-formed (magic, length within what was sent);
//   - a request validate_request accepts is in range: the export never refuses it;
//   - a refused WRITE asks to discard exactly its length, bounded by kMaxPayloadBytes.
// The same input is also negotiated in the TLS modes (TLS simulated by MemoryStream):
//   - with kRequire, no export is looked up before TLS started, and a successful
//     negotiation always has TLS;
//   - NBD_REP_ERR_TLS_REQD is never sent after TLS started, nor in kAllow mode.
// Seed corpus: fuzz/corpus/nbd/ (made by fuzz/make_nbd_corpus.py).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "nbd/export.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"

using namespace amirror;
using namespace amirror::nbd;

namespace {

void check(bool condition) {
  if (!condition) __builtin_trap();
}

// Checks every option reply is well-formed; returns the output offsets of the
// NBD_REP_ERR_TLS_REQD replies.
std::vector<size_t> check_option_replies(const std::string& output) {
  std::vector<size_t> tls_required_at;
  auto* bytes = reinterpret_cast<const uint8_t*>(output.data());
  if (output.size() < 18) return tls_required_at;  // greeting always written whole
  check(get_be64(bytes) == kNbdMagic);
  size_t position = 18;
  while (position + 20 <= output.size() && get_be64(bytes + position) == kOptionReplyMagic) {
    uint32_t length = get_be32(bytes + position + 16);
    check(length <= output.size() - position - 20);
    if (get_be32(bytes + position + 12) == kRepErrTlsReqd) tls_required_at.push_back(position);
    position += 20 + length;
  }
  return tls_required_at;
}

// Traps on any lookup made before the stream it watches started TLS.
class TlsGuardedCatalog final : public ExportCatalog {
 public:
  TlsGuardedCatalog(const ExportCatalog& inner, const MemoryStream& stream)
      : inner_(inner), stream_(stream) {}
  std::vector<std::string> names() const override {
    check(stream_.tls_started);
    return inner_.names();
  }
  std::shared_ptr<Export> find(const std::string& name) const override {
    check(stream_.tls_started);
    return inner_.find(name);
  }

 private:
  const ExportCatalog& inner_;
  const MemoryStream& stream_;
};

void check_tls_modes(std::span<const uint8_t> input, const ExportCatalog& catalog) {
  for (TlsMode mode : {TlsMode::kAllow, TlsMode::kRequire}) {
    MemoryStream stream(input);
    stream.simulate_tls = true;
    TlsGuardedCatalog guarded(catalog, stream);
    const ExportCatalog& used = mode == TlsMode::kRequire ? guarded : catalog;
    Result<Negotiated> negotiated = negotiate(stream, used, mode);
    if (negotiated.ok()) check(negotiated->tls == stream.tls_started);
    if (negotiated.ok() && mode == TlsMode::kRequire) check(negotiated->tls);
    for (size_t offset : check_option_replies(stream.output)) {
      check(mode == TlsMode::kRequire);
      check(!stream.tls_started || offset < stream.tls_output_offset);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static StaticCatalog* catalog = [] {
    auto* c = new StaticCatalog();
    c->add("vol", std::make_shared<MemoryExport>(1 << 20));
    c->add("other", std::make_shared<MemoryExport>(3 * 512));
    return c;
  }();
  check_tls_modes({data, size}, *catalog);
  MemoryStream stream({data, size});
  Result<Negotiated> negotiated = negotiate(stream, *catalog);
  check(check_option_replies(stream.output).empty());  // NOTLS never says TLS_REQD
  if (!negotiated.ok()) return 0;
  check(negotiated->target != nullptr);
  check(negotiated->limits.export_size_bytes == negotiated->target->size_bytes());

  std::span<const uint8_t> rest = stream.remaining();
  std::vector<uint8_t> buffer;
  for (int requests = 0; requests < 256 && rest.size() >= kRequestHeaderBytes; ++requests) {
    RequestHeader header = parse_request_header(rest.data());
    rest = rest.subspan(kRequestHeaderBytes);
    Validation validation = validate_request(header, negotiated->limits);
    if (validation.verdict == Verdict::kDisconnect) return 0;
    check(validation.payload_bytes <= kMaxPayloadBytes);
    if (header.type == kCmdWrite) check(validation.payload_bytes == header.length_bytes);
    size_t payload = std::min<size_t>(validation.payload_bytes, rest.size());
    if (validation.verdict == Verdict::kReplyError) {
      check(validation.error != kNbdOk);
      rest = rest.subspan(payload);
      continue;
    }
    if (header.type == kCmdDisc) return 0;
    Export& target = *negotiated->target;
    const bool fua = header.flags & kCmdFlagFua;
    Status status;
    switch (header.type) {
      case kCmdRead:
        buffer.resize(header.length_bytes);
        status = target.read(header.offset_bytes, buffer);
        break;
      case kCmdWrite:
        if (payload < header.length_bytes) return 0;  // client vanished mid-write
        status = target.write(header.offset_bytes, rest.subspan(0, payload), fua);
        rest = rest.subspan(payload);
        break;
      case kCmdWriteZeroes:
      case kCmdTrim:
        status = target.write_zeroes(header.offset_bytes, header.length_bytes, fua);
        break;
      case kCmdFlush:
        status = target.flush();
        break;
      case kCmdBlockStatus: {
        check(negotiated->limits.base_allocation);
        auto extents = target.allocated_extents(header.offset_bytes, header.length_bytes);
        status = extents.status();
        break;
      }
      default:
        check(false);  // validate_request let an unknown command through
    }
    check(status.ok());  // accepted requests are always in range
  }
  return 0;
}
