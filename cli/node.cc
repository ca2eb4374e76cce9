#include "cli/node.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "cli/format.h"
#include "cli/json.h"
#include "fs/fuse/fuse_adapter.h"
#include "fs/volume.h"
#include "meta/log.h"
#include "meta/meta_store.h"
#include "sync/fan_out.h"
#include "sync/intent_journal.h"
#include "sync/replica_server.h"
#include "sync/verifier.h"

namespace mirrorfs::cli {
namespace {

std::string HostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') {
    return "node";
  }
  std::string name(buf);
  for (auto& c : name) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' &&
        c != '-') {
      c = '-';
    }
  }
  return name.substr(0, 64);
}

std::string Pad(const std::string& s, size_t width) {
  return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' ');
}

// Permission bits as `stat -c %04a` prints them: "0640".
std::string OctalMode(uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);
  return buf;
}

std::string Ago(double seconds) {
  if (seconds < 0) return "never";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1fs ago", seconds);
  return buf;
}

}  // namespace

Node::Node(NodeOptions options)
    : options_(std::move(options)),
      identity_(std::make_unique<meta::NodeIdentity>()) {}

Node::~Node() {
  control_.Stop();
  mount_.reset();
  if (fan_out_) fan_out_->StopAll();
  replica_.reset();
  volume_.reset();
  fan_out_.reset();
  if (zap_) zap_->Stop();
  zap_.reset();
  zmq_.reset();
  if (meta_ && restore_on_exit_) {
    // A start that failed leaves the node's name, endpoint, role and
    // mountpoint as they were (a port taken now must not become the
    // endpoint of every later start). What the attempt may have shown a
    // peer stays: the generation and the store's identity.
    auto stored = meta_->LoadIdentity();
    meta::Status s = stored.status();
    if (s.ok()) {
      stored->name = restore_on_exit_->name;
      stored->listen_endpoint = restore_on_exit_->listen_endpoint;
      stored->role = restore_on_exit_->role;
      stored->mountpoint = restore_on_exit_->mountpoint;
      s = meta_->SaveIdentity(*stored);
    }
    if (!s.ok()) meta::LogError(s.message());
  }
  meta_.reset();
  if (store_fd_ >= 0) ::close(store_fd_);
}

meta::Status Node::Start() {
  const std::string state_dir = options_.store + "/.mirrorfs";
  if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return meta::Status::FromErrno("cannot create " + state_dir);
  }
  store_fd_ =
      ::open(options_.store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (store_fd_ < 0) {
    return meta::Status::FromErrno("cannot open store " + options_.store);
  }
  auto opened = meta::MetaStore::Open(state_dir + "/db");
  if (!opened.ok()) return opened.status();
  meta_ = std::move(opened.value());
  auto identity = meta_->LoadIdentity();
  if (!identity.ok()) return identity.status();
  *identity_ = std::move(identity.value());
  restore_on_exit_ = std::make_unique<meta::NodeIdentity>(*identity_);
  meta::Status started = StartServing();
  if (started.ok()) restore_on_exit_.reset();
  return started;
}

meta::Status Node::StartServing() {
  if (!options_.name.empty()) identity_->name = options_.name;
  if (identity_->name.empty()) identity_->name = HostName();
  if (!options_.listen.empty()) identity_->listen_endpoint = options_.listen;
  identity_->role = options_.primary ? "primary" : "secondary";
  if (options_.primary) identity_->mountpoint = options_.mountpoint;
  zmq_ = std::make_unique<zmq::context_t>(1);
  MFS_RETURN_IF_ERROR(SetUpSecurity());

  MFS_RETURN_IF_ERROR(options_.primary ? StartPrimary() : StartSecondary());

  gid_t control_gid = static_cast<gid_t>(-1);
  if (!options_.control_group.empty()) {
    struct group grp;
    struct group* found = nullptr;
    std::vector<char> buf(16384);
    if (::getgrnam_r(options_.control_group.c_str(), &grp, buf.data(),
                     buf.size(), &found) != 0 ||
        found == nullptr) {
      return meta::Status::Error(
          EINVAL,
          "--control-group " + options_.control_group + ": no such group");
    }
    control_gid = grp.gr_gid;
  }
  MFS_RETURN_IF_ERROR(
      control_.Start(ControlSocketPath(options_.store), control_gid,
                     [this](const std::vector<std::string>& words) {
                       return HandleControl(words);
                     }));
  meta::LogInfo("node " + identity_->name + " " +
                identity_->node_uuid.ToString() + " serving " + options_.store +
                " as " + identity_->role);
  return meta::Status::Ok();
}

meta::Status Node::SetUpSecurity() {
  const std::string& listen = identity_->listen_endpoint;
  if (options_.key_file.empty()) {
    if (!listen.empty() && !sync::IsLoopbackEndpoint(listen)) {
      if (!options_.insecure) {
        return meta::Status::Error(
            EPERM, "refusing to listen on " + listen +
                       " beyond loopback without keys: anyone who reaches "
                       "it could write into this store. Give --key FILE "
                       "--authorized-keys FILE (see `mirrorfs keygen`), or "
                       "--insecure on a trusted, isolated network");
      }
      meta::LogWarning("--insecure: peer links on " + listen +
                       " are neither authenticated nor encrypted");
    }
    return meta::Status::Ok();
  }
  auto own = sync::LoadKeyFile(options_.key_file);
  if (!own.ok()) return own.status();
  auto authorized = sync::LoadAuthorizedKeys(options_.authorized_file);
  if (!authorized.ok()) return authorized.status();
  auto config = std::make_shared<sync::CurveConfig>();
  config->own = std::move(own.value());
  config->authorized = std::make_shared<const sync::AuthorizedKeys>(
      std::move(authorized.value()));
  config->authorized_file = options_.authorized_file;
  zap_ = std::make_unique<sync::ZapHandler>(zmq_.get(), config->authorized,
                                            options_.authorized_file);
  MFS_RETURN_IF_ERROR(zap_->Start());
  {
    std::lock_guard<std::mutex> lock(curve_mu_);
    curve_ = std::move(config);
  }
  meta::LogInfo("peer links: CURVE, " +
                std::to_string(curve_->authorized->by_name.size()) +
                " authorized peers in " + options_.authorized_file);
  return meta::Status::Ok();
}

void Node::ReloadKeys() {
  if (options_.authorized_file.empty() || !zap_) return;
  auto authorized = sync::LoadAuthorizedKeys(options_.authorized_file);
  if (!authorized.ok()) {
    meta::LogError(
        "reloading authorized keys: " + authorized.status().message() +
        "; keeping the previous set");
    return;
  }
  auto shared = std::make_shared<const sync::AuthorizedKeys>(
      std::move(authorized.value()));
  {
    std::lock_guard<std::mutex> lock(curve_mu_);
    auto config = std::make_shared<sync::CurveConfig>(*curve_);
    config->authorized = shared;
    curve_ = std::move(config);
  }
  zap_->Reload(shared);
  meta::LogInfo("authorized keys reloaded from " + options_.authorized_file +
                ": " + std::to_string(shared->by_name.size()) + " peers");
  if (fan_out_) {
    for (const auto& p : fan_out_->Snapshot()) {
      if (!p.in_sync) fan_out_->Find(p.name)->Rejoin();
    }
  }
}

