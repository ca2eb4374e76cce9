#include "sync/peer_session.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <random>
#include <zmq.hpp>

#include "meta/log.h"
#include "sync/wire.h"

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

}  // namespace

const char* PeerStateName(PeerState state) {
  switch (state) {
    case PeerState::kConnecting:
      return "connecting";
    case PeerState::kConnected:
      return "connected";
    case PeerState::kDisconnected:
      return "disconnected";
  }
  return "disconnected";
}

PeerSession::PeerSession(zmq::context_t* context, std::string name,
                         std::string endpoint, LocalIdentity local,
                         SessionOptions options,
                         std::function<void(const PeerHello&)> on_hello)
    : context_(context),
      name_(std::move(name)),
      endpoint_(std::move(endpoint)),
      local_(std::move(local)),
      options_(options),
      on_hello_(std::move(on_hello)) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

PeerSession::~PeerSession() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void PeerSession::Start() {
  thread_ = std::thread([this] { Run(); });
}

void PeerSession::Stop() {
  stopping_ = true;
  Wake();
  if (thread_.joinable()) thread_.join();
}

void PeerSession::Wake() {
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

bool PeerSession::Enqueue(const meta::Change& change,
                          const std::shared_ptr<meta::Completion>& completion) {
  // The seq must follow queue order exactly (receivers refuse gaps), so it
  // is taken and the frame encoded under mu_.
  auto* frame = new std::string();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != PeerState::kConnected) {
      missed_changes_ = true;
      delete frame;
      return false;
    }
    FrameHeader header;
    header.store_uuid = local_.store_uuid;
    header.session = session_;
    header.seq = next_seq_++;
    EncodeChange(header, change, frame);
    queue_.push_back(Outgoing{header.seq, frame, completion});
  }
  Wake();
  return true;
}

bool PeerSession::WaitConnected(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  state_cv_.wait_for(lock, timeout, [this] { return first_attempt_done_; });
  return state_ == PeerState::kConnected;
}

PeerSnapshot PeerSession::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  PeerSnapshot s;
  s.name = name_;
  s.endpoint = endpoint_;
  s.state = state_;
  s.reason = reason_;
  s.node_uuid = hello_.node_uuid;
  s.missed_changes = missed_changes_;
  if (seen_) {
    s.last_seen_seconds_ago =
        std::chrono::duration<double>(Clock::now() - last_seen_).count();
  }
  s.changes_sent = changes_sent_;
  s.bytes_sent = bytes_sent_;
  s.in_flight = in_flight_count_ + queue_.size();
  return s;
}

void PeerSession::SetState(PeerState state, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = state;
  reason_ = reason;
  first_attempt_done_ = true;
  state_cv_.notify_all();
}

void PeerSession::SleepFor(milliseconds d) {
  struct pollfd p = {wake_fd_, POLLIN, 0};
  auto deadline = Clock::now() + d;
  while (!stopping_) {
    auto left = duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    ::poll(&p, 1, static_cast<int>(left.count()));
    uint64_t drained;
    while (::read(wake_fd_, &drained, sizeof(drained)) > 0) {
    }
  }
}

void PeerSession::Run() {
  milliseconds backoff{200};
  std::string last_failure;
  while (!stopping_) {
    bool missed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      missed = missed_changes_;
    }
    if (missed) {
      // Mirroring new writes to a copy that lacks older ones would diverge
      // silently; the peer waits for a resync.
      SetState(PeerState::kDisconnected,
               "missed changes while disconnected; a resync is needed");
      meta::LogWarning("peer " + name_ + " (" + endpoint_ +
                       "): it missed changes while disconnected and is not "
                       "resumed; restart it from a fresh copy of the store");
      SleepFor(milliseconds(3600 * 1000));
      continue;
    }
    if (Connect()) {
      backoff = milliseconds(200);
      Serve();
      continue;
    }
    SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  TearDown("stopped");
}

