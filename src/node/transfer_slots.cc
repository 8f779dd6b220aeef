// SPDX-License-Identifier: Apache-2.0
#include "node/transfer_slots.h"

#include <algorithm>

#include "base/assert.h"

namespace amirror::node {

TransferSlots::TransferSlots(uint32_t max_transfers) : max_(max_transfers) { AMIRROR_ASSERT(max_ >= 1); }

bool TransferSlots::try_acquire(const Waiter& waiter, Wake wake) {
  MutexLock lock(mutex_);
  if (granted_.erase(waiter) == 1) return true;  // counted in in_use_ when granted
  bool is_queued = std::any_of(queue_.begin(), queue_.end(), [&](const auto& item) { return item.first == waiter; });
  if (!is_queued && queue_.empty() && in_use_ < max_) {
    in_use_ += 1;
    return true;
  }
  if (!is_queued) queue_.emplace_back(waiter, std::move(wake));
  return false;
}

void TransferSlots::hand_on_locked() {
  // REQUIRES: one slot counted in in_use_ is to be given away.
  if (queue_.empty()) {
    AMIRROR_ASSERT(in_use_ > 0);
    in_use_ -= 1;
    return;
  }
  auto [waiter, wake] = std::move(queue_.front());
  queue_.pop_front();
  granted_.insert(waiter);
  // Needs no engine lock: a wake during the engine's round runs another right after.
  wake();
}

void TransferSlots::release() {
  MutexLock lock(mutex_);
  hand_on_locked();
}

void TransferSlots::cancel(const void* engine) {
  MutexLock lock(mutex_);
  std::erase_if(queue_, [&](const auto& item) { return item.first.engine == engine; });
  for (auto granted = granted_.begin(); granted != granted_.end();) {
    if (granted->engine != engine) {
      ++granted;
      continue;
    }
    granted = granted_.erase(granted);
    hand_on_locked();
  }
}

bool TransferSlots::queued(const Waiter& waiter) const {
  MutexLock lock(mutex_);
  return std::any_of(queue_.begin(), queue_.end(), [&](const auto& item) { return item.first == waiter; });
}

uint32_t TransferSlots::in_use() const {
  MutexLock lock(mutex_);
  return in_use_;
}

}  // namespace amirror::node
