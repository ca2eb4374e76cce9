// Volume core tests on a real store in a temporary folder, with a Mirror
// that records what it is handed.
#include "fs/volume.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "tests/support/test_files.h"

namespace mirrorfs::fs {
namespace {

namespace stdfs = std::filesystem;

struct Recorded {
  meta::ChangeKind kind;
  std::string path;
  std::string target;
  uint64_t offset;
  uint64_t length;
  uint32_t mode;
  uint32_t uid;
  uint32_t gid;
  uint32_t flags;
  meta::Timespec atime;
  meta::Timespec mtime;
  std::string data;
};

class RecordingMirror : public meta::Mirror {
 public:
  std::shared_ptr<meta::Completion> Submit(const meta::Change& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    changes_.push_back(Recorded{c.kind, c.path, c.target, c.offset, c.length,
                                c.mode, c.uid, c.gid, c.flags, c.atime, c.mtime,
                                c.data ? std::string(c.data, c.length) : ""});
    // One "peer" that is already done: Wait() must return at once.
    auto completion = std::make_shared<meta::Completion>(1);
    completion->Done();
    return completion;
  }
  void Diverged(const meta::Change& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    diverged_.push_back(Recorded{c.kind, c.path, c.target, c.offset, c.length,
                                 c.mode, c.uid, c.gid, c.flags, c.atime,
                                 c.mtime, ""});
  }
  std::vector<Recorded> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(changes_, {});
  }
  std::vector<Recorded> TakeDiverged() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(diverged_, {});
  }

 private:
  std::mutex mu_;
  std::vector<Recorded> changes_;
  std::vector<Recorded> diverged_;
};

class VolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mfs_volume_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    store_ = tmpl;
    stdfs::create_directory(store_ / ".mirrorfs");
    auto v = Volume::Open(VolumeOptions{store_.string()}, &mirror_);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    volume_ = std::move(v.value());
  }
  void TearDown() override {
    volume_.reset();
    stdfs::remove_all(store_);
  }

  // Creates `name` in `parent`, returns its entry and an open handle.
  std::pair<Entry, Handle> CreateFile(Ino parent, const char* name,
                                      int flags = O_RDWR) {
    auto r = volume_->Create(parent, name, 0644, flags, caller_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::pair<Entry, Handle>{};
  }

  stdfs::path store_;
  RecordingMirror mirror_;
  std::unique_ptr<Volume> volume_;
  Caller caller_{0, 0};
};

TEST_F(VolumeTest, OpenRejectsRelativeAndMissingStores) {
  EXPECT_EQ(
      Volume::Open(VolumeOptions{"relative/path"}, nullptr).status().err(),
      EINVAL);
  EXPECT_EQ(
      Volume::Open(VolumeOptions{"/nonexistent/mfs"}, nullptr).status().err(),
      ENOENT);
}

TEST_F(VolumeTest, StateDirectoryIsInvisibleAndReserved) {
  EXPECT_EQ(volume_->Lookup(kRootIno, ".mirrorfs").status().err(), ENOENT);
  EXPECT_EQ(volume_->Mkdir(kRootIno, ".mirrorfs", 0755, caller_).status().err(),
            EPERM);
  EXPECT_EQ(volume_->Create(kRootIno, ".mirrorfs", 0644, O_RDWR, caller_)
                .status()
                .err(),
            EPERM);
  EXPECT_EQ(
      volume_->Symlink("x", kRootIno, ".mirrorfs", caller_).status().err(),
      EPERM);
  auto [e, fh] = CreateFile(kRootIno, "a");
  volume_->Release(fh);
  EXPECT_EQ(volume_->Rename(kRootIno, "a", kRootIno, ".mirrorfs", 0).err(),
            EPERM);
  EXPECT_EQ(volume_->Unlink(kRootIno, ".mirrorfs").err(), ENOENT);

  auto dh = volume_->OpenDir(kRootIno);
  ASSERT_TRUE(dh.ok());
  std::vector<std::string> names;
  ASSERT_TRUE(volume_
                  ->ReadDir(kRootIno, *dh, 0, true,
                            [&](const DirEntry& d) {
                              std::string n = d.name;
                              if (n != "." && n != "..") names.push_back(n);
                              return true;
                            })
                  .ok());
  volume_->ReleaseDir(*dh);
  EXPECT_EQ(names, std::vector<std::string>{"a"});
  // A subdirectory may hold a ".mirrorfs" of its own.
  auto d = volume_->Mkdir(kRootIno, "sub", 0755, caller_);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(volume_->Mkdir(d->ino, ".mirrorfs", 0755, caller_).ok());
}

