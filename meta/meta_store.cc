#include "meta/meta_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>

#include <charconv>
#include <exception>
#include <functional>
#include <new>
#include <utility>

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
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions()));
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

}  // namespace

MetaStore::MetaStore(std::string dir, std::unique_ptr<rocksdb::DB> db)
    : dir_(std::move(dir)), db_(std::move(db)) {}

MetaStore::~MetaStore() {
  // Close() reports problems flushing memtables; acknowledged writes are in
  // the WAL already, so there is nothing useful to do with it here.
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
    if (!found) {
      // A fresh database (or one from before versioning, which is the same
      // thing at version 1): stamp it.
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
      return Status::Error(
          EUCLEAN, "state database " + db_dir +
                       " is corrupt: layout version is '" + version +
                       "'; move it aside to start over (peers will then need "
                       "a full sync)");
    }
    if (*v > keys::kLayoutVersion) {
      return Status::Error(
          ENOTSUP, "state database " + db_dir + " has key layout version " +
                       version + " but this mirrorfs understands up to " +
                       std::to_string(keys::kLayoutVersion) +
                       "; run the newer mirrorfs that wrote it");
    }
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

Status MetaStore::CheckPeerExists(const std::string& name) {
  MFS_RETURN_IF_ERROR(CheckPeerName(name));
  std::string value;
  bool found = false;
  MFS_RETURN_IF_ERROR(Get(keys::PeerKey(name), &value, &found));
  if (!found) return Status::Error(ENOENT, "no peer named '" + name + "'");
  return Status::Ok();
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
    const auto& b = peer.uuid.bytes();
    std::string value(reinterpret_cast<const char*>(b.data()), b.size());
    value += peer.endpoint;
    rocksdb::WriteBatch batch;
    rocksdb::Status s = batch.Put(keys::PeerKey(peer.name), value);
    if (!s.ok()) return FromRocks(s, "save peer " + peer.name);
    // Under the lock so a concurrent RemovePeer of the same name is ordered.
    std::lock_guard<std::mutex> lock(rmw_mu_);
    return Write(&batch, /*sync=*/true, "save peer " + peer.name);
  });
}

Status MetaStore::RemovePeer(const std::string& name) {
  return Guarded([&]() -> Status {
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerExists(name));
    rocksdb::WriteBatch batch;
    auto on_error = [&](const rocksdb::Status& s) {
      return FromRocks(s, "remove peer " + name);
    };
    MFS_RETURN_IF_ERROR(on_error(batch.Delete(keys::PeerKey(name))));
    auto del = [&](const rocksdb::Slice& key, const rocksdb::Slice&) {
      return on_error(batch.Delete(key));
    };
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), keys::FracturePeerPrefix(name), del, on_error));
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), keys::PeerFlagPeerPrefix(name), del, on_error));
    return Write(&batch, /*sync=*/true, "remove peer " + name);
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

Status MetaStore::AddFracture(const std::string& peer,
                              const std::map<std::string, ExtentSet>& extents) {
  return Guarded([&]() -> Status {
    for (const auto& [path, set] : extents) {
      if (path.empty() || path.find('\0') != std::string::npos) {
        return Status::Error(EINVAL, "fracture log of peer " + peer +
                                         ": invalid image path '" + path + "'");
      }
    }
    const std::string what = "log missed extents for peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
    rocksdb::WriteBatch batch;
    bool any_corrupt = false;
    for (const auto& [path, set] : extents) {
      if (set.empty()) continue;
      const std::string key = keys::FractureKey(peer, path);
      std::string stored;
      bool found = false;
      MFS_RETURN_IF_ERROR(Get(key, &stored, &found));
      ExtentSet merged;
      if (found) {
        Result<ExtentSet> old = ExtentSet::Decode(stored);
        if (old.ok()) {
          merged = std::move(old).value();
        } else {
          // The old record is unreadable, so which bytes it covered is
          // unknown. Keep guarantee 1 anyway: store the new extents and
          // demand a full sync, which covers whatever the record held.
          any_corrupt = true;
        }
      }
      merged.Merge(set);
      MFS_RETURN_IF_ERROR(FromRocks(batch.Put(key, merged.Encode()), what));
    }
    if (any_corrupt) {
      MFS_RETURN_IF_ERROR(FromRocks(
          batch.Put(keys::PeerFlagKey(peer, keys::kFlagFullSyncNeeded), "1"),
          what));
    }
    if (batch.Count() == 0) return Status::Ok();
    return Write(&batch, /*sync=*/true, what);
  });
}

