#include "meta/extent_set.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace mirrorfs::meta {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kTiB = 1024 * 1024 * kMiB;

std::vector<Extent> E(std::initializer_list<Extent> l) { return l; }

TEST(ExtentSetTest, EmptyByDefault) {
  ExtentSet s;
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.Count(), 0u);
  EXPECT_EQ(s.TotalBytes(), 0u);
  EXPECT_TRUE(s.Extents().empty());
  EXPECT_FALSE(s.Overlaps(0, UINT64_MAX));
  EXPECT_TRUE(s.Contains(5, 0));
  EXPECT_FALSE(s.Contains(5, 1));
}

TEST(ExtentSetTest, ZeroLengthIsNoOp) {
  ExtentSet s;
  s.Add(10, 0);
  EXPECT_TRUE(s.empty());
  s.Add(10, 10);
  s.Remove(15, 0);
  EXPECT_EQ(s.Extents(), E({{10, 10}}));
}

TEST(ExtentSetTest, MergesOverlapping) {
  ExtentSet s;
  s.Add(0, 100);
  s.Add(50, 100);
  EXPECT_EQ(s.Extents(), E({{0, 150}}));
  EXPECT_EQ(s.TotalBytes(), 150u);
  s.Add(10, 20);  // inside
  EXPECT_EQ(s.Extents(), E({{0, 150}}));
  EXPECT_EQ(s.TotalBytes(), 150u);
}

TEST(ExtentSetTest, MergesAdjacent) {
  ExtentSet s;
  s.Add(0, 4096);
  s.Add(4096, 4096);
  EXPECT_EQ(s.Count(), 1u);
  s.Add(12288, 4096);
  EXPECT_EQ(s.Count(), 2u);
  s.Add(8192, 4096);  // fills the gap exactly: all three become one
  EXPECT_EQ(s.Extents(), E({{0, 16384}}));
  EXPECT_EQ(s.TotalBytes(), 16384u);
}

TEST(ExtentSetTest, AddSwallowsManyRanges) {
  ExtentSet s;
  for (uint64_t i = 0; i < 10; ++i) s.Add(i * 100, 10);
  EXPECT_EQ(s.Count(), 10u);
  s.Add(5, 850);  // [5, 855) covers ranges 0..8 partially/fully
  EXPECT_EQ(s.Extents(), E({{0, 855}, {900, 10}}));
  EXPECT_EQ(s.TotalBytes(), 865u);
}

TEST(ExtentSetTest, RemoveSplitsRange) {
  ExtentSet s;
  s.Add(0, 100);
  s.Remove(40, 20);
  EXPECT_EQ(s.Extents(), E({{0, 40}, {60, 40}}));
  EXPECT_EQ(s.TotalBytes(), 80u);
}

TEST(ExtentSetTest, RemoveEdgesAndAcross) {
  ExtentSet s;
  s.Add(0, 100);
  s.Add(200, 100);
  s.Add(400, 100);
  s.Remove(0, 10);  // head
  EXPECT_EQ(s.Extents(), E({{10, 90}, {200, 100}, {400, 100}}));
  s.Remove(490, 50);  // tail and beyond
  EXPECT_EQ(s.Extents(), E({{10, 90}, {200, 100}, {400, 90}}));
  s.Remove(50, 400);  // across: trims first, drops second, trims third
  EXPECT_EQ(s.Extents(), E({{10, 40}, {450, 40}}));
  EXPECT_EQ(s.TotalBytes(), 80u);
  s.Remove(100, 300);  // entirely in a gap
  EXPECT_EQ(s.TotalBytes(), 80u);
  s.Remove(0, UINT64_MAX);
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.TotalBytes(), 0u);
}

TEST(ExtentSetTest, RemoveExactRange) {
  ExtentSet s;
  s.Add(100, 100);
  s.Remove(100, 100);
  EXPECT_TRUE(s.empty());
  s.Add(100, 100);
  s.Remove(100, 50);
  EXPECT_EQ(s.Extents(), E({{150, 50}}));
}

TEST(ExtentSetTest, ContainsAndOverlaps) {
  ExtentSet s;
  s.Add(100, 100);  // [100, 200)
  s.Add(300, 100);  // [300, 400)
  EXPECT_TRUE(s.Contains(100, 100));
  EXPECT_TRUE(s.Contains(150, 10));
  EXPECT_FALSE(s.Contains(99, 2));
  EXPECT_FALSE(s.Contains(199, 2));
  EXPECT_FALSE(s.Contains(150, 200));  // spans a gap
  EXPECT_FALSE(s.Contains(250, 10));

  EXPECT_TRUE(s.Overlaps(199, 1));
  EXPECT_FALSE(s.Overlaps(200, 100));  // exactly the gap
  EXPECT_TRUE(s.Overlaps(200, 101));
  EXPECT_FALSE(s.Overlaps(0, 100));
  EXPECT_TRUE(s.Overlaps(0, 101));
  EXPECT_TRUE(s.Overlaps(0, UINT64_MAX));
  EXPECT_FALSE(s.Overlaps(400, 10));
  EXPECT_FALSE(s.Overlaps(150, 0));
}

