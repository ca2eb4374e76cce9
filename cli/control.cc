#include "cli/control.h"

#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "meta/log.h"

namespace mirrorfs::cli {
namespace {

constexpr size_t kMaxRequestBytes = 64 * 1024;

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Reads until `done(buffer)` or EOF/timeout. Returns false on error/timeout.
bool ReadUntil(int fd, std::string* buffer, int timeout_ms,
               const std::function<bool(const std::string&)>& done) {
  char chunk[4096];
  while (!done(*buffer)) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r <= 0) return false;
    ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return done(*buffer);
    buffer->append(chunk, static_cast<size_t>(n));
    if (buffer->size() > (256u << 20)) return false;
  }
  return true;
}

bool FillAddress(const std::string& path, struct sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
  return true;
}

}  // namespace

// True if the user `uid` (primary group `gid`) belongs to `group`.
bool InGroup(uid_t uid, gid_t gid, gid_t group) {
  if (group == static_cast<gid_t>(-1)) return false;
  if (gid == group) return true;
  struct passwd pw;
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 ||
      found == nullptr) {
    return false;
  }
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
      return false;
    }
  }
  for (int i = 0; i < n; ++i) {
    if (groups[static_cast<size_t>(i)] == group) return true;
  }
  return false;
}

std::string ControlSocketPath(const std::string& store) {
  return store + "/.mirrorfs/control.sock";
}

ControlServer::~ControlServer() { Stop(); }

meta::Status ControlServer::Start(const std::string& path, gid_t gid,
                                  ControlHandler handler) {
  path_ = path;
  gid_ = gid;
  handler_ = std::move(handler);
  struct sockaddr_un addr;
  if (!FillAddress(path, &addr)) {
    return meta::Status::Error(ENAMETOOLONG,
                               "control socket path too long: " + path +
                                   " (use a shorter store path)");
  }
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return meta::Status::FromErrno("control socket");
  ::unlink(path.c_str());  // a stale socket of a dead daemon
  mode_t old = ::umask(0177);
  int rc = ::bind(listen_fd_, reinterpret_cast<struct sockaddr*>(&addr),
                  sizeof(addr));
  ::umask(old);
  bool grouped = gid != static_cast<gid_t>(-1);
  if (rc != 0 || (grouped && ::chown(path.c_str(), 0, gid) != 0) ||
      ::chmod(path.c_str(), grouped ? 0660 : 0600) != 0 ||
      ::listen(listen_fd_, 16) != 0) {
    auto s = meta::Status::FromErrno("control socket " + path);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return s;
  }
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  thread_ = std::thread([this] { Run(); });
  return meta::Status::Ok();
}

void ControlServer::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  ssize_t ignored = ::write(stop_fd_, &one, sizeof(one));
  (void)ignored;
  thread_.join();
  std::vector<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>>
      workers;
  {
    std::lock_guard<std::mutex> lock(workers_mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) {
    // A request that is still running (the daemon stopping from within a
    // request) finishes on its own.
    if (w.first.get_id() == std::this_thread::get_id()) {
      w.first.detach();
    } else {
      w.first.join();
    }
  }
  ::close(listen_fd_);
  ::close(stop_fd_);
  listen_fd_ = stop_fd_ = -1;
  ::unlink(path_.c_str());
}

void ControlServer::Run() {
  while (true) {
    struct pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      meta::LogError(std::string("control socket: poll: ") +
                     std::strerror(errno));
      return;
    }
    if (p[1].revents) return;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    // Each request on its own thread: a long one (verify, a slow stop) must
    // not keep `status` waiting.
    std::lock_guard<std::mutex> lock(workers_mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->load()) {
        it->first.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers_.emplace_back(std::thread([this, fd, done] {
                            Serve(fd);
                            *done = true;
                          }),
                          done);
  }
}

