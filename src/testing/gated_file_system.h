// SPDX-License-Identifier: Apache-2.0
// The POSIX file system, except that one operation on files whose name is
// `gated_name` — opening one, or renaming onto one — waits until open_gate() is
// called, and says that it waits. Tests use it to hold a node at an exact point (a
// state file being written, a target staging a delta) and look at it there.
// Thread-safety: as FileSystem.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "testing/forwarding_file_system.h"

namespace amirror::testing {

class GatedFileSystem final : public ForwardingFileSystem {
 public:
  enum class Gate { kOpen, kRenameOnto };
  // Unarmed, every operation passes until arm(): set-up can write the gated files.
  GatedFileSystem(Gate gate, std::string gated_name, bool armed = true)
      : gate_(gate), gated_name_(std::move(gated_name)), armed_(armed) {}

  void arm() {
    std::lock_guard lock(mutex_);
    armed_ = true;
  }

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    if (gate_ == Gate::kOpen) wait_if_gated(path);
    return real_.open(path, mode);
  }
  Status rename(const std::string& from, const std::string& to) override {
    if (gate_ == Gate::kRenameOnto) wait_if_gated(to);
    return real_.rename(from, to);
  }

  // Waits (real time, at most `timeout`) until an operation waits at the gate.
  bool wait_until_one_waits(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return waiting_; });
  }
  void open_gate() {
    std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }

 private:
  void wait_if_gated(const std::string& path) {
    if (!path.ends_with("/" + gated_name_)) return;
    std::unique_lock lock(mutex_);
    if (!armed_) return;
    waiting_ = true;
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_; });
  }

  const Gate gate_;
  const std::string gated_name_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool armed_;
  bool waiting_ = false;
  bool open_ = false;
};

}  // namespace amirror::testing
