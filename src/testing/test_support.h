// SPDX-License-Identifier: Apache-2.0
// Small helpers shared by the store tests: scratch directories, deterministic random
// numbers and data, and the seed/long-mode knobs read from the environment.
// Thread-safety: ScratchDir and Random are not shared between threads.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace amirror::testing {

// A fresh directory <parent>/amirror-test-<tag>-XXXXXX, removed with its contents on
// destruction (unless AMIRROR_KEEP_SCRATCH is set, to inspect a failure). The parent is
// /tmp, or with in_memory set /dev/shm when it exists: tests whose durability is
// simulated by FaultFileSystem run there, because ext4 forces write-back on
// rename-over and truncate (auto_da_alloc), which made them I/O bound.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag, bool in_memory = false);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Seeded pseudo-random numbers; the same seed gives the same sequence everywhere.
class Random {
 public:
  explicit Random(uint64_t seed) : engine_(seed) {}
  uint64_t next() { return engine_(); }
  // Uniform in [low, high] (inclusive).
  uint64_t uniform(uint64_t low, uint64_t high) {
    return std::uniform_int_distribution<uint64_t>(low, high)(engine_);
  }
  // True with probability percent / 100.
  bool percent(uint64_t percent) { return uniform(0, 99) < percent; }
  void fill(std::span<uint8_t> out);

 private:
  std::mt19937_64 engine_;
};

// The environment knobs: AMIRROR_LONG=1 selects long mode, AMIRROR_SEED=n replays one
// seed. env_seed() returns false when AMIRROR_SEED is unset.
bool long_mode();
bool env_seed(uint64_t* seed);
// Reads an unsigned integer from the environment, or returns `fallback`.
uint64_t env_uint(const char* name, uint64_t fallback);
// The seeds a model-based test runs: AMIRROR_SEED alone (on shard 0) when set, else
// AMIRROR_SEEDS seeds (default `default_count`) from AMIRROR_FIRST_SEED (1), every
// shard_count-th one starting at `shard`.
std::vector<uint64_t> seeds_to_run(uint64_t default_count, uint64_t shard = 0, uint64_t shard_count = 1);

}  // namespace amirror::testing
