// SPDX-License-Identifier: Apache-2.0
// The peer protocol between nodes: framing and messages, as pure functions over byte
// buffers (no sockets here), so the decoder is unit-tested and fuzzed in isolation.
// Grammar: docs/formats/wire.md.
//
// Every frame carries its own checksum over header and payload; a frame that fails
// any check is refused before anything is staged. Sizes are bounded before any
// allocation (kMaxFramePayloadBytes).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace amirror::repl {

// Versions (docs/formats/wire.md, "Versions"): 2: OPEN_REPLICA carries keep and
// lineage. 3: group commits (END_DELTA hold, GROUP_COMMIT). 4: the target accepts
// zstd-compressed CHUNK and REPAIR_CHUNK payloads. 5: the target accepts partial CHUNK
// records (RecordKind::kPartial: the dirty sector runs of a chunk).
// HELLO carries kHelloVersion, which every target since version 3 accepts; HELLO_ACK
// carries the target's kProtocolVersion, and the source uses a later version's
// features only when the HELLO_ACK names that version or a later one. So a new source
// and a version-3 target (or the reverse) talk version 3: uncompressed frames.
constexpr uint32_t kProtocolVersion = 5;
constexpr uint32_t kOldestProtocolVersion = 3;
constexpr uint32_t kHelloVersion = 3;
constexpr uint32_t kFirstCompressingVersion = 4;
constexpr uint32_t kFirstPartialRecordVersion = 5;
constexpr uint32_t kFrameMagic = 0x31464d41;  // "AMF1"
constexpr size_t kFrameHeaderBytes = 16;
// The largest chunk (4 MiB) plus its record fields, with room to spare.
constexpr uint32_t kMaxFramePayloadBytes = 4 * 1024 * 1024 + 4096;

enum class FrameType : uint16_t {
  kHello = 1,         // source -> target: version, source node name
  kHelloAck = 2,      // target -> source: version, target node name
  kOpenReplica = 3,   // source -> target: volume, size, chunk size
  kReplicaState = 4,  // target -> source: applied cycle, staged delta progress
  kBeginDelta = 5,    // source -> target: base cycle, target cycle, freeze time, count, resume
  kChunk = 6,         // source -> target: one chunk record (data or zero)
  kEndDelta = 7,      // source -> target: record count
  kDeltaDurable = 8,  // target -> source: the delta is staged and durable
  kApplied = 9,       // target -> source: the replica now is the target cycle's image
  kError = 10,        // either way: a message; the connection closes after it
  kKeepAlive = 11,    // either way: no payload
  // mirror verify (20 and up; 12..19 are left to other frames): docs/formats/wire.md.
  kVerifyBegin = 20,      // source -> target: volume, geometry, the freeze point to compare
  kVerifyAllocated = 21,  // target -> source: chunk ranges its replica has allocated
  kVerifyWindow = 22,     // source -> target: the chunk ranges whose digests it wants next
  kVerifyHashes = 23,     // target -> source: one digest per chunk of a window
  kRepairChunk = 24,      // source -> target: a differing chunk's content at the verified point
  kRepairEnd = 25,        // source -> target: record count
  kRepairDone = 26,       // target -> source: every repaired chunk is written and durable
  kSwitchover = 30,       // source -> target: promote my volume's replica at a cycle, mirror it back to me
  kSwitchoverDone = 31,   // target -> source: done; the cycle it promoted
  kGroupCommit = 32,      // source -> target: commit these held members' points together
  kGroupApplied = 33,     // target -> source: every member is at its point (and applied)
};
const char* frame_type_name(FrameType type);
// Whether a frame header's type field names a frame of this protocol version.
bool is_known_frame_type(uint16_t raw_type);

struct Frame {
  FrameType type = FrameType::kError;
  std::vector<uint8_t> payload;
};

