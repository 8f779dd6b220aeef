// SPDX-License-Identifier: Apache-2.0
// Byte format of the intent: docs/formats/replica.md ("Group commit").
#include "repl/group_commit.h"

#include <cstring>
#include <mutex>

#include "base/assert.h"
#include "base/checksum.h"
#include "base/coding.h"

namespace amirror::repl {
namespace {

constexpr char kIntentMagic[8] = {'A', 'M', 'G', 'R', 'P', 'C', 'M', 'T'};
constexpr const char* kIntentPrefix = "group+";
constexpr const char* kIntentSuffix = ".commit";
// 4096 members of at most ~90 bytes each, with room to spare.
constexpr uint64_t kMaxIntentBytes = 1024 * 1024;

std::string intent_name(const std::string& group) { return kIntentPrefix + group + kIntentSuffix; }

std::string encode_intent(const GroupCommit& commit) {
  std::string out(kIntentMagic, 8);
  std::vector<uint8_t> body = encode(commit);
  append_u32(out, static_cast<uint32_t>(body.size()));
  out.append(reinterpret_cast<const char*>(body.data()), body.size());
  append_u64(out, checksum64(out.data(), out.size()));
  return out;
}

Result<GroupCommit> decode_intent(const std::string& contents, const std::string& where) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(contents.data());
  if (contents.size() < 8 + 4 + 8 || std::memcmp(bytes, kIntentMagic, 8) != 0 ||
      get_u32(bytes + 8) != contents.size() - 8 - 4 - 8 ||
      checksum64(bytes, contents.size() - 8) != get_u64(bytes + contents.size() - 8)) {
    return corruption(where + " is damaged (a group commit record); the group's replicas may be at different "
                              "points: delete them (amirror replica delete) for a full copy");
  }
  return decode_group_commit(std::span(bytes + 12, contents.size() - 20), "group commit record");
}

Status remove_intent(FileSystem& fs, const std::string& source_dir, const std::string& group) {
  AMIRROR_RETURN_IF_ERROR(fs.remove(source_dir + "/" + intent_name(group)));
  return fs.sync_dir(source_dir);
}

}  // namespace

Status commit_group(FileSystem& fs, const std::string& source_dir, const GroupCommit& commit,
                    const std::vector<std::shared_ptr<Replica>>& replicas, std::shared_mutex& gate) {
  AMIRROR_ASSERT(replicas.size() == commit.members.size());
  for (size_t i = 0; i < replicas.size(); ++i) {
    const GroupPoint& member = commit.members[i];
    if (replicas[i]->readable_cycle() >= member.cycle && !replicas[i]->sealed_at(member.cycle)) continue;
    if (!replicas[i]->sealed_at(member.cycle)) {
      return invalid_argument("GROUP_COMMIT of group '" + commit.group + "': replica " + replicas[i]->source_node() +
                              "/" + member.volume + " has no whole delta to cycle " + std::to_string(member.cycle) +
                              " (END_DELTA with hold first)");
    }
  }
  AMIRROR_RETURN_IF_ERROR(write_file_atomically(fs, source_dir, intent_name(commit.group), encode_intent(commit))
                              .with_context("record the commit of group '" + commit.group + "'"));
  return finish_group_commit(fs, source_dir, commit, replicas, gate);
}

Status finish_group_commit(FileSystem& fs, const std::string& source_dir, const GroupCommit& intent,
                           const std::vector<std::shared_ptr<Replica>>& replicas, std::shared_mutex& gate) {
  AMIRROR_ASSERT(replicas.size() == intent.members.size());
  {
    std::unique_lock lock(gate);
    for (size_t i = 0; i < replicas.size(); ++i) {
      AMIRROR_RETURN_IF_ERROR(replicas[i]->commit_sealed(intent.members[i].cycle)
                                  .with_context("commit group '" + intent.group + "'"));
    }
  }
  return remove_intent(fs, source_dir, intent.group);
}

Result<bool> group_commit_pending(FileSystem& fs, const std::string& source_dir, const std::string& group) {
  return fs.exists(source_dir + "/" + intent_name(group));
}

Result<std::vector<GroupCommit>> pending_group_commits(FileSystem& fs, const std::string& source_dir) {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.list_dir(source_dir));
  std::vector<GroupCommit> intents;
  const std::string prefix = kIntentPrefix, suffix = kIntentSuffix;
  for (const std::string& name : names) {
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;  // a replica directory, or an intent's unfinished .tmp (never renamed: no intent)
    }
    std::string where = source_dir + "/" + name;
    AMIRROR_ASSIGN_OR_RETURN(std::string contents, read_small_file(fs, where, kMaxIntentBytes));
    AMIRROR_ASSIGN_OR_RETURN(GroupCommit intent, decode_intent(contents, where));
    if (name != intent_name(intent.group)) return corruption(where + " names another group ('" + intent.group + "')");
    intents.push_back(std::move(intent));
  }
  return intents;
}

}  // namespace amirror::repl
