// Verifier: compares the primary's store with one peer's copy, online: the
// namespaces (which files, folders and symlinks exist, of which type, with
// which permission bits, owner and group, and symlink targets), then
// every regular file by its size and by BLAKE2b checksums of 64 KiB blocks
// (the peer hashes its own blocks; only checksums, the list of differing
// blocks and sizes travel).
//
// No false alarms on a busy store:
// - each part of the peer's namespace is asked for while the primary's
//   namespace is frozen (Source::WithNamespaceFrozen), and compared with the
//   primary's at that instant: the peer, which applies frames in order,
//   lists after every earlier namespace change and before every later one;
// - each batch of blocks is read and compared while its range lock is held
//   in the volume (Source::ReadRangeLocked), so no write to that range is in
//   flight; the last batch of a file holds the lock to the end of the file,
//   so no write that changes its size is in flight when the sizes are
//   compared.
//
// Thread-safety: Run() is called on one thread; Cancel() and progress from
// any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "meta/source.h"
#include "meta/status.h"

namespace mirrorfs::sync {

class PeerSession;

struct VerifyDifference {
  enum class Kind {
    kData,     // blocks differ: [offset, offset + length)
    kSize,     // the file's size differs: `size` here, `peer_size` there
    kMissing,  // on the primary, not on the peer: `type` (a file: `size`)
    kExtra,    // on the peer only: `peer_type` (a file: `peer_size`)
    kType,     // of another type on the peer: `type` here, `peer_type` there
    kMode,     // other permission bits: `mode` here, `peer_mode` there
    kOwner,    // another owner or group: `uid`/`gid` here, `peer_` there
    kTarget,   // a symlink pointing elsewhere: `target`, `peer_target`
  };
  Kind kind = Kind::kData;
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t size = 0;
  uint64_t peer_size = 0;
  meta::NamespaceEntry::Type type = meta::NamespaceEntry::Type::kFile;
  meta::NamespaceEntry::Type peer_type = meta::NamespaceEntry::Type::kFile;
  uint32_t mode = 0, peer_mode = 0;
  uint32_t uid = 0, peer_uid = 0;
  uint32_t gid = 0, peer_gid = 0;
  std::string target, peer_target;
};

// "data", "size", "missing", "extra", "type", "mode", "owner", "target".
const char* VerifyKindName(VerifyDifference::Kind kind);
// "file", "folder", "symlink".
const char* EntryTypeName(meta::NamespaceEntry::Type type);

struct VerifyResult {
  std::string peer;
  uint64_t compared_bytes = 0;
  // The namespace differences (by path), then per file its data ranges
  // (merged, in order) and its size.
  std::vector<VerifyDifference> differences;
};

class Verifier {
 public:
  static constexpr uint32_t kBlockBytes = 64u << 10;
  static constexpr uint64_t kBatchBytes = uint64_t{kBlockBytes} * 256;

  // `*session` and `*source` must outlive the verifier. `rate` in bytes per
  // second (0 = unlimited) throttles the comparison.
  Verifier(PeerSession* session, meta::Source* source, uint64_t rate);

  // Returns the comparison, or an error if the peer was lost or the store
  // could not be read. `progress(done, total)` is called after each batch.
  meta::Result<VerifyResult> Run(
      const std::function<void(uint64_t, uint64_t)>& progress);
  void Cancel() { cancelled_ = true; }

 private:
  // Compares the namespaces, part by part; adds to `result`.
  meta::Status CompareNamespaces(VerifyResult* result);
  // Compares one file's blocks and size; adds to `result`.
  // `named`: the namespace comparison already reported the path.
  meta::Status CompareFile(
      const std::string& path, uint64_t listed_size, bool named, uint64_t total,
      VerifyResult* result,
      const std::function<void(uint64_t, uint64_t)>& progress);
  void Throttle(uint64_t compared, uint64_t next);

  PeerSession* session_;
  meta::Source* source_;
  const uint64_t rate_;
  std::atomic<bool> cancelled_{false};
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mirrorfs::sync