TEST(ExtentSetTest, Intersection) {
  ExtentSet s;
  s.Add(100, 100);
  s.Add(300, 100);
  s.Add(500, 100);
  EXPECT_EQ(s.Intersection(150, 200), E({{150, 50}, {300, 50}}));
  EXPECT_EQ(s.Intersection(0, 1000), s.Extents());
  EXPECT_TRUE(s.Intersection(200, 100).empty());
  EXPECT_EQ(s.Intersection(350, 10), E({{350, 10}}));
  EXPECT_TRUE(s.Intersection(350, 0).empty());
}

TEST(ExtentSetTest, OverflowIsClamped) {
  ExtentSet s;
  s.Add(UINT64_MAX - 10, 100);
  EXPECT_EQ(s.Extents(), E({{UINT64_MAX - 10, 10}}));
  EXPECT_EQ(s.TotalBytes(), 10u);
  EXPECT_TRUE(s.Contains(UINT64_MAX - 5, 1000));
  s.Add(UINT64_MAX, 5);  // nothing addressable left
  EXPECT_EQ(s.Count(), 1u);
  s.Add(0, UINT64_MAX);
  EXPECT_EQ(s.Extents(), E({{0, UINT64_MAX}}));
  EXPECT_EQ(s.TotalBytes(), UINT64_MAX);
  s.Remove(1, UINT64_MAX);
  EXPECT_EQ(s.Extents(), E({{0, 1}}));
}

TEST(ExtentSetTest, IterationYieldsExtents) {
  ExtentSet s;
  s.Add(0, 1);
  s.Add(10, 2);
  std::vector<Extent> seen;
  for (Extent e : s) seen.push_back(e);
  EXPECT_EQ(seen, E({{0, 1}, {10, 2}}));
  EXPECT_EQ(seen[1].end(), 12u);
}

TEST(ExtentSetTest, MergeAndSubtract) {
  ExtentSet a, b;
  a.Add(0, 100);
  a.Add(200, 100);
  b.Add(50, 200);
  b.Add(1000, 10);
  ExtentSet u = a;
  u.Merge(b);
  EXPECT_EQ(u.Extents(), E({{0, 300}, {1000, 10}}));
  EXPECT_EQ(u.TotalBytes(), 310u);

  ExtentSet d = a;
  d.Subtract(b);
  EXPECT_EQ(d.Extents(), E({{0, 50}, {250, 50}}));
  EXPECT_EQ(d.TotalBytes(), 100u);

  ExtentSet self = a;
  self.Merge(self);
  EXPECT_EQ(self, a);
  self.Subtract(self);
  EXPECT_TRUE(self.empty());

  ExtentSet empty;
  empty.Merge(a);
  EXPECT_EQ(empty, a);
  EXPECT_EQ(empty.TotalBytes(), a.TotalBytes());
}

TEST(ExtentSetTest, RoundedOut) {
  ExtentSet s;
  s.Add(1, 1);                 // -> [0, 4M)
  s.Add(4 * kMiB, 1);          // -> [4M, 8M): adjacent, merges
  s.Add(20 * kMiB + 5, kMiB);  // -> [20M, 24M)
  s.Add(28 * kMiB, 4 * kMiB);  // already aligned
  ExtentSet r = s.RoundedOut(4 * kMiB);
  EXPECT_EQ(r.Extents(),
            E({{0, 8 * kMiB}, {20 * kMiB, 4 * kMiB}, {28 * kMiB, 4 * kMiB}}));
  EXPECT_EQ(r.TotalBytes(), 16 * kMiB);
  EXPECT_EQ(s.Count(), 4u);  // the original is untouched
  EXPECT_EQ(s.RoundedOut(0), s);
  EXPECT_EQ(s.RoundedOut(1), s);

  ExtentSet top;
  top.Add(UINT64_MAX - 10, 5);
  ExtentSet rt = top.RoundedOut(4096);
  EXPECT_EQ(rt.Extents(),
            E({{UINT64_MAX - 4095, 4095}}));  // end clamped to UINT64_MAX
}

