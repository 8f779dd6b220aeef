// SPDX-License-Identifier: Apache-2.0
#include "node/volume_import.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "base/units.h"
#include "base/zeros.h"

namespace amirror::node {
namespace {

constexpr size_t kZeroCheckBytes = 4096;

uint64_t round_up_to_sector(uint64_t bytes) {
  return (bytes + kSectorSizeBytes - 1) / kSectorSizeBytes * kSectorSizeBytes;
}

}  // namespace

Result<ImportSource> ImportSource::open(const std::string& path, uint64_t declared_size_bytes) {
  // O_NONBLOCK: opening a FIFO for reading must not wait for its writer (the node's
  // control thread would hang uncancellably in open()).
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Status::from_errno(errno, "cannot open " + path);
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    int saved = errno;
    ::close(fd);
    return Status::from_errno(saved, "stat " + path);
  }
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    return invalid_argument(path + " is a directory; import a file, block device or FIFO");
  }
  bool stream = !S_ISREG(info.st_mode) && !S_ISBLK(info.st_mode);
  uint64_t length_bytes = 0;
  if (S_ISREG(info.st_mode)) length_bytes = static_cast<uint64_t>(info.st_size);
  if (S_ISBLK(info.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    length_bytes = end > 0 ? static_cast<uint64_t>(end) : 0;
  }
  ImportSource source(fd, path, length_bytes, round_up_to_sector(length_bytes), stream);
  if (stream) {
    if (declared_size_bytes == 0) {
      return invalid_argument(
          path +
          " is a pipe, FIFO or character device, whose size is unknown; give it with --size SIZE");
    }
    source.data_bytes_ = declared_size_bytes;
    source.volume_size_bytes_ = round_up_to_sector(declared_size_bytes);
    return source;
  }
  if (length_bytes == 0) return invalid_argument(path + " is empty; nothing to import");
  if (declared_size_bytes != 0) {
    if (declared_size_bytes < length_bytes) {
      return invalid_argument("--size " + std::to_string(declared_size_bytes) +
                              " is smaller than " + path + " (" + std::to_string(length_bytes) +
                              " bytes); omit --size to import it whole");
    }
    source.volume_size_bytes_ = declared_size_bytes;
  }
  return source;
}

ImportSource::ImportSource(int fd, std::string path, uint64_t data_bytes,
                           uint64_t volume_size_bytes, bool stream)
    : fd_(fd),
      path_(std::move(path)),
      data_bytes_(data_bytes),
      volume_size_bytes_(volume_size_bytes),
      stream_(stream) {}

ImportSource::ImportSource(ImportSource&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      data_bytes_(other.data_bytes_),
      volume_size_bytes_(other.volume_size_bytes_),
      stream_(other.stream_) {}

ImportSource::~ImportSource() {
  if (fd_ >= 0) ::close(fd_);
}

Result<size_t> ImportSource::read_some(uint8_t* out, size_t length, uint64_t offset,
                                       const std::atomic<bool>& cancel) {
  while (true) {
    if (cancel.load())
      return Status(ErrorCode::kCancelled,
                    "import of " + path_ + " cancelled: the node is stopping");
    pollfd waiter{fd_, POLLIN, 0};
    int ready = ::poll(&waiter, 1, kImportPollMs);
    if (ready < 0 && errno != EINTR) return Status::from_errno(errno, "wait for " + path_);
    if (ready <= 0) continue;
    ssize_t n =
        stream_ ? ::read(fd_, out, length) : ::pread(fd_, out, length, static_cast<off_t>(offset));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;  // a FIFO's writer not there yet, or no data now
    if (n < 0) return Status::from_errno(errno, "read " + path_);
    return static_cast<size_t>(n);
  }
}

// Reads exactly `length` bytes; a source that ends earlier is an error.
Status ImportSource::fill(uint8_t* out, size_t length, uint64_t offset,
                          const std::atomic<bool>& cancel) {
  size_t filled = 0;
  while (filled < length) {
    AMIRROR_ASSIGN_OR_RETURN(size_t n,
                             read_some(out + filled, length - filled, offset + filled, cancel));
    if (n == 0) {
      uint64_t got = offset + filled;
      if (stream_) {
        return invalid_argument(path_ + " ended after " + std::to_string(got) + " of the " +
                                std::to_string(data_bytes_) + " bytes given with --size");
      }
      return Status(ErrorCode::kIo, path_ + " shrank to " + std::to_string(got) +
                                        " bytes while being imported (it had " +
                                        std::to_string(data_bytes_) + ")");
    }
    filled += n;
  }
  return Status();
}

Status ImportSource::copy_into(Volume& volume, std::atomic<uint64_t>& done_bytes,
                               const std::atomic<bool>& cancel) {
  std::vector<uint8_t> buffer(kImportBufferBytes);
  uint64_t offset = 0;
  while (offset < data_bytes_) {
    size_t length = static_cast<size_t>(std::min<uint64_t>(buffer.size(), data_bytes_ - offset));
    AMIRROR_RETURN_IF_ERROR(fill(buffer.data(), length, offset, cancel));
    // The last piece is padded with zeros to a whole sector (the volume's granularity).
    size_t padded = static_cast<size_t>(round_up_to_sector(length));
    std::fill(buffer.begin() + static_cast<ptrdiff_t>(length),
              buffer.begin() + static_cast<ptrdiff_t>(padded), 0);
    for (size_t block = 0; block < padded; block += kZeroCheckBytes) {
      size_t block_length = std::min(kZeroCheckBytes, padded - block);
      if (all_zero(std::span(buffer.data() + block, block_length))) continue;
      AMIRROR_RETURN_IF_ERROR(
          volume.write(offset + block, std::span(buffer.data() + block, block_length)));
    }
    offset += length;
    done_bytes.store(offset);
  }
  if (stream_) {
    uint8_t extra = 0;
    AMIRROR_ASSIGN_OR_RETURN(size_t n, read_some(&extra, 1, offset, cancel));
    if (n != 0)
      return invalid_argument(path_ + " holds more than the " + std::to_string(data_bytes_) +
                              " bytes given with --size");
  }
  return Status();
}

}  // namespace amirror::node
