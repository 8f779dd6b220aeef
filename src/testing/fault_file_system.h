// SPDX-License-Identifier: Apache-2.0
// FaultFileSystem: a FileSystem for tests that simulates power loss and injects
// ENOSPC / EIO, in the spirit of LevelDB's db/fault_injection_test.cc. It wraps a
// real directory tree through another FileSystem (posix_file_system() by default),
// so the store under test runs unmodified against real files.
//
// The model of durability (what "power loss" keeps):
//  - File contents: every write_at / truncate / punch_hole since the file's last
//    sync() is "unsynced". The change is applied to the real file at once, and its
//    undo record (the bytes it replaced, the size before) is logged per file (per
//    inode, so it follows renames and is shared by every open handle of that file).
//    sync() makes the file's whole state durable and clears the log.
//  - Directory entries: creating a file (open with kCreateNew / kOpenOrCreate when it
//    did not exist), rename, remove and make_dir are "unsynced" until sync_dir() of
//    the directory that holds the new name (for rename: the destination directory;
//    the store only renames within one directory). remove() is lazy: the file is
//    renamed to a hidden trash name (.faultfs-trash-N, never listed) and deleted for
//    real on sync_dir; a rename over an existing file moves the replaced file to the
//    trash the same way, so both can be undone.
//  - drop_unsynced() is a power loss with nothing in flight reaching the disk: each
//    file is reverted to its last synced content and size, then directory operations
//    not made durable are undone, newest first (created files and directories are
//    deleted, renames reversed, removed files restored).
//  - drop_random_unsynced(seed) is a power loss after partial write-back: each
//    unsynced change is kept or undone per 4 KiB piece at random (so a byte ends up
//    holding either its synced value or the value of some later write), a file's
//    size is either its synced size or its current size, and for each directory a
//    random prefix of its unsynced operations survives (journaled file systems
//    commit metadata in order).
//  - After either drop, every File opened before it is dead: its operations fail with
//    kIo, so the store's destructors cannot "repair" the simulated disk. Open the
//    files again (reopen the volume) to continue; the new state counts as synced.
//
// Error injection (counted over the operations selected by a mask):
//  - fail_after(n, code, ops): the first n matching operations succeed, then every
//    following one fails with `code` (kNoSpace or kIo) until clear_faults(); with
//    sticky=false only the (n+1)-th fails. A failed write changes nothing.
//  - set_write_budget_bytes(b): a simulated full disk; every write_at consumes its
//    length, and a write that does not fit fails with kNoSpace without writing.
//
// Real fsync is skipped unless `real_sync` is set: durability is simulated here, and
// skipping it keeps model tests fast.
//
// Thread-safety: all File and FileSystem methods are thread-safe (writes to one file
// are serialized, to capture consistent undo records). drop_unsynced() and
// drop_random_unsynced() REQUIRE that no other operation runs concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "store/file_system.h"

namespace amirror::testing {

class FaultFileSystem final : public FileSystem {
 public:
  // Bit mask of operation kinds, for error injection and counters.
  enum Op : uint32_t {
    kOpWrite = 1u << 0,
    kOpSync = 1u << 1,
    kOpTruncate = 1u << 2,
    kOpPunchHole = 1u << 3,
    kOpCreate = 1u << 4,  // open that creates a file, make_dir
    kOpRename = 1u << 5,
    kOpRemove = 1u << 6,
    kOpSyncDir = 1u << 7,
    kOpRead = 1u << 8,
    kOpAllMutating = kOpWrite | kOpSync | kOpTruncate | kOpPunchHole | kOpCreate | kOpRename |
                     kOpRemove | kOpSyncDir,
  };

  explicit FaultFileSystem(FileSystem& base = posix_file_system(), bool real_sync = false);
  ~FaultFileSystem() override;
  FaultFileSystem(const FaultFileSystem&) = delete;
  FaultFileSystem& operator=(const FaultFileSystem&) = delete;

  // FileSystem.
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status remove(const std::string& path) override;
  // Counted and fault-injected as a remove, but not simulated: the directory is gone
  // at once and a power loss does not bring it back (only empty directories of
  // abandoned volumes are removed, and either outcome is valid for them).
  Status remove_dir(const std::string& path) override;
  Status sync_dir(const std::string& path) override;
  Status make_dir(const std::string& path) override;
  Result<bool> exists(const std::string& path) override;
  Result<std::vector<std::string>> list_dir(const std::string& path) override;
  Result<std::unique_ptr<DirectoryLock>> lock_file(const std::string& path) override;

  // Power loss. See the model above. REQUIRES: no concurrent operation.
  Status drop_unsynced();
  Status drop_random_unsynced(uint64_t seed);
  // Forgets all unsynced state without reverting anything: the disk now holds exactly
  // what the real files hold (like a clean shutdown that synced everything).
  void mark_all_synced();

  // Error injection. See the model above.
  void fail_after(uint64_t successful_operations, ErrorCode code, uint32_t ops,
                  bool sticky = true);
  void set_write_budget_bytes(uint64_t bytes);
  void clear_faults();
  uint64_t injected_failure_count() const { return injected_failures_.load(); }

  // Counters of completed operations of each kind (for tests that want to see that
  // something was, or was not, synced).
  uint64_t operation_count(Op op) const;
  // Bytes in undo logs (unsynced file data) right now.
  uint64_t unsynced_bytes() const;

  struct Inode;  // one real file's simulated state; public for the File handle only

 private:
  friend class FaultFile;

  enum class DirOpKind : uint8_t { kCreateFile, kMakeDir, kRename, kRemove };
  struct DirOp {
    DirOpKind kind;
    std::string dir;    // the directory whose sync_dir makes this durable
    std::string path;   // created / removed / renamed-to path
    std::string from;   // kRename: the old path
    std::string trash;  // kRename over an existing file, kRemove: where the old file is
  };

  // Returns an injected error for `op`, or ok. Counts the operation.
  Status check_fault(Op op, const std::string& path, uint64_t write_bytes = 0);
  void count(Op op);
  std::string trash_name(const std::string& dir);  // REQUIRES: mutex_ held
  std::shared_ptr<Inode> inode_for(const std::string& path);  // REQUIRES: mutex_ held
  Status revert_inode(Inode& inode, bool random, uint64_t* random_state);
  Status undo_dir_op(const DirOp& op);  // REQUIRES: mutex_ held
  Status drop(bool random, uint64_t seed);
  uint64_t epoch() const { return epoch_.load(); }

  FileSystem& base_;
  const bool real_sync_;

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Inode>> inodes_;  // GUARDED_BY(mutex_), by path
  std::vector<DirOp> dir_ops_;                            // GUARDED_BY(mutex_), oldest first
  uint64_t next_trash_number_ = 0;                        // GUARDED_BY(mutex_)
  std::atomic<uint64_t> epoch_{1};

  mutable std::mutex fault_mutex_;
  struct FaultRule {
    uint32_t ops = 0;
    uint64_t successes_left = 0;
    ErrorCode code = ErrorCode::kOk;
    bool sticky = true;
    bool fired = false;
  };
  std::optional<FaultRule> rule_;                  // GUARDED_BY(fault_mutex_)
  std::optional<uint64_t> write_budget_bytes_;     // GUARDED_BY(fault_mutex_)
  std::map<uint32_t, uint64_t> operation_counts_;  // GUARDED_BY(fault_mutex_)
  std::atomic<uint64_t> injected_failures_{0};
};

}  // namespace amirror::testing
