// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the peer protocol: everything a (possibly hostile) peer can send.
// The input is split into messages ([type:u8][length:u16][payload]); each is run
// through the frame header check and the message decoders, and the decoded messages
// drive a real Replica (in /dev/shm) through begin/stage/end/apply, as the receiver
// does. Checksums are skipped on purpose: the fuzzer could not forge them, and what
// must hold is that no *well-checksummed* but hostile frame can hurt.
//
// Properties checked (a failure traps):
//   - no crash, leak or UB in decoding or in the replica (ASan/UBSan);
//   - a replica reopened after any sequence (and after the simulated crashes within it)
//     opens, is readable and reports the cycle it had.
// Seed corpus: fuzz/corpus/peer/ (written by the target itself with -runs=0 when empty).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "repl/replica.h"
#include "repl/wire.h"

using namespace amirror;
using namespace amirror::repl;

namespace {

void check(bool condition) {
  if (!condition) __builtin_trap();
}

constexpr uint64_t kSize = 16 * 4096 + 512;
constexpr uint64_t kChunk = 4096;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = "/dev/shm/amirror-peer-fuzz-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto created = Replica::open_or_create(posix_file_system(), dir, "src", "vol", kSize, kChunk);
  check(created.ok());
  std::unique_ptr<Replica> replica = std::move(created).value();
  uint64_t last_cycle = 0;

  size_t position = 0;
  while (size - position >= 3) {
    uint8_t type = data[position];
    size_t length = data[position + 1] | (static_cast<size_t>(data[position + 2]) << 8);
    position += 3;
    length = std::min(length, size - position);
    std::span<const uint8_t> payload(data + position, length);
    position += length;

    if (payload.size() >= kFrameHeaderBytes) {
      FrameType frame_type;
      auto header = decode_frame_header(std::span<const uint8_t, kFrameHeaderBytes>(payload.data(), kFrameHeaderBytes), frame_type);
      if (header.ok()) check(header.value() <= kMaxFramePayloadBytes);
    }
    switch (type % 8) {
      case 0: (void)decode_hello(payload); (void)decode_open_replica(payload); break;
      case 1: (void)decode_replica_state(payload); (void)decode_applied(payload); (void)decode_error(payload); break;
      case 2: {
        auto begin = decode_begin_delta(payload);
        if (begin.ok()) (void)replica->begin_delta(begin.value());
        break;
      }
      case 3:
      case 4: {
        auto record = decode_chunk(payload);
        if (record.ok()) (void)replica->stage(record.value());
        break;
      }
      case 5: {
        auto end = decode_end_delta(payload);
        if (end.ok() && replica->end_delta(end->record_count).ok()) check(replica->apply([] {}).ok());
        break;
      }
      case 6: {
        std::vector<uint8_t> out(std::min<size_t>(payload.size() * 97, kSize));
        uint64_t offset = payload.empty() ? 0 : payload[0] * 1000;
        (void)replica->read(offset, out);
        break;
      }
      case 7: {  // crash and reopen
        replica.reset();
        auto reopened = Replica::open(posix_file_system(), dir);
        check(reopened.ok());
        replica = std::move(reopened).value();
        break;
      }
    }
    last_cycle = replica->state().applied_cycle;
  }
  replica.reset();
  auto reopened = Replica::open(posix_file_system(), dir);
  check(reopened.ok());
  check(reopened.value()->state().applied_cycle == last_cycle);
  std::vector<uint8_t> all(kSize);
  check(reopened.value()->read(0, all).ok());
  return 0;
}
