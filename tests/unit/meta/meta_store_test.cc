#include "meta/meta_store.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "meta/keys.h"

namespace mirrorfs::meta {
namespace {

using ::testing::HasSubstr;

class MetaStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string templ =
        std::string(base && *base ? base : "/tmp") + "/meta_store_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    tmp_ = templ;
    db_dir_ = tmp_ + "/db";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
  }

  std::unique_ptr<MetaStore> OpenOrDie() {
    auto r = MetaStore::Open(db_dir_);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  // Writes one raw key, bypassing MetaStore (to plant bad data).
  void RawPut(const std::string& key, const std::string& value) {
    rocksdb::Options o;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, db_dir_, &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
    delete db;
  }

  static ExtentSet Set(std::initializer_list<Extent> l) {
    ExtentSet s;
    for (const Extent& e : l) s.Add(e);
    return s;
  }

  std::string tmp_;
  std::string db_dir_;
};

TEST_F(MetaStoreTest, OpenCreatesAndReopens) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  EXPECT_TRUE(std::filesystem::exists(db_dir_ + "/CURRENT"));
  ASSERT_NE(OpenOrDie(), nullptr);
}

TEST_F(MetaStoreTest, OpenWithMissingParentFails) {
  auto r = MetaStore::Open(tmp_ + "/no/such/dir/db");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(tmp_ + "/no/such/dir/db"));
}

TEST_F(MetaStoreTest, IdentityGeneratedOnceAndPersists) {
  Uuid first;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    auto id = store->LoadIdentity();
    ASSERT_TRUE(id.ok()) << id.status().message();
    EXPECT_FALSE(id->node_uuid.IsZero());
    EXPECT_TRUE(id->store_uuid.IsZero());
    EXPECT_EQ(id->name, "");
    EXPECT_EQ(id->role, "");
    first = id->node_uuid;
    auto again = store->LoadIdentity();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->node_uuid, first);
  }
  auto store = OpenOrDie();
  auto id = store->LoadIdentity();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->node_uuid, first);

  NodeIdentity full = *id;
  full.name = "alpha";
  full.store_uuid = Uuid::Generate();
  full.role = "primary";
  full.listen_endpoint = "tcp://127.0.0.1:7790";
  full.generation = "gen-17";
  ASSERT_TRUE(store->SaveIdentity(full).ok());
  store.reset();

  store = OpenOrDie();
  auto loaded = store->LoadIdentity();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->name, "alpha");
  EXPECT_EQ(loaded->node_uuid, first);
  EXPECT_EQ(loaded->store_uuid, full.store_uuid);
  EXPECT_EQ(loaded->role, "primary");
  EXPECT_EQ(loaded->listen_endpoint, "tcp://127.0.0.1:7790");
  EXPECT_EQ(loaded->generation, "gen-17");
}

TEST_F(MetaStoreTest, SaveIdentityValidates) {
  auto store = OpenOrDie();
  NodeIdentity id;
  EXPECT_EQ(store->SaveIdentity(id).err(), EINVAL);  // zero node uuid
  id.node_uuid = Uuid::Generate();
  id.role = "tertiary";
  EXPECT_EQ(store->SaveIdentity(id).err(), EINVAL);
  id.role = "secondary";
  EXPECT_TRUE(store->SaveIdentity(id).ok());
}