TEST_F(VolumeTest, NamespaceChangesCarryStoreRelativePaths) {
  auto dir = volume_->Mkdir(kRootIno, "vm", 0750, caller_);
  ASSERT_TRUE(dir.ok());
  auto [file, fh] = CreateFile(dir->ino, "disk.img");
  ASSERT_TRUE(volume_->Write(fh, "hello", 5, 10).ok());
  ASSERT_TRUE(volume_->Rename(kRootIno, "vm", kRootIno, "vms", 0).ok());
  ASSERT_TRUE(volume_->Write(fh, "x", 1, 0).ok());
  EXPECT_EQ(*volume_->PathForTest(file.ino), "vms/disk.img");
  auto link = volume_->Symlink("disk.img", dir->ino, "current", caller_);
  ASSERT_TRUE(link.ok());
  ASSERT_TRUE(volume_->Unlink(dir->ino, "current").ok());
  volume_->Release(fh);

  auto changes = mirror_.Take();
  ASSERT_EQ(changes.size(), 7u);
  EXPECT_EQ(changes[0].kind, meta::ChangeKind::kMkdir);
  EXPECT_EQ(changes[0].path, "vm");
  mode_t mask = umask(0);
  umask(mask);
  EXPECT_EQ(changes[0].mode, 0750u & ~mask);  // the mode as created
  EXPECT_EQ(changes[1].kind, meta::ChangeKind::kCreate);
  EXPECT_EQ(changes[1].path, "vm/disk.img");
  EXPECT_EQ(changes[2].kind, meta::ChangeKind::kWrite);
  EXPECT_EQ(changes[2].path, "vm/disk.img");
  EXPECT_EQ(changes[2].offset, 10u);
  EXPECT_EQ(changes[2].data, "hello");
  EXPECT_EQ(changes[3].kind, meta::ChangeKind::kRename);
  EXPECT_EQ(changes[3].path, "vm");
  EXPECT_EQ(changes[3].target, "vms");
  EXPECT_EQ(changes[4].kind, meta::ChangeKind::kWrite);
  EXPECT_EQ(changes[4].path, "vms/disk.img");
  EXPECT_EQ(changes[5].kind, meta::ChangeKind::kSymlink);
  EXPECT_EQ(changes[5].path, "vms/current");
  EXPECT_EQ(changes[5].target, "disk.img");
  EXPECT_EQ(changes[6].kind, meta::ChangeKind::kUnlink);
  EXPECT_EQ(changes[6].path, "vms/current");
}

TEST_F(VolumeTest, UnlinkedOpenFileIsNotMirrored) {
  auto [file, fh] = CreateFile(kRootIno, "tmp");
  mirror_.Take();
  ASSERT_TRUE(volume_->Unlink(kRootIno, "tmp").ok());
  ASSERT_TRUE(volume_->Write(fh, "data", 4, 0).ok());
  ASSERT_TRUE(volume_->Fsync(fh, false).ok());
  char buf[8];
  auto n = volume_->Read(fh, buf, sizeof(buf), 0);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buf, *n), "data");
  volume_->Release(fh);
  volume_->Forget(file.ino, 1);
  auto changes = mirror_.Take();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].kind, meta::ChangeKind::kUnlink);
}

TEST_F(VolumeTest, RenameOverAndExchange) {
  auto [a, fa] = CreateFile(kRootIno, "a");
  auto [b, fb] = CreateFile(kRootIno, "b");
  ASSERT_TRUE(
      volume_->Rename(kRootIno, "a", kRootIno, "b", RENAME_NOREPLACE).err() ==
      EEXIST);
  ASSERT_TRUE(
      volume_->Rename(kRootIno, "a", kRootIno, "b", RENAME_EXCHANGE).ok());
  EXPECT_EQ(*volume_->PathForTest(a.ino), "b");
  EXPECT_EQ(*volume_->PathForTest(b.ino), "a");
  ASSERT_TRUE(volume_->Rename(kRootIno, "a", kRootIno, "b", 0).ok());
  EXPECT_EQ(*volume_->PathForTest(b.ino), "b");
  EXPECT_EQ(volume_->PathForTest(a.ino).status().err(), ENOENT);  // replaced
  mirror_.Take();
  ASSERT_TRUE(volume_->Write(fa, "z", 1, 0).ok());  // unlinked: not mirrored
  EXPECT_TRUE(mirror_.Take().empty());
  volume_->Release(fa);
  volume_->Release(fb);
}

