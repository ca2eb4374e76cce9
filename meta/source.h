// Source: what a resync needs from the primary's mirrored volume, without
// sync/ depending on fs/ (cli wires fs::Volume in, as for meta::Mirror).
//
// Thread-safety: implementations are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "meta/change.h"
#include "meta/status.h"

namespace mirrorfs::meta {

// One entry of a store's namespace, as a namespace reconcile sends it.
struct NamespaceEntry {
  enum class Type : uint8_t { kFile = 1, kDirectory = 2, kSymlink = 3 };
  std::string path;  // store-relative, as in Change::path
  Type type = Type::kFile;
  uint32_t mode = 0;  // permission bits
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;   // files only
  std::string target;  // symlinks only
};

class Source {
 public:
  virtual ~Source() = default;

  // Freezes the namespace (no namespace change, and no change submission
  // at all, runs meanwhile), lists every entry of the store (parents before
  // children), and calls `fn` with the list while still frozen — so what
  // `fn` queues is ordered exactly between the changes before and after.
  // Returns fn's Status, or the error of listing the store.
  virtual Status WithNamespaceFrozen(
      const std::function<Status(const std::vector<NamespaceEntry>&)>& fn) = 0;

  // Reads [offset, offset + length) of the regular file at `path` while
  // holding that range's lock (so no write to it runs meanwhile), and calls
  // `emit` for each piece, in order, still under the lock: kWrite changes
  // for data, kPunchHole for holes. The data is read into `*buffer` (grown
  // if too small, never shrunk, so a buffer reused across calls is neither
  // reallocated nor cleared), which the kWrite changes point into. Nothing is
  // emitted beyond the end of the file. A missing file or a path that is no
  // longer a regular file emits nothing and returns OK (the namespace
  // reconcile covers it).
  virtual Status ReadRange(const std::string& path, uint64_t offset,
                           uint64_t length, std::string* buffer,
                           const std::function<void(const Change&)>& emit) = 0;

  // Like ReadRange, but hands every piece at once to `fn` while the range
  // lock is still held, so `fn` may wait (e.g. for a peer to compare the
  // same range: no write can change it meanwhile). `fn` gets the
  // store-relative path the file has now and its size. With `to_end` the
  // lock reaches from `offset` to the end of the file (only [offset,
  // offset + length) is read): no write that changes the size runs
  // meanwhile either, and `fn` is called even if nothing is read.
  virtual Status ReadRangeLocked(
      const std::string& path, uint64_t offset, uint64_t length, bool to_end,
      const std::function<void(const std::string& current_path, uint64_t size,
                               const std::vector<Change>& pieces)>& fn) = 0;

  // A hint: [offset, offset + length) of `path` will be read soon (the
  // resync reads ahead so that disk reads overlap the network).
  virtual void Prefetch(const std::string& path, uint64_t offset,
                        uint64_t length) {
    (void)path;
    (void)offset;
    (void)length;
  }

  // Regular files of the store with their sizes (for a full sync).
  virtual Status ListFiles(
      std::vector<std::pair<std::string, uint64_t>>* files) = 0;

  // The data extents (SEEK_DATA/SEEK_HOLE) of the file at `path`.
  virtual Status DataExtents(
      const std::string& path,
      std::vector<std::pair<uint64_t, uint64_t>>* out) = 0;
};

}  // namespace mirrorfs::meta
