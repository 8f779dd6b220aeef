// SPDX-License-Identifier: Apache-2.0
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>

#include "store/file_system.h"

namespace amirror {
namespace {

// Who holds the flock on the file `info` describes, from /proc/locks: " (held by
// process PID: COMMAND LINE)", or "" when that cannot be told. For an operator facing a
// second adopt of one path by another amirror process.
std::string flock_holder(const struct stat& info) {
  char wanted[64];
  std::snprintf(wanted, sizeof wanted, "%02x:%02x:%llu", major(info.st_dev), minor(info.st_dev),
                static_cast<unsigned long long>(info.st_ino));
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    std::istringstream fields(line);
    std::string number, kind, advisory, mode, pid, id;
    if (!(fields >> number >> kind >> advisory >> mode >> pid >> id) || kind != "FLOCK" || id != wanted) continue;
    std::ifstream cmdline("/proc/" + pid + "/cmdline");
    std::string command((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    std::replace(command.begin(), command.end(), '\0', ' ');
    while (!command.empty() && command.back() == ' ') command.pop_back();
    return " (held by process " + pid + (command.empty() ? "" : ": " + command) + ")";
  }
  return "";
}

// Whether another open file description holds the flock on `path` (a block device
// claimed O_EXCL by an amirror that adopted it, rather than mounted).
bool flock_held(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return held;
}

class PosixFile final : public File {
 public:
  PosixFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixFile() override {
    if (direct_fd_ >= 0) ::close(direct_fd_);
    ::close(fd_);
  }

  Status read_at(uint64_t offset_bytes, std::span<uint8_t> out) override {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd_, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset_bytes + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::from_errno(errno, "read " + path_);
      }
      if (n == 0) {  // past end of file: reads as zero
        std::fill(out.begin() + static_cast<ptrdiff_t>(done), out.end(), 0);
        break;
      }
      done += static_cast<size_t>(n);
    }
    return Status();
  }

