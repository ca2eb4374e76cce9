#include "sync/wire.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "sync/crc32c.h"

namespace mirrorfs::sync {
namespace {

using meta::ChangeKind;
using meta::Status;

// Header field offsets (WIRE_FORMAT.md, "Header").
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 6;
constexpr size_t kOffStore = 8;
constexpr size_t kOffSession = 24;
constexpr size_t kOffSeq = 32;
constexpr size_t kOffPayloadLen = 40;
constexpr size_t kOffCrc = 44;
static_assert(kOffCrc + 4 == kFrameHeaderSize);

// Change payload: kind u8, flags u32, offset u64, length u64, mode u32,
// uid u32, gid u32, atime i64+u32, mtime i64+u32, path len u16, target
// len u16.
constexpr size_t kChangeFixedBytes =
    1 + 4 + 8 + 8 + 4 + 4 + 4 + 12 + 12 + 2 + 2;
constexpr size_t kMaxWireString = std::numeric_limits<uint16_t>::max();
constexpr uint8_t kMaxChangeKind = static_cast<uint8_t>(ChangeKind::kFsync);
constexpr uint32_t kModeMask = 0177777;  // file type and permission bits
constexpr int64_t kNsecPerSec = 1000000000;
constexpr uint64_t kMaxFileOffset = std::numeric_limits<int64_t>::max();
constexpr std::string_view kStateDir = ".mirrorfs";

Status Proto(std::string message) {
  return Status::Error(EPROTO, std::move(message));
}

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// Untrusted bytes made safe for one log line: quoted, non-printable bytes as
// \xNN, cut after 80 bytes.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string q = "'";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      q += buf;
    } else {
      q += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) q += "...";
  q += "'";
  return q;
}

std::string_view KindName(ChangeKind kind) {
  switch (kind) {
    case ChangeKind::kWrite:
      return "write";
    case ChangeKind::kPunchHole:
      return "punch-hole";
    case ChangeKind::kZeroRange:
      return "zero-range";
    case ChangeKind::kAllocate:
      return "allocate";
    case ChangeKind::kTruncate:
      return "truncate";
    case ChangeKind::kCreate:
      return "create";
    case ChangeKind::kMkdir:
      return "mkdir";
    case ChangeKind::kSymlink:
      return "symlink";
    case ChangeKind::kUnlink:
      return "unlink";
    case ChangeKind::kRmdir:
      return "rmdir";
    case ChangeKind::kRename:
      return "rename";
    case ChangeKind::kChmod:
      return "chmod";
    case ChangeKind::kChown:
      return "chown";
    case ChangeKind::kSetTimes:
      return "set-times";
    case ChangeKind::kFsync:
      return "fsync";
  }
  return "unknown";
}

// ---- Encoding -------------------------------------------------------------

void PutU8(std::string* out, uint8_t v) {
  out->push_back(static_cast<char>(v));
}

template <typename T>
void PutLe(std::string* out, T v) {
  static_assert(std::is_unsigned_v<T>);
  char buf[sizeof(T)];
  for (size_t i = 0; i < sizeof(T); ++i) {
    buf[i] = static_cast<char>(v >> (8 * i));
  }
  out->append(buf, sizeof(T));
}

void PutU16(std::string* out, uint16_t v) { PutLe(out, v); }
void PutU32(std::string* out, uint32_t v) { PutLe(out, v); }
void PutU64(std::string* out, uint64_t v) { PutLe(out, v); }
void PutI32(std::string* out, int32_t v) {
  PutU32(out, static_cast<uint32_t>(v));
}
void PutI64(std::string* out, int64_t v) {
  PutU64(out, static_cast<uint64_t>(v));
}

void PutUuid(std::string* out, const meta::Uuid& u) {
  out->append(reinterpret_cast<const char*>(u.bytes().data()), 16);
}

// u16 length + bytes; longer strings are cut (see wire.h).
void PutString(std::string* out, std::string_view s) {
  if (s.size() > kMaxWireString) s = s.substr(0, kMaxWireString);
  PutU16(out, static_cast<uint16_t>(s.size()));
  out->append(s.data(), s.size());
}

void PatchU32(std::string* out, size_t at, uint32_t v) {
  for (size_t i = 0; i < 4; ++i)
    (*out)[at + i] = static_cast<char>(v >> (8 * i));
}

void BeginFrame(const FrameHeader& h, FrameType type, size_t payload_bytes,
                std::string* out) {
  out->clear();
  out->reserve(kFrameHeaderSize + payload_bytes);
  PutU32(out, kWireMagic);
  PutU16(out, kWireVersion);
  PutU16(out, static_cast<uint16_t>(type));
  PutUuid(out, h.store_uuid);
  PutU64(out, h.session);
  PutU64(out, h.seq);
  PutU32(out, 0);  // payload_len, patched by FinishFrame
  PutU32(out, 0);  // crc, zero while it is computed
}

void FinishFrame(std::string* out) {
  PatchU32(out, kOffPayloadLen,
           static_cast<uint32_t>(out->size() - kFrameHeaderSize));
  PatchU32(out, kOffCrc, Crc32c(*out));
}

size_t StringBytes(std::string_view s) {
  return 2 + std::min(s.size(), kMaxWireString);
}

void PutGeneration(std::string* out, const meta::Uuid& current,
                   const std::vector<meta::Uuid>& history) {
  PutUuid(out, current);
  // Only kMaxGenerationHistory entries are legal; more are cut here.
  size_t n = std::min(history.size(), kMaxGenerationHistory);
  PutU8(out, static_cast<uint8_t>(n));
  for (size_t i = 0; i < n; ++i) PutUuid(out, history[i]);
}

// ---- Decoding -------------------------------------------------------------

uint16_t LoadU16(const char* p) {
  auto b = reinterpret_cast<const uint8_t*>(p);
  return static_cast<uint16_t>(b[0] | b[1] << 8);
}

uint32_t LoadU32(const char* p) {
  auto b = reinterpret_cast<const uint8_t*>(p);
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
         static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
}

