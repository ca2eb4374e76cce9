#include "sync/applier.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "meta/log.h"
#include "sync/block_sums.h"

namespace mirrorfs::sync {
namespace {

constexpr size_t kMaxOpenFiles = 64;

meta::Status Errno(const std::string& what, const std::string& path) {
  int err = errno;
  return meta::Status::Error(err,
                             what + " " + path + ": " + std::strerror(err));
}

int OpenBeneath(int dirfd, const char* path, uint64_t flags, uint64_t mode) {
  struct open_how how;
  std::memset(&how, 0, sizeof(how));
  how.flags = flags | O_CLOEXEC;
  how.mode = mode;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(
      ::syscall(SYS_openat2, dirfd, path, &how, sizeof(how)));
}

}  // namespace

Applier::Applier(int store_root_fd) : root_fd_(store_root_fd) {}

Applier::~Applier() { CloseAll(); }

void Applier::CloseAll() { ForgetFiles(); }

void Applier::ForgetFiles() {
  for (auto& [path, fd] : lru_) ::close(fd);
  lru_.clear();
  files_.clear();
}

meta::Result<int> Applier::OpenParent(const std::string& path,
                                      std::string* name) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    *name = path;
    int fd = ::dup(root_fd_);
    if (fd < 0) return Errno("dup store root for", path);
    return fd;
  }
  *name = path.substr(slash + 1);
  std::string dir = path.substr(0, slash);
  int fd = OpenBeneath(root_fd_, dir.c_str(), O_PATH | O_DIRECTORY, 0);
  if (fd < 0) return Errno("open parent directory of", path);
  return fd;
}

void Applier::ForgetFile(const std::string& path) {
  auto it = files_.find(path);
  if (it == files_.end()) return;
  ::close(it->second->second);
  lru_.erase(it->second);
  files_.erase(it);
}

meta::Result<int> Applier::FileFd(const std::string& path) {
  // A file removed or replaced behind our back (not through mirrorfs) is
  // written no more than a second after: the cached files are checked once
  // a second, not at each change (an fstat per change cost a 4 KiB write
  // with an fsync 10-20 % here, waiting behind the file's flush). A file
  // renamed away keeps its links and is not noticed here; DiffBlocks
  // (verify) is.
  auto now = std::chrono::steady_clock::now();
  if (now >= next_check_) {
    next_check_ = now + std::chrono::seconds(1);
    std::vector<std::string> gone;
    for (const auto& [cached, fd] : lru_) {
      struct stat st;
      if (::fstat(fd, &st) == 0 && st.st_nlink == 0) gone.push_back(cached);
    }
    for (const auto& cached : gone) {
      meta::LogWarning("the store's file " + cached +
                       " was removed or replaced behind mirrorfs's back; "
                       "applying changes to what is there now");
      ForgetFile(cached);
    }
  }
  auto it = files_.find(path);
  if (it != files_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }
  int fd = OpenBeneath(root_fd_, path.c_str(), O_RDWR | O_NOFOLLOW, 0);
  if (fd < 0) return Errno("open", path);
  if (lru_.size() >= kMaxOpenFiles) {
    ::close(lru_.back().second);
    files_.erase(lru_.back().first);
    lru_.pop_back();
  }
  lru_.emplace_front(path, fd);
  files_[path] = lru_.begin();
  return fd;
}

meta::Status Applier::WriteHeld() {
  std::vector<HeldWrite> held;
  held.swap(held_);
  for (const auto& w : held) {
    meta::Change c;
    c.kind = meta::ChangeKind::kWrite;
    c.path = w.path;
    c.offset = w.offset;
    c.length = w.data.size();
    c.data = w.data.data();
    MFS_RETURN_IF_ERROR(ApplyOnce(c));
  }
  return meta::Status::Ok();
}

