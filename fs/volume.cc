#include "fs/volume.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "fs/file_io.h"
#include "fs/range_lock.h"

namespace mirrorfs::fs {

namespace {

constexpr const char kStateDirName[] = ".mirrorfs";

bool IsDotOrDotDot(const char* name) {
  return name[0] == '.' &&
         (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

meta::Timespec ToTimespec(const struct timespec& ts) {
  return meta::Timespec{static_cast<int64_t>(ts.tv_sec),
                        static_cast<int64_t>(ts.tv_nsec)};
}

}  // namespace

struct Volume::Inode {
  Inode(int path_fd, const struct stat& st)
      : fd(path_fd), key{st.st_dev, st.st_ino}, type(st.st_mode & S_IFMT) {}
  ~Inode() { file_io::Close(fd); }

  const int fd;  // O_PATH | O_NOFOLLOW
  const InodeKey key;
  const mode_t type;  // S_IFMT bits

  // Guarded by ns_mu_; `parent` is written with table_mu_ held too, so that
  // UnrefLocked may read it under table_mu_ alone.
  Inode* parent = nullptr;  // nullptr only for the root
  std::string name;
  bool unlinked = false;

  // Guarded by table_mu_.
  uint64_t nlookup = 0;
  uint64_t nchildren = 0;  // known inodes whose `parent` is this one

  RangeLock range_lock;  // orders data changes of this image
};

struct Volume::OpenFile {
  int fd = -1;
  bool dsync = false;  // opened O_DSYNC / O_SYNC
  Inode* inode = nullptr;
};

struct Volume::OpenDirectory {
  std::mutex mu;  // guards dp and offset
  DIR* dp = nullptr;
  off_t offset = 0;
};

meta::Result<std::unique_ptr<Volume>> Volume::Open(const VolumeOptions& options,
                                                   meta::Mirror* mirror) {
  const std::string& root = options.store_root;
  if (root.empty() || root[0] != '/') {
    return meta::Status::Error(
        EINVAL, "store path '" + root + "' is not absolute; give a full path");
  }
  auto fd = file_io::OpenAt(AT_FDCWD, root.c_str(), O_PATH | O_DIRECTORY, 0,
                            "store " + root);
  if (!fd.ok()) return fd.status();
  auto st = file_io::StatAt(*fd, "", AT_EMPTY_PATH, "store " + root);
  if (!st.ok()) {
    file_io::Close(*fd);
    return st.status();
  }
  std::unique_ptr<Volume> volume(new Volume(mirror, root));
  volume->root_ = std::make_unique<Inode>(*fd, *st);
  volume->writer_.SetCached(options.cached_writes);
  return volume;
}

Volume::Volume(meta::Mirror* mirror, std::string root)
    : mirror_(mirror), root_path_(std::move(root)) {}

Volume::~Volume() {
  for (OpenFile* of : files_) {
    file_io::Close(of->fd);
    delete of;
  }
  for (OpenDirectory* d : dirs_) {
    closedir(d->dp);
    delete d;
  }
}

Handle Volume::AddFile(int fd, int flags, Inode* inode) {
  auto* of = new OpenFile{fd, (flags & O_DSYNC) != 0, inode};
  std::lock_guard<std::mutex> lock(handles_mu_);
  files_.insert(of);
  return static_cast<Handle>(reinterpret_cast<uintptr_t>(of));
}

// ---- helpers ---------------------------------------------------------------

Volume::Inode& Volume::InodeOf(Ino ino) {
  if (ino == kRootIno) return *root_;
  return *reinterpret_cast<Inode*>(static_cast<uintptr_t>(ino));
}

Ino Volume::InoOf(Inode* inode) const {
  if (inode == root_.get()) return kRootIno;
  return static_cast<Ino>(reinterpret_cast<uintptr_t>(inode));
}

Volume::OpenFile& Volume::FileOf(Handle fh) {
  return *reinterpret_cast<OpenFile*>(static_cast<uintptr_t>(fh));
}

std::string Volume::Label(const Inode& inode) {
  return "inode " + std::to_string(inode.key.ino);
}

bool Volume::IsReserved(const Inode& parent, const char* name) const {
  return &parent == root_.get() && std::strcmp(name, kStateDirName) == 0;
}

bool Volume::PathOf(const Inode& inode, std::string* path) const {
  std::vector<const std::string*> parts;
  for (const Inode* i = &inode; i != root_.get(); i = i->parent) {
    if (i->unlinked || i->parent == nullptr) return false;
    parts.push_back(&i->name);
  }
  path->clear();
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!path->empty()) path->push_back('/');
    path->append(**it);
  }
  return true;
}

bool Volume::ChildPath(const Inode& parent, const char* name,
                       std::string* path) const {
  if (!PathOf(parent, path)) return false;
  if (!path->empty()) path->push_back('/');
  path->append(name);
  return true;
}

void Volume::Submit(const meta::Change& change, Waits* waits) {
  if (mirror_ == nullptr) return;
  auto completion = mirror_->Submit(change);
  if (completion != nullptr) waits->push_back(std::move(completion));
}

meta::Status Volume::Prepare(const meta::Change& change) {
  return mirror_ == nullptr ? meta::Status::Ok() : mirror_->Prepare(change);
}

void Volume::Finished(const meta::Change& change) {
  if (mirror_ != nullptr) mirror_->Finished(change);
}

void Volume::WaitAll(const Waits& waits) {
  for (const auto& w : waits) mirror_->Wait(w);
}

meta::Result<Entry> Volume::LookupLocked(Inode& parent, const char* name) {
  auto fd = file_io::OpenAt(parent.fd, name, O_PATH | O_NOFOLLOW, 0, name);
  if (!fd.ok()) return fd.status();
  auto st = file_io::StatAt(*fd, "", AT_EMPTY_PATH, name);
  if (!st.ok()) {
    file_io::Close(*fd);
    return st.status();
  }
  Entry entry;
  entry.attr = *st;
  InodeKey key{st->st_dev, st->st_ino};
  if (key == root_->key) {  // e.g. a bind mount of the store into itself
    file_io::Close(*fd);
    entry.ino = kRootIno;
    return entry;
  }
  std::lock_guard<std::mutex> lock(table_mu_);
  auto it = inodes_.find(key);
  if (it != inodes_.end()) {
    file_io::Close(*fd);
    it->second->nlookup++;
    entry.ino = InoOf(it->second.get());
    return entry;
  }
  auto inode = std::make_unique<Inode>(*fd, *st);
  inode->parent = &parent;
  inode->name = name;
  inode->nlookup = 1;
  parent.nchildren++;
  entry.ino = InoOf(inode.get());
  inodes_.emplace(key, std::move(inode));
  return entry;
}

void Volume::UnrefLocked(Inode* inode, uint64_t lookups, uint64_t children) {
  while (inode != nullptr && inode != root_.get()) {
    inode->nlookup -= std::min(lookups, inode->nlookup);
    inode->nchildren -= std::min(children, inode->nchildren);
    if (inode->nlookup > 0 || inode->nchildren > 0) return;
    Inode* parent = inode->parent;
    inodes_.erase(inode->key);  // closes its fd
    inode = parent;
    lookups = 0;
    children = 1;
  }
}

Volume::Inode* Volume::FindChildLocked(const Inode& parent, const char* name,
                                       const struct stat& st) {
  std::lock_guard<std::mutex> lock(table_mu_);
  auto it = inodes_.find(InodeKey{st.st_dev, st.st_ino});
  if (it == inodes_.end()) return nullptr;
  Inode* inode = it->second.get();
  if (inode->parent != &parent || inode->name != name) return nullptr;
  return inode;
}

meta::Status Volume::ChownToCaller(Inode& parent, const char* name,
                                   const std::string* path,
                                   const Caller& caller, Waits* waits) {
  if (geteuid() != 0) return meta::Status::Ok();
  auto st = file_io::StatAt(parent.fd, name, 0, name);
  if (!st.ok()) return st.status();
  auto pst = file_io::StatAt(parent.fd, "", AT_EMPTY_PATH, "parent directory");
  if (!pst.ok()) return pst.status();
  uint32_t uid = caller.uid;
  // In a set-group-ID directory the new node keeps the directory's group.
  uint32_t gid = (pst->st_mode & S_ISGID) ? st->st_gid : caller.gid;
  if (uid == st->st_uid && gid == st->st_gid) return meta::Status::Ok();
  MFS_RETURN_IF_ERROR(file_io::ChownAt(parent.fd, name, uid, gid, name));
  if (path != nullptr) {
    meta::Change change;
    change.kind = meta::ChangeKind::kChown;
    change.path = *path;
    change.uid = uid;
    change.gid = gid;
    Submit(change, waits);
  }
  return meta::Status::Ok();
}

meta::Status Volume::TruncateLocked(Inode& inode, int fd, uint64_t size,
                                    Waits* waits,
                                    std::optional<meta::Change>* intent_out) {
  // The journal covers the region at the new end of the file: a crash then
  // re-syncs this file, whose namespace reconcile settles the size.
  meta::Change intent;
  intent.kind = meta::ChangeKind::kTruncate;
  intent.offset = size;
  intent.length = 1;
  intent.local_ino = inode.key.ino;
  MFS_RETURN_IF_ERROR(Prepare(intent));
  // The caller closes the bracket (Finished) once it waited for the peers.
  *intent_out = intent;
  if (fd >= 0) {
    MFS_RETURN_IF_ERROR(file_io::Ftruncate(fd, size, inode.name));
  } else {
    auto wfd = file_io::ReopenFd(inode.fd, O_WRONLY, inode.name);
    if (!wfd.ok()) return wfd.status();
    meta::Status s = file_io::Ftruncate(*wfd, size, inode.name);
    file_io::Close(*wfd);
    MFS_RETURN_IF_ERROR(s);
  }
  std::string path;
  if (PathOf(inode, &path)) {
    meta::Change change;
    change.kind = meta::ChangeKind::kTruncate;
    change.path = path;
    change.length = size;
    Submit(change, waits);
  }
  return meta::Status::Ok();
}

meta::Status Volume::Truncate(Inode& inode, int fd, uint64_t size) {
  RangeLock::Guard range = inode.range_lock.LockAll();
  Waits waits;
  meta::Status s;
  std::optional<meta::Change> intent;
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    s = TruncateLocked(inode, fd, size, &waits, &intent);
  }
  WaitAll(waits);
  if (intent) Finished(*intent);
  return s;
}

