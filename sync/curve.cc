#include "sync/curve.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <system_error>

#include "meta/log.h"

// ZMQ_ZAP_ENFORCE_DOMAIN is a draft option in libzmq 4.3's header, but the
// library implements it (Debian's 4.3.4 accepts it); without it a CURVE
// server with no ZAP handler admits every client ("Stonehouse").
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif

namespace mirrorfs::sync {
namespace {

using meta::Result;
using meta::Status;

constexpr char kZ85Alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/"
    "*?&<>"
    "()[]{}@%$#";
constexpr size_t kZ85KeyChars = 40;
constexpr size_t kKeyBytes = 32;
constexpr size_t kMaxKeyFileBytes = 4096;
constexpr size_t kMaxAuthorizedFileBytes = 1 << 20;
constexpr auto kLogEvery = std::chrono::minutes(1);
constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";

// Closes a descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now; returns close(2)'s result.
  int Close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Overwrites a string that held key material before it is freed.
void Wipe(std::string* s) {
  if (!s->empty()) sodium_memzero(s->data(), s->size());
  s->clear();
}

std::string ModeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// Reads all of `fd` (at most `limit` bytes). `file` is for messages.
Result<std::string> ReadAll(int fd, const std::string& file, size_t limit) {
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = Status::FromErrno("cannot read " + file);
      Wipe(&data);
      return s;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    sodium_memzero(buf, sizeof buf);
    if (data.size() > limit) {
      Wipe(&data);
      return Status::Error(EINVAL, file + " is larger than " +
                                       std::to_string(limit) +
                                       " bytes; it is not a mirrorfs key file");
    }
  }
  return data;
}

// Opens `file` for reading without blocking on a FIFO and checks that it is
// a regular file; `what` names it in messages ("secret key file").
Result<int> OpenRegular(const std::string& file, const std::string& what,
                        struct stat* st) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno("cannot open " + what + " " + file);
  if (::fstat(fd, st) != 0) {
    Status s = Status::FromErrno("cannot stat " + what + " " + file);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    return Status::Error(EINVAL, what + " " + file + " is not a regular file");
  }
  return fd;
}

// Creates `path` (O_EXCL) with exactly `mode` and `content`, fsynced.
// On failure nothing is left at `path`.
Status WriteNewFile(const std::string& path, const std::string& content,
                    mode_t mode) {
  int raw = ::open(path.c_str(),
                   O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (raw < 0) {
    if (errno == EEXIST) {
      return Status::Error(EEXIST, path +
                                       " already exists; mirrorfs keygen never "
                                       "overwrites a key (remove it or choose "
                                       "another name)");
    }
    return Status::FromErrno("cannot create " + path);
  }
  Fd fd(raw);
  Status status;
  // The umask may have narrowed `mode`; the file must have it exactly.
  if (::fchmod(fd.get(), mode) != 0) {
    status = Status::FromErrno("cannot chmod " + path);
  }
  size_t done = 0;
  while (status.ok() && done < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = Status::FromErrno("cannot write " + path);
    } else {
      done += static_cast<size_t>(n);
    }
  }
  if (status.ok() && ::fsync(fd.get()) != 0) {
    status = Status::FromErrno("cannot fsync " + path);
  }
  if (fd.Close() != 0 && status.ok()) {
    status = Status::FromErrno("cannot close " + path);
  }
  if (!status.ok()) ::unlink(path.c_str());
  return status;
}

void SyncParentDir(const std::string& path) {
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "."
                    : slash == 0               ? "/"
                                               : path.substr(0, slash);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // Durability of the name only; the data is synced.
  (void)::fsync(fd);
  ::close(fd);
}

bool IsPeerName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool IsPortText(std::string_view port) {
  if (port == "*") return true;
  if (port.empty() || port.size() > 5) return false;
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535;
}

