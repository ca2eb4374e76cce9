// Volume: the mirrored view of one store, as the FUSE adapter serves it.
//
// A Volume resolves kernel-style inode numbers to files under the store root,
// applies every operation to the local file, and hands each successful local
// mutation to the Mirror as a meta::Change named by its path relative to the
// store root. It has no libfuse include: fs/fuse/ turns kernel requests into
// these calls and replies.
//
// Thread-safety: thread-safe; FUSE calls arrive on many threads at once.
//
// ## The store
// STORE/.mirrorfs holds the node's own state. Through the volume it does not
// exist: Lookup of ".mirrorfs" in the root answers ENOENT, ReadDir skips it,
// and Create/Mkdir/Mknod/Symlink/Rename/Link of that name in the root answer
// EPERM (the name is reserved, not missing).
//
// ## Inodes
// Like libfuse's passthrough_hp, each inode the kernel knows is an O_PATH fd
// keyed by (st_dev, st_ino) with a lookup count; Forget drops it. Each inode
// also records its current parent and name so that the volume can name it by
// path for replication; Rename updates them, Unlink/Rmdir/rename-over mark
// the inode unlinked. Changes to an unlinked-but-open file are applied
// locally and NOT replicated (the peer's copy is gone too).
// Hard links are refused (Link -> EPERM: mirrorfs does not mirror hard
// links). A file that already has several links in the store is named by the
// first path it was looked up through.
//
// ## Lock order (outer first)
//   Inode::range_lock  ->  ns_mu_  ->  table_mu_  ->  the Mirror's own locks
// - ns_mu_ (the namespace lock) is EXCLUSIVE around {local namespace op +
//   Submit} for Create, Mkdir, Mknod, Symlink, Unlink, Rmdir, Rename and
//   SetAttr (mode, owner, size, times); SHARED around {path computation +
//   Submit} for data ops (Write, Fallocate, Fsync) and for Lookup.
// - an image's RangeLock is held across {Submit, local write, Wait} of a
//   Write (and {local op, Submit, Wait} of Fallocate; the whole file for a
//   size change), so overlapping changes reach every peer in local order.
// - ReadDir holds its directory handle's mutex outside ns_mu_ (it looks
//   entries up); handles_mu_ is a leaf lock.
// - No lock but the range lock is held while waiting for peers; none across
//   a local fsync.
//
// ## Errors of the local file and of the peers
// | local op | peers            | application sees                         |
// |----------|------------------|------------------------------------------|
// | ok       | all applied      | success                                  |
// | ok       | some failed/slow | success (the Mirror drops and logs them) |
// | failed   | (not submitted)  | the local errno (namespace ops, fallocate,|
// |          |                  | setattr, fsync: local op runs first)     |
// | failed   | submitted        | the local errno (Write only: Submit runs |
// |          |                  | first to overlap the network send).      |
// KNOWN GAP: in the last row a peer may hold data the primary lacks; the
// fracture log (next issue) must record that extent for resync.
//
// ## What is not mirrored (yet)
// - mtime/ctime produced implicitly by writes and namespace ops differ
//   between the copies; times are mirrored on explicit SetAttr only.
// - xattrs (the adapter answers ENOTSUP), hard links (EPERM), device nodes,
//   FIFOs and sockets (Mknod of anything but a regular file -> EPERM).
// - copy_file_range is not offered: the adapter answers ENOSYS so the kernel
//   falls back to read + write, which the write path mirrors.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "meta/change.h"
#include "meta/source.h"
#include "meta/status.h"
#include "meta/store_writer.h"

namespace mirrorfs::fs {

struct VolumeOptions {
  std::string store_root;  // absolute path of the store directory
  // Every write goes through the store's page cache too; by default large
  // writes of whole pages go uncached (see meta::StoreWriter).
  bool cached_writes = false;
};

// Kernel-facing inode number (a FUSE nodeid). kRootIno is the store root.
using Ino = uint64_t;
inline constexpr Ino kRootIno = 1;
// An open file or directory (a FUSE fh).
using Handle = uint64_t;

// Who asks: new files, directories and symlinks are given to this owner.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
};

struct Entry {
  Ino ino = 0;
  struct stat attr {};
};

// SetAttr: which fields to change (`valid`, a set of the k* bits below), and
// their values.
struct AttrChange {
  static constexpr uint32_t kMode = 1u << 0;
  static constexpr uint32_t kUid = 1u << 1;
  static constexpr uint32_t kGid = 1u << 2;
  static constexpr uint32_t kSize = 1u << 3;
  static constexpr uint32_t kAtime = 1u << 4;
  static constexpr uint32_t kMtime = 1u << 5;
  static constexpr uint32_t kAtimeNow = 1u << 6;  // with kAtime: "now"
  static constexpr uint32_t kMtimeNow = 1u << 7;  // with kMtime: "now"
  uint32_t valid = 0;
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  struct timespec atime {};  // may hold UTIME_NOW / UTIME_OMIT too
  struct timespec mtime {};
};