uint64_t LoadU64(const char* p) {
  return static_cast<uint64_t>(LoadU32(p)) |
         static_cast<uint64_t>(LoadU32(p + 4)) << 32;
}

// Reads fields off a payload; every read is bounds-checked and an error
// names the field and how many bytes were missing.
class PayloadReader {
 public:
  explicit PayloadReader(std::string_view payload) : rest_(payload) {}

  size_t remaining() const { return rest_.size(); }

  Status Bytes(const char* field, size_t n, std::string_view* out) {
    if (rest_.size() < n) {
      return Proto("payload truncated at '" + std::string(field) + "': needs " +
                   std::to_string(n) + " bytes, " +
                   std::to_string(rest_.size()) + " left");
    }
    *out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return Status::Ok();
  }
  Status U8(const char* field, uint8_t* v) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, 1, &b));
    *v = static_cast<uint8_t>(b[0]);
    return Status::Ok();
  }
  Status U16(const char* field, uint16_t* v) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, 2, &b));
    *v = LoadU16(b.data());
    return Status::Ok();
  }
  Status U32(const char* field, uint32_t* v) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, 4, &b));
    *v = LoadU32(b.data());
    return Status::Ok();
  }
  Status U64(const char* field, uint64_t* v) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, 8, &b));
    *v = LoadU64(b.data());
    return Status::Ok();
  }
  Status I32(const char* field, int32_t* v) {
    uint32_t u = 0;
    MFS_RETURN_IF_ERROR(U32(field, &u));
    *v = static_cast<int32_t>(u);
    return Status::Ok();
  }
  Status I64(const char* field, int64_t* v) {
    uint64_t u = 0;
    MFS_RETURN_IF_ERROR(U64(field, &u));
    *v = static_cast<int64_t>(u);
    return Status::Ok();
  }
  Status Uuid(const char* field, meta::Uuid* v) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, 16, &b));
    *v = meta::Uuid::FromBytes(reinterpret_cast<const uint8_t*>(b.data()));
    return Status::Ok();
  }
  Status Bool(const char* field, bool* v) {
    uint8_t b = 0;
    MFS_RETURN_IF_ERROR(U8(field, &b));
    if (b > 1) {
      return Proto("'" + std::string(field) + "' is " + std::to_string(b) +
                   ", not a boolean (0 or 1)");
    }
    *v = b == 1;
    return Status::Ok();
  }
  // A u16-length-prefixed string of at most `limit` bytes.
  Status String(const char* field, size_t limit, std::string* v) {
    uint16_t len = 0;
    MFS_RETURN_IF_ERROR(U16(field, &len));
    if (len > limit) {
      return Proto("'" + std::string(field) + "' is " + std::to_string(len) +
                   " bytes, limit " + std::to_string(limit));
    }
    std::string_view b;
    MFS_RETURN_IF_ERROR(Bytes(field, len, &b));
    v->assign(b.data(), b.size());
    return Status::Ok();
  }
  Status RoleByte(const char* field, Role* v) {
    uint8_t r = 0;
    MFS_RETURN_IF_ERROR(U8(field, &r));
    if (r != static_cast<uint8_t>(Role::kPrimary) &&
        r != static_cast<uint8_t>(Role::kSecondary)) {
      return Proto("unknown role " + std::to_string(r));
    }
    *v = static_cast<Role>(r);
    return Status::Ok();
  }
  Status Generation(meta::Uuid* current, std::vector<meta::Uuid>* history) {
    MFS_RETURN_IF_ERROR(Uuid("generation", current));
    uint8_t n = 0;
    MFS_RETURN_IF_ERROR(U8("generation_history count", &n));
    if (n > kMaxGenerationHistory) {
      return Proto("generation history has " + std::to_string(n) +
                   " entries, limit " + std::to_string(kMaxGenerationHistory));
    }
    history->resize(n);
    for (auto& g : *history) {
      MFS_RETURN_IF_ERROR(Uuid("generation_history", &g));
    }
    return Status::Ok();
  }
  Status Flags(const char* field, uint32_t known, uint32_t* v) {
    MFS_RETURN_IF_ERROR(U32(field, v));
    if ((*v & ~known) != 0) {
      return Proto("'" + std::string(field) + "' has unknown bits " +
                   Hex32(*v & ~known));
    }
    return Status::Ok();
  }
  // No trailing garbage: every payload is consumed exactly.
  Status End() const {
    if (!rest_.empty()) {
      return Proto(std::to_string(rest_.size()) +
                   " unexpected trailing payload bytes");
    }
    return Status::Ok();
  }

 private:
  std::string_view rest_;
};

Status CheckNodeName(std::string_view name) {
  if (name.empty()) return Proto("node name is empty");
  if (name.find('\0') != std::string_view::npos) {
    return Proto("node name " + Quote(name) + " contains a NUL byte");
  }
  return Status::Ok();
}

Status DecodeHello(const FrameHeader& h, std::string_view payload, Hello* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.String("node_name", kMaxNodeNameBytes, &m->node_name));
  MFS_RETURN_IF_ERROR(CheckNodeName(m->node_name));
  MFS_RETURN_IF_ERROR(r.Uuid("node_uuid", &m->node_uuid));
  if (m->node_uuid.IsZero()) return Proto("node UUID is zero");
  MFS_RETURN_IF_ERROR(r.Uuid("store_uuid", &m->store_uuid));
  if (m->store_uuid.IsZero()) return Proto("store UUID is zero");
  if (!(m->store_uuid == h.store_uuid)) {
    return Proto("store UUID " + m->store_uuid.ToString() +
                 " differs from the frame header's " + h.store_uuid.ToString());
  }
  MFS_RETURN_IF_ERROR(r.RoleByte("role", &m->role));
  MFS_RETURN_IF_ERROR(r.Generation(&m->generation, &m->generation_history));
  MFS_RETURN_IF_ERROR(r.String("endpoint", kMaxEndpointBytes, &m->endpoint));
  if (m->endpoint.find('\0') != std::string::npos) {
    return Proto("endpoint " + Quote(m->endpoint) + " contains a NUL byte");
  }
  MFS_RETURN_IF_ERROR(r.Flags("flags", kHelloKnownFlags, &m->flags));
  return r.End();
}

