// SPDX-License-Identifier: Apache-2.0
// Model-based test of the volume store: random sequences of client I/O, freezes,
// group freezes, merges, growth (resize), frozen-point reads, delta iteration, reopen
// and simulated power loss, run against 2-3 real Volumes on a FaultFileSystem and checked step by
// step against ModelVolume (plain byte arrays per volume and per freeze point).
//
// Default: 20 seeds x 5,000 operations, split over 4 shards so ctest can run them in
// parallel. AMIRROR_LONG=1: 200 seeds x 20,000 operations. AMIRROR_SEED=n replays one
// seed (in shard 0), AMIRROR_OPS=n overrides the operation count, AMIRROR_VERBOSE=1 logs every operation. A failure prints the
// seed, the operation index and the last operations.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <sstream>

#include "store/volume.h"
#include "testing/fault_file_system.h"
#include "testing/model_volume.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

constexpr int kShardCount = 4;

struct VolumeUnderTest {
  std::string dir;
  std::unique_ptr<Volume> volume;
  ModelVolume model;
};

// One seeded run. Each operation returns "" or a description of what went wrong.
class ModelRun {
 public:
  ModelRun(uint64_t seed, uint64_t operation_count)
      : seed_(seed), operation_count_(operation_count), random_(seed), scratch_("model", /*in_memory=*/true) {}

  // Returns "" on success, else the failure report.
  std::string run() {
    std::string error = setup();
    for (uint64_t i = 0; error.empty() && i < operation_count_; i++) {
      operation_index_ = i;
      error = step();
    }
    if (error.empty()) error = check_everything("final check");
    if (error.empty()) return "";
    std::ostringstream report;
    report << "seed " << seed_ << " failed at operation " << operation_index_ << ": " << error
           << "\n  replay: AMIRROR_SEED=" << seed_ << " amirror_tests --gtest_filter='Model*'"
           << "\n  volumes:";
    for (const auto& v : volumes_) {
      report << " [size " << v.model.size_bytes() << ", chunk " << v.model.chunk_size_bytes()
             << "]";
    }
    report << "\n  last operations:";
    for (const std::string& line : recent_) report << "\n    " << line;
    return report.str();
  }

  uint64_t power_losses() const { return power_losses_; }

 private:
  void log(const std::string& line) {
    if (verbose_) std::fprintf(stderr, "#%llu %s\n", static_cast<unsigned long long>(operation_index_), line.c_str());
    recent_.push_back("#" + std::to_string(operation_index_) + " " + line);
    if (recent_.size() > 40) recent_.pop_front();
  }

  std::string setup() {
    uint64_t count = random_.uniform(2, 3);
    for (uint64_t i = 0; i < count; i++) {
      static constexpr uint64_t kChunkSizes[] = {4 * kKiB, 8 * kKiB, 16 * kKiB, 64 * kKiB};
      uint64_t chunk = kChunkSizes[random_.uniform(0, 3)];
      // 64 KiB .. 768 KiB, never a multiple of the chunk size (a short last chunk).
      uint64_t size = random_.uniform(128, 1536) * kSectorSizeBytes;
      if (size % chunk == 0) size += kSectorSizeBytes;
      std::string dir = scratch_.sub("v" + std::to_string(i));
      if (auto status = fs_.make_dir(dir); !status.ok()) return status.to_string();
      VolumeOptions options;
      options.size_bytes = size;
      options.chunk_size_bytes = chunk;
      auto volume = Volume::create(fs_, dir, options);
      if (!volume.ok()) return "create: " + volume.status().to_string();
      volumes_.push_back({dir, std::move(volume).value(), ModelVolume(size, chunk)});
    }
    // The directories themselves must survive a power loss.
    if (auto status = fs_.sync_dir(scratch_.path()); !status.ok()) return status.to_string();
    return "";
  }