bool PeerSession::Connect() {
  socket_.reset();
  in_flight_.clear();
  uint64_t session = NewSessionEpoch();
  try {
    socket_ =
        std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
    socket_->set(zmq::sockopt::linger, 0);
    socket_->set(zmq::sockopt::immediate, 1);
    socket_->set(zmq::sockopt::sndhwm, 0);
    socket_->set(zmq::sockopt::rcvhwm, 0);
    socket_->set(zmq::sockopt::maxmsgsize,
                 static_cast<int64_t>(kFrameHeaderSize + kMaxPayloadBytes));
    socket_->connect(endpoint_);
  } catch (const zmq::error_t& e) {
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
  hello.endpoint = local_.endpoint;
  hello.flags = kHelloConsistent;
  EncodeHello(header, hello, &scratch_);
  // With ZMQ_IMMEDIATE the hello waits until the TCP link is up; give the
  // whole exchange one peer timeout.
  auto deadline = Clock::now() + options_.peer_timeout;
  try {
    zmq::message_t msg(scratch_.data(), scratch_.size());
    bool sent = false;
    while (!stopping_ && Clock::now() < deadline) {
      if (socket_->send(msg, zmq::send_flags::dontwait)) {
        sent = true;
        break;
      }
      zmq::pollitem_t items[] = {{socket_->handle(), 0, ZMQ_POLLOUT, 0},
                                 {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, milliseconds(50));
    }
    if (!sent) {
      SetState(PeerState::kConnecting, "no connection to " + endpoint_);
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
      if (auto* err = std::get_if<ErrorFrame>(&decoded->body)) {
        SetState(PeerState::kConnecting, "refused: " + err->message);
        meta::LogError("peer " + name_ + " (" + endpoint_ +
                       ") refused the connection: " + err->message);
        socket_.reset();
        return false;
      }
      auto* r = std::get_if<HelloReply>(&decoded->body);
      if (r == nullptr) continue;
      if (!r->accepted) {
        SetState(PeerState::kConnecting, "refused: " + r->reason);
        meta::LogError("peer " + name_ + " (" + endpoint_ +
                       ") refused the connection: " + r->reason);
        socket_.reset();
        return false;
      }
      if (r->store_uuid != local_.store_uuid) {
        std::string why = "it holds store " + r->store_uuid.ToString() +
                          ", this node store " + local_.store_uuid.ToString();
        SetState(PeerState::kConnecting, "refused: " + why);
        meta::LogError("peer " + name_ + " (" + endpoint_ + "): " + why +
                       "; not mirroring to it");
        socket_.reset();
        return false;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        hello_.name = r->node_name;
        hello_.node_uuid = r->node_uuid;
        session_ = session;
        next_seq_ = 1;  // the hello was seq 0
        last_seen_ = Clock::now();
        seen_ = true;
        state_ = PeerState::kConnected;
        reason_.clear();
        first_attempt_done_ = true;
        state_cv_.notify_all();
      }
      if (on_hello_) on_hello_(hello_);
      meta::LogInfo("peer " + name_ + " (" + endpoint_ + "): connected, node " +
                    r->node_name + " " + r->node_uuid.ToString());
      return true;
    }
  } catch (const zmq::error_t& e) {
    meta::LogError("peer " + name_ + ": " + e.what());
  }
  SetState(PeerState::kConnecting, "no answer from " + endpoint_ + " within " +
                                       Seconds(options_.peer_timeout));
  socket_.reset();
  return false;
}

bool PeerSession::SendFrame(std::string* frame) {
  zmq::message_t msg(frame->data(), frame->size(), FreeFrame, frame);
  try {
    auto sent = socket_->send(msg, zmq::send_flags::dontwait);
    if (sent) return true;
  } catch (const zmq::error_t& e) {
    meta::LogError("peer " + name_ + ": send failed: " + e.what());
  }
  return false;  // msg still owns the frame and frees it
}

void PeerSession::Serve() {
  auto last_ping = Clock::now();
  std::deque<Outgoing> batch;
  std::string lost;
  while (!stopping_ && lost.empty()) {
    zmq::pollitem_t items[] = {{socket_->handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, milliseconds(100));
    } catch (const zmq::error_t& e) {
      lost = std::string("poll failed: ") + e.what();
      break;
    }
    uint64_t drained;
    while (::read(wake_fd_, &drained, sizeof(drained)) > 0) {
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      batch.swap(queue_);
    }
    auto now = Clock::now();
    for (auto& out : batch) {
      size_t size = out.frame->size();
      bool sent = false;
      if (lost.empty()) {
        sent = SendFrame(out.frame);  // frees the frame either way
        if (!sent) lost = "could not send to it";
      } else {
        delete out.frame;  // nothing may follow a frame that was not sent
      }
      if (!out.completion) continue;  // a ping
      if (!sent) {
        std::lock_guard<std::mutex> lock(mu_);
        missed_changes_ = true;
      }
      if (!sent) {
        out.completion->Done();
        continue;
      }
      in_flight_[out.seq] = InFlight{std::move(out.completion), now};
      std::lock_guard<std::mutex> lock(mu_);
      ++changes_sent_;
      bytes_sent_ += size;
    }
    batch.clear();

    // Everything the peer sent.
    while (true) {
      zmq::message_t msg;
      zmq::recv_result_t got;
      try {
        got = socket_->recv(msg, zmq::recv_flags::dontwait);
      } catch (const zmq::error_t& e) {
        lost = std::string("receive failed: ") + e.what();
        break;
      }
      if (!got) break;
      auto decoded = DecodeFrame(
          std::string_view(static_cast<const char*>(msg.data()), msg.size()));
      if (!decoded.ok()) {
        meta::LogWarning("peer " + name_ + ": dropped a bad frame: " +
                         decoded.status().message());
        continue;
      }
      uint64_t session;
      {
        std::lock_guard<std::mutex> lock(mu_);
        session = session_;
      }
      if (decoded->header.session != session) continue;  // stale
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_seen_ = Clock::now();
      }
      if (auto* ack = std::get_if<Ack>(&decoded->body)) {
        auto it = in_flight_.find(ack->seq);
        if (it == in_flight_.end()) continue;
        if (ack->err != 0) {
          lost = "it failed to apply a change: " + ack->message;
        }
        it->second.completion->Done();
        in_flight_.erase(it);
      } else if (auto* err = std::get_if<ErrorFrame>(&decoded->body)) {
        lost = "it refused a frame: " + err->message;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_count_ = in_flight_.size();
    }
    if (!lost.empty()) break;

    // Heartbeat and failure detection.
    now = Clock::now();
    Clock::time_point seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen = last_seen_;
    }
    auto silent = duration_cast<milliseconds>(now - seen);
    if (!in_flight_.empty()) {
      auto oldest = in_flight_.begin()->second.sent;
      for (auto& [seq, f] : in_flight_) oldest = std::min(oldest, f.sent);
      auto waited = duration_cast<milliseconds>(now - oldest);
      if (waited >= options_.peer_timeout && silent >= options_.heartbeat) {
        lost = "no answer for " + Seconds(waited);
        break;
      }
    }
    if (silent >= options_.peer_timeout) {
      lost = "no answer for " + Seconds(silent);
      break;
    }
    if (silent >= options_.heartbeat &&
        now - last_ping >= options_.heartbeat) {
      auto* frame = new std::string();
      {
        std::lock_guard<std::mutex> lock(mu_);
        FrameHeader h;
        h.store_uuid = local_.store_uuid;
        h.session = session_;
        h.seq = next_seq_++;
        EncodePing(h, Ping{h.seq}, frame);
        queue_.push_back(Outgoing{h.seq, frame, nullptr});
      }
      Wake();
      last_ping = now;
    }
  }
  if (!lost.empty()) {
    meta::LogError("peer " + name_ + " (" + endpoint_ + "): " + lost +
                   "; dropped from mirroring, the application goes on "
                   "without it");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!in_flight_.empty() || !queue_.empty()) missed_changes_ = true;
    }
    TearDown(lost);
  }
}

void PeerSession::TearDown(const std::string& reason) {
  std::deque<Outgoing> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = PeerState::kDisconnected;
    reason_ = reason;
    first_attempt_done_ = true;
    queued.swap(queue_);
    in_flight_count_ = 0;
    state_cv_.notify_all();
  }
  for (auto& out : queued) {
    delete out.frame;
    if (out.completion) out.completion->Done();
  }
  for (auto& [seq, f] : in_flight_) f.completion->Done();
  in_flight_.clear();
  socket_.reset();
}

}  // namespace mirrorfs::sync
