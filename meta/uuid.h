// Uuid: 16 random bytes naming a node or a store; text form is the usual
// 8-4-4-4-12 lowercase hex. The all-zero Uuid means "not set yet" (a store
// before it first meets a peer). Thread-safety: a value type.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "meta/status.h"

namespace mirrorfs::meta {

class Uuid {
 public:
  Uuid() { bytes_.fill(0); }
  // A random (version 4) Uuid read from /dev/urandom.
  static Uuid Generate();
  // Parses the 36-character text form; error on anything else.
  static Result<Uuid> Parse(std::string_view text);
  static Uuid FromBytes(const uint8_t* sixteen);

  bool IsZero() const;
  std::string ToString() const;
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  bool operator==(const Uuid&) const = default;

 private:
  std::array<uint8_t, 16> bytes_;
};

}  // namespace mirrorfs::meta
