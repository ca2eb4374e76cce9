"""A crash of the secondary loses what it applied since its last flush
(DESIGN.md guarantee 3): the primary remembers, per peer, what was written
since that peer's last completed flush and moves it into the peer's
fracture log when the peer is lost, so a resync re-sends it.

The host crash is simulated with the test-only `serve --test-volatile-writes`
(test builds): the secondary holds applied writes in memory until a flush and
loses them when killed. The primary writes a known pattern to several 4 KiB
blocks (no fsync, the file stays open so no flush or close is forwarded),
and the secondary is SIGKILLed at once, well inside the 1 s epoch. The test
checks that the secondary's store really lacks the blocks (else an epoch
flush got in between and the attempt is repeated), that the primary's
status shows fracture_bytes covering them, and that after a restart without
the flag and `sync --wait` the stores are identical.

The control runs the same scenario without the flag: nothing is lost (the
killed process's page cache survives), and the end state is identical too.

Guarantee 2's half on the peer: writes followed by fsync() or fdatasync(),
or written O_DSYNC, are all on a volatile secondary's disk when it is killed
right after they return."""

import os
import random
import signal
import time

import pytest

from conftest import (
    assert_same_manifest, assert_sync_wait, kill9, mirrorfs, peer_status,
    restart_serve, sha256_file, status_json, wait_flushed, wait_in_sync,
    wait_peer_state)

KiB = 1024
MiB = 1024 * KiB
BLOCK = 4 * KiB
IMAGE_BYTES = 4 * MiB
BLOCKS = 12
PEER_TIMEOUT = 1
DOWN_STATES = ("disconnected", "connecting")
ATTEMPTS = 6
# Writes and kill well inside one epoch (the flusher runs every second).
KILL_WITHIN = 0.1


