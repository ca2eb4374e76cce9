"""Role changes and peer management (issue 5): `promote` refuses a copy that
is mid-resync (guarantee 7) and a secondary whose primary is still
connected; `demote` refuses a busy mount and names `fuser -vm`; `peer
add/list/remove` (remove refuses a peer that is not in sync unless
--force); fracture and rejoin."""

import grp
import json
import os
import subprocess
import time

from conftest import (
    adopt,
    READY_SECONDS, assert_same_manifest, assert_sync_wait, is_mounted,
    kill9, mirrorfs, peer_status, restart_serve, status_json,
    wait_flushed, wait_in_sync, wait_peer_state, wait_until)

KiB = 1024
MiB = 1024 * KiB



def out(r):
    return f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def primary_entry(store):
    peers = [p for p in status_json(store).get("peers", []) if p.get("role") == "primary"]
    return peers[0] if peers else None


def peer_list(store):
    r = mirrorfs("peer", "list", store, "--json")
    assert r.returncode == 0, f"peer list --json: {out(r)}"
    doc = json.loads(r.stdout)
    assert isinstance(doc, list), r.stdout
    return {p["name"]: p for p in doc}


def test_promote_refuses_an_inconsistent_copy_unless_forced(cluster):
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True, extra=["--resync-rate", "256K"])
    wait_peer_state(a.store, "b", "connected")
    (a.mountpoint / "small.txt").write_bytes(b"before the outage\n")
    wait_flushed(a.store)

    # b misses 8 MiB; its resync at 256 KiB/s takes ~32 s.
    kill9(b)
    wait_peer_state(a.store, "b", ("disconnected", "connecting"), timeout=15)
    with open(a.mountpoint / "big.img", "wb") as f:
        f.write(os.urandom(8 * MiB))
    b = restart_serve(cluster, b)
    r = mirrorfs("sync", a.store, "--peer", "b")
    assert r.returncode == 0, f"sync: {out(r)}"
    wait_until(lambda: status_json(b.store)["consistent"] is False, READY_SECONDS,
               "b to report consistent: false during its resync")
    wait_until(lambda: (peer_status(a.store, "b")["resync"]["done_bytes"] or 0) > 0,
               READY_SECONDS, "the resync to b to make progress")
    # The copy shows the resync's progress too, rate included.
    wait_until(lambda: ((primary_entry(b.store) or {}).get("resync") or {}).get(
        "done_bytes", 0) > 0,
               READY_SECONDS, "b to show the resync's progress")
    resync = primary_entry(b.store)["resync"]
    assert resync["total_bytes"] >= 8 * MiB, resync
    assert 0 < resync["bytes_per_second"] < 4 * MiB, resync  # at 256 KiB/s

    # The primary dies mid-resync: b stays inconsistent.
    kill9(a)
    subprocess.run(["fusermount3", "-uz", str(a.mountpoint)], capture_output=True, timeout=20)
    wait_until(lambda: (primary_entry(b.store) or {}).get("state") == "disconnected",
               READY_SECONDS, "b to see its primary gone")
    doc = status_json(b.store)
    assert doc["consistent"] is False, f"b's copy is mid-resync but says consistent: {doc}"

    b_mnt = cluster.dir("b.mnt")
    r = mirrorfs("promote", b.store, "--mount", b_mnt)
    assert r.returncode == 1, f"promote of an inconsistent copy: {out(r)}"
    assert "inconsistent" in r.stderr and "--force" in r.stderr, out(r)
    assert b.alive() and not is_mounted(b_mnt)
    assert status_json(b.store)["role"] == "secondary"

    r = mirrorfs("promote", b.store, "--mount", b_mnt, "--force")
    assert r.returncode == 0, f"promote --force: {out(r)}"
    assert f"{b.store} is now primary, mounted at {b_mnt}" in r.stdout, out(r)
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    assert is_mounted(b_mnt)
    assert status_json(b.store)["role"] == "primary"
    assert (b_mnt / "small.txt").read_bytes() == b"before the outage\n"


def test_promote_refuses_while_the_primary_is_connected(cluster):
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    b_mnt = cluster.dir("b.mnt")

    r = mirrorfs("promote", b.store, "--mount", b_mnt)
    assert r.returncode == 1, f"promote next to a connected primary: {out(r)}"
    assert "primary a" in r.stderr and "connected" in r.stderr, out(r)
    # --mount is optional (DESIGN.md): the store's last mountpoint as
    # primary; b has none, so this fails (1, not 2: the line was right).
    r = mirrorfs("promote", b.store)
    assert r.returncode == 1 and "--mount" in r.stderr, f"promote without --mount: {out(r)}"
    r = mirrorfs("promote", a.store, "--mount", b_mnt)
    assert r.returncode == 1 and "not a secondary" in r.stderr, f"promote of a primary: {out(r)}"

    assert b.alive() and not is_mounted(b_mnt)
    assert status_json(b.store)["role"] == "secondary"
    (a.mountpoint / "still.txt").write_bytes(b"still mirrored\n")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)


