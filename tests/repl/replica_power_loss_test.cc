// SPDX-License-Identifier: Apache-2.0
// Model-based power-loss test of the target's replica (src/repl/replica.h, format and
// apply protocol in docs/formats/replica.md). A simulated source drives one Replica on
// a FaultFileSystem through random deltas: fresh, full, empty, with zero records, with
// records rewriting chunks of earlier cycles, resumed after a crash, restarted, or given
// up for a newer freeze point. Power is lost between calls and inside them (the file
// system fails every mutating operation after a random count, then everything not
// synced is dropped, all of it or a random part), including while open() finishes an
// interrupted apply. After each power loss the replica is reopened and checked against
// reference images, one per cycle:
//  1. its image (Replica::read, and the raw base.img once no committed delta is
//     pending) is exactly the image of one cycle: the last applied one, or the cycle of
//     a delta whose end_delta returned OK (open() finishes its apply) — never a mix. (A
//     delta whose end_delta failed may have reached the disk whole, commit and all: its
//     cycle is allowed too, until a reopen shows whether it did.)
//  2. a delta whose end_delta returned OK is never lost;
//  3. the staged resume point is no more than what was staged, and resuming from it
//     yields the right image when the delta is finished and applied;
//  4. the applied cycle never goes backwards;
//  5. a delta whose base is not the applied cycle is refused and changes nothing (no
//     file operation at all).
// Non-crash ENOSPC / EIO in any call are injected too; the source then reconnects the
// way the node's receiver does (apply a committed delta, then resume).
//
// Default: 20 seeds x 400 operations. AMIRROR_LONG=1: 300 seeds x 2,000 operations.
// AMIRROR_SEED=n replays one seed, AMIRROR_SEEDS / AMIRROR_FIRST_SEED / AMIRROR_OPS
// override the counts, AMIRROR_VERBOSE=1 logs every operation. A failure prints the
// seed, the operation index and the last operations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <sstream>

#include "base/units.h"
#include "repl/replica.h"
#include "store/chunk_math.h"
#include "testing/fault_file_system.h"
#include "testing/model_volume.h"
#include "testing/test_support.h"

namespace amirror::testing {
namespace {

using repl::BeginDelta;
using repl::ChunkRecord;
using repl::RecordKind;
using repl::Replica;
using repl::ReplicaState;

// One record of a delta as the source sends it.
struct SourceRecord {
  uint64_t chunk_index = 0;
  RecordKind kind = RecordKind::kData;
  std::vector<uint8_t> data;  // kData and kPartial
  uint64_t offset_in_chunk_bytes = 0;  // kPartial only
};

// One delta the source has frozen: its records and the image it produces.
struct SourceDelta {
  uint64_t base_cycle = 0;
  uint64_t target_cycle = 0;
  int64_t freeze_time_unix_ms = 0;
  bool full = false;
  std::vector<SourceRecord> records;  // ascending chunk_index, as the replica requires
  std::vector<uint8_t> image;         // the reference image of target_cycle
  uint64_t most_records_staged = 0;   // over every stage file of this delta so far

  BeginDelta begin(uint64_t first_record) const {
    return BeginDelta{base_cycle,     target_cycle, freeze_time_unix_ms,
                      records.size(), first_record, full};
  }
};

// The source's next call, and roughly how many mutating file operations it makes (so a
// crash point drawn in [0, count] lands anywhere inside it, or just after it).
enum class Action { kBegin, kStage, kEnd, kApply };
const char* action_name(Action action) {
  switch (action) {
    case Action::kBegin:
      return "begin_delta";
    case Action::kStage:
      return "stage";
    case Action::kEnd:
      return "end_delta";
    case Action::kApply:
      return "apply";
  }
  return "?";
}

std::string state_text(const ReplicaState& state) {
  std::ostringstream out;
  out << "applied " << state.applied_cycle << ", staged " << state.staged_base_cycle << "->"
      << state.staged_target_cycle << " x" << state.staged_record_count << " (last chunk "
      << state.staged_last_chunk_index << ")";
  return out.str();
}

// staged_last_chunk_index means something only when a record is staged ("if any").
bool same_state(const ReplicaState& a, const ReplicaState& b) {
  return a.applied_cycle == b.applied_cycle &&
         a.applied_freeze_time_unix_ms == b.applied_freeze_time_unix_ms &&
         a.staged_target_cycle == b.staged_target_cycle &&
         a.staged_base_cycle == b.staged_base_cycle &&
         a.staged_record_count == b.staged_record_count &&
         (a.staged_record_count == 0 || a.staged_last_chunk_index == b.staged_last_chunk_index);
}

// The file an injected failure hit: "injected failure on <path> (...)" -> its name.
std::string failed_file(const Status& status) {
  const std::string& message = status.message();
  size_t start = message.find("injected failure on ");
  if (start == std::string::npos) return "?";
  start += std::strlen("injected failure on ");
  size_t end = message.find(" (", start);
  std::string path =
      message.substr(start, end == std::string::npos ? std::string::npos : end - start);
  std::string name = path.substr(path.rfind('/') + 1);
  return name == "replica" ? "the directory" : name;
}

uint64_t mutating_operation_count(const FaultFileSystem& fs) {
  uint64_t total = 0;
  for (uint32_t bit = 1; bit <= FaultFileSystem::kOpSyncDir; bit <<= 1) {
    total += fs.operation_count(static_cast<FaultFileSystem::Op>(bit));
  }
  return total;
}

// One seeded run. Each operation returns "" or a description of what went wrong.
class PowerLossRun {
 public:
  PowerLossRun(uint64_t seed, uint64_t operation_count)
      : seed_(seed),
        operation_count_(operation_count),
        random_(seed),
        scratch_("replica-power", /*in_memory=*/true) {}

