// Validated options of the commands that start a node. CLI11 parses the
// command line into these (cli/app.cc); the node (cli/node.h) runs on them.
// Thread-safety: plain values.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mirrorfs::cli {

struct PeerSpec {
  std::string name;
  std::string endpoint;
};

struct NodeOptions {
  bool primary = true;     // mount: primary; serve: secondary
  std::string store;       // absolute path of the store directory
  std::string mountpoint;  // absolute; primary only
  std::string name;        // "" = keep the stored name, or the host name
  std::string listen;      // "" = keep the stored endpoint (primary only)
  std::vector<PeerSpec> peers;
  bool async = false;
  bool foreground = false;
  std::vector<std::string> fuse_options;  // the -o values, split at ','
  std::chrono::milliseconds peer_timeout{2000};
  uint64_t resync_rate = 0;             // bytes per second, 0 = unlimited
  uint64_t intent_extent = 4u << 20;    // write-intent region size
  uint64_t intent_budget = 1ull << 30;  // most bytes a crash re-sends
  bool intent_journal = true;           // off only through a test-only switch
  // Test-only (secondary): hold applied writes in memory until a flush, to
  // lose them honestly when killed (the peer-crash test).
  bool volatile_writes = false;
  // Every data write goes through the store's page cache; by default large
  // writes of whole pages go uncached (meta::StoreWriter).
  bool cached_writes = false;
  // Microseconds a thread waiting on the peer link (a writer for its
  // answer, a secondary for the next frame) spins before it sleeps, while
  // answers come that fast (sync/busy_poll.h); zero never spins.
  uint32_t busy_poll_us = 200;
  // Peer link security (ZeroMQ CURVE): both files, or neither.
  std::string key_file;
  std::string authorized_file;
  bool insecure = false;      // allow a keyless listen beyond loopback
  std::string control_group;  // group (besides root) allowed on the socket
};

}  // namespace mirrorfs::cli
