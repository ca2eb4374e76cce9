#include "meta/meta_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>

#include <charconv>
#include <cstdlib>
#include <exception>
#include <functional>
#include <new>
#include <set>
#include <string_view>
#include <utility>

#include "meta/change_codec.h"
#include "meta/keys.h"

namespace mirrorfs::meta {
namespace {

// Runs `f`, turning any exception (in practice std::bad_alloc from a string
// or map) into an error Status so none crosses the module boundary.
template <typename F>
auto Guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Status::Error(ENOMEM, "state database: out of memory");
  } catch (const std::exception& e) {
    return Status::Error(
        EIO, std::string("state database: unexpected: ") + e.what());
  }
}

rocksdb::Options TinyDbOptions() {
  rocksdb::Options o;
  o.create_if_missing = true;
  // A few KiB of state: small buffers and caches, and a LOG file that only
  // records problems instead of megabytes of compaction chatter.
  o.info_log_level = rocksdb::WARN_LEVEL;
  o.keep_log_file_num = 2;
  o.max_log_file_size = 1 << 20;
  o.stats_dump_period_sec = 0;
  o.stats_persist_period_sec = 0;
  o.write_buffer_size = 4 << 20;
  o.max_write_buffer_number = 2;
  o.max_open_files = 32;
  o.max_manifest_file_size = 4 << 20;
  o.max_background_jobs = 2;
  // A record that fails its checksum inside the write-ahead log is
  // corruption, reported (the open fails, see OpenError), never skipped:
  // RocksDB's default (point in time) stops replaying there and opens
  // without a word, dropping every later record, and a dropped fracture
  // record is a divergence nobody knows of. An incomplete record at the
  // end (a write cut short by a crash) is still dropped, as it must be.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(4 << 20);
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return o;
}

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

bool StartsWith(const rocksdb::Slice& s, std::string_view prefix) {
  return s.size() >= prefix.size() &&
         std::string_view(s.data(), prefix.size()) == prefix;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string_view FlagName(PeerFlag flag) {
  switch (flag) {
    case PeerFlag::kNamespaceDirty:
      return keys::kFlagNamespaceDirty;
    case PeerFlag::kFullSyncNeeded:
      return keys::kFlagFullSyncNeeded;
  }
  return "unknown";
}

// Parses a non-empty decimal u64.
bool ParseDecimal(const std::string& text, uint64_t* out) {
  auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

// Turns a failed DB::Open into a message an operator can act on.
Status OpenError(const std::string& dir, const rocksdb::Status& s) {
  const std::string msg = s.ToString();
  // RocksDB reports its LOCK file held by another process as "While lock
  // file: DIR/LOCK: Resource temporarily unavailable" and by this process as
  // "lock hold by current process".
  if (s.IsIOError() && (Contains(msg, "While lock file") ||
                        Contains(msg, "lock hold by current process"))) {
    return Status::Error(
        EBUSY, "state database " + dir +
                   " is in use by another mirrorfs process (is a daemon "
                   "already running on this store?)");
  }
  const std::string corrupt_tail =
      "; move it aside to start over (peers will then need a full sync)";
  if (s.IsCorruption()) {
    return Status::Error(EUCLEAN, "state database " + dir +
                                      " is corrupt: " + msg + corrupt_tail);
  }
  if (s.IsNoSpace()) {
    return Status::Error(ENOSPC, "cannot open state database " + dir +
                                     ": no space left on device: " + msg);
  }
  if (Contains(msg, "Permission denied")) {
    return Status::Error(EACCES, "cannot open state database " + dir + ": " +
                                     msg + "; check ownership and permissions");
  }
  // A database whose CURRENT names a missing MANIFEST, or whose MANIFEST
  // names a missing table, is damaged, not absent.
  if ((s.IsPathNotFound() || Contains(msg, "No such file")) &&
      FileExists(dir + "/CURRENT")) {
    return Status::Error(EUCLEAN, "state database " + dir +
                                      " is corrupt: " + msg + corrupt_tail);
  }
  if (s.IsPathNotFound() || Contains(msg, "No such file")) {
    return Status::Error(ENOENT, "cannot open state database " + dir + ": " +
                                     msg +
                                     " (does the store directory exist?)");
  }
  return Status::Error(EIO, "cannot open state database " + dir + ": " + msg);
}

// Calls fn(key, value) for every key starting with `prefix`, in key order,
// from one consistent view. Stops at the first error fn returns.
Status ForEachWithPrefix(
    rocksdb::DB* db, std::string_view prefix,
    const std::function<Status(const rocksdb::Slice&, const rocksdb::Slice&)>&
        fn,
    const std::function<Status(const rocksdb::Status&)>& on_error) {
  // The upper bound keeps the iterator from wandering past the prefix
  // through deleted keys, and lets RocksDB skip whole files.
  const std::string end = keys::PrefixEnd(prefix);
  const rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro));
  for (it->Seek(rocksdb::Slice(prefix.data(), prefix.size()));
       it->Valid() && StartsWith(it->key(), prefix); it->Next()) {
    MFS_RETURN_IF_ERROR(fn(it->key(), it->value()));
  }
  if (!it->status().ok()) return on_error(it->status());
  return Status::Ok();
}