Status DecodeHelloReply(std::string_view payload, HelloReply* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.Bool("accepted", &m->accepted));
  MFS_RETURN_IF_ERROR(r.RoleByte("role", &m->role));
  MFS_RETURN_IF_ERROR(r.Flags("flags", kHelloKnownFlags, &m->flags));
  MFS_RETURN_IF_ERROR(r.String("node_name", kMaxNodeNameBytes, &m->node_name));
  MFS_RETURN_IF_ERROR(CheckNodeName(m->node_name));
  MFS_RETURN_IF_ERROR(r.Uuid("node_uuid", &m->node_uuid));
  if (m->node_uuid.IsZero()) return Proto("node UUID is zero");
  MFS_RETURN_IF_ERROR(r.Uuid("store_uuid", &m->store_uuid));
  MFS_RETURN_IF_ERROR(r.Generation(&m->generation, &m->generation_history));
  MFS_RETURN_IF_ERROR(r.String("reason", kMaxWireString, &m->reason));
  uint32_t count = 0;
  MFS_RETURN_IF_ERROR(r.U32("divergent count", &count));
  if (count > kMaxDivergentExtents) {
    return Proto("hello reply lists " + std::to_string(count) +
                 " divergent extents, limit " +
                 std::to_string(kMaxDivergentExtents));
  }
  m->divergent.resize(count);
  for (auto& d : m->divergent) {
    MFS_RETURN_IF_ERROR(r.String("divergent path", kMaxPathBytes, &d.path));
    MFS_RETURN_IF_ERROR(ValidateStorePath(d.path).Context("divergent extent"));
    MFS_RETURN_IF_ERROR(r.U64("divergent offset", &d.offset));
    MFS_RETURN_IF_ERROR(r.U64("divergent length", &d.length));
    if (d.offset > kMaxFileOffset || d.length > kMaxFileOffset - d.offset) {
      return Proto("divergent extent of " + Quote(d.path) +
                   " ends beyond the largest file offset");
    }
  }
  MFS_RETURN_IF_ERROR(r.U64("resync_id", &m->resync_id));
  return r.End();
}

Status DecodeChange(std::string_view payload,
                    std::optional<std::string_view> data, meta::Change* c) {
  PayloadReader r(payload);
  uint8_t kind = 0;
  MFS_RETURN_IF_ERROR(r.U8("kind", &kind));
  if (kind < 1 || kind > kMaxChangeKind) {
    return Proto("unknown change kind " + std::to_string(kind));
  }
  c->kind = static_cast<ChangeKind>(kind);
  MFS_RETURN_IF_ERROR(r.U32("flags", &c->flags));
  MFS_RETURN_IF_ERROR(r.U64("offset", &c->offset));
  MFS_RETURN_IF_ERROR(r.U64("length", &c->length));
  MFS_RETURN_IF_ERROR(r.U32("mode", &c->mode));
  MFS_RETURN_IF_ERROR(r.U32("uid", &c->uid));
  MFS_RETURN_IF_ERROR(r.U32("gid", &c->gid));
  uint32_t nsec = 0;
  MFS_RETURN_IF_ERROR(r.I64("atime.sec", &c->atime.sec));
  MFS_RETURN_IF_ERROR(r.U32("atime.nsec", &nsec));
  c->atime.nsec = nsec;
  MFS_RETURN_IF_ERROR(r.I64("mtime.sec", &c->mtime.sec));
  MFS_RETURN_IF_ERROR(r.U32("mtime.nsec", &nsec));
  c->mtime.nsec = nsec;
  MFS_RETURN_IF_ERROR(r.String("path", kMaxPathBytes, &c->path));
  MFS_RETURN_IF_ERROR(r.String("target", kMaxPathBytes, &c->target));
  uint32_t data_crc = 0;
  if (c->kind == ChangeKind::kWrite) {
    MFS_RETURN_IF_ERROR(r.U32("data_crc", &data_crc));
  }
  MFS_RETURN_IF_ERROR(r.End());
  c->data = nullptr;
  if (c->kind != ChangeKind::kWrite) {
    if (data) {
      return Proto(std::string(KindName(c->kind)) + " change of " +
                   Quote(c->path) + " has a data part (" +
                   std::to_string(data->size()) +
                   " bytes); only a write carries one");
    }
    return ValidateChange(*c);
  }
  if (!data) {
    return Proto("write of " + std::to_string(c->length) + " bytes to " +
                 Quote(c->path) + " has no data part");
  }
  if (data->size() != c->length) {
    return Proto("write of " + std::to_string(c->length) + " bytes to " +
                 Quote(c->path) + " carries " + std::to_string(data->size()) +
                 " data bytes");
  }
  c->data = data->data();
  MFS_RETURN_IF_ERROR(ValidateChange(*c));
  uint32_t crc = Crc32c(*data);
  if (crc != data_crc) {
    return Status::Error(
        EBADMSG, "write of " + std::to_string(c->length) + " bytes to " +
                     Quote(c->path) + ": data checksum mismatch: frame says " +
                     Hex32(data_crc) + ", computed " + Hex32(crc));
  }
  return Status::Ok();
}

Status DecodeAck(std::string_view payload, Ack* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.U64("seq", &m->seq));
  MFS_RETURN_IF_ERROR(r.I32("err", &m->err));
  if (m->err < 0) {
    return Proto("ack err is " + std::to_string(m->err) +
                 ", must be 0 or a positive errno");
  }
  MFS_RETURN_IF_ERROR(r.String("message", kMaxWireString, &m->message));
  return r.End();
}

Status DecodeNonce(std::string_view payload, uint64_t* nonce) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.U64("nonce", nonce));
  return r.End();
}