meta::Status Node::StartPrimary() {
  if (identity_->store_uuid.IsZero()) {
    identity_->store_uuid = meta::Uuid::Generate();
  }
  // What this node writes as primary from now on may be a history of its
  // own (a peer may have been promoted meanwhile): its first change starts
  // a new generation, unless every peer follows it live then. Until it
  // writes, a newer node sees it as stale, not as a split brain. A store
  // without any history gets its first one now.
  sync::Generations gens = sync::Generations::Parse(identity_->generation);
  if (gens.current.IsZero()) gens.Advance();
  identity_->generation = gens.Format();
  MFS_RETURN_IF_ERROR(meta_->SaveIdentity(*identity_));
  generations_ = std::make_unique<sync::GenerationKeeper>(
      gens, [this](const sync::Generations& g) { return SetGenerations(g); });
  generations_->MarkDue();
  MFS_RETURN_IF_ERROR(meta_->SetCleanShutdown(false));
  auto known = meta_->ListPeers();
  if (!known.ok()) return known.status();
  for (const auto& peer : options_.peers) {
    bool is_new = true;
    meta::PeerRecord record;
    record.name = peer.name;
    record.endpoint = peer.endpoint;
    for (const auto& k : *known) {
      if (k.name != peer.name) continue;
      is_new = false;
      record.uuid = k.uuid;
    }
    MFS_RETURN_IF_ERROR(meta_->PutPeer(record));
    if (is_new) {
      // A copy of unknown age: every block is compared once.
      MFS_RETURN_IF_ERROR(
          meta_->SetPeerFlag(peer.name, meta::PeerFlag::kFullSyncNeeded, true));
    }
  }

  MFS_RETURN_IF_ERROR(RecoverFromCrash());
  fan_out_ = std::make_unique<sync::FanOut>(
      options_.async ? sync::MirrorMode::kAsync : sync::MirrorMode::kSync);
  generations_->SetOnAdvance([this](const sync::Generations& started) {
    meta::LogInfo("new generation " + started.current.ToString() +
                  " (this node writes as primary after " +
                  (started.history.empty()
                       ? std::string("none")
                       : started.history.front().ToString()) +
                  ")");
    // The listener recognises stale primaries and split brains by it.
    if (replica_) replica_->SetGenerations(started);
    fan_out_->AnnounceGeneration(started);
  });
  fan_out_->SetGenerations(generations_.get());
  if (options_.intent_journal) {
    intent_store_ = std::make_unique<sync::MetaIntentStore>(meta_.get());
    // Regions retire after 5 idle epochs (seconds): a region written again
    // within that time costs no database write, and 5 s after the last
    // write a crash re-sends nothing. Three regions ahead: a sequential
    // writer pays one synced batch per 4 regions (16 MiB by default), not
    // one per region. Recall of 60 epochs: a working set that paused for
    // up to a minute comes back in one synced batch (each batch behind an
    // application's own fsyncs took several ms here).
    journal_ = std::make_unique<sync::IntentJournal>(
        intent_store_.get(), options_.intent_extent, options_.intent_budget,
        /*ahead_regions=*/3, /*idle_epochs=*/5, /*recall_epochs=*/60);
  } else {
    meta::LogWarning(
        "write-intent journal OFF (test switch): a crash of "
        "this primary may leave peers silently different");
  }
  fan_out_->SetLogSync([this] { return meta_->SyncWal(); });
  fan_out_->StartEpochs(journal_.get(), store_fd_, std::chrono::seconds(1));
  fs::VolumeOptions volume_options;
  volume_options.store_root = options_.store;
  volume_options.cached_writes = options_.cached_writes;
  auto volume = fs::Volume::Open(volume_options, fan_out_.get());
  if (!volume.ok()) return volume.status();
  volume_ = std::move(volume.value());

  // The listen endpoint of a primary answers other nodes' hellos only to
  // recognise a split brain or a stale primary; it applies nothing.
  if (!identity_->listen_endpoint.empty()) {
    MFS_RETURN_IF_ERROR(StartListener(/*primary_mode=*/true));
  }
  auto peers = meta_->ListPeers();
  if (!peers.ok()) return peers.status();
  std::vector<sync::PeerSession*> started;
  for (const auto& record : *peers) {
    MFS_RETURN_IF_ERROR(AddSession(record));
    started.push_back(fan_out_->Find(record.name));
  }
  // Peers that are up get connected before the mount opens, so the first
  // application write is already mirrored.
  for (auto* session : started) {
    if (session) session->WaitConnected(options_.peer_timeout);
  }

  fs::MountOptions mount_options;
  mount_options.mountpoint = options_.mountpoint;
  mount_options.source = options_.store;
  mount_options.fuse_options = options_.fuse_options;
  auto mount = fs::FuseMount::Mount(volume_.get(), mount_options);
  if (!mount.ok()) return mount.status();
  mount_ = std::move(mount.value());
  return meta::Status::Ok();
}

namespace {

// Inode number -> (store-relative path, size) of every regular file.
void MapFiles(
    int dir, const std::string& rel,
    std::unordered_map<uint64_t, std::pair<std::string, uint64_t>>* out) {
  int fd = ::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return;
  }
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == ".." || (rel.empty() && name == ".mirrorfs")) {
      continue;
    }
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    std::string path = rel.empty() ? name : rel + "/" + name;
    if (S_ISREG(st.st_mode)) {
      (*out)[st.st_ino] = {path, static_cast<uint64_t>(st.st_size)};
    } else if (S_ISDIR(st.st_mode)) {
      int sub = ::openat(dir, name.c_str(),
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) {
        MapFiles(sub, path, out);
        ::close(sub);
      }
    }
  }
  ::closedir(d);
}

}  // namespace

meta::Status Node::RecoverFromCrash() {
  auto clean = meta_->WasCleanShutdown();
  auto intents = meta_->LoadIntents();
  if (!intents.ok()) return intents.status();
  auto& [regions, extent] = *intents;
  if (regions.empty()) return meta::Status::Ok();
  if (extent == 0) extent = options_.intent_extent;
  std::unordered_map<uint64_t, std::pair<std::string, uint64_t>> files;
  MapFiles(store_fd_, "", &files);
  auto peers = meta_->ListPeers();
  if (!peers.ok()) return peers.status();
  for (const auto& r : regions) {
    auto it = files.find(r.ino);
    if (it == files.end()) continue;  // deleted since: nothing to re-send
    const auto& [path, size] = it->second;
    uint64_t offset = r.region * extent;
    // A region at or past the end still names the file: its reconcile
    // settles the size. Re-send at least one byte so the file is visited.
    uint64_t length = offset < size ? std::min(extent, size - offset) : 1;
    for (const auto& peer : *peers) {
      MFS_RETURN_IF_ERROR(meta_->AddFractureExtent(peer.name, path, offset,
                                                   length, /*sync=*/false));
    }
    ++recovered_regions_;
    recovered_bytes_ += length;
  }
  MFS_RETURN_IF_ERROR(meta_->SyncWal());
  MFS_RETURN_IF_ERROR(meta_->ClearIntents());
  recovered_ = true;
  meta::LogWarning(
      std::string(clean.ok() && *clean ? "write intents left by the last run"
                                       : "unclean stop detected") +
      ": " + std::to_string(recovered_regions_) +
      " regions that may have had writes in flight (" +
      HumanBytes(recovered_bytes_) + ") are re-sent to every peer");
  return meta::Status::Ok();
}

