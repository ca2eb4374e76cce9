// FanOut: the volume's meta::Mirror. It hands every change to the session of
// every peer, in call order, and returns one Completion that counts down the
// peers that took it.
//
// Error combination (the written rule of DESIGN.md guarantee 5): a peer that
// is not connected, is lost, or fails to apply a change never fails the
// application's operation; its session drops it from mirroring and logs why.
//
// Modes: kSync waits for every connected peer (Submit returns the
// Completion); kAsync returns at once (Submit returns nullptr) while the
// sessions deliver in the background.
//
// Thread-safety: thread-safe. sessions_mu_ guards the peer list; it is taken
// after the volume's locks and before each session's own mutex.
#pragma once

#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "meta/change.h"
#include "sync/peer_session.h"

namespace mirrorfs::sync {

enum class MirrorMode { kSync, kAsync };

class FanOut : public meta::Mirror {
 public:
  explicit FanOut(MirrorMode mode) : mode_(mode) {}
  ~FanOut() override;

  // Adds a started session; FanOut owns it from now on.
  void AddSession(std::unique_ptr<PeerSession> session);
  // Stops and removes the session named `name`; false if there is none.
  bool RemoveSession(const std::string& name);
  // Stops every session (pending completions are Done()).
  void StopAll();

  std::shared_ptr<meta::Completion> Submit(const meta::Change& change) override;

  std::vector<PeerSnapshot> Snapshot() const;
  // The session named `name`, or nullptr. Sessions live until RemoveSession
  // or StopAll; callers must not race those.
  PeerSession* Find(const std::string& name) const;
  MirrorMode mode() const { return mode_; }

 private:
  const MirrorMode mode_;
  mutable std::shared_mutex sessions_mu_;  // guards sessions_
  std::vector<std::unique_ptr<PeerSession>> sessions_;
};

}  // namespace mirrorfs::sync
