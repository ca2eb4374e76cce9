// StoreWriter on real file systems: large writes of whole pages uncached
// (dropped from the page cache once on disk) where the kernel takes
// RWF_DONTCACHE; part pages, small writes and --cached-writes kept cached;
// a refusal (tmpfs) falls back once; and the bytes on disk are the same
// whichever way they were written. Large reads leave the store's cache
// (dropped behind); small ones stay cached.
#include "meta/store_writer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/support/test_files.h"

namespace mirrorfs::meta {
namespace {

namespace stdfs = std::filesystem;
using testing_support::CachedPages;
using testing_support::MakeTempDir;
using testing_support::Pattern;
using testing_support::ReadFile;
using testing_support::TakesUncachedWrites;
using testing_support::WaitCachedPages;

constexpr uint64_t kMiB = 1u << 20;

class StoreWriterTest : public ::testing::Test {
 protected:
  // A fresh folder under `parent` with an empty file "image" open in fd_.
  bool MakeFile(const std::string& parent) {
    dir_ = MakeTempDir(parent, "store_writer_test");
    if (dir_.empty()) return false;
    path_ = dir_ + "/image";
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    return fd_ >= 0;
  }
  void TearDown() override {
    if (fd_ >= 0) ::close(fd_);
    if (!dir_.empty()) stdfs::remove_all(dir_);
  }
  void Write(StoreWriter* writer, const std::string& data, uint64_t offset) {
    auto s = writer->Pwrite(fd_, data.data(), data.size(), offset, "image");
    ASSERT_TRUE(s.ok()) << s.message();
  }
  static void Overlay(std::string* model, const std::string& data,
                      uint64_t offset) {
    if (model->size() < offset + data.size()) {
      model->resize(offset + data.size(), '\0');
    }
    model->replace(offset, data.size(), data);
  }

  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

TEST(StoreWriterRuleTest, WholePagesOfAtLeastTheMinimumGoUncached) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const size_t min = StoreWriter::kMinUncachedBytes;
  EXPECT_TRUE(StoreWriter::Uncached(0, min));
  EXPECT_TRUE(StoreWriter::Uncached(3 * page, 256 * page));
  EXPECT_TRUE(StoreWriter::Uncached(page, 1u << 20));
  EXPECT_FALSE(StoreWriter::Uncached(0, 0));
  EXPECT_FALSE(StoreWriter::Uncached(0, page));  // whole, but small
  EXPECT_FALSE(StoreWriter::Uncached(0, min - page));
  EXPECT_FALSE(StoreWriter::Uncached(0, min + 1));
  EXPECT_FALSE(StoreWriter::Uncached(1, min));
  EXPECT_FALSE(StoreWriter::Uncached(page, min + 512));
}

TEST_F(StoreWriterTest, WholePagesGoUncachedAndPartPagesStayCached) {
  ASSERT_TRUE(MakeFile("/var/tmp"));  // a disk file system, as stores are
  if (!TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  StoreWriter writer;
  std::string model;
  std::string whole = Pattern('a', 2 * kMiB);
  Write(&writer, whole, 0);
  Overlay(&model, whole, 0);
  std::string tail = Pattern('t', 100);  // part of the page after them
  Write(&writer, tail, 2 * kMiB);
  Overlay(&model, tail, 2 * kMiB);
  std::string small = Pattern('s', 4096);  // a whole page, but small
  Write(&writer, small, 3 * kMiB);
  Overlay(&model, small, 3 * kMiB);
  ASSERT_EQ(::fdatasync(fd_), 0);
  EXPECT_TRUE(writer.uncached());
  EXPECT_EQ(WaitCachedPages(path_, 0, 2 * kMiB, 0), 0);
  EXPECT_EQ(CachedPages(path_, 2 * kMiB, 100), 1);
  EXPECT_EQ(CachedPages(path_, 3 * kMiB, 4096), 1);
  // An unaligned overwrite across both: read back from disk, merged.
  std::string across = Pattern('x', kMiB + 7);
  Write(&writer, across, kMiB + 5);
  Overlay(&model, across, kMiB + 5);
  ASSERT_EQ(::fdatasync(fd_), 0);
  EXPECT_TRUE(ReadFile(path_) == model);
}

TEST_F(StoreWriterTest, CachedWritesKeepEveryPage) {
  ASSERT_TRUE(MakeFile("/var/tmp"));
  StoreWriter writer(/*cached=*/true);
  std::string whole = Pattern('c', kMiB);
  Write(&writer, whole, 0);
  ASSERT_EQ(::fdatasync(fd_), 0);
  EXPECT_FALSE(writer.uncached());
  EXPECT_EQ(CachedPages(path_, 0, kMiB), static_cast<long>(kMiB / 4096));
  EXPECT_TRUE(ReadFile(path_) == whole);
}

TEST_F(StoreWriterTest, FallsBackToCachedWritesWhereTheyAreRefused) {
  // tmpfs keeps everything in the page cache: it refuses RWF_DONTCACHE.
  if (!MakeFile("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  if (TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this tmpfs takes RWF_DONTCACHE";
  }
  StoreWriter writer;
  EXPECT_TRUE(writer.uncached());
  std::string model;
  std::string part = Pattern('p', 10);  // cached anyway: nothing refused
  Write(&writer, part, 3);
  Overlay(&model, part, 3);
  EXPECT_TRUE(writer.uncached());
  std::string whole = Pattern('w', kMiB);
  Write(&writer, whole, kMiB);
  Overlay(&model, whole, kMiB);
  EXPECT_FALSE(writer.uncached());  // refused once, written cached
  Write(&writer, whole, 2 * kMiB);
  Overlay(&model, whole, 2 * kMiB);
  EXPECT_TRUE(ReadFile(path_) == model);
}

TEST_F(StoreWriterTest, LargeReadsLeaveNoPagesBehindSmallOnesStayCached) {
  ASSERT_TRUE(MakeFile("/var/tmp"));
  if (!TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  std::string data = Pattern('r', 2 * kMiB);
  ASSERT_EQ(::pwrite(fd_, data.data(), data.size(), 0),
            static_cast<ssize_t>(data.size()));
  ASSERT_EQ(::fdatasync(fd_), 0);
  ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);
  ASSERT_EQ(WaitCachedPages(path_, 0, 2 * kMiB, 0), 0);
  StoreWriter writer;

  // A large read (dropped behind), past the end: the file's bytes only.
  std::string got(3 * kMiB, '\0');
  auto n = writer.Pread(fd_, got.data(), got.size(), 0, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(*n, data.size());
  got.resize(*n);
  EXPECT_TRUE(got == data);
  // What the read brought in is dropped: later small writes dirty single
  // pages, not the read-ahead's large folios.
  EXPECT_EQ(WaitCachedPages(path_, 0, 2 * kMiB, 0), 0);

  // A small read around a page a small write left cached: it goes through
  // the page cache (keeping the store's read-ahead), so the pages it read
  // stay, the written one with them.
  std::string page = Pattern('d', 4096);
  Write(&writer, page, kMiB);
  data.replace(kMiB, page.size(), page);
  got.assign(3 * 4096, '\0');
  n = writer.Pread(fd_, got.data(), got.size(), kMiB - 4096, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(*n, got.size());
  EXPECT_TRUE(got == data.substr(kMiB - 4096, got.size()));
  EXPECT_EQ(CachedPages(path_, kMiB - 4096, 3 * 4096), 3);

  // A large read over it starts its write-back and drops it once clean:
  // the bytes are the same either way.
  got.assign(kMiB, '\0');
  n = writer.Pread(fd_, got.data(), got.size(), kMiB / 2, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_TRUE(got == data.substr(kMiB / 2, kMiB));
  ASSERT_EQ(::fdatasync(fd_), 0);
  EXPECT_TRUE(ReadFile(path_) == data);
}

TEST_F(StoreWriterTest, SequentialReadsDropWhatLiesBehindThem) {
  ASSERT_TRUE(MakeFile("/var/tmp"));
  if (!TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  // Long enough for the read-ahead to grow to folios larger than a step.
  constexpr uint64_t kSize = 64 * kMiB;
  std::string data = Pattern('s', kSize);
  ASSERT_EQ(::pwrite(fd_, data.data(), data.size(), 0),
            static_cast<ssize_t>(data.size()));
  ASSERT_EQ(::fdatasync(fd_), 0);
  ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);
  ASSERT_EQ(WaitCachedPages(path_, 0, kSize, 0), 0);

  // A reader in the mount's read-ahead steps (256 KiB, from the middle of
  // a 2 MiB block): the store reads ahead of it (perhaps in folios larger
  // than a step), and what it passed is dropped, folios that straddled
  // its steps included.
  StoreWriter writer;
  constexpr size_t kStep = 256 * 1024;
  std::string got(kStep, '\0');
  uint64_t at = 3 * kMiB;
  for (; at + kStep <= kSize; at += kStep) {
    auto n = writer.Pread(fd_, got.data(), kStep, at, "image");
    ASSERT_TRUE(n.ok()) << n.status().message();
    ASSERT_EQ(*n, kStep);
    ASSERT_TRUE(got == data.substr(at, kStep)) << "at " << at;
    // Folios are naturally aligned and at most kDropBehindBytes: every
    // block before the one the read ended in is whole behind it, and gone.
    const uint64_t end = at + kStep;
    const uint64_t passed = end - end % StoreWriter::kDropBehindBytes;
    ASSERT_EQ(WaitCachedPages(path_, 0, passed, 0), 0) << "read at " << at;
  }
  // The last read ended at the end of the file: nothing of it stays.
  ASSERT_EQ(at, kSize);
  EXPECT_EQ(WaitCachedPages(path_, 0, kSize, 0), 0);

  // A small read (an application's random read) stays cached, with what
  // the store's read-ahead brought in around it.
  ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);
  ASSERT_EQ(WaitCachedPages(path_, 0, kSize, 0), 0);
  std::string small(4096, '\0');
  auto n = writer.Pread(fd_, small.data(), small.size(), kMiB, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_TRUE(small == data.substr(kMiB, 4096));
  EXPECT_EQ(CachedPages(path_, kMiB, 4096), 1);

  // --cached-writes: reads stay cached.
  StoreWriter cached(/*cached=*/true);
  n = cached.Pread(fd_, got.data(), kStep, 0, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(CachedPages(path_, 0, kStep), kStep / 4096);
}

TEST_F(StoreWriterTest, ReadsWorkWhereUncachedIOIsRefused) {
  if (!MakeFile("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  std::string data = Pattern('m', 100000);
  ASSERT_EQ(::pwrite(fd_, data.data(), data.size(), 0),
            static_cast<ssize_t>(data.size()));
  StoreWriter writer;
  const bool refused = !TakesUncachedWrites(dir_);
  // A large read asks for no flag (it drops behind): nothing to refuse.
  std::string got(data.size() + 10, '\0');
  auto n = writer.Pread(fd_, got.data(), got.size(), 0, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(*n, data.size());
  EXPECT_TRUE(writer.uncached());
  EXPECT_TRUE(got.substr(0, *n) == data);
  // Nor does a small one (it stays cached).
  data.resize(10000);
  got.assign(data.size() + 10, '\0');
  ASSERT_EQ(::ftruncate(fd_, static_cast<off_t>(data.size())), 0);
  n = writer.Pread(fd_, got.data(), got.size(), 0, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(*n, data.size());
  EXPECT_TRUE(writer.uncached());
  got.resize(*n);
  EXPECT_TRUE(got == data);
  // A large write of whole pages asks for it: refused once, every later
  // read and write is cached.
  std::string pages = Pattern('w', 64 * 1024);
  ASSERT_TRUE(writer.Pwrite(fd_, pages.data(), pages.size(), 0, "image").ok());
  EXPECT_EQ(writer.uncached(), !refused);
  got.assign(pages.size(), '\0');
  n = writer.Pread(fd_, got.data(), got.size(), 0, "image");
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_TRUE(got == pages);
  auto bad = writer.Pread(-1, got.data(), 1, 0, "image");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("read image"), std::string::npos);
}

}  // namespace
}  // namespace mirrorfs::meta
