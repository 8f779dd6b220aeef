// SPDX-License-Identifier: Apache-2.0
// ModelVolume: the obviously-correct reference a Volume is checked against in
// model-based tests (like LevelDB's ModelDB). A plain byte array for the current
// image, one per existing freeze point, and what a crash may leave behind.
//
// Crash model (Volume's contract, store/volume.h):
//  - flush(), a write with fua, and freeze() are durable points: everything written
//    before them survives a crash.
//  - After a crash each byte of the current image holds either its value as of the
//    last durable point or the value of some write made after it (check_after_crash).
//  - When the test knows that nothing after the last durable point can have reached the
//    disk (the file system dropped everything unsynced), the image must equal
//    durable_image() exactly; durable_exact() says whether that is still known (it
//    is not after an uncertain event such as an injected I/O error or a crash whose
//    outcome was adopted, until the next durable point).
//  - Frozen points never change, crash or not.
//
// Thread-safety: none; one test thread owns a model.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace amirror::testing {

class ModelVolume {
 public:
  ModelVolume(uint64_t size_bytes, uint64_t chunk_size_bytes);

  uint64_t size_bytes() const { return image_.size(); }
  uint64_t chunk_size_bytes() const { return chunk_size_bytes_; }
  uint64_t chunk_count() const { return (image_.size() + chunk_size_bytes_ - 1) / chunk_size_bytes_; }
  uint64_t cycle() const { return cycle_; }
  uint64_t base_cycle() const { return base_cycle_; }

  // Client operations, applied as the real volume should apply them.
  void write(uint64_t offset_bytes, std::span<const uint8_t> data, bool fua);
  void write_zeroes(uint64_t offset_bytes, uint64_t length_bytes, bool fua);  // also trim
  void flush();
  uint64_t freeze();  // returns the new cycle
  void merge_oldest();  // REQUIRES: cycle() > base_cycle()
  // Volume::resize: every point, old ones included, reads zeros up to the new size.
  // Not a durable point by itself (a successful resize is: call flush() too).
  // REQUIRES: size_bytes >= size_bytes().
  void grow(uint64_t size_bytes);

  // A write whose outcome is unknown (it failed midway): the bytes may hold old or new
  // data. The model takes `actual` (what the volume now shows, each byte checked to be
  // old or new by the caller) as current and loses exactness until the next durable point.
  void uncertain_write(uint64_t offset_bytes, std::span<const uint8_t> attempted,
                       std::span<const uint8_t> actual);
  // A write that failed and whose effect is unknown until the image is read back (a
  // crash follows): its bytes become possible values after a crash; exactness is lost.
  void unknown_write(uint64_t offset_bytes, std::span<const uint8_t> attempted);
  // Something may have become durable or not (a failed flush): exactness is lost.
  void mark_uncertain() { durable_exact_ = false; }

  const std::vector<uint8_t>& image() const { return image_; }
  // REQUIRES: base_cycle() <= cycle <= cycle().
  const std::vector<uint8_t>& frozen(uint64_t cycle) const;
  const std::vector<uint8_t>& durable_image() const { return durable_; }
  bool durable_exact() const { return durable_exact_; }

  // After a crash: checks that each byte of `actual` (the whole reopened image) is its
  // durable value or the value of a write since the last durable point. Returns "" if
  // so, else a description of the first bad byte.
  std::string check_after_crash(std::span<const uint8_t> actual) const;
  // After a crash checked by check_after_crash: the model takes `actual` as its current
  // image. The durable image stays what it was (what survived need not be durable).
  void adopt_after_crash(std::span<const uint8_t> actual, bool exact);

 private:
  struct PendingWrite {
    uint64_t offset_bytes;
    std::vector<uint8_t> data;
  };
  void durable_point();
  void note_pending(uint64_t offset_bytes, std::span<const uint8_t> data);

  uint64_t chunk_size_bytes_;
  std::vector<uint8_t> image_;
  std::vector<uint8_t> durable_;
  bool durable_exact_ = true;
  std::vector<PendingWrite> pending_;  // writes since the last durable point
  uint64_t cycle_ = 0;
  uint64_t base_cycle_ = 0;
  std::map<uint64_t, std::vector<uint8_t>> frozen_;  // base_cycle_ .. cycle_
};

// Formats "first difference at byte N (chunk C): expected E, got A" or "".
std::string describe_difference(std::span<const uint8_t> expected, std::span<const uint8_t> actual,
                                uint64_t base_offset_bytes, uint64_t chunk_size_bytes);

}  // namespace amirror::testing
