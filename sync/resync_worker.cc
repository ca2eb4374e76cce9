#include "sync/resync_worker.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "meta/log.h"
#include "sync/block_sums.h"
#include "sync/fracture_log.h"
#include "sync/frame_data.h"
#include "sync/peer_session.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

using meta::Change;
using meta::ChangeKind;
using meta::Completion;
using Clock = std::chrono::steady_clock;

// Chunk buffers of `bytes`, reused: a buffer comes back once the last frame
// that sends from it is released (by ZeroMQ once the bytes are on the wire,
// or by a teardown), so a steady resync neither allocates nor clears memory
// per chunk. At most `keep` idle buffers are kept.
class ChunkBuffers : public std::enable_shared_from_this<ChunkBuffers> {
 public:
  ChunkBuffers(size_t keep, size_t bytes) : keep_(keep), bytes_(bytes) {}

  std::shared_ptr<std::string> Get() {
    std::unique_ptr<std::string> buffer;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        buffer = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!buffer) {
      buffer = std::make_unique<std::string>();
      buffer->reserve(bytes_);
      // Its pages in one call rather than a fault each (a fault is dear in
      // a VM); on kernels before 5.14 they fault in as it is cleared.
      auto at = reinterpret_cast<uintptr_t>(buffer->data());
      uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
      uintptr_t from = (at + page - 1) & ~(page - 1);
      uintptr_t to = (at + bytes_) & ~(page - 1);
      if (to > from) {
        (void)::madvise(reinterpret_cast<void*>(from), to - from,
                        MADV_POPULATE_WRITE);
      }
      buffer->resize(bytes_);
    }
    // The deleter keeps the pool alive while a buffer is out.
    return std::shared_ptr<std::string>(
        buffer.release(),
        [pool = shared_from_this()](std::string* b) { pool->Put(b); });
  }

 private:
  void Put(std::string* buffer) {
    std::unique_ptr<std::string> owned(buffer);
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < keep_) free_.push_back(std::move(owned));
  }

  const size_t keep_;
  const size_t bytes_;
  std::mutex mu_;
  std::vector<std::unique_ptr<std::string>> free_;
};

ResyncWorker::ResyncWorker(PeerSession* session, FractureLog* log,
                           meta::Source* source, uint64_t rate_bytes_per_second,
                           bool copy_consistent)
    : session_(session),
      log_(log),
      source_(source),
      buffers_(std::make_shared<ChunkBuffers>(kWindow + 2, kChunkBytes)),
      rate_(rate_bytes_per_second),
      copy_consistent_(copy_consistent) {}

ResyncWorker::~ResyncWorker() {
  Cancel();
  Join();
}

void ResyncWorker::Start() {
  started_ = throttle_start_ = Clock::now();
  thread_ = std::thread([this] {
    Run();
    buffers_.reset();  // the idle ones now, the others once released
  });
}

void ResyncWorker::Cancel() { cancelled_ = true; }

void ResyncWorker::Join() {
  if (thread_.joinable()) thread_.join();
}

ResyncProgress ResyncWorker::progress() const {
  std::lock_guard<std::mutex> lock(mu_);
  ResyncProgress p;
  p.running = !finished_;
  p.total_bytes = total_bytes_;
  p.done_bytes = done_bytes_;
  double seconds =
      std::chrono::duration<double>(Clock::now() - started_).count();
  if (seconds > 0.05) {
    p.bytes_per_second = static_cast<uint64_t>(done_bytes_ / seconds);
  }
  return p;
}

void ResyncWorker::AddDone(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  done_bytes_ += bytes;
  total_bytes_ = std::max(total_bytes_, done_bytes_);
}

