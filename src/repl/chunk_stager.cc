// SPDX-License-Identifier: Apache-2.0
#include "repl/chunk_stager.h"

namespace amirror::repl {

Status stage_chunk_frame(Replica& replica, const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(ChunkRecord record, decode_chunk(frame.payload));
  return replica.stage(record);
}

BackgroundChunkStager::~BackgroundChunkStager() {
  {
    MutexLock lock(mutex_);
    stopping_ = true;
    changed_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

Status BackgroundChunkStager::stage(const std::shared_ptr<Replica>& replica, Frame frame) {
  MutexLock lock(mutex_);
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  while (full_locked()) {
    waiting_for_room_ = true;
    changed_.wait(lock);
  }
  waiting_for_room_ = false;
  if (!error_.ok()) return error_;
  queued_bytes_ += frame.payload.size();
  queue_.push_back(Item{replica, std::move(frame)});
  changed_.notify_all();
  return Status();
}

uint64_t BackgroundChunkStager::queued_bytes() const {
  MutexLock lock(mutex_);
  return queued_bytes_;
}

bool BackgroundChunkStager::stage_waits_for_room() const {
  MutexLock lock(mutex_);
  // Not just the flag: a stage() woken because room was made has not reset it yet.
  return waiting_for_room_ && full_locked();
}

Status BackgroundChunkStager::drain() {
  MutexLock lock(mutex_);
  while (!queue_.empty() || staging_) changed_.wait(lock);
  return error_;
}

void BackgroundChunkStager::run() {
  MutexLock lock(mutex_);
  for (;;) {
    // Stopping still stages what was queued: a frame the session handed over is staged
    // or refused, never dropped unseen while the replica goes on.
    while (queue_.empty() && !stopping_) changed_.wait(lock);
    if (queue_.empty()) return;
    Item item = std::move(queue_.front());
    queue_.pop_front();
    queued_bytes_ -= item.frame.payload.size();
    if (!error_.ok()) {
      changed_.notify_all();
      continue;  // after an error nothing more is staged
    }
    staging_ = true;
    lock.unlock();
    Status status = stage_chunk_frame(*item.replica, item.frame);
    item = Item{};  // the frame's memory goes before the next wait
    lock.lock();
    staging_ = false;
    if (!status.ok() && error_.ok()) error_ = status;
    changed_.notify_all();
  }
}

}  // namespace amirror::repl
