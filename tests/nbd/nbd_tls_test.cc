// SPDX-License-Identifier: Apache-2.0
// NBD STARTTLS: the negotiation state machine per TlsMode over memory buffers (TLS
// simulated by MemoryStream), then the real server over loopback TCP with real TLS
// (certificates from net::make_demo_pki): a full TLS session through the transmission
// phase, refusals of plaintext clients, of plaintext pipelined after STARTTLS, and of a
// certificate from another CA. The catalog counts lookups, to show that no export is
// looked up for a client before TLS is up.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "nbd/export.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/server.h"
#include "net/pki.h"
#include "net/tls.h"
#include "test_script.h"
#include "testing/test_support.h"

namespace amirror::nbd {
namespace {

constexpr uint64_t kSize = 4 << 20;

// A catalog that counts every lookup, so a test can assert "none happened".
class CountingCatalog final : public ExportCatalog {
 public:
  CountingCatalog() {
    inner_.add("alpha", std::make_shared<MemoryExport>(kSize));
    inner_.add("beta", std::make_shared<MemoryExport>(2 * kSize));
  }
  std::vector<std::string> names() const override {
    ++lookups;
    return inner_.names();
  }
  std::shared_ptr<Export> find(const std::string& name) const override {
    ++lookups;
    return inner_.find(name);
  }
  mutable std::atomic<int> lookups{0};

 private:
  StaticCatalog inner_;
};

std::vector<uint32_t> reply_types(const std::string& output) {
  std::vector<uint32_t> types;
  for (const OptionReply& reply : replies(output)) types.push_back(reply.type);
  return types;
}

// --- The state machine, over memory -------------------------------------------------

class NbdTlsNegotiation : public ::testing::Test {
 protected:
  Result<Negotiated> run(const ClientScript& script, TlsMode mode, bool tls_works = true) {
    stream_ = std::make_unique<MemoryStream>(script.bytes());
    stream_->simulate_tls = tls_works;
    return negotiate(*stream_, catalog_, mode);
  }
  CountingCatalog catalog_;
  std::unique_ptr<MemoryStream> stream_;
};

TEST_F(NbdTlsNegotiation, RequireRefusesEveryOptionBeforeStartTlsWithoutLookingUp) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(kOptList, "")
      .option(kOptInfo, ClientScript::go_payload("alpha"))
      .option(kOptGo, ClientScript::go_payload("alpha"))
      .option(kOptStructuredReply, "")
      .option(kOptListMetaContext, ClientScript::meta_payload("alpha", {}))
      .option(kOptSetMetaContext, ClientScript::meta_payload("alpha", {"base:allocation"}))
      .option(0x77, "whatever")
      .option(kOptAbort, "");
  Result<Negotiated> result = run(script, TlsMode::kRequire);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kCancelled);
  EXPECT_NE(result.status().message().find("TLS is required"), std::string::npos);
  std::vector<uint32_t> expected(7, kRepErrTlsReqd);
  expected.push_back(kRepAck);  // ABORT is answered in plaintext
  EXPECT_EQ(reply_types(stream_->output), expected);
  EXPECT_EQ(catalog_.lookups.load(), 0);
  EXPECT_FALSE(stream_->tls_started);
}

TEST_F(NbdTlsNegotiation, RequireClosesOnExportNameBeforeTls) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle).option(kOptExportName, "alpha");
  Result<Negotiated> result = run(script, TlsMode::kRequire);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("before STARTTLS"), std::string::npos);
  EXPECT_EQ(stream_->output.size(), 18u) << "nothing but the greeting may be sent";
  EXPECT_EQ(catalog_.lookups.load(), 0);
}

