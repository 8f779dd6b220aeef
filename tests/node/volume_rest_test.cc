// SPDX-License-Identifier: Apache-2.0
// Idle volumes rest (node/volume_entry.h): a volume nobody uses has no file open; an
// NBD client, a running mirror or a command opens it, and it closes again once the
// last of them is done. Real node, real files, real NBD over a Unix socket (libnbd).
#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "node/node.h"
#include "node/volume_entry.h"
#include "testing/test_support.h"

namespace amirror::node {
namespace {

using nlohmann::json;

// Bound on waiting for a disconnect to be noticed (the NBD connection thread ends
// asynchronously); the wait ends as soon as the state is seen.
constexpr auto kGenerousWait = std::chrono::seconds(60);

json call(Node& node, const json& request) { return json::parse(node.handle_control(request.dump())); }

// Descriptors of this process that point into `dir` (the node runs in-process).
int files_open_under(const std::string& dir) {
  int count = 0;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    std::string target = std::filesystem::read_symlink(fd.path(), error).string();
    if (!error && target.starts_with(dir + "/")) ++count;
  }
  return count;
}

template <class Done>
bool wait_until(Done done) {
  auto deadline = std::chrono::steady_clock::now() + kGenerousWait;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

class VolumeRest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }
  void start() {
    NodeConfig config;
    config.name = "a";
    config.data_dir = scratch_.sub("data");
    config.nbd_socket = scratch_.sub("nbd.sock");
    config.insecure = true;
    // A peer nothing listens at: a mirror to it runs (and retries) without a target.
    config.peers.push_back(PeerConfig{"b", "127.0.0.1:1", "b", {}});
    auto started = Node::start(config);
    ASSERT_TRUE(started.ok()) << started.status().to_string();
    node_ = std::move(started).value();
  }
  nbd_handle* connect(const std::string& name) {
    nbd_handle* nbd = nbd_create();
    EXPECT_NE(nbd, nullptr);
    EXPECT_EQ(nbd_set_export_name(nbd, name.c_str()), 0) << nbd_get_error();
    EXPECT_EQ(nbd_connect_unix(nbd, scratch_.sub("nbd.sock").c_str()), 0) << nbd_get_error();
    return nbd;
  }
  bool is_open(const std::string& name) { return node_->find_volume(name)->is_open(); }
  // Where volume files live (the data directory's own lock file stays open).
  std::string data() const { return scratch_.sub("data") + "/volumes"; }

  testing::ScratchDir scratch_{"volume-rest"};
  std::unique_ptr<Node> node_;
};

