// Tests of the fracture log (sync/fracture_log.h) on a real MetaStore: what a
// resync's Done may trim, and what must stay logged because the peer missed
// it after the resync read the data (DESIGN.md guarantee 1).
#include "sync/fracture_log.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "meta/meta_store.h"

namespace mirrorfs::sync {
namespace {

meta::Change Write(const std::string& path, uint64_t offset, uint64_t length) {
  meta::Change c;
  c.kind = meta::ChangeKind::kWrite;
  c.path = path;
  c.offset = offset;
  c.length = length;
  return c;
}

meta::Change Rename(const std::string& from, const std::string& to) {
  meta::Change c;
  c.kind = meta::ChangeKind::kRename;
  c.path = from;
  c.target = to;
  return c;
}

class FractureLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") +
                        "/fracture_log_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    tmp_ = templ;
    auto r = meta::MetaStore::Open(tmp_ + "/db");
    ASSERT_TRUE(r.ok()) << r.status().message();
    db_ = std::move(r).value();
    meta::PeerRecord peer;
    peer.name = "b";
    peer.endpoint = "tcp://127.0.0.1:1";
    ASSERT_TRUE(db_->PutPeer(peer).ok());
    log_ = std::make_unique<FractureLog>(db_.get(), "b");
    ASSERT_TRUE(log_->Load().ok());
  }
  void TearDown() override {
    log_.reset();
    db_.reset();
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
  }
  // What a reopened log holds for `path` (the persisted truth).
  uint64_t PersistedBytes(const std::string& path) {
    EXPECT_TRUE(log_->PersistProgress().ok());
    FractureLog again(db_.get(), "b");
    EXPECT_TRUE(again.Load().ok());
    auto extents = again.Extents();
    auto it = extents.find(path);
    return it == extents.end() ? 0 : it->second.TotalBytes();
  }

  std::string tmp_;
  std::unique_ptr<meta::MetaStore> db_;
  std::unique_ptr<FractureLog> log_;
};

TEST_F(FractureLogTest, DoneTrimsWhatThePeerApplied) {
  ASSERT_TRUE(log_->Record(Write("disk.img", 0, 1 << 20)).ok());
  uint64_t read_at = log_->Epoch();
  log_->Done("disk.img", 0, 4096, read_at);
  EXPECT_EQ(log_->bytes(), (1u << 20) - 4096);
  EXPECT_EQ(PersistedBytes("disk.img"), (1u << 20) - 4096);
  log_->Done("disk.img", 4096, (1 << 20) - 4096, read_at);
  EXPECT_TRUE(log_->empty());
  EXPECT_EQ(PersistedBytes("disk.img"), 0u);
}

// The race a resync has with a lost peer: the chunk was read, sent and
// flushed; a newer write to the same bytes then failed to reach the peer and
// was logged before the worker trimmed the chunk. The trim must not erase
// the newer write (the range was in the log already, so the record adds no
// bytes: only the epoch tells).
TEST_F(FractureLogTest, AChangeMissedAfterTheReadStaysLogged) {
  ASSERT_TRUE(log_->Record(Write("disk.img", 0, 1 << 20)).ok());
  uint64_t read_at = log_->Epoch();
  ASSERT_TRUE(log_->Record(Write("disk.img", 8192, 4096)).ok());
  EXPECT_EQ(log_->bytes(), 1u << 20);
  log_->Done("disk.img", 0, 1 << 20, read_at);
  EXPECT_EQ(log_->bytes(), 1u << 20) << "the newer write was trimmed";
  EXPECT_EQ(PersistedBytes("disk.img"), 1u << 20);
  // The next pass reads again, after the record: now it is done.
  log_->Done("disk.img", 0, 1 << 20, log_->Epoch());
  EXPECT_TRUE(log_->empty());
}

TEST_F(FractureLogTest, AChangeToAnotherPathDoesNotHoldTheTrim) {
  ASSERT_TRUE(log_->Record(Write("a.img", 0, 65536)).ok());
  uint64_t read_at = log_->Epoch();
  ASSERT_TRUE(log_->Record(Write("b.img", 0, 4096)).ok());
  log_->Done("a.img", 0, 65536, read_at);
  EXPECT_EQ(log_->bytes(), 4096u);
  EXPECT_EQ(log_->Extents().count("a.img"), 0u);
}

// A file renamed onto a name the resync read from: the extents now logged
// under that name are the renamed file's, not what the peer applied.
TEST_F(FractureLogTest, ExtentsRenamedOntoAReadPathStayLogged) {
  ASSERT_TRUE(log_->Record(Write("a.img", 0, 65536)).ok());
  ASSERT_TRUE(log_->Record(Write("c.img", 0, 65536)).ok());
  uint64_t read_at = log_->Epoch();
  log_->Follow(Rename("a.img", "b.img"));
  log_->Follow(Rename("c.img", "a.img"));
  log_->Done("a.img", 0, 65536, read_at);
  auto extents = log_->Extents();
  ASSERT_EQ(extents.count("a.img"), 1u) << "c.img's extents were trimmed";
  EXPECT_EQ(extents["a.img"].TotalBytes(), 65536u);
  EXPECT_EQ(extents["b.img"].TotalBytes(), 65536u);
}

// A trimmed path that is logged again later starts a new epoch: an old
// read cannot trim it, a new one can.
TEST_F(FractureLogTest, APathLoggedAgainAfterItsTrimNeedsANewRead) {
  ASSERT_TRUE(log_->Record(Write("disk.img", 0, 4096)).ok());
  uint64_t first = log_->Epoch();
  log_->Done("disk.img", 0, 4096, first);
  ASSERT_TRUE(log_->empty());
  ASSERT_TRUE(log_->Record(Write("disk.img", 0, 4096)).ok());
  log_->Done("disk.img", 0, 4096, first);
  EXPECT_EQ(log_->bytes(), 4096u);
  log_->Done("disk.img", 0, 4096, log_->Epoch());
  EXPECT_TRUE(log_->empty());
}

}  // namespace
}  // namespace mirrorfs::sync
