// SPDX-License-Identifier: Apache-2.0
// `amirror demo --store`: shows the volume store at work on a temporary directory — create a
// volume, write, freeze, write more (copy-on-first-write), read a frozen point, merge,
// reopen — and verifies every byte against an in-memory copy at each step.
#include <fmt/core.h>
#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "base/units.h"
#include "cli/commands.h"
#include "cli/demo.h"
#include "store/data_dir.h"

namespace amirror::cli {
namespace {

constexpr uint64_t kDemoVolumeSizeBytes = 64 * kMiB;
constexpr uint64_t kDemoChunkSizeBytes = 64 * kKiB;

class Demo {
 public:
  explicit Demo(std::string dir) : dir_(std::move(dir)), expected_(kDemoVolumeSizeBytes, 0) {}

  bool run() {
    auto data_dir = DataDir::open(posix_file_system(), dir_ + "/data");
    if (!check(data_dir.status(), "open data directory")) return false;
    auto created = data_dir.value()->create_volume(
        "demo", {.size_bytes = kDemoVolumeSizeBytes, .chunk_size_bytes = kDemoChunkSizeBytes, .group = ""});
    if (!check(created.status(), "create volume")) return false;
    volume_ = std::move(created).value();
    fmt::print("created volume 'demo': {} with {} chunks in {}\n", format_bytes(volume_->size_bytes()),
               format_bytes(volume_->chunk_size_bytes()), volume_->dir());

    step("write 8 MiB of random data at scattered, unaligned offsets", [&] { return write_random(200, 64 * kKiB); });
    if (!verify("current image")) return false;
    std::vector<uint8_t> point_one;
    if (!freeze(point_one)) return false;

    step("write 4 MiB more, mostly partial chunks (copy-on-first-write)", [&] { return write_random(400, 10000); });
    step("zero 1 MiB and trim 256 KiB", [&] {
      AMIRROR_RETURN_IF_ERROR(volume_->write_zeroes(3 * kMiB, kMiB));
      std::memset(expected_.data() + 3 * kMiB, 0, kMiB);
      AMIRROR_RETURN_IF_ERROR(volume_->trim(10 * kMiB + 4096, 256 * kKiB));
      std::memset(expected_.data() + 10 * kMiB + 4096, 0, 256 * kKiB);
      return Status();
    });
    if (!verify("current image")) return false;
    if (!verify_frozen(1, point_one)) return false;

    auto delta = volume_->changed_chunks(0, 1);
    if (!check(delta.status(), "list changed chunks")) return false;
    fmt::print("  delta of cycle 1 (what a mirror would ship): {} chunks\n", delta->size());

    std::vector<uint8_t> point_two;
    if (!freeze(point_two)) return false;
    auto delta_two = volume_->changed_chunks(1, 2);
    if (!check(delta_two.status(), "list changed chunks")) return false;
    fmt::print("  delta of cycle 2: {} chunks\n", delta_two->size());

    step("write while merging layer 1 into the base", [&] {
      AMIRROR_RETURN_IF_ERROR(write_random(50, 30000));
      return volume_->merge_oldest();
    });
    print_layers();
    if (!verify("current image") || !verify_frozen(2, point_two)) return false;
    step("merge layer 2 into the base", [&] { return volume_->merge_oldest(); });
    if (!verify("current image")) return false;

    step("flush, close and reopen the volume", [&] {
      AMIRROR_RETURN_IF_ERROR(volume_->flush());
      volume_.reset();
      auto reopened = data_dir.value()->open_volume("demo");
      if (!reopened.ok()) return reopened.status();
      volume_ = std::move(reopened).value();
      return Status();
    });
    if (!volume_ || !verify("reopened image")) return false;
    print_layers();
    fmt::print("demo: OK — every byte matched at every step\n");
    return true;
  }

 private:
  bool check(const Status& status, const char* what) {
    if (status.ok()) return true;
    fmt::print(stderr, "demo: {} failed: {}\n", what, status.to_string());
    failed_ = true;
    return false;
  }