meta::Status Node::AddSession(const meta::PeerRecord& record) {
  sync::LocalIdentity local;
  local.name = identity_->name;
  local.node_uuid = identity_->node_uuid;
  local.store_uuid = identity_->store_uuid;
  local.endpoint = identity_->listen_endpoint;
  sync::SessionOptions session_options;
  session_options.peer_timeout = options_.peer_timeout;
  session_options.heartbeat =
      std::max(std::chrono::milliseconds(100), options_.peer_timeout / 4);
  session_options.resync_rate = options_.resync_rate;
  session_options.busy_poll = std::chrono::microseconds(options_.busy_poll_us);
  if (zap_) {
    session_options.curve = [this] {
      std::lock_guard<std::mutex> lock(curve_mu_);
      return curve_;
    };
  }
  auto log = std::make_unique<sync::FractureLog>(meta_.get(), record.name);
  log->set_data_covered_by_journal(journal_ != nullptr);
  auto loaded = log->Load();
  if (!loaded.ok()) meta::LogError(loaded.message());
  if (!log->empty()) {
    meta::LogInfo("peer " + record.name + ": fracture log holds " +
                  std::to_string(log->bytes()) + " bytes in " +
                  std::to_string(log->extents()) + " extents and " +
                  std::to_string(log->namespace_ops()) + " namespace changes" +
                  (log->full_sync() ? "; a full sync is due" : ""));
  }
  std::string name = record.name;
  auto session = std::make_unique<sync::PeerSession>(
      zmq_.get(), record.name, record.endpoint, local, session_options,
      std::move(log), volume_.get(), generations_.get(),
      [this, name, endpoint = record.endpoint](const sync::PeerHello& hello) {
        meta::PeerRecord learnt;
        learnt.name = name;
        learnt.endpoint = endpoint;
        learnt.uuid = hello.node_uuid;
        auto s = meta_->PutPeer(learnt);
        if (!s.ok()) {
          meta::LogWarning("remembering peer " + name + ": " + s.message());
        }
      });
  session->Start();
  fan_out_->AddSession(std::move(session));
  return meta::Status::Ok();
}

sync::ReplicaIdentity Node::ReplicaIdentityNow(bool* ok_consistent) {
  sync::ReplicaIdentity r;
  r.name = identity_->name;
  r.node_uuid = identity_->node_uuid;
  r.store_uuid = identity_->store_uuid;
  auto consistent = meta_->IsConsistent();
  *ok_consistent = consistent.ok();
  r.consistent = consistent.ok() && *consistent;
  if (!r.consistent) {
    // Unreadable: 0, so the next primary compares every block.
    auto id = meta_->InconsistentResyncId();
    r.resync_id = id.ok() ? *id : 0;
  }
  r.generations = sync::Generations::Parse(identity_->generation);
  return r;
}

meta::Status Node::StartListener(bool primary_mode) {
  bool ok = false;
  auto identity = ReplicaIdentityNow(&ok);
  if (!ok) return meta_->IsConsistent().status();
  if (primary_mode && generations_) identity.generations = generations_->Get();
  std::vector<sync::DivergentExtent> list;
  bool namespace_diverged = false;
  if (!primary_mode) {
    // What this node wrote as a former primary and a newer primary may
    // lack: its fracture logs (for any peer) and its write intents.
    std::map<std::string, meta::ExtentSet> divergent;
    auto peers = meta_->ListPeers();
    if (peers.ok()) {
      for (const auto& p : *peers) {
        auto log = meta_->LoadFracture(p.name);
        if (log.ok()) {
          for (auto& [path, set] : *log) divergent[path].Merge(set);
        }
        auto ops = meta_->LoadNamespaceOps(p.name);
        namespace_diverged = namespace_diverged || (ops.ok() && !ops->empty());
      }
    }
    auto intents = meta_->LoadIntents();
    if (intents.ok() && !intents->first.empty()) {
      std::unordered_map<uint64_t, std::pair<std::string, uint64_t>> files;
      MapFiles(store_fd_, "", &files);
      uint64_t extent =
          intents->second ? intents->second : options_.intent_extent;
      for (const auto& r : intents->first) {
        auto it = files.find(r.ino);
        if (it != files.end()) {
          divergent[it->second.first].Add(r.region * extent, extent);
        }
      }
    }
    for (const auto& [path, set] : divergent) {
      for (const auto& e : set) list.push_back({path, e.offset, e.length});
    }
    divergent_paths_.clear();
    for (const auto& [path, set] : divergent) divergent_paths_.push_back(path);
    if (!list.empty() || namespace_diverged) {
      meta::LogInfo(
          "this node wrote as primary before: " + std::to_string(list.size()) +
          " extents may differ from the next primary's copy and "
          "will be re-sent from it");
    }
    if (list.size() > sync::kMaxDivergentExtents) {
      // Too many to list: the next primary compares every block instead,
      // as this copy now says in its hello (it is read into `identity`
      // before: say it there too).
      list.clear();
      namespace_diverged = true;
      auto s = meta_->SetConsistent(false);
      if (!s.ok()) return s;
      identity.consistent = false;
      identity.resync_id = 0;
    }
  }
  std::shared_ptr<const sync::CurveConfig> curve;
  {
    std::lock_guard<std::mutex> lock(curve_mu_);
    curve = curve_;
  }
  replica_ = std::make_unique<sync::ReplicaServer>(
      zmq_.get(), identity_->listen_endpoint, identity, store_fd_, this,
      primary_mode, curve);
  MFS_RETURN_IF_ERROR(replica_->Bind());
  replica_->SetCachedWrites(options_.cached_writes);
  replica_->SetBusyPoll(std::chrono::microseconds(options_.busy_poll_us));
  if (options_.volatile_writes) {
    meta::LogWarning(
        "TEST MODE: applied writes are held in memory until a "
        "flush and lost if this process is killed");
    replica_->SetVolatileWrites(true);
  }
  if (!primary_mode) {
    replica_->SetDivergent(std::move(list), namespace_diverged);
  }
  replica_->Start();
  return meta::Status::Ok();
}

meta::Status Node::StartSecondary() {
  MFS_RETURN_IF_ERROR(meta_->SaveIdentity(*identity_));
  return StartListener(/*primary_mode=*/false);
}

// ---- sync::ReplicaHost ------------------------------------------------------

meta::Status Node::AdoptStore(const meta::Uuid& store_uuid) {
  auto stored = meta_->LoadIdentity();
  if (!stored.ok()) return stored.status();
  stored->store_uuid = store_uuid;
  return meta_->SaveIdentity(*stored);
}

meta::Status Node::SetConsistent(bool consistent, uint64_t resync_id) {
  return meta_->SetConsistent(consistent, resync_id);
}

meta::Status Node::SetGenerations(const sync::Generations& generations) {
  auto stored = meta_->LoadIdentity();
  if (!stored.ok()) return stored.status();
  stored->generation = generations.Format();
  return meta_->SaveIdentity(*stored);
}

void Node::PrimaryAccepted(const std::string& name, const meta::Uuid& uuid,
                           const std::string& endpoint) {
  if (endpoint.empty()) return;  // it cannot be reached back
  meta::PeerRecord record;
  record.name = name;
  record.endpoint = endpoint;
  record.uuid = uuid;
  auto s = meta_->PutPeer(record);
  if (!s.ok())
    meta::LogWarning("remembering primary " + name + ": " + s.message());
}

