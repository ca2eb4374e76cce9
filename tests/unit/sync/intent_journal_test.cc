// Tests of the write-intent journal (sync/intent_journal.h, DESIGN.md
// guarantee 1 across a crash of the primary) through its IntentStore seam:
// a fault-injecting store records every call in order, can hold a call at a
// gate (a latch the test opens) and can fail calls. It keeps the "on disk"
// set of regions itself, or forwards to a real MetaStore on RocksDB (the
// persistence tests), so that the invariant "every region a writer is inside
// is recorded on disk" can be checked at any instant.
#include "sync/intent_journal.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "meta/meta_store.h"
#include "sync/fracture_log.h"

namespace mirrorfs::sync {
namespace {

using namespace std::chrono_literals;
using Region = IntentStore::Region;

constexpr uint64_t kMiB = 1u << 20;
// How long a call that must NOT return yet is watched (a tiny pacing window;
// a wrong early return is seen at once, long before this).
constexpr auto kMustBlock = 200ms;
// Deadline of anything that must happen.
constexpr auto kDeadline = 10s;

std::string Str(const Region& r) {
  return "{ino " + std::to_string(r.ino) + ", region " +
         std::to_string(r.region) + "}";
}

// A latch: Pass() blocks while the gate is closed. Counts arrivals so a test
// can wait until a call is parked at the gate.
class Gate {
 public:
  void Close() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = false;
  }
  void Open() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits for the gate to open; gives up after a minute (a failed test
  // that never opened it must still end, not hang in a future's join).
  void Pass() {
    std::unique_lock<std::mutex> l(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait_for(l, std::chrono::seconds(60), [this] { return open_; });
  }
  // True once `n` calls arrived (parked or passed) within the deadline.
  bool WaitArrived(int n, std::chrono::milliseconds timeout = kDeadline) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return arrived_ >= n; });
  }
  int arrived() {
    std::lock_guard<std::mutex> l(mu_);
    return arrived_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
};

// The fault-injecting IntentStore.
class FaultStore : public IntentStore {
 public:
  // `inner` (may be null: an in-memory "disk") gets every call that is not
  // failed on purpose.
  explicit FaultStore(IntentStore* inner = nullptr) : inner_(inner) {}

  meta::Status RecordIntents(const std::vector<Region>& regions,
                             uint64_t extent_bytes) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      calls_.push_back("record");
      batches_.push_back(regions);
    }
    record_gate.Pass();
    if (record_delay.count() > 0) std::this_thread::sleep_for(record_delay);
    meta::Status s;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (fail_all_records) {
        s = meta::Status::Error(ENOSPC, "injected failure of RecordIntents");
      } else if (fail_records > 0) {
        --fail_records;
        s = meta::Status::Error(ENOSPC, "injected failure of RecordIntents");
      }
    }
    if (s.ok() && inner_ != nullptr)
      s = inner_->RecordIntents(regions, extent_bytes);
    std::lock_guard<std::mutex> l(mu_);
    if (s.ok()) {
      for (const auto& r : regions) on_disk_.insert(r);
      extent_ = extent_bytes;
    }
    calls_.push_back(s.ok() ? "record-ok" : "record-failed");
    return s;
  }

  meta::Status RetireIntents(const std::vector<Region>& regions) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      calls_.push_back("retire");
      retired_.insert(retired_.end(), regions.begin(), regions.end());
    }
    retire_gate.Pass();
    meta::Status s;
    if (inner_ != nullptr) s = inner_->RetireIntents(regions);
    std::lock_guard<std::mutex> l(mu_);
    if (s.ok()) {
      for (const auto& r : regions) on_disk_.erase(r);
    }
    return s;
  }

  meta::Status SyncWal() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      calls_.push_back("sync");
    }
    sync_gate.Pass();
    if (sync_delay.count() > 0) std::this_thread::sleep_for(sync_delay);
    meta::Status s;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (fail_sync)
        s = meta::Status::Error(EIO, "injected failure of SyncWal");
    }
    if (s.ok() && inner_ != nullptr) s = inner_->SyncWal();
    std::lock_guard<std::mutex> l(mu_);
    calls_.push_back(s.ok() ? "sync-ok" : "sync-failed");
    return s;
  }

  std::vector<std::string> calls() {
    std::lock_guard<std::mutex> l(mu_);
    return calls_;
  }
  size_t count(const std::string& what) {
    std::lock_guard<std::mutex> l(mu_);
    size_t n = 0;
    for (const auto& c : calls_) n += c == what;
    return n;
  }
  std::vector<std::vector<Region>> batches() {
    std::lock_guard<std::mutex> l(mu_);
    return batches_;
  }
  std::vector<Region> retired() {
    std::lock_guard<std::mutex> l(mu_);
    return retired_;
  }
  bool OnDisk(const Region& r) {
    std::lock_guard<std::mutex> l(mu_);
    return on_disk_.count(r) > 0;
  }
  std::set<Region> on_disk() {
    std::lock_guard<std::mutex> l(mu_);
    return on_disk_;
  }

  Gate record_gate, retire_gate, sync_gate;
  std::chrono::milliseconds record_delay{0};
  std::chrono::milliseconds sync_delay{0};
  // Guarded by mu_ (set them before the journal runs, or under set_*).
  int fail_records = 0;
  bool fail_all_records = false;
  bool fail_sync = false;
  void set_fail_records(int n) {
    std::lock_guard<std::mutex> l(mu_);
    fail_records = n;
  }
  void set_fail_all_records(bool b) {
    std::lock_guard<std::mutex> l(mu_);
    fail_all_records = b;
  }

 private:
  IntentStore* inner_;
  std::mutex mu_;
  std::vector<std::string> calls_;
  std::vector<std::vector<Region>> batches_;
  std::vector<Region> retired_;
  std::set<Region> on_disk_;
  uint64_t extent_ = 0;
};

