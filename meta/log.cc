#include "meta/log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>

namespace mirrorfs::meta {
namespace {

// The sink: set once by main() before threads start (see log.h).
std::atomic<int> g_log_fd{STDERR_FILENO};
std::atomic<int> g_log_level{static_cast<int>(LogLevel::kInfo)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

}  // namespace

void LogToStderr() { g_log_fd = STDERR_FILENO; }

bool LogToFile(const std::string& path) {
  int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  int old = g_log_fd.exchange(fd);
  if (old != STDERR_FILENO) ::close(old);
  return true;
}

void SetLogLevel(LogLevel level) { g_log_level = static_cast<int>(level); }

void Log(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) < g_log_level.load(std::memory_order_relaxed)) {
    return;
  }
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char prefix[96];
  int n =
      std::snprintf(prefix, sizeof(prefix),
                    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ mirrorfs[%d] %s: ",
                    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                    tm.tm_min, tm.tm_sec, static_cast<long>(tv.tv_usec / 1000),
                    static_cast<int>(::getpid()), LevelName(level));
  std::string line(prefix, n > 0 ? static_cast<size_t>(n) : 0);
  line += message;
  line += '\n';
  ssize_t ignored = ::write(g_log_fd.load(), line.data(), line.size());
  (void)ignored;
}

}  // namespace mirrorfs::meta
