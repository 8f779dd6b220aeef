// SPDX-License-Identifier: Apache-2.0
// Unit tests of the NBD edge: request validation (protocol.h) and option negotiation
// (handshake.h) over memory buffers, no sockets.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nbd/export.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "test_script.h"

namespace amirror::nbd {
namespace {

constexpr uint64_t kSize = 1 << 20;

ConnectionLimits limits(bool structured = true, bool base_allocation = true) {
  std::shared_ptr<Export> e = std::make_shared<MemoryExport>(kSize);
  return ConnectionLimits{kSize, transmission_flags(*e, structured), structured,
                          base_allocation};
}

RequestHeader request(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  return RequestHeader{kRequestMagic, flags, type, 7, offset, length};
}

TEST(NbdValidate, AcceptsWellFormedRequests) {
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 4096), limits()).verdict, Verdict::kOk);
  auto write = validate_request(request(kCmdWrite, kSize - 512, 512, kCmdFlagFua), limits());
  EXPECT_EQ(write.verdict, Verdict::kOk);
  EXPECT_EQ(write.payload_bytes, 512u);
  EXPECT_EQ(validate_request(request(kCmdWriteZeroes, 0, kSize, kCmdFlagNoHole), limits()).verdict,
            Verdict::kOk);
  EXPECT_EQ(validate_request(request(kCmdFlush, 0, 0), limits()).verdict, Verdict::kOk);
  EXPECT_EQ(validate_request(request(kCmdDisc, 0, 0), limits()).verdict, Verdict::kOk);
  EXPECT_EQ(validate_request(request(kCmdBlockStatus, 0, kSize, kCmdFlagReqOne), limits()).verdict,
            Verdict::kOk);
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagDf), limits()).verdict, Verdict::kOk);
}

TEST(NbdValidate, BadMagicAndAbsurdWriteDisconnect) {
  RequestHeader bad = request(kCmdRead, 0, 512);
  bad.magic = 0x12345678;
  EXPECT_EQ(validate_request(bad, limits()).verdict, Verdict::kDisconnect);
  EXPECT_EQ(validate_request(request(kCmdWrite, 0, 0xffffffffu), limits()).verdict,
            Verdict::kDisconnect);
  EXPECT_EQ(validate_request(request(kCmdWrite, 0, kMaxPayloadBytes + 1), limits()).verdict,
            Verdict::kDisconnect);
}

TEST(NbdValidate, RangeErrorsKeepTheConnection) {
  auto huge_read = validate_request(request(kCmdRead, 0, 0xffffffffu), limits());
  EXPECT_EQ(huge_read.verdict, Verdict::kReplyError);
  EXPECT_EQ(huge_read.error, kNbdEinval);
  auto overflow = validate_request(request(kCmdRead, UINT64_MAX - 10, 512), limits());
  EXPECT_EQ(overflow.error, kNbdEinval);
  auto write_past = validate_request(request(kCmdWrite, kSize - 511, 512), limits());
  EXPECT_EQ(write_past.verdict, Verdict::kReplyError);
  EXPECT_EQ(write_past.error, kNbdEnospc);
  EXPECT_EQ(write_past.payload_bytes, 512u);  // must still be consumed
  EXPECT_EQ(validate_request(request(kCmdWriteZeroes, UINT64_MAX, 1), limits()).error, kNbdEnospc);
  EXPECT_EQ(validate_request(request(kCmdTrim, kSize, 1), limits()).error, kNbdEinval);
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 0), limits()).error, kNbdEinval);
}

TEST(NbdValidate, FlagsAndCommands) {
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagFua), limits()).error, kNbdEinval);
  auto bad_write = validate_request(request(kCmdWrite, 0, 512, 0x40), limits());
  EXPECT_EQ(bad_write.error, kNbdEinval);
  EXPECT_EQ(bad_write.payload_bytes, 512u);
  EXPECT_EQ(validate_request(request(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero), limits()).error,
            kNbdEinval);
  EXPECT_EQ(validate_request(request(kCmdCache, 0, 512), limits()).error, kNbdEinval);
  EXPECT_EQ(validate_request(request(200, 0, 512), limits()).error, kNbdEinval);
  EXPECT_EQ(validate_request(request(kCmdBlockStatus, 0, 512), limits(true, false)).error,
            kNbdEinval);
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagDf), limits(false, false)).error,
            kNbdEinval);
  EXPECT_EQ(validate_request(request(kCmdFlush, 4096, 0), limits()).error, kNbdEinval);
}

