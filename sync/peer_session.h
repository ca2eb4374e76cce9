// PeerSession: the primary's link to one peer. It owns a ZeroMQ DEALER
// socket and the thread that uses it: connects with backoff, says hello
// (store identity), sends queued changes, matches acknowledgements, sends
// heartbeats, and declares the peer lost when it stays silent or leaves a
// change unacknowledged past the peer timeout.
//
// States (see PeerState):
//
//   connecting --hello accepted--> connected --silent/ack error--> disconnected
//        ^  |                                                          |
//        |  +--refused / no answer (backoff 0.2 s .. 5 s)--+           |
//        +-------------------------------------------------+-----------+
//
// A lost peer's socket is closed and a fresh one (new session epoch) is made
// for the next attempt, so frames queued in ZeroMQ before the failure can
// never be mistaken for current ones (DESIGN.md "Known traps").
//
// Until the fracture log exists, a peer that missed any change is not
// resumed: it stays `disconnected` with the reason "missed changes", because
// mirroring new writes to a copy that lacks older ones would diverge silently.
//
// Thread-safety: Enqueue(), Snapshot() and Stop() are thread-safe. The socket
// belongs to the session thread; other threads reach it through the queue
// (mu_) and an eventfd that wakes the thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "meta/change.h"
#include "meta/uuid.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace mirrorfs::sync {

enum class PeerState { kConnecting, kConnected, kDisconnected };
const char* PeerStateName(PeerState state);

// Who this node is, as told to peers in the hello.
struct LocalIdentity {
  std::string name;
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // never zero on a primary
  std::string generation;
  std::string endpoint;  // where this node listens ("" if nowhere)
};

struct SessionOptions {
  std::chrono::milliseconds peer_timeout{2000};
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds max_backoff{5000};
};

// What a peer told us about itself in its hello reply.
struct PeerHello {
  std::string name;
  meta::Uuid node_uuid;
};

struct PeerSnapshot {
  std::string name;
  std::string endpoint;
  PeerState state = PeerState::kConnecting;
  std::string reason;  // why it is not connected, "" if it is
  meta::Uuid node_uuid;
  bool missed_changes = false;
  double last_seen_seconds_ago = -1;  // -1: never seen
  uint64_t changes_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t in_flight = 0;
};

class PeerSession {
 public:
  // `*context` must outlive the session. `on_hello` runs on the session
  // thread after every accepted hello (to remember the peer's identity).
  PeerSession(zmq::context_t* context, std::string name, std::string endpoint,
              LocalIdentity local, SessionOptions options,
              std::function<void(const PeerHello&)> on_hello);
  ~PeerSession();  // Stop()s
  PeerSession(const PeerSession&) = delete;
  PeerSession& operator=(const PeerSession&) = delete;

  void Start();
  // Stops the thread; every queued or unacknowledged change is Done().
  void Stop();

  // Queues `change` for the peer. Returns true if queued: `completion` will
  // then be Done() exactly once (acknowledged, or the peer was lost).
  // Returns false if the peer is not connected; the change is then recorded
  // as missed by this peer.
  bool Enqueue(const meta::Change& change,
               const std::shared_ptr<meta::Completion>& completion);

  // Blocks until the first connection attempt ended (connected or not) or
  // `timeout` passed. Returns true if connected.
  bool WaitConnected(std::chrono::milliseconds timeout);

  PeerSnapshot Snapshot() const;
  const std::string& name() const { return name_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Outgoing {
    uint64_t seq;
    std::string* frame;  // owned; handed to ZeroMQ without a copy
    std::shared_ptr<meta::Completion> completion;  // null for a ping
  };
  struct InFlight {
    std::shared_ptr<meta::Completion> completion;
    Clock::time_point sent;
  };

  void Run();
  // Makes a fresh socket and says hello. Returns true once accepted.
  bool Connect();
  // Serves a connected peer until it is lost or the session stops.
  void Serve();
  // Drops the socket and finishes every pending completion.
  void TearDown(const std::string& reason);
  void SetState(PeerState state, const std::string& reason);
  bool SendFrame(std::string* frame);  // takes ownership
  void Wake();
  void SleepFor(std::chrono::milliseconds d);

  zmq::context_t* context_;
  const std::string name_;
  const std::string endpoint_;
  const LocalIdentity local_;
  const SessionOptions options_;
  std::function<void(const PeerHello&)> on_hello_;

  int wake_fd_ = -1;  // eventfd: "the queue has work" / "stop"
  std::thread thread_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;  // guards everything below; taken after the
                           // volume's locks, never held across a send
  std::condition_variable state_cv_;
  PeerState state_ = PeerState::kConnecting;
  bool first_attempt_done_ = false;
  std::string reason_ = "not connected yet";
  uint64_t session_ = 0;  // epoch of the current connection
  uint64_t next_seq_ = 1;  // seq of the next frame queued in this session
  bool missed_changes_ = false;
  std::deque<Outgoing> queue_;
  PeerHello hello_;
  Clock::time_point last_seen_{};
  bool seen_ = false;
  uint64_t changes_sent_ = 0;
  uint64_t bytes_sent_ = 0;
  size_t in_flight_count_ = 0;

  // Session-thread only.
  std::unique_ptr<zmq::socket_t> socket_;
  std::map<uint64_t, InFlight> in_flight_;
  std::string scratch_;
};

}  // namespace mirrorfs::sync