meta::Result<std::string> Node::SaveRecovery() {
  std::lock_guard<std::mutex> lock(recovery_mu_);
  if (!recovery_folder_.empty()) return recovery_folder_;
  char stamp[32];
  time_t now = ::time(nullptr);
  struct tm tm;
  gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
  std::string base = options_.store + "/.mirrorfs/recovery";
  std::string folder = base + "/" + stamp;
  if ((::mkdir(base.c_str(), 0700) != 0 && errno != EEXIST) ||
      ::mkdir(folder.c_str(), 0700) != 0) {
    return meta::Status::FromErrno("create recovery folder " + folder);
  }
  std::string listing;
  for (const auto& path : divergent_paths_) {
    listing += path + "\n";
    std::string from = options_.store + "/" + path;
    std::string to = folder + "/" + path;
    // Parents, then a sparse copy (holes stay holes).
    for (size_t at = to.find('/', folder.size() + 1); at != std::string::npos;
         at = to.find('/', at + 1)) {
      ::mkdir(to.substr(0, at).c_str(), 0700);
    }
    int in = ::open(from.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0) continue;  // gone since: nothing to keep
    int out =
        ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
      ::close(in);
      return meta::Status::FromErrno("save " + path + " to " + folder);
    }
    struct stat st;
    ::fstat(in, &st);
    off_t at = 0;
    std::string buffer(1 << 20, '\0');
    while (at < st.st_size) {
      off_t data = ::lseek(in, at, SEEK_DATA);
      if (data < 0) break;
      off_t hole = ::lseek(in, data, SEEK_HOLE);
      for (off_t o = data; o < hole;) {
        ssize_t n = ::pread(in, buffer.data(),
                            std::min<off_t>(buffer.size(), hole - o), o);
        if (n <= 0) break;
        if (::pwrite(out, buffer.data(), static_cast<size_t>(n), o) != n) {
          ::close(in);
          ::close(out);
          return meta::Status::FromErrno("save " + path + " to " + folder);
        }
        o += n;
      }
      at = hole;
    }
    if (::ftruncate(out, st.st_size) != 0 || ::fsync(out) != 0) {
      ::close(in);
      ::close(out);
      return meta::Status::FromErrno("save " + path + " to " + folder);
    }
    ::close(in);
    ::close(out);
  }
  int list = ::open((folder + "/CHANGED-FILES").c_str(),
                    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (list >= 0) {
    (void)!::write(list, listing.data(), listing.size());
    ::fsync(list);
    ::close(list);
  }
  recovery_folder_ = folder;
  return folder;
}

void Node::Settled() {
  auto peers = meta_->ListPeers();
  if (peers.ok()) {
    for (const auto& p : *peers) {
      auto s = meta_->ClearAllFracture(p.name);
      if (!s.ok()) meta::LogError(s.message());
    }
  }
  auto s = meta_->ClearIntents();
  if (!s.ok()) meta::LogError(s.message());
  std::lock_guard<std::mutex> lock(recovery_mu_);
  divergent_paths_.clear();
}

void Node::RequestStop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stop_requested_) return;
    stop_requested_ = true;
  }
  stop_cv_.notify_all();
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (mount_) mount_->Stop();
}

meta::Status Node::Run() {
  meta::Status result;
  if (mount_) {
    result = mount_->Run();
    if (replica_) replica_->Stop();
    meta::LogInfo("unmounted " + options_.mountpoint + "; stopping");
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stop_requested_ = true;
      mount_.reset();
    }
    // Clean stop: one last epoch (local sync, every peer flushes what it
    // applied), so that no write is in flight and the journal retires.
    fan_out_->FlushEpoch(/*final=*/true);
    fan_out_->StopAll();
    volume_.reset();
    ::syncfs(store_fd_);
    if (journal_ && journal_->active_extents() == 0) {
      auto cleared = meta_->ClearIntents();
      if (!cleared.ok()) meta::LogError(cleared.message());
    }
    auto marked = meta_->SetCleanShutdown(true);
    if (!marked.ok()) meta::LogError(marked.message());
  } else {
    std::unique_lock<std::mutex> lock(stop_mu_);
    stop_cv_.wait(lock, [this] { return stop_requested_; });
    lock.unlock();
    replica_->Stop();  // flushes the store
  }
  control_.Stop();
  meta::LogInfo("node " + identity_->name + " stopped cleanly");
  return result;
}

std::string Node::UnmountNow(const std::string& verb, bool gone_ok) {
  if (::umount2(options_.mountpoint.c_str(), 0) == 0) return "";
  int err = errno;
  if (err == EBUSY) {
    return "mountpoint " + options_.mountpoint +
           " is busy: processes have files or directories open there (see "
           "`fuser -vm " +
           options_.mountpoint + "`); close them and " + verb + " again\n";
  }
  if (err == EINVAL && gone_ok) return "";
  return "cannot unmount " + options_.mountpoint + ": " + std::strerror(err) +
         "\n";
}

