// Verifier: compares every regular file of the primary's store with one
// peer's copy, online, by BLAKE2b checksums of 64 KiB blocks (the peer hashes
// its own blocks; only checksums and the list of differing blocks travel).
//
// No false alarms on a busy image: each batch of blocks is read and compared
// while its range lock is held in the volume (Source::ReadRangeLocked), so
// no write to that range is in flight, and the peer, which applies frames in
// order, has applied every earlier write before it compares.
//
// Known limits: a file that exists only on the peer is not reported (the
// namespace reconcile of the next resync removes it); sizes are compared
// through the blocks (a peer file longer than the primary's is reported
// only if the primary's last block differs).
//
// Thread-safety: Run() is called on one thread; Cancel() and progress from
// any.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "meta/source.h"
#include "meta/status.h"

namespace mirrorfs::sync {

class PeerSession;

struct VerifyDifference {
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct VerifyResult {
  std::string peer;
  uint64_t compared_bytes = 0;
  std::vector<VerifyDifference> differences;  // merged, per path, in order
};

class Verifier {
 public:
  static constexpr uint32_t kBlockBytes = 64u << 10;
  static constexpr uint64_t kBatchBytes = uint64_t{kBlockBytes} * 256;

  // `*session` and `*source` must outlive the verifier. `rate` in bytes per
  // second (0 = unlimited) throttles the comparison.
  Verifier(PeerSession* session, meta::Source* source, uint64_t rate);

  // Returns the comparison, or an error if the peer was lost or the store
  // could not be read. `progress(done, total)` is called after each batch.
  meta::Result<VerifyResult> Run(
      const std::function<void(uint64_t, uint64_t)>& progress);
  void Cancel() { cancelled_ = true; }

 private:
  PeerSession* session_;
  meta::Source* source_;
  const uint64_t rate_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace mirrorfs::sync
