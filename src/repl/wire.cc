// SPDX-License-Identifier: Apache-2.0
#include "repl/wire.h"

#include <algorithm>
#include <set>

#include "base/checksum.h"
#include "base/coding.h"
#include "base/names.h"
#include "base/uuid.h"

namespace amirror::repl {
namespace {

constexpr size_t kChunkHeaderBytes = 8 + 8 + 1;
constexpr size_t kMaxErrorBytes = 4096;

// Sequential little-endian reader over a payload; every read is bounds-checked and
// a short payload turns into a corruption Status.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const char* what) : bytes_(bytes), what_(what) {}
  bool u8(uint8_t& value) {
    if (!has(1)) return false;
    value = bytes_[position_++];
    return true;
  }
  bool u32(uint32_t& value) {
    if (!has(4)) return false;
    value = get_u32(bytes_.data() + position_);
    position_ += 4;
    return true;
  }
  bool u64(uint64_t& value) {
    if (!has(8)) return false;
    value = get_u64(bytes_.data() + position_);
    position_ += 8;
    return true;
  }
  bool bytes(std::span<uint8_t> out) {
    if (!has(out.size())) return false;
    std::copy_n(bytes_.data() + position_, out.size(), out.data());
    position_ += out.size();
    return true;
  }
  // A u32 count of records of `record_bytes` each, at most `limit`: checked against
  // what is left of the payload before anything is allocated for it.
  bool count(uint32_t& value, uint32_t limit, size_t record_bytes) {
    return u32(value) && value <= limit && (bytes_.size() - position_) / record_bytes >= value;
  }
  bool name(std::string& value) {
    uint32_t length = 0;
    if (!u32(length) || length > kMaxNameBytes || !has(length)) return false;
    value.assign(reinterpret_cast<const char*>(bytes_.data() + position_), length);
    position_ += length;
    return true;
  }
  std::span<const uint8_t> rest() { return bytes_.subspan(position_); }
  Status finish() const {
    if (position_ != bytes_.size()) return corruption(std::string(what_) + " frame has trailing bytes");
    return Status();
  }
  Status bad() const { return corruption(std::string("malformed ") + what_ + " frame"); }

 private:
  bool has(size_t count) const { return bytes_.size() - position_ >= count; }
  std::span<const uint8_t> bytes_;
  const char* what_;
  size_t position_ = 0;
};

void put_name(std::vector<uint8_t>& out, const std::string& name) {
  uint8_t length[4];
  put_u32(length, static_cast<uint32_t>(name.size()));
  out.insert(out.end(), length, length + 4);
  out.insert(out.end(), name.begin(), name.end());
}
void put64(std::vector<uint8_t>& out, uint64_t value) {
  uint8_t bytes[8];
  put_u64(bytes, value);
  out.insert(out.end(), bytes, bytes + 8);
}
void put32(std::vector<uint8_t>& out, uint32_t value) {
  uint8_t bytes[4];
  put_u32(bytes, value);
  out.insert(out.end(), bytes, bytes + 4);
}

constexpr size_t kRangeBytes = 16;
constexpr size_t kDigestEntryBytes = 8 + 1 + kChunkDigestBytes;  // the largest entry

void put_ranges(std::vector<uint8_t>& out, const std::vector<ChunkRange>& ranges) {
  put32(out, static_cast<uint32_t>(ranges.size()));
  for (const ChunkRange& range : ranges) {
    put64(out, range.first_chunk);
    put64(out, range.chunk_count);
  }
}

// Ranges: each non-empty, without overflow, ascending and not overlapping.
bool read_ranges(Reader& reader, std::vector<ChunkRange>& ranges) {
  uint32_t count = 0;
  if (!reader.count(count, kMaxVerifyRangesPerFrame, kRangeBytes)) return false;
  ranges.resize(count);
  uint64_t previous_end = 0;
  for (uint32_t i = 0; i < count; ++i) {
    ChunkRange& range = ranges[i];
    if (!reader.u64(range.first_chunk) || !reader.u64(range.chunk_count)) return false;
    if (range.chunk_count == 0 || range.first_chunk + range.chunk_count < range.first_chunk) return false;
    if (i > 0 && range.first_chunk < previous_end) return false;
    previous_end = range.end_chunk();
  }
  return true;
}

// Messages that are one u64 (END_DELTA, APPLIED, REPAIR_END, REPAIR_DONE).
std::vector<uint8_t> encode_one_u64(uint64_t value) {
  std::vector<uint8_t> out;
  put64(out, value);
  return out;
}
Result<uint64_t> decode_one_u64(std::span<const uint8_t> payload, const char* what) {
  Reader reader(payload, what);
  uint64_t value = 0;
  if (!reader.u64(value)) return reader.bad();
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  return value;
}

uint32_t frame_checksum(std::span<const uint8_t> header_prefix, std::span<const uint8_t> payload) {
  // Checksum of the 12 header bytes before the checksum field, then of the payload,
  // combined; both parts are covered so a flipped bit anywhere is caught.
  uint64_t header_sum = checksum64(header_prefix.data(), header_prefix.size());
  uint64_t payload_sum = checksum64(payload.data(), payload.size());
  return static_cast<uint32_t>(header_sum ^ (payload_sum * 0x9E3779B97F4A7C15ull));
}

}  // namespace