  // A random byte range of the volume, biased towards the interesting shapes.
  void pick_range(const ModelVolume& model, uint64_t* offset, uint64_t* length) {
    uint64_t size = model.size_bytes();
    uint64_t chunk = model.chunk_size_bytes();
    switch (random_.uniform(0, 6)) {
      case 0:  // small, unaligned
        *offset = random_.uniform(0, size - 1);
        *length = random_.uniform(1, std::min<uint64_t>(700, size - *offset));
        break;
      case 1:  // spanning chunks, unaligned
        *offset = random_.uniform(0, size - 1);
        *length = random_.uniform(1, std::min<uint64_t>(3 * chunk, size - *offset));
        break;
      case 2: {  // whole chunks (covers_whole_chunk), maybe the short last one
        uint64_t first = random_.uniform(0, model.chunk_count() - 1);
        *offset = first * chunk;
        *length = std::min<uint64_t>(random_.uniform(1, 3) * chunk, size - *offset);
        break;
      }
      case 3:  // inside or to the end of the last (partial) chunk
        *offset = random_.uniform((model.chunk_count() - 1) * chunk, size - 1);
        *length = random_.percent(50) ? size - *offset : random_.uniform(1, size - *offset);
        break;
      case 4: {  // sector aligned
        uint64_t sectors = size / kSectorSizeBytes;
        uint64_t first = random_.uniform(0, sectors - 1);
        *offset = first * kSectorSizeBytes;
        *length = random_.uniform(1, std::min<uint64_t>(64, sectors - first)) * kSectorSizeBytes;
        break;
      }
      case 5:  // tiny, possibly empty
        *offset = random_.uniform(0, size);
        *length = random_.uniform(0, std::min<uint64_t>(8, size - *offset));
        break;
      default:  // large
        *offset = random_.uniform(0, size / 2);
        *length = random_.uniform(1, size - *offset);
        break;
    }
  }

  std::string range_text(size_t v, uint64_t offset, uint64_t length) {
    return "v" + std::to_string(v) + " [" + std::to_string(offset) + ", +" +
           std::to_string(length) + ")";
  }

  std::string step() {
    size_t v = random_.uniform(0, volumes_.size() - 1);
    uint64_t dice = random_.uniform(0, 999);
    // Cumulative weights (per mille).
    if (dice < 350) return op_write(v);
    if (dice < 470) return op_read(v);
    if (dice < 480) return op_grow(v);
    if (dice < 540) return op_trim_or_zero(v, /*trim=*/true);
    if (dice < 600) return op_trim_or_zero(v, /*trim=*/false);
    if (dice < 660) return op_flush(v);
    if (dice < 710) return op_freeze(v);
    if (dice < 735) return op_group_freeze();
    if (dice < 790) return op_merge(v);
    if (dice < 820) return op_check_frozen(v);
    if (dice < 850) return op_changed_chunks(v);
    if (dice < 865) return op_allocated_chunks(v);
    if (dice < 895) return op_full_check(v);
    if (dice < 910) return op_out_of_range(v);
    if (dice < 935) return op_injected_error(v);
    if (dice < 945) return op_reopen(/*flush_first=*/true);
    if (dice < 955) return op_reopen(/*flush_first=*/false);
    if (dice < 970) return op_crash_during(v);
    if (dice < 985) return op_power_loss(/*random_subset=*/false);
    return op_power_loss(/*random_subset=*/true);
  }

  std::string op_write(size_t v) {
    auto& t = volumes_[v];
    uint64_t offset, length;
    pick_range(t.model, &offset, &length);
    std::vector<uint8_t> data(length);
    random_.fill(data);
    bool fua = random_.percent(10);
    log("write " + range_text(v, offset, length) + (fua ? " fua" : ""));
    Status status = t.volume->write(offset, data, fua);
    if (!status.ok()) return "write failed: " + status.to_string();
    t.model.write(offset, data, fua);
    return "";
  }

  std::string op_read(size_t v) {
    auto& t = volumes_[v];
    uint64_t offset, length;
    pick_range(t.model, &offset, &length);
    log("read " + range_text(v, offset, length));
    std::vector<uint8_t> actual(length);
    Status status = t.volume->read(offset, actual);
    if (!status.ok()) return "read failed: " + status.to_string();
    std::span<const uint8_t> expected(t.model.image().data() + offset, length);
    std::string diff = describe_difference(expected, actual, offset, t.model.chunk_size_bytes());
    return diff.empty() ? "" : "read " + range_text(v, offset, length) + ": " + diff;
  }

  std::string op_trim_or_zero(size_t v, bool trim) {
    auto& t = volumes_[v];
    uint64_t offset, length;
    pick_range(t.model, &offset, &length);
    bool fua = !trim && random_.percent(10);
    log((trim ? "trim " : "write_zeroes ") + range_text(v, offset, length) + (fua ? " fua" : ""));
    Status status =
        trim ? t.volume->trim(offset, length) : t.volume->write_zeroes(offset, length, fua);
    if (!status.ok()) return (trim ? "trim failed: " : "write_zeroes failed: ") + status.to_string();
    t.model.write_zeroes(offset, length, fua);
    return "";
  }

  std::string op_flush(size_t v) {
    log("flush v" + std::to_string(v));
    Status status = volumes_[v].volume->flush();
    if (!status.ok()) return "flush failed: " + status.to_string();
    volumes_[v].model.flush();
    return "";
  }