meta::Result<std::string> Volume::PathForTest(Ino ino) {
  std::shared_lock<std::shared_mutex> ns(ns_mu_);
  std::string path;
  if (!PathOf(InodeOf(ino), &path)) {
    return meta::Status::Error(ENOENT, "unlinked");
  }
  return path;
}

// ---- inodes and attributes -------------------------------------------------

meta::Result<Entry> Volume::Lookup(Ino parent_ino, const char* name) {
  Inode& parent = InodeOf(parent_ino);
  if (IsReserved(parent, name)) {
    return meta::Status::Error(ENOENT, "lookup .mirrorfs: hidden");
  }
  std::shared_lock<std::shared_mutex> ns(ns_mu_);
  return LookupLocked(parent, name);
}

void Volume::Forget(Ino ino, uint64_t count) {
  if (ino == kRootIno) return;
  std::lock_guard<std::mutex> lock(table_mu_);
  UnrefLocked(&InodeOf(ino), count, 0);
}

meta::Result<struct stat> Volume::GetAttr(Ino ino) {
  Inode& inode = InodeOf(ino);
  return file_io::StatAt(inode.fd, "", AT_EMPTY_PATH, Label(inode));
}

meta::Result<struct stat> Volume::SetAttr(Ino ino, const AttrChange& attr,
                                          Handle fh) {
  Inode& inode = InodeOf(ino);
  int fd = fh != 0 ? FileOf(fh).fd : -1;
  RangeLock::Guard range;
  if (attr.valid & AttrChange::kSize) range = inode.range_lock.LockAll();
  Waits waits;
  meta::Status s;
  std::optional<meta::Change> truncate_intent;
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    std::string path;
    bool mirrored = PathOf(inode, &path);
    const std::string& what = inode.name;
    if (s.ok() && (attr.valid & AttrChange::kMode)) {
      s = file_io::ChmodFd(inode.fd, attr.mode & 07777, what);
      if (s.ok() && mirrored) {
        meta::Change change;
        change.kind = meta::ChangeKind::kChmod;
        change.path = path;
        change.mode = attr.mode & 07777;
        Submit(change, &waits);
      }
    }
    if (s.ok() && (attr.valid & (AttrChange::kUid | AttrChange::kGid))) {
      uint32_t uid = (attr.valid & AttrChange::kUid) ? attr.uid : UINT32_MAX;
      uint32_t gid = (attr.valid & AttrChange::kGid) ? attr.gid : UINT32_MAX;
      s = file_io::ChownFd(inode.fd, uid, gid, what);
      if (s.ok() && mirrored) {
        meta::Change change;
        change.kind = meta::ChangeKind::kChown;
        change.path = path;
        change.uid = uid;
        change.gid = gid;
        Submit(change, &waits);
      }
    }
    if (s.ok() && (attr.valid & AttrChange::kSize)) {
      s = TruncateLocked(inode, fd, attr.size, &waits, &truncate_intent);
    }
    if (s.ok() && (attr.valid & (AttrChange::kAtime | AttrChange::kMtime))) {
      struct timespec times[2];
      times[0] = attr.atime;
      times[1] = attr.mtime;
      if (!(attr.valid & AttrChange::kAtime)) times[0].tv_nsec = UTIME_OMIT;
      if (attr.valid & AttrChange::kAtimeNow) times[0].tv_nsec = UTIME_NOW;
      if (!(attr.valid & AttrChange::kMtime)) times[1].tv_nsec = UTIME_OMIT;
      if (attr.valid & AttrChange::kMtimeNow) times[1].tv_nsec = UTIME_NOW;
      if (inode.type == S_IFLNK) {
        // Through the parent: /proc/self/fd would follow the link.
        if (inode.parent == nullptr || inode.unlinked) {
          s = meta::Status::Error(ENOENT, "utimens " + what + ": unlinked");
        } else {
          s = file_io::UtimensAt(inode.parent->fd, inode.name.c_str(), times,
                                 AT_SYMLINK_NOFOLLOW, what);
        }
      } else {
        s = file_io::UtimensFd(inode.fd, times, what);
      }
      if (s.ok() && mirrored) {
        // Peers get the resolved times, never UTIME_NOW/OMIT.
        auto st = file_io::StatAt(inode.fd, "", AT_EMPTY_PATH, what);
        if (!st.ok()) {
          s = st.status();
        } else {
          meta::Change change;
          change.kind = meta::ChangeKind::kSetTimes;
          change.path = path;
          change.atime = ToTimespec(st->st_atim);
          change.mtime = ToTimespec(st->st_mtim);
          Submit(change, &waits);
        }
      }
    }
  }
  WaitAll(waits);
  if (truncate_intent) Finished(*truncate_intent);
  if (!s.ok()) return s;
  return file_io::StatAt(inode.fd, "", AT_EMPTY_PATH, Label(inode));
}

