// SPDX-License-Identifier: Apache-2.0
#include "repl/wire.h"

#include <gtest/gtest.h>

#include "base/coding.h"

#include <random>

namespace amirror::repl {
namespace {

std::span<const uint8_t, kFrameHeaderBytes> header_of(const std::vector<uint8_t>& frame) {
  return std::span<const uint8_t, kFrameHeaderBytes>(frame.data(), kFrameHeaderBytes);
}

TEST(Wire, FrameRoundTrip) {
  std::vector<uint8_t> payload = encode(Hello{kProtocolVersion, "site-a"});
  std::vector<uint8_t> frame = encode_frame(FrameType::kHello, payload);
  FrameType type;
  auto length = decode_frame_header(header_of(frame), type);
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(type, FrameType::kHello);
  ASSERT_EQ(length.value(), payload.size());
  std::span<const uint8_t> body(frame.data() + kFrameHeaderBytes, length.value());
  EXPECT_TRUE(verify_frame(header_of(frame), body).ok());
  auto hello = decode_hello(body);
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->node_name, "site-a");
}

TEST(Wire, EveryFlippedBitIsDetected) {
  std::vector<uint8_t> data(4096);
  std::mt19937 random(7);
  for (auto& byte : data) byte = static_cast<uint8_t>(random());
  std::vector<uint8_t> frame = encode_chunk_frame(3, 17, RecordKind::kData, data);
  for (size_t bit = 0; bit < frame.size() * 8; bit += 7) {
    std::vector<uint8_t> damaged = frame;
    damaged[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    FrameType type;
    auto length = decode_frame_header(header_of(damaged), type);
    if (!length.ok()) continue;  // refused at the header: fine
    if (length.value() != damaged.size() - kFrameHeaderBytes) continue;  // would read a different length
    std::span<const uint8_t> body(damaged.data() + kFrameHeaderBytes, length.value());
    EXPECT_FALSE(verify_frame(header_of(damaged), body).ok()) << "bit " << bit;
  }
}

TEST(Wire, RefusesOversizedAndUnknownFrames) {
  std::vector<uint8_t> frame = encode_frame(FrameType::kKeepAlive, {});
  FrameType type;
  std::vector<uint8_t> huge = frame;
  huge[8] = huge[9] = huge[10] = huge[11] = 0xff;  // 4 GiB payload
  EXPECT_FALSE(decode_frame_header(header_of(huge), type).ok());
  std::vector<uint8_t> unknown = frame;
  unknown[4] = 99;
  EXPECT_FALSE(decode_frame_header(header_of(unknown), type).ok());
  std::vector<uint8_t> bad_magic = frame;
  bad_magic[0] ^= 1;
  EXPECT_FALSE(decode_frame_header(header_of(bad_magic), type).ok());
}

TEST(Wire, MessagesRoundTripAndRejectGarbage) {
  BeginDelta begin{4, 9, 1234567, 100, 10, false};
  auto decoded = decode_begin_delta(encode(begin));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->base_cycle, 4u);
  EXPECT_EQ(decoded->target_cycle, 9u);
  EXPECT_EQ(decoded->first_record, 10u);

  BeginDelta backwards{9, 4, 0, 0, 0, false};
  EXPECT_FALSE(decode_begin_delta(encode(backwards)).ok());

  std::vector<uint8_t> truncated = encode(ReplicaState{});
  truncated.pop_back();
  EXPECT_FALSE(decode_replica_state(truncated).ok());

  EXPECT_FALSE(decode_hello(encode(Hello{1, "../etc"})).ok()) << "names from peers are validated";
  EXPECT_FALSE(decode_open_replica(encode(OpenReplica{"a/b", 512, 4096})).ok());

  std::vector<uint8_t> zero_frame = encode_chunk_frame(0, 5, RecordKind::kZero, {});
  auto record = decode_chunk(std::span(zero_frame).subspan(kFrameHeaderBytes));
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->kind, RecordKind::kZero);
  EXPECT_EQ(record->chunk_index, 5u);
  std::vector<uint8_t> bad_kind = zero_frame;
  bad_kind[kFrameHeaderBytes + 16] = 7;
  EXPECT_FALSE(decode_chunk(std::span(bad_kind).subspan(kFrameHeaderBytes)).ok());
}