  // Grows by a few sectors (often leaving a short last chunk) or a few chunks, up to
  // 2 MiB; old points must then read zeros past their old end (the model pads them).
  // Same size (a no-op) once the volume reached 2 MiB.
  uint64_t pick_grown_size(const ModelVolume& model) {
    constexpr uint64_t kMaxGrownBytes = 2 * kMiB;
    uint64_t size = model.size_bytes();
    if (size >= kMaxGrownBytes) return size;
    uint64_t grown = random_.percent(50) ? size + random_.uniform(1, 16) * kSectorSizeBytes
                                         : size + random_.uniform(1, 3) * model.chunk_size_bytes();
    return std::min(grown, kMaxGrownBytes);
  }

  std::string op_grow(size_t v) {
    auto& t = volumes_[v];
    uint64_t size = t.model.size_bytes();
    uint64_t grown = pick_grown_size(t.model);
    log("grow v" + std::to_string(v) + " from " + std::to_string(size) + " to " + std::to_string(grown));
    auto resized = t.volume->resize(grown);
    if (!resized.ok()) return "resize failed: " + resized.status().to_string();
    if (resized.value() != size) return "resize returned old size " + std::to_string(resized.value());
    if (grown != size) {
      t.model.grow(grown);
      t.model.flush();  // a resize that changes the size is a durable point
    }
    if (t.volume->size_bytes() != grown) return "size_bytes() is not the new size after resize";
    return "";
  }

  // Keeps the layer stack shallow (checks read every point) by merging before a freeze.
  std::string merge_if_deep(size_t v) {
    constexpr uint64_t kMaxFrozenLayers = 6;
    while (volumes_[v].model.cycle() - volumes_[v].model.base_cycle() >= kMaxFrozenLayers) {
      if (std::string e = op_merge(v); !e.empty()) return e;
    }
    return "";
  }

  std::string op_freeze(size_t v) {
    auto& t = volumes_[v];
    if (std::string e = merge_if_deep(v); !e.empty()) return e;
    log("freeze v" + std::to_string(v));
    auto cycle = t.volume->freeze();
    if (!cycle.ok()) return "freeze failed: " + cycle.status().to_string();
    uint64_t expected = t.model.freeze();
    if (cycle.value() != expected) {
      return "freeze returned cycle " + std::to_string(cycle.value()) + ", expected " +
             std::to_string(expected);
    }
    if (t.volume->cycle() != expected) return "cycle() disagrees with freeze()";
    return "";
  }

  std::string op_group_freeze() {
    std::vector<size_t> members;
    for (size_t i = 0; i < volumes_.size(); i++) {
      if (volumes_.size() == 2 || random_.percent(70)) members.push_back(i);
    }
    if (members.size() < 2) members = {0, 1};
    std::vector<Volume*> group;
    std::string text = "group freeze";
    for (size_t i : members) {
      if (std::string e = merge_if_deep(i); !e.empty()) return e;
      group.push_back(volumes_[i].volume.get());
      text += " v" + std::to_string(i);
    }
    log(text);
    auto cycles = Volume::freeze_group(group);
    if (!cycles.ok()) return "freeze_group failed: " + cycles.status().to_string();
    if (cycles.value().size() != members.size()) return "freeze_group returned a wrong count";
    for (size_t k = 0; k < members.size(); k++) {
      uint64_t expected = volumes_[members[k]].model.freeze();
      if (cycles.value()[k] != expected) {
        return "freeze_group: v" + std::to_string(members[k]) + " got cycle " +
               std::to_string(cycles.value()[k]) + ", expected " + std::to_string(expected);
      }
    }
    return "";
  }

  std::string op_merge(size_t v) {
    auto& t = volumes_[v];
    log("merge_oldest v" + std::to_string(v));
    Status status = t.volume->merge_oldest();
    if (t.model.cycle() == t.model.base_cycle()) {
      if (status.code() != ErrorCode::kNotFound) {
        return "merge_oldest with no frozen layer returned " + status.to_string() +
               ", expected not found";
      }
      return "";
    }
    if (!status.ok()) return "merge_oldest failed: " + status.to_string();
    t.model.merge_oldest();
    if (t.volume->base_cycle() != t.model.base_cycle()) return "base_cycle() wrong after merge";
    return "";
  }

  std::string check_frozen_point(size_t v, uint64_t cycle) {
    auto& t = volumes_[v];
    std::vector<uint8_t> actual(t.model.size_bytes());
    Status status = t.volume->read_frozen(cycle, 0, actual);
    if (!status.ok()) return "read_frozen(" + std::to_string(cycle) + ") failed: " + status.to_string();
    std::string diff = describe_difference(t.model.frozen(cycle), actual, 0, t.model.chunk_size_bytes());
    if (!diff.empty()) return "frozen point " + std::to_string(cycle) + " of v" + std::to_string(v) + ": " + diff;
    return "";
  }