// header := magic:u32 type:u16 flags:u16 payload_length:u32 checksum:u32
// checksum = low 32 bits of checksum64(header[0..12) ++ payload), always taken over
// the frame as sent uncompressed (flags 0, the original length and payload), so the
// receiver checks the bytes it will use, after decompression (repl/compression.h).
std::vector<uint8_t> encode_frame(FrameType type, std::span<const uint8_t> payload);

// flags: bit 0 = the payload is one zstd frame holding the original payload (version
// 3 and later; only CHUNK and REPAIR_CHUNK). Other bits are 0.
constexpr uint16_t kFrameFlagZstd = 0x0001;
// The frame types whose payload may be compressed: data, the bulk of the bytes.
bool is_compressible_frame_type(FrameType type);
struct FrameHeader {
  FrameType type = FrameType::kError;
  uint16_t flags = 0;
  uint32_t payload_bytes = 0;  // on the wire (compressed, if flagged)
  bool compressed() const { return (flags & kFrameFlagZstd) != 0; }
};
// Validates a header, the zstd flag included (allowed only on compressible types).
Result<FrameHeader> parse_frame_header(std::span<const uint8_t, kFrameHeaderBytes> header);
// Validates a header of an uncompressed frame; returns the payload length to read next.
Result<uint32_t> decode_frame_header(std::span<const uint8_t, kFrameHeaderBytes> header,
                                     FrameType& type);
// Checks the checksum of a complete frame (header + payload).
Status verify_frame(std::span<const uint8_t, kFrameHeaderBytes> header,
                    std::span<const uint8_t> payload);

// ---- Messages ----------------------------------------------------------------

struct Hello {
  uint32_t protocol_version = kProtocolVersion;
  std::string node_name;
};

struct OpenReplica {
  std::string volume;
  uint64_t size_bytes = 0;
  uint64_t chunk_size_bytes = 0;
  uint32_t keep = 1;              // points the target keeps (1..1024)
  std::string volume_uuid;        // the source volume's id (32 hex digits)
  // Where the source volume's history comes from: failback finds the last common
  // point with it (empty when the volume was created, not promoted).
  std::string origin_uuid;
  uint64_t origin_point = 0;
  std::string group;              // the source volume's consistency group ("" = none)
};

struct ReplicaState {
  uint64_t applied_cycle = 0;         // 0 = empty replica (never applied)
  int64_t applied_freeze_time_unix_ms = 0;
  uint64_t staged_target_cycle = 0;   // a partly staged delta: its target cycle, else 0
  uint64_t staged_base_cycle = 0;
  uint64_t staged_record_count = 0;   // records of it durably staged (resume point)
  uint64_t staged_last_chunk_index = 0;  // chunk of the last staged record (if any)
  // Whose point applied_cycle is: the source volume's id, or after a failback the id of
  // the volume the target's data came from (the source's origin). Empty: unknown.
  std::string point_uuid;
  // After a failback: chunks the target changed after applied_cycle, which the next
  // delta must overwrite too. [first, first + count) runs, ascending.
  std::vector<std::pair<uint64_t, uint64_t>> resync_runs;
};
// At most this many runs fit a REPLICA_STATE frame; a target with more asks for a full copy.
constexpr size_t kMaxResyncRuns = 200'000;

struct BeginDelta {
  uint64_t base_cycle = 0;     // the replica must be at this cycle (0 with full = any)
  uint64_t target_cycle = 0;
  int64_t freeze_time_unix_ms = 0;
  uint64_t record_count = 0;   // records in the whole delta
  uint64_t first_record = 0;   // resume: records before this one were staged already
  bool full = false;           // replaces the whole image (initial sync or resync)
};

// kPartial (version 5, CHUNK only): `data` replaces bytes [offset_in_chunk_bytes,
// + data.size()) of the chunk, the rest of it is unchanged (a run of dirty sectors).
enum class RecordKind : uint8_t { kData = 1, kZero = 2, kPartial = 3 };

