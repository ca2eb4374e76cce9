#include "sync/peer_session.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <zmq.hpp>

#include "meta/log.h"

namespace mirrorfs::sync {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

void FreeFrame(void* /*data*/, void* hint) {
  delete static_cast<std::string*>(hint);
}

uint64_t NewSessionEpoch() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return v == 0 ? 1 : v;
}

std::string Seconds(milliseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", d.count() / 1000.0);
  return buf;
}

std::string Size(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1u << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / 1048576.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu bytes",
                  static_cast<unsigned long long>(bytes));
  }
  return buf;
}

// A change worth logging if lost (not a replay, which is logged already).
bool Loggable(const meta::Change& c) {
  return c.kind != meta::ChangeKind::kFsync && !(c.flags & meta::kReplay);
}

// Changes after which a path may name another file than before.
bool NameChange(meta::ChangeKind kind) {
  using meta::ChangeKind;
  return kind == ChangeKind::kCreate || kind == ChangeKind::kMkdir ||
         kind == ChangeKind::kSymlink || kind == ChangeKind::kUnlink ||
         kind == ChangeKind::kRmdir || kind == ChangeKind::kRename;
}

}  // namespace

const char* PeerStateName(PeerState state) {
  switch (state) {
    case PeerState::kConnecting:
      return "connecting";
    case PeerState::kConnected:
      return "connected";
    case PeerState::kSyncing:
      return "syncing";
    case PeerState::kDisconnected:
      return "disconnected";
    case PeerState::kFractured:
      return "fractured";
    case PeerState::kSplitBrain:
      return "split-brain";
  }
  return "disconnected";
}

PeerSession::PeerSession(zmq::context_t* context, std::string name,
                         std::string endpoint, LocalIdentity local,
                         SessionOptions options,
                         std::unique_ptr<FractureLog> log, meta::Source* source,
                         GenerationKeeper* generations,
                         std::function<void(const PeerHello&)> on_hello)
    : context_(context),
      name_(std::move(name)),
      endpoint_(std::move(endpoint)),
      local_(std::move(local)),
      options_(options),
      log_(std::move(log)),
      source_(source),
      generations_(generations),
      on_hello_(std::move(on_hello)),
      writer_poll_(options_.busy_poll) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  writer_wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

PeerSession::~PeerSession() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (writer_wake_fd_ >= 0) ::close(writer_wake_fd_);
}

void PeerSession::Start() {
  thread_ = std::thread([this] { Run(); });
}

void PeerSession::Stop() {
  stopping_ = true;
  Wake();
  if (thread_.joinable()) thread_.join();
}

namespace {

// How long a stopping primary's socket may hold its goodbye for the peer.
constexpr std::chrono::milliseconds kGoodbyeLinger{500};

// Why a session restarts on purpose (Resync()).
constexpr char kResyncRequested[] = "resync requested";

// A socket monitor on a connecting socket that reports what ZeroMQ retries
// silently: a failed TCP connection attempt (refused), so that the first
// attempt, which a mount waits for, ends at once when the peer's node is
// down instead of after the peer timeout; and a failed security handshake
// (one node with --key, the other without; a key the peer does not
// accept), so that the peer's state and the log say why. Destroy it before
// the socket.
class RefusalWatch {
 public:
  RefusalWatch(zmq::context_t* context, zmq::socket_t* socket, uint64_t session)
      : socket_(socket) {
    const std::string address =
        "inproc://mirrorfs-connect-" + std::to_string(session);
    if (zmq_socket_monitor(socket->handle(), address.c_str(),
                           ZMQ_EVENT_CONNECT_RETRIED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
      return;  // no watch: the attempt waits its timeout, as before
    }
    watching_ = true;
    try {
      monitor_ =
          std::make_unique<zmq::socket_t>(*context, zmq::socket_type::pair);
      monitor_->set(zmq::sockopt::linger, 0);
      monitor_->connect(address);
    } catch (const zmq::error_t&) {
      monitor_.reset();
    }
  }
  ~RefusalWatch() {
    if (watching_) zmq_socket_monitor(socket_->handle(), nullptr, 0);
  }
  RefusalWatch(const RefusalWatch&) = delete;
  RefusalWatch& operator=(const RefusalWatch&) = delete;

  // For zmq::poll; null without a monitor.
  void* handle() const { return monitor_ ? monitor_->handle() : nullptr; }

  // Reads the events so far. Never blocks.
  void Poll() {
    if (!monitor_) return;
    try {
      zmq::message_t event;
      while (monitor_->recv(event, zmq::recv_flags::dontwait)) {
        uint16_t id = 0;  // part 1: u16 event, u32 value; part 2: endpoint
        uint32_t value = 0;
        if (event.size() >= 6) {
          std::memcpy(&id, event.data(), 2);
          std::memcpy(&value, static_cast<const char*>(event.data()) + 2, 4);
        }
        if (id == ZMQ_EVENT_CONNECT_RETRIED) refused_ = true;
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
          handshake_ =
              "the peer refused this node's key (is it in the "
              "peer's authorized keys file under this node's name?)";
        } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                   value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
          handshake_ =
              "the peer uses another security mechanism: one of "
              "the two nodes runs with --key, the other without";
        } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
                   id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
          handshake_ =
              "the connection closed during the security handshake: one "
              "of the two nodes may run with --key and the other without, "
              "or the peer may not accept this node's key";
        }
        while (event.more()) {
          zmq::message_t rest;
          (void)monitor_->recv(rest);
          event = std::move(rest);
        }
      }
    } catch (const zmq::error_t&) {
    }
  }
  // A failed TCP connection attempt was seen.
  bool refused() const { return refused_; }
  // Why the security handshake failed; empty if it did not.
  const std::string& handshake_failure() const { return handshake_; }

 private:
  zmq::socket_t* socket_;
  bool watching_ = false;
  std::unique_ptr<zmq::socket_t> monitor_;
  bool refused_ = false;
  std::string handshake_;
};

// The seq of the request (block-diff, listing) `frame` answers; 0 if it
// answers none (seq 0 is a session's hello, never a request).
uint64_t RequestAnswered(const DecodedFrame& frame) {
  if (auto* diff = std::get_if<BlockDiff>(&frame.body)) return diff->seq;
  if (auto* listing = std::get_if<Listing>(&frame.body)) return listing->seq;
  return 0;
}

