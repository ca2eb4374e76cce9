#define FUSE_USE_VERSION 314

#include "fs/fuse/fuse_adapter.h"

#include <cxxabi.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "meta/log.h"

namespace mirrorfs::fs {

namespace {

constexpr double kTimeout = 1.0;  // attribute and entry cache, seconds
constexpr unsigned kMaxWrite = 1u << 20;
constexpr int kMaxIdleThreads = 10;

// The one place where a Status becomes the errno the application sees.
int ErrnoOf(const meta::Status& status) {
  if (status.ok()) return 0;
  return status.err() > 0 ? status.err() : EIO;
}

FuseMount& MountOf(fuse_req_t req) {
  return *static_cast<FuseMount*>(fuse_req_userdata(req));
}
Volume& VolumeOf(fuse_req_t req) { return *MountOf(req).volume(); }

Caller CallerOf(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return Caller{static_cast<uint32_t>(ctx->uid),
                static_cast<uint32_t>(ctx->gid)};
}

// Runs an adapter body; an escaping exception becomes an EIO reply (or no
// reply for forget). Thread cancellation (libfuse cancels idle workers) must
// pass through.
template <typename Body>
void Guarded(fuse_req_t req, Body&& body) {
  try {
    body();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    fuse_reply_err(req, EIO);
  }
}
template <typename Body>
void GuardedNoReply(fuse_req_t req, Body&& body) {
  try {
    body();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    fuse_reply_none(req);
  }
}

void ReplyErr(fuse_req_t req, const meta::Status& s) {
  fuse_reply_err(req, ErrnoOf(s));
}

fuse_entry_param EntryParam(const Entry& entry) {
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = entry.ino;
  e.attr = entry.attr;
  e.attr_timeout = kTimeout;
  e.entry_timeout = kTimeout;
  return e;
}

void ReplyEntry(fuse_req_t req, const meta::Result<Entry>& r) {
  if (!r.ok()) return ReplyErr(req, r.status());
  fuse_entry_param e = EntryParam(*r);
  fuse_reply_entry(req, &e);
}

// A per-thread buffer for reads and writes (up to max_write bytes).
std::vector<char>& ScratchBuffer(size_t size) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

// ---- the adapters ----------------------------------------------------------

void OpInit(void* userdata, fuse_conn_info* conn) {
  auto* mount = static_cast<FuseMount*>(userdata);
  if (mount->writeback_cache() && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
    conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  } else {
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  }
  // Let the kernel clear set-user-ID bits with a setattr we mirror, rather
  // than expecting us to do it on write.
  conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
  // Files keep their cache across opens (CacheModeOf); a size or mtime
  // that changed beneath the mount still drops it.
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) {
    conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  }
  conn->max_write = kMaxWrite;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guarded(req, [&] { ReplyEntry(req, VolumeOf(req).Lookup(parent, name)); });
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  GuardedNoReply(req, [&] {
    VolumeOf(req).Forget(ino, nlookup);
    fuse_reply_none(req);
  });
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  GuardedNoReply(req, [&] {
    for (size_t i = 0; i < count; i++) {
      VolumeOf(req).Forget(forgets[i].ino, forgets[i].nlookup);
    }
    fuse_reply_none(req);
  });
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).GetAttr(ino);
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_attr(req, &*r, kTimeout);
  });
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
               fuse_file_info* fi) {
  Guarded(req, [&] {
    AttrChange change;
    if (to_set & FUSE_SET_ATTR_MODE) change.valid |= AttrChange::kMode;
    if (to_set & FUSE_SET_ATTR_UID) change.valid |= AttrChange::kUid;
    if (to_set & FUSE_SET_ATTR_GID) change.valid |= AttrChange::kGid;
    if (to_set & FUSE_SET_ATTR_SIZE) change.valid |= AttrChange::kSize;
    if (to_set & FUSE_SET_ATTR_ATIME) change.valid |= AttrChange::kAtime;
    if (to_set & FUSE_SET_ATTR_MTIME) change.valid |= AttrChange::kMtime;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
      change.valid |= AttrChange::kAtime | AttrChange::kAtimeNow;
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      change.valid |= AttrChange::kMtime | AttrChange::kMtimeNow;
    }
    change.mode = attr->st_mode;
    change.uid = attr->st_uid;
    change.gid = attr->st_gid;
    change.size = static_cast<uint64_t>(attr->st_size);
    change.atime = attr->st_atim;
    change.mtime = attr->st_mtim;
    auto r = VolumeOf(req).SetAttr(ino, change, fi != nullptr ? fi->fh : 0);
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_attr(req, &*r, kTimeout);
  });
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).Readlink(ino);
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_readlink(req, r->c_str());
  });
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
             dev_t) {
  Guarded(req, [&] {
    ReplyEntry(req, VolumeOf(req).Mknod(parent, name, mode, CallerOf(req)));
  });
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Guarded(req, [&] {
    ReplyEntry(req, VolumeOf(req).Mkdir(parent, name, mode, CallerOf(req)));
  });
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guarded(req, [&] { ReplyErr(req, VolumeOf(req).Unlink(parent, name)); });
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guarded(req, [&] { ReplyErr(req, VolumeOf(req).Rmdir(parent, name)); });
}

