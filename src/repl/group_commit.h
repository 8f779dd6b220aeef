// SPDX-License-Identifier: Apache-2.0
// Group-atomic commit on the target: the replicas of one source's consistency group
// move to the group's next freeze point together, so that no crash, promote or status
// ever sees member A at point s and member B at s-1.
//
// Protocol (docs/formats/wire.md): each member's delta ends with END_DELTA(hold); the
// target seals it (Replica::seal: every record durable, recorded as complete, not yet
// a point) and answers DELTA_DURABLE. Then GROUP_COMMIT lists every sealed member with
// its point, and commit_group() below:
//   1. checks each member is sealed at its point (or holds it already);
//   2. writes the intent `replicas/<source>/group+<group>.commit` (write-new-then-
//      rename, directory synced) - the commit point of the whole group;
//   3. commits each member (Replica::commit_sealed: one volume.meta rename each) while
//      holding `gate` exclusively, so readers of the group's state (status, promote)
//      see all members before or all after;
//   4. removes the intent.
// A crash before 2 leaves every member at s-1 with a sealed delta the source resends
// END_DELTA for; a crash after 2 is rolled forward by finish_group_commit() before the
// replicas are used (the sealed deltas are durable, so it always can). The intent's
// name has a '+', which no volume name has, so it never passes for a replica.
//
// Thread-safety: the caller holds every member replica exclusively (node's registry).
#pragma once

#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "repl/replica.h"
#include "repl/wire.h"
#include "store/file_system.h"

namespace amirror::repl {

// `source_dir` is replicas/<source>; `replicas[i]` is the replica of `commit.members[i]`.
Status commit_group(FileSystem& fs, const std::string& source_dir, const GroupCommit& commit,
                    const std::vector<std::shared_ptr<Replica>>& replicas, std::shared_mutex& gate);

// The intents left in `source_dir` by commits a crash or an error cut short.
Result<std::vector<GroupCommit>> pending_group_commits(FileSystem& fs, const std::string& source_dir);
Result<bool> group_commit_pending(FileSystem& fs, const std::string& source_dir, const std::string& group);
// Commits every member of an intent that is not at its point yet, then removes it.
Status finish_group_commit(FileSystem& fs, const std::string& source_dir, const GroupCommit& intent,
                           const std::vector<std::shared_ptr<Replica>>& replicas, std::shared_mutex& gate);

}  // namespace amirror::repl