  std::string run() {
    std::string error = setup();
    for (uint64_t i = 0; error.empty() && i < operation_count_; i++) {
      operation_index_ = i;
      error = step();
    }
    if (error.empty()) {
      log("final power loss");
      error = power_loss(random_.percent(50));
    }
    if (error.empty()) return "";
    std::ostringstream report;
    report << "seed " << seed_ << " failed at operation " << operation_index_ << ": " << error
           << "\n  replay: AMIRROR_SEED=" << seed_ << " amirror_tests --gtest_filter='*PowerLoss*'"
           << "\n  replica: size " << size_bytes_ << ", chunk " << chunk_size_bytes_
           << ", model applied cycle " << applied_cycle_ << ", committed " << committed_target_
           << ", maybe committed " << maybe_committed_target_ << "\n  last operations:";
    for (const std::string& line : recent_) report << "\n    " << line;
    return report.str();
  }

  uint64_t power_losses() const { return power_losses_; }
  // While a first full copy was written straight into base.img (Replica::filling_base).
  uint64_t power_losses_while_filling_base() const { return power_losses_while_filling_base_; }
  uint64_t applied_deltas() const { return applied_deltas_; }
  uint64_t resumes() const { return resumes_; }
  uint64_t partial_records() const { return partial_records_; }
  uint64_t resumes_after_power_loss() const { return resumes_after_power_loss_; }
  // Where the power failed inside a call: "apply at replica.meta.tmp" -> count.
  const std::map<std::string, uint64_t>& crash_sites() const { return crash_sites_; }

 private:
  void log(const std::string& line) {
    if (verbose_)
      std::fprintf(stderr, "#%llu %s\n", static_cast<unsigned long long>(operation_index_),
                   line.c_str());
    recent_.push_back("#" + std::to_string(operation_index_) + " " + line);
    if (recent_.size() > 60) recent_.pop_front();
  }

  uint64_t chunk_count() const { return (size_bytes_ + chunk_size_bytes_ - 1) / chunk_size_bytes_; }
  uint64_t chunk_length(uint64_t chunk_index) const {
    return std::min(chunk_size_bytes_, size_bytes_ - chunk_index * chunk_size_bytes_);
  }

  std::string setup() {
    static constexpr uint64_t kChunkSizes[] = {4 * kKiB, 8 * kKiB};
    chunk_size_bytes_ = kChunkSizes[random_.uniform(0, 1)];
    uint64_t chunks = random_.uniform(6, 40);
    // Usually a short last chunk.
    size_bytes_ = chunks * chunk_size_bytes_;
    if (random_.percent(70))
      size_bytes_ -=
          random_.uniform(1, chunk_size_bytes_ / kSectorSizeBytes - 1) * kSectorSizeBytes;
    dir_ = scratch_.sub("replica");
    if (Status s = fs_.make_dir(dir_); !s.ok()) return s.to_string();
    if (Status s = fs_.sync_dir(scratch_.path()); !s.ok()) return s.to_string();
    auto replica =
        Replica::open_or_create(fs_, dir_, "site-a", "db", size_bytes_, chunk_size_bytes_);
    if (!replica.ok()) return "create: " + replica.status().to_string();
    replica_ = std::move(replica).value();
    images_[0] = std::vector<uint8_t>(size_bytes_, 0);
    log("created replica of " + std::to_string(size_bytes_) + " bytes, chunk " +
        std::to_string(chunk_size_bytes_));
    return "";
  }

  std::string step() {
    uint64_t dice = random_.uniform(0, 999);
    if (dice < 500) return op_advance();
    if (dice < 650) return op_crash_during();
    if (dice < 730) return op_power_loss();
    if (dice < 790) return op_injected_error();
    if (dice < 840) return op_refused_delta();
    if (dice < 880) return op_restart_delta();
    if (dice < 910) return op_clean_reopen();
    return op_check();
  }

  // ---- The source -------------------------------------------------------------

  SourceDelta& current() { return deltas_.at(current_target_); }

  Action next_action() const {
    if (committed_target_ != 0) return Action::kApply;
    if (current_target_ == 0 || !begun_) return Action::kBegin;
    if (next_record_ < deltas_.at(current_target_).records.size()) return Action::kStage;
    return Action::kEnd;
  }

  uint64_t estimated_file_operations(Action action) const {
    switch (action) {
      case Action::kBegin:
        return 3;  // remove, create, write header
      case Action::kStage:
        return 8;  // batches of up to 8 records
      case Action::kEnd:
        return 4;  // sync, write commit, sync, sync dir
      case Action::kApply:
        // A merge: two volume.meta replacements (create, write, sync, rename, sync dir
        // each), a write or punch per chunk of the layer, a sync, two removes.
        return size_bytes_ / chunk_size_bytes_ + 14;
    }
    return 0;
  }