TEST_F(VolumeTest, LinkIsRefused) {
  auto [a, fa] = CreateFile(kRootIno, "a");
  volume_->Release(fa);
  auto s = volume_->Link(a.ino, kRootIno, "b");
  EXPECT_EQ(s.err(), EPERM);
  EXPECT_NE(s.message().find("hard links"), std::string::npos);
}

TEST_F(VolumeTest, DataChangesAndFlags) {
  auto r = volume_->Create(kRootIno, "img", 0600, O_RDWR | O_DSYNC, caller_);
  ASSERT_TRUE(r.ok());
  auto [e, fh] = *r;
  mirror_.Take();
  ASSERT_TRUE(volume_->Write(fh, "abcd", 4, 0).ok());
  ASSERT_TRUE(volume_->Fallocate(fh, 0, 0, 1 << 20).ok());
  ASSERT_TRUE(volume_
                  ->Fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              4096, 8192)
                  .ok());
  auto zr = volume_->Fallocate(fh, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                               0, 4096);
  EXPECT_EQ(volume_->Fallocate(fh, FALLOC_FL_COLLAPSE_RANGE, 0, 4096).err(),
            EOPNOTSUPP);
  ASSERT_TRUE(volume_->Fsync(fh, true).ok());
  volume_->Release(fh);
  auto changes = mirror_.Take();
  size_t i = 0;
  ASSERT_GE(changes.size(), 4u);
  EXPECT_EQ(changes[i].kind, meta::ChangeKind::kWrite);
  EXPECT_EQ(changes[i++].flags, meta::kDsyncWrite);
  EXPECT_EQ(changes[i].kind, meta::ChangeKind::kAllocate);
  EXPECT_EQ(changes[i++].length, 1u << 20);
  EXPECT_EQ(changes[i].kind, meta::ChangeKind::kPunchHole);
  EXPECT_EQ(changes[i].offset, 4096u);
  EXPECT_EQ(changes[i++].length, 8192u);
  if (zr.ok()) {  // zero range depends on the store's file system
    EXPECT_EQ(changes[i].kind, meta::ChangeKind::kZeroRange);
    EXPECT_EQ(changes[i++].flags, meta::kKeepSize);
  }
  ASSERT_EQ(changes.size(), i + 1);
  EXPECT_EQ(changes[i].kind, meta::ChangeKind::kFsync);
  EXPECT_EQ(changes[i].path, "img");
  EXPECT_EQ(changes[i].flags, meta::kDataSync);
}

// A write goes to the mirror while the local write runs; when the local
// one fails, the mirror hears that the peers may hold what this node lacks.
TEST_F(VolumeTest, AWriteThatFailsHereIsReportedAsDiverged) {
  auto [e, fh] = CreateFile(kRootIno, "img");
  mirror_.Take();
  // A file size limit makes the local write fail (EFBIG) on any file system.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 1 << 20;
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  auto failed = volume_->Write(fh, "abcd", 4, 2 << 20);
  auto fine = volume_->Write(fh, "efgh", 4, 0);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  volume_->Release(fh);

  EXPECT_EQ(failed.status().err(), EFBIG);
  EXPECT_TRUE(fine.ok()) << fine.status().ToString();
  auto sent = mirror_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].offset, 2u << 20);
  auto diverged = mirror_.TakeDiverged();
  ASSERT_EQ(diverged.size(), 1u);
  EXPECT_EQ(diverged[0].kind, meta::ChangeKind::kWrite);
  EXPECT_EQ(diverged[0].path, "img");
  EXPECT_EQ(diverged[0].offset, 2u << 20);
  EXPECT_EQ(diverged[0].length, 4u);
}

TEST_F(VolumeTest, WholePagesAreNotCachedTwiceUnlessAsked) {
  // The mount caches what applications read; the store's copy of written
  // pages is dropped once on disk (meta::StoreWriter), unless the volume
  // was opened with cached_writes.
  if (!testing_support::TakesUncachedWrites(store_.string())) {
    GTEST_SKIP() << "this kernel or file system has no RWF_DONTCACHE";
  }
  const std::string data(1u << 20, 'v');
  const long pages = static_cast<long>(data.size() / 4096);
  for (bool cached : {false, true}) {
    VolumeOptions options{store_.string()};
    options.cached_writes = cached;
    auto v = Volume::Open(options, &mirror_);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    const char* name = cached ? "cached" : "uncached";
    auto r = (*v)->Create(kRootIno, name, 0600, O_RDWR, caller_);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    Handle fh = r->second;
    ASSERT_TRUE((*v)->Write(fh, data.data(), data.size(), 0).ok());
    ASSERT_TRUE((*v)->Fsync(fh, true).ok());
    (*v)->Release(fh);
    std::string path = (store_ / name).string();
    EXPECT_EQ(testing_support::WaitCachedPages(path, 0, data.size(),
                                               cached ? pages : 0),
              cached ? pages : 0)
        << name;
  }
}

