// SPDX-License-Identifier: Apache-2.0
// Assertions for programmer errors and broken invariants. They stay on in release
// builds: a storage system that continues past a broken invariant corrupts data.
#pragma once

namespace amirror {
[[noreturn]] void assertion_failed(const char* expression, const char* file, int line);
}  // namespace amirror

#define AMIRROR_ASSERT(expr) \
  ((expr) ? (void)0 : ::amirror::assertion_failed(#expr, __FILE__, __LINE__))