  // A new delta from the applied cycle: a new freeze point of the source.
  void freeze_new_delta() {
    SourceDelta delta;
    delta.full = applied_cycle_ == 0 ? random_.percent(70) : random_.percent(12);
    delta.target_cycle = std::max(highest_target_, applied_cycle_) + random_.uniform(1, 3);
    highest_target_ = delta.target_cycle;
    // A full delta's base is not checked ("0 with full = any").
    delta.base_cycle = delta.full && random_.percent(50) ? 0 : applied_cycle_;
    freeze_time_unix_ms_ += static_cast<int64_t>(random_.uniform(1, 5000));
    delta.freeze_time_unix_ms = freeze_time_unix_ms_;
    delta.image = delta.full ? std::vector<uint8_t>(size_bytes_, 0) : images_.at(applied_cycle_);
    uint64_t percent;
    switch (random_.uniform(0, 9)) {
      case 0:
        percent = 0;
        break;  // an empty delta (nothing changed)
      case 1:
        percent = 100;
        break;  // every chunk
      case 2:
      case 3:
        percent = 8;
        break;
      default:
        percent = random_.uniform(10, 60);
        break;
    }
    for (uint64_t chunk_index = 0; chunk_index < chunk_count(); chunk_index++) {
      if (!random_.percent(percent)) continue;
      SourceRecord record;
      record.chunk_index = chunk_index;
      uint64_t offset = chunk_index * chunk_size_bytes_;
      uint64_t length = chunk_length(chunk_index);
      uint64_t shape = random_.uniform(0, 99);
      if (!delta.full && shape >= 80) {
        // Partial records (what a source sends for a chunk whose layers know their dirty
        // sectors): one per run of random dirty sectors, ascending; the rest of the
        // chunk must stay as the previous image has it.
        add_partial_records(delta, chunk_index);
        continue;
      }
      if (shape < 15) {
        record.kind = RecordKind::kZero;
      } else {
        record.data.resize(length);
        if (shape < 20) {
          // zeros sent as data
        } else if (shape < 25) {
          // the same bytes again (a chunk written with what it held)
          std::copy_n(delta.image.begin() + static_cast<ptrdiff_t>(offset), length,
                      record.data.begin());
        } else if (shape < 45) {
          // a few bytes changed: old and new differ only a little, so a mix would hide
          // in most comparisons of whole chunks but not of bytes
          std::copy_n(delta.image.begin() + static_cast<ptrdiff_t>(offset), length,
                      record.data.begin());
          record.data[random_.uniform(0, length - 1)] ^=
              static_cast<uint8_t>(random_.uniform(1, 255));
        } else {
          random_.fill(record.data);
        }
      }
      if (record.kind == RecordKind::kZero) {
        std::fill_n(delta.image.begin() + static_cast<ptrdiff_t>(offset), length, 0);
      } else {
        std::copy(record.data.begin(), record.data.end(),
                  delta.image.begin() + static_cast<ptrdiff_t>(offset));
      }
      delta.records.push_back(std::move(record));
    }
    log("freeze delta " + std::to_string(delta.base_cycle) + "->" +
        std::to_string(delta.target_cycle) + (delta.full ? " full" : "") + " with " +
        std::to_string(delta.records.size()) + " records");
    current_target_ = delta.target_cycle;
    next_record_ = 0;
    begun_ = false;
    images_[delta.target_cycle] = delta.image;
    deltas_[delta.target_cycle] = std::move(delta);
  }

  void add_partial_records(SourceDelta& delta, uint64_t chunk_index) {
    // Finer than a source's dirty sectors (the replica takes any run within a chunk),
    // so one chunk gets several records and a cut can land between them.
    const uint64_t sector_bytes = chunk_size_bytes_ / 8;
    const uint64_t length = chunk_length(chunk_index);
    const uint64_t sectors = (length + sector_bytes - 1) / sector_bytes;
    uint64_t sector = random_.uniform(0, sectors - 1);
    while (sector < sectors) {
      uint64_t end = std::min(sectors, sector + random_.uniform(1, 3));
      SourceRecord record;
      record.chunk_index = chunk_index;
      record.kind = RecordKind::kPartial;
      record.offset_in_chunk_bytes = sector * sector_bytes;
      record.data.resize(std::min(end * sector_bytes, length) - record.offset_in_chunk_bytes);
      random_.fill(record.data);
      std::copy(record.data.begin(), record.data.end(),
                delta.image.begin() + static_cast<ptrdiff_t>(chunk_index * chunk_size_bytes_ +
                                                              record.offset_in_chunk_bytes));
      delta.records.push_back(std::move(record));
      partial_records_ += 1;
      sector = end + random_.uniform(1, 4);  // a clean gap: runs are never contiguous
    }
  }