ControlReply Node::HandleControl(const std::vector<std::string>& words) {
  if (words.empty()) return {2, "", "empty control request\n"};
  const std::string& verb = words[0];
  auto arg = [&words](const std::string& key) -> std::string {
    for (size_t i = 1; i + 1 < words.size(); ++i) {
      if (words[i] == key) return words[i + 1];
    }
    return "";
  };
  if (verb == "status") {
    bool json = words.size() > 1 && words[1] == "--json";
    return {0, json ? StatusJson() + "\n" : StatusText(), ""};
  }
  if (verb == "stop") {
    bool mounted;
    {
      std::lock_guard<std::mutex> lock(stop_mu_);  // Run() resets mount_
      mounted = mount_ != nullptr && !stop_requested_;
    }
    if (mounted) {
      // EINVAL: unmounted already (fusermount3 -u); the loop is ending.
      std::string refused = UnmountNow("stop", /*gone_ok=*/true);
      if (!refused.empty()) return {1, "", refused};
    }
    std::thread([this] { RequestStop(); }).detach();
    return {0, "", ""};
  }
  if (verb == "role-info") {
    sync::ReplicaSnapshot r;
    if (replica_) r = replica_->Snapshot();
    bool primary_connected = replica_ && !options_.primary && PrimaryLive(r);
    std::string out =
        "role=" + identity_->role + "\n" + "name=" + identity_->name + "\n" +
        "listen=" + identity_->listen_endpoint + "\n" +
        "pid=" + std::to_string(::getpid()) + "\n" + "consistent=" +
        ((replica_ && !options_.primary && !r.consistent) ? "0" : "1") + "\n" +
        "primary_connected=" + (primary_connected ? r.primary_name : "") +
        "\n" + "split_brain=" + SplitBrainWith(r) + "\n" +
        "mountpoint=" + identity_->mountpoint + "\n" +
        "mode=" + (options_.async ? "async" : "sync") + "\n" +
        "key=" + options_.key_file + "\n" +
        "authorized=" + options_.authorized_file + "\n" +
        "insecure=" + (options_.insecure ? "1" : "0") + "\n" +
        "cached_writes=" + (options_.cached_writes ? "1" : "0") + "\n" +
        "busy_poll_us=" + std::to_string(options_.busy_poll_us) + "\n" +
        "control_group=" + options_.control_group + "\n" +
        "peer_timeout_ms=" + std::to_string(options_.peer_timeout.count()) +
        "\n";
    return {0, out, ""};
  }
  if (verb == "verify") return Verify(words);
  if (verb == "peer-list")
    return PeerList(words.size() > 1 && words[1] == "--json");
  if (verb == "peer-add" || verb == "peer-remove") {
    return PeerChange(verb, words);
  }
  if (verb == "resolve") {
    bool discard = words.size() > 1 && words[1] == "--discard-local";
    if (discard) {
      if (!replica_ || options_.primary) {
        return {1, "",
                "this node is primary: demote it first (mirrorfs demote " +
                    options_.store + "), then resolve --discard-local\n"};
      }
      sync::ReplicaSnapshot r = replica_->Snapshot();
      if (r.split_brain_with.empty() && PrimaryLive(r)) {
        // A secondary following its primary has no changes of its own to
        // give up. (One not following any yet, just demoted after a split
        // brain, may: the refused primary shows up at its next attempt.)
        return {1, "",
                "no split brain: this node follows primary " + r.primary_name +
                    " and has no changes of its own to discard\n"};
      }
      auto saved = SaveRecovery();
      if (!saved.ok()) return {1, "", saved.status().message() + "\n"};
      replica_->DiscardLocal();
      meta::LogWarning(
          "resolve --discard-local: this node's changes since the "
          "split are saved in " +
          *saved + "; the next primary's data replaces them");
      return {0,
              "this node's changes since the split are saved in " + *saved +
                  "\nthe primary's data replaces them at its next "
                  "connection (full sync)\n",
              ""};
    }
    if (!fan_out_) {
      return {1, "",
              "this node is a secondary: keep-local belongs on the survivor "
              "(a primary); here use --discard-local\n"};
    }
    std::string out;
    for (const auto& p : fan_out_->Snapshot()) {
      if (p.state != sync::PeerState::kSplitBrain) continue;
      fan_out_->Find(p.name)->DiscardPeerChanges();
      out += "peer " + p.name +
             ": it will save its changes to its recovery folder and take "
             "this node's data (full sync)\n";
    }
    if (out.empty())
      return {1, "", "no peer is in split brain with this node\n"};
    return {0, out, ""};
  }
  if (verb == "demote") {
    if (!mount_) return {1, "", "this node is not a mounted primary\n"};
    // Not lazy: a busy mount refuses, and says why.
    std::string refused = UnmountNow("demote", /*gone_ok=*/false);
    if (!refused.empty()) return {1, "", refused};
    meta::LogInfo("demote: " + options_.mountpoint + " unmounted; stopping");
    return {0, "", ""};
  }
  if (verb == "sync" || verb == "fracture" || verb == "progress") {
    if (!fan_out_) {
      return {1, "",
              "this node is a secondary; run `mirrorfs " + verb +
                  "` on the primary\n"};
    }
    std::string peer = arg("--peer");
    auto snapshots = fan_out_->Snapshot();
    if (!peer.empty()) {
      bool found = false;
      for (const auto& p : snapshots) found = found || p.name == peer;
      if (!found) return {1, "", "no peer named " + peer + "\n"};
    }
    if (verb == "fracture") {
      if (peer.empty()) return {2, "", "fracture needs a peer name\n"};
      fan_out_->Find(peer)->Fracture();
      meta::LogInfo("peer " + peer +
                    ": fractured on purpose; its changes are logged until "
                    "`mirrorfs sync --peer " +
                    peer + "`");
      return {0, "peer " + peer + " fractured; its changes are logged\n", ""};
    }
    if (verb == "sync") {
      // A peer in split brain is asked again too: the operator may have
      // resolved it on that side.
      for (const auto& p : snapshots) {
        if (peer.empty() || p.name == peer) fan_out_->Find(p.name)->Rejoin();
      }
      return {0, "", ""};
    }
    // progress: one line per peer, for `sync --wait`. With --wait-ms, the
    // answer waits up to that long for the peers to be in sync, so that the
    // caller learns it at once rather than at its next poll.
    uint64_t wait_ms = std::strtoull(arg("--wait-ms").c_str(), nullptr, 10);
    auto deadline =
        std::chrono::steady_clock::now() +
        std::chrono::milliseconds(std::min<uint64_t>(wait_ms, 5000));
    while (std::chrono::steady_clock::now() < deadline) {
      bool all = true;
      for (const auto& p : snapshots) {
        if (peer.empty() || p.name == peer) all = all && p.in_sync;
      }
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      snapshots = fan_out_->Snapshot();
    }
    std::string out;
    for (const auto& p : snapshots) {
      if (!peer.empty() && p.name != peer) continue;
      out += p.name + " " + sync::PeerStateName(p.state) + " " +
             (p.in_sync ? "1" : "0") + " " +
             std::to_string(p.resync.total_bytes) + " " +
             std::to_string(p.resync.done_bytes) + " " +
             std::to_string(p.resync.bytes_per_second) + " " +
             std::to_string(p.fracture_bytes) + "\n";
    }
    return {0, out, ""};
  }
  return {1, "", "the daemon does not know the request '" + verb + "'\n"};
}

