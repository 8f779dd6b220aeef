// SPDX-License-Identifier: Apache-2.0
// seq_writer: the NBD writer and image scanner of tests/e2e/test-mirror-crash-matrix.sh.
// It speaks just enough NBD (fixed newstyle, OPT_GO, simple replies) over a Unix socket
// to need no libnbd. Every 4 KiB block it writes is stamped (testing/sector_stamp.h)
// with the write's sequence number, so a later read tells which write each sector holds.
//
//   seq_writer fill SOCKET EXPORT LOG
//       Writes every block of the export once, block b with sequence b + 1, then flushes.
//       Logs "I <seq> <block> 1" for each and, after the flush, "A <seq>" for each.
//   seq_writer write SOCKET EXPORT FIRST_SEQ SEED RATE LOG
//       One writer at queue depth 1 until the connection dies or SIGTERM: random
//       writes of 1..64 blocks, each made durable before the next one starts (FUA, or
//       write then flush); now and then a burst of 8..24 writes of 64 blocks at full
//       speed (so some cycles are big and take a while to copy and apply). Before sending: "I <seq> <first_block> <blocks>"; once
//       durable: "A <seq>". Then "X <why>" when the server went away (exit 0), "S" on
//       SIGTERM (exit 0, nothing in flight), "E <why>" on an NBD error (exit 1).
//       RATE caps the writes per second. Log lines go out with one write(2) each.
//   seq_writer scan SOURCE OUT
//       Reads a whole image (SOURCE = a file, or nbd:SOCKET:EXPORT) and writes OUT: one
//       little-endian int64 per 512-byte sector: its stamp's sequence number, 0 if all
//       zero, -1 if it is not a valid stamp for that sector (torn, misplaced, foreign).
//       Prints "<newest sequence> <sectors without a valid stamp>".
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "nbd/protocol.h"
#include "testing/sector_stamp.h"

using namespace amirror::nbd;
using namespace amirror::testing;

namespace {

constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kSectorsPerBlock = kBlockBytes / kStampSectorBytes;
constexpr uint64_t kTag = 0x58495254414d;  // "MATRIX"

volatile sig_atomic_t g_stop = 0;
int g_log_fd = -1;

void emit(const std::string& line) {
  std::string out = line + "\n";
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::write(g_log_fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) std::_Exit(4);
    done += static_cast<size_t>(n);
  }
}

[[noreturn]] void die(const std::string& message) {
  if (g_log_fd >= 0) emit("E " + message);
  std::fprintf(stderr, "seq_writer: %s\n", message.c_str());
  std::exit(1);
}

// The server went away (killed): not an error for the writer.
[[noreturn]] void gone(const std::string& why) {
  emit("X " + why);
  std::exit(0);
}