Result<std::map<std::string, ExtentSet>> MetaStore::FractureOf(
    const std::string& peer) {
  return Guarded([&]() -> Result<std::map<std::string, ExtentSet>> {
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
    const std::string prefix = keys::FracturePeerPrefix(peer);
    std::map<std::string, ExtentSet> log;
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), prefix,
        [&](const rocksdb::Slice& key, const rocksdb::Slice& value) -> Status {
          std::string path = key.ToString().substr(prefix.size());
          Result<ExtentSet> set =
              ExtentSet::Decode(std::string_view(value.data(), value.size()));
          if (!set.ok()) {
            return Status::Error(
                EUCLEAN, "state database " + dir_ + ": fracture log of peer " +
                             peer + " for '" + path + "' is unreadable (" +
                             set.status().message() +
                             "); run a full sync of this peer");
          }
          log.emplace(std::move(path), std::move(set).value());
          return Status::Ok();
        },
        [&](const rocksdb::Status& s) {
          return FromRocks(s, "read fracture log of peer " + peer);
        }));
    return log;
  });
}

Status MetaStore::ClearFracture(const std::string& peer,
                                const std::string& path,
                                const ExtentSet& done) {
  return Guarded([&]() -> Status {
    if (path.empty() || path.find('\0') != std::string::npos) {
      return Status::Error(EINVAL, "fracture log of peer " + peer +
                                       ": invalid image path '" + path + "'");
    }
    const std::string what = "clear fracture log of peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
    if (done.empty()) return Status::Ok();
    const std::string key = keys::FractureKey(peer, path);
    std::string stored;
    bool found = false;
    MFS_RETURN_IF_ERROR(Get(key, &stored, &found));
    if (!found) return Status::Ok();
    Result<ExtentSet> set = ExtentSet::Decode(stored);
    if (!set.ok()) {
      return Status::Error(EUCLEAN, "state database " + dir_ +
                                        ": fracture log of peer " + peer +
                                        " for '" + path + "' is unreadable (" +
                                        set.status().message() +
                                        "); run a full sync of this peer");
    }
    set->Subtract(done);
    rocksdb::WriteBatch batch;
    if (set->empty()) {
      MFS_RETURN_IF_ERROR(FromRocks(batch.Delete(key), what));
    } else {
      MFS_RETURN_IF_ERROR(FromRocks(batch.Put(key, set->Encode()), what));
    }
    return Write(&batch, /*sync=*/false, what);
  });
}

Status MetaStore::ClearAllFracture(const std::string& peer) {
  return Guarded([&]() -> Status {
    const std::string what = "clear fracture log of peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
    rocksdb::WriteBatch batch;
    auto on_error = [&](const rocksdb::Status& s) {
      return FromRocks(s, what);
    };
    MFS_RETURN_IF_ERROR(ForEachWithPrefix(
        db_.get(), keys::FracturePeerPrefix(peer),
        [&](const rocksdb::Slice& key, const rocksdb::Slice&) {
          return on_error(batch.Delete(key));
        },
        on_error));
    if (batch.Count() == 0) return Status::Ok();
    return Write(&batch, /*sync=*/true, what);
  });
}

Status MetaStore::SetPeerFlag(const std::string& peer, PeerFlag flag, bool on) {
  return Guarded([&]() -> Status {
    const std::string key = keys::PeerFlagKey(peer, FlagName(flag));
    const std::string what =
        "set " + std::string(FlagName(flag)) + " of peer " + peer;
    std::lock_guard<std::mutex> lock(rmw_mu_);
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
    rocksdb::WriteBatch batch;
    MFS_RETURN_IF_ERROR(
        FromRocks(on ? batch.Put(key, "1") : batch.Delete(key), what));
    return Write(&batch, /*sync=*/true, what);
  });
}

Result<bool> MetaStore::GetPeerFlag(const std::string& peer, PeerFlag flag) {
  return Guarded([&]() -> Result<bool> {
    MFS_RETURN_IF_ERROR(CheckPeerExists(peer));
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

Status MetaStore::Flush() {
  return Guarded([&]() -> Status {
    return FromRocks(db_->FlushWAL(/*sync=*/true), "sync WAL");
  });
}

}  // namespace mirrorfs::meta