// ---- directories -----------------------------------------------------------

meta::Result<Handle> Volume::OpenDir(Ino ino) {
  Inode& inode = InodeOf(ino);
  auto fd =
      file_io::OpenAt(inode.fd, ".", O_RDONLY | O_DIRECTORY, 0, Label(inode));
  if (!fd.ok()) return fd.status();
  auto dp = file_io::FdOpenDir(*fd, Label(inode));
  if (!dp.ok()) return dp.status();
  auto* d = new OpenDirectory;
  d->dp = *dp;
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    dirs_.insert(d);
  }
  return static_cast<Handle>(reinterpret_cast<uintptr_t>(d));
}

meta::Status Volume::ReadDir(Ino ino, Handle dh, off_t offset, bool plus,
                             const DirFiller& fill) {
  Inode& inode = InodeOf(ino);
  auto* d = reinterpret_cast<OpenDirectory*>(static_cast<uintptr_t>(dh));
  std::lock_guard<std::mutex> lock(d->mu);
  if (offset != d->offset) {
    seekdir(d->dp, offset);
    d->offset = offset;
  }
  int added = 0;
  for (;;) {
    errno = 0;
    struct dirent* e = readdir(d->dp);
    if (e == nullptr) {
      if (errno != 0 && added == 0) {
        return file_io::ErrnoStatus("readdir " + Label(inode));
      }
      return meta::Status::Ok();  // end, or return what we have
    }
    d->offset = e->d_off;
    if (IsReserved(inode, e->d_name)) continue;
    DirEntry de;
    de.name = e->d_name;
    de.next_offset = e->d_off;
    if (plus && !IsDotOrDotDot(e->d_name)) {
      std::shared_lock<std::shared_mutex> ns(ns_mu_);
      auto r = LookupLocked(inode, e->d_name);
      if (!r.ok()) {
        if (r.status().err() == ENOENT) continue;  // removed meanwhile
        if (added == 0) return r.status();
        return meta::Status::Ok();
      }
      de.entry = *r;
    } else {
      de.entry.attr.st_ino = e->d_ino;
      de.entry.attr.st_mode = DTTOIF(e->d_type);
    }
    if (!fill(de)) {
      if (de.entry.ino != 0) Forget(de.entry.ino, 1);
      return meta::Status::Ok();
    }
    added++;
  }
}