meta::Status Applier::Apply(const meta::Change& c) {
  if (volatile_writes_) {
    if (c.kind == meta::ChangeKind::kWrite && !(c.flags & meta::kDsyncWrite)) {
      held_.push_back(
          HeldWrite{c.path, c.offset, std::string(c.data, c.length)});
      return meta::Status::Ok();
    }
    MFS_RETURN_IF_ERROR(WriteHeld());
  }
  meta::Status s = ApplyOnce(c);
  if (s.ok() || !(c.flags & meta::kReplay)) return s;
  // A replay of a change the copy may already have (it was disconnected
  // but not crashed): "already done" is success; anything else is a real
  // difference that the caller reports.
  using meta::ChangeKind;
  switch (c.kind) {
    case ChangeKind::kRename:
      if (s.err() == ENOENT) {
        std::string name;
        auto parent = OpenParent(c.target, &name);
        if (parent.ok()) {
          struct stat st;
          bool there =
              ::fstatat(*parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
          ::close(*parent);
          if (there) return meta::Status::Ok();
        }
      }
      break;
    case ChangeKind::kSymlink:
      if (s.err() == EEXIST) {
        std::string name;
        auto parent = OpenParent(c.path, &name);
        if (parent.ok()) {
          char buf[4097];
          ssize_t n = ::readlinkat(*parent, name.c_str(), buf, sizeof(buf) - 1);
          ::close(*parent);
          if (n >= 0 && std::string(buf, static_cast<size_t>(n)) == c.target) {
            return meta::Status::Ok();
          }
        }
      }
      break;
    case ChangeKind::kChmod:
    case ChangeKind::kChown:
    case ChangeKind::kSetTimes:
    case ChangeKind::kTruncate:
    case ChangeKind::kFsync:
      // The path went away later in the replay; the reconcile that follows
      // sets what exists.
      if (s.err() == ENOENT) return meta::Status::Ok();
      break;
    default:
      break;
  }
  return s;
}

meta::Status Applier::ApplyOnce(const meta::Change& c) {
  using meta::ChangeKind;
  using meta::Status;
  switch (c.kind) {
    case ChangeKind::kWrite: {
      auto fd = FileFd(c.path);
      if (!fd.ok()) return fd.status();
      MFS_RETURN_IF_ERROR(
          writer_.Pwrite(*fd, c.data, c.length, c.offset, c.path));
      if ((c.flags & meta::kDsyncWrite) && ::fdatasync(*fd) != 0) {
        return Errno("fdatasync", c.path);
      }
      if (c.flags & meta::kResyncData) {
        // Start writeback now (asynchronous): the resync's final flush then
        // finds most of it on disk already.
        (void)::sync_file_range(*fd, static_cast<off_t>(c.offset),
                                static_cast<off_t>(c.length),
                                SYNC_FILE_RANGE_WRITE);
      }
      return Status::Ok();
    }
    case ChangeKind::kPunchHole:
    case ChangeKind::kZeroRange:
    case ChangeKind::kAllocate: {
      auto fd = FileFd(c.path);
      if (!fd.ok()) return fd.status();
      int mode = 0;
      if (c.kind == ChangeKind::kPunchHole) {
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      } else {
        if (c.kind == ChangeKind::kZeroRange) mode = FALLOC_FL_ZERO_RANGE;
        if (c.flags & meta::kKeepSize) mode |= FALLOC_FL_KEEP_SIZE;
      }
      if (::fallocate(*fd, mode, static_cast<off_t>(c.offset),
                      static_cast<off_t>(c.length)) != 0) {
        return Errno("fallocate", c.path);
      }
      return Status::Ok();
    }
    case ChangeKind::kTruncate: {
      auto fd = FileFd(c.path);
      if (!fd.ok()) return fd.status();
      if (::ftruncate(*fd, static_cast<off_t>(c.length)) != 0) {
        return Errno("truncate", c.path);
      }
      return Status::Ok();
    }
    case ChangeKind::kFsync: {
      if (c.path.empty()) return SyncAll();
      auto fd = FileFd(c.path);
      if (!fd.ok()) {
        // A directory (fsyncdir) or a file replaced meanwhile: sync by path.
        int dfd = OpenBeneath(root_fd_, c.path.c_str(), O_RDONLY, 0);
        if (dfd < 0) return Errno("open for fsync", c.path);
        int rc = ::fsync(dfd);
        ::close(dfd);
        return rc == 0 ? Status::Ok() : Errno("fsync", c.path);
      }
      int rc = (c.flags & meta::kDataSync) ? ::fdatasync(*fd) : ::fsync(*fd);
      return rc == 0 ? Status::Ok() : Errno("fsync", c.path);
    }
    default:
      break;
  }

  // Namespace and attribute changes: resolve the parent beneath the root.
  ForgetFiles();
  std::string name;
  auto parent = OpenParent(c.path, &name);
  if (!parent.ok()) return parent.status();
  int dir = *parent;
  Status result;
  switch (c.kind) {
    case ChangeKind::kCreate: {
      int fd =
          ::openat(dir, name.c_str(),
                   O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, c.mode & 07777);
      if (fd < 0) {
        result = Errno("create", c.path);
      } else {
        if (::fchmod(fd, c.mode & 07777) != 0) result = Errno("chmod", c.path);
        ::close(fd);
      }
      break;
    }
    case ChangeKind::kMkdir:
      if (::mkdirat(dir, name.c_str(), c.mode & 07777) != 0) {
        struct stat st;
        if (errno == EEXIST &&
            ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISDIR(st.st_mode)) {
          break;
        }
        result = Errno("mkdir", c.path);
      } else if (::fchmodat(dir, name.c_str(), c.mode & 07777, 0) != 0) {
        result = Errno("chmod", c.path);
      }
      break;
    case ChangeKind::kSymlink:
      if (::symlinkat(c.target.c_str(), dir, name.c_str()) != 0) {
        result = Errno("symlink", c.path);
      }
      break;
    case ChangeKind::kUnlink:
      if (::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
        result = Errno("unlink", c.path);
      }
      break;
    case ChangeKind::kRmdir:
      if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
        result = Errno("rmdir", c.path);
      }
      break;
    case ChangeKind::kRename: {
      std::string to_name;
      auto to_parent = OpenParent(c.target, &to_name);
      if (!to_parent.ok()) {
        result = to_parent.status();
        break;
      }
      // Only the renameat2() bits; kReplay and friends are ours.
      unsigned flags = c.flags & (RENAME_NOREPLACE | RENAME_EXCHANGE);
      if (::renameat2(dir, name.c_str(), *to_parent, to_name.c_str(), flags) !=
          0) {
        result = Errno("rename " + c.path + " to", c.target);
      }
      ::close(*to_parent);
      break;
    }
    case ChangeKind::kChmod:
      if (::fchmodat(dir, name.c_str(), c.mode & 07777, 0) != 0) {
        result = Errno("chmod", c.path);
      }
      break;
    case ChangeKind::kChown:
      if (::fchownat(dir, name.c_str(), c.uid, c.gid, AT_SYMLINK_NOFOLLOW) !=
          0) {
        result = Errno("chown", c.path);
      }
      break;
    case ChangeKind::kSetTimes: {
      struct timespec ts[2];
      ts[0].tv_sec = c.atime.sec;
      ts[0].tv_nsec = c.atime.nsec;
      ts[1].tv_sec = c.mtime.sec;
      ts[1].tv_nsec = c.mtime.nsec;
      if (::utimensat(dir, name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) {
        result = Errno("set times of", c.path);
      }
      break;
    }
    default:
      result =
          Status::Error(EPROTO, "unknown change kind " +
                                    std::to_string(static_cast<int>(c.kind)));
  }
  ::close(dir);
  return result;
}

meta::Status Applier::SyncAll() {
  auto flush = BeginFlush();
  if (!flush.ok()) return flush.status();
  return flush->Run();
}

meta::Result<StoreFlush> Applier::BeginFlush() {
  MFS_RETURN_IF_ERROR(WriteHeld());
  StoreFlush flush(root_fd_);
  flush.files_.reserve(lru_.size());
  for (auto& [path, fd] : lru_) {
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return Errno("dup for a flush of", path);
    flush.files_.emplace_back(path, dup);
  }
  return flush;
}

StoreFlush::StoreFlush(StoreFlush&& other) noexcept
    : root_fd_(other.root_fd_), files_(std::move(other.files_)) {
  other.files_.clear();
}

StoreFlush::~StoreFlush() {
  for (auto& [path, fd] : files_) ::close(fd);
}

meta::Status StoreFlush::Run() {
  meta::Status first;
  for (auto& [path, fd] : files_) {
    if (::fsync(fd) != 0 && first.ok()) first = Errno("fsync", path);
  }
  if (::syncfs(root_fd_) != 0 && first.ok()) first = Errno("syncfs", "store");
  return first;
}

}  // namespace mirrorfs::sync

