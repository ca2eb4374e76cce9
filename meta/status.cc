#include "meta/status.h"

#include <cstring>

namespace mirrorfs::meta {

Status Status::FromErrno(const std::string& what) {
  int err = errno;
  return Status::Error(err, what + ": " + std::strerror(err));
}

}  // namespace mirrorfs::meta
