// Change records: the compact, versioned byte form of a meta::Change as the
// state database keeps it (a peer's missed namespace operations, see
// meta/keys.h "fns/"). A record never carries file data: a kWrite record
// keeps offset and length only, and resync reads the bytes from the image.
//
// Record format, version 1 (integers are LEB128 varints: 7 bits per byte,
// least significant first, shortest form):
//
//   u8      record version = 1
//   u8      ChangeKind (1..15)
//   u8      presence bits: which optional fields follow the path
//   varint  path byte count, then the path bytes
//   then, in this order, each field whose presence bit is set:
//     0x01 target   varint byte count, then the bytes
//     0x02 offset
//     0x04 length
//     0x08 mode
//     0x10 uid      (absent = UINT32_MAX, "leave unchanged")
//     0x20 gid      (absent = UINT32_MAX)
//     0x40 flags
//     0x80 times    atime.sec, atime.nsec, mtime.sec, mtime.nsec, each
//                   zigzag-encoded (signed)
//
// An absent field is zero (uid/gid: UINT32_MAX). The encoder omits fields
// at their default, so an unlink costs 4 bytes plus its path. Decoding
// accepts a present field at its default value too.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "meta/change.h"
#include "meta/status.h"

namespace mirrorfs::meta {

inline constexpr uint8_t kChangeRecordVersion = 1;

// Returns the record of `change`: every field except `data`.
// REQUIRES: path and target contain no '\0' (DecodeChangeRecord rejects
// them); kind is a ChangeKind enumerator.
std::string EncodeChangeRecord(const Change& change);

// Parses EncodeChangeRecord's output. Returns the Change (owning its
// strings, data == nullptr) on success; EUCLEAN ("corrupt change record:
// ...") on an unknown version or kind, truncated or trailing bytes, a
// varint that overflows its field, or a '\0' in path or target. Never
// crashes, and allocates at most in proportion to the input.
Result<Change> DecodeChangeRecord(std::string_view bytes);

}  // namespace mirrorfs::meta