// A handler of the frame answering a request, for `on_reply` of the
// expected kind.
template <typename Reply>
std::function<void(const DecodedFrame&)> OnReply(
    std::function<void(const Reply&)> on_reply) {
  return [on_reply = std::move(on_reply)](const DecodedFrame& frame) {
    if (auto* reply = std::get_if<Reply>(&frame.body)) on_reply(*reply);
  };
}

void Signal(int event_fd) {
  uint64_t one = 1;
  ssize_t ignored = ::write(event_fd, &one, sizeof(one));
  (void)ignored;
}

void Drain(int event_fd) {
  uint64_t drained;
  while (::read(event_fd, &drained, sizeof(drained)) > 0) {
  }
}

}  // namespace

void PeerSession::Wake() { Signal(wake_fd_); }

bool PeerSession::Push(
    const std::function<void(const FrameHeader&, std::string*)>& encode,
    const std::shared_ptr<meta::Completion>& completion,
    const meta::Change* record, ReplyHandler on_reply, bool attended,
    FrameData* data) {
  // The seq must follow queue order exactly (receivers refuse gaps), so it
  // is taken and the frame encoded under mu_.
  auto* frame = new std::string();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!up_) {
      delete frame;
      return false;
    }
    FrameHeader header;
    header.store_uuid = local_.store_uuid;
    header.session = session_;
    header.seq = next_seq_++;
    encode(header, frame);
    const bool store_flush = record != nullptr &&
                             record->kind == meta::ChangeKind::kFsync &&
                             record->path.empty();
    queue_.push_back(
        Outgoing{header.seq, frame, completion, std::move(on_reply), attended,
                 data ? data->Take() : FrameData::Ref{}, store_flush});
    // Guarantee 3: what the peer applies stays at risk (its page cache)
    // until a later store flush of the peer completes, or for a file's
    // data, a later fsync of that file (DrainLocked). An O_DSYNC write is
    // one: the peer fdatasyncs the file after it.
    if (record != nullptr && Loggable(*record)) {
      unflushed_.push_back(Unflushed{header.seq, *record});
      unflushed_.back().change.data = nullptr;
      if (NameChange(record->kind)) last_name_change_seq_ = header.seq;
      if (record->kind == meta::ChangeKind::kWrite &&
          (record->flags & meta::kDsyncWrite)) {
        file_flushes_[header.seq] =
            FileFlush{record->path, last_name_change_seq_};
      }
    } else if (store_flush && !unflushed_.empty()) {
      flushing_[header.seq].swap(unflushed_);
    } else if (record != nullptr && record->kind == meta::ChangeKind::kFsync &&
               !record->path.empty()) {
      file_flushes_[header.seq] =
          FileFlush{record->path, last_name_change_seq_};
    }
  }
  if (std::this_thread::get_id() == session_thread_) {
    Wake();  // a ping: the session loop sends it
  } else {
    SendQueued();
  }
  return true;
}

void PeerSession::SendQueued() {
  std::lock_guard<std::mutex> lock(socket_mu_);
  if (!direct_) {
    Wake();  // connecting or tearing down: the session thread decides
    return;
  }
  if (!SendQueuedLocked()) {
    // The frames stay queued; the session thread finds the link lost and
    // logs them.
    Wake();
    return;
  }
  if (receiver_ != Receiver::kNone) {
    WakeReceiverIfReadable();
  } else if (SessionMustReceiveLocked()) {
    Wake();  // frames nobody Await()s: the session thread receives
  }
}

bool PeerSession::SendQueuedLocked() {
  {
    // Swapped, not copied: both vectors keep their capacity, so that the
    // steady state allocates nothing here.
    std::lock_guard<std::mutex> lock(mu_);
    sending_.swap(queue_);
  }
  if (sending_.empty()) return true;
  auto now = Clock::now();
  uint64_t changes = 0;
  uint64_t bytes = 0;
  size_t sent = 0;
  for (; sent < sending_.size(); ++sent) {
    Outgoing& out = sending_[sent];
    std::string* frame = out.frame;
    if (frame == nullptr) break;  // an earlier send of it failed
    size_t size = frame->size() + out.data.size;
    const bool bulky = out.data.size > kBusyPollMaxBytes;
    out.frame = nullptr;
    if (!SendFrame(frame, &out.data)) break;  // frees them either way
    if (out.completion) {
      in_flight_[out.seq] = InFlight{std::move(out.completion), now,
                                     std::move(out.on_reply),   out.attended,
                                     out.store_flush,           bulky};
      if (!out.attended) ++unattended_;
      ++changes;
      bytes += size;
    }
  }
  const bool ok = sent == sending_.size();
  std::lock_guard<std::mutex> lock(mu_);
  changes_sent_ += changes;
  bytes_sent_ += bytes;
  // Nothing may follow a frame that was not sent: the rest goes back in
  // front, in order, for TearDown to log and release.
  queue_.insert(queue_.begin(),
                std::make_move_iterator(sending_.begin() + sent),
                std::make_move_iterator(sending_.end()));
  sending_.clear();
  return ok;
}

