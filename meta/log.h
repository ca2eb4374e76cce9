// Log: one line per event, to stderr (foreground) or to the store's log file
// (STORE/.mirrorfs/log when daemonized).
//
// The sink is the one process-wide setting of mirrorfs: main() chooses it
// once with LogTo*() before any thread starts; afterwards it is only read.
// Writing is thread-safe: each line is written with a single write(2) on an
// O_APPEND descriptor, so lines from different threads never interleave.
#pragma once

#include <string>

namespace mirrorfs::meta {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Sends log lines to standard error (the default).
void LogToStderr();
// Sends log lines to `path` (appending, created 0600); returns false (and
// keeps the previous sink) if it cannot be opened.
bool LogToFile(const std::string& path);
// Lines below `level` are dropped (default kInfo; MIRRORFS_DEBUG=1 → kDebug).
void SetLogLevel(LogLevel level);

void Log(LogLevel level, const std::string& message);
inline void LogDebug(const std::string& m) { Log(LogLevel::kDebug, m); }
inline void LogInfo(const std::string& m) { Log(LogLevel::kInfo, m); }
inline void LogWarning(const std::string& m) { Log(LogLevel::kWarning, m); }
inline void LogError(const std::string& m) { Log(LogLevel::kError, m); }

}  // namespace mirrorfs::meta
