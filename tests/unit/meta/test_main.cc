// gtest main for meta_unit_tests. With MFS_META_TEST_TRY_OPEN=DIR in the
// environment the binary instead acts as "another mirrorfs process": it
// tries MetaStore::Open(DIR), prints "<errno>\n<message>" and exits, so the
// tests can check what a second process sees.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "meta/meta_store.h"

int main(int argc, char** argv) {
  if (const char* dir = std::getenv("MFS_META_TEST_TRY_OPEN")) {
    auto store = mirrorfs::meta::MetaStore::Open(dir);
    mirrorfs::meta::Status s = store.status();
    std::printf("%d\n%s", s.err(), s.message().c_str());
    return 0;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
