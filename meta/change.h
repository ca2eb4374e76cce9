// Change: one mutation of a store, as the mirrored volume makes it locally
// and as every peer must apply it. Mirror: where the volume hands changes to
// be replicated (implemented by sync::FanOut; cli wires the two together so
// that fs/ and sync/ never include each other).
//
// Thread-safety: Change is a value. Completion and Mirror are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "meta/status.h"

namespace mirrorfs::meta {

// The wire codes of these kinds are fixed (sync/WIRE_FORMAT.md): append only.
enum class ChangeKind : uint8_t {
  kWrite = 1,      // path, offset, data[length]
  kPunchHole = 2,  // path, offset, length: deallocate, size unchanged
  kZeroRange = 3,  // path, offset, length, flags & kKeepSize
  kAllocate = 4,   // path, offset, length, flags & kKeepSize (fallocate 0)
  kTruncate = 5,   // path, length = new size
  kCreate = 6,     // path, mode: a regular file (existing one is kept)
  kMkdir = 7,      // path, mode
  kSymlink = 8,    // path (the link), target (what it points to)
  kUnlink = 9,     // path (file or symlink)
  kRmdir = 10,     // path
  kRename = 11,    // path -> target, flags = RENAME_NOREPLACE/RENAME_EXCHANGE
  kChmod = 12,     // path, mode (permission bits)
  kChown = 13,     // path, uid, gid (uint32 max = leave unchanged)
  kSetTimes = 14,  // path, atime, mtime (resolved values, never UTIME_NOW)
  kFsync = 15,     // path ("" = the whole store), flags & kDataSync
};

// Changes to a file's data or size: what the write-intent journal covers,
// and what an fsync of the file makes durable.
inline bool ChangesFileData(ChangeKind kind) {
  return kind == ChangeKind::kWrite || kind == ChangeKind::kPunchHole ||
         kind == ChangeKind::kZeroRange || kind == ChangeKind::kAllocate ||
         kind == ChangeKind::kTruncate;
}

// Flag bits of Change::flags (meaning depends on kind, see above).
inline constexpr uint32_t kKeepSize = 1u << 0;  // fallocate FALLOC_FL_KEEP_SIZE
inline constexpr uint32_t kDataSync = 1u << 1;  // fdatasync instead of fsync
inline constexpr uint32_t kDsyncWrite = 1u << 2;  // kWrite: O_DSYNC, flush it
// Any kind: a replay of a change the peer missed (resync). The peer may
// already have it, so a failure to apply it is logged, not fatal: the
// namespace reconcile that follows every replay settles the result.
inline constexpr uint32_t kReplay = 1u << 3;
// kWrite/kPunchHole sent by a resync: the peer starts writing it back to disk
// at once, so that the flush ending the resync has little left to do.
inline constexpr uint32_t kResyncData = 1u << 4;

struct Timespec {
  int64_t sec = 0;
  int64_t nsec = 0;
};

struct Change {
  ChangeKind kind = ChangeKind::kWrite;
  // Relative to the store root, without a leading '/', e.g. "vm/disk.img".
  // Never empty except for a whole-store kFsync; never inside ".mirrorfs".
  std::string path;
  std::string target;  // kRename destination or kSymlink target
  uint64_t offset = 0;
  uint64_t length = 0;  // kWrite: bytes at `data`; kTruncate: the new size
  uint32_t mode = 0;
  uint32_t uid = UINT32_MAX;
  uint32_t gid = UINT32_MAX;
  uint32_t flags = 0;
  Timespec atime;
  Timespec mtime;
  // kWrite only: `length` bytes, borrowed: valid until Mirror::Submit
  // returns or, when it returned a Completion, until Mirror::Wait of it
  // returns (a Mirror may send them without copying).
  const char* data = nullptr;
  // Primary-local, never sent: the inode number of the file a data change
  // writes (the write-intent journal's key; stable across renames).
  uint64_t local_ino = 0;
};

// Counts down the peers a submitted change still waits for.
class Completion {
 public:
  explicit Completion(int pending) : pending_(pending) {}
  // One more party to wait for. REQUIRES: the count has not reached zero.
  void AddPending(int n = 1) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ += n;
  }
  // One peer is done with the change: applied it, or was dropped from
  // mirroring (its miss is then logged, not reported to the application).
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) cv_.notify_all();
  }
  // True once every peer is done and no hold is left (never blocks).
  bool IsDone() {
    std::lock_guard<std::mutex> lock(mu_);
    return pending_ <= 0 && holds_ == 0;
  }
  // Blocks until every peer is done and every hold is released.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return pending_ <= 0 && holds_ == 0; });
  }
  // As Wait(), for at most `timeout`; true if done.
  template <typename Rep, typename Period>
  bool WaitFor(std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout,
                        [this] { return pending_ <= 0 && holds_ == 0; });
  }
  // The transport holds the caller's bytes (sent without a copy) until it
  // has sent them: one hold per message that references them. Wait() and
  // IsDone() wait for every hold to be released, so that the caller may
  // reuse its buffer once Wait() returns.
  void AddHold() {
    std::lock_guard<std::mutex> lock(mu_);
    ++holds_;
  }
  void ReleaseHold() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--holds_ == 0) cv_.notify_all();
  }
  // Wakes a WaitDoneOrKicked() now or the next one (the kick is kept until
  // a wait takes it): "what you wait for may have changed, look again".
  void Kick() {
    std::lock_guard<std::mutex> lock(mu_);
    kicked_ = true;
    cv_.notify_all();
  }
  // Blocks until every peer is done or a Kick() came; takes the kick.
  // Returns true when every peer is done (holds may remain).
  bool WaitDoneOrKicked() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return pending_ <= 0 || kicked_; });
    kicked_ = false;
    return pending_ <= 0;
  }

 private:
  std::mutex mu_;  // guards pending_, holds_ and kicked_
  std::condition_variable cv_;
  int pending_;
  int holds_ = 0;
  bool kicked_ = false;
};

class Mirror {
 public:
  virtual ~Mirror() = default;
  // Queues `change` for every peer, in call order, without waiting on the
  // network. Callers serialize Submit() (and their local operation) for
  // changes whose relative order matters; the volume's locks do that.
  // Returns what to Wait() on for sync mode, or nullptr when no peer needs
  // to be waited for (no peer connected, or async mode). A returned
  // Completion must be waited for with Wait() (the change's data may be in
  // use until then).
  virtual std::shared_ptr<Completion> Submit(const Change& change) = 0;

  // Blocks until `completion` (returned by Submit) is done. A Mirror may use
  // the waiting thread to receive the peers' acknowledgements itself.
  virtual void Wait(const std::shared_ptr<Completion>& completion) {
    completion->Wait();
  }

  // Data changes (write, punch, zero, allocate, truncate) are bracketed:
  // Prepare() before the local file changes — it returns once the change's
  // write intent is durable, or an error, and then the change must not be
  // made at all — and Finished() once it is applied locally and its
  // Completion waited for (also when the local change failed).
  virtual Status Prepare(const Change& change) {
    (void)change;
    return Status::Ok();
  }
  virtual void Finished(const Change& change) { (void)change; }

  // A change reached the peers but failed here (a write is sent while the
  // local write runs): the peers' copies of its range may now hold what
  // this node's does not. The Mirror records the range for every peer, so
  // that it is not reported in sync until a resync has sent it this node's
  // data (guarantee 1). Called after Wait(), before Finished().
  virtual void Diverged(const Change& change) { (void)change; }
};

}  // namespace mirrorfs::meta