void OpSymlink(fuse_req_t req, const char* link, fuse_ino_t parent,
               const char* name) {
  Guarded(req, [&] {
    ReplyEntry(req, VolumeOf(req).Symlink(link, parent, name, CallerOf(req)));
  });
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name,
              fuse_ino_t newparent, const char* newname, unsigned int flags) {
  Guarded(req, [&] {
    ReplyErr(req,
             VolumeOf(req).Rename(parent, name, newparent, newname, flags));
  });
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
            const char* newname) {
  Guarded(req,
          [&] { ReplyErr(req, VolumeOf(req).Link(ino, newparent, newname)); });
}

int OpenFlagsFor(fuse_req_t req, int flags) {
  // With the writeback cache the kernel reads pages of write-only files too.
  if (MountOf(req).writeback_cache() && (flags & O_ACCMODE) == O_WRONLY) {
    flags = (flags & ~O_ACCMODE) | O_RDWR;
  }
  return flags;
}

// O_DIRECT bypasses the mount's cache. Otherwise the cache is kept across
// opens: the mount is the only writer of a primary's store, and the store
// is read uncached (meta::StoreWriter), so this cache is the one that
// serves re-reads. (A file changed beneath the mount anyway is caught by
// the kernel's size and mtime check, FUSE_CAP_AUTO_INVAL_DATA.)
void CacheModeOf(fuse_file_info* fi) {
  fi->direct_io = (fi->flags & O_DIRECT) ? 1 : 0;
  fi->keep_cache = fi->direct_io ? 0 : 1;
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).Open(ino, OpenFlagsFor(req, fi->flags));
    if (!r.ok()) return ReplyErr(req, r.status());
    fi->fh = *r;
    CacheModeOf(fi);
    if (fuse_reply_open(req, fi) != 0) VolumeOf(req).Release(*r);
  });
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).Create(parent, name, mode,
                                  OpenFlagsFor(req, fi->flags), CallerOf(req));
    if (!r.ok()) return ReplyErr(req, r.status());
    fi->fh = r->second;
    CacheModeOf(fi);
    fuse_entry_param e = EntryParam(r->first);
    if (fuse_reply_create(req, &e, fi) != 0) {
      // The kernel will not forget or release what it never got.
      VolumeOf(req).Release(r->second);
      VolumeOf(req).Forget(r->first.ino, 1);
    }
  });
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off,
            fuse_file_info* fi) {
  Guarded(req, [&] {
    std::vector<char>& buf = ScratchBuffer(size);
    auto r = VolumeOf(req).Read(fi->fh, buf.data(), size,
                                static_cast<uint64_t>(off));
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_buf(req, buf.data(), *r);
  });
}

