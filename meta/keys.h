// The key layout of the state database (STORE/.mirrorfs/db), described once.
// Only meta_store.cc reads or writes these keys; everything else goes
// through MetaStore's domain methods. Thread-safety: constants and pure
// functions.
//
// Layout version 2 (key "v"). All keys live in the default column family.
//
//   key                              value
//   -------------------------------  -------------------------------------
//   "v"                              layout version, decimal text ("2")
//   "id/name"                        node name, text
//   "id/node_uuid"                   this node's Uuid, 36-char text form
//   "id/store_uuid"                  the store's Uuid, text (absent = zero)
//   "id/role"                        "primary" | "secondary" | "" (unset)
//   "id/listen"                      listen endpoint, e.g. tcp://0.0.0.0:7790
//   "id/generation"                  data generation, opaque text
//   "peer/<name>"                    16 raw bytes peer Uuid, then endpoint
//   "fx/<peer>\0<path>\0<off:be64>   "" (empty): <peer> missed
//     <len:be64>"                    [off, off + len) of image <path>;
//                                    len > 0
//   "fns/<peer>\0<seq:be64>"         EncodeChangeRecord() (change_codec.h)
//                                    of namespace operation number <seq>
//                                    that <peer> missed
//   "pflag/<peer>/<flag>"            "1" (absent = flag off); <flag> is
//                                    "namespace_dirty" | "full_sync_needed"
//   "pflag/<peer>/resync_id"         decimal id (non-zero) this primary puts
//                                    in its resync-begin marks to <peer>;
//                                    vouches that <peer>'s fracture log is
//                                    the rest of any such resync cut short
//                                    (dropped with the log)
//   "node/clean"                     "1" clean shutdown, "0" running or
//                                    crashed (absent = clean: a fresh DB)
//   "int/<ino:be64><region:be64>"    "" (empty): write-intent journal; the
//                                    region [region * extent, +extent) of
//                                    the file with inode number <ino> may
//                                    have writes in flight. Inode numbers
//                                    survive renames; recovery maps them
//                                    back to paths by walking the store.
//   "node/intent_extent"             decimal bytes of one intent region
//   "node/consistent"                "1" this copy is consistent, "0" a
//                                    resync into it began and has not
//                                    ended (absent = consistent)
//   "node/resync_id"                 decimal id of the primary's resync
//                                    that made "node/consistent" "0" (absent
//                                    or "0": another cause, or consistent)
//
// <name>/<peer> match [A-Za-z0-9._-]{1,64}, so neither '/' nor '\0' can
// occur in them and every per-peer prefix below is unambiguous. <path> is
// relative to the store root, non-empty and without '\0'; the '\0' after it
// ends the path, so the keys of "a" never share a prefix with those of "a/b"
// or "ab". <off>, <len> and <seq> are 8-byte big-endian, so key order is
// numeric order: a path's extents come out by offset, a peer's operations by
// number.
//
// A fracture key is one logged miss, written blindly (no read) on the
// application's write path. Keys of one path may overlap or touch; the
// peer's log for the path is the union of all of them. The length is part
// of the key, not its value, so that two misses at one offset are two keys:
// a later, shorter miss must not overwrite (shrink) an earlier one.
// Rewriting a path (after resync progress, or to compact it) deletes its key
// range and puts the canonical extents back, in one batch.
//
// Compatibility: a database whose "v" differs from kLayoutVersion is refused
// at Open (there is no converter: version 1 kept one encoded ExtentSet per
// "frac/<peer>\0<path>"). Adding key families is backwards compatible and
// does not bump the version; changing the meaning or encoding of an existing
// key does.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mirrorfs::meta::keys {

inline constexpr uint32_t kLayoutVersion = 2;
inline constexpr std::string_view kVersion = "v";

inline constexpr std::string_view kIdName = "id/name";
inline constexpr std::string_view kIdNodeUuid = "id/node_uuid";
inline constexpr std::string_view kIdStoreUuid = "id/store_uuid";
inline constexpr std::string_view kIdRole = "id/role";
inline constexpr std::string_view kIdListen = "id/listen";
inline constexpr std::string_view kIdGeneration = "id/generation";
// Where this store was last mounted as primary ("" if never).
inline constexpr std::string_view kIdMountpoint = "id/mountpoint";

