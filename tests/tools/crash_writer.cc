// SPDX-License-Identifier: Apache-2.0
// crash_writer: the child process of tests/store/crash_test.cc. It opens an existing
// volume with the real file system and writes, trims, flushes, freezes and merges
// until it is killed with SIGKILL, logging to stdout (one line per event, written
// with write(2) so a line is out of the process before the next step starts):
//
//   R                     volume open, starting
//   W <seq> <off> <len>   about to write stamped sectors (sector_stamp.h, sequence seq)
//   T <seq> <off> <len>   about to trim / write zeroes (reads as zero)
//   F <seq>               flush (or FUA write, or freeze) returned: every operation
//                         up to and including <seq> is durable
//   Z <cycle> <seq>       freeze returned cycle <cycle>; the point holds ops <= seq
//   M <base_cycle>        merge_oldest returned
//   E <message>           an operation failed (the test fails)
//
// Usage: crash_writer DIR FIRST_SEQUENCE SEED
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "store/volume.h"
#include "testing/sector_stamp.h"
#include "testing/test_support.h"

using namespace amirror;
using namespace amirror::testing;

namespace {

void emit(const std::string& line) {
  std::string out = line + "\n";
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::write(1, out.data() + done, out.size() - done);
    if (n <= 0) std::_Exit(4);
    done += static_cast<size_t>(n);
  }
}

[[noreturn]] void die(const std::string& what, const Status& status) {
  emit("E " + what + ": " + status.to_string());
  std::_Exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: crash_writer DIR FIRST_SEQUENCE SEED\n");
    return 2;
  }
  std::string dir = argv[1];
  uint64_t sequence = std::strtoull(argv[2], nullptr, 10);
  Random random(std::strtoull(argv[3], nullptr, 10));
  auto opened = Volume::open(posix_file_system(), dir);
  if (!opened.ok()) die("open", opened.status());
  Volume& volume = *opened.value();
  const uint64_t sectors = volume.size_bytes() / kStampSectorBytes;
  emit("R");
  uint64_t last_sequence = sequence - 1;
  uint64_t writes_until_flush = random.uniform(1, 8);
  std::vector<uint8_t> buffer;
  for (;;) {
    uint64_t dice = random.uniform(0, 99);
    if (dice < 3) {
      auto cycle = volume.freeze();
      if (!cycle.ok()) die("freeze", cycle.status());
      emit("F " + std::to_string(last_sequence));
      emit("Z " + std::to_string(cycle.value()) + " " + std::to_string(last_sequence));
      continue;
    }
    if (dice < 6) {
      if (volume.cycle() > volume.base_cycle()) {
        Status status = volume.merge_oldest();
        if (!status.ok()) die("merge_oldest", status);
        emit("M " + std::to_string(volume.base_cycle()));
      }
      continue;
    }
    // Mostly small writes, sometimes whole chunks or long runs.
    uint64_t length_sectors = random.percent(80) ? random.uniform(1, 16) : random.uniform(17, 256);
    length_sectors = std::min(length_sectors, sectors);
    uint64_t first = random.uniform(0, sectors - length_sectors);
    uint64_t offset = first * kStampSectorBytes;
    uint64_t length = length_sectors * kStampSectorBytes;
    uint64_t seq = sequence++;
    bool trim = dice < 12;
    bool fua = !trim && random.percent(5);
    Status status;
    if (trim) {
      emit("T " + std::to_string(seq) + " " + std::to_string(offset) + " " + std::to_string(length));
      status = random.percent(50) ? volume.trim(offset, length) : volume.write_zeroes(offset, length);
    } else {
      buffer.resize(length);
      stamp_range(buffer, seq, first, /*tag=*/0);
      emit("W " + std::to_string(seq) + " " + std::to_string(offset) + " " + std::to_string(length));
      status = volume.write(offset, buffer, fua);
    }
    if (!status.ok()) die(trim ? "trim" : "write", status);
    last_sequence = seq;
    if (fua) emit("F " + std::to_string(seq));
    if (--writes_until_flush == 0) {
      writes_until_flush = random.uniform(1, 8);
      Status flushed = volume.flush();
      if (!flushed.ok()) die("flush", flushed);
      emit("F " + std::to_string(last_sequence));
    }
  }
}
