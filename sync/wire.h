// Wire codec: turns replication messages into frames and back. One frame is
// one ZeroMQ message: a fixed 48-byte little-endian header (magic, version,
// type, store UUID, session epoch, sequence number, payload length, CRC-32C)
// followed by the payload of its type; a write change carries its data in a
// second message part (so that the bytes are never copied into a frame, and
// one buffer serves every peer). The byte layout, the versioning rules and
// what a receiver does with a bad frame are described once, in
// sync/WIRE_FORMAT.md; this header is the C++ view of it.
//
// Encoders never fail: they write exactly what they are given (strings longer
// than the format allows are cut at 65535 bytes, which the receiver then
// refuses where a limit applies). Decoding validates every byte of untrusted
// input, never reads outside it, never throws, and returns an error Status
// (EBADMSG for a checksum mismatch, EPROTO for anything else) whose message
// says exactly what is wrong, ready for one log line.
//
// Thread-safety: free functions over values; safe from any thread. Each call
// touches only its arguments.
#pragma once

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "meta/change.h"
#include "meta/source.h"
#include "meta/status.h"
#include "meta/uuid.h"

namespace mirrorfs::sync {

// "MFSW" as little-endian bytes 'M','F','S','W'.
inline constexpr uint32_t kWireMagic = 0x5753464du;
// The only version this build speaks; see "Versioning" in WIRE_FORMAT.md.
inline constexpr uint16_t kWireVersion = 7;
inline constexpr size_t kFrameHeaderSize = 48;

// Limits enforced by the decoder (and to be respected by senders).
inline constexpr size_t kMaxPathBytes = 4096;          // path or symlink target
inline constexpr size_t kMaxNameComponentBytes = 255;  // one path component
inline constexpr size_t kMaxNodeNameBytes = 255;
inline constexpr size_t kMaxEndpointBytes = 1024;
inline constexpr size_t kMaxGenerationHistory = 32;
// Largest kWrite data in one frame; senders split larger writes.
inline constexpr size_t kMaxWriteBytes = 32u << 20;
// Largest payload of any frame; transports may use kFrameHeaderSize +
// kMaxPayloadBytes as their message size limit (ZMQ_MAXMSGSIZE).
inline constexpr size_t kMaxPayloadBytes = kMaxWriteBytes + 64 * 1024;

// Frame type codes are fixed on the wire: append only.
enum class FrameType : uint16_t {
  kHello = 1,        // primary -> secondary, opens a session
  kHelloReply = 2,   // secondary -> primary, accepts or refuses it
  kChange = 3,       // primary -> secondary, one meta::Change
  kAck = 4,          // secondary -> primary, a change was applied (or failed)
  kPing = 5,         // heartbeat request, either direction
  kPong = 6,         // heartbeat answer, echoes the nonce
  kError = 7,        // the receiver refused a frame (e.g. wrong store)
  kManifest = 8,     // primary -> secondary, the namespace to reconcile to
  kResyncMark = 9,   // primary -> secondary, a resync begins or ends
  kBlockSums = 10,   // primary -> secondary, checksums of blocks to compare
  kBlockDiff = 11,   // secondary -> primary, which of them differ
  kGoodbye = 12,     // primary -> secondary, it ends the session on purpose
  kList = 13,        // primary -> secondary, asks for part of its namespace
  kListing = 14,     // secondary -> primary, that part
  kGeneration = 15,  // primary -> secondary, it started a new generation
};

// Returns "hello", "hello-reply", "change", ... or "unknown" for logs.
std::string_view FrameTypeName(FrameType type);

// The role a node announces in its handshake.
enum class Role : uint8_t {
  kPrimary = 1,
  kSecondary = 2,
};

// Flag bits of Hello::flags and HelloReply::flags.
// The sender's copy is consistent (not mid-resync; DESIGN.md guarantee 7).
inline constexpr uint32_t kHelloConsistent = 1u << 0;
// In a reply: the replier's store just adopted this store's identity, so its
// contents are of unknown age and need a full sync.
inline constexpr uint32_t kHelloFresh = 1u << 1;
// In a reply: refused because both sides wrote as primary since their last
// common generation (split brain); the reason names the generations.
inline constexpr uint32_t kHelloSplitBrain = 1u << 2;
// In a reply: refused because the asking primary's generation is an
// ancestor of the replier's (a stale primary, fenced off).
inline constexpr uint32_t kHelloStale = 1u << 3;
// In a hello: the operator chose this primary's data after a split brain
// (`resolve --keep-local`); a split-brain peer saves its own changes to a
// recovery folder and takes a full sync.
inline constexpr uint32_t kHelloDiscardYours = 1u << 4;
// In a reply: the replier, a former primary, may hold namespace changes the
// asker lacks (its own logs were not empty): reconcile the namespace.
inline constexpr uint32_t kHelloNamespaceDiverged = 1u << 5;
inline constexpr uint32_t kHelloKnownFlags =
    kHelloConsistent | kHelloFresh | kHelloSplitBrain | kHelloStale |
    kHelloDiscardYours | kHelloNamespaceDiverged;

// Flag bits of a kRename change (the values of Linux renameat2()).
inline constexpr uint32_t kRenameNoReplace = 1u << 0;
inline constexpr uint32_t kRenameExchange = 1u << 1;

struct FrameHeader {
  // Set by the decoder; encoders always write kWireVersion.
  uint16_t version = kWireVersion;
  // Set by the decoder; each encoder writes its own type.
  FrameType type = FrameType::kPing;
  // The sender's store UUID. Never zero in a kHello.
  meta::Uuid store_uuid;
  // Session epoch: a primary picks a fresh random one per connection;
  // frames of any other session are stale and dropped.
  uint64_t session = 0;
  // Per session and direction: 0 for the hello (reply), then +1 per frame;
  // Ack::seq names the kChange seq it answers.
  uint64_t seq = 0;
};

// Opens a session. Strings hold no NUL bytes; node_uuid is never zero.
struct Hello {
  std::string node_name;  // <= kMaxNodeNameBytes, not empty
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // the primary's; equal to the header's
  Role role = Role::kPrimary;
  // The sender's current generation and the ones before it, newest first
  // (at most kMaxGenerationHistory); compared to detect split brain.
  meta::Uuid generation;
  std::vector<meta::Uuid> generation_history;
  std::string endpoint;  // where the sender listens; <= kMaxEndpointBytes
  uint32_t flags = 0;    // kHello* bits; unknown bits are refused
};

struct DivergentExtent {
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
};
inline constexpr size_t kMaxDivergentExtents = 65536;

struct HelloReply {
  bool accepted = false;
  Role role = Role::kSecondary;
  uint32_t flags = 0;  // kHello* bits; unknown bits are refused
  std::string node_name;
  meta::Uuid node_uuid;
  meta::Uuid store_uuid;  // after adoption, if the replier adopted one
  meta::Uuid generation;
  std::vector<meta::Uuid> generation_history;
  std::string reason;  // why it was refused; empty when accepted
  // Accepted from a newer primary: the ranges this node wrote (as a former
  // primary) that may not have reached it — the primary re-sends them so
  // that they are undone here. At most kMaxDivergentExtents; more is
  // reported as kHelloFresh instead (compare every block).
  std::vector<DivergentExtent> divergent;
  // The replier's copy is inconsistent because of the resync whose begin
  // mark carried this id (0: consistent, or inconsistent for another
  // cause). A primary that issued the id knows what that resync left.
  uint64_t resync_id = 0;
};

struct Ack {
  uint64_t seq = 0;  // the kChange frame's seq
  int32_t err = 0;   // 0: applied; else the errno of the failed apply (> 0)
  std::string message;
};

struct Ping {
  uint64_t nonce = 0;
};

struct Pong {
  uint64_t nonce = 0;  // the nonce of the Ping it answers
};

struct ErrorFrame {
  int32_t err = EPROTO;  // errno-style reason, > 0
  std::string message;
};

// A primary's goodbye with this reason: it fractured the receiver on
// purpose (`mirrorfs fracture`); its changes are logged for it from now on.
inline constexpr char kGoodbyeFractured[] = "fractured on purpose";

// Either side ends the session on purpose (a clean stop, a demote): the
// other knows at once that it is gone, instead of after its timeout.
struct Goodbye {
  std::string reason;  // for the receiver's log
  // From a secondary: every change of the session up to this seq was
  // applied and is on its disk (it synced the store before saying
  // goodbye), so the primary need not log those for it. 0: no such
  // promise (always from a primary).
  uint64_t durable_through = 0;
  // The reason as logged: "no reason given" when empty.
  std::string Said() const {
    return reason.empty() ? std::string("no reason given") : reason;
  }
};

// Within a session: the primary started a new generation (it lost another
// peer, or became primary, and then wrote). The secondary stores it before
// it applies any later frame of the session, so that what it holds of the
// new history is never filed under the old one.
struct GenerationUpdate {
  meta::Uuid current;               // not zero
  std::vector<meta::Uuid> history;  // newest first, <= kMaxGenerationHistory
};

// Part of the primary's namespace; the secondary reconciles to the union
// of the parts once it has the last one (a large store spans several).
struct Manifest {
  bool last = true;
  std::vector<meta::NamespaceEntry> entries;
};
// Upper bounds of one manifest part: its entries and, from its second
// entry on, the bytes of their paths and targets (senders split larger
// lists; a part always fits in a frame).
inline constexpr size_t kMaxManifestEntries = 4096;
inline constexpr size_t kMaxManifestBytes = 16u << 20;

// A resync begins (the copy is inconsistent until it ends) or ends.
struct ResyncMark {
  bool begin = true;
  uint64_t total_bytes = 0;  // what the resync expects to send
  // Begin: names this primary's resyncs to this peer (non-zero); recorded
  // with the inconsistency and reported back in hello replies.
  uint64_t resync_id = 0;
};

// Checksums of consecutive blocks of one file, for a full sync that sends
// only the blocks that differ (like DRBD's csums-alg).
inline constexpr size_t kBlockSumBytes = 16;  // BLAKE2b-128
inline constexpr size_t kMaxBlockSums = 65536;
struct BlockSums {
  std::string path;
  uint64_t offset = 0;
  uint32_t block_size = 0;  // > 0; the last block may be shorter
  uint64_t length = 0;      // bytes covered, from offset
  std::vector<std::array<uint8_t, kBlockSumBytes>> sums;  // one per block
};
// The answer to a kBlockSums frame: the indexes of blocks that differ, and
// the size of the answering node's file then.
inline constexpr uint64_t kNoFile = UINT64_MAX;
struct BlockDiff {
  uint64_t seq = 0;  // the kBlockSums frame's seq
  std::vector<uint32_t> differing;
  uint64_t size = kNoFile;  // kNoFile: no regular file at the path
};

// Asks a peer for its namespace (verify): the entries whose paths sort
// after `after` (bytewise; "" = from the first), in that order.
struct ListRequest {
  std::string after;  // "" or a valid path
};
// One part of a peer's namespace, answering a kList frame: each entry's
// path, type, permission bits, owner, a file's size and a symlink's target.
// A part holds at most kMaxListingEntries entries and, from its second
// entry on, at most kMaxListingBytes of entry paths and targets (senders
// split larger lists; a part always fits in a frame).
inline constexpr size_t kMaxListingEntries = 4096;
inline constexpr size_t kMaxListingBytes = 16u << 20;
struct Listing {
  uint64_t seq = 0;  // the kList frame's seq
  bool last = true;  // nothing sorts after the last entry
  std::vector<meta::NamespaceEntry> entries;  // sorted by path, bytewise
};

// Encoders replace *out with one complete frame (out is cleared first; its
// capacity is kept, so reusing one string per thread avoids allocation on
// the hot path). header.version and header.type are ignored.
// REQUIRES: out != nullptr.
//
// EncodeChange writes the frame's first part. For a kWrite the data is NOT
// copied: the sender sends change.data[0, length) as the message's second
// part, and the frame carries `data_crc`, which must be its CRC-32C
// (WriteDataCrc; computed once for every peer's frame). The overload without
// it computes it.
// REQUIRES: ValidateChange(change).ok() — otherwise the frame is written
// anyway and the receiver refuses it.
void EncodeChange(const FrameHeader& header, const meta::Change& change,
                  std::string* out);
void EncodeChange(const FrameHeader& header, const meta::Change& change,
                  uint32_t data_crc, std::string* out);
// The CRC-32C of a kWrite's data (change.data[0, length); 0 bytes if null).
uint32_t WriteDataCrc(const meta::Change& change);
void EncodeHello(const FrameHeader& header, const Hello& hello,
                 std::string* out);
void EncodeHelloReply(const FrameHeader& header, const HelloReply& reply,
                      std::string* out);
void EncodeAck(const FrameHeader& header, const Ack& ack, std::string* out);
void EncodePing(const FrameHeader& header, const Ping& ping, std::string* out);
void EncodePong(const FrameHeader& header, const Pong& pong, std::string* out);
void EncodeGoodbye(const FrameHeader& header, const Goodbye& goodbye,
                   std::string* out);
void EncodeGeneration(const FrameHeader& header, const GenerationUpdate& update,
                      std::string* out);
void EncodeError(const FrameHeader& header, const ErrorFrame& error,
                 std::string* out);
void EncodeManifest(const FrameHeader& header, const Manifest& manifest,
                    std::string* out);
void EncodeResyncMark(const FrameHeader& header, const ResyncMark& mark,
                      std::string* out);
void EncodeBlockSums(const FrameHeader& header, const BlockSums& sums,
                     std::string* out);
void EncodeBlockDiff(const FrameHeader& header, const BlockDiff& diff,
                     std::string* out);
void EncodeList(const FrameHeader& header, const ListRequest& list,
                std::string* out);
void EncodeListing(const FrameHeader& header, const Listing& listing,
                   std::string* out);

// Returns the exact size of the first part EncodeChange writes for `change`
// (header, fixed fields, strings, and for kWrite the data checksum; the
// data is the second part).
size_t ChangeFrameSize(const meta::Change& change);

// Returns OK if `change` obeys every rule the decoder enforces (paths,
// per-kind flags, ranges, sizes); else EPROTO naming the first broken rule.
// Senders may call it before queueing; DecodeFrame applies it to each
// received kChange.
meta::Status ValidateChange(const meta::Change& change);

// Returns OK if `path` is a valid store-relative path: not empty, not
// absolute, no empty, "." or ".." component, no NUL, components at most
// kMaxNameComponentBytes, at most kMaxPathBytes in all, and not ".mirrorfs"
// or anything under it. Else EPROTO saying which rule `path` breaks.
meta::Status ValidateStorePath(std::string_view path);

struct DecodedFrame {
  FrameHeader header;
  // kChange decodes to meta::Change. For kWrite, Change::data points INTO
  // the data part given to DecodeFrame (zero copy): that buffer must outlive
  // the use of the Change.
  std::variant<Hello, HelloReply, meta::Change, Ack, Ping, Pong, ErrorFrame,
               Manifest, ResyncMark, BlockSums, BlockDiff, Goodbye, ListRequest,
               Listing, GenerationUpdate>
      body;
};

// Decodes and validates one whole frame (one ZeroMQ message): `bytes`, its
// first part, and `data`, its second part if it has one (only a kWrite
// change has, always). On success returns the header and the typed body.
// On failure returns EBADMSG (a frame or data checksum mismatch) or EPROTO
// with a precise message; the input may be anything, including empty or
// hostile.
meta::Result<DecodedFrame> DecodeFrame(
    std::string_view bytes,
    std::optional<std::string_view> data = std::nullopt);

// Decodes only the header and checks size, magic, payload length and
// checksum, but neither the version nor the type nor the payload. The header
// layout is the same in every version, so a receiver can still learn the
// session and seq of a frame it cannot decode (e.g. a newer version) and
// answer with a kError. Errors as DecodeFrame.
meta::Result<FrameHeader> DecodeFrameHeader(std::string_view bytes);

}  // namespace mirrorfs::sync