const char* frame_type_name(FrameType type) {
  switch (type) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kHelloAck: return "HELLO_ACK";
    case FrameType::kOpenReplica: return "OPEN_REPLICA";
    case FrameType::kReplicaState: return "REPLICA_STATE";
    case FrameType::kBeginDelta: return "BEGIN_DELTA";
    case FrameType::kChunk: return "CHUNK";
    case FrameType::kEndDelta: return "END_DELTA";
    case FrameType::kDeltaDurable: return "DELTA_DURABLE";
    case FrameType::kApplied: return "APPLIED";
    case FrameType::kError: return "ERROR";
    case FrameType::kKeepAlive: return "KEEPALIVE";
    case FrameType::kVerifyBegin: return "VERIFY_BEGIN";
    case FrameType::kVerifyAllocated: return "VERIFY_ALLOCATED";
    case FrameType::kVerifyWindow: return "VERIFY_WINDOW";
    case FrameType::kVerifyHashes: return "VERIFY_HASHES";
    case FrameType::kRepairChunk: return "REPAIR_CHUNK";
    case FrameType::kRepairEnd: return "REPAIR_END";
    case FrameType::kRepairDone: return "REPAIR_DONE";
    case FrameType::kSwitchover: return "SWITCHOVER";
    case FrameType::kSwitchoverDone: return "SWITCHOVER_DONE";
    case FrameType::kGroupCommit: return "GROUP_COMMIT";
    case FrameType::kGroupApplied: return "GROUP_APPLIED";
  }
  return "UNKNOWN";
}

bool is_known_frame_type(uint16_t raw_type) {
  return (raw_type >= static_cast<uint16_t>(FrameType::kHello) &&
          raw_type <= static_cast<uint16_t>(FrameType::kKeepAlive)) ||
         (raw_type >= static_cast<uint16_t>(FrameType::kVerifyBegin) &&
          raw_type <= static_cast<uint16_t>(FrameType::kRepairDone)) ||
         (raw_type >= static_cast<uint16_t>(FrameType::kSwitchover) &&
          raw_type <= static_cast<uint16_t>(FrameType::kGroupApplied));
}

std::vector<uint8_t> encode_frame(FrameType type, std::span<const uint8_t> payload) {
  AMIRROR_ASSERT(payload.size() <= kMaxFramePayloadBytes);
  std::vector<uint8_t> frame(kFrameHeaderBytes + payload.size());
  put_u32(frame.data(), kFrameMagic);
  frame[4] = static_cast<uint8_t>(static_cast<uint16_t>(type));
  frame[5] = static_cast<uint8_t>(static_cast<uint16_t>(type) >> 8);
  frame[6] = frame[7] = 0;
  put_u32(frame.data() + 8, static_cast<uint32_t>(payload.size()));
  put_u32(frame.data() + 12, frame_checksum(std::span(frame.data(), 12), payload));
  std::copy(payload.begin(), payload.end(), frame.begin() + kFrameHeaderBytes);
  return frame;
}

bool is_compressible_frame_type(FrameType type) {
  return type == FrameType::kChunk || type == FrameType::kRepairChunk;
}

