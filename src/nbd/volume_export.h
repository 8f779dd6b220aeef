// SPDX-License-Identifier: Apache-2.0
// Serves a store Volume over NBD: the thin adapter from nbd::Export to Volume. Freezes
// and merges run underneath (Volume is thread-safe), invisible to NBD clients.
// Thread-safety: as Volume — every method may be called concurrently.
#pragma once

#include <memory>

#include "nbd/export.h"
#include "store/volume.h"

namespace amirror::nbd {

class VolumeExport final : public Export {
 public:
  explicit VolumeExport(std::shared_ptr<Volume> volume) : volume_(std::move(volume)) {}
  uint64_t size_bytes() const override { return volume_->size_bytes(); }
  // A demoted volume: new connections are told so; writes on old ones get EPERM.
  bool read_only() const override { return volume_->read_only(); }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override {
    return volume_->read(offset_bytes, out);
  }
  Status write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua) override {
    return volume_->write(offset_bytes, data, fua);
  }
  Status write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua) override {
    return volume_->write_zeroes(offset_bytes, length_bytes, fua);
  }
  Status trim(uint64_t offset_bytes, uint64_t length_bytes) override {
    return volume_->trim(offset_bytes, length_bytes);
  }
  Status flush() override { return volume_->flush(); }
  Result<std::vector<Extent>> allocated_extents(uint64_t offset_bytes,
                                                uint64_t length_bytes) override {
    return volume_->allocated_extents(offset_bytes, length_bytes);
  }
  Volume& volume() { return *volume_; }

 private:
  std::shared_ptr<Volume> volume_;
};

}  // namespace amirror::nbd
