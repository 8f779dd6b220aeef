// SPDX-License-Identifier: Apache-2.0
// Many requests in flight on one connection (nbd/server.h): replies finished while
// another is being written are handed to that writer and sent with its own, so under
// load several replies share one send, small and large ones interleave, and each must
// still leave whole and carry its own cookie. A real client (libnbd, asynchronous
// API) keeps up to 64 requests in flight and checks every byte against a reference.
#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <vector>

#include "nbd/export.h"
#include "nbd/server.h"
#include "testing/test_support.h"

namespace amirror::nbd {
namespace {

constexpr uint64_t kSize = 16ULL << 20;
constexpr size_t kInFlight = 64;

struct Pending {
  uint64_t offset;
  std::vector<uint8_t> data;  // what a read got, or what a write sent
  bool is_read;
  int64_t cookie;
};

class NbdPipelinedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }  // as `amirror serve` does

  void SetUp() override {
    auto catalog = std::make_shared<StaticCatalog>();
    catalog->add("x", std::make_shared<MemoryExport>(kSize));
    ServerOptions options;
    options.unix_socket_path = dir_.sub("nbd.sock");
    options.quiet = true;
    auto server = Server::start(options, catalog);
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server_ = std::move(*server);
    nbd_ = nbd_create();
    ASSERT_NE(nbd_, nullptr);
    ASSERT_EQ(nbd_set_export_name(nbd_, "x"), 0) << nbd_get_error();
    ASSERT_EQ(nbd_connect_unix(nbd_, options.unix_socket_path.c_str()), 0) << nbd_get_error();
  }
  void TearDown() override {
    if (nbd_ != nullptr) nbd_close(nbd_);
    if (server_) server_->stop();
  }

  // Waits for the oldest request in flight and checks it (a read against `reference`
  // as it was when the read was issued: nothing overlapping is in flight meanwhile).
  void finish_oldest(std::vector<Pending>& in_flight, const std::vector<uint8_t>& reference) {
    Pending& oldest = in_flight.front();
    int done;
    while ((done = nbd_aio_command_completed(nbd_, oldest.cookie)) == 0) {
      ASSERT_NE(nbd_poll(nbd_, -1), -1) << nbd_get_error();
    }
    ASSERT_EQ(done, 1) << "request at " << oldest.offset << ": " << nbd_get_error();
    if (oldest.is_read) {
      ASSERT_EQ(std::memcmp(oldest.data.data(), reference.data() + oldest.offset, oldest.data.size()), 0)
          << "read of " << oldest.data.size() << " bytes at " << oldest.offset << " got other bytes";
    }
    in_flight.erase(in_flight.begin());
  }

  testing::ScratchDir dir_{"nbd-pipelined"};
  std::unique_ptr<Server> server_;
  nbd_handle* nbd_ = nullptr;
};

TEST_F(NbdPipelinedTest, ManyRepliesInFlightEachArriveWholeAndMatched) {
  const uint64_t seed = testing::seeds_to_run(1).front();
  std::cout << "NbdPipelinedTest seed " << seed << " (replay: AMIRROR_SEED=" << seed << ")\n";
  std::mt19937_64 random(seed);
  std::vector<uint8_t> reference(kSize, 0);

  // Writes tile the export in random sizes (512 B .. 256 KiB), up to 64 in flight;
  // then reads of random places and sizes, mostly small (replies that are combined)
  // with some large (replies that wait for the writer), up to 64 in flight.
  std::vector<Pending> in_flight;
  for (uint64_t offset = 0; offset < kSize;) {
    const uint64_t length = std::min<uint64_t>(512 * (1 + random() % 512), kSize - offset);
    Pending write{offset, std::vector<uint8_t>(length), false, 0};
    for (auto& byte : write.data) byte = static_cast<uint8_t>(random());
    std::memcpy(reference.data() + offset, write.data.data(), length);
    in_flight.push_back(std::move(write));
    Pending& issued = in_flight.back();
    issued.cookie = nbd_aio_pwrite(nbd_, issued.data.data(), length, offset, NBD_NULL_COMPLETION, 0);
    ASSERT_NE(issued.cookie, -1) << nbd_get_error();
    offset += length;
    if (in_flight.size() >= kInFlight) finish_oldest(in_flight, reference);
    if (HasFatalFailure()) return;
  }
  while (!in_flight.empty()) {
    finish_oldest(in_flight, reference);
    if (HasFatalFailure()) return;
  }

  for (int i = 0; i < 4000; ++i) {
    const bool large = random() % 10 == 0;
    const uint64_t length = large ? 16384 + random() % (1 << 20) : 1 + random() % 16384;
    const uint64_t offset = random() % (kSize - length);
    in_flight.push_back({offset, std::vector<uint8_t>(length), true, 0});
    Pending& issued = in_flight.back();
    issued.cookie = nbd_aio_pread(nbd_, issued.data.data(), length, offset, NBD_NULL_COMPLETION, 0);
    ASSERT_NE(issued.cookie, -1) << nbd_get_error();
    if (in_flight.size() >= kInFlight) finish_oldest(in_flight, reference);
    if (HasFatalFailure()) return;
  }
  while (!in_flight.empty()) {
    finish_oldest(in_flight, reference);
    if (HasFatalFailure()) return;
  }
  ASSERT_EQ(nbd_shutdown(nbd_, 0), 0) << nbd_get_error();
}

}  // namespace
}  // namespace amirror::nbd
