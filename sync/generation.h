// Generations: the identifier of a copy's data history and its ancestors
// (like DRBD's generation UUIDs). A primary gets a new current generation
// when it writes after becoming primary, or after losing a peer that knew
// its current one, unless every peer follows it live at that moment (then
// none can have diverged); the previous one moves into the history. A
// primary that has not written since keeps its generation: a newer node
// then sees it as stale, not as a split brain.
// Comparing two nodes' generations tells who is newer, or that both wrote as
// primary since their last common one (split brain).
//
// Stored in the node identity's generation field as the current generation
// followed by the history, newest first, separated by spaces.
//
// Thread-safety: a value type.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "meta/status.h"
#include "meta/uuid.h"

namespace mirrorfs::sync {

enum class GenerationRelation {
  kSame,       // same current generation: the fracture logs decide
  kPeerOlder,  // the peer's current is one of our ancestors: we are newer
  kPeerNewer,  // our current is one of the peer's ancestors: it is newer
  kUnknown,    // the peer has no generation yet (a fresh copy)
  kDiverged,   // neither: both wrote since their last common generation
};
const char* GenerationRelationName(GenerationRelation relation);

struct Generations {
  static constexpr size_t kMaxHistory = 32;

  meta::Uuid current;
  std::vector<meta::Uuid> history;  // newest first

  // Parses the stored text; empty or malformed text gives no generation.
  static Generations Parse(const std::string& text);
  std::string Format() const;
  // Starts a new current generation; the old one heads the history.
  void Advance();
  // Takes the peer's history as ours (after following it: resync from it).
  void Adopt(const meta::Uuid& peer_current,
             const std::vector<meta::Uuid>& peer_history);
  GenerationRelation Compare(const meta::Uuid& peer_current,
                             const std::vector<meta::Uuid>& peer_history) const;
};

// A primary's generations, shared by its peer sessions. Thread-safe.
class GenerationKeeper {
 public:
  // `persist` stores a new value durably (called with mu_ held: it must
  // not call back into the keeper).
  GenerationKeeper(Generations initial,
                   std::function<meta::Status(const Generations&)> persist)
      : gens_(std::move(initial)), persist_(std::move(persist)) {}

  // Called after BeforeChange() started a new generation, with it, so that
  // the peers still connected learn it: they shared the old one, and one of
  // them promoted later must count as this node's successor, not as a split
  // brain. Until it returns, every other change waits in BeforeChange(): it
  // must queue what tells the peers before any later change reaches them.
  // Called without mu_ held (it may call MarkShared()). Set before any peer
  // session starts.
  void SetOnAdvance(std::function<void(const Generations&)> on_advance) {
    on_advance_ = std::move(on_advance);
  }

  Generations Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return gens_;
  }
  // A peer accepted a session in the current generation.
  void MarkShared() {
    std::lock_guard<std::mutex> lock(mu_);
    shared_ = true;
  }
  // This node just became primary: what it writes from now on may be a
  // history of its own (a peer may have been promoted meanwhile).
  void MarkDue() { due_.store(true, std::memory_order_release); }
  // A peer that knew the current generation was lost: what this primary
  // writes from now on is a new history (so that a peer promoted meanwhile
  // is recognised as a split brain, not as an ancestor): one is due.
  void PeerLost() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!shared_) return;
    shared_ = false;
    due_.store(true, std::memory_order_release);
  }
  // Whether the next change must first go through BeforeChange(): one is
  // due, or being started (its on_advance has not returned yet).
  bool due() const {
    return due_.load(std::memory_order_acquire) ||
           advancing_.load(std::memory_order_acquire);
  }
  // Before this primary applies a change: if a new generation is due, it
  // starts it, durably, and calls on_advance, unless `all_live` (every
  // peer follows the current generation live, so none can have diverged:
  // nothing is due any more). Returns once no generation is being started.
  // On error nothing changed and it stays due.
  meta::Status BeforeChange(bool all_live) {
    std::lock_guard<std::mutex> advancing(advance_mu_);
    Generations started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!due_.load(std::memory_order_relaxed)) return meta::Status::Ok();
      if (all_live) {
        due_.store(false, std::memory_order_release);
        return meta::Status::Ok();
      }
      Generations next = gens_;
      next.Advance();
      auto s = persist_(next);
      if (!s.ok()) return s;
      gens_ = next;
      started = std::move(next);
      shared_ = false;
      // advancing_ first: due() stays true throughout (a change that finds
      // due_ cleared also finds advancing_ set, and waits above).
      advancing_.store(true, std::memory_order_release);
      due_.store(false, std::memory_order_release);
    }
    if (on_advance_) on_advance_(started);
    advancing_.store(false, std::memory_order_release);
    return meta::Status::Ok();
  }

 private:
  mutable std::mutex mu_;  // guards gens_, shared_; leaf lock
  Generations gens_;
  bool shared_ = false;
  std::function<meta::Status(const Generations&)> persist_;
  std::function<void(const Generations&)> on_advance_;
  // Held while a generation is started and announced: later changes wait.
  // Taken before mu_.
  std::mutex advance_mu_;
  std::atomic<bool> due_{false};
  std::atomic<bool> advancing_{false};
};

}  // namespace mirrorfs::sync