Result<uint64_t> ParseDecimal(std::string_view text) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size() || text.empty()) {
    return Status::Error(EINVAL, "not a number");
  }
  return v;
}

// `bytes` with every byte outside printable ASCII as \xNN, for messages
// about keys that may hold anything.
std::string Printable(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

std::string_view View(const rocksdb::Slice& s) {
  return std::string_view(s.data(), s.size());
}

constexpr std::string_view kFullSyncAdvice =
    "; clear the peer's log and run a full sync of it";

}  // namespace

MetaStore::MetaStore(std::string dir, std::unique_ptr<rocksdb::DB> db)
    : dir_(std::move(dir)), db_(std::move(db)) {}

MetaStore::~MetaStore() {
  // Writes made with sync = false must not depend on how the next process
  // opens the database. Errors have no one to go to: a lost unsynced write
  // is what a host crash would lose, and the intent journal covers it.
  db_->SyncWAL().PermitUncheckedError();
  db_->Close().PermitUncheckedError();
}

Result<std::unique_ptr<MetaStore>> MetaStore::Open(const std::string& db_dir) {
  return Guarded([&]() -> Result<std::unique_ptr<MetaStore>> {
    if (db_dir.empty()) {
      return Status::Error(EINVAL, "state database: empty directory name");
    }
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(TinyDbOptions(), db_dir, &raw);
    if (!s.ok()) return OpenError(db_dir, s);
    std::unique_ptr<MetaStore> store(
        new MetaStore(db_dir, std::unique_ptr<rocksdb::DB>(raw)));

    std::string version;
    bool found = false;
    MFS_RETURN_IF_ERROR(store->Get(keys::kVersion, &version, &found));
    const std::string start_over =
        "; move it aside to start over (peers will then need a full sync)";
    if (!found) {
      std::unique_ptr<rocksdb::Iterator> it(
          store->db_->NewIterator(rocksdb::ReadOptions()));
      it->SeekToFirst();
      if (!it->status().ok()) {
        return store->FromRocks(it->status(), "read layout version");
      }
      if (it->Valid()) {
        return Status::Error(ENOTSUP, "state database " + db_dir +
                                          " has no key layout version (it "
                                          "predates versioning)" +
                                          start_over);
      }
      rocksdb::WriteBatch batch;
      rocksdb::Status ps =
          batch.Put(keys::kVersion, std::to_string(keys::kLayoutVersion));
      if (!ps.ok()) return store->FromRocks(ps, "stamp layout version");
      MFS_RETURN_IF_ERROR(
          store->Write(&batch, /*sync=*/true, "stamp layout version"));
      return store;
    }
    Result<uint64_t> v = ParseDecimal(version);
    if (!v.ok() || *v == 0) {
      return Status::Error(EUCLEAN, "state database " + db_dir +
                                        " is corrupt: layout version is '" +
                                        version + "'" + start_over);
    }
    if (*v > keys::kLayoutVersion) {
      return Status::Error(
          ENOTSUP, "state database " + db_dir + " has key layout version " +
                       version + " but this mirrorfs understands up to " +
                       std::to_string(keys::kLayoutVersion) +
                       "; run the newer mirrorfs that wrote it");
    }
    if (*v < keys::kLayoutVersion) {
      return Status::Error(
          ENOTSUP, "state database " + db_dir + " has key layout version " +
                       version + ", older than this mirrorfs's " +
                       std::to_string(keys::kLayoutVersion) +
                       ", and cannot be converted" + start_over);
    }
    std::set<std::string, std::less<>> peers;
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        store->db_.get(), keys::kPeerPrefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice&) -> Status {
          peers.emplace(View(key).substr(keys::kPeerPrefix.size()));
          return Status::Ok();
        },
        [&](const rocksdb::Status& s) {
          return store->FromRocks(s, "list peers");
        }));
    store->known_peers_ = std::move(peers);
    return store;
  });
}

