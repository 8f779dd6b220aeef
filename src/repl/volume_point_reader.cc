// SPDX-License-Identifier: Apache-2.0
// VolumePointReader (repl/verify.h), apart from the rest of verify.cc so that what a
// target needs (the peer fuzzer builds it alone) does not pull in the volume store.
#include "repl/verify.h"

namespace amirror::repl {

Status VolumePointReader::read(uint64_t offset_bytes, std::span<uint8_t> out) {
  return volume_.read_frozen(cycle_, offset_bytes, out);
}

Result<std::vector<ChunkRange>> VolumePointReader::allocated_ranges() {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<uint64_t> chunks, volume_.allocated_chunks(cycle_));
  RangeCollector collector;
  for (uint64_t chunk_index : chunks) collector.add(chunk_index);
  return collector.ranges();
}

}  // namespace amirror::repl
