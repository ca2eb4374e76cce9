// ResyncWorker: brings one peer back in line after it reconnects, while the
// application keeps writing. It runs on its own thread, one job per
// connection of its PeerSession.
//
//   start ──> freeze ──(log empty, copy consistent)──> in sync (done)
//               │
//               └─> namespace: resync-begin mark, replay of missed namespace
//                   ops, manifest (the peer reconciles paths, types, sizes,
//                   modes, symlinks); live mirroring starts here
//                     │
//                     └─> data: full sync (block checksums, only differing
//                         blocks travel) if asked, then passes over the
//                         fracture log until it is empty
//                           │
//                           └─> resync-end mark ──> in sync (done)
//   any state ──Cancel() / peer lost──> cancelled (the log keeps the rest)
//
// The freeze (meta::Source::WithNamespaceFrozen) makes the switch from
// "log what the peer misses" to "mirror live" atomic: every change is either
// in the log snapshot or mirrored live, never neither.
//
// Guarantee 4 (resync never goes backwards): each chunk is read and queued
// while holding that range's lock in the volume (Source::ReadRange), so a
// racing application write to the same range is queued either before the
// chunk (and the chunk carries its data) or after it (and lands last).
//
// Progress and crashes (guarantees 1 and 6): a chunk leaves the fracture log
// only once the peer has it on its disk — acknowledged chunks are trimmed
// after a store flush of the peer, asked for once they were acknowledged,
// has answered (every kTrimBytes or kTrimPeriod, and at the end of each
// pass), and the trim is written without a sync (a lost trim re-sends data).
// Chunks go on travelling while the peer flushes: one flush is in flight at
// a time. The begin mark carries the log's resync id: if
// this node crashes mid-resync, the peer reports that id, and the next
// resync resumes from what the log (and the write-intent journal) still
// holds instead of comparing every block.
//
// Rate limit: `rate_bytes_per_second` (0 = unlimited) throttles chunks; live
// application writes are never throttled, so resync yields to them.
//
// Thread-safety: Start/Cancel/Join/progress are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "meta/change.h"
#include "meta/source.h"

namespace mirrorfs::sync {

class ChunkBuffers;
class FractureLog;
class PeerSession;

struct ResyncProgress {
  bool running = false;
  uint64_t total_bytes = 0;
  uint64_t done_bytes = 0;
  uint64_t bytes_per_second = 0;
};

class ResyncWorker {
 public:
  // Chunks travel in pieces of at most this size.
  static constexpr uint64_t kChunkBytes = 1u << 20;
  // Chunks in flight at once (pipelining over the link).
  static constexpr size_t kWindow = 16;
  // Block size of a full sync's checksum comparison.
  static constexpr uint32_t kBlockBytes = 64u << 10;
  // Acknowledged log chunks are trimmed from the log after a store flush of
  // the peer, at least this often (bytes, time).
  static constexpr uint64_t kTrimBytes = 64u << 20;
  static constexpr std::chrono::milliseconds kTrimPeriod{1000};

  // `*session`, `*log` and `*source` must outlive the worker.
  ResyncWorker(PeerSession* session, FractureLog* log, meta::Source* source,
               uint64_t rate_bytes_per_second, bool copy_consistent);
  ~ResyncWorker();  // Cancel()s and Join()s

  void Start();
  void Cancel();
  void Join();
  bool finished() const { return finished_; }
  bool succeeded() const { return succeeded_; }
  ResyncProgress progress() const;

 private:
  void Run();
  bool Freeze(bool* need_data);
  bool FullSync();
  bool FracturePass(bool* more);
  bool SendMark(bool begin, uint64_t total);
  // Waits until at most `keep` chunk completions are outstanding.
  bool Drain(size_t keep);
  // Asks the peer for a store flush covering the log chunks applied so far
  // (unless one is in flight already); FinishTrim trims them once it has
  // answered. Returns false if cancelled.
  bool StartTrim();
  // If the flush in flight has answered (with `wait`, once it has), trims
  // its chunks from the log and writes that down. Returns false if
  // cancelled (the chunks stay in the log).
  bool FinishTrim(bool wait);
  // Flushes and trims every applied chunk, waiting for the peer.
  bool TrimAll();
  void Throttle(uint64_t bytes);
  void AddDone(uint64_t bytes);

  // Reads [offset, offset + length) of `path` under its range lock into a
  // buffer of buffers_ and queues it, the data sent from that buffer (not
  // copied); `*out` counts its pieces. Returns false (with `*error` set if
  // reading failed) if it could not be queued.
  bool QueueChunk(const std::string& path, uint64_t offset, uint64_t length,
                  std::shared_ptr<meta::Completion>* out, meta::Status* error);

  PeerSession* session_;
  FractureLog* log_;
  meta::Source* source_;
  // The chunks' buffers, reused (worker thread; released when Run ends).
  std::shared_ptr<ChunkBuffers> buffers_;
  const uint64_t rate_;
  const bool copy_consistent_;
  std::thread thread_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> finished_{false};
  std::atomic<bool> succeeded_{false};

  struct Pending {
    std::shared_ptr<meta::Completion> completion;
    std::string path;
    uint64_t offset;
    uint64_t length;
    bool from_log;     // Done() it in the log once applied
    uint64_t read_at;  // the log's Epoch() before the chunk was read
  };
  std::vector<Pending> pending_;  // worker thread only
  // Log chunks the peer applied, not yet known to be on its disk (worker
  // thread only).
  struct Applied {
    std::string path;
    uint64_t offset;
    uint64_t length;
    uint64_t read_at;
  };
  std::vector<Applied> applied_;
  uint64_t applied_bytes_ = 0;
  // The store flush in flight and the chunks it makes durable (worker
  // thread only).
  std::shared_ptr<meta::Completion> flush_;
  std::vector<Applied> flushing_;
  // Data read and sent, and bytes compared by checksum (worker thread only).
  uint64_t sent_bytes_ = 0;
  uint64_t compared_bytes_ = 0;
  std::chrono::steady_clock::time_point last_trim_;
  uint64_t resync_id_ = 0;  // the log's, in the begin mark
  // Files and sizes at the freeze, for a full sync (worker thread only).
  std::vector<std::pair<std::string, uint64_t>> files_for_full_sync_;

  mutable std::mutex mu_;  // guards progress below
  uint64_t total_bytes_ = 0;
  uint64_t done_bytes_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point throttle_start_;
  uint64_t throttled_bytes_ = 0;
};

}  // namespace mirrorfs::sync