// Runs `f` at scope exit (declare it after the futures it must unblock).
struct Finally {
  std::function<void()> f;
  ~Finally() { f(); }
};

// Every gate opens when the test ends, whatever it asserted, so no thread
// stays parked and the futures below can be joined.
struct OpenGatesAtEnd {
  FaultStore* store;
  ~OpenGatesAtEnd() {
    store->record_gate.Open();
    store->retire_gate.Open();
    store->sync_gate.Open();
  }
};

std::future<meta::Status> EnterAsync(IntentJournal* j, uint64_t ino,
                                     uint64_t offset, uint64_t length) {
  return std::async(std::launch::async,
                    [=] { return j->Enter(ino, offset, length); });
}

template <typename T>
bool Ready(std::future<T>& f, std::chrono::milliseconds wait = 0ms) {
  if (!f.valid()) return true;  // already taken with get()
  return f.wait_for(wait) == std::future_status::ready;
}

template <typename Pred>
bool PollUntil(Pred pred, std::chrono::milliseconds timeout = kDeadline) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// ---------------------------------------------------------------- (a) ----

TEST(IntentJournalTest, EnterReturnsOnlyAfterTheRegionIsDurable) {
  FaultStore store;
  OpenGatesAtEnd guard{&store};
  IntentJournal journal(&store, 4 * kMiB, 64 * kMiB);
  store.record_gate.Close();
  std::atomic<bool> opened{false};
  std::atomic<bool> returned_before_open{false};
  std::atomic<bool> durable_at_return{false};
  auto f = std::async(std::launch::async, [&] {
    auto s = journal.Enter(7, 5 * kMiB, 4096);
    returned_before_open = !opened.load();
    durable_at_return = store.OnDisk({7, 1});
    return s;
  });
  ASSERT_TRUE(store.record_gate.WaitArrived(1))
      << "Enter into a new region never called RecordIntents";
  EXPECT_FALSE(Ready(f, kMustBlock))
      << "Enter returned while RecordIntents was still blocked";
  opened = true;
  store.record_gate.Open();
  ASSERT_TRUE(Ready(f, kDeadline))
      << "Enter did not return after the latch opened";
  auto s = f.get();
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_FALSE(returned_before_open);
  EXPECT_TRUE(durable_at_return)
      << "the region was not on disk when Enter returned";
  ASSERT_EQ(store.batches().size(), 1u);
  ASSERT_EQ(store.batches()[0].size(), 1u);
  EXPECT_EQ(store.batches()[0][0].ino, 7u);
  EXPECT_EQ(store.batches()[0][0].region, 1u);
  EXPECT_EQ(journal.active_extents(), 1u);
}

// A writer entering a region whose recording is in progress (by another
// writer) must wait for that same recording.
TEST(IntentJournalTest, SecondWriterOfAPendingRegionWaitsForItsRecord) {
  FaultStore store;
  OpenGatesAtEnd guard{&store};
  IntentJournal journal(&store, 4 * kMiB, 64 * kMiB);
  store.record_gate.Close();
  auto first = EnterAsync(&journal, 1, 0, 4096);
  ASSERT_TRUE(store.record_gate.WaitArrived(1));
  auto second = EnterAsync(&journal, 1, 8192, 4096);
  EXPECT_FALSE(Ready(second, kMustBlock))
      << "a writer of a region not yet durable returned before its record";
  store.record_gate.Open();
  ASSERT_TRUE(Ready(first, kDeadline));
  ASSERT_TRUE(Ready(second, kDeadline));
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().ok());
  EXPECT_EQ(store.count("record"), 1u) << "the region was recorded twice";
}

// ---------------------------------------------------------------- (b) ----

TEST(IntentJournalTest, WritersWaitingForACommitShareTheNextBatch) {
  FaultStore store;
  OpenGatesAtEnd guard{&store};
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  store.record_gate.Close();
  // The first writer's commit is parked: everyone after it queues up.
  auto first = EnterAsync(&journal, 1, 0, 4096);
  ASSERT_TRUE(store.record_gate.WaitArrived(1));
  constexpr int kWaiters = 7;
  std::vector<std::future<meta::Status>> waiters;
  for (int i = 1; i <= kWaiters; ++i) {
    waiters.push_back(EnterAsync(&journal, 1, i * kMiB, 4096));
  }
  // Every waiter has registered its region (pending) before the latch opens.
  ASSERT_TRUE(PollUntil([&] {
    return journal.active_extents() == kWaiters + 1;
  })) << "active_extents "
      << journal.active_extents();
  store.record_gate.Open();
  ASSERT_TRUE(Ready(first, kDeadline));
  EXPECT_TRUE(first.get().ok());
  for (auto& w : waiters) {
    ASSERT_TRUE(Ready(w, kDeadline));
    EXPECT_TRUE(w.get().ok());
  }
  auto batches = store.batches();
  EXPECT_LT(batches.size(), static_cast<size_t>(kWaiters + 1));
  ASSERT_EQ(batches.size(), 2u)
      << "the waiting writers were not group-committed";
  EXPECT_EQ(batches[0].size(), 1u);
  EXPECT_EQ(batches[1].size(), static_cast<size_t>(kWaiters));
  for (int i = 0; i <= kWaiters; ++i) {
    EXPECT_TRUE(store.OnDisk({1, static_cast<uint64_t>(i)})) << "region " << i;
  }
}

