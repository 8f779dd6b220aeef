// SPDX-License-Identifier: Apache-2.0
// The operations keys of [node]: log_level, metrics_listen (+ metrics_allow_remote) and
// lag_alert. Bad values are refused naming the key, and nothing is half-applied.
#include <gtest/gtest.h>

#include "node/config.h"

namespace amirror::node {
namespace {

const std::string kNode = "[node]\nname = \"a\"\ndata_dir = \"/tmp/a\"\ncontrol_socket = \"/tmp/a.sock\"\n";

std::string refusal(const std::string& extra) {
  auto config = parse_node_config(kNode + extra, "node.toml");
  EXPECT_FALSE(config.ok()) << extra;
  return config.ok() ? "" : config.status().message();
}

TEST(NodeConfigOperations, DefaultsAreInfoNoMetricsNoLagAlert) {
  auto config = parse_node_config(kNode, "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->log_level, log::Level::kInfo);
  EXPECT_EQ(config->metrics_listen, "");
  EXPECT_FALSE(config->metrics_allow_remote);
  EXPECT_EQ(config->lag_alert_ms, 0u);
}

TEST(NodeConfigOperations, ParsesEveryKey) {
  auto config = parse_node_config(
      kNode + "log_level = \"debug\"\nmetrics_listen = \"127.0.0.1:9464\"\nlag_alert = \"30s\"\n", "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->log_level, log::Level::kDebug);
  EXPECT_EQ(config->metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(config->lag_alert_ms, 30'000u);
}

TEST(NodeConfigOperations, UnknownLogLevelIsRefusedNamingKeyAndChoices) {
  std::string message = refusal("log_level = \"loud\"\n");
  EXPECT_NE(message.find("'log_level'"), std::string::npos) << message;
  EXPECT_NE(message.find("'loud'"), std::string::npos) << message;
  EXPECT_NE(message.find("trace, debug, info, warn or error"), std::string::npos) << message;
}

TEST(NodeConfigOperations, RemoteMetricsNeedTheOptIn) {
  std::string message = refusal("metrics_listen = \"0.0.0.0:9464\"\n");
  EXPECT_NE(message.find("'metrics_listen'"), std::string::npos) << message;
  EXPECT_NE(message.find("metrics_allow_remote = true"), std::string::npos) << message;
  auto config = parse_node_config(kNode + "metrics_listen = \"0.0.0.0:9464\"\nmetrics_allow_remote = true\n",
                                  "node.toml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_TRUE(config->metrics_allow_remote);
  for (const char* loopback : {"127.0.0.1:0", "localhost:9464", "[::1]:9464"}) {
    EXPECT_TRUE(parse_node_config(kNode + "metrics_listen = \"" + loopback + "\"\n", "node.toml").ok()) << loopback;
  }
}

TEST(NodeConfigOperations, MalformedValuesAreRefusedNamingTheKey) {
  EXPECT_NE(refusal("metrics_listen = \"9464\"\n").find("'metrics_listen' must be HOST:PORT"), std::string::npos);
  EXPECT_NE(refusal("metrics_allow_remote = \"yes\"\n").find("'metrics_allow_remote'"), std::string::npos);
  EXPECT_NE(refusal("lag_alert = \"soon\"\n").find("lag_alert"), std::string::npos);
  EXPECT_NE(refusal("lag_alert = \"10ms\"\n").find("'lag_alert' must be at least 1s"), std::string::npos);
  EXPECT_NE(refusal("log_level = 3\n").find("'log_level' must be a string"), std::string::npos);
}

}  // namespace
}  // namespace amirror::node