void Volume::ReleaseDir(Handle dh) {
  auto* d = reinterpret_cast<OpenDirectory*>(static_cast<uintptr_t>(dh));
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    dirs_.erase(d);
  }
  closedir(d->dp);
  delete d;
}

// ---- files -----------------------------------------------------------------

namespace {
// Flags for our own fd: no O_DIRECT (kernel buffers are unaligned), no
// O_APPEND (pwrite would ignore the offset), creation and truncation are
// done explicitly so that they can be mirrored.
int LocalOpenFlags(int flags) {
  return flags & ~(O_DIRECT | O_APPEND | O_TRUNC | O_CREAT | O_EXCL | O_NOCTTY);
}
}  // namespace

meta::Result<Handle> Volume::Open(Ino ino, int flags) {
  Inode& inode = InodeOf(ino);
  auto fd = file_io::ReopenFd(inode.fd, LocalOpenFlags(flags), Label(inode));
  if (!fd.ok()) return fd.status();
  if (flags & O_TRUNC) {
    meta::Status s =
        Truncate(inode, (flags & O_ACCMODE) != O_RDONLY ? *fd : -1, 0);
    if (!s.ok()) {
      file_io::Close(*fd);
      return s;
    }
  }
  return AddFile(*fd, flags, &inode);
}

meta::Result<std::pair<Entry, Handle>> Volume::Create(Ino parent_ino,
                                                      const char* name,
                                                      mode_t mode, int flags,
                                                      const Caller& caller) {
  Inode& parent = InodeOf(parent_ino);
  if (IsReserved(parent, name)) {
    return meta::Status::Error(EPERM, "create .mirrorfs: reserved name");
  }
  int local = LocalOpenFlags(flags) | O_NOFOLLOW;
  Waits waits;
  meta::Result<Entry> entry = meta::Status::Error(EIO, "create: not done");
  int fd = -1;
  bool created = true;
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    auto r = file_io::OpenAt(parent.fd, name, local | O_CREAT | O_EXCL,
                             mode & 07777, name);
    if (!r.ok() && r.status().err() == EEXIST && !(flags & O_EXCL)) {
      created = false;
      r = file_io::OpenAt(parent.fd, name, local, 0, name);
    }
    if (!r.ok()) return r.status();
    fd = *r;
    std::string path;
    bool mirrored = ChildPath(parent, name, &path);
    meta::Status s;
    if (created) {
      auto st = file_io::StatAt(fd, "", AT_EMPTY_PATH, name);
      if (st.ok() && mirrored) {
        meta::Change change;
        change.kind = meta::ChangeKind::kCreate;
        change.path = path;
        change.mode = st->st_mode & 07777;
        Submit(change, &waits);
      }
      s = st.status();
      if (s.ok()) {
        s = ChownToCaller(parent, name, mirrored ? &path : nullptr, caller,
                          &waits);
      }
    }
    if (s.ok()) entry = LookupLocked(parent, name);
    if (!s.ok()) entry = s;
  }
  if (entry.ok() && !created && (flags & O_TRUNC)) {
    meta::Status s = Truncate(InodeOf(entry->ino), fd, 0);
    if (s.ok()) {
      auto st = GetAttr(entry->ino);
      if (st.ok()) entry->attr = *st;
    } else {
      Forget(entry->ino, 1);
      entry = s;
    }
  }
  WaitAll(waits);
  if (!entry.ok()) {
    file_io::Close(fd);
    return entry.status();
  }
  return std::make_pair(*entry, AddFile(fd, flags, &InodeOf(entry->ino)));
}

meta::Result<size_t> Volume::Read(Handle fh, char* buf, size_t size,
                                  uint64_t offset) {
  OpenFile& of = FileOf(fh);
  return writer_.Pread(of.fd, buf, size, offset, Label(*of.inode));
}