Result<FrameHeader> parse_frame_header(std::span<const uint8_t, kFrameHeaderBytes> header) {
  if (get_u32(header.data()) != kFrameMagic) return corruption("peer sent a frame with bad magic");
  uint16_t raw_type = static_cast<uint16_t>(header[4] | (header[5] << 8));
  if (!is_known_frame_type(raw_type)) {
    return corruption("peer sent an unknown frame type " + std::to_string(raw_type));
  }
  FrameHeader parsed;
  parsed.type = static_cast<FrameType>(raw_type);
  parsed.flags = static_cast<uint16_t>(header[6] | (header[7] << 8));
  if ((parsed.flags & ~kFrameFlagZstd) != 0) return corruption("peer sent a frame with reserved bits set");
  if (parsed.compressed() && !is_compressible_frame_type(parsed.type)) {
    return corruption(std::string("peer sent a compressed ") + frame_type_name(parsed.type) +
                      " frame; only CHUNK and REPAIR_CHUNK may be compressed");
  }
  parsed.payload_bytes = get_u32(header.data() + 8);
  if (parsed.payload_bytes > kMaxFramePayloadBytes) {
    return corruption("peer sent a " + std::to_string(parsed.payload_bytes) + "-byte frame; the limit is " +
                      std::to_string(kMaxFramePayloadBytes));
  }
  return parsed;
}

Result<uint32_t> decode_frame_header(std::span<const uint8_t, kFrameHeaderBytes> header,
                                     FrameType& type) {
  AMIRROR_ASSIGN_OR_RETURN(FrameHeader parsed, parse_frame_header(header));
  if (parsed.flags != 0) return corruption("peer sent a frame with reserved bits set");
  type = parsed.type;
  return parsed.payload_bytes;
}

Status verify_frame(std::span<const uint8_t, kFrameHeaderBytes> header, std::span<const uint8_t> payload) {
  if (get_u32(header.data() + 12) != frame_checksum(header.first(12), payload)) {
    return corruption("peer frame failed its checksum (corrupted in transit)");
  }
  return Status();
}

std::vector<uint8_t> encode(const Hello& message) {
  std::vector<uint8_t> out;
  put32(out, message.protocol_version);
  put_name(out, message.node_name);
  return out;
}

std::vector<uint8_t> encode(const OpenReplica& message) {
  std::vector<uint8_t> out;
  put_name(out, message.volume);
  put64(out, message.size_bytes);
  put64(out, message.chunk_size_bytes);
  put32(out, message.keep);
  put_name(out, message.volume_uuid);
  put_name(out, message.origin_uuid);
  put64(out, message.origin_point);
  put_name(out, message.group);
  return out;
}

std::vector<uint8_t> encode(const ReplicaState& message) {
  std::vector<uint8_t> out;
  put64(out, message.applied_cycle);
  put64(out, static_cast<uint64_t>(message.applied_freeze_time_unix_ms));
  put64(out, message.staged_target_cycle);
  put64(out, message.staged_base_cycle);
  put64(out, message.staged_record_count);
  put64(out, message.staged_last_chunk_index);
  put_name(out, message.point_uuid);
  put32(out, static_cast<uint32_t>(message.resync_runs.size()));
  for (const auto& [first, count] : message.resync_runs) {
    put64(out, first);
    put64(out, count);
  }
  return out;
}

std::vector<uint8_t> encode(const BeginDelta& message) {
  std::vector<uint8_t> out;
  put64(out, message.base_cycle);
  put64(out, message.target_cycle);
  put64(out, static_cast<uint64_t>(message.freeze_time_unix_ms));
  put64(out, message.record_count);
  put64(out, message.first_record);
  out.push_back(message.full ? 1 : 0);
  return out;
}

std::vector<uint8_t> encode(const EndDelta& message) {
  std::vector<uint8_t> out = encode_one_u64(message.record_count);
  out.push_back(message.hold ? 1 : 0);
  return out;
}

std::vector<uint8_t> encode(const Applied& message) { return encode_one_u64(message.applied_cycle); }

std::vector<uint8_t> encode(const VerifyBegin& message) {
  std::vector<uint8_t> out;
  put_name(out, message.volume);
  put64(out, message.size_bytes);
  put64(out, message.chunk_size_bytes);
  put64(out, message.cycle);
  return out;
}

std::vector<uint8_t> encode(const VerifyAllocated& message) {
  AMIRROR_ASSERT(message.ranges.size() <= kMaxVerifyRangesPerFrame);
  std::vector<uint8_t> out;
  out.push_back(message.last ? 1 : 0);
  put_ranges(out, message.ranges);
  return out;
}

