"""The primary killed (SIGKILL) in the middle of a rate-limited resync
(DESIGN.md guarantees 1, 6 and 7 across a crash of the primary).

The secondary misses scattered writes (fractured), then a resync at
--resync-rate 8M starts; once part of it is on the secondary's disk (the
primary's fracture log shrank), the primary is killed, its dead mount
lazily unmounted, and the primary mounted again with the same command.
Then:
  - the fracture log after the restart holds at most what it held just
    before the kill (resync progress survives the crash) plus the
    write-intent regions the restart re-adds;
  - the resync after the restart resumes from that log: what the
    secondary applied, the resync's total_bytes and the bytes the primary's
    log says it sent are bounded by that log — not the whole store, not a
    block-by-block comparison of it;
  - the stores end identical (whole-store manifests, sha256 of the image),
    and the secondary says it is consistent.
The same with writers racing the resync before the kill and the resumed
resync after it (guarantee 4 across a crash): identical stores again."""

import os
import random
import re
import threading
import time

from conftest import (
    READY_SECONDS, assert_same_manifest, assert_sync_wait, bytes_applied,
    is_mounted, kill9, mirrorfs, peer_status, run, sha256_file, status_json,
    wait_flushed, wait_peer_state, wait_until)

KiB = 1024
MiB = 1024 * KiB
IMAGE_BYTES = 96 * MiB
BLOCK = 256 * KiB
BLOCKS = 128  # at most 32 MiB of damage, scattered
RATE = "8M"
PEER_TIMEOUT = 1
MOUNT_EXTRA = ["--peer-timeout", str(PEER_TIMEOUT), "--resync-rate", RATE,
               "--intent-extent", "1M"]


def mount_primary(cluster, backup, store=None, mountpoint=None, listen=True):
    return cluster.mount("primary", store=store, mountpoint=mountpoint, listen=listen,
                         peers=[backup], extra=MOUNT_EXTRA)