// The same without a latch: a slow synced write (an fsync) and many threads
// starting at once.
TEST(IntentJournalTest, ConcurrentNewRegionsUseFewerBatchesThanWriters) {
  FaultStore store;
  store.record_delay = 20ms;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  constexpr int kThreads = 16;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::future<meta::Status>> fs;
  for (int i = 0; i < kThreads; ++i) {
    fs.push_back(std::async(std::launch::async, [&, i] {
      ++ready;
      while (!go) std::this_thread::yield();
      return journal.Enter(3, static_cast<uint64_t>(i) * kMiB, 4096);
    }));
  }
  ASSERT_TRUE(PollUntil([&] { return ready == kThreads; }));
  go = true;
  for (auto& f : fs) {
    ASSERT_TRUE(Ready(f, kDeadline));
    EXPECT_TRUE(f.get().ok());
  }
  EXPECT_LT(store.count("record"), static_cast<size_t>(kThreads));
  EXPECT_EQ(store.on_disk().size(), static_cast<size_t>(kThreads));
}

// ---------------------------------------------------------------- (c) ----

TEST(IntentJournalTest, WritesIntoAnActiveRegionCallNoStoreMethod) {
  FaultStore store;
  IntentJournal journal(&store, 4 * kMiB, 64 * kMiB);
  ASSERT_TRUE(journal.Enter(5, 0, 4096).ok());
  const auto before = store.calls();
  // The region stays active (a writer inside, or idle and not retired).
  ASSERT_TRUE(journal.Enter(5, 1 * kMiB, 65536).ok());
  journal.Leave(5, 1 * kMiB, 65536);
  journal.Leave(5, 0, 4096);
  for (int i = 0; i < 100; ++i) {
    uint64_t off = static_cast<uint64_t>(i) * 40960 % (4 * kMiB - 4096);
    ASSERT_TRUE(journal.Enter(5, off, 4096).ok());
    journal.Leave(5, off, 4096);
  }
  // Concurrent writers into the same active region.
  std::vector<std::future<meta::Status>> fs;
  for (int i = 0; i < 8; ++i)
    fs.push_back(EnterAsync(&journal, 5, i * 4096, 4096));
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(Ready(fs[i], kDeadline));
    EXPECT_TRUE(fs[i].get().ok());
    journal.Leave(5, i * 4096, 4096);
  }
  EXPECT_EQ(store.calls(), before)
      << "a write into an active region touched the store";
  // A write spanning the active region and a new one records only the new.
  ASSERT_TRUE(journal.Enter(5, 4 * kMiB - 4096, 8192).ok());
  auto batches = store.batches();
  ASSERT_EQ(batches.size(), 2u);
  ASSERT_EQ(batches[1].size(), 1u);
  EXPECT_EQ(batches[1][0].region, 1u);
  EXPECT_EQ(journal.active_extents(), 2u);
}

// ---------------------------------------------------------------- (d) ----

TEST(IntentJournalTest, FailedRecordFailsTheWriteAndLeavesNothingActive) {
  FaultStore store;
  IntentJournal journal(&store, 4 * kMiB, 64 * kMiB);
  store.set_fail_records(1);
  auto s = journal.Enter(9, 0, 4096);
  ASSERT_FALSE(s.ok())
      << "Enter succeeded although its intent was not recorded";
  EXPECT_EQ(s.err(), ENOSPC) << s.message();
  EXPECT_NE(s.message().find("injected failure"), std::string::npos)
      << s.message();
  EXPECT_EQ(journal.active_extents(), 0u);
  EXPECT_TRUE(store.on_disk().empty());
  // Nothing to retire, nothing retired.
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  EXPECT_EQ(store.count("retire"), 0u);
  // The next write into the same region records it again and succeeds.
  ASSERT_TRUE(journal.Enter(9, 0, 4096).ok());
  EXPECT_EQ(store.count("record"), 2u);
  EXPECT_TRUE(store.OnDisk({9, 0}));
  EXPECT_EQ(journal.active_extents(), 1u);
}

// Several writers whose regions were in one failing batch (and one that
// joined a region of it) all fail; none of their regions stays active.
TEST(IntentJournalTest, EveryWriterOfAFailedBatchFailsAndReleasesItsRegion) {
  FaultStore store;
  OpenGatesAtEnd guard{&store};
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  store.set_fail_all_records(true);
  store.record_gate.Close();
  auto first = EnterAsync(&journal, 1, 0, 4096);
  ASSERT_TRUE(store.record_gate.WaitArrived(1));
  std::vector<std::future<meta::Status>> all;
  all.push_back(
      EnterAsync(&journal, 1, 0 + 8192, 4096));  // same region as first
  for (int i = 1; i <= 4; ++i)
    all.push_back(EnterAsync(&journal, 1, i * kMiB, 4096));
  ASSERT_TRUE(PollUntil([&] { return journal.active_extents() == 5; }));
  store.record_gate.Open();
  ASSERT_TRUE(Ready(first, kDeadline)) << "a writer of a failed batch hangs";
  EXPECT_FALSE(first.get().ok());
  for (size_t i = 0; i < all.size(); ++i) {
    ASSERT_TRUE(Ready(all[i], kDeadline))
        << "writer " << i << " of a failed batch hangs";
    EXPECT_FALSE(all[i].get().ok()) << "writer " << i;
  }
  EXPECT_EQ(journal.active_extents(), 0u) << "a failed region stayed active";
  EXPECT_TRUE(store.on_disk().empty());
  // The store recovers: writes work again.
  store.set_fail_all_records(false);
  ASSERT_TRUE(journal.Enter(1, 0, 4096).ok());
  EXPECT_TRUE(store.OnDisk({1, 0}));
}

