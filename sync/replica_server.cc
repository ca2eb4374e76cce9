#include "sync/replica_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>
#include <zmq.hpp>

#include "meta/log.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

namespace {

constexpr std::string_view kIpcScheme = "ipc://";

// The socket file of an ipc:// endpoint, or "" (another transport, an
// abstract socket, ZeroMQ's "*").
std::string IpcPath(const std::string& endpoint) {
  if (!endpoint.starts_with(kIpcScheme)) return "";
  std::string path = endpoint.substr(kIpcScheme.size());
  if (path.empty() || path == "*" || path.front() == '@') return "";
  return path;
}

}  // namespace

bool IpcEndpointTaken(const std::string& endpoint) {
  const std::string path = IpcPath(endpoint);
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // Refused or missing: a stale file, or none. Accepted: a listener.
  const bool taken = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr),
                               sizeof(addr)) == 0;
  ::close(fd);
  return taken;
}

ReplicaServer::ReplicaServer(zmq::context_t* context,
                             std::string listen_endpoint,
                             ReplicaIdentity identity, int store_root_fd,
                             ReplicaHost* host, bool primary_mode,
                             std::shared_ptr<const CurveConfig> curve)
    : context_(context),
      endpoint_(std::move(listen_endpoint)),
      host_(host),
      primary_mode_(primary_mode),
      curve_(std::move(curve)),
      applier_(store_root_fd),
      identity_(std::move(identity)) {}

ReplicaServer::~ReplicaServer() {
  Stop();
  socket_.reset();
  if (ipc_file_) {
    // Not a file another server bound at the same path since.
    struct stat st;
    if (::lstat(ipc_file_->path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_dev == ipc_file_->dev && st.st_ino == ipc_file_->ino &&
        ::unlink(ipc_file_->path.c_str()) != 0) {
      meta::LogWarning("cannot remove the socket file " + ipc_file_->path +
                       ": " + std::strerror(errno));
    }
  }
}

meta::Status ReplicaServer::Bind() {
  try {
    socket_ =
        std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::router);
    socket_->set(zmq::sockopt::linger, 0);
    socket_->set(zmq::sockopt::sndhwm, 0);
    socket_->set(zmq::sockopt::rcvhwm, 0);
    socket_->set(zmq::sockopt::maxmsgsize,
                 static_cast<int64_t>(kFrameHeaderSize + kMaxPayloadBytes));
    if (curve_) {
      auto secured = ApplyCurveServer(socket_.get(), *curve_);
      if (!secured.ok()) {
        socket_.reset();
        return secured.Context("cannot secure " + endpoint_);
      }
    }
    if (IpcEndpointTaken(endpoint_)) {
      socket_.reset();
      return meta::Status::Error(
          EADDRINUSE, "cannot listen on " + endpoint_ +
                          ": Address already in use (another process "
                          "listens on that socket file)");
    }
    socket_->bind(endpoint_);
    RememberIpcFile(socket_->get(zmq::sockopt::last_endpoint));
  } catch (const zmq::error_t& e) {
    socket_.reset();
    std::string why = e.what();
    if (e.num() == ENODEV) {
      // ZeroMQ binds to an address or an interface name, never to a host
      // name it would have to look up ("localhost" included).
      why =
          "no address or interface of this host has that name (give an "
          "IP address, e.g. tcp://127.0.0.1:PORT, an interface such as "
          "tcp://eth0:PORT, or tcp://*:PORT for all)";
    } else if (e.num() == EADDRNOTAVAIL) {
      why += " (the address is not one of this host's)";
    }
    return meta::Status::Error(e.num() == EADDRINUSE ? EADDRINUSE : EINVAL,
                               "cannot listen on " + endpoint_ + ": " + why);
  }
  return meta::Status::Ok();
}

void ReplicaServer::RememberIpcFile(const std::string& bound) {
  IpcFile file;
  file.path = IpcPath(bound);
  if (file.path.empty()) return;  // not ipc, or an abstract socket (no file)
  struct stat st;
  if (::lstat(file.path.c_str(), &st) != 0) return;
  file.dev = st.st_dev;
  file.ino = st.st_ino;
  ipc_file_ = std::move(file);
}

void ReplicaServer::Start() {
  flushed_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  flusher_ = std::thread([this] { RunFlusher(); });
  thread_ = std::thread([this] { Run(); });
}