meta::Result<size_t> Volume::Write(Handle fh, const char* data, size_t size,
                                   uint64_t offset) {
  OpenFile& of = FileOf(fh);
  Inode& inode = *of.inode;
  RangeLock::Guard range = inode.range_lock.Lock(offset, size);
  meta::Change change;
  change.kind = meta::ChangeKind::kWrite;
  change.offset = offset;
  change.length = size;
  change.flags = of.dsync ? meta::kDsyncWrite : 0;
  change.data = data;
  change.local_ino = inode.key.ino;
  MFS_RETURN_IF_ERROR(Prepare(change));
  Waits waits;
  {
    std::shared_lock<std::shared_mutex> ns(ns_mu_);
    if (PathOf(inode, &change.path)) Submit(change, &waits);
  }
  // Submitted before the local write so that the network send overlaps it.
  // If the local write fails now, a peer may hold data the primary lacks:
  // the range goes to every peer's fracture log (the write-intent journal
  // covers it until then) and a resync sends the primary's data there.
  meta::Status s = writer_.Pwrite(of.fd, data, size, offset, Label(inode));
  WaitAll(waits);
  if (!s.ok() && !change.path.empty() && mirror_ != nullptr) {
    mirror_->Diverged(change);
  }
  Finished(change);
  if (!s.ok()) return s;
  return size;
}

meta::Status Volume::Flush(Handle) { return meta::Status::Ok(); }

meta::Status Volume::Fsync(Handle fh, bool datasync) {
  OpenFile& of = FileOf(fh);
  Waits waits;
  {
    std::shared_lock<std::shared_mutex> ns(ns_mu_);
    std::string path;
    if (PathOf(*of.inode, &path)) {
      meta::Change change;
      change.kind = meta::ChangeKind::kFsync;
      change.path = std::move(path);
      change.flags = datasync ? meta::kDataSync : 0;
      Submit(change, &waits);
    }
  }
  meta::Status s = file_io::Fsync(of.fd, datasync, Label(*of.inode));
  WaitAll(waits);
  return s;
}

void Volume::Release(Handle fh) {
  OpenFile* of = &FileOf(fh);
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    files_.erase(of);
  }
  file_io::Close(of->fd);
  delete of;
}

meta::Status Volume::Fallocate(Handle fh, int mode, uint64_t offset,
                               uint64_t length) {
  OpenFile& of = FileOf(fh);
  Inode& inode = *of.inode;
  meta::Change change;
  switch (mode) {
    case 0:
      change.kind = meta::ChangeKind::kAllocate;
      break;
    case FALLOC_FL_KEEP_SIZE:
      change.kind = meta::ChangeKind::kAllocate;
      change.flags = meta::kKeepSize;
      break;
    case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
      change.kind = meta::ChangeKind::kPunchHole;
      change.flags = meta::kKeepSize;
      break;
    case FALLOC_FL_ZERO_RANGE:
      change.kind = meta::ChangeKind::kZeroRange;
      break;
    case FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE:
      change.kind = meta::ChangeKind::kZeroRange;
      change.flags = meta::kKeepSize;
      break;
    default:
      return meta::Status::Error(EOPNOTSUPP,
                                 "fallocate " + Label(inode) + ": mode " +
                                     std::to_string(mode) + " is not mirrored");
  }
  RangeLock::Guard range = inode.range_lock.Lock(offset, length);
  change.offset = offset;
  change.length = length;
  change.local_ino = inode.key.ino;
  MFS_RETURN_IF_ERROR(Prepare(change));
  // The local operation first: its errors (EOPNOTSUPP, ENOSPC) must not
  // reach the peers.
  meta::Status local =
      file_io::Fallocate(of.fd, mode, offset, length, Label(inode));
  Waits waits;
  if (local.ok()) {
    std::shared_lock<std::shared_mutex> ns(ns_mu_);
    if (PathOf(inode, &change.path)) Submit(change, &waits);
  }
  WaitAll(waits);
  Finished(change);
  return local;
}

meta::Result<uint64_t> Volume::Lseek(Handle fh, uint64_t offset, int whence) {
  OpenFile& of = FileOf(fh);
  return file_io::Lseek(of.fd, offset, whence, Label(*of.inode));
}

// ---- namespace -------------------------------------------------------------

meta::Result<Entry> Volume::Mkdir(Ino parent_ino, const char* name, mode_t mode,
                                  const Caller& caller) {
  Inode& parent = InodeOf(parent_ino);
  if (IsReserved(parent, name)) {
    return meta::Status::Error(EPERM, "mkdir .mirrorfs: reserved name");
  }
  Waits waits;
  meta::Result<Entry> entry = meta::Status::Error(EIO, "mkdir: not done");
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    MFS_RETURN_IF_ERROR(file_io::MkdirAt(parent.fd, name, mode, name));
    std::string path;
    bool mirrored = ChildPath(parent, name, &path);
    auto st = file_io::StatAt(parent.fd, name, 0, name);
    if (st.ok() && mirrored) {
      meta::Change change;
      change.kind = meta::ChangeKind::kMkdir;
      change.path = path;
      change.mode = st->st_mode & 07777;
      Submit(change, &waits);
    }
    meta::Status s = st.status();
    if (s.ok()) {
      s = ChownToCaller(parent, name, mirrored ? &path : nullptr, caller,
                        &waits);
    }
    entry = s.ok() ? LookupLocked(parent, name) : meta::Result<Entry>(s);
  }
  WaitAll(waits);
  return entry;
}