// Writers hammering one region while every record fails: each Enter must
// come back with an error, none may hang waiting for a commit nobody runs.
TEST(IntentJournalTest, WritersOfAFailingRegionNeverHang) {
  FaultStore store;
  store.set_fail_all_records(true);
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  constexpr int kThreads = 4;
  constexpr int kRounds = 3000;
  std::atomic<int> done{0};
  std::atomic<int> ok_count{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds && !stop; ++i) {
        auto s = journal.Enter(11, static_cast<uint64_t>(t) * 4096, 4096);
        if (s.ok()) {
          ++ok_count;
          journal.Leave(11, static_cast<uint64_t>(t) * 4096, 4096);
        }
      }
      ++done;
    });
  }
  bool finished = PollUntil([&] { return done == kThreads; }, 20s);
  const int done_at_deadline = done;
  int rescues = 0;
  if (!finished) {
    // Some writer sleeps on the condition variable with nobody left to
    // commit: stop the loops, and wake the sleepers through commits of
    // another file (each ends in notify_all).
    stop = true;
    while (done != kThreads) {
      (void)journal.Enter(99, static_cast<uint64_t>(rescues % 512) * kMiB, 1);
      ++rescues;
      std::this_thread::sleep_for(1ms);
    }
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(finished)
      << "writers of a region whose record failed hung in Enter (no commit "
         "running, none pending) until an unrelated commit woke them; "
      << done_at_deadline << " of " << kThreads
      << " threads had finished after 20 s, " << rescues
      << " unrelated commits were needed to release the rest";
  EXPECT_EQ(ok_count, 0)
      << "a write succeeded although no intent was ever recorded";
}

// ---------------------------------------------------------------- (e) ----

TEST(IntentJournalTest, RetireTakesOnlyIdleRegionsLeftByTheEpoch) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  // r0: written and left before the epoch.
  ASSERT_TRUE(journal.Enter(2, 0 * kMiB, 4096).ok());
  journal.Leave(2, 0 * kMiB, 4096);
  // r1: a writer still inside.
  ASSERT_TRUE(journal.Enter(2, 1 * kMiB, 4096).ok());
  const uint64_t epoch = journal.BeginEpoch();
  // r2: written and left after the epoch began (its flush may miss it).
  ASSERT_TRUE(journal.Enter(2, 2 * kMiB, 4096).ok());
  journal.Leave(2, 2 * kMiB, 4096);
  // r0 again? No: r3 entered before, left after the epoch began.
  ASSERT_TRUE(journal.Enter(2, 3 * kMiB, 4096).ok());
  // (left below, after another epoch began)
  const size_t calls_before = store.calls().size();
  ASSERT_TRUE(journal.Retire(epoch).ok());
  auto retired = store.retired();
  ASSERT_EQ(retired.size(), 1u);
  EXPECT_EQ(retired[0].region, 0u);
  EXPECT_EQ(journal.active_extents(), 3u);
  EXPECT_FALSE(store.OnDisk({2, 0}));
  EXPECT_TRUE(store.OnDisk({2, 1}));
  EXPECT_TRUE(store.OnDisk({2, 2}));
  // Order: the WAL (fracture logs) synced and returned BEFORE retiring.
  auto calls = store.calls();
  std::vector<std::string> tail(calls.begin() + calls_before, calls.end());
  EXPECT_EQ(tail, (std::vector<std::string>{"sync", "sync-ok", "retire"}));

  journal.Leave(2, 1 * kMiB, 4096);
  const uint64_t epoch2 = journal.BeginEpoch();
  journal.Leave(2, 3 * kMiB, 4096);  // left after epoch2 began
  ASSERT_TRUE(journal.Retire(epoch2).ok());
  std::set<uint64_t> got;
  for (const auto& r : store.retired()) got.insert(r.region);
  EXPECT_EQ(got, (std::set<uint64_t>{0, 1, 2}));
  EXPECT_TRUE(store.OnDisk({2, 3}))
      << "a region left after the epoch began was retired";
  EXPECT_EQ(journal.active_extents(), 1u);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  EXPECT_TRUE(store.on_disk().empty());
  EXPECT_EQ(journal.active_extents(), 0u);
}

TEST(IntentJournalTest, RetireWithNothingEligibleTouchesNoStore) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  ASSERT_TRUE(journal.Enter(2, 0, 4096).ok());  // writer stays inside
  const auto before = store.calls();
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  EXPECT_EQ(store.calls(), before);
}

TEST(IntentJournalTest, FailedWalSyncRetiresNothingOnDisk) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  ASSERT_TRUE(journal.Enter(2, 0, 4096).ok());
  journal.Leave(2, 0, 4096);
  store.fail_sync = true;  // no other thread runs yet
  auto s = journal.Retire(journal.BeginEpoch());
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(store.count("retire"), 0u)
      << "intents retired although the fracture logs were not made durable";
  EXPECT_TRUE(store.OnDisk({2, 0}));
}