bool IsLoopbackHost(const std::string& host, bool bracketed) {
  if (!bracketed && host == "localhost") return true;
  in_addr v4;
  if (!bracketed && ::inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6;
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    // ::ffff:127.x.y.z
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

Status FromZmq(const zmq::error_t& e, const std::string& what) {
  return Status::Error(e.num(), what + ": " + e.what());
}

}  // namespace

bool IsZ85Key(const std::string& text) {
  if (text.size() != kZ85KeyChars) return false;
  for (char c : text) {
    if (c == '\0' || std::strchr(kZ85Alphabet, c) == nullptr) return false;
  }
  uint8_t decoded[kKeyBytes];
  bool ok = zmq_z85_decode(decoded, text.c_str()) != nullptr;
  sodium_memzero(decoded, sizeof decoded);
  return ok;
}

Status GenerateKeyFiles(const std::string& file) {
  const std::string pub_file = file + ".pub";
  struct stat st;
  for (const std::string* path : {&file, &pub_file}) {
    if (::lstat(path->c_str(), &st) == 0) {
      return Status::Error(EEXIST, *path +
                                       " already exists; mirrorfs keygen never "
                                       "overwrites a key (remove it or choose "
                                       "another name)");
    }
  }
  char public_key[kZ85KeyChars + 1];
  char secret_key[kZ85KeyChars + 1];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    int err = errno;
    return Status::Error(err == 0 ? ENOTSUP : err,
                         "cannot generate a CURVE key pair: this libzmq was "
                         "built without CURVE (libsodium)");
  }
  std::string secret_text = std::string(
                                "# mirrorfs CURVE secret key: keep private "
                                "(mode 0600)\npublic-key = ") +
                            public_key + "\nsecret-key = " + secret_key + "\n";
  sodium_memzero(secret_key, sizeof secret_key);
  Status status = WriteNewFile(file, secret_text, 0600);
  Wipe(&secret_text);
  if (!status.ok()) return status;
  status = WriteNewFile(pub_file, std::string(public_key) + "\n", 0644);
  if (!status.ok()) {
    ::unlink(file.c_str());
    return status;
  }
  SyncParentDir(file);
  return Status::Ok();
}

