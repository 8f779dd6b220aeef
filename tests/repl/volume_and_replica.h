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

  void SetUp() override { start_with(volume_bytes_, "v", "r"); }

  // A fresh source volume of `size_bytes` in scratch directory `volume_dir` and its
  // empty replica in `replica_dir`.
  void start_with(uint64_t size_bytes, const std::string& volume_dir, const std::string& replica_dir) {
    ASSERT_TRUE(posix_file_system().make_dir(scratch_.sub(volume_dir)).ok());
    ASSERT_TRUE(posix_file_system().make_dir(scratch_.sub(replica_dir)).ok());
    VolumeOptions options;
    options.size_bytes = size_bytes;
    options.chunk_size_bytes = chunk_bytes_;
    auto volume = Volume::create(posix_file_system(), scratch_.sub(volume_dir), options);
    ASSERT_TRUE(volume.ok()) << volume.status().to_string();
    volume_ = std::move(volume).value();
    auto replica = Replica::open_or_create(posix_file_system(), scratch_.sub(replica_dir), "a", "v", size_bytes,
                                           chunk_bytes_);
    ASSERT_TRUE(replica.ok()) << replica.status().to_string();
    replica_ = std::move(replica).value();
  }

  // Writes random data over `chunks` (the volume's last one clipped at its end) and
  // freezes; returns the new cycle.
  uint64_t write_and_freeze(std::initializer_list<uint64_t> chunks) {
    for (uint64_t chunk : chunks) {
      std::vector<uint8_t> data(std::min(chunk_bytes_, volume_->size_bytes() - chunk * chunk_bytes_));
      random_.fill(data);
      EXPECT_TRUE(volume_->write(chunk * chunk_bytes_, data).ok());
    }
    auto cycle = volume_->freeze();
    EXPECT_TRUE(cycle.ok());
    return cycle.value();
  }

  // The replica is at `point` and reads as that freeze point, byte for byte (at the
  // volume's size now: a grown source's replica must have grown too).
  void expect_replica_equals(uint64_t point) {
    ASSERT_EQ(replica_->size_bytes(), volume_->size_bytes());
    std::vector<uint8_t> expected(volume_->size_bytes()), actual(volume_->size_bytes());
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