// Guarantee 1 against a retire racing a new writer of the same region:
// Retire drops the region from memory, then (without the lock) syncs the WAL
// and deletes the region's key. A writer entering the region in between
// finds it absent, records it again (durable), and writes - and then the
// retire deletes the key it relies on. A crash at that point would not
// re-send a region that has a write in flight.
TEST(IntentJournalTest, RetireRacingANewWriterKeepsTheRegionOnDisk) {
  FaultStore store;
  OpenGatesAtEnd guard{&store};
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  ASSERT_TRUE(journal.Enter(4, 0, 4096).ok());
  journal.Leave(4, 0, 4096);
  const uint64_t epoch = journal.BeginEpoch();
  store.sync_gate.Close();
  auto retire =
      std::async(std::launch::async, [&] { return journal.Retire(epoch); });
  ASSERT_TRUE(store.sync_gate.WaitArrived(1));
  // The epoch flusher is between "dropped from memory" and "deleted on disk".
  auto writer = EnterAsync(&journal, 4, 8192, 4096);
  bool writer_returned_early = Ready(writer, kMustBlock);
  store.sync_gate.Open();
  ASSERT_TRUE(Ready(retire, kDeadline));
  EXPECT_TRUE(retire.get().ok());
  ASSERT_TRUE(Ready(writer, kDeadline));
  ASSERT_TRUE(writer.get().ok());
  (void)writer_returned_early;  // either order is fine; the disk is what counts
  // The writer is inside region 0 now: region 0 must be on disk.
  EXPECT_EQ(journal.active_extents(), 1u);
  EXPECT_TRUE(store.OnDisk({4, 0}))
      << "region {4, 0} has a writer inside but its intent was deleted by a "
         "concurrent Retire; calls: "
      << [&] {
           std::string s;
           for (const auto& c : store.calls()) s += c + " ";
           return s;
         }();
}

// The same invariant under random concurrency: whenever a writer is between
// Enter and Leave, every region it touches is on disk.
TEST(IntentJournalTest, StressWriterRegionsAreAlwaysOnDisk) {
  FaultStore store;
  store.sync_delay = 1ms;
  IntentJournal journal(&store, 64 * 1024, 8 * 64 * 1024);  // 8 regions
  std::atomic<bool> stop{false};
  std::atomic<int> violations{0};
  std::mutex first_mu;
  std::string first_violation;
  std::thread flusher([&] {
    while (!stop) {
      uint64_t e = journal.BeginEpoch();
      auto s = journal.Retire(e);
      if (!s.ok()) ADD_FAILURE() << s.message();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      auto deadline = std::chrono::steady_clock::now() + 2s;
      while (std::chrono::steady_clock::now() < deadline) {
        uint64_t off = (rng() % 16) * 64 * 1024 + (rng() % 15) * 4096;
        uint64_t len = 4096 * (1 + rng() % 4);
        auto s = journal.Enter(1, off, len);
        if (!s.ok()) {
          ADD_FAILURE() << s.message();
          return;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
        for (uint64_t r = off / (64 * 1024); r <= (off + len - 1) / (64 * 1024);
             ++r) {
          if (!store.OnDisk({1, r})) {
            if (violations++ == 0) {
              std::lock_guard<std::mutex> l(first_mu);
              first_violation = Str({1, r});
            }
          }
        }
        journal.Leave(1, off, len);
      }
    });
  }
  for (auto& w : writers) w.join();
  stop = true;
  flusher.join();
  EXPECT_EQ(violations, 0) << "writes in flight in regions not on disk (first: "
                           << first_violation << ")";
}

// ---------------------------------------------------------------- (f) ----

TEST(IntentJournalTest, BudgetFullBlocksANewRegionUntilRetire) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 2 * kMiB);  // 2 regions
  ASSERT_EQ(journal.budget_bytes(), 2 * kMiB);
  ASSERT_TRUE(journal.Enter(6, 0, 4096).ok());
  ASSERT_TRUE(journal.Enter(6, 1 * kMiB, 4096).ok());
  journal.Leave(6, 0, 4096);
  journal.Leave(6, 1 * kMiB, 4096);
  EXPECT_FALSE(journal.FlushWanted());
  // Writes into active regions still pass.
  ASSERT_TRUE(journal.Enter(6, 8192, 4096).ok());
  journal.Leave(6, 8192, 4096);

  auto flush_signalled = std::async(std::launch::async, [&] {
    auto t0 = std::chrono::steady_clock::now();
    journal.WaitFlushWanted(std::chrono::milliseconds(30000));
    return std::chrono::steady_clock::now() - t0;
  });
  auto third = EnterAsync(&journal, 6, 2 * kMiB, 4096);
  Finally unblock{[&] {
    if (!Ready(third)) (void)journal.Retire(journal.BeginEpoch());
  }};
  ASSERT_TRUE(PollUntil([&] { return journal.FlushWanted(); }))
      << "a writer waits for room but FlushWanted() stays false";
  ASSERT_TRUE(Ready(flush_signalled, kDeadline))
      << "WaitFlushWanted did not wake for a writer waiting for room";
  EXPECT_LT(flush_signalled.get(), 5s);
  EXPECT_FALSE(Ready(third, kMustBlock))
      << "a third region entered a 2-region budget";
  EXPECT_EQ(journal.active_extents(), 2u);
  EXPECT_EQ(store.count("record"), 2u);

  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  ASSERT_TRUE(Ready(third, kDeadline))
      << "the writer stayed blocked after a retire freed room";
  EXPECT_TRUE(third.get().ok());
  EXPECT_EQ(journal.active_extents(), 1u);
  EXPECT_TRUE(store.OnDisk({6, 2}));
  EXPECT_FALSE(journal.FlushWanted());
}

