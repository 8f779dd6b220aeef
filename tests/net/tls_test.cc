// SPDX-License-Identifier: Apache-2.0
// TLS sessions over a real socket pair: mutual authentication, identity checks, and
// the refusals a stranger gets (no certificate, another CA, plaintext).
#include "net/tls.h"

#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "net/pki.h"
#include "testing/test_support.h"

namespace amirror::net {
namespace {

constexpr int kTimeoutMs = 10'000;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(make_demo_pki(scratch_.path(), {"node-a", "node-b"}).ok());
    ASSERT_EQ(::mkdir(scratch_.sub("other").c_str(), 0700), 0);
    ASSERT_TRUE(make_demo_pki(scratch_.sub("other"), {"node-a"}).ok());
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds_), 0);
  }
  void TearDown() override {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  std::shared_ptr<TlsContext> context(const std::string& dir, const std::string& name) {
    auto loaded = TlsContext::load(demo_tls_files(dir, name));
    EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
    return loaded.ok() ? loaded.value() : nullptr;
  }
  // Client on fds_[0], server on fds_[1], concurrently.
  std::pair<Result<std::unique_ptr<TlsSession>>, Result<std::unique_ptr<TlsSession>>> handshake(
      const TlsContext& client, const TlsContext& server) {
    auto server_side = std::async(std::launch::async, [&] { return server.accept(fds_[1], "client", kTimeoutMs); });
    auto client_side = client.connect(fds_[0], "server", kTimeoutMs);
    if (!client_side.ok()) ::shutdown(fds_[0], SHUT_RDWR);  // do not leave the server waiting
    auto server_result = server_side.get();
    return {std::move(client_side), std::move(server_result)};
  }

  testing::ScratchDir scratch_{"tls"};
  int fds_[2] = {-1, -1};
};

TEST_F(TlsTest, MutualHandshakeCarriesDataBothWaysAndNamesThePeer) {
  auto client = context(scratch_.path(), "node-a");
  auto server = context(scratch_.path(), "node-b");
  auto [client_session, server_session] = handshake(*client, *server);
  ASSERT_TRUE(client_session.ok()) << client_session.status().to_string();
  ASSERT_TRUE(server_session.ok()) << server_session.status().to_string();
  EXPECT_TRUE(client_session.value()->peer_has_identity("node-b"));
  EXPECT_FALSE(client_session.value()->peer_has_identity("node-a"));
  EXPECT_TRUE(server_session.value()->peer_has_identity("node-a"));
  EXPECT_FALSE(server_session.value()->peer_has_identity("node-"));  // no prefixes
  EXPECT_FALSE(server_session.value()->peer_has_identity(""));
  EXPECT_EQ(server_session.value()->peer_subject(), "CN=node-a");

  // A reader and a writer on one session at the same time, 8 MiB each way.
  std::vector<uint8_t> sent(8 << 20);
  for (size_t i = 0; i < sent.size(); ++i) sent[i] = static_cast<uint8_t>(i * 7 + (i >> 13));
  std::vector<uint8_t> at_server(sent.size()), at_client(sent.size());
  std::thread client_writer([&] { EXPECT_TRUE(client_session.value()->write_all(sent).ok()); });
  std::thread server_writer([&] { EXPECT_TRUE(server_session.value()->write_all(sent).ok()); });
  std::thread client_reader([&] { EXPECT_TRUE(client_session.value()->read_exact(at_client).ok()); });
  EXPECT_TRUE(server_session.value()->read_exact(at_server).ok());
  client_writer.join();
  server_writer.join();
  client_reader.join();
  EXPECT_EQ(at_server, sent);
  EXPECT_EQ(at_client, sent);

  // A closed peer reads as end of stream, not as an error.
  client_session.value()->close_notify();
  ::shutdown(fds_[0], SHUT_RDWR);
  uint8_t byte;
  auto end = server_session.value()->read_some(std::span(&byte, 1));
  ASSERT_TRUE(end.ok()) << end.status().to_string();
  EXPECT_EQ(end.value(), 0u);
}

