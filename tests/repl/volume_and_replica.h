// SPDX-License-Identifier: Apache-2.0
// A fixture for the peer-protocol tests (sessions_test.cc, verify_test.cc): a source
// volume and an empty replica of it side by side in an in-memory scratch directory,
// with helpers to write and freeze, and to compare the replica with a freeze point.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "repl/replica.h"
#include "store/volume.h"
#include "testing/test_support.h"

namespace amirror::repl {

class VolumeAndReplicaTest : public ::testing::Test {
 protected:
  VolumeAndReplicaTest(const std::string& tag, uint64_t volume_bytes, uint64_t chunk_bytes, uint64_t seed)
      : volume_bytes_(volume_bytes), chunk_bytes_(chunk_bytes), scratch_(tag, /*in_memory=*/true), random_(seed) {}

  void SetUp() override {
    ASSERT_TRUE(posix_file_system().make_dir(scratch_.sub("v")).ok());
    ASSERT_TRUE(posix_file_system().make_dir(scratch_.sub("r")).ok());
    VolumeOptions options;
    options.size_bytes = volume_bytes_;
    options.chunk_size_bytes = chunk_bytes_;
    auto volume = Volume::create(posix_file_system(), scratch_.sub("v"), options);
    ASSERT_TRUE(volume.ok()) << volume.status().to_string();
    volume_ = std::move(volume).value();
    auto replica = Replica::open_or_create(posix_file_system(), scratch_.sub("r"), "a", "v", volume_bytes_, chunk_bytes_);
    ASSERT_TRUE(replica.ok()) << replica.status().to_string();
    replica_ = std::move(replica).value();
  }

  // Writes random data over `chunks` (the volume's last one clipped at its end) and
  // freezes; returns the new cycle.
  uint64_t write_and_freeze(std::initializer_list<uint64_t> chunks) {
    for (uint64_t chunk : chunks) {
      std::vector<uint8_t> data(std::min(chunk_bytes_, volume_bytes_ - chunk * chunk_bytes_));
      random_.fill(data);
      EXPECT_TRUE(volume_->write(chunk * chunk_bytes_, data).ok());
    }
    auto cycle = volume_->freeze();
    EXPECT_TRUE(cycle.ok());
    return cycle.value();
  }

  // The replica is at `point` and reads as that freeze point, byte for byte.
  void expect_replica_equals(uint64_t point) {
    std::vector<uint8_t> expected(volume_bytes_), actual(volume_bytes_);
    ASSERT_TRUE(volume_->read_frozen(point, 0, expected).ok());
    ASSERT_TRUE(replica_->read(0, actual).ok());
    EXPECT_EQ(replica_->state().applied_cycle, point);
    EXPECT_TRUE(expected == actual) << "replica differs from freeze point " << point;
  }

  const uint64_t volume_bytes_;
  const uint64_t chunk_bytes_;
  testing::ScratchDir scratch_;
  testing::Random random_;
  std::unique_ptr<Volume> volume_;
  std::shared_ptr<Replica> replica_;
};

}  // namespace amirror::repl