  Status write_at(uint64_t offset_bytes, std::span<const uint8_t> data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset_bytes + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::from_errno(errno, "write " + path_);
      }
      done += static_cast<size_t>(n);
    }
    return Status();
  }

  Status write_uncached_at(uint64_t offset_bytes, std::span<const uint8_t> data) override {
    const auto address = reinterpret_cast<uintptr_t>(data.data());
    const size_t direct_bytes =
        offset_bytes % kUncachedWriteAlignment == 0 && address % kUncachedWriteAlignment == 0
            ? data.size() / kUncachedWriteAlignment * kUncachedWriteAlignment
            : 0;
    size_t done = 0;
    if (int direct = direct_bytes > 0 ? direct_fd() : -1; direct >= 0) {
      while (done < direct_bytes) {
        ssize_t n = ::pwrite(direct, data.data() + done, direct_bytes - done, static_cast<off_t>(offset_bytes + done));
        if (n >= 0) {
          done += static_cast<size_t>(n);
        } else if (errno == EINVAL && done == 0) {
          direct_refused_.store(true);  // the file system refuses O_DIRECT writes after all
          break;
        } else if (errno != EINTR) {
          return Status::from_errno(errno, "write " + path_);
        }
      }
    }
    if (done == data.size()) return Status();
    // Through the cache, handed to writeback at once so a later sync finds little left.
    AMIRROR_RETURN_IF_ERROR(write_at(offset_bytes + done, data.subspan(done)));
    start_writeback(offset_bytes + done, data.size() - done);
    return Status();
  }

  Status sync() override {
    if (::fdatasync(fd_) != 0) return Status::from_errno(errno, "fdatasync " + path_);
    return Status();
  }

  void start_writeback(uint64_t offset_bytes, uint64_t length_bytes) override {
    // Asynchronous: queues the dirty pages for writeback and returns.
    (void)::sync_file_range(fd_, static_cast<off_t>(offset_bytes), static_cast<off_t>(length_bytes),
                            SYNC_FILE_RANGE_WRITE);
  }

  void will_read(uint64_t offset_bytes, uint64_t length_bytes) override {
    // Asynchronous: queues the reads of the pages not cached and returns.
    (void)::posix_fadvise(fd_, static_cast<off_t>(offset_bytes), static_cast<off_t>(length_bytes),
                          POSIX_FADV_WILLNEED);
  }

  Status truncate(uint64_t size_bytes) override {
    if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
      return Status::from_errno(errno, "truncate " + path_);
    }
    return Status();
  }

  Status punch_hole(uint64_t offset_bytes, uint64_t length_bytes) override {
    if (length_bytes == 0) return Status();
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(offset_bytes), static_cast<off_t>(length_bytes)) == 0) {
      return Status();
    }
    if (errno != EOPNOTSUPP) return Status::from_errno(errno, "punch hole in " + path_);
    // The file system cannot deallocate: write zeros so the range still reads as zero.
    std::vector<uint8_t> zeros(std::min<uint64_t>(length_bytes, 1 << 20), 0);
    for (uint64_t done = 0; done < length_bytes;) {
      uint64_t step = std::min<uint64_t>(zeros.size(), length_bytes - done);
      AMIRROR_RETURN_IF_ERROR(write_at(offset_bytes + done, std::span(zeros.data(), step)));
      done += step;
    }
    return Status();
  }

  Result<uint64_t> size_bytes() override {
    struct stat info;
    if (::fstat(fd_, &info) != 0) return Status::from_errno(errno, "stat " + path_);
    if (S_ISBLK(info.st_mode)) {  // st_size is 0 for a block device
      uint64_t device_bytes = 0;
      if (::ioctl(fd_, BLKGETSIZE64, &device_bytes) != 0) return Status::from_errno(errno, "size of " + path_);
      return device_bytes;
    }
    return static_cast<uint64_t>(info.st_size);
  }

  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                uint64_t length_bytes) override {
    std::vector<Extent> extents;
    uint64_t end = offset_bytes + length_bytes;
    uint64_t position = offset_bytes;
    while (position < end) {
      off_t data = ::lseek(fd_, static_cast<off_t>(position), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // no data after position
        if (errno == EINVAL || errno == EOPNOTSUPP) {
          extents.push_back({position, end - position});
          break;
        }
        return Status::from_errno(errno, "seek data in " + path_);
      }
      if (static_cast<uint64_t>(data) >= end) break;
      off_t hole = ::lseek(fd_, data, SEEK_HOLE);
      if (hole < 0) return Status::from_errno(errno, "seek hole in " + path_);
      uint64_t extent_end = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
      extents.push_back({static_cast<uint64_t>(data), extent_end - static_cast<uint64_t>(data)});
      position = extent_end;
    }
    return extents;
  }

 private:
  // A second descriptor of the same file with O_DIRECT, opened on first use through
  // /proc/self/fd (no path lookup, and no O_EXCL: an adopted block device stays
  // claimed by fd_); -1 where the file system has no O_DIRECT (tmpfs before 6.6) or
  // refused such a write. Kept open until the file closes, as another thread may be
  // writing through it.
  int direct_fd() {
    if (direct_refused_.load()) return -1;
    std::call_once(direct_opened_, [&] {
      const std::string self = "/proc/self/fd/" + std::to_string(fd_);
      direct_fd_ = ::open(self.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    });
    return direct_fd_;
  }

  int fd_;
  std::string path_;
  std::once_flag direct_opened_;
  int direct_fd_ = -1;  // set once, by direct_opened_
  std::atomic<bool> direct_refused_{false};
};

class PosixDirectoryLock final : public DirectoryLock {
 public:
  explicit PosixDirectoryLock(int fd) : fd_(fd) {}
  ~PosixDirectoryLock() override { ::close(fd_); }