Status DecodeError(std::string_view payload, ErrorFrame* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.I32("err", &m->err));
  if (m->err <= 0) {
    return Proto("error frame err is " + std::to_string(m->err) +
                 ", must be a positive errno");
  }
  MFS_RETURN_IF_ERROR(r.String("message", kMaxWireString, &m->message));
  return r.End();
}

Status DecodeGenerationUpdate(std::string_view payload, GenerationUpdate* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.Generation(&m->current, &m->history));
  if (m->current.IsZero()) return Proto("generation is zero");
  return r.End();
}

Status DecodeGoodbye(std::string_view payload, Goodbye* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.String("reason", kMaxWireString, &m->reason));
  MFS_RETURN_IF_ERROR(r.U64("durable_through", &m->durable_through));
  return r.End();
}

// Which Change::flags bits each kind may carry.
uint32_t AllowedFlags(ChangeKind kind) {
  switch (kind) {
    case ChangeKind::kWrite:
      return meta::kDsyncWrite | meta::kReplay | meta::kResyncData;
    case ChangeKind::kPunchHole:  // punching always keeps the size
      return meta::kKeepSize | meta::kReplay | meta::kResyncData;
    case ChangeKind::kZeroRange:
    case ChangeKind::kAllocate:
      return meta::kKeepSize | meta::kReplay;
    case ChangeKind::kRename:
      return kRenameNoReplace | kRenameExchange | meta::kReplay;
    case ChangeKind::kFsync:
      return meta::kDataSync | meta::kReplay;
    default:
      return meta::kReplay;
  }
}

Status CheckTime(const char* field, const meta::Timespec& t) {
  if (t.nsec < 0 || t.nsec >= kNsecPerSec) {
    return Proto(std::string(field) + ".nsec " + std::to_string(t.nsec) +
                 " is outside [0, 999999999]");
  }
  return Status::Ok();
}

Status ValidateChangeFields(const meta::Change& c) {
  auto kind = static_cast<uint8_t>(c.kind);
  if (kind < 1 || kind > kMaxChangeKind) {
    return Proto("unknown change kind " + std::to_string(kind));
  }
  if (!(c.kind == ChangeKind::kFsync && c.path.empty())) {
    MFS_RETURN_IF_ERROR(ValidateStorePath(c.path).Context("path"));
  }
  switch (c.kind) {
    case ChangeKind::kRename:
      MFS_RETURN_IF_ERROR(ValidateStorePath(c.target).Context("target"));
      break;
    case ChangeKind::kSymlink:
      // A symlink may point anywhere (absolute, "..", ...): only its size
      // and NUL bytes are checked.
      if (c.target.empty()) return Proto("symlink target is empty");
      if (c.target.size() > kMaxPathBytes) {
        return Proto("symlink target is " + std::to_string(c.target.size()) +
                     " bytes, limit " + std::to_string(kMaxPathBytes));
      }
      if (c.target.find('\0') != std::string::npos) {
        return Proto("symlink target " + Quote(c.target) +
                     " contains a NUL byte");
      }
      break;
    default:
      if (!c.target.empty()) {
        return Proto("target " + Quote(c.target) +
                     " is only allowed for rename and symlink");
      }
  }
  uint32_t extra = c.flags & ~AllowedFlags(c.kind);
  if (extra != 0) return Proto("flags " + Hex32(extra) + " not allowed");
  if (c.kind == ChangeKind::kRename &&
      (c.flags & (kRenameNoReplace | kRenameExchange)) ==
          (kRenameNoReplace | kRenameExchange)) {
    return Proto("rename flags NOREPLACE and EXCHANGE are exclusive");
  }
  switch (c.kind) {
    case ChangeKind::kWrite:
      if (c.length > kMaxWriteBytes) {
        return Proto("write of " + std::to_string(c.length) +
                     " bytes exceeds the frame limit of " +
                     std::to_string(kMaxWriteBytes));
      }
      if (c.length > 0 && c.data == nullptr) {
        return Proto("write of " + std::to_string(c.length) +
                     " bytes has no data");
      }
      [[fallthrough]];
    case ChangeKind::kPunchHole:
    case ChangeKind::kZeroRange:
    case ChangeKind::kAllocate:
      if (c.offset > kMaxFileOffset || c.length > kMaxFileOffset - c.offset) {
        return Proto("range offset " + std::to_string(c.offset) + " length " +
                     std::to_string(c.length) +
                     " ends beyond the largest file offset");
      }
      break;
    case ChangeKind::kTruncate:
      if (c.length > kMaxFileOffset) {
        return Proto("truncate to " + std::to_string(c.length) +
                     " bytes exceeds the largest file size");
      }
      break;
    default:
      break;
  }
  if ((c.mode & ~kModeMask) != 0) {
    return Proto("mode " + Hex32(c.mode) +
                 " has bits beyond file type and "
                 "permissions");
  }
  MFS_RETURN_IF_ERROR(CheckTime("atime", c.atime));
  MFS_RETURN_IF_ERROR(CheckTime("mtime", c.mtime));
  return Status::Ok();
}

// A manifest or listing entry's permission bits and owner (`what` names
// the entry kind in messages).
Status ReadEntryModeAndOwner(PayloadReader& r, const char* what,
                             meta::NamespaceEntry* e) {
  MFS_RETURN_IF_ERROR(r.U32("entry mode", &e->mode));
  if ((e->mode & ~07777u) != 0) {
    return Proto(std::string(what) + " " + Quote(e->path) + " mode " +
                 Hex32(e->mode) + " has bits beyond the permissions");
  }
  MFS_RETURN_IF_ERROR(r.U32("entry uid", &e->uid));
  return r.U32("entry gid", &e->gid);
}