meta::Result<Entry> Volume::Mknod(Ino parent_ino, const char* name, mode_t mode,
                                  const Caller& caller) {
  if ((mode & S_IFMT) != 0 && (mode & S_IFMT) != S_IFREG) {
    return meta::Status::Error(
        EPERM, std::string("mknod ") + name +
                   ": mirrorfs mirrors regular files, directories and "
                   "symlinks only");
  }
  auto r = Create(parent_ino, name, mode, O_WRONLY | O_EXCL, caller);
  if (!r.ok()) return r.status();
  Release(r->second);
  return r->first;
}

meta::Result<Entry> Volume::Symlink(const char* target, Ino parent_ino,
                                    const char* name, const Caller& caller) {
  Inode& parent = InodeOf(parent_ino);
  if (IsReserved(parent, name)) {
    return meta::Status::Error(EPERM, "symlink .mirrorfs: reserved name");
  }
  Waits waits;
  meta::Result<Entry> entry = meta::Status::Error(EIO, "symlink: not done");
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    MFS_RETURN_IF_ERROR(file_io::SymlinkAt(target, parent.fd, name, name));
    std::string path;
    bool mirrored = ChildPath(parent, name, &path);
    if (mirrored) {
      meta::Change change;
      change.kind = meta::ChangeKind::kSymlink;
      change.path = path;
      change.target = target;
      Submit(change, &waits);
    }
    meta::Status s =
        ChownToCaller(parent, name, mirrored ? &path : nullptr, caller, &waits);
    entry = s.ok() ? LookupLocked(parent, name) : meta::Result<Entry>(s);
  }
  WaitAll(waits);
  return entry;
}

meta::Result<std::string> Volume::Readlink(Ino ino) {
  Inode& inode = InodeOf(ino);
  return file_io::ReadlinkFd(inode.fd, Label(inode));
}

meta::Status Volume::Unlink(Ino parent_ino, const char* name) {
  return RemoveChild(parent_ino, name, /*directory=*/false);
}

meta::Status Volume::Rmdir(Ino parent_ino, const char* name) {
  return RemoveChild(parent_ino, name, /*directory=*/true);
}

meta::Status Volume::RemoveChild(Ino parent_ino, const char* name,
                                 bool directory) {
  Inode& parent = InodeOf(parent_ino);
  const char* verb = directory ? "rmdir" : "unlink";
  if (IsReserved(parent, name)) {
    return meta::Status::Error(ENOENT,
                               std::string(verb) + " .mirrorfs: hidden");
  }
  Waits waits;
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    auto st = file_io::StatAt(parent.fd, name, 0, name);
    if (!st.ok()) return st.status();
    MFS_RETURN_IF_ERROR(
        file_io::UnlinkAt(parent.fd, name, directory ? AT_REMOVEDIR : 0, name));
    std::string path;
    bool mirrored = ChildPath(parent, name, &path);
    if (Inode* child = FindChildLocked(parent, name, *st)) {
      child->unlinked = true;
    }
    if (mirrored) {
      meta::Change change;
      change.kind =
          directory ? meta::ChangeKind::kRmdir : meta::ChangeKind::kUnlink;
      change.path = path;
      Submit(change, &waits);
    }
  }
  WaitAll(waits);
  return meta::Status::Ok();
}

meta::Status Volume::Rename(Ino parent_ino, const char* name,
                            Ino new_parent_ino, const char* new_name,
                            unsigned flags) {
  if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    return meta::Status::Error(
        EINVAL, "rename: unsupported flags " + std::to_string(flags));
  }
  Inode& parent = InodeOf(parent_ino);
  Inode& new_parent = InodeOf(new_parent_ino);
  if (IsReserved(parent, name)) {
    return meta::Status::Error(ENOENT, "rename .mirrorfs: hidden");
  }
  if (IsReserved(new_parent, new_name)) {
    return meta::Status::Error(EPERM, "rename to .mirrorfs: reserved name");
  }
  Waits waits;
  {
    std::unique_lock<std::shared_mutex> ns(ns_mu_);
    auto src_st = file_io::StatAt(parent.fd, name, 0, name);
    if (!src_st.ok()) return src_st.status();
    auto dst_st = file_io::StatAt(new_parent.fd, new_name, 0, new_name);
    MFS_RETURN_IF_ERROR(
        file_io::RenameAt(parent.fd, name, new_parent.fd, new_name, flags,
                          std::string(name) + " to " + new_name));
    std::string path, target;
    bool mirrored = ChildPath(parent, name, &path) &&
                    ChildPath(new_parent, new_name, &target);
    Inode* src = FindChildLocked(parent, name, *src_st);
    Inode* dst =
        dst_st.ok() ? FindChildLocked(new_parent, new_name, *dst_st) : nullptr;
    bool same = dst_st.ok() && src_st->st_dev == dst_st->st_dev &&
                src_st->st_ino == dst_st->st_ino;
    if (!same) {
      std::lock_guard<std::mutex> lock(table_mu_);
      auto move = [&](Inode* inode, Inode* to, const char* to_name) {
        Inode* from = inode->parent;
        to->nchildren++;
        inode->parent = to;
        inode->name = to_name;
        UnrefLocked(from, 0, 1);
      };
      if (flags & RENAME_EXCHANGE) {
        if (src != nullptr) move(src, &new_parent, new_name);
        if (dst != nullptr) move(dst, &parent, name);
      } else {
        if (dst != nullptr) dst->unlinked = true;
        if (src != nullptr) move(src, &new_parent, new_name);
      }
    }
    if (mirrored) {
      meta::Change change;
      change.kind = meta::ChangeKind::kRename;
      change.path = path;
      change.target = target;
      change.flags = flags;
      Submit(change, &waits);
    }
  }
  WaitAll(waits);
  return meta::Status::Ok();
}

