// Node: one mirrorfs daemon serving one store, as primary (FUSE mount plus
// fan-out to peers) or secondary (replication endpoint applying changes).
// It builds every dependency once (meta store, ZeroMQ context, sessions,
// volume, mount, control socket), answers the control socket, and stops
// cleanly: flush to peers, unmount, mark the stop clean.
//
// Thread-safety: Start() and Run() are called once, from the main thread;
// RequestStop() is thread-safe (control socket thread, signal thread).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cli/control.h"
#include "cli/options.h"
#include "meta/status.h"
#include "sync/curve.h"
#include "sync/generation.h"
#include "sync/replica_server.h"

namespace zmq {
class context_t;
}

namespace mirrorfs::meta {
class MetaStore;
struct NodeIdentity;
struct PeerRecord;
}  // namespace mirrorfs::meta
namespace mirrorfs::sync {
class FanOut;
class IntentJournal;
class MetaIntentStore;
class ReplicaServer;
}  // namespace mirrorfs::sync
namespace mirrorfs::fs {
class Volume;
class FuseMount;
}  // namespace mirrorfs::fs

namespace mirrorfs::cli {

class Node : public sync::ReplicaHost {
 public:
  explicit Node(NodeOptions options);
  ~Node();

  // Opens the store and brings the node up: returns once the mount is
  // visible (primary) or the endpoint is bound (secondary), or with an error
  // that says what to fix.
  meta::Status Start();
  // Serves until stopped (unmount, `mirrorfs stop`, SIGTERM/SIGINT), then
  // stops cleanly. Returns the first error of the stop.
  meta::Status Run();
  void RequestStop();
  // Re-reads the authorized keys file (SIGHUP, `peer add`); logs the result.
  void ReloadKeys();

 private:
  // Loads the CURVE keys and starts the ZAP handler (before anything binds
  // or connects), or checks that a keyless listen stays on loopback.
  meta::Status SetUpSecurity();
  // Start() after the identity is loaded: applies the options, starts the
  // role and the control socket.
  meta::Status StartServing();
  meta::Status StartPrimary();
  meta::Status StartSecondary();
  // Binds the listen endpoint: as a secondary's replication server, or, on
  // a primary, to recognise split brain and stale primaries.
  meta::Status StartListener(bool primary_mode);
  sync::ReplicaIdentity ReplicaIdentityNow(bool* ok);
  // On a secondary: its primary has a session and spoke within the peer
  // timeout (and did not say goodbye).
  bool PrimaryLive(const sync::ReplicaSnapshot& r) const;
  // The primary's state as a secondary sees it: split-brain, fractured,
  // disconnected, syncing or connected.
  const char* PrimaryState(const sync::ReplicaSnapshot& r) const;
  // The node this one is in split brain with ("" if none): the primary a
  // secondary refuses, or a peer of a primary.
  std::string SplitBrainWith(const sync::ReplicaSnapshot& r) const;
  // A secondary refusing a diverged primary that is neither one of its own
  // peers nor its current primary: status lists it as a peer of its own.
  bool ShowsRefusedPrimary(const sync::ReplicaSnapshot& r) const;
  // Unmounts the primary's mount at once, not lazily: a lazy detach would
  // hide the mount from new opens (they would land in the directory under
  // it, unmirrored) while the daemon waits for open files to close. Returns
  // why it could not ("" once unmounted, or already gone if `gone_ok`);
  // `verb` is the command to run again once the mount is free.
  std::string UnmountNow(const std::string& verb, bool gone_ok);

  // sync::ReplicaHost (called on the replica thread).
  meta::Status AdoptStore(const meta::Uuid& store_uuid) override;
  meta::Status SetConsistent(bool consistent, uint64_t resync_id) override;
  meta::Status SetGenerations(const sync::Generations& generations) override;
  void PrimaryAccepted(const std::string& name, const meta::Uuid& uuid,
                       const std::string& endpoint) override;
  meta::Result<std::string> SaveRecovery() override;
  void Settled() override;
  // Before the mount opens: if the journal holds active regions (an unclean
  // stop), adds them to every peer's fracture log and retires them.
  meta::Status RecoverFromCrash();
  // Starts mirroring to `record` (its fracture log loaded from the store).
  meta::Status AddSession(const meta::PeerRecord& record);
  ControlReply HandleControl(const std::vector<std::string>& words);
  ControlReply PeerList(bool json);
  // The listener's snapshot, with what the primary's own sessions correct.
  sync::ReplicaSnapshot ReplicaNow();
  ControlReply Verify(const std::vector<std::string>& words);
  ControlReply PeerChange(const std::string& verb,
                          const std::vector<std::string>& words);
  std::string StatusJson();
  std::string StatusText();

  NodeOptions options_;
  std::unique_ptr<meta::MetaStore> meta_;
  std::unique_ptr<meta::NodeIdentity> identity_;
  // The identity as stored before Start(), while a start is unfinished or
  // failed: the destructor puts its name, endpoint, role and mountpoint
  // back.
  std::unique_ptr<meta::NodeIdentity> restore_on_exit_;
  std::unique_ptr<zmq::context_t> zmq_;
  std::mutex curve_mu_;  // guards curve_ (replaced whole on reload)
  std::shared_ptr<const sync::CurveConfig> curve_;  // null: plain links
  std::unique_ptr<sync::ZapHandler> zap_;
  std::unique_ptr<sync::GenerationKeeper> generations_;  // primary only
  std::mutex recovery_mu_;  // guards divergent_paths_, recovery_folder_
  std::vector<std::string> divergent_paths_;
  std::string recovery_folder_;
  std::unique_ptr<sync::MetaIntentStore> intent_store_;
  std::unique_ptr<sync::IntentJournal> journal_;
  std::unique_ptr<sync::FanOut> fan_out_;
  // Crash recovery at start: regions of the journal queued for every peer.
  uint64_t recovered_regions_ = 0;
  uint64_t recovered_bytes_ = 0;
  bool recovered_ = false;
  std::unique_ptr<sync::ReplicaServer> replica_;
  std::unique_ptr<fs::Volume> volume_;
  std::unique_ptr<fs::FuseMount> mount_;
  ControlServer control_;
  int store_fd_ = -1;

  std::mutex stop_mu_;  // guards stop_requested_ and the mount_ pointer
  std::condition_variable stop_cv_;
  bool stop_requested_ = false;
};

}  // namespace mirrorfs::cli
