// Unit tests of sync/busy_poll.h: when a wait spins before it sleeps.
#include "sync/busy_poll.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>

namespace mirrorfs::sync {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

class BusyPollTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override { ::close(fd_); }
  void Post() {
    uint64_t one = 1;
    ASSERT_EQ(::write(fd_, &one, sizeof(one)), 8);
  }
  void Take() {
    uint64_t n;
    ASSERT_EQ(::read(fd_, &n, sizeof(n)), 8);
  }
  int Wait(BusyPoll* poll, int timeout_ms, bool may_spin = true) {
    struct pollfd p = {fd_, POLLIN, 0};
    return poll->Wait(&p, 1, timeout_ms, may_spin);
  }
  int fd_ = -1;
};

// The budget is far longer than a poll(2) of a ready descriptor and far
// shorter than the timeouts, so that a loaded machine cannot flip a result.
constexpr auto kBudget = milliseconds(50);

TEST_F(BusyPollTest, AnAnswerWithinTheBudgetKeepsItSpinning) {
  BusyPoll poll(kBudget);
  EXPECT_TRUE(poll.spinning());  // a fresh wait spins
  Post();
  EXPECT_EQ(Wait(&poll, 1000), 1);
  Take();
  EXPECT_EQ(poll.spun(), 1u);
  EXPECT_EQ(poll.caught(), 1u);
  EXPECT_TRUE(poll.spinning());
}

TEST_F(BusyPollTest, AWaitLongerThanTheBudgetStopsTheSpinning) {
  BusyPoll poll(kBudget);
  auto start = Clock::now();
  EXPECT_EQ(Wait(&poll, 100), 0);  // nothing comes: spins, then sleeps
  EXPECT_GE(Clock::now() - start, milliseconds(100));  // timeout from the call
  EXPECT_EQ(poll.spun(), 1u);
  EXPECT_EQ(poll.caught(), 0u);
  EXPECT_FALSE(poll.spinning());

  // The next wait sleeps at once; its quick answer turns spinning back on.
  Post();
  EXPECT_EQ(Wait(&poll, 1000), 1);
  Take();
  EXPECT_EQ(poll.spun(), 1u);
  EXPECT_TRUE(poll.spinning());
}

TEST_F(BusyPollTest, AWaitThatMayNotSpinLeavesTheRuleAlone) {
  BusyPoll poll(kBudget);
  EXPECT_EQ(Wait(&poll, 100, /*may_spin=*/false), 0);
  EXPECT_EQ(poll.spun(), 0u);
  EXPECT_TRUE(poll.spinning());  // a long wait that did not spin says nothing
}

TEST_F(BusyPollTest, AZeroBudgetNeverSpins) {
  BusyPoll poll(milliseconds(0));
  Post();
  EXPECT_EQ(Wait(&poll, 1000), 1);
  Take();
  EXPECT_EQ(Wait(&poll, 10), 0);
  EXPECT_EQ(poll.spun(), 0u);
}

}  // namespace
}  // namespace mirrorfs::sync