  // Performs the source's next call. Updates the model with whatever returned OK; the
  // first failure is left in *status. Returns "" or an invariant violation.
  std::string advance(Action action, Status* status) {
    *status = Status();
    switch (action) {
      case Action::kBegin: {
        if (current_target_ == 0) freeze_new_delta();
        SourceDelta& delta = current();
        log("begin_delta " + std::to_string(delta.base_cycle) + "->" +
            std::to_string(delta.target_cycle) + " first_record " + std::to_string(next_record_) +
            " of " + std::to_string(delta.records.size()));
        *status = replica_->begin_delta(delta.begin(next_record_));
        if (!status->ok()) return "";
        if (next_record_ > 0) resumes_++;
        begun_ = true;
        return "";
      }
      case Action::kStage: {
        SourceDelta& delta = current();
        uint64_t batch =
            std::min<uint64_t>(random_.uniform(1, 8), delta.records.size() - next_record_);
        log("stage records [" + std::to_string(next_record_) + ", " +
            std::to_string(next_record_ + batch) + ") of delta to " +
            std::to_string(delta.target_cycle));
        for (uint64_t i = 0; i < batch; i++) {
          const SourceRecord& record = delta.records[next_record_];
          *status = replica_->stage(
              ChunkRecord{next_record_, record.chunk_index, record.kind, record.data, record.offset_in_chunk_bytes});
          if (!status->ok()) return "";
          next_record_++;
          delta.most_records_staged = std::max(delta.most_records_staged, next_record_);
        }
        return "";
      }
      case Action::kEnd: {
        SourceDelta& delta = current();
        log("end_delta " + std::to_string(delta.records.size()) + " records, delta to " +
            std::to_string(delta.target_cycle));
        *status = replica_->end_delta(delta.records.size());
        if (!status->ok()) {
          // The commit record may or may not have reached the disk.
          maybe_committed_target_ = delta.target_cycle;
          return "";
        }
        uint64_t target = delta.target_cycle;
        maybe_committed_target_ = 0;
        // The commit is the freeze: the replica is at the new point from here on (apply
        // only merges old points away).
        committed_target_ = target;
        if (std::string e = adopt_applied(target, /*after_power_loss=*/false, "after end_delta"); !e.empty())
          return e;
        committed_target_ = target;
        return "";
      }
      case Action::kApply: {
        log("apply delta to " + std::to_string(committed_target_));
        *status = replica_->apply([] {});
        if (!status->ok()) return "";
        return adopt_applied(committed_target_, /*after_power_loss=*/false, "after apply");
      }
    }
    return "";
  }

  // The replica is at `cycle` with no committed delta pending: checks that against the
  // model (invariants 1, 2 and 4) and the image, then makes it the model's cycle.
  // `after_power_loss`: the simulated disk holds only what was durable and open() has
  // run, so a delta whose commit may have reached the disk has been applied by now or
  // never will be. (A clean reopen settles nothing: an old stage holding a durable
  // commit, whose removal is not durable yet, may still come back.)
  std::string adopt_applied(uint64_t cycle, bool after_power_loss, const std::string& when) {
    if (committed_target_ != 0 && cycle != committed_target_) {
      return when + ": the delta to cycle " + std::to_string(committed_target_) +
             " was durable (end_delta returned OK) but the replica is at cycle " +
             std::to_string(cycle);
    }
    if (cycle != applied_cycle_ && cycle != committed_target_ && cycle != maybe_committed_target_) {
      return when + ": the replica is at cycle " + std::to_string(cycle) + ", expected " +
             std::to_string(applied_cycle_) +
             (maybe_committed_target_ != 0
                  ? " or " + std::to_string(maybe_committed_target_) + " (whose end_delta failed)"
                  : "");
    }
    if (cycle < highest_applied_seen_) {
      return when + ": the applied cycle went back from " + std::to_string(highest_applied_seen_) +
             " to " + std::to_string(cycle);
    }
    if (cycle != applied_cycle_) {
      applied_deltas_++;
      applied_freeze_time_unix_ms_ = deltas_.at(cycle).freeze_time_unix_ms;
    }
    highest_applied_seen_ = cycle;
    applied_cycle_ = cycle;
    committed_target_ = 0;
    if (after_power_loss || maybe_committed_target_ <= cycle) maybe_committed_target_ = 0;
    if (current_target_ != 0 && current_target_ <= cycle) current_target_ = 0;  // sent and applied
    ReplicaState state = replica_->state();
    if (state.applied_cycle != cycle) {
      return when + ": state() says cycle " + std::to_string(state.applied_cycle) + ", expected " +
             std::to_string(cycle);
    }
    if (state.applied_freeze_time_unix_ms != applied_freeze_time_unix_ms_) {
      return when + ": applied freeze time " + std::to_string(state.applied_freeze_time_unix_ms) +
             ", expected " + std::to_string(applied_freeze_time_unix_ms_);
    }
    if (std::string e = check_read(cycle, when); !e.empty()) return e;
    std::string activity = replica_->activity();
    if (activity != "idle" && activity != "receiving") return when + ": the replica is " + activity;
    // base.img holds the newest point once the replica merged down to keep 1 (open()
    // and apply() do); right after a commit it may still hold the one before.
    if (replica_->image_cycle() == std::optional<uint64_t>(cycle)) {
      if (std::string e = check_raw_image(cycle, when); !e.empty()) return e;
    }
    // Forget what can no longer come back.
    std::erase_if(images_, [&](const auto& entry) { return entry.first < applied_cycle_; });
    std::erase_if(deltas_, [&](const auto& entry) { return entry.first <= applied_cycle_; });
    return "";
  }

  // Reads the whole replica and compares it with the image of `cycle`.
  std::string check_read(uint64_t cycle, const std::string& when) {
    std::vector<uint8_t> actual(size_bytes_);
    if (replica_->filling_base()) {
      // A full copy is being written straight into base.img: that partial image is no
      // point, so nothing may read it (invariant 1), and only an empty replica fills.
      if (cycle != 0) return when + ": a base fill in a replica at cycle " + std::to_string(cycle);
      if (replica_->image_cycle().has_value()) return when + ": image_cycle() names a base being filled";
      Status s = replica_->read(0, actual);
      if (s.code() != ErrorCode::kBusy) return when + ": a read during a base fill gave " + s.to_string();
      return "";
    }
    if (Status s = replica_->read(0, actual); !s.ok())
      return when + ": read failed: " + s.to_string();
    return compare_with_image(cycle, actual, when + ": the replica does not read as");
  }