Status MetaStore::FromRocks(const rocksdb::Status& s,
                            std::string_view what) const {
  if (s.ok()) return Status::Ok();
  std::string msg =
      "state database " + dir_ + ": " + std::string(what) + ": " + s.ToString();
  if (s.IsCorruption()) {
    return Status::Error(EUCLEAN, msg +
                                      "; move it aside to start over (peers "
                                      "will then need a full sync)");
  }
  if (s.IsNoSpace()) return Status::Error(ENOSPC, msg);
  if (s.IsInvalidArgument()) return Status::Error(EINVAL, msg);
  if (s.IsNotFound()) return Status::Error(ENOENT, msg);
  return Status::Error(EIO, msg);
}

Status MetaStore::Get(std::string_view key, std::string* value, bool* found) {
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(),
                               rocksdb::Slice(key.data(), key.size()), value);
  *found = s.ok();
  if (s.IsNotFound()) return Status::Ok();
  return FromRocks(s, "read " + std::string(key));
}

Status MetaStore::Write(rocksdb::WriteBatch* batch, bool sync,
                        std::string_view what) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Write(wo, batch), what);
}

Status MetaStore::CheckPeerName(std::string_view name) const {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) {
      ok = false;
      break;
    }
  }
  if (ok) return Status::Ok();
  return Status::Error(EINVAL, "invalid peer name '" + std::string(name) +
                                   "': use 1 to 64 of A-Z a-z 0-9 . _ -");
}

Status MetaStore::CheckPeerKnown(std::string_view name) {
  {
    std::lock_guard<std::mutex> lock(peers_mu_);
    if (known_peers_.find(name) != known_peers_.end()) return Status::Ok();
  }
  MFS_RETURN_IF_ERROR(CheckPeerName(name));
  return Status::Error(ENOENT, "no peer named '" + std::string(name) + "'");
}

Status MetaStore::CheckPath(const std::string& peer, std::string_view path) {
  if (!path.empty() && path.find('\0') == std::string_view::npos) {
    return Status::Ok();
  }
  return Status::Error(EINVAL, "fracture log of peer " + peer +
                                   ": invalid image path '" + Printable(path) +
                                   "' (empty or containing a NUL byte)");
}

Status MetaStore::PutExtents(rocksdb::WriteBatch* batch,
                             const std::string& peer, const std::string& path,
                             const ExtentSet& set, std::string_view what) {
  std::string key = keys::FracturePathPrefix(peer, path);
  const size_t prefix_size = key.size();
  for (const Extent e : set) {
    key.resize(prefix_size);
    keys::AppendBe64(&key, e.offset);
    keys::AppendBe64(&key, e.length);
    MFS_RETURN_IF_ERROR(FromRocks(batch->Put(key, rocksdb::Slice()), what));
  }
  return Status::Ok();
}

Status MetaStore::DeletePrefix(rocksdb::WriteBatch* batch,
                               std::string_view prefix, std::string_view what) {
  const std::string end = keys::PrefixEnd(prefix);
  return FromRocks(
      batch->DeleteRange(rocksdb::Slice(prefix.data(), prefix.size()), end),
      what);
}

// --- Node identity ---------------------------------------------------------

