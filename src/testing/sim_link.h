// SPDX-License-Identifier: Apache-2.0
// SimLink: a simulated peer connection for the deterministic simulation (tests/sim/).
// Each end is a FrameSink whose frames queue up at the other end, as encoded bytes, so
// faults act on what would be on the wire: a flipped bit (caught by the frame checksum,
// as TLS's MAC or the frame checksum would catch it), a duplicated or reordered frame
// (caught by the protocol's sequencing), or a cut (both ends see the connection die).
// Nothing moves until the simulation takes a frame with receive(): time and ordering
// are the simulation's choice, so a seed replays exactly.
// Thread-safety: none; the simulation is single-threaded.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "base/status.h"
#include "repl/receiver_session.h"

namespace amirror::testing {

class SimLink {
 public:
  enum Side { kSource = 0, kTarget = 1 };

  SimLink() : ends_{End(*this, kTarget), End(*this, kSource)} {}
  SimLink(const SimLink&) = delete;
  SimLink& operator=(const SimLink&) = delete;

  // What `side` sends through (its frames arrive at the other side).
  repl::FrameSink& sink(Side side) { return ends_[side]; }
  // The next frame that arrived at `side`, checked as a socket checks it (header and
  // checksum); nullopt when none is waiting. A cut link delivers nothing.
  std::optional<Result<repl::Frame>> receive(Side side);
  size_t waiting(Side side) const { return cut_ ? 0 : inbox_[side].size(); }
  uint64_t bytes_sent(Side side) const { return bytes_sent_[side]; }

  void cut() { cut_ = true; }
  bool is_cut() const { return cut_; }
  // Faults on the frames waiting at `side`; `random` picks which frame and bit. Each
  // returns false when there is no frame to act on.
  bool flip_bit(Side side, uint64_t random);
  bool duplicate(Side side, uint64_t random);
  bool swap_adjacent(Side side, uint64_t random);

 private:
  class End : public repl::FrameSink {
   public:
    End(SimLink& link, Side to) : link_(link), to_(to) {}
    Status send_encoded(std::span<const uint8_t> frame) override;

   private:
    SimLink& link_;
    Side to_;
  };

  End ends_[2];  // ends_[side] sends toward the other side
  std::deque<std::vector<uint8_t>> inbox_[2];
  uint64_t bytes_sent_[2] = {0, 0};
  bool cut_ = false;
};

}  // namespace amirror::testing
