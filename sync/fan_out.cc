#include "sync/fan_out.h"

#include <mutex>

namespace mirrorfs::sync {

FanOut::~FanOut() { StopAll(); }

void FanOut::AddSession(std::unique_ptr<PeerSession> session) {
  std::unique_lock<std::shared_mutex> lock(sessions_mu_);
  sessions_.push_back(std::move(session));
}

bool FanOut::RemoveSession(const std::string& name) {
  std::unique_ptr<PeerSession> removed;
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
  std::vector<std::unique_ptr<PeerSession>> all;
  {
    std::unique_lock<std::shared_mutex> lock(sessions_mu_);
    all.swap(sessions_);
  }
  for (auto& s : all) s->Stop();
}

std::shared_ptr<meta::Completion> FanOut::Submit(const meta::Change& change) {
  std::shared_lock<std::shared_mutex> lock(sessions_mu_);
  if (sessions_.empty()) return nullptr;
  // One extra count keeps the Completion open until every session was asked.
  auto completion = std::make_shared<meta::Completion>(
      static_cast<int>(sessions_.size()) + 1);
  int taken = 0;
  for (auto& session : sessions_) {
    if (session->Enqueue(change, completion)) {
      ++taken;
    } else {
      completion->Done();
    }
  }
  completion->Done();
  if (taken == 0 || mode_ == MirrorMode::kAsync) return nullptr;
  return completion;
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