TEST(Wire, PartialChunkRecordRoundTripsAndItsChecksumCoversIt) {
  std::vector<uint8_t> data(8192);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13);
  std::vector<uint8_t> frame(kPartialChunkFrameDataOffset + data.size());
  std::copy(data.begin(), data.end(), frame.begin() + kPartialChunkFrameDataOffset);
  seal_partial_chunk_frame(frame, 9, 33, 12288);

  FrameType type;
  auto length = decode_frame_header(std::span<const uint8_t, kFrameHeaderBytes>(frame.data(), kFrameHeaderBytes), type);
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(type, FrameType::kChunk);
  std::span<const uint8_t> payload = std::span(frame).subspan(kFrameHeaderBytes);
  ASSERT_TRUE(verify_frame(std::span<const uint8_t, kFrameHeaderBytes>(frame.data(), kFrameHeaderBytes), payload).ok());
  auto record = decode_chunk(payload);
  ASSERT_TRUE(record.ok()) << record.status().to_string();
  EXPECT_EQ(record->record_index, 9u);
  EXPECT_EQ(record->chunk_index, 33u);
  EXPECT_EQ(record->kind, RecordKind::kPartial);
  EXPECT_EQ(record->offset_in_chunk_bytes, 12288u);
  EXPECT_TRUE(std::equal(record->data.begin(), record->data.end(), data.begin(), data.end()));

  // Any flipped byte of the record (offset, length or data) fails the frame's checksum.
  for (size_t at : {kChunkFrameDataOffset, kChunkFrameDataOffset + 5, frame.size() - 1}) {
    std::vector<uint8_t> flipped = frame;
    flipped[at] ^= 0x40;
    EXPECT_FALSE(verify_frame(std::span<const uint8_t, kFrameHeaderBytes>(flipped.data(), kFrameHeaderBytes),
                              std::span(flipped).subspan(kFrameHeaderBytes))
                     .ok())
        << "byte " << at;
  }
  // A length that disagrees with the data, or no data, is refused.
  std::vector<uint8_t> short_payload(payload.begin(), payload.end() - 1);
  EXPECT_FALSE(decode_chunk(short_payload).ok());
  std::vector<uint8_t> empty(payload.begin(), payload.begin() + (kPartialChunkFrameDataOffset - kFrameHeaderBytes));
  empty[kChunkFrameDataOffset - kFrameHeaderBytes + 4] = 0;
  empty[kChunkFrameDataOffset - kFrameHeaderBytes + 5] = 0;
  EXPECT_FALSE(decode_chunk(empty).ok());
}

// ---- mirror verify frames ----

std::vector<uint8_t> payload_of(const std::vector<uint8_t>& frame) {
  return std::vector<uint8_t>(frame.begin() + kFrameHeaderBytes, frame.end());
}

TEST(Wire, VerifyFrameTypesAreKnownAndNothingAroundThem) {
  for (uint16_t raw = 20; raw <= 26; ++raw) {
    std::vector<uint8_t> frame = encode_frame(static_cast<FrameType>(raw), {});
    FrameType type;
    ASSERT_TRUE(decode_frame_header(header_of(frame), type).ok()) << raw;
    EXPECT_EQ(static_cast<uint16_t>(type), raw);
    EXPECT_STRNE(frame_type_name(type), "UNKNOWN");
  }
  for (uint16_t raw : {12, 19, 27, 0xffff}) {
    std::vector<uint8_t> frame = encode_frame(FrameType::kKeepAlive, {});
    frame[4] = static_cast<uint8_t>(raw);
    frame[5] = static_cast<uint8_t>(raw >> 8);
    FrameType type;
    EXPECT_FALSE(decode_frame_header(header_of(frame), type).ok()) << raw;
  }
}