// Records read ahead sit inside OpenSSL, where poll() cannot see them: a session with
// more to give after a read must say so, or a caller that polls before receiving (the
// mirror engine's readable_now) would wait for bytes that already arrived.
TEST_F(TlsTest, BytesReadAheadAreReportedAsBuffered) {
  auto client = context(scratch_.path(), "node-a");
  auto server = context(scratch_.path(), "node-b");
  auto [client_session, server_session] = handshake(*client, *server);
  ASSERT_TRUE(client_session.ok() && server_session.ok());
  std::vector<uint8_t> first(100, 1), second(100, 2);
  ASSERT_TRUE(client_session.value()->write_all(first).ok());
  ASSERT_TRUE(client_session.value()->write_all(second).ok());
  // Both records are in the socket before the server reads: one read takes them in.
  pollfd waiter{fds_[1], POLLIN, 0};
  ASSERT_EQ(::poll(&waiter, 1, kTimeoutMs), 1);
  std::vector<uint8_t> got(first.size());
  ASSERT_TRUE(server_session.value()->read_exact(got).ok());
  EXPECT_EQ(got, first);
  EXPECT_EQ(::poll(&waiter, 1, 0), 0) << "the socket still held bytes: nothing was read ahead";
  EXPECT_TRUE(server_session.value()->has_buffered_input());
  ASSERT_TRUE(server_session.value()->read_exact(got).ok());
  EXPECT_EQ(got, second);
  EXPECT_FALSE(server_session.value()->has_buffered_input());
}

TEST_F(TlsTest, CertificateFromAnotherCaIsRefused) {
  auto stranger = context(scratch_.sub("other"), "node-a");
  auto server = context(scratch_.path(), "node-b");
  auto [client_session, server_session] = handshake(*stranger, *server);
  // The client refuses the server (unknown CA) and the server refuses the client.
  ASSERT_FALSE(client_session.ok());
  EXPECT_NE(client_session.status().message().find("not trusted"), std::string::npos)
      << client_session.status().message();
  ASSERT_FALSE(server_session.ok());
}

TEST_F(TlsTest, ServerRefusesAClientWithoutCertificate) {
  auto server = context(scratch_.path(), "node-b");
  // A bare client context: trusts the CA but has no certificate of its own.
  SSL_CTX* bare = SSL_CTX_new(TLS_client_method());
  ASSERT_EQ(SSL_CTX_load_verify_locations(bare, scratch_.sub("ca.crt").c_str(), nullptr), 1);
  auto server_side = std::async(std::launch::async, [&] { return server->accept(fds_[1], "client", kTimeoutMs); });
  SSL* ssl = SSL_new(bare);
  SSL_set_fd(ssl, fds_[0]);
  SSL_connect(ssl);  // TLS 1.3: the client finishes before the server checks it
  uint8_t byte;
  SSL_read(ssl, &byte, 1);  // receives the server's alert
  auto server_result = server_side.get();
  ASSERT_FALSE(server_result.ok());
  EXPECT_NE(server_result.status().message().find("did not return a certificate"), std::string::npos)
      << server_result.status().message();
  SSL_free(ssl);
  SSL_CTX_free(bare);
}

TEST_F(TlsTest, PlaintextClientIsToldWhatIsWrong) {
  auto server = context(scratch_.path(), "node-b");
  const char hello[] = "AMF1 plaintext hello";
  ASSERT_EQ(::write(fds_[0], hello, sizeof hello), static_cast<ssize_t>(sizeof hello));
  auto result = server->accept(fds_[1], "client", kTimeoutMs);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("plaintext"), std::string::npos) << result.status().message();
}

TEST_F(TlsTest, SilentPeerTimesOut) {
  auto server = context(scratch_.path(), "node-b");
  auto result = server->accept(fds_[1], "client", 200);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kTimeout);
}

TEST_F(TlsTest, TricklingPeerCannotStretchTheHandshake) {
  auto server = context(scratch_.path(), "node-b");
  // A record header announcing a big ClientHello, then one byte every 50 ms: each wait
  // sees progress, but the handshake as a whole must end at its deadline.
  std::atomic<bool> done{false};
  std::thread trickler([&] {
    const uint8_t header[] = {22, 3, 1, 0x3f, 0xff, 1, 0, 0x3f, 0xfb};
    for (size_t i = 0; !done.load(); ++i) {  // without a deadline, accept() would wait ~14 min
      uint8_t byte = i < sizeof header ? header[i] : 0;
      if (::write(fds_[0], &byte, 1) != 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  auto result = server->accept(fds_[1], "client", 400);
  done = true;
  trickler.join();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kTimeout) << result.status().to_string();
}

TEST_F(TlsTest, LoadNamesTheBadFile) {
  TlsFiles files = demo_tls_files(scratch_.path(), "node-a");
  TlsFiles missing = files;
  missing.key_path = scratch_.sub("absent.key");
  auto result = TlsContext::load(missing);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("absent.key"), std::string::npos);

  TlsFiles mismatched = files;
  mismatched.key_path = scratch_.sub("node-b.key");
  result = TlsContext::load(mismatched);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("does not belong"), std::string::npos) << result.status().message();

  TlsFiles wrong_ca = files;
  wrong_ca.ca_path = scratch_.sub("other/ca.crt");
  result = TlsContext::load(wrong_ca);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("does not verify"), std::string::npos) << result.status().message();
}

}  // namespace
}  // namespace amirror::net
