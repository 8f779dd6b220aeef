// SPDX-License-Identifier: Apache-2.0
// Only this file includes spdlog (and sd-journal through its systemd sink).
#include "base/log.h"

#include <fmt/format.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/systemd_sink.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>

namespace amirror::log {
namespace {

constexpr std::array<const char*, 5> kLevelNames = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"};
constexpr std::array<const char*, 5> kLevelWords = {"trace", "debug", "info", "warn", "error"};

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kTrace: return spdlog::level::trace;
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
  }
  AMIRROR_ASSERT(false);
  return spdlog::level::err;
}

// %* in the pattern: our upper-case level name (spdlog's own %l is "warning", "err").
class LevelFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const char* name = "ERROR";
    switch (msg.level) {
      case spdlog::level::trace: name = "TRACE"; break;
      case spdlog::level::debug: name = "DEBUG"; break;
      case spdlog::level::info: name = "INFO"; break;
      case spdlog::level::warn: name = "WARN"; break;
      default: break;
    }
    dest.append(std::string_view(name));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<LevelFlag>(); }
};

std::unique_ptr<spdlog::formatter> line_formatter() {
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  formatter->add_flag<LevelFlag>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %* %v");
  return formatter;
}

std::atomic<const char*> current_output{"stderr"};

void install(spdlog::sink_ptr sink, Level min_level, const char* output_name) {
  auto logger = std::make_shared<spdlog::logger>("amirror", std::move(sink));
  logger->set_formatter(line_formatter());
  logger->set_level(to_spdlog(min_level));
  // Every line is written out at once: a crash or kill -9 must not lose the last lines.
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
  current_output.store(output_name);
}

// The logger every process starts with, before configure(): info and above, stderr.
struct DefaultLogger {
  DefaultLogger() { install(std::make_shared<spdlog::sinks::stderr_sink_mt>(), Level::kInfo, "stderr"); }
};

void ensure_default() { static DefaultLogger installed; }

bool is_plain(std::string_view value) {
  if (value.empty()) return false;
  for (char c : value) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::string_view("._-:/@+,[]").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

// systemd sets JOURNAL_STREAM=DEVICE:INODE when it connects stderr to the journal.
// Compared with stderr itself (as sd_journal_stream_fd(3) advises), so a child whose
// stderr was redirected to a file (the demo's nodes) keeps writing there.
bool stderr_is_journal() {
  const char* value = std::getenv("JOURNAL_STREAM");
  unsigned long long device = 0, inode = 0;
  if (value == nullptr || std::sscanf(value, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat stderr_stat {};
  if (::fstat(2, &stderr_stat) != 0) return false;
  return stderr_stat.st_dev == device && stderr_stat.st_ino == inode;
}

}  // namespace

Field::Field(std::string_view field_key, double field_value) : key(field_key), value(fmt::format("{}", field_value)) {}

Result<Level> parse_level(std::string_view text) {
  for (size_t i = 0; i < kLevelWords.size(); ++i) {
    if (text == kLevelWords[i]) return static_cast<Level>(i);
  }
  return invalid_argument("unknown log level '" + std::string(text) + "' (use trace, debug, info, warn or error)");
}

const char* level_name(Level level) { return kLevelNames.at(static_cast<size_t>(level)); }

std::string format_value(std::string_view value, bool always_quote) {
  if (!always_quote && is_plain(value)) return std::string(value);
  std::string out = "\"";
  for (char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string format_body(std::string_view component, std::string_view message, Fields fields) {
  std::string body(component);
  for (const Field& field : fields) {
    body += ' ';
    body += field.key;
    body += '=';
    body += format_value(field.value);
  }
  body += " msg=";
  body += format_value(message, true);
  return body;
}

void configure(Level min_level, Output output) {
  ensure_default();
  if (output == Output::kAuto) output = stderr_is_journal() ? Output::kJournal : Output::kStderr;
  if (output == Output::kJournal) {
    // MESSAGE is the body only: the journal keeps its own time and the level as PRIORITY.
    install(std::make_shared<spdlog::sinks::systemd_sink_mt>("amirror", false), min_level, "journal");
  } else {
    install(std::make_shared<spdlog::sinks::stderr_sink_mt>(), min_level, "stderr");
  }
}

void configure_stream(Level min_level, std::ostream& stream) {
  ensure_default();
  install(std::make_shared<spdlog::sinks::ostream_sink_mt>(stream, true), min_level, "stream");
}

bool enabled(Level level) {
  ensure_default();
  return spdlog::default_logger_raw()->should_log(to_spdlog(level));
}

const char* output_name() {
  ensure_default();
  return current_output.load();
}

void write(Level level, std::string_view component, std::string_view message, Fields fields) {
  if (!enabled(level)) return;
  std::string body = format_body(component, message, fields);
  spdlog::default_logger_raw()->log(to_spdlog(level), spdlog::string_view_t(body.data(), body.size()));
}

}  // namespace amirror::log
