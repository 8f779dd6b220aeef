// SPDX-License-Identifier: Apache-2.0
#include "node/engine_scheduler.h"

#include <algorithm>

#include "base/assert.h"

namespace amirror::node {

EngineScheduler::EngineScheduler(Clock& clock, Threads& threads, uint32_t workers) : clock_(clock), workers_(workers) {
  AMIRROR_ASSERT(workers_ >= 1 && workers_ <= kMaxWorkers);
  // No other thread exists yet: no lock needed (the analysis does not check constructors).
  threads_.push_back(threads.start([this] { timer_loop(); }));
  for (uint32_t i = 0; i < workers_; ++i) threads_.push_back(threads.start([this] { worker_loop(); }));
}

EngineScheduler::~EngineScheduler() { stop(); }

EngineScheduler::TaskId EngineScheduler::add(Round round) {
  MutexLock lock(mutex_);
  AMIRROR_ASSERT(!stopping_);
  const TaskId id = next_id_++;
  Task& task = tasks_[id];
  task.round = std::move(round);
  make_ready_locked(id, task);
  return id;
}

void EngineScheduler::erase_timer_locked(TaskId id, Task& task) {
  if (task.state != TaskState::kWaiting || task.timer == kNoTimer) return;
  const bool earliest = timers_.begin()->second == id;
  timers_.erase({task.timer, id});
  task.timer = kNoTimer;
  // The timer thread must not sleep on the clock for a timer that is gone: with a
  // ManualClock it would count as a sleeper while this task's round runs.
  if (earliest) timers_changed_.notify_all();
}

void EngineScheduler::make_ready_locked(TaskId id, Task& task) {
  erase_timer_locked(id, task);
  task.state = TaskState::kReady;
  ready_.push_back(id);
  work_.notify_one();  // every worker waits for the same thing: any one will do
}

void EngineScheduler::wake(TaskId id) {
  MutexLock lock(mutex_);
  auto found = tasks_.find(id);
  if (found == tasks_.end() || found->second.removing) return;
  Task& task = found->second;
  switch (task.state) {
    case TaskState::kReady:
      break;  // runs soon anyway, and will see the change
    case TaskState::kRunning:
      task.woken_while_running = true;  // the round may have looked before the change
      break;
    case TaskState::kWaiting:
      make_ready_locked(id, task);
      break;
  }
}

void EngineScheduler::remove(TaskId id) {
  MutexLock lock(mutex_);
  auto found = tasks_.find(id);
  if (found == tasks_.end()) return;
  found->second.removing = true;
  AMIRROR_ASSERT(found->second.state != TaskState::kRunning || found->second.runner != std::this_thread::get_id());
  while (tasks_.at(id).state == TaskState::kRunning) round_ended_.wait(lock);
  Task& task = tasks_.at(id);
  if (task.state == TaskState::kReady) std::erase(ready_, id);
  erase_timer_locked(id, task);
  tasks_.erase(id);
}

void EngineScheduler::stop() {
  MutexLock stop_lock(stop_mutex_);
  {
    MutexLock lock(mutex_);
    AMIRROR_ASSERT(tasks_.empty());
    stopping_ = true;
    work_.notify_all();
    timers_changed_.notify_all();
  }
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  threads_.clear();
}

uint64_t EngineScheduler::rounds_run() const {
  MutexLock lock(mutex_);
  return rounds_run_;
}

bool EngineScheduler::idle() const {
  MutexLock lock(mutex_);
  return running_ == 0 && ready_.empty();
}

void EngineScheduler::after_round_locked(TaskId id, Task& task, Clock::TimePoint next) {
  rounds_run_ += 1;
  running_ -= 1;
  task.runner = {};
  if (task.removing) {
    task.state = TaskState::kWaiting;
    round_ended_.notify_all();
    return;
  }
  if (task.woken_while_running) {
    task.woken_while_running = false;
    task.state = TaskState::kWaiting;
    make_ready_locked(id, task);
    return;
  }
  task.state = TaskState::kWaiting;
  task.timer = next;
  if (next == kNoTimer) return;
  const bool earliest = timers_.empty() || next < timers_.begin()->first;
  timers_.insert({next, id});
  if (earliest) timers_changed_.notify_all();  // the timer thread sleeps until a later one
}

void EngineScheduler::worker_loop() {
  MutexLock lock(mutex_);
  while (true) {
    while (!stopping_ && ready_.empty()) work_.wait(lock);
    if (ready_.empty()) return;  // stopping: every task was removed, none is ready
    const TaskId id = ready_.front();
    ready_.pop_front();
    Task& task = tasks_.at(id);  // std::map: the reference stays valid until erased
    AMIRROR_ASSERT(task.state == TaskState::kReady);
    task.state = TaskState::kRunning;
    task.runner = std::this_thread::get_id();
    running_ += 1;
    // remove() waits while kRunning, so neither the task nor its round goes away here.
    const Round& round = task.round;
    lock.unlock();
    const Clock::TimePoint next = round();
    lock.lock();
    after_round_locked(id, task, next);
  }
}

void EngineScheduler::timer_loop() {
  MutexLock lock(mutex_);
  while (!stopping_) {
    const Clock::TimePoint now = clock_.now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const TaskId id = timers_.begin()->second;
      make_ready_locked(id, tasks_.at(id));  // erases the timer
    }
    // Without a timer there is nothing to wait for on the clock: a plain wait, so a
    // node with no mirrors has no thread asleep on it.
    if (timers_.empty()) {
      timers_changed_.wait(lock);
    } else {
      clock_.wait_until(timers_changed_, lock, timers_.begin()->first);
    }
  }
}

}  // namespace amirror::node
