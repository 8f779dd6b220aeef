// SPDX-License-Identifier: Apache-2.0
#include "node/pending_file.h"

#include <algorithm>
#include <cstring>

#include "base/checksum.h"
#include "base/coding.h"

namespace amirror::node {
namespace {

constexpr char kMagic[8] = {'A', 'M', 'P', 'E', 'N', 'D', 'N', 'G'};
constexpr size_t kHeaderChecksumOffset = 20;  // magic, format, page bytes, bits per page
constexpr size_t kPageChecksumBytes = 8;
static_assert(kPageChecksumBytes + ChunkBitmap::kWordsPerPage * 8 == kPendingPageBytes);

using PageBytes = std::array<uint8_t, kPendingPageBytes>;

std::string encode_header() {
  std::string header(kPendingPageBytes, '\0');
  auto* out = reinterpret_cast<uint8_t*>(header.data());
  std::memcpy(out, kMagic, sizeof(kMagic));
  put_u32(out + 8, kPendingFileFormat);
  put_u32(out + 12, static_cast<uint32_t>(kPendingPageBytes));
  put_u32(out + 16, static_cast<uint32_t>(ChunkBitmap::kBitsPerPage));
  put_u64(out + kHeaderChecksumOffset, checksum64(out, kHeaderChecksumOffset));
  return header;
}

Status check_header(const PageBytes& header, const std::string& path) {
  const std::string damaged = path + ": damaged header; remove the file and the target gets a full copy";
  if (std::memcmp(header.data(), kMagic, sizeof(kMagic)) != 0) return corruption(damaged);
  if (get_u64(header.data() + kHeaderChecksumOffset) != checksum64(header.data(), kHeaderChecksumOffset)) {
    return corruption(damaged);
  }
  uint32_t format = get_u32(header.data() + 8);
  if (format != kPendingFileFormat) {
    return corruption(path + ": unknown format " + std::to_string(format) + " (a newer amirror wrote it?)");
  }
  if (get_u32(header.data() + 12) != kPendingPageBytes || get_u32(header.data() + 16) != ChunkBitmap::kBitsPerPage) {
    return corruption(damaged);
  }
  return Status();
}

// The checksum covers the page's index too: a page written at the wrong offset fails.
uint64_t page_checksum(uint64_t page_index, const uint8_t* bits) {
  uint8_t buffer[kPendingPageBytes];
  put_u64(buffer, page_index);
  std::memcpy(buffer + 8, bits, kPendingPageBytes - kPageChecksumBytes);
  return checksum64(buffer, sizeof(buffer));
}

PageBytes encode_page(uint64_t page_index, const ChunkBitmap::PagePtr& page) {
  PageBytes bytes{};
  for (size_t word = 0; word < ChunkBitmap::kWordsPerPage; ++word) {
    put_u64(bytes.data() + kPageChecksumBytes + word * 8, page == nullptr ? 0 : (*page)[word]);
  }
  put_u64(bytes.data(), page_checksum(page_index, bytes.data() + kPageChecksumBytes));
  return bytes;
}

// All-zero bytes (a hole, or never written) are an empty page. A bad checksum reads as
// all ones: those chunks are resent rather than trusted. A torn write cannot fake an
// empty page that mattered: a written page's checksum is never zero, so an all-zero
// mix of old and new bytes means the old page was a hole, and a write that adds bits
// (step 1) is torn only before its sync, while the JSON still needs only the old ones.
ChunkBitmap::PagePtr decode_page(uint64_t page_index, const PageBytes& bytes) {
  if (std::all_of(bytes.begin(), bytes.end(), [](uint8_t byte) { return byte == 0; })) return nullptr;
  auto page = std::make_shared<ChunkBitmap::Page>();
  if (get_u64(bytes.data()) != page_checksum(page_index, bytes.data() + kPageChecksumBytes)) {
    page->fill(~uint64_t{0});
    return page;
  }
  bool any = false;
  for (size_t word = 0; word < ChunkBitmap::kWordsPerPage; ++word) {
    (*page)[word] = get_u64(bytes.data() + kPageChecksumBytes + word * 8);
    any = any || (*page)[word] != 0;
  }
  return any ? page : nullptr;
}

bool same_bits(const ChunkBitmap::PagePtr& left, const ChunkBitmap::PagePtr& right) {
  if (left == right) return true;
  static const ChunkBitmap::Page kZero{};
  return (left == nullptr ? kZero : *left) == (right == nullptr ? kZero : *right);
}

ChunkBitmap::PagePtr union_of(const ChunkBitmap::PagePtr& left, const ChunkBitmap::PagePtr& right) {
  if (left == nullptr) return right;
  if (right == nullptr) return left;
  auto page = std::make_shared<ChunkBitmap::Page>(*left);
  for (size_t word = 0; word < ChunkBitmap::kWordsPerPage; ++word) (*page)[word] |= (*right)[word];
  return page;
}

uint64_t data_pages_of(uint64_t size_bytes) {
  return size_bytes <= kPendingPageBytes ? 0 : (size_bytes - kPendingPageBytes + kPendingPageBytes - 1) / kPendingPageBytes;
}

Result<PageBytes> read_page_bytes(File& file, uint64_t offset_bytes) {
  PageBytes bytes{};
  AMIRROR_RETURN_IF_ERROR(file.read_at(offset_bytes, bytes));
  return bytes;
}

}  // namespace

std::string pending_file_name(const std::string& volume, const std::string& target) {
  return volume + "@" + target + ".pending";
}

Result<ChunkBitmap> read_pending_file(FileSystem& fs, const std::string& path) {
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file, fs.open(path, OpenMode::kOpenExisting));
  AMIRROR_ASSIGN_OR_RETURN(uint64_t size_bytes, file->size_bytes());
  if (size_bytes < kPendingPageBytes) return corruption(path + ": shorter than its header; remove the file and the target gets a full copy");
  AMIRROR_ASSIGN_OR_RETURN(PageBytes header, read_page_bytes(*file, 0));
  AMIRROR_RETURN_IF_ERROR(check_header(header, path));
  ChunkBitmap bits;
  const uint64_t pages = data_pages_of(size_bytes);
  for (uint64_t page_index = 0; page_index < pages; ++page_index) {
    AMIRROR_ASSIGN_OR_RETURN(PageBytes bytes, read_page_bytes(*file, (page_index + 1) * kPendingPageBytes));
    if (ChunkBitmap::PagePtr page = decode_page(page_index, bytes)) bits.set_page(page_index, std::move(page));
  }
  return bits;
}

