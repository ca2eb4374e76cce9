#include "meta/extent_set.h"

#include <algorithm>
#include <new>

namespace mirrorfs::meta {
namespace {

// Encoded form, version 1:
//
//   u8      format = 1
//   varint  count of ranges
//   count x { varint gap; varint length }
//
// where gap is the distance from the previous range's end (0 for the first
// range) to this range's start, and varints are LEB128 (7 bits per byte,
// least significant first, at most 10 bytes). Canonical: every length > 0,
// every gap after the first > 0, shortest varints, no trailing bytes.
constexpr uint8_t kEncodingFormat = 1;

uint64_t ClampedEnd(uint64_t offset, uint64_t len) {
  return len > UINT64_MAX - offset ? UINT64_MAX : offset + len;
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Reads one varint from `*in`, advancing it. False on truncation, overlong
// encoding, or a value that does not fit in 64 bits.
bool GetVarint(std::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift <= 63; shift += 7) {
    if (in->empty()) return false;
    uint8_t byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    uint64_t bits = byte & 0x7f;
    // The 10th byte may only carry the single top bit.
    if (shift == 63 && bits > 1) return false;
    result |= bits << shift;
    if ((byte & 0x80) == 0) {
      // A zero last byte after the first is an overlong (non-canonical)
      // encoding: only one byte string may stand for a value.
      if (shift > 0 && byte == 0) return false;
      *v = result;
      return true;
    }
  }
  return false;
}

Status Corrupt(const std::string& why) {
  return Status::Error(EUCLEAN, "corrupt extent set: " + why);
}

}  // namespace

void ExtentSet::Add(uint64_t offset, uint64_t len) {
  if (len == 0) return;
  uint64_t start = offset;
  uint64_t end = ClampedEnd(offset, len);
  if (start == end) return;              // offset == UINT64_MAX
  auto it = ranges_.upper_bound(start);  // first range starting after start
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= start) {        // overlapping or adjacent on the left
      if (prev->second >= end) return;  // already covered
      start = prev->first;
      total_bytes_ -= prev->second - prev->first;
      ranges_.erase(prev);
    }
  }
  while (it != ranges_.end() && it->first <= end) {  // overlapping or adjacent
    end = std::max(end, it->second);
    total_bytes_ -= it->second - it->first;
    it = ranges_.erase(it);
  }
  ranges_.emplace_hint(it, start, end);
  total_bytes_ += end - start;
}

void ExtentSet::Remove(uint64_t offset, uint64_t len) {
  if (len == 0) return;
  const uint64_t start = offset;
  const uint64_t end = ClampedEnd(offset, len);
  auto it = ranges_.upper_bound(start);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second > start) {  // the hole starts inside prev
      const uint64_t prev_end = prev->second;
      if (prev->first == start) {
        total_bytes_ -= prev_end - prev->first;
        ranges_.erase(prev);
      } else {
        total_bytes_ -= prev_end - start;
        prev->second = start;
      }
      if (prev_end > end) {  // the hole is inside prev: split it
        it = ranges_.emplace_hint(it, end, prev_end);
        total_bytes_ += prev_end - end;
        return;
      }
    }
  }
  while (it != ranges_.end() && it->first < end) {
    if (it->second <= end) {
      total_bytes_ -= it->second - it->first;
      it = ranges_.erase(it);
    } else {  // keep the tail [end, it->second)
      total_bytes_ -= end - it->first;
      auto node = ranges_.extract(it++);
      node.key() = end;
      ranges_.insert(it, std::move(node));
      break;
    }
  }
}

bool ExtentSet::Contains(uint64_t offset, uint64_t len) const {
  if (len == 0) return true;
  const uint64_t end = ClampedEnd(offset, len);
  auto it = ranges_.upper_bound(offset);
  if (it == ranges_.begin()) return false;
  --it;
  return it->second >= end;  // canonical: one range must cover it all
}

bool ExtentSet::Overlaps(uint64_t offset, uint64_t len) const {
  if (len == 0) return false;
  const uint64_t end = ClampedEnd(offset, len);
  auto it = ranges_.upper_bound(offset);
  if (it != ranges_.begin() && std::prev(it)->second > offset) return true;
  return it != ranges_.end() && it->first < end;
}

