// SPDX-License-Identifier: Apache-2.0
// std::mutex with clang thread-safety annotations (base/thread_annotations.h), so the
// compiler checks that GUARDED_BY members are used only under their lock.
//   Mutex   — a plain mutex; lock()/unlock() for the rare hand-over-hand case.
//   MutexLock — holds a Mutex for a scope; unlock()/lock() to drop it around slow work
//               (I/O, joins) and take it back; it is released on destruction if held.
//   CondVar — a condition variable that waits on a MutexLock.
// Thread-safety: as std::mutex / std::condition_variable.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "base/thread_annotations.h"

namespace amirror {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mutex_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mutex_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void unlock() RELEASE() {
    held_ = false;
    mutex_.unlock();
  }
  void lock() ACQUIRE() {
    mutex_.lock();
    held_ = true;
  }

 private:
  friend class CondVar;
  Mutex& mutex_;
  bool held_ = true;
};

// Waits release the lock and hold it again on return, as std::condition_variable's do.
// There is no predicate form: a predicate lambda is analysed as a function of its own
// that does not hold the lock. Callers loop instead, where the analysis sees the lock:
//   while (!ready_) changed_.wait(lock);
class CondVar {
 public:
  void notify_all() {
    notifications_.fetch_add(1);
    cv_.notify_all();
  }
  void notify_one() {
    notifications_.fetch_add(1);
    cv_.notify_one();
  }
  // How many notifications so far: a waiter that wakes up on its own (a manual
  // clock's poll) tells from it whether it missed one.
  uint64_t notifications() const { return notifications_.load(); }

  // May return spuriously.
  void wait(MutexLock& lock) {
    std::unique_lock native(lock.mutex_.mutex_, std::adopt_lock);
    cv_.wait(native);
    native.release();
  }
  // False once the deadline has passed; may return true spuriously before it.
  template <class Clock, class Duration>
  bool wait_until(MutexLock& lock, std::chrono::time_point<Clock, Duration> deadline) {
    std::unique_lock native(lock.mutex_.mutex_, std::adopt_lock);
    bool woken = cv_.wait_until(native, deadline) == std::cv_status::no_timeout;
    native.release();
    return woken;
  }

 private:
  std::condition_variable cv_;
  std::atomic<uint64_t> notifications_{0};
};

}  // namespace amirror
