// Component tests of the primary's replication path in one process: a
// fs::Volume hands its changes to a FanOut whose PeerSessions talk real
// ZeroMQ over loopback to real ReplicaServers applying them to real
// folders, with the primary's state in real RocksDB. No FUSE: the tests
// call the Volume as the FUSE adapter does, from many threads at once.
//
// What they pin down:
// - how answers reach the writers waiting for them (PeerSession::Await: the
//   waiting writer receives; the session thread receives what nobody waits
//   for): concurrent writers, two peers sharing one completion, a peer that
//   stops answering, epoch flushes and async changes mixed in, a peer
//   removed under load, an answer that comes twice;
// - store flushes on the peer, slow ones included, and the one that ends a
//   resync: it keeps the peer and covers what the resync sent;
// - a stop that does not wait out the epoch period;
// and, each time, that the copies end up byte-identical.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "fs/volume.h"
#include "meta/meta_store.h"
#include "sync/fan_out.h"
#include "sync/fracture_log.h"
#include "sync/generation.h"
#include "sync/intent_journal.h"
#include "sync/peer_session.h"
#include "sync/replica_server.h"

namespace mirrorfs::sync {
namespace {

namespace stdfs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Polls `pred` every 10 ms until it holds or `limit` passes.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A secondary's host with nothing behind it: identities are kept in memory.
class MemoryHost : public ReplicaHost {
 public:
  meta::Status AdoptStore(const meta::Uuid&) override {
    return meta::Status::Ok();
  }
  meta::Status SetConsistent(bool, uint64_t) override {
    return meta::Status::Ok();
  }
  meta::Status SetGenerations(const Generations&) override {
    return meta::Status::Ok();
  }
  void PrimaryAccepted(const std::string&, const meta::Uuid&,
                       const std::string&) override {
    accepted++;
  }
  meta::Result<std::string> SaveRecovery() override {
    return meta::Status::Error(ENOTSUP, "no recovery in this test");
  }
  void Settled() override {}

  std::atomic<int> accepted{0};  // sessions of a primary taken
};

// One secondary: a store folder served by a ReplicaServer.
struct Secondary {
  std::string dir;
  std::string endpoint;
  int store_fd = -1;
  MemoryHost host;
  std::unique_ptr<ReplicaServer> server;

