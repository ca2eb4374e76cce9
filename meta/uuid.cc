#include "meta/uuid.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>

namespace mirrorfs::meta {

Uuid Uuid::Generate() {
  Uuid u;
  bool filled = false;
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    filled = ::read(fd, u.bytes_.data(), 16) == 16;
    ::close(fd);
  }
  if (!filled) {
    std::random_device rd;
    for (auto& b : u.bytes_) b = static_cast<uint8_t>(rd());
  }
  u.bytes_[6] = (u.bytes_[6] & 0x0f) | 0x40;
  u.bytes_[8] = (u.bytes_[8] & 0x3f) | 0x80;
  return u;
}

static int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<Uuid> Uuid::Parse(std::string_view text) {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' ||
      text[18] != '-' || text[23] != '-') {
    return Status::Error(EINVAL, "not a UUID: '" + std::string(text) + "'");
  }
  Uuid u;
  size_t out = 0;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '-') {
      ++i;
      continue;
    }
    int hi = HexValue(text[i]);
    int lo = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
    if (hi < 0 || lo < 0 || out >= 16) {
      return Status::Error(EINVAL, "not a UUID: '" + std::string(text) + "'");
    }
    u.bytes_[out++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return u;
}

Uuid Uuid::FromBytes(const uint8_t* sixteen) {
  Uuid u;
  std::memcpy(u.bytes_.data(), sixteen, 16);
  return u;
}

bool Uuid::IsZero() const {
  for (auto b : bytes_)
    if (b != 0) return false;
  return true;
}

std::string Uuid::ToString() const {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[bytes_[i] >> 4]);
    s.push_back(kHex[bytes_[i] & 15]);
  }
  return s;
}

}  // namespace mirrorfs::meta
