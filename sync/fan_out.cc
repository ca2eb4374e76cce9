#include "sync/fan_out.h"

#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <optional>

#include "meta/log.h"
#include "sync/frame_data.h"

namespace mirrorfs::sync {

FanOut::~FanOut() { StopAll(); }

void FanOut::StartEpochs(IntentJournal* journal, int store_fd,
                         std::chrono::milliseconds period) {
  journal_ = journal;
  store_fd_ = store_fd;
  period_ = period;
  epoch_thread_ = std::thread([this] { RunEpochs(); });
}

void FanOut::RunEpochs() {
  while (!stopping_) {
    if (journal_ != nullptr) {
      journal_->WaitFlushWanted(period_, &stopping_);
    } else {
      std::unique_lock<std::mutex> lock(stop_mu_);
      stop_cv_.wait_for(lock, period_, [this] { return stopping_.load(); });
    }
    if (stopping_) break;
    FlushEpoch();
  }
}

void FanOut::FlushEpoch(bool final) {
  std::lock_guard<std::mutex> lock(epoch_mu_);
  uint64_t epoch = journal_ ? journal_->BeginEpoch() : 0;
  if (store_fd_ >= 0 && ::syncfs(store_fd_) != 0) {
    meta::LogError(
        "epoch flush: syncfs of the store failed; write intents "
        "stay active");
    return;
  }
  meta::Change flush;
  flush.kind = meta::ChangeKind::kFsync;  // path "": the whole store
  if (auto done = SubmitAll(flush, /*waited=*/true, /*attended=*/false)) {
    done->Wait();
  }
  if (journal_ != nullptr) {
    auto s = journal_->Retire(epoch, final);
    if (!s.ok()) meta::LogError("write-intent journal: " + s.message());
  }
}

meta::Status FanOut::StartGenerationIfDue() {
  if (generations_ == nullptr || !generations_->due()) {
    return meta::Status::Ok();
  }
  bool all_live = true;
  {
    std::shared_lock<std::shared_mutex> lock(sessions_mu_);
    for (const auto& s : sessions_) all_live = all_live && s->FollowsLive();
  }
  return generations_->BeforeChange(all_live).Context(
      "cannot record a new generation");
}

meta::Status FanOut::Prepare(const meta::Change& change) {
  MFS_RETURN_IF_ERROR(StartGenerationIfDue());
  if (journal_ == nullptr || !meta::ChangesFileData(change.kind)) {
    return meta::Status::Ok();
  }
  return journal_->Enter(change.local_ino, change.offset,
                         std::max<uint64_t>(change.length, 1));
}

void FanOut::Finished(const meta::Change& change) {
  if (journal_ == nullptr || !meta::ChangesFileData(change.kind)) return;
  journal_->Leave(change.local_ino, change.offset,
                  std::max<uint64_t>(change.length, 1));
}

void FanOut::Diverged(const meta::Change& change) {
  std::shared_lock<std::shared_mutex> lock(sessions_mu_);
  for (const auto& session : sessions_) session->Diverged(change);
}

void FanOut::AddSession(std::unique_ptr<PeerSession> session) {
  std::unique_lock<std::shared_mutex> lock(sessions_mu_);
  sessions_.push_back(std::move(session));
}

bool FanOut::RemoveSession(const std::string& name) {
  std::shared_ptr<PeerSession> removed;
  {
    std::unique_lock<std::shared_mutex> lock(sessions_mu_);
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if ((*it)->name() == name) {
        removed = std::move(*it);
        sessions_.erase(it);
        break;
      }
    }
  }
  if (!removed) return false;
  removed->Stop();
  return true;
}

