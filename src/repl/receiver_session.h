// SPDX-License-Identifier: Apache-2.0
// The target side of one peer connection as a sans-I/O state machine: frames in
// (on_frame), frames out (through a FrameSink), replicas through a ReplicaAccess. No
// sockets, threads or clocks here, so the node, the fuzzer and the deterministic
// simulation (tests/sim/) all drive this one implementation.
//
// Protocol (docs/formats/wire.md): HELLO from an admitted peer -> HELLO_ACK; then per
// volume OPEN_REPLICA -> REPLICA_STATE, BEGIN_DELTA, CHUNK..., END_DELTA ->
// DELTA_DURABLE -> (apply) -> APPLIED; or, for `mirror verify`, VERIFY_BEGIN and what
// follows it (repl/verify_session.h), which never creates a replica.
//
// States:   awaiting-hello --HELLO--> open --OPEN_REPLICA--> replica --BEGIN--> delta
//           delta --END_DELTA--> replica (after DELTA_DURABLE, apply, APPLIED)
//           open|replica|verify --VERIFY_BEGIN--> verify (VERIFY_WINDOW, REPAIR_*)
//           verify --OPEN_REPLICA--> replica
// CHUNK records go through a ChunkStager (repl/chunk_stager.h): staged inline by
// default, on a thread of the node's when it passes one; every other frame first waits
// until the records before it are staged, so it sees them as if staged inline.
// Invariant: nothing is staged from a frame that failed its checks, and any error
// returned by on_frame ends the session: the caller sends ERROR and closes.
// Thread-safety: one thread at a time.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "base/status.h"
#include "repl/chunk_stager.h"
#include "repl/frame_sink.h"
#include "repl/replica.h"
#include "repl/verify_session.h"
#include "repl/wire.h"

namespace amirror::repl {

// What the session needs from the node that holds the replicas.
class ReplicaAccess {
 public:
  virtual ~ReplicaAccess() = default;
  // May `node_name` (from HELLO) send replicas here? An error says why not.
  virtual Status admit_peer(const std::string& node_name) = 0;
  // Exclusive use of the replica `peer`/`volume` until release(); creates it if absent.
  // Errors: not allowed, busy, another size, or the replica cannot be opened.
  virtual Result<std::shared_ptr<Replica>> acquire(const std::string& peer, const OpenReplica& open) = 0;
  // The same for `mirror verify`, but only an existing replica: never creates one.
  // Errors: as acquire(), or no such replica. By default verify is not offered.
  virtual Result<std::shared_ptr<Replica>> acquire_existing(const std::string& peer, const OpenReplica& open);
  virtual void release(const std::string& peer, const std::string& volume) = 0;
  // A planned switchover from `peer`: promote its replica at the cycle and mirror the
  // new volume back to `peer`. Returns the cycle promoted. By default refused.
  virtual Result<uint64_t> switchover(const std::string& peer, const Switchover& request);
  // GROUP_COMMIT from `peer` (repl/group_commit.h): commits every listed member's
  // sealed delta together, then merges each down to its `keep`. Returns the members
  // with the cycle each now holds. `progress` is called now and then (keep-alives).
  // By default refused.
  virtual Result<GroupCommit> commit_group(const std::string& peer, const GroupCommit& request,
                                           const std::function<void()>& progress);
};

class ReceiverSession {
 public:
  // `stager` (null: inline) must outlive the session.
  ReceiverSession(std::string node_name, ReplicaAccess& replicas, FrameSink& sink, ChunkStager* stager = nullptr)
      : node_name_(std::move(node_name)), replicas_(replicas), sink_(sink), stager_(stager != nullptr ? *stager : inline_stager_) {}
  ~ReceiverSession() { release(); }
  ReceiverSession(const ReceiverSession&) = delete;
  ReceiverSession& operator=(const ReceiverSession&) = delete;

  // Feeds one frame whose header and checksum were verified. An error ends the session;
  // it may be an earlier CHUNK's, staged in the background.
  Status on_frame(Frame frame);
  // A close now would cut a delta short (the source resumes it from the durable staging).
  bool in_delta() const { return in_delta_; }
  // The peer's node name once HELLO was accepted, else empty.
  const std::string& peer_name() const { return peer_name_; }

 private:
  Status on_control_frame(const Frame& frame);
  Status on_hello(const Frame& frame);
  Status on_open_replica(const Frame& frame);
  Status on_end_delta(const Frame& frame);
  Status on_group_commit(const Frame& frame);
  Status on_verify_begin(const Frame& frame);
  // VERIFY_WINDOW, REPAIR_CHUNK, REPAIR_END: only within a verify.
  Status on_verify_frame(const Frame& frame);
  void release();

  const std::string node_name_;
  ReplicaAccess& replicas_;
  FrameSink& sink_;
  InlineChunkStager inline_stager_;
  ChunkStager& stager_;
  std::string peer_name_;
  std::string held_volume_;
  std::shared_ptr<Replica> replica_;
  bool in_delta_ = false;
  std::unique_ptr<VerifyResponder> verify_;  // while verifying replica_
};

}  // namespace amirror::repl