  // Compares the raw base.img with the image of `cycle`.
  std::string check_raw_image(uint64_t cycle, const std::string& when) {
    auto file = posix_file_system().open(replica_->image_path(), OpenMode::kOpenExisting);
    if (!file.ok()) return when + ": open base.img: " + file.status().to_string();
    auto size = file.value()->size_bytes();
    if (!size.ok() || size.value() != size_bytes_) return when + ": base.img has the wrong size";
    std::vector<uint8_t> actual(size_bytes_);
    if (Status s = file.value()->read_at(0, actual); !s.ok())
      return when + ": read base.img: " + s.to_string();
    return compare_with_image(cycle, actual, when + ": base.img is not");
  }

  // "" if `actual` is the reference image of `cycle`, else `what` + where they differ.
  std::string compare_with_image(uint64_t cycle, std::span<const uint8_t> actual,
                                 const std::string& what) {
    auto it = images_.find(cycle);
    if (it == images_.end()) return what + " cycle " + std::to_string(cycle) + ": no such image";
    std::string diff = describe_difference(it->second, actual, 0, chunk_size_bytes_);
    if (diff.empty()) return "";
    return what + " the image of cycle " + std::to_string(cycle) + ": " + diff;
  }

  // Where the source resumes after a reconnect: from the replica's resume point if it
  // holds a prefix of the source's delta, else from the start (or a new freeze point).
  void reconnect_source(const ReplicaState& state, bool after_power_loss) {
    begun_ = false;
    if (current_target_ == 0) return;
    const SourceDelta& delta = current();
    if (!delta.full && delta.base_cycle != applied_cycle_) {
      // A delta whose commit was in doubt was applied after all: freeze anew.
      current_target_ = 0;
      return;
    }
    if (state.staged_target_cycle == current_target_ && random_.percent(90)) {
      next_record_ = state.staged_record_count;
      if (after_power_loss && next_record_ > 0) resumes_after_power_loss_++;
    } else {
      next_record_ = 0;
    }
  }

  // ---- Operations ---------------------------------------------------------------

  std::string op_advance() {
    Status status;
    Action action = next_action();
    if (std::string e = advance(action, &status); !e.empty()) return e;
    if (!status.ok())
      return std::string(action_name(action)) +
             " failed with no fault injected: " + status.to_string();
    return "";
  }

  // Power is lost inside the source's next call: every mutating file operation after
  // the first `after` fails, then everything unsynced is dropped.
  std::string op_crash_during() {
    Action action = next_action();
    // After a power loss the next call is mostly a begin_delta (little survives of an
    // uncommitted stage): spread the crashes over the later calls too.
    if (action == Action::kBegin && random_.percent(65)) return op_advance();
    if (action == Action::kStage && random_.percent(40)) return op_advance();
    if (action == Action::kBegin && current_target_ == 0) freeze_new_delta();
    uint64_t after = random_.uniform(0, estimated_file_operations(action));
    bool random_subset = random_.percent(50);
    log(std::string("crash during ") + action_name(action) + " after " + std::to_string(after) +
        " file operations");
    fs_.fail_after(after, ErrorCode::kIo, FaultFileSystem::kOpAllMutating, /*sticky=*/true);
    Status status;
    std::string error = advance(action, &status);
    fs_.clear_faults();
    if (!error.empty()) return error;
    if (!status.ok())
      log("  " + std::string(action_name(action)) + " failed: " + status.to_string());
    crash_sites_[std::string(action_name(action)) +
                 (status.ok() ? " (completed)" : " at " + failed_file(status))]++;
    return power_loss(random_subset);
  }

  std::string op_power_loss() {
    bool random_subset = random_.percent(50);
    log(std::string("power loss between calls") + (random_subset ? ", keeping a random part" : ""));
    return power_loss(random_subset);
  }

  std::string drop(bool random_subset) {
    power_losses_++;
    if (replica_ != nullptr && replica_->filling_base()) power_losses_while_filling_base_++;
    uint64_t drop_seed = random_.next();
    Status dropped = random_subset ? fs_.drop_random_unsynced(drop_seed) : fs_.drop_unsynced();
    if (!dropped.ok()) return "FaultFileSystem drop failed: " + dropped.to_string();
    return "";
  }

  std::string power_loss(bool random_subset) {
    if (std::string e = drop(random_subset); !e.empty()) return e;
    replica_.reset();  // its files are dead: the destructor cannot repair anything
    // Power may fail again while open() finishes an interrupted apply.
    for (int attempt = 0;; attempt++) {
      bool crash_in_open = attempt < 3 && random_.percent(25);
      uint64_t after = random_.uniform(0, 12);
      if (crash_in_open)
        fs_.fail_after(after, ErrorCode::kIo, FaultFileSystem::kOpAllMutating, /*sticky=*/true);
      auto opened = Replica::open(fs_, dir_);
      fs_.clear_faults();
      if (opened.ok()) {
        replica_ = std::move(opened).value();
        break;
      }
      if (!crash_in_open) return "reopen after power loss failed: " + opened.status().to_string();
      crash_sites_["open() at " + failed_file(opened.status())]++;
      random_subset = random_.percent(50);
      log("  power lost again inside open() after " + std::to_string(after) +
          " file operations: " + opened.status().to_string());
      if (std::string e = drop(random_subset); !e.empty()) return e;
    }
    return verify_after_reopen(/*after_power_loss=*/true, "after power loss");
  }