TEST_F(VolumeTest, SetAttrMirrorsResolvedValues) {
  auto [e, fh] = CreateFile(kRootIno, "f");
  mirror_.Take();
  AttrChange change;
  change.valid = AttrChange::kMode | AttrChange::kSize | AttrChange::kAtime |
                 AttrChange::kMtime | AttrChange::kMtimeNow;
  change.mode = S_IFREG | 0640;
  change.size = 12345;
  change.atime = {1000, 5};
  auto st = volume_->SetAttr(e.ino, change, 0);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->st_mode & 07777, 0640u);
  EXPECT_EQ(st->st_size, 12345);
  EXPECT_EQ(st->st_atim.tv_sec, 1000);
  auto changes = mirror_.Take();
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].kind, meta::ChangeKind::kChmod);
  EXPECT_EQ(changes[0].mode, 0640u);
  EXPECT_EQ(changes[1].kind, meta::ChangeKind::kTruncate);
  EXPECT_EQ(changes[1].length, 12345u);
  EXPECT_EQ(changes[2].kind, meta::ChangeKind::kSetTimes);
  EXPECT_EQ(changes[2].atime.sec, 1000);
  EXPECT_EQ(changes[2].atime.nsec, 5);
  EXPECT_EQ(changes[2].mtime.sec, st->st_mtim.tv_sec);  // "now", resolved
  EXPECT_EQ(changes[2].mtime.nsec, st->st_mtim.tv_nsec);
  volume_->Release(fh);
}

TEST_F(VolumeTest, OpenTruncAndDirectAreHandled) {
  auto [e, fh] = CreateFile(kRootIno, "f");
  ASSERT_TRUE(volume_->Write(fh, "0123456789", 10, 0).ok());
  volume_->Release(fh);
  mirror_.Take();
  auto h = volume_->Open(e.ino, O_WRONLY | O_TRUNC | O_DIRECT);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  // An unaligned write works: the store file is not opened O_DIRECT.
  ASSERT_TRUE(volume_->Write(*h, "abc", 3, 1).ok());
  volume_->Release(*h);
  auto st = volume_->GetAttr(e.ino);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 4);
  auto changes = mirror_.Take();
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].kind, meta::ChangeKind::kTruncate);
  EXPECT_EQ(changes[0].length, 0u);
  EXPECT_EQ(changes[1].kind, meta::ChangeKind::kWrite);
}

TEST_F(VolumeTest, CreateGivesNodesToTheCaller) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  Caller user{1234, 5678};
  auto r = volume_->Create(kRootIno, "owned", 0644, O_RDWR, user);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first.attr.st_uid, 1234u);
  EXPECT_EQ(r->first.attr.st_gid, 5678u);
  volume_->Release(r->second);
  auto changes = mirror_.Take();
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[1].kind, meta::ChangeKind::kChown);
  EXPECT_EQ(changes[1].uid, 1234u);
}

TEST_F(VolumeTest, ForgetReleasesInodesAndParents) {
  auto dir = volume_->Mkdir(kRootIno, "d", 0755, caller_);
  ASSERT_TRUE(dir.ok());
  auto [e, fh] = CreateFile(dir->ino, "f");
  volume_->Release(fh);
  // Parent forgotten first: the child still names it.
  volume_->Forget(dir->ino, 1);
  EXPECT_EQ(*volume_->PathForTest(e.ino), "d/f");
  volume_->Forget(e.ino, 1);
  // Looking both up again works (fresh inodes).
  auto d2 = volume_->Lookup(kRootIno, "d");
  ASSERT_TRUE(d2.ok());
  auto f2 = volume_->Lookup(d2->ino, "f");
  ASSERT_TRUE(f2.ok());
  EXPECT_EQ(*volume_->PathForTest(f2->ino), "d/f");
}

}  // namespace
}  // namespace mirrorfs::fs
