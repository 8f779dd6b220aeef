// SPDX-License-Identifier: Apache-2.0
// The mirror state file: what each target lacks must survive a round trip, and a file
// from a version that did not track dropped targets must not make one trusted again;
// what a verify found survives too.
#include "node/mirror_state.h"

#include <gtest/gtest.h>

#include "node/mirror_bookkeeping.h"

#include <fstream>

#include "testing/test_support.h"

namespace amirror::node {
namespace {

class MirrorStateTest : public ::testing::Test {
 protected:
  testing::ScratchDir scratch_{"mirror-state"};
  const std::string dir_ = scratch_.path();
};

TEST_F(MirrorStateTest, RoundTripKeepsDroppedTargets) {
  MirrorState state;
  state.unit = "volume:v";
  state.targets = {"c"};
  state.running = true;
  state.target_states["b"].applied_cycle = 4;  // dropped from the targets, still tracked
  state.target_states["b"].pending_chunks = {320, 321};
  state.target_states["c"].applied_cycle = 9;
  ASSERT_TRUE(save_mirror_state(posix_file_system(), dir_, "v", state).ok());
  auto loaded = load_mirror_state(posix_file_system(), dir_ + "/v.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->target_states.at("b").applied_cycle, 4u);
  EXPECT_EQ(loaded->target_states.at("b").pending_chunks.to_set(), (std::set<uint64_t>{320, 321}));
  EXPECT_EQ(loaded->target_states.at("c").applied_cycle, 9u);
}

TEST_F(MirrorStateTest, FormatOneGivesDroppedTargetsAFullCopy) {
  // Written by a version that kept pending chunks only for the listed targets: b
  // may have missed any number of merged layers.
  std::ofstream(dir_ + "/v.json") << R"({"format": 1, "unit": "volume:v", "targets": ["c"], "interval_ms": 1000,
    "running": false, "target_states": {
      "b": {"applied_cycle": 4, "applied_freeze_time_unix_ms": 1, "inflight_cycle": 0, "bytes_sent": 77,
            "pending_chunks": [1]},
      "c": {"applied_cycle": 9, "applied_freeze_time_unix_ms": 2, "inflight_cycle": 0, "bytes_sent": 88,
            "pending_chunks": [2]}}})";
  auto loaded = load_mirror_state(posix_file_system(), dir_ + "/v.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const TargetState& dropped = loaded->target_states.at("b");
  EXPECT_EQ(dropped.applied_cycle, 0u) << "a dropped target of a format-1 file must get a full copy";
  EXPECT_TRUE(dropped.pending_chunks.empty());
  EXPECT_EQ(dropped.bytes_sent, 77u) << "bytes_sent counts what was sent, ever";
  const TargetState& listed = loaded->target_states.at("c");
  EXPECT_EQ(listed.applied_cycle, 9u);
  EXPECT_EQ(listed.pending_chunks.to_set(), (std::set<uint64_t>{2}));
}

// What the last `mirror verify` found survives a restart (status must keep saying
// "differs"); files written before verify existed lack it and read as never verified;
// a full copy forgets it.
TEST_F(MirrorStateTest, VerifyResultRoundTripsAndOlderFilesReadAsNeverVerified) {
  MirrorState state;
  state.unit = "volume:v";
  state.targets = {"b"};
  note_verified(state.target_states["b"], 12, 3);
  ASSERT_TRUE(save_mirror_state(posix_file_system(), dir_, "v", state).ok());
  auto loaded = load_mirror_state(posix_file_system(), dir_ + "/v.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->target_states.at("b").verify_cycle, 12u);
  EXPECT_EQ(loaded->target_states.at("b").verify_differing_chunks, 3u);
  EXPECT_NE(verify_differs_message("v", "b", loaded->target_states.at("b")).find("--repair"), std::string::npos);
  reset_to_full(loaded->target_states.at("b"));
  EXPECT_EQ(loaded->target_states.at("b").verify_differing_chunks, 0u) << "a full copy replaces the differing chunks";

  std::ofstream(dir_ + "/old.json") << R"({"format": 2, "unit": "volume:old", "targets": ["b"], "interval_ms": 1000,
    "running": true, "target_states": {
      "b": {"applied_cycle": 4, "applied_freeze_time_unix_ms": 1, "inflight_cycle": 0, "bytes_sent": 7,
            "pending_chunks": []}}})";
  auto old = load_mirror_state(posix_file_system(), dir_ + "/old.json");
  ASSERT_TRUE(old.ok()) << old.status().to_string();
  EXPECT_EQ(old->target_states.at("b").verify_cycle, 0u);
  EXPECT_EQ(old->target_states.at("b").verify_differing_chunks, 0u);
}

TEST_F(MirrorStateTest, UnknownFormatIsRefused) {
  std::ofstream(dir_ + "/v.json") << R"({"format": 99})";
  auto loaded = load_mirror_state(posix_file_system(), dir_ + "/v.json");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("unknown format 99"), std::string::npos) << loaded.status().message();
}

}  // namespace
}  // namespace amirror::node