void FanOut::StopAll() {
  {
    // The epoch thread sleeps up to a period: woken, it stops at once.
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (journal_ != nullptr) journal_->Interrupt();
  if (epoch_thread_.joinable()) epoch_thread_.join();
  std::vector<std::shared_ptr<PeerSession>> all;
  {
    std::unique_lock<std::shared_mutex> lock(sessions_mu_);
    all.swap(sessions_);
  }
  for (auto& s : all) s->Stop();
  {
    std::lock_guard<std::mutex> lock(log_sync_mu_);
    log_sync_stop_ = true;
  }
  log_sync_cv_.notify_all();
  if (log_sync_thread_.joinable()) log_sync_thread_.join();
}

void FanOut::SetLogSync(std::function<meta::Status()> sync) {
  log_sync_ = std::move(sync);
  log_sync_thread_ = std::thread([this] { RunLogSyncs(); });
}

void FanOut::RunLogSyncs() {
  std::unique_lock<std::mutex> lock(log_sync_mu_);
  while (true) {
    log_sync_cv_.wait(
        lock, [this] { return log_sync_stop_ || !log_sync_waiting_.empty(); });
    if (log_sync_waiting_.empty()) return;  // stopping, nothing left
    std::vector<std::shared_ptr<meta::Completion>> batch;
    batch.swap(log_sync_waiting_);
    lock.unlock();
    // One sync for every fsync that asked meanwhile.
    auto s = log_sync_();
    if (!s.ok()) {
      meta::LogError("making the fracture logs durable failed: " + s.message());
    }
    for (auto& c : batch) c->Done();
    lock.lock();
  }
}

std::shared_ptr<meta::Completion> FanOut::Submit(const meta::Change& change) {
  // Changes that had no Prepare() (namespace and attribute changes) start
  // a due generation here; an error leaves it due for the next one. An
  // fsync writes nothing.
  if (change.kind != meta::ChangeKind::kFsync) {
    if (auto s = StartGenerationIfDue(); !s.ok()) meta::LogError(s.message());
  }
  const bool sync = mode_ == MirrorMode::kSync;
  auto completion = SubmitAll(change, /*waited=*/sync, /*attended=*/sync);
  return sync ? completion : nullptr;
}

void FanOut::Wait(const std::shared_ptr<meta::Completion>& completion) {
  if (completion->IsDone()) return;
  // The sessions are copied (no lock is held while waiting); the vector
  // keeps its capacity, so the steady state allocates nothing.
  thread_local std::vector<std::shared_ptr<PeerSession>> sessions;
  {
    std::shared_lock<std::shared_mutex> lock(sessions_mu_);
    sessions = sessions_;
  }
  for (auto& session : sessions) session->Await(completion.get());
  sessions.clear();
  // Whatever else the change waits for (a fracture-log sync).
  completion->Wait();
}

std::shared_ptr<meta::Completion> FanOut::SubmitAll(const meta::Change& change,
                                                    bool waited,
                                                    bool attended) {
  std::shared_lock<std::shared_mutex> lock(sessions_mu_);
  if (sessions_.empty()) return nullptr;
  // One extra count keeps the Completion open until every session was asked.
  auto completion = std::make_shared<meta::Completion>(
      static_cast<int>(sessions_.size()) + 1);
  int taken = 0;
  bool log_sync = false;  // an fsync found a peer not mirrored live
  bool* defer = log_sync_ && waited && change.kind == meta::ChangeKind::kFsync
                    ? &log_sync
                    : nullptr;
  // A write's bytes are checksummed once and sent to every peer from one
  // buffer: the caller's own (no copy) when it waits through Wait(), which
  // then also waits until ZeroMQ is done reading it; else one copy.
  std::optional<FrameData> data;
  if (change.kind == meta::ChangeKind::kWrite) {
    data.emplace(change.data, change.data ? change.length : 0,
                 attended ? completion.get() : nullptr);
  }
  for (auto& session : sessions_) {
    if (session->Enqueue(change, completion, defer, attended,
                         data ? &*data : nullptr)) {
      ++taken;
    } else {
      completion->Done();
    }
  }
  if (log_sync) {
    // The logs are synced beside the local fsync; the caller waits for it.
    completion->AddPending();
    ++taken;
    {
      std::lock_guard<std::mutex> lock(log_sync_mu_);
      log_sync_waiting_.push_back(completion);
    }
    log_sync_cv_.notify_one();
  }
  completion->Done();
  return taken == 0 ? nullptr : completion;
}

void FanOut::AnnounceGeneration(const Generations& started) {
  bool told = false;
  {
    std::shared_lock<std::shared_mutex> lock(sessions_mu_);
    for (auto& s : sessions_) told = s->AnnounceGeneration(started) || told;
  }
  // A peer that learns it and is lost later makes the next one due.
  if (told && generations_ != nullptr) generations_->MarkShared();
}

PeerSession* FanOut::Find(const std::string& name) const {
  std::shared_lock<std::shared_mutex> lock(sessions_mu_);
  for (auto& s : sessions_) {
    if (s->name() == name) return s.get();
  }
  return nullptr;
}

std::vector<PeerSnapshot> FanOut::Snapshot() const {
  std::shared_lock<std::shared_mutex> lock(sessions_mu_);
  std::vector<PeerSnapshot> out;
  for (auto& s : sessions_) out.push_back(s->Snapshot());
  return out;
}

}  // namespace mirrorfs::sync
