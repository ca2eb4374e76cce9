"""Written data and the stores' own page caches (README, "How a write
reaches the peers"): by default large writes of whole pages reach both
stores uncached, so that once on disk neither store's page cache holds
them, while a write of part of a page or a small one stays cached; with
--cached-writes on both nodes every page stays cached. The two stores are
identical either way. Sequential reads through the mount are cached in
the mount alone, across opens, and what a resync reads leaves the store's
cache.
Page residency is read with util-linux's fincore."""

import errno
import os
import shutil
import subprocess

import pytest

from conftest import (assert_same_manifest, mirrorfs, wait_in_sync,
                      wait_peer_state, wait_until)

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
RWF_DONTCACHE = 0x80  # Linux 6.14


def takes_uncached_writes(folder):
    probe = folder / "dontcache-probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.pwritev(fd, [b"p" * PAGE], 0, RWF_DONTCACHE)
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    finally:
        os.close(fd)
        os.unlink(probe)


def cached_bytes(path):
    """Bytes of `path` in the page cache."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                        str(path)], capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def write_image(path, size):
    """`size` bytes of random data in 1 MiB writes, then fsync; returns them."""
    data = os.urandom(size)
    with open(path, "wb") as f:
        for off in range(0, size, MIB):
            f.write(data[off:off + MIB])
            f.flush()
        os.fsync(f.fileno())
    return data


@pytest.fixture
def fincore_ok(cluster):
    if shutil.which("fincore") is None:
        pytest.skip("util-linux's fincore is not installed")
    if not takes_uncached_writes(cluster.root):
        pytest.skip("this kernel or file system has no RWF_DONTCACHE")


def test_whole_pages_are_not_cached_in_either_store(cluster, fincore_ok):
    b = cluster.serve("backup")
    a = cluster.mount("primary", peers=[b])
    wait_in_sync(a.store, "backup")

    write_image(a.mountpoint / "disk.img", 8 * MIB)
    # An append of part of a page: that page stays cached (uncached, the
    # next small write to it would read it back from disk first).
    with open(a.mountpoint / "disk.img", "ab") as f:
        f.write(b"tail" * 25)
        os.fsync(f.fileno())
    # A small write of one whole page stays cached too.
    with open(a.mountpoint / "small.img", "wb") as f:
        f.write(b"s" * PAGE)
        os.fsync(f.fileno())
    wait_in_sync(a.store, "backup")

    for node in (a, b):
        image = node.store / "disk.img"
        # Pages are dropped when their write-back ends, which fsync waits
        # for; the poll only covers the last completions.
        wait_until(lambda: cached_bytes(image) <= PAGE, 10,
                   f"{node.name}'s store to hold at most the last page of {image} "
                   f"(has {cached_bytes(image)} bytes cached)")
    assert cached_bytes(a.store / "disk.img") == PAGE
    for node in (a, b):
        assert cached_bytes(node.store / "small.img") == PAGE, node.name
    assert_same_manifest(a.store, b.store)  # reads them: last


def test_cached_writes_keep_every_page(cluster, fincore_ok):
    b = cluster.serve("backup", extra=["--cached-writes"])
    a = cluster.mount("primary", peers=[b], extra=["--cached-writes"])
    wait_in_sync(a.store, "backup")

    data = write_image(a.mountpoint / "disk.img", 8 * MIB)
    wait_in_sync(a.store, "backup")
    for node in (a, b):
        image = node.store / "disk.img"
        assert cached_bytes(image) == len(data), f"{node.name}: {image}"
    assert_same_manifest(a.store, b.store)
    with open(b.store / "disk.img", "rb") as f:
        assert f.read() == data


def test_reads_are_cached_in_the_mount_alone(cluster, fincore_ok):
    """What a sequential reader reads through the mount stays in the
    mount's page cache, also after the file is closed and opened again
    (fincore itself opens it), and not in the store's: its large reads
    drop what lies behind them, so that the bytes are cached once."""
    a = cluster.mount("primary")
    data = write_image(a.mountpoint / "disk.img", 8 * MIB)
    image = a.store / "disk.img"
    subprocess.run(["sync"], check=True)
    store_fd = os.open(image, os.O_RDONLY)
    os.posix_fadvise(store_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(store_fd)
    subprocess.run(["sh", "-c", "echo 1 >/proc/sys/vm/drop_caches"], check=True)
    assert cached_bytes(a.mountpoint / "disk.img") == 0
    with open(a.mountpoint / "disk.img", "rb") as f:
        assert f.read() == data
    assert cached_bytes(a.mountpoint / "disk.img") == len(data), \
        "reopening the file dropped the mount's cache"
    # The kernel drops the pages behind a read as best effort (not a page
    # it cannot lock at once, as when the mount's threads read side by
    # side): a few may stay, seen as up to 256 KiB of 8 MiB here.
    residue = MIB
    wait_until(lambda: cached_bytes(image) <= residue, 10,
               f"the store to hold at most {residue} bytes of {image} "
               f"(has {cached_bytes(image)} bytes cached)")
    with open(a.mountpoint / "disk.img", "rb") as f:  # from the mount's cache
        assert f.read() == data
    assert cached_bytes(a.mountpoint / "disk.img") == len(data)


def test_a_resync_leaves_the_store_uncached(cluster, fincore_ok):
    """The ranges a resync reads are where the application writes: left in
    the store's cache (read-ahead's large folios), they would make its small
    writes write back whole folios."""
    b = cluster.serve("backup")
    a = cluster.mount("primary", peers=[b])
    wait_in_sync(a.store, "backup")
    write_image(a.mountpoint / "disk.img", 16 * MIB)
    wait_in_sync(a.store, "backup")
    r = mirrorfs("fracture", a.store, "backup")
    assert r.returncode == 0, r.stderr
    wait_peer_state(a.store, "backup", "fractured", timeout=10)
    fd = os.open(a.mountpoint / "disk.img", os.O_WRONLY)
    try:
        for i in range(64):  # 4 MiB of damage scattered over the file
            off = (i * 4099 * 61) % (16 * MIB - 64 * 1024) & ~4095
            os.pwrite(fd, os.urandom(64 * 1024), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    image = a.store / "disk.img"
    store_fd = os.open(image, os.O_RDONLY)
    os.posix_fadvise(store_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(store_fd)
    wait_until(lambda: cached_bytes(image) <= MIB, 10, f"{image} to leave the cache")

    r = mirrorfs("sync", a.store, "--peer", "backup", "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert cached_bytes(image) <= MIB, \
        f"the resync left {cached_bytes(image)} bytes of {image} in the store's cache"
    assert_same_manifest(a.store, b.store)