void ResyncWorker::Throttle(uint64_t bytes) {
  if (rate_ == 0) return;
  throttled_bytes_ += bytes;
  while (!cancelled_) {
    double allowed =
        std::chrono::duration<double>(Clock::now() - throttle_start_).count() *
        static_cast<double>(rate_);
    if (static_cast<double>(throttled_bytes_) <= allowed) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void ResyncWorker::Run() {
  const std::string& peer = session_->name();
  bool need_data = false;
  bool full = log_->full_sync() || !copy_consistent_;
  resync_id_ = log_->ResyncId();
  last_trim_ = Clock::now();
  if (!Freeze(&need_data)) {
    finished_ = true;
    return;
  }
  if (!need_data) {
    succeeded_ = finished_ = true;
    session_->ResyncFinished(true, "");
    return;
  }
  meta::LogInfo("peer " + peer + ": resync started (" +
                (full ? std::string("full sync, comparing block checksums")
                      : std::to_string(log_->bytes()) + " bytes in " +
                            std::to_string(log_->extents()) + " extents") +
                ")");
  bool ok = true;
  // A replay the peer could not apply asks for a full comparison too.
  full = full || log_->full_sync();
  if (full && files_for_full_sync_.empty()) {
    auto listed = source_->ListFiles(&files_for_full_sync_);
    if (!listed.ok()) {
      session_->ResyncFinished(false, listed.message());
      finished_ = true;
      return;
    }
  }
  if (full) ok = FullSync();
  bool more = true;
  while (ok && more) ok = FracturePass(&more);
  ok = ok && Drain(0);
  if (ok) ok = SendMark(false, total_bytes_);
  if (ok && full) {
    auto s = log_->SetFullSync(false);
    if (!s.ok()) meta::LogError("peer " + peer + ": " + s.message());
  }
  auto checkpoint = log_->Checkpoint();
  if (!checkpoint.ok()) {
    meta::LogError("peer " + peer + ": " + checkpoint.message());
  }
  finished_ = true;
  if (!ok) return;  // cancelled: the session reports why
  succeeded_ = true;
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%.2f",
                std::chrono::duration<double>(Clock::now() - started_).count());
  // A full sync's progress counts the bytes compared; few may be sent.
  meta::LogInfo("peer " + peer + ": resync done, " +
                std::to_string(sent_bytes_) + " bytes sent" +
                (full ? " (" + std::to_string(compared_bytes_) + " compared)"
                      : std::string()) +
                " in " + seconds + " s; in sync");
  session_->ResyncFinished(true, "");
}

bool ResyncWorker::Freeze(bool* need_data) {
  std::shared_ptr<Completion> ns_done = std::make_shared<Completion>(1);
  uint64_t last_op = 0;
  bool full = log_->full_sync() || !copy_consistent_;
  bool queued = true;
  std::vector<std::pair<std::string, uint64_t>> files;
  auto frozen = source_->WithNamespaceFrozen(
      [&](const std::vector<meta::NamespaceEntry>& entries) -> meta::Status {
        if (log_->empty() && copy_consistent_) {
          *need_data = false;
          session_->AcceptLive(/*syncing=*/false);
          return meta::Status::Ok();
        }
        *need_data = true;
        uint64_t total = log_->bytes();
        for (const auto& e : entries) {
          if (e.type == meta::NamespaceEntry::Type::kFile) {
            files.emplace_back(e.path, e.size);
            if (full) total += e.size;
          }
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          total_bytes_ = total;
        }
        ResyncMark begin{true, total, resync_id_};
        queued = queued && session_->EnqueueMark(begin, ns_done);
        for (const auto& [seq, op] : log_->NamespaceOps()) {
          Change replay = op;
          replay.flags |= meta::kReplay;
          if (ValidateChange(replay).ok()) {
            queued = queued && session_->EnqueueResync(replay, ns_done);
          }
          last_op = seq;
        }
        // In parts that fit in a frame (at least one, maybe empty).
        size_t i = 0;
        do {
          Manifest part;
          size_t bytes = 0;
          while (i < entries.size() &&
                 part.entries.size() < kMaxManifestEntries) {
            size_t n = entries[i].path.size() + entries[i].target.size();
            if (!part.entries.empty() && bytes + n > kMaxManifestBytes) break;
            bytes += n;
            part.entries.push_back(entries[i++]);
          }
          part.last = i >= entries.size();
          queued = queued && session_->EnqueueManifest(part, ns_done);
        } while (i < entries.size());
        session_->AcceptLive(/*syncing=*/true);
        return meta::Status::Ok();
      });
  if (!frozen.ok()) {
    meta::LogError("peer " + session_->name() +
                   ": cannot list the store for resync: " + frozen.message());
    session_->ResyncFinished(false,
                             "cannot list the store: " + frozen.message());
    return false;
  }
  if (!*need_data) return true;
  files_for_full_sync_ = std::move(files);
  ns_done->Done();
  ns_done->Wait();
  if (cancelled_ || !queued) return false;
  auto s = log_->NamespaceDone(last_op);
  if (!s.ok()) meta::LogError("peer " + session_->name() + ": " + s.message());
  log_->ClearNamespaceDirty();
  return true;
}

bool ResyncWorker::SendMark(bool begin, uint64_t total) {
  auto done = std::make_shared<Completion>(1);
  if (!session_->EnqueueMark(ResyncMark{begin, total}, done)) return false;
  done->Wait();
  return !cancelled_;
}

bool ResyncWorker::Drain(size_t keep) {
  // Count what is already done (progress moves with every acknowledged
  // chunk), then wait for the oldest until at most `keep` remain.
  while (!pending_.empty() &&
         (pending_.size() > keep || pending_.front().completion->IsDone())) {
    Pending& front = pending_.front();
    front.completion->Wait();
    if (cancelled_) return false;
    if (front.from_log) {
      // Applied, maybe only in the peer's page cache: out of the log once
      // a store flush of the peer says it is on its disk (FinishTrim).
      applied_.push_back(
          Applied{front.path, front.offset, front.length, front.read_at});
      applied_bytes_ += front.length;
    }
    AddDone(front.length);
    pending_.erase(pending_.begin());
  }
  if (!FinishTrim(/*wait=*/false)) return false;
  if (applied_bytes_ >= kTrimBytes ||
      (!applied_.empty() && Clock::now() - last_trim_ >= kTrimPeriod)) {
    return StartTrim();
  }
  return !cancelled_;
}

bool ResyncWorker::StartTrim() {
  if (cancelled_) return false;
  if (flush_ || applied_.empty()) return true;
  last_trim_ = Clock::now();
  Change flush;
  flush.kind = ChangeKind::kFsync;  // no path: the peer's whole store
  auto done = std::make_shared<Completion>(1);
  if (!session_->EnqueueResync(flush, done)) return false;
  // Every chunk here was acknowledged before the flush was asked for: the
  // flush covers it.
  flush_ = std::move(done);
  flushing_.swap(applied_);
  applied_.clear();
  applied_bytes_ = 0;
  return true;
}

bool ResyncWorker::FinishTrim(bool wait) {
  if (!flush_) return !cancelled_;
  if (wait) {
    flush_->Wait();
  } else if (!flush_->IsDone()) {
    return !cancelled_;
  }
  // A lost peer cancels the worker before it releases the flush: a flush
  // released by a teardown trims nothing.
  if (cancelled_) return false;
  for (const auto& a : flushing_) {
    log_->Done(a.path, a.offset, a.length, a.read_at);
  }
  flushing_.clear();
  flush_.reset();
  auto s = log_->PersistProgress();
  if (!s.ok()) meta::LogError("peer " + session_->name() + ": " + s.message());
  return true;
}

bool ResyncWorker::TrimAll() {
  return FinishTrim(/*wait=*/true) && StartTrim() && FinishTrim(/*wait=*/true);
}

bool ResyncWorker::QueueChunk(const std::string& path, uint64_t offset,
                              uint64_t length, std::shared_ptr<Completion>* out,
                              meta::Status* error) {
  auto chunk = std::make_shared<Completion>(1);
  bool queued = true;
  std::shared_ptr<std::string> buffer = buffers_->Get();
  *error = source_->ReadRange(
      path, offset, length, buffer.get(), [&](const Change& data) {
        Change piece = data;
        piece.flags |= meta::kResyncData;
        chunk->AddPending();
        std::optional<FrameData> bytes;
        if (piece.kind == ChangeKind::kWrite) {
          bytes.emplace(piece.data, piece.length, buffer);
        }
        if (!session_->EnqueueResync(piece, chunk, bytes ? &*bytes : nullptr)) {
          queued = false;
          chunk->Done();
        }
      });
  chunk->Done();
  *out = chunk;
  return queued && error->ok();
}

bool ResyncWorker::FracturePass(bool* more) {
  auto snapshot = log_->Extents();
  if (snapshot.empty()) {
    *more = false;
    return true;
  }
  *more = true;
  uint64_t before = log_->bytes();
  // The chunks in order, so that reads ahead can be hinted.
  struct Chunk {
    const std::string* path;
    uint64_t offset;
    uint64_t length;
  };
  std::vector<Chunk> chunks;
  for (const auto& [path, set] : snapshot) {
    for (const auto& extent : set) {
      for (uint64_t off = extent.offset; off < extent.end();
           off += kChunkBytes) {
        chunks.push_back(
            {&path, off, std::min(kChunkBytes, extent.end() - off)});
      }
    }
  }
  constexpr size_t kReadAhead = 8;
  for (size_t i = 0; i < std::min(kReadAhead, chunks.size()); ++i) {
    source_->Prefetch(*chunks[i].path, chunks[i].offset, chunks[i].length);
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    {
      if (i + kReadAhead < chunks.size()) {
        const Chunk& ahead = chunks[i + kReadAhead];
        source_->Prefetch(*ahead.path, ahead.offset, ahead.length);
      }
      const std::string& path = *chunks[i].path;
      {
        uint64_t off = chunks[i].offset;
        if (cancelled_) return false;
        uint64_t len = chunks[i].length;
        Throttle(len);
        std::shared_ptr<Completion> chunk;
        meta::Status error;
        // Before the read: a change the peer misses after it stays logged.
        uint64_t read_at = log_->Epoch();
        if (!QueueChunk(path, off, len, &chunk, &error)) {
          if (!error.ok()) {
            session_->ResyncFinished(
                false, "reading " + path + ": " + error.message());
          }
          return false;
        }
        sent_bytes_ += len;
        pending_.push_back(Pending{chunk, path, off, len, true, read_at});
        if (!Drain(kWindow)) return false;
      }
    }
  }
  if (!Drain(0) || !TrimAll()) return false;
  // Entries that remain were moved by renames meanwhile; another pass sends
  // them under their new names. A pass that frees nothing would loop.
  if (log_->bytes() >= before && !log_->Extents().empty()) {
    session_->ResyncFinished(false, "resync made no progress");
    return false;
  }
  return true;
}

bool ResyncWorker::FullSync() {
  std::string buffer;
  for (const auto& [path, size] : files_for_full_sync_) {
    std::vector<std::pair<uint64_t, uint64_t>> data;
    if (!source_->DataExtents(path, &data).ok()) continue;  // gone meanwhile
    // Holes: the peer's copy may have data where the primary has none.
    uint64_t at = 0;
    auto punch = [&](uint64_t from, uint64_t to) -> bool {
      if (to <= from) return true;
      Change hole;
      hole.kind = ChangeKind::kPunchHole;
      hole.path = path;
      hole.offset = from;
      hole.length = to - from;
      hole.flags = meta::kKeepSize | meta::kReplay;
      auto done = std::make_shared<Completion>(1);
      if (!session_->EnqueueResync(hole, done)) return false;
      pending_.push_back(Pending{done, path, from, 0, false, 0});
      return Drain(kWindow);
    };
    for (const auto& [off, len] : data) {
      if (!punch(at, std::min(off, size))) return false;
      at = off + len;
    }
    if (!punch(at, size)) return false;

    for (const auto& [ext_off, ext_len] : data) {
      uint64_t end = std::min(ext_off + ext_len, size);
      const uint64_t batch_bytes = uint64_t{kBlockBytes} * 256;
      for (uint64_t off = ext_off; off < end; off += batch_bytes) {
        if (cancelled_) return false;
        uint64_t len = std::min(batch_bytes, end - off);
        BlockSums sums;
        auto read = source_->ReadRangeLocked(
            path, off, len, /*to_end=*/false,
            [&](const std::string& current, uint64_t,
                const std::vector<Change>& pieces) {
              sums = SumBlocks(current, off, len, kBlockBytes, pieces, &buffer);
            });
        // Changed under us (renamed, removed): the log or live mirroring
        // covers it.
        if (!read.ok() || sums.sums.empty()) break;
        std::vector<uint32_t> differing;
        auto answered = std::make_shared<Completion>(1);
        if (!session_->RequestBlockDiff(
                sums,
                [&differing](const BlockDiff& diff) {
                  differing = diff.differing;
                },
                answered)) {
          return false;
        }
        answered->Wait();
        if (cancelled_) return false;
        for (uint32_t index : differing) {
          uint64_t block_off = off + uint64_t{index} * kBlockBytes;
          if (block_off >= off + len) continue;
          uint64_t block_len =
              std::min<uint64_t>(kBlockBytes, off + len - block_off);
          Throttle(block_len);
          std::shared_ptr<Completion> chunk;
          meta::Status error;
          if (!QueueChunk(path, block_off, block_len, &chunk, &error)) {
            return false;
          }
          sent_bytes_ += block_len;
          pending_.push_back(Pending{chunk, path, block_off, 0, false, 0});
          if (!Drain(kWindow)) return false;
        }
        compared_bytes_ += len;
        AddDone(len);
      }
    }
  }
  return Drain(0);
}

}  // namespace mirrorfs::sync
