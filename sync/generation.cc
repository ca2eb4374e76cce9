#include "sync/generation.h"

#include <algorithm>
#include <sstream>

namespace mirrorfs::sync {

const char* GenerationRelationName(GenerationRelation relation) {
  switch (relation) {
    case GenerationRelation::kSame:
      return "same history";
    case GenerationRelation::kPeerOlder:
      return "peer is older";
    case GenerationRelation::kPeerNewer:
      return "peer is newer";
    case GenerationRelation::kUnknown:
      return "peer has no history";
    case GenerationRelation::kDiverged:
      return "diverged";
  }
  return "diverged";
}

Generations Generations::Parse(const std::string& text) {
  Generations g;
  std::istringstream in(text);
  std::string word;
  bool first = true;
  while (in >> word) {
    auto u = meta::Uuid::Parse(word);
    if (!u.ok()) return Generations();
    if (first) {
      g.current = *u;
      first = false;
    } else if (g.history.size() < kMaxHistory) {
      g.history.push_back(*u);
    }
  }
  return g;
}

std::string Generations::Format() const {
  if (current.IsZero()) return "";
  std::string out = current.ToString();
  for (const auto& h : history) {
    // Appended in two steps: `" " + h.ToString()` trips GCC 12's bogus
    // -Wrestrict at -O3 (GCC bug 105329), an error with -Werror.
    out += ' ';
    out += h.ToString();
  }
  return out;
}

void Generations::Advance() {
  if (!current.IsZero()) {
    history.insert(history.begin(), current);
    if (history.size() > kMaxHistory) history.resize(kMaxHistory);
  }
  current = meta::Uuid::Generate();
}

void Generations::Adopt(const meta::Uuid& peer_current,
                        const std::vector<meta::Uuid>& peer_history) {
  current = peer_current;
  history = peer_history;
  if (history.size() > kMaxHistory) history.resize(kMaxHistory);
}

GenerationRelation Generations::Compare(
    const meta::Uuid& peer_current,
    const std::vector<meta::Uuid>& peer_history) const {
  if (peer_current.IsZero()) return GenerationRelation::kUnknown;
  if (current.IsZero()) return GenerationRelation::kPeerNewer;
  if (peer_current == current) return GenerationRelation::kSame;
  if (std::find(history.begin(), history.end(), peer_current) !=
      history.end()) {
    return GenerationRelation::kPeerOlder;
  }
  if (std::find(peer_history.begin(), peer_history.end(), current) !=
      peer_history.end()) {
    return GenerationRelation::kPeerNewer;
  }
  return GenerationRelation::kDiverged;
}

}  // namespace mirrorfs::sync
