// PeerSession: the primary's link to one peer. It owns a ZeroMQ DEALER
// socket and the thread that manages it: connects with backoff, says hello
// (store identity), sends what others could not, sends heartbeats, and
// declares the peer lost when it stays silent past the peer timeout, or
// leaves a frame unanswered past its limit (the peer timeout; a store
// flush: flush_timeout) while saying nothing for a heartbeat. What the peer
// misses goes to its FractureLog; when it is back, a ResyncWorker replays
// it.
//
//   connecting ──hello accepted──> (freeze) ──log empty──> connected
//      ^   │                          └──log not empty──> syncing ──> connected
//      │   └─ refused / no answer: backoff 0.2 s .. 5 s
//      │
//   connected / syncing ──silent, error, gap──> disconnected ──backoff──┘
//   any ──Fracture()──> fractured ──Rejoin()──> connecting
//
// A lost peer's socket is closed and a fresh one (new session epoch) is made
// for the next attempt, so frames queued in ZeroMQ before the failure can
// never be mistaken for current ones (DESIGN.md "Known traps"). Before the
// completions of a lost peer's unanswered changes are released, those
// changes are in its fracture log, durably (guarantee 2).
//
// Thread-safety: public methods are thread-safe. Frames are queued in seq
// order under mu_; whoever then holds socket_mu_ sends the queue in that
// order. While the link is up (`direct_`), the thread that queued a frame
// sends it itself — an application write reaches ZeroMQ without waking the
// session thread.
//
// Receiving: one thread at a time, the receiver, sleeps in poll() on the
// socket's ZMQ_FD (without holding socket_mu_) and takes what arrives under
// socket_mu_. A frame is *attended* when the thread that queued it will
// wait for its answer through Await() (application changes in sync mode);
// such a thread becomes the receiver while it waits, so that its
// acknowledgement wakes it directly rather than through the session thread
// (one thread hop less per write). The session thread receives when frames
// nobody waits for this way are in flight (pings, resync, async changes,
// epoch flushes); otherwise it sleeps on its eventfd and wakes every
// watch_period (100 ms) to send what others could not, to take answers no
// receiver took (a writer not back yet from its local write), and to watch
// the peer (timeouts, heartbeats). Whoever gives up the receiver role hands
// it on (kicks a waiting writer, or wakes the session thread). ZMQ_FD is
// edge-triggered: a receiver sleeps only after ZMQ_EVENTS said no input is
// waiting, and a sender whose send may have consumed an edge wakes the
// receiver.
//
// Lock order: the volume's locks -> socket_mu_ -> mu_ -> the FractureLog's
// lock -> a Completion's lock. Neither lock is held across an fsync; a send
// never blocks (dontwait).
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meta/change.h"
#include "meta/source.h"
#include "meta/uuid.h"
#include "sync/busy_poll.h"
#include "sync/curve.h"
#include "sync/fracture_log.h"
#include "sync/frame_data.h"
#include "sync/generation.h"
#include "sync/resync_worker.h"
#include "sync/wire.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace mirrorfs::sync {

enum class PeerState {
  kConnecting,
  kConnected,
  kSyncing,
  kDisconnected,
  kFractured,
  kSplitBrain,
};
const char* PeerStateName(PeerState state);

// Who this node is, as told to peers in the hello.
struct LocalIdentity {
  std::string name;
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // never zero on a primary
  std::string endpoint;   // where this node listens ("" if nowhere)
};

struct SessionOptions {
  std::chrono::milliseconds peer_timeout{2000};
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds max_backoff{5000};
  // How often the session thread wakes by itself to watch the peer
  // (timeouts, heartbeats) and to take answers nobody took.
  std::chrono::milliseconds watch_period{100};
  // A store flush (epoch) answered by a live peer may take this long before
  // the peer is dropped: no application waits for it, and a second of
  // writes can take seconds to reach a slow disk. (Changes an application
  // waits for get peer_timeout.)
  std::chrono::milliseconds flush_timeout{30000};
  uint64_t resync_rate = 0;  // bytes per second, 0 = unlimited
  // How long a writer waiting for its peer's answer spins before it
  // sleeps (sync/busy_poll.h); zero never spins.
  std::chrono::microseconds busy_poll{0};
  // The node's CURVE keys as of now (reloaded on SIGHUP), or null for plain
  // links; called at every connection attempt.
  std::function<std::shared_ptr<const CurveConfig>()> curve;
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
  double last_seen_seconds_ago = -1;  // -1: never seen
  uint64_t changes_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t in_flight = 0;
  uint64_t fracture_bytes = 0;
  uint64_t fracture_extents = 0;
  uint64_t pending_namespace_ops = 0;
  bool full_sync = false;
  ResyncProgress resync;
  bool in_sync = false;
};