  std::string op_check_frozen(size_t v) {
    auto& t = volumes_[v];
    log("check frozen points v" + std::to_string(v) + " " + std::to_string(t.model.base_cycle()) +
        ".." + std::to_string(t.model.cycle()));
    for (uint64_t c = t.model.base_cycle(); c <= t.model.cycle(); c++) {
      if (std::string e = check_frozen_point(v, c); !e.empty()) return e;
    }
    // A partial, unaligned read of one point.
    uint64_t c = random_.uniform(t.model.base_cycle(), t.model.cycle());
    uint64_t offset, length;
    pick_range(t.model, &offset, &length);
    std::vector<uint8_t> actual(length);
    Status status = t.volume->read_frozen(c, offset, actual);
    if (!status.ok()) return "read_frozen partial failed: " + status.to_string();
    std::span<const uint8_t> expected(t.model.frozen(c).data() + offset, length);
    if (std::string d = describe_difference(expected, actual, offset, t.model.chunk_size_bytes());
        !d.empty()) {
      return "read_frozen(" + std::to_string(c) + ") " + range_text(v, offset, length) + ": " + d;
    }
    // Points that do not exist are refused.
    std::vector<uint8_t> one(1);
    if (t.volume->read_frozen(t.model.cycle() + 1, 0, one).ok()) {
      return "read_frozen of the future cycle " + std::to_string(t.model.cycle() + 1) + " succeeded";
    }
    if (t.model.base_cycle() > 0 && t.volume->read_frozen(t.model.base_cycle() - 1, 0, one).ok()) {
      return "read_frozen of merged cycle " + std::to_string(t.model.base_cycle() - 1) + " succeeded";
    }
    return "";
  }

  // Applying changed_chunks(a, b) with content from point b onto point a yields point b.
  std::string op_changed_chunks(size_t v) {
    auto& t = volumes_[v];
    if (t.model.cycle() == t.model.base_cycle()) return "";
    uint64_t a = random_.uniform(t.model.base_cycle(), t.model.cycle() - 1);
    uint64_t b = random_.uniform(a + 1, t.model.cycle());
    log("changed_chunks v" + std::to_string(v) + " " + std::to_string(a) + ".." + std::to_string(b));
    auto delta = t.volume->changed_chunks(a, b);
    if (!delta.ok()) return "changed_chunks failed: " + delta.status().to_string();
    std::vector<uint8_t> image = t.model.frozen(a);
    const uint64_t chunk = t.model.chunk_size_bytes();
    uint64_t previous = 0;
    bool first = true;
    for (const DeltaChunk& d : delta.value()) {
      if (d.chunk_index >= t.model.chunk_count()) return "changed_chunks: chunk index out of range";
      if (!first && d.chunk_index <= previous) return "changed_chunks not sorted/unique";
      first = false;
      previous = d.chunk_index;
      uint64_t offset = d.chunk_index * chunk;
      uint64_t length = std::min(chunk, t.model.size_bytes() - offset);
      std::span<uint8_t> target(image.data() + offset, length);
      if (d.state == ChunkState::kZero) {
        std::fill(target.begin(), target.end(), 0);
      } else {
        Status status = t.volume->read_frozen(b, offset, target);
        if (!status.ok()) return "read_frozen for delta failed: " + status.to_string();
      }
    }
    std::string diff = describe_difference(t.model.frozen(b), image, 0, chunk);
    if (!diff.empty()) {
      return "point " + std::to_string(a) + " + changed_chunks(" + std::to_string(a) + ", " +
             std::to_string(b) + ") != point " + std::to_string(b) + ": " + diff;
    }
    // Bad arguments are refused.
    if (t.volume->changed_chunks(b, a).ok()) return "changed_chunks(b, a) with b > a succeeded";
    if (t.volume->changed_chunks(a, t.model.cycle() + 1).ok()) {
      return "changed_chunks to a future cycle succeeded";
    }
    return "";
  }