ControlReply Node::Verify(const std::vector<std::string>& words) {
  if (!fan_out_) {
    return {1, "",
            "this node is a secondary; run `mirrorfs verify` on the primary\n"};
  }
  std::string only;
  bool repair = false, json = false;
  uint64_t rate = 0;
  for (size_t i = 1; i < words.size(); ++i) {
    if (words[i] == "--peer" && i + 1 < words.size())
      only = words[++i];
    else if (words[i] == "--repair")
      repair = true;
    else if (words[i] == "--json")
      json = true;
    else if (words[i] == "--rate" && i + 1 < words.size()) {
      rate = std::strtoull(words[++i].c_str(), nullptr, 10);
    }
  }
  std::vector<sync::VerifyResult> results;
  std::string errors;
  // Peers not compared, and why (listed in --json too: a script must not
  // read a peer left out as one without differences).
  std::vector<std::pair<std::string, std::string>> skipped;
  auto skip = [&](const std::string& peer, const std::string& why) {
    errors += "peer " + peer + ": " + why + "\n";
    skipped.emplace_back(peer, why);
  };
  bool any_peer = false;
  for (const auto& p : fan_out_->Snapshot()) {
    if (!only.empty() && p.name != only) continue;
    any_peer = true;
    if (!p.in_sync) {
      skip(p.name, std::string("not in sync (") + sync::PeerStateName(p.state) +
                       "); verify compares in-sync copies: `mirrorfs sync "
                       "--wait` first");
      continue;
    }
    auto* session = fan_out_->Find(p.name);
    sync::Verifier verifier(session, volume_.get(), rate);
    meta::LogInfo("verify: comparing every block with peer " + p.name);
    auto last = std::chrono::steady_clock::now();
    auto result = verifier.Run([&](uint64_t done, uint64_t total) {
      auto now = std::chrono::steady_clock::now();
      if (now - last >= std::chrono::seconds(5)) {
        meta::LogInfo("verify " + p.name + ": " + HumanBytes(done) + " of " +
                      HumanBytes(total));
        last = now;
      }
    });
    if (!result.ok()) {
      skip(p.name, result.status().message());
      continue;
    }
    uint64_t differing = 0;
    for (const auto& d : result->differences) {
      if (d.kind == sync::VerifyDifference::Kind::kData) differing += d.length;
    }
    meta::LogInfo(
        "verify " + p.name + ": " + HumanBytes(result->compared_bytes) +
        " compared, " + std::to_string(result->differences.size()) +
        " differences (" + HumanBytes(differing) + " in differing blocks)");
    if (repair && !result->differences.empty()) {
      // Differing blocks are logged as missed writes: the resync sends the
      // primary's data there (a file missing on the peer has all its
      // blocks listed). Anything else is the namespace's: the resync's
      // namespace reconcile, from the primary's namespace as it is then,
      // removes what is only on the peer and sets types and sizes. (Not
      // replayed unlinks or truncates: a change made meanwhile, mirrored
      // live, would be undone by them.)
      bool names = false;
      for (const auto& d : result->differences) {
        if (d.kind != sync::VerifyDifference::Kind::kData) {
          names = true;
          continue;
        }
        meta::Change c;
        c.kind = meta::ChangeKind::kWrite;
        c.path = d.path;
        c.offset = d.offset;
        c.length = d.length;
        auto s = session->log()->Record(c);
        if (!s.ok()) errors += "peer " + p.name + ": " + s.message() + "\n";
      }
      if (names) {
        auto s = session->log()->MarkNamespaceDirty();
        if (!s.ok()) errors += "peer " + p.name + ": " + s.message() + "\n";
      }
      auto s = session->log()->MakeDurable();
      if (!s.ok()) errors += "peer " + p.name + ": " + s.message() + "\n";
      session->Resync();
      meta::LogInfo(
          "verify --repair: " + std::to_string(result->differences.size()) +
          " differences added to the fracture log of peer " + p.name +
          "; resyncing");
    }
    results.push_back(std::move(result.value()));
  }
  if (!any_peer) {
    return {
        1, "",
        only.empty() ? "no peers to verify\n" : "no peer named " + only + "\n"};
  }
  bool differ = false;
  for (const auto& r : results) differ = differ || !r.differences.empty();
  std::string out;
  if (json) {
    JsonWriter j;
    j.BeginObject();
    j.Key("peers").BeginArray();
    for (const auto& [peer, why] : skipped) {
      j.BeginObject();
      j.Key("name").Value(peer);
      j.Key("verified").Value(false);
      j.Key("identical").Null();
      j.Key("error").Value(why);
      j.Key("differences").BeginArray().EndArray();
      j.EndObject();
    }
    for (const auto& r : results) {
      j.BeginObject();
      j.Key("name").Value(r.peer);
      j.Key("verified").Value(true);
      j.Key("identical").Value(r.differences.empty());
      j.Key("compared_bytes").Value(r.compared_bytes);
      j.Key("repaired").Value(repair && !r.differences.empty());
      j.Key("differences").BeginArray();
      for (const auto& d : r.differences) {
        using Kind = sync::VerifyDifference::Kind;
        j.BeginObject();
        j.Key("kind").Value(sync::VerifyKindName(d.kind));
        j.Key("path").Value(d.path);
        j.Key("offset").Value(d.offset);
        j.Key("length").Value(d.length);
        if (d.kind == Kind::kMissing || d.kind == Kind::kType) {
          j.Key("type").Value(sync::EntryTypeName(d.type));
        }
        if (d.kind == Kind::kExtra || d.kind == Kind::kType) {
          j.Key("peer_type").Value(sync::EntryTypeName(d.peer_type));
        }
        if (d.kind == Kind::kSize) {
          j.Key("size").Value(d.size);
          j.Key("peer_size").Value(d.peer_size);
        }
        if (d.kind == Kind::kMode) {
          j.Key("mode").Value(OctalMode(d.mode));
          j.Key("peer_mode").Value(OctalMode(d.peer_mode));
        }
        if (d.kind == Kind::kOwner) {
          j.Key("uid").Value(uint64_t{d.uid});
          j.Key("gid").Value(uint64_t{d.gid});
          j.Key("peer_uid").Value(uint64_t{d.peer_uid});
          j.Key("peer_gid").Value(uint64_t{d.peer_gid});
        }
        if (d.kind == Kind::kTarget) {
          j.Key("target").Value(d.target);
          j.Key("peer_target").Value(d.peer_target);
        }
        j.EndObject();
      }
      j.EndArray();
      j.EndObject();
    }
    j.EndArray();
    j.EndObject();
    out = j.str() + "\n";
  } else {
    // One line per difference: "PEER PATH OFFSET LENGTH" for differing
    // blocks; else a word after the path says what differs.
    for (const auto& r : results) {
      for (const auto& d : r.differences) {
        using Kind = sync::VerifyDifference::Kind;
        out += r.peer + " " + d.path + " ";
        switch (d.kind) {
          case Kind::kData:
            out += std::to_string(d.offset) + " " + std::to_string(d.length);
            break;
          case Kind::kSize:
            out += "size " + std::to_string(d.size) + " " +
                   std::to_string(d.peer_size);
            break;
          case Kind::kMissing:
            out += std::string("missing ") + sync::EntryTypeName(d.type);
            break;
          case Kind::kExtra:
            out += std::string("extra ") + sync::EntryTypeName(d.peer_type);
            break;
          case Kind::kType:
            out += std::string("type ") + sync::EntryTypeName(d.type) + " " +
                   sync::EntryTypeName(d.peer_type);
            break;
          case Kind::kMode:
            out += "mode " + OctalMode(d.mode) + " " + OctalMode(d.peer_mode);
            break;
          case Kind::kOwner:
            out += "owner " + std::to_string(d.uid) + ":" +
                   std::to_string(d.gid) + " " + std::to_string(d.peer_uid) +
                   ":" + std::to_string(d.peer_gid);
            break;
          case Kind::kTarget:
            out += "target " + d.target + " " + d.peer_target;
            break;
        }
        out += "\n";
      }
    }
  }
  std::string summary;
  for (const auto& r : results) {
    summary += "peer " + r.peer + ": " + HumanBytes(r.compared_bytes) +
               " compared, " +
               (r.differences.empty()
                    ? std::string("identical")
                    : std::to_string(r.differences.size()) +
                          (r.differences.size() == 1 ? " difference"
                                                     : " differences") +
                          (repair ? " (logged for resync)" : "")) +
               "\n";
  }
  int code = (!errors.empty() || differ) ? 1 : 0;
  return {code, out, summary + errors};
}

std::string Node::SplitBrainWith(const sync::ReplicaSnapshot& r) const {
  if (replica_ && !r.split_brain_with.empty()) return r.split_brain_with;
  if (fan_out_) {
    for (const auto& p : fan_out_->Snapshot()) {
      if (p.state == sync::PeerState::kSplitBrain) return p.name;
    }
  }
  return "";
}

bool Node::ShowsRefusedPrimary(const sync::ReplicaSnapshot& r) const {
  if (!replica_ || r.split_brain_with.empty() ||
      r.split_brain_with == r.primary_name) {
    return false;
  }
  if (fan_out_) {
    for (const auto& p : fan_out_->Snapshot()) {
      if (p.name == r.split_brain_with) return false;
    }
  }
  return true;
}

bool Node::PrimaryLive(const sync::ReplicaSnapshot& r) const {
  return r.has_primary && !r.primary_left && r.last_seen_seconds_ago >= 0 &&
         r.last_seen_seconds_ago < options_.peer_timeout.count() / 1000.0;
}

const char* Node::PrimaryState(const sync::ReplicaSnapshot& r) const {
  if (r.split_brain_with == r.primary_name) return "split-brain";
  if (r.primary_fractured) return "fractured";
  if (!PrimaryLive(r)) return "disconnected";
  return r.resyncing ? "syncing" : "connected";
}

sync::ReplicaSnapshot Node::ReplicaNow() {
  sync::ReplicaSnapshot r;
  if (!replica_) return r;
  r = replica_->Snapshot();
  // On a primary, our own session to that node knows better: a split brain
  // the listener saw is over once the session is healthy.
  if (fan_out_ && !r.split_brain_with.empty()) {
    if (auto* session = fan_out_->Find(r.split_brain_with)) {
      if (session->Snapshot().state != sync::PeerState::kSplitBrain) {
        r.split_brain_with.clear();
      }
    }
  }
  return r;
}

