// FractureLog: what one peer has missed while it could not be mirrored to —
// the byte extents of each image (an ExtentSet per path, merged as they
// grow) and the namespace changes, in order. DESIGN.md guarantee 1 rests on
// it: every range where the peer's copy may differ is in this log (or in the
// write-intent journal) on the primary's disk.
//
// Memory holds the merged truth; RocksDB (meta::MetaStore) holds a copy that
// grows with the damage, not with image sizes. A miss that adds coverage is
// written at once without fsync: a RocksDB WAL write survives kill -9 of the
// process. MakeDurable() fsyncs it; it runs when the application fsyncs and
// when a peer is lost with changes in flight (guarantee 2). Progress of a
// resync (Done, called once the peer has the data on its disk) is persisted
// without a sync (PersistProgress): losing it only re-sends data.
//
// Renames and unlinks while the peer is away move or drop the extents logged
// under the old path, so the log always names what the primary has now; the
// namespace ops themselves are replayed in order before the data.
//
// Thread-safety: thread-safe; mu_ is a leaf lock (taken after the session's
// and the volume's locks; held across a non-synced RocksDB write only).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "meta/change.h"
#include "meta/extent_set.h"
#include "meta/status.h"

namespace mirrorfs::meta {
class MetaStore;
}

namespace mirrorfs::sync {

class FractureLog {
 public:
  // Beyond this many missed namespace changes the log stops listing them
  // and asks for a full sync instead (its cost no longer grows).
  static constexpr size_t kMaxNamespaceOps = 100000;

  // `*store` must outlive the log; `peer` must be a stored peer.
  FractureLog(meta::MetaStore* store, std::string peer);

  // Reads the persisted log. Returns an error if it is unreadable; the
  // log then asks for a full sync (nothing is trusted, nothing is lost).
  meta::Status Load();

  // Records that the peer missed `change`. Returns an error only if the
  // record could not be written; the in-memory log has it anyway.
  meta::Status Record(const meta::Change& change);
  // The peer is mirrored live again but a resync still replays the log: a
  // live rename or unlink moves or drops what the log holds under the old
  // name (nothing is added to the namespace ops: the change went live).
  void Follow(const meta::Change& change);
  // Makes every earlier Record durable (fsync of the state database).
  meta::Status MakeDurable();
  // The write-intent journal covers the data extents: until a region
  // retires, a crash adds it to every log again, and the journal syncs the
  // logs before any region retires. Then only the rest (namespace changes,
  // names followed, flags) needs a sync when the application fsyncs.
  void set_data_covered_by_journal(bool on);
  // True if an application's fsync must make this log durable now: there
  // are records the journal does not cover and no sync claimed since.
  // Claims them: the caller syncs (MakeDurable, or the state database's WAL
  // for several logs at once).
  bool ClaimSyncForFsync();

  // A full sync compares every block with the peer: for a new peer, one of
  // unknown age, or after the log overflowed or was unreadable.
  bool full_sync() const;
  meta::Status SetFullSync(bool on);

  // The peer may hold namespace changes we lack (it was primary): the next
  // resync reconciles the namespace even if nothing else is logged.
  meta::Status MarkNamespaceDirty();
  void ClearNamespaceDirty();

  // Snapshots for a resync.
  std::map<std::string, meta::ExtentSet> Extents() const;
  std::vector<std::pair<uint64_t, meta::Change>> NamespaceOps() const;

  // A mark to take before reading data for a resync, for Done.
  uint64_t Epoch() const;
  // The peer applied [offset, offset+length) of `path` from the primary's
  // data as it was read after Epoch() returned `read_at`: it is no longer
  // missing, unless the path gained records (a change the peer missed, or
  // extents renamed onto it) since then: those may be newer than what the
  // peer got, so the path keeps its extents for the next pass.
  void Done(const std::string& path, uint64_t offset, uint64_t length,
            uint64_t read_at);
  // The peer replayed the namespace ops up to `seq` (inclusive).
  meta::Status NamespaceDone(uint64_t seq);
  // Persists the in-memory log exactly (compacts the on-disk records), e.g.
  // when a resync ends or the node stops.
  meta::Status Checkpoint();
  // As Checkpoint, without the sync: resync progress that survives a kill
  // of this process (a lost rewrite only re-sends data).
  meta::Status PersistProgress();
  // Forgets everything (after a successful full sync).
  meta::Status Clear();

  // The id this primary's resync-begin marks to the peer carry (DESIGN.md
  // guarantee 6 across a crash). Made and stored (synced) on first use;
  // kept as long as the log: a peer that reports itself inconsistent
  // because of this id holds at most what this log and the write-intent
  // journal cover, so the next resync resumes from the log instead of
  // comparing every block. Returns 0 if it cannot be stored (then the
  // resync names no id and a crash leads to a full comparison).
  uint64_t ResyncId();
  // True if `id` (from the peer's hello reply) is this log's resync id.
  bool IsOwnResync(uint64_t id) const;

  bool empty() const;
  uint64_t bytes() const;
  uint64_t extents() const;
  uint64_t namespace_ops() const;

 private:
  void FollowNamesLocked(const meta::Change& change);
  void DropPathLocked(const std::string& path, bool with_children);
  void MovePathLocked(const std::string& from, const std::string& to);
  meta::Status AppendOpLocked(const meta::Change& change);

  meta::MetaStore* const store_;
  const std::string peer_;

  mutable std::mutex mu_;  // guards all below; leaf lock
  std::map<std::string, meta::ExtentSet> extents_;
  std::vector<std::pair<uint64_t, meta::Change>> ops_;
  uint64_t next_op_seq_ = 1;
  uint64_t bytes_ = 0;  // sum of TotalBytes() of extents_
  uint64_t count_ = 0;  // sum of Count() of extents_
  bool full_sync_ = false;
  bool data_covered_ = false;    // by the write-intent journal
  bool uncovered_dirty_ = true;  // records the journal does not cover
  bool namespace_dirty_ = false;
  uint64_t resync_id_ = 0;  // 0: none stored
  // Paths whose on-disk records are out of date with memory (Done).
  std::map<std::string, bool> stale_paths_;
  // The Epoch() of each logged path's latest record or rename onto it (a
  // path missing here has none since Load); erased with the path.
  uint64_t epoch_ = 0;
  std::map<std::string, uint64_t> touched_at_;
};

}  // namespace mirrorfs::sync