Result<CurveKeyPair> LoadKeyFile(const std::string& file) {
  const std::string what = "secret key file";
  struct stat st;
  Result<int> opened = OpenRegular(file, what, &st);
  if (!opened.ok()) return opened.status();
  Fd fd(*opened);
  if ((st.st_mode & 077) != 0) {
    return Status::Error(
        EACCES, what + " " + file + " has mode " + ModeText(st.st_mode) +
                    ", which lets group or others access it; run 'chmod 600 " +
                    file + "' (and make a new key if others may have read it)");
  }
  Result<std::string> read = ReadAll(fd.get(), file, kMaxKeyFileBytes);
  if (!read.ok()) return read.status();
  std::string text = std::move(*read);

  CurveKeyPair pair;
  Status status;
  size_t line_no = 0;
  size_t pos = 0;
  bool have_public = false;
  bool have_secret = false;
  while (status.ok() && pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line = Trim(std::string_view(text).substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    const std::string where = file + ":" + std::to_string(line_no) + ": ";
    if (line.empty() || line.front() == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      // Never echo the line: it may be a bare secret key.
      status = Status::Error(EINVAL, where +
                                         "expected 'secret-key = KEY' or "
                                         "'public-key = KEY'");
      break;
    }
    std::string_view field = Trim(line.substr(0, eq));
    std::string value(Trim(line.substr(eq + 1)));
    bool is_secret = field == "secret-key";
    if (!is_secret && field != "public-key") {
      status = Status::Error(
          EINVAL, where + "unknown field (expected secret-key or public-key)");
    } else if ((is_secret && have_secret) || (!is_secret && have_public)) {
      status = Status::Error(
          EINVAL, where + std::string(field) + " is given more than once");
    } else if (!IsZ85Key(value)) {
      status = Status::Error(EINVAL, where + std::string(field) +
                                         " is not a CURVE key (40 Z85 "
                                         "characters)");
    } else if (is_secret) {
      have_secret = true;
      pair.secret_key = value;
    } else {
      have_public = true;
      pair.public_key = value;
    }
    Wipe(&value);
  }
  Wipe(&text);
  if (status.ok() && !have_secret) {
    status = Status::Error(
        EINVAL, file +
                    " has no 'secret-key = KEY' line; it is not a mirrorfs "
                    "secret key file (make one with mirrorfs keygen)");
  }
  if (status.ok()) {
    char derived[kZ85KeyChars + 1];
    if (zmq_curve_public(derived, pair.secret_key.c_str()) != 0) {
      status = Status::Error(EINVAL, file + ": cannot derive the public key");
    } else if (have_public && pair.public_key != derived) {
      status = Status::Error(EINVAL, file +
                                         ": public-key does not belong to "
                                         "secret-key; the file is damaged");
    } else {
      pair.public_key = derived;
    }
  }
  if (!status.ok()) {
    Wipe(&pair.secret_key);
    return status;
  }
  return pair;
}

std::string AuthorizedKeys::NameOf(const std::string& z85) const {
  for (const auto& [name, key] : by_name) {
    if (key == z85) return name;
  }
  return "";
}

Result<AuthorizedKeys> LoadAuthorizedKeys(const std::string& file) {
  const std::string what = "authorized keys file";
  struct stat st;
  Result<int> opened = OpenRegular(file, what, &st);
  if (!opened.ok()) return opened.status();
  Fd fd(*opened);
  // Whoever can write this file decides who may write our data.
  if ((st.st_mode & 022) != 0) {
    return Status::Error(EACCES, what + " " + file + " has mode " +
                                     ModeText(st.st_mode) +
                                     ", which lets group or others change "
                                     "it; run 'chmod go-w " +
                                     file + "'");
  }
  Result<std::string> read = ReadAll(fd.get(), file, kMaxAuthorizedFileBytes);
  if (!read.ok()) return read.status();
  const std::string& text = *read;

  AuthorizedKeys keys;
  std::map<std::string, size_t> name_line;
  std::map<std::string, std::pair<std::string, size_t>> key_line;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line = Trim(std::string_view(text).substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    const std::string where = file + ":" + std::to_string(line_no) + ": ";
    if (line.empty() || line.front() == '#') continue;
    size_t gap = line.find_first_of(" \t");
    std::string_view name = line.substr(0, gap);
    std::string_view key =
        gap == std::string_view::npos ? "" : Trim(line.substr(gap));
    if (key.empty() || key.find_first_of(" \t") != std::string_view::npos) {
      return Status::Error(EINVAL, where + "expected 'NAME PUBLIC-KEY'");
    }
    if (!IsPeerName(name)) {
      return Status::Error(EINVAL, where +
                                       "bad peer name (use 1 to 64 of "
                                       "A-Z a-z 0-9 . _ -)");
    }
    std::string name_s(name);
    std::string key_s(key);
    if (!IsZ85Key(key_s)) {
      return Status::Error(EINVAL, where + "the key of " + name_s +
                                       " is not a CURVE public key (40 Z85 "
                                       "characters)");
    }
    if (auto it = name_line.find(name_s); it != name_line.end()) {
      return Status::Error(EINVAL, where + name_s +
                                       " is listed twice (first on line " +
                                       std::to_string(it->second) + ")");
    }
    if (auto it = key_line.find(key_s); it != key_line.end()) {
      return Status::Error(EINVAL, where + "the key of " + name_s +
                                       " is already listed for " +
                                       it->second.first + " (line " +
                                       std::to_string(it->second.second) + ")");
    }
    name_line[name_s] = line_no;
    key_line[key_s] = {name_s, line_no};
    keys.by_name[name_s] = key_s;
  }
  return keys;
}

bool IsLoopbackEndpoint(const std::string& endpoint) {
  std::string_view ep(endpoint);
  if (ep.starts_with("ipc://") || ep.starts_with("inproc://")) return true;
  if (!ep.starts_with("tcp://")) return false;
  ep.remove_prefix(6);
  // "tcp://source;host:port" names a source for connect, never a bind.
  if (ep.find(';') != std::string_view::npos) return false;
  std::string host;
  std::string_view port;
  bool bracketed = false;
  if (!ep.empty() && ep.front() == '[') {
    size_t close = ep.find(']');
    if (close == std::string_view::npos || close + 1 >= ep.size() ||
        ep[close + 1] != ':') {
      return false;
    }
    host = std::string(ep.substr(1, close - 1));
    port = ep.substr(close + 2);
    bracketed = true;
  } else {
    size_t colon = ep.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = std::string(ep.substr(0, colon));
    port = ep.substr(colon + 1);
  }
  return IsPortText(port) && IsLoopbackHost(host, bracketed);
}

Status ApplyCurveClient(zmq::socket_t* socket, const CurveConfig& config,
                        const std::string& peer_name) {
  const std::string file =
      config.authorized_file.empty() ? "(none)" : config.authorized_file;
  if (!config.authorized) {
    return Status::Error(EINVAL, "peer " + peer_name +
                                     ": no authorized keys loaded; give "
                                     "--authorized-keys FILE");
  }
  auto it = config.authorized->by_name.find(peer_name);
  if (it == config.authorized->by_name.end()) {
    return Status::Error(
        EINVAL, "peer " + peer_name + " is not in the authorized keys file " +
                    file + "; add a line '" + peer_name + " <its public key>'");
  }
  try {
    socket->set(zmq::sockopt::curve_serverkey, std::string_view(it->second));
    socket->set(zmq::sockopt::curve_publickey,
                std::string_view(config.own.public_key));
    socket->set(zmq::sockopt::curve_secretkey,
                std::string_view(config.own.secret_key));
  } catch (const zmq::error_t& e) {
    return FromZmq(e, "peer " + peer_name + ": cannot enable CURVE");
  }
  return Status::Ok();
}

Status ApplyCurveServer(zmq::socket_t* socket, const CurveConfig& config) {
  try {
    socket->set(zmq::sockopt::curve_server, true);
    socket->set(zmq::sockopt::curve_publickey,
                std::string_view(config.own.public_key));
    socket->set(zmq::sockopt::curve_secretkey,
                std::string_view(config.own.secret_key));
    socket->set(zmq::sockopt::zap_domain, std::string_view(kZapDomain));
  } catch (const zmq::error_t& e) {
    return FromZmq(e, "cannot make the listening socket a CURVE server");
  }
  int one = 1;
  if (zmq_setsockopt(socket->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &one,
                     sizeof one) != 0) {
    // Refuse to run rather than admit unauthenticated clients if the ZAP
    // handler ever goes away.
    return Status::Error(errno,
                         "this libzmq does not support ZMQ_ZAP_ENFORCE_DOMAIN "
                         "(need libzmq >= 4.3); peer links cannot be "
                         "authenticated safely");
  }
  return Status::Ok();
}

std::string AuthenticatedPeerName(const zmq::message_t& message) {
  const char* user =
      zmq_msg_gets(const_cast<zmq_msg_t*>(message.handle()), "User-Id");
  return user == nullptr ? "" : user;
}

ZapHandler::ZapHandler(zmq::context_t* context,
                       std::shared_ptr<const AuthorizedKeys> authorized,
                       std::string authorized_file)
    : context_(context),
      authorized_file_(std::move(authorized_file)),
      authorized_(std::move(authorized)) {
  if (!authorized_) authorized_ = std::make_shared<const AuthorizedKeys>();
}

ZapHandler::~ZapHandler() { Stop(); }

Status ZapHandler::Start() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (thread_.joinable()) {
    return Status::Error(EINVAL, "the ZAP handler is already running");
  }
  try {
    zmq::socket_t socket(*context_, zmq::socket_type::rep);
    socket.set(zmq::sockopt::linger, 0);
    // Lets Run() notice Stop() without a second socket.
    socket.set(zmq::sockopt::rcvtimeo, 100);
    socket.bind(kZapEndpoint);
    stop_ = false;
    // Handing a socket to another thread is allowed with a full memory
    // barrier, which thread creation is; it belongs to Run() from now on.
    thread_ = std::thread(&ZapHandler::Run, this, std::move(socket));
  } catch (const zmq::error_t& e) {
    return FromZmq(
        e, std::string("cannot start the ZAP handler on ") + kZapEndpoint);
  } catch (const std::system_error& e) {
    return Status::Error(
        e.code().value(),
        std::string("cannot start the ZAP thread: ") + e.what());
  }
  return Status::Ok();
}