def test_promote_right_after_the_primary_stops(cluster):
    """`stop` on the primary followed at once by `promote` on its secondary,
    as a hand-run switch-over does. A clean stop says goodbye to the peers
    (wire frame `goodbye`): the secondary sees its primary gone at once, not
    after its peer timeout (8 s here), and promote does not wait."""
    b = cluster.serve("b", extra=["--peer-timeout", "8"])
    a = cluster.mount("a", peers=[b], listen=True)
    wait_in_sync(a.store, "b")
    (a.mountpoint / "before.txt").write_bytes(b"written on a\n")
    wait_flushed(a.store)
    assert primary_entry(b.store)["state"] == "connected"

    r = mirrorfs("stop", a.store)
    assert r.returncode == 0, f"stop: {out(r)}"
    wait_until(lambda: primary_entry(b.store)["state"] == "disconnected", 3,
               "the secondary to see its primary gone after the primary's goodbye")
    assert "left: the primary is stopping" in b.log()
    b_mnt = cluster.dir("b.mnt")
    r = mirrorfs("promote", b.store, "--mount", b_mnt)
    assert r.returncode == 0, f"promote right after the primary stopped: {out(r)}"
    assert "waiting" not in r.stderr, f"promote waited for a primary that said goodbye: {out(r)}"
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    assert (b_mnt / "before.txt").read_bytes() == b"written on a\n"


def test_promote_right_after_the_primary_dies_waits_out_the_timeout(cluster):
    """A primary killed says no goodbye: its secondary still sees it for up
    to its peer timeout, and promote waits that out instead of refusing."""
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_in_sync(a.store, "b")
    (a.mountpoint / "before.txt").write_bytes(b"written on a\n")
    wait_flushed(a.store)

    kill9(a)
    b_mnt = cluster.dir("b.mnt")
    r = mirrorfs("promote", b.store, "--mount", b_mnt)
    assert r.returncode == 0, f"promote right after the primary died: {out(r)}"
    assert "primary a is connected; waiting" in r.stderr, out(r)
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    assert (b_mnt / "before.txt").read_bytes() == b"written on a\n"


def test_demote_refuses_a_busy_mount_then_works(cluster):
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    a_mnt = a.mountpoint

    fd = os.open(a_mnt / "open.img", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        r = mirrorfs("demote", a.store)
        assert r.returncode == 1, f"demote of a busy mount: {out(r)}"
        assert f"fuser -vm {a_mnt}" in r.stderr, out(r)
        # Nothing changed: still primary, mounted, mirroring.
        assert a.alive() and is_mounted(a_mnt)
        assert status_json(a.store)["role"] == "primary"
        os.pwrite(fd, b"y" * 4096, 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store, "stores after the refused demote")

    r = mirrorfs("demote", b.store)
    assert r.returncode == 1 and "not a primary" in r.stderr, f"demote of a secondary: {out(r)}"

    r = mirrorfs("demote", a.store)
    assert r.returncode == 0, f"demote: {out(r)}"
    assert f"{a.store} is now secondary, serving {a.endpoint}" in r.stdout, out(r)
    a.wait_exit()
    a = adopt(cluster, "a", "demote", a.store, None, a.endpoint)
    assert not is_mounted(a_mnt)
    doc = status_json(a.store)
    assert doc["role"] == "secondary" and doc["mountpoint"] is None, doc


def test_role_changes_keep_the_nodes_options(cluster):
    """promote and demote restart the daemon: what `serve` was told
    (--control-group, --cached-writes, --peer-timeout, --busy-poll) still
    holds for the primary it becomes, and for the secondary it becomes
    again."""
    gid = grp.getgrnam("daemon").gr_gid  # in every Debian base system
    b = cluster.serve("b", extra=["--control-group", "daemon", "--cached-writes",
                                  "--peer-timeout", "7.5", "--busy-poll", "0"])
    sock = b.store / ".mirrorfs" / "control.sock"
    assert os.stat(sock).st_gid == gid

    b_mnt = cluster.dir("b.mnt")
    r = mirrorfs("promote", b.store, "--mount", b_mnt)
    assert r.returncode == 0, f"promote of a lone secondary: {out(r)}"
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    assert os.stat(sock).st_gid == gid, "the promoted node lost --control-group"
    argv = open(f"/proc/{min(b.pids)}/cmdline", "rb").read().split(b"\0")
    assert b"--peer-timeout" in argv and b"7.500000" in argv, argv
    assert argv[argv.index(b"--busy-poll") + 1] == b"0", argv
    # --cached-writes: whole pages written through the mount stay in the
    # store's page cache (by default they are dropped once on disk).
    with open(b_mnt / "disk.img", "wb") as f:
        f.write(b"c" * MiB)
        os.fsync(f.fileno())
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                        str(b.store / "disk.img")], capture_output=True, text=True)
    if r.returncode == 0:  # util-linux-extra (install-deps.sh) has fincore
        assert int(r.stdout) == MiB, "the promoted node lost --cached-writes"

    r = mirrorfs("demote", b.store)
    assert r.returncode == 0, f"demote: {out(r)}"
    b.wait_exit()
    b = adopt(cluster, "b", "demote", b.store, None, b.endpoint)
    assert status_json(b.store)["role"] == "secondary"
    assert os.stat(sock).st_gid == gid, "the demoted node lost --control-group"
    argv = open(f"/proc/{min(b.pids)}/cmdline", "rb").read().split(b"\0")
    assert argv[argv.index(b"--busy-poll") + 1] == b"0", argv


