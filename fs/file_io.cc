#include "fs/file_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace mirrorfs::fs::file_io {

namespace {
std::string ProcPath(int fd) { return "/proc/self/fd/" + std::to_string(fd); }
}  // namespace

meta::Status ErrnoStatus(const std::string& what) {
  int err = errno;
  return meta::Status::Error(err, what + ": " + std::strerror(err));
}

meta::Result<int> OpenAt(int dirfd, const char* name, int flags, mode_t mode,
                         const std::string& what) {
  int fd;
  do {
    fd = openat(dirfd, name, flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoStatus("open " + what);
  return fd;
}

void Close(int fd) {
  if (fd >= 0) close(fd);
}

meta::Result<int> ReopenFd(int fd, int flags, const std::string& what) {
  return OpenAt(AT_FDCWD, ProcPath(fd).c_str(), flags & ~O_NOFOLLOW, 0, what);
}

meta::Result<struct stat> StatAt(int dirfd, const char* name, int extra_flags,
                                 const std::string& what) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW | extra_flags) < 0) {
    return ErrnoStatus("stat " + what);
  }
  return st;
}

meta::Result<struct statvfs> StatVfs(int fd, const std::string& what) {
  struct statvfs st;
  if (fstatvfs(fd, &st) < 0) return ErrnoStatus("statvfs " + what);
  return st;
}

meta::Result<size_t> Pread(int fd, void* buf, size_t len, uint64_t offset,
                           const std::string& what) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, static_cast<char*>(buf) + done, len - done,
                      static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + what);
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  return done;
}

meta::Status Fsync(int fd, bool datasync, const std::string& what) {
  int r = datasync ? fdatasync(fd) : fsync(fd);
  if (r < 0) return ErrnoStatus((datasync ? "fdatasync " : "fsync ") + what);
  return meta::Status::Ok();
}

meta::Status Ftruncate(int fd, uint64_t size, const std::string& what) {
  int r;
  do {
    r = ftruncate(fd, static_cast<off_t>(size));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ErrnoStatus("truncate " + what);
  return meta::Status::Ok();
}

meta::Status Fallocate(int fd, int mode, uint64_t offset, uint64_t len,
                       const std::string& what) {
  int r;
  do {
    r = fallocate(fd, mode, static_cast<off_t>(offset),
                  static_cast<off_t>(len));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ErrnoStatus("fallocate " + what);
  return meta::Status::Ok();
}

meta::Result<uint64_t> Lseek(int fd, uint64_t offset, int whence,
                             const std::string& what) {
  off_t r = lseek(fd, static_cast<off_t>(offset), whence);
  if (r < 0) return ErrnoStatus("lseek " + what);
  return static_cast<uint64_t>(r);
}

meta::Status MkdirAt(int dirfd, const char* name, mode_t mode,
                     const std::string& what) {
  if (mkdirat(dirfd, name, mode) < 0) return ErrnoStatus("mkdir " + what);
  return meta::Status::Ok();
}

meta::Status UnlinkAt(int dirfd, const char* name, int flags,
                      const std::string& what) {
  if (unlinkat(dirfd, name, flags) < 0) {
    return ErrnoStatus(((flags & AT_REMOVEDIR) ? "rmdir " : "unlink ") + what);
  }
  return meta::Status::Ok();
}

meta::Status RenameAt(int olddirfd, const char* oldname, int newdirfd,
                      const char* newname, unsigned flags,
                      const std::string& what) {
  int r = flags == 0 ? renameat(olddirfd, oldname, newdirfd, newname)
                     : renameat2(olddirfd, oldname, newdirfd, newname, flags);
  if (r < 0) return ErrnoStatus("rename " + what);
  return meta::Status::Ok();
}

meta::Status SymlinkAt(const char* target, int dirfd, const char* name,
                       const std::string& what) {
  if (symlinkat(target, dirfd, name) < 0) return ErrnoStatus("symlink " + what);
  return meta::Status::Ok();
}

meta::Result<std::string> ReadlinkFd(int fd, const std::string& what) {
  std::string buf(256, '\0');
  for (;;) {
    ssize_t n = readlinkat(fd, "", buf.data(), buf.size());
    if (n < 0) return ErrnoStatus("readlink " + what);
    if (static_cast<size_t>(n) < buf.size()) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
    buf.resize(buf.size() * 2);
  }
}

meta::Status ChmodFd(int fd, mode_t mode, const std::string& what) {
  if (chmod(ProcPath(fd).c_str(), mode) < 0)
    return ErrnoStatus("chmod " + what);
  return meta::Status::Ok();
}

meta::Status ChownFd(int fd, uint32_t uid, uint32_t gid,
                     const std::string& what) {
  if (fchownat(fd, "", static_cast<uid_t>(uid), static_cast<gid_t>(gid),
               AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
    return ErrnoStatus("chown " + what);
  }
  return meta::Status::Ok();
}

meta::Status ChownAt(int dirfd, const char* name, uint32_t uid, uint32_t gid,
                     const std::string& what) {
  if (fchownat(dirfd, name, static_cast<uid_t>(uid), static_cast<gid_t>(gid),
               AT_SYMLINK_NOFOLLOW) < 0) {
    return ErrnoStatus("chown " + what);
  }
  return meta::Status::Ok();
}

meta::Status UtimensFd(int fd, const struct timespec times[2],
                       const std::string& what) {
  if (utimensat(AT_FDCWD, ProcPath(fd).c_str(), times, 0) < 0) {
    return ErrnoStatus("utimens " + what);
  }
  return meta::Status::Ok();
}

meta::Status UtimensAt(int dirfd, const char* name,
                       const struct timespec times[2], int flags,
                       const std::string& what) {
  if (utimensat(dirfd, name, times, flags) < 0) {
    return ErrnoStatus("utimens " + what);
  }
  return meta::Status::Ok();
}

meta::Result<DIR*> FdOpenDir(int fd, const std::string& what) {
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    meta::Status s = ErrnoStatus("opendir " + what);
    close(fd);
    return s;
  }
  return d;
}

}  // namespace mirrorfs::fs::file_io