TEST_F(MetaStoreTest, PeersPutListRemove) {
  auto store = OpenOrDie();
  Uuid ub = Uuid::Generate();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://10.0.0.2:7790", ub}).ok());
  ASSERT_TRUE(store->PutPeer({"a", "tcp://10.0.0.1:7790", Uuid()}).ok());
  ASSERT_TRUE(store->PutPeer({"c.x_y-Z9", "tcp://h:1", Uuid()}).ok());
  ASSERT_TRUE(store->PutPeer({"b", "tcp://10.0.0.22:7790", ub}).ok());  // edit

  auto peers = store->ListPeers();
  ASSERT_TRUE(peers.ok());
  ASSERT_EQ(peers->size(), 3u);
  EXPECT_EQ((*peers)[0].name, "a");
  EXPECT_TRUE((*peers)[0].uuid.IsZero());
  EXPECT_EQ((*peers)[1].name, "b");
  EXPECT_EQ((*peers)[1].endpoint, "tcp://10.0.0.22:7790");
  EXPECT_EQ((*peers)[1].uuid, ub);
  EXPECT_EQ((*peers)[2].name, "c.x_y-Z9");

  ASSERT_TRUE(store->RemovePeer("a").ok());
  Status missing = store->RemovePeer("a");
  EXPECT_EQ(missing.err(), ENOENT);
  EXPECT_THAT(missing.message(), HasSubstr("'a'"));
  store.reset();

  store = OpenOrDie();
  peers = store->ListPeers();
  ASSERT_TRUE(peers.ok());
  ASSERT_EQ(peers->size(), 2u);
  EXPECT_EQ((*peers)[0].name, "b");
}

TEST_F(MetaStoreTest, PeerNamesAreValidated) {
  auto store = OpenOrDie();
  for (std::string bad :
       {std::string(""), std::string(65, 'a'), std::string("a/b"),
        std::string("a b"), std::string("a\0b", 3), std::string("é")}) {
    Status s = store->PutPeer({bad, "tcp://h:1", Uuid()});
    EXPECT_EQ(s.err(), EINVAL) << "'" << bad << "'";
  }
  EXPECT_TRUE(store->PutPeer({std::string(64, 'a'), "tcp://h:1", Uuid()}).ok());
  EXPECT_EQ(store->PutPeer({"ok", "", Uuid()}).err(), EINVAL);
  EXPECT_EQ(store->FractureOf("a/b").status().err(), EINVAL);
}

TEST_F(MetaStoreTest, FractureRequiresKnownPeer) {
  auto store = OpenOrDie();
  EXPECT_EQ(store->AddFracture("ghost", {{"f", Set({{0, 1}})}}).err(), ENOENT);
  EXPECT_EQ(store->FractureOf("ghost").status().err(), ENOENT);
  EXPECT_EQ(store->SetPeerFlag("ghost", PeerFlag::kFullSyncNeeded, true).err(),
            ENOENT);
  ASSERT_TRUE(store->PutPeer({"p", "tcp://h:1", Uuid()}).ok());
  EXPECT_EQ(store->AddFracture("p", {{"", Set({{0, 1}})}}).err(), EINVAL);
  EXPECT_EQ(
      store->AddFracture("p", {{std::string("a\0b", 3), Set({{0, 1}})}}).err(),
      EINVAL);
}

TEST_F(MetaStoreTest, FractureMergesAndPersists) {
  {
    auto store = OpenOrDie();
    ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
    ASSERT_TRUE(store->PutPeer({"bb", "tcp://h:2", Uuid()}).ok());
    auto empty = store->FractureOf("b");
    ASSERT_TRUE(empty.ok());
    EXPECT_TRUE(empty->empty());

    ASSERT_TRUE(store
                    ->AddFracture("b", {{"vm/disk.img", Set({{0, 4096}})},
                                        {"db/data", Set({{100, 50}})},
                                        {"skipped", ExtentSet()}})
                    .ok());
    ASSERT_TRUE(store
                    ->AddFracture("b", {{"vm/disk.img",
                                         Set({{4096, 4096}, {1 << 20, 512}})}})
                    .ok());
    ASSERT_TRUE(
        store->AddFracture("bb", {{"vm/disk.img", Set({{9, 1}})}}).ok());
  }
  auto store = OpenOrDie();
  auto log = store->FractureOf("b");
  ASSERT_TRUE(log.ok()) << log.status().message();
  ASSERT_EQ(log->size(), 2u);
  EXPECT_EQ(log->at("vm/disk.img"), Set({{0, 8192}, {1 << 20, 512}}));
  EXPECT_EQ(log->at("db/data"), Set({{100, 50}}));
  // "bb" shares a prefix with "b" but not a log.
  auto other = store->FractureOf("bb");
  ASSERT_TRUE(other.ok());
  ASSERT_EQ(other->size(), 1u);
  EXPECT_EQ(other->at("vm/disk.img"), Set({{9, 1}}));
}