def read_block(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(BLOCK)


def random_blocks(rng):
    """BLOCKS distinct 4 KiB blocks of the image, each with random bytes:
    {offset: bytes}."""
    offsets = sorted(rng.sample(range(IMAGE_BYTES // BLOCK), BLOCKS))
    return {o * BLOCK: rng.randbytes(BLOCK) for o in offsets}


def missing_blocks(path, patterns):
    """The offsets of `patterns` whose block in `path` differs."""
    return [off for off, want in patterns.items() if read_block(path, off) != want]


def restart_and_resync(cluster, primary, backup, what):
    """Restarts the killed secondary without test flags, resyncs, and
    checks the stores are identical. Returns the new Node."""
    backup = restart_serve(cluster, backup)
    assert_sync_wait(primary.store, timeout=60)
    assert_same_manifest(primary.store, backup.store, what)
    return backup


def union_blocks(offsets):
    return len(set(offsets)) * BLOCK


def start_pair_with_image(cluster, rng, flag):
    """A secondary (`serve` with `flag`) and a primary mirroring to it, with
    a random base image written and flushed by an epoch, so that the
    secondary has it on disk. Returns (backup, primary, image path)."""
    backup = cluster.serve("backup", extra=flag)
    primary = cluster.mount("primary", peers=[backup],
                            extra=["--peer-timeout", str(PEER_TIMEOUT)])
    wait_peer_state(primary.store, "backup", "connected")
    img = primary.mountpoint / "vol.img"
    with open(img, "wb") as f:
        f.write(rng.randbytes(IMAGE_BYTES))
    wait_flushed(primary.store)
    return backup, primary, img


def run_peer_crash(cluster, volatile, seed):
    rng = random.Random(seed)
    flag = ["--test-volatile-writes"] if volatile else []
    backup, primary, img = start_pair_with_image(cluster, rng, flag)
    assert sha256_file(backup.store / "vol.img") == sha256_file(primary.store / "vol.img"), \
        "the base image did not reach the secondary's disk"

    outcomes = []
    for attempt in range(ATTEMPTS):
        offsets = sorted(rng.sample(range(IMAGE_BYTES // BLOCK), BLOCKS))
        offsets = [o * BLOCK for o in offsets]
        patterns = {off: (f"attempt {attempt} block {off} ".encode() * 200)[:BLOCK]
                    for off in offsets}
        fd = os.open(img, os.O_WRONLY)
        try:
            t0 = time.monotonic()
            for off in offsets:
                assert os.pwrite(fd, patterns[off], off) == BLOCK
            kill9(backup)
            elapsed = time.monotonic() - t0
        finally:
            os.close(fd)  # after the kill: its flush must not reach the peer
        lost = missing_blocks(backup.store / "vol.img", patterns)

        _, peer = time.monotonic(), wait_peer_state(primary.store, "backup", DOWN_STATES,
                                                    timeout=PEER_TIMEOUT + 10)
        fracture = peer["fracture_bytes"]
        outcomes.append(dict(attempt=attempt, elapsed=elapsed, lost=len(lost),
                             fracture=fracture))
        print(f"  {'volatile' if volatile else 'control '} attempt {attempt}: writes+kill "
              f"{elapsed * 1000:.0f} ms, {len(lost)} of {BLOCKS} blocks missing on the "
              f"killed secondary, primary's fracture_bytes {fracture}")
        if volatile and lost:
            assert fracture > 0, \
                f"the secondary lost {len(lost)} acknowledged blocks but its fracture log is empty: {peer}"
            assert fracture >= union_blocks(lost), \
                (f"the secondary lost {union_blocks(lost)} bytes but the primary logged only "
                 f"{fracture} for it: {peer}")
        if not volatile:
            assert not lost, \
                f"without --test-volatile-writes a killed secondary lost blocks {lost}"

        backup = restart_serve(cluster, backup)  # without the flag
        assert_sync_wait(primary.store, timeout=60)
        peer = peer_status(primary.store, "backup")
        assert peer["in_sync"] is True and peer["fracture_bytes"] == 0, peer
        assert_same_manifest(primary.store, backup.store,
                             f"stores after the secondary's crash (attempt {attempt})")
        unsent = missing_blocks(backup.store / "vol.img", patterns)
        assert not unsent, f"blocks {unsent} were not re-sent to the restarted secondary"

        if not volatile or (lost and elapsed <= KILL_WITHIN):
            return outcomes
        # An epoch flush got in between (nothing lost) or the kill came
        # late: again, with the volatile secondary.
        cluster.stop(backup)
        backup = restart_serve(cluster, backup, extra=flag)
        wait_in_sync(primary.store, "backup")
        wait_flushed(primary.store)
    raise AssertionError(f"in {ATTEMPTS} attempts the volatile secondary never lost a "
                         f"write when killed within {KILL_WITHIN * 1000:.0f} ms: {outcomes}")


def test_peer_crash_loses_unflushed_writes_and_resync_resends_them(cluster):
    print()
    run_peer_crash(cluster, volatile=True, seed=11)


def test_peer_kill_without_volatile_writes_also_ends_identical(cluster):
    print()
    run_peer_crash(cluster, volatile=False, seed=12)


def test_peer_crash_right_after_a_resync_loses_nothing_it_sent(cluster):
    """The end of a resync is answered once the secondary's store is synced,
    and the primary then counts what the resync sent as on the peer's disk
    (guarantees 1 and 3). A volatile secondary killed right after
    `sync --wait` returns must therefore hold every byte of the resync."""
    rng = random.Random(13)
    backup, primary, img = start_pair_with_image(cluster, rng, ["--test-volatile-writes"])

    r = mirrorfs("fracture", primary.store, "backup")
    assert r.returncode == 0, f"mirrorfs fracture: exit {r.returncode}\n{r.stderr}"
    wait_peer_state(primary.store, "backup", "fractured", timeout=10)
    patterns = random_blocks(rng)
    fd = os.open(img, os.O_WRONLY)
    try:
        for off, block in patterns.items():
            assert os.pwrite(fd, block, off) == BLOCK
    finally:
        os.close(fd)

    assert_sync_wait(primary.store, "backup", timeout=60)
    kill9(backup)  # within the epoch that follows: nothing flushed since
    lost = missing_blocks(backup.store / "vol.img", patterns)
    assert not lost, (f"a secondary killed right after its resync ended lost "
                      f"{len(lost)} of the {BLOCKS} blocks the resync sent")

    restart_and_resync(cluster, primary, backup,
                       "stores after the secondary's crash right after a resync")


def test_peer_crash_right_after_a_fracture_loses_nothing_unlogged(cluster):
    """A fracture first has the peer flush its store, and then logs only
    what follows (guarantees 3 and 6). A volatile secondary that got writes
    without any flush, was fractured at once and then killed must either
    hold those writes on disk or have them in its fracture log: after the
    rejoin, the stores are identical and the blocks are there."""
    rng = random.Random(15)
    backup, primary, img = start_pair_with_image(cluster, rng, ["--test-volatile-writes"])
    patterns = random_blocks(rng)
    fd = os.open(img, os.O_WRONLY)
    try:
        for off, block in patterns.items():
            assert os.pwrite(fd, block, off) == BLOCK
        r = mirrorfs("fracture", primary.store, "backup")
        assert r.returncode == 0, f"mirrorfs fracture: exit {r.returncode}\n{r.stderr}"
        kill9(backup)
    finally:
        os.close(fd)
    peer = wait_peer_state(primary.store, "backup", "fractured", timeout=10)
    lost = missing_blocks(backup.store / "vol.img", patterns)
    assert peer["fracture_bytes"] >= union_blocks(lost), \
        (f"the fractured secondary lost {len(lost)} blocks the primary did not log "
         f"for it: {peer}")
    # The flush before the fracture was answered: nothing was lost, and
    # nothing of it is logged.
    assert not lost and peer["fracture_bytes"] == 0, (lost, peer)

    backup = restart_serve(cluster, backup)
    r = mirrorfs("sync", primary.store, "--peer", "backup", "--wait", "--timeout", "60")
    assert r.returncode == 0, f"mirrorfs sync: exit {r.returncode}\n{r.stderr}"
    assert_same_manifest(primary.store, backup.store,
                         "stores after a fracture and the peer's crash")
    assert not missing_blocks(backup.store / "vol.img", patterns)


@pytest.mark.parametrize("delay_ms", [0, 2, 5, 20, None])
def test_peer_killed_while_it_stops_loses_nothing_unlogged(cluster, delay_ms):
    """A clean stop of the secondary syncs its store and then tells the
    primary how far its copy is durable; the primary logs only what follows
    (guarantees 1, 3 and 6). A volatile secondary that got writes without a
    flush, was told to stop (SIGTERM) and was killed `delay_ms` later
    (None: not killed) must hold every such block on disk or have it in
    its fracture log; after a restart, the stores are identical."""
    rng = random.Random(17 + (delay_ms or 0))
    backup, primary, img = start_pair_with_image(cluster, rng, ["--test-volatile-writes"])
    patterns = random_blocks(rng)
    fd = os.open(img, os.O_WRONLY)
    try:
        for off, block in patterns.items():
            assert os.pwrite(fd, block, off) == BLOCK
        backup.signal(signal.SIGTERM)
        if delay_ms is not None:
            time.sleep(delay_ms / 1000)
            kill9(backup)
        else:
            backup.wait_exit()
    finally:
        os.close(fd)  # after the stop: its flush must not reach the peer
    peer = wait_peer_state(primary.store, "backup", DOWN_STATES, timeout=PEER_TIMEOUT + 10)
    lost = missing_blocks(backup.store / "vol.img", patterns)
    print(f"  killed {delay_ms} ms into the stop: {len(lost)} of {BLOCKS} blocks missing, "
          f"fracture_bytes {peer['fracture_bytes']}")
    assert peer["fracture_bytes"] >= union_blocks(lost), \
        (f"the stopping secondary lost {len(lost)} blocks the primary did not log "
         f"for it: {peer}")
    if delay_ms is None:
        # A stop that ran to its end: everything on disk, nothing logged.
        assert not lost and peer["fracture_bytes"] == 0, (lost, peer)
    backup = restart_and_resync(cluster, primary, backup,
                                "stores after a secondary killed while it stopped")
    assert not missing_blocks(backup.store / "vol.img", patterns)


@pytest.mark.parametrize("how", ["fsync", "fdatasync", "o_dsync"])
def test_what_the_application_made_durable_survives_a_peer_crash(cluster, how):
    """Guarantee 2: once fsync() or fdatasync() returns, or a write to a
    file opened O_DSYNC, the data is durable on every connected peer. A
    volatile secondary killed right after must have every block on disk,
    though no epoch flush (every second) had time to run: the same writes
    without it are lost (test_peer_crash_loses_unflushed_writes_...)."""
    rng = random.Random(14)
    backup, primary, img = start_pair_with_image(cluster, rng, ["--test-volatile-writes"])
    patterns = random_blocks(rng)

    fd = os.open(img, os.O_WRONLY | (os.O_DSYNC if how == "o_dsync" else 0))
    try:
        t0 = time.monotonic()
        for off, block in patterns.items():
            assert os.pwrite(fd, block, off) == BLOCK
        if how == "fsync":
            os.fsync(fd)
        elif how == "fdatasync":
            os.fdatasync(fd)
        kill9(backup)
        elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
    print(f"\n  {how}: writes, {how} and kill in {elapsed * 1000:.0f} ms")
    lost = missing_blocks(backup.store / "vol.img", patterns)
    assert not lost, (f"after {how} returned, a crashed secondary lost {len(lost)} "
                      f"of the {BLOCKS} blocks")

    restart_and_resync(cluster, primary, backup, f"stores after {how} and a peer crash")