void ControlServer::Serve(int fd) {
  {
    // Only root (uid 0) may steer the node, whatever the socket mode says.
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        !(cred.uid == 0 || InGroup(cred.uid, cred.gid, gid_))) {
      ::close(fd);
      return;
    }
    std::string request;
    bool complete = ReadUntil(fd, &request, 5000, [](const std::string& b) {
      return b.size() > kMaxRequestBytes || b == "\n" ||
             b.find("\n\n") != std::string::npos;
    });
    ControlReply reply;
    if (!complete || request.size() > kMaxRequestBytes) {
      reply = {2, "", "malformed control request\n"};
    } else {
      std::vector<std::string> words;
      size_t start = 0;
      while (start < request.size()) {
        size_t nl = request.find('\n', start);
        if (nl == std::string::npos || nl == start) break;
        words.push_back(request.substr(start, nl - start));
        start = nl + 1;
      }
      try {
        reply = handler_(words);
      } catch (const std::exception& e) {
        reply = {1, "", std::string("internal error: ") + e.what() + "\n"};
      }
    }
    std::string head = "exit=" + std::to_string(reply.exit_code) +
                       " out=" + std::to_string(reply.out.size()) +
                       " err=" + std::to_string(reply.err.size()) + "\n";
    if (WriteAll(fd, head.data(), head.size())) {
      if (WriteAll(fd, reply.out.data(), reply.out.size())) {
        (void)WriteAll(fd, reply.err.data(), reply.err.size());
      }
    }
    ::close(fd);
  }
}

meta::Result<ControlReply> CallDaemon(const std::string& store,
                                      const std::vector<std::string>& words,
                                      int timeout_ms) {
  std::string path = ControlSocketPath(store);
  struct sockaddr_un addr;
  if (!FillAddress(path, &addr)) {
    return meta::Status::Error(ENAMETOOLONG, "store path too long: " + store);
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return meta::Status::FromErrno("socket");
  if (::connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    int err = errno;
    ::close(fd);
    std::string why =
        err == ENOENT ? "no control socket" : std::string(std::strerror(err));
    return meta::Status::Error(ESRCH, "no mirrorfs daemon is running on " +
                                          store + " (" + path + ": " + why +
                                          ")");
  }
  std::string request;
  for (const auto& w : words) {
    if (w.empty() || w.find('\n') != std::string::npos) {
      ::close(fd);
      return meta::Status::Error(
          EINVAL, "invalid argument for the daemon: '" + w + "'");
    }
    request += w + "\n";
  }
  request += "\n";
  if (!WriteAll(fd, request.data(), request.size())) {
    auto s = meta::Status::FromErrno("sending to the daemon of " + store);
    ::close(fd);
    return s;
  }
  std::string buffer;
  size_t out_size = 0, err_size = 0;
  size_t header_end = std::string::npos;
  bool ok = ReadUntil(fd, &buffer, timeout_ms, [&](const std::string& b) {
    if (header_end == std::string::npos) {
      header_end = b.find('\n');
      if (header_end == std::string::npos) return false;
      int code;
      if (std::sscanf(b.c_str(), "exit=%d out=%zu err=%zu", &code, &out_size,
                      &err_size) != 3) {
        return true;  // malformed; checked below
      }
    }
    return b.size() >= header_end + 1 + out_size + err_size;
  });
  ::close(fd);
  ControlReply reply;
  if (!ok || header_end == std::string::npos ||
      std::sscanf(buffer.c_str(), "exit=%d", &reply.exit_code) != 1 ||
      buffer.size() < header_end + 1 + out_size + err_size) {
    return meta::Status::Error(ETIMEDOUT, "the daemon of " + store +
                                              " did not answer (see " + store +
                                              "/.mirrorfs/log)");
  }
  reply.out = buffer.substr(header_end + 1, out_size);
  reply.err = buffer.substr(header_end + 1 + out_size, err_size);
  return reply;
}

}  // namespace mirrorfs::cli
