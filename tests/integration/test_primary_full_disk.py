"""A full disk on the primary (DESIGN.md guarantees 1 and 9). A write is sent
to the peers while the local write runs, so when the local write fails
(ENOSPC) the peer may already hold bytes the primary lacks. The application
gets the error, and the range goes to the peer's fracture log at once: the
peer is not reported in sync until a resync has sent it the primary's data,
and then both stores are identical. Writes go on failing while the disk is
full (24 of 48 here), each resent the same way."""

import errno
import os

from conftest import (assert_sync_wait, peer_status, wait_in_sync,
                      wait_same_manifest, wait_until)

MIB = 1 << 20


def test_a_write_that_fails_here_is_resent_to_the_peer(cluster):
    b = cluster.serve("backup")
    a = cluster.mount("primary", store=cluster.tmpfs_dir("primary.store", "24m"),
                      peers=[b])
    wait_in_sync(a.store, "backup")

    block = os.urandom(MIB)
    path = a.mountpoint / "big.img"
    failures = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(48):  # twice what the primary's store holds
            try:
                os.pwrite(fd, block[i:] + block[:i], i * MIB)
            except OSError as e:
                failures.append(e.errno)
    finally:
        os.close(fd)
    assert failures and set(failures) == {errno.ENOSPC}, \
        f"writing 48 MiB to a 24 MiB store: {failures}"

    # Each failed write had reached the peer: its range is logged for it
    # and resent from the primary's data, so the copies end identical
    # (without that, the peer keeps bytes and a size the primary lacks).
    assert "failed here after it was sent" in a.log(), a.log()[-3000:]
    assert_sync_wait(a.store, "backup", timeout=90)
    wait_same_manifest(a.store, b.store)
    wait_until(lambda: peer_status(a.store, "backup")["in_sync"], 30,
               "the peer in sync after the resync")
    assert b.alive() and a.alive()
