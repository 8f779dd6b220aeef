// SPDX-License-Identifier: Apache-2.0
// Status and Result<T>: how errors cross module boundaries.
//
// Every fallible operation returns a Status (or a Result<T> holding a value or a
// Status). Messages are written for an operator: they say what failed, on which
// object, and what to do if that is not obvious. Programmer errors are not Statuses;
// they are AMIRROR_ASSERT failures (base/assert.h).
// Thread-safety: value types, no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include "base/assert.h"

namespace amirror {

enum class ErrorCode : uint8_t {
  kOk = 0,
  kInvalidArgument,  // bad input from a user or client
  kNotFound,
  kAlreadyExists,
  kNoSpace,      // ENOSPC / EDQUOT
  kIo,           // EIO and other unexpected system errors
  kCorruption,   // on-disk or wire data failed validation
  kBusy,         // resource held by someone else (lock, merge in progress)
  kOutOfRange,   // offset/length or cycle outside what exists
  kUnsupported,
  kTimeout,
  kCancelled,
  kReadOnly,     // a write to something that takes none now (a replica, a demoted volume)
  kUnavailable,  // the other end cannot be reached at all (nothing listens); nothing was sent
};

const char* error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  // Maps an errno value to an ErrorCode; `context` names the operation and object,
  // e.g. "write /var/lib/amirror/v/layer-3.data".
  static Status from_errno(int error_number, const std::string& context);

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "no space: write ... (No space left on device)"
  std::string to_string() const;

  // Prepends context: "open volume db: " + message.
  Status with_context(const std::string& context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string message) {
  return Status(ErrorCode::kInvalidArgument, std::move(message));
}
inline Status corruption(std::string message) {
  return Status(ErrorCode::kCorruption, std::move(message));
}
inline Status not_found(std::string message) {
  return Status(ErrorCode::kNotFound, std::move(message));
}
inline Status out_of_range(std::string message) {
  return Status(ErrorCode::kOutOfRange, std::move(message));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : storage_(std::move(status)) {  // NOLINT
    AMIRROR_ASSERT(!std::get<Status>(storage_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(storage_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(storage_);
  }
  T& value() & {
    AMIRROR_ASSERT(ok());
    return std::get<T>(storage_);
  }
  const T& value() const& {
    AMIRROR_ASSERT(ok());
    return std::get<T>(storage_);
  }
  T&& value() && {
    AMIRROR_ASSERT(ok());
    return std::get<T>(std::move(storage_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Status> storage_;
};

}  // namespace amirror

// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define AMIRROR_RETURN_IF_ERROR(expr)             \
  do {                                            \
    ::amirror::Status amirror_status_ = (expr);   \
    if (!amirror_status_.ok()) return amirror_status_; \
  } while (0)

#define AMIRROR_CONCAT_INNER(a, b) a##b
#define AMIRROR_CONCAT(a, b) AMIRROR_CONCAT_INNER(a, b)
// `AMIRROR_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result or returns its Status.
#define AMIRROR_ASSIGN_OR_RETURN(decl, expr)                               \
  auto AMIRROR_CONCAT(amirror_result_, __LINE__) = (expr);                 \
  if (!AMIRROR_CONCAT(amirror_result_, __LINE__).ok())                     \
    return AMIRROR_CONCAT(amirror_result_, __LINE__).status();             \
  decl = std::move(AMIRROR_CONCAT(amirror_result_, __LINE__)).value()
