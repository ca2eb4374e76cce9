#include "sync/fracture_log.h"

#include <random>

#include "meta/log.h"
#include "meta/meta_store.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

using meta::ChangeKind;
using meta::Status;

namespace {

bool IsDataChange(ChangeKind kind) {
  return kind == ChangeKind::kWrite || kind == ChangeKind::kPunchHole ||
         kind == ChangeKind::kZeroRange || kind == ChangeKind::kAllocate;
}

bool UnderPath(const std::string& key, const std::string& path) {
  return key == path ||
         (key.size() > path.size() && key.compare(0, path.size(), path) == 0 &&
          key[path.size()] == '/');
}

}  // namespace

FractureLog::FractureLog(meta::MetaStore* store, std::string peer)
    : store_(store), peer_(std::move(peer)) {}

Status FractureLog::Load() {
  auto extents = store_->LoadFracture(peer_);
  auto ops = store_->LoadNamespaceOps(peer_);
  auto full = store_->GetPeerFlag(peer_, meta::PeerFlag::kFullSyncNeeded);
  std::lock_guard<std::mutex> lock(mu_);
  extents_.clear();
  ops_.clear();
  touched_at_.clear();
  bytes_ = count_ = 0;
  full_sync_ = full.ok() && *full;
  auto dirty = store_->GetPeerFlag(peer_, meta::PeerFlag::kNamespaceDirty);
  namespace_dirty_ = dirty.ok() && *dirty;
  auto resync_id = store_->GetPeerResyncId(peer_);
  resync_id_ = resync_id.ok() ? *resync_id : 0;
  Status problem;
  if (extents.ok()) {
    extents_ = std::move(extents.value());
  } else {
    problem = extents.status();
  }
  if (ops.ok()) {
    ops_ = std::move(ops.value());
  } else if (problem.ok()) {
    problem = ops.status();
  }
  for (const auto& [path, set] : extents_) {
    bytes_ += set.TotalBytes();
    count_ += set.Count();
  }
  next_op_seq_ = ops_.empty() ? 1 : ops_.back().first + 1;
  if (!problem.ok()) {
    // Nothing in it can be trusted: compare every block instead.
    full_sync_ = true;
    resync_id_ = 0;
    (void)store_->SetPeerFlag(peer_, meta::PeerFlag::kFullSyncNeeded, true);
    (void)store_->SetPeerResyncId(peer_, 0);
    return problem.Context("fracture log of peer " + peer_ +
                           " is unreadable; a full sync will follow");
  }
  return Status::Ok();
}

Status FractureLog::Record(const meta::Change& c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (c.kind == ChangeKind::kFsync) return Status::Ok();
  if (IsDataChange(c.kind)) {
    if (c.length == 0) return Status::Ok();
    auto& set = extents_[c.path];
    // Even if the range is logged already: a resync may have read it
    // before this change (Done).
    touched_at_[c.path] = ++epoch_;
    if (set.Contains(c.offset, c.length)) return Status::Ok();
    bytes_ -= set.TotalBytes();
    count_ -= set.Count();
    set.Add(c.offset, c.length);
    bytes_ += set.TotalBytes();
    count_ += set.Count();
    return store_->AddFractureExtent(peer_, c.path, c.offset, c.length,
                                     /*sync=*/false);
  }
  uncovered_dirty_ = true;  // a namespace change: not in the journal
  FollowNamesLocked(c);
  return AppendOpLocked(c);
}

void FractureLog::FollowNamesLocked(const meta::Change& c) {
  switch (c.kind) {
    case ChangeKind::kUnlink:
      DropPathLocked(c.path, false);
      break;
    case ChangeKind::kRmdir:
      DropPathLocked(c.path, true);
      break;
    case ChangeKind::kRename:
      if (c.flags & kRenameExchange) {
        // Swap what is logged under the two names, through a name that
        // cannot exist in a store (NUL is never in a path).
        const std::string tmp = std::string("\0swap", 5);
        MovePathLocked(c.path, tmp);
        MovePathLocked(c.target, c.path);
        MovePathLocked(tmp, c.target);
      } else {
        DropPathLocked(c.target, true);
        MovePathLocked(c.path, c.target);
      }
      break;
    default:
      break;
  }
}

