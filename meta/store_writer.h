// StoreWriter: how a node writes data into the files of its store.
//
// A write of at least kMinUncachedBytes that covers whole pages goes
// uncached (RWF_DONTCACHE, Linux 6.14 and later, e.g. ext4, xfs, btrfs): it
// passes through the page cache as usual, its write-back starts at once,
// and its pages are dropped once they are on disk. A store's data is cached
// where it is read, not in the store: on a primary the FUSE mount keeps its
// own page cache above the store, so caching the store's file as well held
// every written byte twice; a secondary does not read what it receives at
// all. The second copy cost memory, fresh-page allocation (slow in virtual
// machines, where the host backs guest memory lazily) and a large
// write-back at the next flush.
//
// Other writes stay cached:
// - part of a page: uncached, that page would be read back from disk at the
//   next small write to it (appends, 512-byte sectors);
// - small writes: starting write-back at once costs an I/O submission (in
//   a VM, an exit to the host) per write, more than the copy itself, and
//   small random writes are cheaper written back together at the next
//   flush.
// Where the kernel or file system refuses the flag (older kernels, tmpfs),
// the first uncached write finds out, logs it once, and every later read
// and write is cached (reads ask for no flag: see below).
// `cached` (the --cached-writes option) keeps every write cached.
//
// Reads of the store (Pread) go through its page cache, keeping its
// read-ahead:
// - Small reads (below kMinUncachedBytes: an application's random reads
//   through the mount) stay cached, with what the store's read-ahead
//   brought in around them. Uncached (RWF_DONTCACHE, as an earlier build
//   read them), every one went to the disk: random 4 KiB reads of a
//   256 MiB image through a mount with one peer ran at 0.59-0.78x
//   passthrough_ll against 0.92-1.15x cached, in both states of this VM
//   (tests/bench/ab.sh, AB_TEST=randread_4k; alike on a 512 MiB image).
//   That build feared that read-ahead's large folios would make later
//   small writes dirty whole folios before an fsync; on this kernel (6.18,
//   ext4 keeps dirty state per block) an fsync after 32 random 4 KiB
//   writes took as long after a cached random read of the whole file as
//   on a cold one (354-363 against 360-391 us, raw store), and through
//   the mount as well.
// - Large reads (the kernel's read-ahead through the mount: sequential
//   readers) go through the page cache, keeping the store's read-ahead,
//   and then drop what lies behind them: POSIX_FADV_DONTNEED from the
//   kDropBehindBytes boundary before the previous one to the end of the
//   read. The kernel drops only whole folios, and read-ahead grows its
//   folios past the mount's 256 KiB steps, so dropping just the range
//   read left nearly all of a 512 MiB file cached; reaching back to the
//   previous boundary takes every folio the reader has passed. Uncached,
//   256 KiB reads of a cold file ran at half the speed of cached ones
//   here (1.1-1.2 against 2.3-2.4 GB/s); dropped behind, at the same
//   speed. DONTNEED starts the write-back of dirty pages in the range
//   (small writes) and drops them once clean, which the next flush would
//   have written anyway. What read-ahead brought in past the point where a
//   reader stopped stays cached (at most the store's read-ahead window).
//
// Only caching changes: a write is applied once Pwrite returns, and durable
// only after an fsync, either way.
//
// Thread-safety: thread-safe (one atomic flag).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "meta/status.h"

namespace mirrorfs::meta {

class StoreWriter {
 public:
  explicit StoreWriter(bool cached = false) : uncached_(!cached) {}

  // Writes below this many bytes stay cached, and so do reads; larger
  // reads are dropped behind (see above).
  static constexpr size_t kMinUncachedBytes = 64 * 1024;
  // The largest folio the page cache makes for a file (a PMD on x86-64).
  static constexpr uint64_t kDropBehindBytes = 2 * 1024 * 1024;

  // Writes all `length` bytes of `data` at `offset` of `fd`, retrying short
  // writes and EINTR; uncached if Uncached(offset, length) and the kernel
  // takes it. Errors name `what`.
  Status Pwrite(int fd, const void* data, size_t length, uint64_t offset,
                const std::string& what);

  // Reads up to `length` bytes at `offset` of `fd` into `buf`, retrying
  // short reads and EINTR; fewer only at the end of the file. A large
  // read leaves the store's cache while uncached() (see above). Returns the
  // bytes read, or an error naming `what`.
  Result<size_t> Pread(int fd, void* buf, size_t length, uint64_t offset,
                       const std::string& what);

  // From now on every write is cached (`cached`), or large writes of whole
  // pages go uncached again where the kernel takes it.
  void SetCached(bool cached) { uncached_.store(!cached); }
  // False once writes are all cached: asked to, or the kernel refused.
  bool uncached() const { return uncached_.load(std::memory_order_relaxed); }
  // Whether a write of `length` bytes at `offset` is written uncached
  // (while uncached()): whole pages only, at least kMinUncachedBytes.
  static bool Uncached(uint64_t offset, size_t length);

 private:
  // Whether `err` from an uncached write means the flag is refused here;
  // then every later read and write is cached (logged once).
  bool Refused(int err);
  // Writes (`write`) or reads `length` bytes between `buf` and `offset` of
  // `fd` with `flags`, retrying short transfers and EINTR, and once without
  // the flag where it is refused. A read stops early at the end of the
  // file. Returns the bytes transferred, or an error naming `what`.
  Result<size_t> Transfer(bool write, int fd, char* buf, size_t length,
                          uint64_t offset, int flags, const std::string& what);

  std::atomic<bool> uncached_;
};

}  // namespace mirrorfs::meta