TEST_F(VolumeRest, NewVolumeHasNoFileOpen) {
  json created = call(*node_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", 1 << 20}});
  ASSERT_TRUE(created["ok"]) << created.dump();
  EXPECT_FALSE(is_open("v"));
  EXPECT_EQ(files_open_under(data()), 0);
  // Status tells the truth about a resting volume without opening it.
  json status = call(*node_, {{"command", "status"}});
  ASSERT_EQ(status["volumes"].size(), 1u);
  EXPECT_EQ(status["volumes"][0]["size_bytes"], 1 << 20);
  EXPECT_EQ(status["volumes"][0]["chunk_size_bytes"], kDefaultChunkSizeBytes);
  EXPECT_EQ(status["volumes"][0]["role"], "primary");
  EXPECT_EQ(status["volumes"][0]["open"], false);
  EXPECT_EQ(status["volumes"][0]["spare_bytes"], 0);  // no layer merged yet
  EXPECT_GT(status["open_files"]["count"].get<uint64_t>(), 0u);
  EXPECT_FALSE(is_open("v"));
}

TEST_F(VolumeRest, NbdClientOpensItAndItRestsAfterDisconnect) {
  ASSERT_TRUE(call(*node_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", 1 << 20}})["ok"]);
  ASSERT_TRUE(call(*node_, {{"command", "volume_create"}, {"name", "idle"}, {"size_bytes", 1 << 20}})["ok"]);
  std::vector<char> written(65536 + 4096);
  for (size_t i = 0; i < written.size(); ++i) written[i] = static_cast<char>(i * 7 + 1);

  nbd_handle* nbd = connect("v");
  EXPECT_TRUE(is_open("v"));
  EXPECT_FALSE(is_open("idle"));  // only the one in use
  EXPECT_GE(files_open_under(data()), 3);
  ASSERT_EQ(nbd_pwrite(nbd, written.data(), written.size(), 4096, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_flush(nbd, 0), 0) << nbd_get_error();
  EXPECT_EQ(call(*node_, {{"command", "status"}})["volumes"][1]["open"], true);  // sorted: idle, v
  nbd_close(nbd);
  ASSERT_TRUE(wait_until([&] { return !is_open("v"); })) << "the volume stayed open after its client left";
  EXPECT_EQ(files_open_under(data()), 0);

  // What was written before the rest reads back after it (reopened by the next client).
  nbd = connect("v");
  std::vector<char> read(written.size());
  ASSERT_EQ(nbd_pread(nbd, read.data(), read.size(), 4096, 0), 0) << nbd_get_error();
  EXPECT_EQ(read, written);
  nbd_close(nbd);
  ASSERT_TRUE(wait_until([&] { return !is_open("v"); }));

  // And after a restart of the node (volumes open for recovery, then rest).
  node_->stop();
  node_.reset();
  start();
  EXPECT_FALSE(is_open("v"));
  EXPECT_EQ(files_open_under(data()), 0);
  nbd = connect("v");
  std::fill(read.begin(), read.end(), 0);
  ASSERT_EQ(nbd_pread(nbd, read.data(), read.size(), 4096, 0), 0) << nbd_get_error();
  EXPECT_EQ(read, written);
  nbd_close(nbd);
}

TEST_F(VolumeRest, MirroredVolumeStaysOpenUntilBroken) {
  ASSERT_TRUE(call(*node_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", 1 << 20}})["ok"]);
  json started = call(*node_, {{"command", "mirror_start"}, {"volume", "v"}, {"targets", {"b"}}, {"interval_ms", 600000}});
  ASSERT_TRUE(started["ok"]) << started.dump();
  EXPECT_TRUE(is_open("v"));
  // A client coming and going does not close a volume its mirror uses.
  nbd_close(connect("v"));
  EXPECT_TRUE(is_open("v"));
  // Still open after a restart: the mirror resumes with it.
  node_->stop();
  node_.reset();
  start();
  EXPECT_TRUE(is_open("v"));
  ASSERT_TRUE(call(*node_, {{"command", "mirror_break"}, {"volume", "v"}})["ok"]);
  EXPECT_FALSE(is_open("v"));
  EXPECT_EQ(files_open_under(data()), 0);
}

TEST_F(VolumeRest, CommandsOnARestingVolumeOpenItForTheirDuration) {
  ASSERT_TRUE(call(*node_, {{"command", "volume_create"}, {"name", "v"}, {"size_bytes", 1 << 20}})["ok"]);
  json resized = call(*node_, {{"command", "volume_resize"}, {"name", "v"}, {"size_bytes", 2 << 20}});
  ASSERT_TRUE(resized["ok"]) << resized.dump();
  EXPECT_EQ(resized["size_bytes"], 2 << 20);
  EXPECT_FALSE(is_open("v"));
  EXPECT_EQ(call(*node_, {{"command", "status"}})["volumes"][0]["size_bytes"], 2 << 20);
  json demoted = call(*node_, {{"command", "volume_demote"}, {"name", "v"}});
  ASSERT_TRUE(demoted["ok"]) << demoted.dump();
  EXPECT_FALSE(is_open("v"));
  EXPECT_EQ(call(*node_, {{"command", "status"}})["volumes"][0]["role"], "demoted");
  ASSERT_TRUE(call(*node_, {{"command", "volume_delete"}, {"name", "v"}})["ok"]);
  EXPECT_EQ(files_open_under(data()), 0);
}

TEST(OpenFileBudget, RefusesWithTheLimitNamed) {
  // Asking for more descriptors than any limit allows names RLIMIT_NOFILE and LimitNOFILE.
  Status refused = check_open_files("volume 'x'", uint64_t{1} << 40);
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_cur == RLIM_INFINITY) GTEST_SKIP() << "no open file limit here";
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("RLIMIT_NOFILE"), std::string::npos) << refused.message();
  EXPECT_NE(refused.message().find("LimitNOFILE="), std::string::npos) << refused.message();
  EXPECT_TRUE(check_open_files("volume 'x'", 1).ok());
  EXPECT_GT(open_file_count(), 0u);
}

}  // namespace
}  // namespace amirror::node
