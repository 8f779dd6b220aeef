// SPDX-License-Identifier: Apache-2.0
#include "testing/fault_file_system.h"

#include <algorithm>
#include <filesystem>

namespace amirror::testing {
namespace {

constexpr const char* kTrashPrefix = ".faultfs-trash-";
constexpr uint64_t kRandomPieceBytes = 4096;

std::string normalize(const std::string& path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out.push_back(c);
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::string parent_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

uint64_t next_random(uint64_t* state) {  // splitmix64
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

struct FaultFileSystem::Inode {
  enum class UndoKind : uint8_t { kWrite, kTruncate, kPunchHole };
  struct Undo {
    UndoKind kind;
    uint64_t offset_bytes;
    std::vector<uint8_t> old_bytes;  // what [offset, offset + size) held before
  };

  std::mutex mutex;
  std::unique_ptr<File> file;  // the real file; set once at creation
  uint64_t synced_size_bytes = 0;  // GUARDED_BY(mutex)
  std::vector<Undo> undo;          // GUARDED_BY(mutex), oldest first
  uint64_t undo_bytes = 0;         // GUARDED_BY(mutex)

  // Records the current content of the allocated parts of [offset, offset + length).
  // REQUIRES: mutex held.
  Status record(UndoKind kind, uint64_t offset_bytes, uint64_t length_bytes,
                bool allocated_only) {
    if (length_bytes == 0) return Status();
    std::vector<Extent> extents{{offset_bytes, length_bytes}};
    if (allocated_only) {
      AMIRROR_ASSIGN_OR_RETURN(extents, file->allocated_extents(offset_bytes, length_bytes));
    }
    for (const Extent& extent : extents) {
      Undo entry{kind, extent.offset_bytes, std::vector<uint8_t>(extent.length_bytes)};
      AMIRROR_RETURN_IF_ERROR(file->read_at(extent.offset_bytes, entry.old_bytes));
      undo_bytes += entry.old_bytes.size();
      undo.push_back(std::move(entry));
    }
    return Status();
  }
};

// A handle on one Inode. Dead (every call fails with kIo) after a simulated crash.
class FaultFile final : public File {
 public:
  FaultFile(FaultFileSystem* fs, std::shared_ptr<FaultFileSystem::Inode> inode, std::string path,
            std::unique_ptr<File> adopt_lock = nullptr)
      : fs_(fs), inode_(std::move(inode)), path_(std::move(path)), epoch_(fs->epoch()),
        adopt_lock_(std::move(adopt_lock)) {}

  Status read_at(uint64_t offset_bytes, std::span<uint8_t> out) override {
    AMIRROR_RETURN_IF_ERROR(alive());
    AMIRROR_RETURN_IF_ERROR(fs_->check_fault(FaultFileSystem::kOpRead, path_));
    return inode_->file->read_at(offset_bytes, out);
  }

  Status write_at(uint64_t offset_bytes, std::span<const uint8_t> data) override {
    AMIRROR_RETURN_IF_ERROR(alive());
    AMIRROR_RETURN_IF_ERROR(fs_->check_fault(FaultFileSystem::kOpWrite, path_, data.size()));
    std::lock_guard lock(inode_->mutex);
    AMIRROR_RETURN_IF_ERROR(
        inode_->record(FaultFileSystem::Inode::UndoKind::kWrite, offset_bytes, data.size(), false));
    return inode_->file->write_at(offset_bytes, data);
  }

  Status sync() override {
    AMIRROR_RETURN_IF_ERROR(alive());
    AMIRROR_RETURN_IF_ERROR(fs_->check_fault(FaultFileSystem::kOpSync, path_));
    std::lock_guard lock(inode_->mutex);
    if (fs_->real_sync_) AMIRROR_RETURN_IF_ERROR(inode_->file->sync());
    AMIRROR_ASSIGN_OR_RETURN(inode_->synced_size_bytes, inode_->file->size_bytes());
    inode_->undo.clear();
    inode_->undo_bytes = 0;
    return Status();
  }

  Status truncate(uint64_t size_bytes) override {
    AMIRROR_RETURN_IF_ERROR(alive());
    AMIRROR_RETURN_IF_ERROR(fs_->check_fault(FaultFileSystem::kOpTruncate, path_));
    std::lock_guard lock(inode_->mutex);
    AMIRROR_ASSIGN_OR_RETURN(uint64_t size_before, inode_->file->size_bytes());
    if (size_bytes < size_before) {
      AMIRROR_RETURN_IF_ERROR(inode_->record(FaultFileSystem::Inode::UndoKind::kTruncate,
                                             size_bytes, size_before - size_bytes, true));
    }
    return inode_->file->truncate(size_bytes);
  }

  Status punch_hole(uint64_t offset_bytes, uint64_t length_bytes) override {
    AMIRROR_RETURN_IF_ERROR(alive());
    AMIRROR_RETURN_IF_ERROR(fs_->check_fault(FaultFileSystem::kOpPunchHole, path_));
    std::lock_guard lock(inode_->mutex);
    AMIRROR_ASSIGN_OR_RETURN(uint64_t size, inode_->file->size_bytes());
    if (offset_bytes < size) {
      uint64_t length = std::min(length_bytes, size - offset_bytes);
      AMIRROR_RETURN_IF_ERROR(inode_->record(FaultFileSystem::Inode::UndoKind::kPunchHole,
                                             offset_bytes, length, true));
    }
    return inode_->file->punch_hole(offset_bytes, length_bytes);
  }

  Result<uint64_t> size_bytes() override {
    AMIRROR_RETURN_IF_ERROR(alive());
    return inode_->file->size_bytes();
  }

  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                uint64_t length_bytes) override {
    AMIRROR_RETURN_IF_ERROR(alive());
    return inode_->file->allocated_extents(offset_bytes, length_bytes);
  }

 private:
  Status alive() const {
    if (fs_->epoch() == epoch_) return Status();
    return Status(ErrorCode::kIo, "simulated power loss: " + path_ +
                                      " was opened before the crash; open it again");
  }

  FaultFileSystem* fs_;
  std::shared_ptr<FaultFileSystem::Inode> inode_;
  std::string path_;
  uint64_t epoch_;
  // OpenMode::kAdopt: the real file opened in that mode, held only for its lock.
  std::unique_ptr<File> adopt_lock_;
};

FaultFileSystem::FaultFileSystem(FileSystem& base, bool real_sync)
    : base_(base), real_sync_(real_sync) {}

FaultFileSystem::~FaultFileSystem() = default;

void FaultFileSystem::count(Op op) {
  std::lock_guard lock(fault_mutex_);
  operation_counts_[op]++;
}

uint64_t FaultFileSystem::operation_count(Op op) const {
  std::lock_guard lock(fault_mutex_);
  auto it = operation_counts_.find(op);
  return it == operation_counts_.end() ? 0 : it->second;
}

Status FaultFileSystem::check_fault(Op op, const std::string& path, uint64_t write_bytes) {
  std::lock_guard lock(fault_mutex_);
  if (rule_ && (rule_->ops & op) != 0) {
    bool fail = false;
    if (rule_->fired) {
      fail = rule_->sticky;
    } else if (rule_->successes_left == 0) {
      fail = true;
      rule_->fired = true;
    } else {
      rule_->successes_left--;
    }
    if (fail) {
      injected_failures_++;
      const char* what = rule_->code == ErrorCode::kNoSpace ? "no space left on device"
                                                            : "input/output error";
      return Status(rule_->code, "injected failure on " + path + " (" + what + ")");
    }
  }
  if (op == kOpWrite && write_budget_bytes_) {
    if (write_bytes > *write_budget_bytes_) {
      injected_failures_++;
      return Status(ErrorCode::kNoSpace,
                    "write " + path + " (No space left on device; injected full disk)");
    }
    *write_budget_bytes_ -= write_bytes;
  }
  operation_counts_[op]++;
  return Status();
}

void FaultFileSystem::fail_after(uint64_t successful_operations, ErrorCode code, uint32_t ops,
                                 bool sticky) {
  std::lock_guard lock(fault_mutex_);
  rule_ = FaultRule{ops, successful_operations, code, sticky, false};
}

void FaultFileSystem::set_write_budget_bytes(uint64_t bytes) {
  std::lock_guard lock(fault_mutex_);
  write_budget_bytes_ = bytes;
}

void FaultFileSystem::clear_faults() {
  std::lock_guard lock(fault_mutex_);
  rule_.reset();
  write_budget_bytes_.reset();
}

uint64_t FaultFileSystem::unsynced_bytes() const {
  std::lock_guard lock(mutex_);
  uint64_t total = 0;
  for (const auto& [path, inode] : inodes_) {
    std::lock_guard inode_lock(inode->mutex);
    total += inode->undo_bytes;
  }
  return total;
}

std::shared_ptr<FaultFileSystem::Inode> FaultFileSystem::inode_for(const std::string& path) {
  auto it = inodes_.find(path);
  return it == inodes_.end() ? nullptr : it->second;
}

std::string FaultFileSystem::trash_name(const std::string& dir) {
  return dir + "/" + kTrashPrefix + std::to_string(next_trash_number_++);
}

Result<std::unique_ptr<File>> FaultFileSystem::open(const std::string& raw_path,
                                                    OpenMode mode) {
  std::string path = normalize(raw_path);
  std::lock_guard lock(mutex_);
  // The real file system decides whether it may be adopted and holds the lock; the
  // inode (shared with other opens of the path) is opened as an existing file.
  std::unique_ptr<File> adopt_lock;
  if (mode == OpenMode::kAdopt) {
    AMIRROR_ASSIGN_OR_RETURN(adopt_lock, base_.open(path, OpenMode::kAdopt));
    mode = OpenMode::kOpenExisting;
  }
  std::shared_ptr<Inode> inode = inode_for(path);
  if (inode) {
    if (mode == OpenMode::kCreateNew) {
      return Status(ErrorCode::kAlreadyExists, "open " + path + " (File exists)");
    }
    return std::unique_ptr<File>(new FaultFile(this, inode, path, std::move(adopt_lock)));
  }
  AMIRROR_ASSIGN_OR_RETURN(bool existed, base_.exists(path));
  bool creates = !existed && mode != OpenMode::kOpenExisting;
  if (creates) AMIRROR_RETURN_IF_ERROR(check_fault(kOpCreate, path));
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> real, base_.open(path, mode));
  inode = std::make_shared<Inode>();
  inode->file = std::move(real);
  if (existed) {
    // A file we have not seen yet (made before this FaultFileSystem): durable as is.
    AMIRROR_ASSIGN_OR_RETURN(inode->synced_size_bytes, inode->file->size_bytes());
  } else {
    dir_ops_.push_back(DirOp{DirOpKind::kCreateFile, parent_of(path), path, "", ""});
  }
  inodes_[path] = inode;
  return std::unique_ptr<File>(new FaultFile(this, inode, path, std::move(adopt_lock)));
}

Status FaultFileSystem::rename(const std::string& raw_from, const std::string& raw_to) {
  std::string from = normalize(raw_from);
  std::string to = normalize(raw_to);
  std::lock_guard lock(mutex_);
  AMIRROR_RETURN_IF_ERROR(check_fault(kOpRename, from));
  AMIRROR_ASSIGN_OR_RETURN(bool from_exists, base_.exists(from));
  if (!from_exists) return Status(ErrorCode::kNotFound, "rename " + from + " (No such file)");
  std::string dir = parent_of(to);
  DirOp op{DirOpKind::kRename, dir, to, from, ""};
  AMIRROR_ASSIGN_OR_RETURN(bool to_exists, base_.exists(to));
  if (to_exists) {
    op.trash = trash_name(dir);
    AMIRROR_RETURN_IF_ERROR(base_.rename(to, op.trash));
    if (auto old = inode_for(to)) {
      inodes_.erase(to);
      inodes_[op.trash] = old;
    }
  }
  AMIRROR_RETURN_IF_ERROR(base_.rename(from, to));
  if (auto moved = inode_for(from)) {
    inodes_.erase(from);
    inodes_[to] = moved;
  }
  dir_ops_.push_back(std::move(op));
  return Status();
}

Status FaultFileSystem::remove(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  std::lock_guard lock(mutex_);
  AMIRROR_RETURN_IF_ERROR(check_fault(kOpRemove, path));
  AMIRROR_ASSIGN_OR_RETURN(bool present, base_.exists(path));
  if (!present) return Status(ErrorCode::kNotFound, "remove " + path + " (No such file)");
  std::string dir = parent_of(path);
  DirOp op{DirOpKind::kRemove, dir, path, "", trash_name(dir)};
  AMIRROR_RETURN_IF_ERROR(base_.rename(path, op.trash));
  if (auto inode = inode_for(path)) {
    inodes_.erase(path);
    inodes_[op.trash] = inode;
  }
  dir_ops_.push_back(std::move(op));
  return Status();
}

Status FaultFileSystem::remove_dir(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  std::lock_guard lock(mutex_);
  AMIRROR_RETURN_IF_ERROR(check_fault(kOpRemove, path));
  return base_.remove_dir(path);
}

Status FaultFileSystem::sync_dir(const std::string& raw_path) {
  std::string dir = normalize(raw_path);
  std::lock_guard lock(mutex_);
  AMIRROR_RETURN_IF_ERROR(check_fault(kOpSyncDir, dir));
  if (real_sync_) AMIRROR_RETURN_IF_ERROR(base_.sync_dir(dir));
  std::vector<DirOp> remaining;
  for (DirOp& op : dir_ops_) {
    if (op.dir != dir) {
      remaining.push_back(std::move(op));
      continue;
    }
    if (!op.trash.empty()) {
      inodes_.erase(op.trash);
      Status status = base_.remove(op.trash);
      if (!status.ok() && status.code() != ErrorCode::kNotFound) return status;
    }
  }
  dir_ops_ = std::move(remaining);
  return Status();
}

Status FaultFileSystem::make_dir(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  std::lock_guard lock(mutex_);
  AMIRROR_ASSIGN_OR_RETURN(bool existed, base_.exists(path));
  if (existed) return base_.make_dir(path);
  AMIRROR_RETURN_IF_ERROR(check_fault(kOpCreate, path));
  AMIRROR_RETURN_IF_ERROR(base_.make_dir(path));
  dir_ops_.push_back(DirOp{DirOpKind::kMakeDir, parent_of(path), path, "", ""});
  return Status();
}

Result<bool> FaultFileSystem::exists(const std::string& path) {
  return base_.exists(normalize(path));
}

Result<std::vector<std::string>> FaultFileSystem::list_dir(const std::string& path) {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, base_.list_dir(normalize(path)));
  std::erase_if(names, [](const std::string& name) { return name.starts_with(kTrashPrefix); });
  return names;
}

Result<std::unique_ptr<DirectoryLock>> FaultFileSystem::lock_file(const std::string& path) {
  return base_.lock_file(normalize(path));
}

Status FaultFileSystem::revert_inode(Inode& inode, bool random, uint64_t* random_state) {
  std::lock_guard lock(inode.mutex);
  AMIRROR_ASSIGN_OR_RETURN(uint64_t current_size, inode.file->size_bytes());
  // Random mode: the size that reached the disk is the synced or the current one. When
  // it is the synced one, shrinking truncates are undone too, so no byte reads as a zero
  // it never held.
  bool keep_current_size = random && (next_random(random_state) & 1) != 0;
  for (auto it = inode.undo.rbegin(); it != inode.undo.rend(); ++it) {
    std::span<const uint8_t> old_bytes(it->old_bytes);
    if (!random || (it->kind == Inode::UndoKind::kTruncate && !keep_current_size)) {
      AMIRROR_RETURN_IF_ERROR(inode.file->write_at(it->offset_bytes, old_bytes));
      continue;
    }
    // Per 4 KiB piece (aligned in the file), undo or keep at random.
    uint64_t position = it->offset_bytes;
    uint64_t end = it->offset_bytes + old_bytes.size();
    while (position < end) {
      uint64_t piece_end = std::min(end, (position / kRandomPieceBytes + 1) * kRandomPieceBytes);
      if ((next_random(random_state) & 1) != 0) {
        AMIRROR_RETURN_IF_ERROR(inode.file->write_at(
            position, old_bytes.subspan(position - it->offset_bytes, piece_end - position)));
      }
      position = piece_end;
    }
  }
  AMIRROR_RETURN_IF_ERROR(
      inode.file->truncate(keep_current_size ? current_size : inode.synced_size_bytes));
  inode.undo.clear();
  inode.undo_bytes = 0;
  AMIRROR_ASSIGN_OR_RETURN(inode.synced_size_bytes, inode.file->size_bytes());
  return Status();
}

Status FaultFileSystem::undo_dir_op(const DirOp& op) {
  auto move_inode = [this](const std::string& from, const std::string& to) {
    if (auto inode = inode_for(from)) {
      inodes_.erase(from);
      inodes_[to] = inode;
    }
  };
  switch (op.kind) {
    case DirOpKind::kCreateFile: {
      inodes_.erase(op.path);
      Status status = base_.remove(op.path);
      if (!status.ok() && status.code() != ErrorCode::kNotFound) return status;
      return Status();
    }
    case DirOpKind::kMakeDir: {
      std::string prefix = op.path + "/";
      std::erase_if(inodes_, [&](const auto& entry) { return entry.first.starts_with(prefix); });
      std::error_code error;
      std::filesystem::remove_all(op.path, error);
      if (error) return Status(ErrorCode::kIo, "remove " + op.path + ": " + error.message());
      return Status();
    }
    case DirOpKind::kRename:
      AMIRROR_RETURN_IF_ERROR(base_.rename(op.path, op.from));
      move_inode(op.path, op.from);
      if (!op.trash.empty()) {
        AMIRROR_RETURN_IF_ERROR(base_.rename(op.trash, op.path));
        move_inode(op.trash, op.path);
      }
      return Status();
    case DirOpKind::kRemove:
      AMIRROR_RETURN_IF_ERROR(base_.rename(op.trash, op.path));
      move_inode(op.trash, op.path);
      return Status();
  }
  return Status();
}

Status FaultFileSystem::drop(bool random, uint64_t seed) {
  std::lock_guard lock(mutex_);
  epoch_++;  // every handle opened before now is dead
  uint64_t random_state = seed;
  for (auto& [path, inode] : inodes_) {
    AMIRROR_RETURN_IF_ERROR(revert_inode(*inode, random, &random_state));
  }
  // Per directory, how many of its unsynced operations survive (a prefix).
  std::map<std::string, uint64_t> total_per_dir;
  for (const DirOp& op : dir_ops_) total_per_dir[op.dir]++;
  std::map<std::string, uint64_t> kept_per_dir;
  for (const auto& [dir, total] : total_per_dir) {
    kept_per_dir[dir] = random ? next_random(&random_state) % (total + 1) : 0;
  }
  std::vector<uint64_t> index_in_dir(dir_ops_.size());
  {
    std::map<std::string, uint64_t> seen;
    for (size_t i = 0; i < dir_ops_.size(); i++) index_in_dir[i] = seen[dir_ops_[i].dir]++;
  }
  for (size_t i = dir_ops_.size(); i-- > 0;) {
    const DirOp& op = dir_ops_[i];
    if (index_in_dir[i] < kept_per_dir[op.dir]) continue;
    AMIRROR_RETURN_IF_ERROR(undo_dir_op(op));
  }
  // What survived is now on disk: really delete the trash of surviving operations.
  for (size_t i = 0; i < dir_ops_.size(); i++) {
    const DirOp& op = dir_ops_[i];
    if (index_in_dir[i] >= kept_per_dir[op.dir] || op.trash.empty()) continue;
    inodes_.erase(op.trash);
    Status status = base_.remove(op.trash);
    if (!status.ok() && status.code() != ErrorCode::kNotFound) return status;
  }
  dir_ops_.clear();
  return Status();
}

Status FaultFileSystem::drop_unsynced() { return drop(false, 0); }

Status FaultFileSystem::drop_random_unsynced(uint64_t seed) { return drop(true, seed); }

void FaultFileSystem::mark_all_synced() {
  std::lock_guard lock(mutex_);
  for (auto& [path, inode] : inodes_) {
    std::lock_guard inode_lock(inode->mutex);
    inode->undo.clear();
    inode->undo_bytes = 0;
    auto size = inode->file->size_bytes();
    if (size.ok()) inode->synced_size_bytes = size.value();
  }
  for (const DirOp& op : dir_ops_) {
    if (op.trash.empty()) continue;
    inodes_.erase(op.trash);
    (void)base_.remove(op.trash);
  }
  dir_ops_.clear();
}

}  // namespace amirror::testing
