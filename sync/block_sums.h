// Block checksums: BLAKE2b-128 (libsodium) of consecutive blocks, shared by
// the full sync and verify on the primary and the comparison on the peer,
// so that both sides hash the same way. Holes hash as zeros.
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "meta/change.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

// The checksum of `n` bytes at `data`.
std::array<uint8_t, kBlockSumBytes> BlockSum(const char* data, size_t n);

// The checksums of the `block_size` blocks of [offset, offset + length) of
// `path`, whose contents `pieces` (as Source::ReadRangeLocked gives them:
// kWrite data, kPunchHole holes) describe; anything not covered is zeros.
// `*scratch` is reused between calls.
BlockSums SumBlocks(const std::string& path, uint64_t offset, uint64_t length,
                    uint32_t block_size,
                    const std::vector<meta::Change>& pieces,
                    std::string* scratch);

}  // namespace mirrorfs::sync
