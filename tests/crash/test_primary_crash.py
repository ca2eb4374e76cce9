"""Crash loop of the primary (DESIGN.md guarantee 1 across a crash, and the
write-intent journal's promise: a crash re-sends the active regions, at most
the intent budget).

Each iteration: 2-3 threads pwrite at random aligned offsets of a 64 MiB
image through the primary's mount (an fsync now and then) for a random
0.3-1.5 s, mostly 4 KiB blocks (written to the store cached) and one in
eight of 64-256 KiB (written uncached, meta::StoreWriter); the primary is SIGKILLed at that moment while
they run; its dead mount is lazily unmounted; it is restarted on the same
store (its peer is remembered). Then:
  - `status --json` reports recovered_from_crash: an object whose
    bytes_queued is at most the intent budget, or false if no region was
    active;
  - `mirrorfs sync STORE --wait` exits 0 and both stores are identical
    (whole-store manifests);
  - what the secondary applied during that resync (its bytes_applied) is at
    most the intent budget plus the primary's fracture_bytes right after
    the restart: a crash does not re-send the whole image.

The budget is deliberately smaller than the image (16 MiB of 1 MiB regions
against a 64 MiB image written all over), so that the ceiling is a real
bound and the writers run into it (they wait for epoch flushes).

Environment: MFS_CRASH_ITERATIONS (default 20), MFS_CRASH_SEED (default:
random, printed), MFS_CRASH_BUDGET_MIB (default 16), MFS_CRASH_MOUNT_EXTRA
(more mount flags; `--test-no-intent-journal` shows the test failing)."""

import os
import random
import statistics
import threading
import time

from conftest import (
    READY_SECONDS, assert_same_manifest, bytes_applied, is_mounted, kill9,
    manifest_diff, run, status_json, store_manifest, sync_wait,
    wait_in_sync, wait_peer_state, wait_until)

KiB = 1024
MiB = 1024 * KiB
IMAGE_BYTES = 64 * MiB
BLOCK = 4 * KiB
LARGE_BLOCKS = (64 * KiB, 128 * KiB, 256 * KiB)
EXTENT = 1 * MiB
BUDGET = int(os.environ.get("MFS_CRASH_BUDGET_MIB", "16")) * MiB
ITERATIONS = int(os.environ.get("MFS_CRASH_ITERATIONS", "20"))
PEER_TIMEOUT = 1
MOUNT_EXTRA = ["--peer-timeout", str(PEER_TIMEOUT),
               "--intent-budget", f"{BUDGET // MiB}M",
               "--intent-extent", f"{EXTENT // MiB}M",
               # e.g. --test-no-intent-journal, to see this test fail
               *os.environ.get("MFS_CRASH_MOUNT_EXTRA", "").split()]