void ZapHandler::Stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
}

void ZapHandler::Reload(std::shared_ptr<const AuthorizedKeys> authorized) {
  if (!authorized) return;
  size_t n = authorized->by_name.size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    authorized_ = std::move(authorized);
  }
  meta::LogInfo("authorized keys reloaded from " + authorized_file_ + ": " +
                std::to_string(n) + " peer(s)");
}

std::shared_ptr<const AuthorizedKeys> ZapHandler::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return authorized_;
}

bool ZapHandler::ShouldLog(const std::string& key, const std::string& address) {
  auto now = std::chrono::steady_clock::now();
  if (last_logged_.size() > 1024) {
    for (auto it = last_logged_.begin(); it != last_logged_.end();) {
      it = now - it->second >= kLogEvery ? last_logged_.erase(it) : ++it;
    }
  }
  auto [it, inserted] = last_logged_.try_emplace({key, address}, now);
  if (inserted) return true;
  if (now - it->second < kLogEvery) return false;
  it->second = now;
  return true;
}

void ZapHandler::Run(zmq::socket_t socket) {
  std::vector<zmq::message_t> frames;
  while (!stop_.load()) {
    try {
      frames.clear();
      zmq::message_t first;
      if (!socket.recv(first)) continue;  // rcvtimeo: check stop_
      bool more = first.more();
      frames.push_back(std::move(first));
      while (more) {
        zmq::message_t part;
        (void)socket.recv(part);
        more = part.more();
        frames.push_back(std::move(part));
      }
      Answer(socket, frames);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      meta::LogError(std::string("ZAP handler: ") + e.what());
      if (e.num() == EFSM) break;  // REP state lost; cannot answer again
    }
  }
}