// A manifest or listing entry's symlink target: set exactly for symlinks.
Status ReadEntryTarget(PayloadReader& r, const char* what,
                       meta::NamespaceEntry* e) {
  MFS_RETURN_IF_ERROR(r.String("entry target", kMaxPathBytes, &e->target));
  bool is_link = e->type == meta::NamespaceEntry::Type::kSymlink;
  if (is_link == e->target.empty() ||
      e->target.find('\0') != std::string::npos) {
    return Proto(std::string(what) + " " + Quote(e->path) +
                 (is_link ? " is a symlink without a valid target"
                          : " has a target but is not a symlink"));
  }
  return Status::Ok();
}

Status DecodeManifest(std::string_view payload, Manifest* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.Bool("last", &m->last));
  uint32_t count = 0;
  MFS_RETURN_IF_ERROR(r.U32("entry count", &count));
  if (count > kMaxManifestEntries) {
    return Proto("manifest part has " + std::to_string(count) +
                 " entries, limit " + std::to_string(kMaxManifestEntries));
  }
  m->entries.resize(count);
  for (auto& e : m->entries) {
    MFS_RETURN_IF_ERROR(r.String("entry path", kMaxPathBytes, &e.path));
    MFS_RETURN_IF_ERROR(ValidateStorePath(e.path).Context("manifest entry"));
    uint8_t type = 0;
    MFS_RETURN_IF_ERROR(r.U8("entry type", &type));
    if (type < 1 || type > 3) {
      return Proto("manifest entry " + Quote(e.path) + " has unknown type " +
                   std::to_string(type));
    }
    e.type = static_cast<meta::NamespaceEntry::Type>(type);
    MFS_RETURN_IF_ERROR(ReadEntryModeAndOwner(r, "manifest entry", &e));
    MFS_RETURN_IF_ERROR(r.U64("entry size", &e.size));
    if (e.size > kMaxFileOffset) {
      return Proto("manifest entry " + Quote(e.path) + " size " +
                   std::to_string(e.size) + " is beyond the largest file");
    }
    MFS_RETURN_IF_ERROR(ReadEntryTarget(r, "manifest entry", &e));
  }
  return r.End();
}

Status DecodeResyncMark(std::string_view payload, ResyncMark* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.Bool("begin", &m->begin));
  MFS_RETURN_IF_ERROR(r.U64("total_bytes", &m->total_bytes));
  MFS_RETURN_IF_ERROR(r.U64("resync_id", &m->resync_id));
  return r.End();
}

Status DecodeBlockSums(std::string_view payload, BlockSums* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.String("path", kMaxPathBytes, &m->path));
  MFS_RETURN_IF_ERROR(ValidateStorePath(m->path).Context("block sums"));
  MFS_RETURN_IF_ERROR(r.U64("offset", &m->offset));
  MFS_RETURN_IF_ERROR(r.U32("block_size", &m->block_size));
  MFS_RETURN_IF_ERROR(r.U64("length", &m->length));
  uint32_t count = 0;
  MFS_RETURN_IF_ERROR(r.U32("count", &count));
  if (m->block_size == 0 || count > kMaxBlockSums ||
      m->offset > kMaxFileOffset || m->length > kMaxFileOffset - m->offset ||
      (m->length + m->block_size - 1) / m->block_size != count) {
    return Proto(
        "block sums of " + Quote(m->path) + ": " + std::to_string(count) +
        " blocks of " + std::to_string(m->block_size) + " bytes do not cover " +
        std::to_string(m->length) + " bytes at " + std::to_string(m->offset));
  }
  m->sums.resize(count);
  for (auto& sum : m->sums) {
    std::string_view b;
    MFS_RETURN_IF_ERROR(r.Bytes("sum", kBlockSumBytes, &b));
    std::memcpy(sum.data(), b.data(), kBlockSumBytes);
  }
  return r.End();
}

Status DecodeBlockDiff(std::string_view payload, BlockDiff* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.U64("seq", &m->seq));
  uint32_t count = 0;
  MFS_RETURN_IF_ERROR(r.U32("count", &count));
  if (count > kMaxBlockSums) {
    return Proto("block diff lists " + std::to_string(count) +
                 " blocks, limit " + std::to_string(kMaxBlockSums));
  }
  m->differing.resize(count);
  uint32_t previous = 0;
  for (size_t i = 0; i < count; ++i) {
    MFS_RETURN_IF_ERROR(r.U32("block index", &m->differing[i]));
    if (m->differing[i] >= kMaxBlockSums ||
        (i > 0 && m->differing[i] <= previous)) {
      return Proto("block diff indexes are not increasing and in range");
    }
    previous = m->differing[i];
  }
  MFS_RETURN_IF_ERROR(r.U64("size", &m->size));
  if (m->size > kMaxFileOffset && m->size != kNoFile) {
    return Proto("block diff size " + std::to_string(m->size) +
                 " is beyond the largest file");
  }
  return r.End();
}

Status DecodeList(std::string_view payload, ListRequest* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.String("after", kMaxPathBytes, &m->after));
  if (!m->after.empty()) {
    MFS_RETURN_IF_ERROR(ValidateStorePath(m->after).Context("list after"));
  }
  return r.End();
}

Status DecodeListing(std::string_view payload, Listing* m) {
  PayloadReader r(payload);
  MFS_RETURN_IF_ERROR(r.U64("seq", &m->seq));
  MFS_RETURN_IF_ERROR(r.Bool("last", &m->last));
  uint32_t count = 0;
  MFS_RETURN_IF_ERROR(r.U32("entry count", &count));
  if (count > kMaxListingEntries) {
    return Proto("listing has " + std::to_string(count) + " entries, limit " +
                 std::to_string(kMaxListingEntries));
  }
  if (count == 0 && !m->last) {
    return Proto("listing part that is not the last has no entries");
  }
  m->entries.resize(count);
  for (size_t i = 0; i < count; ++i) {
    auto& e = m->entries[i];
    MFS_RETURN_IF_ERROR(r.String("entry path", kMaxPathBytes, &e.path));
    MFS_RETURN_IF_ERROR(ValidateStorePath(e.path).Context("listing entry"));
    if (i > 0 && !(m->entries[i - 1].path < e.path)) {
      return Proto("listing entry " + Quote(e.path) +
                   " does not sort after the one before it");
    }
    uint8_t type = 0;
    MFS_RETURN_IF_ERROR(r.U8("entry type", &type));
    if (type < 1 || type > 3) {
      return Proto("listing entry " + Quote(e.path) + " has unknown type " +
                   std::to_string(type));
    }
    e.type = static_cast<meta::NamespaceEntry::Type>(type);
    MFS_RETURN_IF_ERROR(ReadEntryModeAndOwner(r, "listing entry", &e));
    MFS_RETURN_IF_ERROR(r.U64("entry size", &e.size));
    if (e.size > kMaxFileOffset ||
        (e.type != meta::NamespaceEntry::Type::kFile && e.size != 0)) {
      return Proto("listing entry " + Quote(e.path) + " size " +
                   std::to_string(e.size) +
                   " is beyond the largest file or not of a file");
    }
    MFS_RETURN_IF_ERROR(ReadEntryTarget(r, "listing entry", &e));
  }
  return r.End();
}

}  // namespace