meta::Status Volume::Link(Ino, Ino, const char* new_name) {
  return meta::Status::Error(
      EPERM, std::string("link ") + new_name +
                 ": mirrorfs does not mirror hard links; copy the file");
}

meta::Result<struct statvfs> Volume::StatFs() {
  return file_io::StatVfs(root_->fd, "store " + root_path_);
}

// ---- meta::Source: what a resync reads -------------------------------------

namespace {

// Lists the store below `dir` (store-relative `rel`), parents first.
meta::Status ListTree(int dir, const std::string& rel,
                      std::vector<meta::NamespaceEntry>* out) {
  int fd = ::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return meta::Status::FromErrno("list " +
                                   (rel.empty() ? std::string("store") : rel));
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return meta::Status::FromErrno("list " + rel);
  }
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (rel.empty() && name == ".mirrorfs") continue;
    names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    meta::NamespaceEntry e;
    e.path = rel.empty() ? name : rel + "/" + name;
    e.mode = st.st_mode & 07777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    if (S_ISDIR(st.st_mode)) {
      e.type = meta::NamespaceEntry::Type::kDirectory;
      out->push_back(e);
      int sub = ::openat(dir, name.c_str(),
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) return meta::Status::FromErrno("open " + e.path);
      auto s = ListTree(sub, e.path, out);
      ::close(sub);
      MFS_RETURN_IF_ERROR(s);
    } else if (S_ISLNK(st.st_mode)) {
      e.type = meta::NamespaceEntry::Type::kSymlink;
      char buf[4097];
      ssize_t n = ::readlinkat(dir, name.c_str(), buf, sizeof(buf) - 1);
      if (n <= 0) continue;
      e.target.assign(buf, static_cast<size_t>(n));
      out->push_back(e);
    } else if (S_ISREG(st.st_mode)) {
      e.type = meta::NamespaceEntry::Type::kFile;
      e.size = static_cast<uint64_t>(st.st_size);
      out->push_back(e);
    }
    // Devices, FIFOs and sockets are not mirrored.
  }
  return meta::Status::Ok();
}

// Opens the regular file at store-relative `path` for reading, strictly
// beneath the store root.
int OpenBeneathForRead(int root, const std::string& path) {
  struct open_how how;
  std::memset(&how, 0, sizeof(how));
  how.flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(
      ::syscall(SYS_openat2, root, path.c_str(), &how, sizeof(how)));
}

}  // namespace

