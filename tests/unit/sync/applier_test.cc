// The Applier's data writes on real file systems: uncached (RWF_DONTCACHE)
// where the kernel and file system take it, cached where they do not
// (tmpfs refuses it), and the same bytes on disk either way.
#include "sync/applier.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace mirrorfs::sync {
namespace {

namespace stdfs = std::filesystem;

// Linux 6.14's value, for headers that predate it.
constexpr int kDontCache = 0x00000080;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether this kernel writes files in `dir` uncached.
bool TakesUncachedWrites(const std::string& dir) {
  std::string probe = dir + "/probe";
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  char byte = 'p';
  struct iovec iov = {&byte, 1};
  bool ok = ::pwritev2(fd, &iov, 1, 0, kDontCache) == 1;
  ::close(fd);
  ::unlink(probe.c_str());
  return ok;
}

class ApplierWritesTest : public ::testing::Test {
 protected:
  // A fresh store folder under `parent`; false if `parent` is unusable.
  bool MakeStore(const std::string& parent) {
    std::string templ = parent + "/applier_test.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) return false;
    dir_ = templ;
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

  // 3 MiB + 5 bytes of a pattern, so that writes are not page-aligned.
  static std::string Pattern(char seed) {
    std::string data((3u << 20) + 5, '\0');
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = static_cast<char>(seed + i * 31 / 4096);
    }
    return data;
  }

  std::string dir_;
  int root_fd_ = -1;
};

TEST_F(ApplierWritesTest, WritesUncachedWhereTheFileSystemTakesIt) {
  ASSERT_TRUE(MakeStore("/var/tmp"));  // a disk file system, as stores are
  if (!TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  Applier applier(root_fd_);
  std::string first = Pattern('a');
  std::string second = Pattern('k');
  ApplyWrite(&applier, "image", first, 0);
  ApplyWrite(&applier, "image", second, 4096 + 7);  // overlaps, extends
  EXPECT_TRUE(applier.writes_uncached());
  ASSERT_TRUE(applier.SyncAll().ok());
  std::string expected = first.substr(0, 4096 + 7) + second;
  EXPECT_TRUE(ReadAll(dir_ + "/image") == expected);
}

TEST_F(ApplierWritesTest, FallsBackToCachedWritesWhereTheyAreRefused) {
  // tmpfs keeps everything in the page cache: it refuses RWF_DONTCACHE.
  if (!MakeStore("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  if (TakesUncachedWrites(dir_)) {
    GTEST_SKIP() << "this tmpfs takes RWF_DONTCACHE";
  }
  Applier applier(root_fd_);
  std::string first = Pattern('a');
  std::string second = Pattern('k');
  ApplyWrite(&applier, "image", first, 0);
  EXPECT_FALSE(applier.writes_uncached());
  ApplyWrite(&applier, "image", second, 1u << 20);
  std::string expected = first.substr(0, 1u << 20) + second;
  EXPECT_TRUE(ReadAll(dir_ + "/image") == expected);
}

}  // namespace
}  // namespace mirrorfs::sync