  // Every chunk of a point holding non-zero data is listed.
  std::string op_allocated_chunks(size_t v) {
    auto& t = volumes_[v];
    uint64_t c = random_.uniform(t.model.base_cycle(), t.model.cycle());
    log("allocated_chunks v" + std::to_string(v) + " " + std::to_string(c));
    auto chunks = t.volume->allocated_chunks(c);
    if (!chunks.ok()) return "allocated_chunks failed: " + chunks.status().to_string();
    const auto& image = t.model.frozen(c);
    const uint64_t chunk = t.model.chunk_size_bytes();
    std::vector<bool> listed(t.model.chunk_count(), false);
    for (size_t i = 0; i < chunks.value().size(); i++) {
      uint64_t index = chunks.value()[i];
      if (index >= listed.size()) return "allocated_chunks: index out of range";
      if (i > 0 && index <= chunks.value()[i - 1]) return "allocated_chunks not sorted/unique";
      listed[index] = true;
    }
    for (uint64_t index = 0; index < listed.size(); index++) {
      uint64_t end = std::min((index + 1) * chunk, t.model.size_bytes());
      bool nonzero = std::any_of(image.begin() + static_cast<ptrdiff_t>(index * chunk),
                                 image.begin() + static_cast<ptrdiff_t>(end),
                                 [](uint8_t b) { return b != 0; });
      if (nonzero && !listed[index]) {
        return "allocated_chunks(" + std::to_string(c) + ") misses chunk " +
               std::to_string(index) + " which holds data";
      }
    }
    return "";
  }

  std::string check_current(size_t v) {
    auto& t = volumes_[v];
    std::vector<uint8_t> actual(t.model.size_bytes());
    Status status = t.volume->read(0, actual);
    if (!status.ok()) return "full read failed: " + status.to_string();
    std::string diff = describe_difference(t.model.image(), actual, 0, t.model.chunk_size_bytes());
    return diff.empty() ? "" : "image of v" + std::to_string(v) + ": " + diff;
  }

  std::string check_metadata(size_t v) {
    auto& t = volumes_[v];
    if (t.volume->cycle() != t.model.cycle()) {
      return "v" + std::to_string(v) + " cycle() is " + std::to_string(t.volume->cycle()) +
             ", expected " + std::to_string(t.model.cycle());
    }
    if (t.volume->base_cycle() != t.model.base_cycle()) {
      return "v" + std::to_string(v) + " base_cycle() is " + std::to_string(t.volume->base_cycle()) +
             ", expected " + std::to_string(t.model.base_cycle());
    }
    if (t.volume->size_bytes() != t.model.size_bytes() ||
        t.volume->chunk_size_bytes() != t.model.chunk_size_bytes()) {
      return "v" + std::to_string(v) + " size or chunk size changed";
    }
    std::vector<LayerInfo> layers = t.volume->layers();
    if (layers.size() != t.model.cycle() - t.model.base_cycle() + 1) {
      return "v" + std::to_string(v) + " has " + std::to_string(layers.size()) +
             " layers, expected " + std::to_string(t.model.cycle() - t.model.base_cycle() + 1);
    }
    for (size_t i = 0; i < layers.size(); i++) {
      // Ids increase up the stack; a failed freeze skips one (never reused).
      if (i > 0 && layers[i].id <= layers[i - 1].id) return "layer ids do not increase";
      if (layers[i].frozen != (i + 1 < layers.size())) return "layer frozen flags wrong";
    }
    return "";
  }

  std::string op_full_check(size_t v) {
    log("full check v" + std::to_string(v));
    if (std::string e = check_metadata(v); !e.empty()) return e;
    return check_current(v);
  }

  std::string check_everything(const std::string& what) {
    for (size_t v = 0; v < volumes_.size(); v++) {
      if (std::string e = check_metadata(v); !e.empty()) return what + ": " + e;
      if (std::string e = check_current(v); !e.empty()) return what + ": " + e;
      for (uint64_t c = volumes_[v].model.base_cycle(); c <= volumes_[v].model.cycle(); c++) {
        if (std::string e = check_frozen_point(v, c); !e.empty()) return what + ": " + e;
      }
    }
    return "";
  }

  // Out-of-range requests are refused with kOutOfRange and change nothing.
  std::string op_out_of_range(size_t v) {
    auto& t = volumes_[v];
    uint64_t size = t.model.size_bytes();
    uint64_t offset, length;
    switch (random_.uniform(0, 3)) {
      case 0: offset = size; length = 1; break;
      case 1: offset = random_.uniform(0, size - 1); length = size - offset + random_.uniform(1, 9000); break;
      case 2: offset = UINT64_MAX - random_.uniform(0, 100); length = 4096; break;
      default: offset = random_.uniform(1, size - 1); length = UINT64_MAX; break;  // wraps
    }
    log("out of range " + range_text(v, offset, length));
    std::vector<uint8_t> data(std::min<uint64_t>(length, 16 * kKiB), 0xEE);
    std::span<const uint8_t> payload(data);
    // Length of the write/read span must match `length` only when it is small.
    if (length <= data.size()) {
      payload = payload.first(length);
      Status w = t.volume->write(offset, payload, random_.percent(50));
      if (w.code() != ErrorCode::kOutOfRange) return "out-of-range write returned " + w.to_string();
      std::vector<uint8_t> out(length);
      Status r = t.volume->read(offset, out);
      if (r.code() != ErrorCode::kOutOfRange) return "out-of-range read returned " + r.to_string();
    }
    Status z = t.volume->write_zeroes(offset, length, false);
    if (z.code() != ErrorCode::kOutOfRange) return "out-of-range write_zeroes returned " + z.to_string();
    Status tr = t.volume->trim(offset, length);
    if (tr.code() != ErrorCode::kOutOfRange) return "out-of-range trim returned " + tr.to_string();
    return check_current(v);
  }