Result<NodeIdentity> MetaStore::LoadIdentity() {
  return Guarded([&]() -> Result<NodeIdentity> {
    std::lock_guard<std::mutex> lock(rmw_mu_);
    NodeIdentity id;
    std::string value;
    bool found = false;
    auto corrupt = [&](std::string_view key, const Status& why) {
      return Status::Error(
          EUCLEAN, "state database " + dir_ + " is corrupt: " +
                       std::string(key) + ": " + why.message() +
                       "; move it aside to start over (peers will then need "
                       "a full sync)");
    };

    MFS_RETURN_IF_ERROR(Get(keys::kIdNodeUuid, &value, &found));
    if (found) {
      Result<Uuid> u = Uuid::Parse(value);
      if (!u.ok()) return corrupt(keys::kIdNodeUuid, u.status());
      id.node_uuid = *u;
    } else {
      id.node_uuid = Uuid::Generate();
      rocksdb::WriteBatch batch;
      rocksdb::Status s = batch.Put(keys::kIdNodeUuid, id.node_uuid.ToString());
      if (!s.ok()) return FromRocks(s, "generate node uuid");
      MFS_RETURN_IF_ERROR(Write(&batch, /*sync=*/true, "save node uuid"));
    }
    MFS_RETURN_IF_ERROR(Get(keys::kIdStoreUuid, &value, &found));
    if (found) {
      Result<Uuid> u = Uuid::Parse(value);
      if (!u.ok()) return corrupt(keys::kIdStoreUuid, u.status());
      id.store_uuid = *u;
    }
    const std::pair<std::string_view, std::string*> texts[] = {
        {keys::kIdName, &id.name},
        {keys::kIdRole, &id.role},
        {keys::kIdListen, &id.listen_endpoint},
        {keys::kIdGeneration, &id.generation},
        {keys::kIdMountpoint, &id.mountpoint},
    };
    for (const auto& [key, field] : texts) {
      MFS_RETURN_IF_ERROR(Get(key, &value, &found));
      if (found) *field = value;
    }
    return id;
  });
}

Status MetaStore::SaveIdentity(const NodeIdentity& id) {
  return Guarded([&]() -> Status {
    if (id.node_uuid.IsZero()) {
      return Status::Error(EINVAL, "node identity: node uuid is not set");
    }
    if (!id.role.empty() && id.role != "primary" && id.role != "secondary") {
      return Status::Error(EINVAL, "node identity: role '" + id.role +
                                       "' is not primary or secondary");
    }
    std::lock_guard<std::mutex> lock(rmw_mu_);
    rocksdb::WriteBatch batch;
    const std::pair<std::string_view, std::string> fields[] = {
        {keys::kIdName, id.name},
        {keys::kIdNodeUuid, id.node_uuid.ToString()},
        {keys::kIdStoreUuid, id.store_uuid.ToString()},
        {keys::kIdRole, id.role},
        {keys::kIdListen, id.listen_endpoint},
        {keys::kIdGeneration, id.generation},
        {keys::kIdMountpoint, id.mountpoint},
    };
    for (const auto& [key, value] : fields) {
      rocksdb::Status s = batch.Put(key, value);
      if (!s.ok()) return FromRocks(s, "save node identity");
    }
    return Write(&batch, /*sync=*/true, "save node identity");
  });
}

// --- Peers -----------------------------------------------------------------

Status MetaStore::PutPeer(const PeerRecord& peer) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerName(peer.name));
    if (peer.endpoint.empty()) {
      return Status::Error(EINVAL, "peer '" + peer.name + "': empty endpoint");
    }
    const std::string what = "save peer " + peer.name;
    const auto& b = peer.uuid.bytes();
    std::string value(reinterpret_cast<const char*>(b.data()), b.size());
    value += peer.endpoint;
    // Under the lock so a concurrent RemovePeer of the same name is ordered.
    std::lock_guard<std::mutex> lock(rmw_mu_);
    rocksdb::WriteBatch batch;
    if (!CheckPeerKnown(peer.name).ok()) {
      // A new peer starts with an empty log. Delete what a log write that
      // raced an earlier RemovePeer of this name may have left.
      MFS_RETURN_IF_ERROR(
          DeletePrefix(&batch, keys::FracturePeerPrefix(peer.name), what));
      MFS_RETURN_IF_ERROR(
          DeletePrefix(&batch, keys::NamespaceOpPeerPrefix(peer.name), what));
      MFS_RETURN_IF_ERROR(
          DeletePrefix(&batch, keys::PeerFlagPeerPrefix(peer.name), what));
    }
    MFS_RETURN_IF_ERROR(
        FromRocks(batch.Put(keys::PeerKey(peer.name), value), what));
    MFS_RETURN_IF_ERROR(Write(&batch, /*sync=*/true, what));
    std::lock_guard<std::mutex> peers_lock(peers_mu_);
    known_peers_.insert(peer.name);
    return Status::Ok();
  });
}

