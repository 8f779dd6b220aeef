// SPDX-License-Identifier: Apache-2.0
// Checksums for on-disk records and wire frames: XXH3-64 (libxxhash). Chosen for
// speed (many GB/s) and strong detection of random corruption; it is not a MAC —
// authenticity on the wire comes from TLS.
#pragma once

#include <cstddef>
#include <cstdint>

namespace amirror {

uint64_t checksum64(const void* data, size_t length);

}  // namespace amirror