  // An injected ENOSPC / EIO surfaces as that error; bytes outside the failed request
  // are intact and bytes inside hold old or new data; the volume keeps working.
  std::string op_injected_error(size_t v) {
    auto& t = volumes_[v];
    uint64_t offset, length;
    pick_range(t.model, &offset, &length);
    std::vector<uint8_t> data(length);
    random_.fill(data);
    bool fua = random_.percent(30);
    ErrorCode code = random_.percent(60) ? ErrorCode::kNoSpace : ErrorCode::kIo;
    std::string how;
    if (random_.percent(30)) {
      uint64_t budget = random_.uniform(0, length + t.model.chunk_size_bytes());
      fs_.set_write_budget_bytes(budget);
      code = ErrorCode::kNoSpace;
      how = "write budget " + std::to_string(budget);
    } else {
      uint64_t after = random_.uniform(0, 3);
      uint32_t ops = random_.percent(50) ? FaultFileSystem::kOpWrite
                                         : FaultFileSystem::kOpWrite | FaultFileSystem::kOpSync;
      fs_.fail_after(after, code, ops, random_.percent(50));
      how = "fail after " + std::to_string(after) + (ops & FaultFileSystem::kOpSync ? " writes/syncs" : " writes");
    }
    bool flush_instead = random_.percent(20);
    log(std::string(flush_instead ? "flush" : "write") + " with injected " + error_code_name(code) +
        " (" + how + ") " + range_text(v, offset, length) + (fua ? " fua" : ""));
    if (flush_instead) {
      // Dirty something first so the flush has work to do.
      Status w = t.volume->write(offset, data, false);
      if (w.ok()) {
        t.model.write(offset, data, false);
      } else if (std::string e = settle_failed_write(v, offset, data, w, code); !e.empty()) {
        return e;
      }
      Status f = t.volume->flush();
      fs_.clear_faults();
      if (f.ok()) {
        t.model.flush();
      } else {
        if (f.code() != code) return "failed flush returned " + f.to_string() + ", expected " + error_code_name(code);
        t.model.mark_uncertain();
      }
      return check_current(v);
    }
    Status status = t.volume->write(offset, data, fua);
    fs_.clear_faults();
    if (status.ok()) {
      t.model.write(offset, data, fua);
      return check_current(v);
    }
    return settle_failed_write(v, offset, data, status, code);
  }

  std::string settle_failed_write(size_t v, uint64_t offset, std::span<const uint8_t> data,
                                  const Status& status, ErrorCode code) {
    auto& t = volumes_[v];
    fs_.clear_faults();
    if (status.code() != code) {
      return "failed write returned " + status.to_string() + ", expected " + error_code_name(code);
    }
    std::vector<uint8_t> actual(t.model.size_bytes());
    Status r = t.volume->read(0, actual);
    if (!r.ok()) return "read after a failed write failed: " + r.to_string();
    const auto& before = t.model.image();
    for (uint64_t i = 0; i < actual.size(); i++) {
      bool inside = i >= offset && i < offset + data.size();
      bool ok = actual[i] == before[i] || (inside && actual[i] == data[i - offset]);
      if (!ok) {
        return "after a failed write " + range_text(v, offset, data.size()) + " byte " +
               std::to_string(i) + " is " + std::to_string(actual[i]) + ", expected " +
               std::to_string(before[i]) + (inside ? " or the new data" : " (outside the write)");
      }
    }
    t.model.uncertain_write(offset, data,
                            std::span<const uint8_t>(actual).subspan(offset, data.size()));
    return "";
  }

  std::string reopen_all() {
    if (std::string e = reopen_all_unchecked(); !e.empty()) return e;
    for (size_t v = 0; v < volumes_.size(); v++) {
      if (std::string e = check_metadata(v); !e.empty()) return "after reopen: " + e;
    }
    return "";
  }