Status MetaStore::RemovePeer(const std::string& name) {
  return Guarded([&]() -> Status {
    const std::string what = "remove peer " + name;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerKnown(name));
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(FromRocks(batch.Delete(keys::PeerKey(name)), what));
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePeerPrefix(name), what));
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::NamespaceOpPeerPrefix(name), what));
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::PeerFlagPeerPrefix(name), what));
    // Forget the name first, so log writes that start from now on fail with
    // ENOENT instead of landing after the deletion.
    {
      std::lock_guard<std::mutex> peers_lock(peers_mu_);
      known_peers_.erase(name);
    }
    Status written = Write(&batch, /*sync=*/true, what);
    if (!written.ok()) {
      std::lock_guard<std::mutex> peers_lock(peers_mu_);
      known_peers_.insert(name);
    }
    return written;
  });
}

Result<std::vector<PeerRecord>> MetaStore::ListPeers() {
  return Guarded([&]() -> Result<std::vector<PeerRecord>> {
    std::vector<PeerRecord> peers;
    auto on_error = [&](const rocksdb::Status& s) {
      return FromRocks(s, "list peers");
    };
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), keys::kPeerPrefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice& value) -> Status {
          PeerRecord p;
          p.name = key.ToString().substr(keys::kPeerPrefix.size());
          if (value.size() < 16) {
            return Status::Error(
                EUCLEAN, "state database " + dir_ + " is corrupt: peer '" +
                             p.name + "' record is " +
                             std::to_string(value.size()) +
                             " bytes; remove and re-add the peer");
          }
          p.uuid =
              Uuid::FromBytes(reinterpret_cast<const uint8_t*>(value.data()));
          p.endpoint.assign(value.data() + 16, value.size() - 16);
          peers.push_back(std::move(p));
          return Status::Ok();
        },
        on_error));
    return peers;  // key order is name order
  });
}

// --- Fracture log ----------------------------------------------------------

Status MetaStore::AddFractureExtent(const std::string& peer,
                                    const std::string& path, uint64_t offset,
                                    uint64_t length, bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    MFS_RETURN_IF_ERROR(CheckPath(peer, path));
    if (length == 0) return Status::Ok();
    const std::string key = keys::FractureExtentKey(peer, path, offset, length);
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s = db_->Put(wo, key, rocksdb::Slice());
    if (s.ok()) return Status::Ok();
    return FromRocks(s, "log missed extent of '" + path + "' for peer " + peer);
  });
}

Status MetaStore::AddFractureExtents(
    const std::string& peer, const std::map<std::string, ExtentSet>& extents,
    bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    for (const auto& [path, set] : extents) {
      MFS_RETURN_IF_ERROR(CheckPath(peer, path));
    }
    const std::string what = "log missed extents for peer " + peer;
    rocksdb::WriteBatch batch;
    for (const auto& [path, set] : extents) {
      MFS_RETURN_IF_ERROR(PutExtents(&batch, peer, path, set, what));
    }
    if (batch.Count() == 0) return Status::Ok();
    return Write(&batch, sync, what);
  });
}

Status MetaStore::ReplaceFracture(const std::string& peer,
                                  const std::string& path, const ExtentSet& now,
                                  bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    MFS_RETURN_IF_ERROR(CheckPath(peer, path));
    const std::string what =
        "rewrite fracture log of '" + path + "' for peer " + peer;
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePathPrefix(peer, path), what));
    MFS_RETURN_IF_ERROR(PutExtents(&batch, peer, path, now, what));
    return Write(&batch, sync, what);
  });
}

Status MetaStore::MoveFracture(const std::string& peer, const std::string& from,
                               const std::string& to,
                               const ExtentSet& merged_to, bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    MFS_RETURN_IF_ERROR(CheckPath(peer, from));
    MFS_RETURN_IF_ERROR(CheckPath(peer, to));
    const std::string what =
        "move fracture log of '" + from + "' to '" + to + "' for peer " + peer;
    rocksdb::WriteBatch batch;
    // Later entries of a batch win over earlier ones, so from == to ends
    // with merged_to.
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePathPrefix(peer, from), what));
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePathPrefix(peer, to), what));
    MFS_RETURN_IF_ERROR(PutExtents(&batch, peer, to, merged_to, what));
    return Write(&batch, sync, what);
  });
}

Status MetaStore::DropFracturePath(const std::string& peer,
                                   const std::string& path, bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    MFS_RETURN_IF_ERROR(CheckPath(peer, path));
    const std::string what =
        "drop fracture log of '" + path + "' for peer " + peer;
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePathPrefix(peer, path), what));
    return Write(&batch, sync, what);
  });
}