TEST_F(MetaStoreTest, ClearFractureSubtracts) {
  auto store = OpenOrDie();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
  ASSERT_TRUE(store
                  ->AddFracture("b", {{"img", Set({{0, 100}})},
                                      {"other", Set({{0, 10}})}})
                  .ok());
  ASSERT_TRUE(store->ClearFracture("b", "img", Set({{20, 30}})).ok());
  auto log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->at("img"), Set({{0, 20}, {50, 50}}));

  // Clearing everything deletes the record; clearing unknown paths is fine.
  ASSERT_TRUE(store->ClearFracture("b", "img", Set({{0, 1000}})).ok());
  ASSERT_TRUE(store->ClearFracture("b", "never-logged", Set({{0, 1}})).ok());
  ASSERT_TRUE(store->Flush().ok());
  store.reset();
  store = OpenOrDie();
  log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->count("img"), 0u);
  EXPECT_EQ(log->size(), 1u);

  ASSERT_TRUE(store->ClearAllFracture("b").ok());
  log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_TRUE(log->empty());
}

TEST_F(MetaStoreTest, PeerFlags) {
  auto store = OpenOrDie();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
  auto f = store->GetPeerFlag("b", PeerFlag::kNamespaceDirty);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(*f);
  ASSERT_TRUE(store->SetPeerFlag("b", PeerFlag::kNamespaceDirty, true).ok());
  store.reset();
  store = OpenOrDie();
  EXPECT_TRUE(*store->GetPeerFlag("b", PeerFlag::kNamespaceDirty));
  EXPECT_FALSE(*store->GetPeerFlag("b", PeerFlag::kFullSyncNeeded));
  ASSERT_TRUE(store->SetPeerFlag("b", PeerFlag::kNamespaceDirty, false).ok());
  EXPECT_FALSE(*store->GetPeerFlag("b", PeerFlag::kNamespaceDirty));
}

TEST_F(MetaStoreTest, RemovePeerRemovesLogAndFlags) {
  auto store = OpenOrDie();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
  ASSERT_TRUE(store->PutPeer({"c", "tcp://h:2", Uuid()}).ok());
  for (const char* p : {"b", "c"}) {
    ASSERT_TRUE(store->AddFracture(p, {{"img", Set({{0, 100}})}}).ok());
    ASSERT_TRUE(store->SetPeerFlag(p, PeerFlag::kFullSyncNeeded, true).ok());
  }
  ASSERT_TRUE(store->RemovePeer("b").ok());
  EXPECT_EQ(store->FractureOf("b").status().err(), ENOENT);
  store.reset();

  store = OpenOrDie();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());  // re-added
  auto log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_TRUE(log->empty());
  EXPECT_FALSE(*store->GetPeerFlag("b", PeerFlag::kFullSyncNeeded));
  // The other peer is untouched.
  EXPECT_EQ(store->FractureOf("c")->size(), 1u);
  EXPECT_TRUE(*store->GetPeerFlag("c", PeerFlag::kFullSyncNeeded));
}

TEST_F(MetaStoreTest, CleanShutdownMark) {
  {
    auto store = OpenOrDie();
    auto clean = store->WasCleanShutdown();
    ASSERT_TRUE(clean.ok());
    EXPECT_TRUE(*clean);  // fresh database
    ASSERT_TRUE(store->SetCleanShutdown(false).ok());
  }
  auto store = OpenOrDie();
  EXPECT_FALSE(*store->WasCleanShutdown());
  ASSERT_TRUE(store->SetCleanShutdown(true).ok());
  EXPECT_TRUE(*store->WasCleanShutdown());
}

TEST_F(MetaStoreTest, ConcurrentAddFractureLosesNothing) {
  auto store = OpenOrDie();
  ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t block = static_cast<uint64_t>(i * kThreads + t);
        EXPECT_TRUE(
            store->AddFracture("b", {{"img", Set({{block * 8192, 4096}})}})
                .ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  auto log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->at("img").Count(), size_t{kThreads * kPerThread});
  EXPECT_EQ(log->at("img").TotalBytes(),
            uint64_t{kThreads * kPerThread} * 4096);
}

