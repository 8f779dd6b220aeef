// SPDX-License-Identifier: Apache-2.0
#include "node/mirror_state.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/names.h"

namespace amirror::node {

using nlohmann::json;

namespace {

// Format 1 kept pending_chunks only for the targets in `targets`: a target dropped
// from the list missed the chunks of every layer merged since. What it lacks cannot be
// known, so it gets a full copy (status shows it as initial-sync) instead of an
// incremental one that would leave its replica silently different.
void forget_untracked_targets(MirrorState& state) {
  for (auto& [name, target] : state.target_states) {
    if (std::find(state.targets.begin(), state.targets.end(), name) != state.targets.end()) continue;
    target.applied_cycle = 0;
    target.applied_freeze_time_unix_ms = 0;
    target.inflight_cycle = 0;
    target.pending_chunks.clear();
  }
}

struct PendingError {
  Status status;
};

// Reads `target`'s pending file into `state`. A missing file (removed by hand) cannot
// say what the target lacks: it gets a full copy, never a silently incomplete delta.
void load_pending(FileSystem& fs, const std::string& json_path, const std::string& target_name,
                  const std::string& file_name, TargetState& state) {
  if (file_name.find('/') != std::string::npos) throw PendingError{corruption(json_path + ": bad pending_file name")};
  std::string dir = json_path.substr(0, json_path.rfind('/'));
  auto bits = read_pending_file(fs, dir + "/" + file_name);
  if (bits.ok()) {
    state.pending_chunks = std::move(bits.value());
    return;
  }
  if (bits.status().code() != ErrorCode::kNotFound) throw PendingError{bits.status()};
  log::warn("mirror", "pending file missing; the target gets a full copy",
            {{"file", dir + "/" + file_name}, {"target", target_name}});
  state.applied_cycle = 0;
  state.applied_freeze_time_unix_ms = 0;
  state.inflight_cycle = 0;
}

}  // namespace

Result<MirrorState> load_mirror_state(FileSystem& fs, const std::string& path) {
  AMIRROR_ASSIGN_OR_RETURN(std::string text, read_small_file(fs, path, 1ull << 32));
  MirrorState state;
  try {
    json document = json::parse(text);
    int format = document.at("format").get<int>();
    if (format < 1 || format > kMirrorStateFormat) {
      return corruption(path + ": unknown format " + std::to_string(format) + " (a newer amirror wrote it?)");
    }
    state.unit = document.at("unit").get<std::string>();
    state.targets = document.at("targets").get<std::vector<std::string>>();
    state.interval_ms = document.at("interval_ms").get<uint64_t>();
    state.keep = document.value("keep", 1u);  // absent before --keep existed
    if (state.keep == 0 || state.keep > 1024) return corruption(path + ": keep must be 1 to 1024");
    state.running = document.at("running").get<bool>();
    // Added without a format change: absent before --bandwidth and --compress existed.
    state.bandwidth_bytes_per_second = document.value("bandwidth_bytes_per_second", uint64_t{0});
    auto compression = repl::parse_compression(document.value("compress", std::string("zstd")));
    if (!compression.ok()) return compression.status().with_context(path);
    state.compression = compression.value();
    for (const auto& [name, entry] : document.at("target_states").items()) {
      AMIRROR_RETURN_IF_ERROR(validate_name(name, "target name").with_context(path));
      TargetState target;
      target.applied_cycle = entry.at("applied_cycle").get<uint64_t>();
      target.applied_freeze_time_unix_ms = entry.at("applied_freeze_time_unix_ms").get<int64_t>();
      target.inflight_cycle = entry.at("inflight_cycle").get<uint64_t>();
      target.bytes_sent = entry.at("bytes_sent").get<uint64_t>();
      target.wire_bytes_sent = entry.value("wire_bytes_sent", target.bytes_sent);  // before compression: equal
      if (format <= 2) {
        for (uint64_t chunk : entry.at("pending_chunks")) target.pending_chunks.set(chunk);
      } else {
        load_pending(fs, path, name, entry.at("pending_file").get<std::string>(), target);
      }
      // Added without a format change: absent in files written before `mirror verify`.
      target.verify_cycle = entry.value("verify_cycle", uint64_t{0});
      target.verify_differing_chunks = entry.value("verify_differing_chunks", uint64_t{0});
      state.target_states[name] = std::move(target);
    }
    if (format == 1) forget_untracked_targets(state);
  } catch (const json::exception& error) {
    return corruption(path + " is damaged: " + error.what());
  } catch (const PendingError& error) {
    return error.status;
  }
  return state;
}

Status save_mirror_state(FileSystem& fs, const std::string& dir, const std::string& volume,
                         const MirrorState& state, DurablePendingPages* durable) {
  // Unknown after a failure: the next save compares with the files again.
  DurablePendingPages unknown;
  DurablePendingPages& known = durable != nullptr ? *durable : unknown;
  std::vector<std::unique_ptr<PendingFileUpdate>> updates;
  for (const auto& [name, target] : state.target_states) {
    auto found = known.find(name);
    auto update = PendingFileUpdate::begin(fs, dir, pending_file_name(volume, name), target.pending_chunks,
                                           found == known.end() ? nullptr : &found->second);
    Status added = update.ok() ? update.value()->add_bits() : update.status();
    if (!added.ok()) {
      known.clear();
      return added;
    }
    updates.push_back(std::move(update.value()));
  }
  json document;
  document["format"] = kMirrorStateFormat;
  document["unit"] = state.unit;
  document["targets"] = state.targets;
  document["interval_ms"] = state.interval_ms;
  document["keep"] = state.keep;
  document["running"] = state.running;
  document["bandwidth_bytes_per_second"] = state.bandwidth_bytes_per_second;
  document["compress"] = repl::compression_name(state.compression);
  json targets = json::object();
  for (const auto& [name, target] : state.target_states) {
    targets[name] = {{"applied_cycle", target.applied_cycle},
                     {"applied_freeze_time_unix_ms", target.applied_freeze_time_unix_ms},
                     {"inflight_cycle", target.inflight_cycle},
                     {"bytes_sent", target.bytes_sent},
                     {"wire_bytes_sent", target.wire_bytes_sent},
                     {"pending_file", pending_file_name(volume, name)},
                     {"verify_cycle", target.verify_cycle},
                     {"verify_differing_chunks", target.verify_differing_chunks}};
  }
  document["target_states"] = targets;
  Status written = write_file_atomically(fs, dir, volume + ".json", document.dump());
  if (!written.ok()) {
    known.clear();
    return written;
  }
  DurablePendingPages now;
  size_t next = 0;
  for (const auto& [name, target] : state.target_states) {
    auto dropped = updates[next++]->drop_bits();
    if (!dropped.ok()) {
      known.clear();
      return dropped.status();
    }
    now[name] = std::move(dropped.value());
  }
  known = std::move(now);
  return Status();
}

Status remove_mirror_state(FileSystem& fs, const std::string& dir, const std::string& volume) {
  const std::string json_path = dir + "/" + volume + ".json";
  AMIRROR_ASSIGN_OR_RETURN(bool has_state, fs.exists(json_path));
  if (has_state) AMIRROR_RETURN_IF_ERROR(fs.remove(json_path));
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.list_dir(dir));
  const std::string prefix = volume + "@";  // '@' is not allowed in names: only this volume's
  for (const std::string& name : names) {
    if (name.starts_with(prefix) && (name.ends_with(".pending") || name.ends_with(".pending.tmp"))) AMIRROR_RETURN_IF_ERROR(fs.remove(dir + "/" + name));
  }
  return fs.sync_dir(dir);
}

}  // namespace amirror::node