meta::Status Volume::WithNamespaceFrozen(
    const std::function<meta::Status(const std::vector<meta::NamespaceEntry>&)>&
        fn) {
  std::unique_lock<std::shared_mutex> ns(ns_mu_);
  std::vector<meta::NamespaceEntry> entries;
  int root = ::open(root_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return meta::Status::FromErrno("open store " + root_path_);
  auto listed = ListTree(root, "", &entries);
  ::close(root);
  MFS_RETURN_IF_ERROR(listed);
  return fn(entries);
}

void Volume::Prefetch(const std::string& path, uint64_t offset,
                      uint64_t length) {
  int root = ::open(root_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return;
  int fd = OpenBeneathForRead(root, path);
  ::close(root);
  if (fd < 0) return;
  // Asynchronous readahead into the page cache; errors do not matter.
  (void)::posix_fadvise(fd, static_cast<off_t>(offset),
                        static_cast<off_t>(length), POSIX_FADV_WILLNEED);
  ::close(fd);
}

meta::Status Volume::ListFiles(
    std::vector<std::pair<std::string, uint64_t>>* files) {
  std::vector<meta::NamespaceEntry> entries;
  {
    std::shared_lock<std::shared_mutex> ns(ns_mu_);
    int root = ::open(root_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return meta::Status::FromErrno("open store " + root_path_);
    auto listed = ListTree(root, "", &entries);
    ::close(root);
    MFS_RETURN_IF_ERROR(listed);
  }
  for (const auto& e : entries) {
    if (e.type == meta::NamespaceEntry::Type::kFile) {
      files->emplace_back(e.path, e.size);
    }
  }
  return meta::Status::Ok();
}

meta::Status Volume::DataExtents(
    const std::string& path, std::vector<std::pair<uint64_t, uint64_t>>* out) {
  int root = ::open(root_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return meta::Status::FromErrno("open store " + root_path_);
  int fd = OpenBeneathForRead(root, path);
  ::close(root);
  if (fd < 0) return meta::Status::FromErrno("open " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return meta::Status::Error(ENOENT, path + " is not a regular file");
  }
  off_t size = st.st_size;
  off_t at = 0;
  while (at < size) {
    off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) break;  // ENXIO: only a hole remains
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = size;
    out->emplace_back(static_cast<uint64_t>(data),
                      static_cast<uint64_t>(hole - data));
    at = hole;
  }
  ::close(fd);
  return meta::Status::Ok();
}

meta::Status Volume::ReadRange(
    const std::string& path, uint64_t offset, uint64_t length,
    std::string* buffer, const std::function<void(const meta::Change&)>& emit) {
  return ReadLocked(path, offset, length, /*to_end=*/false, buffer,
                    [&emit](const std::string&, uint64_t,
                            const std::vector<meta::Change>& pieces) {
                      for (const auto& c : pieces) emit(c);
                    });
}

meta::Status Volume::ReadRangeLocked(
    const std::string& path, uint64_t offset, uint64_t length, bool to_end,
    const std::function<void(const std::string& current_path, uint64_t size,
                             const std::vector<meta::Change>& pieces)>& fn) {
  std::string buffer;
  return ReadLocked(path, offset, length, to_end, &buffer, fn);
}

meta::Status Volume::ReadLocked(
    const std::string& path, uint64_t offset, uint64_t length, bool to_end,
    std::string* buffer,
    const std::function<void(const std::string& current_path, uint64_t size,
                             const std::vector<meta::Change>& pieces)>& fn) {
  if (length == 0 && !to_end) return meta::Status::Ok();
  // Pin the inode with one lookup per path component (as the kernel would),
  // so that its range lock outlives what follows.
  Ino ino = kRootIno;
  std::vector<Ino> pinned;
  auto unpin = [&] {
    for (Ino i : pinned) Forget(i, 1);
  };
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    std::string component = path.substr(start, slash - start);
    auto entry = Lookup(ino, component.c_str());
    if (!entry.ok()) {
      unpin();
      // Gone or renamed meanwhile: the log follows names, nothing to send.
      return entry.status().err() == ENOENT ? meta::Status::Ok()
                                            : entry.status();
    }
    pinned.push_back(entry->ino);
    ino = entry->ino;
    if (slash == path.size()) break;
    start = slash + 1;
  }
  Inode& inode = InodeOf(ino);
  if (inode.type != S_IFREG) {
    unpin();
    return meta::Status::Ok();
  }
  meta::Status result;
  {
    // Guarantee 4: no write to this range runs between our read and our
    // queueing of it.
    RangeLock::Guard range =
        inode.range_lock.Lock(offset, to_end ? UINT64_MAX : length);
    auto reopened = file_io::ReopenFd(inode.fd, O_RDONLY | O_CLOEXEC,
                                      "open " + path + " for resync");
    int fd = reopened.ok() ? *reopened : -1;
    if (!reopened.ok()) {
      result = reopened.status();
    } else {
      struct stat st;
      uint64_t size =
          ::fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
      uint64_t end = offset + std::min(length, size - std::min(size, offset));
      struct Piece {
        uint64_t offset;
        uint64_t length;
        bool data;
      };
      std::vector<Piece> pieces;
      uint64_t at = offset;
      while (at < end && result.ok()) {
        off_t data = ::lseek(fd, static_cast<off_t>(at), SEEK_DATA);
        uint64_t data_at = data < 0 ? end : std::min<uint64_t>(data, end);
        if (data_at > at) pieces.push_back({at, data_at - at, false});
        if (data_at >= end) break;
        off_t hole = ::lseek(fd, static_cast<off_t>(data_at), SEEK_HOLE);
        uint64_t hole_at = hole < 0 ? end : std::min<uint64_t>(hole, end);
        pieces.push_back({data_at, hole_at - data_at, true});
        at = hole_at;
      }
      uint64_t data_bytes = 0;
      for (const auto& p : pieces) data_bytes += p.data ? p.length : 0;
      // Grown, never shrunk: a reused buffer is not cleared again.
      if (buffer->size() < data_bytes) buffer->resize(data_bytes);
      uint64_t filled = 0;
      for (const auto& p : pieces) {
        if (!p.data) continue;
        auto read = writer_.Pread(fd, &(*buffer)[filled], p.length, p.offset,
                                  path + " for resync");
        if (!read.ok()) {
          result = read.status();
          break;
        }
        if (*read < p.length) {
          // Shrunk meanwhile? Not possible under the range lock, but be safe.
          std::memset(&(*buffer)[filled + *read], 0, p.length - *read);
        }
        filled += p.length;
      }
      if (writer_.uncached() && data_bytes > 0) {
        // What the resync read (and its Prefetch brought in) leaves the
        // store's cache, as a read through the mount does (StoreWriter):
        // the damaged ranges are where the application writes, and large
        // folios there would make its small writes write back whole
        // folios. Dirty pages are written back first (without waiting) and
        // stay until they are clean.
        (void)::posix_fadvise(fd, static_cast<off_t>(offset),
                              static_cast<off_t>(end - offset),
                              POSIX_FADV_DONTNEED);
      }
      ::close(fd);
      if (result.ok()) {
        std::shared_lock<std::shared_mutex> ns(ns_mu_);
        std::string current;
        if (PathOf(inode, &current)) {
          uint64_t consumed = 0;
          std::vector<meta::Change> out;
          out.reserve(pieces.size());
          for (const auto& p : pieces) {
            meta::Change c;
            c.path = current;
            c.offset = p.offset;
            c.length = p.length;
            if (p.data) {
              c.kind = meta::ChangeKind::kWrite;
              c.data = buffer->data() + consumed;
              consumed += p.length;
            } else {
              c.kind = meta::ChangeKind::kPunchHole;
              c.flags = meta::kKeepSize;
            }
            out.push_back(std::move(c));
          }
          fn(current, size, out);
        }
      }
    }
  }
  unpin();
  return result;
}

}  // namespace mirrorfs::fs