namespace mirrorfs::sync {
namespace {

using Type = meta::NamespaceEntry::Type;

// The names in `dir` (store-relative `rel`), without "." and "..", and
// without `.mirrorfs` in the root.
meta::Status ChildNames(int dir, const std::string& rel,
                        std::vector<std::string>* names) {
  int fd = ::dup(dir);
  if (fd < 0) return Errno("dup", rel.empty() ? "store" : rel);
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return Errno("list", rel.empty() ? "store" : rel);
  }
  ::rewinddir(d);
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (rel.empty() && name == ".mirrorfs") continue;
    names->push_back(std::move(name));
  }
  ::closedir(d);
  return meta::Status::Ok();
}

// Removes `name` in `dir` and, for a directory, everything below it.
meta::Status RemoveTree(int dir, const std::string& name,
                        const std::string& path) {
  struct stat st;
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return errno == ENOENT ? meta::Status::Ok() : Errno("stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    int fd = ::openat(dir, name.c_str(),
                      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return Errno("open", path);
    DIR* d = ::fdopendir(fd);
    if (d == nullptr) {
      ::close(fd);
      return Errno("list", path);
    }
    std::vector<std::string> children;
    while (struct dirent* e = ::readdir(d)) {
      std::string child = e->d_name;
      if (child != "." && child != "..") children.push_back(child);
    }
    meta::Status result;
    for (const auto& child : children) {
      auto s = RemoveTree(::dirfd(d), child, path + "/" + child);
      if (!s.ok() && result.ok()) result = s;
    }
    ::closedir(d);
    if (!result.ok()) return result;
    if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
      return Errno("rmdir", path);
    }
    return meta::Status::Ok();
  }
  if (::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
    return Errno("unlink", path);
  }
  return meta::Status::Ok();
}