std::vector<uint8_t> encode(const VerifyWindow& message) {
  uint64_t chunks = 0;
  for (const ChunkRange& range : message.ranges) chunks += range.chunk_count;
  AMIRROR_ASSERT(chunks >= 1 && chunks <= kMaxVerifyWindowChunks);
  std::vector<uint8_t> out;
  put_ranges(out, message.ranges);
  return out;
}

std::vector<uint8_t> encode(const VerifyHashes& message) {
  AMIRROR_ASSERT(!message.digests.empty() && message.digests.size() <= kMaxVerifyWindowChunks);
  std::vector<uint8_t> out;
  out.reserve(4 + message.digests.size() * kDigestEntryBytes);
  put32(out, static_cast<uint32_t>(message.digests.size()));
  for (const ChunkDigest& digest : message.digests) {
    put64(out, digest.chunk_index);
    out.push_back(static_cast<uint8_t>(digest.kind));
    if (digest.kind == DigestKind::kHash) out.insert(out.end(), digest.digest.begin(), digest.digest.end());
  }
  return out;
}

std::vector<uint8_t> encode(const RepairEnd& message) { return encode_one_u64(message.record_count); }

std::vector<uint8_t> encode(const RepairDone& message) { return encode_one_u64(message.record_count); }

std::vector<uint8_t> encode_error(const std::string& message) {
  std::string clipped = message.substr(0, kMaxErrorBytes);
  return std::vector<uint8_t>(clipped.begin(), clipped.end());
}

std::vector<uint8_t> encode_chunk_frame(uint64_t record_index, uint64_t chunk_index,
                                        RecordKind kind, std::span<const uint8_t> data, FrameType type) {
  std::vector<uint8_t> frame(kChunkFrameDataOffset + data.size());
  std::copy(data.begin(), data.end(), frame.begin() + kChunkFrameDataOffset);
  seal_chunk_frame(frame, record_index, chunk_index, kind, type);
  return frame;
}

namespace {
// Both headers and the checksum of a CHUNK or REPAIR_CHUNK frame whose record fields
// after `kind` (kPartial's offset and length) are in place already.
void seal_record_frame(std::span<uint8_t> frame, uint64_t record_index, uint64_t chunk_index, RecordKind kind,
                       FrameType type) {
  size_t payload_bytes = frame.size() - kFrameHeaderBytes;
  AMIRROR_ASSERT(payload_bytes <= kMaxFramePayloadBytes);
  uint8_t* payload = frame.data() + kFrameHeaderBytes;
  put_u64(payload, record_index);
  put_u64(payload + 8, chunk_index);
  payload[16] = static_cast<uint8_t>(kind);
  put_u32(frame.data(), kFrameMagic);
  frame[4] = static_cast<uint8_t>(type);
  frame[5] = frame[6] = frame[7] = 0;
  put_u32(frame.data() + 8, static_cast<uint32_t>(payload_bytes));
  put_u32(frame.data() + 12, frame_checksum(frame.first(12), std::span(payload, payload_bytes)));
}
}  // namespace

void seal_chunk_frame(std::span<uint8_t> frame, uint64_t record_index, uint64_t chunk_index, RecordKind kind,
                      FrameType type) {
  static_assert(kChunkFrameDataOffset == kFrameHeaderBytes + kChunkHeaderBytes);
  AMIRROR_ASSERT(frame.size() >= kChunkFrameDataOffset);
  AMIRROR_ASSERT(kind == RecordKind::kData ? frame.size() > kChunkFrameDataOffset
                                           : kind == RecordKind::kZero && frame.size() == kChunkFrameDataOffset);
  AMIRROR_ASSERT(type == FrameType::kChunk || type == FrameType::kRepairChunk);
  seal_record_frame(frame, record_index, chunk_index, kind, type);
}

void seal_partial_chunk_frame(std::span<uint8_t> frame, uint64_t record_index, uint64_t chunk_index,
                              uint32_t offset_in_chunk_bytes) {
  AMIRROR_ASSERT(frame.size() > kPartialChunkFrameDataOffset);
  put_u32(frame.data() + kChunkFrameDataOffset, offset_in_chunk_bytes);
  put_u32(frame.data() + kChunkFrameDataOffset + 4, static_cast<uint32_t>(frame.size() - kPartialChunkFrameDataOffset));
  seal_record_frame(frame, record_index, chunk_index, RecordKind::kPartial, FrameType::kChunk);
}

