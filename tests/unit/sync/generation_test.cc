#include "sync/generation.h"

#include <gtest/gtest.h>

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

TEST(GenerationKeeperTest,
     APeerLostAfterSharingStartsOneNewGenerationAndSaysSo) {
  Generations start;
  start.Advance();
  std::vector<Generations> persisted;
  GenerationKeeper keeper(start, [&](const Generations& g) {
    persisted.push_back(g);
    return meta::Status::Ok();
  });
  int advanced = 0;
  keeper.SetOnAdvance([&] {
    ++advanced;
    // Called without the keeper's lock: it may read it.
    EXPECT_EQ(keeper.Get().current, persisted.back().current);
  });

  // No peer shared the generation: losing one changes nothing.
  ASSERT_TRUE(keeper.PeerLost().ok());
  EXPECT_EQ(keeper.Get().current, start.current);
  EXPECT_EQ(advanced, 0);

  keeper.MarkShared();
  ASSERT_TRUE(keeper.PeerLost().ok());
  Generations now = keeper.Get();
  EXPECT_NE(now.current, start.current);
  EXPECT_EQ(now.history.front(), start.current);
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].current, now.current);
  EXPECT_EQ(advanced, 1);

  // A second loss before any peer shared the new one: no further change.
  ASSERT_TRUE(keeper.PeerLost().ok());
  EXPECT_EQ(keeper.Get().current, now.current);
  EXPECT_EQ(advanced, 1);
}

TEST(GenerationKeeperTest, AFailedPersistIsReportedAndNotAnnounced) {
  Generations start;
  start.Advance();
  GenerationKeeper keeper(start, [](const Generations&) {
    return meta::Status::Error(EIO, "disk gone");
  });
  int advanced = 0;
  keeper.SetOnAdvance([&] { ++advanced; });
  keeper.MarkShared();
  meta::Status s = keeper.PeerLost();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(advanced, 0);
}

}  // namespace
}  // namespace mirrorfs::sync
