#include "meta/store_writer.h"

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

Status StoreWriter::Pwrite(int fd, const void* data, size_t length,
                           uint64_t offset, const std::string& what) {
  int flags = uncached() && Uncached(offset, length) ? RWF_DONTCACHE : 0;
  size_t done = 0;
  while (done < length) {
    struct iovec iov;
    iov.iov_base = const_cast<char*>(static_cast<const char*>(data) + done);
    iov.iov_len = length - done;
    ssize_t n =
        ::pwritev2(fd, &iov, 1, static_cast<off_t>(offset + done), flags);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (flags != 0 && Refused(err)) {
        flags = 0;  // nothing was written: write it cached
        continue;
      }
      return Status::Error(err, "write " + what + ": " + std::strerror(err));
    }
    if (n == 0) return Status::Error(EIO, "write " + what + ": no progress");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<size_t> StoreWriter::Pread(int fd, void* buf, size_t length,
                                  uint64_t offset, const std::string& what) {
  int flags = uncached() ? RWF_DONTCACHE : 0;
  size_t done = 0;
  while (done < length) {
    struct iovec iov;
    iov.iov_base = static_cast<char*>(buf) + done;
    iov.iov_len = length - done;
    ssize_t n =
        ::preadv2(fd, &iov, 1, static_cast<off_t>(offset + done), flags);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (flags != 0 && Refused(err)) {
        flags = 0;  // nothing was read: read it cached
        continue;
      }
      return Status::Error(err, "read " + what + ": " + std::strerror(err));
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace mirrorfs::meta
