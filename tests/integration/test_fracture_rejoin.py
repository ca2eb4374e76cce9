"""`mirrorfs fracture STORE NAME` stops mirroring to a healthy peer on
purpose: the peer's state is `fractured`, the primary logs what it misses
(fracture_bytes > 0), the peer's copy stays exactly as it was (a frozen
point-in-time copy, e.g. for a backup), and the primary does not reconnect
by itself. `mirrorfs sync STORE --peer NAME --wait` rejoins it: identical
stores, and the resync sends only what was logged."""

import os
import time

from conftest import (
    assert_same_manifest, assert_sync_wait, bytes_applied, mirrorfs, peer_status,
    status_json, store_manifest, union_bytes, wait_flushed, wait_peer_state)

KiB = 1024
MiB = 1024 * KiB


def test_fracture_then_rejoin(cluster):
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    m = primary.mountpoint
    with open(m / "db.img", "wb") as f:
        f.write(os.urandom(8 * MiB))
    (m / "dir").mkdir()
    with open(m / "dir" / "small", "wb") as f:
        f.write(b"s" * 1000)
    wait_flushed(primary.store)
    before = assert_same_manifest(primary.store, backup.store, "stores before the fracture")

    r = mirrorfs("fracture", primary.store, "backup")
    assert r.returncode == 0, f"mirrorfs fracture: exit {r.returncode}\n{r.stderr}"
    peer = wait_peer_state(primary.store, "backup", "fractured", timeout=10)
    assert peer["in_sync"] is False, peer

    applied_before = bytes_applied(backup.store)
    ranges = []
    fd = os.open(m / "db.img", os.O_WRONLY)
    try:
        for i in range(20):
            off = (i * 397 * KiB) % (8 * MiB - 64 * KiB)
            os.pwrite(fd, os.urandom(10 * KiB + i), off)
            ranges.append((off, 10 * KiB + i))
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(m / "dir" / "new", "wb") as f:
        f.write(b"n" * 5000)
    os.rename(m / "dir" / "small", m / "dir" / "renamed")
    os.chmod(m / "db.img", 0o600)
    damage = union_bytes(ranges)

    # Logged for the peer, never sent to it; and the primary does not
    # reconnect by itself (observed over > 2 backoff periods, 0.2 s -> 0.8 s).
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        peer = peer_status(primary.store, "backup")
        assert peer["state"] == "fractured", f"the fractured peer left that state: {peer}"
        time.sleep(0.1)
    assert peer["fracture_bytes"] >= damage, (damage, peer)
    assert peer["fracture_bytes"] > 0 and peer["pending_namespace_ops"] > 0, peer
    assert store_manifest(backup.store) == before, "the fractured peer's copy changed"
    assert bytes_applied(backup.store) == applied_before, "data was sent to a fractured peer"
    assert status_json(backup.store)["consistent"] is True
    fracture_bytes = peer["fracture_bytes"]

    assert_sync_wait(primary.store, peer="backup", timeout=60)
    peer = peer_status(primary.store, "backup")
    assert peer["state"] == "connected" and peer["in_sync"] is True, peer
    assert peer["fracture_bytes"] == 0 and peer["pending_namespace_ops"] == 0, peer
    assert_same_manifest(primary.store, backup.store, "stores after the rejoin")
    applied = bytes_applied(backup.store) - applied_before
    assert damage <= applied <= fracture_bytes, \
        f"rejoin applied {applied} bytes; the log held {fracture_bytes}, damage {damage}"


def test_a_fracture_right_after_writes_logs_only_what_follows(cluster):
    """A fracture is planned: the peer first makes durable what it applied,
    so its log starts empty rather than holding the last second of writes
    (which guarantee 3 logs for a peer that may lose them), and the rejoin
    sends exactly what was written meanwhile (guarantee 6)."""
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    m = primary.mountpoint
    with open(m / "db.img", "wb") as f:  # no wait for an epoch: fracture at once
        f.write(os.urandom(8 * MiB))
    r = mirrorfs("fracture", primary.store, "backup")
    assert r.returncode == 0, f"mirrorfs fracture: exit {r.returncode}\n{r.stderr}"
    peer = wait_peer_state(primary.store, "backup", "fractured", timeout=10)
    assert peer["fracture_bytes"] == 0, \
        f"the peer's log holds writes it had before the fracture: {peer}"

    applied_before = bytes_applied(backup.store)
    fd = os.open(m / "db.img", os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(MiB), 2 * MiB)
    finally:
        os.close(fd)
    peer = peer_status(primary.store, "backup")
    assert peer["fracture_bytes"] == MiB, peer

    assert_sync_wait(primary.store, peer="backup", timeout=60)
    assert_same_manifest(primary.store, backup.store, "stores after the rejoin")
    applied = bytes_applied(backup.store) - applied_before
    assert applied == MiB, f"the rejoin applied {applied} bytes for 1 MiB written"
