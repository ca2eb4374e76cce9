#include "fs/range_lock.h"

namespace mirrorfs::fs {

namespace {
bool Overlaps(uint64_t b1, uint64_t e1, uint64_t b2, uint64_t e2) {
  return b1 < e1 && b2 < e2 && b1 < e2 && b2 < e1;  // empty overlaps nothing
}
}  // namespace

RangeLock::Guard& RangeLock::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    Unlock();
    owner_ = other.owner_;
    it_ = other.it_;
    other.owner_ = nullptr;
  }
  return *this;
}

void RangeLock::Guard::Unlock() {
  if (owner_ != nullptr) {
    owner_->Release(it_);
    owner_ = nullptr;
  }
}

RangeLock::Guard RangeLock::Lock(uint64_t offset, uint64_t length) {
  uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  std::unique_lock<std::mutex> lock(mu_);
  auto me = ranges_.insert(ranges_.end(), Range{offset, end});
  // Wait while any earlier range (held or still waiting) overlaps ours.
  cv_.wait(lock, [&] {
    for (auto it = ranges_.begin(); it != me; ++it) {
      if (Overlaps(it->begin, it->end, offset, end)) return false;
    }
    return true;
  });
  me->granted = true;
  return Guard(this, me);
}

void RangeLock::Release(std::list<Range>::iterator it) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ranges_.erase(it);
  }
  cv_.notify_all();
}

size_t RangeLock::PendingForTest() {
  std::lock_guard<std::mutex> lock(mu_);
  return ranges_.size();
}

}  // namespace mirrorfs::fs
