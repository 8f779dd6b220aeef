// SPDX-License-Identifier: Apache-2.0
#include "repl/compression.h"

#include <zstd.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "base/assert.h"
#include "base/coding.h"

namespace amirror::repl {

Result<Compression> parse_compression(std::string_view text) {
  if (text == "zstd") return Compression::kZstd;
  if (text == "off") return Compression::kOff;
  return invalid_argument("compression '" + std::string(text) + "' is not known; use zstd or off");
}

const char* compression_name(Compression compression) {
  return compression == Compression::kZstd ? "zstd" : "off";
}

FrameCompressor::FrameCompressor() : context_(ZSTD_createCCtx()) { AMIRROR_ASSERT(context_ != nullptr); }

FrameCompressor::~FrameCompressor() { ZSTD_freeCCtx(context_); }

bool FrameCompressor::compress(std::span<const uint8_t> frame, std::vector<uint8_t>& out) {
  AMIRROR_ASSERT(frame.size() >= kFrameHeaderBytes);
  FrameType type = static_cast<FrameType>(frame[4] | (frame[5] << 8));
  std::span<const uint8_t> payload = frame.subspan(kFrameHeaderBytes);
  // Below this a zstd frame's own header (about a dozen bytes) eats the gain.
  constexpr size_t kMinPayloadBytes = 256;
  if (!is_compressible_frame_type(type) || payload.size() < kMinPayloadBytes) return false;
  if (skip_ > 0) {
    skip_ -= 1;
    return false;
  }
  out.resize(frame.size());
  // Room for one byte less than the payload: zstd gives up as soon as the result would
  // not be smaller, which is also its fast path on incompressible data.
  size_t written = ZSTD_compressCCtx(context_, out.data() + kFrameHeaderBytes, payload.size() - 1, payload.data(),
                                     payload.size(), kZstdLevel);
  bool smaller = !ZSTD_isError(written);
  // Saved less than 1/32: not worth the CPU for the frames that follow either.
  if (!smaller || written > payload.size() - payload.size() / 32) {
    skip_ = next_skip_;
    next_skip_ = std::min(next_skip_ * 2, kMaxSkip);
  } else {
    next_skip_ = 1;
  }
  if (!smaller) return false;
  out.resize(kFrameHeaderBytes + written);
  // The header of the original with the flag and the new length; its checksum stays
  // the one over the uncompressed frame.
  std::memcpy(out.data(), frame.data(), kFrameHeaderBytes);
  out[6] = static_cast<uint8_t>(kFrameFlagZstd);
  out[7] = 0;
  put_u32(out.data() + 8, static_cast<uint32_t>(written));
  return true;
}

FrameDecompressor::FrameDecompressor() : context_(ZSTD_createDCtx()) { AMIRROR_ASSERT(context_ != nullptr); }

FrameDecompressor::~FrameDecompressor() { ZSTD_freeDCtx(context_); }

Result<Frame> FrameDecompressor::finish(std::span<const uint8_t, kFrameHeaderBytes> header,
                                        std::vector<uint8_t> payload) {
  AMIRROR_ASSIGN_OR_RETURN(FrameHeader parsed, parse_frame_header(header));
  AMIRROR_ASSERT(parsed.payload_bytes == payload.size());
  Frame frame;
  frame.type = parsed.type;
  if (!parsed.compressed()) {
    AMIRROR_RETURN_IF_ERROR(verify_frame(header, payload));
    frame.payload = std::move(payload);
    return frame;
  }
  const std::string what = std::string("peer sent a compressed ") + frame_type_name(parsed.type) + " frame that ";
  unsigned long long size = ZSTD_getFrameContentSize(payload.data(), payload.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
    return corruption(what + "is not a zstd frame with its size (corrupted in transit?)");
  }
  if (size > kMaxFramePayloadBytes) {
    return corruption(what + "would decompress to " + std::to_string(size) + " bytes; the limit is " +
                      std::to_string(kMaxFramePayloadBytes));
  }
  frame.payload.resize(size);
  size_t written = ZSTD_decompressDCtx(context_, frame.payload.data(), frame.payload.size(), payload.data(),
                                       payload.size());
  if (ZSTD_isError(written)) return corruption(what + "does not decompress: " + ZSTD_getErrorName(written));
  if (written != size) return corruption(what + "decompresses to fewer bytes than it declares");
  // The checksum was taken over the frame as it would have gone uncompressed.
  std::array<uint8_t, kFrameHeaderBytes> original;
  std::copy(header.begin(), header.end(), original.begin());
  original[6] = original[7] = 0;
  put_u32(original.data() + 8, static_cast<uint32_t>(size));
  AMIRROR_RETURN_IF_ERROR(verify_frame(original, frame.payload));
  return frame;
}

}  // namespace amirror::repl