// With an idle window, a region retires only once no write left it for
// that many epochs; one written again meanwhile stays (no new record).
TEST(IntentJournalTest, RegionsRetireAfterTheIdleWindow) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB, /*ahead_regions=*/0,
                        /*idle_epochs=*/3);
  // A young journal (its first 3 epochs) retires at once.
  ASSERT_TRUE(journal.Enter(4, 9 * kMiB, 4096).ok());
  journal.Leave(4, 9 * kMiB, 4096);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());  // epoch 1
  EXPECT_EQ(journal.active_extents(), 0u);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());  // 2
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());  // 3

  ASSERT_TRUE(journal.Enter(4, 0, 4096).ok());
  ASSERT_TRUE(journal.Enter(4, 1 * kMiB, 4096).ok());
  journal.Leave(4, 0, 4096);
  journal.Leave(4, 1 * kMiB, 4096);  // both left during epoch 4
  for (int i = 0; i < 3; ++i) {      // epochs 4, 5, 6
    ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
    // Region 1 is written again during the window.
    ASSERT_TRUE(journal.Enter(4, 1 * kMiB, 4096).ok());
    journal.Leave(4, 1 * kMiB, 4096);
  }
  EXPECT_EQ(journal.active_extents(), 2u) << "retired inside the window";
  EXPECT_EQ(store.count("record"), 3u) << "an active region was re-recorded";
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());  // epoch 7
  EXPECT_EQ(journal.active_extents(), 1u);
  EXPECT_FALSE(store.OnDisk({4, 0})) << "idle for 3 epochs, not retired";
  EXPECT_TRUE(store.OnDisk({4, 1}));
  // A clean stop retires everything at once.
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch(), /*everything=*/true).ok());
  EXPECT_EQ(journal.active_extents(), 0u);
}

// A writer coming back to a file after its regions retired records them
// all again in one batch (recall), within half of the budget; regions
// retired longer ago than the recall window are not recalled.
TEST(IntentJournalTest, ComingBackRecallsTheRetiredWorkingSetInOneBatch) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 64 * kMiB, /*ahead_regions=*/0,
                        /*idle_epochs=*/0, /*recall_epochs=*/10);
  for (uint64_t r : {7u, 2u, 11u, 5u}) {
    ASSERT_TRUE(journal.Enter(3, r * kMiB, 4096).ok());
    journal.Leave(3, r * kMiB, 4096);
  }
  ASSERT_TRUE(journal.Enter(4, 0, 4096).ok());  // another file
  journal.Leave(4, 0, 4096);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  ASSERT_EQ(journal.active_extents(), 0u);
  const size_t records = store.count("record");

  ASSERT_TRUE(journal.Enter(3, 5 * kMiB, 4096).ok());
  journal.Leave(3, 5 * kMiB, 4096);
  EXPECT_EQ(store.count("record"), records + 1) << "one batch for the set";
  EXPECT_EQ(journal.active_extents(), 4u) << "file 3's regions, not file 4's";
  for (uint64_t r : {2u, 5u, 7u, 11u}) EXPECT_TRUE(store.OnDisk({3, r})) << r;
  EXPECT_FALSE(store.OnDisk({4, 0}));
  // Those writes into recalled regions cost nothing more.
  for (uint64_t r : {2u, 7u, 11u}) {
    ASSERT_TRUE(journal.Enter(3, r * kMiB, 4096).ok());
    journal.Leave(3, r * kMiB, 4096);
  }
  EXPECT_EQ(store.count("record"), records + 1);

  // Past the recall window, file 4's region is forgotten.
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  }
  ASSERT_TRUE(journal.Enter(4, 5 * kMiB, 4096).ok());
  EXPECT_EQ(journal.active_extents(), 1u);
  journal.Leave(4, 5 * kMiB, 4096);
}

// A sequential writer records the regions ahead of it in the same batch:
// one synced write per 1 + ahead regions; a random writer gets none.
TEST(IntentJournalTest, SequentialWriterRecordsRegionsAhead) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB, /*ahead_regions=*/3);
  for (uint64_t at = 0; at < 16 * kMiB; at += 256 * 1024) {
    ASSERT_TRUE(journal.Enter(8, at, 256 * 1024).ok());
    journal.Leave(8, at, 256 * 1024);
  }
  // Region 0 alone (nothing before it), then 1..4, 5..8, 9..12, 13..16.
  EXPECT_EQ(store.count("record"), 5u);
  EXPECT_EQ(journal.active_extents(), 17u);
  for (uint64_t r = 0; r <= 16; ++r) EXPECT_TRUE(store.OnDisk({8, r})) << r;

  // Random writes far apart: no speculation.
  size_t before = store.count("record");
  for (uint64_t r : {100u, 300u, 200u}) {
    ASSERT_TRUE(journal.Enter(9, r * kMiB, 4096).ok());
    journal.Leave(9, r * kMiB, 4096);
  }
  EXPECT_EQ(store.count("record"), before + 3);
  EXPECT_EQ(journal.active_extents(), 20u);
}

// Regions recorded ahead never take more than half of the budget, and are
// retired like any idle region.
TEST(IntentJournalTest, RegionsAheadStayWithinHalfTheBudget) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 8 * kMiB, /*ahead_regions=*/3);
  ASSERT_TRUE(journal.Enter(8, 0, 4096).ok());
  ASSERT_TRUE(journal.Enter(8, 1 * kMiB, 4096).ok());
  // Half the budget is 4 regions: 2 active, so at most 2 ahead.
  EXPECT_EQ(journal.active_extents(), 4u);
  journal.Leave(8, 0, 4096);
  journal.Leave(8, 1 * kMiB, 4096);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch(), /*everything=*/true).ok());
  EXPECT_EQ(journal.active_extents(), 0u);
  for (uint64_t r = 0; r < 4; ++r) EXPECT_FALSE(store.OnDisk({8, r})) << r;
}

