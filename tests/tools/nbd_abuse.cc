// SPDX-License-Identifier: Apache-2.0
// nbd_abuse: a hostile NBD client for tests/e2e/test-nbd-abuse.sh.
//
//   nbd_abuse SOCKET EXPORT all     run every scenario; after each, a well-behaved client
//                                   must still read the 0x5a pattern the script wrote at
//                                   [0, 1 MiB) and round-trip a write
//   nbd_abuse SOCKET EXPORT hold    negotiate, print "holding", wait for the server to
//                                   close the socket (shutdown test); exit 0 on EOF
//   nbd_abuse SOCKET EXPORT hold-handshake   same, but stop before any option
//   nbd_abuse tcp:HOST:PORT EXPORT tls-refusals   against a server running with
//                                   --tls require: plaintext options get TLS_REQD,
//                                   EXPORT_NAME before TLS closes, plaintext pipelined
//                                   after STARTTLS is never answered (the connection
//                                   closes right after STARTTLS's ACK)
//
// SOCKET is a Unix socket path, or tcp:HOST:PORT for an IPv4 TCP address.
//
// Every receive has a 20 s deadline so a hung server fails the test instead of hanging
// it (not a timing assertion: the server answers in microseconds).
// Exit status: 0 all passed, 1 a scenario failed (message on stderr).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nbd/protocol.h"

using namespace amirror::nbd;

namespace {

std::string g_socket_path;
std::string g_export;
constexpr uint32_t kPatternBytes = 1024 * 1024;
constexpr uint8_t kPattern = 0x5a;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "nbd_abuse: FAIL: %s\n", message.c_str());
  std::exit(1);
}