bool PeerSession::InputWaitingLocked() {
  try {
    return (socket_->get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
  } catch (const zmq::error_t&) {
    return false;  // the next send or receive finds the socket broken
  }
}

void PeerSession::WakeReceiverIfReadable() {
  bool readable = true;
  try {
    readable = (socket_->get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
  } catch (const zmq::error_t&) {
  }
  if (!readable) return;
  if (receiver_ == Receiver::kWriter) {
    Signal(writer_wake_fd_);
  } else {
    Wake();
  }
}

bool PeerSession::PendingLocked(const meta::Completion* completion,
                                bool* bulky) {
  for (const auto& [seq, f] : in_flight_) {
    if (f.completion.get() == completion) {
      if (bulky) *bulky = f.bulky;
      return true;
    }
  }
  // sending_ is empty whenever socket_mu_ is free.
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& out : queue_) {
    if (out.completion.get() == completion) return true;
  }
  return false;
}

void PeerSession::Await(meta::Completion* completion) {
  std::unique_lock<std::mutex> lock(socket_mu_);
  while (PendingLocked(completion)) {
    if (receiver_ == Receiver::kNone && direct_ && rx_lost_.empty()) {
      receiver_ = Receiver::kWriter;
      ReceiveLocked(completion, &lock);
      ReleaseReceiverLocked();
      continue;
    }
    // Another thread receives: it completes our frames (and kicks us), or
    // hands the role over (kicks us). TearDown kicks every waiter too.
    rx_waiting_.push_back(completion);
    lock.unlock();
    completion->WaitDoneOrKicked();
    lock.lock();
    rx_waiting_.erase(
        std::find(rx_waiting_.begin(), rx_waiting_.end(), completion));
  }
  // We may have been kicked to take the role over after our frames were
  // answered: pass it on.
  if (receiver_ == Receiver::kNone && direct_ && !rx_waiting_.empty()) {
    rx_waiting_.front()->Kick();
  }
}

void PeerSession::ReceiveLocked(const meta::Completion* completion,
                                std::unique_lock<std::mutex>* lock) {
  // ZMQ_EVENTS first, then one frame at a time: a write costs two mailbox
  // checks (before sleeping, after waking) and returns as soon as its own
  // answer is in; what else is waiting is for the next receiver, who looks
  // at ZMQ_EVENTS before sleeping.
  while (direct_ && rx_lost_.empty()) {
    std::string lost;
    bool readable = false;
    try {
      readable = (socket_->get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
    } catch (const zmq::error_t& e) {
      lost = std::string("socket failed: ") + e.what();
    }
    if (lost.empty() && readable) lost = DrainLocked(/*max_frames=*/1);
    if (!lost.empty()) {
      rx_lost_ = lost;  // the session thread drops the link
      Wake();
      return;
    }
    bool bulky = false;
    if (!PendingLocked(completion, &bulky)) return;
    if (readable) continue;
    struct pollfd fds[2] = {{zmq_fd_, POLLIN, 0}, {writer_wake_fd_, POLLIN, 0}};
    lock->unlock();
    // Bounded: the session thread watches for timeouts meanwhile and wakes
    // this thread through writer_wake_fd_ when it drops the link. A large
    // write's answer waits for its bytes to be copied on both nodes: the
    // CPUs are busy then, and a spinning thread would only take from them.
    writer_poll_.Wait(fds, 2, 100, /*may_spin=*/!bulky);
    if (fds[1].revents & POLLIN) Drain(writer_wake_fd_);
    lock->lock();
  }
}

void PeerSession::ReleaseReceiverLocked() {
  receiver_ = Receiver::kNone;
  rx_cv_.notify_all();
  if (!direct_) return;  // TearDown kicks every waiter
  if (!rx_waiting_.empty()) {
    rx_waiting_.front()->Kick();
  } else if (SessionMustReceiveLocked() || !rx_lost_.empty()) {
    Wake();
  }
}

std::string PeerSession::DrainLocked(int max_frames) {
  for (int taken = 0; taken < max_frames; ++taken) {
    zmq::message_t msg;
    zmq::recv_result_t got;
    try {
      got = socket_->recv(msg, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      return std::string("receive failed: ") + e.what();
    }
    if (!got) return "";
    if (msg.more()) {
      // A secondary's frames are single-part: take the rest, drop it all.
      try {
        for (bool more = true; more;) {
          zmq::message_t rest;
          (void)socket_->recv(rest);
          more = rest.more();
        }
      } catch (const zmq::error_t& e) {
        return std::string("receive failed: ") + e.what();
      }
      meta::LogWarning("peer " + name_ + ": dropped a multi-part message");
      continue;
    }
    auto decoded = DecodeFrame(
        std::string_view(static_cast<const char*>(msg.data()), msg.size()));
    if (!decoded.ok()) {
      meta::LogWarning("peer " + name_ +
                       ": dropped a bad frame: " + decoded.status().message());
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (decoded->header.session != session_) continue;  // stale
      last_seen_ = Clock::now();
    }
    awaiting_pong_ = false;  // any frame of the session shows it is alive
    if (auto* err = std::get_if<ErrorFrame>(&decoded->body)) {
      return "it refused a frame: " + err->message;
    }
    // Answers are numbered too (WIRE_FORMAT.md): past a gap, answers were
    // lost or duplicated, and none after it is trusted.
    if (decoded->header.seq != next_reply_seq_) {
      return "its answers are out of sequence: expected " +
             std::to_string(next_reply_seq_) + ", got " +
             std::to_string(decoded->header.seq);
    }
    ++next_reply_seq_;
    if (auto* bye = std::get_if<Goodbye>(&decoded->body)) {
      // A clean stop of the peer: lost now, not after the peer timeout,
      // so that no application write waits for it. Answered (Serve).
      peer_left_ = true;
      if (bye->durable_through == 0) return "it left (" + bye->Said() + ")";
      // It synced its store first: the changes it answered up to there
      // are on its disk and need no resync. Only answered ones: its word
      // never covers a frame it has not answered (all but store flushes
      // are answered in order).
      const uint64_t through = std::min(bye->durable_through, last_answered_);
      auto durable = [&](const Unflushed& u) {
        return u.seq <= through && !in_flight_.contains(u.seq);
      };
      std::lock_guard<std::mutex> lock(mu_);
      std::erase_if(unflushed_, durable);
      for (auto& [seq, changes] : flushing_) std::erase_if(changes, durable);
      return "it left (" + bye->Said() + "), with what it applied on its disk";
    }
    std::map<uint64_t, InFlight>::iterator it;
    if (auto* ack = std::get_if<Ack>(&decoded->body)) {
      it = in_flight_.find(ack->seq);
      if (it == in_flight_.end()) continue;
      if (ack->err != 0) {
        // Left in flight: TearDown logs it.
        return "it failed to apply a change: " + ack->message;
      }
      if (!ack->message.empty()) {
        // A replay the peer could not apply: its copy may differ beyond
        // what the log says, so every block is compared.
        meta::LogWarning("peer " + name_ + ": " + ack->message +
                         "; a full sync will compare every block");
        auto s = log_->SetFullSync(true);
        if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
      }
      {
        // A completed store flush: what it covered is on the peer's disk.
        // A completed fsync of a file (or O_DSYNC write): that file's data
        // changes up to it.
        std::lock_guard<std::mutex> lock(mu_);
        flushing_.erase(ack->seq);
        auto file = file_flushes_.find(ack->seq);
        if (file != file_flushes_.end()) {
          const FileFlush& f = file->second;
          auto durable = [&](const Unflushed& u) {
            return u.seq > f.since && u.seq <= ack->seq &&
                   meta::ChangesFileData(u.change.kind) &&
                   u.change.path == f.path;
          };
          std::erase_if(unflushed_, durable);
          for (auto& [seq, changes] : flushing_)
            std::erase_if(changes, durable);
          file_flushes_.erase(file);
        }
      }
    } else if (uint64_t seq = RequestAnswered(*decoded); seq != 0) {
      it = in_flight_.find(seq);
      if (it == in_flight_.end()) continue;
      if (it->second.on_reply) it->second.on_reply(*decoded);
    } else {
      continue;  // a pong, or anything else of the session: liveness only
    }
    // Answered: no longer in flight, then done (a waiter that wakes finds
    // it gone); a writer waiting for its frames here is kicked, since its
    // completion may still wait for other peers.
    std::shared_ptr<meta::Completion> completion =
        std::move(it->second.completion);
    if (!it->second.attended) --unattended_;
    last_answered_ = std::max(last_answered_, it->first);
    in_flight_.erase(it);
    completion->Done();
    if (std::find(rx_waiting_.begin(), rx_waiting_.end(), completion.get()) !=
        rx_waiting_.end()) {
      completion->Kick();
    }
  }
  return "";
}

bool PeerSession::Enqueue(const meta::Change& change,
                          const std::shared_ptr<meta::Completion>& completion,
                          bool* defer_log_sync, bool attended,
                          FrameData* data) {
  bool live;
  bool syncing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live = up_ && accept_live_;
    syncing = state_ == PeerState::kSyncing;
  }
  if (live) {
    if (syncing && (change.kind == meta::ChangeKind::kRename ||
                    change.kind == meta::ChangeKind::kUnlink ||
                    change.kind == meta::ChangeKind::kRmdir)) {
      // Mirrored live, but the resync's log must follow the names.
      log_->Follow(change);
    }
    if (PushChange(change, completion, attended, data)) return true;
  }
  if (change.kind == meta::ChangeKind::kFsync) {
    // Data extents are covered by the write-intent journal until they are
    // durable here; only what it does not cover needs a sync now.
    if (!log_->ClaimSyncForFsync()) return false;
    if (defer_log_sync != nullptr) {
      *defer_log_sync = true;
      return false;
    }
  }
  auto s = change.kind == meta::ChangeKind::kFsync ? log_->MakeDurable()
                                                   : log_->Record(change);
  if (!s.ok()) {
    meta::LogError("peer " + name_ +
                   ": recording a missed change failed: " + s.message());
  }
  return false;
}

bool PeerSession::EnqueueResync(
    const meta::Change& change,
    const std::shared_ptr<meta::Completion>& completion, FrameData* data) {
  return PushChange(change, completion, /*attended=*/false, data);
}

bool PeerSession::PushChange(
    const meta::Change& change,
    const std::shared_ptr<meta::Completion>& completion, bool attended,
    FrameData* data) {
  if (change.kind != meta::ChangeKind::kWrite) {
    return Push([&](const FrameHeader& h,
                    std::string* out) { EncodeChange(h, change, out); },
                completion, &change, nullptr, attended);
  }
  std::optional<FrameData> own;
  if (data == nullptr) {
    data = &own.emplace(change.data, change.data ? change.length : 0, nullptr);
  }
  const uint32_t crc = data->crc();  // once per write, outside mu_
  data->Prepare();
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeChange(h, change, crc, out); },
              completion, &change, nullptr, attended, data);
}