class CrashWriter:
    """Threads pwriting random blocks until stopped or until the mount
    dies. Errors after `killed` is set are the expected end (EIO/ENOTCONN
    from a dead FUSE mount); errors before it are failures."""

    def __init__(self, path, threads, seed):
        self.path = path
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.writes = 0
        self.fsyncs = 0
        self.unexpected = []
        self.expected_errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(seed * 31 + i,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, seed):
        rng = random.Random(seed)
        fd = None
        try:
            fd = os.open(self.path, os.O_WRONLY)
            n = 0
            while not self.stop.is_set():
                size = BLOCK if rng.random() < 7 / 8 else rng.choice(LARGE_BLOCKS)
                off = rng.randrange(IMAGE_BYTES // size) * size
                data = rng.randbytes(size)
                if os.pwrite(fd, data, off) != size:
                    raise OSError(f"short write at {off}")
                n += 1
                with self.lock:
                    self.writes += 1
                if rng.random() < 1 / 16:
                    os.fsync(fd)
                    with self.lock:
                        self.fsyncs += 1
        except OSError as e:
            (self.expected_errors if self.killed.is_set() else self.unexpected).append(e)
        finally:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def finish(self, timeout=30):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        stuck = [t for t in self.threads if t.is_alive()]
        assert not stuck, f"{len(stuck)} writer thread(s) still blocked {timeout} s after the kill"


def start_primary(cluster, store=None, mountpoint=None, listen=True, peers=()):
    return cluster.mount("primary", store=store, mountpoint=mountpoint, listen=listen,
                         peers=peers, extra=MOUNT_EXTRA)


def test_primary_crash_loop_resends_only_active_regions(cluster):
    seed = int(os.environ.get("MFS_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\nseed {seed}, {ITERATIONS} iterations, budget {BUDGET // MiB} MiB, "
          f"extent {EXTENT // MiB} MiB, image {IMAGE_BYTES // MiB} MiB")

    backup = cluster.serve("backup")
    primary = start_primary(cluster, peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    img = primary.mountpoint / "disk.img"
    fd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o644)
    os.ftruncate(fd, IMAGE_BYTES)
    os.close(fd)
    wait_in_sync(primary.store, "backup")

    doc = status_json(primary.store)
    assert doc["intent"]["extent_bytes"] == EXTENT, doc["intent"]
    assert doc["intent"].get("budget_bytes", BUDGET) == BUDGET, doc["intent"]

    results = []
    for it in range(ITERATIONS):
        t_iter = time.monotonic()
        threads = rng.choice((2, 3))
        run_for = rng.uniform(0.3, 1.5)
        writer = CrashWriter(str(img), threads, seed + it).start()
        deadline = time.monotonic() + run_for
        while time.monotonic() < deadline and not writer.unexpected:
            time.sleep(0.01)
        assert not writer.unexpected, \
            f"iteration {it}: a write failed before the kill: {writer.unexpected!r}"
        active_before = None
        try:
            active_before = status_json(primary.store, timeout=5)["intent"]["active_extents"]
        except AssertionError:
            pass
        writer.killed.set()
        kill9(primary)
        r = run(["fusermount3", "-uz", primary.mountpoint])
        wait_until(lambda: not is_mounted(primary.mountpoint), READY_SECONDS,
                   f"{primary.mountpoint} to come off after the kill ({r.stderr.strip()})")
        writer.finish()
        assert not writer.unexpected, writer.unexpected

        applied_before = bytes_applied(backup.store)
        primary = start_primary(cluster, store=primary.store, mountpoint=primary.mountpoint,
                                listen=primary.endpoint)
        doc = status_json(primary.store)
        peers = doc.get("peers", [])
        assert len(peers) == 1 and peers[0]["name"] == "backup", \
            f"iteration {it}: the restarted primary does not remember its peer: {peers}"
        fracture_after_restart = peers[0]["fracture_bytes"]
        recovered = doc.get("recovered_from_crash")
        assert recovered is False or isinstance(recovered, dict), \
            f"iteration {it}: recovered_from_crash is {recovered!r}"
        queued = 0
        if isinstance(recovered, dict):
            queued = recovered["bytes_queued"]
            assert 0 < queued <= BUDGET, \
                (f"iteration {it}: the crash queued {queued} bytes for re-sending, more than "
                 f"the intent budget {BUDGET} ({recovered})")
            assert recovered["regions"] * EXTENT >= queued, recovered
            assert recovered["regions"] <= BUDGET // EXTENT, \
                f"iteration {it}: {recovered['regions']} regions active, budget {BUDGET // EXTENT}"

        r, took = sync_wait(primary.store, timeout=60)
        assert r.returncode == 0, (f"iteration {it}: mirrorfs sync --wait: exit {r.returncode} "
                                   f"after {took:.1f} s\nstdout: {r.stdout[-2000:]}\n"
                                   f"stderr: {r.stderr}")
        a, b = store_manifest(primary.store), store_manifest(backup.store)
        diff = manifest_diff(a, b)
        assert not diff, (f"iteration {it} (seed {seed}): the stores differ after the crash "
                          f"and resync (recovered {recovered}, writes {writer.writes}):\n{diff}")
        applied = bytes_applied(backup.store) - applied_before
        assert applied <= BUDGET + fracture_after_restart, \
            (f"iteration {it}: the resync after the crash applied {applied} bytes on the "
             f"secondary, more than budget {BUDGET} + fracture log {fracture_after_restart}")
        results.append(dict(it=it, threads=threads, run_for=run_for, writes=writer.writes,
                            fsyncs=writer.fsyncs, active_before=active_before,
                            recovered=recovered, queued=queued,
                            fracture=fracture_after_restart, applied=applied,
                            seconds=time.monotonic() - t_iter))
        r_ = results[-1]
        print(f"  it {it:3d}: {threads} thr {run_for:4.2f} s {r_['writes']:6d} writes "
              f"{r_['fsyncs']:4d} fsyncs active~{active_before} -> "
              f"queued {queued / MiB:6.2f} MiB "
              f"({recovered['regions'] if recovered else 0} regions), "
              f"fracture {fracture_after_restart / MiB:6.2f} MiB, "
              f"applied {applied / MiB:6.2f} MiB, {r_['seconds']:.1f} s")

    queued = [r["queued"] / MiB for r in results]
    applied = [r["applied"] / MiB for r in results]
    none = sum(1 for r in results if r["recovered"] is False)
    print(f"recovered MiB per crash: min {min(queued):.2f} median {statistics.median(queued):.2f} "
          f"max {max(queued):.2f} (budget {BUDGET / MiB:.0f}); {none} of {len(results)} "
          f"crashes with nothing active")
    print(f"applied MiB per resync: min {min(applied):.2f} median "
          f"{statistics.median(applied):.2f} max {max(applied):.2f}")
    print(f"seconds per iteration: median "
          f"{statistics.median(r['seconds'] for r in results):.1f}")
    assert sum(r["writes"] for r in results) > 0, "no write reached the mount in any iteration"