struct DirEntry {
  const char* name = nullptr;
  // Plus: a looked-up entry (ino counted); otherwise only st_ino and the
  // file type bits of st_mode are set and ino is 0.
  Entry entry;
  off_t next_offset = 0;  // where to continue after this entry
};
// Adds one entry to the caller's reply; false when it does not fit (the
// volume then undoes the entry's lookup and stops).
using DirFiller = std::function<bool(const DirEntry&)>;

// The Volume is also the resync's meta::Source: it lists the namespace under
// the frozen namespace lock and reads ranges under their range locks.
class Volume : public meta::Source {
 public:
  // Opens the store directory `options.store_root` (must exist and be a
  // directory). `*mirror` may be nullptr (no replication) and must outlive
  // the Volume. Returns an error naming the store on failure.
  static meta::Result<std::unique_ptr<Volume>> Open(
      const VolumeOptions& options, meta::Mirror* mirror);
  ~Volume() override;
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // All calls below: REQUIRES every Ino be one the volume returned (or
  // kRootIno) and not forgotten; every Handle one it returned and not
  // released. Errors carry the errno the application should see.

  // Looks `name` up in directory `parent`; counts one lookup on success.
  meta::Result<Entry> Lookup(Ino parent, const char* name);
  // Drops `count` lookups of `ino` (FUSE forget).
  void Forget(Ino ino, uint64_t count);
  meta::Result<struct stat> GetAttr(Ino ino);
  // Applies `change` (mode, owner, size, times, in that order) and returns
  // the resulting attributes. `fh` is an open handle of `ino` or 0.
  meta::Result<struct stat> SetAttr(Ino ino, const AttrChange& change,
                                    Handle fh);

  meta::Result<Handle> OpenDir(Ino ino);
  // Lists entries after `offset` (0 = from the start), without ".mirrorfs"
  // in the root. `plus` looks each entry up except "." and ".." (given with
  // ino 0: no lookup counted).
  meta::Status ReadDir(Ino ino, Handle dh, off_t offset, bool plus,
                       const DirFiller& fill);
  void ReleaseDir(Handle dh);

  // Opens `ino` with open(2) `flags`. O_DIRECT is dropped (the kernel's
  // buffers are not aligned; the adapter sets direct_io instead); O_TRUNC
  // truncates and mirrors the truncation; O_APPEND is dropped (the kernel
  // gives append offsets, and pwrite on an O_APPEND fd would ignore them);
  // O_DSYNC/O_SYNC are kept and make writes kDsyncWrite.
  meta::Result<Handle> Open(Ino ino, int flags);
  // Creates (or, without O_EXCL, opens) `name` in `parent`.
  meta::Result<std::pair<Entry, Handle>> Create(Ino parent, const char* name,
                                                mode_t mode, int flags,
                                                const Caller& caller);
  // Reads up to `size` bytes at `offset` into `buf`; returns bytes read
  // (short only at end of file).
  meta::Result<size_t> Read(Handle fh, char* buf, size_t size, uint64_t offset);
  // Writes `size` bytes at `offset`, mirrored; returns `size` on success.
  meta::Result<size_t> Write(Handle fh, const char* data, size_t size,
                             uint64_t offset);
  meta::Status Flush(Handle fh);
  // fsync/fdatasync of the local file, forwarded to the peers (kFsync).
  meta::Status Fsync(Handle fh, bool datasync);
  void Release(Handle fh);
  // FALLOC_FL_* `mode`: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE
  // [|KEEP_SIZE]; anything else -> EOPNOTSUPP.
  meta::Status Fallocate(Handle fh, int mode, uint64_t offset, uint64_t length);
  // SEEK_DATA / SEEK_HOLE (and SEEK_SET/CUR/END) on the local file.
  meta::Result<uint64_t> Lseek(Handle fh, uint64_t offset, int whence);

  meta::Result<Entry> Mkdir(Ino parent, const char* name, mode_t mode,
                            const Caller& caller);
  // Regular files only (S_IFREG or 0 type); anything else -> EPERM.
  meta::Result<Entry> Mknod(Ino parent, const char* name, mode_t mode,
                            const Caller& caller);
  meta::Result<Entry> Symlink(const char* target, Ino parent, const char* name,
                              const Caller& caller);
  meta::Result<std::string> Readlink(Ino ino);
  meta::Status Unlink(Ino parent, const char* name);
  meta::Status Rmdir(Ino parent, const char* name);
  // `flags`: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (others -> EINVAL).
  meta::Status Rename(Ino parent, const char* name, Ino new_parent,
                      const char* new_name, unsigned flags);
  // Always EPERM: hard links are not mirrored.
  meta::Status Link(Ino ino, Ino new_parent, const char* new_name);
  meta::Result<struct statvfs> StatFs();

  // meta::Source (see meta/source.h for the contracts).
  meta::Status WithNamespaceFrozen(
      const std::function<
          meta::Status(const std::vector<meta::NamespaceEntry>&)>& fn) override;
  meta::Status ReadRange(
      const std::string& path, uint64_t offset, uint64_t length,
      std::string* buffer,
      const std::function<void(const meta::Change&)>& emit) override;
  meta::Status ReadRangeLocked(
      const std::string& path, uint64_t offset, uint64_t length, bool to_end,
      const std::function<void(const std::string& current_path, uint64_t size,
                               const std::vector<meta::Change>& pieces)>& fn)
      override;
  void Prefetch(const std::string& path, uint64_t offset,
                uint64_t length) override;
  meta::Status ListFiles(
      std::vector<std::pair<std::string, uint64_t>>* files) override;
  meta::Status DataExtents(
      const std::string& path,
      std::vector<std::pair<uint64_t, uint64_t>>* out) override;