  std::string reopen_all_unchecked() {
    for (auto& t : volumes_) t.volume.reset();
    for (size_t v = 0; v < volumes_.size(); v++) {
      auto volume = Volume::open(fs_, volumes_[v].dir);
      if (!volume.ok()) return "reopen v" + std::to_string(v) + " failed: " + volume.status().to_string();
      volumes_[v].volume = std::move(volume).value();
    }
    return "";
  }

  std::string op_reopen(bool flush_first) {
    log(flush_first ? "flush all, close and reopen" : "close without flush and reopen");
    if (flush_first) {
      for (size_t v = 0; v < volumes_.size(); v++) {
        if (auto s = volumes_[v].volume->flush(); !s.ok()) return "flush failed: " + s.to_string();
        volumes_[v].model.flush();
      }
    }
    if (std::string e = reopen_all(); !e.empty()) return e;
    for (size_t v = 0; v < volumes_.size(); v++) {
      auto& t = volumes_[v];
      if (flush_first) {
        if (std::string e = check_current(v); !e.empty()) return "after clean reopen: " + e;
        continue;
      }
      std::vector<uint8_t> actual(t.model.size_bytes());
      if (auto s = t.volume->read(0, actual); !s.ok()) return "read failed: " + s.to_string();
      if (std::string e = t.model.check_after_crash(actual); !e.empty()) {
        return "after close without flush, v" + std::to_string(v) + ": " + e;
      }
      t.model.adopt_after_crash(actual, /*exact=*/false);
    }
    return "";
  }

  std::string op_power_loss(bool random_subset) {
    uint64_t drop_seed = random_.next();
    log(random_subset ? "power loss keeping a random subset (seed " + std::to_string(drop_seed) + ")"
                      : "power loss dropping everything unsynced");
    return power_loss_and_verify(random_subset, drop_seed);
  }

  std::string power_loss_and_verify(bool random_subset, uint64_t drop_seed) {
    power_losses_++;
    Status dropped = random_subset ? fs_.drop_random_unsynced(drop_seed) : fs_.drop_unsynced();
    if (!dropped.ok()) return "FaultFileSystem drop failed: " + dropped.to_string();
    if (std::string e = reopen_all(); !e.empty()) return "after power loss: " + e;
    for (size_t v = 0; v < volumes_.size(); v++) {
      if (std::string e = verify_after_power_loss(v, random_subset); !e.empty()) return e;
    }
    return "";
  }

  // REQUIRES: the volume was reopened after a drop and its cycles agree with the model.
  std::string verify_after_power_loss(size_t v, bool random_subset) {
    auto& t = volumes_[v];
    if (std::string e = check_metadata(v); !e.empty()) return "after power loss: " + e;
    std::vector<uint8_t> actual(t.model.size_bytes());
    if (auto s = t.volume->read(0, actual); !s.ok()) return "read failed: " + s.to_string();
    if (!random_subset && t.model.durable_exact()) {
      std::string diff = describe_difference(t.model.durable_image(), actual, 0, t.model.chunk_size_bytes());
      if (!diff.empty()) return "after power loss v" + std::to_string(v) + " differs from its last durable point: " + diff;
    } else if (std::string e = t.model.check_after_crash(actual); !e.empty()) {
      return "after power loss v" + std::to_string(v) + ": " + e;
    }
    // The file system now holds only synced data: what we read is durable.
    t.model.adopt_after_crash(actual, /*exact=*/true);
    t.model.flush();
    for (uint64_t c = t.model.base_cycle(); c <= t.model.cycle(); c++) {
      if (std::string e = check_frozen_point(v, c); !e.empty()) return "after power loss: " + e;
    }
    return "";
  }

