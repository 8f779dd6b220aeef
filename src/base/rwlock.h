// SPDX-License-Identifier: Apache-2.0
// A writer-preferring reader/writer lock. std::shared_mutex on glibc prefers readers,
// so a steady stream of client I/O (shared holders) could postpone a freeze
// (exclusive holder) forever; a freeze's write stall must be bounded, so writers win.
#pragma once

#include <pthread.h>

#include "base/assert.h"

namespace amirror {

class RwLock {
 public:
  RwLock() {
    pthread_rwlockattr_t attributes;
    pthread_rwlockattr_init(&attributes);
    pthread_rwlockattr_setkind_np(&attributes, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    AMIRROR_ASSERT(pthread_rwlock_init(&lock_, &attributes) == 0);
    pthread_rwlockattr_destroy(&attributes);
  }
  ~RwLock() { pthread_rwlock_destroy(&lock_); }
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;

  // Names follow the standard SharedLockable / Lockable concepts so std::shared_lock
  // and std::unique_lock work.
  void lock_shared() { AMIRROR_ASSERT(pthread_rwlock_rdlock(&lock_) == 0); }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }
  void lock() { AMIRROR_ASSERT(pthread_rwlock_wrlock(&lock_) == 0); }
  void unlock() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

}  // namespace amirror
