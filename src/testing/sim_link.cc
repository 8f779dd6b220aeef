// SPDX-License-Identifier: Apache-2.0
#include "testing/sim_link.h"

#include <utility>

namespace amirror::testing {

Status SimLink::End::send_encoded(std::span<const uint8_t> frame) {
  if (link_.cut_) return Status(ErrorCode::kIo, "simulated connection is cut");
  Side from = to_ == kSource ? kTarget : kSource;
  link_.bytes_sent_[from] += frame.size();
  link_.inbox_[to_].emplace_back(frame.begin(), frame.end());
  return Status();
}

std::optional<Result<repl::Frame>> SimLink::receive(Side side) {
  if (cut_ || inbox_[side].empty()) return std::nullopt;
  std::vector<uint8_t> bytes = std::move(inbox_[side].front());
  inbox_[side].pop_front();
  if (bytes.size() < repl::kFrameHeaderBytes) return Result<repl::Frame>(corruption("short frame"));
  std::span<const uint8_t, repl::kFrameHeaderBytes> header(bytes.data(), repl::kFrameHeaderBytes);
  repl::Frame frame;
  auto length = repl::decode_frame_header(header, frame.type);
  if (!length.ok()) return Result<repl::Frame>(length.status());
  if (length.value() != bytes.size() - repl::kFrameHeaderBytes) return Result<repl::Frame>(corruption("frame length mismatch"));
  std::span<const uint8_t> payload(bytes.data() + repl::kFrameHeaderBytes, length.value());
  if (Status verified = repl::verify_frame(header, payload); !verified.ok()) return Result<repl::Frame>(verified);
  frame.payload.assign(payload.begin(), payload.end());
  return Result<repl::Frame>(std::move(frame));
}

bool SimLink::flip_bit(Side side, uint64_t random) {
  if (cut_ || inbox_[side].empty()) return false;
  std::vector<uint8_t>& frame = inbox_[side][random % inbox_[side].size()];
  uint64_t bit = (random / 7) % (frame.size() * 8);
  frame[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  return true;
}

bool SimLink::duplicate(Side side, uint64_t random) {
  if (cut_ || inbox_[side].empty()) return false;
  size_t index = random % inbox_[side].size();
  std::vector<uint8_t> copy = inbox_[side][index];
  inbox_[side].insert(inbox_[side].begin() + static_cast<std::ptrdiff_t>(index), std::move(copy));
  return true;
}

bool SimLink::swap_adjacent(Side side, uint64_t random) {
  if (cut_ || inbox_[side].size() < 2) return false;
  size_t index = random % (inbox_[side].size() - 1);
  std::swap(inbox_[side][index], inbox_[side][index + 1]);
  return true;
}

}  // namespace amirror::testing
