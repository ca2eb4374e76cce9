#include "sync/verifier.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <thread>

#include "sync/block_sums.h"
#include "sync/peer_session.h"
#include "sync/wire.h"

namespace mirrorfs::sync {

using Clock = std::chrono::steady_clock;
using Entry = meta::NamespaceEntry;

const char* VerifyKindName(VerifyDifference::Kind kind) {
  switch (kind) {
    case VerifyDifference::Kind::kData:
      return "data";
    case VerifyDifference::Kind::kSize:
      return "size";
    case VerifyDifference::Kind::kMissing:
      return "missing";
    case VerifyDifference::Kind::kExtra:
      return "extra";
    case VerifyDifference::Kind::kType:
      return "type";
    case VerifyDifference::Kind::kMode:
      return "mode";
    case VerifyDifference::Kind::kOwner:
      return "owner";
    case VerifyDifference::Kind::kTarget:
      return "target";
  }
  return "unknown";
}

const char* EntryTypeName(Entry::Type type) {
  switch (type) {
    case Entry::Type::kFile:
      return "file";
    case Entry::Type::kDirectory:
      return "folder";
    case Entry::Type::kSymlink:
      return "symlink";
  }
  return "unknown";
}

namespace {

// Adds how the peer's entry `b` differs from ours, `a`, at the same path.
void CompareEntries(const Entry& a, const Entry& b,
                    std::vector<VerifyDifference>* diffs) {
  VerifyDifference d;
  d.path = a.path;
  d.type = a.type;
  d.peer_type = b.type;
  d.size = a.size;
  d.peer_size = b.size;
  if (a.type != b.type) {
    d.kind = VerifyDifference::Kind::kType;
    diffs->push_back(d);
    return;  // nothing else of theirs is comparable
  }
  // A symlink's own permission bits mean nothing on Linux (and cannot be
  // set): only its owner and target are compared.
  if (a.type != Entry::Type::kSymlink && a.mode != b.mode) {
    d.kind = VerifyDifference::Kind::kMode;
    d.mode = a.mode;
    d.peer_mode = b.mode;
    diffs->push_back(d);
  }
  if (a.uid != b.uid || a.gid != b.gid) {
    d.kind = VerifyDifference::Kind::kOwner;
    d.uid = a.uid;
    d.gid = a.gid;
    d.peer_uid = b.uid;
    d.peer_gid = b.gid;
    diffs->push_back(d);
  }
  if (a.target != b.target) {
    d.kind = VerifyDifference::Kind::kTarget;
    d.target = a.target;
    d.peer_target = b.target;
    diffs->push_back(d);
  }
}

}  // namespace

Verifier::Verifier(PeerSession* session, meta::Source* source, uint64_t rate)
    : session_(session), source_(source), rate_(rate) {}

void Verifier::Throttle(uint64_t compared, uint64_t next) {
  if (rate_ == 0) return;
  // Never ahead of rate_ bytes per second on average.
  while (!cancelled_) {
    double allowed =
        std::chrono::duration<double>(Clock::now() - start_).count() *
        static_cast<double>(rate_);
    if (static_cast<double>(compared + next) <= allowed) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

meta::Result<VerifyResult> Verifier::Run(
    const std::function<void(uint64_t, uint64_t)>& progress) {
  start_ = Clock::now();
  VerifyResult result;
  result.peer = session_->name();
  MFS_RETURN_IF_ERROR(CompareNamespaces(&result));
  std::vector<std::pair<std::string, uint64_t>> files;
  MFS_RETURN_IF_ERROR(source_->ListFiles(&files));
  uint64_t total = 0;
  for (const auto& f : files) total += f.second;
  // Paths already reported missing, extra or of another type: their sizes
  // are not compared again.
  std::set<std::string> named;
  for (const auto& d : result.differences) {
    if (d.kind == VerifyDifference::Kind::kMissing ||
        d.kind == VerifyDifference::Kind::kExtra ||
        d.kind == VerifyDifference::Kind::kType) {
      named.insert(d.path);
    }
  }
  for (const auto& [path, size] : files) {
    MFS_RETURN_IF_ERROR(CompareFile(path, size, named.contains(path), total,
                                    &result, progress));
  }
  return result;
}

meta::Status Verifier::CompareNamespaces(VerifyResult* result) {
  const auto by_path = [](const Entry& a, const Entry& b) {
    return a.path < b.path;
  };
  std::string after;  // the parts so far covered every path up to it
  while (true) {
    if (cancelled_) return meta::Status::Error(ECANCELED, "verify cancelled");
    std::vector<Entry> mine;
    Listing theirs;
    bool answered = false;
    bool queued = true;
    auto done = std::make_shared<meta::Completion>(1);
    // Frozen: the peer lists after every namespace change queued before
    // the request and before every later one, as `mine` is.
    MFS_RETURN_IF_ERROR(source_->WithNamespaceFrozen(
        [&](const std::vector<Entry>& entries) -> meta::Status {
          mine = entries;
          queued = session_->RequestListing(
              ListRequest{after},
              [&](const Listing& listing) {
                theirs = listing;
                answered = true;
              },
              done);
          return meta::Status::Ok();
        }));
    if (!queued) {
      return meta::Status::Error(ENOTCONN,
                                 "peer " + result->peer + " is not connected");
    }
    done->Wait();
    if (!answered) {
      return meta::Status::Error(
          ENOTCONN, "peer " + result->peer + " was lost during verify");
    }
    // This part covers (after, hi]: everything after `after` if it is the
    // last, else up to its last entry.
    const std::string* hi = theirs.last ? nullptr : &theirs.entries.back().path;
    std::sort(mine.begin(), mine.end(), by_path);
    auto in_part = [&](const std::string& path) {
      return (after.empty() || after < path) && (hi == nullptr || path <= *hi);
    };
    std::erase_if(mine, [&](const Entry& e) { return !in_part(e.path); });
    size_t i = 0, j = 0;
    auto& diffs = result->differences;
    while (i < mine.size() || j < theirs.entries.size()) {
      const Entry* a = i < mine.size() ? &mine[i] : nullptr;
      const Entry* b = j < theirs.entries.size() ? &theirs.entries[j] : nullptr;
      VerifyDifference d;
      if (b == nullptr || (a != nullptr && a->path < b->path)) {
        d.kind = VerifyDifference::Kind::kMissing;
        d.path = a->path;
        d.type = a->type;
        d.size = a->size;
        d.length = a->type == Entry::Type::kFile ? a->size : 0;
        diffs.push_back(d);
        ++i;
      } else if (a == nullptr || b->path < a->path) {
        d.kind = VerifyDifference::Kind::kExtra;
        d.path = b->path;
        d.peer_type = b->type;
        d.peer_size = b->size;
        d.length = b->type == Entry::Type::kFile ? b->size : 0;
        diffs.push_back(d);
        ++j;
      } else {
        CompareEntries(*a, *b, &diffs);
        ++i;
        ++j;
      }
    }
    if (theirs.last) return meta::Status::Ok();
    after = *hi;
  }
}

meta::Status Verifier::CompareFile(
    const std::string& path, uint64_t listed_size, bool named, uint64_t total,
    VerifyResult* result,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  auto& diffs = result->differences;
  std::string buffer;
  uint64_t size = listed_size;
  for (uint64_t off = 0;; off += kBatchBytes) {
    if (cancelled_) return meta::Status::Error(ECANCELED, "verify cancelled");
    // The last batch (by the size seen so far) locks to the end of the file,
    // so that the sizes are compared with no size change in flight.
    bool tail = size <= off + kBatchBytes;
    bool seen = false;
    meta::Status failure;
    Throttle(result->compared_bytes,
             std::min(kBatchBytes, size - std::min(size, off)));
    auto read = source_->ReadRangeLocked(
        path, off, kBatchBytes, tail,
        [&](const std::string& current, uint64_t now,
            const std::vector<meta::Change>& pieces) {
          seen = true;
          size = now;
          if (tail && now > off + kBatchBytes) tail = false;  // it grew
          // The file may have shrunk: compare what exists on both sides.
          uint64_t end = off;
          for (const auto& p : pieces) end = std::max(end, p.offset + p.length);
          uint64_t have = end - off;
          if (have == 0 && !tail) return;
          BlockSums sums =
              SumBlocks(current, off, have, kBlockBytes, pieces, &buffer);
          BlockDiff diff;
          bool answered = false;
          auto done = std::make_shared<meta::Completion>(1);
          if (!session_->RequestBlockDiff(
                  sums,
                  [&](const BlockDiff& reply) {
                    diff = reply;
                    answered = true;
                  },
                  done)) {
            failure = meta::Status::Error(
                ENOTCONN, "peer " + result->peer + " is not connected");
            return;
          }
          done->Wait();  // still holding the range lock: nothing moves
          if (!answered) {
            failure = meta::Status::Error(
                ENOTCONN, "peer " + result->peer + " was lost during verify");
            return;
          }
          for (uint32_t index : diff.differing) {
            uint64_t at = off + uint64_t{index} * kBlockBytes;
            if (at >= end) continue;
            uint64_t n = std::min<uint64_t>(kBlockBytes, end - at);
            if (!diffs.empty() && diffs.back().path == current &&
                diffs.back().kind == VerifyDifference::Kind::kData &&
                diffs.back().offset + diffs.back().length == at) {
              diffs.back().length += n;
            } else {
              VerifyDifference d;
              d.path = current;
              d.offset = at;
              d.length = n;
              diffs.push_back(d);
            }
          }
          result->compared_bytes += have;
          if (!tail || diff.size == now || named) return;
          VerifyDifference d;
          d.path = current;
          if (diff.size == kNoFile) {
            d.kind = VerifyDifference::Kind::kMissing;
            d.length = now;
          } else {
            d.kind = VerifyDifference::Kind::kSize;
            d.offset = std::min(now, diff.size);
            d.length = std::max(now, diff.size) - d.offset;
            d.peer_size = diff.size;
          }
          d.size = now;
          diffs.push_back(d);
        });
    MFS_RETURN_IF_ERROR(read);
    MFS_RETURN_IF_ERROR(failure);
    if (progress) progress(result->compared_bytes, total);
    // Gone (the namespace reconcile covers it), or compared to its end.
    if (!seen || tail) return meta::Status::Ok();
  }
}

}  // namespace mirrorfs::sync
