// SPDX-License-Identifier: Apache-2.0
#include "base/units.h"

#include <gtest/gtest.h>

#include "base/names.h"

namespace amirror {
namespace {

TEST(Units, ParsesSizesWithBinarySuffixes) {
  EXPECT_EQ(parse_size_bytes("4096").value(), 4096u);
  EXPECT_EQ(parse_size_bytes("64K").value(), 64 * kKiB);
  EXPECT_EQ(parse_size_bytes("64KiB").value(), 64 * kKiB);
  EXPECT_EQ(parse_size_bytes("10G").value(), 10 * kGiB);
  EXPECT_EQ(parse_size_bytes("16T").value(), 16 * kTiB);
}

TEST(Units, RefusesBadSizesNamingTheInput) {
  for (const char* bad : {"", "G", "1.5G", "12Q", "-1", "99999999999999999999", "16777216T"}) {
    auto result = parse_size_bytes(bad);
    ASSERT_FALSE(result.ok()) << bad;
    EXPECT_NE(result.status().message().find(bad), std::string::npos) << result.status().message();
  }
}

TEST(Units, ParsesDurations) {
  EXPECT_EQ(parse_duration_ms("10s").value(), 10'000u);
  EXPECT_EQ(parse_duration_ms("250ms").value(), 250u);
  EXPECT_EQ(parse_duration_ms("2m").value(), 120'000u);
  EXPECT_EQ(parse_duration_ms("3").value(), 3'000u);
  EXPECT_FALSE(parse_duration_ms("soon").ok());
}

TEST(Units, ParsesRates) {
  EXPECT_EQ(parse_rate_bytes_per_second("50MB/s").value(), 50'000'000u);
  EXPECT_EQ(parse_rate_bytes_per_second("1GB/s").value(), 1'000'000'000u);
  EXPECT_EQ(parse_rate_bytes_per_second("800Mbit/s").value(), 100'000'000u);
  EXPECT_EQ(parse_rate_bytes_per_second("512KiB/s").value(), 512u * 1024);
  EXPECT_EQ(parse_rate_bytes_per_second("20MiB/s").value(), 20 * kMiB);
  EXPECT_EQ(parse_rate_bytes_per_second("1000B/s").value(), 1000u);
  for (uint64_t rate : std::vector<uint64_t>{50'000'000, 1'000'000'000, 20 * kMiB, 16'000, 1234, 1000 * kGiB}) {
    EXPECT_EQ(parse_rate_bytes_per_second(format_rate(rate)).value(), rate) << format_rate(rate);
  }
  EXPECT_EQ(format_rate(50'000'000), "50MB/s");
}

TEST(Units, RefusesBadRatesWithExamples) {
  for (const char* bad : {"50XB/s", "", "50", "50MB", "1.5GB/s", "0MB/s", "-1MB/s", "99999999999999GB/s"}) {
    auto result = parse_rate_bytes_per_second(bad);
    ASSERT_FALSE(result.ok()) << bad;
    EXPECT_EQ(result.status().message(),
              "'" + std::string(bad) + "' is not a rate; use e.g. 50MB/s, 1GB/s, 800Mbit/s");
  }
}

TEST(Names, AcceptsOnlySafePathComponents) {
  EXPECT_TRUE(validate_name("db-01.prod_a", "volume name").ok());
  for (const char* bad : {"", ".", "..", "a/b", "a b", "x\n", "caf\xc3\xa9"}) {
    EXPECT_FALSE(validate_name(bad, "volume name").ok()) << bad;
  }
  EXPECT_FALSE(validate_name(std::string(65, 'a'), "volume name").ok());
  EXPECT_TRUE(validate_name(std::string(64, 'a'), "volume name").ok());
}

}  // namespace
}  // namespace amirror