std::string_view FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello:
      return "hello";
    case FrameType::kHelloReply:
      return "hello-reply";
    case FrameType::kChange:
      return "change";
    case FrameType::kAck:
      return "ack";
    case FrameType::kPing:
      return "ping";
    case FrameType::kPong:
      return "pong";
    case FrameType::kError:
      return "error";
    case FrameType::kManifest:
      return "manifest";
    case FrameType::kResyncMark:
      return "resync-mark";
    case FrameType::kBlockSums:
      return "block-sums";
    case FrameType::kBlockDiff:
      return "block-diff";
    case FrameType::kGoodbye:
      return "goodbye";
    case FrameType::kList:
      return "list";
    case FrameType::kListing:
      return "listing";
    case FrameType::kGeneration:
      return "generation";
  }
  return "unknown";
}

// ---- Public encoders ------------------------------------------------------

size_t ChangeFrameSize(const meta::Change& change) {
  return kFrameHeaderSize + kChangeFixedBytes +
         std::min(change.path.size(), kMaxWireString) +
         std::min(change.target.size(), kMaxWireString) +
         (change.kind == ChangeKind::kWrite ? 4 : 0);
}

uint32_t WriteDataCrc(const meta::Change& change) {
  return Crc32c(change.data, change.data != nullptr ? change.length : 0);
}

void EncodeChange(const FrameHeader& header, const meta::Change& c,
                  std::string* out) {
  EncodeChange(header, c,
               c.kind == ChangeKind::kWrite ? WriteDataCrc(c) : uint32_t{0},
               out);
}

void EncodeChange(const FrameHeader& header, const meta::Change& c,
                  uint32_t data_crc, std::string* out) {
  BeginFrame(header, FrameType::kChange, ChangeFrameSize(c) - kFrameHeaderSize,
             out);
  PutU8(out, static_cast<uint8_t>(c.kind));
  PutU32(out, c.flags);
  PutU64(out, c.offset);
  PutU64(out, c.length);
  PutU32(out, c.mode);
  PutU32(out, c.uid);
  PutU32(out, c.gid);
  PutI64(out, c.atime.sec);
  PutU32(out, static_cast<uint32_t>(c.atime.nsec));
  PutI64(out, c.mtime.sec);
  PutU32(out, static_cast<uint32_t>(c.mtime.nsec));
  PutString(out, c.path);
  PutString(out, c.target);
  // The data travels as the message's second part, not copied here.
  if (c.kind == ChangeKind::kWrite) PutU32(out, data_crc);
  FinishFrame(out);
}

void EncodeHello(const FrameHeader& header, const Hello& m, std::string* out) {
  BeginFrame(header, FrameType::kHello,
             StringBytes(m.node_name) + 16 + 16 + 1 + 16 + 1 +
                 16 * m.generation_history.size() + StringBytes(m.endpoint) + 4,
             out);
  PutString(out, m.node_name);
  PutUuid(out, m.node_uuid);
  PutUuid(out, m.store_uuid);
  PutU8(out, static_cast<uint8_t>(m.role));
  PutGeneration(out, m.generation, m.generation_history);
  PutString(out, m.endpoint);
  PutU32(out, m.flags);
  FinishFrame(out);
}

void EncodeHelloReply(const FrameHeader& header, const HelloReply& m,
                      std::string* out) {
  size_t divergent_bytes = 4;
  for (const auto& d : m.divergent) divergent_bytes += StringBytes(d.path) + 16;
  BeginFrame(header, FrameType::kHelloReply,
             1 + 1 + 4 + StringBytes(m.node_name) + 16 + 16 + 16 + 1 +
                 16 * m.generation_history.size() + StringBytes(m.reason) +
                 divergent_bytes + 8,
             out);
  PutU8(out, m.accepted ? 1 : 0);
  PutU8(out, static_cast<uint8_t>(m.role));
  PutU32(out, m.flags);
  PutString(out, m.node_name);
  PutUuid(out, m.node_uuid);
  PutUuid(out, m.store_uuid);
  PutGeneration(out, m.generation, m.generation_history);
  PutString(out, m.reason);
  size_t n = std::min(m.divergent.size(), kMaxDivergentExtents);
  PutU32(out, static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i) {
    PutString(out, m.divergent[i].path);
    PutU64(out, m.divergent[i].offset);
    PutU64(out, m.divergent[i].length);
  }
  PutU64(out, m.resync_id);
  FinishFrame(out);
}

void EncodeAck(const FrameHeader& header, const Ack& m, std::string* out) {
  BeginFrame(header, FrameType::kAck, 8 + 4 + StringBytes(m.message), out);
  PutU64(out, m.seq);
  PutI32(out, m.err);
  PutString(out, m.message);
  FinishFrame(out);
}

void EncodePing(const FrameHeader& header, const Ping& m, std::string* out) {
  BeginFrame(header, FrameType::kPing, 8, out);
  PutU64(out, m.nonce);
  FinishFrame(out);
}

