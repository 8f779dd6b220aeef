// SPDX-License-Identifier: Apache-2.0
// FrameSink: where a sans-I/O peer session's outgoing frames go — a PeerSocket in a
// node (repl::SocketSink, socket.h), a simulated link in tests (testing/sim_link.h).
// Thread-safety: as the implementation's.
#pragma once

#include <cstdint>
#include <span>

#include "base/status.h"
#include "repl/wire.h"

namespace amirror::repl {

class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // A whole frame: header and payload (encode_frame, encode_chunk_frame).
  virtual Status send_encoded(std::span<const uint8_t> frame) = 0;
  Status send(FrameType type, std::span<const uint8_t> payload) { return send_encoded(encode_frame(type, payload)); }
};

}  // namespace amirror::repl