  // For tests: the store-relative path of `ino` ("" for the root), or
  // ENOENT when it or an ancestor is unlinked (changes are not mirrored).
  meta::Result<std::string> PathForTest(Ino ino);

 private:
  struct Inode;
  struct OpenFile;
  struct OpenDirectory;
  struct InodeKey {
    dev_t dev;
    ino_t ino;
    bool operator==(const InodeKey&) const = default;
  };
  struct InodeKeyHash {
    size_t operator()(const InodeKey& k) const {
      return std::hash<uint64_t>()(k.ino) ^ (std::hash<uint64_t>()(k.dev) << 1);
    }
  };
  using Waits = std::vector<std::shared_ptr<meta::Completion>>;

  Volume(meta::Mirror* mirror, std::string root);

  // ReadRangeLocked, reading into `*buffer` (see ReadRange).
  meta::Status ReadLocked(
      const std::string& path, uint64_t offset, uint64_t length, bool to_end,
      std::string* buffer,
      const std::function<void(const std::string& current_path, uint64_t size,
                               const std::vector<meta::Change>& pieces)>& fn);

  Inode& InodeOf(Ino ino);
  Ino InoOf(Inode* inode) const;
  OpenFile& FileOf(Handle fh);
  Handle AddFile(int fd, int flags, Inode* inode);
  // A name for messages that needs no lock ("inode 1234").
  static std::string Label(const Inode& inode);
  bool IsReserved(const Inode& parent, const char* name) const;
  // REQUIRES: ns_mu_ held (shared or exclusive). False when `inode` or an
  // ancestor is unlinked (nothing to replicate).
  bool PathOf(const Inode& inode, std::string* path) const;
  bool ChildPath(const Inode& parent, const char* name,
                 std::string* path) const;
  // REQUIRES: ns_mu_ held. Looks `name` up in `parent`, counts one lookup.
  meta::Result<Entry> LookupLocked(Inode& parent, const char* name);
  // REQUIRES: table_mu_ held. Drops counts; erases unreferenced inodes.
  void UnrefLocked(Inode* inode, uint64_t lookups, uint64_t children);
  // REQUIRES: ns_mu_ exclusive. The known inode with `key` named
  // (parent, name), or nullptr.
  Inode* FindChildLocked(const Inode& parent, const char* name,
                         const struct stat& st);
  // REQUIRES: ns_mu_ exclusive, `inode.range_lock` held for the whole file.
  // `*intent` receives the journal bracket the caller must close with
  // Finished() after waiting.
  meta::Status TruncateLocked(Inode& inode, int fd, uint64_t size, Waits* waits,
                              std::optional<meta::Change>* intent);
  // Truncates `inode` to `size`, mirrored, taking the locks itself.
  meta::Status Truncate(Inode& inode, int fd, uint64_t size);
  // REQUIRES: ns_mu_ exclusive. Gives the new node `name` to `caller` when
  // the daemon is root and the caller is not, and mirrors that (kChown).
  meta::Status ChownToCaller(Inode& parent, const char* name,
                             const std::string* path, const Caller& caller,
                             Waits* waits);
  // Unlink (or, for `directory`, rmdir) of `name` in `parent_ino`, mirrored.
  meta::Status RemoveChild(Ino parent_ino, const char* name, bool directory);
  // Hands `change` to the mirror (if any) and keeps what to wait for.
  void Submit(const meta::Change& change, Waits* waits);
  // The mirror's bracket of a data change (meta::Mirror::Prepare/Finished).
  meta::Status Prepare(const meta::Change& change);
  void Finished(const meta::Change& change);
  // Waits for each through the mirror (which may receive acknowledgements
  // on this thread). REQUIRES: waits is empty or mirror_ is set.
  void WaitAll(const Waits& waits);

  meta::Mirror* const mirror_;
  const std::string root_path_;
  meta::StoreWriter writer_;  // the data of Write
  std::unique_ptr<Inode> root_;

  // The namespace lock: orders namespace changes against each other and
  // against data changes (see the lock order above). Guards every Inode's
  // parent/name/unlinked.
  mutable std::shared_mutex ns_mu_;
  // Guards inodes_, and every Inode's nlookup/nchildren. After ns_mu_.
  std::mutex table_mu_;
  std::unordered_map<InodeKey, std::unique_ptr<Inode>, InodeKeyHash> inodes_;

  // Guards files_ and dirs_: the open handles, closed by ~Volume if the
  // kernel never released them (the loop stopped first). A leaf lock.
  std::mutex handles_mu_;
  std::unordered_set<OpenFile*> files_;
  std::unordered_set<OpenDirectory*> dirs_;
};

}  // namespace mirrorfs::fs