TEST_F(NbdTlsNegotiation, RequireServesAfterStartTls) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle | kClientFlagNoZeroes)
      .option(kOptStartTls, "")
      .option(kOptStructuredReply, "")
      .option(kOptSetMetaContext, ClientScript::meta_payload("beta", {"base:allocation"}))
      .option(0x77, "")
      .option(kOptGo, ClientScript::go_payload("beta"));
  Result<Negotiated> result = run(script, TlsMode::kRequire);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_TRUE(result->tls);
  EXPECT_EQ(result->export_name, "beta");
  EXPECT_TRUE(result->limits.structured_replies);
  EXPECT_TRUE(result->limits.base_allocation);
  ASSERT_TRUE(stream_->tls_started);
  // The upgrade happened right after the STARTTLS option and its plaintext ACK.
  EXPECT_EQ(stream_->tls_input_offset, 4u + 16u);
  EXPECT_EQ(stream_->tls_output_offset, 18u + 20u);
  std::vector<uint32_t> types = reply_types(stream_->output);
  ASSERT_GE(types.size(), 5u);
  EXPECT_EQ(types[0], kRepAck);  // STARTTLS
  EXPECT_EQ(types[1], kRepAck);  // STRUCTURED_REPLY
  EXPECT_EQ(types[2], kRepMetaContext);
  EXPECT_EQ(types[3], kRepAck);
  EXPECT_EQ(types[4], kRepErrUnsup) << "after TLS, never ERR_TLS_REQD";
  EXPECT_EQ(types.back(), kRepAck);
}

TEST_F(NbdTlsNegotiation, StartTlsForgetsWhatWasNegotiatedInPlaintext) {
  // A man in the middle could have injected these before the client's STARTTLS
  // (nbdkit CVE-2021-3716); none of it may survive the upgrade.
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(kOptStructuredReply, "")
      .option(kOptSetMetaContext, ClientScript::meta_payload("alpha", {"base:allocation"}))
      .option(kOptStartTls, "")
      .option(kOptSetMetaContext, ClientScript::meta_payload("alpha", {"base:allocation"}))
      .option(kOptGo, ClientScript::go_payload("alpha"));
  Result<Negotiated> result = run(script, TlsMode::kAllow);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_TRUE(result->tls);
  EXPECT_FALSE(result->limits.structured_replies);
  EXPECT_FALSE(result->limits.base_allocation);
  EXPECT_FALSE(result->limits.transmission_flags & kTransSendDf);
  std::vector<uint32_t> types = reply_types(stream_->output);
  ASSERT_GE(types.size(), 5u);
  EXPECT_EQ(types[3], kRepAck);         // STARTTLS
  EXPECT_EQ(types[4], kRepErrInvalid);  // meta context needs structured replies again
}

TEST_F(NbdTlsNegotiation, StartTlsWithDataOrTwiceIsInvalid) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(kOptStartTls, "x")
      .option(kOptStartTls, "")
      .option(kOptStartTls, "")
      .option(kOptGo, ClientScript::go_payload("alpha"));
  Result<Negotiated> result = run(script, TlsMode::kRequire);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  std::vector<uint32_t> types = reply_types(stream_->output);
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types[0], kRepErrInvalid);
  EXPECT_EQ(types[1], kRepAck);
  EXPECT_EQ(types[2], kRepErrInvalid);
}

TEST_F(NbdTlsNegotiation, FailedUpgradeClosesAfterTheAck) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(kOptStartTls, "")
      .option(kOptGo, ClientScript::go_payload("alpha"));
  Result<Negotiated> result = run(script, TlsMode::kRequire, /*tls_works=*/false);
  ASSERT_FALSE(result.ok());
  EXPECT_TRUE(result.status().message().starts_with("TLS handshake failed"));
  EXPECT_EQ(reply_types(stream_->output), std::vector<uint32_t>{kRepAck});
  EXPECT_EQ(catalog_.lookups.load(), 0);
}

TEST_F(NbdTlsNegotiation, AllowServesPlaintextAndOffRefusesStartTls) {
  ClientScript plain;
  plain.flags(kClientFlagFixedNewstyle).option(kOptGo, ClientScript::go_payload("alpha"));
  Result<Negotiated> allowed = run(plain, TlsMode::kAllow);
  ASSERT_TRUE(allowed.ok()) << allowed.status().to_string();
  EXPECT_FALSE(allowed->tls);

  ClientScript asks;
  asks.flags(kClientFlagFixedNewstyle)
      .option(kOptStartTls, "")
      .option(kOptGo, ClientScript::go_payload("alpha"));
  Result<Negotiated> off = run(asks, TlsMode::kOff);
  ASSERT_TRUE(off.ok()) << off.status().to_string();
  EXPECT_FALSE(off->tls);
  EXPECT_FALSE(stream_->tls_started);
  EXPECT_EQ(reply_types(stream_->output).front(), kRepErrPolicy);
}

