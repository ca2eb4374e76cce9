// ReplicaServer: the secondary's end of replication. It binds the listen
// endpoint (a ZeroMQ ROUTER socket), checks each primary's hello against the
// store's identity, applies the changes of the current session in arrival
// order through an Applier, and acknowledges each one after it is applied.
//
// Store identity: a store has a UUID, fixed when the pair first meets. A
// store whose UUID is still zero adopts the first primary's (through the
// `adopt_store_uuid` callback, which persists it); afterwards a hello or
// frame for another store is refused with a reason the primary logs.
//
// Bad input (DESIGN.md guarantee 9): a frame that fails to decode, names
// another store or an old session is dropped with one log line (at most
// kMaxBadFrameLogsPerSecond lines a second, then a count); it never changes
// the store and never stops the server.
//
// Store flushes (the primary's epochs, every second) run on a flusher
// thread: the server thread goes on applying and answering while the store
// is synced, and answers the flush once it is done. A flush covers what was
// applied before it arrived. (Done inline, a flush of a second's writes
// stalled every write behind it, and a slow disk made the peer look dead.)
// The end of a resync is such a flush too: the copy is marked consistent
// once what the resync wrote is on disk, and the mark is answered then.
//
// Thread-safety: Start/Stop/Snapshot are thread-safe. The socket and the
// Applier belong to the server thread; the flusher thread touches only what
// flush_mu_ guards and its own StoreFlush.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "meta/source.h"
#include "meta/status.h"
#include "meta/uuid.h"
#include "sync/applier.h"
#include "sync/busy_poll.h"
#include "sync/curve.h"
#include "sync/generation.h"
#include "sync/wire.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace mirrorfs::sync {

// What the server needs from the node that runs it (persistence and the
// store outside replication). Calls come from the server thread.
class ReplicaHost {
 public:
  virtual ~ReplicaHost() = default;
  // A fresh store adopts the first primary's store identity.
  virtual meta::Status AdoptStore(const meta::Uuid& store_uuid) = 0;
  // `resync_id`: of the primary's resync that makes the copy inconsistent
  // (0 for any other cause); recorded with it, reported in hello replies.
  virtual meta::Status SetConsistent(bool consistent, uint64_t resync_id) = 0;
  virtual meta::Status SetGenerations(const Generations& generations) = 0;
  // From now on this node follows that primary (remember it as a peer).
  virtual void PrimaryAccepted(const std::string& name, const meta::Uuid& uuid,
                               const std::string& endpoint) = 0;
  // A split brain was resolved against this node: save what it wrote since
  // the split before a full sync overwrites it. Returns the folder.
  virtual meta::Result<std::string> SaveRecovery() = 0;
  // A resync from the primary ended: this node's own logs from its time as
  // primary are settled.
  virtual void Settled() = 0;
};

struct ReplicaIdentity {
  std::string name;
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // zero until the store first meets a primary
  // False while a resync is under way (or never finished): the copy may be
  // a mix of old and new data (DESIGN.md guarantee 7).
  bool consistent = true;
  // While not consistent: the id of the resync that made it so (0: another
  // cause). See ResyncMark::resync_id.
  uint64_t resync_id = 0;
  Generations generations;
};

struct ReplicaSnapshot {
  std::string endpoint;
  meta::Uuid store_uuid;
  // A primary has a session with this node, or had one and ended it with a
  // goodbye (primary_left; it stopped or was demoted).
  bool has_primary = false;
  bool primary_left = false;
  bool primary_fractured = false;  // it left saying it fractured this copy
  std::string primary_name;
  meta::Uuid primary_uuid;
  std::string primary_endpoint;
  double last_seen_seconds_ago = -1;  // -1: never
  uint64_t changes_applied = 0;
  uint64_t bytes_applied = 0;
  uint64_t bad_frames = 0;
  uint64_t apply_errors = 0;
  bool consistent = true;
  bool resyncing = false;
  uint64_t resync_total_bytes = 0;
  uint64_t resync_done_bytes = 0;
  uint64_t resync_bytes_per_second = 0;  // since the resync began
  std::string split_brain_with;  // "" unless refusing a diverged primary
  // That primary, as its last refused hello described it.
  std::string split_brain_endpoint;
  meta::Uuid split_brain_uuid;
  double split_brain_seen_seconds_ago = -1;
  std::string recovery_folder;  // where a discarded side's changes went
  bool discard_local = false;
  Generations generations;
};