Result<Hello> decode_hello(std::span<const uint8_t> payload) {
  Reader reader(payload, "HELLO");
  Hello message;
  if (!reader.u32(message.protocol_version) || !reader.name(message.node_name)) return reader.bad();
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  AMIRROR_RETURN_IF_ERROR(validate_name(message.node_name, "peer node name"));
  return message;
}

Result<OpenReplica> decode_open_replica(std::span<const uint8_t> payload) {
  Reader reader(payload, "OPEN_REPLICA");
  OpenReplica message;
  if (!reader.name(message.volume) || !reader.u64(message.size_bytes) ||
      !reader.u64(message.chunk_size_bytes) || !reader.u32(message.keep) || !reader.name(message.volume_uuid) ||
      !reader.name(message.origin_uuid) || !reader.u64(message.origin_point) || !reader.name(message.group) ||
      (!message.group.empty() && !validate_name(message.group, "group name").ok())) {
    return reader.bad();
  }
  auto is_uuid = [](const std::string& text) { return text.empty() || is_uuid_text(text); };
  if (message.keep == 0 || message.keep > 1024 || !is_uuid(message.volume_uuid) || !is_uuid(message.origin_uuid)) {
    return reader.bad();
  }
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  AMIRROR_RETURN_IF_ERROR(validate_name(message.volume, "volume name"));
  return message;
}

Result<ReplicaState> decode_replica_state(std::span<const uint8_t> payload) {
  Reader reader(payload, "REPLICA_STATE");
  ReplicaState message;
  uint64_t time = 0;
  if (!reader.u64(message.applied_cycle) || !reader.u64(time) ||
      !reader.u64(message.staged_target_cycle) || !reader.u64(message.staged_base_cycle) ||
      !reader.u64(message.staged_record_count) || !reader.u64(message.staged_last_chunk_index) ||
      !reader.name(message.point_uuid)) {
    return reader.bad();
  }
  uint32_t runs = 0;
  if (!reader.u32(runs) || runs > kMaxResyncRuns || (!message.point_uuid.empty() && !is_uuid_text(message.point_uuid))) {
    return reader.bad();
  }
  uint64_t next_free = 0;
  for (uint32_t i = 0; i < runs; ++i) {
    uint64_t first = 0, count = 0;
    if (!reader.u64(first) || !reader.u64(count) || count == 0 || first < next_free || count > (1ull << 40)) {
      return reader.bad();
    }
    next_free = first + count;
    message.resync_runs.emplace_back(first, count);
  }
  message.applied_freeze_time_unix_ms = static_cast<int64_t>(time);
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  return message;
}

Result<BeginDelta> decode_begin_delta(std::span<const uint8_t> payload) {
  Reader reader(payload, "BEGIN_DELTA");
  BeginDelta message;
  uint64_t time = 0;
  uint8_t full = 0;
  if (!reader.u64(message.base_cycle) || !reader.u64(message.target_cycle) || !reader.u64(time) ||
      !reader.u64(message.record_count) || !reader.u64(message.first_record) || !reader.u8(full) ||
      full > 1) {
    return reader.bad();
  }
  message.freeze_time_unix_ms = static_cast<int64_t>(time);
  message.full = full == 1;
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  if (message.target_cycle <= message.base_cycle || message.first_record > message.record_count) {
    return corruption("BEGIN_DELTA with inconsistent cycles or counts");
  }
  return message;
}

Result<ChunkRecord> decode_chunk(std::span<const uint8_t> payload) {
  Reader reader(payload, "CHUNK");
  ChunkRecord record;
  uint8_t kind = 0;
  if (!reader.u64(record.record_index) || !reader.u64(record.chunk_index) || !reader.u8(kind)) {
    return reader.bad();
  }
  if (kind == static_cast<uint8_t>(RecordKind::kData)) {
    record.kind = RecordKind::kData;
    record.data = reader.rest();
    if (record.data.empty()) return corruption("CHUNK data record without data");
  } else if (kind == static_cast<uint8_t>(RecordKind::kZero)) {
    record.kind = RecordKind::kZero;
    AMIRROR_RETURN_IF_ERROR(reader.finish());
  } else if (kind == static_cast<uint8_t>(RecordKind::kPartial)) {
    record.kind = RecordKind::kPartial;
    uint32_t offset = 0;
    uint32_t length = 0;
    if (!reader.u32(offset) || !reader.u32(length)) return reader.bad();
    record.offset_in_chunk_bytes = offset;
    record.data = reader.rest();
    if (length == 0 || record.data.size() != length) {
      return corruption("CHUNK partial record of " + std::to_string(record.data.size()) + " bytes says " +
                        std::to_string(length));
    }
  } else {
    return corruption("CHUNK record of unknown kind " + std::to_string(kind));
  }
  return record;
}

