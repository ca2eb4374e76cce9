#include "cli/app.h"

#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include "cli/control.h"
#include "cli/format.h"
#include "cli/node.h"
#include "cli/options.h"
#include "meta/log.h"
#include "sync/curve.h"
#include "sync/replica_server.h"

namespace mirrorfs::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

int Fail(const std::string& message) {
  std::cerr << "mirrorfs: " << message << "\n";
  return kExitFailed;
}

// Absolute, normalized path of an existing directory, or an error message.
bool ExistingDirectory(const std::string& what, const std::string& path,
                       std::string* absolute, std::string* error) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    *error = what + " " + path + " does not exist" +
             (errno == ENOENT ? "" : std::string(": ") + std::strerror(errno));
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    *error = what + " " + path + " is not a directory";
    return false;
  }
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) {
    *error = what + " " + path + ": " + std::strerror(errno);
    return false;
  }
  *absolute = buf;
  return true;
}

// `path` made absolute against the working directory (not resolved: the
// file may be replaced later, e.g. a key rotated by a rename).
std::string AbsolutePath(const std::string& path) {
  char cwd[PATH_MAX];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

// Whether a process could bind `ep` now: false only when a TCP port or an
// ipc:// socket file is known to be taken (another node, another program).
// Hosts that do not resolve here (interface names) are left to ZeroMQ.
bool EndpointFree(const std::string& ep) {
  if (sync::IpcEndpointTaken(ep)) return false;
  if (ep.rfind("tcp://", 0) != 0) return true;
  size_t colon = ep.rfind(':');
  std::string host = ep.substr(6, colon - 6);
  std::string port = ep.substr(colon + 1);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host == "*" ? nullptr : host.c_str(), port.c_str(), &hints,
                    &found) != 0) {
    return true;
  }
  bool free = true;
  for (addrinfo* a = found; a != nullptr && free; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE) {
      free = false;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return free;
}

bool ValidEndpoint(const std::string& ep) {
  // tcp://HOST:PORT (ZeroMQ endpoint); ipc:// for local tests is fine too.
  if (ep.rfind("ipc://", 0) == 0) return ep.size() > 6;
  if (ep.rfind("tcp://", 0) != 0) return false;
  size_t colon = ep.rfind(':');
  if (colon == std::string::npos || colon < 6) return false;
  std::string port = ep.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  for (char c : port)
    if (!isdigit(static_cast<unsigned char>(c))) return false;
  int p = std::atoi(port.c_str());
  return p > 0 && p < 65536 && colon > 6;
}

bool ValidPeerName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

// The daemon's messages, each line marked as this command's.
void PrintDaemonErrors(const std::string& err) {
  std::istringstream lines(err);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::cerr << (line.rfind("mirrorfs", 0) == 0 ? "" : "mirrorfs: ") << line
              << "\n";
  }
  std::cerr << std::flush;
}

// Prints a daemon's reply and returns its exit code.
int Relay(const std::string& store, const std::vector<std::string>& words,
          int timeout_ms = 30000) {
  auto reply = CallDaemon(store, words, timeout_ms);
  if (!reply.ok()) return Fail(reply.status().message());
  std::cout << reply->out << std::flush;
  PrintDaemonErrors(reply->err);
  return reply->exit_code;
}

// Tells systemd (a Type=notify unit runs the node with -f) how the node is:
// the sd_notify(3) datagram, without linking libsystemd for one message.
void NotifySystemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  (void)!::sendto(
      fd, state.data(), state.size(), MSG_NOSIGNAL,
      reinterpret_cast<sockaddr*>(&addr),
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  ::close(fd);
}

// Blocks SIGINT/SIGTERM/SIGHUP in every thread created from now on, and
// turns them into node->RequestStop() on a dedicated thread.
void StopOnSignals(Node* node) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([node, set] {
    while (true) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if (sig == SIGHUP) {
        node->ReloadKeys();
        continue;
      }
      meta::LogInfo(std::string("received ") + strsignal(sig) + "; stopping");
      node->RequestStop();
      return;
    }
  }).detach();
}