  // Power loss in the middle of an operation: the file system starts failing every
  // mutating call after a few, the operation fails (or completes), then everything
  // unsynced is dropped. A freeze or merge has happened wholly or not at all.
  std::string op_crash_during(size_t v) {
    auto& t = volumes_[v];
    uint64_t after = random_.uniform(0, 12);
    bool random_subset = random_.percent(40);
    uint64_t drop_seed = random_.next();
    uint64_t kind = random_.uniform(0, 5);
    static const char* const kNames[] = {"write", "write fua", "flush", "freeze", "merge_oldest", "resize"};
    uint64_t offset = 0, length = 0;
    std::vector<uint8_t> data;
    if (kind <= 1) {
      pick_range(t.model, &offset, &length);
      data.resize(length);
      random_.fill(data);
    }
    const uint64_t old_size = t.model.size_bytes();
    const uint64_t grown = kind == 5 ? pick_grown_size(t.model) : old_size;
    log(std::string("crash during ") + kNames[kind] + " v" + std::to_string(v) + " after " +
        std::to_string(after) + " file operations" + (kind <= 1 ? " " + range_text(v, offset, length) : "") +
        (kind == 5 ? " to " + std::to_string(grown) + " bytes" : "") +
        (random_subset ? ", keeping a random subset (seed " + std::to_string(drop_seed) + ")" : ""));
    // Whatever became durable before the crash point is durable.
    fs_.fail_after(after, ErrorCode::kIo, FaultFileSystem::kOpAllMutating, /*sticky=*/true);
    Status status;
    switch (kind) {
      case 0: case 1: status = t.volume->write(offset, data, kind == 1); break;
      case 2: status = t.volume->flush(); break;
      case 3: status = t.volume->freeze().status(); break;
      case 4: status = t.volume->merge_oldest(); break;
      default: status = t.volume->resize(grown).status(); break;
    }
    fs_.clear_faults();
    bool merge_possible = kind == 4 && t.model.cycle() > t.model.base_cycle();
    if (status.ok() || (kind == 4 && !merge_possible)) {
      switch (kind) {
        case 0: case 1: t.model.write(offset, data, kind == 1); break;
        case 2: t.model.flush(); break;
        case 3: t.model.freeze(); break;
        case 4: if (merge_possible) t.model.merge_oldest(); break;
        default:
          if (grown != old_size) {
            t.model.grow(grown);
            t.model.flush();
          }
          break;
      }
    } else if (kind <= 1) {
      t.model.unknown_write(offset, data);
    } else {
      t.model.mark_uncertain();
    }
    power_losses_++;
    Status dropped = random_subset ? fs_.drop_random_unsynced(drop_seed) : fs_.drop_unsynced();
    if (!dropped.ok()) return "FaultFileSystem drop failed: " + dropped.to_string();
    if (std::string e = reopen_all_unchecked(); !e.empty()) return "after crash during an operation: " + e;
    // A failed freeze or merge may or may not have happened, but wholly.
    if (!status.ok() && kind == 3) {
      uint64_t cycle = t.volume->cycle();
      if (cycle == t.model.cycle() + 1) {
        t.model.freeze();
      } else if (cycle != t.model.cycle()) {
        return "after a crash during freeze, cycle is " + std::to_string(cycle) + ", expected " +
               std::to_string(t.model.cycle()) + " or one more";
      }
    }
    // A failed resize may or may not have happened, but wholly: the old size or the new.
    if (!status.ok() && kind == 5) {
      uint64_t size = t.volume->size_bytes();
      if (size == grown) {
        t.model.grow(grown);
      } else if (size != old_size) {
        return "after a crash during resize, the size is " + std::to_string(size) + ", expected " +
               std::to_string(old_size) + " or " + std::to_string(grown);
      }
    }
    if (!status.ok() && merge_possible) {
      uint64_t base = t.volume->base_cycle();
      if (base == t.model.base_cycle() + 1) {
        t.model.merge_oldest();
      } else if (base != t.model.base_cycle()) {
        return "after a crash during merge, base_cycle is " + std::to_string(base) + ", expected " +
               std::to_string(t.model.base_cycle()) + " or one more";
      }
    }
    for (size_t i = 0; i < volumes_.size(); i++) {
      if (std::string e = verify_after_power_loss(i, random_subset); !e.empty()) return e;
    }
    return "";
  }

  const uint64_t seed_;
  const uint64_t operation_count_;
  Random random_;
  ScratchDir scratch_;
  FaultFileSystem fs_;
  std::vector<VolumeUnderTest> volumes_;
  uint64_t operation_index_ = 0;
  uint64_t power_losses_ = 0;
  std::deque<std::string> recent_;
  const bool verbose_ = env_uint("AMIRROR_VERBOSE", 0) != 0;
};

class ModelTest : public ::testing::TestWithParam<int> {};

TEST_P(ModelTest, RandomOperationsMatchModel) {
  const int shard = GetParam();
  const bool long_run = long_mode();
  const uint64_t operation_count = env_uint("AMIRROR_OPS", long_run ? 20000 : 5000);
  const std::vector<uint64_t> seeds =
      seeds_to_run(long_run ? 200 : 20, static_cast<uint64_t>(shard), kShardCount);
  for (uint64_t seed : seeds) {
    ModelRun run(seed, operation_count);
    std::string failure = run.run();
    ASSERT_EQ(failure, "") << "model test failed; " << failure;
    std::printf("model seed %llu: %llu operations, %llu power losses: ok\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(operation_count),
                static_cast<unsigned long long>(run.power_losses()));
  }
}

INSTANTIATE_TEST_SUITE_P(Shards, ModelTest, ::testing::Range(0, kShardCount));

}  // namespace
}  // namespace amirror::testing