// Compares ExtentSet with a brute-force bitmap under random operations.
TEST(ExtentSetTest, RandomOpsMatchBitmap) {
  constexpr uint64_t kSpace = 512;
  std::mt19937_64 rng(42);
  ExtentSet s;
  std::vector<bool> bits(kSpace, false);
  for (int step = 0; step < 20000; ++step) {
    uint64_t off = rng() % kSpace;
    uint64_t len = rng() % 40;
    if (off + len > kSpace) len = kSpace - off;
    int op = static_cast<int>(rng() % 5);
    if (op <= 1) {
      s.Add(off, len);
      for (uint64_t i = off; i < off + len; ++i) bits[i] = true;
    } else if (op == 2) {
      s.Remove(off, len);
      for (uint64_t i = off; i < off + len; ++i) bits[i] = false;
    } else {
      bool all = true, any = false;
      std::vector<Extent> inter;
      for (uint64_t i = off; i < off + len; ++i) {
        all = all && bits[i];
        any = any || bits[i];
        if (bits[i]) {
          if (!inter.empty() && inter.back().end() == i) {
            ++inter.back().length;
          } else {
            inter.push_back({i, 1});
          }
        }
      }
      ASSERT_EQ(s.Contains(off, len), all) << off << "+" << len;
      ASSERT_EQ(s.Overlaps(off, len), any) << off << "+" << len;
      ASSERT_EQ(s.Intersection(off, len), inter) << off << "+" << len;
    }
    // Full structural check now and then.
    if (step % 97 == 0) {
      uint64_t total = 0;
      std::vector<Extent> expect;
      for (uint64_t i = 0; i < kSpace; ++i) {
        if (!bits[i]) continue;
        ++total;
        if (!expect.empty() && expect.back().end() == i) {
          ++expect.back().length;
        } else {
          expect.push_back({i, 1});
        }
      }
      ASSERT_EQ(s.Extents(), expect) << s.ToString();
      ASSERT_EQ(s.TotalBytes(), total);
    }
  }
}

// 262144 scattered 4 KiB extents in a 1 TiB image: exact totals, memory in
// proportion to the ranges, and fast.
TEST(ExtentSetTest, LargeSparseSetIsCheap) {
  constexpr uint64_t kBlock = 4 * kKiB;
  constexpr uint64_t kBlocks = kTiB / kBlock;
  constexpr size_t kCount = 262144;
  std::mt19937_64 rng(7);
  std::set<uint64_t> chosen;
  while (chosen.size() < kCount) chosen.insert(rng() % kBlocks);
  std::vector<uint64_t> order(chosen.begin(), chosen.end());
  std::shuffle(order.begin(), order.end(), rng);
  uint64_t expected_ranges = 0;
  uint64_t prev = UINT64_MAX - 1;
  for (uint64_t b : chosen) {
    if (b != prev + 1) ++expected_ranges;
    prev = b;
  }

  const auto start = std::chrono::steady_clock::now();
  const size_t heap_before = mallinfo2().uordblks;
  ExtentSet s;
  for (uint64_t b : order) s.Add(b * kBlock, kBlock);
  const size_t heap_used = mallinfo2().uordblks - heap_before;
  EXPECT_EQ(s.TotalBytes(), kCount * kBlock);  // exactly 1 GiB
  EXPECT_EQ(s.Count(), expected_ranges);
  // A map node is ~48 bytes plus malloc overhead: well under 128 per range.
  EXPECT_LT(heap_used, expected_ranges * 128) << heap_used << " bytes";

  std::string enc = s.Encode();
  EXPECT_LT(enc.size(), expected_ranges * 10);  // a few bytes per range
  Result<ExtentSet> back = ExtentSet::Decode(enc);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, s);

  ExtentSet rounded = s.RoundedOut(4 * kMiB);
  EXPECT_GE(rounded.TotalBytes(), s.TotalBytes());
  EXPECT_LE(rounded.Count(), s.Count());

  ExtentSet half;
  for (size_t i = 0; i < order.size(); i += 2)
    half.Add(order[i] * kBlock, kBlock);
  ExtentSet rest = s;
  rest.Subtract(half);
  EXPECT_EQ(rest.TotalBytes() + half.TotalBytes(), s.TotalBytes());
  EXPECT_FALSE(rest.Overlaps(order[0] * kBlock, kBlock));
  EXPECT_TRUE(rest.Contains(order[1] * kBlock, kBlock));

  const auto elapsed = std::chrono::steady_clock::now() - start;
  // Generous for Debug and sanitizer builds; a bitmap or per-byte structure
  // would blow both this and the memory bound.
  EXPECT_LT(std::chrono::duration_cast<std::chrono::seconds>(elapsed).count(),
            20);
}

