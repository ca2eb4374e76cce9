// Peer-link security: ZeroMQ CURVE keys, the authorized-keys file, and the
// ZAP handler that admits only listed peers (issue 6, secure by default).
//
// Every peer link is CURVE, mutually authenticated: the connecting side
// (a primary's PeerSession) knows the listener's public key by the peer's name
// in its authorized-keys file and proves its own key pair; the listening side
// (a ReplicaServer's ROUTER) admits, through the ZapHandler, only connecting
// keys listed in its authorized-keys file. A refused client never completes
// the handshake, so no frame it sends reaches the ROUTER.
//
// File formats (the one place they are described):
//
//   Secret key file FILE, written by `mirrorfs keygen FILE`, mode 0600:
//       # mirrorfs CURVE secret key: keep private (mode 0600)
//       public-key = <40 Z85 characters>
//       secret-key = <40 Z85 characters>
//     '#' lines and blank lines are ignored; secret-key is required,
//     public-key optional (derived from the secret key; if present it must
//     match), each at most once. The file is refused if group or others have
//     any access to it.
//
//   Public key file FILE.pub, mode 0644: the public key and a newline.
//
//   Authorized keys file, one peer per line:
//       # comment
//       NAME PUBLIC-KEY
//     NAME is [A-Za-z0-9._-]{1,64}; PUBLIC-KEY is 40 Z85 characters. A '#'
//     starts a comment only as the first non-blank character of a line (Z85
//     keys may contain '#'). Names and keys are each listed at most once.
//
// Keys are Z85 text (ZeroMQ RFC 32): 40 characters for 32 bytes. Secret key
// text never appears in a Status message, a log line or on a command line.
//
// Thread-safety: the free functions are thread-safe (no shared state). The
// structs are values. ZapHandler is thread-safe (see its comment).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "meta/status.h"

namespace mirrorfs::sync {

// The ZAP domain every mirrorfs CURVE server socket uses.
inline constexpr char kZapDomain[] = "mirrorfs";

// A CURVE key pair as Z85 text, 40 characters each.
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};

// True if `text` is 40 characters of the Z85 alphabet that decode to 32
// bytes (a CURVE key).
bool IsZ85Key(const std::string& text);

// Generates a key pair (zmq_curve_keypair) and writes it to `file` (the
// secret file, mode 0600) and `file`.pub (mode 0644), both created with
// O_EXCL and fsynced. Returns OK, or an error (EEXIST naming the file if
// either exists: keys are never overwritten; ENOTSUP if libzmq lacks CURVE;
// the errno of a failed open/write). On error no new file is left behind.
meta::Status GenerateKeyFiles(const std::string& file);

// Reads the secret key file `file`. Returns the key pair, or an error naming
// the file: EACCES if group or others have any access to it (the message names
// its mode and `chmod 600 FILE`), EINVAL if it is not a regular file or is
// malformed (naming file:line), the errno of a failed open/read. Error
// messages never contain key material.
meta::Result<CurveKeyPair> LoadKeyFile(const std::string& file);

// The peers a node trusts: name -> Z85 public key.
struct AuthorizedKeys {
  std::map<std::string, std::string> by_name;
  // The name listed with public key `z85`, or "" if the key is not listed.
  std::string NameOf(const std::string& z85) const;
};

// Reads an authorized keys file (format above). Returns the set (possibly
// empty), or an error: EINVAL naming file:line for a bad name, a bad key, a
// duplicate name or a duplicate key; EACCES if group or others may write the
// file (whoever can write it decides who may write our data; the message
// names `chmod go-w FILE`); the errno of a failed open/read.
meta::Result<AuthorizedKeys> LoadAuthorizedKeys(const std::string& file);

// True if binding ZeroMQ `endpoint` listens only on this machine:
// tcp://127.x.y.z:PORT, tcp://localhost:PORT, tcp://[::1]:PORT, and any
// ipc:// or inproc:// endpoint. False for tcp://0.0.0.0, tcp://*, any other
// address, interface names (tcp://lo:PORT resolves at bind time, so it is not
// trusted), other transports and anything malformed.
bool IsLoopbackEndpoint(const std::string& endpoint);