TEST(Wire, VerifyMessagesRoundTrip) {
  auto begin = decode_verify_begin(encode(VerifyBegin{"db", 1 << 20, 65536, 42}));
  ASSERT_TRUE(begin.ok()) << begin.status().to_string();
  EXPECT_EQ(begin->volume, "db");
  EXPECT_EQ(begin->size_bytes, 1u << 20);
  EXPECT_EQ(begin->chunk_size_bytes, 65536u);
  EXPECT_EQ(begin->cycle, 42u);

  VerifyAllocated allocated{true, {{0, 3}, {3, 1}, {100, 7}}};
  auto allocated_back = decode_verify_allocated(encode(allocated));
  ASSERT_TRUE(allocated_back.ok()) << allocated_back.status().to_string();
  EXPECT_TRUE(allocated_back->last);
  EXPECT_EQ(allocated_back->ranges, allocated.ranges);
  auto none = decode_verify_allocated(encode(VerifyAllocated{true, {}}));
  ASSERT_TRUE(none.ok()) << "an empty replica has no allocated range";
  EXPECT_TRUE(none->ranges.empty());

  VerifyWindow window{{{5, 2}, {9, kMaxVerifyWindowChunks - 2}}};
  auto window_back = decode_verify_window(encode(window));
  ASSERT_TRUE(window_back.ok()) << window_back.status().to_string();
  EXPECT_EQ(window_back->ranges, window.ranges);

  VerifyHashes hashes;
  ChunkDigest hashed{7, DigestKind::kHash, {}};
  for (size_t i = 0; i < kChunkDigestBytes; ++i) hashed.digest[i] = static_cast<uint8_t>(i * 7 + 1);
  hashes.digests = {ChunkDigest{3, DigestKind::kZero, {}}, hashed, ChunkDigest{8, DigestKind::kZero, {}}};
  auto hashes_back = decode_verify_hashes(encode(hashes));
  ASSERT_TRUE(hashes_back.ok()) << hashes_back.status().to_string();
  EXPECT_EQ(hashes_back->digests, hashes.digests);
  EXPECT_EQ(encode(hashes).size(), 4 + 3 * 9 + kChunkDigestBytes) << "a zero chunk carries no digest";

  EXPECT_EQ(decode_repair_end(encode(RepairEnd{12}))->record_count, 12u);
  EXPECT_EQ(decode_repair_done(encode(RepairDone{12}))->record_count, 12u);

  std::vector<uint8_t> data(4096, 0xab);
  std::vector<uint8_t> repair = encode_chunk_frame(4, 9, RecordKind::kData, data, FrameType::kRepairChunk);
  FrameType type;
  ASSERT_TRUE(decode_frame_header(header_of(repair), type).ok());
  EXPECT_EQ(type, FrameType::kRepairChunk);
  EXPECT_TRUE(verify_frame(header_of(repair), std::span(repair).subspan(kFrameHeaderBytes)).ok());
  std::vector<uint8_t> payload = payload_of(repair);  // the record's data points into it
  auto record = decode_chunk(payload);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->record_index, 4u);
  EXPECT_EQ(record->chunk_index, 9u);
  EXPECT_TRUE(std::equal(record->data.begin(), record->data.end(), data.begin(), data.end()));
}

