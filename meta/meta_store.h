// MetaStore: a node's durable state (STORE/.mirrorfs/db, a RocksDB
// database) behind a domain interface: node identity, peers, each peer's
// fracture log (missed extents and missed namespace operations) and flags,
// and the clean-shutdown mark. The key layout is in meta/keys.h; nothing
// outside meta/ sees keys or RocksDB.
//
// One process at a time: RocksDB locks the database, and a second Open (from
// this or another process) fails with EBUSY. The CLI therefore talks to the
// daemon instead of opening the database while a daemon runs.
//
// Durability: identity, peer and flag writes are synced (WriteOptions::sync)
// before the method returns. Fracture-log writes take a `sync` argument:
// with sync = false the write is in RocksDB's write-ahead log in the page
// cache when the method returns, which survives a kill -9 of this process
// but not a crash of the host; SyncWal() later makes every such write
// durable at once (DESIGN.md guarantee 2: when the application fsyncs, and
// before a write returns after its peer was declared lost). Multi-key
// updates are one WriteBatch, so a crash leaves either all or none of them.
//
// Thread-safety: thread-safe. Reads run concurrently. The fracture-log
// writes are blind (no read) and take no lock across their RocksDB write,
// so concurrent callers proceed in parallel (RocksDB groups their WAL
// writes). Identity and peer updates are serialized by an internal leaf
// mutex held across their synced write.
//
// Errors: Status/Result, never exceptions. Codes: EINVAL bad argument,
// ENOENT unknown peer, EBUSY database in use, EUCLEAN corrupt data, ENOSPC
// disk full, ENOTSUP layout of another version, ENOMEM, EIO anything else.
// Messages name the database directory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meta/change.h"
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
  std::string mountpoint;       // last mounted as primary here; "" if never
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
  // corrupt, ENOTSUP if its key layout is not this build's (older or
  // newer: there is no converter).
  static Result<std::unique_ptr<MetaStore>> Open(const std::string& db_dir);

  // Syncs the WAL (so writes made with sync = false are durable too) and
  // closes the database.
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
  // Removes the peer, its fracture log (extents and namespace operations)
  // and its flags, in one synced batch. Fails with ENOENT if there is no
  // such peer. REQUIRES: the caller has stopped logging for the peer; a
  // fracture-log write racing this call may leave keys behind, which a later
  // PutPeer of the same name deletes (so they can only cost a re-send).
  Status RemovePeer(const std::string& name);
  // Returns all peers, sorted by name.
  Result<std::vector<PeerRecord>> ListPeers();

  // --- Fracture log (per peer) ---------------------------------------------
  // What `peer` has missed (DESIGN.md guarantee 1): per image path, the
  // extents to re-send; and, in order, the namespace operations to replay.
  // The owner of the in-memory log (sync/) is the merged truth while the
  // daemon runs; these methods persist it and LoadFracture reads it back.
  //
  // Every method fails with EINVAL on a malformed peer name, ENOENT if the
  // peer is not stored (checked against an in-memory copy of the peer list:
  // no read on the hot path), and EINVAL on an empty path or one containing
  // '\0'. `sync` = true makes the write durable before returning; false
  // leaves it in the WAL (see Durability above).
  //
  // Concurrency: adds are blind puts that commute, so any number may run at
  // once on any threads. The rewriting methods (ReplaceFracture,
  // MoveFracture, DropFracturePath, ClearAllFracture) delete a path's keys.
  // REQUIRES: no add for a path being rewritten runs concurrently with the
  // rewrite, and the extents a rewrite is given include every extent added
  // for that path before it; an add that races a rewrite may be deleted by
  // it. (The owner of the in-memory log orders the two under its lock.)

  // Logs one missed extent [offset, offset + length): one RocksDB Put (a
  // memtable insert and, with sync = false, one write(2) to the WAL), no
  // read, no lock held across it. Zero length logs nothing. Extents may
  // overlap, touch or repeat earlier ones.
  Status AddFractureExtent(const std::string& peer, const std::string& path,
                           uint64_t offset, uint64_t length, bool sync);
  // Logs several images' missed extents (path -> ranges) in one batch.
  // Empty sets are skipped.
  Status AddFractureExtents(const std::string& peer,
                            const std::map<std::string, ExtentSet>& extents,
                            bool sync);
  // Replaces everything logged for `path` by `now` (empty = drop the path),
  // in one batch: after resync progress, or to compact a path whose keys
  // overlap.
  Status ReplaceFracture(const std::string& peer, const std::string& path,
                         const ExtentSet& now, bool sync);
  // For a rename of `from` to `to` while the peer is down: drops `from`'s
  // log and replaces `to`'s by `merged_to` (what the caller computed for the
  // new name), in one batch. Per path: the caller calls it for every image
  // under a renamed directory. from == to is the same as ReplaceFracture.
  Status MoveFracture(const std::string& peer, const std::string& from,
                      const std::string& to, const ExtentSet& merged_to,
                      bool sync);
  // Drops everything logged for `path` (e.g. the image was deleted).
  Status DropFracturePath(const std::string& peer, const std::string& path,
                          bool sync);
  // Returns the peer's extent log: path -> the union of every logged extent
  // of that path; an empty map means nothing to re-send. Fails with EUCLEAN,
  // naming the peer and the path, if a stored key or value is corrupt.
  Result<std::map<std::string, ExtentSet>> LoadFracture(
      const std::string& peer);
  // Drops the peer's whole log, extents and namespace operations (not its
  // flags), synced; e.g. after a full sync or when the peer's copy was
  // replaced.
  Status ClearAllFracture(const std::string& peer);

  // Logs namespace operation number `seq` (a create, mkdir, symlink, unlink,
  // rmdir, rename, chmod, chown, set-times or truncate the peer missed); one
  // Put of EncodeChangeRecord(op) (meta/change_codec.h), never op.data. The
  // caller numbers operations in the order they were applied locally;
  // appending an existing seq replaces it. REQUIRES: op.path and op.target
  // contain no '\0' (EINVAL otherwise).
  Status AppendNamespaceOp(const std::string& peer, uint64_t seq,
                           const Change& op, bool sync);
  // Returns the peer's logged namespace operations, by ascending seq. Fails
  // with EUCLEAN, naming the peer and the seq, if a record is corrupt.
  Result<std::vector<std::pair<uint64_t, Change>>> LoadNamespaceOps(
      const std::string& peer);
  // Drops the operations with seq <= up_to_seq_inclusive (they were
  // replayed), synced: a replay must not be repeated after a crash, since
  // later operations may have changed the names it touches.
  Status DropNamespaceOps(const std::string& peer,
                          uint64_t up_to_seq_inclusive);

  Status SetPeerFlag(const std::string& peer, PeerFlag flag, bool on);
  // Returns the flag; false if never set.
  Result<bool> GetPeerFlag(const std::string& peer, PeerFlag flag);

  // The id this primary puts in its resync-begin marks to `peer` (synced).
  // A peer that says it is inconsistent because of this id holds at most
  // what the peer's fracture log (and the write-intent journal) covers.
  // Dropped with the log (ClearAllFracture) and with the peer.
  Status SetPeerResyncId(const std::string& peer, uint64_t id);
  // Returns the id; 0 if none.
  Result<uint64_t> GetPeerResyncId(const std::string& peer);

  // --- Node flags ----------------------------------------------------------

  // The daemon sets false when it starts serving and true as the last step
  // of a clean stop; false at startup means it crashed.
  Status SetCleanShutdown(bool clean);
  // Returns the mark; true for a fresh database.
  Result<bool> WasCleanShutdown();

  // --- Write-intent journal ------------------------------------------------

  // One region of one file (by inode number) that may have writes in flight.
  struct IntentRegion {
    uint64_t ino = 0;
    uint64_t region = 0;  // index: bytes [region * extent, + extent)
    bool operator<(const IntentRegion& o) const {
      return ino != o.ino ? ino < o.ino : region < o.region;
    }
  };
  // Records `regions` as active in one synced batch, together with the
  // region size (so a later run with another --intent-extent reads them
  // right). Returns once durable.
  Status RecordIntents(const std::vector<IntentRegion>& regions,
                       uint64_t extent_bytes);
  // Retires `regions` (not synced: a lost retire only re-sends data).
  Status RetireIntents(const std::vector<IntentRegion>& regions);
  // The active regions and the region size they were recorded with (0 if
  // none was ever recorded).
  Result<std::pair<std::vector<IntentRegion>, uint64_t>> LoadIntents();
  // Retires every region, synced (a clean stop; after crash recovery).
  Status ClearIntents();

  // A secondary's copy is inconsistent from the start of a resync into it
  // until its end (DESIGN.md guarantee 7); synced, so a crash keeps it.
  // `resync_id`: the id of the primary's resync-begin mark that made it
  // inconsistent, 0 for any other cause (recorded in the same batch).
  Status SetConsistent(bool consistent, uint64_t resync_id = 0);
  // Returns the mark; true for a fresh database.
  Result<bool> IsConsistent();
  // Returns the resync id recorded with an inconsistent mark; 0 if the copy
  // is consistent or became inconsistent for another cause.
  Result<uint64_t> InconsistentResyncId();

  // Makes every earlier write durable (syncs RocksDB's write-ahead log),
  // including the fracture-log writes made with sync = false by any thread.
  // Called when the application fsyncs and when a peer is declared lost.
  Status SyncWal();

 private:
  MetaStore(std::string dir, std::unique_ptr<rocksdb::DB> db);

  // Converts a RocksDB status of operation `what` into our Status.
  Status FromRocks(const rocksdb::Status& s, std::string_view what) const;
  // EINVAL unless `name` is a valid peer name.
  Status CheckPeerName(std::string_view name) const;
  // OK if `name` is a stored peer (an in-memory lookup); else EINVAL for a
  // malformed name, ENOENT for an unknown one.
  Status CheckPeerKnown(std::string_view name);
  // EINVAL unless `path` is a valid image path (non-empty, no '\0').
  static Status CheckPath(const std::string& peer, std::string_view path);
  // Adds to `batch` the puts of `set`'s extents as fracture keys of `path`.
  Status PutExtents(rocksdb::WriteBatch* batch, const std::string& peer,
                    const std::string& path, const ExtentSet& set,
                    std::string_view what);
  // Adds to `batch` the deletion of every key starting with `prefix`.
  Status DeletePrefix(rocksdb::WriteBatch* batch, std::string_view prefix,
                      std::string_view what);
  // Reads one key: OK with *found = false if absent.
  Status Get(std::string_view key, std::string* value, bool* found);
  // Applies `batch` atomically; `sync` as in rocksdb::WriteOptions.
  Status Write(rocksdb::WriteBatch* batch, bool sync, std::string_view what);

  const std::string dir_;
  const std::unique_ptr<rocksdb::DB> db_;
  // Serializes read-modify-write sequences on db_ (peer additions and
  // removals, first-time node_uuid generation) so none is lost to a
  // concurrent one. Guards no memory. Held across a synced write; never
  // taken by the fracture-log methods.
  // Lock order: rmw_mu_ before peers_mu_.
  std::mutex rmw_mu_;
  // Guards known_peers_. Held only for a lookup or an update of the set,
  // never across I/O. Lock order: leaf.
  std::mutex peers_mu_;
  // The names of the stored peers (the "peer/" keys), loaded at Open and
  // kept in step by PutPeer and RemovePeer.
  std::set<std::string, std::less<>> known_peers_;
};

}  // namespace mirrorfs::meta