  // Invariants 1-4 after the replica was reopened (open() finished any committed delta),
  // after a power loss or a clean close.
  std::string verify_after_reopen(bool after_power_loss, const std::string& when) {
    ReplicaState state = replica_->state();
    std::string activity = replica_->activity();
    log("  reopened: " + state_text(state) + ", " + activity);
    if (activity != "idle" && activity != "receiving") {
      return when + ": open() left the replica " + activity + " (it must finish a committed delta)";
    }
    if (std::string e = adopt_applied(state.applied_cycle, after_power_loss, when); !e.empty())
      return e;
    if (std::string e = check_stage(state, activity, /*after_open=*/true, when); !e.empty())
      return e;
    reconnect_source(state, after_power_loss);
    return "";
  }

  // The staged delta (if any) is one the source sent, fits the applied cycle, and its
  // resume point is no more than was ever staged of it. `after_open`: the state was just
  // scanned from the files, so delta.stage is present exactly when a delta is staged
  // (between opens a failed begin_delta may leave an old stage file that the replica
  // no longer counts; the next begin_delta or open deals with it).
  std::string check_stage(const ReplicaState& state, const std::string& activity, bool after_open,
                          const std::string& when) {
    (void)after_open;  // the staging record lives in replica.meta, not in a file of its own
    if (state.staged_target_cycle == 0) {
      if (activity != "idle" || state.staged_record_count != 0)
        return when + ": inconsistent state " + state_text(state);
      return "";
    }
    if (activity != "receiving") return when + ": inconsistent state " + state_text(state);
    auto it = deltas_.find(state.staged_target_cycle);
    if (it == deltas_.end()) {
      return when + ": a delta to cycle " + std::to_string(state.staged_target_cycle) +
             " is staged, which is not one the source sent since cycle " +
             std::to_string(applied_cycle_);
    }
    const SourceDelta& delta = it->second;
    uint64_t expected_base = delta.full ? 0 : delta.base_cycle;
    if (state.staged_base_cycle != expected_base ||
        (!delta.full && delta.base_cycle != applied_cycle_)) {
      return when + ": staged delta " + state_text(state) + " does not fit (sent as " +
             std::to_string(delta.base_cycle) + "->" + std::to_string(delta.target_cycle) + ")";
    }
    if (state.staged_record_count > delta.most_records_staged) {
      return when + ": " + std::to_string(state.staged_record_count) +
             " records staged after reopen, but only " + std::to_string(delta.most_records_staged) +
             " were ever staged";
    }
    if (state.staged_record_count > 0 &&
        state.staged_last_chunk_index != delta.records[state.staged_record_count - 1].chunk_index) {
      return when + ": staged last chunk " + std::to_string(state.staged_last_chunk_index) +
             ", expected " +
             std::to_string(delta.records[state.staged_record_count - 1].chunk_index);
    }
    return "";
  }

  // A non-crash ENOSPC or EIO inside the source's next call. The call fails with that
  // code (or succeeds); the source then reconnects like the node's receiver does.
  std::string op_injected_error() {
    Action action = next_action();
    if (action == Action::kBegin && current_target_ == 0) freeze_new_delta();
    ErrorCode code = random_.percent(50) ? ErrorCode::kNoSpace : ErrorCode::kIo;
    std::string how;
    if (action == Action::kEnd && random_.percent(40)) {
      // The fdatasync after the commit record fails: the commit is in the file but the
      // caller is told it is not durable.
      fs_.fail_after(1, code, FaultFileSystem::kOpSync, random_.percent(50));
      how = "the second fdatasync failing";
    } else if (random_.percent(30)) {
      uint64_t budget = random_.uniform(0, 3 * chunk_size_bytes_);
      fs_.set_write_budget_bytes(budget);
      code = ErrorCode::kNoSpace;
      how = "write budget " + std::to_string(budget);
    } else {
      uint64_t after = random_.uniform(0, estimated_file_operations(action));
      bool sticky = random_.percent(50);
      fs_.fail_after(after, code, FaultFileSystem::kOpAllMutating, sticky);
      how = std::string(sticky ? "every" : "one") + " operation failing after " +
            std::to_string(after);
    }
    log(std::string(action_name(action)) + " with injected " + error_code_name(code) + " (" + how +
        ")");
    Status status;
    std::string error = advance(action, &status);
    fs_.clear_faults();
    if (!error.empty()) return error;
    if (status.ok()) return "";
    log("  failed: " + status.to_string());
    if (status.code() != code) {
      return std::string(action_name(action)) + " failed with " + status.to_string() +
             ", expected " + error_code_name(code);
    }
    if (random_.percent(30)) return op_clean_reopen();  // the node restarts after the error
    return reconnect("after an injected error");
  }