  template <typename Action>
  void step(const char* what, Action&& action) {
    if (failed_) return;
    auto start = std::chrono::steady_clock::now();
    Status status = action();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (check(status, what)) fmt::print("{:<62} {:8.1f} ms\n", what, ms);
  }

  Status write_random(int count, uint64_t max_length_bytes) {
    std::uniform_int_distribution<uint64_t> length_dist(1, max_length_bytes);
    std::vector<uint8_t> buffer;
    for (int i = 0; i < count; ++i) {
      uint64_t length = length_dist(random_);
      uint64_t offset = std::uniform_int_distribution<uint64_t>(0, kDemoVolumeSizeBytes - length)(random_);
      buffer.resize(length);
      for (auto& byte : buffer) byte = static_cast<uint8_t>(random_());
      AMIRROR_RETURN_IF_ERROR(volume_->write(offset, buffer));
      std::memcpy(expected_.data() + offset, buffer.data(), length);
    }
    return Status();
  }

  bool freeze(std::vector<uint8_t>& snapshot) {
    auto start = std::chrono::steady_clock::now();
    auto cycle = volume_->freeze();
    if (!check(cycle.status(), "freeze")) return false;
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    fmt::print("{:<62} {:8.1f} ms\n", fmt::format("freeze -> cycle {} (writes held back {:.2f} ms)", cycle.value(),
                                     volume_->last_freeze_stall_us() / 1000.0), ms);
    snapshot = expected_;
    return true;
  }

  bool compare(const std::vector<uint8_t>& actual, const std::vector<uint8_t>& wanted, const std::string& what) {
    if (actual == wanted) {
      fmt::print("  verified {}: {} identical\n", what, format_bytes(actual.size()));
      return true;
    }
    size_t first = 0;
    while (actual[first] == wanted[first]) ++first;
    fmt::print(stderr, "demo: {} differs from the expected bytes at offset {}\n", what, first);
    failed_ = true;
    return false;
  }

  bool verify(const char* what) {
    if (failed_) return false;
    std::vector<uint8_t> actual(kDemoVolumeSizeBytes);
    if (!check(volume_->read(0, actual), "read")) return false;
    return compare(actual, expected_, what);
  }

  bool verify_frozen(uint64_t cycle, const std::vector<uint8_t>& wanted) {
    if (failed_) return false;
    std::vector<uint8_t> actual(kDemoVolumeSizeBytes);
    if (!check(volume_->read_frozen(cycle, 0, actual), "read frozen point")) return false;
    return compare(actual, wanted, fmt::format("freeze point {}", cycle));
  }

  void print_layers() {
    fmt::print("  base holds cycle {}; layers:", volume_->base_cycle());
    for (const LayerInfo& layer : volume_->layers()) {
      fmt::print(" [{} {}: {} chunks, {}]", layer.id, layer.frozen ? "frozen" : "active", layer.chunk_count,
                 format_bytes(layer.data_bytes));
    }
    fmt::print("\n");
  }

  std::string dir_;
  std::vector<uint8_t> expected_;
  std::unique_ptr<Volume> volume_;
  std::mt19937_64 random_{20261125};
  bool failed_ = false;
};

}  // namespace

int run_in_demo_dir(const DemoArgs& args, const char* title, const std::function<bool(const std::string&)>& body) {
  std::string dir = args.work_dir;
  bool temporary = dir.empty();
  if (temporary) {
    char pattern[] = "/tmp/amirror-demo-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
      fmt::print(stderr, "demo: cannot create a temporary directory under /tmp: {}\n", std::strerror(errno));
      return 1;
    }
    dir = pattern;
  } else {
    std::filesystem::create_directories(dir);
  }
  fmt::print("{} in {}\n", title, dir);
  bool ok = body(dir);
  if (temporary && !args.keep) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  return ok ? 0 : 1;
}

int run_store_demo(const DemoArgs& args) {
  return run_in_demo_dir(args, "amirror store demo", [](const std::string& dir) { return Demo(dir).run(); });
}

}  // namespace amirror::cli