class PeerSession {
 public:
  // `*context` and `*source` must outlive the session; the session owns
  // `log`. `on_hello` runs on the session thread after every accepted hello.
  // `*generations` is shared by the primary's sessions and must outlive
  // this one.
  PeerSession(zmq::context_t* context, std::string name, std::string endpoint,
              LocalIdentity local, SessionOptions options,
              std::unique_ptr<FractureLog> log, meta::Source* source,
              GenerationKeeper* generations,
              std::function<void(const PeerHello&)> on_hello);
  ~PeerSession();  // Stop()s
  PeerSession(const PeerSession&) = delete;
  PeerSession& operator=(const PeerSession&) = delete;

  void Start();
  // Stops the thread; unanswered changes go to the log, durably. A live
  // peer is told with a goodbye (WIRE_FORMAT.md) that this primary is gone.
  void Stop();

  // The application's path (via FanOut). Queues `change` when the peer is
  // mirrored live and returns true: `completion` is then Done() exactly once
  // (applied, or the peer was lost and the change logged). Otherwise logs the
  // change as missed and returns false.
  // An fsync while the peer is not mirrored live makes its log durable
  // here, or, with `defer_log_sync`, sets *defer_log_sync and leaves that
  // to the caller.
  // `attended`: the caller will Await(completion) (sync mode). `data`: a
  // kWrite's bytes as shared by every peer (null: this session copies
  // them).
  bool Enqueue(const meta::Change& change,
               const std::shared_ptr<meta::Completion>& completion,
               bool* defer_log_sync = nullptr, bool attended = false,
               FrameData* data = nullptr);

  // Returns once no frame of `completion` is queued or unanswered on this
  // session (answered, or the peer was lost and its change logged). The
  // calling thread receives the peer's frames itself while nobody else
  // does. Any thread may call it, for any completion.
  void Await(meta::Completion* completion);

  // `change` was sent (or logged) but failed on this node: its range goes
  // to the log, durably, and a live peer is resynced, which sends it this
  // node's data there (FanOut::Diverged).
  void Diverged(const meta::Change& change);

  // Blocks until the first connection attempt ended or `timeout` passed.
  // Returns true if the peer is mirrored live.
  bool WaitConnected(std::chrono::milliseconds timeout);
  // Stops mirroring on purpose: the peer's changes are logged (fractured)
  // until Rejoin(). A live peer first makes durable what it applied (one
  // store flush, waited for up to the peer timeout, 10 s at most), so that
  // its log holds what it misses from then on rather than also the writes
  // since its last flush, which guarantee 3 logs when they may be lost.
  void Fracture();
  // Ends a fracture, or retries a disconnected peer now (no backoff).
  void Rejoin();
  // Runs a resync now even if the peer is connected (its log grew, e.g.
  // `verify --repair`): the session restarts and replays the log. A live
  // peer is first asked for a store flush (waited for on the session
  // thread, up to the peer timeout, 10 s at most), as for Fracture(), so
  // that the restart does not log (and resend) its writes since its last
  // store flush. Returns at once.
  void Resync();
  // This primary started a new generation (its first change since it
  // became primary or lost another peer): a peer with a session up is told
  // in it (wire frame `generation`), ahead of any change queued later, and
  // stores it before applying them. Returns false if no session is up (the
  // next hello carries it).
  bool AnnounceGeneration(const Generations& started);
  // Mirrored live in the primary's current generation: connected (or
  // resyncing) since a hello that carried it.
  bool FollowsLive() const;
  // After a split brain, the operator kept this node's data (`resolve
  // --keep-local`): the next hello asks the peer to discard its changes
  // (saved to its recovery folder) and take a full sync.
  void DiscardPeerChanges();
  // Makes the peer's next resync a full comparison (e.g. `verify --repair`
  // found differences, or the peer is of unknown age).
  FractureLog* log() { return log_.get(); }

  PeerSnapshot Snapshot() const;
  const std::string& name() const { return name_; }

