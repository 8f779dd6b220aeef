// SPDX-License-Identifier: Apache-2.0
// The node config's transport rules: TLS unless plaintext is asked for by name, and
// every refusal names the key to fix.
#include "node/config.h"

#include <gtest/gtest.h>

namespace amirror::node {
namespace {

const std::string kNode =
    "[node]\nname = \"a\"\ndata_dir = \"/tmp/a\"\ncontrol_socket = \"/tmp/a.sock\"\nlisten = \"127.0.0.1:7401\"\n";
const std::string kTls = "\n[tls]\ncertificate = \"a.crt\"\nkey = \"a.key\"\nca = \"ca.crt\"\n";
const std::string kPeer = "\n[[peers]]\nname = \"b\"\naddress = \"127.0.0.1:7402\"\n";

void expect_refused(const std::string& text, const std::string& fragment) {
  auto config = parse_node_config(text, "node.toml");
  ASSERT_FALSE(config.ok()) << text;
  EXPECT_NE(config.status().message().find(fragment), std::string::npos) << config.status().message();
}

TEST(NodeConfig, TlsFilesAndPeerIdentity) {
  auto config = parse_node_config(kNode + kTls + kPeer + "identity = \"b.dr.example\"\n", "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_TRUE(config->has_tls());
  EXPECT_FALSE(config->insecure);
  EXPECT_EQ(config->tls.ca_path, "ca.crt");
  EXPECT_EQ(config->peers.at(0).identity, "b.dr.example");
}

TEST(NodeConfig, PeerVolumesBoundWhatAPeerMaySend) {
  auto config = parse_node_config(kNode + kTls + kPeer + "volumes = [\"db\", \"vm-1\"]\n", "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_TRUE(config->peers.at(0).may_send("db"));
  EXPECT_FALSE(config->peers.at(0).may_send("db2"));
  config = parse_node_config(kNode + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->peers.at(0).may_send("anything"));
  expect_refused(kNode + kTls + kPeer + "volumes = []\n", "'volumes' is empty");
  expect_refused(kNode + kTls + kPeer + "volumes = [\"../x\"]\n", "volume name");
  expect_refused(kNode + kTls + kPeer + "volumes = \"db\"\n", "must be a list");
}

TEST(NodeConfig, MaxTransfers) {
  auto config = parse_node_config(kNode + kTls, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->max_transfers, 16u);
  config = parse_node_config(kNode + "max_transfers = 3\n" + kTls, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->max_transfers, 3u);
  for (const char* bad : {"0", "-1", "\"8\"", "1.5", "5000"}) {
    expect_refused(kNode + "max_transfers = " + bad + "\n" + kTls,
                   "node.toml [node]: 'max_transfers' must be a whole number from 1 to 4096");
  }
}

TEST(NodeConfig, Workers) {
  auto config = parse_node_config(kNode + kTls, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->workers, 4u);
  config = parse_node_config(kNode + "workers = 1\n" + kTls, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->workers, 1u);
  config = parse_node_config(kNode + "workers = 256\n" + kTls, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->workers, 256u);
  for (const char* bad : {"0", "-4", "\"4\"", "2.5", "257", "true"}) {
    expect_refused(kNode + "workers = " + bad + "\n" + kTls, "node.toml [node]: 'workers' must be a whole number from 1 to 256");
  }
}

TEST(NodeConfig, PeerBandwidthLimit) {
  auto config = parse_node_config(kNode + kTls + kPeer + "bandwidth_limit = \"50MB/s\"\n", "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->peers[0].bandwidth_bytes_per_second, 50'000'000u);
  config = parse_node_config(kNode + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->peers[0].bandwidth_bytes_per_second, 0u);  // none
  config = parse_node_config(kNode + kTls + kPeer + "bandwidth_limit = \"50XB/s\"\n", "node.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find(
                "bandwidth_limit: '50XB/s' is not a rate; use e.g. 50MB/s, 1GB/s, 800Mbit/s"),
            std::string::npos)
      << config.status().message();
  config = parse_node_config(kNode + kTls + kPeer + "bandwidth_limit = \"1kB/s\"\n", "node.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("below the lowest limit, 16kB/s"), std::string::npos)
      << config.status().message();
}

TEST(NodeConfig, IdentityDefaultsToThePeerName) {
  auto config = parse_node_config(kNode + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->peers.at(0).identity, "b");
}

TEST(NodeConfig, PlaintextPeersNeedInsecureByName) {
  expect_refused(kNode + kPeer, "peer connections need TLS");
  auto config = parse_node_config(kNode + "\n[tls]\ninsecure = true\n" + kPeer, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_TRUE(config->insecure);
  EXPECT_FALSE(config->has_tls());
}

TEST(NodeConfig, StandaloneNodeNeedsNoTls) {
  auto config = parse_node_config(
      "[node]\nname = \"a\"\ndata_dir = \"/tmp/a\"\ncontrol_socket = \"/tmp/a.sock\"\nnbd_socket = \"/tmp/n.sock\"\n",
      "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
}

TEST(NodeConfig, BadTlsTablesAreRefused) {
  expect_refused(kNode + "\n[tls]\ncertificate = \"a.crt\"\n" + kPeer, "go together");
  expect_refused(kNode + kTls + "insecure = true\n" + kPeer, "turns TLS off");
  expect_refused(kNode + "\n[tls]\ninsecure = \"yes\"\n" + kPeer, "'insecure' must be true or false");
  expect_refused(kNode + kTls + "cert = \"x\"\n" + kPeer, "unknown key 'cert'");
  expect_refused(kNode + kTls + kPeer + "identity = \"../b\"\n", "peer identity");
}

TEST(NodeConfig, NbdTlsRules) {
  expect_refused(kNode + "nbd_tls = \"maybe\"\n" + kTls + kPeer, "'nbd_tls': TLS mode must be");
  expect_refused(kNode + "nbd_tls = \"require\"\n\n[tls]\ninsecure = true\n" + kPeer, "'nbd_tls' needs");
  // A non-loopback NBD listener is refused unless TLS is required there.
  expect_refused(kNode + "nbd_listen = \"0.0.0.0:10809\"\n" + kTls + kPeer, "not a loopback address");
  auto config = parse_node_config(kNode + "nbd_listen = \"0.0.0.0:10809\"\nnbd_tls = \"require\"\n" + kTls + kPeer,
                                  "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->nbd_tls, nbd::TlsMode::kRequire);
  config = parse_node_config(kNode + "nbd_listen = \"127.0.0.1:10809\"\n" + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->nbd_tls, nbd::TlsMode::kOff);
}

TEST(NodeConfig, StoragePools) {
  const std::string pools = "\n[[storage]]\nname = \"fast\"\npath = \"/mnt/ssd/amirror\"\n"
                            "\n[[storage]]\nname = \"bulk\"\npath = \"/mnt/hdd/amirror/\"\n";
  auto config = parse_node_config(kNode + kTls + kPeer + "storage = \"bulk\"\n" + pools, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  ASSERT_EQ(config->storage.size(), 2u);
  EXPECT_EQ(config->storage[0].name, "fast");
  EXPECT_EQ(config->storage_path("default"), "/tmp/a");
  EXPECT_EQ(config->storage_path("bulk"), "/mnt/hdd/amirror/");
  EXPECT_EQ(config->storage_path("nope"), "");
  EXPECT_EQ(config->peers.at(0).storage, "bulk");
  config = parse_node_config(kNode + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->storage.empty());
  EXPECT_EQ(config->peers.at(0).storage, "default");  // replicas in the data directory
}

TEST(NodeConfig, BadStoragePoolsAreRefused) {
  auto pool = [](const std::string& name, const std::string& path) {
    return "\n[[storage]]\nname = \"" + name + "\"\npath = \"" + path + "\"\n";
  };
  expect_refused(kNode + pool("a", "/x") + pool("a", "/y"), "[[storage]] #2: storage 'a' is listed twice");
  expect_refused(kNode + pool("default", "/x"), "the name 'default' is the data directory's pool");
  expect_refused(kNode + pool("../up", "/x"), "storage name");
  expect_refused(kNode + "\n[[storage]]\nname = \"a\"\n", "[[storage]] #1: missing required key 'path'");
  expect_refused(kNode + pool("a", ""), "'path' must not be empty");
  expect_refused(kNode + pool("a", "/tmp/a/"), "path /tmp/a/ is the data_dir");
  expect_refused(kNode + pool("a", "/x/y") + pool("b", "/x//y/"), "is the path of storage 'a' too");
  expect_refused(kNode + pool("a", "/x") + "size = \"1G\"\n", "[[storage]] #1: unknown key 'size'");
  expect_refused(kNode + "storage = \"a\"\n", "[node]: unknown key 'storage'");
  expect_refused("storage = 1\n" + kNode, "must be an array of tables");
  expect_refused(kNode + kTls + kPeer + "storage = \"nope\"\n" + pool("a", "/x"),
                 "[[peers]] #1: storage 'nope' is not a pool of this node (known: default, a)");
}

TEST(NodeConfig, ReplicaDeviceDir) {
  auto config = parse_node_config(kNode + kTls + kPeer + "replica_device_dir = \"/dev/vg_dr\"\n", "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->peers.at(0).replica_device_dir, "/dev/vg_dr");
  config = parse_node_config(kNode + kTls + kPeer, "node.toml");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->peers.at(0).replica_device_dir, "");  // replicas in base.img files
  expect_refused(kNode + kTls + kPeer + "replica_device_dir = \"dev/vg\"\n",
                 "[[peers]] #1: 'replica_device_dir' must be an absolute path");
  expect_refused(kNode + kTls + kPeer + "replica_device_dir = \"\"\n", "'replica_device_dir' must be an absolute path");
  expect_refused(kNode + kTls + kPeer + "replica_device_dir = 3\n", "'replica_device_dir' must be a string");
}

}  // namespace
}  // namespace amirror::node
