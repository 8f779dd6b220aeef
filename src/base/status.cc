// SPDX-License-Identifier: Apache-2.0
#include "base/status.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace amirror {

void assertion_failed(const char* expression, const char* file, int line) {
  std::fprintf(stderr, "amirror: internal error: assertion `%s` failed at %s:%d\n", expression,
               file, line);
  std::fflush(stderr);
  std::abort();
}

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kAlreadyExists: return "already exists";
    case ErrorCode::kNoSpace: return "no space";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kCorruption: return "corruption";
    case ErrorCode::kBusy: return "busy";
    case ErrorCode::kOutOfRange: return "out of range";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kReadOnly: return "read-only";
  }
  return "unknown";
}

Status Status::from_errno(int error_number, const std::string& context) {
  ErrorCode code = ErrorCode::kIo;
  switch (error_number) {
    case ENOSPC:
    case EDQUOT: code = ErrorCode::kNoSpace; break;
    case ENOENT: code = ErrorCode::kNotFound; break;
    case EEXIST: code = ErrorCode::kAlreadyExists; break;
    case EINVAL: code = ErrorCode::kInvalidArgument; break;
    case EWOULDBLOCK: code = ErrorCode::kBusy; break;
    case EOPNOTSUPP: code = ErrorCode::kUnsupported; break;
    case EFBIG: code = ErrorCode::kOutOfRange; break;  // larger than the file system allows
    default: break;
  }
  return Status(code, context + " (" + std::strerror(error_number) + ")");
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  return std::string(error_code_name(code_)) + ": " + message_;
}

Status Status::with_context(const std::string& context) const {
  if (ok()) return *this;
  return Status(code_, context + ": " + message_);
}

}  // namespace amirror