// Whether `endpoint` is ipc://PATH with a process accepting connections on
// the Unix socket PATH. ZeroMQ's bind would silently replace that socket
// file (the other process would no longer be reachable), where a TCP port
// in use is refused.
bool IpcEndpointTaken(const std::string& endpoint);

class ReplicaServer {
 public:
  static constexpr int kMaxBadFrameLogsPerSecond = 10;
  // How long a stopping secondary waits for its primary to answer its
  // goodbye.
  static constexpr std::chrono::milliseconds kGoodbyeWait{500};
  // How long a stopping secondary goes on applying while it syncs its store
  // before it stops applying (see Stop()).
  static constexpr std::chrono::milliseconds kStopFlushWait{10000};

  // `*context` must outlive the server. `store_root_fd` is the store's
  // directory, owned by the caller and open for the server's lifetime.
  // `*host` must outlive the server. In `primary_mode` (the listener of a
  // mounted primary) every hello is refused, but a split brain or a stale
  // side is recognised and reported.
  // `curve` (null: plain links) makes the endpoint a CURVE server; a
  // ZapHandler must run on `*context` before Bind().
  ReplicaServer(zmq::context_t* context, std::string listen_endpoint,
                ReplicaIdentity identity, int store_root_fd, ReplicaHost* host,
                bool primary_mode,
                std::shared_ptr<const CurveConfig> curve = nullptr);
  ~ReplicaServer();  // Stop()s
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Binds the endpoint. Returns OK once bound, or an error naming the
  // endpoint (address in use, bad endpoint, ...). REQUIRES: before Start().
  meta::Status Bind();
  // Test seam (see Applier::SetVolatileWrites). REQUIRES: before Start().
  void SetVolatileWrites(bool on) { applier_.SetVolatileWrites(on); }
  // Every applied write is cached (--cached-writes). REQUIRES: before
  // Start().
  void SetCachedWrites(bool on) { applier_.SetCachedWrites(on); }
  // How long the server thread spins for the next frame before it sleeps
  // (sync/busy_poll.h); zero never spins. REQUIRES: before Start().
  void SetBusyPoll(std::chrono::microseconds budget) {
    frame_poll_ = BusyPoll(budget);
  }
  // Test seam: while paused the server takes no frame (a hung peer, as
  // seen by its primary: the connection stays up, nothing is answered).
  void PauseForTest(bool on) { paused_ = on; }
  // Test seam: every store flush takes this much longer (a slow disk).
  void SetFlushDelayForTest(std::chrono::milliseconds delay) {
    flush_delay_ms_ = delay.count();
  }
  void Start();
  // What this node wrote as a former primary that a newer primary may lack
  // (sent in every accepted hello until a resync settles it).
  // On a primary: its generations changed (it started a new one); hellos
  // from other nodes are compared with these from now on.
  void SetGenerations(const Generations& generations) {
    std::lock_guard<std::mutex> lock(mu_);
    identity_.generations = generations;
  }
  void SetDivergent(std::vector<DivergentExtent> divergent,
                    bool namespace_diverged);
  // `resolve --discard-local`: the next diverged primary wins.
  void DiscardLocal();
  // Stops serving, with every applied change on disk. With a primary
  // connected, the store is synced first while frames are still applied
  // and answered (at most kStopFlushWait), then applying stops, the store
  // is synced again (short: little is left) and the goodbye tells the
  // primary up to which frame its changes are durable here, so that it
  // does not log them for a resync (guarantee 3 logs only what a peer may
  // have lost). If the first sync does not finish in time, the goodbye
  // promises nothing and comes at once: the primary's writes do not wait
  // for a slow disk.
  void Stop();

  ReplicaSnapshot Snapshot() const;

