// SPDX-License-Identifier: Apache-2.0
// ChunkStager: where a ReceiverSession stages the CHUNK frames of a delta into the
// replica.
//  - InlineChunkStager stages each frame before stage() returns: the sans-I/O default
//    (the deterministic simulation, the fuzzer, unit tests).
//  - BackgroundChunkStager stages on a thread of its own, in order, while the caller
//    receives and decrypts the next frames: a node's receive loop (node/receiver.cc).
//    Receiving (TLS decryption, frame checksums) and writing (the disk) then overlap
//    instead of taking turns; a replica's first copy is bound by the slower of the two.
//
// Invariant: frames are staged in the order stage() was called, each at most once; after
// an error no later frame is staged (the session ends and the source resumes from the
// replica's durable resume point). The session calls drain() before every frame that
// is not a CHUNK and before it lets the replica go, so END_DELTA, state reports and
// every other replica call see all earlier records staged, as with the inline stager.
// Replica stays single-threaded per delta: only one thread stages at a time.
// Thread-safety: stage() and drain() from one thread (the session's).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <thread>

#include "base/mutex.h"
#include "base/status.h"
#include "repl/replica.h"
#include "repl/wire.h"

namespace amirror::repl {

class ChunkStager {
 public:
  virtual ~ChunkStager() = default;
  // Stages the record of `frame` (a CHUNK frame) into `replica`, now or later. Returns
  // this frame's error, or an earlier frame's that is not yet reported.
  virtual Status stage(const std::shared_ptr<Replica>& replica, Frame frame) = 0;
  // Returns once every frame given to stage() is staged, with the first error if any.
  virtual Status drain() = 0;
};

// Decodes a CHUNK frame and stages its record: what either stager does per frame.
Status stage_chunk_frame(Replica& replica, const Frame& frame);

class InlineChunkStager final : public ChunkStager {
 public:
  Status stage(const std::shared_ptr<Replica>& replica, Frame frame) override {
    return stage_chunk_frame(*replica, frame);
  }
  Status drain() override { return Status(); }
};

class BackgroundChunkStager final : public ChunkStager {
 public:
  // stage() waits while more than `max_queued_bytes` of payload wait to be staged (one
  // frame is always let in): the memory a session may hold ahead of the disk.
  explicit BackgroundChunkStager(uint64_t max_queued_bytes = 16ull << 20) : max_queued_bytes_(max_queued_bytes) {}
  // Stages what is queued (the destructor cannot report an error: call drain() first to
  // see one), then stops the thread.
  ~BackgroundChunkStager() override;
  BackgroundChunkStager(const BackgroundChunkStager&) = delete;
  BackgroundChunkStager& operator=(const BackgroundChunkStager&) = delete;

  Status stage(const std::shared_ptr<Replica>& replica, Frame frame) override;
  Status drain() override;
  // What the queue holds now, and whether a stage() call waits for room (the bound is
  // reached): observable state for tests, which wait on it instead of on time.
  uint64_t queued_bytes() const;
  bool stage_waits_for_room() const;

 private:
  struct Item {
    std::shared_ptr<Replica> replica;
    Frame frame;
  };
  void run();
  // stage() must wait: the queue holds the bound (one frame is always let in), no error.
  bool full_locked() const REQUIRES(mutex_) {
    return error_.ok() && !queue_.empty() && queued_bytes_ >= max_queued_bytes_;
  }

  const uint64_t max_queued_bytes_;
  mutable Mutex mutex_;
  CondVar changed_;
  std::deque<Item> queue_ GUARDED_BY(mutex_);
  uint64_t queued_bytes_ GUARDED_BY(mutex_) = 0;
  bool staging_ GUARDED_BY(mutex_) = false;  // the thread holds an item it took off the queue
  bool waiting_for_room_ GUARDED_BY(mutex_) = false;
  bool stopping_ GUARDED_BY(mutex_) = false;
  Status error_ GUARDED_BY(mutex_);  // the first failure; sticky
  std::thread thread_;  // started by the first stage()
};

}  // namespace amirror::repl