// What a node needs to secure its peer links.
struct CurveConfig {
  CurveKeyPair own;
  // Shared, immutable once published; replaced wholesale on reload.
  std::shared_ptr<const AuthorizedKeys> authorized;
  // The authorized keys file, for messages only.
  std::string authorized_file;
};

// Client side: makes `socket` (a primary's DEALER towards peer `peer_name`)
// a CURVE client that expects the peer's public key from `config.authorized`
// and presents `config.own`. Returns OK, or EINVAL if `peer_name` is not in
// the authorized keys ("peer b is not in the authorized keys file F; add a
// line 'b <its public key>'"), or the error of a failed setsockopt.
// REQUIRES: called before socket->connect(); the socket's owning thread.
meta::Status ApplyCurveClient(zmq::socket_t* socket, const CurveConfig& config,
                              const std::string& peer_name);

// Server side: makes `socket` (a secondary's ROUTER) a CURVE server with
// `config.own`'s secret key, ZAP domain kZapDomain, and ZAP enforcement (a
// missing ZAP handler refuses every client instead of admitting it).
// Returns OK or the error of a failed setsockopt.
// REQUIRES: called before socket->bind(); a ZapHandler is Started on the
// socket's context before the first client can connect.
meta::Status ApplyCurveServer(zmq::socket_t* socket, const CurveConfig& config);

// The peer name a ZapHandler gave the connection a received message came in
// on (the ZAP "User-Id"), or "" if the message did not pass a ZapHandler
// (e.g. a NULL-mechanism socket). A CURVE server can drop messages with ""
// as a second line of defence.
std::string AuthenticatedPeerName(const zmq::message_t& message);

// The ZeroMQ Authentication Protocol handler (RFC 27) for one context: a
// thread with a REP socket bound to inproc://zeromq.zap.01 that answers 200
// (user id = the peer's name) for CURVE clients whose public key is in the
// current authorized set, and 400 for everything else. Each refusal is
// counted; it is logged (warning, with the client's public key and IP
// address, never a secret) at most once per (key, address) per minute:
//   refused peer link from 127.0.0.1: unknown CURVE key <z85>; add it to F
//   to admit it
//
// Thread-safety: all methods may be called from any thread. Reload() swaps
// the set atomically: handshakes answered after it returns use the new set;
// established connections are not dropped.
// Lifetime: `*context` must outlive this object; Stop() (or the destructor)
// must run before the context is closed.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t* context,
             std::shared_ptr<const AuthorizedKeys> authorized,
             std::string authorized_file);
  ~ZapHandler();  // Stop()s.
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Binds inproc://zeromq.zap.01 and starts the thread. When it returns OK
  // the handler answers requests. Returns EADDRINUSE if the context already
  // has a ZAP handler, EINVAL if already started.
  meta::Status Start();
  // Stops and joins the thread (idempotent). CURVE server sockets that
  // still exist then refuse new clients (ZAP enforcement).
  void Stop();
  // Replaces the authorized set (SIGHUP, `peer add`). REQUIRES: non-null.
  void Reload(std::shared_ptr<const AuthorizedKeys> authorized);
  // Refusals answered since Start (every one, logged or not).
  uint64_t refused() const { return refused_.load(); }
  // Admissions answered since Start.
  uint64_t admitted() const { return admitted_.load(); }

 private:
  void Run(zmq::socket_t socket);
  // Answers one request (`frames` already received); never throws.
  void Answer(zmq::socket_t& socket, std::vector<zmq::message_t>& frames);
  std::shared_ptr<const AuthorizedKeys> Current() const;
  // True if this (key, address) was not logged in the last minute; records.
  bool ShouldLog(const std::string& key, const std::string& address);

  zmq::context_t* const context_;
  const std::string authorized_file_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> admitted_{0};
  std::thread thread_;       // Start/Stop only; guarded by lifecycle_mu_.
  std::mutex lifecycle_mu_;  // Guards thread_. Lock order: before mu_.
  mutable std::mutex mu_;    // Guards authorized_. Leaf lock.
  std::shared_ptr<const AuthorizedKeys> authorized_;
  // Handler thread only: when each (key, address) was last logged.
  std::map<std::pair<std::string, std::string>,
           std::chrono::steady_clock::time_point>
      last_logged_;
};

}  // namespace mirrorfs::sync
