// The control socket: how the `mirrorfs` command talks to a running daemon.
// It is a Unix stream socket at STORE/.mirrorfs/control.sock, mode 0600 and
// owned by root, so only root can steer a node.
//
// Protocol (one request per connection):
//   request:  the command's words, one per line, then an empty line
//             e.g. "status\n--json\n\n"
//   response: "exit=<code> out=<n> err=<m>\n", then n bytes for the
//             command's stdout and m bytes for its stderr.
// The CLI prints what it receives and exits with <code>, so a verb behaves
// the same whether the daemon or the command does the work.
//
// Thread-safety: ControlServer runs one thread that serves connections one
// at a time; the handler runs on it. ControlClient is a value.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meta/status.h"

namespace mirrorfs::cli {

struct ControlReply {
  int exit_code = 0;
  std::string out;
  std::string err;
};

using ControlHandler =
    std::function<ControlReply(const std::vector<std::string>& words)>;

std::string ControlSocketPath(const std::string& store);

class ControlServer {
 public:
  ControlServer() = default;
  ~ControlServer();  // Stop()s
  // Binds `path` (replacing a stale socket file) and starts serving. Only
  // root may connect, and members of `gid` unless it is (gid_t)-1 (the
  // socket is then mode 0660, group `gid`; else 0600). Returns an error
  // naming the path if it cannot.
  meta::Status Start(const std::string& path, gid_t gid,
                     ControlHandler handler);
  // Stops serving and removes the socket file.
  void Stop();

 private:
  void Run();
  void Serve(int fd);
  std::string path_;
  std::mutex workers_mu_;  // guards workers_
  std::vector<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>>
      workers_;
  ControlHandler handler_;
  int listen_fd_ = -1;
  gid_t gid_ = static_cast<gid_t>(-1);
  int stop_fd_ = -1;  // eventfd that wakes the server thread
  std::thread thread_;
};

// Sends `words` to the daemon of `store` and returns its reply, or an error
// (exit 1 material) when no daemon answers: the message names the store and
// the socket.
meta::Result<ControlReply> CallDaemon(const std::string& store,
                                      const std::vector<std::string>& words,
                                      int timeout_ms = 30000);

}  // namespace mirrorfs::cli
