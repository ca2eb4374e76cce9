#include "meta/change_codec.h"

#include <new>

namespace mirrorfs::meta {
namespace {

// Presence bits (format in the header).
constexpr uint8_t kHasTarget = 0x01;
constexpr uint8_t kHasOffset = 0x02;
constexpr uint8_t kHasLength = 0x04;
constexpr uint8_t kHasMode = 0x08;
constexpr uint8_t kHasUid = 0x10;
constexpr uint8_t kHasGid = 0x20;
constexpr uint8_t kHasFlags = 0x40;
constexpr uint8_t kHasTimes = 0x80;

constexpr uint8_t kFirstKind = static_cast<uint8_t>(ChangeKind::kWrite);
constexpr uint8_t kLastKind = static_cast<uint8_t>(ChangeKind::kFsync);

void AppendVarint64(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Reads one varint from the front of `*in` and advances past it. False on
// truncation, an overlong form or a value above 64 bits.
bool ConsumeVarint64(std::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  size_t i = 0;
  for (int shift = 0; shift <= 63; shift += 7, ++i) {
    if (i >= in->size()) return false;
    const uint8_t byte = static_cast<uint8_t>((*in)[i]);
    const uint64_t bits = byte & 0x7f;
    if (shift == 63 && bits > 1) return false;  // beyond 64 bits
    result |= bits << shift;
    if ((byte & 0x80) == 0) {
      // A zero final byte after the first is overlong: one value, one form.
      if (shift > 0 && byte == 0) return false;
      in->remove_prefix(i + 1);
      *v = result;
      return true;
    }
  }
  return false;
}

uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}

int64_t UnZigZag(uint64_t v) {
  return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1));
}

void AppendString(std::string* out, const std::string& s) {
  AppendVarint64(out, s.size());
  out->append(s);
}

Status Corrupt(const std::string& why) {
  return Status::Error(EUCLEAN, "corrupt change record: " + why);
}

// Reads a length-prefixed string that must not contain '\0'.
Status ConsumeString(std::string_view* in, std::string_view field,
                     std::string* out) {
  uint64_t size = 0;
  if (!ConsumeVarint64(in, &size)) {
    return Corrupt("bad " + std::string(field) + " length");
  }
  if (size > in->size()) {
    return Corrupt(std::string(field) + " length " + std::to_string(size) +
                   " exceeds the " + std::to_string(in->size()) +
                   " bytes left");
  }
  std::string_view bytes = in->substr(0, size);
  if (bytes.find('\0') != std::string_view::npos) {
    return Corrupt(std::string(field) + " contains a NUL byte");
  }
  out->assign(bytes);
  in->remove_prefix(size);
  return Status::Ok();
}

Status Consume64(std::string_view* in, std::string_view field, uint64_t* v) {
  if (!ConsumeVarint64(in, v)) return Corrupt("bad " + std::string(field));
  return Status::Ok();
}

Status Consume32(std::string_view* in, std::string_view field, uint32_t* v) {
  uint64_t wide = 0;
  MFS_RETURN_IF_ERROR(Consume64(in, field, &wide));
  if (wide > UINT32_MAX) {
    return Corrupt(std::string(field) + " " + std::to_string(wide) +
                   " exceeds 32 bits");
  }
  *v = static_cast<uint32_t>(wide);
  return Status::Ok();
}

Status ConsumeSigned(std::string_view* in, std::string_view field, int64_t* v) {
  uint64_t raw = 0;
  MFS_RETURN_IF_ERROR(Consume64(in, field, &raw));
  *v = UnZigZag(raw);
  return Status::Ok();
}

}  // namespace