Result<EndDelta> decode_end_delta(std::span<const uint8_t> payload) {
  Reader reader(payload, "END_DELTA");
  EndDelta message;
  uint8_t hold = 0;
  if (!reader.u64(message.record_count) || !reader.u8(hold) || hold > 1) return reader.bad();
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  message.hold = hold == 1;
  return message;
}

Result<Applied> decode_applied(std::span<const uint8_t> payload) {
  AMIRROR_ASSIGN_OR_RETURN(uint64_t applied_cycle, decode_one_u64(payload, "APPLIED"));
  return Applied{applied_cycle};
}

Result<VerifyBegin> decode_verify_begin(std::span<const uint8_t> payload) {
  Reader reader(payload, "VERIFY_BEGIN");
  VerifyBegin message;
  if (!reader.name(message.volume) || !reader.u64(message.size_bytes) || !reader.u64(message.chunk_size_bytes) ||
      !reader.u64(message.cycle)) {
    return reader.bad();
  }
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  AMIRROR_RETURN_IF_ERROR(validate_name(message.volume, "volume name"));
  if (message.cycle == 0) return corruption("VERIFY_BEGIN for cycle 0 (no freeze point)");
  return message;
}

Result<VerifyAllocated> decode_verify_allocated(std::span<const uint8_t> payload) {
  Reader reader(payload, "VERIFY_ALLOCATED");
  VerifyAllocated message;
  uint8_t last = 0;
  if (!reader.u8(last) || last > 1 || !read_ranges(reader, message.ranges)) return reader.bad();
  message.last = last == 1;
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  return message;
}

Result<VerifyWindow> decode_verify_window(std::span<const uint8_t> payload) {
  Reader reader(payload, "VERIFY_WINDOW");
  VerifyWindow message;
  if (!read_ranges(reader, message.ranges)) return reader.bad();
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  uint64_t chunks = 0;
  for (const ChunkRange& range : message.ranges) {
    // Counts go up to 2^64 - 1: compare before adding, so the sum cannot wrap.
    if (range.chunk_count > kMaxVerifyWindowChunks - chunks) {
      return corruption("VERIFY_WINDOW asks for more than " + std::to_string(kMaxVerifyWindowChunks) + " chunks");
    }
    chunks += range.chunk_count;
  }
  if (chunks == 0) return corruption("VERIFY_WINDOW asks for no chunk");
  return message;
}

Result<VerifyHashes> decode_verify_hashes(std::span<const uint8_t> payload) {
  Reader reader(payload, "VERIFY_HASHES");
  VerifyHashes message;
  uint32_t count = 0;
  // The smallest entry (a zero) is 9 bytes: the count is checked against that.
  if (!reader.count(count, kMaxVerifyWindowChunks, 8 + 1) || count == 0) return reader.bad();
  message.digests.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    ChunkDigest& digest = message.digests[i];
    uint8_t kind = 0;
    if (!reader.u64(digest.chunk_index) || !reader.u8(kind)) return reader.bad();
    if (i > 0 && digest.chunk_index <= message.digests[i - 1].chunk_index) {
      return corruption("VERIFY_HASHES with chunk indexes out of order");
    }
    if (kind == static_cast<uint8_t>(DigestKind::kHash)) {
      digest.kind = DigestKind::kHash;
      if (!reader.bytes(digest.digest)) return reader.bad();
    } else if (kind == static_cast<uint8_t>(DigestKind::kZero)) {
      digest.kind = DigestKind::kZero;
    } else {
      return corruption("VERIFY_HASHES entry of unknown kind " + std::to_string(kind));
    }
  }
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  return message;
}

Result<RepairEnd> decode_repair_end(std::span<const uint8_t> payload) {
  AMIRROR_ASSIGN_OR_RETURN(uint64_t record_count, decode_one_u64(payload, "REPAIR_END"));
  return RepairEnd{record_count};
}

