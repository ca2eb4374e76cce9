// Unit tests of sync/frame_data.h: how a write's bytes are held for the
// frames of every peer (borrowed with holds, owned by a shared buffer, or
// one shared copy).
#include "sync/frame_data.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>

#include "sync/crc32c.h"

namespace mirrorfs::sync {
namespace {

TEST(FrameDataTest, BorrowedBytesAreNotCopiedAndHoldTheCompletion) {
  std::string bytes(4096, 'b');
  meta::Completion completion(0);  // no peer pending: only the holds count
  FrameData data(bytes.data(), bytes.size(), &completion);
  EXPECT_EQ(data.crc(), Crc32c(bytes));
  FrameData::Ref a = data.Take();
  FrameData::Ref b = data.Take();
  EXPECT_EQ(a.data, bytes.data());  // the caller's own buffer
  EXPECT_EQ(b.data, bytes.data());
  EXPECT_EQ(a.size, bytes.size());
  EXPECT_FALSE(completion.IsDone());  // ZeroMQ still reads the buffer
  FrameData::Release(&a);
  EXPECT_EQ(a.release, nullptr);  // released once, never twice
  FrameData::Release(&a);
  EXPECT_FALSE(completion.IsDone());
  // ZeroMQ releases through the function and hint it was given.
  b.release(const_cast<char*>(b.data), b.hint);
  EXPECT_TRUE(completion.IsDone());
  completion.Wait();  // returns: nothing holds the buffer any more
}

TEST(FrameDataTest, OwnedBytesAreNotCopiedAndKeepTheirBufferAlive) {
  bool recycled = false;
  std::shared_ptr<std::string> buffer(new std::string(8192, 'o'),
                                      [&recycled](std::string* b) {
                                        recycled = true;
                                        delete b;
                                      });
  const char* bytes = buffer->data() + 4096;  // a piece of the buffer
  FrameData::Ref a, b;
  {
    FrameData data(bytes, 4096, buffer);
    EXPECT_EQ(data.crc(), Crc32c(std::string(4096, 'o')));
    a = data.Take();
    b = data.Take();
  }
  buffer.reset();  // the caller is done with it; the references are not
  EXPECT_FALSE(recycled);
  EXPECT_EQ(a.data, bytes);  // the buffer itself, not a copy
  EXPECT_EQ(b.data, bytes);
  EXPECT_EQ(a.size, 4096u);
  FrameData::Release(&a);
  EXPECT_FALSE(recycled);
  EXPECT_EQ(std::string(b.data, b.size), std::string(4096, 'o'));
  // ZeroMQ releases through the function and hint it was given.
  b.release(const_cast<char*>(b.data), b.hint);
  EXPECT_TRUE(recycled);  // the last reference gave the buffer back
}

TEST(FrameDataTest, CopiedBytesAreCopiedOnceAndOutliveTheCaller) {
  std::string bytes(100000, 'c');
  FrameData::Ref a, b;
  {
    FrameData data(bytes.data(), bytes.size(), nullptr);
    a = data.Take();
    b = data.Take();
  }  // the FrameData is gone; its references keep the copy
  EXPECT_NE(a.data, bytes.data());
  EXPECT_EQ(a.data, b.data);                     // one copy for every frame
  std::memset(bytes.data(), 'x', bytes.size());  // the caller reuses its buffer
  EXPECT_EQ(std::string(a.data, a.size), std::string(100000, 'c'));
  FrameData::Release(&a);
  EXPECT_EQ(std::string(b.data, b.size), std::string(100000, 'c'));
  FrameData::Release(&b);  // the last one frees the copy (ASan checks)
}

TEST(FrameDataTest, NothingIsCopiedOrChecksummedUntilAsked) {
  std::string bytes(10, 'n');
  FrameData data(bytes.data(), bytes.size(), nullptr);
  data.Prepare();
  data.Prepare();  // once
  FrameData::Ref r = data.Take();
  EXPECT_NE(r.data, bytes.data());
  FrameData::Release(&r);
  FrameData empty(nullptr, 0, nullptr);
  EXPECT_EQ(empty.crc(), Crc32c("", 0));
  FrameData::Ref e = empty.Take();
  EXPECT_EQ(e.size, 0u);
  FrameData::Release(&e);
}

}  // namespace
}  // namespace mirrorfs::sync