std::string EncodeChangeRecord(const Change& c) {
  const bool times = c.atime.sec != 0 || c.atime.nsec != 0 ||
                     c.mtime.sec != 0 || c.mtime.nsec != 0;
  uint8_t present = 0;
  if (!c.target.empty()) present |= kHasTarget;
  if (c.offset != 0) present |= kHasOffset;
  if (c.length != 0) present |= kHasLength;
  if (c.mode != 0) present |= kHasMode;
  if (c.uid != UINT32_MAX) present |= kHasUid;
  if (c.gid != UINT32_MAX) present |= kHasGid;
  if (c.flags != 0) present |= kHasFlags;
  if (times) present |= kHasTimes;

  std::string out;
  out.reserve(3 + 2 * 5 + c.path.size() + c.target.size() + 8 * 10);
  out.push_back(static_cast<char>(kChangeRecordVersion));
  out.push_back(static_cast<char>(c.kind));
  out.push_back(static_cast<char>(present));
  AppendString(&out, c.path);
  if (present & kHasTarget) AppendString(&out, c.target);
  if (present & kHasOffset) AppendVarint64(&out, c.offset);
  if (present & kHasLength) AppendVarint64(&out, c.length);
  if (present & kHasMode) AppendVarint64(&out, c.mode);
  if (present & kHasUid) AppendVarint64(&out, c.uid);
  if (present & kHasGid) AppendVarint64(&out, c.gid);
  if (present & kHasFlags) AppendVarint64(&out, c.flags);
  if (present & kHasTimes) {
    AppendVarint64(&out, ZigZag(c.atime.sec));
    AppendVarint64(&out, ZigZag(c.atime.nsec));
    AppendVarint64(&out, ZigZag(c.mtime.sec));
    AppendVarint64(&out, ZigZag(c.mtime.nsec));
  }
  return out;
}

Result<Change> DecodeChangeRecord(std::string_view in) {
  try {
    if (in.size() < 3) {
      return Corrupt(std::to_string(in.size()) +
                     " bytes, shorter than its 3-byte header");
    }
    const uint8_t version = static_cast<uint8_t>(in[0]);
    if (version != kChangeRecordVersion) {
      return Corrupt("unknown record version " + std::to_string(version) +
                     " (this mirrorfs reads version " +
                     std::to_string(kChangeRecordVersion) + ")");
    }
    const uint8_t kind = static_cast<uint8_t>(in[1]);
    if (kind < kFirstKind || kind > kLastKind) {
      return Corrupt("unknown change kind " + std::to_string(kind));
    }
    const uint8_t present = static_cast<uint8_t>(in[2]);
    in.remove_prefix(3);

    Change c;
    c.kind = static_cast<ChangeKind>(kind);
    MFS_RETURN_IF_ERROR(ConsumeString(&in, "path", &c.path));
    if (present & kHasTarget) {
      MFS_RETURN_IF_ERROR(ConsumeString(&in, "target", &c.target));
    }
    if (present & kHasOffset) {
      MFS_RETURN_IF_ERROR(Consume64(&in, "offset", &c.offset));
    }
    if (present & kHasLength) {
      MFS_RETURN_IF_ERROR(Consume64(&in, "length", &c.length));
    }
    if (present & kHasMode) {
      MFS_RETURN_IF_ERROR(Consume32(&in, "mode", &c.mode));
    }
    if (present & kHasUid) MFS_RETURN_IF_ERROR(Consume32(&in, "uid", &c.uid));
    if (present & kHasGid) MFS_RETURN_IF_ERROR(Consume32(&in, "gid", &c.gid));
    if (present & kHasFlags) {
      MFS_RETURN_IF_ERROR(Consume32(&in, "flags", &c.flags));
    }
    if (present & kHasTimes) {
      MFS_RETURN_IF_ERROR(ConsumeSigned(&in, "atime.sec", &c.atime.sec));
      MFS_RETURN_IF_ERROR(ConsumeSigned(&in, "atime.nsec", &c.atime.nsec));
      MFS_RETURN_IF_ERROR(ConsumeSigned(&in, "mtime.sec", &c.mtime.sec));
      MFS_RETURN_IF_ERROR(ConsumeSigned(&in, "mtime.nsec", &c.mtime.nsec));
    }
    if (!in.empty()) {
      return Corrupt(std::to_string(in.size()) + " trailing bytes");
    }
    c.data = nullptr;
    return c;
  } catch (const std::bad_alloc&) {
    return Status::Error(ENOMEM, "decoding a change record: out of memory");
  }
}

}  // namespace mirrorfs::meta
