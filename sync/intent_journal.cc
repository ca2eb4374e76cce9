#include "sync/intent_journal.h"

#include <algorithm>

namespace mirrorfs::sync {

IntentJournal::IntentJournal(IntentStore* store, uint64_t extent_bytes,
                             uint64_t budget_bytes, uint64_t ahead_regions,
                             uint64_t idle_epochs, uint64_t recall_epochs)
    : store_(store),
      extent_(std::max<uint64_t>(extent_bytes, 4096)),
      budget_regions_(std::max<uint64_t>(budget_bytes / extent_, 1)),
      ahead_(ahead_regions),
      idle_epochs_(idle_epochs),
      recall_epochs_(recall_epochs) {}

meta::Status IntentJournal::Enter(uint64_t ino, uint64_t offset,
                                  uint64_t length) {
  const uint64_t first = offset / extent_;
  const uint64_t last = (offset + std::max<uint64_t>(length, 1) - 1) / extent_;
  std::unique_lock<std::mutex> lock(mu_);
  bool flush_due = bytes_since_epoch_ < kFlushAfterBytes;
  bytes_since_epoch_ += length;
  if (flush_due && bytes_since_epoch_ >= kFlushAfterBytes) {
    cv_.notify_all();  // wakes WaitFlushWanted: flush before the period ends
  }
  // Room for the regions this write adds (a write larger than the whole
  // budget is let through once the set is empty, or it could never run).
  auto missing = [&] {
    uint64_t n = 0;
    for (uint64_t r = first; r <= last; ++r) n += !regions_.count({ino, r});
    return n;
  };
  while (true) {
    uint64_t need = missing();
    if (need == 0 || regions_.size() + need <= budget_regions_ ||
        regions_.empty()) {
      break;
    }
    ++waiting_for_room_;
    cv_.notify_all();  // wakes WaitFlushWanted
    cv_.wait(lock);
    --waiting_for_room_;
  }
  bool queued_new = false;
  for (uint64_t r = first; r <= last; ++r) {
    auto [it, added] = regions_.try_emplace(Region{ino, r});
    ++it->second.writers;
    if (!it->second.durable && !it->second.queued) {
      // New, or its last commit failed: (re)queue it.
      it->second.queued = true;
      pending_.push_back(it->first);
      queued_new = true;
    }
  }
  // Speculation, in the same batch, within half of the budget: a
  // sequential writer (the region before is active) records the regions it
  // is about to reach, so that it pays one synced write per 1 + ahead_
  // regions; a writer coming back to a file records the file's regions
  // that retired lately with its own, so that a working set that paused
  // pays one synced write, not one per region.
  if (queued_new) {
    uint64_t half = budget_regions_ / 2;
    uint64_t room = half > regions_.size() ? half - regions_.size() : 0;
    auto speculate = [&](Region r) {
      if (room == 0) return false;
      auto [it, added] = regions_.try_emplace(r);
      if (!added) return true;
      it->second.last_epoch = epoch_;  // idle from now: retires lazily
      it->second.queued = true;
      pending_.push_back(r);
      --room;
      return true;
    };
    if (ahead_ > 0 && first > 0 && regions_.count(Region{ino, first - 1})) {
      for (uint64_t k = 1; k <= ahead_ && speculate(Region{ino, last + k});
           ++k) {
      }
    }
    for (auto it = retired_.lower_bound(Region{ino, 0});
         it != retired_.end() && it->first.ino == ino;) {
      if (!speculate(it->first)) break;
      it = retired_.erase(it);
    }
  }
  // Group commit: one writer at a time writes every pending region in one
  // synced batch; the others wait for it.
  while (true) {
    bool all_durable = true;
    bool failed = false;
    for (uint64_t r = first; r <= last; ++r) {
      const State& st = regions_.find(Region{ino, r})->second;
      all_durable = all_durable && st.durable;
      failed = failed || (!st.durable && !st.queued);
    }
    if (all_durable) return meta::Status::Ok();
    if (failed) {
      // Its commit failed and nobody retries it for us: report the error
      // (the write must not proceed without its intent on disk).
      meta::Status error = commit_error_;
      lock.unlock();
      Leave(ino, offset, length);
      return error.ok() ? meta::Status::Error(EIO, "write-intent journal")
                        : error.Context("write-intent journal");
    }
    if (!committing_ && !pending_.empty()) {
      committing_ = true;
      std::vector<Region> batch;
      batch.swap(pending_);
      lock.unlock();
      meta::Status s = store_->RecordIntents(batch, extent_);
      lock.lock();
      committing_ = false;
      for (const auto& r : batch) {
        auto it = regions_.find(r);
        if (it == regions_.end()) continue;
        it->second.queued = false;
        it->second.durable = s.ok();
        if (!s.ok() && it->second.writers == 0) {
          regions_.erase(it);  // recorded ahead, nobody in it: forget it
        }
      }
      if (!s.ok()) commit_error_ = s;
      cv_.notify_all();
    } else {
      cv_.wait(lock);
    }
  }
}

void IntentJournal::Leave(uint64_t ino, uint64_t offset, uint64_t length) {
  const uint64_t first = offset / extent_;
  const uint64_t last = (offset + std::max<uint64_t>(length, 1) - 1) / extent_;
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t r = first; r <= last; ++r) {
    auto it = regions_.find(Region{ino, r});
    if (it == regions_.end()) continue;
    if (it->second.writers > 0) --it->second.writers;
    it->second.last_epoch = epoch_;
    if (!it->second.durable && !it->second.queued && it->second.writers == 0) {
      // Never recorded (its commit failed): nothing on disk to retire.
      regions_.erase(it);
    }
  }
}