bool PeerSession::EnqueueManifest(
    const Manifest& manifest,
    const std::shared_ptr<meta::Completion>& completion) {
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeManifest(h, manifest, out); },
              completion, nullptr, nullptr);
}

bool PeerSession::EnqueueMark(
    const ResyncMark& mark,
    const std::shared_ptr<meta::Completion>& completion) {
  // The peer answers an end mark once its whole store is synced: it counts
  // as a store flush (its limit; what the peer applied before it is no
  // longer at risk once it is answered).
  static const meta::Change kStoreFlush = [] {
    meta::Change c;
    c.kind = meta::ChangeKind::kFsync;  // no path: the whole store
    return c;
  }();
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeResyncMark(h, mark, out); },
              completion, mark.begin ? nullptr : &kStoreFlush, nullptr);
}

bool PeerSession::RequestBlockDiff(
    const BlockSums& sums, std::function<void(const BlockDiff&)> on_reply,
    const std::shared_ptr<meta::Completion>& completion) {
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeBlockSums(h, sums, out); },
              completion, nullptr, OnReply(std::move(on_reply)));
}

bool PeerSession::RequestListing(
    const ListRequest& request, std::function<void(const Listing&)> on_reply,
    const std::shared_ptr<meta::Completion>& completion) {
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeList(h, request, out); },
              completion, nullptr, OnReply(std::move(on_reply)));
}

void PeerSession::AcceptLive(bool syncing) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!up_) return;
  accept_live_ = true;
  state_ = syncing ? PeerState::kSyncing : PeerState::kConnected;
  reason_.clear();
  first_attempt_done_ = true;
  state_cv_.notify_all();
}

void PeerSession::ResyncFinished(bool ok, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      if (up_) state_ = PeerState::kConnected;
      first_attempt_done_ = true;
      state_cv_.notify_all();
      return;
    }
    resync_failure_ = why;
  }
  Wake();
}

bool PeerSession::WaitConnected(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  state_cv_.wait_for(lock, timeout, [this] { return first_attempt_done_; });
  return accept_live_;
}

void PeerSession::Fracture() {
  meta::Change flush;
  flush.kind = meta::ChangeKind::kFsync;  // no path: the whole store
  auto flushed = std::make_shared<meta::Completion>(1);
  if (Enqueue(flush, flushed)) {
    // Answered or not, the fracture goes on: what is still unflushed then
    // (a slow peer's, or writes queued meanwhile) is logged by TearDown.
    (void)flushed->WaitFor(std::min<std::chrono::milliseconds>(
        options_.peer_timeout, std::chrono::seconds(10)));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fractured_ = true;
  }
  Wake();
}

void PeerSession::Resync() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    resync_requested_ = true;
  }
  Rejoin();
}

