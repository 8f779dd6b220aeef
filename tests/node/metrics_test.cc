// SPDX-License-Identifier: Apache-2.0
// NodeMetrics without its HTTP endpoint: the series made from a status document, the
// NBD hooks, and the event hooks, as /metrics would serve them.
#include "node/metrics.h"

#include <gtest/gtest.h>

#include "nbd/protocol.h"
#include "nbd/server.h"

namespace amirror::node {
namespace {

const char* kStatus = R"({"ok": true, "node": "site-a", "lag_alert_seconds": 30,
  "volumes": [{"name": "db", "state": "ok", "size_bytes": 1048576, "cycle": 7,
               "layers": [{"id": 7, "frozen": true, "chunks": 2, "data_bytes": 131072},
                          {"id": 8, "frozen": false, "chunks": 1, "data_bytes": 65536}],
               "mirrors": [{"target": "site-b", "state": "idle", "applied_cycle": 7, "lag_seconds": 42.5,
                            "lag_alert": true, "bytes_pending": 0, "bytes_sent": 123456}]},
              {"name": "broken", "state": "failed", "cycle": null, "mirrors": []}],
  "replicas": [{"source": "site-x", "volume": "logs", "applied_cycle": 3, "state": "idle",
                "points": [{"cycle": 2}, {"cycle": 3}]}]})";

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}

TEST(NodeMetrics, SeriesFromTheStatusDocument) {
  auto metrics = NodeMetrics::without_endpoint([] { return std::string(kStatus); });
  std::string text = metrics->text();
  for (const char* line : {
           R"(amirror_node_info{node="site-a"} 1)",
           R"(amirror_node_lag_alert_seconds 30)",
           R"(amirror_volume_cycle{volume="db"} 7)",
           R"(amirror_volume_layers{volume="db"} 2)",
           R"(amirror_volume_layer_bytes{volume="db"} 196608)",
           R"(amirror_volume_state{volume="broken",state="failed"} 1)",
           R"(amirror_volume_state{volume="db",state="ok"} 1)",
           R"(amirror_mirror_applied_cycle{volume="db",target="site-b"} 7)",
           R"(amirror_mirror_lag_seconds{volume="db",target="site-b"} 42.5)",
           R"(amirror_mirror_lag_alert{volume="db",target="site-b"} 1)",
           R"(amirror_mirror_pending_bytes{volume="db",target="site-b"} 0)",
           R"(amirror_mirror_sent_bytes_total{volume="db",target="site-b"} 123456)",
           R"(amirror_mirror_state{volume="db",target="site-b",state="idle"} 1)",
           R"(amirror_mirror_state{volume="db",target="site-b",state="copying"} 0)",
           R"(amirror_replica_applied_cycle{source="site-x",volume="logs"} 3)",
           R"(amirror_replica_points{source="site-x",volume="logs"} 2)",
       }) {
    EXPECT_TRUE(has_line(text, line)) << line << "\nnot in:\n" << text;
  }
  EXPECT_EQ(text.find(R"(amirror_volume_cycle{volume="broken"})"), std::string::npos) << text;
  EXPECT_NE(text.find("\nprocess_resident_memory_bytes "), std::string::npos);
  EXPECT_NE(text.find("\nprocess_open_fds "), std::string::npos);
  EXPECT_NE(text.find("\nprocess_start_time_seconds "), std::string::npos);
}

TEST(NodeMetrics, NbdTrafficByExportAndLatencyByCommand) {
  auto metrics = NodeMetrics::without_endpoint([] { return std::string(R"({"ok": true, "node": "n"})"); });
  std::shared_ptr<nbd::ServerObserver> observer = metrics->nbd_observer();
  observer->on_connection_open();
  std::shared_ptr<nbd::ExportObserver> db = observer->for_export("db");
  db->on_request(nbd::kCmdWrite, 4096, 0.0002);
  db->on_request(nbd::kCmdWrite, 512, 0.003);
  db->on_request(nbd::kCmdRead, 65536, 0.00005);
  db->on_request(nbd::kCmdFlush, 0, 0.02);
  observer->for_export("db")->on_request(nbd::kCmdRead, 100, 0.00005);  // same counters
  std::string text = metrics->text();
  for (const char* line : {
           R"(amirror_nbd_connections 1)",
           R"(amirror_nbd_connections_total 1)",
           R"(amirror_volume_write_bytes_total{volume="db"} 4608)",
           R"(amirror_volume_write_ops_total{volume="db"} 2)",
           R"(amirror_volume_read_bytes_total{volume="db"} 65636)",
           R"(amirror_volume_read_ops_total{volume="db"} 2)",
           R"(amirror_nbd_request_duration_seconds_count{command="write"} 2)",
           R"(amirror_nbd_request_duration_seconds_bucket{command="write",le="0.00025"} 1)",
           R"(amirror_nbd_request_duration_seconds_bucket{command="write",le="+Inf"} 2)",
           R"(amirror_nbd_request_duration_seconds_count{command="flush"} 1)",
           R"(amirror_nbd_request_duration_seconds_count{command="read"} 2)",
       }) {
    EXPECT_TRUE(has_line(text, line)) << line << "\nnot in:\n" << text;
  }
  observer->on_connection_close();
  EXPECT_TRUE(has_line(metrics->text(), "amirror_nbd_connections 0"));
}

TEST(NodeMetrics, EventHooks) {
  auto metrics = NodeMetrics::without_endpoint([] { return std::string(R"({"ok": true, "node": "n"})"); });
  metrics->observe_freeze_stall("db", 0.0003);
  metrics->observe_cycle("db", "site-b", 1.2);
  metrics->count_mirror_error("db", "site-b", transfer_error_kind(ErrorCode::kTimeout));
  metrics->count_mirror_error("db", "site-b", transfer_error_kind(ErrorCode::kTimeout));
  metrics->count_mirror_error("db", "", "merge");
  metrics->observe_apply("site-x", "logs", 0.4);
  std::string text = metrics->text();
  for (const char* line : {
           R"(amirror_volume_freeze_stall_seconds_count{volume="db"} 1)",
           R"(amirror_mirror_cycle_duration_seconds_count{target="site-b",volume="db"} 1)",
           R"(amirror_mirror_errors_total{kind="timeout",target="site-b",volume="db"} 2)",
           R"(amirror_mirror_errors_total{kind="merge",target="",volume="db"} 1)",
           R"(amirror_replica_apply_duration_seconds_count{source="site-x",volume="logs"} 1)",
       }) {
    EXPECT_TRUE(has_line(text, line)) << line << "\nnot in:\n" << text;
  }
}

TEST(NodeMetrics, EndpointOnAPortInUseIsAnErrorNamingTheAddress) {
  auto first = NodeMetrics::start({"127.0.0.1:0", [] { return std::string("{}"); }});
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  ASSERT_NE(first.value()->port(), 0);
  std::string taken = "127.0.0.1:" + std::to_string(first.value()->port());
  auto second = NodeMetrics::start({taken, [] { return std::string("{}"); }});
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(taken), std::string::npos) << second.status().message();
}

}  // namespace
}  // namespace amirror::node