class Client {
 public:
  Client(const std::string& socket_path, const std::string& export_name) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) die("socket(): " + std::string(std::strerror(errno)));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path.c_str());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      die("connect to " + socket_path + ": " + std::strerror(errno));
    }
    // A server that hangs fails the test instead of hanging it.
    timeval timeout{60, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    negotiate(export_name);
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  uint64_t size_bytes() const { return size_bytes_; }
  bool can_fua() const { return (flags_ & kTransSendFua) != 0; }

  // Each returns false if the connection is gone (the caller decides what that means).
  bool write(uint64_t offset, const std::vector<uint8_t>& data, bool fua, uint32_t* error) {
    if (!request(kCmdWrite, fua ? kCmdFlagFua : 0, offset, static_cast<uint32_t>(data.size()))) return false;
    if (!send_all(data.data(), data.size())) return false;
    return reply(0, nullptr, error);
  }
  bool flush(uint32_t* error) { return request(kCmdFlush, 0, 0, 0) && reply(0, nullptr, error); }
  bool read(uint64_t offset, uint32_t length, uint8_t* out, uint32_t* error) {
    return request(kCmdRead, 0, offset, length) && reply(length, out, error);
  }
  void disconnect() { (void)request(kCmdDisc, 0, 0, 0); }

 private:
  bool send_all(const void* data, size_t length) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    while (length > 0) {
      ssize_t n = ::send(fd_, bytes, length, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) die("server did not take data within 60 s");
      if (n <= 0) return false;
      bytes += n;
      length -= static_cast<size_t>(n);
    }
    return true;
  }
  bool recv_all(void* data, size_t length) {
    auto* bytes = static_cast<uint8_t*>(data);
    while (length > 0) {
      ssize_t n = ::recv(fd_, bytes, length, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) die("server did not answer within 60 s");
      if (n <= 0) return false;
      bytes += n;
      length -= static_cast<size_t>(n);
    }
    return true;
  }
  void negotiate(const std::string& name) {
    uint8_t greeting[18];
    if (!recv_all(greeting, sizeof greeting)) die("connection closed during the greeting");
    if (get_be64(greeting) != kNbdMagic || get_be64(greeting + 8) != kOptionMagic) die("bad NBD greeting");
    uint8_t client_flags[4];
    put_be32(client_flags, kClientFlagFixedNewstyle | kClientFlagNoZeroes);
    if (!send_all(client_flags, 4)) die("connection closed during the handshake");
    std::vector<uint8_t> option(16 + 4 + name.size() + 2);
    put_be64(option.data(), kOptionMagic);
    put_be32(option.data() + 8, kOptGo);
    put_be32(option.data() + 12, static_cast<uint32_t>(option.size() - 16));
    put_be32(option.data() + 16, static_cast<uint32_t>(name.size()));
    std::memcpy(option.data() + 20, name.data(), name.size());
    put_be16(option.data() + 20 + name.size(), 0);
    if (!send_all(option.data(), option.size())) die("connection closed during OPT_GO");
    for (;;) {
      uint8_t header[20];
      if (!recv_all(header, sizeof header)) die("connection closed during OPT_GO");
      if (get_be64(header) != kOptionReplyMagic || get_be32(header + 8) != kOptGo) die("bad option reply");
      uint32_t type = get_be32(header + 12);
      uint32_t length = get_be32(header + 16);
      if (length > 1024 * 1024) die("absurd option reply length");
      std::vector<uint8_t> data(length);
      if (length > 0 && !recv_all(data.data(), length)) die("connection closed during OPT_GO");
      if (type == kRepInfo) {
        if (length >= 12 && get_be16(data.data()) == kInfoExport) {
          size_bytes_ = get_be64(data.data() + 2);
          flags_ = get_be16(data.data() + 10);
        }
        continue;
      }
      if (type != kRepAck) die("export '" + name + "' refused (reply type " + std::to_string(type) + ")");
      break;
    }
    if (size_bytes_ == 0) die("export '" + name + "' has no size");
  }
  bool request(uint16_t type, uint16_t flags, uint64_t offset, uint32_t length) {
    RequestHeader header{kRequestMagic, flags, type, ++cookie_, offset, length};
    uint8_t raw[kRequestHeaderBytes];
    encode_request_header(header, raw);
    return send_all(raw, sizeof raw);
  }
  bool reply(uint32_t read_length, uint8_t* out, uint32_t* error) {
    uint8_t header[kSimpleReplyHeaderBytes];
    if (!recv_all(header, sizeof header)) return false;
    if (get_be32(header) != kSimpleReplyMagic) die("bad reply magic");
    if (get_be64(header + 8) != cookie_) die("reply cookie mismatch");
    *error = get_be32(header + 4);
    if (*error == 0 && read_length > 0) return recv_all(out, read_length);
    return true;
  }

  int fd_ = -1;
  uint64_t cookie_ = 0;
  uint64_t size_bytes_ = 0;
  uint16_t flags_ = 0;
};

int open_log(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) die("open " + path + ": " + std::strerror(errno));
  return fd;
}