bool PeerSession::FollowsLive() const {
  std::lock_guard<std::mutex> lock(mu_);
  return up_ && !fractured_ && !resync_requested_ &&
         (state_ == PeerState::kConnected || state_ == PeerState::kSyncing);
}

bool PeerSession::AnnounceGeneration(const Generations& started) {
  GenerationUpdate update{started.current, started.history};
  // Nobody waits for the answer: the peer applies frames in order, and one
  // that cannot store it ends the session (its answer fails), so that what
  // follows is logged for it.
  return Push([&](const FrameHeader& h,
                  std::string* out) { EncodeGeneration(h, update, out); },
              std::make_shared<meta::Completion>(1), nullptr, nullptr);
}

void PeerSession::DiscardPeerChanges() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    discard_peer_ = true;
  }
  Rejoin();
}

void PeerSession::Diverged(const meta::Change& change) {
  meta::Change record = change;
  record.data = nullptr;
  meta::Status s = log_->Record(record);
  if (s.ok()) s = log_->MakeDurable();
  if (!s.ok()) {
    meta::LogError("peer " + name_ + ": " + s.message());
    return;
  }
  bool live;
  bool requested;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live = up_ && !fractured_;
    requested = resync_requested_;
  }
  // A peer not mirrored live has it logged as missed already; one restart
  // at a time (a full disk fails every write that follows), one log line.
  if (!live || requested) return;
  meta::LogWarning("peer " + name_ + ": " + record.path + " [" +
                   std::to_string(record.offset) + ", +" +
                   std::to_string(record.length) +
                   ") failed here after it was sent; a resync sends this "
                   "node's data there now");
  Resync();
}

void PeerSession::Rejoin() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    fractured_ = false;
  }
  retry_now_ = true;
  Wake();
}

PeerSnapshot PeerSession::Snapshot() const {
  PeerSnapshot s;
  size_t in_flight;
  {
    std::lock_guard<std::mutex> lock(socket_mu_);
    in_flight = in_flight_.size();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.name = name_;
    s.endpoint = endpoint_;
    s.state = state_;
    s.reason = reason_;
    s.node_uuid = hello_.node_uuid;
    if (seen_) {
      s.last_seen_seconds_ago =
          std::chrono::duration<double>(Clock::now() - last_seen_).count();
    }
    s.changes_sent = changes_sent_;
    s.bytes_sent = bytes_sent_;
    s.in_flight = in_flight + queue_.size();
    // Zeros unless a resync runs (DESIGN.md's status: a peer in sync
    // shows none); `sync --wait` reads its progress from these.
    if (worker_ && !worker_->finished()) s.resync = worker_->progress();
  }
  s.fracture_bytes = log_->bytes();
  s.fracture_extents = log_->extents();
  s.pending_namespace_ops = log_->namespace_ops();
  s.full_sync = log_->full_sync();
  s.in_sync = s.state == PeerState::kConnected && log_->empty();
  return s;
}

void PeerSession::SetState(PeerState state, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = fractured_ ? PeerState::kFractured : state;
  reason_ = fractured_ ? "fractured on purpose" : reason;
  first_attempt_done_ = true;
  state_cv_.notify_all();
}

void PeerSession::SleepFor(milliseconds d) {
  struct pollfd p = {wake_fd_, POLLIN, 0};
  auto deadline = Clock::now() + d;
  while (!stopping_ && !retry_now_) {
    auto left = duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    ::poll(&p, 1, static_cast<int>(left.count()));
    uint64_t drained;
    while (::read(wake_fd_, &drained, sizeof(drained)) > 0) {
    }
  }
}

void PeerSession::Run() {
  session_thread_ = std::this_thread::get_id();
  milliseconds backoff{200};
  while (!stopping_) {
    bool fractured;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fractured = fractured_;
    }
    if (fractured) {
      SetState(PeerState::kFractured, "fractured on purpose");
      SleepFor(milliseconds(1000));
      continue;
    }
    retry_now_ = false;
    if (Connect()) {
      backoff = milliseconds(200);
      Serve();
      continue;
    }
    SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  TearDown(PeerState::kDisconnected, "stopped");
  auto s = log_->Checkpoint();
  if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
}