 private:
  using Clock = std::chrono::steady_clock;
  void Run();
  // `data`: the frame's second part, if it has one (a write's bytes).
  void Handle(const std::string& routing_id, std::string_view frame,
              std::optional<std::string_view> data);
  // A store flush of the current session: handed to the flusher thread.
  // `resync_end`: the frame is a resync's end mark; once the flush is done
  // the copy is marked consistent, then the mark answered.
  void StartFlush(const std::string& routing_id, const FrameHeader& header,
                  bool resync_end = false);
  // After the end mark's flush: marks the copy consistent (unless the
  // primary has begun another resync since). Returns what to answer.
  meta::Status FinishResync(uint64_t resync_begun);
  void RunFlusher();
  // Sends the acknowledgements of the flushes the flusher finished.
  void AnswerFlushes();
  struct Flush;
  // REQUIRES: flush_mu_ held. Hands `f` to AnswerFlushes (wakes the server).
  void FlushedLocked(Flush f);
  void HandleHello(const std::string& routing_id, const FrameHeader& header,
                   const Hello& hello);
  void Reply(const std::string& routing_id, const std::string& frame);
  // At a stop: hands a sync of the store to the flusher thread, answered
  // by setting stop_flush_ended_. Returns false if there is no primary to say
  // goodbye to (or the sync could not begin).
  bool StartStopFlush();
  // At a clean stop, tells the primary of the current session that this
  // node leaves (wire frame goodbye), so that it drops this peer at once;
  // `durable`: every frame applied so far is on disk. Returns that
  // session, or 0 if there was none.
  uint64_t SayGoodbye(bool durable);
  // Then waits (at most kGoodbyeWait) for the primary's goodbye in answer.
  void AwaitGoodbye(uint64_t session);
  void BadFrame(const std::string& what);
  // After Bind(): notes the socket file of `bound` (ZeroMQ's last
  // endpoint) if it is an ipc:// path.
  void RememberIpcFile(const std::string& bound);

  zmq::context_t* context_;
  const std::string endpoint_;
  ReplicaHost* host_;
  const bool primary_mode_;
  std::shared_ptr<const CurveConfig> curve_;
  std::vector<meta::NamespaceEntry> manifest_;  // parts so far (server thread)
  std::unique_ptr<zmq::socket_t> socket_;
  // A bound ipc:// endpoint's socket file, removed when the server goes
  // (ZeroMQ leaves it behind): only if it is still the one bound here.
  struct IpcFile {
    std::string path;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  std::optional<IpcFile> ipc_file_;
  Applier applier_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> paused_{false};
  std::string scratch_;  // server thread only

  // Store flushes: queued by the server thread, run by the flusher thread,
  // answered by the server thread (woken through flushed_fd_).
  struct Flush {
    std::string routing_id;
    meta::Uuid store_uuid;
    uint64_t session = 0;
    uint64_t seq = 0;           // of the frame it answers
    bool resync_end = false;    // a resync's end mark (see StartFlush)
    bool at_stop = false;       // StartStopFlush's: nothing to answer
    uint64_t resync_begun = 0;  // resync_begun_ when the mark arrived
    std::optional<StoreFlush> flush;
    meta::Status result;
  };
  std::thread flusher_;
  int flushed_fd_ = -1;  // eventfd: a flush is done
  BusyPoll frame_poll_;  // server thread only
  // The sync begun at a stop ended, and whether it succeeded (server
  // thread only).
  bool stop_flush_ended_ = false;
  bool stop_flushed_ = false;
  std::atomic<bool> flushes_done_{false};   // flushed_ has news
  std::atomic<int64_t> flush_delay_ms_{0};  // test seam
  std::mutex flush_mu_;  // guards the three below; after mu_ if both
  std::condition_variable flush_cv_;
  std::vector<Flush> to_flush_;
  std::vector<Flush> flushed_;
  bool flusher_stop_ = false;

  mutable std::mutex mu_;  // guards everything below
  ReplicaIdentity identity_;
  uint64_t session_ = 0;            // current primary session, 0 = none
  bool primary_left_ = false;       // it said goodbye; no session until a hello
  bool primary_fractured_ = false;  // ... with kGoodbyeFractured
  uint64_t expected_seq_ = 0;       // seq of the primary's next frame
  uint64_t reply_seq_ = 0;          // seq of our next frame in the session
  std::string primary_routing_id_;
  std::string primary_name_;
  meta::Uuid primary_uuid_;
  std::string primary_endpoint_;
  Clock::time_point last_seen_{};
  uint64_t changes_applied_ = 0;
  uint64_t bytes_applied_ = 0;
  uint64_t bad_frames_ = 0;
  uint64_t apply_errors_ = 0;
  bool resyncing_ = false;
  std::string split_brain_with_;
  std::string split_brain_endpoint_;
  meta::Uuid split_brain_uuid_;
  Clock::time_point split_brain_seen_{};
  std::string recovery_folder_;
  std::string last_refusal_;
  bool discard_local_ = false;
  std::vector<DivergentExtent> divergent_;
  bool namespace_diverged_ = false;
  uint64_t resync_total_ = 0;
  uint64_t resync_done_ = 0;
  uint64_t resync_begun_ = 0;  // begin marks taken, ever
  Clock::time_point resync_started_{};
  Clock::time_point log_window_{};
  int logs_in_window_ = 0;
};

}  // namespace mirrorfs::sync