void OpWriteBuf(fuse_req_t req, fuse_ino_t, fuse_bufvec* in, off_t off,
                fuse_file_info* fi) {
  Guarded(req, [&] {
    size_t size = fuse_buf_size(in);
    const char* data;
    if (in->count == 1 && !(in->buf[0].flags & FUSE_BUF_IS_FD)) {
      data = static_cast<const char*>(in->buf[0].mem);  // no copy
    } else {
      std::vector<char>& buf = ScratchBuffer(size);
      fuse_bufvec out = FUSE_BUFVEC_INIT(size);
      out.buf[0].mem = buf.data();
      ssize_t copied =
          fuse_buf_copy(&out, in, static_cast<fuse_buf_copy_flags>(0));
      if (copied < 0) {
        return (void)fuse_reply_err(req, static_cast<int>(-copied));
      }
      size = static_cast<size_t>(copied);
      data = buf.data();
    }
    auto r =
        VolumeOf(req).Write(fi->fh, data, size, static_cast<uint64_t>(off));
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_write(req, *r);
  });
}

void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Guarded(req, [&] { ReplyErr(req, VolumeOf(req).Flush(fi->fh)); });
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Guarded(req, [&] {
    VolumeOf(req).Release(fi->fh);
    fuse_reply_err(req, 0);
  });
}

void OpFsync(fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
  Guarded(req,
          [&] { ReplyErr(req, VolumeOf(req).Fsync(fi->fh, datasync != 0)); });
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).OpenDir(ino);
    if (!r.ok()) return ReplyErr(req, r.status());
    fi->fh = *r;
    if (fuse_reply_open(req, fi) != 0) VolumeOf(req).ReleaseDir(*r);
  });
}

void DoReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
               fuse_file_info* fi, bool plus) {
  Guarded(req, [&] {
    std::vector<char> buf(size);
    size_t used = 0;
    auto fill = [&](const DirEntry& de) {
      char* p = buf.data() + used;
      size_t rem = size - used;
      size_t n;
      if (plus) {
        fuse_entry_param e = EntryParam(de.entry);
        n = fuse_add_direntry_plus(req, p, rem, de.name, &e, de.next_offset);
      } else {
        n = fuse_add_direntry(req, p, rem, de.name, &de.entry.attr,
                              de.next_offset);
      }
      if (n > rem) return false;
      used += n;
      return true;
    };
    meta::Status s = VolumeOf(req).ReadDir(ino, fi->fh, off, plus, fill);
    if (!s.ok()) return ReplyErr(req, s);
    fuse_reply_buf(req, buf.data(), used);
  });
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
               fuse_file_info* fi) {
  DoReadDir(req, ino, size, off, fi, false);
}

void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                   fuse_file_info* fi) {
  DoReadDir(req, ino, size, off, fi, true);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Guarded(req, [&] {
    VolumeOf(req).ReleaseDir(fi->fh);
    fuse_reply_err(req, 0);
  });
}

void OpFsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  // Namespace changes are forwarded to the peers as they happen; the local
  // directory is not synced separately (known gap).
  fuse_reply_err(req, 0);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).StatFs();
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_statfs(req, &*r);
  });
}

void OpNoXattr(fuse_req_t req) {
  // ENOSYS: the kernel stops forwarding xattr calls and answers EOPNOTSUPP.
  fuse_reply_err(req, ENOSYS);
}
void OpSetxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t,
                int) {
  OpNoXattr(req);
}
void OpGetxattr(fuse_req_t req, fuse_ino_t, const char*, size_t) {
  OpNoXattr(req);
}
void OpListxattr(fuse_req_t req, fuse_ino_t, size_t) { OpNoXattr(req); }
void OpRemovexattr(fuse_req_t req, fuse_ino_t, const char*) { OpNoXattr(req); }

void OpFallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset,
                 off_t length, fuse_file_info* fi) {
  Guarded(req, [&] {
    ReplyErr(req, VolumeOf(req).Fallocate(fi->fh, mode,
                                          static_cast<uint64_t>(offset),
                                          static_cast<uint64_t>(length)));
  });
}

void OpLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence,
             fuse_file_info* fi) {
  Guarded(req, [&] {
    auto r = VolumeOf(req).Lseek(fi->fh, static_cast<uint64_t>(off), whence);
    if (!r.ok()) return ReplyErr(req, r.status());
    fuse_reply_lseek(req, static_cast<off_t>(*r));
  });
}

void OpCopyFileRange(fuse_req_t req, fuse_ino_t, off_t, fuse_file_info*,
                     fuse_ino_t, off_t, fuse_file_info*, size_t, int) {
  // The kernel falls back to read + write, which the volume mirrors.
  fuse_reply_err(req, ENOSYS);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof(ops));
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.readlink = OpReadlink;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.symlink = OpSymlink;
  ops.rename = OpRename;
  ops.link = OpLink;
  ops.open = OpOpen;
  ops.create = OpCreate;
  ops.read = OpRead;
  ops.write_buf = OpWriteBuf;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.releasedir = OpReleasedir;
  ops.fsyncdir = OpFsyncdir;
  ops.statfs = OpStatfs;
  ops.setxattr = OpSetxattr;
  ops.getxattr = OpGetxattr;
  ops.listxattr = OpListxattr;
  ops.removexattr = OpRemovexattr;
  ops.fallocate = OpFallocate;
  ops.lseek = OpLseek;
  ops.copy_file_range = OpCopyFileRange;
  return ops;
}

// libfuse reports through fuse_log(); its messages go to our log, and the
// errors are kept for the Status of the call that caused them (a daemon's
// stderr is /dev/null).
std::mutex libfuse_errors_mu;
std::string libfuse_errors;

void LogLibfuse(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string text = buf;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (level <= FUSE_LOG_ERR) {
    meta::LogError("libfuse: " + text);
    std::lock_guard<std::mutex> lock(libfuse_errors_mu);
    // Bounded: errors while serving are only logged (Mount() takes these).
    if (libfuse_errors.size() < 4096) {
      libfuse_errors += (libfuse_errors.empty() ? "" : "; ") + text;
    }
  } else if (level <= FUSE_LOG_NOTICE) {
    meta::LogInfo("libfuse: " + text);
  }
}

std::string TakeLibfuseErrors() {
  std::lock_guard<std::mutex> lock(libfuse_errors_mu);
  std::string out = libfuse_errors.empty() ? "libfuse gave no reason"
                                           : std::move(libfuse_errors);
  libfuse_errors.clear();
  return out;
}

// A value for a libfuse -o list: its commas and backslashes escaped.
std::string EscapeOption(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Undoes the octal escapes of /proc/self/mountinfo ("\040" for a space).
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 +
                                      (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool IsMountPoint(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mnt;
    if (fields >> id >> parent >> dev >> root >> mnt) {
      if (Unescape(mnt) == path) return true;
    }
  }
  return false;
}

// Splits "a,b" option lists; drops empties.
std::vector<std::string> SplitOptions(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  for (const std::string& item : in) {
    std::string cur;
    for (char c : item + ",") {
      if (c == ',') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else {
        cur.push_back(c);
      }
    }
  }
  return out;
}

}  // namespace

FuseMount::FuseMount(Volume* volume, std::string mountpoint,
                     bool writeback_cache, unsigned max_threads)
    : volume_(volume),
      mountpoint_(std::move(mountpoint)),
      writeback_cache_(writeback_cache),
      max_threads_(max_threads == 0 ? 1 : max_threads) {}