  // --- For the ResyncWorker (queue frames of the resync) ---
  // `data`: a kWrite's bytes, not copied (null: this session copies them).
  bool EnqueueResync(const meta::Change& change,
                     const std::shared_ptr<meta::Completion>& completion,
                     FrameData* data = nullptr);
  bool EnqueueManifest(const Manifest& manifest,
                       const std::shared_ptr<meta::Completion>& completion);
  bool EnqueueMark(const ResyncMark& mark,
                   const std::shared_ptr<meta::Completion>& completion);
  // `on_reply` runs on the receiving thread (under the session's socket
  // lock) before `completion` is Done().
  bool RequestBlockDiff(const BlockSums& sums,
                        std::function<void(const BlockDiff&)> on_reply,
                        const std::shared_ptr<meta::Completion>& completion);
  // For verify: asks for part of the peer's namespace. Queued in order with
  // the changes, so it may be sent while the namespace is frozen. As for
  // RequestBlockDiff, `on_reply` runs before `completion` is Done(); if the
  // peer is lost first, `completion` is Done() without it.
  bool RequestListing(const ListRequest& request,
                      std::function<void(const Listing&)> on_reply,
                      const std::shared_ptr<meta::Completion>& completion);
  // From now on the application's changes are mirrored live.
  void AcceptLive(bool syncing);
  // The resync ended: in sync, or failed (the session drops the link and
  // tries again later).
  void ResyncFinished(bool ok, const std::string& why);

 private:
  using Clock = std::chrono::steady_clock;
  // Takes a frame that answers a request (block-diff, listing).
  using ReplyHandler = std::function<void(const DecodedFrame&)>;
  struct Outgoing {
    uint64_t seq;
    std::string* frame;  // owned; handed to ZeroMQ without a copy
    std::shared_ptr<meta::Completion> completion;  // null for a ping
    ReplyHandler on_reply;
    bool attended;        // its sender will Await() the completion
    FrameData::Ref data;  // a write's data part (owned reference) or none
    bool store_flush;     // a whole-store flush: flush_timeout applies
  };
  struct InFlight {
    std::shared_ptr<meta::Completion> completion;
    Clock::time_point sent;
    ReplyHandler on_reply;
    bool attended;
    bool store_flush;
    bool bulky;  // data over kBusyPollMaxBytes: its writer does not spin
  };
  // Who sleeps on the socket for input (see the class comment).
  enum class Receiver { kNone, kSession, kWriter };

  // Queues a frame made by `encode` (with a reference to `data` as its
  // second part, if not null) under mu_ if the session is up, then sends
  // the queue unless called on the session thread.
  bool Push(const std::function<void(const FrameHeader&, std::string*)>& encode,
            const std::shared_ptr<meta::Completion>& completion,
            const meta::Change* record, ReplyHandler on_reply,
            bool attended = false, FrameData* data = nullptr);
  // Queues a change; for a kWrite its data goes as the second part, from
  // `data` or, if null, from a copy made here.
  bool PushChange(const meta::Change& change,
                  const std::shared_ptr<meta::Completion>& completion,
                  bool attended, FrameData* data);
  void Run();
  bool Connect();
  void Serve();
  // Drops the link: unanswered and queued changes are logged (durably)
  // before their completions are released; the resync is cancelled.
  void TearDown(PeerState next, const std::string& reason);
  // Session thread, link up, the socket its own: tells the peer that this
  // primary ends the session on purpose (a clean stop), or answers the
  // peer's goodbye (it keeps its socket open until it has the answer: this
  // side's ZMQ_IMMEDIATE socket drops what it has not read once the link
  // closes).
  void SayGoodbye(const std::string& reason);
  // ZMQ_EVENTS says a frame is waiting. REQUIRES: socket_mu_ held.
  bool InputWaitingLocked();
  void SetState(PeerState state, const std::string& reason);
  // Sends `frame` and, if it holds one, `data` as the second part; takes
  // ownership of both (freed or released either way).
  bool SendFrame(std::string* frame, FrameData::Ref* data);
  // Sends what is queued, in order, from any thread but the session's:
  // what cannot be sent now is left queued for the session thread.
  void SendQueued();
  // REQUIRES: socket_mu_ held and the link up. Sends the queue in order;
  // returns false (the unsent frames queued again, first) if a send failed.
  bool SendQueuedLocked();
  // REQUIRES: socket_mu_ held, a receiver. Wakes it if the socket has
  // input: a send may have consumed the ZMQ_FD edge it sleeps on.
  void WakeReceiverIfReadable();
  // REQUIRES: socket_mu_ held and the link up. Takes the frames waiting on
  // the socket, at most `max_frames`: answers complete their changes.
  // Returns "" or why the link must be dropped (the unanswered change stays
  // in flight for TearDown).
  std::string DrainLocked(int max_frames = INT_MAX);
  // REQUIRES: socket_mu_ held (by `lock`), this thread the receiver as a
  // writer. Receives until `completion` has nothing left here, the link
  // goes down or fails; returns with the lock held, still the receiver.
  void ReceiveLocked(const meta::Completion* completion,
                     std::unique_lock<std::mutex>* lock);
  // REQUIRES: socket_mu_ held, this thread the receiver. Gives the role up
  // and hands it on to whoever needs it next.
  void ReleaseReceiverLocked();
  // REQUIRES: socket_mu_ held. True if a frame of `completion` is queued or
  // unanswered here; then `*bulky` (if given) says whether an unanswered
  // one is larger than kBusyPollMaxBytes.
  bool PendingLocked(const meta::Completion* completion, bool* bulky = nullptr);
  // REQUIRES: socket_mu_ held. The session thread must receive: frames are
  // in flight that no writer Await()s, or a ping awaits its pong.
  bool SessionMustReceiveLocked() const {
    return unattended_ > 0 || awaiting_pong_;
  }
  void Wake();
  void SleepFor(std::chrono::milliseconds d);

