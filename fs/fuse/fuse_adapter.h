// FuseMount: serves a fs::Volume at a mountpoint through the libfuse3
// low-level API (FUSE_USE_VERSION 314, Debian 12's libfuse 3.14).
//
// Each kernel request is a short adapter function (fuse_adapter.cc) that
// calls the Volume and replies exactly once; meta::Status becomes an errno in
// one function there. No exception unwinds into libfuse: every adapter body
// catches everything and replies EIO.
//
// Behaviour at the mount:
// - Mounted with default_permissions (the kernel checks modes), allow_other
//   when the daemon is root, fsname=mirrorfs, subtype=mirrorfs, attribute and
//   entry timeouts of 1 s. New nodes belong to the calling user.
// - writeback_cache is off unless MountOptions::fuse_options holds
//   "writeback_cache" (that option is consumed here, not passed to libfuse).
// - Files opened O_DIRECT are served with direct_io (no page cache); the
//   store file itself is opened without O_DIRECT. O_DSYNC/O_SYNC are kept.
// - xattr calls answer ENOSYS, so the kernel stops asking and applications
//   see EOPNOTSUPP: xattrs are not mirrored yet.
// - copy_file_range answers ENOSYS: the kernel falls back to read + write,
//   which the Volume mirrors (holes in the source are copied as zeros, as
//   any filesystem without reflinks does).
// - link answers EPERM (hard links are not mirrored); mknod of anything but
//   a regular file answers EPERM.
//
// Thread-safety: Mount/Run/~FuseMount from one thread; Stop() from any
// thread, any number of times.
#pragma once

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/volume.h"
#include "meta/status.h"

struct fuse_session;

namespace mirrorfs::fs {

struct MountOptions {
  std::string mountpoint;
  // The mount's source in the mount table (fsname): the store's path, so
  // that `mount -a` and findmnt see which store is mounted where.
  std::string source = "mirrorfs";
  // -o values, e.g. "writeback_cache", "allow_other", "ro" (each may also be
  // a comma-separated list).
  std::vector<std::string> fuse_options;
  unsigned max_threads = 8;  // most worker threads serving requests
};

class FuseMount {
 public:
  // Mounts `*volume` (must outlive the FuseMount) at options.mountpoint.
  // Returns once the mount is in the mount table; requests are served once
  // Run() is called. Errors: ENOENT mountpoint missing, ENOTDIR not a
  // directory, EBUSY already a mount, ENODEV /dev/fuse missing, EINVAL bad
  // FUSE options, EIO the mount itself failed (libfuse says why on stderr).
  static meta::Result<std::unique_ptr<FuseMount>> Mount(
      Volume* volume, const MountOptions& options);

  // Serves requests on up to max_threads threads until the file system is
  // unmounted (umount, fusermount3 -u) or Stop() is called. Returns OK on a
  // clean unmount.
  meta::Status Run();

  // Makes Run() return: detaches the mount (umount -l); when files are
  // still open on the mount, Run() returns once a request from them is
  // served or the last one is closed.
  void Stop();

  // Unmounts if still mounted.
  ~FuseMount();

  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // For the adapters (fuse_adapter.cc); not part of the public contract.
  Volume* volume() const { return volume_; }
  bool writeback_cache() const { return writeback_cache_; }

 private:
  FuseMount(Volume* volume, std::string mountpoint, bool writeback_cache,
            unsigned max_threads);
  // Hands the mount back to libfuse once (fuse_session_unmount).
  // REQUIRES: mu_ held.
  void ReleaseMountLocked();

  Volume* const volume_;
  const std::string mountpoint_;  // absolute, resolved
  const bool writeback_cache_;
  const unsigned max_threads_;
  fuse_session* session_ = nullptr;  // owned; destroyed in ~FuseMount

  std::mutex mu_;  // guards session_released_; never held while serving
  bool session_released_ = false;  // fuse_session_unmount() was called
};

}  // namespace mirrorfs::fs
