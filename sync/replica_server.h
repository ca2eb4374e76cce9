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
// Thread-safety: Start/Stop/Snapshot are thread-safe. The socket and the
// Applier belong to the server thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meta/source.h"
#include "meta/status.h"
#include "meta/uuid.h"
#include "sync/applier.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace mirrorfs::sync {

struct ReplicaIdentity {
  std::string name;
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // zero until the store first meets a primary
  // False while a resync is under way (or never finished): the copy may be
  // a mix of old and new data (DESIGN.md guarantee 7).
  bool consistent = true;
};

struct ReplicaSnapshot {
  std::string endpoint;
  meta::Uuid store_uuid;
  bool has_primary = false;
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
};

class ReplicaServer {
 public:
  static constexpr int kMaxBadFrameLogsPerSecond = 10;

  // `*context` must outlive the server. `store_root_fd` is the store's
  // directory, owned by the caller and open for the server's lifetime.
  // `adopt_store_uuid` persists the store identity a fresh store adopts;
  // `set_consistent` persists the copy's consistency (both run on the
  // server thread; an error refuses the frame that needed it).
  ReplicaServer(
      zmq::context_t* context, std::string listen_endpoint,
      ReplicaIdentity identity, int store_root_fd,
      std::function<meta::Status(const meta::Uuid&)> adopt_store_uuid,
      std::function<meta::Status(bool)> set_consistent);
  ~ReplicaServer();  // Stop()s
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Binds the endpoint. Returns OK once bound, or an error naming the
  // endpoint (address in use, bad endpoint, ...). REQUIRES: before Start().
  meta::Status Bind();
  // Test seam (see Applier::SetVolatileWrites). REQUIRES: before Start().
  void SetVolatileWrites(bool on) { applier_.SetVolatileWrites(on); }
  void Start();
  // Stops serving, then flushes every applied change to disk.
  void Stop();

  ReplicaSnapshot Snapshot() const;

 private:
  using Clock = std::chrono::steady_clock;
  void Run();
  void Handle(const std::string& routing_id, std::string_view frame);
  void Reply(const std::string& routing_id, const std::string& frame);
  void BadFrame(const std::string& what);

  zmq::context_t* context_;
  const std::string endpoint_;
  std::function<meta::Status(const meta::Uuid&)> adopt_store_uuid_;
  std::function<meta::Status(bool)> set_consistent_;
  std::vector<meta::NamespaceEntry> manifest_;  // parts so far (server thread)
  std::unique_ptr<zmq::socket_t> socket_;
  Applier applier_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::string scratch_;  // server thread only

  mutable std::mutex mu_;  // guards everything below
  ReplicaIdentity identity_;
  uint64_t session_ = 0;  // current primary session, 0 = none
  uint64_t expected_seq_ = 0;  // seq of the primary's next frame
  uint64_t reply_seq_ = 0;     // seq of our next frame in the session
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
  uint64_t resync_total_ = 0;
  uint64_t resync_done_ = 0;
  Clock::time_point log_window_{};
  int logs_in_window_ = 0;
};

}  // namespace mirrorfs::sync