  // The source reconnects: a committed delta is applied first (as the receiver does on
  // OPEN_REPLICA), then the source resumes from the replica's state.
  std::string reconnect(const std::string& when) {
    std::string activity = replica_->activity();
    if (activity == "committed") {
      if (committed_target_ == 0 && maybe_committed_target_ == 0)
        return when + ": committed, but nothing was";
      uint64_t target = committed_target_ != 0 ? committed_target_ : maybe_committed_target_;
      // A committed delta is served whole before its apply.
      if (std::string e = check_read(target, when + ", committed"); !e.empty()) return e;
      log("  reconnect: apply the committed delta");
      if (Status s = replica_->apply([] {}); !s.ok())
        return when + ": retrying the apply failed: " + s.to_string();
    } else if (activity != "idle" && activity != "receiving") {
      return when + ": the replica is " + activity;
    }
    ReplicaState state = replica_->state();
    log("  reconnect: " + state_text(state));
    if (std::string e = adopt_applied(state.applied_cycle, /*after_power_loss=*/false, when);
        !e.empty())
      return e;
    if (std::string e = check_stage(state, replica_->activity(), /*after_open=*/false, when);
        !e.empty())
      return e;
    reconnect_source(state, /*after_power_loss=*/false);
    return "";
  }

  // Invariant 5: a delta that does not start at the applied cycle is refused, and
  // nothing changes: not the state, not the image, not a single file.
  std::string op_refused_delta() {
    ReplicaState before = replica_->state();
    std::string activity_before = replica_->activity();
    uint64_t cycle = before.applied_cycle;
    BeginDelta begin;
    switch (random_.uniform(0, 4)) {
      case 0:  // from a cycle the replica has not reached
        begin = {cycle + random_.uniform(1, 3), cycle + random_.uniform(4, 6), 1, 3, 0, false};
        break;
      case 1:  // a replayed or old delta
        if (cycle == 0) return "";
        begin = {random_.uniform(0, cycle - 1), cycle, 1, 2, 0, false};
        break;
      case 2:  // from the applied cycle to one not after it
        begin = {cycle, random_.uniform(0, cycle), 1, 2, 0, false};
        break;
      case 3:  // a resume of a delta that is not staged (or not that far)
        begin = {cycle,
                 before.staged_target_cycle != 0 ? before.staged_target_cycle : cycle + 1,
                 1,
                 100,
                 before.staged_record_count + random_.uniform(1, 5),
                 before.staged_base_cycle == 0 && before.staged_target_cycle != 0};
        break;
      default:  // a resume at another point of the staged delta
        if (before.staged_target_cycle == 0 || before.staged_record_count == 0) return "";
        begin = {cycle,
                 before.staged_target_cycle,
                 1,
                 100,
                 random_.uniform(1, before.staged_record_count),
                 before.staged_base_cycle == 0};
        if (begin.first_record == before.staged_record_count) begin.first_record = 0;
        if (begin.first_record == 0) return "";
        break;
    }
    log("refused begin_delta " + std::to_string(begin.base_cycle) + "->" +
        std::to_string(begin.target_cycle) + " first_record " + std::to_string(begin.first_record) +
        (begin.full ? " full" : ""));
    uint64_t operations_before = mutating_operation_count(fs_);
    Status status = replica_->begin_delta(begin);
    if (status.ok())
      return "begin_delta " + std::to_string(begin.base_cycle) + "->" +
             std::to_string(begin.target_cycle) + " was accepted by a replica at " +
             state_text(before);
    if (mutating_operation_count(fs_) != operations_before)
      return "a refused begin_delta changed files";
    ReplicaState after = replica_->state();
    if (!same_state(before, after) || replica_->activity() != activity_before) {
      return "a refused begin_delta changed the state from " + state_text(before) + " to " +
             state_text(after);
    }
    uint64_t expected =
        committed_target_ != 0 && activity_before == "committed" ? committed_target_ : cycle;
    return check_read(expected, "after a refused begin_delta");
  }

  // The source gives up the delta it is sending: it starts it again from record 0, or
  // freezes a newer point and sends that instead.
  std::string op_restart_delta() {
    if (current_target_ == 0 || committed_target_ != 0) return "";
    if (random_.percent(50)) {
      log("source restarts its delta to " + std::to_string(current_target_) + " from record 0");
      next_record_ = 0;
      begun_ = false;
    } else {
      log("source gives up its delta to " + std::to_string(current_target_) +
          " for a newer freeze point");
      current_target_ = 0;
    }
    return "";
  }

  // A clean close and reopen (process restart, no power loss): nothing is lost at all.
  std::string op_clean_reopen() {
    ReplicaState before = replica_->state();
    std::string activity = replica_->activity();
    log("close and reopen without power loss (" + activity + ")");
    replica_.reset();
    auto opened = Replica::open(fs_, dir_);
    if (!opened.ok()) return "clean reopen failed: " + opened.status().to_string();
    replica_ = std::move(opened).value();
    ReplicaState after = replica_->state();
    if (activity == "committed") {
      if (after.applied_cycle != committed_target_)
        return "clean reopen did not finish the committed delta";
    } else if (maybe_committed_target_ != 0 && after.applied_cycle == maybe_committed_target_) {
      // end_delta failed after writing its commit record (say its fdatasync failed):
      // the delta is complete on disk, and open() applies it. The source, told nothing,
      // learns it from the replica's state.
    } else if (!same_state(before, after)) {
      return "clean reopen changed the state from " + state_text(before) + " to " +
             state_text(after);
    }
    return verify_after_reopen(/*after_power_loss=*/false, "after a clean reopen");
  }

