// file_io: thin wrappers over the system calls the volume makes on the store.
//
// Here errno becomes a meta::Status: every wrapper returns Status or
// Result<T> whose err() is the errno of the failed call and whose message
// names the call and what it was applied to (`what`). Short reads are
// retried here, so callers see all-or-error semantics (Pread stops early
// only at end of file). Data is written through meta::StoreWriter, which
// shares the same rules with the secondary's Applier.
//
// Thread-safety: free functions without shared state; safe from any thread.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "meta/status.h"

namespace mirrorfs::fs::file_io {

// Returns an error Status for the current errno: "`what`: strerror(errno)".
meta::Status ErrnoStatus(const std::string& what);

// openat(2). Returns the new fd (close it with Close).
meta::Result<int> OpenAt(int dirfd, const char* name, int flags, mode_t mode,
                         const std::string& what);
void Close(int fd);
// Opens the file behind `fd` (e.g. an O_PATH fd) anew with `flags`, through
// /proc/self/fd.
meta::Result<int> ReopenFd(int fd, int flags, const std::string& what);

// fstatat(2) with AT_SYMLINK_NOFOLLOW | `extra_flags` (e.g. AT_EMPTY_PATH).
meta::Result<struct stat> StatAt(int dirfd, const char* name, int extra_flags,
                                 const std::string& what);
meta::Result<struct statvfs> StatVfs(int fd, const std::string& what);

// Reads up to `len` bytes at `offset`, retrying short reads and EINTR.
// Returns the bytes read: fewer than `len` only at end of file.
meta::Result<size_t> Pread(int fd, void* buf, size_t len, uint64_t offset,
                           const std::string& what);
// fsync(2), or fdatasync(2) when `datasync`.
meta::Status Fsync(int fd, bool datasync, const std::string& what);
meta::Status Ftruncate(int fd, uint64_t size, const std::string& what);
meta::Status Fallocate(int fd, int mode, uint64_t offset, uint64_t len,
                       const std::string& what);
meta::Result<uint64_t> Lseek(int fd, uint64_t offset, int whence,
                             const std::string& what);

// Namespace calls relative to a directory fd.
meta::Status MkdirAt(int dirfd, const char* name, mode_t mode,
                     const std::string& what);
meta::Status UnlinkAt(int dirfd, const char* name, int flags,
                      const std::string& what);
// renameat2(2); flags 0 uses plain renameat(2).
meta::Status RenameAt(int olddirfd, const char* oldname, int newdirfd,
                      const char* newname, unsigned flags,
                      const std::string& what);
meta::Status SymlinkAt(const char* target, int dirfd, const char* name,
                       const std::string& what);
// readlinkat(2) of `fd` itself (an O_PATH fd of the symlink).
meta::Result<std::string> ReadlinkFd(int fd, const std::string& what);

// Attribute calls on an O_PATH (or ordinary) fd of a non-symlink, through
// /proc/self/fd so that they work on O_PATH descriptors.
meta::Status ChmodFd(int fd, mode_t mode, const std::string& what);
meta::Status ChownFd(int fd, uint32_t uid, uint32_t gid,
                     const std::string& what);
// fchownat(2) of `name` in `dirfd`, not following a symlink.
meta::Status ChownAt(int dirfd, const char* name, uint32_t uid, uint32_t gid,
                     const std::string& what);
meta::Status UtimensFd(int fd, const struct timespec times[2],
                       const std::string& what);
meta::Status UtimensAt(int dirfd, const char* name,
                       const struct timespec times[2], int flags,
                       const std::string& what);

// A directory stream for `fd` (taken over by the DIR*, even on failure).
meta::Result<DIR*> FdOpenDir(int fd, const std::string& what);

}  // namespace mirrorfs::fs::file_io
