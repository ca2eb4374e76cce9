"""The command line as scripts use it (DESIGN.md "Command line"), where a
black-box audit found it wanting: a stop or demote that cannot be carried out
leaves the node as it was; promote's --mount is optional; a relative key path
works for a daemon; peer names and endpoints are checked; the messages of a
misspelt command, of libfuse and of the daemon say what is wrong."""

import json
import os
import socket
import time

from conftest import (adopt, assert_same_manifest, free_endpoint, is_mounted,
                      mirrorfs, peer_status, status_json, wait_flushed,
                      wait_in_sync, wait_until)


def assert_exit(r, code, *mentions):
    assert r.returncode == code, \
        f"exit {r.returncode}, want {code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    for m in mentions:
        assert str(m) in r.stderr, f"stderr does not mention {m!r}:\n{r.stderr}"


def in_sync_pair(cluster):
    """Primary a mounted with its secondary b, in sync. Returns (a, b)."""
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b])
    wait_in_sync(a.store, "b")
    return a, b


def test_stop_refuses_a_busy_mount_and_leaves_it_mirroring(cluster):
    a, b = in_sync_pair(cluster)
    path = a.mountpoint / "open.img"
    path.write_bytes(b"before\n")
    fd = os.open(path, os.O_RDWR)
    try:
        t0 = time.monotonic()
        r = mirrorfs("stop", a.store)
        assert time.monotonic() - t0 < 10, "stop waited for the open file"
        assert_exit(r, 1, "busy", "fuser -vm")
        assert r.stderr.startswith("mirrorfs: "), r.stderr
        # Nothing changed: still mounted, still served, still mirrored, and
        # a file created now lands in the mount, not in the directory under it.
        assert a.alive() and is_mounted(a.mountpoint)
        os.pwrite(fd, b"after the refused stop\n", 0)
        (a.mountpoint / "new.txt").write_bytes(b"new\n")
    finally:
        os.close(fd)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    r = mirrorfs("stop", a.store)
    assert_exit(r, 0)
    a.wait_exit()
    assert not is_mounted(a.mountpoint)
    assert os.listdir(a.mountpoint) == [], "files landed under the mountpoint"


def test_a_refused_demote_leaves_the_primary_mounted(cluster):
    a, b = in_sync_pair(cluster)

    r = mirrorfs("demote", a.store, "--listen", "tcp://0.0.0.0:7790")
    assert_exit(r, 1, "beyond loopback")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = mirrorfs("demote", a.store, "--listen", f"tcp://127.0.0.1:{port}")
        assert_exit(r, 1, "in use")
    finally:
        taken.close()

    doc = status_json(a.store)
    assert doc["role"] == "primary" and doc["mountpoint"] == str(a.mountpoint), doc
    assert a.alive() and is_mounted(a.mountpoint)
    (a.mountpoint / "still.txt").write_bytes(b"still the primary\n")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)


def test_promote_without_mount_reuses_the_stores_last_mountpoint(cluster):
    a, b = in_sync_pair(cluster)
    (a.mountpoint / "f.txt").write_bytes(b"written as primary\n")
    wait_flushed(a.store)
    mnt = a.mountpoint

    # a goes down to secondary and comes back up: promote without --mount
    # mounts where a was mounted before.
    r = mirrorfs("demote", a.store)
    assert_exit(r, 0)
    a.wait_exit()
    a = adopt(cluster, "a", "demote", a.store, None, a.endpoint)
    assert status_json(a.store)["role"] == "secondary"
    r = mirrorfs("promote", a.store)
    assert_exit(r, 0)
    assert str(mnt) in r.stdout, r.stdout
    a.wait_exit()
    a = adopt(cluster, "a", "promote", a.store, mnt, a.endpoint)
    doc = status_json(a.store)
    assert doc["role"] == "primary" and doc["mountpoint"] == str(mnt), doc
    assert (mnt / "f.txt").read_bytes() == b"written as primary\n"
    wait_in_sync(a.store, "b")

    # b was never mounted: no mountpoint to reuse; exit 1, nothing changed.
    r = mirrorfs("promote", b.store, "--force")
    assert_exit(r, 1, "--mount")
    assert b.alive() and status_json(b.store)["role"] == "secondary"


def test_relative_key_paths_work_for_a_daemon(cluster):
    keys = cluster.dir("keys")
    for name in ("a", "b"):
        r = mirrorfs("keygen", keys / f"{name}.key")
        assert_exit(r, 0)
    pub = {n: (keys / f"{n}.key.pub").read_text().strip() for n in ("a", "b")}
    (keys / "auth_a").write_text(f"b {pub['b']}\n")
    (keys / "auth_b").write_text(f"a {pub['a']}\n")
    b_store, a_store, a_mnt = (cluster.dir(n) for n in ("b.st", "a.st", "a.mt"))
    b_ep = free_endpoint()
    cwd = os.getcwd()
    os.chdir(keys.parent)
    try:
        # Daemonized (no -f): the daemon runs in "/", the paths are relative.
        r = mirrorfs("serve", b_store, "--listen", b_ep, "--name", "b",
                     "--key", "keys/b.key", "--authorized-keys", "keys/auth_b")
        assert_exit(r, 0)
        b = adopt(cluster, "b", "serve", b_store, None, b_ep)
        r = mirrorfs("mount", a_store, a_mnt, "--name", "a", "--peer", f"b={b_ep}",
                     "--key", "keys/a.key", "--authorized-keys", "keys/auth_a")
        assert_exit(r, 0)
        a = adopt(cluster, "a", "mount", a_store, a_mnt, None)
    finally:
        os.chdir(cwd)
    wait_in_sync(a.store, "b")
    assert status_json(a.store)["secure"] is True
    (a_mnt / "secret.txt").write_bytes(b"over CURVE\n")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)
    # SIGHUP re-reads the authorized keys from the same (absolute) path.
    b.signal(1)
    wait_until(lambda: "authorized keys reloaded" in b.log(), 10, "b to reload its keys")
    assert b.alive()