def write_random(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
        f.flush()
        os.fsync(f.fileno())


def sent_lines(log):
    return [int(m.group(1)) for m in
            re.finditer(r"peer backup: resync done, (\d+) bytes sent", log)]


def damaged_pair(cluster, seed):
    """A mirrored image, then the peer fractured and scattered blocks of the
    image rewritten: returns (backup, primary, image path)."""
    backup = cluster.serve("backup")
    primary = mount_primary(cluster, backup)
    wait_peer_state(primary.store, "backup", "connected")
    img = primary.mountpoint / "disk.img"
    write_random(img, IMAGE_BYTES, seed=seed)
    wait_flushed(primary.store)

    r = mirrorfs("fracture", primary.store, "backup")
    assert r.returncode == 0, r.stderr
    wait_peer_state(primary.store, "backup", "fractured")
    rng = random.Random(seed + 1)
    fd = os.open(img, os.O_WRONLY)
    try:
        for _ in range(BLOCKS):
            off = rng.randrange(IMAGE_BYTES // BLOCK) * BLOCK
            assert os.pwrite(fd, rng.randbytes(BLOCK), off) == BLOCK
        os.fsync(fd)
    finally:
        os.close(fd)
    return backup, primary, img


def test_primary_killed_mid_resync_resumes_from_its_log(cluster):
    backup, primary, img = damaged_pair(cluster, seed=1)
    # The damage's write intents retire (idle epochs): the restart then
    # re-adds none of them, and the bounds below are the resync's alone.
    wait_until(lambda: status_json(primary.store)["intent"]["active_extents"] == 0,
               30, "the write intents of the damage to retire")
    damage = peer_status(primary.store, "backup")["fracture_bytes"]
    assert 8 * MiB < damage <= BLOCKS * BLOCK, damage

    r = mirrorfs("sync", primary.store, "--peer", "backup")
    assert r.returncode == 0, r.stderr
    # Part of the resync is on the secondary's disk: the log shrank. Well
    # before its end (8 MiB/s against 16-32 MiB of damage).
    wait_until(lambda: peer_status(primary.store, "backup")["fracture_bytes"]
               <= damage - 4 * MiB, 30, "the resync to trim the fracture log")
    peer = peer_status(primary.store, "backup")
    assert peer["state"] == "syncing", peer
    assert status_json(backup.store)["consistent"] is False
    left_at_kill = peer["fracture_bytes"]

    kill9(primary)
    r = run(["fusermount3", "-uz", primary.mountpoint])
    wait_until(lambda: not is_mounted(primary.mountpoint), READY_SECONDS,
               f"{primary.mountpoint} to come off after the kill ({r.stderr.strip()})")
    assert status_json(backup.store)["consistent"] is False
    applied_before = bytes_applied(backup.store)
    log_before = primary.log_size()

    primary = mount_primary(cluster, backup, store=primary.store,
                            mountpoint=primary.mountpoint, listen=primary.endpoint)
    doc = status_json(primary.store)
    recovered = doc.get("recovered_from_crash")
    requeued = recovered["bytes_queued"] if isinstance(recovered, dict) else 0
    # No write ran at the kill and the intents had retired: none re-added.
    assert requeued == 0, recovered
    peer = peer_status(primary.store, "backup")
    remaining = peer["fracture_bytes"]
    assert remaining <= left_at_kill + requeued, \
        (f"the resync's progress was lost in the crash: {left_at_kill} bytes left at the "
         f"kill, {remaining} in the log after the restart (+{requeued} re-added intents)")

    assert_sync_wait(primary.store, timeout=120)
    applied = bytes_applied(backup.store) - applied_before
    peer = peer_status(primary.store, "backup")
    total = peer["resync"]["total_bytes"]
    log = primary.log_since(log_before) if primary.log_size() >= log_before else primary.log()
    sent = sent_lines(log)
    print(f"\ndamage {damage / MiB:.2f} MiB, left at the kill {left_at_kill / MiB:.2f} MiB, "
          f"after the restart {remaining / MiB:.2f} MiB (+{requeued / MiB:.2f} intents); "
          f"resync total {total / MiB:.2f} MiB, applied {applied / MiB:.2f} MiB, "
          f"sent {[s / MiB for s in sent]} MiB")
    assert "full sync" not in log, \
        f"the restart compared the whole store:\n{log[-3000:]}"
    assert total <= remaining, \
        f"the resync after the crash planned {total} bytes for {remaining} bytes of log"
    assert applied <= remaining, \
        f"the secondary applied {applied} bytes for {remaining} bytes of log"
    assert sent and sent[-1] <= remaining, \
        f"the primary logged {sent} bytes sent for {remaining} bytes of log:\n{log[-3000:]}"

    assert_same_manifest(primary.store, backup.store, "stores after the crash and resync")
    assert sha256_file(img) == sha256_file(backup.store / "disk.img")
    assert status_json(backup.store)["consistent"] is True
    assert peer_status(primary.store, "backup")["in_sync"] is True


class Racer:
    """Threads that pwrite random 64 KiB blocks into the image until told
    to stop or until the mount goes away under them (the kill)."""

    def __init__(self, path, seed, threads=2):
        self.path, self.seed = path, seed
        self.count = 0
        self.errors = []
        self._stop = False
        self._threads = [threading.Thread(target=self._run, args=(seed + i,))
                         for i in range(threads)]

    def _run(self, seed):
        rng = random.Random(seed)
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            self.errors.append(e)
            return
        try:
            while not self._stop:
                off = rng.randrange(IMAGE_BYTES // (64 * KiB)) * 64 * KiB
                os.pwrite(fd, rng.randbytes(64 * KiB), off)
                self.count += 1
                time.sleep(0.002)
        except OSError as e:
            self.errors.append(e)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        for t in self._threads:
            t.join(READY_SECONDS)


def test_writes_racing_a_resync_cut_by_a_kill_never_go_backwards(cluster):
    """Guarantees 1 and 4 across a crash: writers race the resync, the
    primary is killed with writes in flight, the resync resumes after the
    restart with writers racing it again; the copies end identical."""
    backup, primary, img = damaged_pair(cluster, seed=11)
    damage = peer_status(primary.store, "backup")["fracture_bytes"]
    assert damage > 8 * MiB, damage

    r = mirrorfs("sync", primary.store, "--peer", "backup")
    assert r.returncode == 0, r.stderr
    with Racer(str(img), seed=13) as racer:
        wait_until(lambda: peer_status(primary.store, "backup")["fracture_bytes"]
                   <= damage - 4 * MiB, 30, "the resync to trim the fracture log")
        peer = peer_status(primary.store, "backup")
        assert peer["state"] == "syncing", peer
        assert racer.count > 0 and not racer.errors, racer.errors
        kill9(primary)
    print(f"\n{racer.count} writes raced the resync before the kill")

    r = run(["fusermount3", "-uz", primary.mountpoint])
    wait_until(lambda: not is_mounted(primary.mountpoint), READY_SECONDS,
               f"{primary.mountpoint} to come off after the kill ({r.stderr.strip()})")
    assert status_json(backup.store)["consistent"] is False
    primary = mount_primary(cluster, backup, store=primary.store,
                            mountpoint=primary.mountpoint, listen=primary.endpoint)
    doc = status_json(primary.store)
    assert doc["recovered_from_crash"], doc

    with Racer(str(img), seed=14) as racer:
        wait_until(lambda: racer.count >= 20 or racer.errors, 30, "writes to race again")
        assert not racer.errors, racer.errors
    print(f"{racer.count} writes raced the resumed resync")
    assert_sync_wait(primary.store, timeout=120)
    assert "full sync" not in primary.log(), "the restart compared the whole store"
    wait_flushed(primary.store)
    assert_same_manifest(primary.store, backup.store,
                         "stores after racing writes, a kill and a resumed resync")
    assert status_json(backup.store)["consistent"] is True
    assert peer_status(primary.store, "backup")["in_sync"] is True