void ReplicaServer::RunFlusher() {
  std::unique_lock<std::mutex> lock(flush_mu_);
  for (;;) {
    flush_cv_.wait(lock,
                   [this] { return flusher_stop_ || !to_flush_.empty(); });
    if (to_flush_.empty()) return;  // stopping, nothing left
    std::vector<Flush> batch;
    batch.swap(to_flush_);
    lock.unlock();
    if (int64_t delay = flush_delay_ms_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    }
    for (Flush& f : batch) f.result = f.flush->Run();
    lock.lock();
    for (Flush& f : batch) FlushedLocked(std::move(f));
  }
}

void ReplicaServer::FlushedLocked(Flush f) {
  flushed_.push_back(std::move(f));
  flushes_done_ = true;
  uint64_t one = 1;
  ssize_t ignored = ::write(flushed_fd_, &one, sizeof(one));
  (void)ignored;
}

void ReplicaServer::StartFlush(const std::string& routing_id,
                               const FrameHeader& h, bool resync_end) {
  Flush f;
  f.routing_id = routing_id;
  f.store_uuid = h.store_uuid;
  f.session = h.session;
  f.seq = h.seq;
  f.resync_end = resync_end;
  {
    std::lock_guard<std::mutex> lock(mu_);
    f.resync_begun = resync_begun_;
  }
  auto begun = applier_.BeginFlush();
  if (begun.ok()) {
    f.flush.emplace(std::move(begun.value()));
  } else {
    f.result = begun.status();
  }
  std::lock_guard<std::mutex> lock(flush_mu_);
  if (f.flush) {
    to_flush_.push_back(std::move(f));
    flush_cv_.notify_one();
  } else {
    FlushedLocked(std::move(f));  // answered at once, with the error
  }
}

void ReplicaServer::AnswerFlushes() {
  uint64_t drained;
  while (::read(flushed_fd_, &drained, sizeof(drained)) > 0) {
  }
  std::vector<Flush> done;
  {
    std::lock_guard<std::mutex> lock(flush_mu_);
    done.swap(flushed_);
  }
  for (const Flush& f : done) {
    if (f.at_stop) {
      stop_flush_ended_ = true;
      stop_flushed_ = f.result.ok();  // a failure is reported at the end
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (f.session != session_) continue;  // that primary has gone
    }
    meta::Status result = f.result;
    if (!result.ok()) {
      meta::LogError("flushing the store failed: " + result.message());
    } else if (f.resync_end) {
      result = FinishResync(f.resync_begun);
    }
    Ack ack;
    ack.seq = f.seq;
    FrameHeader rh;
    rh.store_uuid = f.store_uuid;
    rh.session = f.session;
    {
      // session_ changes only on this thread: still f.session here.
      std::lock_guard<std::mutex> lock(mu_);
      rh.seq = reply_seq_++;
      if (result.ok()) {
        ++changes_applied_;
      } else {
        ++apply_errors_;
      }
    }
    if (!result.ok()) {
      ack.err = result.err();
      ack.message = result.message();
    }
    EncodeAck(rh, ack, &scratch_);
    Reply(f.routing_id, scratch_);
  }
}

meta::Status ReplicaServer::FinishResync(uint64_t resync_begun) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A later begin mark: this copy stays inconsistent until that resync
    // ends too.
    if (resync_begun != resync_begun_) return meta::Status::Ok();
  }
  meta::Status marked = host_->SetConsistent(true, 0);
  if (!marked.ok()) {
    meta::LogError(
        "resync from the primary done, but this copy cannot be "
        "recorded as consistent: " +
        marked.message());
    return marked;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    identity_.consistent = true;
    identity_.resync_id = 0;
    resyncing_ = false;
  }
  // Whatever this node wrote as a former primary is settled now.
  host_->Settled();
  {
    std::lock_guard<std::mutex> lock(mu_);
    divergent_.clear();
    namespace_diverged_ = false;
  }
  meta::LogInfo("resync from the primary done; this copy is consistent");
  return meta::Status::Ok();
}

void ReplicaServer::Stop() {
  stopping_ = true;
  flushes_done_ = true;  // so that the server thread drains the eventfd
  if (flushed_fd_ >= 0) {
    uint64_t one = 1;  // wakes the server thread's poll: it says goodbye now
    ssize_t ignored = ::write(flushed_fd_, &one, sizeof(one));
    (void)ignored;
  }
  if (thread_.joinable()) thread_.join();
  if (flushed_fd_ >= 0) {
    ::close(flushed_fd_);
    flushed_fd_ = -1;
  }
}

