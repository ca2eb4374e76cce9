// BusyPoll: waits on file descriptors like poll(2), but first looks at them
// for a short while without sleeping, yielding the CPU between looks, when
// the last wait showed that the answer comes that quickly.
//
// Why: a mirrored 4 KiB write is a chain of thread wake-ups (the writer,
// ZeroMQ's I/O threads on both nodes, the peer's server thread). A thread
// that sleeps in poll(2) and is woken costs its CPU a halt and a wake-up,
// which in a VM whose idle vCPUs halt at once (guest_halt_poll_ns 0) is
// tens of microseconds: the same delay the kernel's haltpoll governor and
// the network stack's busy_poll trade CPU time for. Spinning only while
// the waits stay shorter than the budget keeps an idle or slowly fed
// daemon at no cost, and sched_yield() leaves the CPU to any thread that
// is ready to run (the I/O threads whose work ends the wait).
//
// Thread-safety: none; one thread waits at a time (the owner serializes).
#pragma once

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace mirrorfs::sync {

// A writer waiting for a larger change than this does not spin: its answer
// waits for the bytes to be copied on both nodes, while the CPUs are busy.
inline constexpr size_t kBusyPollMaxBytes = 64 * 1024;

class BusyPoll {
 public:
  // `budget` is the longest a wait spins before it sleeps; zero never
  // spins.
  explicit BusyPoll(std::chrono::microseconds budget = {}) : budget_(budget) {}

  // As poll(fds, n, timeout_ms): the number of ready descriptors, 0 on
  // timeout, -1 with errno. Spins first if `may_spin` and the previous
  // wait that could spin ended within the budget; the timeout counts from
  // the call. A wait that may not spin leaves the rule as it was.
  int Wait(struct pollfd* fds, nfds_t n, int timeout_ms, bool may_spin = true);

  // Whether the next Wait() spins (the rule: the last wait ended with a
  // ready descriptor within the budget).
  bool spinning() const { return spin_; }

  // Waits that spun, and of those the ones a descriptor ended.
  uint64_t spun() const { return spun_; }
  uint64_t caught() const { return caught_; }

 private:
  std::chrono::microseconds budget_;
  bool spin_ = true;
  uint64_t spun_ = 0;
  uint64_t caught_ = 0;
};

}  // namespace mirrorfs::sync