def test_peers_that_name_this_node_or_repeat_are_refused(cluster, workdir):
    store, mnt = cluster.dir("x.store"), cluster.dir("x.mnt")
    ep = free_endpoint()
    other = free_endpoint()
    for peers, mention in (
            (["--peer", f"x={other}"], "own --name"),
            (["--peer", f"p={other}", "--peer", "p=" + free_endpoint()],
             "given twice"),
            (["--peer", f"p={other}", "--peer", f"q={other}"], "same endpoint"),
            (["--peer", f"p={ep}"], "own --listen")):
        r = mirrorfs("mount", store, mnt, "--name", "x", "--listen", ep, *peers)
        assert_exit(r, 2, mention)
        assert "usage" in r.stderr.lower()
        assert not is_mounted(mnt)

    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b])
    r = mirrorfs("peer", "add", a.store, "a", free_endpoint())
    assert_exit(r, 1, "own name")
    r = mirrorfs("peer", "add", a.store, "c", b.endpoint)
    assert_exit(r, 1, "peer b already has endpoint")
    assert [p["name"] for p in status_json(a.store)["peers"]] == ["b"]


def test_resolve_discard_local_is_refused_on_a_following_secondary(cluster):
    a, b = in_sync_pair(cluster)
    r = mirrorfs("resolve", b.store, "--discard-local")
    assert_exit(r, 1, "no split brain")
    assert not (b.store / ".mirrorfs" / "recovery").exists()
    assert status_json(b.store)["recovery_folder"] is None


def test_resync_figures_are_zero_once_in_sync(cluster):
    a, b = in_sync_pair(cluster)
    r = mirrorfs("fracture", a.store, "b")
    assert_exit(r, 0)
    (a.mountpoint / "missed.img").write_bytes(os.urandom(1 << 20))
    r = mirrorfs("sync", a.store, "--wait", "--timeout", "60")
    assert_exit(r, 0)
    wait_until(lambda: peer_status(a.store, "b")["in_sync"], 10, "b in sync")
    assert peer_status(a.store, "b")["resync"] == \
        {"total_bytes": 0, "done_bytes": 0, "bytes_per_second": 0}
    primary = [p for p in status_json(b.store)["peers"] if p["name"] == "a"]
    assert primary and primary[0]["resync"]["done_bytes"] == 0, primary
    assert_same_manifest(a.store, b.store)


def test_fstab_atime_options_mount_and_the_source_is_the_store(cluster):
    a = cluster.mount("a", extra=["-o", "relatime,nodiratime,lazytime"])
    with open("/proc/self/mounts") as f:
        entry = [line.split() for line in f if line.split()[1] == str(a.mountpoint)]
    assert entry and entry[0][0] == str(a.store) and entry[0][2] == "fuse.mirrorfs", entry


def test_messages_name_the_problem(cluster, workdir):
    r = mirrorfs("frobnicate")
    assert_exit(r, 2, "unknown command 'frobnicate'")
    r = mirrorfs("peer", "frobnicate", str(workdir))
    assert_exit(r, 2, "unknown command 'frobnicate'")
    r = mirrorfs("sync", str(workdir), "--wait", "--timeout", "0")
    assert_exit(r, 2, "seconds above 0")
    assert len(r.stderr.splitlines()[0]) < 120, r.stderr
    # libfuse's own reason reaches the user of a daemonized mount.
    store, mnt = cluster.dir("s"), cluster.dir("m")
    r = mirrorfs("mount", store, mnt, "-o", "no_such_fuse_option")
    assert_exit(r, 1, "no_such_fuse_option", "unknown option")
    assert not is_mounted(mnt)


def test_peer_list_on_a_secondary_shows_its_primary_as_status_does(cluster):
    a, b = in_sync_pair(cluster)
    (a.mountpoint / "f").write_bytes(b"x")
    wait_flushed(a.store)
    r = mirrorfs("peer", "list", b.store, "--json")
    assert_exit(r, 0)
    listed = {p["name"]: p for p in json.loads(r.stdout)}
    shown = {p["name"]: p for p in status_json(b.store)["peers"]}
    assert listed["a"]["state"] == shown["a"]["state"] == "connected", (listed, shown)
    assert listed["a"]["in_sync"] is shown["a"]["in_sync"] is True, (listed, shown)