Result<std::map<std::string, ExtentSet>> MetaStore::LoadFracture(
    const std::string& peer) {
  return Guarded([&]() -> Result<std::map<std::string, ExtentSet>> {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    const std::string prefix = keys::FracturePeerPrefix(peer);
    // "<path>\0<off><len>" after the prefix.
    constexpr size_t kSuffix = 1 + 2 * keys::kBe64Size;
    std::map<std::string, ExtentSet> log;
    // A path's keys are adjacent: look its set up once, not once per key.
    ExtentSet* current = nullptr;
    std::string_view current_path;
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), prefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice& value) -> Status {
          std::string_view rest = View(key).substr(prefix.size());
          if (rest.size() <= kSuffix || rest[rest.size() - kSuffix] != '\0' ||
              rest.substr(0, rest.size() - kSuffix).find('\0') !=
                  std::string_view::npos) {
            return Status::Error(EUCLEAN, "state database " + dir_ +
                                              ": fracture log of peer " + peer +
                                              " has a malformed key '" +
                                              Printable(View(key)) + "'" +
                                              std::string(kFullSyncAdvice));
          }
          const std::string_view path = rest.substr(0, rest.size() - kSuffix);
          const char* numbers = rest.data() + rest.size() - 2 * keys::kBe64Size;
          const uint64_t offset = keys::ReadBe64(numbers);
          const uint64_t length = keys::ReadBe64(numbers + keys::kBe64Size);
          if (length == 0 || !value.empty()) {
            return Status::Error(
                EUCLEAN, "state database " + dir_ + ": fracture log of peer " +
                             peer + " for '" + Printable(path) +
                             "' at offset " + std::to_string(offset) +
                             " is corrupt (length " + std::to_string(length) +
                             ", value '" + Printable(View(value)) + "')" +
                             std::string(kFullSyncAdvice));
          }
          if (current == nullptr || path != current_path) {
            auto it = log.try_emplace(log.end(), std::string(path));
            current = &it->second;
            current_path = it->first;
          }
          current->Add(offset, length);
          return Status::Ok();
        },
        [&](const rocksdb::Status& s) {
          return FromRocks(s, "read fracture log of peer " + peer);
        }));
    return log;
  });
}

Status MetaStore::ClearAllFracture(const std::string& peer) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    const std::string what = "clear fracture log of peer " + peer;
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::FracturePeerPrefix(peer), what));
    MFS_RETURN_IF_ERROR(
        DeletePrefix(&batch, keys::NamespaceOpPeerPrefix(peer), what));
    // The id vouched for this log's content: a cleared log no longer
    // covers a resync cut short under that id.
    MFS_RETURN_IF_ERROR(FromRocks(
        batch.Delete(keys::PeerFlagKey(peer, keys::kPeerResyncId)), what));
    return Write(&batch, /*sync=*/true, what);
  });
}

Status MetaStore::AppendNamespaceOp(const std::string& peer, uint64_t seq,
                                    const Change& op, bool sync) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    if (op.path.find('\0') != std::string::npos ||
        op.target.find('\0') != std::string::npos) {
      return Status::Error(EINVAL, "namespace log of peer " + peer +
                                       ": operation " + std::to_string(seq) +
                                       " on '" + Printable(op.path) +
                                       "' has a NUL byte in a name");
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s =
        db_->Put(wo, keys::NamespaceOpKey(peer, seq), EncodeChangeRecord(op));
    if (s.ok()) return Status::Ok();
    return FromRocks(s, "log namespace operation " + std::to_string(seq) +
                            " on '" + op.path + "' for peer " + peer);
  });
}

Result<std::vector<std::pair<uint64_t, Change>>> MetaStore::LoadNamespaceOps(
    const std::string& peer) {
  return Guarded([&]() -> Result<std::vector<std::pair<uint64_t, Change>>> {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    const std::string prefix = keys::NamespaceOpPeerPrefix(peer);
    std::vector<std::pair<uint64_t, Change>> ops;
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), prefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice& value) -> Status {
          std::string_view rest = View(key).substr(prefix.size());
          if (rest.size() != keys::kBe64Size) {
            return Status::Error(EUCLEAN, "state database " + dir_ +
                                              ": namespace log of peer " +
                                              peer + " has a malformed key '" +
                                              Printable(View(key)) + "'" +
                                              std::string(kFullSyncAdvice));
          }
          const uint64_t seq = keys::ReadBe64(rest.data());
          Result<Change> op = DecodeChangeRecord(View(value));
          if (!op.ok()) {
            return Status::Error(
                op.status().err(),
                "state database " + dir_ + ": namespace log of peer " + peer +
                    ", operation " + std::to_string(seq) + ": " +
                    op.status().message() + std::string(kFullSyncAdvice));
          }
          ops.emplace_back(seq, std::move(op).value());
          return Status::Ok();
        },
        [&](const rocksdb::Status& s) {
          return FromRocks(s, "read namespace log of peer " + peer);
        }));
    return ops;
  });
}