std::vector<Extent> ExtentSet::Intersection(uint64_t offset,
                                            uint64_t len) const {
  std::vector<Extent> out;
  if (len == 0) return out;
  const uint64_t end = ClampedEnd(offset, len);
  auto it = ranges_.upper_bound(offset);
  if (it != ranges_.begin() && std::prev(it)->second > offset) --it;
  for (; it != ranges_.end() && it->first < end; ++it) {
    uint64_t s = std::max(it->first, offset);
    uint64_t e = std::min(it->second, end);
    out.push_back({s, e - s});
  }
  return out;
}

std::vector<Extent> ExtentSet::Extents() const {
  return std::vector<Extent>(begin(), end());
}

void ExtentSet::Clear() {
  ranges_.clear();
  total_bytes_ = 0;
}

void ExtentSet::Merge(const ExtentSet& other) {
  if (this == &other) return;
  if (ranges_.empty()) {
    *this = other;
    return;
  }
  for (const auto& [s, e] : other.ranges_) Add(s, e - s);
}

void ExtentSet::Subtract(const ExtentSet& other) {
  if (this == &other) {
    Clear();
    return;
  }
  for (const auto& [s, e] : other.ranges_) {
    if (ranges_.empty()) return;
    Remove(s, e - s);
  }
}

ExtentSet ExtentSet::RoundedOut(uint64_t granularity) const {
  if (granularity <= 1) return *this;
  ExtentSet out;
  for (const auto& [s, e] : ranges_) {
    uint64_t rs = s - s % granularity;
    uint64_t re = e;
    if (uint64_t rem = e % granularity; rem != 0) {
      re = ClampedEnd(e, granularity - rem);
    }
    out.Add(rs, re - rs);
  }
  return out;
}

std::string ExtentSet::Encode() const {
  std::string out;
  out.reserve(2 + ranges_.size() * 4);
  out.push_back(static_cast<char>(kEncodingFormat));
  PutVarint(&out, ranges_.size());
  uint64_t prev_end = 0;
  for (const auto& [s, e] : ranges_) {
    PutVarint(&out, s - prev_end);
    PutVarint(&out, e - s);
    prev_end = e;
  }
  return out;
}

Result<ExtentSet> ExtentSet::Decode(std::string_view in) {
  try {
    if (in.empty()) return Corrupt("empty input");
    uint8_t format = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    if (format != kEncodingFormat) {
      return Corrupt("unknown format " + std::to_string(format));
    }
    uint64_t count = 0;
    if (!GetVarint(&in, &count)) return Corrupt("bad range count");
    // Each range takes at least two bytes; reject impossible counts before
    // they drive any allocation or loop.
    if (count > in.size() / 2) {
      return Corrupt("range count " + std::to_string(count) +
                     " does not fit in " + std::to_string(in.size()) +
                     " bytes");
    }
    ExtentSet set;
    uint64_t prev_end = 0;
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t gap = 0;
      uint64_t len = 0;
      if (!GetVarint(&in, &gap) || !GetVarint(&in, &len)) {
        return Corrupt("truncated at range " + std::to_string(i));
      }
      if (len == 0) return Corrupt("empty range " + std::to_string(i));
      if (i > 0 && gap == 0) {
        return Corrupt("range " + std::to_string(i) + " touches the previous");
      }
      if (gap > UINT64_MAX - prev_end || len > UINT64_MAX - (prev_end + gap)) {
        return Corrupt("range " + std::to_string(i) + " overflows 64 bits");
      }
      uint64_t start = prev_end + gap;
      uint64_t end = start + len;
      set.ranges_.emplace_hint(set.ranges_.end(), start, end);
      set.total_bytes_ += len;
      prev_end = end;
    }
    if (!in.empty()) {
      return Corrupt(std::to_string(in.size()) + " trailing bytes");
    }
    return set;
  } catch (const std::bad_alloc&) {
    return Status::Error(ENOMEM, "out of memory decoding an extent set");
  }
}

std::string ExtentSet::ToString() const {
  std::string out;
  for (const auto& [s, e] : ranges_) {
    if (!out.empty()) out.push_back(' ');
    // Appends piecewise: GCC 12 -O2 raises a false -Wrestrict on
    // "[" + std::to_string(...) chains.
    out.push_back('[');
    out += std::to_string(s);
    out.push_back(',');
    out += std::to_string(e);
    out.push_back(')');
  }
  return out.empty() ? "{}" : out;
}

}  // namespace mirrorfs::meta