class Client {
 public:
  Client() {
    int connected = -1;
    if (g_socket_path.starts_with("tcp:")) {
      const std::string host_port = g_socket_path.substr(4);
      const size_t colon = host_port.rfind(':');
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(static_cast<uint16_t>(std::atoi(host_port.c_str() + colon + 1)));
      if (colon == std::string::npos ||
          ::inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &address.sin_addr) != 1) {
        die("bad address " + g_socket_path + "; expected tcp:IPV4:PORT");
      }
      fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd_ < 0) die("socket()");
      connected = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    } else {
      fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
      if (fd_ < 0) die("socket()");
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      std::snprintf(address.sun_path, sizeof address.sun_path, "%s", g_socket_path.c_str());
      connected = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    }
    if (connected != 0) die("connect to " + g_socket_path + ": " + std::strerror(errno));
    timeval timeout{20, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;

  // Sends; returns false if the server already closed (EPIPE/ECONNRESET).
  bool send(const void* data, size_t length) {
    const uint8_t* bytes = static_cast<const uint8_t*>(data);
    while (length > 0) {
      ssize_t n = ::send(fd_, bytes, length, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes += n;
      length -= static_cast<size_t>(n);
    }
    return true;
  }
  void send_or_die(const void* data, size_t length, const char* what) {
    if (!send(data, length)) die(std::string("server closed the connection while sending ") + what);
  }
  // 1 = ok, 0 = EOF/reset, dies on timeout.
  int recv(void* data, size_t length) {
    uint8_t* bytes = static_cast<uint8_t*>(data);
    while (length > 0) {
      ssize_t n = ::recv(fd_, bytes, length, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) die("server did not answer within 20 s");
      if (n <= 0) return 0;
      bytes += n;
      length -= static_cast<size_t>(n);
    }
    return 1;
  }
  void recv_or_die(void* data, size_t length, const char* what) {
    if (!recv(data, length)) die(std::string("server closed the connection; expected ") + what);
  }
  // Reads until EOF (the server must close): dies if data keeps coming forever, or
  // with `silently`, if any byte comes before the close.
  void expect_close(const char* scenario, bool silently = false) {
    uint8_t sink[4096];
    for (int i = 0; i < 100000; ++i) {
      ssize_t n = ::recv(fd_, sink, sizeof sink, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return;
      if (n > 0 && silently) die(std::string(scenario) + ": server sent data instead of closing");
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        die(std::string(scenario) + ": server kept the connection open (expected it closed)");
      }
      if (n < 0) return;
    }
    die(std::string(scenario) + ": server kept sending");
  }

  // Greeting + client flags.
  void start_handshake() {
    uint8_t greeting[18];
    recv_or_die(greeting, sizeof greeting, "greeting");
    if (get_be64(greeting) != kNbdMagic || get_be64(greeting + 8) != kOptionMagic) {
      die("bad greeting magic");
    }
    uint8_t flags[4];
    put_be32(flags, kClientFlagFixedNewstyle | kClientFlagNoZeroes);
    send_or_die(flags, 4, "client flags");
  }
  void send_option(uint32_t option, const std::vector<uint8_t>& payload) {
    send_option_header(option, static_cast<uint32_t>(payload.size()));
    if (!payload.empty()) send_or_die(payload.data(), payload.size(), "option payload");
  }
  void send_option_header(uint32_t option, uint32_t length) {
    uint8_t header[16];
    put_be64(header, kOptionMagic);
    put_be32(header + 8, option);
    put_be32(header + 12, length);
    send_or_die(header, 16, "option header");
  }
  // Returns the reply type; payload in *data.
  uint32_t read_option_reply(uint32_t option, std::vector<uint8_t>* data) {
    uint8_t header[20];
    recv_or_die(header, sizeof header, "option reply");
    if (get_be64(header) != kOptionReplyMagic) die("bad option reply magic");
    if (get_be32(header + 8) != option) die("option reply for the wrong option");
    uint32_t length = get_be32(header + 16);
    if (length > 1024 * 1024) die("absurd option reply length");
    data->resize(length);
    if (length) recv_or_die(data->data(), length, "option reply data");
    return get_be32(header + 12);
  }
  static std::vector<uint8_t> go_payload(const std::string& name) {
    std::vector<uint8_t> payload(4 + name.size() + 2);
    put_be32(payload.data(), static_cast<uint32_t>(name.size()));
    std::memcpy(payload.data() + 4, name.data(), name.size());
    put_be16(payload.data() + 4 + name.size(), 0);
    return payload;
  }
  // Sends OPT_GO; returns the final reply type (ACK or an error).
  uint32_t go(const std::string& name) {
    send_option(kOptGo, go_payload(name));
    for (;;) {
      std::vector<uint8_t> data;
      uint32_t type = read_option_reply(kOptGo, &data);
      if (type == kRepInfo) {
        if (data.size() >= 12 && get_be16(data.data()) == kInfoExport) {
          size_bytes_ = get_be64(data.data() + 2);
          flags_ = get_be16(data.data() + 10);
        }
        continue;
      }
      return type;
    }
  }
  void negotiate(bool structured) {
    start_handshake();
    if (structured) {
      send_option(kOptStructuredReply, {});
      std::vector<uint8_t> data;
      if (read_option_reply(kOptStructuredReply, &data) != kRepAck) die("structured replies refused");
      structured_ = true;
    }
    if (go(g_export) != kRepAck) die("OPT_GO refused for export " + g_export);
  }

  void send_request(uint16_t type, uint16_t flags, uint64_t cookie, uint64_t offset,
                    uint32_t length) {
    RequestHeader header{kRequestMagic, flags, type, cookie, offset, length};
    uint8_t raw[kRequestHeaderBytes];
    encode_request_header(header, raw);
    send_or_die(raw, sizeof raw, "request header");
  }
  // Reads one reply (simple or structured, single chunk); returns its error (0 = ok);
  // for a successful read fills *data with `read_length` bytes.
  uint32_t read_reply(uint64_t cookie, uint32_t read_length, std::vector<uint8_t>* data) {
    uint8_t magic[4];
    recv_or_die(magic, 4, "reply");
    if (get_be32(magic) == kSimpleReplyMagic) {
      uint8_t rest[12];
      recv_or_die(rest, 12, "simple reply");
      if (get_be64(rest + 4) != cookie) die("reply cookie mismatch");
      uint32_t error = get_be32(rest);
      if (error == 0 && data != nullptr) {
        data->resize(read_length);
        recv_or_die(data->data(), read_length, "read data");
      }
      return error;
    }
    if (get_be32(magic) != kStructuredReplyMagic) die("bad reply magic");
    if (!structured_) die("structured reply without negotiation");
    uint8_t rest[16];
    recv_or_die(rest, 16, "structured reply");
    uint16_t flags = get_be16(rest);
    uint16_t type = get_be16(rest + 2);
    if (get_be64(rest + 4) != cookie) die("reply cookie mismatch");
    uint32_t length = get_be32(rest + 12);
    if (!(flags & kReplyFlagDone)) die("multi-chunk reply not expected from amirror");
    std::vector<uint8_t> payload(length);
    if (length) recv_or_die(payload.data(), length, "structured payload");
    if (type == kReplyTypeError) {
      if (length < 6) die("short error chunk");
      uint32_t error = get_be32(payload.data());
      if (error == 0) die("error chunk with error 0");
      return error;
    }
    if (type == kReplyTypeOffsetData) {
      if (length != 8 + read_length) die("OFFSET_DATA with the wrong length");
      if (data) data->assign(payload.begin() + 8, payload.end());
      return 0;
    }
    if (type == kReplyTypeNone || type == kReplyTypeBlockStatus) return 0;
    die("unexpected structured reply type");
  }

  uint64_t size_bytes() const { return size_bytes_; }
  uint16_t flags() const { return flags_; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool structured_ = false;
  uint64_t size_bytes_ = 0;
  uint16_t flags_ = 0;
};

// The health check after every scenario: a fresh, well-behaved client reads the
// pattern, writes and reads back a scratch block.
void check_healthy(const char* after) {
  for (bool structured : {false, true}) {
    Client client;
    client.negotiate(structured);
    std::vector<uint8_t> data;
    client.send_request(kCmdRead, 0, 1, 0, kPatternBytes);
    if (client.read_reply(1, kPatternBytes, &data) != 0) {
      die(std::string("after ") + after + ": healthy read failed");
    }
    for (uint8_t byte : data) {
      if (byte != kPattern) die(std::string("after ") + after + ": pattern damaged");
    }
    std::vector<uint8_t> block(4096, structured ? 0x33 : 0x44);
    const uint64_t scratch_offset = 8 * 1024 * 1024;
    client.send_request(kCmdWrite, kCmdFlagFua, 2, scratch_offset, 4096);
    client.send_or_die(block.data(), block.size(), "write payload");
    if (client.read_reply(2, 0, nullptr) != 0) die(std::string("after ") + after + ": FUA write failed");
    client.send_request(kCmdRead, 0, 3, scratch_offset, 4096);
    if (client.read_reply(3, 4096, &data) != 0 || data != block) {
      die(std::string("after ") + after + ": write did not read back");
    }
    client.send_request(kCmdDisc, 0, 4, 0, 0);
  }
}

void expect_error(Client& client, uint64_t cookie, uint32_t expected, const char* scenario) {
  uint32_t error = client.read_reply(cookie, 0, nullptr);
  if (error != expected) {
    die(std::string(scenario) + ": got NBD error " + std::to_string(error) + ", expected " +
        std::to_string(expected));
  }
}

// Connection stays usable: a read of the pattern right after.
void expect_usable(Client& client, const char* scenario) {
  std::vector<uint8_t> data;
  client.send_request(kCmdRead, 0, 999, 0, 4096);
  if (client.read_reply(999, 4096, &data) != 0 || data[0] != kPattern || data[4095] != kPattern) {
    die(std::string(scenario) + ": connection unusable after the error");
  }
}

struct Scenario {
  const char* name;
  std::function<void()> run;
};

std::vector<Scenario> scenarios() {
  std::vector<Scenario> list;
  list.push_back({"truncated handshake", [] {
    Client client;
    uint8_t greeting[18];
    client.recv_or_die(greeting, sizeof greeting, "greeting");
    client.send("\0\0", 2);  // half of the client flags, then vanish
  }});
  list.push_back({"garbage instead of handshake", [] {
    Client client;
    std::mt19937 random(42);
    std::vector<uint8_t> garbage(4096);
    for (auto& byte : garbage) byte = static_cast<uint8_t>(random());
    uint8_t greeting[18];
    client.recv_or_die(greeting, sizeof greeting, "greeting");
    client.send(garbage.data(), garbage.size());
    client.expect_close("garbage");
  }});
  list.push_back({"unknown client flags", [] {
    Client client;
    uint8_t greeting[18];
    client.recv_or_die(greeting, sizeof greeting, "greeting");
    uint8_t flags[4];
    put_be32(flags, 0xffffffff);
    client.send(flags, 4);
    client.expect_close("unknown client flags");
  }});
  list.push_back({"unknown option then GO", [] {
    Client client;
    client.start_handshake();
    client.send_option(0x1234, {1, 2, 3});
    std::vector<uint8_t> data;
    if (client.read_option_reply(0x1234, &data) != kRepErrUnsup) die("unknown option not ERR_UNSUP");
    client.send_option(kOptStartTls, {});
    if (client.read_option_reply(kOptStartTls, &data) < kRepErrorBit) die("STARTTLS accepted");
    if (client.go(g_export) != kRepAck) die("GO after unknown option refused");
    expect_usable(client, "unknown option");
  }});
  list.push_back({"4 GiB option length", [] {
    Client client;
    client.start_handshake();
    client.send_option_header(kOptGo, 0xffffffffu);
    client.send(std::string(1000, 'x').data(), 1000);
    client.expect_close("4 GiB option length");
  }});
  list.push_back({"5000-byte export name in GO", [] {
    Client client;
    client.start_handshake();
    client.send_option(kOptGo, Client::go_payload(std::string(5000, 'n')));
    std::vector<uint8_t> data;
    if (client.read_option_reply(kOptGo, &data) != kRepErrInvalid) die("long name not ERR_INVALID");
    if (client.go("no-such-volume") != kRepErrUnknown) die("unknown export not ERR_UNKNOWN");
    if (client.go(g_export) != kRepAck) die("GO after long name refused");
    expect_usable(client, "long export name");
  }});
  list.push_back({"5000-byte export name in EXPORT_NAME", [] {
    Client client;
    client.start_handshake();
    std::string name(5000, 'n');
    client.send_option(kOptExportName, std::vector<uint8_t>(name.begin(), name.end()));
    client.expect_close("long EXPORT_NAME");
  }});
  list.push_back({"malformed GO lengths", [] {
    Client client;
    client.start_handshake();
    std::vector<uint8_t> payload = Client::go_payload(g_export);
    put_be32(payload.data(), 0x7fffffff);  // name length beyond the option
    client.send_option(kOptGo, payload);
    std::vector<uint8_t> data;
    if (client.read_option_reply(kOptGo, &data) != kRepErrInvalid) die("bad GO not ERR_INVALID");
    client.send_option(kOptList, {9});
    if (client.read_option_reply(kOptList, &data) != kRepErrInvalid) die("LIST with data accepted");
    client.send_option(kOptSetMetaContext, {0, 0, 0, 0});
    if (client.read_option_reply(kOptSetMetaContext, &data) != kRepErrInvalid) {
      die("SET_META_CONTEXT before structured replies accepted");
    }
    if (client.go(g_export) != kRepAck) die("GO refused");
    expect_usable(client, "malformed GO");
  }});
  list.push_back({"too many options", [] {
    Client client;
    client.start_handshake();
    std::vector<uint8_t> data;
    for (int i = 0; i < 10000; ++i) {
      uint8_t header[16];
      put_be64(header, kOptionMagic);
      put_be32(header + 8, kOptList);
      put_be32(header + 12, 0);
      if (!client.send(header, 16)) return;  // server hung up: good
      uint8_t reply[20];
      for (;;) {
        if (!client.recv(reply, 20)) return;  // closed: good
        uint32_t length = get_be32(reply + 16);
        data.resize(length);
        if (length && !client.recv(data.data(), length)) return;
        uint32_t type = get_be32(reply + 12);
        if (type == kRepAck) break;
        if (type >= kRepErrorBit) {
          client.expect_close("too many options");
          return;
        }
      }
    }
    die("server accepted 10000 options in one handshake");
  }});
  list.push_back({"ABORT", [] {
    Client client;
    client.start_handshake();
    client.send_option(kOptAbort, {});
    client.expect_close("abort");
  }});
  list.push_back({"bad request magic", [] {
    Client client;
    client.negotiate(false);
    uint8_t raw[kRequestHeaderBytes];
    encode_request_header(RequestHeader{0xdeadbeef, 0, kCmdRead, 1, 0, 512}, raw);
    client.send(raw, sizeof raw);
    client.expect_close("bad request magic");
  }});
  for (bool structured : {false, true}) {
    list.push_back({structured ? "bad ranges and flags (structured)" : "bad ranges and flags (simple)",
                    [structured] {
      Client client;
      client.negotiate(structured);
      const uint64_t size = client.size_bytes();
      const char* s = "bad ranges";
      client.send_request(kCmdRead, 0, 10, 0, 0xffffffffu);  // length 2^32-1
      expect_error(client, 10, kNbdEinval, "read length 2^32-1");
      client.send_request(kCmdRead, 0, 11, UINT64_MAX - 511, 1024);  // offset+length overflows
      expect_error(client, 11, kNbdEinval, "read offset overflow");
      client.send_request(kCmdRead, 0, 12, size - 512, 1024);  // past the end
      expect_error(client, 12, kNbdEinval, "read past end");
      client.send_request(kCmdRead, 0, 13, 0, 0);
      expect_error(client, 13, kNbdEinval, "zero-length read");
      std::vector<uint8_t> payload(1024, 0xee);
      client.send_request(kCmdWrite, 0, 14, UINT64_MAX - 511, 1024);
      client.send_or_die(payload.data(), payload.size(), "payload");
      expect_error(client, 14, kNbdEnospc, "write offset overflow");
      client.send_request(kCmdWrite, 0, 15, size - 512, 1024);
      client.send_or_die(payload.data(), payload.size(), "payload");
      expect_error(client, 15, kNbdEnospc, "write past end");
      client.send_request(kCmdWrite, 0x8000, 16, 0, 1024);  // unknown flag: payload skipped
      client.send_or_die(payload.data(), payload.size(), "payload");
      expect_error(client, 16, kNbdEinval, "write with unknown flag");
      client.send_request(kCmdRead, kCmdFlagFua | 0x0100, 17, 0, 512);
      expect_error(client, 17, kNbdEinval, "read with unknown flags");
      client.send_request(99, 0, 18, 0, 512);
      expect_error(client, 18, kNbdEinval, "unknown command");
      client.send_request(kCmdCache, 0, 19, 0, 512);
      expect_error(client, 19, kNbdEinval, "unadvertised CACHE");
      client.send_request(kCmdBlockStatus, 0, 20, 0, 512);
      expect_error(client, 20, kNbdEinval, "block status without meta context");
      client.send_request(kCmdTrim, 0, 21, UINT64_MAX, 2);
      expect_error(client, 21, kNbdEinval, "trim overflow");
      client.send_request(kCmdWriteZeroes, kCmdFlagNoHole, 22, size, 1);
      expect_error(client, 22, kNbdEnospc, "write zeroes past end");
      client.send_request(kCmdFlush, 0, 23, 1, 0);
      expect_error(client, 23, kNbdEinval, "flush with offset");
      client.send_request(kCmdWriteZeroes, kCmdFlagFastZero, 24, 0, 512);
      expect_error(client, 24, kNbdEinval, "unadvertised FAST_ZERO");
      expect_usable(client, s);
      // Pipelined: many requests before reading any reply; replies may come in any order.
      for (uint64_t cookie = 100; cookie < 164; ++cookie) {
        client.send_request(kCmdRead, 0, cookie, (cookie - 100) * 4096, 4096);
      }
      std::vector<bool> seen(64, false);
      for (int i = 0; i < 64; ++i) {
        uint8_t magic[4];
        client.recv_or_die(magic, 4, "pipelined reply");
        uint64_t cookie = 0;
        if (get_be32(magic) == kSimpleReplyMagic) {
          uint8_t rest[12];
          client.recv_or_die(rest, 12, "reply");
          if (get_be32(rest) != 0) die("pipelined read failed");
          cookie = get_be64(rest + 4);
          std::vector<uint8_t> data(4096);
          client.recv_or_die(data.data(), 4096, "data");
        } else {
          uint8_t rest[16];
          client.recv_or_die(rest, 16, "reply");
          cookie = get_be64(rest + 4);
          std::vector<uint8_t> data(get_be32(rest + 12));
          client.recv_or_die(data.data(), data.size(), "data");
          if (get_be16(rest + 2) != kReplyTypeOffsetData) die("pipelined read failed");
        }
        if (cookie < 100 || cookie >= 164 || seen[cookie - 100]) die("bad or duplicate cookie");
        seen[cookie - 100] = true;
      }
      expect_usable(client, "pipelined reads");
    }});
  }
  list.push_back({"write length 2^32-1", [] {
    Client client;
    client.negotiate(false);
    client.send_request(kCmdWrite, 0, 1, 0, 0xffffffffu);
    client.send(std::string(4096, 'z').data(), 4096);
    client.expect_close("write length 2^32-1");
  }});
  list.push_back({"client vanishing mid-write", [] {
    Client client;
    client.negotiate(true);
    // 64 KiB write over the pattern, only 1000 bytes of payload, then gone.
    client.send_request(kCmdWrite, 0, 1, 4096, 65536);
    client.send(std::string(1000, '\x11').data(), 1000);
  }});
  list.push_back({"many connections", [] {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 160; ++i) clients.push_back(std::make_unique<Client>());
    // Past the connection limit the server closes new sockets; the first ones get a greeting.
    uint8_t greeting[18];
    clients.front()->recv_or_die(greeting, sizeof greeting, "greeting on connection 1");
    int closed = 0;
    for (size_t i = 1; i < clients.size(); ++i) {
      if (!clients[i]->recv(greeting, sizeof greeting)) ++closed;
    }
    if (closed == 0) die("160 idle connections all accepted: no connection limit");
  }});
  return list;
}

// Against a server that requires TLS (on TCP). None of these may reach an export.
std::vector<Scenario> tls_refusal_scenarios() {
  std::vector<Scenario> list;
  list.push_back({"plaintext options get TLS_REQD", [] {
    Client client;
    client.start_handshake();
    std::vector<uint8_t> data;
    for (uint32_t option : {kOptList, kOptStructuredReply, 0x1234u}) {
      client.send_option(option, {});
      if (client.read_option_reply(option, &data) != kRepErrTlsReqd) {
        die("option " + std::to_string(option) + " before STARTTLS not ERR_TLS_REQD");
      }
    }
    if (client.go(g_export) != kRepErrTlsReqd) die("GO before STARTTLS not ERR_TLS_REQD");
    client.send_option(kOptAbort, {});
    client.expect_close("abort after TLS_REQD");
  }});
  list.push_back({"EXPORT_NAME before STARTTLS", [] {
    Client client;
    client.start_handshake();
    client.send_option(kOptExportName, std::vector<uint8_t>(g_export.begin(), g_export.end()));
    client.expect_close("EXPORT_NAME before STARTTLS", /*silently=*/true);
  }});
  list.push_back({"STARTTLS with data", [] {
    Client client;
    client.start_handshake();
    client.send_option(kOptStartTls, {1});
    std::vector<uint8_t> data;
    if (client.read_option_reply(kOptStartTls, &data) != kRepErrInvalid) {
      die("STARTTLS with data not ERR_INVALID");
    }
    client.send_option(kOptAbort, {});
    client.expect_close("abort after STARTTLS with data");
  }});
  list.push_back({"plaintext pipelined after STARTTLS", [] {
    // STARTTLS and a plaintext GO in one write, as a man in the middle injecting
    // plaintext after the client's STARTTLS would (nbdkit CVE-2021-3716): the server
    // must acknowledge STARTTLS, then fail the TLS handshake on the GO's bytes and close
    // without ever answering the GO.
    Client client;
    client.start_handshake();
    std::vector<uint8_t> bytes(16);
    put_be64(bytes.data(), kOptionMagic);
    put_be32(bytes.data() + 8, kOptStartTls);
    put_be32(bytes.data() + 12, 0);
    std::vector<uint8_t> go = Client::go_payload(g_export);
    std::vector<uint8_t> go_header(16);
    put_be64(go_header.data(), kOptionMagic);
    put_be32(go_header.data() + 8, kOptGo);
    put_be32(go_header.data() + 12, static_cast<uint32_t>(go.size()));
    bytes.insert(bytes.end(), go_header.begin(), go_header.end());
    bytes.insert(bytes.end(), go.begin(), go.end());
    client.send_or_die(bytes.data(), bytes.size(), "STARTTLS + GO");
    std::vector<uint8_t> data;
    if (client.read_option_reply(kOptStartTls, &data) != kRepAck) die("STARTTLS not acknowledged");
    client.expect_close("plaintext after STARTTLS", /*silently=*/true);
  }});
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: nbd_abuse SOCKET|tcp:HOST:PORT EXPORT all|hold|hold-handshake|tls-refusals\n");
    return 2;
  }
  g_socket_path = argv[1];
  g_export = argv[2];
  std::string mode = argv[3];
  if (mode == "hold" || mode == "hold-handshake") {
    Client client;
    if (mode == "hold") {
      client.negotiate(true);
    } else {
      uint8_t greeting[18];
      client.recv_or_die(greeting, sizeof greeting, "greeting");
    }
    std::printf("holding\n");
    std::fflush(stdout);
    timeval forever{0, 0};
    ::setsockopt(client.fd(), SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
    uint8_t byte;
    while (::recv(client.fd(), &byte, 1, 0) > 0) {
    }
    std::printf("closed by server\n");
    return 0;
  }
  if (mode == "tls-refusals") {
    for (const Scenario& scenario : tls_refusal_scenarios()) {
      std::fprintf(stderr, "nbd_abuse: %s\n", scenario.name);
      scenario.run();
    }
    std::fprintf(stderr, "nbd_abuse: all TLS refusal scenarios passed\n");
    return 0;
  }
  if (mode != "all") {
    std::fprintf(stderr, "nbd_abuse: unknown mode %s\n", mode.c_str());
    return 2;
  }
  check_healthy("start");
  for (const Scenario& scenario : scenarios()) {
    std::fprintf(stderr, "nbd_abuse: %s\n", scenario.name);
    scenario.run();
    check_healthy(scenario.name);
  }
  std::fprintf(stderr, "nbd_abuse: all scenarios passed\n");
  return 0;
}