ControlReply Node::PeerList(bool json) {
  auto peers = meta_->ListPeers();
  if (!peers.ok()) return {1, "", peers.status().message() + "\n"};
  // name -> (state, in_sync), as `status` shows them.
  std::map<std::string, std::pair<std::string, bool>> live;
  if (fan_out_) {
    for (auto& p : fan_out_->Snapshot()) {
      live[p.name] = {sync::PeerStateName(p.state), p.in_sync};
    }
  } else if (replica_) {
    sync::ReplicaSnapshot r = ReplicaNow();
    if (r.has_primary) {
      live[r.primary_name] = {PrimaryState(r), PrimaryLive(r) && r.consistent};
    }
    if (!r.split_brain_with.empty()) {
      live[r.split_brain_with] = {"split-brain", false};
    }
  }
  if (json) {
    JsonWriter j;
    j.BeginArray();
    for (const auto& p : *peers) {
      j.BeginObject();
      j.Key("name").Value(p.name);
      j.Key("endpoint").Value(p.endpoint);
      j.Key("uuid").Value(p.uuid.IsZero() ? std::string() : p.uuid.ToString());
      auto it = live.find(p.name);
      if (it != live.end()) {
        j.Key("state").Value(it->second.first);
        j.Key("in_sync").Value(it->second.second);
      } else {
        j.Key("state").Null();
        j.Key("in_sync").Null();
      }
      j.EndObject();
    }
    j.EndArray();
    return {0, j.str() + "\n", ""};
  }
  std::string out;
  for (const auto& p : *peers) {
    auto it = live.find(p.name);
    out += Pad(p.name, 16) + Pad(p.endpoint, 28) +
           (it != live.end() ? it->second.first : std::string("-")) + "\n";
  }
  if (out.empty()) out = "no peers\n";
  return {0, out, ""};
}

ControlReply Node::PeerChange(const std::string& verb,
                              const std::vector<std::string>& words) {
  if (words.size() < 2) return {2, "", verb + " needs a peer name\n"};
  const std::string& name = words[1];
  auto known = meta_->ListPeers();
  if (!known.ok()) return {1, "", known.status().message() + "\n"};
  bool exists = false;
  for (const auto& k : *known) exists = exists || k.name == name;
  if (verb == "peer-add") {
    if (words.size() < 3) return {2, "", "peer add needs NAME and EP\n"};
    if (exists) {
      return {1, "", "peer " + name + " already exists; remove it first\n"};
    }
    if (name == identity_->name) {
      return {1, "", name + " is this node's own name\n"};
    }
    for (const auto& k : *known) {
      if (k.endpoint == words[2]) {
        return {1, "",
                "peer " + k.name + " already has endpoint " + words[2] + "\n"};
      }
    }
    if (words[2] == identity_->listen_endpoint) {
      return {1, "", words[2] + " is this node's own endpoint\n"};
    }
    meta::PeerRecord record;
    record.name = name;
    record.endpoint = words[2];
    auto s = meta_->PutPeer(record);
    // A copy of unknown age: every block is compared once.
    if (s.ok())
      s = meta_->SetPeerFlag(name, meta::PeerFlag::kFullSyncNeeded, true);
    if (s.ok() && fan_out_) s = AddSession(record);
    if (!s.ok()) return {1, "", s.message() + "\n"};
    meta::LogInfo("peer " + name + " (" + record.endpoint + ") added");
    ReloadKeys();
    return {0, "peer " + name + " added\n", ""};
  }
  // peer-remove. A peer that is not in sync is removed too (most often it
  // is removed because its machine is gone): what it missed is forgotten,
  // and said so; were it added again, every block would be compared.
  if (!exists) return {1, "", "no peer named " + name + "\n"};
  std::string missed;
  if (fan_out_) {
    if (auto* session = fan_out_->Find(name)) {
      auto snap = session->Snapshot();
      if (!snap.in_sync) {
        missed = std::string(sync::PeerStateName(snap.state)) + ", " +
                 HumanBytes(snap.fracture_bytes) + " missed";
        if (snap.pending_namespace_ops > 0) {
          missed += " and " + std::to_string(snap.pending_namespace_ops) +
                    " namespace changes";
        }
      }
      fan_out_->RemoveSession(name);
    }
  }
  auto s = meta_->RemovePeer(name);
  if (!s.ok()) return {1, "", s.message() + "\n"};
  if (missed.empty()) {
    meta::LogInfo("peer " + name + " removed");
    return {0, "peer " + name + " removed\n", ""};
  }
  std::string note = "peer " + name + " removed while not in sync (" + missed +
                     "): its copy is out of date; added again, it gets every "
                     "block compared";
  meta::LogWarning(note);
  return {0, note + "\n", ""};
}

std::string Node::StatusJson() {
  JsonWriter j;
  j.BeginObject();
  j.Key("node").Value(identity_->name);
  j.Key("uuid").Value(identity_->node_uuid.ToString());
  j.Key("role").Value(identity_->role);
  j.Key("store").Value(options_.store);
  sync::ReplicaSnapshot replica = ReplicaNow();
  // A fresh secondary adopts its first primary's store UUID while it runs.
  const meta::Uuid& store_uuid = replica_ && !options_.primary
                                     ? replica.store_uuid
                                     : identity_->store_uuid;
  j.Key("store_uuid")
      .Value(store_uuid.IsZero() ? std::string() : store_uuid.ToString());
  if (options_.primary) {
    j.Key("mountpoint").Value(options_.mountpoint);
  } else {
    j.Key("mountpoint").Null();
  }
  j.Key("listen").Value(identity_->listen_endpoint);
  j.Key("mode").Value(options_.async ? "async" : "sync");
  j.Key("consistent").Value(replica_ ? replica.consistent : true);
  sync::Generations gens =
      generations_
          ? generations_->Get()
          : (replica_ ? replica.generations
                      : sync::Generations::Parse(identity_->generation));
  j.Key("generation")
      .Value(gens.current.IsZero() ? std::string() : gens.current.ToString());
  j.Key("generation_history").BeginArray();
  for (const auto& g : gens.history) j.Value(g.ToString());
  j.EndArray();
  std::string split_with = SplitBrainWith(replica);
  if (split_with.empty()) {
    j.Key("split_brain").Value(false);
  } else {
    j.Key("split_brain").BeginObject();
    j.Key("with").Value(split_with);
    j.EndObject();
  }
  {
    std::lock_guard<std::mutex> lock(recovery_mu_);
    if (recovery_folder_.empty()) {
      j.Key("recovery_folder").Null();
    } else {
      j.Key("recovery_folder").Value(recovery_folder_);
    }
  }
  j.Key("pid").Value(static_cast<int64_t>(::getpid()));
  j.Key("secure").Value(zap_ != nullptr);
  j.Key("insecure").Value(zap_ == nullptr && options_.insecure);
  j.Key("intent").BeginObject();
  j.Key("enabled").Value(journal_ != nullptr);
  j.Key("extent_bytes")
      .Value(journal_ ? journal_->extent_bytes() : options_.intent_extent);
  j.Key("active_extents")
      .Value(static_cast<uint64_t>(journal_ ? journal_->active_extents() : 0));
  j.Key("budget_bytes")
      .Value(journal_ ? journal_->budget_bytes() : options_.intent_budget);
  j.EndObject();
  if (recovered_) {
    j.Key("recovered_from_crash").BeginObject();
    j.Key("regions").Value(recovered_regions_);
    j.Key("bytes_queued").Value(recovered_bytes_);
    j.EndObject();
  } else {
    j.Key("recovered_from_crash").Value(false);
  }
  j.Key("peers").BeginArray();
  auto write_resync = [&j](uint64_t total, uint64_t done, uint64_t rate) {
    j.Key("resync").BeginObject();
    j.Key("total_bytes").Value(total);
    j.Key("done_bytes").Value(done);
    j.Key("bytes_per_second").Value(rate);
    j.EndObject();
  };
  if (fan_out_) {
    for (const auto& p : fan_out_->Snapshot()) {
      j.BeginObject();
      j.Key("name").Value(p.name);
      j.Key("endpoint").Value(p.endpoint);
      j.Key("uuid").Value(p.node_uuid.IsZero() ? std::string()
                                               : p.node_uuid.ToString());
      j.Key("state").Value(sync::PeerStateName(p.state));
      if (!p.reason.empty()) j.Key("reason").Value(p.reason);
      j.Key("in_sync").Value(p.in_sync);
      j.Key("fracture_bytes").Value(p.fracture_bytes);
      j.Key("fracture_extents").Value(p.fracture_extents);
      j.Key("pending_namespace_ops").Value(p.pending_namespace_ops);
      j.Key("full_sync_pending").Value(p.full_sync);
      write_resync(p.resync.total_bytes, p.resync.done_bytes,
                   p.resync.bytes_per_second);
      if (p.last_seen_seconds_ago < 0) {
        j.Key("last_seen_seconds_ago").Null();
      } else {
        j.Key("last_seen_seconds_ago").Value(p.last_seen_seconds_ago);
      }
      j.Key("changes_sent").Value(p.changes_sent);
      j.Key("bytes_sent").Value(p.bytes_sent);
      j.EndObject();
    }
  }
  if (ShowsRefusedPrimary(replica)) {
    j.BeginObject();
    j.Key("name").Value(replica.split_brain_with);
    j.Key("endpoint").Value(replica.split_brain_endpoint);
    j.Key("uuid").Value(replica.split_brain_uuid.IsZero()
                            ? std::string()
                            : replica.split_brain_uuid.ToString());
    j.Key("role").Value("primary");
    j.Key("state").Value("split-brain");
    j.Key("in_sync").Value(false);
    j.Key("fracture_bytes").Value(uint64_t{0});
    j.Key("fracture_extents").Value(uint64_t{0});
    j.Key("pending_namespace_ops").Value(uint64_t{0});
    write_resync(0, 0, 0);
    j.Key("last_seen_seconds_ago").Value(replica.split_brain_seen_seconds_ago);
    j.EndObject();
  }
  if (replica_ && !options_.primary && replica.has_primary) {
    j.BeginObject();
    j.Key("name").Value(replica.primary_name);
    j.Key("endpoint").Value(replica.primary_endpoint);
    j.Key("uuid").Value(replica.primary_uuid.ToString());
    j.Key("role").Value("primary");
    bool live = PrimaryLive(replica);
    j.Key("state").Value(PrimaryState(replica));
    j.Key("in_sync").Value(live && replica.consistent);
    j.Key("fracture_bytes").Value(uint64_t{0});
    j.Key("fracture_extents").Value(uint64_t{0});
    j.Key("pending_namespace_ops").Value(uint64_t{0});
    // A resync into this copy shows while it runs (consistent: false).
    write_resync(replica.consistent ? 0 : replica.resync_total_bytes,
                 replica.consistent ? 0 : replica.resync_done_bytes,
                 replica.consistent ? 0 : replica.resync_bytes_per_second);
    j.Key("last_seen_seconds_ago").Value(replica.last_seen_seconds_ago);
    j.Key("changes_applied").Value(replica.changes_applied);
    j.Key("bytes_applied").Value(replica.bytes_applied);
    j.EndObject();
  }
  j.EndArray();
  if (replica_) {
    j.Key("bad_frames").Value(replica.bad_frames);
    j.Key("apply_errors").Value(replica.apply_errors);
  }
  j.EndObject();
  return j.str();
}