Type TypeOf(mode_t mode) {
  if (S_ISDIR(mode)) return Type::kDirectory;
  if (S_ISLNK(mode)) return Type::kSymlink;
  return Type::kFile;
}

// Walks the store (below `rel`), removing what `wanted` does not list with
// the same type. `.mirrorfs` in the root is never touched.
meta::Status Prune(
    int dir, const std::string& rel,
    const std::unordered_map<std::string, const meta::NamespaceEntry*>&
        wanted) {
  std::vector<std::string> names;
  MFS_RETURN_IF_ERROR(ChildNames(dir, rel, &names));
  std::vector<std::pair<std::string, mode_t>> children;
  for (auto& name : names) {
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    children.emplace_back(std::move(name), st.st_mode);
  }
  meta::Status result;
  for (const auto& [name, mode] : children) {
    std::string path = rel.empty() ? name : rel + "/" + name;
    auto it = wanted.find(path);
    bool keep = it != wanted.end() && it->second->type == TypeOf(mode) &&
                (S_ISDIR(mode) || S_ISREG(mode) || S_ISLNK(mode));
    meta::Status s;
    if (!keep) {
      s = RemoveTree(dir, name, path);
    } else if (S_ISDIR(mode)) {
      int sub = ::openat(dir, name.c_str(),
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        s = Errno("open", path);
      } else {
        s = Prune(sub, path, wanted);
        ::close(sub);
      }
    }
    if (!s.ok() && result.ok()) result = s;
  }
  return result;
}

}  // namespace