bool PeerSession::Connect() {
  socket_.reset();
  {
    std::lock_guard<std::mutex> lock(socket_mu_);
    in_flight_.clear();
    unattended_ = 0;
    next_reply_seq_ = 1;  // the hello-reply is seq 0
    last_answered_ = 0;
  }
  uint64_t session = NewSessionEpoch();
  bool first_attempt;
  {
    std::lock_guard<std::mutex> lock(mu_);
    first_attempt = !first_attempt_done_;
  }
  std::optional<RefusalWatch> watch;
  try {
    socket_ =
        std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
    socket_->set(zmq::sockopt::linger, 0);
    socket_->set(zmq::sockopt::immediate, 1);
    socket_->set(zmq::sockopt::sndhwm, 0);
    socket_->set(zmq::sockopt::rcvhwm, 0);
    socket_->set(zmq::sockopt::maxmsgsize,
                 static_cast<int64_t>(kFrameHeaderSize + kMaxPayloadBytes));
    if (options_.curve) {
      auto keys = options_.curve();
      meta::Status secured =
          keys ? ApplyCurveClient(socket_.get(), *keys, name_)
               : meta::Status::Error(EINVAL, "no CURVE keys loaded");
      if (!secured.ok()) {
        socket_.reset();
        SetState(PeerState::kDisconnected, secured.message());
        meta::LogError("peer " + name_ + ": " + secured.message());
        return false;
      }
    }
    watch.emplace(context_, socket_.get(), session);
    socket_->connect(endpoint_);
  } catch (const zmq::error_t& e) {
    watch.reset();
    socket_.reset();
    SetState(PeerState::kDisconnected,
             std::string("cannot connect: ") + e.what());
    meta::LogError("peer " + name_ + " (" + endpoint_ +
                   "): cannot connect: " + e.what());
    return false;
  }

  FrameHeader header;
  header.store_uuid = local_.store_uuid;
  header.session = session;
  Hello hello;
  hello.node_name = local_.name;
  hello.node_uuid = local_.node_uuid;
  hello.store_uuid = local_.store_uuid;
  hello.role = Role::kPrimary;
  Generations gens = generations_->Get();
  hello.generation = gens.current;
  hello.generation_history = gens.history;
  hello.endpoint = local_.endpoint;
  hello.flags = kHelloConsistent;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (discard_peer_) hello.flags |= kHelloDiscardYours;
  }
  EncodeHello(header, hello, &scratch_);
  // With ZMQ_IMMEDIATE the hello waits until the TCP link is up; give the
  // whole exchange one peer timeout.
  auto deadline = Clock::now() + options_.peer_timeout;
  try {
    zmq::message_t msg(scratch_.data(), scratch_.size());
    bool sent = false;
    bool refused = false;
    std::string handshake;
    while (!stopping_ && Clock::now() < deadline) {
      if (socket_->send(msg, zmq::send_flags::dontwait)) {
        sent = true;
        break;
      }
      if (watch) watch->Poll();
      if (watch && !watch->handshake_failure().empty()) {
        handshake = watch->handshake_failure();
        break;
      }
      // Only the first attempt, which a mount waits for, ends early; later
      // ones keep their rhythm (ZeroMQ retries within the attempt).
      if (first_attempt && watch && watch->refused()) {
        refused = true;
        break;
      }
      zmq::pollitem_t items[] = {
          {socket_->handle(), 0, ZMQ_POLLOUT, 0},
          {watch ? watch->handle() : nullptr, 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, watch && watch->handle() ? 2 : 1, milliseconds(50));
    }
    watch.reset();
    if (!sent && !handshake.empty()) {
      std::string line =
          "peer " + name_ + " (" + endpoint_ + "): no connection: " + handshake;
      SetState(PeerState::kConnecting, "no connection: " + handshake);
      {
        // One log line per distinct refusal, not one per retry.
        std::lock_guard<std::mutex> lock(mu_);
        if (line == last_refusal_)
          line.clear();
        else
          last_refusal_ = line;
      }
      if (!line.empty()) meta::LogError(line + "; retrying with backoff");
      socket_.reset();
      return false;
    }
    if (!sent) {
      SetState(PeerState::kConnecting,
               "no connection to " + endpoint_ + (refused ? " (refused)" : ""));
      socket_.reset();
      return false;
    }
    while (!stopping_ && Clock::now() < deadline) {
      zmq::pollitem_t items[] = {{socket_->handle(), 0, ZMQ_POLLIN, 0}};
      auto left = duration_cast<milliseconds>(deadline - Clock::now());
      zmq::poll(items, 1, std::min(left, milliseconds(100)));
      if (!(items[0].revents & ZMQ_POLLIN)) continue;
      zmq::message_t reply;
      if (!socket_->recv(reply, zmq::recv_flags::dontwait)) continue;
      auto decoded = DecodeFrame(std::string_view(
          static_cast<const char*>(reply.data()), reply.size()));
      if (!decoded.ok()) {
        meta::LogWarning("peer " + name_ + ": dropped a bad frame: " +
                         decoded.status().message());
        continue;
      }
      if (decoded->header.session != session) continue;  // stale
      std::string refusal;
      if (auto* err = std::get_if<ErrorFrame>(&decoded->body)) {
        refusal = err->message;
      }
      auto* r = std::get_if<HelloReply>(&decoded->body);
      if (r == nullptr && refusal.empty()) continue;
      if (r != nullptr && !r->accepted) refusal = r->reason;
      if (r != nullptr && refusal.empty() &&
          r->store_uuid != local_.store_uuid) {
        refusal = "it holds store " + r->store_uuid.ToString() +
                  ", this node store " + local_.store_uuid.ToString();
      }
      if (!refusal.empty()) {
        bool split = r != nullptr && (r->flags & kHelloSplitBrain);
        if (split) {
          // It answered: who it is shows in status, as for a connected peer.
          std::lock_guard<std::mutex> lock(mu_);
          hello_.name = r->node_name;
          hello_.node_uuid = r->node_uuid;
          last_seen_ = Clock::now();
          seen_ = true;
        }
        // The peer's own reason for a split brain names it already.
        SetState(split ? PeerState::kSplitBrain : PeerState::kConnecting,
                 (split ? "" : "refused: ") + refusal);
        std::string line = "peer " + name_ + " (" + endpoint_ +
                           ") refused the connection: " + refusal;
        {
          // One log line per distinct refusal, not one per retry.
          std::lock_guard<std::mutex> lock(mu_);
          if (line == last_refusal_)
            line.clear();
          else
            last_refusal_ = line;
        }
        if (!line.empty()) meta::LogError(line + "; retrying with backoff");
        socket_.reset();
        return false;
      }
      bool fresh = (r->flags & kHelloFresh) != 0;
      bool resumed = false;
      generations_->MarkShared();
      // What the peer wrote as a former primary that may not have reached
      // us: re-sent from our data, so that it is undone there.
      for (const auto& d : r->divergent) {
        meta::Change c;
        c.kind = meta::ChangeKind::kWrite;
        c.path = d.path;
        c.offset = d.offset;
        c.length = std::max<uint64_t>(d.length, 1);
        auto s = log_->Record(c);
        if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
      }
      if (r->flags & kHelloNamespaceDiverged) {
        auto s = log_->MarkNamespaceDirty();
        if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
      }
      if (!r->divergent.empty() || (r->flags & kHelloNamespaceDiverged)) {
        meta::LogInfo("peer " + name_ +
                      ": it was primary after our common "
                      "history; " +
                      std::to_string(r->divergent.size()) +
                      " extents it wrote are re-sent from this node's data");
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        discard_peer_ = false;
        last_refusal_.clear();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        hello_.name = r->node_name;
        hello_.node_uuid = r->node_uuid;
        session_ = session;
        next_seq_ = 1;  // the hello was seq 0
        last_name_change_seq_ = 0;
        file_flushes_.clear();
        last_seen_ = Clock::now();
        seen_ = true;
        up_ = true;
        accept_live_ = false;
        resync_failure_.clear();
        // A copy left inconsistent by this node's own resync, cut short
        // (this node crashed or stopped, or the peer did), holds at most
        // what the log (with the write-intent journal, re-added after a
        // crash) covers: the resync resumes from the log (guarantee 6).
        // Not if the peer wrote as primary beyond what it can list.
        resumed = !(r->flags & kHelloConsistent) && !fresh &&
                  !(r->flags & kHelloNamespaceDiverged) &&
                  log_->IsOwnResync(r->resync_id);
        copy_consistent_ = ((r->flags & kHelloConsistent) || resumed) && !fresh;
        state_ = PeerState::kSyncing;
        reason_ = "reconciling";
      }
      // A generation started since the hello was sent found this session
      // not up yet (AnnounceGeneration): the peer learns it now, ahead of
      // any change. Later ones find it up.
      if (Generations now = generations_->Get(); now.current != gens.current) {
        (void)AnnounceGeneration(now);
      }
      if (fresh && !log_->full_sync()) {
        // A store that just met its first primary: compare everything.
        auto s = log_->SetFullSync(true);
        if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
      }
      if (on_hello_) on_hello_(hello_);
      meta::LogInfo(
          "peer " + name_ + " (" + endpoint_ + "): connected, node " +
          r->node_name + " " + r->node_uuid.ToString() +
          (log_->empty() && copy_consistent_
               ? std::string()
               : "; fracture log " + Size(log_->bytes()) +
                     (log_->full_sync() || !copy_consistent_ ? ", full sync"
                                                             : "") +
                     (resumed ? "; it is mid-resync from this node: the "
                                "resync resumes from the log"
                              : "")));
      // The worker freezes the namespace and switches to live mirroring.
      auto worker = std::make_unique<ResyncWorker>(
          this, log_.get(), source_, options_.resync_rate, copy_consistent_);
      worker->Start();
      std::lock_guard<std::mutex> lock(mu_);
      worker_ = std::move(worker);
      return true;
    }
  } catch (const zmq::error_t& e) {
    meta::LogError("peer " + name_ + ": " + e.what());
  }
  SetState(PeerState::kConnecting, "no answer from " + endpoint_ + " within " +
                                       Seconds(options_.peer_timeout));
  watch.reset();  // before its socket
  socket_.reset();
  return false;
}

