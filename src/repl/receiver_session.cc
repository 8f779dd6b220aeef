// SPDX-License-Identifier: Apache-2.0
#include "repl/receiver_session.h"

namespace amirror::repl {

Result<std::shared_ptr<Replica>> ReplicaAccess::acquire_existing(const std::string&, const OpenReplica&) {
  return Status(ErrorCode::kUnsupported, "this node does not verify replicas");
}

Result<uint64_t> ReplicaAccess::switchover(const std::string&, const Switchover&) {
  return Status(ErrorCode::kUnsupported, "this node does not take switchovers");
}

Result<GroupCommit> ReplicaAccess::commit_group(const std::string&, const GroupCommit&, const std::function<void()>&) {
  return Status(ErrorCode::kUnsupported, "this node does not take group commits");
}

Status ReceiverSession::on_frame(Frame frame) {
  if (frame.type == FrameType::kChunk && in_delta_) return stager_.stage(replica_, std::move(frame));
  if (frame.type == FrameType::kKeepAlive && !peer_name_.empty()) return Status();  // no need to wait
  AMIRROR_RETURN_IF_ERROR(stager_.drain());
  return on_control_frame(frame);
}

Status ReceiverSession::on_control_frame(const Frame& frame) {
  if (peer_name_.empty()) {
    if (frame.type != FrameType::kHello) return invalid_argument("expected HELLO first");
    return on_hello(frame);
  }
  switch (frame.type) {
    case FrameType::kKeepAlive: return Status();
    case FrameType::kOpenReplica: return on_open_replica(frame);
    case FrameType::kBeginDelta: {
      if (replica_ == nullptr || in_delta_ || verify_ != nullptr) return invalid_argument("BEGIN_DELTA out of sequence");
      AMIRROR_ASSIGN_OR_RETURN(BeginDelta begin, decode_begin_delta(frame.payload));
      AMIRROR_RETURN_IF_ERROR(replica_->begin_delta(begin));
      in_delta_ = true;
      return Status();
    }
    case FrameType::kChunk: return invalid_argument("CHUNK outside a delta");
    case FrameType::kEndDelta: return on_end_delta(frame);
    case FrameType::kVerifyBegin: return on_verify_begin(frame);
    case FrameType::kSwitchover: {
      if (replica_ != nullptr || in_delta_) return invalid_argument("SWITCHOVER in the middle of a transfer");
      AMIRROR_ASSIGN_OR_RETURN(Switchover request, decode_switchover(frame.payload));
      AMIRROR_ASSIGN_OR_RETURN(uint64_t cycle, replicas_.switchover(peer_name_, request));
      return sink_.send(FrameType::kSwitchoverDone, encode(Applied{cycle}));
    }
    case FrameType::kGroupCommit: return on_group_commit(frame);
    case FrameType::kVerifyWindow:
    case FrameType::kRepairChunk:
    case FrameType::kRepairEnd: return on_verify_frame(frame);
    default: return invalid_argument(std::string("unexpected ") + frame_type_name(frame.type) + " frame");
  }
}

Status ReceiverSession::on_hello(const Frame& frame) {
  AMIRROR_ASSIGN_OR_RETURN(Hello hello, decode_hello(frame.payload));
  // Sources send kHelloVersion; a later one may announce more. The answer names the
  // newest version this node decodes, which tells the source what it may send.
  if (hello.protocol_version < kOldestProtocolVersion) {
    return invalid_argument("peer speaks protocol version " + std::to_string(hello.protocol_version) +
                            ", this node speaks " + std::to_string(kOldestProtocolVersion) + " to " +
                            std::to_string(kProtocolVersion));
  }
  AMIRROR_RETURN_IF_ERROR(replicas_.admit_peer(hello.node_name));
  peer_name_ = hello.node_name;
  return sink_.send(FrameType::kHelloAck, encode(Hello{kProtocolVersion, node_name_}));
}

Status ReceiverSession::on_open_replica(const Frame& frame) {
  if (in_delta_) return invalid_argument("OPEN_REPLICA in the middle of a delta");
  AMIRROR_ASSIGN_OR_RETURN(OpenReplica open, decode_open_replica(frame.payload));
  release();
  AMIRROR_ASSIGN_OR_RETURN(replica_, replicas_.acquire(peer_name_, open));
  held_volume_ = open.volume;
  AMIRROR_RETURN_IF_ERROR(replica_->set_keep(open.keep));
  AMIRROR_RETURN_IF_ERROR(replica_->set_group(open.group));
  if (!open.volume_uuid.empty() && replica_->source_uuid() != open.volume_uuid) {
    // Points of another source volume (it was deleted and created again): they say
    // nothing about this one. A replica that never saw an id (format 1) adopts it.
    if (replica_->source_uuid().empty()) {
      AMIRROR_RETURN_IF_ERROR(replica_->set_source_uuid(open.volume_uuid));
    } else {
      AMIRROR_RETURN_IF_ERROR(replica_->reset(open.volume_uuid));
    }
  }
  // Old points beyond `keep` (a merge cut short by a full disk, or keep lowered) go now,
  // with keep-alives: the source waits for REPLICA_STATE no longer than its peer timeout.
  Status keepalive_status;
  AMIRROR_RETURN_IF_ERROR(replica_->apply([&] {
    if (keepalive_status.ok()) keepalive_status = sink_.send(FrameType::kKeepAlive, {});
  }));
  return sink_.send(FrameType::kReplicaState, encode(replica_->state()));
}

Status ReceiverSession::on_end_delta(const Frame& frame) {
  if (!in_delta_) return invalid_argument("END_DELTA outside a delta");
  AMIRROR_ASSIGN_OR_RETURN(EndDelta end, decode_end_delta(frame.payload));
  if (end.hold) {
    // A group member: committed with the others by GROUP_COMMIT.
    AMIRROR_RETURN_IF_ERROR(replica_->seal(end.record_count));
    in_delta_ = false;
    return sink_.send(FrameType::kDeltaDurable, {});
  }
  AMIRROR_RETURN_IF_ERROR(replica_->end_delta(end.record_count));
  in_delta_ = false;
  AMIRROR_RETURN_IF_ERROR(sink_.send(FrameType::kDeltaDurable, {}));
  // Keep-alives while applying, so the source does not time a long apply out.
  Status keepalive_status;
  AMIRROR_RETURN_IF_ERROR(replica_->apply([&] {
    if (keepalive_status.ok()) keepalive_status = sink_.send(FrameType::kKeepAlive, {});
  }));
  return sink_.send(FrameType::kApplied, encode(Applied{replica_->state().applied_cycle}));
}

Status ReceiverSession::on_group_commit(const Frame& frame) {
  if (in_delta_ || verify_ != nullptr) return invalid_argument("GROUP_COMMIT in the middle of a transfer");
  AMIRROR_ASSIGN_OR_RETURN(GroupCommit request, decode_group_commit(frame.payload));
  release();  // the commit takes every member, this one too
  Status keepalive_status;
  AMIRROR_ASSIGN_OR_RETURN(GroupCommit applied, replicas_.commit_group(peer_name_, request, [&] {
    if (keepalive_status.ok()) keepalive_status = sink_.send(FrameType::kKeepAlive, {});
  }));
  return sink_.send(FrameType::kGroupApplied, encode(applied));
}

Status ReceiverSession::on_verify_begin(const Frame& frame) {
  if (in_delta_) return invalid_argument("VERIFY_BEGIN in the middle of a delta");
  AMIRROR_ASSIGN_OR_RETURN(VerifyBegin begin, decode_verify_begin(frame.payload));
  release();
  AMIRROR_ASSIGN_OR_RETURN(replica_,
                           replicas_.acquire_existing(peer_name_, OpenReplica{begin.volume, begin.size_bytes,
                                                                              begin.chunk_size_bytes}));
  held_volume_ = begin.volume;
  AMIRROR_ASSIGN_OR_RETURN(verify_, VerifyResponder::start(replica_, begin, sink_));
  return Status();
}

Status ReceiverSession::on_verify_frame(const Frame& frame) {
  if (verify_ == nullptr) return invalid_argument(std::string(frame_type_name(frame.type)) + " outside a verify");
  switch (frame.type) {
    case FrameType::kVerifyWindow: {
      AMIRROR_ASSIGN_OR_RETURN(VerifyWindow window, decode_verify_window(frame.payload));
      return verify_->on_window(window);
    }
    case FrameType::kRepairChunk: {
      AMIRROR_ASSIGN_OR_RETURN(ChunkRecord record, decode_chunk(frame.payload));
      return verify_->on_repair_chunk(record);
    }
    case FrameType::kRepairEnd: {
      AMIRROR_ASSIGN_OR_RETURN(RepairEnd end, decode_repair_end(frame.payload));
      return verify_->on_repair_end(end);
    }
    default: break;
  }
  return invalid_argument(std::string("unexpected ") + frame_type_name(frame.type) + " frame");
}

void ReceiverSession::release() {
  (void)stager_.drain();  // no record may be staged once the replica is let go
  verify_.reset();  // it uses the replica
  if (replica_ != nullptr) replicas_.release(peer_name_, held_volume_);
  held_volume_.clear();
  replica_.reset();
}

}  // namespace amirror::repl