void FractureLog::Follow(const meta::Change& c) {
  std::lock_guard<std::mutex> lock(mu_);
  uncovered_dirty_ = true;
  FollowNamesLocked(c);
}

Status FractureLog::AppendOpLocked(const meta::Change& c) {
  if (full_sync_) return Status::Ok();  // a full sync settles everything
  if (ops_.size() >= kMaxNamespaceOps) {
    meta::LogWarning("peer " + peer_ + ": more than " +
                     std::to_string(kMaxNamespaceOps) +
                     " missed namespace changes; it will get a full sync");
    full_sync_ = true;
    uint64_t last = ops_.back().first;
    ops_.clear();
    MFS_RETURN_IF_ERROR(
        store_->SetPeerFlag(peer_, meta::PeerFlag::kFullSyncNeeded, true));
    return store_->DropNamespaceOps(peer_, last);
  }
  meta::Change op = c;
  op.data = nullptr;
  uint64_t seq = next_op_seq_++;
  ops_.emplace_back(seq, op);
  return store_->AppendNamespaceOp(peer_, seq, op, /*sync=*/false);
}

void FractureLog::DropPathLocked(const std::string& path, bool with_children) {
  for (auto it = extents_.begin(); it != extents_.end();) {
    bool hit = with_children ? UnderPath(it->first, path) : it->first == path;
    if (!hit) {
      ++it;
      continue;
    }
    bytes_ -= it->second.TotalBytes();
    count_ -= it->second.Count();
    auto s = store_->DropFracturePath(peer_, it->first, /*sync=*/false);
    if (!s.ok()) meta::LogError(s.message());
    stale_paths_.erase(it->first);
    touched_at_.erase(it->first);
    it = extents_.erase(it);
  }
}

void FractureLog::MovePathLocked(const std::string& from,
                                 const std::string& to) {
  std::vector<std::pair<std::string, meta::ExtentSet>> moved;
  for (auto it = extents_.begin(); it != extents_.end();) {
    if (!UnderPath(it->first, from)) {
      ++it;
      continue;
    }
    moved.emplace_back(to + it->first.substr(from.size()),
                       std::move(it->second));
    stale_paths_.erase(it->first);
    touched_at_.erase(it->first);
    // The swap name is never persisted: only real paths reach the store.
    if (it->first[0] != '\0') {
      auto s = store_->DropFracturePath(peer_, it->first, /*sync=*/false);
      if (!s.ok()) meta::LogError(s.message());
    }
    it = extents_.erase(it);
  }
  for (auto& [path, set] : moved) {
    touched_at_[path] = ++epoch_;
    auto& dest = extents_[path];
    bytes_ -= dest.TotalBytes();
    count_ -= dest.Count();
    dest.Merge(set);
    bytes_ += dest.TotalBytes();
    count_ += dest.Count();
    bytes_ -= set.TotalBytes();
    count_ -= set.Count();
    if (path[0] != '\0') {
      auto s = store_->ReplaceFracture(peer_, path, dest, /*sync=*/false);
      if (!s.ok()) meta::LogError(s.message());
    }
  }
}

Status FractureLog::MakeDurable() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    uncovered_dirty_ = false;
  }
  Status s = store_->SyncWal();
  if (!s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    uncovered_dirty_ = true;
  }
  return s;
}

void FractureLog::set_data_covered_by_journal(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  data_covered_ = on;
}

bool FractureLog::ClaimSyncForFsync() {
  std::lock_guard<std::mutex> lock(mu_);
  bool needed = !data_covered_ || uncovered_dirty_;
  uncovered_dirty_ = false;
  return needed;
}

bool FractureLog::full_sync() const {
  std::lock_guard<std::mutex> lock(mu_);
  return full_sync_;
}

Status FractureLog::SetFullSync(bool on) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    full_sync_ = on;
    uncovered_dirty_ = true;
  }
  return store_->SetPeerFlag(peer_, meta::PeerFlag::kFullSyncNeeded, on);
}

std::map<std::string, meta::ExtentSet> FractureLog::Extents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return extents_;
}

std::vector<std::pair<uint64_t, meta::Change>> FractureLog::NamespaceOps()
    const {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_;
}

uint64_t FractureLog::Epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return epoch_;
}

