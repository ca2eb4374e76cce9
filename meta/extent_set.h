// Extent and ExtentSet: the byte ranges of one image, as the fracture log,
// the write-intent journal and the resync worker count them.
//
// An ExtentSet is a set of half-open byte ranges [offset, offset + length)
// over uint64. Ranges are kept canonical: sorted, non-empty, and neither
// overlapping nor adjacent (adding [0,4) and [4,8) stores one range [0,8)).
// Memory and the cost of every operation grow with the number of ranges, not
// with the bytes they cover: a 1 TiB image with 262144 scattered 4 KiB
// extents costs a few MiB. TotalBytes() is O(1).
//
// Offsets near the top of the space: offset + length is clamped to
// UINT64_MAX, so the last byte (UINT64_MAX itself) is never covered.
// Zero-length arguments change nothing.
//
// Thread-safety: a value type. Const methods may run concurrently; anything
// else needs external synchronization.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "meta/status.h"

namespace mirrorfs::meta {

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  // One past the last byte. REQUIRES: offset + length does not overflow
  // (always true for extents that come out of an ExtentSet).
  uint64_t end() const { return offset + length; }
  bool operator==(const Extent&) const = default;
};

class ExtentSet {
 public:
  // Iterates the ranges in ascending order, yielding Extent values.
  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = Extent;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = Extent;

    const_iterator() = default;
    Extent operator*() const { return {it_->first, it_->second - it_->first}; }
    const_iterator& operator++() {
      ++it_;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator old = *this;
      ++it_;
      return old;
    }
    bool operator==(const const_iterator&) const = default;

   private:
    friend class ExtentSet;
    explicit const_iterator(std::map<uint64_t, uint64_t>::const_iterator it)
        : it_(it) {}
    std::map<uint64_t, uint64_t>::const_iterator it_;
  };

  ExtentSet() = default;

  // Adds [offset, offset + len), merging with overlapping and adjacent
  // ranges. O(log n + ranges merged).
  void Add(uint64_t offset, uint64_t len);
  void Add(const Extent& e) { Add(e.offset, e.length); }
  // Removes [offset, offset + len) (a punch: may split one range in two).
  void Remove(uint64_t offset, uint64_t len);
  void Remove(const Extent& e) { Remove(e.offset, e.length); }

  // True if every byte of [offset, offset + len) is in the set (vacuously
  // true for len == 0).
  bool Contains(uint64_t offset, uint64_t len) const;
  // True if any byte of [offset, offset + len) is in the set.
  bool Overlaps(uint64_t offset, uint64_t len) const;
  // The parts of the set inside [offset, offset + len), ascending.
  std::vector<Extent> Intersection(uint64_t offset, uint64_t len) const;

  // All ranges, ascending.
  std::vector<Extent> Extents() const;
  const_iterator begin() const { return const_iterator(ranges_.begin()); }
  const_iterator end() const { return const_iterator(ranges_.end()); }

  // Bytes covered, O(1).
  uint64_t TotalBytes() const { return total_bytes_; }
  // Number of (canonical) ranges.
  size_t Count() const { return ranges_.size(); }
  bool empty() const { return ranges_.empty(); }
  void Clear();

  // this |= other.
  void Merge(const ExtentSet& other);
  // this -= other.
  void Subtract(const ExtentSet& other);
  // A new set in which every range is widened outwards to multiples of
  // `granularity` (e.g. the 4 MiB intent extents). granularity 0 or 1
  // returns a copy. An end that would round past UINT64_MAX is clamped.
  ExtentSet RoundedOut(uint64_t granularity) const;

  // Compact, canonical binary form (format in extent_set.cc): a format byte,
  // the range count, then per range the gap since the previous range's end
  // and the length, as varints. Equal sets encode to equal bytes.
  std::string Encode() const;
  // Parses Encode()'s output. Returns the set on success; EUCLEAN ("corrupt
  // extent set: ...") on truncated, trailing, overflowing or non-canonical
  // input. Never crashes and allocates at most in proportion to the input.
  static Result<ExtentSet> Decode(std::string_view bytes);

  // "[0,4096) [8192,12288)" — for logs and test failure messages.
  std::string ToString() const;

  bool operator==(const ExtentSet& other) const {
    return ranges_ == other.ranges_;
  }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // start -> end (exclusive), canonical
  uint64_t total_bytes_ = 0;             // sum of (end - start) over ranges_
};

}  // namespace mirrorfs::meta