  ~Secondary() {
    server.reset();
    if (store_fd >= 0) ::close(store_fd);
  }
};

// A relay between the primary and a secondary that forwards every message
// both ways, and repeats one answer of the secondary when asked (what a
// link that replays after a reconnect would do).
class Relay {
 public:
  Relay(zmq::context_t* context, const std::string& secondary)
      : front_(*context, zmq::socket_type::router),
        back_(*context, zmq::socket_type::dealer) {
    front_.set(zmq::sockopt::linger, 0);
    back_.set(zmq::sockopt::linger, 0);
    front_.bind("tcp://127.0.0.1:*");
    endpoint_ = front_.get(zmq::sockopt::last_endpoint);
    back_.connect(secondary);
    thread_ = std::thread([this] { Run(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }
  void RepeatNextAnswer() { repeat_ = true; }
  int repeated() const { return repeated_; }

 private:
  static std::vector<zmq::message_t> Take(zmq::socket_t& from) {
    std::vector<zmq::message_t> parts;
    do {
      parts.emplace_back();
      (void)from.recv(parts.back());
    } while (parts.back().more());
    return parts;
  }
  static void Put(zmq::socket_t& to, std::vector<zmq::message_t>& parts) {
    for (size_t i = 0; i < parts.size(); ++i) {
      to.send(parts[i], i + 1 < parts.size() ? zmq::send_flags::sndmore
                                             : zmq::send_flags::none);
    }
  }
  void Run() {
    std::string primary;  // routing id of the primary's current socket
    while (!stop_) {
      zmq::pollitem_t items[] = {{front_.handle(), 0, ZMQ_POLLIN, 0},
                                 {back_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, std::chrono::milliseconds(20));
      if (items[0].revents & ZMQ_POLLIN) {
        auto parts = Take(front_);
        primary = parts[0].to_string();
        parts.erase(parts.begin());
        Put(back_, parts);
      }
      if (items[1].revents & ZMQ_POLLIN) {
        auto parts = Take(back_);
        int copies = repeat_.exchange(false) ? 2 : 1;
        if (copies == 2) repeated_++;
        for (int c = 0; c < copies; ++c) {
          std::vector<zmq::message_t> out;
          out.emplace_back(primary.data(), primary.size());
          for (auto& p : parts) out.emplace_back(p.data(), p.size());
          Put(front_, out);
        }
      }
    }
  }

  zmq::socket_t front_;
  zmq::socket_t back_;
  std::string endpoint_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> repeat_{false};
  std::atomic<int> repeated_{0};
};

class MirrorPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = "/tmp/mirror_path_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    dir_ = templ;
    stdfs::create_directories(dir_ + "/store");
    stdfs::create_directories(dir_ + "/meta");
    auto meta = meta::MetaStore::Open(dir_ + "/meta/db");
    ASSERT_TRUE(meta.ok()) << meta.status().message();
    meta_ = std::move(meta.value());
    local_.name = "primary";
    local_.node_uuid = meta::Uuid::Generate();
    local_.store_uuid = meta::Uuid::Generate();
    Generations gens;
    gens.Advance();
    generations_ = std::make_unique<GenerationKeeper>(
        gens, [](const Generations&) { return meta::Status::Ok(); });
  }

  void TearDown() override {
    // Sessions (and their resync workers, which read the volume) stop
    // before what they use goes away.
    if (fan_) fan_->StopAll();
    volume_.reset();
    fan_.reset();
    secondaries_.clear();
    meta_.reset();
    context_.close();
    stdfs::remove_all(dir_);
  }

  // Starts a secondary on a free loopback port.
  Secondary* AddSecondary(const std::string& name) {
    auto s = std::make_unique<Secondary>();
    s->dir = dir_ + "/" + name;
    stdfs::create_directories(s->dir);
    s->store_fd = ::open(s->dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    EXPECT_GE(s->store_fd, 0);
    ReplicaIdentity identity;
    identity.name = name;
    identity.node_uuid = meta::Uuid::Generate();
    for (int attempt = 0; attempt < 20; ++attempt) {
      s->endpoint = "tcp://127.0.0.1:" +
                    std::to_string(20000 + (std::random_device()() % 20000));
      s->server = std::make_unique<ReplicaServer>(
          &context_, s->endpoint, identity, s->store_fd, &s->host,
          /*primary_mode=*/false);
      if (s->server->Bind().ok()) break;
      s->server.reset();
    }
    EXPECT_NE(s->server, nullptr) << "no free port";
    s->server->Start();
    secondaries_.push_back(std::move(s));
    return secondaries_.back().get();
  }

  // The primary's FanOut and Volume (once), then a session per secondary,
  // each waited for until it mirrors live and in sync.
  // `watch`: the session thread's own wake-up period. Long in the tests
  // that time writers: an answer left for the session thread to find
  // (nobody received it) then costs seconds, not 100 ms.
  void StartPrimary(MirrorMode mode, std::chrono::milliseconds peer_timeout,
                    std::chrono::milliseconds watch = 100ms) {
    watch_ = watch;
    fan_ = std::make_unique<FanOut>(mode);
    fs::VolumeOptions options;
    options.store_root = dir_ + "/store";
    auto volume = fs::Volume::Open(options, fan_.get());
    ASSERT_TRUE(volume.ok()) << volume.status().message();
    volume_ = std::move(volume.value());
    for (auto& s : secondaries_) AddSession(s.get(), peer_timeout);
  }

  void AddSession(Secondary* s, std::chrono::milliseconds peer_timeout) {
    std::string name = stdfs::path(s->dir).filename();
    meta::PeerRecord record;
    record.name = name;
    record.endpoint = s->endpoint;
    ASSERT_TRUE(meta_->PutPeer(record).ok());
    auto log = std::make_unique<FractureLog>(meta_.get(), name);
    ASSERT_TRUE(log->Load().ok());
    SessionOptions options;
    options.peer_timeout = peer_timeout;
    options.watch_period = watch_;
    options.heartbeat =
        std::min<std::chrono::milliseconds>(500ms, peer_timeout / 4);
    auto session = std::make_unique<PeerSession>(
        &context_, name, s->endpoint, local_, options, std::move(log),
        volume_.get(), generations_.get(), [](const PeerHello&) {});
    session->Start();
    fan_->AddSession(std::move(session));
    PeerSession* added = fan_->Find(name);
    ASSERT_TRUE(WaitFor([&] { return added->Snapshot().in_sync; }, 20s))
        << name << ": " << added->Snapshot().reason;
  }

  // Creates `name` in the store root; returns its handle.
  fs::Handle CreateFile(const char* name) {
    auto created =
        volume_->Create(fs::kRootIno, name, 0644, O_RDWR, fs::Caller{});
    EXPECT_TRUE(created.ok()) << created.status().message();
    return created.ok() ? created->second : 0;
  }

  // `threads` writers, each `writes` 4 KiB writes of its own pattern at
  // random block offsets of its own 1 MiB of the file, an fsync every 16.
  // Returns how many writes failed.
  int WriteConcurrently(fs::Handle fh, int threads, int writes) {
    std::atomic<int> failed{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t) {
      writers.emplace_back([&, t] {
        std::mt19937 rng(t);
        std::string block(4096, '\0');
        for (int i = 0; i < writes; ++i) {
          std::memset(block.data(), 'a' + (t + i) % 26, block.size());
          uint64_t offset = (uint64_t{1} << 20) * t + 4096 * (rng() % 256);
          auto w = volume_->Write(fh, block.data(), block.size(), offset);
          if (!w.ok()) failed++;
          if (i % 16 == 15 && !volume_->Fsync(fh, false).ok()) failed++;
        }
      });
    }
    for (auto& w : writers) w.join();
    return failed.load();
  }

  // `clean_link`: no frame was refused either (false where a session was
  // dropped: its late frames are refused as stale).
  void ExpectCopyEqual(const Secondary& s, const std::string& name,
                       bool clean_link = true) {
    std::string primary = ReadAll(dir_ + "/store/" + name);
    std::string copy = ReadAll(s.dir + "/" + name);
    EXPECT_EQ(primary.size(), copy.size()) << s.dir;
    EXPECT_TRUE(primary == copy) << s.dir << "/" << name << " differs";
    // Every frame arrived whole: a write's data is sent from the writer's
    // own buffer, which the writer overwrites as soon as Write returns; a
    // buffer reused too early would show as a data checksum mismatch.
    if (clean_link) {
      EXPECT_EQ(s.server->Snapshot().bad_frames, 0u) << s.dir;
    }
  }

  std::string dir_;
  zmq::context_t context_{1};
  std::unique_ptr<meta::MetaStore> meta_;
  LocalIdentity local_;
  std::unique_ptr<GenerationKeeper> generations_;
  std::vector<std::unique_ptr<Secondary>> secondaries_;
  std::unique_ptr<FanOut> fan_;
  std::unique_ptr<fs::Volume> volume_;
  std::chrono::milliseconds watch_{100};
};

TEST_F(MirrorPathTest, ConcurrentWritersAllGetTheirAnswersAndTheCopyMatches) {
  Secondary* copy = AddSecondary("copy1");
  StartPrimary(MirrorMode::kSync, 30s, /*watch=*/10s);
  fs::Handle fh = CreateFile("image");
  auto start = Clock::now();
  EXPECT_EQ(WriteConcurrently(fh, 8, 300), 0);
  // A liveness bound, far above the ~0.5 s this takes: each answer reaches
  // its writer through the writers themselves (one receives, hands the
  // role on), never by waiting for the session thread's 10 s watch.
  EXPECT_LT(Clock::now() - start, 9s);
  auto snap = fan_->Find("copy1")->Snapshot();
  EXPECT_EQ(snap.in_flight, 0u);
  EXPECT_TRUE(snap.in_sync) << snap.reason;
  EXPECT_GE(snap.changes_sent, 8u * 300u);
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, TwoPeersAnswerOneCompletion) {
  Secondary* a = AddSecondary("copy1");
  Secondary* b = AddSecondary("copy2");
  StartPrimary(MirrorMode::kSync, 30s, /*watch=*/10s);
  fs::Handle fh = CreateFile("image");
  auto start = Clock::now();
  EXPECT_EQ(WriteConcurrently(fh, 4, 200), 0);
  EXPECT_LT(Clock::now() - start, 9s);  // as above
  for (const char* name : {"copy1", "copy2"}) {
    auto snap = fan_->Find(name)->Snapshot();
    EXPECT_EQ(snap.in_flight, 0u) << name;
    EXPECT_TRUE(snap.in_sync) << name << ": " << snap.reason;
  }
  volume_->Release(fh);
  ExpectCopyEqual(*a, "image");
  ExpectCopyEqual(*b, "image");
}

TEST_F(MirrorPathTest, EpochFlushesAndWritersShareTheSocket) {
  // Epoch flushes are frames nobody Await()s (the session thread receives
  // their answers) interleaved with writers' frames.
  Secondary* copy = AddSecondary("copy1");
  StartPrimary(MirrorMode::kSync, 5000ms);
  std::atomic<bool> stop{false};
  std::atomic<int> epochs{0};
  std::thread flusher([&] {
    while (!stop) {
      fan_->FlushEpoch();
      epochs++;
    }
  });
  fs::Handle fh = CreateFile("image");
  EXPECT_EQ(WriteConcurrently(fh, 4, 300), 0);
  stop = true;
  flusher.join();
  EXPECT_GT(epochs.load(), 0);
  EXPECT_TRUE(fan_->Find("copy1")->Snapshot().in_sync);
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, APeerThatStopsAnsweringReleasesItsWritersAndIsLogged) {
  Secondary* copy = AddSecondary("copy1");
  StartPrimary(MirrorMode::kSync, 600ms);
  fs::Handle fh = CreateFile("image");
  ASSERT_EQ(WriteConcurrently(fh, 2, 20), 0);
  // The secondary stops taking frames (hung, its connection up): writers
  // waiting for answers are released after the peer timeout, their writes
  // logged.
  copy->server->PauseForTest(true);
  auto start = Clock::now();
  EXPECT_EQ(WriteConcurrently(fh, 4, 10), 0);
  auto took = Clock::now() - start;
  // The first writes wait about one peer timeout for the link to be
  // dropped; the rest go to the log at local speed.
  EXPECT_GE(took, 500ms);
  EXPECT_LT(took, 5s);
  PeerSession* session = fan_->Find("copy1");
  EXPECT_TRUE(WaitFor(
      [&] { return session->Snapshot().state != PeerState::kConnected; }, 5s));
  auto snap = session->Snapshot();
  EXPECT_FALSE(snap.in_sync);
  EXPECT_GT(snap.fracture_bytes, 0u);
  EXPECT_EQ(snap.in_flight, 0u);
  // Back: it reconnects, the log is replayed, and the copies match.
  copy->server->PauseForTest(false);
  EXPECT_TRUE(WaitFor([&] { return session->Snapshot().in_sync; }, 20s))
      << session->Snapshot().reason;
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image", /*clean_link=*/false);
}

TEST_F(MirrorPathTest, ASlowStoreFlushOnThePeerStallsNoWriteAndDropsNoPeer) {
  // Each epoch's store flush takes 1.5 s on the peer (a slow disk), longer
  // than the peer timeout: writes go on meanwhile and the peer stays in.
  Secondary* copy = AddSecondary("copy1");
  copy->server->SetFlushDelayForTest(1500ms);
  StartPrimary(MirrorMode::kSync, 1000ms);
  fs::Handle fh = CreateFile("image");
  std::atomic<bool> flushed{false};
  auto flush_start = Clock::now();
  std::thread epoch([&] {
    fan_->FlushEpoch();
    flushed = true;
  });
  auto writes_start = Clock::now();
  EXPECT_EQ(WriteConcurrently(fh, 2, 100), 0);
  auto writes_took = Clock::now() - writes_start;
  EXPECT_FALSE(flushed) << "the writes took as long as the flush: "
                        << std::chrono::duration<double>(writes_took).count()
                        << " s";
  epoch.join();
  EXPECT_GE(Clock::now() - flush_start, 1500ms);
  auto snap = fan_->Find("copy1")->Snapshot();
  EXPECT_TRUE(snap.in_sync) << snap.reason;
  EXPECT_EQ(snap.fracture_bytes, 0u);
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, ASlowFlushAtTheEndOfAResyncDropsNoPeer) {
  // The peer syncs its store before it says it is consistent and answers
  // the resync's end mark; on a slow disk that takes longer than the peer
  // timeout, and the peer must still be heard meanwhile.
  std::string image(3 << 20, '\0');
  for (size_t i = 0; i < image.size(); ++i) image[i] = char(i * 7 / 4096);
  std::ofstream(dir_ + "/store/image", std::ios::binary) << image;
  Secondary* copy = AddSecondary("copy1");
  copy->server->SetFlushDelayForTest(1500ms);
  auto start = Clock::now();
  StartPrimary(MirrorMode::kSync, 1000ms);  // returns once in sync
  EXPECT_GE(Clock::now() - start, 1500ms) << "the end mark did not wait";
  EXPECT_EQ(copy->host.accepted.load(), 1) << "the peer was dropped";
  EXPECT_TRUE(copy->server->Snapshot().consistent);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, WhatAResyncSentIsNotAtRiskOnceItEnded) {
  // The end mark's answer means the peer's store is on disk: a peer lost
  // right after a resync has nothing of it to be sent again.
  std::ofstream(dir_ + "/store/image", std::ios::binary)
      << std::string(2 << 20, 'r');
  Secondary* copy = AddSecondary("copy1");
  StartPrimary(MirrorMode::kSync, 5000ms);
  PeerSession* session = fan_->Find("copy1");
  session->Fracture();
  ASSERT_TRUE(WaitFor(
      [&] { return session->Snapshot().state == PeerState::kFractured; }, 5s));
  auto snap = session->Snapshot();
  EXPECT_EQ(snap.fracture_bytes, 0u);
  EXPECT_EQ(snap.fracture_extents, 0u);
  // Written since (not flushed yet): these are at risk, and logged.
  fs::Handle fh = CreateFile("later");
  std::string block(4096, 'w');
  ASSERT_TRUE(volume_->Write(fh, block.data(), block.size(), 0).ok());
  volume_->Release(fh);
  EXPECT_EQ(session->Snapshot().fracture_bytes, 4096u);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, ARepeatedAnswerEndsTheSessionAndNothingIsLost) {
  // Answers are numbered: one that comes twice means the link lost track,
  // and nothing after it is trusted. The session ends, what was in flight
  // is logged, and the peer is resynced on the next session.
  Secondary* copy = AddSecondary("copy1");
  Relay relay(&context_, copy->endpoint);
  std::string direct = copy->endpoint;
  copy->endpoint = relay.endpoint();
  StartPrimary(MirrorMode::kSync, 5000ms);
  copy->endpoint = direct;
  fs::Handle fh = CreateFile("image");
  ASSERT_EQ(WriteConcurrently(fh, 2, 20), 0);
  ASSERT_EQ(copy->host.accepted.load(), 1);
  relay.RepeatNextAnswer();
  EXPECT_EQ(WriteConcurrently(fh, 2, 50), 0);
  EXPECT_EQ(relay.repeated(), 1);
  PeerSession* session = fan_->Find("copy1");
  EXPECT_TRUE(WaitFor([&] { return copy->host.accepted.load() == 2; }, 10s))
      << "the repeated answer went unnoticed";
  EXPECT_TRUE(WaitFor([&] { return session->Snapshot().in_sync; }, 20s))
      << session->Snapshot().reason;
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image", /*clean_link=*/false);
}

TEST_F(MirrorPathTest, StoppingDoesNotWaitOutTheEpochPeriod) {
  // `mirrorfs stop` stops the epoch thread, asleep for up to a period:
  // woken, it stops at once, with or without a write-intent journal.
  MetaIntentStore intents(meta_.get());
  IntentJournal journal(&intents, 4u << 20, 1u << 30, 3, 5, 60);
  for (IntentJournal* with : {static_cast<IntentJournal*>(nullptr), &journal}) {
    FanOut fan(MirrorMode::kSync);
    fan.StartEpochs(with, -1, 30s);     // unwoken, a stop takes 30 s
    std::this_thread::sleep_for(50ms);  // let it fall asleep (not a wait)
    auto start = Clock::now();
    fan.StopAll();
    EXPECT_LT(Clock::now() - start, 5s)
        << (with ? "with" : "without") << " a journal";
  }
}

TEST_F(MirrorPathTest, AsyncChangesAreReceivedByTheSessionThread) {
  Secondary* copy = AddSecondary("copy1");
  StartPrimary(MirrorMode::kAsync, 5000ms);
  fs::Handle fh = CreateFile("image");
  EXPECT_EQ(WriteConcurrently(fh, 4, 200), 0);
  PeerSession* session = fan_->Find("copy1");
  // Nobody waits for these answers: the session thread takes them all.
  EXPECT_TRUE(WaitFor([&] { return session->Snapshot().in_flight == 0; }, 10s));
  EXPECT_TRUE(session->Snapshot().in_sync);
  volume_->Release(fh);
  ExpectCopyEqual(*copy, "image");
}

TEST_F(MirrorPathTest, RemovingAPeerUnderLoadReleasesEveryWriter) {
  Secondary* a = AddSecondary("copy1");
  AddSecondary("copy2");
  StartPrimary(MirrorMode::kSync, 5000ms);
  fs::Handle fh = CreateFile("image");
  std::atomic<int> failed{0};
  std::thread writers([&] { failed += WriteConcurrently(fh, 4, 300); });
  PeerSession* b = fan_->Find("copy2");
  EXPECT_TRUE(WaitFor([&] { return b->Snapshot().changes_sent > 100; }, 10s));
  EXPECT_TRUE(fan_->RemoveSession("copy2"));
  writers.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(fan_->Find("copy2"), nullptr);
  EXPECT_TRUE(fan_->Find("copy1")->Snapshot().in_sync);
  volume_->Release(fh);
  ExpectCopyEqual(*a, "image");
}

}  // namespace
}  // namespace mirrorfs::sync
