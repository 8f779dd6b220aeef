// SPDX-License-Identifier: Apache-2.0
// The log line format (time, level, component, fields, msg last; quoting keeps one
// event on one line) and the level filter.
#include "base/log.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <sys/stat.h>

#include <regex>
#include <sstream>

namespace amirror::log {
namespace {

// Restores the process's default logger after each test.
class LogTest : public ::testing::Test {
 protected:
  void TearDown() override { configure(Level::kInfo, Output::kStderr); }
  std::ostringstream lines_;
};

TEST_F(LogTest, LineHasUtcTimeLevelComponentFieldsAndMsgLast) {
  configure_stream(Level::kInfo, lines_);
  info("mirror", "cycle applied", {{"volume", "db"}, {"target", "site-b"}, {"cycle", uint64_t{12}}});
  const std::regex expected(
      R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z INFO mirror volume=db target=site-b cycle=12 msg="cycle applied"\n$)");
  EXPECT_TRUE(std::regex_match(lines_.str(), expected)) << lines_.str();
}

TEST_F(LogTest, ValuesAreQuotedAndEscapedWhenNotPlainTokens) {
  EXPECT_EQ(format_body("nbd", "refused",
                        {{"peer", "127.0.0.1:5000"},
                         {"error", "TLS handshake failed: \"bad\" cert\nnext"},
                         {"empty", ""},
                         {"path", "/var/lib/amirror/site-a"},
                         {"ok", true},
                         {"lag", 1.5},
                         {"back", "a\\b"},
                         {"bell", "\x07"}}),
            "nbd peer=127.0.0.1:5000 error=\"TLS handshake failed: \\\"bad\\\" cert\\nnext\" empty=\"\" "
            "path=/var/lib/amirror/site-a ok=true lag=1.5 back=\"a\\\\b\" bell=\"\\x07\" msg=\"refused\"");
  EXPECT_EQ(format_value("site-a/db@12"), "site-a/db@12");
  EXPECT_EQ(format_value("two words"), "\"two words\"");
  EXPECT_EQ(format_value("k=v"), "\"k=v\"");
}

TEST_F(LogTest, EveryLevelHasItsName) {
  configure_stream(Level::kTrace, lines_);
  trace("c", "t");
  debug("c", "d");
  info("c", "i");
  warn("c", "w");
  error("c", "e");
  std::string text = lines_.str();
  for (const char* expected : {"Z TRACE c msg=\"t\"", "Z DEBUG c msg=\"d\"", "Z INFO c msg=\"i\"",
                               "Z WARN c msg=\"w\"", "Z ERROR c msg=\"e\""}) {
    EXPECT_NE(text.find(expected), std::string::npos) << expected << " in\n" << text;
  }
}

TEST_F(LogTest, LevelFilterDropsLowerLevels) {
  configure_stream(Level::kWarn, lines_);
  EXPECT_FALSE(enabled(Level::kInfo));
  EXPECT_TRUE(enabled(Level::kWarn));
  debug("node", "dropped");
  info("node", "dropped");
  warn("node", "kept warn");
  error("node", "kept error");
  std::string text = lines_.str();
  EXPECT_EQ(text.find("dropped"), std::string::npos) << text;
  EXPECT_NE(text.find("WARN node msg=\"kept warn\""), std::string::npos) << text;
  EXPECT_NE(text.find("ERROR node msg=\"kept error\""), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
}

TEST_F(LogTest, ParsesLevelWordsAndRefusesOthersListingThem) {
  EXPECT_EQ(parse_level("trace").value(), Level::kTrace);
  EXPECT_EQ(parse_level("debug").value(), Level::kDebug);
  EXPECT_EQ(parse_level("info").value(), Level::kInfo);
  EXPECT_EQ(parse_level("warn").value(), Level::kWarn);
  EXPECT_EQ(parse_level("error").value(), Level::kError);
  for (const char* bad : {"loud", "", "INFO", "warning"}) {
    auto parsed = parse_level(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("trace, debug, info, warn or error"), std::string::npos);
  }
}

TEST_F(LogTest, AutoOutputIsTheJournalOnlyWhenJournalStreamNamesStderr) {
  ::unsetenv("JOURNAL_STREAM");
  configure(Level::kInfo, Output::kAuto);
  EXPECT_STREQ(output_name(), "stderr");
  struct stat stderr_stat {};
  ASSERT_EQ(::fstat(2, &stderr_stat), 0);
  // Inherited from a parent whose stderr was the journal, but ours is elsewhere.
  std::string other = std::to_string(stderr_stat.st_dev) + ":" + std::to_string(stderr_stat.st_ino + 1);
  ::setenv("JOURNAL_STREAM", other.c_str(), 1);
  configure(Level::kInfo, Output::kAuto);
  EXPECT_STREQ(output_name(), "stderr");
  // What systemd sets when it connects stderr to the journal. Nothing is logged here:
  // this machine may have no journal to take it.
  std::string ours = std::to_string(stderr_stat.st_dev) + ":" + std::to_string(stderr_stat.st_ino);
  ::setenv("JOURNAL_STREAM", ours.c_str(), 1);
  configure(Level::kInfo, Output::kAuto);
  EXPECT_STREQ(output_name(), "journal");
  ::unsetenv("JOURNAL_STREAM");
}

}  // namespace
}  // namespace amirror::log
