// SPDX-License-Identifier: Apache-2.0
// kill -9 test: a child process (tests/tools/crash_writer.cc) writes stamped sectors,
// trims, flushes, freezes and merges on a real volume; the parent kills it with
// SIGKILL at a random moment, reopens the volume and checks every sector, then starts
// the next child on the same volume. Default 60 kills (AMIRROR_LONG=1: 500;
// AMIRROR_KILLS=n overrides). The seed is printed; AMIRROR_SEED=n reuses one (kill
// timing is not reproducible, the children's choices are).
//
// Per sector, after a kill, with "ops" = this child's writes/trims covering the sector
// and "floor" = the newest of them acknowledged durable (seq <= last F), or the
// sector's state when the child started if none was:
//   the sector holds the floor's content, or that of a later op of this child;
//   never an older one, never garbage, zero only if the floor or a later op is a trim.
// Every existing freeze point must equal the image at its freeze exactly.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <optional>
#include <sstream>

#include "store/volume.h"
#include "testing/sector_stamp.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr uint64_t kVolumeSizeBytes = 4 * kMiB + 3 * 512;  // a short last chunk
constexpr uint64_t kChunkSizeBytes = 16 * kKiB;
constexpr uint64_t kSectors = kVolumeSizeBytes / kStampSectorBytes;

struct LoggedOp {
  uint64_t sequence;
  bool trim;
  uint64_t first_sector;
  uint64_t sector_count;
};

// What one child reported before it died.
struct ChildLog {
  std::vector<LoggedOp> ops;
  uint64_t durable_sequence = 0;  // highest F
  std::map<uint64_t, uint64_t> freezes;  // cycle -> last sequence included
  bool ready = false;
  bool reached_min_ops = false;  // it logged the operations asked for before the kill
  std::string error;
  std::string raw_tail;
};

// Sector state: 0 = zeros, otherwise the sequence number whose stamp it holds.
using Image = std::vector<uint64_t>;

class CrashTest : public ::testing::Test {
 protected:
  // Runs one child until it has logged `min_ops` operations and then lived `lifetime_ms`
  // more, then SIGKILLs it. Counting operations first, not time, keeps the kills as
  // deep into the child's work on a slow machine as on a fast one.
  ChildLog run_child(const std::string& dir, uint64_t first_sequence, uint64_t seed, uint64_t min_ops,
                     uint64_t lifetime_ms) {
    ChildLog log;
    int pipe_fds[2];
    EXPECT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
    std::string tool = std::string(AMIRROR_TOOLS_DIR) + "/crash_writer";
    std::string first = std::to_string(first_sequence), seed_text = std::to_string(seed);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(pipe_fds[1], 1);
      ::execl(tool.c_str(), tool.c_str(), dir.c_str(), first.c_str(), seed_text.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(pipe_fds[1]);
    std::string pending;
    // A bound on progress, not a schedule: a child that neither opens the volume nor
    // logs its first `min_ops` operations within 10 minutes is killed (and the test fails).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    bool armed = false;
    bool killed = false;
    auto parse = [&](const std::string& line) {
      std::istringstream in(line);
      char kind = 0;
      in >> kind;
      if (kind == 'R') {
        log.ready = true;
      } else if (kind == 'W' || kind == 'T') {
        uint64_t seq, offset, length;
        in >> seq >> offset >> length;
        log.ops.push_back({seq, kind == 'T', offset / kStampSectorBytes, length / kStampSectorBytes});
      } else if (kind == 'F') {
        uint64_t seq;
        in >> seq;
        log.durable_sequence = std::max(log.durable_sequence, seq);
      } else if (kind == 'Z') {
        uint64_t cycle, seq;
        in >> cycle >> seq;
        log.freezes[cycle] = seq;
      } else if (kind == 'E') {
        log.error = line;
      }
    };
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      int timeout_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
      pollfd fd{pipe_fds[0], POLLIN, 0};
      int ready = killed ? 1 : ::poll(&fd, 1, timeout_ms);
      if (!killed && (ready == 0 || std::chrono::steady_clock::now() >= deadline)) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
      if (ready == 0 && !killed) continue;
      char buffer[65536];
      ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EOF: the child is gone
      pending.append(buffer, static_cast<size_t>(n));
      size_t newline;
      while ((newline = pending.find('\n')) != std::string::npos) {
        parse(pending.substr(0, newline));
        pending.erase(0, newline + 1);
      }
      if (!armed && log.ready && log.ops.size() >= min_ops) {
        armed = true;
        log.reached_min_ops = true;
        deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(lifetime_ms);
      }
    }
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) && log.error.empty()) {
      log.error = "child exited on its own with status " + std::to_string(status);
    }
    log.raw_tail = pending;
    return log;
  }

  static Image read_image(Volume& volume, std::optional<uint64_t> cycle, std::string* error) {
    std::vector<uint8_t> bytes(kVolumeSizeBytes);
    Status status = cycle ? volume.read_frozen(*cycle, 0, bytes) : volume.read(0, bytes);
    if (!status.ok()) {
      *error = "read failed: " + status.to_string();
      return {};
    }
    Image image(kSectors);
    for (uint64_t s = 0; s < kSectors; s++) {
      StampInfo info = parse_sector(std::span(bytes).subspan(s * kStampSectorBytes, kStampSectorBytes), s);
      if (info.kind == StampKind::kGarbage) {
        *error = "sector " + std::to_string(s) + " holds garbage (not zero, not a stamp written for it)";
        return {};
      }
      image[s] = info.kind == StampKind::kZero ? 0 : info.sequence;
    }
    return image;
  }

  // The image after applying `ops` with sequence <= up_to onto `start`.
  static Image apply(const Image& start, const std::vector<LoggedOp>& ops, uint64_t up_to) {
    Image image = start;
    for (const LoggedOp& op : ops) {
      if (op.sequence > up_to) break;
      for (uint64_t s = op.first_sector; s < op.first_sector + op.sector_count; s++) {
        image[s] = op.trim ? 0 : op.sequence;
      }
    }
    return image;
  }

  // Checks the current image against the rule in the file comment.
  static std::string check_current(const Image& start, const ChildLog& log, const Image& actual) {
    Image floor = apply(start, log.ops, log.durable_sequence);
    // Per sector, the values a later (not yet durable) op may have left.
    std::vector<std::vector<uint64_t>> later(kSectors);
    for (const LoggedOp& op : log.ops) {
      if (op.sequence <= log.durable_sequence) continue;
      for (uint64_t s = op.first_sector; s < op.first_sector + op.sector_count; s++) {
        later[s].push_back(op.trim ? 0 : op.sequence);
      }
    }
    for (uint64_t s = 0; s < kSectors; s++) {
      if (actual[s] == floor[s]) continue;
      if (std::find(later[s].begin(), later[s].end(), actual[s]) != later[s].end()) continue;
      return "sector " + std::to_string(s) + " holds " +
             (actual[s] == 0 ? std::string("zeros") : "write #" + std::to_string(actual[s])) +
             ", expected " + (floor[s] == 0 ? std::string("zeros") : "write #" + std::to_string(floor[s])) +
             " (durable up to #" + std::to_string(log.durable_sequence) + ") or a later write";
    }
    return "";
  }
};

