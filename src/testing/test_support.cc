// SPDX-License-Identifier: Apache-2.0
#include "testing/test_support.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "base/assert.h"

namespace amirror::testing {

ScratchDir::ScratchDir(const std::string& tag, bool in_memory) {
  std::error_code ignored;
  std::string parent = in_memory && std::filesystem::is_directory("/dev/shm", ignored) ? "/dev/shm" : "/tmp";
  std::string pattern = parent + "/amirror-test-" + tag + "-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  AMIRROR_ASSERT(::mkdtemp(buffer.data()) != nullptr);
  path_ = buffer.data();
}

ScratchDir::~ScratchDir() {
  if (std::getenv("AMIRROR_KEEP_SCRATCH") != nullptr) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void Random::fill(std::span<uint8_t> out) {
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    uint64_t word = engine_();
    std::memcpy(out.data() + i, &word, 8);
  }
  if (i < out.size()) {
    uint64_t word = engine_();
    std::memcpy(out.data() + i, &word, out.size() - i);
  }
}

bool long_mode() {
  const char* value = std::getenv("AMIRROR_LONG");
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

uint64_t env_uint(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0') return fallback;
  return std::strtoull(value, nullptr, 0);
}

bool env_seed(uint64_t* seed) {
  const char* value = std::getenv("AMIRROR_SEED");
  if (value == nullptr || value[0] == '\0') return false;
  *seed = std::strtoull(value, nullptr, 0);
  return true;
}

std::vector<uint64_t> seeds_to_run(uint64_t default_count, uint64_t shard, uint64_t shard_count) {
  std::vector<uint64_t> seeds;
  uint64_t replay_seed = 0;
  if (env_seed(&replay_seed)) {
    if (shard == 0) seeds.push_back(replay_seed);
    return seeds;
  }
  const uint64_t seed_count = env_uint("AMIRROR_SEEDS", default_count);
  const uint64_t first_seed = env_uint("AMIRROR_FIRST_SEED", 1);
  for (uint64_t seed = first_seed + shard; seed < first_seed + seed_count; seed += shard_count) seeds.push_back(seed);
  return seeds;
}

}  // namespace amirror::testing