uint64_t IntentJournal::BeginEpoch() {
  std::lock_guard<std::mutex> lock(mu_);
  bytes_since_epoch_ = 0;
  return epoch_++;
}

meta::Status IntentJournal::Retire(uint64_t epoch, bool everything) {
  std::vector<Region> retired;
  std::unique_lock<std::mutex> lock(mu_);
  // The store token (committing_) orders this retire against commits: a
  // writer that re-enters a region retired here records it again only
  // after our delete, never before (which would lose its record).
  cv_.wait(lock, [this] { return !committing_; });
  // In its first idle_epochs_ epochs a node retires at once: nothing has
  // been idle long yet, and a fresh mount's first writes settle quickly.
  const bool at_once =
      everything || waiting_for_room_ > 0 || epoch <= idle_epochs_;
  const uint64_t idle_since = at_once ? epoch : epoch - idle_epochs_;
  for (auto it = regions_.begin(); it != regions_.end();) {
    if (it->second.writers == 0 && it->second.durable &&
        it->second.last_epoch <= idle_since) {
      retired.push_back(it->first);
      it = regions_.erase(it);
    } else {
      ++it;
    }
  }
  // Remembered for a while (recall_epochs_), at most a budget's worth, so
  // that a writer coming back brings its working set back in one batch;
  // not when they made room for waiting writers (no thrashing).
  if (recall_epochs_ > 0 && !everything && waiting_for_room_ == 0) {
    for (const auto& r : retired) retired_[r] = epoch;
  }
  for (auto it = retired_.begin(); it != retired_.end();) {
    if (everything || it->second + recall_epochs_ < epoch) {
      it = retired_.erase(it);
    } else {
      ++it;
    }
  }
  while (retired_.size() > budget_regions_) retired_.erase(retired_.begin());
  if (retired.empty()) return meta::Status::Ok();
  committing_ = true;
  lock.unlock();
  // What a lost peer missed in these regions is in its fracture log; that
  // must be on disk before the regions stop covering it.
  meta::Status s = store_->SyncWal();
  if (s.ok()) s = store_->RetireIntents(retired);
  lock.lock();
  committing_ = false;
  cv_.notify_all();  // room for waiting writers, and the token is free
  return s;
}

bool IntentJournal::FlushWanted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_for_room_ > 0 || bytes_since_epoch_ >= kFlushAfterBytes;
}

void IntentJournal::WaitFlushWanted(std::chrono::milliseconds timeout,
                                    const std::atomic<bool>* stop) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this, stop] {
    return waiting_for_room_ > 0 || bytes_since_epoch_ >= kFlushAfterBytes ||
           (stop != nullptr && stop->load());
  });
}

void IntentJournal::Interrupt() {
  // Under mu_: a waiter is either before its check (and sees the stop) or
  // asleep (and is woken).
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

size_t IntentJournal::active_extents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return regions_.size();
}

}  // namespace mirrorfs::sync
