// MetaStore: a node's durable state (STORE/.mirrorfs/db, a RocksDB
// database) behind a domain interface: node identity, peers, each peer's
// fracture log and flags, and the clean-shutdown mark. The key layout is in
// meta/keys.h; nothing outside meta/ sees keys or RocksDB.
//
// One process at a time: RocksDB locks the database, and a second Open (from
// this or another process) fails with EBUSY. The CLI therefore talks to the
// daemon instead of opening the database while a daemon runs.
//
// Durability: every write is synced (WriteOptions::sync) before the method
// returns, except ClearFracture (losing a clear in a crash only re-sends
// data, it never hides a divergence). Multi-key updates are one WriteBatch,
// so a crash leaves either all or none of them.
//
// Thread-safety: thread-safe. Reads run concurrently; read-modify-write
// methods are serialized by an internal leaf mutex that is held across
// their RocksDB write, including its fsync: concurrent AddFracture calls
// queue behind each other's sync (about a millisecond each). Batch misses
// in memory and call AddFracture per batch, not per application write.
//
// Errors: Status/Result, never exceptions. Codes: EINVAL bad argument,
// ENOENT unknown peer, EBUSY database in use, EUCLEAN corrupt data, ENOSPC
// disk full, ENOTSUP layout too new, ENOMEM, EIO anything else. Messages
// name the database directory.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "meta/extent_set.h"
#include "meta/status.h"
#include "meta/uuid.h"

namespace rocksdb {
class DB;
class Status;
class WriteBatch;
}  // namespace rocksdb

namespace mirrorfs::meta {

struct NodeIdentity {
  std::string name;
  Uuid node_uuid;
  Uuid store_uuid;              // zero until paired with a peer
  std::string role;             // "primary" | "secondary" | "" (not yet set)
  std::string listen_endpoint;  // e.g. "tcp://0.0.0.0:7790"
  std::string generation;       // opaque; see DESIGN.md "generation"
};

struct PeerRecord {
  std::string name;      // [A-Za-z0-9._-]{1,64}
  std::string endpoint;  // ZeroMQ endpoint
  Uuid uuid;             // zero until the peer has been met
};

enum class PeerFlag {
  kNamespaceDirty,  // the peer missed namespace operations (create, rename…)
  kFullSyncNeeded,  // the peer's copy can't be trusted: compare everything
};

class MetaStore {
 public:
  // Opens the database in `db_dir`, creating it if missing (the parent
  // directory must exist). Returns the open store on success. Fails with
  // EBUSY if another MetaStore (any process) has it open, EUCLEAN if it is
  // corrupt, ENOTSUP if its key layout is newer than this build's.
  static Result<std::unique_ptr<MetaStore>> Open(const std::string& db_dir);

  // Closes the database (no flush beyond what RocksDB does on close; every
  // acknowledged write is already in the synced WAL).
  ~MetaStore();
  MetaStore(const MetaStore&) = delete;
  MetaStore& operator=(const MetaStore&) = delete;

  const std::string& dir() const { return dir_; }

  // --- Node identity -------------------------------------------------------

  // Returns the stored identity. On a fresh database, generates node_uuid,
  // persists it, and returns it with every other field empty/zero. Fails
  // with EUCLEAN if a stored Uuid does not parse.
  Result<NodeIdentity> LoadIdentity();
  // Replaces the stored identity (one synced batch). REQUIRES: node_uuid is
  // not zero and role is "", "primary" or "secondary" (EINVAL otherwise).
  Status SaveIdentity(const NodeIdentity& identity);

  // --- Peers ---------------------------------------------------------------

  // Adds or replaces the peer named peer.name. Fails with EINVAL if the name
  // is not [A-Za-z0-9._-]{1,64} or the endpoint is empty.
  Status PutPeer(const PeerRecord& peer);
  // Removes the peer, its fracture log and its flags, in one synced batch.
  // Fails with ENOENT if there is no such peer.
  Status RemovePeer(const std::string& name);
  // Returns all peers, sorted by name.
  Result<std::vector<PeerRecord>> ListPeers();

  // --- Fracture log (per peer) ---------------------------------------------
  // The extents of each image that `peer` has missed; see DESIGN.md
  // guarantee 1. Namespace misses are the kNamespaceDirty flag.
  // All methods fail with EINVAL on a malformed peer name and ENOENT if the
  // peer is not known (so nothing can be logged for a removed peer).

  // Merges `extents` (path -> missed ranges) into the stored log, in one
  // batch, synced: on success the record is durable. Empty sets are
  // skipped. REQUIRES: paths non-empty, without '\0' (EINVAL otherwise).
  // If a stored record is unreadable it is replaced by the new extents and
  // kFullSyncNeeded is set in the same batch, so nothing is left uncovered.
  Status AddFracture(const std::string& peer,
                     const std::map<std::string, ExtentSet>& extents);
  // Returns the peer's whole log (path -> ranges); empty map = in sync as far
  // as data goes. Fails with EUCLEAN if a stored record is corrupt.
  Result<std::map<std::string, ExtentSet>> FractureOf(const std::string& peer);
  // Removes `done` from the log of `path` (deleting the record once empty),
  // e.g. after resync re-sent those ranges. Not synced (see above).
  Status ClearFracture(const std::string& peer, const std::string& path,
                       const ExtentSet& done);
  // Drops the peer's whole data log (not its flags), synced; e.g. after a
  // full sync or when the peer's copy was replaced.
  Status ClearAllFracture(const std::string& peer);

  Status SetPeerFlag(const std::string& peer, PeerFlag flag, bool on);
  // Returns the flag; false if never set.
  Result<bool> GetPeerFlag(const std::string& peer, PeerFlag flag);

  // --- Node flags ----------------------------------------------------------

  // The daemon sets false when it starts serving and true as the last step
  // of a clean stop; false at startup means it crashed.
  Status SetCleanShutdown(bool clean);
  // Returns the mark; true for a fresh database.
  Result<bool> WasCleanShutdown();

  // Syncs RocksDB's write-ahead log to disk (covers unsynced writes such as
  // ClearFracture).
  Status Flush();

 private:
  MetaStore(std::string dir, std::unique_ptr<rocksdb::DB> db);

  // Converts a RocksDB status of operation `what` into our Status.
  Status FromRocks(const rocksdb::Status& s, std::string_view what) const;
  // EINVAL unless `name` is a valid peer name.
  Status CheckPeerName(std::string_view name) const;
  // ENOENT unless `name` is a stored peer. Caller holds rmw_mu_ when the answer
  // must stay true until its write.
  Status CheckPeerExists(const std::string& name);
  // Reads one key: OK with *found = false if absent.
  Status Get(std::string_view key, std::string* value, bool* found);
  // Applies `batch` atomically; `sync` as in rocksdb::WriteOptions.
  Status Write(rocksdb::WriteBatch* batch, bool sync, std::string_view what);

  const std::string dir_;
  const std::unique_ptr<rocksdb::DB> db_;
  // Serializes read-modify-write sequences on db_ (fracture merges and
  // clears, peer removal vs. additions for that peer, first-time node_uuid
  // generation) so none is lost to a concurrent one. Guards no memory.
  // Lock order: leaf (nothing else is locked while holding it).
  std::mutex rmw_mu_;
};

}  // namespace mirrorfs::meta