TEST(NbdTlsMode, ParsesTheThreeWords) {
  EXPECT_EQ(parse_tls_mode("off").value(), TlsMode::kOff);
  EXPECT_EQ(parse_tls_mode("allow").value(), TlsMode::kAllow);
  EXPECT_EQ(parse_tls_mode("require").value(), TlsMode::kRequire);
  EXPECT_FALSE(parse_tls_mode("yes").ok());
  EXPECT_STREQ(tls_mode_name(TlsMode::kRequire), "require");
}

// --- The real server over loopback TCP ----------------------------------------------

constexpr int kClientTimeoutMs = 20000;

// One client connection: plaintext on the socket, then TLS once upgrade() succeeded.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    connect_common();
  }
  explicit Client(const std::string& unix_path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", unix_path.c_str());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    connect_common();
  }
  ~Client() {
    tls_.reset();
    SSL_free(lax_);
    SSL_CTX_free(lax_context_);
    ::close(fd_);
  }

  bool write(const std::string& bytes) {
    std::span data(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (tls_ != nullptr) return tls_->write_all(data).ok();
    if (lax_ != nullptr)
      return SSL_write(lax_, data.data(), static_cast<int>(data.size())) ==
             static_cast<int>(data.size());
    return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
  }
  // Exactly `length` bytes; false on EOF, error or timeout.
  bool read(uint8_t* out, size_t length) {
    if (tls_ != nullptr) return tls_->read_exact(std::span(out, length)).ok();
    if (lax_ != nullptr) {
      size_t read_bytes = 0;
      return SSL_read_ex(lax_, out, length, &read_bytes) == 1 && read_bytes == length;
    }
    return ::recv(fd_, out, length, MSG_WAITALL) == static_cast<ssize_t>(length);
  }
  // The greeting, then the client flags.
  bool start() {
    uint8_t greeting[18];
    if (!read(greeting, sizeof greeting) || get_be64(greeting + 8) != kOptionMagic) return false;
    return write(std::string("\0\0\0\3", 4));  // FIXED_NEWSTYLE | NO_ZEROES
  }
  // Sends one option; returns the type of its final reply (ACK or an error), 0 when the
  // connection ended. INFO, SERVER and META_CONTEXT replies are skipped.
  uint32_t option(uint32_t option, const std::string& payload) {
    ClientScript script;
    script.option(option, payload);
    if (!write(std::string(reinterpret_cast<const char*>(script.bytes().data()),
                           script.bytes().size()))) {
      return 0;
    }
    return final_reply(option);
  }
  uint32_t final_reply(uint32_t option) {
    for (;;) {
      uint8_t header[20];
      if (!read(header, sizeof header)) return 0;
      EXPECT_EQ(get_be64(header), kOptionReplyMagic);
      EXPECT_EQ(get_be32(header + 8), option);
      std::vector<uint8_t> data(get_be32(header + 16));
      if (!data.empty() && !read(data.data(), data.size())) return 0;
      const uint32_t type = get_be32(header + 12);
      if (type != kRepInfo && type != kRepServer && type != kRepMetaContext) return type;
    }
  }
  Status upgrade(const net::TlsContext& context) {
    AMIRROR_ASSIGN_OR_RETURN(tls_, context.connect(fd_, "test server", kClientTimeoutMs));
    return Status();
  }
  // A client that trusts any server and presents `files`' certificate, or none when
  // null: whether the session works is up to the server's check alone. Returns whether
  // the client's side of the handshake completed.
  bool upgrade_lax(const net::TlsFiles* files) {
    lax_context_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(lax_context_, SSL_VERIFY_NONE, nullptr);
    if (files != nullptr) {
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(lax_context_, files->certificate_path.c_str()),
                1);
      EXPECT_EQ(
          SSL_CTX_use_PrivateKey_file(lax_context_, files->key_path.c_str(), SSL_FILETYPE_PEM), 1);
    }
    lax_ = SSL_new(lax_context_);
    SSL_set_fd(lax_, fd_);
    return SSL_connect(lax_) == 1;
  }
  // Sends one request, reads its simple reply; returns the NBD error.
  uint32_t request(uint16_t type, uint64_t offset, uint32_t length,
                   const std::vector<uint8_t>& payload, std::vector<uint8_t>* read_data) {
    uint8_t raw[kRequestHeaderBytes];
    encode_request_header(RequestHeader{kRequestMagic, 0, type, ++cookie_, offset, length}, raw);
    std::string bytes(reinterpret_cast<const char*>(raw), sizeof raw);
    bytes.append(payload.begin(), payload.end());
    if (!write(bytes)) return ~0U;
    uint8_t reply[kSimpleReplyHeaderBytes];
    if (!read(reply, sizeof reply) || get_be32(reply) != kSimpleReplyMagic) return ~0U;
    EXPECT_EQ(get_be64(reply + 8), cookie_);
    const uint32_t error = get_be32(reply + 4);
    if (error == 0 && read_data != nullptr) {
      read_data->resize(length);
      if (!read(read_data->data(), length)) return ~0U;
    }
    return error;
  }
  // True when the server closes the connection without sending anything more.
  bool closed_by_server() {
    uint8_t byte;
    if (tls_ != nullptr) {
      Result<size_t> got = tls_->read_some(std::span(&byte, 1));
      return !got.ok() || *got == 0;
    }
    // ECONNRESET too: closing with the client's unread bytes queued sends a reset.
    ssize_t received = ::recv(fd_, &byte, 1, 0);
    return received == 0 || (received < 0 && errno == ECONNRESET);
  }
  bool connected() const { return connected_; }

 private:
  void connect_common() {
    timeval timeout{kClientTimeoutMs / 1000, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  int fd_ = -1;
  bool connected_ = false;
  uint64_t cookie_ = 0;
  std::unique_ptr<net::TlsSession> tls_;
  SSL_CTX* lax_context_ = nullptr;
  SSL* lax_ = nullptr;
};

class NbdTlsServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }  // as `amirror serve` does

  void SetUp() override {
    ASSERT_TRUE(net::make_demo_pki(pki_.path(), {"server", "client"}).ok());
    ASSERT_TRUE(net::make_demo_pki(other_pki_.path(), {"stranger"}).ok());
    auto server_tls = net::TlsContext::load(net::demo_tls_files(pki_.path(), "server"));
    ASSERT_TRUE(server_tls.ok()) << server_tls.status().to_string();
    auto client_tls = net::TlsContext::load(net::demo_tls_files(pki_.path(), "client"));
    ASSERT_TRUE(client_tls.ok()) << client_tls.status().to_string();
    client_tls_ = *client_tls;

    ServerOptions options;
    options.unix_socket_path = pki_.sub("nbd.sock");
    options.tcp_address = "0";  // loopback, any free port
    options.quiet = true;
    options.tls = *server_tls;
    options.tls_mode = TlsMode::kRequire;
    auto server = Server::start(options, catalog_);
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server_ = std::move(*server);
    ASSERT_NE(server_->tcp_port(), 0);
  }
  void TearDown() override {
    if (server_) server_->stop();
  }

  testing::ScratchDir pki_{"nbd-tls"};
  testing::ScratchDir other_pki_{"nbd-tls-other"};
  std::shared_ptr<CountingCatalog> catalog_ = std::make_shared<CountingCatalog>();
  std::shared_ptr<net::TlsContext> client_tls_;
  std::unique_ptr<Server> server_;
};