// Enough bytes written since the last epoch wake the flusher before its
// period ends (guarantee 3: a bounded amount of data at risk on the peers).
TEST(IntentJournalTest, BytesWrittenWakeTheFlusherEarly) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 1024 * kMiB);
  auto woke = std::async(std::launch::async, [&] {
    auto t0 = std::chrono::steady_clock::now();
    journal.WaitFlushWanted(std::chrono::milliseconds(30000));
    return std::chrono::steady_clock::now() - t0;
  });
  EXPECT_FALSE(Ready(woke, kMustBlock)) << "woke with nothing written";
  const uint64_t step = 64 * kMiB;
  for (uint64_t at = 0; at < IntentJournal::kFlushAfterBytes; at += step) {
    ASSERT_TRUE(journal.Enter(7, at, step).ok());
    journal.Leave(7, at, step);
  }
  ASSERT_TRUE(Ready(woke, kDeadline))
      << "WaitFlushWanted slept on after kFlushAfterBytes were written";
  EXPECT_LT(woke.get(), 5s);
  EXPECT_TRUE(journal.FlushWanted());
  journal.BeginEpoch();
  EXPECT_FALSE(journal.FlushWanted());
}

// Regions with writers inside are not freed by a retire: the waiter keeps
// waiting until they leave and a later epoch retires them.
TEST(IntentJournalTest, BudgetWaiterWaitsForBusyRegions) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 2 * kMiB);
  ASSERT_TRUE(journal.Enter(6, 0, 4096).ok());
  ASSERT_TRUE(journal.Enter(6, 1 * kMiB, 4096).ok());
  auto third = EnterAsync(&journal, 6, 2 * kMiB, 4096);
  Finally unblock{[&] {
    if (!Ready(third)) (void)journal.Retire(journal.BeginEpoch());
  }};
  ASSERT_TRUE(PollUntil([&] { return journal.FlushWanted(); }));
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  EXPECT_FALSE(Ready(third, kMustBlock))
      << "budget exceeded while both regions had writers";
  EXPECT_LE(journal.active_extents(), 2u);
  journal.Leave(6, 0, 4096);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  ASSERT_TRUE(Ready(third, kDeadline));
  EXPECT_TRUE(third.get().ok());
  EXPECT_EQ(journal.active_extents(), 2u);
  journal.Leave(6, 1 * kMiB, 4096);
  journal.Leave(6, 2 * kMiB, 4096);
}

TEST(IntentJournalTest, WriteLargerThanTheBudgetRunsWhenTheSetIsEmpty) {
  FaultStore store;
  IntentJournal journal(&store, 1 * kMiB, 2 * kMiB);
  // Empty set: a 5-region write passes at once.
  auto big = EnterAsync(&journal, 8, 0, 5 * kMiB);
  ASSERT_TRUE(Ready(big, kDeadline))
      << "a write larger than the budget blocked on an empty set";
  ASSERT_TRUE(big.get().ok());
  EXPECT_EQ(journal.active_extents(), 5u);
  journal.Leave(8, 0, 5 * kMiB);
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  EXPECT_EQ(journal.active_extents(), 0u);

  // Non-empty set: it waits until a retire empties it.
  ASSERT_TRUE(journal.Enter(8, 100 * kMiB, 4096).ok());
  journal.Leave(8, 100 * kMiB, 4096);
  auto big2 = EnterAsync(&journal, 8, 10 * kMiB, 3 * kMiB);
  Finally unblock{[&] {
    if (!Ready(big2)) (void)journal.Retire(journal.BeginEpoch());
  }};
  EXPECT_FALSE(Ready(big2, kMustBlock));
  ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  ASSERT_TRUE(Ready(big2, kDeadline));
  EXPECT_TRUE(big2.get().ok());
  EXPECT_EQ(journal.active_extents(), 3u);
}

// ---------------------------------------------------------------- (g) ----

class IntentJournalPersistTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") +
                        "/intent_journal_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    tmp_ = templ;
    db_dir_ = tmp_ + "/db";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
  }
  std::unique_ptr<meta::MetaStore> Open() {
    auto r = meta::MetaStore::Open(db_dir_);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  std::set<Region> Load(meta::MetaStore* db, uint64_t* extent) {
    auto r = db->LoadIntents();
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok()) return {};
    *extent = r->second;
    return std::set<Region>(r->first.begin(), r->first.end());
  }
  std::string tmp_, db_dir_;
};

TEST_F(IntentJournalPersistTest, RecordedRegionsComeBackAfterReopen) {
  {
    auto db = Open();
    ASSERT_NE(db, nullptr);
    MetaIntentStore real(db.get());
    FaultStore store(&real);
    IntentJournal journal(&store, 1 * kMiB, 64 * kMiB);
    ASSERT_TRUE(journal.Enter(7, 0, 4096).ok());
    ASSERT_TRUE(
        journal.Enter(7, 3 * kMiB + 100, 2 * kMiB).ok());  // regions 3, 4, 5
    ASSERT_TRUE(journal.Enter(9, 1 * kMiB, 1).ok());
    journal.Leave(7, 0, 4096);
    // No retire: the process "dies" with the regions active.
  }
  auto db = Open();
  ASSERT_NE(db, nullptr);
  uint64_t extent = 0;
  auto got = Load(db.get(), &extent);
  EXPECT_EQ(extent, 1 * kMiB);
  std::set<Region> want{{7, 0}, {7, 3}, {7, 4}, {7, 5}, {9, 1}};
  EXPECT_EQ(got.size(), want.size());
  for (const auto& r : want)
    EXPECT_TRUE(got.count(r)) << Str(r) << " not on disk";
}

