#include "sync/block_sums.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>

namespace mirrorfs::sync {

std::array<uint8_t, kBlockSumBytes> BlockSum(const char* data, size_t n) {
  std::array<uint8_t, kBlockSumBytes> sum;
  crypto_generichash(sum.data(), sum.size(),
                     reinterpret_cast<const unsigned char*>(data), n, nullptr,
                     0);
  return sum;
}

BlockSums SumBlocks(const std::string& path, uint64_t offset, uint64_t length,
                    uint32_t block_size,
                    const std::vector<meta::Change>& pieces,
                    std::string* scratch) {
  scratch->assign(length, '\0');
  for (const auto& p : pieces) {
    if (p.kind == meta::ChangeKind::kWrite && p.offset >= offset &&
        p.offset + p.length <= offset + length) {
      std::memcpy(&(*scratch)[p.offset - offset], p.data, p.length);
    }
  }
  BlockSums sums;
  sums.path = path;
  sums.offset = offset;
  sums.block_size = block_size;
  sums.length = length;
  for (uint64_t b = 0; b < length; b += block_size) {
    sums.sums.push_back(
        BlockSum(&(*scratch)[b], std::min<uint64_t>(block_size, length - b)));
  }
  return sums;
}

}  // namespace mirrorfs::sync