TEST(NbdValidate, StoreErrorsMapToNbdErrnos) {
  EXPECT_EQ(nbd_error_from_status(Status(ErrorCode::kNoSpace, "x")), kNbdEnospc);
  EXPECT_EQ(nbd_error_from_status(Status(ErrorCode::kIo, "x")), kNbdEio);
  EXPECT_EQ(nbd_error_from_status(Status(ErrorCode::kCorruption, "x")), kNbdEio);
  EXPECT_EQ(nbd_error_from_status(Status(ErrorCode::kOutOfRange, "x")), kNbdEinval);
  EXPECT_EQ(nbd_error_from_status(Status()), kNbdOk);
}

TEST(NbdValidate, HeaderRoundTrip) {
  RequestHeader header{kRequestMagic, 0x1234, kCmdWrite, 0x0102030405060708ULL, 1ULL << 40, 99};
  uint8_t raw[kRequestHeaderBytes];
  encode_request_header(header, raw);
  EXPECT_EQ(raw[0], 0x25);  // big-endian on the wire
  RequestHeader back = parse_request_header(raw);
  EXPECT_EQ(back.flags, header.flags);
  EXPECT_EQ(back.cookie, header.cookie);
  EXPECT_EQ(back.offset_bytes, header.offset_bytes);
  EXPECT_EQ(back.length_bytes, header.length_bytes);
}

// --- Handshake --------------------------------------------------------------------

class NbdHandshake : public ::testing::Test {
 protected:
  NbdHandshake() {
    catalog_.add("alpha", std::make_shared<MemoryExport>(kSize));
    catalog_.add("beta", std::make_shared<MemoryExport>(2 * kSize));
  }
  StaticCatalog catalog_;
};

TEST_F(NbdHandshake, GoWithStructuredRepliesAndBaseAllocation) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle | kClientFlagNoZeroes)
      .option(kOptStructuredReply, "")
      .option(kOptSetMetaContext, ClientScript::meta_payload("beta", {"base:allocation", "x:y"}))
      .option(kOptGo, ClientScript::go_payload("beta", {kInfoName}));
  MemoryStream stream(script.bytes());
  Result<Negotiated> result = negotiate(stream, catalog_);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->export_name, "beta");
  EXPECT_EQ(result->limits.export_size_bytes, 2 * kSize);
  EXPECT_TRUE(result->limits.structured_replies);
  EXPECT_TRUE(result->limits.base_allocation);
  EXPECT_TRUE(result->limits.transmission_flags & kTransCanMultiConn);
  auto got = replies(stream.output);
  ASSERT_GE(got.size(), 5u);
  EXPECT_EQ(got[0].type, kRepAck);
  EXPECT_EQ(got[1].type, kRepMetaContext);
  EXPECT_EQ(got[1].data.substr(4), "base:allocation");
  EXPECT_EQ(got.back().type, kRepAck);
}

TEST_F(NbdHandshake, MetaContextForAnotherExportDoesNotCarryOver) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(kOptStructuredReply, "")
      .option(kOptSetMetaContext, ClientScript::meta_payload("alpha", {"base:allocation"}))
      .option(kOptGo, ClientScript::go_payload("beta"));
  MemoryStream stream(script.bytes());
  Result<Negotiated> result = negotiate(stream, catalog_);
  ASSERT_TRUE(result.ok());
  EXPECT_FALSE(result->limits.base_allocation);
}

