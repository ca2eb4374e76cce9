#include "sync/generation.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

namespace mirrorfs::sync {
namespace {

TEST(GenerationsTest, AdvanceMovesTheCurrentIntoTheHistory) {
  Generations g;
  g.Advance();
  const meta::Uuid first = g.current;
  EXPECT_FALSE(first.IsZero());
  EXPECT_TRUE(g.history.empty());
  g.Advance();
  EXPECT_NE(g.current, first);
  EXPECT_EQ(g.history, std::vector<meta::Uuid>{first});
}

TEST(GenerationsTest, FormatAndParseRoundTrip) {
  Generations g;
  for (int i = 0; i < 3; ++i) g.Advance();
  Generations back = Generations::Parse(g.Format());
  EXPECT_EQ(back.current, g.current);
  EXPECT_EQ(back.history, g.history);
  EXPECT_TRUE(Generations::Parse("not-a-uuid").current.IsZero());
  EXPECT_EQ(Generations().Format(), "");
}

TEST(GenerationsTest, HistoryIsBounded) {
  Generations g;
  for (size_t i = 0; i < Generations::kMaxHistory + 5; ++i) g.Advance();
  EXPECT_EQ(g.history.size(), Generations::kMaxHistory);
}

TEST(GenerationsTest, CompareTellsOlderNewerSameAndDiverged) {
  Generations common;
  common.Advance();
  Generations a = common, b = common;
  EXPECT_EQ(a.Compare(b.current, b.history), GenerationRelation::kSame);

  a.Advance();  // a wrote on as primary; b did not
  EXPECT_EQ(a.Compare(b.current, b.history), GenerationRelation::kPeerOlder);
  EXPECT_EQ(b.Compare(a.current, a.history), GenerationRelation::kPeerNewer);

  b.Advance();  // both did: split brain
  EXPECT_EQ(a.Compare(b.current, b.history), GenerationRelation::kDiverged);
  EXPECT_EQ(b.Compare(a.current, a.history), GenerationRelation::kDiverged);

  b.Adopt(a.current, a.history);  // b follows a
  EXPECT_EQ(a.Compare(b.current, b.history), GenerationRelation::kSame);
  EXPECT_EQ(a.Compare(meta::Uuid(), {}), GenerationRelation::kUnknown);
}

class GenerationKeeperTest : public ::testing::Test {
 protected:
  GenerationKeeperTest() {
    start_.Advance();
    keeper_ = std::make_unique<GenerationKeeper>(
        start_, [this](const Generations& g) {
          if (fail_) return meta::Status::Error(EIO, "disk gone");
          persisted_.push_back(g);
          return meta::Status::Ok();
        });
    keeper_->SetOnAdvance([this](const Generations& started) {
      ++advanced_;
      // Called without the keeper's lock: it may read it.
      EXPECT_EQ(keeper_->Get().current, persisted_.back().current);
      EXPECT_EQ(started.current, persisted_.back().current);
      // Until the peers are told, every other change must wait for it.
      EXPECT_TRUE(keeper_->due());
      if (during_advance_) during_advance_();
    });
  }