TEST_F(IntentJournalPersistTest, RetiredRegionsAreGoneAfterReopen) {
  {
    auto db = Open();
    ASSERT_NE(db, nullptr);
    MetaIntentStore real(db.get());
    IntentJournal journal(&real, 4 * kMiB, 64 * kMiB);
    ASSERT_TRUE(journal.Enter(1, 0, 4096).ok());
    ASSERT_TRUE(journal.Enter(1, 4 * kMiB, 4096).ok());
    journal.Leave(1, 0, 4096);
    ASSERT_TRUE(journal.Retire(journal.BeginEpoch()).ok());
  }
  auto db = Open();
  ASSERT_NE(db, nullptr);
  uint64_t extent = 0;
  auto got = Load(db.get(), &extent);
  EXPECT_EQ(extent, 4 * kMiB);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got.count({1, 1})) << "the region with a writer inside is gone";
}

// The race of RetireRacingANewWriterKeepsTheRegionOnDisk on the real
// database: what LoadIntents returns after the "crash".
TEST_F(IntentJournalPersistTest, RetireRacingANewWriterOnRocksDb) {
  {
    auto db = Open();
    ASSERT_NE(db, nullptr);
    MetaIntentStore real(db.get());
    FaultStore store(&real);
    OpenGatesAtEnd guard{&store};
    IntentJournal journal(&store, 1 * kMiB, 64 * kMiB);
    ASSERT_TRUE(journal.Enter(4, 0, 4096).ok());
    journal.Leave(4, 0, 4096);
    const uint64_t epoch = journal.BeginEpoch();
    store.sync_gate.Close();
    auto retire =
        std::async(std::launch::async, [&] { return journal.Retire(epoch); });
    ASSERT_TRUE(store.sync_gate.WaitArrived(1));
    auto writer = EnterAsync(&journal, 4, 8192, 4096);
    (void)Ready(writer, kMustBlock);
    store.sync_gate.Open();
    ASSERT_TRUE(Ready(retire, kDeadline));
    (void)retire.get();
    ASSERT_TRUE(Ready(writer, kDeadline));
    ASSERT_TRUE(writer.get().ok());
    // The writer is still inside region 0 when the process dies.
  }
  auto db = Open();
  ASSERT_NE(db, nullptr);
  uint64_t extent = 0;
  auto got = Load(db.get(), &extent);
  EXPECT_TRUE(got.count({4, 0}))
      << "after a crash with a write in flight in {ino 4, region 0}, the "
         "journal on disk does not name that region: it would not be re-sent";
}

// An application's fsync while a peer is down: with the journal covering
// data extents, only namespace changes (and other records it does not
// cover) ask for a sync of the fracture log; without the journal, always.
TEST_F(IntentJournalPersistTest,
       FsyncSyncsTheFractureLogOnlyForWhatTheJournalLacks) {
  auto db = Open();
  ASSERT_NE(db, nullptr);
  meta::PeerRecord peer;
  peer.name = "b";
  peer.endpoint = "tcp://127.0.0.1:1";
  ASSERT_TRUE(db->PutPeer(peer).ok());
  FractureLog log(db.get(), "b");
  ASSERT_TRUE(log.Load().ok());
  // A fresh log syncs at the first fsync, whatever it holds.
  {
    FractureLog covered(db.get(), "b");
    covered.set_data_covered_by_journal(true);
    ASSERT_TRUE(covered.Load().ok());
    EXPECT_TRUE(covered.ClaimSyncForFsync());
    EXPECT_FALSE(covered.ClaimSyncForFsync());
  }

  meta::Change write;
  write.kind = meta::ChangeKind::kWrite;
  write.path = "disk.img";
  write.offset = 4096;
  write.length = 4096;
  meta::Change create;
  create.kind = meta::ChangeKind::kCreate;
  create.path = "new.img";
  create.mode = 0644;

  // Without the journal every fsync syncs.
  ASSERT_TRUE(log.Record(write).ok());
  EXPECT_TRUE(log.ClaimSyncForFsync());
  EXPECT_TRUE(log.ClaimSyncForFsync());

  log.set_data_covered_by_journal(true);
  EXPECT_FALSE(log.ClaimSyncForFsync()) << "claimed (and synced) already";
  ASSERT_TRUE(log.Record(write).ok());
  write.offset = 1 << 20;
  ASSERT_TRUE(log.Record(write).ok());
  EXPECT_FALSE(log.ClaimSyncForFsync()) << "data extents are the journal's";
  ASSERT_TRUE(log.Record(create).ok());
  EXPECT_TRUE(log.ClaimSyncForFsync()) << "a missed create must be durable";
  EXPECT_FALSE(log.ClaimSyncForFsync())
      << "claimed once, synced by the claimer";
  ASSERT_TRUE(log.SetFullSync(true).ok());
  EXPECT_TRUE(log.ClaimSyncForFsync());
  ASSERT_TRUE(log.MakeDurable().ok());
  EXPECT_FALSE(log.ClaimSyncForFsync());
}

}  // namespace
}  // namespace mirrorfs::sync