def test_demote_without_an_endpoint_needs_listen(cluster):
    a = cluster.mount("a", listen=False)
    r = mirrorfs("demote", a.store)
    assert r.returncode == 2 and "--listen" in r.stderr, f"demote without endpoint: {out(r)}"
    assert is_mounted(a.mountpoint) and status_json(a.store)["role"] == "primary"


def test_peer_add_list_remove(cluster):
    b = cluster.serve("b")
    c = cluster.serve("c")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    (a.mountpoint / "data.img").write_bytes(os.urandom(MiB))
    wait_flushed(a.store)

    peers = peer_list(a.store)
    assert set(peers) == {"b"}, peers
    assert peers["b"]["endpoint"] == b.endpoint and peers["b"]["state"] == "connected", peers
    assert peers["b"]["in_sync"] is True and peers["b"]["uuid"], peers
    assert status_json(b.store)["uuid"] == peers["b"]["uuid"]

    # Bad input.
    r = mirrorfs("peer", "add", a.store, "bad name", "tcp://127.0.0.1:1")
    assert r.returncode == 2, f"peer add with a bad name: {out(r)}"
    r = mirrorfs("peer", "add", a.store, "x", "not-an-endpoint")
    assert r.returncode == 2, f"peer add with a bad endpoint: {out(r)}"
    r = mirrorfs("peer", "add", a.store, "b", c.endpoint)
    assert r.returncode == 1 and "already exists" in r.stderr, f"peer add twice: {out(r)}"
    r = mirrorfs("peer", "remove", a.store, "nosuch")
    assert r.returncode == 1 and "no peer named nosuch" in r.stderr, out(r)

    # A new peer gets a full copy.
    r = mirrorfs("peer", "add", a.store, "c", c.endpoint)
    assert r.returncode == 0, f"peer add: {out(r)}"
    wait_in_sync(a.store, "c")
    assert_same_manifest(a.store, c.store, "a and the added peer c")
    peers = peer_list(a.store)
    assert set(peers) == {"b", "c"} and peers["c"]["in_sync"] is True, peers

    # A peer that missed writes is removed too (DESIGN's `peer remove STORE
    # NAME` has no --force: a dead peer is the usual one to remove), and the
    # command says what it had missed.
    r = mirrorfs("fracture", a.store, "c")
    assert r.returncode == 0, out(r)
    wait_peer_state(a.store, "c", "fractured")
    with open(a.mountpoint / "data.img", "r+b") as f:
        f.write(b"z" * 8192)
    wait_until(lambda: peer_status(a.store, "c")["fracture_bytes"] > 0, READY_SECONDS,
               "c's fracture log to hold the write")
    r = mirrorfs("peer", "remove", a.store, "c")
    assert r.returncode == 0, f"peer remove of a peer not in sync: {out(r)}"
    assert "peer c removed while not in sync (fractured, 8.0 KiB missed)" in r.stdout, out(r)
    assert set(peer_list(a.store)) == {"b"}
    assert peer_status(a.store, "c") is None

    # An in-sync peer goes quietly; removals are remembered.
    wait_flushed(a.store)
    r = mirrorfs("peer", "remove", a.store, "b")
    assert r.returncode == 0, f"peer remove of an in-sync peer: {out(r)}"
    assert r.stdout == "peer b removed\n", out(r)
    assert peer_list(a.store) == {}
    cluster.stop(a)
    a = cluster.mount("a", store=a.store, mountpoint=a.mountpoint, listen=a.endpoint)
    assert peer_list(a.store) == {}, "removed peers came back after a restart"
    assert status_json(a.store)["peers"] == []


def test_fracture_and_rejoin(cluster):
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    (a.mountpoint / "f.img").write_bytes(os.urandom(2 * MiB))
    wait_flushed(a.store)
    r = mirrorfs("fracture", a.store, "b")
    assert r.returncode == 0, out(r)
    wait_peer_state(a.store, "b", "fractured")
    # The secondary is told: it shows its primary as fractured, not in sync.
    wait_until(lambda: (primary_entry(b.store) or {}).get("state") == "fractured",
               READY_SECONDS, "b to show its primary a as fractured")
    assert primary_entry(b.store)["in_sync"] is False
    before = status_json(b.store)
    with open(a.mountpoint / "f.img", "r+b") as f:
        f.seek(MiB)
        f.write(b"f" * 65536)
    (a.mountpoint / "new.txt").write_bytes(b"while fractured\n")
    assert peer_status(a.store, "b")["state"] == "fractured"
    assert not (b.store / "new.txt").exists(), "a fractured peer received a change"
    assert status_json(b.store)["consistent"] is before["consistent"] is True
    assert_sync_wait(a.store, peer="b", timeout=60)
    assert peer_status(a.store, "b")["in_sync"] is True
    assert_same_manifest(a.store, b.store, "stores after the rejoin")