void EncodePong(const FrameHeader& header, const Pong& m, std::string* out) {
  BeginFrame(header, FrameType::kPong, 8, out);
  PutU64(out, m.nonce);
  FinishFrame(out);
}

void EncodeError(const FrameHeader& header, const ErrorFrame& m,
                 std::string* out) {
  BeginFrame(header, FrameType::kError, 4 + StringBytes(m.message), out);
  PutI32(out, m.err);
  PutString(out, m.message);
  FinishFrame(out);
}

void EncodeGoodbye(const FrameHeader& header, const Goodbye& m,
                   std::string* out) {
  BeginFrame(header, FrameType::kGoodbye, StringBytes(m.reason) + 8, out);
  PutString(out, m.reason);
  PutU64(out, m.durable_through);
  FinishFrame(out);
}

void EncodeGeneration(const FrameHeader& header, const GenerationUpdate& m,
                      std::string* out) {
  BeginFrame(header, FrameType::kGeneration,
             16 + 1 + 16 * std::min(m.history.size(), kMaxGenerationHistory),
             out);
  PutGeneration(out, m.current, m.history);
  FinishFrame(out);
}

void EncodeManifest(const FrameHeader& header, const Manifest& m,
                    std::string* out) {
  size_t bytes = 1 + 4;
  for (const auto& e : m.entries) {
    bytes += StringBytes(e.path) + 1 + 4 + 4 + 4 + 8 + StringBytes(e.target);
  }
  BeginFrame(header, FrameType::kManifest, bytes, out);
  PutU8(out, m.last ? 1 : 0);
  PutU32(out, static_cast<uint32_t>(m.entries.size()));
  for (const auto& e : m.entries) {
    PutString(out, e.path);
    PutU8(out, static_cast<uint8_t>(e.type));
    PutU32(out, e.mode);
    PutU32(out, e.uid);
    PutU32(out, e.gid);
    PutU64(out, e.size);
    PutString(out, e.target);
  }
  FinishFrame(out);
}

void EncodeResyncMark(const FrameHeader& header, const ResyncMark& m,
                      std::string* out) {
  BeginFrame(header, FrameType::kResyncMark, 1 + 8 + 8, out);
  PutU8(out, m.begin ? 1 : 0);
  PutU64(out, m.total_bytes);
  PutU64(out, m.resync_id);
  FinishFrame(out);
}

void EncodeBlockSums(const FrameHeader& header, const BlockSums& m,
                     std::string* out) {
  BeginFrame(
      header, FrameType::kBlockSums,
      StringBytes(m.path) + 8 + 4 + 8 + 4 + kBlockSumBytes * m.sums.size(),
      out);
  PutString(out, m.path);
  PutU64(out, m.offset);
  PutU32(out, m.block_size);
  PutU64(out, m.length);
  PutU32(out, static_cast<uint32_t>(m.sums.size()));
  for (const auto& sum : m.sums) {
    out->append(reinterpret_cast<const char*>(sum.data()), kBlockSumBytes);
  }
  FinishFrame(out);
}

void EncodeBlockDiff(const FrameHeader& header, const BlockDiff& m,
                     std::string* out) {
  BeginFrame(header, FrameType::kBlockDiff, 8 + 4 + 4 * m.differing.size() + 8,
             out);
  PutU64(out, m.seq);
  PutU32(out, static_cast<uint32_t>(m.differing.size()));
  for (uint32_t i : m.differing) PutU32(out, i);
  PutU64(out, m.size);
  FinishFrame(out);
}

void EncodeList(const FrameHeader& header, const ListRequest& m,
                std::string* out) {
  BeginFrame(header, FrameType::kList, StringBytes(m.after), out);
  PutString(out, m.after);
  FinishFrame(out);
}

void EncodeListing(const FrameHeader& header, const Listing& m,
                   std::string* out) {
  size_t bytes = 8 + 1 + 4;
  for (const auto& e : m.entries) {
    bytes += StringBytes(e.path) + 1 + 4 + 4 + 4 + 8 + StringBytes(e.target);
  }
  BeginFrame(header, FrameType::kListing, bytes, out);
  PutU64(out, m.seq);
  PutU8(out, m.last ? 1 : 0);
  PutU32(out, static_cast<uint32_t>(m.entries.size()));
  for (const auto& e : m.entries) {
    PutString(out, e.path);
    PutU8(out, static_cast<uint8_t>(e.type));
    PutU32(out, e.mode);
    PutU32(out, e.uid);
    PutU32(out, e.gid);
    PutU64(out, e.size);
    PutString(out, e.target);
  }
  FinishFrame(out);
}

// ---- Validation -----------------------------------------------------------

Status ValidateStorePath(std::string_view path) {
  if (path.empty()) return Proto("empty path");
  if (path.size() > kMaxPathBytes) {
    return Proto("path of " + std::to_string(path.size()) +
                 " bytes exceeds the limit of " +
                 std::to_string(kMaxPathBytes));
  }
  if (path.find('\0') != std::string_view::npos) {
    return Proto("path " + Quote(path) + " contains a NUL byte");
  }
  if (path.front() == '/') {
    return Proto("path " + Quote(path) + " is absolute");
  }
  size_t start = 0;
  bool first = true;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view comp = path.substr(start, slash == std::string_view::npos
                                                   ? std::string_view::npos
                                                   : slash - start);
    if (comp.empty()) {
      return Proto("path " + Quote(path) + " has an empty component");
    }
    if (comp == "." || comp == "..") {
      return Proto("path " + Quote(path) + " has a '" + std::string(comp) +
                   "' component");
    }
    if (comp.size() > kMaxNameComponentBytes) {
      return Proto("path " + Quote(path) + " has a component of " +
                   std::to_string(comp.size()) + " bytes, limit " +
                   std::to_string(kMaxNameComponentBytes));
    }
    if (first && comp == kStateDir) {
      return Proto("path " + Quote(path) +
                   " is inside the store's private .mirrorfs folder");
    }
    first = false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status::Ok();
}

