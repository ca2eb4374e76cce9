// RangeLock: byte-range mutual exclusion on one image.
//
// Lock(offset, length) blocks while an overlapping range is held, or is
// waiting from an earlier caller; non-overlapping ranges proceed in parallel.
// Grants among overlapping requests are first-come first-served, so a
// whole-file lock (truncate) is not starved by a stream of small writes, and
// overlapping writes reach the peers in the order they reached the volume.
// An empty range (length 0) overlaps nothing and never waits.
//
// Thread-safety: thread-safe. The Guard must be destroyed (or Unlock()ed) on
// any thread before the RangeLock is destroyed.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>

namespace mirrorfs::fs {

class RangeLock {
 private:
  struct Range {
    uint64_t begin;
    uint64_t end;  // exclusive; UINT64_MAX for "to the end of the file"
    bool granted = false;
  };

 public:
  // Holds one range until destroyed. Move-only.
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& other) noexcept { *this = std::move(other); }
    Guard& operator=(Guard&& other) noexcept;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { Unlock(); }
    void Unlock();
    bool held() const { return owner_ != nullptr; }

   private:
    friend class RangeLock;
    Guard(RangeLock* owner, std::list<Range>::iterator it)
        : owner_(owner), it_(it) {}
    RangeLock* owner_ = nullptr;
    std::list<Range>::iterator it_;
  };

  RangeLock() = default;
  RangeLock(const RangeLock&) = delete;
  RangeLock& operator=(const RangeLock&) = delete;
  // REQUIRES: no range held or waiting.
  ~RangeLock() = default;

  // Blocks until [offset, offset+length) can be held; saturates at the end
  // of the 64-bit offset space.
  Guard Lock(uint64_t offset, uint64_t length);
  // The whole file (truncate, size changes).
  Guard LockAll() { return Lock(0, UINT64_MAX); }

  // For tests: how many ranges are held or waiting.
  size_t PendingForTest();

 private:
  void Release(std::list<Range>::iterator it);

  std::mutex mu_;  // guards ranges_; a leaf lock
  std::condition_variable cv_;
  std::list<Range> ranges_;  // held and waiting ranges, in arrival order
};

}  // namespace mirrorfs::fs
