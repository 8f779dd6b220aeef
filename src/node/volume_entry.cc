// SPDX-License-Identifier: Apache-2.0
#include "node/volume_entry.h"

#include <sys/resource.h>

#include <filesystem>
#include <system_error>

#include "base/assert.h"
#include "base/log.h"

namespace amirror::node {

// One lease: holds the entry (a lease may outlive the node's map, e.g. an NBD client
// of a deleted volume) and the volume; handed out as an aliasing shared_ptr<Volume>.
struct VolumeEntry::Lease {
  std::shared_ptr<VolumeEntry> entry;
  std::shared_ptr<Volume> volume;
  ~Lease() {
    volume.reset();  // first: at rest, the entry's pointer must be the last one
    entry->release();
  }
};

namespace {

VolumeFacts facts_of(const Volume& volume) {
  VolumeFacts facts;
  facts.size_bytes = volume.size_bytes();
  facts.chunk_size_bytes = volume.chunk_size_bytes();
  facts.group = volume.group();
  facts.read_only = volume.read_only();
  facts.lineage = volume.lineage();
  facts.cycle = volume.cycle();
  facts.base_cycle = volume.base_cycle();
  facts.last_freeze_stall_us = volume.last_freeze_stall_us();
  facts.spare_bytes = volume.spare_bytes();
  facts.layers = volume.layers();
  facts.adopted_path = volume.adopted_path();
  facts.dir = volume.dir();
  return facts;
}

}  // namespace

VolumeEntry::VolumeEntry(std::string entry_name, std::shared_ptr<Volume> opened, Opener opener)
    : name(std::move(entry_name)), volume(std::move(opened)), opener_(std::move(opener)) {
  AMIRROR_ASSERT(volume != nullptr);
}

Result<std::shared_ptr<Volume>> VolumeEntry::lease() {
  MutexLock lock(rest_mutex_);
  if (volume == nullptr) {
    AMIRROR_RETURN_IF_ERROR(check_open_files("volume '" + name + "'", kFilesPerOpenVolume));
    auto opened = opener_();
    if (!opened.ok()) return opened.status().with_context("reopen volume '" + name + "'");
    volume = std::move(opened).value();
  }
  return lease_locked();
}

std::shared_ptr<Volume> VolumeEntry::lease_locked() {
  ++leases_;
  // Built in place: a moved-from temporary Lease would release on destruction.
  std::shared_ptr<Lease> lease(new Lease{shared_from_this(), volume});
  return std::shared_ptr<Volume>(lease, lease->volume.get());
}

std::shared_ptr<Volume> VolumeEntry::lease_if_open() {
  MutexLock lock(rest_mutex_);
  return volume != nullptr ? lease_locked() : nullptr;
}

void VolumeEntry::release() {
  MutexLock lock(rest_mutex_);
  AMIRROR_ASSERT(leases_ > 0);
  if (--leases_ == 0 && !keep_open_) rest_locked();
}

void VolumeEntry::keep_open() {
  MutexLock lock(rest_mutex_);
  AMIRROR_ASSERT(volume != nullptr);
  keep_open_ = true;
}

void VolumeEntry::settle() {
  MutexLock lock(rest_mutex_);
  if (leases_ == 0 && !keep_open_) rest_locked();
}

void VolumeEntry::rest_locked() {
  if (volume == nullptr) return;
  // Someone holds the volume outside the lease protocol: closing now would let the
  // next lease open a second instance of the same files. Stay open; a later release
  // tries again.
  if (volume.use_count() > 1) {
    log::warn("node", "volume still referenced outside a lease; not put to rest", {{"volume", name}});
    return;
  }
  rested_facts_ = facts_of(*volume);
  // Flushed before closing so that a volume at rest holds nothing only in memory; a
  // failure here is what the next FLUSH of a client would have reported.
  if (Status flushed = volume->flush(); !flushed.ok()) {
    log::error("node", "flush before rest failed", {{"volume", name}, {"error", flushed.to_string()}});
  }
  volume.reset();
}

VolumeFacts VolumeEntry::facts() const {
  MutexLock lock(rest_mutex_);
  return volume != nullptr ? facts_of(*volume) : rested_facts_;
}

bool VolumeEntry::is_open() const {
  MutexLock lock(rest_mutex_);
  return volume != nullptr;
}

Result<std::vector<std::shared_ptr<Volume>>> lease_all(const std::vector<std::shared_ptr<VolumeEntry>>& entries) {
  std::vector<std::shared_ptr<Volume>> leases;
  for (const auto& entry : entries) {
    AMIRROR_ASSIGN_OR_RETURN(std::shared_ptr<Volume> lease, entry->lease());
    leases.push_back(std::move(lease));
  }
  return leases;
}

uint64_t open_file_count() {
  std::error_code error;
  std::filesystem::directory_iterator entries("/proc/self/fd", error);
  if (error) return 0;
  uint64_t count = 0;
  for (auto it = entries; it != std::filesystem::directory_iterator(); it.increment(error)) {
    if (error) return 0;
    ++count;
  }
  return count > 0 ? count - 1 : 0;  // not the descriptor reading the directory
}

Status check_open_files(const std::string& what, uint64_t files) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return Status();
  const uint64_t open = open_file_count();
  if (open == 0 || open + files + kReservedOpenFiles <= limit.rlim_cur) return Status();
  return Status(ErrorCode::kBusy,
                what + " cannot be opened: the node has " + std::to_string(open) + " files open and its limit " +
                    "(RLIMIT_NOFILE) is " + std::to_string(limit.rlim_cur) + "; raise LimitNOFILE= in the node's " +
                    "systemd unit (or `ulimit -n` before `amirror node`), or disconnect NBD clients or break " +
                    "mirrors of other volumes so they close their files");
}

uint64_t raise_open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) return raised.rlim_cur;
  }
  return limit.rlim_cur;
}

}  // namespace amirror::node
