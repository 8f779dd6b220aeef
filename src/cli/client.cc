// SPDX-License-Identifier: Apache-2.0
// The client subcommands: build one control request, send it to the node, print the
// answer for a person (or as JSON). Exit codes: commands.h.
#include <fmt/core.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iterator>
#include <nlohmann/json.hpp>

#include "base/units.h"
#include "cli/commands.h"
#include "cli/stop_signals.h"
#include "node/control_socket.h"

namespace amirror::cli {
namespace {

using nlohmann::json;
constexpr uint64_t kDefaultRequestTimeoutMs = 120'000;
constexpr uint64_t kWatchRequestTimeoutMs = 5'000;

// Sends the request. Returns kExitOk with the parsed answer in `answer`, else the
// command's exit code with the reason in `error`: kExitNodeUnreachable when nothing
// answers on the control socket (nothing was sent), kExitFailed when the node refused,
// failed or sent no usable answer.
int exchange(const ClientArgs& client, const json& request, json& answer, std::string& error,
             uint64_t timeout_ms = kDefaultRequestTimeoutMs) {
  auto response = node::control_call(client.node_socket, request.dump(), timeout_ms);
  if (!response.ok()) {
    error = response.status().message();
    return response.status().code() == ErrorCode::kUnavailable ? kExitNodeUnreachable : kExitFailed;
  }
  try {
    answer = json::parse(response.value());
  } catch (const json::exception&) {
    error = "the node sent an answer that is not JSON";
    return kExitFailed;
  }
  if (!answer.value("ok", false)) {
    error = answer.value("error", std::string("the node refused the request"));
    return kExitFailed;
  }
  return kExitOk;
}

// exchange(), printing the reason of a failure on stderr.
int call(const ClientArgs& client, const json& request, json& answer, uint64_t timeout_ms = kDefaultRequestTimeoutMs) {
  std::string error;
  int code = exchange(client, request, answer, error, timeout_ms);
  if (code != kExitOk) fmt::print(stderr, "amirror: {}\n", error);
  return code;
}

json unit_request(const char* command, const MirrorArgs& args) {
  json request = {{"command", command}};
  if (!args.volume.empty()) request["volume"] = args.volume;
  if (!args.group.empty()) request["group"] = args.group;
  return request;
}

std::string progress_bar(double fraction, int width) {
  int filled = static_cast<int>(fraction * width + 0.5);
  filled = std::max(0, std::min(width, filled));
  return "[" + std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.') + "]";
}

std::string text_or(const json& value, const char* fallback) {
  return value.is_string() ? value.get<std::string>() : fallback;
}

// A failed or importing volume (status and volume list): one line saying why or how
// far, appended to `out`. Returns false for a volume in service.
bool unavailable_volume_line(const json& volume, std::string& out) {
  std::string state = volume.value("state", "ok");
  if (state == "failed") {
    fmt::format_to(std::back_inserter(out), "volume {}  FAILED: {}\n",
                   volume["name"].get<std::string>(), volume.value("error", "?"));
    return true;
  }
  if (state == "importing") {
    const json& import = volume["import"];
    double done = import["done_bytes"].get<double>(),
           total = std::max(1.0, import["total_bytes"].get<double>());
    fmt::format_to(std::back_inserter(out), "volume {}  importing from {}  {} {:.0f}%\n",
                   volume["name"].get<std::string>(), import["source"].get<std::string>(),
                   progress_bar(done / total, 30), 100 * done / total);
    return true;
  }
  return false;
}

}  // namespace

int run_volume_create(const ClientArgs& client, const VolumeArgs& args) {
  json request = {{"command", "volume_create"}, {"name", args.name}, {"size_bytes", args.size_bytes}};
  if (args.chunk_size_bytes != 0) request["chunk_size_bytes"] = args.chunk_size_bytes;
  if (!args.group.empty()) request["group"] = args.group;
  if (!args.storage.empty()) request["storage"] = args.storage;
  json answer;
  if (int failed = call(client, request, answer)) return failed;
  fmt::print("created volume {} ({}, {} chunks) in storage {}\n", args.name,
             format_bytes(answer["size_bytes"].get<uint64_t>()), format_bytes(answer["chunk_size_bytes"].get<uint64_t>()),
             answer.value("storage", "default"));
  return 0;
}

int run_volume_import(const ClientArgs& client, const VolumeArgs& args) {
  json request = {{"command", "volume_import"}, {"name", args.name}, {"from", args.from}};
  if (args.size_bytes != 0) request["size_bytes"] = args.size_bytes;
  if (args.chunk_size_bytes != 0) request["chunk_size_bytes"] = args.chunk_size_bytes;
  if (!args.group.empty()) request["group"] = args.group;
  if (!args.storage.empty()) request["storage"] = args.storage;
  json answer;
  if (int failed = call(client, request, answer, 24 * 3600 * 1000ull)) return failed;
  fmt::print("imported {} into volume {} ({})\n", args.from, args.name, format_bytes(answer["size_bytes"].get<uint64_t>()));
  return 0;
}

int run_volume_resize(const ClientArgs& client, const VolumeArgs& args) {
  json answer;
  json request = {{"command", "volume_resize"}, {"name", args.name}, {"size_bytes", args.size_bytes}};
  if (int failed = call(client, request, answer)) return failed;
  std::string size = format_bytes(answer["size_bytes"].get<uint64_t>());
  if (!answer["changed"].get<bool>()) {
    fmt::print("{} is already {}; nothing changed\n", args.name, size);
    return 0;
  }
  std::string replicas;
  if (answer["mirror_running"].get<bool>()) {
    replicas = "; replicas grow at the next cycle";
  } else if (!answer["targets"].empty()) {
    replicas = "; replicas grow at the first cycle after `amirror mirror start`";
  }
  fmt::print("{}: {} -> {}{}\n", args.name, format_bytes(answer["old_size_bytes"].get<uint64_t>()), size, replicas);
  if (uint32_t clients = answer["nbd_clients"].get<uint32_t>(); clients > 0) {
    fmt::print("{} NBD client{} connected now keep{} the old size until {} reconnect{}\n", clients,
               clients == 1 ? "" : "s", clients == 1 ? "s" : "", clients == 1 ? "it" : "they", clients == 1 ? "s" : "");
  }
  return 0;
}

int run_volume_delete(const ClientArgs& client, const VolumeArgs& args) {
  json answer;
  json request = {{"command", "volume_delete"}, {"name", args.name}, {"force", args.force}};
  if (int failed = call(client, request, answer)) return failed;
  fmt::print("deleted volume {}\n", args.name);
  return 0;
}

int run_volume_adopt(const ClientArgs& client, const VolumeArgs& args) {
  json request = {{"command", "volume_adopt"}, {"name", args.name}, {"path", args.path}};
  if (args.chunk_size_bytes != 0) request["chunk_size_bytes"] = args.chunk_size_bytes;
  if (!args.group.empty()) request["group"] = args.group;
  if (!args.storage.empty()) request["storage"] = args.storage;
  json answer;
  if (int failed = call(client, request, answer)) return failed;
  fmt::print("adopted {} as volume {} ({}, {} chunks); nothing else may write it until `amirror volume release {}`\n",
             answer["path"].get<std::string>(), args.name, format_bytes(answer["size_bytes"].get<uint64_t>()),
             format_bytes(answer["chunk_size_bytes"].get<uint64_t>()), args.name);
  return 0;
}

int run_volume_release(const ClientArgs& client, const VolumeArgs& args) {
  json answer;
  // Merging every layer into the file may take long: as long as an import.
  if (int failed = call(client, {{"command", "volume_release"}, {"name", args.name}}, answer, 24 * 3600 * 1000ull)) {
    return failed;
  }
  fmt::print("released volume {}: {} holds its data\n", args.name, answer["path"].get<std::string>());
  return 0;
}

int run_replica_delete(const ClientArgs& client, const std::string& replica) {
  json answer;
  if (int failed = call(client, {{"command", "replica_delete"}, {"replica", replica}}, answer)) return failed;
  fmt::print("deleted replica {}\n", replica);
  return 0;
}

int run_replica_promote(const ClientArgs& client, const PromoteArgs& args) {
  json request = {{"command", "replica_promote"}, {"replica", args.replica}};
  if (!args.source.empty()) request["source"] = args.source;
  if (!args.group.empty()) request["group"] = args.group;
  if (!args.group.empty() || !args.source.empty()) {
    if (!args.as.empty()) request["as"] = args.as;
    if (args.at != 0) request["at"] = args.at;
    json answer;
    if (int failed = call(client, request, answer)) return failed;
    for (const json& volume : answer["volumes"]) {
      fmt::print("promoted {}/{} at cycle {}: volume {} is writable here now\n", args.source,
                 volume.value("volume", ""), volume.value("cycle", uint64_t{0}), volume.value("volume", ""));
    }
    fmt::print("group {} is writable here now (mirror it with `amirror mirror start --group {} --to PEER`)\n", args.group,
               args.group);
    return 0;
  }
  if (args.replica.empty()) {
    fmt::print(stderr, "error: name the replica (SOURCE/VOLUME) or a group (--source NODE --group G)\n");
    return kExitUsage;
  }
  if (!args.as.empty()) request["as"] = args.as;
  if (args.at != 0) request["at"] = args.at;
  json answer;
  if (int failed = call(client, request, answer)) return failed;
  fmt::print("promoted {} at cycle {}: volume {} is writable here now (mirror it with `amirror mirror start {} --to PEER`)\n",
             args.replica, answer.value("cycle", uint64_t{0}), answer.value("volume", ""), answer.value("volume", ""));
  return 0;
}

int run_volume_demote(const ClientArgs& client, const std::string& name) {
  json answer;
  if (int failed = call(client, {{"command", "volume_demote"}, {"name", name}}, answer)) return failed;
  fmt::print("demoted volume {} at cycle {}: it takes no writes; it becomes the replica of the peer that mirrors "
             "{} here next\n", name, answer.value("cycle", uint64_t{0}), name);
  return 0;
}

int run_volume_list(const ClientArgs& client) {
  json answer;
  if (int failed = call(client, {{"command", "volume_list"}}, answer)) return failed;
  if (client.json) {
    fmt::print("{}\n", answer["volumes"].dump());
    return 0;
  }
  fmt::print("{:<24} {:>12} {:>10} {:<16} {:>8}\n", "VOLUME", "SIZE", "CHUNK", "GROUP", "CYCLE");
  for (const json& volume : answer["volumes"]) {
    if (std::string line; unavailable_volume_line(volume, line)) {
      fmt::print("{}", line);
      continue;
    }
    fmt::print("{:<24} {:>12} {:>10} {:<16} {:>8}\n", volume["name"].get<std::string>(),
               format_bytes(volume["size_bytes"].get<uint64_t>()), format_bytes(volume["chunk_size_bytes"].get<uint64_t>()),
               volume["group"].get<std::string>().empty() ? "-" : volume["group"].get<std::string>(),
               volume["cycle"].get<uint64_t>());
  }
  return 0;
}

int run_replica_list(const ClientArgs& client) {
  json answer;
  if (int failed = call(client, {{"command", "replica_list"}}, answer)) return failed;
  if (client.json) {
    fmt::print("{}\n", answer["replicas"].dump());
    return 0;
  }
  fmt::print("{:<32} {:>12} {:>8} {:<25} {:<10} {}\n", "REPLICA", "SIZE", "CYCLE", "FROZEN AT", "STATE", "IMAGE");
  for (const json& replica : answer["replicas"]) {
    std::string name = replica["source"].get<std::string>() + "/" + replica["volume"].get<std::string>();
    if (replica.value("state", "") == "failed") {
      fmt::print("{:<32} FAILED: {}\n", name, replica.value("error", "?"));
      continue;
    }
    fmt::print("{:<32} {:>12} {:>8} {:<25} {:<10} {}\n", name, format_bytes(replica["size_bytes"].get<uint64_t>()),
               replica["applied_cycle"].get<uint64_t>(), text_or(replica["freeze_time"], "-"),
               replica["state"].get<std::string>(), replica["image_path"].get<std::string>());
  }
  return 0;
}

int run_replica_points(const ClientArgs& client, const std::string& replica) {
  json answer;
  if (int failed = call(client, {{"command", "replica_points"}, {"replica", replica}}, answer)) return failed;
  if (client.json) {
    fmt::print("{}\n", answer["points"].dump());
    return 0;
  }
  fmt::print("{:>8} {}\n", "CYCLE", "FROZEN AT");
  for (const json& point : answer["points"]) {
    fmt::print("{:>8} {}\n", point["cycle"].get<uint64_t>(), text_or(point["freeze_time"], "-"));
  }
  return 0;
}

int run_mirror_start(const ClientArgs& client, const MirrorArgs& args) {
  json request = unit_request("mirror_start", args);
  request["targets"] = args.targets;
  if (args.interval_ms != 0) request["interval_ms"] = args.interval_ms;
  if (args.keep != 0) request["keep"] = args.keep;
  if (!args.bandwidth.empty()) request["bandwidth"] = args.bandwidth;
  if (!args.compress.empty()) request["compress"] = args.compress;
  json answer;
  if (int failed = call(client, request, answer)) return failed;
  std::string targets;
  for (const std::string& target : args.targets) targets += (targets.empty() ? "" : ",") + target;
  std::string unit = args.volume.empty() ? "group " + args.group : args.volume;
  if (answer.value("updated", false)) {
    fmt::print("mirror of {} to {} updated:{}{}\n", unit, targets,
               args.bandwidth.empty() ? "" : " bandwidth " + args.bandwidth,
               args.compress.empty() ? "" : " compress " + args.compress);
    return 0;
  }
  fmt::print("mirroring {} to {}\n", unit, targets);
  return 0;
}

int run_mirror_break(const ClientArgs& client, const MirrorArgs& args) {
  json answer;
  if (int failed = call(client, unit_request("mirror_break", args), answer)) return failed;
  fmt::print("mirror of {} stopped; `mirror start` resumes it incrementally\n",
             args.volume.empty() ? "group " + args.group : args.volume);
  return 0;
}

int run_mirror_switchover(const ClientArgs& client, const MirrorArgs& args) {
  json request = unit_request("mirror_switchover", args);
  request["to"] = args.to;
  uint64_t timeout_ms = args.timeout_ms != 0 ? args.timeout_ms : 300'000;
  request["timeout_ms"] = timeout_ms;
  json answer;
  if (int failed = call(client, request, answer, timeout_ms + 60'000)) return failed;
  if (args.group.empty()) {
    fmt::print("switched {} over to {} at cycle {}: {} is the primary and mirrors back here; this copy takes no "
               "writes\n", args.volume, args.to, answer.value("cycle", uint64_t{0}), args.to);
  } else {
    fmt::print("switched group {} over to {} (cycles {}): {} is the primary and mirrors back here; these copies take "
               "no writes\n", args.group, args.to, answer.value("cycles", json::object()).dump(), args.to);
  }
  return 0;
}

int run_mirror_sync(const ClientArgs& client, const MirrorArgs& args) {
  json request = unit_request("mirror_sync", args);
  uint64_t timeout_ms = args.timeout_ms != 0 ? args.timeout_ms : 300'000;
  request["timeout_ms"] = timeout_ms;
  auto start = std::chrono::steady_clock::now();
  json answer;
  if (int failed = call(client, request, answer, timeout_ms + 30'000)) return failed;
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("synced {}: every target applied the new cycle ({:.2f} s)\n",
             args.volume.empty() ? "group " + args.group : args.volume, seconds);
  return 0;
}

namespace {

// "chunks 10-12 (bytes 655360-851967), 99 (bytes 6488064-6553599)"
std::string ranges_text(const json& ranges, bool truncated, uint64_t chunk_count) {
  std::string text;
  for (const json& range : ranges) {
    uint64_t first = range["first_chunk"].get<uint64_t>(), last = range["last_chunk"].get<uint64_t>();
    uint64_t offset = range["offset_bytes"].get<uint64_t>(), length = range["length_bytes"].get<uint64_t>();
    text += text.empty() ? (chunk_count == 1 ? "chunk " : "chunks ") : ", ";
    text += first == last ? std::to_string(first) : fmt::format("{}-{}", first, last);
    text += fmt::format(" (bytes {}-{})", offset, offset + length - 1);
  }
  if (truncated) text += ", ... (more; the counts above are complete)";
  return text;
}

std::string count_of(uint64_t count, const char* one, const char* many) {
  return fmt::format("{} {}", count, count == 1 ? one : many);
}

// One line per target and volume, for a person.
void print_verify_result(const json& result) {
  std::string head = fmt::format("{} -> {}: ", result["volume"].get<std::string>(), result["target"].get<std::string>());
  std::string word = result["result"].get<std::string>();
  uint64_t cycle = result["cycle"].get<uint64_t>();
  if (word == "error") {
    fmt::print("{}could not verify: {}\n", head, result["error"].get<std::string>());
    return;
  }
  std::string compared = fmt::format("{}, {} compared", count_of(result["chunks_compared"].get<uint64_t>(), "chunk", "chunks"),
                                     format_bytes(result["bytes_compared"].get<uint64_t>()));
  if (word == "equal") {
    fmt::print("{}equal at cycle {} ({})\n", head, cycle, compared);
    return;
  }
  const json& found = result["differing_ranges"];
  uint64_t found_chunks = result["differing_chunks"].get<uint64_t>();
  std::string differ = fmt::format("{} ({}) {} at cycle {}: {}",
                                   count_of(found.size(), "chunk range", "chunk ranges"),
                                   count_of(found_chunks, "chunk", "chunks"), word == "repaired" ? "differed" : "differ",
                                   cycle, ranges_text(found, result["ranges_truncated"].get<bool>(), found_chunks));
  if (result["repaired_chunks"].get<uint64_t>() == 0) {
    fmt::print("{}{} ({})\n", head, differ, compared);
    return;
  }
  std::string repaired = fmt::format("repaired {} ({} of data sent)", count_of(result["repaired_chunks"].get<uint64_t>(), "chunk", "chunks"),
                                     format_bytes(result["repair_bytes_sent"].get<uint64_t>()));
  if (word == "repaired") {
    fmt::print("{}{}; {}; equal now\n", head, differ, repaired);
  } else {
    const json& still = result["still_differing_ranges"];
    fmt::print("{}{}; {}; STILL DIFFER: {}\n", head, differ, repaired,
               ranges_text(still, false, result["still_differing_chunks"].get<uint64_t>()));
  }
}

}  // namespace

int run_mirror_verify(const ClientArgs& client, const MirrorArgs& args) {
  json request = unit_request("mirror_verify", args);
  if (!args.to.empty()) request["to"] = args.to;
  request["repair"] = args.repair;
  uint64_t timeout_ms = args.timeout_ms != 0 ? args.timeout_ms : 300'000;
  request["timeout_ms"] = timeout_ms;
  json answer;
  // The wait for the point, then reading every allocated chunk on both sides: a large
  // volume takes long (the node answers when done).
  if (int failed = call(client, request, answer, timeout_ms + 24 * 3600 * 1000ull)) return failed;
  bool failed = false, differs = false;
  for (const json& result : answer["results"]) {
    std::string word = result["result"].get<std::string>();
    failed = failed || word == "error";
    differs = differs || word == "differ";
  }
  if (client.json) {
    answer.erase("ok");
    fmt::print("{}\n", answer.dump(2));
  } else {
    for (const json& result : answer["results"]) print_verify_result(result);
    if (differs && !args.repair) {
      fmt::print("differences found; `amirror mirror verify {}{}{} --repair` resends the differing chunks\n",
                 args.volume.empty() ? "--group " + args.group : args.volume, args.to.empty() ? "" : " --to ",
                 args.to);
    }
  }
  if (failed) return kExitVerifyFailed;
  return differs ? kExitVerifyDiffers : kExitVerifyEqual;
}

namespace {

// The person's view of a `status` answer.
std::string status_text(const json& answer) {
  std::string out;
  auto to = std::back_inserter(out);
  fmt::format_to(to, "node {}\n", answer["node"].get<std::string>());
  const json& transport = answer["peer_transport"];
  std::string mode = transport.value("mode", "");
  if (mode == "tls") {
    fmt::format_to(to, "peers: TLS 1.3, mutual authentication, this node is {}\n",
                   transport.value("certificate", "?"));
    // Expiry stops every mirror at once: warn a month ahead.
    int64_t days_left = (transport.value("certificate_expires_unix_s", int64_t{0}) -
                         static_cast<int64_t>(std::time(nullptr))) /
                        86400;
    if (days_left < 30) {
      fmt::format_to(
          to, "WARNING: this node's certificate {} in {} days; renew it (docs/security.md)\n",
          days_left < 0 ? "expired" : "expires", days_left < 0 ? -days_left : days_left);
    }
  } else if (mode == "insecure") {
    fmt::format_to(to, "peers: INSECURE: plaintext, unauthenticated (insecure = true in [tls])\n");
  }
  // Pools only where there is more than the data directory: one line each.
  const json storage = answer.value("storage", json::array());
  for (const json& pool : storage.size() > 1 ? storage : json::array()) {
    if (pool.value("state", "") == "failed") {
      fmt::format_to(to, "storage {}  {}  FAILED: {}\n", pool["name"].get<std::string>(),
                     pool["path"].get<std::string>(), pool.value("error", "?"));
    } else if (pool["free_bytes"].is_number()) {
      fmt::format_to(to, "storage {}  {}  {} free of {}\n", pool["name"].get<std::string>(),
                     pool["path"].get<std::string>(), format_bytes(pool["free_bytes"].get<uint64_t>()),
                     format_bytes(pool["total_bytes"].get<uint64_t>()));
    }
  }
  for (const json& volume : answer["volumes"]) {
    if (unavailable_volume_line(volume, out)) continue;
    const std::string pool = volume.value("storage", "default");
    fmt::format_to(
        to, "volume {}  {}  cycle {}{}{}\n", volume["name"].get<std::string>(),
        format_bytes(volume["size_bytes"].get<uint64_t>()), volume["cycle"].get<uint64_t>(),
        volume["group"].is_string() ? "  group " + volume["group"].get<std::string>() : "",
        pool == "default" ? "" : "  storage " + pool);
    for (const json& mirror : volume["mirrors"]) {
      std::string lag = mirror["lag_seconds"].is_number() ? fmt::format("{:.1f}s", mirror["lag_seconds"].get<double>()) : "-";
      // On the wire, when compression made it less; the bandwidth cap, when there is one.
      std::string wire;
      if (uint64_t wire_bytes = mirror.value("wire_bytes_sent", uint64_t{0});
          wire_bytes > 0 && wire_bytes < mirror["bytes_sent"].get<uint64_t>()) {
        wire = " (wire " + format_bytes(wire_bytes) + ")";
      }
      if (mirror.value("bandwidth_limit_bytes_per_second", json()).is_number()) {
        wire += " cap " + format_rate(mirror["bandwidth_limit_bytes_per_second"].get<uint64_t>());
      }
      fmt::format_to(to, "  -> {:<16} {:<13} replica cycle {:<6} lag {:<8} pending {:<10} sent {}{}\n",
                 mirror["target"].get<std::string>(), mirror["state"].get<std::string>(),
                 mirror["applied_cycle"].get<uint64_t>(), lag, format_bytes(mirror["bytes_pending"].get<uint64_t>()),
                 format_bytes(mirror["bytes_sent"].get<uint64_t>()), wire);
      if (mirror.contains("copy")) {
        const json& copy = mirror["copy"];
        double done = copy["done_bytes"].get<double>(),
               total = std::max(1.0, copy["total_bytes"].get<double>());
        double rate = copy["rate_bytes_per_second"].get<double>();
        std::string eta = rate > 0 ? fmt::format("{:.0f}s", (total - done) / rate) : "?";
        fmt::format_to(to, "     {} {:.0f}%  {}/s  ETA {}\n", progress_bar(done / total, 30),
                       100 * done / total, format_bytes(static_cast<uint64_t>(rate)), eta);
      }
      if (mirror["last_error"].is_string())
        fmt::format_to(to, "     last error: {}\n", mirror["last_error"].get<std::string>());
      if (mirror.value("lag_alert", false)) {
        fmt::format_to(to, "     LAG ALERT: over lag_alert = {:g}s\n", answer.value("lag_alert_seconds", 0.0));
      }
    }
  }
  for (const json& replica : answer["replicas"]) {
    if (replica.value("state", "") == "failed") {
      fmt::format_to(to, "replica {}/{}  FAILED: {}\n", replica["source"].get<std::string>(),
                     replica["volume"].get<std::string>(), replica.value("error", "?"));
      continue;
    }
    fmt::format_to(to, "replica {}/{}  cycle {}  frozen at {}  {}  {}\n",
                   replica["source"].get<std::string>(), replica["volume"].get<std::string>(),
                   replica["applied_cycle"].get<uint64_t>(), text_or(replica["freeze_time"], "-"),
                   replica["state"].get<std::string>(), replica["image_path"].get<std::string>());
  }
  return out;
}

// "2026-12-01 23:59:07 UTC": when a watch frame was taken.
std::string utc_now_text() {
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &utc);
  return text;
}

// `status --watch`: one frame every interval until SIGINT (Ctrl-C) or SIGTERM, which
// end it with exit 0. On a terminal each frame redraws the screen in place; otherwise
// (a pipe, a file) frames follow one another, each starting with its header line, with
// a blank line between. A node that cannot be reached at the first frame ends the
// watch with that exit code; later, the frame shows the error and the watch goes on,
// so a node restart can be watched through.
int watch_status(const ClientArgs& client, const StatusArgs& args) {
  sigset_t stop_signals = block_stop_signals();
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  for (uint64_t frame = 0;; ++frame) {
    json answer;
    std::string error;
    // Signals wait while a request runs: a short bound keeps Ctrl-C prompt if the node hangs.
    int code = exchange(client, {{"command", "status"}}, answer, error,
                        std::max<uint64_t>(args.watch_interval_ms, kWatchRequestTimeoutMs));
    if (code != kExitOk && frame == 0) {
      fmt::print(stderr, "amirror: {}\n", error);
      return code;
    }
    std::string text = fmt::format("amirror status, every {:g}s: {}\n\n",
                                   args.watch_interval_ms / 1000.0, utc_now_text());
    text += code == kExitOk ? status_text(answer) : "amirror: " + error + "\n";
    if (terminal) {
      // Cursor home, each line clearing its rest, then clear below: no flicker.
      std::string screen = "\033[H";
      for (size_t start = 0; start < text.size();) {
        size_t end = text.find('\n', start);
        screen += text.substr(start, end - start) + "\033[K\n";
        start = end + 1;
      }
      text = screen + "\033[J";
    } else if (frame > 0) {
      text = "\n" + text;
    }
    // A reader that went away (EPIPE: SIGPIPE is ignored) ends the watch.
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
      return kExitOk;
    timespec pause{static_cast<time_t>(args.watch_interval_ms / 1000),
                   static_cast<long>(args.watch_interval_ms % 1000) * 1'000'000};
    int signal_number;
    do {
      signal_number =
          ::sigtimedwait(&stop_signals, nullptr, &pause);  // EINTR: some other signal; wait anew
    } while (signal_number < 0 && errno == EINTR);
    if (signal_number > 0) return kExitOk;
  }
}

}  // namespace

int run_status(const ClientArgs& client, const StatusArgs& args) {
  if (args.watch) return watch_status(client, args);
  json answer;
  if (int failed = call(client, {{"command", "status"}}, answer)) return failed;
  if (client.json) {
    answer.erase("ok");
    fmt::print("{}\n", answer.dump(2));
    return kExitOk;
  }
  fmt::print("{}", status_text(answer));
  return kExitOk;
}

}  // namespace amirror::cli
