// The Applier's data writes on real file systems: whole pages uncached
// (RWF_DONTCACHE) where the kernel and file system take it, cached where
// they do not (tmpfs refuses it) or with SetCachedWrites, and the same
// bytes on disk either way. (meta::StoreWriter's own test covers the rule.)
#include "sync/applier.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/support/test_files.h"

namespace mirrorfs::sync {
namespace {

namespace stdfs = std::filesystem;
using testing_support::CachedPages;
using testing_support::MakeTempDir;
using testing_support::Pattern;
using testing_support::ReadFile;
using testing_support::TakesUncachedWrites;
using testing_support::WaitCachedPages;

constexpr size_t kUnaligned = (3u << 20) + 5;  // not a whole number of pages

class ApplierWritesTest : public ::testing::Test {
 protected:
  // A fresh store folder under `parent`; false if `parent` is unusable.
  bool MakeStore(const std::string& parent) {
    dir_ = MakeTempDir(parent, "applier_test");
    if (dir_.empty()) return false;
    root_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return root_fd_ >= 0;
  }

  void TearDown() override {
    if (root_fd_ >= 0) ::close(root_fd_);
    if (!dir_.empty()) stdfs::remove_all(dir_);
  }

  // Creates `path`, writes `data` at `offset` through `applier`.
  void ApplyWrite(Applier* applier, const std::string& path,
                  const std::string& data, uint64_t offset) {
    meta::Change create;
    create.kind = meta::ChangeKind::kCreate;
    create.path = path;
    create.mode = 0644;
    auto created = applier->Apply(create);
    ASSERT_TRUE(created.ok() || created.err() == EEXIST) << created.message();
    meta::Change write;
    write.kind = meta::ChangeKind::kWrite;
    write.path = path;
    write.offset = offset;
    write.length = data.size();
    write.data = data.data();
    auto written = applier->Apply(write);
    ASSERT_TRUE(written.ok()) << written.message();
  }

  std::string dir_;
  int root_fd_ = -1;
};

TEST_F(ApplierWritesTest, WritesWholePagesUncachedWhereTheFileSystemTakesIt) {
  ASSERT_TRUE(MakeStore("/var/tmp"));  // a disk file system, as stores are
  if (!TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  Applier applier(root_fd_);
  std::string whole = Pattern('a', 3u << 20);
  std::string unaligned = Pattern('k', kUnaligned);
  ApplyWrite(&applier, "image", whole, 0);
  ASSERT_TRUE(applier.SyncAll().ok());
  EXPECT_TRUE(applier.writes_uncached());
  EXPECT_EQ(WaitCachedPages(dir_ + "/image", 0, 3u << 20, 0), 0);
  ApplyWrite(&applier, "image", unaligned, 4096 + 7);  // overlaps, extends
  ASSERT_TRUE(applier.SyncAll().ok());
  std::string expected = whole.substr(0, 4096 + 7) + unaligned;
  EXPECT_TRUE(ReadFile(dir_ + "/image") == expected);
}

TEST_F(ApplierWritesTest, CachedWritesKeepThePages) {
  ASSERT_TRUE(MakeStore("/var/tmp"));
  Applier applier(root_fd_);
  applier.SetCachedWrites(true);
  std::string whole = Pattern('c', 1u << 20);
  ApplyWrite(&applier, "image", whole, 0);
  ASSERT_TRUE(applier.SyncAll().ok());
  EXPECT_FALSE(applier.writes_uncached());
  EXPECT_EQ(CachedPages(dir_ + "/image", 0, 1u << 20), (1 << 20) / 4096);
  EXPECT_TRUE(ReadFile(dir_ + "/image") == whole);
}

TEST_F(ApplierWritesTest, FallsBackToCachedWritesWhereTheyAreRefused) {
  // tmpfs keeps everything in the page cache: it refuses RWF_DONTCACHE.
  if (!MakeStore("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  if (TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this tmpfs takes RWF_DONTCACHE";
  }
  Applier applier(root_fd_);
  std::string first = Pattern('a', 3u << 20);  // whole pages: refused
  std::string second = Pattern('k', kUnaligned);
  ApplyWrite(&applier, "image", first, 0);
  EXPECT_FALSE(applier.writes_uncached());
  ApplyWrite(&applier, "image", second, 1u << 20);
  std::string expected = first.substr(0, 1u << 20) + second;
  EXPECT_TRUE(ReadFile(dir_ + "/image") == expected);
}

}  // namespace
}  // namespace mirrorfs::sync