// Runs a node. Without -f: forks; the parent returns once the child reports
// ready (0) or failed (1, with the child's message).
int RunNode(const NodeOptions& options) {
  std::string state_dir = options.store + "/.mirrorfs";
  if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Fail("cannot create " + state_dir + ": " + std::strerror(errno));
  }
  // A daemon already on this store answers its control socket.
  if (CallDaemon(options.store, {"status"}, 2000).ok()) {
    return Fail("a mirrorfs daemon is already running on " + options.store +
                " (stop it with: mirrorfs stop " + options.store + ")");
  }
  int ready[2] = {-1, -1};
  if (!options.foreground) {
    if (::pipe2(ready, O_CLOEXEC) != 0) return Fail("pipe failed");
    pid_t pid = ::fork();
    if (pid < 0)
      return Fail(std::string("fork failed: ") + std::strerror(errno));
    if (pid > 0) {
      ::close(ready[1]);
      std::string message;
      char buf[512];
      ssize_t n;
      while ((n = ::read(ready[0], buf, sizeof(buf))) > 0 ||
             (n < 0 && errno == EINTR)) {
        if (n > 0) message.append(buf, static_cast<size_t>(n));
      }
      ::close(ready[0]);
      if (message.rfind("ready", 0) == 0) return kExitOk;
      if (message.empty()) {
        message = "the daemon exited while starting; see " + state_dir + "/log";
      }
      return Fail(message);
    }
    ::close(ready[0]);
    ::setsid();
    // The daemon's second fork makes sure it can never get a terminal back.
    pid = ::fork();
    if (pid < 0) _exit(1);
    if (pid > 0) _exit(0);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      ::dup2(null, STDERR_FILENO);
    }
    if (!meta::LogToFile(state_dir + "/log")) {
      std::string m = "cannot open " + state_dir + "/log";
      (void)!::write(ready[1], m.data(), m.size());
      _exit(1);
    }
    if (::chdir("/") != 0) {
    }
  }
  ::umask(0);  // modes are mirrored exactly; the kernel applies the caller's
  if (std::getenv("MIRRORFS_DEBUG")) meta::SetLogLevel(meta::LogLevel::kDebug);

  int code = kExitOk;
  {
    Node node(options);
    StopOnSignals(&node);
    auto started = node.Start();
    if (!started.ok()) {
      meta::LogError("start failed: " + started.message());
      if (ready[1] >= 0) {
        // The pipe stays open until this process has exited, so the parent
        // returns only when no daemon is left behind.
        (void)!::write(ready[1], started.message().data(),
                       started.message().size());
      } else {
        std::cerr << "mirrorfs: " << started.message() << "\n";
      }
      return kExitFailed;
    }
    if (ready[1] >= 0) {
      (void)!::write(ready[1], "ready", 5);
      ::close(ready[1]);
    } else {
      NotifySystemd("READY=1\nMAINPID=" + std::to_string(::getpid()));
      std::cerr << "mirrorfs: ready\n";
    }
    auto ran = node.Run();
    if (!ran.ok()) {
      meta::LogError(ran.message());
      code = kExitFailed;
    }
  }
  return code;
}

