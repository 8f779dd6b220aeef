// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the peer protocol: everything a (possibly hostile) peer can send.
// The input is split into messages ([type:u8][length:u16][payload]); each is run
// through the frame header check and the message decoders, and becomes a frame fed to
// the node's own ReceiverSession (repl/receiver_session.h; past a HELLO from the
// configured peer "src"), which drives a real Replica (in /dev/shm) through
// begin/stage/end/apply and verify/repair. A session that refuses a frame is
// replaced by a new one, as a new connection would be. Checksums are skipped on
// purpose: the fuzzer could not forge them, and what must hold is that no
// *well-checksummed* but hostile frame can hurt.
//
// Properties checked (a failure traps):
//   - no crash, leak or UB in decoding, the session or the replica (ASan/UBSan);
//   - a replica reopened after any sequence (and after the simulated crashes within it)
//     opens, is readable and reports the cycle it had.
// Seed corpus: fuzz/corpus/peer/ (a full delta, an incremental one, a crash mid-stage, a
// full delta then a verify with a repair).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "repl/receiver_session.h"
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

// Frames the session sends back go nowhere.
class NullSink : public FrameSink {
 public:
  Status send_encoded(std::span<const uint8_t>) override { return Status(); }
};

// One peer ("src") that may send one volume ("vol"), held in one replica.
class OneReplica : public ReplicaAccess {
 public:
  explicit OneReplica(std::shared_ptr<Replica>& replica) : replica_(replica) {}
  Status admit_peer(const std::string& node) override {
    return node == "src" ? Status() : invalid_argument("not a peer");
  }
  Result<std::shared_ptr<Replica>> acquire(const std::string&, const OpenReplica& open) override {
    if (open.volume != "vol" || open.size_bytes != kSize || open.chunk_size_bytes != kChunk) {
      return invalid_argument("no such replica");
    }
    return replica_;
  }
  // mirror verify: the same replica, never created (VERIFY_BEGIN, VERIFY_WINDOW, REPAIR_*).
  Result<std::shared_ptr<Replica>> acquire_existing(const std::string& peer, const OpenReplica& open) override {
    return acquire(peer, open);
  }
  void release(const std::string&, const std::string&) override {}

 private:
  std::shared_ptr<Replica>& replica_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = "/dev/shm/amirror-peer-fuzz-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto created = Replica::open_or_create(posix_file_system(), dir, "src", "vol", kSize, kChunk);
  check(created.ok());
  std::shared_ptr<Replica> replica = std::move(created).value();
  uint64_t last_cycle = 0;
  NullSink sink;
  OneReplica access(replica);
  // A new connection from the configured peer, past its HELLO.
  auto connect = [&] {
    auto session = std::make_unique<ReceiverSession>("dst", access, sink);
    check(session->on_frame(Frame{FrameType::kHello, encode(Hello{kProtocolVersion, "src"})}).ok());
    return session;
  };
  auto session = connect();

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
    switch (type % 4) {
      case 0:
        (void)decode_hello(payload);
        (void)decode_open_replica(payload);
        (void)decode_verify_begin(payload);
        (void)decode_verify_allocated(payload);
        (void)decode_verify_window(payload);
        break;
      case 1:
        (void)decode_replica_state(payload);
        (void)decode_applied(payload);
        (void)decode_error(payload);
        (void)decode_verify_hashes(payload);
        (void)decode_repair_end(payload);
        (void)decode_repair_done(payload);
        break;
      case 2: {
        std::vector<uint8_t> out(std::min<size_t>(payload.size() * 97, kSize));
        uint64_t offset = payload.empty() ? 0 : payload[0] * 1000;
        (void)replica->read(offset, out);
        break;
      }
      case 3: {  // crash and reopen
        session.reset();
        replica.reset();
        auto reopened = Replica::open(posix_file_system(), dir);
        check(reopened.ok());
        replica = std::move(reopened).value();
        session = connect();
        break;
      }
    }
    // The message is also a frame of type `type / 4` (1 HELLO .. 11 KEEPALIVE, 20
    // VERIFY_BEGIN .. 26 REPAIR_DONE, and beyond): verify and repair frames reach the
    // session's VerifyResponder, which reads and repairs the replica.
    Frame frame{static_cast<FrameType>(type / 4), std::vector<uint8_t>(payload.begin(), payload.end())};
    if (!session->on_frame(frame).ok()) session = connect();
    last_cycle = replica->state().applied_cycle;
  }
  session.reset();
  replica.reset();
  auto reopened = Replica::open(posix_file_system(), dir);
  check(reopened.ok());
  check(reopened.value()->state().applied_cycle == last_cycle);
  std::vector<uint8_t> all(kSize);
  check(reopened.value()->read(0, all).ok());
  return 0;
}