meta::Status Applier::Reconcile(
    const std::vector<meta::NamespaceEntry>& entries) {
  MFS_RETURN_IF_ERROR(WriteHeld());
  ForgetFiles();
  std::unordered_map<std::string, const meta::NamespaceEntry*> wanted;
  for (const auto& e : entries) wanted[e.path] = &e;
  MFS_RETURN_IF_ERROR(Prune(root_fd_, "", wanted));
  meta::Status result;
  auto note = [&result](const meta::Status& s) {
    if (!s.ok() && result.ok()) result = s;
  };
  for (const auto& e : entries) {
    std::string name;
    auto parent = OpenParent(e.path, &name);
    if (!parent.ok()) {
      note(parent.status());
      continue;
    }
    int dir = *parent;
    struct stat st;
    bool exists = ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    switch (e.type) {
      case Type::kDirectory:
        if (!exists && ::mkdirat(dir, name.c_str(), e.mode) != 0) {
          note(Errno("mkdir", e.path));
        }
        break;
      case Type::kSymlink: {
        if (exists) {
          char buf[4097];
          ssize_t n = ::readlinkat(dir, name.c_str(), buf, sizeof(buf) - 1);
          if (n < 0 || std::string(buf, static_cast<size_t>(n)) != e.target) {
            ::unlinkat(dir, name.c_str(), 0);
            exists = false;
          }
        }
        if (!exists && ::symlinkat(e.target.c_str(), dir, name.c_str()) != 0) {
          note(Errno("symlink", e.path));
        }
        break;
      }
      case Type::kFile: {
        int fd = ::openat(dir, name.c_str(),
                          O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, e.mode);
        if (fd < 0) {
          note(Errno("create", e.path));
          break;
        }
        struct stat fst;
        if (::fstat(fd, &fst) == 0 &&
            static_cast<uint64_t>(fst.st_size) != e.size &&
            ::ftruncate(fd, static_cast<off_t>(e.size)) != 0) {
          note(Errno("truncate", e.path));
        }
        ::close(fd);
        break;
      }
    }
    if (e.type != Type::kSymlink &&
        ::fchmodat(dir, name.c_str(), e.mode & 07777, 0) != 0) {
      note(Errno("chmod", e.path));
    }
    if (::fchownat(dir, name.c_str(), e.uid, e.gid, AT_SYMLINK_NOFOLLOW) != 0) {
      note(Errno("chown", e.path));
    }
    ::close(dir);
  }
  return result;
}