inline constexpr std::string_view kPeerPrefix = "peer/";
inline constexpr std::string_view kFracturePrefix = "fx/";
inline constexpr std::string_view kNamespaceOpPrefix = "fns/";
inline constexpr std::string_view kPeerFlagPrefix = "pflag/";
inline constexpr std::string_view kNodeClean = "node/clean";
inline constexpr std::string_view kNodeConsistent = "node/consistent";
inline constexpr std::string_view kNodeResyncId = "node/resync_id";
inline constexpr std::string_view kIntentPrefix = "int/";
inline constexpr std::string_view kNodeIntentExtent = "node/intent_extent";

inline constexpr std::string_view kFlagNamespaceDirty = "namespace_dirty";
inline constexpr std::string_view kFlagFullSyncNeeded = "full_sync_needed";
inline constexpr std::string_view kPeerResyncId = "resync_id";

// Size of the big-endian <off> and <seq> key suffixes.
inline constexpr size_t kBe64Size = 8;

inline void AppendBe64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

// REQUIRES: p points at kBe64Size readable bytes.
inline uint64_t ReadBe64(const char* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < kBe64Size; ++i) {
    v = (v << 8) | static_cast<uint8_t>(p[i]);
  }
  return v;
}

// The smallest key greater than every key that starts with `prefix` (the
// exclusive end of a DeleteRange over the prefix). REQUIRES: `prefix`
// contains a byte other than 0xff (true for every prefix below).
inline std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<uint8_t>(end.back()) == 0xff) {
    end.pop_back();
  }
  if (!end.empty()) end.back() = static_cast<char>(end.back() + 1);
  return end;
}

inline std::string IntentKey(uint64_t ino, uint64_t region) {
  std::string k(kIntentPrefix);
  AppendBe64(&k, ino);
  AppendBe64(&k, region);
  return k;
}

inline std::string PeerKey(std::string_view name) {
  return std::string(kPeerPrefix) + std::string(name);
}

// All fracture keys of one peer start with this; "<path>\0<off><len>"
// follows.
inline std::string FracturePeerPrefix(std::string_view peer) {
  std::string k;
  k.reserve(kFracturePrefix.size() + peer.size() + 1);
  k.append(kFracturePrefix).append(peer).push_back('\0');
  return k;
}

// All fracture keys of one image of one peer start with this; <off><len>
// follow.
inline std::string FracturePathPrefix(std::string_view peer,
                                      std::string_view path) {
  std::string k;
  k.reserve(kFracturePrefix.size() + peer.size() + path.size() + 2 +
            2 * kBe64Size);
  k.append(kFracturePrefix).append(peer).push_back('\0');
  k.append(path).push_back('\0');
  return k;
}

inline std::string FractureExtentKey(std::string_view peer,
                                     std::string_view path, uint64_t offset,
                                     uint64_t length) {
  std::string k = FracturePathPrefix(peer, path);
  AppendBe64(&k, offset);
  AppendBe64(&k, length);
  return k;
}

// All namespace-operation keys of one peer start with this; <seq> follows.
inline std::string NamespaceOpPeerPrefix(std::string_view peer) {
  std::string k;
  k.reserve(kNamespaceOpPrefix.size() + peer.size() + 1 + kBe64Size);
  k.append(kNamespaceOpPrefix).append(peer).push_back('\0');
  return k;
}

inline std::string NamespaceOpKey(std::string_view peer, uint64_t seq) {
  std::string k = NamespaceOpPeerPrefix(peer);
  AppendBe64(&k, seq);
  return k;
}

// All flag keys of one peer start with this; the flag name follows.
inline std::string PeerFlagPeerPrefix(std::string_view peer) {
  return std::string(kPeerFlagPrefix) + std::string(peer) + "/";
}

inline std::string PeerFlagKey(std::string_view peer, std::string_view flag) {
  return PeerFlagPeerPrefix(peer) + std::string(flag);
}

}  // namespace mirrorfs::meta::keys