bool PeerSession::SendFrame(std::string* frame, FrameData::Ref* data) {
  try {
    zmq::message_t head(frame->data(), frame->size(), FreeFrame, frame);
    frame = nullptr;  // head frees it
    if (data->release == nullptr) {
      return socket_->send(head, zmq::send_flags::dontwait).has_value();
    }
    zmq::message_t body(const_cast<char*>(data->data), data->size,
                        data->release, data->hint);
    data->release = nullptr;  // body releases it
    // Once a first part is taken, ZeroMQ takes the rest of the message.
    return socket_->send(
               head, zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
           socket_->send(body, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    meta::LogError("peer " + name_ + ": send failed: " + e.what());
  }
  delete frame;
  FrameData::Release(data);
  return false;  // the messages free what they hold
}

void PeerSession::Serve() {
  auto last_ping = Clock::now();
  std::string lost;
  PeerState next = PeerState::kDisconnected;
  {
    std::lock_guard<std::mutex> lock(socket_mu_);
    try {
      zmq_fd_ = socket_->get(zmq::sockopt::fd);
      direct_ = true;
    } catch (const zmq::error_t& e) {
      lost = std::string("no socket descriptor: ") + e.what();
    }
    rx_lost_.clear();
    peer_left_ = false;
    awaiting_pong_ = false;
    receiver_ = Receiver::kNone;
    // Writers that queued frames while the link was coming up wait for a
    // kick to take the receiver role now.
    for (meta::Completion* c : rx_waiting_) c->Kick();
  }
  bool own = false;       // this thread is the receiver
  bool readable = false;  // input is waiting: do not sleep
  // A requested restart (Resync()) waits for one store flush of the peer,
  // as Fracture() does, so that TearDown logs only what the peer may lack
  // rather than also what it applied since its last flush; requests made
  // meanwhile are covered by the same restart.
  std::shared_ptr<meta::Completion> restart_flush;
  Clock::time_point restart_by{};
  while (!stopping_ && lost.empty()) {
    // ZMQ_FD is edge-triggered: it is polled only by the receiver, and only
    // after ZMQ_EVENTS said no input is waiting (below); a thread whose send
    // may have consumed an edge wakes the receiver (SendQueued).
    struct pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {zmq_fd_, POLLIN, 0}};
    ::poll(fds, own ? 2 : 1,
           readable ? 0 : static_cast<int>(options_.watch_period.count()));
    if (fds[0].revents & POLLIN) Drain(wake_fd_);
    bool begin_restart = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fractured_) {
        lost = "fractured on purpose";
        next = PeerState::kFractured;
      } else if (!resync_failure_.empty()) {
        lost = "resync failed: " + resync_failure_;
      } else if (resync_requested_ && !restart_flush) {
        begin_restart = true;  // the request holds until the restart
      }
    }
    if (begin_restart) {
      restart_flush = std::make_shared<meta::Completion>(1);
      restart_by =
          Clock::now() + std::min<milliseconds>(options_.peer_timeout,
                                                std::chrono::seconds(10));
      meta::Change flush;
      flush.kind = meta::ChangeKind::kFsync;  // no path: the whole store
      if (!PushChange(flush, restart_flush, /*attended=*/false, nullptr)) {
        restart_flush->Done();  // the link is going down: restart at once
      }
    }
    std::unique_lock<std::mutex> socket_lock(socket_mu_);
    if (lost.empty() && !rx_lost_.empty()) lost = rx_lost_;
    // What the peer said unasked (its goodbye), before sending it more: a
    // peer that left makes the next send fail, for a less useful reason.
    if (lost.empty() && receiver_ == Receiver::kNone && InputWaitingLocked()) {
      lost = DrainLocked();
    }
    if (lost.empty() && !SendQueuedLocked()) {
      lost = "connection lost (could not send)";
    }
    if (lost.empty() && receiver_ == Receiver::kNone &&
        SessionMustReceiveLocked()) {
      receiver_ = Receiver::kSession;
    }
    own = receiver_ == Receiver::kSession;
    readable = false;
    if (lost.empty() &&
        (own || (receiver_ == Receiver::kNone && !in_flight_.empty()))) {
      // The receiver takes what arrived. With nobody receiving, answers to
      // writers' frames are taken here too, at least every 100 ms, so that
      // a writer slow to come back for its answer never makes a live peer
      // look silent.
      lost = DrainLocked();
    }
    if (lost.empty() && own) {
      if (SessionMustReceiveLocked()) {
        try {
          readable = (socket_->get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
        } catch (const zmq::error_t& e) {
          lost = std::string("socket failed: ") + e.what();
        }
      } else {
        ReleaseReceiverLocked();  // hands over to a waiting writer
        own = false;
      }
    }
    if (lost.empty() && restart_flush &&
        (restart_flush->IsDone() || Clock::now() >= restart_by)) {
      lost = kResyncRequested;
      next = PeerState::kConnecting;
    }
    if (!lost.empty()) break;

    // Heartbeat and failure detection.
    auto now = Clock::now();
    Clock::time_point seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen = last_seen_;
    }
    auto silent = duration_cast<milliseconds>(now - seen);
    if (silent >= options_.heartbeat) {
      // A frame unanswered past its limit while the peer said nothing for a
      // heartbeat: slow past its timeout.
      for (auto& [seq, f] : in_flight_) {
        auto waited = duration_cast<milliseconds>(now - f.sent);
        if (waited >=
            (f.store_flush ? options_.flush_timeout : options_.peer_timeout)) {
          lost = (f.store_flush ? "a store flush unanswered for "
                                : "no answer for ") +
                 Seconds(waited);
          break;
        }
      }
      if (!lost.empty()) break;
    }
    if (silent >= options_.peer_timeout) {
      lost = "no answer for " + Seconds(silent);
      break;
    }
    bool ping =
        silent >= options_.heartbeat && now - last_ping >= options_.heartbeat;
    if (ping) awaiting_pong_ = true;  // the next turn receives the pong
    socket_lock.unlock();
    if (ping) {
      Push([&](const FrameHeader& h,
               std::string* out) { EncodePing(h, Ping{h.seq}, out); },
           nullptr, nullptr, nullptr);
      last_ping = now;
    }
  }
  {
    // From here on only this thread touches the socket (TearDown, Connect):
    // a writer receiving on it leaves first.
    std::unique_lock<std::mutex> lock(socket_mu_);
    direct_ = false;
    if (receiver_ == Receiver::kWriter) {
      Signal(writer_wake_fd_);
      rx_cv_.wait(lock, [this] { return receiver_ != Receiver::kWriter; });
    }
    receiver_ = Receiver::kNone;
    zmq_fd_ = -1;
  }
  if (lost.empty() && stopping_) {
    SayGoodbye("the primary is stopping");
  } else if (next == PeerState::kFractured) {
    SayGoodbye(kGoodbyeFractured);  // it shows itself as fractured
  } else if (peer_left_) {
    SayGoodbye("goodbye");  // the peer waits for it before it closes
  }
  if (lost == kResyncRequested) {
    meta::LogInfo("peer " + name_ + ": resync requested; reconnecting");
    TearDown(next, lost);
    return;
  }
  if (!lost.empty()) {
    meta::LogError("peer " + name_ + " (" + endpoint_ + "): " + lost +
                   "; its changes are logged from now on (fracture log " +
                   Size(log_->bytes()) + ")");
    TearDown(next, lost);
  }
}