struct ChunkRecord {
  uint64_t record_index = 0;  // position within the delta, 0-based, consecutive
  uint64_t chunk_index = 0;
  RecordKind kind = RecordKind::kData;
  std::span<const uint8_t> data;  // kData and kPartial; points into the decoded payload
  uint64_t offset_in_chunk_bytes = 0;  // kPartial only (last, so older initializers stay valid)
};

struct EndDelta {
  uint64_t record_count = 0;
  // A consistency group's member: make the delta durable (DELTA_DURABLE) but do not
  // commit it; GROUP_COMMIT commits every held member at once (repl/group_commit.h).
  bool hold = false;
};

struct Applied {
  uint64_t applied_cycle = 0;
};

// ---- mirror verify -------------------------------------------------------------
// Bounds: a window asks for at most kMaxVerifyWindowChunks digests (16384 x 41 bytes
// fits a frame easily); an allocation frame carries at most kMaxVerifyRangesPerFrame
// ranges (1 MiB). Both are checked before anything is allocated.
constexpr uint32_t kMaxVerifyWindowChunks = 16384;
constexpr uint32_t kMaxVerifyRangesPerFrame = 65536;
constexpr size_t kChunkDigestBytes = 32;  // SHA-256 (repl/verify.h says why)

// Chunks first_chunk .. first_chunk + chunk_count - 1 (chunk_count >= 1 on the wire).
struct ChunkRange {
  uint64_t first_chunk = 0;
  uint64_t chunk_count = 0;
  uint64_t end_chunk() const { return first_chunk + chunk_count; }  // one past the last
  bool operator==(const ChunkRange&) const = default;
};

struct VerifyBegin {
  std::string volume;
  uint64_t size_bytes = 0;
  uint64_t chunk_size_bytes = 0;
  uint64_t cycle = 0;  // the freeze point both sides compare; the replica must be idle at it
};

// Ranges ascending, not overlapping; `last` on the final frame of the list.
struct VerifyAllocated {
  bool last = false;
  std::vector<ChunkRange> ranges;
};

// Ranges ascending, not overlapping, 1..kMaxVerifyWindowChunks chunks in all.
struct VerifyWindow {
  std::vector<ChunkRange> ranges;
};

enum class DigestKind : uint8_t { kHash = 1, kZero = 2 };

// A chunk's fingerprint: kZero for a chunk that reads as zero (no digest sent), else the
// SHA-256 of its bytes (clipped at the volume's end). kHash is never sent for all zeros.
struct ChunkDigest {
  uint64_t chunk_index = 0;
  DigestKind kind = DigestKind::kZero;
  std::array<uint8_t, kChunkDigestBytes> digest{};  // kHash only; zeros otherwise
  bool operator==(const ChunkDigest&) const = default;
};

// Chunk indexes strictly ascending; 1..kMaxVerifyWindowChunks digests.
struct VerifyHashes {
  std::vector<ChunkDigest> digests;
};

struct RepairEnd {
  uint64_t record_count = 0;
};

struct RepairDone {
  uint64_t record_count = 0;
};

// A planned switchover: the source applied `cycle` on this target and takes no writes.
// For a consistency group, `group` names it and `members` lists every member with its
// final cycle (`volume` and `cycle` are then the first member's).
struct Switchover {
  std::string volume;
  uint64_t cycle = 0;
  uint32_t keep = 1;
  uint64_t interval_ms = 0;
  std::string group;
  std::vector<std::pair<std::string, uint64_t>> members;  // volume, cycle
};
std::vector<uint8_t> encode(const Switchover& message);
Result<Switchover> decode_switchover(std::span<const uint8_t> payload);

// GROUP_COMMIT: the points of a group's members, each sealed on the target by an
// END_DELTA with hold, to be committed together. GROUP_APPLIED echoes the list.
// Volume names unique; 1..kMaxGroupMembers members.
constexpr uint32_t kMaxGroupMembers = 4096;
struct GroupPoint {
  std::string volume;
  uint64_t cycle = 0;
  int64_t freeze_time_unix_ms = 0;
  bool operator==(const GroupPoint&) const = default;
};
struct GroupCommit {
  std::string group;
  std::vector<GroupPoint> members;
  bool operator==(const GroupCommit&) const = default;
};
std::vector<uint8_t> encode(const GroupCommit& message);
Result<GroupCommit> decode_group_commit(std::span<const uint8_t> payload, const char* what = "GROUP_COMMIT");