void stamp_blocks(std::vector<uint8_t>& buffer, uint64_t sequence, uint64_t first_block, uint64_t blocks) {
  buffer.resize(blocks * kBlockBytes);
  stamp_range(buffer, sequence, first_block * kSectorsPerBlock, kTag);
}

int fill(const std::string& socket_path, const std::string& export_name, const std::string& log_path) {
  g_log_fd = open_log(log_path);
  Client client(socket_path, export_name);
  const uint64_t blocks = client.size_bytes() / kBlockBytes;
  constexpr uint64_t kBatch = 64;
  std::vector<uint8_t> buffer;
  std::vector<uint8_t> piece(kBlockBytes);
  uint32_t error = 0;
  for (uint64_t first = 0; first < blocks; first += kBatch) {
    uint64_t count = std::min(kBatch, blocks - first);
    buffer.resize(count * kBlockBytes);
    std::string lines;
    for (uint64_t i = 0; i < count; i++) {
      uint64_t block = first + i;
      stamp_range(std::span(buffer).subspan(i * kBlockBytes, kBlockBytes), block + 1, block * kSectorsPerBlock, kTag);
      lines += "I " + std::to_string(block + 1) + " " + std::to_string(block) + " 1" + (i + 1 < count ? "\n" : "");
    }
    emit(lines);
    if (!client.write(first * kBlockBytes, buffer, false, &error)) die("connection lost during the fill");
    if (error != 0) die("fill write at block " + std::to_string(first) + " failed with NBD error " + std::to_string(error));
  }
  if (!client.flush(&error) || error != 0) die("flush after the fill failed");
  std::string lines;
  for (uint64_t block = 0; block < blocks; block++) {
    lines += "A " + std::to_string(block + 1) + (block + 1 < blocks ? "\n" : "");
    if (lines.size() > 60000 || block + 1 == blocks) {
      emit(lines);
      lines.clear();
    }
  }
  client.disconnect();
  return 0;
}

int write_loop(const std::string& socket_path, const std::string& export_name, uint64_t sequence,
               uint64_t seed, double rate, const std::string& log_path) {
  g_log_fd = open_log(log_path);
  struct sigaction action {};
  action.sa_handler = [](int) { g_stop = 1; };
  sigaction(SIGTERM, &action, nullptr);
  Client client(socket_path, export_name);
  if (!client.can_fua()) die("the export does not offer FUA");
  const uint64_t blocks = client.size_bytes() / kBlockBytes;
  std::mt19937_64 random(seed);
  auto uniform = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(random); };
  std::vector<uint8_t> buffer;
  const auto period = std::chrono::duration<double>(1.0 / rate);
  auto next = std::chrono::steady_clock::now();
  emit("R " + std::to_string(sequence));
  uint64_t burst = 0;  // writes left in a burst: big writes at full speed, a big cycle
  while (!g_stop) {
    if (burst == 0 && uniform(0, 199) == 0) burst = uniform(8, 24);
    uint64_t dice = uniform(0, 99);
    uint64_t count = burst > 0 ? 64 : dice < 85 ? 1 : dice < 97 ? uniform(2, 16) : uniform(32, 64);
    count = std::min(count, blocks);
    uint64_t first = uniform(0, blocks - count);
    bool fua = uniform(0, 1) == 0;
    uint64_t seq = sequence++;
    stamp_blocks(buffer, seq, first, count);
    emit("I " + std::to_string(seq) + " " + std::to_string(first) + " " + std::to_string(count));
    uint32_t error = 0;
    if (!client.write(first * kBlockBytes, buffer, fua, &error)) gone("connection lost during write " + std::to_string(seq));
    if (error != 0) die("write " + std::to_string(seq) + " failed with NBD error " + std::to_string(error));
    if (!fua) {
      if (!client.flush(&error)) gone("connection lost during the flush after write " + std::to_string(seq));
      if (error != 0) die("flush after write " + std::to_string(seq) + " failed with NBD error " + std::to_string(error));
    }
    emit("A " + std::to_string(seq));
    if (burst > 0) {
      burst--;
      next = std::chrono::steady_clock::now();
      continue;
    }
    next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
    auto now = std::chrono::steady_clock::now();
    if (next > now) {
      std::this_thread::sleep_until(next);
    } else if (now - next > std::chrono::seconds(1)) {
      next = now;  // do not burst to catch up after a stall
    }
  }
  client.disconnect();
  emit("S");
  return 0;
}

