"""A full disk on the peer (DESIGN.md guarantee 9, with 2 and 5): the
secondary's store is a 24 MiB tmpfs; writing 48 MiB through the primary's
mount never fails the application. The peer's failed apply (ENOSPC) drops
it from mirroring with a message that says so, and what it missed is in
its fracture log. Once the peer has room again, `sync --wait` brings it
back and the stores are identical."""

import os
import subprocess

from conftest import (assert_sync_wait, peer_status, status_json, wait_in_sync,
                      wait_same_manifest, wait_until)

MIB = 1 << 20


def test_full_peer_disk_never_fails_the_application(cluster):
    small_store = cluster.tmpfs_dir("backup.store", "24m")
    b = cluster.serve("backup", store=small_store)
    a = cluster.mount("primary", peers=[b], extra=["--peer-timeout", "1"])
    wait_in_sync(a.store, "backup")

    block = os.urandom(MIB)
    path = a.mountpoint / "big.img"
    with open(path, "wb") as f:
        for i in range(48):  # twice what the peer can hold
            f.write(block[i:] + block[:i])
        f.flush()
        os.fsync(f.fileno())

    # The application saw no error; the peer was dropped, with the reason.
    entry = peer_status(a.store, "backup")
    assert entry is not None and not entry["in_sync"], entry
    assert entry["fracture_bytes"] > 0, entry
    log = a.log()
    assert "No space left on device" in log or "ENOSPC" in log, log[-3000:]
    assert b.alive(), "the secondary must stay up on a full disk"
    assert status_json(b.store)["role"] == "secondary"

    # Room again: the peer comes back and only then reaches in-sync.
    r = subprocess.run(["mount", "-o", "remount,size=96m", str(small_store)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_sync_wait(a.store, "backup", timeout=90)
    wait_same_manifest(a.store, b.store)
    wait_until(lambda: peer_status(a.store, "backup")["in_sync"], 30,
               "the peer in sync after the resync")