meta::Result<std::unique_ptr<FuseMount>> FuseMount::Mount(
    Volume* volume, const MountOptions& options) {
  const std::string& mp = options.mountpoint;
  struct stat st;
  if (stat(mp.c_str(), &st) != 0) {
    int err = errno;
    return meta::Status::Error(err,
                               "mountpoint " + mp + ": " + std::strerror(err) +
                                   (err == ENOENT ? "; create it first" : ""));
  }
  if (!S_ISDIR(st.st_mode)) {
    return meta::Status::Error(ENOTDIR,
                               "mountpoint " + mp + " is not a directory");
  }
  char resolved[PATH_MAX];
  if (realpath(mp.c_str(), resolved) == nullptr) {
    int err = errno;
    return meta::Status::Error(err,
                               "mountpoint " + mp + ": " + std::strerror(err));
  }
  if (IsMountPoint(resolved)) {
    return meta::Status::Error(
        EBUSY, "mountpoint " + mp +
                   " is busy: already a mount; unmount it first (fusermount3 "
                   "-u " +
                   mp + ")");
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    int err = errno;
    return meta::Status::Error(ENODEV,
                               std::string("/dev/fuse: ") + std::strerror(err) +
                                   "; load the fuse module (modprobe fuse)");
  }

  bool writeback = false;
  bool allow_other = false;
  std::string opts =
      "default_permissions,fsname=" + EscapeOption(options.source) +
      ",subtype=mirrorfs";
  for (const std::string& o : SplitOptions(options.fuse_options)) {
    if (o == "writeback_cache") {
      writeback = true;
      continue;
    }
    // Access-time policies that mount(8) passes from fstab: the kernel
    // keeps no atime for a FUSE mount (the daemon reports the store's), and
    // libfuse 3.14 refuses most of them by name.
    if (o == "atime" || o == "relatime" || o == "norelatime" ||
        o == "strictatime" || o == "nostrictatime" || o == "lazytime" ||
        o == "nolazytime" || o == "diratime" || o == "nodiratime") {
      continue;
    }
    if (o == "allow_other") allow_other = true;
    opts += "," + o;
  }
  if (!allow_other && geteuid() == 0) opts += ",allow_other";

  static std::once_flag log_once;
  std::call_once(log_once, [] { fuse_set_log_func(LogLibfuse); });
  TakeLibfuseErrors();
  std::unique_ptr<FuseMount> mount(
      new FuseMount(volume, resolved, writeback, options.max_threads));
  std::vector<std::string> argv_storage = {"mirrorfs", "-o", opts};
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fuse_lowlevel_ops ops = MakeOps();
  mount->session_ = fuse_session_new(&args, &ops, sizeof(ops), mount.get());
  fuse_opt_free_args(&args);
  if (mount->session_ == nullptr) {
    return meta::Status::Error(
        EINVAL,
        "FUSE options '" + opts + "' were refused: " + TakeLibfuseErrors());
  }
  if (fuse_session_mount(mount->session_, resolved) != 0) {
    fuse_session_destroy(mount->session_);
    mount->session_ = nullptr;
    return meta::Status::Error(
        EIO, "mounting " + mp + " failed: " + TakeLibfuseErrors());
  }
  TakeLibfuseErrors();
  return mount;
}

meta::Status FuseMount::Run() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 1);
  fuse_loop_cfg_set_idle_threads(config, kMaxIdleThreads);
  fuse_loop_cfg_set_max_threads(config, max_threads_);
  int rc = fuse_session_loop_mt(session_, config);
  fuse_loop_cfg_destroy(config);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseMountLocked();
  }
  if (rc != 0) {
    int err = rc < 0 ? -rc : EIO;
    return meta::Status::Error(
        err, "serving " + mountpoint_ + " failed: " + std::strerror(err));
  }
  return meta::Status::Ok();
}

void FuseMount::Stop() {
  fuse_session_exit(session_);
  // libfuse detaches the mount (lazily, as root); the kernel ends the
  // connection once no file is open on it, and the loop returns.
  std::lock_guard<std::mutex> lock(mu_);
  ReleaseMountLocked();
}

void FuseMount::ReleaseMountLocked() {
  if (session_released_) return;
  session_released_ = true;
  // Unmounts unless the connection already ended (fusermount3 -u); frees
  // libfuse's copy of the mountpoint either way. Called once only: a second
  // unmount of the path could hit a later mount there.
  fuse_session_unmount(session_);
}

FuseMount::~FuseMount() {
  if (session_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseMountLocked();
  }
  fuse_session_destroy(session_);
}

}  // namespace mirrorfs::fs