Status MetaStore::DropNamespaceOps(const std::string& peer,
                                   uint64_t up_to_seq_inclusive) {
  return Guarded([&]() -> Status {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    const std::string what = "drop namespace operations up to " +
                             std::to_string(up_to_seq_inclusive) + " of peer " +
                             peer;
    const std::string begin = keys::NamespaceOpKey(peer, 0);
    const std::string end =
        up_to_seq_inclusive == UINT64_MAX
            ? keys::PrefixEnd(keys::NamespaceOpPeerPrefix(peer))
            : keys::NamespaceOpKey(peer, up_to_seq_inclusive + 1);
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(begin, end), what));
    return Write(&batch, /*sync=*/true, what);
  });
}

Status MetaStore::SetPeerFlag(const std::string& peer, PeerFlag flag, bool on) {
  return Guarded([&]() -> Status {
    const std::string key = keys::PeerFlagKey(peer, FlagName(flag));
    const std::string what =
        "set " + std::string(FlagName(flag)) + " of peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        FromRocks(on ? batch.Put(key, "1") : batch.Delete(key), what));
    return Write(&batch, /*sync=*/true, what);
  });
}

Result<bool> MetaStore::GetPeerFlag(const std::string& peer, PeerFlag flag) {
  return Guarded([&]() -> Result<bool> {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(
        Get(keys::PeerFlagKey(peer, FlagName(flag)), &value, &found));
    if (!found) return false;
    if (value == "1") return true;
    return Status::Error(EUCLEAN, "state database " + dir_ + ": flag " +
                                      std::string(FlagName(flag)) +
                                      " of peer " + peer + " reads '" + value +
                                      "'");
  });
}

Status MetaStore::SetPeerResyncId(const std::string& peer, uint64_t id) {
  return Guarded([&]() -> Status {
    const std::string key = keys::PeerFlagKey(peer, keys::kPeerResyncId);
    const std::string what = "set the resync id of peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(FromRocks(
        id == 0 ? batch.Delete(key) : batch.Put(key, std::to_string(id)),
        what));
    return Write(&batch, /*sync=*/true, what);
  });
}

Result<uint64_t> MetaStore::GetPeerResyncId(const std::string& peer) {
  return Guarded([&]() -> Result<uint64_t> {
    MFS_RETURN_IF_ERROR(CheckPeerKnown(peer));
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(
        Get(keys::PeerFlagKey(peer, keys::kPeerResyncId), &value, &found));
    if (!found) return uint64_t{0};
    uint64_t id = 0;
    if (!ParseDecimal(value, &id)) {
      return Status::Error(EUCLEAN, "state database " + dir_ +
                                        ": resync id of peer " + peer +
                                        " reads '" + value + "'");
    }
    return id;
  });
}

// --- Node flags ------------------------------------------------------------

Status MetaStore::SetCleanShutdown(bool clean) {
  return Guarded([&]() -> Status {
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        FromRocks(batch.Put(keys::kNodeClean, clean ? "1" : "0"),
                  "record clean shutdown"));
    return Write(&batch, /*sync=*/true, "record clean shutdown");
  });
}

Result<bool> MetaStore::WasCleanShutdown() {
  return Guarded([&]() -> Result<bool> {
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(Get(keys::kNodeClean, &value, &found));
    if (!found || value == "1") return true;
    if (value == "0") return false;
    return Status::Error(EUCLEAN, "state database " + dir_ +
                                      ": clean-shutdown mark reads '" + value +
                                      "'");
  });
}