std::string Node::StatusText() {
  std::string out;
  sync::ReplicaSnapshot replica = ReplicaNow();
  out += Pad("node", 12) + identity_->name + " (" +
         identity_->node_uuid.ToString() + ")\n";
  out += Pad("role", 12) + identity_->role + "\n";
  out += Pad("store", 12) + options_.store + "\n";
  if (options_.primary) {
    out += Pad("mountpoint", 12) + options_.mountpoint + "\n";
    out += Pad("mode", 12) + (options_.async ? "async" : "sync") + "\n";
  } else {
    out += Pad("listen", 12) + identity_->listen_endpoint + "\n";
  }
  out += Pad("links", 12) +
         (zap_                ? std::string("CURVE (authenticated, encrypted)")
          : options_.insecure ? std::string("plain, INSECURE (--insecure)")
                              : std::string("plain (loopback only)")) +
         "\n";
  if (journal_) {
    out += Pad("intents", 12) + std::to_string(journal_->active_extents()) +
           " active of " +
           std::to_string(journal_->budget_bytes() / journal_->extent_bytes()) +
           " (" + HumanBytes(journal_->extent_bytes()) + " regions)\n";
  }
  if (recovered_) {
    out += Pad("recovered", 12) +
           "from an unclean stop: " + std::to_string(recovered_regions_) +
           " regions (" + HumanBytes(recovered_bytes_) +
           ") queued for every peer\n";
  }
  bool consistent = replica_ ? replica.consistent : true;
  out +=
      Pad("consistent", 12) +
      (consistent ? std::string("yes")
                  : std::string("no (a resync is under way or unfinished)")) +
      "\n";
  std::string split_with = SplitBrainWith(replica);
  if (!split_with.empty()) {
    out += Pad("split brain", 12) + "with " + split_with +
           ": both wrote as primary; pick the survivor with mirrorfs resolve "
           "(--discard-local or --keep-local)\n";
  }
  {
    std::lock_guard<std::mutex> lock(recovery_mu_);
    if (!recovery_folder_.empty()) {
      out += Pad("recovery", 12) + recovery_folder_ + "\n";
    }
  }
  std::vector<std::vector<std::string>> rows;
  if (fan_out_) {
    for (const auto& p : fan_out_->Snapshot()) {
      std::string missed = "-";
      if (p.fracture_bytes > 0 || p.pending_namespace_ops > 0 || p.full_sync) {
        missed = HumanBytes(p.fracture_bytes) +
                 (p.pending_namespace_ops
                      ? " + " + std::to_string(p.pending_namespace_ops) + " ops"
                      : "") +
                 (p.full_sync ? " + full sync" : "");
      }
      std::string detail = p.reason;
      if (p.state == sync::PeerState::kSyncing && p.resync.total_bytes > 0) {
        detail = "resync " + HumanBytes(p.resync.done_bytes) + " / " +
                 HumanBytes(p.resync.total_bytes);
      }
      rows.push_back({p.name, sync::PeerStateName(p.state),
                      p.in_sync ? "yes" : "no", missed, p.endpoint,
                      Ago(p.last_seen_seconds_ago), detail});
    }
  }
  if (ShowsRefusedPrimary(replica)) {
    rows.push_back({replica.split_brain_with + " (primary)", "split-brain",
                    "no", "-", replica.split_brain_endpoint,
                    Ago(replica.split_brain_seen_seconds_ago), ""});
  }
  if (replica_ && replica.has_primary) {
    // As in status --json: in sync while connected and consistent.
    rows.push_back({replica.primary_name + " (primary)", PrimaryState(replica),
                    PrimaryLive(replica) && replica.consistent ? "yes" : "no",
                    "-", replica.primary_endpoint,
                    Ago(replica.last_seen_seconds_ago), ""});
  }
  if (rows.empty()) {
    out += Pad("peers", 12) + "none\n";
    return out;
  }
  std::vector<std::string> head = {"PEER",     "STATE",     "IN-SYNC", "MISSED",
                                   "ENDPOINT", "LAST-SEEN", ""};
  std::vector<size_t> width(head.size(), 0);
  rows.insert(rows.begin(), head);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], row[i].size() + 2);
  out += "\n";
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) line += Pad(row[i], width[i]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace mirrorfs::cli