void FractureLog::Done(const std::string& path, uint64_t offset,
                       uint64_t length, uint64_t read_at) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = extents_.find(path);
  if (it == extents_.end()) return;
  auto touched = touched_at_.find(path);
  if (touched != touched_at_.end() && touched->second > read_at) return;
  bytes_ -= it->second.TotalBytes();
  count_ -= it->second.Count();
  it->second.Remove(offset, length);
  bytes_ += it->second.TotalBytes();
  count_ += it->second.Count();
  if (it->second.empty()) {
    extents_.erase(it);
    stale_paths_.erase(path);
    touched_at_.erase(path);
    auto s = store_->DropFracturePath(peer_, path, /*sync=*/false);
    if (!s.ok()) meta::LogError(s.message());
  } else {
    stale_paths_[path] = true;
  }
}

Status FractureLog::NamespaceDone(uint64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  while (n < ops_.size() && ops_[n].first <= seq) ++n;
  if (n == 0) return Status::Ok();
  ops_.erase(ops_.begin(), ops_.begin() + static_cast<long>(n));
  return store_->DropNamespaceOps(peer_, seq);
}

Status FractureLog::Checkpoint() {
  MFS_RETURN_IF_ERROR(PersistProgress());
  return store_->SyncWal();
}

Status FractureLog::PersistProgress() {
  {
    // Held across the rewrites: no Record may add to a path while its
    // records are replaced (MetaStore::ReplaceFracture's REQUIRES).
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [path, unused] : stale_paths_) {
      auto it = extents_.find(path);
      if (it == extents_.end()) continue;
      MFS_RETURN_IF_ERROR(
          store_->ReplaceFracture(peer_, path, it->second, /*sync=*/false));
    }
    stale_paths_.clear();
  }
  return Status::Ok();
}

Status FractureLog::Clear() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    extents_.clear();
    ops_.clear();
    stale_paths_.clear();
    touched_at_.clear();
    bytes_ = count_ = 0;
    full_sync_ = false;
    namespace_dirty_ = false;
    resync_id_ = 0;  // ClearAllFracture drops it too
  }
  MFS_RETURN_IF_ERROR(store_->ClearAllFracture(peer_));
  MFS_RETURN_IF_ERROR(
      store_->SetPeerFlag(peer_, meta::PeerFlag::kNamespaceDirty, false));
  MFS_RETURN_IF_ERROR(
      store_->SetPeerFlag(peer_, meta::PeerFlag::kFullSyncNeeded, false));
  return store_->SyncWal();
}

uint64_t FractureLog::ResyncId() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (resync_id_ != 0) return resync_id_;
  }
  // Stored (synced) outside mu_, a leaf lock held across unsynced writes
  // only. One resync worker per log at a time: no other caller races.
  uint64_t id = 0;
  while (id == 0) {
    std::random_device random;
    id = (uint64_t{random()} << 32) | random();
  }
  auto s = store_->SetPeerResyncId(peer_, id);
  if (!s.ok()) {
    meta::LogError("peer " + peer_ + ": " + s.message() +
                   "; a crash of this node during the resync will lead to "
                   "a full comparison");
    return 0;
  }
  std::lock_guard<std::mutex> lock(mu_);
  resync_id_ = id;
  return id;
}

bool FractureLog::IsOwnResync(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return id != 0 && id == resync_id_;
}

Status FractureLog::MarkNamespaceDirty() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    namespace_dirty_ = true;
    uncovered_dirty_ = true;
  }
  return store_->SetPeerFlag(peer_, meta::PeerFlag::kNamespaceDirty, true);
}

void FractureLog::ClearNamespaceDirty() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!namespace_dirty_) return;
    namespace_dirty_ = false;
  }
  auto s = store_->SetPeerFlag(peer_, meta::PeerFlag::kNamespaceDirty, false);
  if (!s.ok()) meta::LogError("peer " + peer_ + ": " + s.message());
}

bool FractureLog::empty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return extents_.empty() && ops_.empty() && !full_sync_ && !namespace_dirty_;
}

uint64_t FractureLog::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

uint64_t FractureLog::extents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

uint64_t FractureLog::namespace_ops() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_.size();
}

}  // namespace mirrorfs::sync