TEST_F(NbdTlsServer, TransmissionRunsOverTls) {
  Client client(server_->tcp_port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.start());
  ASSERT_EQ(client.option(kOptStartTls, ""), kRepAck);
  ASSERT_TRUE(client.upgrade(*client_tls_).ok());
  ASSERT_EQ(client.option(kOptGo, ClientScript::go_payload("alpha")), kRepAck);
  // Big enough that the server writes the reply in pieces, small enough to coalesce.
  for (uint32_t length : {1u << 20, 4096u, 1u}) {
    std::vector<uint8_t> pattern(length);
    for (uint32_t i = 0; i < length; ++i) pattern[i] = static_cast<uint8_t>(i * 7 + length);
    ASSERT_EQ(client.request(kCmdWrite, 8192, length, pattern, nullptr), kNbdOk);
    std::vector<uint8_t> back;
    ASSERT_EQ(client.request(kCmdRead, 8192, length, {}, &back), kNbdOk);
    EXPECT_EQ(back, pattern);
  }
  EXPECT_EQ(client.request(kCmdRead, kSize, 512, {}, nullptr), kNbdEinval);
  ASSERT_TRUE(client.write(std::string(kRequestHeaderBytes, '\0')));  // bad magic: closes
  EXPECT_TRUE(client.closed_by_server());
}