Status MetaStore::RecordIntents(const std::vector<IntentRegion>& regions,
                                uint64_t extent_bytes) {
  return Guarded([&]() -> Status {
    rocksdb::WriteBatch batch;
    for (const auto& r : regions) {
      MFS_RETURN_IF_ERROR(
          FromRocks(batch.Put(keys::IntentKey(r.ino, r.region), ""),
                    "record write intent"));
    }
    MFS_RETURN_IF_ERROR(FromRocks(
        batch.Put(keys::kNodeIntentExtent, std::to_string(extent_bytes)),
        "record write intent"));
    return Write(&batch, /*sync=*/true, "record write intents");
  });
}

Status MetaStore::RetireIntents(const std::vector<IntentRegion>& regions) {
  return Guarded([&]() -> Status {
    rocksdb::WriteBatch batch;
    for (const auto& r : regions) {
      MFS_RETURN_IF_ERROR(
          FromRocks(batch.Delete(keys::IntentKey(r.ino, r.region)),
                    "retire write intent"));
    }
    return Write(&batch, /*sync=*/false, "retire write intents");
  });
}

Result<std::pair<std::vector<MetaStore::IntentRegion>, uint64_t>>
MetaStore::LoadIntents() {
  using Out = std::pair<std::vector<IntentRegion>, uint64_t>;
  return Guarded([&]() -> Result<Out> {
    Out out{{}, 0};
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(Get(keys::kNodeIntentExtent, &value, &found));
    if (found) {
      char* end = nullptr;
      out.second = std::strtoull(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || out.second == 0) {
        return Status::Error(EUCLEAN, "state database " + dir_ +
                                          ": intent region size reads '" +
                                          Printable(value) + "'");
      }
    }
    const std::string prefix(keys::kIntentPrefix);
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), prefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice&) -> Status {
          std::string_view rest = View(key).substr(prefix.size());
          if (rest.size() != 2 * keys::kBe64Size) {
            return Status::Error(EUCLEAN, "state database " + dir_ +
                                              ": malformed intent key '" +
                                              Printable(View(key)) + "'");
          }
          out.first.push_back(
              IntentRegion{keys::ReadBe64(rest.data()),
                           keys::ReadBe64(rest.data() + keys::kBe64Size)});
          return Status::Ok();
        },
        [&](const rocksdb::Status& st) {
          return FromRocks(st, "read the write-intent journal");
        }));
    return out;
  });
}

Status MetaStore::ClearIntents() {
  return Guarded([&]() -> Status {
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        FromRocks(batch.DeleteRange(std::string(keys::kIntentPrefix),
                                    keys::PrefixEnd(keys::kIntentPrefix)),
                  "clear the write-intent journal"));
    return Write(&batch, /*sync=*/true, "clear the write-intent journal");
  });
}

Status MetaStore::SetConsistent(bool consistent, uint64_t resync_id) {
  return Guarded([&]() -> Status {
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        FromRocks(batch.Put(keys::kNodeConsistent, consistent ? "1" : "0"),
                  "record consistency"));
    const uint64_t id = consistent ? 0 : resync_id;
    MFS_RETURN_IF_ERROR(
        FromRocks(id == 0 ? batch.Delete(keys::kNodeResyncId)
                          : batch.Put(keys::kNodeResyncId, std::to_string(id)),
                  "record consistency"));
    return Write(&batch, /*sync=*/true, "record consistency");
  });
}

Result<uint64_t> MetaStore::InconsistentResyncId() {
  return Guarded([&]() -> Result<uint64_t> {
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(Get(keys::kNodeConsistent, &value, &found));
    if (!found || value != "0") return uint64_t{0};
    MFS_RETURN_IF_ERROR(Get(keys::kNodeResyncId, &value, &found));
    if (!found) return uint64_t{0};
    uint64_t id = 0;
    if (!ParseDecimal(value, &id)) {
      return Status::Error(EUCLEAN, "state database " + dir_ +
                                        ": resync id reads '" + value + "'");
    }
    return id;
  });
}

Result<bool> MetaStore::IsConsistent() {
  return Guarded([&]() -> Result<bool> {
    std::string value;
    bool found = false;
    MFS_RETURN_IF_ERROR(Get(keys::kNodeConsistent, &value, &found));
    if (!found || value == "1") return true;
    if (value == "0") return false;
    return Status::Error(
        EUCLEAN,
        "state database " + dir_ + ": consistency mark reads '" + value + "'");
  });
}

Status MetaStore::SyncWal() {
  return Guarded([&]() -> Status {
    return FromRocks(db_->FlushWAL(/*sync=*/true), "sync WAL");
  });
}

}  // namespace mirrorfs::meta
