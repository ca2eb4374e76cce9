"""VM images the way qemu writes them: a qcow2 created through the mount,
written with O_DIRECT (cache=none), with flush-per-write (directsync,
writethrough) and with O_DSYNC; the peer's copy passes `qemu-img check` and
`qemu-img compare` against the primary's."""

import os
import shutil

import pytest

from conftest import assert_same_manifest, run, sha256_file, wait_in_sync

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed (apt-get install qemu-utils)")

MiB = 1 << 20


def qemu_io(image, cache, *commands, fmt="qcow2", readonly=False):
    args = ["qemu-io", "-f", fmt, "-t", cache]
    if readonly:
        args.append("-r")
    for c in commands:
        args += ["-c", c]
    r = run(args + [image], timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(args)} {image}: exit {r.returncode}\n{out}"
    assert "failed" not in out.lower(), f"{' '.join(args)} {image}:\n{out}"
    return out


def qemu_img(*args):
    r = run(["qemu-img", *args], timeout=300)
    assert r.returncode == 0, f"qemu-img {' '.join(map(str, args))}: exit {r.returncode}\n" \
                              f"{r.stdout}{r.stderr}"
    return r.stdout


def test_qemu_images(pair):
    cluster, primary, backup = pair
    mnt = primary.mountpoint
    image = mnt / "vm.qcow2"

    qemu_img("create", "-q", "-f", "qcow2", image, "64M")
    # cache=none: O_DIRECT through FUSE.
    qemu_io(image, "none", "write -P 0xab 0 4M", "write -P 0xcd 8M 1M", "flush")
    # directsync: O_DIRECT plus a flush after every write.
    qemu_io(image, "directsync", "write -P 0xef 16M 512k", "write -P 0x12 20M 4k")
    # writethrough: page cache plus a flush after every write; a zero write and
    # a discard too.
    qemu_io(image, "writethrough", "write -P 0x34 24M 3M", "write -z 0 64k",
            "discard 8M 64k")
    # Read it all back through the mount, O_DIRECT.
    qemu_io(image, "none", "read -P 0 0 64k", "read -P 0xab 64k 4032k",
            "read -P 0xef 16M 512k", "read -P 0x12 20M 4k", "read -P 0x34 24M 3M",
            readonly=True)

    # qemu-img convert to a raw image, O_DIRECT on both ends.
    raw = mnt / "vm.raw"
    qemu_img("convert", "-t", "none", "-T", "none", "-f", "qcow2", "-O", "raw", image, raw)

    # O_DSYNC writes into the raw image.
    fd = os.open(raw, os.O_WRONLY | os.O_DSYNC)
    try:
        for i in range(16):
            os.pwrite(fd, bytes([0x50 + i]) * 65536, 40 * MiB + i * 131072)
    finally:
        os.close(fd)
    qemu_io(raw, "none", f"read -P 0x5f {40 * MiB + 15 * 131072} 64k", fmt="raw", readonly=True)

    wait_in_sync(primary.store, "backup")
    assert_same_manifest(primary.store, backup.store)

    peer_image = backup.store / "vm.qcow2"
    qemu_img("check", "-U", "-f", "qcow2", peer_image)
    out = qemu_img("compare", "-U", "-f", "qcow2", "-F", "qcow2", primary.store / "vm.qcow2",
                   peer_image)
    assert "identical" in out.lower(), out
    qemu_img("compare", "-U", "-f", "raw", "-F", "raw", primary.store / "vm.raw",
             backup.store / "vm.raw")
    assert sha256_file(backup.store / "vm.raw") == sha256_file(raw)
