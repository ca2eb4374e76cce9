#include "meta/change_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace mirrorfs::meta {
namespace {

using ::testing::HasSubstr;

bool SameFields(const Change& a, const Change& b) {
  return a.kind == b.kind && a.path == b.path && a.target == b.target &&
         a.offset == b.offset && a.length == b.length && a.mode == b.mode &&
         a.uid == b.uid && a.gid == b.gid && a.flags == b.flags &&
         a.atime.sec == b.atime.sec && a.atime.nsec == b.atime.nsec &&
         a.mtime.sec == b.mtime.sec && a.mtime.nsec == b.mtime.nsec;
}

// One change of every kind, with the fields that kind uses, plus edge values.
std::vector<Change> Samples() {
  static const char kData[] = "never stored";
  std::vector<Change> v;
  auto add = [&](ChangeKind kind, const std::string& path) -> Change& {
    Change c;
    c.kind = kind;
    c.path = path;
    v.push_back(c);
    return v.back();
  };
  Change& w = add(ChangeKind::kWrite, "vm/disk.img");
  w.offset = 1 << 20;
  w.length = sizeof kData;
  w.flags = kDsyncWrite;
  w.data = kData;
  Change& p = add(ChangeKind::kPunchHole, "a");
  p.offset = 4096;
  p.length = 8192;
  Change& z = add(ChangeKind::kZeroRange, "a");
  z.offset = 1;
  z.length = UINT64_MAX;
  z.flags = kKeepSize;
  Change& al = add(ChangeKind::kAllocate, "a");
  al.offset = UINT64_MAX;
  al.length = 1;
  add(ChangeKind::kTruncate, "a").length = 0;
  add(ChangeKind::kTruncate, "b").length = uint64_t{1} << 40;
  add(ChangeKind::kCreate, "dir/f").mode = 0100644;
  add(ChangeKind::kMkdir, "dir").mode = 040755;
  add(ChangeKind::kSymlink, "link").target = "../some where/\xc3\xa9";
  add(ChangeKind::kUnlink, "dir/f");
  add(ChangeKind::kRmdir, "dir");
  Change& r = add(ChangeKind::kRename, "x");
  r.target = "y/z";
  r.flags = 1;  // RENAME_NOREPLACE
  add(ChangeKind::kChmod, "x").mode = 04755;
  Change& o = add(ChangeKind::kChown, "x");
  o.uid = 1000;  // gid left unchanged
  Change& o2 = add(ChangeKind::kChown, "x");
  o2.uid = 0;
  o2.gid = UINT32_MAX - 1;
  Change& t = add(ChangeKind::kSetTimes, "x");
  t.atime = {1700000000, 123456789};
  t.mtime = {-1, 999999999};  // before the epoch
  Change& t2 = add(ChangeKind::kSetTimes, "y");
  t2.atime = {INT64_MIN, 0};
  t2.mtime = {INT64_MAX, -5};
  add(ChangeKind::kFsync, "").flags = kDataSync;
  add(ChangeKind::kUnlink, std::string(5000, 'p'));
  return v;
}

TEST(ChangeCodecTest, EveryKindRoundTrips) {
  std::vector<bool> seen(16, false);
  for (const Change& c : Samples()) {
    SCOPED_TRACE(static_cast<int>(c.kind));
    seen[static_cast<int>(c.kind)] = true;
    const std::string rec = EncodeChangeRecord(c);
    EXPECT_EQ(static_cast<uint8_t>(rec[0]), kChangeRecordVersion);
    Result<Change> back = DecodeChangeRecord(rec);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_TRUE(SameFields(c, *back));
    EXPECT_EQ(back->data, nullptr);
  }
  for (int k = 1; k <= 15; ++k) EXPECT_TRUE(seen[k]) << "kind " << k;
}

TEST(ChangeCodecTest, RecordsAreCompactAndCarryNoData) {
  Change unlink;
  unlink.kind = ChangeKind::kUnlink;
  unlink.path = "vm/disk.img";
  EXPECT_EQ(EncodeChangeRecord(unlink).size(), 4u + unlink.path.size());

  const std::string payload(4096, 'D');
  Change w;
  w.kind = ChangeKind::kWrite;
  w.path = "f";
  w.offset = 8192;
  w.length = payload.size();
  w.data = payload.data();
  const std::string rec = EncodeChangeRecord(w);
  EXPECT_LT(rec.size(), 16u);
  EXPECT_EQ(rec.find("DDDD"), std::string::npos);
}

TEST(ChangeCodecTest, DecodedStringsAreOwned) {
  Change c;
  c.kind = ChangeKind::kRename;
  c.path = "from";
  c.target = "to";
  std::string rec = EncodeChangeRecord(c);
  Result<Change> back = DecodeChangeRecord(rec);
  ASSERT_TRUE(back.ok());
  rec.assign(rec.size(), 'X');  // the input buffer goes away
  EXPECT_EQ(back->path, "from");
  EXPECT_EQ(back->target, "to");
}

TEST(ChangeCodecTest, BadRecordsAreRejectedPrecisely) {
  Change c;
  c.kind = ChangeKind::kChown;
  c.path = "p";
  c.uid = 7;
  const std::string good = EncodeChangeRecord(c);
  struct Case {
    std::string bytes;
    std::string want;
  };
  const Case cases[] = {
      {"", "0 bytes, shorter than its 3-byte header"},
      {std::string("\x02\x09\x00\x01p", 5), "unknown record version 2"},
      {std::string("\x01\x00\x00\x01p", 5), "unknown change kind 0"},
      {std::string("\x01\x10\x00\x01p", 5), "unknown change kind 16"},
      {std::string("\x01\x09\x00\x05p", 5), "path length 5 exceeds the 1"},
      {std::string("\x01\x09\x00\x03p\0q", 7), "path contains a NUL byte"},
      {std::string("\x01\x09\x01\x01p\x02q\0", 8), "target contains a NUL"},
      {std::string("\x01\x09\x00\x01pX", 6), "1 trailing bytes"},
      {std::string("\x01\x09\x00\x81\x00p", 6), "bad path length"},  // long
      {std::string("\x01\x0d\x10\x01p\x80\x80\x80\x80\x10", 10),
       "uid 4294967296 exceeds 32 bits"},
      {std::string("\x01\x01\x02\x01p"
                   "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",
                   15),
       "bad offset"},  // 65 bits
      {std::string("\x01\x0e\x80\x01p\x00\x00\x00", 8), "bad mtime.nsec"},
  };
  for (const Case& k : cases) {
    Result<Change> r = DecodeChangeRecord(k.bytes);
    ASSERT_FALSE(r.ok()) << k.want;
    EXPECT_EQ(r.status().err(), EUCLEAN);
    EXPECT_THAT(r.status().message(), HasSubstr("corrupt change record: "));
    EXPECT_THAT(r.status().message(), HasSubstr(k.want));
  }
  // Every proper prefix of a record is rejected: no field is optional once
  // announced.
  for (const Change& s : Samples()) {
    const std::string rec = EncodeChangeRecord(s);
    for (size_t n = 0; n < rec.size(); ++n) {
      EXPECT_FALSE(DecodeChangeRecord(rec.substr(0, n)).ok())
          << "kind " << static_cast<int>(s.kind) << " cut at " << n;
    }
  }
  EXPECT_TRUE(DecodeChangeRecord(good).ok());
}

// Random and mutated input must give a Change or EUCLEAN, never a crash, a
// hang or a huge allocation (run under ASan/UBSan to check the first).
TEST(ChangeCodecTest, Fuzz) {
  std::mt19937_64 rng(20240611);
  std::vector<std::string> seeds;
  for (const Change& c : Samples()) seeds.push_back(EncodeChangeRecord(c));
  int decoded = 0;
  auto check = [&](const std::string& bytes) {
    Result<Change> r = DecodeChangeRecord(bytes);
    if (r.ok()) {
      ++decoded;
      EXPECT_LE(r->path.size() + r->target.size(), bytes.size());
      EXPECT_EQ(r->data, nullptr);
      // What decodes re-encodes to something that decodes to the same.
      Result<Change> again = DecodeChangeRecord(EncodeChangeRecord(*r));
      ASSERT_TRUE(again.ok());
      EXPECT_TRUE(SameFields(*r, *again));
    } else {
      EXPECT_EQ(r.status().err(), EUCLEAN) << r.status().message();
    }
  };
  for (int i = 0; i < 200000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      // Pure noise, mostly with a valid version byte to get past it.
      bytes.resize(rng() % 40);
      for (char& ch : bytes) ch = static_cast<char>(rng());
      if (!bytes.empty() && rng() % 4 != 0) bytes[0] = 1;
    } else {
      bytes = seeds[rng() % seeds.size()];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !bytes.empty(); ++e) {
        const size_t at = rng() % bytes.size();
        switch (rng() % 4) {
          case 0:
            bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8)));
            break;
          case 1:
            bytes[at] = static_cast<char>(rng());
            break;
          case 2:
            bytes.erase(at, 1);
            break;
          default:
            bytes.insert(at, 1, static_cast<char>(rng()));
            break;
        }
      }
    }
    check(bytes);
  }
  // The mutations keep some records valid, so both paths were exercised.
  EXPECT_GT(decoded, 1000);
}

}  // namespace
}  // namespace mirrorfs::meta