void PeerSession::SayGoodbye(const std::string& reason) {
  if (!Push(
          [&reason](const FrameHeader& h, std::string* out) {
            EncodeGoodbye(h, Goodbye{reason}, out);
          },
          nullptr, nullptr, nullptr)) {
    return;
  }
  std::lock_guard<std::mutex> lock(socket_mu_);
  // Behind what is still queued (seq order). The socket is closed next;
  // lingering lets the goodbye leave before the context ends, bounded so
  // that an unreachable peer does not hold up the stop.
  if (SendQueuedLocked()) {
    try {
      socket_->set(zmq::sockopt::linger,
                   static_cast<int>(kGoodbyeLinger.count()));
    } catch (const zmq::error_t&) {
    }
  }
}

void PeerSession::TearDown(PeerState next, const std::string& reason) {
  std::vector<Outgoing> queued;
  std::unique_ptr<ResyncWorker> worker;
  bool was_up;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_up = up_;
    up_ = false;
    accept_live_ = false;
    resync_requested_ = false;  // the next session replays the log anyway
    state_ = fractured_ ? PeerState::kFractured : next;
    reason_ = reason;
    first_attempt_done_ = true;
    queued.swap(queue_);
    worker = std::move(worker_);
    state_cv_.notify_all();
  }
  // The resync stops first, so that releasing its completions below does
  // not let it mark anything as done.
  if (worker) worker->Cancel();
  // A restart asked for (a resync) loses nothing: the peer flushed first
  // and follows the history at its next hello.
  if (was_up && !stopping_ && reason != kResyncRequested) {
    generations_->PeerLost();  // the next write starts a new generation
  }
  // Guarantees 2 and 3: everything the peer may not have on disk — queued,
  // unanswered, or applied since its last completed flush — is logged, in
  // the order it was queued, durably, before any waiting application
  // write is released.
  std::map<uint64_t, std::vector<Unflushed>> at_risk;
  {
    std::lock_guard<std::mutex> lock(mu_);
    at_risk.swap(flushing_);
    at_risk[UINT64_MAX].swap(unflushed_);
    file_flushes_.clear();
  }
  bool logged = false;
  for (auto& [seq, changes] : at_risk) {
    for (const auto& u : changes) {
      auto s = log_->Record(u.change);
      if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
      logged = true;
    }
  }
  if (logged) {
    auto s = log_->MakeDurable();
    if (!s.ok()) meta::LogError("peer " + name_ + ": " + s.message());
  }
  std::map<uint64_t, InFlight> unanswered;
  {
    std::lock_guard<std::mutex> lock(socket_mu_);
    unanswered.swap(in_flight_);
    unattended_ = 0;
  }
  for (auto& out : queued) {
    delete out.frame;
    FrameData::Release(&out.data);
    if (out.completion) out.completion->Done();
  }
  for (auto& [seq, f] : unanswered) f.completion->Done();
  {
    // Writers waiting in Await() look again: nothing of theirs is left.
    std::lock_guard<std::mutex> lock(socket_mu_);
    for (meta::Completion* c : rx_waiting_) c->Kick();
  }
  socket_.reset();
  if (worker) worker->Join();
}

}  // namespace mirrorfs::sync
