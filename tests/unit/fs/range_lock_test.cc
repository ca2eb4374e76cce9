#include "fs/range_lock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace mirrorfs::fs {
namespace {

using namespace std::chrono_literals;

// Waits (polling, with a deadline) until `cond` holds.
template <typename Cond>
bool Eventually(Cond cond) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return cond();
}

TEST(RangeLockTest, DisjointRangesProceedTogether) {
  RangeLock lock;
  auto a = lock.Lock(0, 100);
  auto b = lock.Lock(100, 100);  // adjacent, not overlapping
  auto c = lock.Lock(1000, 1);
  EXPECT_TRUE(a.held());
  EXPECT_TRUE(b.held());
  EXPECT_TRUE(c.held());
  EXPECT_EQ(lock.PendingForTest(), 3u);
}

TEST(RangeLockTest, OverlappingRangeWaitsForRelease) {
  RangeLock lock;
  auto a = lock.Lock(0, 100);
  std::atomic<bool> got{false};
  std::thread t([&] {
    auto b = lock.Lock(50, 100);
    got = true;
  });
  ASSERT_TRUE(Eventually([&] { return lock.PendingForTest() == 2; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(got.load());
  a.Unlock();
  t.join();
  EXPECT_TRUE(got.load());
  EXPECT_EQ(lock.PendingForTest(), 0u);
}

TEST(RangeLockTest, EmptyRangeNeverWaits) {
  RangeLock lock;
  auto all = lock.LockAll();
  auto empty = lock.Lock(10, 0);
  EXPECT_TRUE(empty.held());
}

TEST(RangeLockTest, WholeFileLockIsNotStarvedAndKeepsArrivalOrder) {
  RangeLock lock;
  auto first = lock.Lock(0, 10);
  std::vector<int> order;
  std::mutex order_mu;
  std::thread all([&] {
    auto g = lock.LockAll();
    std::lock_guard<std::mutex> l(order_mu);
    order.push_back(1);
  });
  ASSERT_TRUE(Eventually([&] { return lock.PendingForTest() == 2; }));
  // Disjoint from `first`, but overlaps the waiting whole-file lock: it must
  // queue behind it rather than overtake it.
  std::thread late([&] {
    auto g = lock.Lock(500, 10);
    std::lock_guard<std::mutex> l(order_mu);
    order.push_back(2);
  });
  ASSERT_TRUE(Eventually([&] { return lock.PendingForTest() == 3; }));
  first.Unlock();
  all.join();
  late.join();
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], 1);
  EXPECT_EQ(order[1], 2);
}

TEST(RangeLockTest, SaturatesAtEndOfOffsetSpace) {
  RangeLock lock;
  auto a = lock.Lock(UINT64_MAX - 5, 100);
  std::atomic<bool> got{false};
  std::thread t([&] {
    auto b = lock.Lock(UINT64_MAX - 1, 1);
    got = true;
  });
  ASSERT_TRUE(Eventually([&] { return lock.PendingForTest() == 2; }));
  EXPECT_FALSE(got.load());
  a.Unlock();
  t.join();
  EXPECT_TRUE(got.load());
}

TEST(RangeLockTest, MoveTransfersOwnership) {
  RangeLock lock;
  RangeLock::Guard g = lock.Lock(0, 10);
  RangeLock::Guard h = std::move(g);
  EXPECT_FALSE(g.held());
  EXPECT_TRUE(h.held());
  h.Unlock();
  EXPECT_EQ(lock.PendingForTest(), 0u);
}

// Many threads write overlapping ranges of a shared array under the lock;
// each range must see no concurrent writer.
TEST(RangeLockTest, ExcludesOverlappingWritersUnderStress) {
  RangeLock lock;
  std::vector<std::atomic<int>> owners(64);
  std::atomic<int> violations{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; i++) {
        uint64_t off = static_cast<uint64_t>((t * 7 + i * 13) % 56);
        uint64_t len = 1 + static_cast<uint64_t>((t + i) % 8);
        auto g = lock.Lock(off, len);
        for (uint64_t b = off; b < off + len; b++) {
          int expected = 0;
          if (!owners[b].compare_exchange_strong(expected, t + 1)) {
            violations++;
          }
        }
        for (uint64_t b = off; b < off + len; b++) owners[b] = 0;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(violations.load(), 0);
}

}  // namespace
}  // namespace mirrorfs::fs
