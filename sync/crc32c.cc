#include "sync/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace mirrorfs::sync {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // Castagnoli, reflected

// kTables[0] is the classic byte-at-a-time table; kTables[k][b] is the CRC of
// byte b followed by k zero bytes, which lets the loop fold 8 bytes at once.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
    t[0][b] = c;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) {
      t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
    }
  }
  return t;
}

constexpr Tables kTables = MakeTables();
static_assert(kTables[0][1] == 0xF26B8303u, "CRC-32C table");

inline uint32_t LoadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

// Appending n zero bytes to a message is a linear map of its CRC register:
// a 32x32 matrix over GF(2). ZeroOperator builds it for n = 2^k by squaring
// the one-zero-bit operator; ShiftTable turns it into four byte tables so
// that applying it costs four lookups. The hardware path runs three
// independent crc32 chains over adjacent stripes (the instruction has a
// latency of three cycles but a throughput of one) and joins them with
// these tables: crc(A || B) = shift(crc(A), |B|) ^ crc_from_zero(B).
using Matrix = std::array<uint32_t, 32>;

constexpr uint32_t Apply(const Matrix& m, uint32_t v) {
  uint32_t sum = 0;
  for (int i = 0; v != 0; ++i, v >>= 1) {
    if (v & 1) sum ^= m[i];
  }
  return sum;
}

constexpr Matrix Square(const Matrix& m) {
  Matrix out{};
  for (int i = 0; i < 32; ++i) out[i] = Apply(m, m[i]);
  return out;
}

// REQUIRES: bytes is a power of two.
constexpr Matrix ZeroOperator(size_t bytes) {
  Matrix op{};  // one zero bit: shift right, fold the polynomial in
  op[0] = kPoly;
  for (int i = 1; i < 32; ++i) op[i] = uint32_t{1} << (i - 1);
  for (size_t bits = 1; bits < bytes * 8; bits *= 2) op = Square(op);
  return op;
}

using ShiftTable = std::array<std::array<uint32_t, 256>, 4>;

constexpr ShiftTable MakeShiftTable(size_t bytes) {
  Matrix op = ZeroOperator(bytes);
  ShiftTable t{};
  for (uint32_t b = 0; b < 256; ++b) {
    for (int k = 0; k < 4; ++k) t[k][b] = Apply(op, b << (8 * k));
  }
  return t;
}

constexpr size_t kLongStripe = 8192;
constexpr size_t kShortStripe = 256;
constexpr ShiftTable kLongShift = MakeShiftTable(kLongStripe);
constexpr ShiftTable kShortShift = MakeShiftTable(kShortStripe);

inline uint32_t Shift(const ShiftTable& t, uint32_t crc) {
  return t[0][crc & 0xFF] ^ t[1][(crc >> 8) & 0xFF] ^ t[2][(crc >> 16) & 0xFF] ^
         t[3][crc >> 24];
}

#if defined(__x86_64__)
inline uint64_t Load64(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, 8);
  return word;
}

// Three chains over stripes of `stripe` bytes each, joined with `shift`.
__attribute__((target("sse4.2"))) inline uint64_t ThreeWay(
    uint64_t c, const uint8_t** p, size_t* n, size_t stripe,
    const ShiftTable& shift) {
  while (*n >= 3 * stripe) {
    const uint8_t* a = *p;
    const uint8_t* end = a + stripe;
    uint64_t c1 = 0;
    uint64_t c2 = 0;
    for (; a < end; a += 8) {
      c = _mm_crc32_u64(c, Load64(a));
      c1 = _mm_crc32_u64(c1, Load64(a + stripe));
      c2 = _mm_crc32_u64(c2, Load64(a + 2 * stripe));
    }
    c = Shift(shift, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1);
    c = Shift(shift, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c2);
    *p += 3 * stripe;
    *n -= 3 * stripe;
  }
  return c;
}

__attribute__((target("sse4.2"))) uint32_t ExtendHardware(uint32_t crc,
                                                          const void* data,
                                                          size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  c = ThreeWay(c, &p, &n, kLongStripe, kLongShift);
  c = ThreeWay(c, &p, &n, kShortStripe, kShortShift);
  while (n >= 8) {
    c = _mm_crc32_u64(c, Load64(p));
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  return ~static_cast<uint32_t>(c);
}

bool DetectSse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#else
bool DetectSse42() { return false; }
uint32_t ExtendHardware(uint32_t crc, const void* data, size_t n) {
  return Crc32cExtendSoftware(crc, data, n);
}
#endif

bool HasSse42() {
  static const bool kHas = DetectSse42();  // computed once, then read-only
  return kHas;
}

}  // namespace

uint32_t Crc32cExtendSoftware(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  while (n >= 8) {
    // Little-endian loads keep this correct on any host byte order.
    uint32_t lo = LoadLe32(p) ^ c;
    uint32_t hi = LoadLe32(p + 4);
    c = kTables[7][lo & 0xFF] ^ kTables[6][(lo >> 8) & 0xFF] ^
        kTables[5][(lo >> 16) & 0xFF] ^ kTables[4][lo >> 24] ^
        kTables[3][hi & 0xFF] ^ kTables[2][(hi >> 8) & 0xFF] ^
        kTables[1][(hi >> 16) & 0xFF] ^ kTables[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    c = (c >> 8) ^ kTables[0][(c ^ *p++) & 0xFF];
    --n;
  }
  return ~c;
}

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  if (n == 0) return crc;
  return HasSse42() ? ExtendHardware(crc, data, n)
                    : Crc32cExtendSoftware(crc, data, n);
}

bool Crc32cIsHardwareAccelerated() { return HasSse42(); }

}  // namespace mirrorfs::sync
