// SPDX-License-Identifier: Apache-2.0
// What the NBD server needs from the thing it serves: one operations interface (like
// nbdkit's plugin/filter ops), so the server is tested and fuzzed over an in-memory
// export and runs in production over a store Volume (nbd/volume_export.h).
//
// Thread-safety: every Export method may be called concurrently from many
// connections and workers. ExportCatalog lookups are thread-safe.
// Invariants: requests reaching an Export were validated (in range, length > 0).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "store/file_system.h"  // Extent

namespace amirror::nbd {

class Export {
 public:
  virtual ~Export() = default;
  virtual uint64_t size_bytes() const = 0;
  virtual bool read_only() const { return false; }
  virtual Status read(uint64_t offset_bytes, std::span<uint8_t> out) = 0;
  virtual Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) = 0;
  virtual Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) = 0;
  // Discard; ranges read as zero afterwards.
  virtual Status trim(uint64_t offset_bytes, uint64_t length_bytes) = 0;
  // Makes every write completed before the call durable — on every connection.
  virtual Status flush() = 0;
  // Allocated ranges inside [offset, offset + length), in order; gaps read as zero.
  virtual Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                        uint64_t length_bytes) = 0;
};

// The exports a server offers, by name. Lookups never open anything: the exports are
// opened when the server starts, so a client in negotiation allocates nothing.
class ExportCatalog {
 public:
  virtual ~ExportCatalog() = default;
  // Sorted names.
  virtual std::vector<std::string> names() const = 0;
  // nullptr when unknown. "" resolves to the only export if there is exactly one.
  virtual std::shared_ptr<Export> find(const std::string& name) const = 0;
  // Why `name` is known but cannot be served now (e.g. it failed to open), for the
  // client's error message; "" when it is simply unknown.
  virtual std::string unavailable_reason(const std::string& /*name*/) const { return ""; }
};

// A fixed name -> export map (what `amirror serve` builds at startup).
class StaticCatalog final : public ExportCatalog {
 public:
  void add(std::string name, std::shared_ptr<Export> e);
  std::vector<std::string> names() const override;
  std::shared_ptr<Export> find(const std::string& name) const override;

 private:
  std::vector<std::pair<std::string, std::shared_ptr<Export>>> exports_;  // sorted by name
};

// A RAM-backed export for tests and the fuzzer. Holes are tracked per 4 KiB block.
class MemoryExport final : public Export {
 public:
  explicit MemoryExport(uint64_t size_bytes);
  uint64_t size_bytes() const override { return data_.size(); }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override;
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) override;
  Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) override;
  Status trim(uint64_t offset_bytes, uint64_t length_bytes) override;
  Status flush() override { return Status(); }
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                uint64_t length_bytes) override;

 private:
  static constexpr uint64_t kBlockBytes = 4096;
  void mark(uint64_t offset_bytes, uint64_t length_bytes, bool allocated);
  std::vector<uint8_t> data_;
  std::vector<bool> allocated_;  // per kBlockBytes block
  mutable std::mutex mutex_;
};

}  // namespace amirror::nbd
