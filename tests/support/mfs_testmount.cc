// mfs_testmount STORE MOUNTPOINT [-o OPTS]...
//
// Test-only: mounts STORE at MOUNTPOINT with no peers (mirror = nullptr), in
// the foreground. Prints "ready" on stdout once mounted, serves until
// unmounted (fusermount3 -u) or SIGTERM/SIGINT, then exits 0.
// Exit status: 1 if the mount failed (message on stderr), 2 on bad usage.
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include <cstdio>
#include <string>
#include <thread>

#include "fs/fuse/fuse_adapter.h"
#include "fs/volume.h"

namespace {

int Usage() {
  std::fprintf(stderr, "usage: mfs_testmount STORE MOUNTPOINT [-o OPTS]...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using mirrorfs::fs::FuseMount;
  using mirrorfs::fs::MountOptions;
  using mirrorfs::fs::Volume;
  using mirrorfs::fs::VolumeOptions;
  if (argc < 3) return Usage();
  MountOptions mount_options;
  for (int i = 3; i < argc; i++) {
    if (std::string(argv[i]) == "-o" && i + 1 < argc) {
      mount_options.fuse_options.push_back(argv[++i]);
    } else {
      return Usage();
    }
  }
  char* store = realpath(argv[1], nullptr);
  if (store == nullptr) {
    std::perror(argv[1]);
    return 1;
  }
  VolumeOptions volume_options{store};
  free(store);
  auto volume = Volume::Open(volume_options, /*mirror=*/nullptr);
  if (!volume.ok()) {
    std::fprintf(stderr, "mfs_testmount: %s\n",
                 volume.status().ToString().c_str());
    return 1;
  }

  // Signals are taken by one thread (sigwait) that stops the mount; every
  // other thread, including libfuse's workers, inherits the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  mount_options.mountpoint = argv[2];
  auto mount = FuseMount::Mount(volume->get(), mount_options);
  if (!mount.ok()) {
    std::fprintf(stderr, "mfs_testmount: %s\n",
                 mount.status().ToString().c_str());
    return 1;
  }
  FuseMount* m = mount->get();
  std::thread signals([&stop_signals, m] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    m->Stop();
  });

  std::printf("ready\n");
  std::fflush(stdout);
  auto status = m->Run();
  // Wake the signal thread if no signal came, then join it before the mount
  // goes away.
  pthread_kill(signals.native_handle(), SIGTERM);
  signals.join();
  mount->reset();
  if (!status.ok()) {
    std::fprintf(stderr, "mfs_testmount: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
