// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), the
// checksum of every wire frame (sync/WIRE_FORMAT.md).
//
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once, at
// run time) and a slicing-by-8 table implementation otherwise; both give the
// same values. Thread-safety: pure functions, safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mirrorfs::sync {

// Returns the CRC-32C of `crc`'s message followed by data[0, n): Extend(0,
// ...) starts a new checksum; Extend(Crc32c(a), b) == Crc32c(a + b).
// REQUIRES: data points to n readable bytes (may be nullptr when n == 0).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

// Returns the CRC-32C of data[0, n). Crc32c("123456789") == 0xE3069283.
inline uint32_t Crc32c(const void* data, size_t n) {
  return Crc32cExtend(0, data, n);
}
inline uint32_t Crc32c(std::string_view bytes) {
  return Crc32cExtend(0, bytes.data(), bytes.size());
}

// The table implementation alone, whatever the CPU; for tests and
// benchmarks that compare the two paths.
uint32_t Crc32cExtendSoftware(uint32_t crc, const void* data, size_t n);

// True when Crc32cExtend uses the SSE4.2 instruction on this machine.
bool Crc32cIsHardwareAccelerated();

}  // namespace mirrorfs::sync
