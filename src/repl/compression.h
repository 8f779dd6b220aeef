// SPDX-License-Identifier: Apache-2.0
// zstd on the peer wire (protocol version 3; grammar in docs/formats/wire.md,
// "Compression"). Whole frames in, whole frames out, below the sessions: a session
// encodes frames as always, the PeerSocket compresses data frames on the way out when
// the mirror asks for it and the target's HELLO_ACK says it can decode them, and
// decompresses flagged frames on the way in before any session sees them.
//
// Invariants:
//  - A frame is sent compressed only if that makes it smaller; otherwise it goes as it
//    was encoded, so incompressible data costs nothing on the wire (the flag lives in
//    the header's flags field, which every frame has anyway).
//  - The checksum is the one of the uncompressed frame, checked after decompression:
//    what the receiver stages is checked, not just what travelled.
//  - A compressed payload that does not decompress to exactly its declared size (at
//    most kMaxFramePayloadBytes, checked before allocating) is refused: an error, and
//    the connection closes; nothing of it reaches a session.
// Thread-safety: a FrameCompressor / FrameDecompressor is used by one thread at a time
// (each PeerSocket holds its own).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "repl/wire.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace amirror::repl {

enum class Compression : uint8_t { kOff = 0, kZstd = 1 };
// "zstd" or "off"; the error names the input.
Result<Compression> parse_compression(std::string_view text);
const char* compression_name(Compression compression);

// Level 1: the fastest standard level. On a filesystem image it saves most of what
// level 3 saves at about twice the speed; README.md ("Compression") says why.
constexpr int kZstdLevel = 1;

class FrameCompressor {
 public:
  FrameCompressor();
  ~FrameCompressor();
  FrameCompressor(const FrameCompressor&) = delete;
  FrameCompressor& operator=(const FrameCompressor&) = delete;

  // `frame`: a whole frame (encode_frame, encode_chunk_frame). True when it is a
  // compressible type and its compressed form, written to `out`, is smaller; false
  // when `frame` is to be sent as it is.
  bool compress(std::span<const uint8_t> frame, std::vector<uint8_t>& out);

 private:
  ZSTD_CCtx_s* context_;
  // After a frame that hardly compressed, the next `skip_` are not tried (doubling up
  // to kMaxSkip while data stays incompressible): random data costs almost no CPU.
  static constexpr uint32_t kMaxSkip = 32;
  uint32_t skip_ = 0;
  uint32_t next_skip_ = 1;
};

class FrameDecompressor {
 public:
  FrameDecompressor();
  ~FrameDecompressor();
  FrameDecompressor(const FrameDecompressor&) = delete;
  FrameDecompressor& operator=(const FrameDecompressor&) = delete;

  // A frame as received: its header bytes and the payload_bytes that followed. Returns
  // the frame with its original payload, once the checksum matched it.
  Result<Frame> finish(std::span<const uint8_t, kFrameHeaderBytes> header, std::vector<uint8_t> payload);

 private:
  ZSTD_DCtx_s* context_;
};

}  // namespace amirror::repl