Result<std::unique_ptr<PendingFileUpdate>> PendingFileUpdate::begin(FileSystem& fs, const std::string& dir,
                                                                    const std::string& name, const ChunkBitmap& bits,
                                                                    const DurablePages* durable) {
  const std::string path = dir + "/" + name;
  AMIRROR_ASSIGN_OR_RETURN(bool exists, fs.exists(path));
  // Created whole (header only) by rename: the header is never written again, so it is
  // never torn.
  if (!exists) AMIRROR_RETURN_IF_ERROR(write_file_atomically(fs, dir, name, encode_header()));
  AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<File> file, fs.open(path, OpenMode::kOpenExisting));
  uint64_t disk_pages = 0;
  if (durable != nullptr && exists) {
    disk_pages = durable->size();
  } else {
    durable = nullptr;  // a new file holds no pages, whatever the caller believed
    AMIRROR_ASSIGN_OR_RETURN(PageBytes header, read_page_bytes(*file, 0));
    AMIRROR_RETURN_IF_ERROR(check_header(header, path));
    AMIRROR_ASSIGN_OR_RETURN(uint64_t size_bytes, file->size_bytes());
    disk_pages = data_pages_of(size_bytes);
  }
  return std::unique_ptr<PendingFileUpdate>(new PendingFileUpdate(std::move(file), bits, durable, disk_pages));
}

Result<ChunkBitmap::PagePtr> PendingFileUpdate::current_page(size_t page_index, bool bits_added) {
  const ChunkBitmap::PagePtr wanted = page_index < bits_.page_count() ? bits_.page(page_index) : nullptr;
  if (durable_ != nullptr) {
    ChunkBitmap::PagePtr known = page_index < durable_->size() ? (*durable_)[page_index] : nullptr;
    return bits_added ? union_of(known, wanted) : known;
  }
  if (page_index >= disk_page_count_) return ChunkBitmap::PagePtr();
  AMIRROR_ASSIGN_OR_RETURN(PageBytes bytes, read_page_bytes(*file_, (page_index + 1) * kPendingPageBytes));
  return decode_page(page_index, bytes);
}

Status PendingFileUpdate::write_page(size_t page_index, const ChunkBitmap::PagePtr& page) {
  PageBytes bytes = encode_page(page_index, page);
  AMIRROR_RETURN_IF_ERROR(file_->write_at((page_index + 1) * kPendingPageBytes, bytes));
  disk_page_count_ = std::max<uint64_t>(disk_page_count_, page_index + 1);
  return Status();
}

Status PendingFileUpdate::add_bits() {
  bool wrote = false;
  for (size_t page_index = 0; page_index < bits_.page_count(); ++page_index) {
    const ChunkBitmap::PagePtr& wanted = bits_.page(page_index);
    if (wanted == nullptr) continue;  // nothing to add
    // Unchanged since the last save: the very page is on disk.
    if (durable_ != nullptr && page_index < durable_->size() && (*durable_)[page_index] == wanted) continue;
    AMIRROR_ASSIGN_OR_RETURN(ChunkBitmap::PagePtr current, current_page(page_index, false));
    ChunkBitmap::PagePtr added = union_of(current, wanted);
    if (same_bits(added, current)) continue;
    AMIRROR_RETURN_IF_ERROR(write_page(page_index, added));
    wrote = true;
  }
  return wrote ? file_->sync() : Status();
}

Result<DurablePages> PendingFileUpdate::drop_bits() {
  bool wrote = false;
  const uint64_t pages = std::max<uint64_t>(bits_.page_count(), disk_page_count_);
  for (size_t page_index = 0; page_index < pages; ++page_index) {
    const ChunkBitmap::PagePtr wanted = page_index < bits_.page_count() ? bits_.page(page_index) : nullptr;
    if (durable_ != nullptr && page_index < durable_->size() && (*durable_)[page_index] == wanted) continue;
    if (page_index >= bits_.page_count()) break;  // truncated below
    AMIRROR_ASSIGN_OR_RETURN(ChunkBitmap::PagePtr current, current_page(page_index, true));
    if (same_bits(current, wanted)) continue;
    AMIRROR_RETURN_IF_ERROR(write_page(page_index, wanted));
    wrote = true;
  }
  if (disk_page_count_ > bits_.page_count()) {
    // Cutting pages off only drops bits: a crash that keeps some of them errs on the
    // side of resending.
    AMIRROR_RETURN_IF_ERROR(file_->truncate((bits_.page_count() + 1) * kPendingPageBytes));
    disk_page_count_ = bits_.page_count();
    wrote = true;
  }
  if (wrote) AMIRROR_RETURN_IF_ERROR(file_->sync());
  DurablePages now;
  now.reserve(bits_.page_count());
  for (size_t page_index = 0; page_index < bits_.page_count(); ++page_index) now.push_back(bits_.page(page_index));
  return now;
}

}  // namespace amirror::node
