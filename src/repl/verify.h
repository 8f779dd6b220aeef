// SPDX-License-Identifier: Apache-2.0
// `mirror verify`'s building blocks, shared by the source and the target: a chunk's
// fingerprint (ChunkHasher), a read interface over one freeze point (PointReader) with
// adapters for a source Volume and a target Replica, the digests of a window of
// chunks, and chunk-range arithmetic (extents to ranges, union, windows, coalescing).
// The conversation that uses them: repl/verify_session.h; grammar:
// docs/formats/wire.md.
//
// Both sides digest the same chunks of one freeze point, chunk by chunk with one
// reused buffer, so memory does not grow with the volume (only the chunk-range lists
// do, one entry per run of allocated chunks).
// Thread-safety: ChunkHasher, readers and RangeCollector: one thread at a time. Free
// functions: pure.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <span>
#include <vector>

#include "base/status.h"
#include "repl/replica.h"
#include "repl/wire.h"
#include "store/file_system.h"
#include "store/volume.h"

namespace amirror::repl {

// Chunk fingerprints. SHA-256 through OpenSSL's EVP interface, because
//  - a verify must not miss a difference, so the hash must be collision resistant
//    (XXH3, used for frame checksums, is not: a replica that was tampered with could
//    be made to match);
//  - OpenSSL is already linked (TLS), and its SHA-256 uses the CPU's SHA extensions
//    (x86 SHA-NI, ARMv8 crypto), about 1.5-2 GB/s per core, faster than the disks it
//    reads; BLAKE2b has no such instructions and is slower than SHA-NI where they
//    exist (the machines this was written on have them: /proc/cpuinfo "sha_ni").
// All-zero chunks are not hashed: they are reported as kZero, which both sides can
// tell without comparing digests.
class ChunkHasher {
 public:
  ChunkHasher();
  ~ChunkHasher();
  ChunkHasher(const ChunkHasher&) = delete;
  ChunkHasher& operator=(const ChunkHasher&) = delete;

  ChunkDigest digest(uint64_t chunk_index, std::span<const uint8_t> data);

 private:
  EVP_MD* sha256_ = nullptr;
  EVP_MD_CTX* context_ = nullptr;
};

// One freeze point of a volume or a replica, read-only.
class PointReader {
 public:
  virtual ~PointReader() = default;
  virtual uint64_t size_bytes() const = 0;
  virtual uint64_t chunk_size_bytes() const = 0;
  virtual Status read(uint64_t offset_bytes, std::span<uint8_t> out) = 0;
  // Every chunk that may hold non-zero data, as ascending ranges; the others read as zero.
  virtual Result<std::vector<ChunkRange>> allocated_ranges() = 0;
};

// The source's freeze point `cycle` (Volume::read_frozen, Volume::allocated_chunks). It
// stays readable while merges fold layers at or below `cycle` into the base, so a
// caller keeps newer freezes from happening while it reads (MirrorEngine's verify hold).
class VolumePointReader : public PointReader {
 public:
  VolumePointReader(Volume& volume, uint64_t cycle) : volume_(volume), cycle_(cycle) {}
  uint64_t size_bytes() const override { return volume_.size_bytes(); }
  uint64_t chunk_size_bytes() const override { return volume_.chunk_size_bytes(); }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override;
  Result<std::vector<ChunkRange>> allocated_ranges() override;

 private:
  Volume& volume_;
  const uint64_t cycle_;
};

// The replica's readable point (Replica::read, Replica::allocated_extents). The caller
// checks that point is the one it means (VerifyResponder: idle at the verified cycle).
class ReplicaPointReader : public PointReader {
 public:
  explicit ReplicaPointReader(Replica& replica) : replica_(replica) {}
  uint64_t size_bytes() const override { return replica_.size_bytes(); }
  uint64_t chunk_size_bytes() const override { return replica_.chunk_size_bytes(); }
  Status read(uint64_t offset_bytes, std::span<uint8_t> out) override;
  Result<std::vector<ChunkRange>> allocated_ranges() override;

 private:
  Replica& replica_;
};

// Windows are cut to about this much data, so either side digests one in well under a
// peer timeout and waits at most that long for the other.
constexpr uint64_t kVerifyWindowBytes = 64ull << 20;
// Chunks per window for this chunk size: 16 (4 MiB chunks) .. kMaxVerifyWindowChunks.
uint32_t verify_window_chunks(uint64_t chunk_size_bytes);

uint64_t chunk_count_of(uint64_t size_bytes, uint64_t chunk_size_bytes);
uint64_t chunks_in(std::span<const ChunkRange> ranges);
// Bytes of the chunks in `ranges` (the last chunk of the volume clipped at its end).
uint64_t bytes_in(std::span<const ChunkRange> ranges, uint64_t size_bytes, uint64_t chunk_size_bytes);
// Every chunk an extent touches. REQUIRES: extents ascending and not overlapping.
std::vector<ChunkRange> ranges_of_extents(std::span<const Extent> extents, uint64_t chunk_size_bytes);
// REQUIRES: both ascending and not overlapping. Adjacent ranges are joined.
std::vector<ChunkRange> union_of(std::span<const ChunkRange> a, std::span<const ChunkRange> b);

// Digests every chunk of `window` in order (reading each once, with `buffer` reused).
Status digest_window(PointReader& reader, ChunkHasher& hasher, std::span<const ChunkRange> window,
                     std::vector<uint8_t>& buffer, std::vector<ChunkDigest>& out);

// Builds ascending, coalesced ranges from chunk indexes given in ascending order.
class RangeCollector {
 public:
  void add(uint64_t chunk_index);
  const std::vector<ChunkRange>& ranges() const { return ranges_; }
  uint64_t chunk_count() const { return chunk_count_; }

 private:
  std::vector<ChunkRange> ranges_;
  uint64_t chunk_count_ = 0;
};

// Cuts a range list into consecutive windows of at most `max_chunks` chunks.
class WindowCursor {
 public:
  WindowCursor() = default;
  WindowCursor(std::vector<ChunkRange> ranges, uint32_t max_chunks);
  bool done() const { return index_ >= ranges_.size(); }
  // REQUIRES: !done().
  std::vector<ChunkRange> next();

 private:
  std::vector<ChunkRange> ranges_;
  uint32_t max_chunks_ = 1;
  size_t index_ = 0;
  uint64_t offset_in_range_ = 0;  // chunks of ranges_[index_] already handed out
};

}  // namespace amirror::repl
