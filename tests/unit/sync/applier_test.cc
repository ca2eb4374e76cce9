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
#include <fstream>
#include <string>
#include <vector>

#include "sync/block_sums.h"
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

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

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

// A file replaced behind the Applier's back while it holds it open: changes
// and comparisons go to the file the path names now.
TEST_F(ApplierWritesTest, AReplacedFileIsWrittenAndComparedAsItIsNow) {
  ASSERT_TRUE(MakeStore("/var/tmp"));
  Applier applier(root_fd_);
  ApplyWrite(&applier, "image", Pattern('a', 8192), 0);  // now held open
  const std::string path = dir_ + "/image";
  ASSERT_EQ(::unlink(path.c_str()), 0);
  WriteFile(path, std::string(100, 'r'));
  uint64_t size = 0;
  std::string block = Pattern('a', 8192).substr(0, 4096);
  auto diff = applier.DiffBlocks("image", 0, 4096, 4096,
                                 {BlockSum(block.data(), block.size())}, &size);
  ASSERT_TRUE(diff.ok()) << diff.status().message();
  EXPECT_EQ(size, 100u);  // the new file's, not the open one's 8192
  EXPECT_EQ(diff->size(), 1u);

  ApplyWrite(&applier, "image", "xyz", 0);
  EXPECT_TRUE(ReadFile(path) == "xyz" + std::string(97, 'r'));

  diff = applier.DiffBlocks("none", 0, 4096, 4096,
                            {BlockSum(block.data(), block.size())}, &size);
  ASSERT_TRUE(diff.ok());
  EXPECT_EQ(size, kNoFile);
  EXPECT_EQ(diff->size(), 1u);
}

TEST_F(ApplierWritesTest, ListsTheStoreInPathOrderByParts) {
  ASSERT_TRUE(MakeStore("/var/tmp"));
  Applier applier(root_fd_);
  stdfs::create_directories(dir_ + "/d/e");
  stdfs::create_directories(dir_ + "/.mirrorfs");
  WriteFile(dir_ + "/d/x", "abc");
  WriteFile(dir_ + "/d.y", "");
  stdfs::create_symlink("d", dir_ + "/l");
  ASSERT_EQ(::mkfifo((dir_ + "/fifo").c_str(), 0600), 0);  // not mirrored
  std::vector<meta::NamespaceEntry> part;
  bool last = false;
  ASSERT_EQ(::chmod((dir_ + "/d/x").c_str(), 0640), 0);
  ASSERT_EQ(::lchown((dir_ + "/l").c_str(), 1234, 5678), 0);
  ASSERT_TRUE(applier.List("", 100, kMaxListingBytes, &part, &last).ok());
  std::vector<std::string> paths;
  for (const auto& e : part) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"d", "d.y", "d/e", "d/x", "l"}));
  EXPECT_TRUE(last);
  EXPECT_EQ(part[3].size, 3u);
  EXPECT_EQ(part[3].mode, 0640u);
  EXPECT_EQ(part[3].target, "");
  EXPECT_EQ(part[0].type, meta::NamespaceEntry::Type::kDirectory);
  EXPECT_EQ(part[4].type, meta::NamespaceEntry::Type::kSymlink);
  EXPECT_EQ(part[4].target, "d");
  EXPECT_EQ(part[4].uid, 1234u);
  EXPECT_EQ(part[4].gid, 5678u);
  ASSERT_TRUE(applier.List("d.y", 2, kMaxListingBytes, &part, &last).ok());
  ASSERT_EQ(part.size(), 2u);
  EXPECT_EQ(part[0].path, "d/e");
  EXPECT_EQ(part[1].path, "d/x");
  EXPECT_FALSE(last);
  ASSERT_TRUE(applier.List("d/x", 2, kMaxListingBytes, &part, &last).ok());
  ASSERT_EQ(part.size(), 1u);
  EXPECT_TRUE(last);
  // The byte budget ("d" 1, "d.y" 3, "d/e" 3): a part is never empty.
  ASSERT_TRUE(applier.List("", 100, 4, &part, &last).ok());
  ASSERT_EQ(part.size(), 2u);
  EXPECT_FALSE(last);
  ASSERT_TRUE(applier.List("", 100, 0, &part, &last).ok());
  ASSERT_EQ(part.size(), 1u);
  EXPECT_EQ(part[0].path, "d");
  EXPECT_FALSE(last);
}

}  // namespace
}  // namespace mirrorfs::sync
