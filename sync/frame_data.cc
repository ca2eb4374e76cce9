#include "sync/frame_data.h"

#include <utility>

#include "sync/crc32c.h"

namespace mirrorfs::sync {

FrameData::FrameData(const char* data, size_t size, meta::Completion* borrower)
    : data_(data), size_(size), borrower_(borrower) {}

FrameData::FrameData(const char* data, size_t size,
                     std::shared_ptr<const void> owner)
    : data_(data), size_(size), owner_(std::move(owner)) {}

uint32_t FrameData::crc() {
  if (!crc_) crc_ = Crc32c(data_, size_);
  return *crc_;
}

FrameData::~FrameData() {
  if (copy_ != nullptr) ReleaseCopy(nullptr, copy_);
}

void FrameData::Prepare() {
  if (borrower_ == nullptr && owner_ == nullptr && copy_ == nullptr) {
    copy_ = new Copy;
    copy_->bytes.assign(data_, size_);  // the one copy, for every peer
  }
}

FrameData::Ref FrameData::Take() {
  if (borrower_ != nullptr) {
    borrower_->AddHold();
    return Ref{data_, size_, &FrameData::ReleaseBorrowed, borrower_};
  }
  if (owner_ != nullptr) {
    return Ref{data_, size_, &FrameData::ReleaseOwned,
               new std::shared_ptr<const void>(owner_)};
  }
  Prepare();
  copy_->refs.fetch_add(1, std::memory_order_relaxed);
  return Ref{copy_->bytes.data(), size_, &FrameData::ReleaseCopy, copy_};
}

void FrameData::Release(Ref* ref) {
  if (ref->release != nullptr) {
    ref->release(const_cast<char*>(ref->data), ref->hint);
    ref->release = nullptr;
  }
}

void FrameData::ReleaseCopy(void*, void* hint) {
  auto* copy = static_cast<Copy*>(hint);
  if (copy->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete copy;
}

void FrameData::ReleaseBorrowed(void*, void* hint) {
  static_cast<meta::Completion*>(hint)->ReleaseHold();
}

void FrameData::ReleaseOwned(void*, void* hint) {
  delete static_cast<std::shared_ptr<const void>*>(hint);
}

}  // namespace mirrorfs::sync