  std::string op_check() {
    log("check");
    std::string activity = replica_->activity();
    uint64_t cycle = replica_->state().applied_cycle;
    if (cycle != applied_cycle_)
      return "state() says cycle " + std::to_string(cycle) + ", the model " +
             std::to_string(applied_cycle_);
    if (std::string e = check_read(cycle, "check"); !e.empty()) return e;
    // base.img holds the newest point once merged (not between commit and apply).
    if (replica_->image_cycle() != std::optional<uint64_t>(cycle)) return "";
    return check_raw_image(cycle, "check");
  }

  const uint64_t seed_;
  const uint64_t operation_count_;
  Random random_;
  ScratchDir scratch_;
  FaultFileSystem fs_;
  std::string dir_;
  uint64_t size_bytes_ = 0;
  uint64_t chunk_size_bytes_ = 0;
  std::unique_ptr<Replica> replica_;

  // The reference model.
  std::map<uint64_t, std::vector<uint8_t>> images_;  // cycle -> image, from applied_cycle_ on
  std::map<uint64_t, SourceDelta> deltas_;           // target cycle -> delta, not yet applied
  uint64_t applied_cycle_ = 0;                       // the replica's cycle as last known
  uint64_t highest_applied_seen_ = 0;                // invariant 4
  uint64_t committed_target_ = 0;                    // end_delta returned OK, apply not yet
  uint64_t maybe_committed_target_ = 0;              // end_delta failed: the commit may be durable
  int64_t applied_freeze_time_unix_ms_ = 0;

  // The source.
  uint64_t current_target_ = 0;  // the delta being sent, 0 = none
  bool begun_ = false;           // begin_delta accepted since the last reconnect
  uint64_t next_record_ = 0;
  uint64_t highest_target_ = 0;
  int64_t freeze_time_unix_ms_ = 1'700'000'000'000;

  uint64_t operation_index_ = 0;
  uint64_t power_losses_ = 0;
  uint64_t power_losses_while_filling_base_ = 0;
  uint64_t applied_deltas_ = 0;
  uint64_t resumes_ = 0;
  uint64_t resumes_after_power_loss_ = 0;
  uint64_t partial_records_ = 0;
  std::map<std::string, uint64_t> crash_sites_;
  std::deque<std::string> recent_;
  const bool verbose_ = env_uint("AMIRROR_VERBOSE", 0) != 0;
};

TEST(ReplicaPowerLossTest, RandomDeltasAndPowerLossesMatchModel) {
  const bool long_run = long_mode();
  const uint64_t operation_count = env_uint("AMIRROR_OPS", long_run ? 2000 : 400);
  const std::vector<uint64_t> seeds = seeds_to_run(long_run ? 300 : 20);
  uint64_t total_power_losses = 0;
  uint64_t total_resumes_after_power_loss = 0;
  uint64_t total_partial_records = 0;
  std::map<std::string, uint64_t> crash_sites;
  for (uint64_t seed : seeds) {
    PowerLossRun run(seed, operation_count);
    std::string failure = run.run();
    ASSERT_TRUE(failure.empty()) << "replica power-loss test failed; " << failure;
    total_power_losses += run.power_losses();
    total_partial_records += run.partial_records();
    total_resumes_after_power_loss += run.resumes_after_power_loss();
    for (const auto& [site, count] : run.crash_sites()) crash_sites[site] += count;
    std::printf(
        "replica power-loss seed %llu: %llu operations, %llu power losses, %llu deltas applied, "
        "%llu resumes: ok\n",
        static_cast<unsigned long long>(seed), static_cast<unsigned long long>(operation_count),
        static_cast<unsigned long long>(run.power_losses()),
        static_cast<unsigned long long>(run.applied_deltas()),
        static_cast<unsigned long long>(run.resumes()));
  }
  std::printf(
      "replica power-loss: %zu seeds, %llu power losses in all, %llu resumes of records that "
      "survived one\n",
      seeds.size(), static_cast<unsigned long long>(total_power_losses),
      static_cast<unsigned long long>(total_resumes_after_power_loss));
  std::printf("  partial records in the deltas: %llu\n", static_cast<unsigned long long>(total_partial_records));
  EXPECT_GT(total_partial_records, 0u) << "no delta had partial records: the test lost that point";
  std::printf("  power lost inside a call, by call and the file of the first failed operation:\n");
  for (const auto& [site, count] : crash_sites) {
    std::printf("    %-40s %llu\n", site.c_str(), static_cast<unsigned long long>(count));
  }
}

// The first full copy into an empty replica is written straight into base.img (no
// layer, no merge); the base is no point until it commits. Many short runs, so power is
// lost often while that fill is under way (between calls and inside them), and each
// reopen must show point 0 unreadable or the whole first point, resume or restart it,
// and never a partial image.
TEST(ReplicaPowerLossTest, FirstFullCopyIntoBaseSurvivesPowerLoss) {
  const std::vector<uint64_t> seeds = seeds_to_run(long_mode() ? 600 : 60);
  uint64_t while_filling = 0;
  for (uint64_t seed : seeds) {
    PowerLossRun run(seed, env_uint("AMIRROR_OPS", 30));
    std::string failure = run.run();
    ASSERT_TRUE(failure.empty()) << "replica power-loss test (base fill) failed; " << failure;
    while_filling += run.power_losses_while_filling_base();
  }
  std::printf("replica base fill: %zu seeds, %llu power losses while filling base.img\n", seeds.size(),
              static_cast<unsigned long long>(while_filling));
  if (seeds.size() >= 20) EXPECT_GT(while_filling, 0u) << "no power loss hit a base fill: the test lost its point";
}

}  // namespace
}  // namespace amirror::testing