// Starts `mirrorfs mount|serve ...` for `options` as a new process (so the
// daemon's command line names its role and store, as if typed) and returns
// its exit status: it returns once the node is ready or failed.
int StartNodeProcess(const NodeOptions& o) {
  std::vector<std::string> args = {"mirrorfs", o.primary ? "mount" : "serve",
                                   o.store};
  if (o.primary) args.push_back(o.mountpoint);
  if (o.primary && o.async) args.insert(args.end(), {"--mode", "async"});
  if (!o.name.empty()) args.insert(args.end(), {"--name", o.name});
  if (!o.listen.empty()) args.insert(args.end(), {"--listen", o.listen});
  if (!o.key_file.empty()) {
    args.insert(args.end(),
                {"--key", o.key_file, "--authorized-keys", o.authorized_file});
  }
  if (o.insecure) args.push_back("--insecure");
  if (!o.control_group.empty()) {
    args.insert(args.end(), {"--control-group", o.control_group});
  }
  if (o.cached_writes) args.push_back("--cached-writes");
  if (o.busy_poll_us != NodeOptions().busy_poll_us) {
    args.insert(args.end(), {"--busy-poll", std::to_string(o.busy_poll_us)});
  }
  if (o.peer_timeout != NodeOptions().peer_timeout) {
    args.insert(args.end(), {"--peer-timeout",
                             std::to_string(o.peer_timeout.count() / 1000.0)});
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Fail(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    ::execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : kExitFailed;
}

// Waits until the daemon of `store` (pid) is gone, polling with a deadline.
bool WaitGone(pid_t pid, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
    // A zombie has stopped too (its parent has not reaped it yet).
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (std::getline(stat, line)) {
      size_t paren = line.rfind(')');
      if (paren != std::string::npos && paren + 2 < line.size() &&
          line[paren + 2] == 'Z') {
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// "64M" -> 67108864; nullopt if malformed.
std::optional<uint64_t> ParseBytes(const std::string& text) {
  if (text.empty()) return std::nullopt;
  size_t used = 0;
  unsigned long long n;
  try {
    n = std::stoull(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string suffix = text.substr(used);
  uint64_t scale = 1;
  if (suffix == "K" || suffix == "k")
    scale = 1ull << 10;
  else if (suffix == "M" || suffix == "m")
    scale = 1ull << 20;
  else if (suffix == "G" || suffix == "g")
    scale = 1ull << 30;
  else if (!suffix.empty())
    return std::nullopt;
  return n * scale;
}

// Polls the daemon until every peer (or `peer`) is in sync. A progress bar
// on a terminal, a plain line every 5 s otherwise. Exit 0 in sync, 3 on
// timeout, 1 if the daemon goes away.
int WaitInSync(const std::string& store, const std::string& peer,
               double timeout_seconds) {
  using Clock = std::chrono::steady_clock;
  const bool tty = ::isatty(STDOUT_FILENO);
  auto start = Clock::now();
  auto last_line = start - std::chrono::seconds(10);
  std::string last_text;
  auto split_since = Clock::time_point::max();  // max: none seen
  while (true) {
    // The daemon answers once in sync, or after --wait-ms.
    std::vector<std::string> words = {"progress", "--wait-ms",
                                      tty ? "250" : "100"};
    if (!peer.empty()) {
      words.push_back("--peer");
      words.push_back(peer);
    }
    auto asked = Clock::now();
    auto reply = CallDaemon(store, words);
    if (!reply.ok()) return Fail(reply.status().message());
    bool answered_at_once =
        Clock::now() - asked < std::chrono::milliseconds(50);
    if (reply->exit_code != 0) {
      PrintDaemonErrors(reply->err);
      return reply->exit_code;
    }
    bool all = true;
    uint64_t total = 0, done = 0, rate = 0, missing = 0;
    std::string states, split;
    std::istringstream lines(reply->out);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream f(line);
      std::string name, state;
      int in_sync = 0;
      uint64_t t = 0, d = 0, r = 0, m = 0;
      f >> name >> state >> in_sync >> t >> d >> r >> m;
      all = all && in_sync == 1;
      if (state == "split-brain") split += (split.empty() ? "" : ", ") + name;
      total += t;
      done += d;
      rate += r;
      missing += m;
      if (!in_sync) states += (states.empty() ? "" : ", ") + name + " " + state;
    }
    if (all) {
      if (tty) std::cout << "\r\033[K";
      std::cout << "in sync\n" << std::flush;
      return kExitOk;
    }
    // A split brain the retry (the sync request) did not end within a few
    // seconds stands: waiting longer cannot end it.
    if (split.empty()) {
      split_since = Clock::time_point::max();
    } else if (split_since == Clock::time_point::max()) {
      split_since = Clock::now();
    }
    if (split_since != Clock::time_point::max() &&
        Clock::now() - split_since > std::chrono::seconds(3)) {
      if (tty) std::cout << "\n";
      return Fail("split brain with " + split +
                  ": no resync until it is resolved (mirrorfs resolve, on "
                  "each side; see mirrorfs(1))");
    }
    double elapsed =
        std::chrono::duration<double>(Clock::now() - start).count();
    if (timeout_seconds > 0 && elapsed >= timeout_seconds) {
      if (tty) std::cout << "\n";
      std::cerr << "mirrorfs: not in sync after " << timeout_seconds << " s ("
                << states << ")\n";
      return 3;
    }
    char text[256];
    double fraction =
        total > 0 ? std::min(1.0, double(done) / double(total)) : 0;
    // No estimate until the resync has moved and the estimate means
    // something (the first moments' average rate can be a few bytes/s).
    std::string eta = "?";
    if (rate > 0 && done > 0 && total > done &&
        (total - done) / rate < 10 * 24 * 3600) {
      eta = std::to_string((total - done) / rate + 1) + " s";
    }
    std::snprintf(text, sizeof(text), "%s / %s  %s/s  left %s  (%s; %s missed)",
                  HumanBytes(done).c_str(), HumanBytes(total).c_str(),
                  HumanBytes(rate).c_str(), eta.c_str(), states.c_str(),
                  HumanBytes(missing).c_str());
    if (tty) {
      int width = 30;
      int filled = static_cast<int>(fraction * width);
      std::cout << "\r\033[K[" << std::string(filled, '#')
                << std::string(width - filled, '.') << "] " << text
                << std::flush;
    } else if (Clock::now() - last_line >= std::chrono::seconds(5) ||
               last_text.empty()) {
      std::cout << text << "\n" << std::flush;
      last_line = Clock::now();
    }
    last_text = text;
    if (answered_at_once) {
      // Not in sync, yet answered at once: a daemon without --wait-ms.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

}  // namespace

int Main(int argc, char** argv) {
  // Frames of up to 1 MiB are allocated and freed all the time (writes,
  // resync chunks, what ZeroMQ receives). By default glibc serves them with
  // mmap or trims them back to the kernel, so every frame costs hundreds
  // of page faults; a fixed threshold keeps them in the heap, which may
  // keep up to 32 MiB of freed memory per arena for reuse.
  ::mallopt(M_MMAP_THRESHOLD, 4 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 32 << 20);
  CLI::App app{
      "mirrorfs: keeps a directory of image files identical on two or more "
      "machines, synchronously, behind a FUSE mount."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.set_version_flag("--version", "mirrorfs " MIRRORFS_VERSION,
                       "Print the version and exit");

  NodeOptions node;
  std::vector<std::string> peer_args;
  std::string mode = "sync";
  std::vector<std::string> fuse_opts;
  double peer_timeout = 2.0;

  auto* mount = app.add_subcommand(
      "mount", "Serve STORE as primary at MOUNTPOINT, mirroring to peers");
  mount->add_option("STORE", node.store, "The store directory")->required();
  mount->add_option("MOUNTPOINT", node.mountpoint, "Where to mount it")
      ->required();
  mount->add_option("--name", node.name, "This node's name");
  mount->add_option("--listen", node.listen,
                    "This node's endpoint, e.g. tcp://10.0.0.1:7790");
  mount->add_option("--peer", peer_args,
                    "A peer NAME=EP (repeatable; remembered in the store)");
  mount->add_option("--mode", mode, "sync (default) or async")
      ->check(CLI::IsMember({"sync", "async"}));
  mount->add_flag("-f,--foreground", node.foreground,
                  "Stay in the foreground and log to stderr");
  mount->add_option("-o", fuse_opts, "FUSE mount options (comma separated)");
  std::string intent_extent, intent_budget;
  mount->add_option("--intent-extent", intent_extent,
                    "Write-intent region size (default 4M; K, M, G suffixes)");
  mount->add_option("--intent-budget", intent_budget,
                    "Most bytes of regions in flight, the ceiling of what a "
                    "crash re-sends (default 1G)");
  bool no_intent_journal = false;
#ifdef MIRRORFS_TEST_SEAMS
  // Test builds only: the benchmark's baseline without the journal.
  mount->add_flag("--test-no-intent-journal", no_intent_journal)->group("");
#endif
  std::string resync_rate;
  mount->add_option("--resync-rate", resync_rate,
                    "Resync bandwidth limit, bytes per second (K, M, G "
                    "suffixes; default unlimited)");
  auto add_security = [](CLI::App* cmd, NodeOptions* o) {
    auto* key = cmd->add_option("--key", o->key_file,
                                "This node's CURVE secret key file (mirrorfs "
                                "keygen); peer links are then authenticated "
                                "and encrypted");
    auto* auth = cmd->add_option("--authorized-keys", o->authorized_file,
                                 "Peers allowed in: one 'NAME PUBLIC-KEY' "
                                 "per line (re-read on SIGHUP)");
    key->needs(auth);
    auth->needs(key);
    cmd->add_flag("--insecure", o->insecure,
                  "Allow listening beyond loopback without keys");
    cmd->add_option("--control-group", o->control_group,
                    "Group allowed on the control socket besides root");
    cmd->add_flag("--cached-writes", o->cached_writes,
                  "Keep written and read data in the store's page cache "
                  "too (by default large writes of whole pages go "
                  "uncached, and large reads through the mount leave "
                  "nothing there)");
    cmd->add_option("--busy-poll", o->busy_poll_us,
                    "Microseconds a thread waiting on the peer link spins "
                    "before it sleeps, while answers come that fast: "
                    "faster small writes for CPU time (default 200; 0 "
                    "never spins)")
        ->check(CLI::Range(0, 10000));
  };
  add_security(mount, &node);
  mount
      ->add_option("--peer-timeout", peer_timeout,
                   "Seconds a write waits for a silent peer before it is "
                   "dropped (default 2)")
      ->check(CLI::Range(0.1, 3600.0));

  NodeOptions serve_node;
  serve_node.primary = false;
  double serve_timeout = 2.0;
  auto* serve =
      app.add_subcommand("serve", "Serve STORE as secondary at --listen EP");
  serve->add_option("STORE", serve_node.store, "The store directory")
      ->required();
  serve
      ->add_option("--listen", serve_node.listen,
                   "Endpoint to receive changes on, e.g. tcp://0.0.0.0:7790")
      ->required();
  serve->add_option("--name", serve_node.name, "This node's name");
  serve->add_flag("-f,--foreground", serve_node.foreground,
                  "Stay in the foreground and log to stderr");
#ifdef MIRRORFS_TEST_SEAMS
  // Test builds only: hold applied writes in memory until a flush, so that
  // killing this secondary loses them as a host crash would.
  serve->add_flag("--test-volatile-writes", serve_node.volatile_writes)
      ->group("");
#endif
  add_security(serve, &serve_node);
  serve
      ->add_option("--peer-timeout", serve_timeout,
                   "Seconds of silence before the primary counts as gone")
      ->check(CLI::Range(0.1, 3600.0));

  std::string store;
  auto* stop = app.add_subcommand(
      "stop", "Stop the node cleanly: flush, unmount if primary");
  stop->add_option("STORE", store, "The store directory")->required();

  bool json = false;
  auto* status = app.add_subcommand("status", "Show role, peers and state");
  status->add_option("STORE", store, "The store directory")->required();
  status->add_flag("--json", json, "One JSON document on stdout");

  // Verbs whose issues have not landed yet: they parse, then say so.
  struct Pending {
    CLI::App* app;
    const char* what;
  };
  std::vector<Pending> pending;
  std::string arg1, arg2, arg3;
  bool flag = false;
  auto* peer = app.add_subcommand("peer", "Manage peers: add, remove, list");
  peer->require_subcommand(1);
  auto* peer_add = peer->add_subcommand("add", "Add peer NAME at EP");
  peer_add->add_option("STORE", store, "The store directory")->required();
  peer_add->add_option("NAME", arg1, "The peer's name")->required();
  peer_add->add_option("EP", arg2, "Its endpoint, e.g. tcp://10.0.0.2:7790")
      ->required();
  auto* peer_remove = peer->add_subcommand("remove", "Remove peer NAME");
  peer_remove->add_option("STORE", store, "The store directory")->required();
  peer_remove->add_option("NAME", arg1, "The peer's name")->required();
  auto* peer_list = peer->add_subcommand("list", "List peers");
  peer_list->add_option("STORE", store, "The store directory")->required();
  peer_list->add_flag("--json", json, "One JSON document on stdout");

  bool wait = false;
  double timeout = 0;
  auto* sync = app.add_subcommand(
      "sync", "Resync peers now (reconnect, replay their fracture logs)");
  sync->add_option("STORE", store, "The store directory")->required();
  sync->add_option("--peer", arg1, "Only this peer");
  sync->add_flag("--wait", wait, "Show progress; exit 0 once in sync");
  sync->add_option("--timeout", timeout,
                   "With --wait: give up after SECONDS (exit 3)")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            char* end = nullptr;
            double seconds = std::strtod(value.c_str(), &end);
            if (end == value.c_str() || *end != '\0' || !(seconds > 0)) {
              return "expected a number of seconds above 0, got '" + value +
                     "'";
            }
            return "";
          },
          "SECONDS"));

  auto* fracture = app.add_subcommand(
      "fracture", "Stop mirroring to NAME on purpose; its changes are logged");
  fracture->add_option("STORE", store, "The store directory")->required();
  fracture->add_option("NAME", arg1, "The peer to fracture")->required();

  std::string verify_rate;
  auto* verify = app.add_subcommand(
      "verify", "Compare block checksums with peers; exit 1 if they differ");
  verify->add_option("STORE", store, "The store directory")->required();
  verify->add_option("--peer", arg1, "Only this peer");
  verify->add_flag("--repair", flag, "Log differing ranges and resync them");
  verify->add_flag("--json", json, "One JSON document on stdout");
  verify->add_option("--rate", verify_rate,
                     "Bytes compared per second (K, M, G; default unlimited)");

  auto* promote =
      app.add_subcommand("promote", "Secondary -> primary (failover)");
  promote->add_option("STORE", store, "The store directory")->required();
  promote->add_option("--mount", arg1,
                      "Mount the store here (default: where this store was "
                      "last mounted as primary)");
  promote->add_flag("--force", flag,
                    "Promote even an inconsistent copy, or while a primary "
                    "is connected or in split brain with this node");

  std::string demote_listen;
  auto* demote = app.add_subcommand(
      "demote", "Primary -> secondary (unmounts; fails if the mount is busy)");
  demote->add_option("STORE", store, "The store directory")->required();
  demote->add_option("--listen", demote_listen,
                     "Endpoint to serve on (default: the node's --listen)");

  auto* resolve = app.add_subcommand("resolve", "End a split brain");
  resolve->add_option("STORE", store, "The store directory")->required();
  bool discard_local = false, keep_local = false;
  auto* discard = resolve->add_flag(
      "--discard-local", discard_local,
      "On the loser: save its changes to a recovery folder, take the other's");
  auto* keep = resolve->add_flag(
      "--keep-local", keep_local,
      "On the survivor: the split-brain peer takes this node's data");
  discard->excludes(keep);

  auto* keygen = app.add_subcommand(
      "keygen", "Write a CURVE key pair: FILE (secret, 0600) and FILE.pub");
  keygen
      ->add_option("FILE", arg1,
                   "The secret key file to write (FILE.pub beside it)")
      ->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // CLI11 says "A subcommand is required" of a misspelt one.
    std::string what = e.what();
    CLI::App* parent = &app;
    for (int i = 1; i < argc && argv[i][0] != '-'; ++i) {
      CLI::App* sub = nullptr;
      for (auto* s : parent->get_subcommands({})) {
        if (s->get_name() == argv[i]) sub = s;
      }
      if (sub == nullptr) {
        if (!parent->get_subcommands({}).empty()) {
          what = std::string("unknown command '") + argv[i] + "'";
        }
        break;
      }
      parent = sub;
    }
    std::cerr << "mirrorfs: " << what << "\n";
    // The usage of the subcommand that failed, if we know it.
    CLI::App* failed = &app;
    for (auto* sub : app.get_subcommands()) failed = sub;
    std::cerr << failed->help() << std::flush;
    return kExitUsage;
  }

  auto usage = [](CLI::App* cmd, const std::string& message) {
    std::cerr << "mirrorfs: " << message << "\n" << cmd->help() << std::flush;
    return kExitUsage;
  };

  if (mount->parsed() || serve->parsed()) {
    CLI::App* cmd = mount->parsed() ? mount : serve;
    NodeOptions options = mount->parsed() ? node : serve_node;
    if (mount->parsed()) {
      options.async = mode == "async";
      options.peer_timeout =
          std::chrono::milliseconds(static_cast<int64_t>(peer_timeout * 1000));
      for (const auto& p : peer_args) {
        size_t eq = p.find('=');
        PeerSpec spec;
        if (eq != std::string::npos) {
          spec.name = p.substr(0, eq);
          spec.endpoint = p.substr(eq + 1);
        }
        if (!ValidPeerName(spec.name) || !ValidEndpoint(spec.endpoint)) {
          return usage(cmd, "--peer " + p +
                                ": expected NAME=tcp://HOST:PORT, NAME of "
                                "letters, digits, '.', '_' or '-'");
        }
        if (spec.name == options.name) {
          return usage(cmd, "--peer " + p + ": " + spec.name +
                                " is this node's own --name");
        }
        for (const auto& other : options.peers) {
          if (other.name == spec.name) {
            return usage(cmd, "--peer " + spec.name + " is given twice");
          }
          if (other.endpoint == spec.endpoint) {
            return usage(cmd, "--peer " + other.name + " and " + spec.name +
                                  " have the same endpoint " + spec.endpoint);
          }
        }
        if (!options.listen.empty() && spec.endpoint == options.listen) {
          return usage(cmd,
                       "--peer " + p + ": that is this node's own --listen");
        }
        options.peers.push_back(spec);
      }
      for (const auto& o : fuse_opts) {
        size_t start = 0;
        while (start <= o.size()) {
          size_t comma = o.find(',', start);
          if (comma == std::string::npos) comma = o.size();
          if (comma > start)
            options.fuse_options.push_back(o.substr(start, comma - start));
          start = comma + 1;
        }
      }
      for (auto [text, flag, target] :
           {std::tuple{&intent_extent, "--intent-extent",
                       &options.intent_extent},
            std::tuple{&intent_budget, "--intent-budget",
                       &options.intent_budget}}) {
        if (text->empty()) continue;
        auto bytes = ParseBytes(*text);
        if (!bytes || *bytes < 4096) {
          return usage(cmd, std::string(flag) + " " + *text +
                                ": expected a size of at least 4K, e.g. 4M");
        }
        *target = *bytes;
      }
      if (options.intent_budget < options.intent_extent) {
        return usage(cmd,
                     "--intent-budget must be at least one "
                     "--intent-extent");
      }
      options.intent_journal = !no_intent_journal;
      if (!resync_rate.empty()) {
        auto rate = ParseBytes(resync_rate);
        if (!rate || *rate == 0) {
          return usage(cmd, "--resync-rate " + resync_rate +
                                ": expected bytes per second, e.g. 50M");
        }
        options.resync_rate = *rate;
      }
    } else {
      options.peer_timeout =
          std::chrono::milliseconds(static_cast<int64_t>(serve_timeout * 1000));
    }
    if (!options.name.empty() && !ValidPeerName(options.name)) {
      return usage(cmd, "--name " + options.name +
                            ": letters, digits, '.', '_' or '-' only");
    }
    if (!options.listen.empty() && !ValidEndpoint(options.listen)) {
      return usage(cmd, "--listen " + options.listen +
                            ": expected a ZeroMQ endpoint like "
                            "tcp://10.0.0.2:7790");
    }
    if (!options.listen.empty() && options.key_file.empty() &&
        !options.insecure && !sync::IsLoopbackEndpoint(options.listen)) {
      return Fail("refusing to listen on " + options.listen +
                  " beyond loopback without keys: give --key FILE "
                  "--authorized-keys FILE (see `mirrorfs keygen`), or "
                  "--insecure on a trusted, isolated network");
    }
    std::string error;
    if (!ExistingDirectory("store", options.store, &options.store, &error)) {
      return Fail(error);
    }
    // The daemon runs in "/" and reads the keys again on SIGHUP.
    for (std::string* file : {&options.key_file, &options.authorized_file}) {
      if (!file->empty() && (*file)[0] != '/') *file = AbsolutePath(*file);
    }
    if (mount->parsed()) {
      if (!ExistingDirectory("mountpoint", options.mountpoint,
                             &options.mountpoint, &error)) {
        return Fail(error);
      }
      if (options.mountpoint == options.store ||
          options.mountpoint.rfind(options.store + "/", 0) == 0) {
        return Fail("mountpoint " + options.mountpoint +
                    " is inside the store " + options.store +
                    "; choose a mountpoint outside it");
      }
    }
    return RunNode(options);
  }

  // Every other verb addresses a running node by its store.
  std::string absolute;
  std::string error;
  if (!store.empty() && ExistingDirectory("store", store, &absolute, &error)) {
    store = absolute;
  } else if (!store.empty()) {
    return Fail(error);
  }

  if (status->parsed()) {
    return Relay(store, json ? std::vector<std::string>{"status", "--json"}
                             : std::vector<std::string>{"status"});
  }
  if (stop->parsed()) {
    auto reply = CallDaemon(store, {"status", "--json"});
    if (!reply.ok()) return Fail(reply.status().message());
    pid_t pid = 0;
    size_t at = reply->out.find("\"pid\":");
    if (at != std::string::npos) pid = std::atoi(reply->out.c_str() + at + 6);
    int code = Relay(store, {"stop"});
    if (code != kExitOk) return code;
    if (pid > 0 && !WaitGone(pid, std::chrono::seconds(60))) {
      return Fail("the daemon of " + store + " (pid " + std::to_string(pid) +
                  ") did not stop within 60 s; see " + store +
                  "/.mirrorfs/log");
    }
    return kExitOk;
  }
  if (fracture->parsed()) return Relay(store, {"fracture", "--peer", arg1});
  if (sync->parsed()) {
    std::vector<std::string> words = {"sync"};
    if (!arg1.empty()) words = {"sync", "--peer", arg1};
    int code = Relay(store, words);
    if (code != kExitOk || !wait) return code;
    return WaitInSync(store, arg1, timeout);
  }
  if (keygen->parsed()) {
    auto made = sync::GenerateKeyFiles(arg1);
    if (!made.ok()) return Fail(made.message());
    std::cout << "wrote " << arg1 << " (secret key, mode 0600) and " << arg1
              << ".pub (public key)\n";
    return kExitOk;
  }
  if (verify->parsed()) {
    std::vector<std::string> words = {"verify"};
    if (!arg1.empty()) words.insert(words.end(), {"--peer", arg1});
    if (flag) words.push_back("--repair");
    if (json) words.push_back("--json");
    if (!verify_rate.empty()) {
      auto rate = ParseBytes(verify_rate);
      if (!rate || *rate == 0) {
        return usage(verify, "--rate " + verify_rate +
                                 ": expected bytes per "
                                 "second, e.g. 100M");
      }
      words.insert(words.end(), {"--rate", std::to_string(*rate)});
    }
    return Relay(store, words, 24 * 3600 * 1000);
  }
  if (peer_add->parsed()) {
    if (!ValidPeerName(arg1) || !ValidEndpoint(arg2)) {
      return usage(peer_add,
                   "peer add: expected NAME (letters, digits, '.', "
                   "'_', '-') and EP like tcp://10.0.0.2:7790");
    }
    return Relay(store, {"peer-add", arg1, arg2});
  }
  if (peer_remove->parsed()) {
    return Relay(store, {"peer-remove", arg1});
  }
  if (peer_list->parsed()) {
    return Relay(store, json ? std::vector<std::string>{"peer-list", "--json"}
                             : std::vector<std::string>{"peer-list"});
  }
  if (resolve->parsed()) {
    if (!discard_local && !keep_local) {
      return usage(resolve,
                   "resolve needs --discard-local (on the loser) or "
                   "--keep-local (on the survivor)");
    }
    return Relay(
        store, {"resolve", discard_local ? "--discard-local" : "--keep-local"});
  }
  if (promote->parsed() || demote->parsed()) {
    std::map<std::string, std::string> kv;
    auto role_info = [&]() -> meta::Status {
      auto info = CallDaemon(store, {"role-info"});
      if (!info.ok()) return info.status();
      kv.clear();
      std::istringstream lines(info->out);
      std::string line;
      while (std::getline(lines, line)) {
        size_t eq = line.find('=');
        if (eq != std::string::npos) {
          kv[line.substr(0, eq)] = line.substr(eq + 1);
        }
      }
      return meta::Status::Ok();
    };
    if (auto s = role_info(); !s.ok()) return Fail(s.message());
    if (promote->parsed()) {
      if (kv["role"] != "secondary") return Fail(store + " is not a secondary");
      // Without --mount: where this store was last mounted as primary.
      if (arg1.empty()) arg1 = kv["mountpoint"];
      if (arg1.empty()) {
        return Fail(
            "promote: " + store +
            " has never been mounted as primary on this node, so there is "
            "no mountpoint to reuse; give --mount MOUNTPOINT");
      }
    }
    if (promote->parsed() && !flag && !kv["primary_connected"].empty()) {
      // A primary that has just stopped or demoted still counts as
      // connected until it has been silent for the secondary's peer
      // timeout; a live one keeps sending heartbeats. Wait that long (and
      // a second) before refusing, so that `stop` or `demote` on the old
      // primary followed at once by `promote` here works.
      long ms = std::atol(kv["peer_timeout_ms"].c_str());
      if (ms <= 0) ms = 2000;
      std::cerr << "mirrorfs: primary " << kv["primary_connected"]
                << " is connected; waiting up to " << (ms + 1000) / 1000.0
                << " s for it to go silent (stopped or demoted)\n";
      auto deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(ms) + std::chrono::seconds(1);
      while (!kv["primary_connected"].empty() &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (auto s = role_info(); !s.ok()) return Fail(s.message());
      }
    }
    pid_t pid = std::atoi(kv["pid"].c_str());
    NodeOptions next;
    next.store = store;
    next.name = kv["name"];
    next.key_file = kv["key"];
    next.authorized_file = kv["authorized"];
    next.insecure = kv["insecure"] == "1";
    next.cached_writes = kv["cached_writes"] == "1";
    if (!kv["busy_poll_us"].empty()) {
      next.busy_poll_us =
          static_cast<uint32_t>(std::atol(kv["busy_poll_us"].c_str()));
    }
    next.control_group = kv["control_group"];
    if (long ms = std::atol(kv["peer_timeout_ms"].c_str()); ms > 0) {
      next.peer_timeout = std::chrono::milliseconds(ms);
    }
    if (promote->parsed()) {
      if (!kv["primary_connected"].empty() && !flag) {
        return Fail("refusing to promote: primary " + kv["primary_connected"] +
                    " is connected to this node; demote it first, or use "
                    "--force (two primaries make a split brain)");
      }
      if (!kv["split_brain"].empty() && !flag) {
        // The other primary is alive (it keeps knocking; the note lapses
        // seconds after it stops): promoting here makes two writable mounts.
        return Fail("refusing to promote: this node is in split brain with " +
                    kv["split_brain"] +
                    ", a primary that is still running; end the split brain "
                    "first (demote " +
                    kv["split_brain"] +
                    ", then mirrorfs resolve), or use --force (two primaries, "
                    "both writing)");
      }
      if (kv["consistent"] != "1" && !flag) {
        return Fail(
            "refusing to promote: this copy is inconsistent (a "
            "resync into it has not finished); use --force to "
            "promote it anyway");
      }
      std::string error;
      if (!ExistingDirectory("mountpoint", arg1, &next.mountpoint, &error)) {
        return Fail(error);
      }
      next.primary = true;
      next.listen = kv["listen"];
    } else {
      if (kv["role"] != "primary") return Fail(store + " is not a primary");
      next.primary = false;
      next.listen = demote_listen.empty() ? kv["listen"] : demote_listen;
      if (next.listen.empty()) {
        return usage(demote,
                     "demote needs an endpoint to serve on: this node "
                     "has none; pass --listen EP");
      }
      if (!ValidEndpoint(next.listen)) {
        return usage(demote, "--listen " + next.listen + ": not an endpoint");
      }
      // What would make the secondary fail to start is checked while the
      // primary still runs: a refused demote leaves it as it was.
      if (next.key_file.empty() && !next.insecure &&
          !sync::IsLoopbackEndpoint(next.listen)) {
        return Fail("refusing to demote: a secondary on " + next.listen +
                    " beyond loopback needs keys (this node runs without "
                    "--key) or --insecure; pass a loopback --listen, or "
                    "restart the node with keys");
      }
      if (next.listen != kv["listen"] && !EndpointFree(next.listen)) {
        return Fail("refusing to demote: " + next.listen +
                    " is in use by another process");
      }
    }
    int code = Relay(store, {promote->parsed() ? "stop" : "demote"});
    if (code != kExitOk) return code;
    if (pid > 0 && !WaitGone(pid, std::chrono::seconds(60))) {
      return Fail("the daemon of " + store + " did not stop within 60 s");
    }
    code = StartNodeProcess(next);
    if (code == kExitOk) {
      std::cout << store << " is now "
                << (next.primary ? "primary, mounted at " + next.mountpoint
                                 : "secondary, serving " + next.listen)
                << "\n";
      return code;
    }
    // Back to the role it had, so that a failed role change does not leave
    // the store without a node.
    NodeOptions previous = next;
    previous.primary = !next.primary;
    previous.async = kv["mode"] == "async";
    previous.listen = kv["listen"];
    previous.mountpoint = kv["mountpoint"];
    if ((previous.primary && previous.mountpoint.empty()) ||
        (!previous.primary && previous.listen.empty()) ||
        StartNodeProcess(previous) != kExitOk) {
      std::cerr << "mirrorfs: the node is stopped; start it again with "
                   "`mirrorfs serve` or `mirrorfs mount`\n";
      return code;
    }
    std::cerr << "mirrorfs: " << (next.primary ? "promote" : "demote")
              << " failed; " << store << " is "
              << (previous.primary
                      ? "primary again, mounted at " + previous.mountpoint
                      : "secondary again, serving " + previous.listen)
              << "\n";
    return code;
  }
  for (const auto& p : pending) {
    if (p.app->parsed()) {
      return Fail(std::string(p.what) +
                  " is not available in this version of mirrorfs yet");
    }
  }
  return usage(&app, "unknown command");
}

}  // namespace mirrorfs::cli