TEST_F(NbdHandshake, ErrorsKeepNegotiating) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle)
      .option(0x77, "abc")                                            // unknown
      .option(kOptGo, ClientScript::go_payload(std::string(5000, 'n')))  // too long
      .option(kOptGo, ClientScript::go_payload(""))                   // no default: 2 exports
      .option(kOptInfo, ClientScript::go_payload("nope"))             // unknown export
      .option(kOptSetMetaContext, ClientScript::meta_payload("alpha", {}))  // before structured
      .option(kOptList, "")
      .option(kOptGo, ClientScript::go_payload("alpha"));
  MemoryStream stream(script.bytes());
  Result<Negotiated> result = negotiate(stream, catalog_);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->export_name, "alpha");
  auto got = replies(stream.output);
  ASSERT_GE(got.size(), 8u);
  EXPECT_EQ(got[0].type, kRepErrUnsup);
  EXPECT_EQ(got[1].type, kRepErrInvalid);
  EXPECT_EQ(got[2].type, kRepErrUnknown);
  EXPECT_EQ(got[3].type, kRepErrUnknown);
  EXPECT_EQ(got[4].type, kRepErrInvalid);
  EXPECT_EQ(got[5].type, kRepServer);
  EXPECT_EQ(got[6].type, kRepServer);
  EXPECT_EQ(got[7].type, kRepAck);
}

TEST_F(NbdHandshake, FatalInputsEndTheHandshake) {
  auto run = [&](const ClientScript& script) {
    MemoryStream stream(script.bytes());
    return negotiate(stream, catalog_).ok();
  };
  EXPECT_FALSE(run(ClientScript().flags(0)));             // not fixed newstyle
  EXPECT_FALSE(run(ClientScript().flags(0xffffffff)));    // unknown flags
  EXPECT_FALSE(run(ClientScript().flags(kClientFlagFixedNewstyle)
                       .option(kOptExportName, std::string(5000, 'x'))));
  EXPECT_FALSE(run(ClientScript().flags(kClientFlagFixedNewstyle).option(kOptExportName, "zzz")));
  EXPECT_FALSE(run(ClientScript().flags(kClientFlagFixedNewstyle).option(kOptAbort, "")));
  ClientScript many;
  many.flags(kClientFlagFixedNewstyle);
  for (uint32_t i = 0; i <= kMaxOptionsPerHandshake; ++i) many.option(kOptList, "");
  many.option(kOptGo, ClientScript::go_payload("alpha"));
  EXPECT_FALSE(run(many));
}

TEST_F(NbdHandshake, OversizedOptionIsRefusedWithoutReadingIt) {
  // Header claims 4 GiB - 1; no payload follows. negotiate must not try to allocate it.
  std::string bytes;
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle);
  bytes.assign(reinterpret_cast<const char*>(script.bytes().data()), script.bytes().size());
  uint8_t header[16];
  put_be64(header, kOptionMagic);
  put_be32(header + 8, kOptGo);
  put_be32(header + 12, 0xffffffffu);
  bytes.append(reinterpret_cast<const char*>(header), 16);
  MemoryStream stream({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  EXPECT_FALSE(negotiate(stream, catalog_).ok());
  auto got = replies(stream.output);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].type, kRepErrTooBig);
}

TEST_F(NbdHandshake, ExportNameOldStyleReply) {
  ClientScript script;
  script.flags(kClientFlagFixedNewstyle).option(kOptExportName, "alpha");
  MemoryStream stream(script.bytes());
  ASSERT_TRUE(negotiate(stream, catalog_).ok());
  ASSERT_EQ(stream.output.size(), 18u + 10 + 124);  // zeroes: client did not ask NO_ZEROES
  EXPECT_EQ(get_be64(reinterpret_cast<const uint8_t*>(stream.output.data()) + 18), kSize);
}

TEST(NbdMemoryExport, ExtentsTrackWritesAndZeroes) {
  MemoryExport e(64 * 1024);
  std::vector<uint8_t> data(5000, 1);
  ASSERT_TRUE(e.write(4096, data, false).ok());
  auto extents = e.allocated_extents(0, 64 * 1024);
  ASSERT_TRUE(extents.ok());
  ASSERT_EQ(extents->size(), 1u);
  EXPECT_EQ((*extents)[0].offset_bytes, 4096u);
  EXPECT_EQ((*extents)[0].length_bytes, 8192u);
  ASSERT_TRUE(e.write_zeroes(4096, 8192, false).ok());
  EXPECT_TRUE(e.allocated_extents(0, 64 * 1024)->empty());
}

}  // namespace
}  // namespace amirror::nbd
