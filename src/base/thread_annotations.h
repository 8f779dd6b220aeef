// SPDX-License-Identifier: Apache-2.0
// Clang thread-safety annotations (https://clang.llvm.org/docs/ThreadSafetyAnalysis.html).
// They turn "// guarded by mutex_" comments into facts the compiler checks: the
// `lint.thread-safety` test runs clang with -Werror=thread-safety over src/node and
// src/base. On other compilers they expand to nothing.
#pragma once

#if defined(__clang__)
#define AMIRROR_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define AMIRROR_THREAD_ANNOTATION(x)
#endif

// A type that is a lock (a "capability").
#define CAPABILITY(name) AMIRROR_THREAD_ANNOTATION(capability(name))
// An RAII type that holds a lock for its lifetime.
#define SCOPED_CAPABILITY AMIRROR_THREAD_ANNOTATION(scoped_lockable)
// The member may be read or written only with the lock held.
#define GUARDED_BY(lock) AMIRROR_THREAD_ANNOTATION(guarded_by(lock))
// What the pointer points to may be used only with the lock held.
#define PT_GUARDED_BY(lock) AMIRROR_THREAD_ANNOTATION(pt_guarded_by(lock))
// The caller must hold the lock(s).
#define REQUIRES(...) AMIRROR_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// The caller must not hold the lock(s): the function takes them itself.
#define EXCLUDES(...) AMIRROR_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// The function takes the lock and returns holding it.
#define ACQUIRE(...) AMIRROR_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
// The function releases a lock the caller held.
#define RELEASE(...) AMIRROR_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
// Locks that must be taken before this one (lock order).
#define ACQUIRED_BEFORE(...) AMIRROR_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) AMIRROR_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
// The function returns a reference to the given lock.
#define RETURN_CAPABILITY(x) AMIRROR_THREAD_ANNOTATION(lock_returned(x))
// For the rare function the analysis cannot follow; say why next to each use.
#define NO_THREAD_SAFETY_ANALYSIS AMIRROR_THREAD_ANNOTATION(no_thread_safety_analysis)