TEST_F(MetaStoreTest, SecondOpenInSameProcessIsBusy) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto second = MetaStore::Open(db_dir_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().err(), EBUSY);
  EXPECT_EQ(second.status().message(),
            "state database " + db_dir_ +
                " is in use by another mirrorfs process (is a daemon already "
                "running on this store?)");
}

// Runs this test binary as a second process that tries to open `dir`;
// returns what it printed ("<errno>\n<message>").
std::string TryOpenInOtherProcess(const std::string& dir) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::setenv("MFS_META_TEST_TRY_OPEN", dir.c_str(), 1);
    ::execl("/proc/self/exe", "meta_unit_tests", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, n);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return out;
}

TEST_F(MetaStoreTest, OpenFromAnotherProcessIsBusy) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  std::string out = TryOpenInOtherProcess(db_dir_);
  EXPECT_EQ(out, std::to_string(EBUSY) + "\nstate database " + db_dir_ +
                     " is in use by another mirrorfs process (is a daemon "
                     "already running on this store?)");
  store.reset();
  // Once closed, the other process gets in.
  EXPECT_EQ(TryOpenInOtherProcess(db_dir_), "0\n");
}

TEST_F(MetaStoreTest, GarbageCurrentFileIsCorrupt) {
  for (const char* garbage :
       {"\x01\x02garbage", "MANIFEST-999999\n", "not a manifest name\n", ""}) {
    SCOPED_TRACE(testing::Message() << "CURRENT = '" << garbage << "'");
    std::filesystem::remove_all(db_dir_);
    { ASSERT_NE(OpenOrDie(), nullptr); }
    {
      std::ofstream current(db_dir_ + "/CURRENT", std::ios::trunc);
      current << garbage;
    }
    auto r = MetaStore::Open(db_dir_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().err(), EUCLEAN);
    EXPECT_THAT(r.status().message(),
                HasSubstr("state database " + db_dir_ + " is corrupt: "));
    EXPECT_THAT(r.status().message(),
                HasSubstr("; move it aside to start over (peers will then need "
                          "a full sync)"));
  }
}

TEST_F(MetaStoreTest, NewerLayoutVersionIsRefused) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  RawPut(std::string(keys::kVersion), "2");
  auto r = MetaStore::Open(db_dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().err(), ENOTSUP);
  EXPECT_THAT(r.status().message(), HasSubstr("key layout version 2"));

  RawPut(std::string(keys::kVersion), "one");
  r = MetaStore::Open(db_dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().err(), EUCLEAN);
}

TEST_F(MetaStoreTest, CorruptFractureRecord) {
  {
    auto store = OpenOrDie();
    ASSERT_TRUE(store->PutPeer({"b", "tcp://h:1", Uuid()}).ok());
  }
  RawPut(keys::FractureKey("b", "img"), "\x01\x05garbage");
  auto store = OpenOrDie();
  auto log = store->FractureOf("b");
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().err(), EUCLEAN);
  EXPECT_THAT(log.status().message(), HasSubstr("'img'"));
  EXPECT_EQ(store->ClearFracture("b", "img", Set({{0, 1}})).err(), EUCLEAN);

  // Logging more still succeeds (guarantee 1), and demands a full sync
  // because what the unreadable record covered is unknown.
  ASSERT_TRUE(store->AddFracture("b", {{"img", Set({{0, 10}})}}).ok());
  EXPECT_TRUE(*store->GetPeerFlag("b", PeerFlag::kFullSyncNeeded));
  log = store->FractureOf("b");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->at("img"), Set({{0, 10}}));
}

TEST_F(MetaStoreTest, CorruptIdentityIsReported) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  RawPut(std::string(keys::kIdNodeUuid), "not-a-uuid");
  auto store = OpenOrDie();
  auto id = store->LoadIdentity();
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().err(), EUCLEAN);
  EXPECT_THAT(id.status().message(), HasSubstr("is corrupt"));
}

}  // namespace
}  // namespace mirrorfs::meta