  Generations start_;
  std::unique_ptr<GenerationKeeper> keeper_;
  std::vector<Generations> persisted_;
  bool fail_ = false;
  int advanced_ = 0;
  std::function<void()> during_advance_;
};

TEST_F(GenerationKeeperTest, NothingIsDueUntilPromotedOrASharingPeerIsLost) {
  EXPECT_FALSE(keeper_->due());
  ASSERT_TRUE(keeper_->BeforeChange(/*all_live=*/false).ok());
  keeper_->PeerLost();  // no peer shared it yet
  EXPECT_FALSE(keeper_->due());
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  EXPECT_EQ(keeper_->Get().current, start_.current);
  EXPECT_TRUE(persisted_.empty());
  EXPECT_EQ(advanced_, 0);
}

TEST_F(GenerationKeeperTest, TheFirstChangeAfterPromotionStartsOneGeneration) {
  keeper_->MarkDue();
  EXPECT_TRUE(keeper_->due());
  EXPECT_EQ(keeper_->Get().current, start_.current);  // not before a write
  ASSERT_TRUE(keeper_->BeforeChange(/*all_live=*/false).ok());
  Generations now = keeper_->Get();
  EXPECT_NE(now.current, start_.current);
  EXPECT_EQ(now.history.front(), start_.current);
  ASSERT_EQ(persisted_.size(), 1u);
  EXPECT_EQ(persisted_[0].current, now.current);
  EXPECT_EQ(advanced_, 1);
  EXPECT_FALSE(keeper_->due());
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());  // later changes: nothing
  EXPECT_EQ(keeper_->Get().current, now.current);
  EXPECT_EQ(advanced_, 1);
}

TEST_F(GenerationKeeperTest, NoNewGenerationWhileEveryPeerFollowsLive) {
  keeper_->MarkDue();
  ASSERT_TRUE(keeper_->BeforeChange(/*all_live=*/true).ok());
  EXPECT_EQ(keeper_->Get().current, start_.current);
  EXPECT_FALSE(keeper_->due());
  EXPECT_EQ(advanced_, 0);
}

TEST_F(GenerationKeeperTest, ASharingPeerLostMakesTheNextChangeStartOne) {
  keeper_->MarkShared();
  keeper_->PeerLost();
  EXPECT_TRUE(keeper_->due());
  keeper_->PeerLost();  // a second loss before any write: still one
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  EXPECT_NE(keeper_->Get().current, start_.current);
  EXPECT_EQ(advanced_, 1);
  // The new generation is shared by no peer yet: losing one starts none.
  keeper_->PeerLost();
  EXPECT_FALSE(keeper_->due());
}

TEST_F(GenerationKeeperTest, AFailedPersistChangesNothingAndStaysDue) {
  keeper_->MarkDue();
  fail_ = true;
  meta::Status s = keeper_->BeforeChange(false);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(keeper_->Get().current, start_.current);
  EXPECT_TRUE(keeper_->due());
  EXPECT_EQ(advanced_, 0);
  fail_ = false;
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  EXPECT_NE(keeper_->Get().current, start_.current);
  EXPECT_EQ(advanced_, 1);
}

TEST_F(GenerationKeeperTest, APeerLostWhileOneIsAnnouncedMakesAnotherDue) {
  keeper_->MarkDue();
  during_advance_ = [this] {
    keeper_->MarkShared();  // a connected peer was told of it
    keeper_->PeerLost();    // and is lost before the change is sent
  };
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  EXPECT_EQ(advanced_, 1);
  EXPECT_TRUE(keeper_->due());
  during_advance_ = nullptr;
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  EXPECT_EQ(advanced_, 2);
  EXPECT_EQ(persisted_.size(), 2u);
  EXPECT_FALSE(keeper_->due());
}

TEST_F(GenerationKeeperTest, AChangeOnAnotherThreadWaitsUntilItIsAnnounced) {
  // The other thread's change starts while the announcement is under way:
  // it must not return before on_advance has (its frames would reach the
  // peers ahead of the new generation).
  keeper_->MarkDue();
  std::atomic<bool> announced{false};
  std::atomic<bool> other_returned_early{false};
  std::thread other;
  during_advance_ = [&] {
    other = std::thread([&] {
      ASSERT_TRUE(keeper_->BeforeChange(false).ok());
      if (!announced.load()) other_returned_early = true;
    });
    // Give it every chance to overtake; it must wait anyway.
    for (int i = 0; i < 1000; ++i) std::this_thread::yield();
    announced = true;
  };
  ASSERT_TRUE(keeper_->BeforeChange(false).ok());
  other.join();
  EXPECT_FALSE(other_returned_early.load());
  EXPECT_EQ(advanced_, 1);
}

}  // namespace
}  // namespace mirrorfs::sync
