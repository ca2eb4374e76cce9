// Formatting shared by the command line and the daemon's replies.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace mirrorfs::cli {

// Bytes for people: "512 B", "8.0 KiB", "1.5 MiB", "2.0 GiB".
inline std::string HumanBytes(uint64_t n) {
  char buf[32];
  if (n >= (1ull << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1f GiB", n / 1073741824.0);
  } else if (n >= (1u << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", n / 1048576.0);
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", n / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu B",
                  static_cast<unsigned long long>(n));
  }
  return buf;
}

}  // namespace mirrorfs::cli
