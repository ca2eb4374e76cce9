// The key layout of the state database (STORE/.mirrorfs/db), described once.
// Only meta_store.cc reads or writes these keys; everything else goes
// through MetaStore's domain methods. Thread-safety: constants and pure
// functions.
//
// Layout version 1 (key "v"). All keys live in the default column family.
//
//   key                              value
//   -------------------------------  -------------------------------------
//   "v"                              layout version, decimal text ("1")
//   "id/name"                        node name, text
//   "id/node_uuid"                   this node's Uuid, 36-char text form
//   "id/store_uuid"                  the store's Uuid, text (absent = zero)
//   "id/role"                        "primary" | "secondary" | "" (unset)
//   "id/listen"                      listen endpoint, e.g. tcp://0.0.0.0:7790
//   "id/generation"                  data generation, opaque text
//   "peer/<name>"                    16 raw bytes peer Uuid, then endpoint
//   "frac/<peer>\0<path>"            ExtentSet::Encode() of what <peer>
//                                    missed in image <path>
//   "pflag/<peer>/<flag>"            "1" (absent = flag off); <flag> is
//                                    "namespace_dirty" | "full_sync_needed"
//   "node/clean"                     "1" clean shutdown, "0" running or
//                                    crashed (absent = clean: a fresh DB)
//
// <name>/<peer> match [A-Za-z0-9._-]{1,64}, so neither '/' nor '\0' can
// occur in them and every per-peer prefix below is unambiguous. <path> is
// relative to the store root, non-empty and without '\0'.
//
// Compatibility: a database whose "v" is newer than kLayoutVersion is refused
// at Open. Adding key families is backwards compatible and does not bump the
// version; changing the meaning or encoding of an existing key does.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mirrorfs::meta::keys {

inline constexpr uint32_t kLayoutVersion = 1;
inline constexpr std::string_view kVersion = "v";

inline constexpr std::string_view kIdName = "id/name";
inline constexpr std::string_view kIdNodeUuid = "id/node_uuid";
inline constexpr std::string_view kIdStoreUuid = "id/store_uuid";
inline constexpr std::string_view kIdRole = "id/role";
inline constexpr std::string_view kIdListen = "id/listen";
inline constexpr std::string_view kIdGeneration = "id/generation";

inline constexpr std::string_view kPeerPrefix = "peer/";
inline constexpr std::string_view kFracturePrefix = "frac/";
inline constexpr std::string_view kPeerFlagPrefix = "pflag/";
inline constexpr std::string_view kNodeClean = "node/clean";

inline constexpr std::string_view kFlagNamespaceDirty = "namespace_dirty";
inline constexpr std::string_view kFlagFullSyncNeeded = "full_sync_needed";

inline std::string PeerKey(std::string_view name) {
  return std::string(kPeerPrefix) + std::string(name);
}

// All fracture keys of one peer start with this; the path follows.
inline std::string FracturePeerPrefix(std::string_view peer) {
  std::string k = std::string(kFracturePrefix) + std::string(peer);
  k.push_back('\0');
  return k;
}

inline std::string FractureKey(std::string_view peer, std::string_view path) {
  return FracturePeerPrefix(peer) + std::string(path);
}

// All flag keys of one peer start with this; the flag name follows.
inline std::string PeerFlagPeerPrefix(std::string_view peer) {
  return std::string(kPeerFlagPrefix) + std::string(peer) + "/";
}

inline std::string PeerFlagKey(std::string_view peer, std::string_view flag) {
  return PeerFlagPeerPrefix(peer) + std::string(flag);
}

}  // namespace mirrorfs::meta::keys