Result<RepairDone> decode_repair_done(std::span<const uint8_t> payload) {
  AMIRROR_ASSIGN_OR_RETURN(uint64_t record_count, decode_one_u64(payload, "REPAIR_DONE"));
  return RepairDone{record_count};
}

std::string decode_error(std::span<const uint8_t> payload) {
  std::string text(payload.begin(), payload.begin() + static_cast<ptrdiff_t>(std::min(payload.size(), kMaxErrorBytes)));
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return text;
}

std::vector<uint8_t> encode(const Switchover& message) {
  std::vector<uint8_t> out;
  put_name(out, message.volume);
  put64(out, message.cycle);
  put32(out, message.keep);
  put64(out, message.interval_ms);
  put_name(out, message.group);
  put32(out, static_cast<uint32_t>(message.members.size()));
  for (const auto& [volume, cycle] : message.members) {
    put_name(out, volume);
    put64(out, cycle);
  }
  return out;
}

Result<Switchover> decode_switchover(std::span<const uint8_t> payload) {
  Reader reader(payload, "SWITCHOVER");
  Switchover message;
  uint32_t count = 0;
  if (!reader.name(message.volume) || !reader.u64(message.cycle) || !reader.u32(message.keep) ||
      !reader.u64(message.interval_ms) || message.cycle == 0 || message.keep == 0 || message.keep > 1024 ||
      !reader.name(message.group) || !reader.count(count, kMaxGroupMembers, 12) ||
      message.group.empty() != (count == 0)) {
    return reader.bad();
  }
  for (uint32_t i = 0; i < count; ++i) {
    std::pair<std::string, uint64_t> member;
    if (!reader.name(member.first) || !reader.u64(member.second) || member.second == 0) return reader.bad();
    AMIRROR_RETURN_IF_ERROR(validate_name(member.first, "volume name"));
    message.members.push_back(std::move(member));
  }
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  AMIRROR_RETURN_IF_ERROR(validate_name(message.volume, "volume name"));
  if (!message.group.empty()) AMIRROR_RETURN_IF_ERROR(validate_name(message.group, "group name"));
  return message;
}

std::vector<uint8_t> encode(const GroupCommit& message) {
  std::vector<uint8_t> out;
  put_name(out, message.group);
  put32(out, static_cast<uint32_t>(message.members.size()));
  for (const GroupPoint& member : message.members) {
    put_name(out, member.volume);
    put64(out, member.cycle);
    put64(out, static_cast<uint64_t>(member.freeze_time_unix_ms));
  }
  return out;
}

Result<GroupCommit> decode_group_commit(std::span<const uint8_t> payload, const char* what) {
  Reader reader(payload, what);
  GroupCommit message;
  uint32_t count = 0;
  // Each member takes at least 4 + 1 + 16 bytes.
  if (!reader.name(message.group) || !reader.count(count, kMaxGroupMembers, 21) || count == 0) return reader.bad();
  std::set<std::string> seen;
  for (uint32_t i = 0; i < count; ++i) {
    GroupPoint member;
    uint64_t freeze_time = 0;
    if (!reader.name(member.volume) || !reader.u64(member.cycle) || !reader.u64(freeze_time) || member.cycle == 0 ||
        !seen.insert(member.volume).second) {
      return reader.bad();
    }
    AMIRROR_RETURN_IF_ERROR(validate_name(member.volume, "volume name"));
    member.freeze_time_unix_ms = static_cast<int64_t>(freeze_time);
    message.members.push_back(std::move(member));
  }
  AMIRROR_RETURN_IF_ERROR(reader.finish());
  AMIRROR_RETURN_IF_ERROR(validate_name(message.group, "group name"));
  return message;
}

Status check_hello_ack(const Frame& frame, const std::string& target_node) {
  if (frame.type != FrameType::kHelloAck) {
    return corruption(std::string("expected HELLO_ACK from ") + target_node + ", got " + frame_type_name(frame.type));
  }
  AMIRROR_ASSIGN_OR_RETURN(Hello ack, decode_hello(frame.payload));
  if (ack.node_name != target_node) {
    return invalid_argument("the peer says it is '" + ack.node_name + "', not '" + target_node +
                            "'; check the peer's address in the config");
  }
  return Status();
}

}  // namespace amirror::repl
