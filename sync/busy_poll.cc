#include "sync/busy_poll.h"

#include <sched.h>

#include <algorithm>

namespace mirrorfs::sync {

int BusyPoll::Wait(struct pollfd* fds, nfds_t n, int timeout_ms,
                   bool may_spin) {
  if (!may_spin || budget_.count() <= 0) return ::poll(fds, n, timeout_ms);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int ready = 0;
  if (spin_) {
    ++spun_;
    const auto until = start + budget_;
    for (;;) {
      ready = ::poll(fds, n, 0);
      if (ready != 0 || Clock::now() >= until) break;
      ::sched_yield();
    }
    if (ready > 0) {
      ++caught_;
      return ready;  // still within the budget: spin next time too
    }
    if (ready < 0) return ready;
  }
  int left = timeout_ms;
  if (timeout_ms > 0) {
    auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
                     Clock::now() - start)
                     .count();
    left = static_cast<int>(std::max<int64_t>(0, timeout_ms - spent));
  }
  ready = ::poll(fds, n, left);
  spin_ = ready > 0 && Clock::now() - start <= budget_;
  return ready;
}

}  // namespace mirrorfs::sync