TEST(Wire, MalformedVerifyMessagesAreRefused) {
  EXPECT_FALSE(decode_verify_begin(encode(VerifyBegin{"a/b", 512, 4096, 1})).ok()) << "names are validated";
  EXPECT_FALSE(decode_verify_begin(encode(VerifyBegin{"db", 512, 4096, 0})).ok()) << "cycle 0 is no point";
  std::vector<uint8_t> long_begin = encode(VerifyBegin{"db", 512, 4096, 1});
  long_begin.push_back(0);
  EXPECT_FALSE(decode_verify_begin(long_begin).ok()) << "trailing bytes";

  auto allocated = [](std::vector<ChunkRange> list) {
    std::vector<uint8_t> out{1};
    uint8_t count[4];
    put_u32(count, static_cast<uint32_t>(list.size()));
    out.insert(out.end(), count, count + 4);
    for (const ChunkRange& range : list) {
      uint8_t bytes[16];
      put_u64(bytes, range.first_chunk);
      put_u64(bytes + 8, range.chunk_count);
      out.insert(out.end(), bytes, bytes + 16);
    }
    return out;
  };
  EXPECT_TRUE(decode_verify_allocated(allocated({{0, 2}, {2, 1}})).ok());
  EXPECT_FALSE(decode_verify_allocated(allocated({{0, 0}})).ok()) << "an empty range";
  EXPECT_FALSE(decode_verify_allocated(allocated({{4, 2}, {5, 1}})).ok()) << "overlapping";
  EXPECT_FALSE(decode_verify_allocated(allocated({{4, 2}, {1, 1}})).ok()) << "descending";
  EXPECT_FALSE(decode_verify_allocated(allocated({{UINT64_MAX, 2}})).ok()) << "wraps around";
  std::vector<uint8_t> bad_last = allocated({{0, 1}});
  bad_last[0] = 2;
  EXPECT_FALSE(decode_verify_allocated(bad_last).ok());
  std::vector<uint8_t> lying_count = allocated({{0, 1}});
  put_u32(lying_count.data() + 1, 1000);  // more ranges than bytes: refused before allocating
  EXPECT_FALSE(decode_verify_allocated(lying_count).ok());
  put_u32(lying_count.data() + 1, kMaxVerifyRangesPerFrame + 1);
  EXPECT_FALSE(decode_verify_allocated(lying_count).ok());

  // A window's ranges are the same, minus the flag; its total is bounded without wrapping.
  auto window = [&](std::vector<ChunkRange> list) {
    std::vector<uint8_t> out = allocated(std::move(list));
    out.erase(out.begin());
    return out;
  };
  EXPECT_TRUE(decode_verify_window(window({{0, kMaxVerifyWindowChunks}})).ok());
  EXPECT_FALSE(decode_verify_window(window({{0, kMaxVerifyWindowChunks + 1}})).ok());
  EXPECT_FALSE(decode_verify_window(window({{0, 2}, {10, UINT64_MAX - 10}})).ok()) << "a sum that would wrap";
  EXPECT_FALSE(decode_verify_window(window({})).ok()) << "a window of no chunk";

  VerifyHashes two;
  two.digests = {ChunkDigest{3, DigestKind::kZero, {}}, ChunkDigest{5, DigestKind::kHash, {}}};
  std::vector<uint8_t> good = encode(two);
  ASSERT_TRUE(decode_verify_hashes(good).ok());
  std::vector<uint8_t> out_of_order = good;
  put_u64(out_of_order.data() + 4 + 9, 3);  // the second entry's index = the first's
  EXPECT_FALSE(decode_verify_hashes(out_of_order).ok());
  std::vector<uint8_t> bad_kind = good;
  bad_kind[4 + 8] = 3;
  EXPECT_FALSE(decode_verify_hashes(bad_kind).ok());
  std::vector<uint8_t> short_digest(good.begin(), good.end() - 1);
  EXPECT_FALSE(decode_verify_hashes(short_digest).ok());
  std::vector<uint8_t> empty(4, 0);
  EXPECT_FALSE(decode_verify_hashes(empty).ok()) << "no digest";
  std::vector<uint8_t> too_many = good;
  put_u32(too_many.data(), kMaxVerifyWindowChunks + 1);
  EXPECT_FALSE(decode_verify_hashes(too_many).ok());

  std::vector<uint8_t> repair_end = encode(RepairEnd{1});
  repair_end.pop_back();
  EXPECT_FALSE(decode_repair_end(repair_end).ok());
  EXPECT_FALSE(decode_repair_done({}).ok());
}