Status ValidateChange(const meta::Change& change) {
  Status s = ValidateChangeFields(change);
  if (s.ok()) return s;
  return Status::Error(
      s.err(), std::string(KindName(change.kind)) + " change: " + s.message());
}

// ---- Public decoders ------------------------------------------------------

meta::Result<FrameHeader> DecodeFrameHeader(std::string_view bytes) {
  if (bytes.size() < kFrameHeaderSize) {
    return Proto("frame truncated: " + std::to_string(bytes.size()) +
                 " bytes, a frame header alone is " +
                 std::to_string(kFrameHeaderSize));
  }
  const char* p = bytes.data();
  uint32_t magic = LoadU32(p + kOffMagic);
  if (magic != kWireMagic) {
    return Proto("not a mirrorfs frame: magic " + Hex32(magic) + ", expected " +
                 Hex32(kWireMagic) + " ('MFSW')");
  }
  size_t payload_len = LoadU32(p + kOffPayloadLen);
  size_t got = bytes.size() - kFrameHeaderSize;
  if (payload_len > got) {
    return Proto("frame truncated: header says " + std::to_string(payload_len) +
                 " payload bytes, got " + std::to_string(got));
  }
  if (payload_len < got) {
    return Proto("frame too long: header says " + std::to_string(payload_len) +
                 " payload bytes, got " + std::to_string(got));
  }
  if (payload_len > kMaxPayloadBytes) {
    return Proto("frame payload of " + std::to_string(payload_len) +
                 " bytes exceeds the limit of " +
                 std::to_string(kMaxPayloadBytes));
  }
  uint32_t stored = LoadU32(p + kOffCrc);
  static constexpr char kZeroCrc[4] = {0, 0, 0, 0};
  uint32_t crc = Crc32cExtend(0, p, kOffCrc);
  crc = Crc32cExtend(crc, kZeroCrc, sizeof(kZeroCrc));
  crc = Crc32cExtend(crc, p + kFrameHeaderSize, payload_len);
  if (crc != stored) {
    return Status::Error(EBADMSG, "frame checksum mismatch: header says " +
                                      Hex32(stored) + ", computed " +
                                      Hex32(crc));
  }
  FrameHeader h;
  h.version = LoadU16(p + kOffVersion);
  h.type = static_cast<FrameType>(LoadU16(p + kOffType));
  h.store_uuid =
      meta::Uuid::FromBytes(reinterpret_cast<const uint8_t*>(p + kOffStore));
  h.session = LoadU64(p + kOffSession);
  h.seq = LoadU64(p + kOffSeq);
  return h;
}

meta::Result<DecodedFrame> DecodeFrame(std::string_view bytes,
                                       std::optional<std::string_view> data) {
  meta::Result<FrameHeader> header = DecodeFrameHeader(bytes);
  if (!header.ok()) return header.status();
  DecodedFrame f;
  f.header = *header;
  if (f.header.version > kWireVersion) {
    return Proto("frame version " + std::to_string(f.header.version) +
                 " is newer than this node's wire version " +
                 std::to_string(kWireVersion) +
                 ": upgrade this node to talk to the peer");
  }
  if (f.header.version < kWireVersion) {
    return Proto("frame version " + std::to_string(f.header.version) +
                 " is not supported (this node speaks wire version " +
                 std::to_string(kWireVersion) + ")");
  }
  std::string_view payload = bytes.substr(kFrameHeaderSize);
  Status s;
  switch (f.header.type) {
    case FrameType::kHello:
      s = DecodeHello(f.header, payload, &f.body.emplace<Hello>());
      break;
    case FrameType::kHelloReply:
      s = DecodeHelloReply(payload, &f.body.emplace<HelloReply>());
      break;
    case FrameType::kChange:
      s = DecodeChange(payload, data, &f.body.emplace<meta::Change>());
      break;
    case FrameType::kAck:
      s = DecodeAck(payload, &f.body.emplace<Ack>());
      break;
    case FrameType::kPing:
      s = DecodeNonce(payload, &f.body.emplace<Ping>().nonce);
      break;
    case FrameType::kPong:
      s = DecodeNonce(payload, &f.body.emplace<Pong>().nonce);
      break;
    case FrameType::kError:
      s = DecodeError(payload, &f.body.emplace<ErrorFrame>());
      break;
    case FrameType::kManifest:
      s = DecodeManifest(payload, &f.body.emplace<Manifest>());
      break;
    case FrameType::kResyncMark:
      s = DecodeResyncMark(payload, &f.body.emplace<ResyncMark>());
      break;
    case FrameType::kBlockSums:
      s = DecodeBlockSums(payload, &f.body.emplace<BlockSums>());
      break;
    case FrameType::kBlockDiff:
      s = DecodeBlockDiff(payload, &f.body.emplace<BlockDiff>());
      break;
    case FrameType::kGoodbye:
      s = DecodeGoodbye(payload, &f.body.emplace<Goodbye>());
      break;
    case FrameType::kList:
      s = DecodeList(payload, &f.body.emplace<ListRequest>());
      break;
    case FrameType::kListing:
      s = DecodeListing(payload, &f.body.emplace<Listing>());
      break;
    case FrameType::kGeneration:
      s = DecodeGenerationUpdate(payload, &f.body.emplace<GenerationUpdate>());
      break;
    default:
      return Proto("unknown frame type " +
                   std::to_string(static_cast<uint16_t>(f.header.type)));
  }
  if (s.ok() && data && f.header.type != FrameType::kChange) {
    s = Proto("a data part (" + std::to_string(data->size()) +
              " bytes) follows a frame that never has one");
  }
  if (!s.ok()) {
    return Status::Error(s.err(), std::string(FrameTypeName(f.header.type)) +
                                      " frame (session " +
                                      std::to_string(f.header.session) +
                                      ", seq " + std::to_string(f.header.seq) +
                                      "): " + s.message());
  }
  return f;
}

}  // namespace mirrorfs::sync