  zmq::context_t* context_;
  const std::string name_;
  const std::string endpoint_;
  const LocalIdentity local_;
  const SessionOptions options_;
  std::unique_ptr<FractureLog> log_;
  meta::Source* source_;
  GenerationKeeper* generations_;
  std::function<void(const PeerHello&)> on_hello_;

  int wake_fd_ = -1;  // eventfd: "the queue has work" / "stop"
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> retry_now_{false};

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable state_cv_;
  PeerState state_ = PeerState::kConnecting;
  bool fractured_ = false;     // on purpose, until Rejoin()
  bool discard_peer_ = false;  // resolve --keep-local, until accepted
  bool resync_requested_ = false;
  bool up_ = false;           // hello accepted, socket usable
  bool accept_live_ = false;  // application changes are mirrored
  bool first_attempt_done_ = false;
  bool copy_consistent_ = true;  // the peer's copy, as its hello said
  std::string resync_failure_;
  std::string last_refusal_;  // logged once until something changes
  std::string reason_ = "not connected yet";
  uint64_t session_ = 0;   // epoch of the current connection
  uint64_t next_seq_ = 1;  // seq of the next frame queued in this session
  std::vector<Outgoing> queue_;
  PeerHello hello_;
  Clock::time_point last_seen_{};
  bool seen_ = false;
  uint64_t changes_sent_ = 0;
  uint64_t bytes_sent_ = 0;
  std::unique_ptr<ResyncWorker> worker_;
  // Changes queued since the last store flush was queued (data without its
  // bytes), in order, with their seq; and per store flush in flight (by its
  // seq), what it covers. Logged if the peer is lost (guarantee 3), less
  // what an answered fsync of a file made durable there.
  struct Unflushed {
    uint64_t seq;
    meta::Change change;
  };
  std::vector<Unflushed> unflushed_;
  std::map<uint64_t, std::vector<Unflushed>> flushing_;
  // An fsync of one file (or an O_DSYNC write to it) in flight, by its seq:
  // once answered, the data changes of `path` queued after `since` (the
  // last change before it that may have given the path to another file)
  // and up to it are durable on the peer.
  struct FileFlush {
    std::string path;
    uint64_t since;
  };
  std::map<uint64_t, FileFlush> file_flushes_;
  uint64_t last_name_change_seq_ = 0;  // in this session

  // The socket and what was sent on it. The socket is used by the session
  // thread alone while `direct_` is false; while it is true, by any thread
  // holding socket_mu_. The rest is guarded by socket_mu_.
  mutable std::mutex socket_mu_;
  bool direct_ = false;
  std::vector<Outgoing> sending_;  // empty between uses
  std::unique_ptr<zmq::socket_t> socket_;
  int zmq_fd_ = -1;  // the socket's ZMQ_FD, valid while direct_
  std::map<uint64_t, InFlight> in_flight_;
  size_t unattended_ = 0;        // in_flight_ entries not attended
  uint64_t next_reply_seq_ = 1;  // seq the peer's next answer must carry
  uint64_t last_answered_ = 0;   // highest seq of a frame answered
  bool awaiting_pong_ = false;   // a ping was sent; nothing heard since
  bool peer_left_ = false;       // the peer said goodbye in this session
  Receiver receiver_ = Receiver::kNone;
  // Writers in Await() that are not the receiver (kicked on a hand-over
  // and when their frames are answered).
  std::vector<meta::Completion*> rx_waiting_;
  std::string rx_lost_;  // a writer found the link broken; Serve drops it
  std::condition_variable rx_cv_;  // the receiver role was given up
  int writer_wake_fd_ = -1;        // eventfd: wakes a writer that receives
  // The receiving writer's wait (its spin rule carries over between
  // writers: it is about the peer's pace, not the thread's).
  BusyPoll writer_poll_;
  std::thread::id session_thread_;

  // Session-thread only.
  std::string scratch_;
};

}  // namespace mirrorfs::sync
