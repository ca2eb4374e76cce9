#include "sync/verifier.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "sync/block_sums.h"
#include "sync/peer_session.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

Verifier::Verifier(PeerSession* session, meta::Source* source, uint64_t rate)
    : session_(session), source_(source), rate_(rate) {}

meta::Result<VerifyResult> Verifier::Run(
    const std::function<void(uint64_t, uint64_t)>& progress) {
  using Clock = std::chrono::steady_clock;
  VerifyResult result;
  result.peer = session_->name();
  std::vector<std::pair<std::string, uint64_t>> files;
  MFS_RETURN_IF_ERROR(source_->ListFiles(&files));
  uint64_t total = 0;
  for (const auto& f : files) total += f.second;
  const auto start = Clock::now();
  std::string buffer;
  meta::Status failure;
  for (const auto& [path, size] : files) {
    for (uint64_t off = 0; off < size && failure.ok(); off += kBatchBytes) {
      if (cancelled_) return meta::Status::Error(ECANCELED, "verify cancelled");
      uint64_t len = std::min(kBatchBytes, size - off);
      if (rate_ > 0) {
        // Throttle: never ahead of rate_ bytes per second on average.
        while (true) {
          double allowed =
              std::chrono::duration<double>(Clock::now() - start).count() *
              static_cast<double>(rate_);
          if (static_cast<double>(result.compared_bytes + len) <= allowed ||
              cancelled_) {
            break;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      auto read = source_->ReadRangeLocked(
          path, off, len,
          [&](const std::string& current,
              const std::vector<meta::Change>& pieces) {
            // The file may have shrunk: compare what exists on both sides.
            uint64_t end = off;
            for (const auto& p : pieces)
              end = std::max(end, p.offset + p.length);
            uint64_t have = end - off;
            if (have == 0) return;
            BlockSums sums =
                SumBlocks(current, off, have, kBlockBytes, pieces, &buffer);
            std::vector<uint32_t> differing;
            bool answered = false;
            auto done = std::make_shared<meta::Completion>(1);
            if (!session_->RequestBlockDiff(
                    sums,
                    [&](const BlockDiff& diff) {
                      differing = diff.differing;
                      answered = true;
                    },
                    done)) {
              failure = meta::Status::Error(
                  ENOTCONN, "peer " + result.peer + " is not connected");
              return;
            }
            done->Wait();  // still holding the range lock: nothing moves
            if (!answered) {
              failure = meta::Status::Error(
                  ENOTCONN, "peer " + result.peer + " was lost during verify");
              return;
            }
            for (uint32_t index : differing) {
              uint64_t at = off + uint64_t{index} * kBlockBytes;
              uint64_t n = std::min<uint64_t>(kBlockBytes, end - at);
              auto& diffs = result.differences;
              if (!diffs.empty() && diffs.back().path == current &&
                  diffs.back().offset + diffs.back().length == at) {
                diffs.back().length += n;
              } else {
                diffs.push_back({current, at, n});
              }
            }
            result.compared_bytes += have;
          });
      if (!read.ok()) return read;
      if (!failure.ok()) return failure;
      if (progress) progress(result.compared_bytes, total);
    }
  }
  return result;
}

}  // namespace mirrorfs::sync
