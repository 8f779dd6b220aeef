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

void check_option_replies(const std::string& output) {
  auto* bytes = reinterpret_cast<const uint8_t*>(output.data());
  if (output.size() < 18) return;  // greeting only partly written cannot happen in memory
  check(get_be64(bytes) == kNbdMagic);
  size_t position = 18;
  while (position + 20 <= output.size() && get_be64(bytes + position) == kOptionReplyMagic) {
    uint32_t length = get_be32(bytes + position + 16);
    check(length <= output.size() - position - 20);
    position += 20 + length;
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
  MemoryStream stream({data, size});
  Result<Negotiated> negotiated = negotiate(stream, *catalog);
  check_option_replies(stream.output);
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
