// SPDX-License-Identifier: Apache-2.0
#include "testing/manual_env.h"

#include <thread>

namespace amirror::testing {
namespace {

// How often a sleeper looks at the manual time: it bounds only how fast a test runs,
// never what it sees.
constexpr auto kPoll = std::chrono::milliseconds(2);

}  // namespace

// An arbitrary, fixed epoch: 2027-01-15, so freeze times look like real ones.
ManualClock::ManualClock() : start_(std::chrono::steady_clock::time_point{} + std::chrono::hours(1)), start_unix_ms_(1'800'000'000'000) {}

Clock::TimePoint ManualClock::now() {
  std::lock_guard lock(mutex_);
  return start_ + offset_;
}

int64_t ManualClock::unix_ms() {
  std::lock_guard lock(mutex_);
  return start_unix_ms_ + offset_.count();
}

bool ManualClock::wait_until(CondVar& changed, MutexLock& lock, TimePoint deadline) {
  waits_.fetch_add(1);
  uint64_t id;
  {
    std::lock_guard guard(mutex_);
    if (start_ + offset_ >= deadline) return false;
    id = next_sleeper_id_++;
    sleepers_[id] = deadline;
  }
  // The caller checked its condition under `lock`, which it holds now: a notification
  // after this count is one it must not miss, even if it came between two polls.
  const uint64_t notifications = changed.notifications();
  bool notified = false;
  while (true) {
    if (changed.wait_until(lock, std::chrono::steady_clock::now() + kPoll) ||
        changed.notifications() != notifications) {
      notified = true;
      break;
    }
    std::lock_guard guard(mutex_);
    if (start_ + offset_ >= deadline) break;
  }
  std::lock_guard guard(mutex_);
  sleepers_.erase(id);
  return notified;
}

void ManualClock::advance(std::chrono::milliseconds step) {
  std::lock_guard lock(mutex_);
  offset_ += step;
}

bool ManualClock::wait_until_quiet(size_t sleepers, std::chrono::milliseconds real_timeout) {
  auto give_up = std::chrono::steady_clock::now() + real_timeout;
  // Quiet must hold on two looks a poll apart: a thread between two waits is in
  // neither, and one look could catch the count right as it passes through.
  int quiet_looks = 0;
  while (std::chrono::steady_clock::now() < give_up) {
    bool quiet;
    {
      std::lock_guard lock(mutex_);
      TimePoint now = start_ + offset_;
      quiet = sleepers_.size() == sleepers;
      for (const auto& [id, deadline] : sleepers_) quiet = quiet && deadline > now;
    }
    quiet_looks = quiet ? quiet_looks + 1 : 0;
    if (quiet_looks >= 3) return true;
    std::this_thread::sleep_for(kPoll * 2);
  }
  return false;
}

uint64_t SeededRandom::uniform(uint64_t bound) {
  AMIRROR_ASSERT(bound > 0);
  std::lock_guard lock(mutex_);
  return std::uniform_int_distribution<uint64_t>(0, bound - 1)(engine_);
}

std::thread CountedThreads::start(std::function<void()> body) {
  started_.fetch_add(1);
  running_.fetch_add(1);
  return std::thread([this, body = std::move(body)] {
    body();
    running_.fetch_sub(1);
  });
}

}  // namespace amirror::testing