void ReplicaServer::SetDivergent(std::vector<DivergentExtent> divergent,
                                 bool namespace_diverged) {
  std::lock_guard<std::mutex> lock(mu_);
  divergent_ = std::move(divergent);
  namespace_diverged_ = namespace_diverged;
}

void ReplicaServer::DiscardLocal() {
  std::lock_guard<std::mutex> lock(mu_);
  discard_local_ = true;
}

ReplicaSnapshot ReplicaServer::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  ReplicaSnapshot s;
  s.endpoint = endpoint_;
  s.store_uuid = identity_.store_uuid;
  s.has_primary = session_ != 0 || primary_left_;
  s.primary_left = primary_left_;
  s.primary_fractured = primary_left_ && primary_fractured_;
  s.primary_name = primary_name_;
  s.primary_uuid = primary_uuid_;
  s.primary_endpoint = primary_endpoint_;
  if (s.has_primary) {
    s.last_seen_seconds_ago =
        std::chrono::duration<double>(Clock::now() - last_seen_).count();
  }
  s.changes_applied = changes_applied_;
  s.bytes_applied = bytes_applied_;
  s.bad_frames = bad_frames_;
  s.apply_errors = apply_errors_;
  s.consistent = identity_.consistent;
  s.resyncing = resyncing_;
  s.resync_total_bytes = resync_total_;
  s.resync_done_bytes = resync_done_;
  if (resyncing_) {
    double seconds =
        std::chrono::duration<double>(Clock::now() - resync_started_).count();
    if (seconds > 0.05) {
      s.resync_bytes_per_second =
          static_cast<uint64_t>(static_cast<double>(resync_done_) / seconds);
    }
  }
  // A note of a split brain holds while that node keeps asking (it retries
  // at least every few seconds); once resolved it stops asking.
  if (!split_brain_with_.empty() &&
      Clock::now() - split_brain_seen_ < std::chrono::seconds(15)) {
    s.split_brain_with = split_brain_with_;
    s.split_brain_endpoint = split_brain_endpoint_;
    s.split_brain_uuid = split_brain_uuid_;
    s.split_brain_seen_seconds_ago =
        std::chrono::duration<double>(Clock::now() - split_brain_seen_).count();
  }
  s.recovery_folder = recovery_folder_;
  s.discard_local = discard_local_;
  s.generations = identity_.generations;
  return s;
}

