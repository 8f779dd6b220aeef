// SPDX-License-Identifier: Apache-2.0
// Env parts for tests that drive whole nodes (node/env.h) without sleeping:
//  - ManualClock: time moves only when the test calls advance(); threads waiting for
//    a deadline wake when it is reached. wait_until_quiet() tells the test when every
//    thread it expects is asleep again, so "nothing happened" is checked by state,
//    not by waiting some real time.
//  - SeededRandom: the same seed, the same choices.
//  - CountedThreads: counts threads started and still running, so a test checks that
//    a stopped node left none behind.
// Thread-safety: all methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>

#include "base/env.h"

namespace amirror::testing {

class ManualClock final : public Clock {
 public:
  ManualClock();
  TimePoint now() override;
  int64_t unix_ms() override;
  // Returns true when notified, false when `deadline` is reached by advance(). Real
  // time only bounds how quickly a sleeper notices a new time (a short poll).
  bool wait_until(CondVar& changed, MutexLock& lock, TimePoint deadline) override;

  void advance(std::chrono::milliseconds step);
  // Waits (in real time, at most `real_timeout`) until exactly `sleepers` threads wait
  // in wait_until and none of them is due, i.e. every thread woken by the last
  // advance() has done its work and gone back to sleep. False on timeout.
  bool wait_until_quiet(size_t sleepers, std::chrono::milliseconds real_timeout);
  // Calls of wait_until so far: a thread that loops without sleeping shows here.
  uint64_t waits() const { return waits_.load(); }

 private:
  mutable std::mutex mutex_;
  std::chrono::milliseconds offset_{0};
  uint64_t next_sleeper_id_ = 0;
  std::map<uint64_t, TimePoint> sleepers_;  // id -> deadline
  std::atomic<uint64_t> waits_{0};
  const TimePoint start_;
  const int64_t start_unix_ms_;
};

class SeededRandom final : public RandomSource {
 public:
  explicit SeededRandom(uint64_t seed) : engine_(seed) {}
  uint64_t uniform(uint64_t bound) override;

 private:
  std::mutex mutex_;
  std::mt19937_64 engine_;
};

class CountedThreads final : public Threads {
 public:
  std::thread start(std::function<void()> body) override;
  uint64_t started() const { return started_.load(); }
  uint64_t running() const { return running_.load(); }

 private:
  std::atomic<uint64_t> started_{0};
  std::atomic<uint64_t> running_{0};
};

}  // namespace amirror::testing