TEST(Wire, RandomBytesNeverCrashTheDecoders) {
  std::mt19937 random(11);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> bytes(random() % 64);
    for (auto& byte : bytes) byte = static_cast<uint8_t>(random());
    (void)decode_hello(bytes);
    (void)decode_open_replica(bytes);
    (void)decode_replica_state(bytes);
    (void)decode_begin_delta(bytes);
    (void)decode_chunk(bytes);
    (void)decode_end_delta(bytes);
    (void)decode_applied(bytes);
    (void)decode_error(bytes);
    (void)decode_verify_begin(bytes);
    (void)decode_verify_allocated(bytes);
    (void)decode_verify_window(bytes);
    (void)decode_verify_hashes(bytes);
    (void)decode_repair_end(bytes);
    (void)decode_repair_done(bytes);
    (void)decode_group_commit(bytes);
    (void)decode_switchover(bytes);
  }
}

TEST(Wire, GroupCommitFramesRoundTripAndRefuseGarbage) {
  auto end = decode_end_delta(encode(EndDelta{17, true}));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->record_count, 17u);
  EXPECT_TRUE(end->hold);
  EXPECT_FALSE(decode_end_delta(encode(EndDelta{17, false}))->hold);
  std::vector<uint8_t> bad_hold = encode(EndDelta{17, true});
  bad_hold.back() = 2;
  EXPECT_FALSE(decode_end_delta(bad_hold).ok());

  GroupCommit commit{"g", {GroupPoint{"a", 5, 1000}, GroupPoint{"b", 7, 1000}}};
  auto decoded = decode_group_commit(encode(commit));
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded.value(), commit);
  EXPECT_FALSE(decode_group_commit(encode(GroupCommit{"g", {}})).ok()) << "no members";
  EXPECT_FALSE(decode_group_commit(encode(GroupCommit{"g", {GroupPoint{"a", 5, 0}, GroupPoint{"a", 6, 0}}})).ok())
      << "a member twice";
  EXPECT_FALSE(decode_group_commit(encode(GroupCommit{"g", {GroupPoint{"a", 0, 0}}})).ok()) << "cycle 0";
  EXPECT_FALSE(decode_group_commit(encode(GroupCommit{"g", {GroupPoint{"../x", 1, 0}}})).ok()) << "bad name";
  std::vector<uint8_t> truncated = encode(commit);
  truncated.pop_back();
  EXPECT_FALSE(decode_group_commit(truncated).ok());
  for (uint16_t raw : {32, 33}) {
    std::vector<uint8_t> frame = encode_frame(static_cast<FrameType>(raw), {});
    FrameType type;
    ASSERT_TRUE(decode_frame_header(header_of(frame), type).ok()) << raw;
    EXPECT_STRNE(frame_type_name(type), "UNKNOWN");
  }

  Switchover one{"db", 4, 2, 1000, "", {}};
  auto single = decode_switchover(encode(one));
  ASSERT_TRUE(single.ok());
  EXPECT_TRUE(single->group.empty());
  Switchover group{"a", 4, 1, 1000, "g", {{"a", 4}, {"b", 9}}};
  auto both = decode_switchover(encode(group));
  ASSERT_TRUE(both.ok()) << both.status().to_string();
  EXPECT_EQ(both->group, "g");
  EXPECT_EQ(both->members, group.members);
  EXPECT_FALSE(decode_switchover(encode(Switchover{"a", 4, 1, 1000, "g", {}})).ok()) << "a group without members";
}

}  // namespace
}  // namespace amirror::repl