TEST_F(CrashTest, KillNineNeverLosesFlushedWrites) {
  uint64_t seed = 0;
  if (!env_seed(&seed)) {
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) % 1000000007;
  }
  const uint64_t kills = env_uint("AMIRROR_KILLS", long_mode() ? 500 : 60);
  std::printf("crash test seed %llu, %llu kills\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(kills));
  SCOPED_TRACE("crash test seed " + std::to_string(seed) + " (replay: AMIRROR_SEED=" +
               std::to_string(seed) + ")");
  Random random(seed);
  ScratchDir scratch("crash");
  {
    VolumeOptions options;
    options.size_bytes = kVolumeSizeBytes;
    options.chunk_size_bytes = kChunkSizeBytes;
    auto volume = Volume::create(posix_file_system(), scratch.path(), options);
    ASSERT_TRUE(volume.ok()) << volume.status().to_string();
  }
  Image current(kSectors, 0);                   // the image when the next child starts
  std::map<uint64_t, Image> frozen{{0, current}};  // freeze points that may still exist
  uint64_t next_sequence = 1;
  uint64_t total_ops = 0, total_durable_checks = 0;
  for (uint64_t kill = 0; kill < kills; kill++) {
    SCOPED_TRACE("kill #" + std::to_string(kill));
    uint64_t min_ops = random.uniform(0, 40);
    uint64_t lifetime_ms = random.uniform(0, 100);
    ChildLog log = run_child(scratch.path(), next_sequence, random.next() % 1000000007, min_ops, lifetime_ms);
    ASSERT_TRUE(log.error.empty()) << log.error;
    ASSERT_TRUE(log.ready) << "child never opened the volume";
    ASSERT_TRUE(log.reached_min_ops) << "child logged only " << log.ops.size() << " of " << min_ops
                                     << " operations in 10 minutes";
    total_ops += log.ops.size();
    total_durable_checks += log.durable_sequence >= next_sequence;
    if (!log.ops.empty()) next_sequence = log.ops.back().sequence + 1;

    auto reopened = Volume::open(posix_file_system(), scratch.path());
    ASSERT_TRUE(reopened.ok()) << "open after kill -9 failed: " << reopened.status().to_string();
    Volume& volume = *reopened.value();
    std::string error;
    Image actual = read_image(volume, std::nullopt, &error);
    ASSERT_EQ(error, "") << "current image";
    std::string bad = check_current(current, log, actual);
    ASSERT_EQ(bad, "") << "after kill #" << kill << " (" << min_ops << " ops + " << lifetime_ms << " ms, "
                       << log.ops.size() << " ops)";
    // Freeze points: announced ones hold the ops up to their sequence; a freeze cut
    // short by the kill that still happened holds every op of the child (it was idle).
    for (const auto& [cycle, up_to] : log.freezes) frozen[cycle] = apply(current, log.ops, up_to);
    for (uint64_t cycle = volume.base_cycle(); cycle <= volume.cycle(); cycle++) {
      if (!frozen.count(cycle)) frozen[cycle] = apply(current, log.ops, UINT64_MAX);
      Image point = read_image(volume, cycle, &error);
      ASSERT_EQ(error, "") << "freeze point " << cycle;
      for (uint64_t s = 0; s < kSectors; s++) {
        ASSERT_EQ(point[s], frozen[cycle][s]) << "freeze point " << cycle << " sector " << s
                                              << " (base_cycle " << volume.base_cycle() << ")";
      }
    }
    std::erase_if(frozen, [&](const auto& entry) { return entry.first < volume.base_cycle(); });
    current = actual;
  }
  std::printf("crash test: %llu kills, %llu logged operations, %llu children with durable ops\n",
              static_cast<unsigned long long>(kills), static_cast<unsigned long long>(total_ops),
              static_cast<unsigned long long>(total_durable_checks));
  EXPECT_GT(total_durable_checks, kills / 4) << "children should usually reach a flush";
}

}  // namespace
}  // namespace amirror::testing
