// SPDX-License-Identifier: Apache-2.0
// The one logger of the program (spdlog underneath; only log.cc includes it, so this
// header stays light for the many files that log).
//
// A line is
//   2026-12-01T23:59:01.123Z INFO mirror volume=db target=site-b cycle=12 msg="cycle applied"
// : UTC time with milliseconds, level, component, the event's key=value fields in the
// order given, and `msg` last. `msg` is a fixed text per kind of event: values never go
// into it, they go into fields, so tools and tests match `msg="..."` and fields rather
// than prose. A value is written bare when it is a plain token, else in double quotes
// with `"` and `\` escaped and control characters as \n, \t or \xHH (so one event is
// always one line). Format reference: docs/operations.md, "Logs".
//
// Where lines go: stderr, or the systemd journal when systemd connected stderr to it
// (JOURNAL_STREAM names stderr's device and inode): there each event is one journal entry with PRIORITY from
// the level, SYSLOG_IDENTIFIER=amirror, and MESSAGE = the line without time and level
// (the journal records both itself).
//
// Thread-safety: every function may be called from any thread; configure() is meant
// for startup, before other threads log (lines written during it go to either output).
#pragma once

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <string>
#include <string_view>

#include "base/status.h"

namespace amirror::log {

enum class Level : uint8_t { kTrace, kDebug, kInfo, kWarn, kError };

// "trace", "debug", "info", "warn" or "error"; anything else is an error listing them.
Result<Level> parse_level(std::string_view text);
// "TRACE", "DEBUG", "INFO", "WARN", "ERROR": as written in a line.
const char* level_name(Level level);

// One key=value field of a line. Numbers are written in decimal, bools as true/false.
struct Field {
  Field(std::string_view field_key, std::string_view field_value) : key(field_key), value(field_value) {}
  Field(std::string_view field_key, const std::string& field_value) : key(field_key), value(field_value) {}
  Field(std::string_view field_key, const char* field_value) : key(field_key), value(field_value) {}
  Field(std::string_view field_key, bool field_value) : key(field_key), value(field_value ? "true" : "false") {}
  template <std::integral T>
  Field(std::string_view field_key, T field_value) : key(field_key), value(std::to_string(field_value)) {}
  Field(std::string_view field_key, double field_value);

  std::string_view key;  // a plain token: [a-z0-9_]+
  std::string value;
};
using Fields = std::initializer_list<Field>;

enum class Output {
  kAuto,     // the journal when JOURNAL_STREAM names stderr (systemd), else stderr
  kStderr,
  kJournal,
};

// Sets the lowest level written and where lines go. Until called: info and above, to stderr.
void configure(Level min_level, Output output = Output::kAuto);
// Sends lines to `stream` instead (tests read them back). The stream must outlive the
// logging; configure() again to stop.
void configure_stream(Level min_level, std::ostream& stream);
// Whether a line of `level` would be written (skip building costly fields otherwise).
bool enabled(Level level);
// Where lines go now: "stderr", "journal" or "stream".
const char* output_name();

void write(Level level, std::string_view component, std::string_view message, Fields fields = {});
inline void trace(std::string_view component, std::string_view message, Fields fields = {}) {
  write(Level::kTrace, component, message, fields);
}
inline void debug(std::string_view component, std::string_view message, Fields fields = {}) {
  write(Level::kDebug, component, message, fields);
}
inline void info(std::string_view component, std::string_view message, Fields fields = {}) {
  write(Level::kInfo, component, message, fields);
}
inline void warn(std::string_view component, std::string_view message, Fields fields = {}) {
  write(Level::kWarn, component, message, fields);
}
inline void error(std::string_view component, std::string_view message, Fields fields = {}) {
  write(Level::kError, component, message, fields);
}

// The part of a line after time and level: `component k=v ... msg="message"`.
std::string format_body(std::string_view component, std::string_view message, Fields fields);
// `value` as written in a line: bare if a plain token, else quoted and escaped.
std::string format_value(std::string_view value, bool always_quote = false);

}  // namespace amirror::log