int scan(const std::string& source, const std::string& out_path) {
  std::vector<int64_t> result;
  std::vector<uint8_t> buffer(1024 * 1024);
  auto parse = [&](uint64_t offset, size_t length) {
    for (size_t i = 0; i < length; i += kStampSectorBytes) {
      uint64_t sector = (offset + i) / kStampSectorBytes;
      StampInfo info = parse_sector(std::span<const uint8_t>(buffer.data() + i, kStampSectorBytes), sector);
      int64_t value = -1;
      if (info.kind == StampKind::kZero) value = 0;
      if (info.kind == StampKind::kValid && info.tag == kTag) value = static_cast<int64_t>(info.sequence);
      result.push_back(value);
    }
  };
  if (source.rfind("nbd:", 0) == 0) {
    size_t colon = source.rfind(':');
    if (colon <= 4) die("scan: SOURCE must be nbd:SOCKET:EXPORT");
    Client client(source.substr(4, colon - 4), source.substr(colon + 1));
    uint64_t size = client.size_bytes();
    if (size % kStampSectorBytes != 0) die("scan: export size is not a multiple of 512");
    for (uint64_t offset = 0; offset < size; offset += buffer.size()) {
      uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(buffer.size(), size - offset));
      uint32_t error = 0;
      if (!client.read(offset, length, buffer.data(), &error)) die("scan: connection lost");
      if (error != 0) die("scan: read at " + std::to_string(offset) + " failed with NBD error " + std::to_string(error));
      parse(offset, length);
    }
    client.disconnect();
  } else {
    int fd = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("scan: open " + source + ": " + std::strerror(errno));
    uint64_t offset = 0;
    for (;;) {
      ssize_t n = ::pread(fd, buffer.data(), buffer.size(), static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("scan: read " + source + ": " + std::strerror(errno));
      if (n == 0) break;
      if (n % kStampSectorBytes != 0) die("scan: " + source + " is not a multiple of 512 bytes");
      parse(offset, static_cast<size_t>(n));
      offset += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  FILE* out = std::fopen(out_path.c_str(), "wb");
  if (out == nullptr) die("scan: cannot create " + out_path);
  if (std::fwrite(result.data(), sizeof(int64_t), result.size(), out) != result.size() || std::fclose(out) != 0) {
    die("scan: cannot write " + out_path);
  }
  int64_t newest = 0;
  uint64_t invalid = 0;
  for (int64_t value : result) {
    newest = std::max(newest, value);
    if (value < 0) invalid++;
  }
  std::printf("%lld %llu\n", static_cast<long long>(newest), static_cast<unsigned long long>(invalid));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 4 && args[0] == "fill") return fill(args[1], args[2], args[3]);
  if (args.size() == 7 && args[0] == "write") {
    return write_loop(args[1], args[2], std::strtoull(args[3].c_str(), nullptr, 10),
                      std::strtoull(args[4].c_str(), nullptr, 10), std::strtod(args[5].c_str(), nullptr), args[6]);
  }
  if (args.size() == 3 && args[0] == "scan") return scan(args[1], args[2]);
  std::fprintf(stderr,
               "usage: seq_writer fill SOCKET EXPORT LOG\n"
               "       seq_writer write SOCKET EXPORT FIRST_SEQ SEED RATE LOG\n"
               "       seq_writer scan (FILE | nbd:SOCKET:EXPORT) OUT\n");
  return 2;
}
