// SPDX-License-Identifier: Apache-2.0
// The node's bounded pool for mirror engines (issue 12): a fixed number of worker
// threads (`[node] workers`) runs every engine's scheduling, so a node with 1,000
// mirrors runs workers + 1 scheduling threads, not 1,000. Each engine registers a
// task; the scheduler calls its round (MirrorEngine: freeze if due, start transfers,
// merge) on a worker, and runs it again at the time the round returned (a timer) or
// at once when woken (wake(): a transfer ended, a sync, a verify hold, stop...).
//
// Rules:
//  - A task's rounds never overlap: it is waiting (maybe with a timer), ready (queued
//    for a worker) or running, never two at once.
//  - No lost wake-up: wake() during a round makes the task ready again as the round
//    ends, so a change the round may have missed is always looked at.
//  - Ready tasks run in FIFO order: with W workers, one task waits behind at most the
//    rounds queued before it, and a slow round (a long merge or fsync) holds one
//    worker; the others go on. Only W slow rounds at once delay everyone else.
//  - Time comes from the Env's Clock: exactly one thread (the timer thread) waits on
//    it, for the earliest timer; workers wait on a plain condition variable. So with
//    a ManualClock, the scheduler counts as one sleeper while any task waits with a
//    timer and none while none does (ManualClock::wait_until_quiet): with one task,
//    quiet means its round is neither running nor ready.
//  - remove() returns once the task's round in progress has ended; no round of it
//    starts after. stop() ends the threads; every task must be removed first.
//
// Thread-safety: thread-safe. Rounds run without mutex_, so a round may call wake()
// and add() (never remove() of its own task: that would wait for itself, asserted).
// mutex_ is the innermost lock: callers may hold theirs (an engine's mutex, the
// transfer slots') when they call wake().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "base/env.h"
#include "base/mutex.h"

namespace amirror::node {

class EngineScheduler {
 public:
  // One round of a task; returns when it wants its next round unless woken before
  // (kNoTimer: only when woken).
  using Round = std::function<Clock::TimePoint()>;
  using TaskId = uint64_t;
  static constexpr Clock::TimePoint kNoTimer = Clock::TimePoint::max();
  static constexpr uint32_t kMaxWorkers = 256;

  // Starts `workers` worker threads and the timer thread from `threads`.
  // REQUIRES: 1 <= workers <= kMaxWorkers; clock and threads outlive the scheduler.
  EngineScheduler(Clock& clock, Threads& threads, uint32_t workers);
  ~EngineScheduler();
  EngineScheduler(const EngineScheduler&) = delete;
  EngineScheduler& operator=(const EngineScheduler&) = delete;

  // Registers a task; its first round runs as soon as a worker is free. Ids are never
  // reused. REQUIRES: not stopped.
  TaskId add(Round round) EXCLUDES(mutex_);
  // Runs the task's round as soon as a worker is free (once more after the round in
  // progress, if one is). A removed or unknown task: nothing.
  void wake(TaskId id) EXCLUDES(mutex_);
  // Waits for the task's round in progress, then forgets it. Unknown id: nothing.
  void remove(TaskId id) EXCLUDES(mutex_);
  // Joins every thread. Idempotent. REQUIRES: every task removed.
  void stop() EXCLUDES(mutex_);

  uint32_t workers() const { return workers_; }
  // For tests: rounds run so far, over all tasks; whether no round runs or waits for a
  // worker (with a ManualClock, "quiet" alone does not say so once several tasks have
  // timers: the timer thread sleeps for the next one while workers still run rounds).
  uint64_t rounds_run() const EXCLUDES(mutex_);
  bool idle() const EXCLUDES(mutex_);

 private:
  enum class TaskState { kWaiting, kReady, kRunning };
  struct Task {
    Round round;
    TaskState state = TaskState::kReady;
    Clock::TimePoint timer = kNoTimer;  // while kWaiting: when to make it ready
    bool woken_while_running = false;
    bool removing = false;
    std::thread::id runner;  // while kRunning: the worker running it
  };

  void worker_loop() EXCLUDES(mutex_);
  void timer_loop() EXCLUDES(mutex_);
  void make_ready_locked(TaskId id, Task& task) REQUIRES(mutex_);
  // Cancels a waiting task's timer, if it has one.
  void erase_timer_locked(TaskId id, Task& task) REQUIRES(mutex_);
  // After a round: ready again if woken meanwhile, else waiting for `next`.
  void after_round_locked(TaskId id, Task& task, Clock::TimePoint next) REQUIRES(mutex_);

  Clock& clock_;
  const uint32_t workers_;

  mutable Mutex mutex_;
  CondVar work_;            // workers: ready_ got a task, or stopping_
  CondVar timers_changed_;  // the timer thread: an earlier timer, or stopping_
  CondVar round_ended_;     // remove(): a round ended
  std::map<TaskId, Task> tasks_ GUARDED_BY(mutex_);
  std::deque<TaskId> ready_ GUARDED_BY(mutex_);  // each id at most once, state kReady
  std::set<std::pair<Clock::TimePoint, TaskId>> timers_ GUARDED_BY(mutex_);  // kWaiting tasks with a timer
  TaskId next_id_ GUARDED_BY(mutex_) = 1;
  uint64_t rounds_run_ GUARDED_BY(mutex_) = 0;
  uint32_t running_ GUARDED_BY(mutex_) = 0;  // tasks in kRunning
  bool stopping_ GUARDED_BY(mutex_) = false;

  Mutex stop_mutex_;  // serialises stop(): joining twice at once is undefined
  std::vector<std::thread> threads_ GUARDED_BY(stop_mutex_);
};

}  // namespace amirror::node
