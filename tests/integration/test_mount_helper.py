"""packaging/mount.mirrorfs, the mount(8) helper, as an fstab line uses it:
options in, the `mirrorfs mount` command line out, a real mount."""

import os

from conftest import (REPO, check_mirror_then_umount, free_endpoint, is_mounted,
                      mirrorfs_bin, run, status_json)

HELPER = REPO / "packaging" / "mount.mirrorfs"


def helper(*args):
    env = dict(os.environ, MIRRORFS_BIN=mirrorfs_bin())
    return run(["bash", HELPER, *map(str, args)], env=env)


def mount_options(mountpoint):
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return fields[3].split(",")
    return None


def test_fstab_options_become_a_mirrored_mount(cluster):
    backup = cluster.serve("backup")
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    listen = free_endpoint()
    # What mount(8) passes for the fstab line
    #   STORE MNT mirrorfs name=a,listen=..,peer=backup=..,_netdev,... 0 0
    options = ",".join([
        "defaults", "name=a", f"listen={listen}", f"peer=backup={backup.endpoint}",
        "mode=sync", "peer-timeout=3", "_netdev", "nofail", "x-systemd.automount",
        "allow_other",
    ])
    r = helper(store, mnt, "-o", options)
    assert r.returncode == 0, r.stderr
    assert is_mounted(mnt), f"the helper returned 0 but {mnt} is not mounted"

    status = status_json(store)
    assert status["node"] == "a"
    assert status["mode"] == "sync"
    assert status["mountpoint"] == str(mnt)
    assert [p["name"] for p in status["peers"]] == ["backup"]
    # Options that are not mirrorfs' go to FUSE; mount(8)'s own do not.
    opts = mount_options(mnt)
    assert "allow_other" in opts, opts
    assert not any(o.startswith(("_netdev", "x-", "nofail")) for o in opts), opts

    # umount(8) stops the primary cleanly.
    check_mirror_then_umount(store, mnt, backup, "disk.img", 3 << 20)
    cluster.stop(backup)


def test_fake_mount_prints_the_command_and_mounts_nothing(cluster):
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    r = helper(store, mnt, "-f", "-o",
               "name=a,peer=b=tcp://127.0.0.1:7790,cached-writes,busy-poll=50,ro,noauto")
    assert r.returncode == 0, r.stderr
    assert (f"mount.mirrorfs: {mirrorfs_bin()} mount {store} {mnt} --name a "
            f"--peer b=tcp://127.0.0.1:7790 --cached-writes --busy-poll 50 -o ro") in r.stderr, r.stderr
    assert not is_mounted(mnt)
    assert not (store / ".mirrorfs").exists(), "a fake mount must not touch the store"


def test_bad_options_fail_with_mirrorfs_message_and_mount_nothing(cluster):
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    r = helper(store, mnt, "-o", "name=a,mode=fastest")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "mode" in r.stderr and "fastest" in r.stderr, r.stderr
    assert not is_mounted(mnt)

    r = helper(store)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "usage: mount.mirrorfs" in r.stderr