TEST_F(NbdTlsServer, PlaintextClientOnTcpIsToldTlsIsRequired) {
  Client client(server_->tcp_port());
  ASSERT_TRUE(client.start());
  EXPECT_EQ(client.option(kOptGo, ClientScript::go_payload("alpha")), kRepErrTlsReqd);
  EXPECT_EQ(client.option(kOptList, ""), kRepErrTlsReqd);
  EXPECT_EQ(client.option(kOptAbort, ""), kRepAck);
  EXPECT_EQ(catalog_->lookups.load(), 0);
}

TEST_F(NbdTlsServer, PlaintextPipelinedAfterStartTlsIsNeverInterpreted) {
  // STARTTLS and a plaintext GO in one write: the server must acknowledge STARTTLS,
  // then treat the GO's bytes as a (failed) TLS handshake and close; no export is
  // looked up and no GO reply is ever sent.
  Client client(server_->tcp_port());
  ASSERT_TRUE(client.start());
  ClientScript script;
  script.option(kOptStartTls, "").option(kOptGo, ClientScript::go_payload("alpha"));
  ASSERT_TRUE(client.write(
      std::string(reinterpret_cast<const char*>(script.bytes().data()), script.bytes().size())));
  EXPECT_EQ(client.final_reply(kOptStartTls), kRepAck);
  EXPECT_TRUE(client.closed_by_server());
  EXPECT_EQ(catalog_->lookups.load(), 0);
}

TEST_F(NbdTlsServer, ClientCertificateFromAnotherCaOrNoneIsRefused) {
  const net::TlsFiles stranger = net::demo_tls_files(other_pki_.path(), "stranger");
  const net::TlsFiles client_files = net::demo_tls_files(pki_.path(), "client");
  for (const net::TlsFiles* files : {&stranger, static_cast<const net::TlsFiles*>(nullptr)}) {
    Client client(server_->tcp_port());
    ASSERT_TRUE(client.start());
    ASSERT_EQ(client.option(kOptStartTls, ""), kRepAck);
    // In TLS 1.3 the client finishes its handshake before the server has checked the
    // client's certificate, so the refusal may show only at the first read.
    if (client.upgrade_lax(files)) {
      EXPECT_EQ(client.option(kOptGo, ClientScript::go_payload("alpha")), 0u);
    }
  }
  EXPECT_EQ(catalog_->lookups.load(), 0);
  // The same lax client with the right certificate gets in: the refusals above were
  // the server's certificate check, not the lax client.
  Client good(server_->tcp_port());
  ASSERT_TRUE(good.start());
  ASSERT_EQ(good.option(kOptStartTls, ""), kRepAck);
  ASSERT_TRUE(good.upgrade_lax(&client_files));
  EXPECT_EQ(good.option(kOptGo, ClientScript::go_payload("alpha")), kRepAck);
}

TEST_F(NbdTlsServer, UnixSocketAllowsButDoesNotRequireTls) {
  {
    Client plain(pki_.sub("nbd.sock"));
    ASSERT_TRUE(plain.start());
    ASSERT_EQ(plain.option(kOptGo, ClientScript::go_payload("beta")), kRepAck);
    EXPECT_EQ(plain.request(kCmdFlush, 0, 0, {}, nullptr), kNbdOk);
  }
  Client secure(pki_.sub("nbd.sock"));
  ASSERT_TRUE(secure.start());
  ASSERT_EQ(secure.option(kOptStartTls, ""), kRepAck);
  ASSERT_TRUE(secure.upgrade(*client_tls_).ok());
  ASSERT_EQ(secure.option(kOptGo, ClientScript::go_payload("beta")), kRepAck);
  EXPECT_EQ(secure.request(kCmdFlush, 0, 0, {}, nullptr), kNbdOk);
}

TEST(NbdTlsServerOptions, TlsModeWithoutCertificatesIsRefused) {
  testing::ScratchDir dir("nbd-tls-options");
  ServerOptions options;
  options.unix_socket_path = dir.sub("nbd.sock");
  options.tls_mode = TlsMode::kRequire;
  auto server = Server::start(options, std::make_shared<CountingCatalog>());
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("certificate"), std::string::npos);
}

}  // namespace
}  // namespace amirror::nbd