std::vector<uint8_t> encode(const Hello& message);
std::vector<uint8_t> encode(const OpenReplica& message);
std::vector<uint8_t> encode(const ReplicaState& message);
std::vector<uint8_t> encode(const BeginDelta& message);
std::vector<uint8_t> encode(const EndDelta& message);
std::vector<uint8_t> encode(const Applied& message);
std::vector<uint8_t> encode(const VerifyBegin& message);
std::vector<uint8_t> encode(const VerifyAllocated& message);
std::vector<uint8_t> encode(const VerifyWindow& message);
std::vector<uint8_t> encode(const VerifyHashes& message);
std::vector<uint8_t> encode(const RepairEnd& message);
std::vector<uint8_t> encode(const RepairDone& message);
std::vector<uint8_t> encode_error(const std::string& message);
// A whole CHUNK frame (header + payload) built with a single copy of the data.
// REPAIR_CHUNK has the same payload: pass its type.
std::vector<uint8_t> encode_chunk_frame(uint64_t record_index, uint64_t chunk_index,
                                        RecordKind kind, std::span<const uint8_t> data,
                                        FrameType type = FrameType::kChunk);
// The same frame with no copy at all: the caller puts the data at
// kChunkFrameDataOffset of `frame` (read straight there from the volume), whose size is
// kChunkFrameDataOffset + the data's length (kChunkFrameDataOffset for kZero); this
// writes both headers and the checksum around it.
constexpr size_t kChunkFrameDataOffset = kFrameHeaderBytes + 8 + 8 + 1;
void seal_chunk_frame(std::span<uint8_t> frame, uint64_t record_index, uint64_t chunk_index, RecordKind kind,
                      FrameType type = FrameType::kChunk);

// A partial CHUNK frame (RecordKind::kPartial), also with no copy: the caller puts the
// data at kPartialChunkFrameDataOffset of `frame`, whose size is that offset + the
// data's length (> 0).
constexpr size_t kPartialChunkFrameDataOffset = kChunkFrameDataOffset + 4 + 4;
void seal_partial_chunk_frame(std::span<uint8_t> frame, uint64_t record_index, uint64_t chunk_index,
                              uint32_t offset_in_chunk_bytes);

Result<Hello> decode_hello(std::span<const uint8_t> payload);
Result<OpenReplica> decode_open_replica(std::span<const uint8_t> payload);
Result<ReplicaState> decode_replica_state(std::span<const uint8_t> payload);
Result<BeginDelta> decode_begin_delta(std::span<const uint8_t> payload);
Result<ChunkRecord> decode_chunk(std::span<const uint8_t> payload);
Result<EndDelta> decode_end_delta(std::span<const uint8_t> payload);
Result<Applied> decode_applied(std::span<const uint8_t> payload);
Result<VerifyBegin> decode_verify_begin(std::span<const uint8_t> payload);
Result<VerifyAllocated> decode_verify_allocated(std::span<const uint8_t> payload);
Result<VerifyWindow> decode_verify_window(std::span<const uint8_t> payload);
Result<VerifyHashes> decode_verify_hashes(std::span<const uint8_t> payload);
Result<RepairEnd> decode_repair_end(std::span<const uint8_t> payload);
Result<RepairDone> decode_repair_done(std::span<const uint8_t> payload);
// REPAIR_CHUNK payloads decode with decode_chunk (the same layout as CHUNK); the
// repair refuses kPartial records itself.
std::string decode_error(std::span<const uint8_t> payload);
// A source's check of the target's answer to HELLO: a HELLO_ACK naming `target_node`
// (else the address in the config reaches another node).
Status check_hello_ack(const Frame& frame, const std::string& target_node);

}  // namespace amirror::repl
