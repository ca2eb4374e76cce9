// FrameData: the bytes of one write, sent to each peer as the second part
// of its frame (sync/WIRE_FORMAT.md) without being copied per peer. ZeroMQ
// keeps a reference per queued message and releases it (on its I/O thread)
// once the bytes are on the wire or the message is dropped.
//
// The bytes are held one of three ways:
// - borrowed: the caller's buffer, never copied. Each reference is a hold
//   on the caller's Completion (AddHold/ReleaseHold), so Completion::Wait()
//   returns only once ZeroMQ no longer reads the buffer.
// - owned: inside a buffer that a shared owner keeps alive, never copied.
//   Each reference holds the owner, so the buffer outlives every message
//   that references it (the owner's deleter may recycle it).
// - copied: one private copy, made by the first reference taken, shared by
//   every peer's frame and freed with the last reference.
//
// Thread-safety: a FrameData is used by one thread (the one submitting the
// write); the references it hands out may be released from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "meta/change.h"

namespace mirrorfs::sync {

class FrameData {
 public:
  // One reference: what zmq_msg_init_data takes. `release` is null for "no
  // data part".
  struct Ref {
    const char* data = nullptr;
    size_t size = 0;
    void (*release)(void* data, void* hint) = nullptr;
    void* hint = nullptr;
  };

  // `data[0, size)`. Borrowed when `borrower` is not null (it must be
  // waited for with Completion::Wait before the buffer is reused), else
  // copied at the first Take().
  FrameData(const char* data, size_t size, meta::Completion* borrower);
  // `data[0, size)` inside a buffer that `owner` keeps alive.
  FrameData(const char* data, size_t size, std::shared_ptr<const void> owner);
  ~FrameData();
  FrameData(const FrameData&) = delete;
  FrameData& operator=(const FrameData&) = delete;

  // The CRC-32C of the bytes, computed at the first call (a write no peer
  // takes is never checksummed).
  uint32_t crc();
  // Makes the copy now, if the bytes are not borrowed and not copied yet
  // (so that Take() is cheap under a caller's lock).
  void Prepare();
  // A new reference for one frame. Released by ZeroMQ once the message
  // owns it, or by Release() if it never reaches ZeroMQ.
  Ref Take();
  // Releases a reference that was never handed to ZeroMQ.
  static void Release(Ref* ref);

 private:
  struct Copy {
    std::atomic<int> refs{1};  // one for the FrameData itself
    std::string bytes;
  };
  static void ReleaseCopy(void* data, void* hint);
  static void ReleaseBorrowed(void* data, void* hint);
  static void ReleaseOwned(void* data, void* hint);

  const char* const data_;
  const size_t size_;
  std::optional<uint32_t> crc_;
  meta::Completion* const borrower_ = nullptr;
  const std::shared_ptr<const void> owner_;
  Copy* copy_ = nullptr;  // made by the first Take() when not borrowed or owned
};

}  // namespace mirrorfs::sync