void ZapHandler::Answer(zmq::socket_t& socket,
                        std::vector<zmq::message_t>& frames) {
  // RFC 27 request: version, request id, domain, address, routing id,
  // mechanism, credentials... Reply: version, request id, status code,
  // status text, user id, metadata.
  const std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
  auto reply = [&](const char* code, const std::string& text,
                   const std::string& user) {
    socket.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(std::string_view(code)), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(text), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(user), zmq::send_flags::sndmore);
    socket.send(zmq::message_t(), zmq::send_flags::none);
  };
  if (frames.size() < 6 || frames[0].to_string_view() != "1.0") {
    ++refused_;
    reply("500", "malformed ZAP request", "");
    return;
  }
  const std::string domain = frames[2].to_string();
  const std::string address = frames[3].to_string();
  const std::string mechanism = frames[5].to_string();
  if (mechanism != "CURVE" || frames.size() != 7 ||
      frames[6].size() != kKeyBytes || domain != kZapDomain) {
    ++refused_;
    if (ShouldLog("mechanism:" + mechanism, address)) {
      meta::LogWarning("refused peer link from " + address +
                       ": it does not authenticate with a CURVE key "
                       "(mechanism " +
                       mechanism + ", domain '" + domain + "')");
    }
    reply("400", "CURVE key required", "");
    return;
  }
  char z85[kZ85KeyChars + 1];
  zmq_z85_encode(z85, static_cast<const uint8_t*>(frames[6].data()), kKeyBytes);
  const std::string key(z85);
  const std::string name = Current()->NameOf(key);
  if (name.empty()) {
    ++refused_;
    if (ShouldLog("refused:" + key, address)) {
      meta::LogWarning("refused peer link from " + address +
                       ": unknown CURVE key " + key + "; add it to " +
                       authorized_file_ + " to admit it");
    }
    reply("400", "unknown CURVE key", "");
    return;
  }
  ++admitted_;
  if (ShouldLog("admitted:" + key, address)) {
    meta::LogInfo("admitted peer link from " + address + ": peer " + name +
                  " (CURVE key " + key + ")");
  }
  reply("200", "OK", name);
}

}  // namespace mirrorfs::sync