 private:
  int fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    if (mode == OpenMode::kAdopt) return open_adopted(path);
    int flags = O_RDWR | O_CLOEXEC;
    if (mode == OpenMode::kCreateNew) flags |= O_CREAT | O_EXCL;
    if (mode == OpenMode::kOpenOrCreate) flags |= O_CREAT;
    int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) return Status::from_errno(errno, "open " + path);
    return std::unique_ptr<File>(new PosixFile(fd, path));
  }

  Status rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return Status::from_errno(errno, "rename " + from + " to " + to);
    }
    return Status();
  }

  Status remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::from_errno(errno, "remove " + path);
    return Status();
  }

  Status remove_dir(const std::string& path) override {
    if (::rmdir(path.c_str()) != 0) return Status::from_errno(errno, "remove directory " + path);
    return Status();
  }

  Status sync_dir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::from_errno(errno, "open directory " + path);
    int result = ::fsync(fd);
    int saved = errno;
    ::close(fd);
    if (result != 0) return Status::from_errno(saved, "fsync directory " + path);
    return Status();
  }

  Status make_dir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::from_errno(errno, "create directory " + path);
    }
    return Status();
  }

  Result<bool> exists(const std::string& path) override {
    struct stat info;
    if (::stat(path.c_str(), &info) == 0) return true;
    if (errno == ENOENT) return false;
    return Status::from_errno(errno, "stat " + path);
  }

  Result<std::vector<std::string>> list_dir(const std::string& path) override {
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) return Status::from_errno(errno, "list directory " + path);
    std::vector<std::string> names;
    while (struct dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());
    return names;
  }

  Result<std::unique_ptr<DirectoryLock>> lock_file(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return Status::from_errno(errno, "open lock file " + path);
    AMIRROR_RETURN_IF_ERROR(lock_or_close(fd, path, " is locked by another amirror process"));
    return std::unique_ptr<DirectoryLock>(new PosixDirectoryLock(fd));
  }

 private:
  // OpenMode::kAdopt. The flock lives on the File's own descriptor, so it lasts exactly
  // as long as the File (and dies with the process).
  static Result<std::unique_ptr<File>> open_adopted(const std::string& path) {
    struct stat info;
    if (::stat(path.c_str(), &info) != 0) {
      if (errno == ENOENT) return not_found(path + " does not exist");
      return Status::from_errno(errno, "stat " + path);
    }
    if (!S_ISREG(info.st_mode) && !S_ISBLK(info.st_mode)) {
      return invalid_argument(path + " is not a regular file or a block device");
    }
    // O_EXCL on a block device claims it: the kernel refuses it (EBUSY) while the device
    // is mounted, part of a RAID/LVM/dm stack, or claimed by another O_EXCL opener.
    int flags = O_RDWR | O_CLOEXEC | (S_ISBLK(info.st_mode) ? O_EXCL : 0);
    int fd = ::open(path.c_str(), flags);
    // Read only on failure: the holder, for the operator.
    auto adopted = [&] { return Status(ErrorCode::kBusy, path + " is already adopted by another amirror volume" + flock_holder(info)); };
    if (fd < 0) {
      if (errno == EBUSY && flock_held(path)) return adopted();
      if (errno == EBUSY) {
        return Status(ErrorCode::kBusy, path + " is in use (mounted, or claimed by another program); unmount or "
                                               "release it first");
      }
      return Status::from_errno(errno, "open " + path);
    }
    if (Status locked = lock_or_close(fd, path, " is already adopted"); !locked.ok()) {
      return locked.code() == ErrorCode::kBusy ? adopted() : locked;
    }
    return std::unique_ptr<File>(new PosixFile(fd, path));
  }

  // flock(LOCK_EX|LOCK_NB) on `fd`; on failure `fd` is closed and kBusy says `path` +
  // `held_by` when someone else holds the lock.
  static Status lock_or_close(int fd, const std::string& path, const std::string& held_by) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return Status();
    int saved = errno;
    ::close(fd);
    if (saved == EWOULDBLOCK) return Status(ErrorCode::kBusy, path + held_by);
    return Status::from_errno(saved, "lock " + path);
  }
};

}  // namespace

FileSystem& posix_file_system() {
  static PosixFileSystem* const instance = new PosixFileSystem();
  return *instance;
}

Result<uint64_t> allocated_file_bytes(File& file) {
  AMIRROR_ASSIGN_OR_RETURN(uint64_t size, file.size_bytes());
  if (size == 0) return uint64_t{0};
  AMIRROR_ASSIGN_OR_RETURN(std::vector<Extent> extents, file.allocated_extents(0, size));
  uint64_t bytes = 0;
  for (const Extent& extent : extents) bytes += extent.length_bytes;
  return bytes;
}

Result<std::string> read_small_file(FileSystem& fs, const std::string& path,
                                    uint64_t max_size_bytes) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file, fs.open(path, OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t size, file->size_bytes());
  if (size > max_size_bytes) {
    return corruption(path + " is " + std::to_string(size) + " bytes, more than the " +
                      std::to_string(max_size_bytes) + " expected");
  }
  std::string contents(size, '\0');
  AMIRROR_RETURN_IF_ERROR(
      file->read_at(0, std::span(reinterpret_cast<uint8_t*>(contents.data()), contents.size())));
  return contents;
}

Status write_file_atomically(FileSystem& fs, const std::string& dir, const std::string& name,
                             const std::string& contents) {
  std::string temporary = dir + "/" + name + ".tmp";
  {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file,
                             fs.open(temporary, OpenMode::kOpenOrCreate));
    AMIRROR_RETURN_IF_ERROR(file->truncate(0));
    AMIRROR_RETURN_IF_ERROR(file->write_at(
        0, std::span(reinterpret_cast<const uint8_t*>(contents.data()), contents.size())));
    AMIRROR_RETURN_IF_ERROR(file->sync());
  }
  AMIRROR_RETURN_IF_ERROR(fs.rename(temporary, dir + "/" + name));
  return fs.sync_dir(dir);
}

}  // namespace amirror