meta::Result<std::vector<uint32_t>> Applier::DiffBlocks(
    const std::string& path, uint64_t offset, uint32_t block_size,
    uint64_t length, const std::vector<std::array<uint8_t, 16>>& sums,
    uint64_t* size) {
  std::vector<uint32_t> differing;
  *size = kNoFile;
  MFS_RETURN_IF_ERROR(WriteHeld());
  // What the path names now, not a cached descriptor: a file replaced
  // behind our back must not compare as the old one. (O_NONBLOCK: a FIFO
  // there must not block the open.)
  int fd = OpenBeneath(root_fd_, path.c_str(),
                       O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
  struct stat st;
  if (fd >= 0 && (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    ::close(fd);
    fd = -1;
  }
  if (fd < 0) {
    for (uint32_t i = 0; i < sums.size(); ++i) differing.push_back(i);
    return differing;
  }
  *size = static_cast<uint64_t>(st.st_size);
  auto cached = files_.find(path);
  if (cached != files_.end()) {
    struct stat cst;
    if (::fstat(cached->second->second, &cst) != 0 || cst.st_dev != st.st_dev ||
        cst.st_ino != st.st_ino) {
      meta::LogWarning("the store's file " + path +
                       " was replaced behind mirrorfs's back; applying "
                       "changes to what is there now");
      ForgetFile(path);
    }
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::string buffer(block_size, '\0');
  for (uint32_t i = 0; i < sums.size(); ++i) {
    uint64_t at = offset + uint64_t{i} * block_size;
    size_t want = static_cast<size_t>(
        std::min<uint64_t>(block_size, offset + length - at));
    std::fill(buffer.begin(), buffer.begin() + static_cast<long>(want), '\0');
    size_t got = 0;
    bool failed = false;
    while (got < want) {
      ssize_t n =
          ::pread(fd, &buffer[got], want - got, static_cast<off_t>(at + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) failed = true;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    std::array<uint8_t, kBlockSumBytes> sum = BlockSum(buffer.data(), want);
    // A short file differs even where the missing bytes would be zeros.
    if (failed || got < want || sum != sums[i]) differing.push_back(i);
  }
  return differing;
}

namespace {

// Appends the files, folders and symlinks below `dir` (store-relative
// `rel`) to `out`; `.mirrorfs` in the root is skipped, and what mirrorfs
// does not mirror (devices, FIFOs, sockets) too.
meta::Status ListBelow(int dir, const std::string& rel,
                       std::vector<meta::NamespaceEntry>* out) {
  std::vector<std::string> names;
  MFS_RETURN_IF_ERROR(ChildNames(dir, rel, &names));
  for (const auto& name : names) {
    std::string path = rel.empty() ? name : rel + "/" + name;
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      return Errno("stat", path);
    }
    meta::NamespaceEntry e;
    e.path = path;
    e.mode = st.st_mode & 07777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    if (S_ISREG(st.st_mode)) {
      e.type = Type::kFile;
      e.size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISLNK(st.st_mode)) {
      e.type = Type::kSymlink;
      char target[4097];
      ssize_t n = ::readlinkat(dir, name.c_str(), target, sizeof(target) - 1);
      if (n < 0 && errno == ENOENT) continue;
      if (n <= 0) return Errno("read the symlink", path);
      e.target.assign(target, static_cast<size_t>(n));
    } else if (S_ISDIR(st.st_mode)) {
      e.type = Type::kDirectory;
    } else {
      continue;
    }
    out->push_back(e);
    if (e.type != Type::kDirectory) continue;
    int sub = ::openat(dir, name.c_str(),
                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) return Errno("open", path);
    meta::Status s = ListBelow(sub, path, out);
    ::close(sub);
    MFS_RETURN_IF_ERROR(s);
  }
  return meta::Status::Ok();
}

}  // namespace

meta::Status Applier::List(const std::string& after, size_t limit,
                           size_t max_bytes,
                           std::vector<meta::NamespaceEntry>* out, bool* last) {
  std::vector<meta::NamespaceEntry> all;
  MFS_RETURN_IF_ERROR(ListBelow(root_fd_, "", &all));
  std::sort(all.begin(), all.end(),
            [](const meta::NamespaceEntry& a, const meta::NamespaceEntry& b) {
              return a.path < b.path;
            });
  auto it = all.begin();
  if (!after.empty()) {
    it = std::upper_bound(
        all.begin(), all.end(), after,
        [](const std::string& key, const meta::NamespaceEntry& e) {
          return key < e.path;
        });
  }
  out->clear();
  size_t bytes = 0;
  for (; it != all.end() && out->size() < limit; ++it) {
    size_t n = it->path.size() + it->target.size();
    if (!out->empty() && bytes + n > max_bytes) break;
    bytes += n;
    out->push_back(std::move(*it));
  }
  *last = it == all.end();
  return meta::Status::Ok();
}

}  // namespace mirrorfs::sync