void ReplicaServer::Run() {
  int fd = -1;
  try {
    fd = socket_->get(zmq::sockopt::fd);
  } catch (const zmq::error_t& e) {
    meta::LogError(std::string("replication socket: ") + e.what());
  }
  // At a stop with a primary connected: applying goes on until the store
  // sync begun then is done, or kStopFlushWait passed (Stop()).
  std::optional<Clock::time_point> stop_deadline;
  for (;;) {
    if (stopping_) {
      if (!stop_deadline) {
        stop_deadline = Clock::now() + kStopFlushWait;
        if (paused_ || !StartStopFlush()) break;
      } else if (stop_flush_ended_ || Clock::now() >= *stop_deadline) {
        break;
      }
    }
    if (paused_) {
      ::poll(nullptr, 0, 10);
      continue;
    }
    if (flushes_done_.exchange(false)) AnswerFlushes();
    // ZMQ_FD is edge-triggered: sleep on it only once ZMQ_EVENTS says no
    // message is waiting. One frame per turn, so that each frame costs one
    // such check (a mailbox poll) and the sleep: a zmq::poll, or a receive
    // until EAGAIN, costs more system calls, and each lies on the path of
    // every acknowledgement.
    bool readable = true;
    try {
      readable = (socket_->get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
    } catch (const zmq::error_t& e) {
      meta::LogError(std::string("replication socket: ") + e.what());
    }
    if (!readable) {
      struct pollfd p[2] = {{flushed_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
      frame_poll_.Wait(p, fd >= 0 ? 2 : 1, 100);
      continue;  // a finished flush is answered at the top
    }
    do {  // one message; `continue` ends the turn
      // The routing envelope, the frame, and a write's data part.
      zmq::message_t id, body, data;
      bool has_data = false;
      size_t parts = 1;
      try {
        if (!socket_->recv(id, zmq::recv_flags::dontwait)) break;
        if (!id.more()) {
          BadFrame("a message without routing envelope");
          continue;
        }
        (void)socket_->recv(body);
        bool more = body.more();
        if (more) {
          (void)socket_->recv(data);
          has_data = true;
          more = data.more();
          ++parts;
        }
        while (more) {  // beyond any frame: drained, then refused
          zmq::message_t rest;
          (void)socket_->recv(rest);
          more = rest.more();
          ++parts;
        }
      } catch (const zmq::error_t& e) {
        meta::LogError(std::string("replication socket: ") + e.what());
        break;
      }
      if (parts > 2) {
        BadFrame("a message of " + std::to_string(parts) +
                 " parts (a frame has one, a write two)");
        continue;
      }
      if (curve_ && AuthenticatedPeerName(body).empty()) {
        // Second line of defence: ZAP admitted nothing for this connection.
        BadFrame("a frame from an unauthenticated connection");
        continue;
      }
      std::optional<std::string_view> data_part;
      if (has_data) {
        data_part.emplace(static_cast<const char*>(data.data()), data.size());
      }
      Handle(
          std::string(static_cast<const char*>(id.data()), id.size()),
          std::string_view(static_cast<const char*>(body.data()), body.size()),
          data_part);
    } while (false);
  }
  // Nothing is applied from here on. If the first sync made it in time,
  // the second one is short: the goodbye waits for it and promises that
  // everything applied is on disk. Otherwise the goodbye goes first, so
  // that the primary stops waiting for this node at once, and promises
  // nothing (the primary logs what this node applied since its last
  // store flush).
  meta::Status synced;
  uint64_t ended = 0;
  if (stop_flushed_) {
    synced = applier_.SyncAll();
    ended = SayGoodbye(/*durable=*/synced.ok());
  } else {
    ended = SayGoodbye(/*durable=*/false);
  }
  if (ended != 0) AwaitGoodbye(ended);
  {
    // Flushes queued still run (their answers no longer go out).
    std::lock_guard<std::mutex> lock(flush_mu_);
    flusher_stop_ = true;
  }
  flush_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  socket_.reset();
  if (!stop_flushed_) synced = applier_.SyncAll();
  if (!synced.ok()) {
    meta::LogError("flushing the store at stop failed: " + synced.message());
  }
  applier_.CloseAll();
}

bool ReplicaServer::StartStopFlush() {
  Flush f;
  f.at_stop = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (session_ == 0) return false;
  }
  auto begun = applier_.BeginFlush();
  if (!begun.ok()) return false;  // the sync at the end reports it
  f.flush.emplace(std::move(begun.value()));
  std::lock_guard<std::mutex> lock(flush_mu_);
  to_flush_.push_back(std::move(f));
  flush_cv_.notify_one();
  return true;
}

void ReplicaServer::BadFrame(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++bad_frames_;
  auto now = Clock::now();
  if (now - log_window_ > std::chrono::seconds(1)) {
    if (logs_in_window_ > kMaxBadFrameLogsPerSecond) {
      meta::LogWarning(
          "... " + std::to_string(logs_in_window_ - kMaxBadFrameLogsPerSecond) +
          " more bad frames not logged");
    }
    log_window_ = now;
    logs_in_window_ = 0;
  }
  if (++logs_in_window_ <= kMaxBadFrameLogsPerSecond) {
    meta::LogWarning("replication port " + endpoint_ + ": dropped " + what);
  }
}

uint64_t ReplicaServer::SayGoodbye(bool durable) {
  FrameHeader h;
  Goodbye bye{"the secondary is stopping"};
  std::string routing_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (session_ == 0) return 0;
    h.store_uuid = identity_.store_uuid;
    h.session = session_;
    h.seq = reply_seq_++;
    // Every frame up to the last one taken was applied (or its failure
    // answered, which ends the session on the primary's side first).
    if (durable) bye.durable_through = expected_seq_ - 1;
    routing_id = primary_routing_id_;
    session_ = 0;
  }
  EncodeGoodbye(h, bye, &scratch_);
  Reply(routing_id, scratch_);
  return h.session;
}

void ReplicaServer::AwaitGoodbye(uint64_t session) {
  // The primary's socket drops what it has not read once the link closes
  // (ZMQ_IMMEDIATE), so the link stays up until the primary answers. What
  // else arrives meanwhile is not applied: the primary logs it.
  const auto deadline = Clock::now() + kGoodbyeWait;
  try {
    while (Clock::now() < deadline) {
      zmq::pollitem_t item{socket_->handle(), 0, ZMQ_POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      zmq::poll(&item, 1, std::max(left, std::chrono::milliseconds(1)));
      zmq::message_t id, body;
      if (!socket_->recv(id, zmq::recv_flags::dontwait)) continue;
      bool more = id.more();
      bool first = true;
      while (more) {
        zmq::message_t part;
        (void)socket_->recv(part);
        more = part.more();
        if (first) body = std::move(part);
        first = false;
      }
      auto decoded = DecodeFrame(
          std::string_view(static_cast<const char*>(body.data()), body.size()));
      if (decoded.ok() && decoded->header.session == session &&
          std::holds_alternative<Goodbye>(decoded->body)) {
        return;
      }
    }
  } catch (const zmq::error_t& e) {
    meta::LogWarning(std::string("replication socket at stop: ") + e.what());
    return;
  }
  meta::LogWarning("the primary did not answer this node's goodbye within " +
                   std::to_string(kGoodbyeWait.count()) + " ms");
}

void ReplicaServer::Reply(const std::string& routing_id,
                          const std::string& frame) {
  try {
    zmq::message_t id(routing_id.data(), routing_id.size());
    zmq::message_t body(frame.data(), frame.size());
    (void)socket_->send(id,
                        zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    (void)socket_->send(body, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    meta::LogWarning(std::string("replication reply failed: ") + e.what());
  }
}

void ReplicaServer::HandleHello(const std::string& routing_id,
                                const FrameHeader& h, const Hello& hello) {
  HelloReply reply;
  reply.role = primary_mode_ ? Role::kPrimary : Role::kSecondary;
  bool fresh = false;
  bool discard = false;
  meta::Uuid store;
  Generations gens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reply.node_name = identity_.name;
    reply.node_uuid = identity_.node_uuid;
    store = identity_.store_uuid;
    gens = identity_.generations;
    discard = discard_local_ || (hello.flags & kHelloDiscardYours);
  }
  GenerationRelation relation =
      gens.Compare(hello.generation, hello.generation_history);
  if (hello.role != Role::kPrimary) {
    reply.reason = "this node accepts sessions only from a primary";
  } else if (!store.IsZero() && store != hello.store_uuid) {
    reply.reason = "this node holds store " + store.ToString() +
                   ", not store " + hello.store_uuid.ToString();
  } else if (primary_mode_) {
    // Two primaries meet: never mirror, say why.
    if (relation == GenerationRelation::kDiverged) {
      reply.flags |= kHelloSplitBrain;
      reply.reason = "split brain: both " + identity_.name + " and " +
                     hello.node_name +
                     " wrote as primary since their last common generation; "
                     "pick the survivor with `mirrorfs resolve`";
    } else if (relation == GenerationRelation::kPeerNewer) {
      reply.reason = "this node (" + identity_.name +
                     ") is a primary with OLDER data than " + hello.node_name +
                     "; demote it (mirrorfs demote STORE)";
    } else if (relation == GenerationRelation::kPeerOlder) {
      // Fencing: a primary that has not written since this node took over.
      reply.flags |= kHelloStale;
      reply.reason =
          "stale primary: " + hello.node_name + " has not written since " +
          identity_.name + " became primary with newer data; demote " +
          hello.node_name + " (mirrorfs demote STORE) and it resyncs from " +
          identity_.name;
    } else {
      reply.reason = "this node (" + identity_.name + ") is a primary too";
    }
  } else if (relation == GenerationRelation::kPeerOlder) {
    // Fencing: a primary whose history this copy has moved past.
    reply.flags |= kHelloStale;
    reply.reason = "stale primary: its generation " +
                   hello.generation.ToString() +
                   " is an ancestor of this copy's " + gens.current.ToString() +
                   "; demote it (mirrorfs demote STORE) and resync it from "
                   "the newer node";
  } else if (relation == GenerationRelation::kDiverged && !discard) {
    reply.flags |= kHelloSplitBrain;
    reply.reason = "split brain: " + identity_.name + " and " +
                   hello.node_name +
                   " both wrote as primary since their last common "
                   "generation; run `mirrorfs resolve STORE --discard-local` "
                   "on the loser or `--keep-local` on the survivor";
  }
  if (reply.reason.empty() && relation == GenerationRelation::kDiverged) {
    // The operator chose the other side: keep our changes aside, then take
    // a full copy of theirs.
    auto saved = host_->SaveRecovery();
    if (!saved.ok()) {
      reply.reason =
          "cannot save this node's changes before discarding "
          "them: " +
          saved.status().message();
    } else {
      fresh = true;
      meta::LogWarning("split brain resolved in favour of " + hello.node_name +
                       ": this node's changes since the split are saved in " +
                       *saved + "; a full sync follows");
      std::lock_guard<std::mutex> lock(mu_);
      discard_local_ = false;
      recovery_folder_ = *saved;
      split_brain_with_.clear();
      divergent_.clear();
      namespace_diverged_ = false;
    }
  }
  if (reply.reason.empty() && store.IsZero()) {
    auto adopted = host_->AdoptStore(hello.store_uuid);
    if (!adopted.ok()) {
      reply.reason = "cannot record the store identity: " + adopted.message();
    } else {
      store = hello.store_uuid;
      fresh = true;
      meta::LogInfo("store identity fixed: " + store.ToString() +
                    " (first primary: " + hello.node_name +
                    "); this copy gets a full sync");
    }
  }
  if (reply.reason.empty() && relation != GenerationRelation::kSame) {
    // Follow the primary's history from now on.
    Generations adopted = gens;
    adopted.Adopt(hello.generation, hello.generation_history);
    auto s = host_->SetGenerations(adopted);
    if (!s.ok()) {
      reply.reason = "cannot record the generation: " + s.message();
    } else {
      meta::LogInfo("following primary " + hello.node_name + " (" +
                    GenerationRelationName(relation) + "): generation " +
                    hello.generation.ToString());
      gens = adopted;
    }
  }
  reply.store_uuid = store;
  reply.accepted = reply.reason.empty();
  reply.generation = gens.current;
  reply.generation_history = gens.history;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reply.accepted) {
      if (fresh && identity_.consistent) {
        // Until the full sync ends, this copy is of unknown age.
        auto s = host_->SetConsistent(false, 0);
        if (!s.ok()) meta::LogError(s.message());
        identity_.consistent = false;
        identity_.resync_id = 0;
      }
      identity_.store_uuid = store;
      identity_.generations = gens;
      session_ = h.session;
      primary_left_ = false;
      primary_routing_id_ = routing_id;
      primary_name_ = hello.node_name;
      primary_uuid_ = hello.node_uuid;
      primary_endpoint_ = hello.endpoint;
      last_seen_ = Clock::now();
      expected_seq_ = 1;  // the hello was seq 0
      reply_seq_ = 1;     // and so is our reply
      manifest_.clear();
      split_brain_with_.clear();
      reply.divergent = divergent_;
      if (namespace_diverged_) reply.flags |= kHelloNamespaceDiverged;
    } else if (reply.flags & kHelloSplitBrain) {
      split_brain_with_ = hello.node_name;
      split_brain_endpoint_ = hello.endpoint;
      split_brain_uuid_ = hello.node_uuid;
      split_brain_seen_ = Clock::now();
    }
    reply.flags |= (identity_.consistent ? kHelloConsistent : 0) |
                   (fresh ? kHelloFresh : 0);
    reply.resync_id = identity_.consistent ? 0 : identity_.resync_id;
  }
  if (reply.accepted) {
    host_->PrimaryAccepted(hello.node_name, hello.node_uuid, hello.endpoint);
    meta::LogInfo("primary " + hello.node_name + " " +
                  hello.node_uuid.ToString() + " connected (session " +
                  std::to_string(h.session) + ")");
  } else {
    std::string line =
        "refused primary " + hello.node_name + ": " + reply.reason;
    bool repeat;
    {
      std::lock_guard<std::mutex> lock(mu_);
      repeat = line == last_refusal_;
      last_refusal_ = line;
    }
    if (!repeat) meta::LogWarning(line);
  }
  FrameHeader rh;
  rh.store_uuid = store;
  rh.session = h.session;
  EncodeHelloReply(rh, reply, &scratch_);
  Reply(routing_id, scratch_);
}

void ReplicaServer::Handle(const std::string& routing_id,
                           std::string_view bytes,
                           std::optional<std::string_view> data) {
  auto decoded = DecodeFrame(bytes, data);
  if (!decoded.ok()) {
    BadFrame("a bad frame (" + std::to_string(bytes.size()) +
             " bytes): " + decoded.status().message());
    return;
  }
  const FrameHeader& h = decoded->header;
  meta::Uuid store;
  uint64_t session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    store = identity_.store_uuid;
    session = session_;
  }

  if (auto* hello = std::get_if<Hello>(&decoded->body)) {
    HandleHello(routing_id, h, *hello);
    return;
  }

  if (store.IsZero() || h.store_uuid != store) {
    BadFrame("a " + std::string(FrameTypeName(h.type)) + " frame for store " +
             h.store_uuid.ToString() + " (this node holds " +
             (store.IsZero() ? std::string("no store identity yet")
                             : store.ToString()) +
             ")");
    FrameHeader eh;
    eh.store_uuid = store;
    eh.session = h.session;
    eh.seq = h.seq;
    EncodeError(eh, ErrorFrame{EXDEV, "frame for another store"}, &scratch_);
    Reply(routing_id, scratch_);
    return;
  }
  if (h.session != session || session == 0) {
    BadFrame("a " + std::string(FrameTypeName(h.type)) +
             " frame of an old or unknown session");
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_seen_ = Clock::now();
  }
  FrameHeader rh;
  rh.store_uuid = store;
  rh.session = session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (h.seq != expected_seq_) {
      // Frames were lost or duplicated in this session (WIRE_FORMAT.md):
      // never apply past a gap; end the session, the primary starts afresh.
      std::string why = "sequence gap: expected frame " +
                        std::to_string(expected_seq_) + ", got " +
                        std::to_string(h.seq);
      session_ = 0;
      rh.seq = reply_seq_++;
      EncodeError(rh, ErrorFrame{ESTALE, why}, &scratch_);
      meta::LogWarning("primary " + primary_name_ + ": " + why +
                       "; session ended");
      Reply(routing_id, scratch_);
      return;
    }
    ++expected_seq_;
  }
  // Our replies are numbered as they are sent: a store flush is answered
  // later, by AnswerFlushes, after frames that came behind it.
  auto numbered = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    rh.seq = reply_seq_++;
  };

  if (auto* change = std::get_if<meta::Change>(&decoded->body)) {
    if (change->kind == meta::ChangeKind::kFsync && change->path.empty()) {
      StartFlush(routing_id, h);  // answered once the store is synced
      return;
    }
    auto applied = applier_.Apply(*change);
    Ack ack;
    ack.seq = h.seq;
    if (!applied.ok() && (change->flags & meta::kReplay)) {
      // A replayed change the copy may already have. Not fatal, but the
      // primary can no longer trust its log for this copy's data: the ack
      // says so (err 0 with a message) and it compares every block.
      meta::LogWarning("replayed change not applied: " + applied.message() +
                       "; asking the primary for a full comparison");
      ack.message = "replay not applied: " + applied.message();
      applied = meta::Status::Ok();
    }
    if (!applied.ok()) {
      ack.err = applied.err();
      ack.message = applied.message();
      meta::LogError("applying a change failed: " + applied.message());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (applied.ok()) {
        ++changes_applied_;
        bytes_applied_ +=
            change->kind == meta::ChangeKind::kWrite ? change->length : 0;
        if (resyncing_ && change->kind == meta::ChangeKind::kWrite) {
          resync_done_ += change->length;
        }
      } else {
        ++apply_errors_;
      }
    }
    numbered();
    EncodeAck(rh, ack, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* part = std::get_if<Manifest>(&decoded->body)) {
    manifest_.insert(manifest_.end(), part->entries.begin(),
                     part->entries.end());
    Ack ack;
    ack.seq = h.seq;
    if (part->last) {
      auto reconciled = applier_.Reconcile(manifest_);
      meta::LogInfo("namespace reconciled with the primary: " +
                    std::to_string(manifest_.size()) + " entries" +
                    (reconciled.ok() ? "" : "; " + reconciled.message()));
      manifest_.clear();
      if (!reconciled.ok()) {
        ack.err = reconciled.err();
        ack.message = reconciled.message();
      }
    }
    numbered();
    EncodeAck(rh, ack, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* mark = std::get_if<ResyncMark>(&decoded->body)) {
    if (!mark->begin) {
      // Consistent means on disk: the store is synced first, on the
      // flusher thread, while later frames go on being applied.
      StartFlush(routing_id, h, /*resync_end=*/true);
      return;
    }
    Ack ack;
    ack.seq = h.seq;
    meta::Status s = host_->SetConsistent(false, mark->resync_id);
    if (!s.ok()) {
      ack.err = s.err();
      ack.message = s.message();
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      identity_.consistent = false;
      identity_.resync_id = mark->resync_id;
      resyncing_ = true;
      resync_total_ = mark->total_bytes;
      resync_done_ = 0;
      resync_started_ = Clock::now();
      ++resync_begun_;
    }
    meta::LogInfo("resync from the primary started (" +
                  std::to_string(mark->total_bytes) +
                  " bytes); this copy is inconsistent until it ends");
    numbered();
    EncodeAck(rh, ack, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* sums = std::get_if<BlockSums>(&decoded->body)) {
    BlockDiff reply;
    reply.seq = h.seq;
    auto diff = applier_.DiffBlocks(sums->path, sums->offset, sums->block_size,
                                    sums->length, sums->sums, &reply.size);
    if (diff.ok()) {
      reply.differing = std::move(diff.value());
    } else {
      for (uint32_t i = 0; i < sums->sums.size(); ++i) {
        reply.differing.push_back(i);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (resyncing_) {
        resync_done_ +=
            sums->length -
            std::min<uint64_t>(sums->length, uint64_t{reply.differing.size()} *
                                                 sums->block_size);
      }
    }
    numbered();
    EncodeBlockDiff(rh, reply, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* list = std::get_if<ListRequest>(&decoded->body)) {
    Listing reply;
    reply.seq = h.seq;
    auto listed = applier_.List(list->after, kMaxListingEntries,
                                kMaxListingBytes, &reply.entries, &reply.last);
    if (!listed.ok()) {
      // Not a bad frame: this store cannot be read. The primary's verify
      // fails with the reason (an error frame ends the session).
      meta::LogError("verify: " + listed.message());
      numbered();
      EncodeError(
          rh,
          ErrorFrame{listed.err() > 0 ? listed.err() : EIO,
                     "cannot list the store for verify: " + listed.message()},
          &scratch_);
      Reply(routing_id, scratch_);
      return;
    }
    numbered();
    EncodeListing(rh, reply, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* update = std::get_if<GenerationUpdate>(&decoded->body)) {
    // Stored before any later frame of the session is applied: the writes
    // that follow belong to the new history (kill -9 after one of them and
    // this copy still counts as the primary's successor, not a split
    // brain).
    Ack ack;
    ack.seq = h.seq;
    Generations gens;
    std::string primary;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gens = identity_.generations;
      primary = primary_name_;
    }
    GenerationRelation relation =
        gens.Compare(update->current, update->history);
    meta::Status s;
    if (relation == GenerationRelation::kPeerNewer ||
        relation == GenerationRelation::kUnknown) {
      Generations adopted = gens;
      adopted.Adopt(update->current, update->history);
      s = host_->SetGenerations(adopted).Context(
          "cannot record the generation");
      if (s.ok()) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          identity_.generations = adopted;
        }
        meta::LogInfo("following primary " + primary +
                      " into its new generation " + update->current.ToString());
      }
    } else if (relation == GenerationRelation::kDiverged) {
      s = meta::Status::Error(
          EPROTO, "the primary's new generation " + update->current.ToString() +
                      " does not follow this copy's " +
                      gens.current.ToString() + " (" +
                      GenerationRelationName(relation) + ")");
    }
    // kSame, or kPeerOlder: an announcement queued late (a session that
    // came up while the primary started two), already followed.
    if (!s.ok()) {
      // Nothing more of this session is applied: the primary logs what
      // follows and its next hello carries the generation.
      ack.err = s.err() > 0 ? s.err() : EIO;
      ack.message = s.message();
      meta::LogError("primary " + primary + ": " + s.message() +
                     "; session ended");
      std::lock_guard<std::mutex> lock(mu_);
      session_ = 0;
    }
    numbered();
    EncodeAck(rh, ack, &scratch_);
    Reply(routing_id, scratch_);
  } else if (auto* ping = std::get_if<Ping>(&decoded->body)) {
    numbered();
    EncodePong(rh, Pong{ping->nonce}, &scratch_);
    Reply(routing_id, scratch_);
  } else if (std::holds_alternative<Pong>(decoded->body)) {
    // Liveness only.
  } else if (auto* bye = std::get_if<Goodbye>(&decoded->body)) {
    // The primary stopped on purpose: it is gone now, not after a timeout
    // (a promote need not wait). Its next hello opens a new session.
    std::lock_guard<std::mutex> lock(mu_);
    session_ = 0;
    primary_left_ = true;
    primary_fractured_ = bye->reason == kGoodbyeFractured;
    meta::LogInfo("primary " + primary_name_ + " left: " + bye->Said());
  } else {
    BadFrame("an unexpected " + std::string(FrameTypeName(h.type)) + " frame");
  }
}

}  // namespace mirrorfs::sync
