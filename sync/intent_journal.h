// IntentJournal: the write-intent journal (DESIGN.md guarantee 1 across a
// crash of the primary). Before the first write into a coarse region
// ("intent extent", default 4 MiB) of a file proceeds — locally or to any
// peer — the region is recorded durably in the state database. Writes into
// a region that is already active cost no database write. After a crash,
// exactly the active regions are added to every peer's fracture log, so a
// restart re-sends those regions and nothing else.
//
//   Enter(write) ──region new──> pending ──group commit (one synced batch
//        │                                for every waiting writer)──> active
//        └──region active──────────────────────────────────────────> active
//   Leave(write): writers--, stamped with the current epoch
//   epoch flush (local syncfs + every peer fsynced + fracture logs durable):
//        active regions idle since before that epoch ──> retired (lazily)
//
// The active set is bounded by the budget (`budget_bytes` / extent size
// regions): a write that needs a new region while the set is full waits for
// a flush to retire old ones. The budget is the promised ceiling of what a
// crash re-sends.
//
// Thread-safety: thread-safe. mu_ is held across no I/O; the one committer
// at a time writes its batch without it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "meta/meta_store.h"
#include "meta/status.h"

namespace mirrorfs::sync {

// What the journal needs of the state database: the seam where tests inject
// faults (fail the Nth write, stop at a named point) to check the order —
// intent durable before data, fracture logs durable before intents retire.
class IntentStore {
 public:
  using Region = meta::MetaStore::IntentRegion;
  virtual ~IntentStore() = default;
  virtual meta::Status RecordIntents(const std::vector<Region>& regions,
                                     uint64_t extent_bytes) = 0;
  virtual meta::Status RetireIntents(const std::vector<Region>& regions) = 0;
  virtual meta::Status SyncWal() = 0;
};

// The real one: the node's MetaStore. `*store` must outlive it.
class MetaIntentStore : public IntentStore {
 public:
  explicit MetaIntentStore(meta::MetaStore* store) : store_(store) {}
  meta::Status RecordIntents(const std::vector<Region>& regions,
                             uint64_t extent_bytes) override {
    return store_->RecordIntents(regions, extent_bytes);
  }
  meta::Status RetireIntents(const std::vector<Region>& regions) override {
    return store_->RetireIntents(regions);
  }
  meta::Status SyncWal() override { return store_->SyncWal(); }

 private:
  meta::MetaStore* store_;
};

class IntentJournal {
 public:
  using Region = meta::MetaStore::IntentRegion;

  // `*store` must outlive the journal. A region retires once idle for
  // `idle_epochs` epochs (0: at the first flush after its last write).
  // A writer that must record a new region also records, in the same
  // synced batch and within half of the budget: if sequential (the region
  // before is active), the `ahead_regions` after it; and the regions of
  // the same file that retired within the last `recall_epochs` epochs.
  IntentJournal(IntentStore* store, uint64_t extent_bytes,
                uint64_t budget_bytes, uint64_t ahead_regions = 0,
                uint64_t idle_epochs = 0, uint64_t recall_epochs = 0);

  // A write of [offset, offset + length) of file `ino` begins. Returns once
  // every region it touches is durably active (or the error of recording
  // it: the write must then fail, or guarantee 1 would not hold).
  meta::Status Enter(uint64_t ino, uint64_t offset, uint64_t length);
  // The write that Enter()ed the same range is done: applied locally and
  // acknowledged (or logged) by every peer.
  void Leave(uint64_t ino, uint64_t offset, uint64_t length);

  // Starts an epoch: returns its number. Every write that Leave()s before
  // this call is covered by a flush issued after it.
  uint64_t BeginEpoch();
  // A flush issued after BeginEpoch() returned `epoch` completed: regions
  // without writers whose last write left at or before `epoch` may retire.
  // Lazily: only those idle for `idle_epochs` epochs, unless writers wait
  // for room or `everything` (a clean stop) — a region written again and
  // again stays active rather than cost a synced database write each time
  // it comes back.
  meta::Status Retire(uint64_t epoch, bool everything = false);
  // Bytes entered since the last epoch after which a flush is wanted early
  // (the peers' page caches hold at most about this much unflushed data).
  static constexpr uint64_t kFlushAfterBytes = 256u << 20;
  // True when writers wait for room, or enough bytes were written since the
  // last epoch, that a flush should run now rather than at its period.
  bool FlushWanted() const;
  // Blocks until FlushWanted(), `*stop` (if given) or `timeout`.
  void WaitFlushWanted(std::chrono::milliseconds timeout,
                       const std::atomic<bool>* stop = nullptr);
  // Wakes WaitFlushWanted to look at its `*stop` again (set it first).
  void Interrupt();

  uint64_t extent_bytes() const { return extent_; }
  uint64_t budget_bytes() const { return budget_regions_ * extent_; }
  size_t active_extents() const;

 private:
  struct State {
    uint32_t writers = 0;
    uint64_t last_epoch = 0;
    bool durable = false;
    bool queued = false;  // in pending_ or in the batch being committed
  };

  IntentStore* const store_;
  const uint64_t extent_;
  const uint64_t budget_regions_;
  const uint64_t ahead_;
  const uint64_t idle_epochs_;
  const uint64_t recall_epochs_;
  mutable std::mutex mu_;  // guards all below; leaf except the committer
  std::condition_variable cv_;
  std::map<Region, State> regions_;
  std::vector<Region> pending_;         // new, not yet durable
  std::map<Region, uint64_t> retired_;  // retired lately: the epoch it did
  bool committing_ = false;
  uint64_t epoch_ = 1;
  uint64_t bytes_since_epoch_ = 0;
  int waiting_for_room_ = 0;
  meta::Status commit_error_;
};

}  // namespace mirrorfs::sync
