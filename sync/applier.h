// Applier: applies replicated changes (meta::Change) to a store directory on
// a secondary, by path relative to the store root.
//
// Paths are resolved strictly beneath the store root (openat2 with
// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS on the parent directory), so a
// crafted path can never reach outside the store or into `.mirrorfs`.
// Replays are idempotent where POSIX allows it (mkdir of an existing
// directory, unlink of a missing name), because resync may send a change the
// peer already has.
//
// Data is written through a meta::StoreWriter: large writes of whole pages
// uncached where the kernel and file system allow it (a secondary does not
// read what it receives), unless SetCachedWrites. Either way a write is
// acknowledged once applied, and is durable only after a flush.
//
// Thread-safety: not thread-safe; one replica thread owns an Applier, which
// is what keeps changes applied in the order they were sent.
#pragma once

#include <array>
#include <chrono>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "meta/change.h"
#include "meta/source.h"
#include "meta/status.h"
#include "meta/store_writer.h"

namespace mirrorfs::sync {

// A flush of a whole store, detached from the Applier so that it can run on
// another thread while the Applier goes on applying: it holds descriptors of
// its own (duplicates of the Applier's open files). Thread-compatible.
class StoreFlush {
 public:
  StoreFlush(StoreFlush&& other) noexcept;
  StoreFlush& operator=(StoreFlush&&) = delete;
  ~StoreFlush();  // closes its descriptors
  // fsyncs every file the Applier had open (so that their write-back errors
  // are reported), then syncs the store's file system (syncfs). Returns OK,
  // or the first error, with the path. Call once.
  meta::Status Run();

 private:
  friend class Applier;
  explicit StoreFlush(int root_fd) : root_fd_(root_fd) {}
  int root_fd_;                                     // not owned
  std::vector<std::pair<std::string, int>> files_;  // owned
};

class Applier {
 public:
  // `store_root_fd` is an O_DIRECTORY descriptor of the store; it must stay
  // open for the Applier's lifetime (the Applier does not close it).
  explicit Applier(int store_root_fd);
  ~Applier();
  Applier(const Applier&) = delete;
  Applier& operator=(const Applier&) = delete;

  // Applies `change`. Returns OK once it is applied (in the page cache;
  // durable too for kFsync and kDsyncWrite), or the error of the failed
  // system call with the path in the message (e.g. ENOSPC).
  meta::Status Apply(const meta::Change& change);

  // Makes the store's namespace match `entries` (the primary's, parents
  // before children): removes what is not listed (or has another type),
  // creates what is missing, sets modes, owners and file sizes. File data is
  // left alone (the resync sends it). Returns the first error.
  meta::Status Reconcile(const std::vector<meta::NamespaceEntry>& entries);

  // Compares `block_size` blocks of the file at `path` now (not a cached
  // descriptor of a file replaced behind our back, which is dropped) from
  // `offset` with `sums` (BLAKE2b of the primary's blocks; holes read as
  // zeros). Returns the indexes of the blocks that differ (all of them if
  // there is no regular file), and sets `*size` to the file's size
  // (kNoFile if there is none).
  meta::Result<std::vector<uint32_t>> DiffBlocks(
      const std::string& path, uint64_t offset, uint32_t block_size,
      uint64_t length, const std::vector<std::array<uint8_t, 16>>& sums,
      uint64_t* size);

  // Lists the store's files, folders and symlinks whose paths sort after
  // `after` (bytewise; "" = all), in that order (each with its permission
  // bits and owner, files with their sizes, symlinks with their targets):
  // at most `limit` of them and, past the first, at most `max_bytes` of
  // paths and targets. `*last` says whether that was all. Returns the
  // first error of reading the store.
  meta::Status List(const std::string& after, size_t limit, size_t max_bytes,
                    std::vector<meta::NamespaceEntry>* out, bool* last);

  // Flushes every cached file and the store (syncfs). Returns the first error.
  meta::Status SyncAll();
  // The same flush, to Run() later on any thread: it covers everything
  // applied before this call. Writes the held writes first (volatile test
  // mode), which is the only part that can fail here.
  meta::Result<StoreFlush> BeginFlush();

  // Test seam: hold applied writes in memory until the next flush (or any
  // other change), so that killing the process loses them as a host crash
  // loses a page cache. Acknowledgements still go out on "apply".
  void SetVolatileWrites(bool on) { volatile_writes_ = on; }

  // Closes cached descriptors (e.g. before the store is handed to a mount).
  void CloseAll();

  // Every data write goes through the page cache (--cached-writes).
  void SetCachedWrites(bool on) { writer_.SetCached(on); }
  // Whether large writes of whole pages go uncached (meta::StoreWriter).
  bool writes_uncached() const { return writer_.uncached(); }

 private:
  // Opens the parent directory of `path` beneath the root; `*name` receives
  // the last component. Returns an owned fd.
  meta::Result<int> OpenParent(const std::string& path, std::string* name);
  meta::Status ApplyOnce(const meta::Change& change);
  // Returns a cached read-write fd of the regular file at `path` (not owned).
  // A cached fd whose file was removed since (its link count is 0: deleted
  // or replaced behind our back) is reopened, so changes go to the file the
  // path names now.
  meta::Result<int> FileFd(const std::string& path);
  void ForgetFiles();
  // Closes the cached fd of `path`, if any.
  void ForgetFile(const std::string& path);
  // Writes every held write (volatile mode). Returns the first error.
  meta::Status WriteHeld();

  int root_fd_;
  bool volatile_writes_ = false;
  meta::StoreWriter writer_;
  struct HeldWrite {
    std::string path;
    uint64_t offset;
    std::string data;
  };
  std::vector<HeldWrite> held_;
  // Open files by path, least recently used last; bounded by kMaxOpenFiles.
  // Any namespace change clears the cache: paths may then name other files.
  std::list<std::pair<std::string, int>> lru_;
  std::unordered_map<std::string,
                     std::list<std::pair<std::string, int>>::iterator>
      files_;
  // When the cached files are next checked for removal behind our back.
  std::chrono::steady_clock::time_point next_check_{};
};

}  // namespace mirrorfs::sync
