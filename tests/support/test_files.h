// Test helpers on real files: a fresh folder, a file's bytes, a byte
// pattern, which pages of a file are in the page cache (mincore on a
// mapping), and whether a folder's file system takes uncached writes
// (RWF_DONTCACHE).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mirrorfs::testing_support {

// Linux 6.14's value, for headers that predate it.
inline constexpr int kDontCache = 0x00000080;

// A fresh folder `parent`/`prefix`.XXXXXX; "" if it cannot be made.
inline std::string MakeTempDir(const std::string& parent,
                               const std::string& prefix) {
  std::string templ = parent + "/" + prefix + ".XXXXXX";
  return ::mkdtemp(templ.data()) == nullptr ? "" : templ;
}

// The whole content of the file at `path` ("" if it cannot be read).
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `size` bytes that change every page and differ with `seed`, so that a
// misplaced or stale page shows.
inline std::string Pattern(char seed, size_t size) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    data[i] = static_cast<char>(seed + i * 31 / 4096);
  }
  return data;
}

// How many of the pages of [offset, offset + length) of `path` are in the
// page cache; -1 if the file cannot be mapped. `offset`: page-aligned.
inline long CachedPages(const std::string& path, uint64_t offset,
                        uint64_t length) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  void* map = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd,
                     static_cast<off_t>(offset));
  ::close(fd);
  if (map == MAP_FAILED) return -1;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((length + page - 1) / page);
  long cached = -1;
  if (::mincore(map, length, resident.data()) == 0) {
    cached = 0;
    for (unsigned char r : resident) cached += r & 1;
  }
  ::munmap(map, length);
  return cached;
}

// Polls CachedPages until it is `want` or `timeout` passed; returns the
// last count. (Uncached pages are dropped when their write-back ends.)
inline long WaitCachedPages(
    const std::string& path, uint64_t offset, uint64_t length, long want,
    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  long cached = CachedPages(path, offset, length);
  while (cached != want && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    cached = CachedPages(path, offset, length);
  }
  return cached;
}

// Whether this kernel writes files in `dir` uncached.
inline bool TakesUncachedWrites(const std::string& dir) {
  std::string probe = dir + "/dontcache-probe";
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  std::vector<char> page(static_cast<size_t>(::sysconf(_SC_PAGESIZE)), 'p');
  struct iovec iov = {page.data(), page.size()};
  bool ok = ::pwritev2(fd, &iov, 1, 0, kDontCache) ==
            static_cast<ssize_t>(page.size());
  ::close(fd);
  ::unlink(probe.c_str());
  return ok;
}

}  // namespace mirrorfs::testing_support
