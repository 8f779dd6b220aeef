// SPDX-License-Identifier: Apache-2.0
// The node-wide bound on concurrent transfers (`[node] max_transfers`): each running
// transfer of any mirror engine holds one slot, and with it its one thread, so the
// transfer threads of a node are bounded however many mirrors are busy. A transfer
// that finds no free slot waits its turn in a FIFO queue (status shows it `queued`);
// a freed slot goes straight to the first in the queue (no engine starves behind
// faster ones) and wakes its engine.
//
// Thread-safety: thread-safe. Lock order: an engine's mutex -> mutex_ (engines call
// in holding theirs). The wake-up runs under mutex_ and only wakes the engine's task
// in the EngineScheduler (whose lock is innermost), never takes an engine's lock, so it
// cannot deadlock.
// Invariant: in_use + granted-but-not-taken <= max; a waiter is queued at most once.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "base/mutex.h"

namespace amirror::node {

class TransferSlots {
 public:
  // One waiter: an engine's target. `wake` is called when a slot is granted to it.
  struct Waiter {
    const void* engine = nullptr;
    std::string target;
    auto operator<=>(const Waiter&) const = default;
  };
  explicit TransferSlots(uint32_t max_transfers);

  // Takes a slot for `waiter`: one granted to it, or a free one if nobody waits
  // longer. Otherwise queues it (once) and returns false; `wake` is called (under
  // mutex_: it must not call back in) when a slot is granted to it. REQUIRES: what
  // `wake` touches outlives the queueing (cancel() ends it).
  using Wake = std::function<void()>;
  bool try_acquire(const Waiter& waiter, Wake wake) EXCLUDES(mutex_);
  // A transfer ended: its slot goes to the first waiter, or becomes free.
  void release() EXCLUDES(mutex_);
  // `engine` stops: its queued waiters leave, and slots granted to them pass on.
  void cancel(const void* engine) EXCLUDES(mutex_);
  bool queued(const Waiter& waiter) const EXCLUDES(mutex_);
  uint32_t in_use() const EXCLUDES(mutex_);
  uint32_t max_transfers() const { return max_; }

 private:
  void hand_on_locked() REQUIRES(mutex_);

  const uint32_t max_;
  mutable Mutex mutex_;
  uint32_t in_use_ GUARDED_BY(mutex_) = 0;  // taken, or granted to a waiter not yet back
  std::deque<std::pair<Waiter, Wake>> queue_ GUARDED_BY(mutex_);
  std::set<Waiter> granted_ GUARDED_BY(mutex_);
};

}  // namespace amirror::node
