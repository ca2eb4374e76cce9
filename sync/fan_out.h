// FanOut: the volume's meta::Mirror. It hands every change to the session of
// every peer, in call order, and returns one Completion that counts down the
// peers that took it.
//
// Error combination (the written rule of DESIGN.md guarantee 5): a peer that
// is not connected, is lost, or fails to apply a change never fails the
// application's operation; its session drops it from mirroring and logs why.
//
// Modes: kSync waits for every connected peer (Submit returns the
// Completion, and Wait() receives the peers' answers on the waiting thread:
// PeerSession::Await); kAsync returns at once (Submit returns nullptr) while
// the sessions deliver in the background.
//
// Thread-safety: thread-safe. sessions_mu_ guards the peer list; it is taken
// after the volume's locks and before each session's own mutex, and never
// held while waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "meta/change.h"
#include "sync/intent_journal.h"
#include "sync/peer_session.h"

namespace mirrorfs::sync {

enum class MirrorMode { kSync, kAsync };

class FanOut : public meta::Mirror {
 public:
  explicit FanOut(MirrorMode mode) : mode_(mode) {}
  ~FanOut() override;

  // Starts the epoch flusher: every `period` (or sooner when the journal
  // asks), the local store is synced (`store_fd`), every peer flushes what
  // it applied, and then journal regions idle since before the epoch
  // retire. `*journal` (may be null: no journal) must outlive the FanOut.
  // Peers' unflushed writes are tracked per session regardless (guarantee
  // 3), so the flusher runs with or without a journal.
  void StartEpochs(IntentJournal* journal, int store_fd,
                   std::chrono::milliseconds period);
  // Runs one epoch now and waits for it (a clean stop: afterwards nothing
  // is in flight and, with no writes after it, the journal is empty).
  // `final`: a clean stop; every idle region retires.
  void FlushEpoch(bool final = false);

  // How to make every peer's fracture log durable (one state database: one
  // WAL sync covers all). Once set, an fsync that finds a peer not mirrored
  // live runs that sync on a helper thread, overlapping the local fsync,
  // instead of before it; the fsync's Completion waits for both.
  void SetLogSync(std::function<meta::Status()> sync);

  // Adds a started session; FanOut owns it from now on.
  void AddSession(std::unique_ptr<PeerSession> session);
  // Stops and removes the session named `name`; false if there is none.
  bool RemoveSession(const std::string& name);
  // Stops every session (pending completions are Done()).
  void StopAll();
  // The primary's generations (may stay unset: no generation checks).
  // `*generations` must outlive the FanOut.
  void SetGenerations(GenerationKeeper* generations) {
    generations_ = generations;
  }
  // The primary started `started` (GenerationKeeper's on_advance): every
  // connected peer is told, ahead of any later change
  // (PeerSession::AnnounceGeneration).
  void AnnounceGeneration(const Generations& started);

  std::shared_ptr<meta::Completion> Submit(const meta::Change& change) override;
  // Waits for a Completion that Submit returned, receiving the peers'
  // acknowledgements on this thread (see PeerSession::Await).
  void Wait(const std::shared_ptr<meta::Completion>& completion) override;
  // Also starts a due generation (GenerationKeeper::BeforeChange): a write
  // fails rather than land under a generation that is not on disk.
  meta::Status Prepare(const meta::Change& change) override;
  void Finished(const meta::Change& change) override;
  void Diverged(const meta::Change& change) override;

  std::vector<PeerSnapshot> Snapshot() const;
  // The session named `name`, or nullptr. Sessions live until RemoveSession
  // or StopAll; callers must not race those.
  PeerSession* Find(const std::string& name) const;
  MirrorMode mode() const { return mode_; }

 private:
  // Queues `change` on every session; the Completion counts them (never
  // nullptr when a session took it, whatever the mode). `waited`: the
  // caller waits for the Completion, so a log sync may run beside it;
  // `attended`: it waits through Wait().
  std::shared_ptr<meta::Completion> SubmitAll(const meta::Change& change,
                                              bool waited, bool attended);
  void RunEpochs();
  void RunLogSyncs();

  const MirrorMode mode_;
  IntentJournal* journal_ = nullptr;
  GenerationKeeper* generations_ = nullptr;
  // Starts a due generation before a change, unless every peer follows live.
  meta::Status StartGenerationIfDue();
  int store_fd_ = -1;
  std::chrono::milliseconds period_{1000};
  std::thread epoch_thread_;

  std::function<meta::Status()> log_sync_;  // set once, before any Submit
  std::thread log_sync_thread_;
  std::mutex log_sync_mu_;  // guards the two below
  std::condition_variable log_sync_cv_;
  std::vector<std::shared_ptr<meta::Completion>> log_sync_waiting_;
  bool log_sync_stop_ = false;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // with stop_cv_: wakes the epoch thread to stop
  std::condition_variable stop_cv_;
  std::mutex epoch_mu_;  // serializes epochs (flusher thread, FlushEpoch)
  mutable std::shared_mutex sessions_mu_;  // guards sessions_
  // Shared with waiters in Wait(), which outlive a RemoveSession.
  std::vector<std::shared_ptr<PeerSession>> sessions_;
};

}  // namespace mirrorfs::sync
