// SPDX-License-Identifier: Apache-2.0
// A volume known to the node: its name, its persisted mirror state, and the store
// Volume, which is open only while something uses it and otherwise "at rest" (its
// files closed).
//
// Why: an open volume holds about 3 files (base, the active layer's data and map; 2
// more per frozen layer). A node with 10,000 volumes would need 30,000 descriptors,
// more than RLIMIT_NOFILE allows on many machines, although most volumes sit idle.
// Putting idle volumes to rest bounds the node's open files by the volumes in use.
// Resting lives here, at node level, not in the store: reopening is the store's own
// crash-safe Volume::open, so the on-disk format and its recovery are untouched.
//
// Leases. Every use of `volume` holds a lease: a shared_ptr<Volume> from lease().
// The first lease opens a resting volume; when the last lease is released the volume
// is flushed, the facts status shows are kept (facts()), and its files are closed. A
// volume is therefore never used while closed nor closed while used. Who leases:
//   - each NBD export while a client has it open (node_catalog.cc);
//   - the node, for each member of a running mirror engine, from `mirror start` until
//     `mirror break` has stopped the engine (engines read `volume` under that lease);
//   - control commands (resize, verify, release, switchover...) for their duration.
// An adopted volume (keep_open()) never rests: its base file or device holds an
// flock that closing would drop, letting another process take the device.
//
// Invariants: `volume` is non-null while a lease exists or keep_open() was called,
// and changes only under rest_mutex_ when no lease exists, so a lease holder may read
// it without a lock. Lock order: Node::mutex_ -> NodeCatalog's mutex -> rest_mutex_
// -> the Volume's own locks. rest_mutex_ is a leaf: nothing under it takes a node lock.
// Thread-safety: lease(), facts(), keep_open() and is_open() are thread-safe; `state`
// is guarded by the node's mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "node/mirror_state.h"
#include "store/volume.h"

namespace amirror::node {

// Open files a volume needs at least (base, active layer data and map) and what the
// budget check counts per volume it opens (a few frozen layers more).
constexpr uint64_t kFilesPerOpenVolume = 8;
// Descriptors kept free for sockets, NBD connections, state files and the like.
constexpr uint64_t kReservedOpenFiles = 64;

// What status and volume_list show of a volume; read from the open volume, or as it
// was when it went to rest (a resting volume does not change).
struct VolumeFacts {
  uint64_t size_bytes = 0;
  uint64_t chunk_size_bytes = 0;
  std::string group;
  bool read_only = false;
  VolumeLineage lineage;
  uint64_t cycle = 0;
  uint64_t base_cycle = 0;
  uint64_t last_freeze_stall_us = 0;
  uint64_t spare_bytes = 0;
  std::vector<LayerInfo> layers;
  std::string adopted_path;
  std::string dir;  // the volume's directory
};

class VolumeEntry : public std::enable_shared_from_this<VolumeEntry> {
 public:
  // Reopens the volume from its directory (the store's crash-safe open).
  using Opener = std::function<Result<std::unique_ptr<Volume>>()>;

  // `opened`: the volume, open; it rests once no lease holds it (after the first
  // lease is released, or at settle()).
  VolumeEntry(std::string entry_name, std::shared_ptr<Volume> opened, Opener opener);
  VolumeEntry(const VolumeEntry&) = delete;
  VolumeEntry& operator=(const VolumeEntry&) = delete;

  const std::string name;
  // Read only while holding a lease (see above). Null while at rest.
  std::shared_ptr<Volume> volume;
  // The node's copy, guarded by the node's mutex. While an engine runs it holds the
  // live state and this copy is only read (status of a stopped mirror, restarts).
  MirrorState state;

  // The volume, opened if it rests, kept open until the returned pointer and every
  // copy of it are gone. Fails (and changes nothing) when it cannot be opened, also
  // when opening it would exceed the process's open-file limit.
  Result<std::shared_ptr<Volume>> lease() EXCLUDES(rest_mutex_);
  // A lease if the volume is open now, else null (nothing is opened: stop()'s flush).
  std::shared_ptr<Volume> lease_if_open() EXCLUDES(rest_mutex_);
  // Never rest from now on (adopted volumes). REQUIRES: open.
  void keep_open() EXCLUDES(rest_mutex_);
  // Puts the volume to rest if nothing holds it.
  void settle() EXCLUDES(rest_mutex_);
  VolumeFacts facts() const EXCLUDES(rest_mutex_);
  bool is_open() const EXCLUDES(rest_mutex_);

 private:
  struct Lease;
  std::shared_ptr<Volume> lease_locked() REQUIRES(rest_mutex_);
  void release() EXCLUDES(rest_mutex_);
  void rest_locked() REQUIRES(rest_mutex_);

  const Opener opener_;
  mutable Mutex rest_mutex_;
  uint64_t leases_ GUARDED_BY(rest_mutex_) = 0;
  bool keep_open_ GUARDED_BY(rest_mutex_) = false;
  VolumeFacts rested_facts_ GUARDED_BY(rest_mutex_);  // valid while at rest
};

// Leases of every entry (all or none): for a command that works on a unit's members.
Result<std::vector<std::shared_ptr<Volume>>> lease_all(const std::vector<std::shared_ptr<VolumeEntry>>& entries);

// Ok if the process can open `files` more descriptors and keep kReservedOpenFiles
// spare under its RLIMIT_NOFILE; otherwise an error for `what` naming the limit and
// LimitNOFILE. Counts /proc/self/fd; ok when that cannot be read.
Status check_open_files(const std::string& what, uint64_t files);
// The descriptors this process has open now (entries of /proc/self/fd), 0 if unknown.
uint64_t open_file_count();
// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now.
uint64_t raise_open_file_limit();

}  // namespace amirror::node
