// gtest main for meta_unit_tests. The binary doubles as a helper process
// for tests that need a second process (see the environment variables):
//
//   MFS_META_TEST_TRY_OPEN=DIR      "another mirrorfs process": tries
//                                   MetaStore::Open(DIR), prints
//                                   "<errno>\n<message>" and exits.
//   MFS_META_TEST_CHILD_WRITE=DIR   a daemon that dies: opens DIR (peer "b"
//   MFS_META_TEST_CHILD_MODE=M      must exist), logs what
//                                   UnsyncedLogSurvivesProcessDeath expects
//                                   with sync = false, prints "ready\n", then
//                                   _exit(0)s without closing the database
//                                   (M = "exit") or waits for SIGKILL
//                                   (M = "kill"). Exits 1 on any error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "meta/change.h"
#include "meta/meta_store.h"

namespace {

namespace meta = mirrorfs::meta;

int ChildWrite(const char* dir, const char* mode) {
  auto opened = meta::MetaStore::Open(dir);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().message().c_str());
    return 1;
  }
  // Leaked on purpose: no destructor may run (it would sync and close).
  meta::MetaStore* store = std::move(opened).value().release();
  bool ok = true;
  for (uint64_t i = 0; i < 5000; ++i) {  // kChildExtents
    ok &= store->AddFractureExtent("b", "img", i * 8192, 4096, false).ok();
  }
  meta::ExtentSet batch;
  batch.Add(0, 10);
  batch.Add(20, 10);
  ok &= store->AddFractureExtents("b", {{"batch", batch}}, false).ok();
  for (uint64_t seq = 1; seq <= 300; ++seq) {  // kChildOps
    meta::Change op;
    op.kind = meta::ChangeKind::kCreate;
    op.path = std::string("f").append(std::to_string(seq));
    op.mode = 0644;
    ok &= store->AppendNamespaceOp("b", seq, op, false).ok();
  }
  if (!ok) return 1;
  std::fputs("ready\n", stdout);
  std::fflush(stdout);
  if (std::strcmp(mode, "exit") == 0) ::_exit(0);
  for (;;) ::pause();
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* dir = std::getenv("MFS_META_TEST_TRY_OPEN")) {
    auto store = mirrorfs::meta::MetaStore::Open(dir);
    mirrorfs::meta::Status s = store.status();
    std::printf("%d\n%s", s.err(), s.message().c_str());
    return 0;
  }
  if (const char* dir = std::getenv("MFS_META_TEST_CHILD_WRITE")) {
    const char* mode = std::getenv("MFS_META_TEST_CHILD_MODE");
    return ChildWrite(dir, mode ? mode : "exit");
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
