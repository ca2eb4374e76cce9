#include "meta/store_writer.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "meta/log.h"

// Linux 6.14's uncached buffered I/O flag; older headers lack it (older
// kernels refuse it with EOPNOTSUPP).
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080
#endif

namespace mirrorfs::meta {

bool StoreWriter::Uncached(uint64_t offset, size_t length) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return length >= kMinUncachedBytes && offset % page == 0 &&
         length % page == 0;
}

bool StoreWriter::Refused(int err) {
  if (err != EOPNOTSUPP && err != EINVAL && err != ENOSYS) return false;
  if (uncached_.exchange(false)) {
    LogInfo(std::string("uncached I/O (RWF_DONTCACHE) is not supported "
                        "here (") +
            std::strerror(err) + "); data goes through the page cache");
  }
  return true;
}

Result<size_t> StoreWriter::Transfer(bool write, int fd, char* buf,
                                     size_t length, uint64_t offset, int flags,
                                     const std::string& what) {
  const char* verb = write ? "write " : "read ";
  size_t done = 0;
  while (done < length) {
    struct iovec iov;
    iov.iov_base = buf + done;
    iov.iov_len = length - done;
    const off_t at = static_cast<off_t>(offset + done);
    ssize_t n = write ? ::pwritev2(fd, &iov, 1, at, flags)
                      : ::preadv2(fd, &iov, 1, at, flags);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (flags != 0 && Refused(err)) {
        flags = 0;  // nothing was transferred: do it cached
        continue;
      }
      return Status::Error(err, verb + what + ": " + std::strerror(err));
    }
    if (n == 0) {
      if (!write) break;  // end of file
      return Status::Error(EIO, verb + what + ": no progress");
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

Status StoreWriter::Pwrite(int fd, const void* data, size_t length,
                           uint64_t offset, const std::string& what) {
  int flags = uncached() && Uncached(offset, length) ? RWF_DONTCACHE : 0;
  return Transfer(/*write=*/true, fd,
                  const_cast<char*>(static_cast<const char*>(data)), length,
                  offset, flags, what)
      .status();
}

Result<size_t> StoreWriter::Pread(int fd, void* buf, size_t length,
                                  uint64_t offset, const std::string& what) {
  const bool drop_behind = uncached() && length >= kMinUncachedBytes;
  auto read = Transfer(/*write=*/false, fd, static_cast<char*>(buf), length,
                       offset, /*flags=*/0, what);
  if (read.ok() && drop_behind) {
    // Behind the read: from the boundary before the previous one, so that
    // a folio straddling it is whole in the range. Dirty pages are written
    // back first (without waiting) and stay until they are clean.
    uint64_t from = offset - offset % kDropBehindBytes;
    from = from >= kDropBehindBytes ? from - kDropBehindBytes : 0;
    (void)::posix_fadvise(fd, static_cast<off_t>(from),
                          static_cast<off_t>(offset + *read - from),
                          POSIX_FADV_DONTNEED);
  }
  return read;
}

}  // namespace mirrorfs::meta