TEST(ExtentSetTest, EncodeDecodeRoundTrip) {
  std::vector<ExtentSet> cases(4);
  cases[1].Add(0, 1);
  cases[2].Add(UINT64_MAX - 1, 1);
  cases[2].Add(0, 4096);
  cases[3].Add(0, UINT64_MAX);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 50; ++i) {
    ExtentSet r;
    for (int j = 0; j < 100; ++j) r.Add(rng() >> (rng() % 64), rng() % 100000);
    cases.push_back(r);
  }
  for (const ExtentSet& c : cases) {
    Result<ExtentSet> d = ExtentSet::Decode(c.Encode());
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_EQ(*d, c) << c.ToString();
    EXPECT_EQ(d->TotalBytes(), c.TotalBytes());
  }
}

TEST(ExtentSetTest, DecodeRejectsEveryTruncation) {
  ExtentSet s;
  for (uint64_t i = 0; i < 20; ++i) s.Add(i * 1000000007ull, 300 + i);
  std::string enc = s.Encode();
  for (size_t n = 0; n < enc.size(); ++n) {
    Result<ExtentSet> d = ExtentSet::Decode(std::string_view(enc).substr(0, n));
    EXPECT_FALSE(d.ok()) << "prefix of " << n << " bytes accepted";
    if (!d.ok()) {
      EXPECT_EQ(d.status().err(), EUCLEAN);
    }
  }
  EXPECT_FALSE(ExtentSet::Decode(enc + "x").ok());  // trailing garbage
}

TEST(ExtentSetTest, DecodeRejectsNonCanonicalAndOverflow) {
  auto bytes = [](std::initializer_list<int> l) {
    std::string s;
    for (int b : l) s.push_back(static_cast<char>(b));
    return s;
  };
  EXPECT_TRUE(ExtentSet::Decode(bytes({1, 0})).ok());         // empty set
  EXPECT_FALSE(ExtentSet::Decode(bytes({2, 0})).ok());        // unknown format
  EXPECT_FALSE(ExtentSet::Decode(bytes({1, 1, 0, 0})).ok());  // zero length
  EXPECT_FALSE(
      ExtentSet::Decode(bytes({1, 2, 0, 5, 0, 5})).ok());  // touching ranges
  // Overlong varint: 5 written as two bytes.
  EXPECT_FALSE(ExtentSet::Decode(bytes({1, 1, 0, 0x85, 0x00})).ok());
  EXPECT_TRUE(ExtentSet::Decode(bytes({1, 1, 0, 0x05})).ok());
  // Count far beyond the input: rejected before any allocation.
  EXPECT_FALSE(
      ExtentSet::Decode(bytes({1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1})).ok());
  // An 11-byte varint and a 10th byte with too many bits.
  EXPECT_FALSE(ExtentSet::Decode(bytes({1, 1, 0x80, 0x80, 0x80, 0x80, 0x80,
                                        0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1}))
                   .ok());
  EXPECT_FALSE(ExtentSet::Decode(bytes({1, 1, 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0x02, 1}))
                   .ok());
  // Two ranges whose second end passes 2^64.
  std::string over = bytes({1, 2});
  over += bytes({0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f});
  over +=
      bytes({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x05});
  Result<ExtentSet> d = ExtentSet::Decode(over);
  EXPECT_FALSE(d.ok());
}

TEST(ExtentSetTest, DecodeSurvivesRandomBytes) {
  std::mt19937_64 rng(11);
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    std::string junk(rng() % 48, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    if (i % 2 == 0 && !junk.empty()) junk[0] = 1;  // get past the format byte
    Result<ExtentSet> d = ExtentSet::Decode(junk);
    if (d.ok()) {
      ++accepted;
      // Anything accepted must be canonical and round-trip exactly.
      EXPECT_EQ(d->Encode(), junk);
    }
  }
  SUCCEED() << accepted << " random inputs happened to be valid";
}

TEST(ExtentSetTest, DecodeMutationsOfValidInput) {
  ExtentSet s;
  for (uint64_t i = 0; i < 50; ++i) s.Add(i * 8192 + (i % 7), 4096 + i);
  const std::string enc = s.Encode();
  std::mt19937_64 rng(5);
  for (int i = 0; i < 100000; ++i) {
    std::string m = enc;
    m[rng() % m.size()] = static_cast<char>(rng());
    Result<ExtentSet> d = ExtentSet::Decode(m);
    if (d.ok()) {
      EXPECT_EQ(d->Encode(), m);
    }
  }
}

}  // namespace
}  // namespace mirrorfs::meta
