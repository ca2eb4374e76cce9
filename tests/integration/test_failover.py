"""Failover and failback with the example scripts (packaging/examples).

a is primary (with --listen), b its secondary, both on loopback. a dies
(SIGKILL) with writes in flight that never reached b (the link between them
is cut first: a TCP relay turned black hole); b takes over with
failover.sh (`mirrorfs promote`) and goes on writing; a comes back as a
secondary with failback.sh, which resyncs it from b: what a wrote that b
never had is undone on a, and every store ends identical to b's view. Then
failback.sh switches the roles back in a planned way (demote b, promote a).
"""

import os
import socket
import subprocess
import threading
import time

from conftest import (
    adopt,
    CLI_SECONDS, READY_SECONDS, REPO, assert_same_manifest, kill9,
    manifest_diff, mirrorfs_bin, peer_status, run, sha256_file,
    status_json, store_manifest, wait_flushed, wait_in_sync, wait_peer_state,
    wait_until)

KiB = 1024
MiB = 1024 * KiB
EXAMPLES = REPO / "packaging" / "examples"
# a's peer timeout: long enough that a is killed before it gives up on the
# stopped b (so it neither logs b as lost nor starts a new generation).
A_PEER_TIMEOUT = 6.0


class LinkProxy:
    """A TCP relay standing for the network between a and b. `cut()` turns
    it into a black hole (bytes are read and dropped, connections stay
    open: a partition, not a reset); `heal()` closes every connection made
    so far and forwards again."""

    def __init__(self, target_endpoint):
        host, port = target_endpoint.rsplit("//", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_ = False
        self.closed = False
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if not self.cut_:
                    dst.sendall(data)
        except OSError:
            pass
        if not self.cut_:      # a partition does not pass the close on
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drop_connections(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self):
        self.cut_ = True

    def heal(self):
        self._drop_connections()
        self.cut_ = False

    def close(self):
        self.closed = True
        self.listener.close()
        self._drop_connections()



def run_script(script, *args, timeout=CLI_SECONDS * 2, **env):
    environ = dict(os.environ, MIRRORFS_BIN=mirrorfs_bin(), CHECK_INTERVAL="0.2",
                   **{k: str(v) for k, v in env.items()})
    r = run(["bash", EXAMPLES / script, *args], timeout=timeout, env=environ)
    return r


def describe(r):
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def primary_entry(store):
    """The secondary's peers[] entry for its primary."""
    peers = [p for p in status_json(store).get("peers", []) if p.get("role") == "primary"]
    return peers[0] if peers else None


def lazy_unmount(path):
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, timeout=20)


def write_at(path, data, offset):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_failover_then_failback_undoes_the_dead_primarys_last_writes(cluster):
    b = cluster.serve("b")
    link = LinkProxy(b.endpoint)     # a reaches b through it
    try:
        run_failover_cycle(cluster, a_peers=[("b", link.endpoint)], b=b, link=link)
    finally:
        link.close()


def run_failover_cycle(cluster, a_peers, b, link):
    a = cluster.mount("a", peers=a_peers, listen=True,
                      extra=["--peer-timeout", str(A_PEER_TIMEOUT)])
    wait_peer_state(a.store, "b", "connected")
    a_mnt = a.mountpoint

    # --- data written while both are up ----------------------------------
    img = a.mountpoint / "base.img"
    with open(img, "wb") as f:
        f.write(os.urandom(16 * MiB))
    (a.mountpoint / "dir").mkdir()
    (a.mountpoint / "dir" / "small.txt").write_bytes(b"written by a while mirrored\n")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store, "stores before the outage")
    assert primary_entry(b.store)["name"] == "a"

    # --- a's last writes: the link is cut, none of them reaches b ---------
    link.cut()
    errors, started = [], threading.Barrier(9)

    def writer(i):
        started.wait()
        try:
            write_at(img, os.urandom(MiB), (2 * i + 1) * MiB)   # odd MiBs
        except OSError as e:   # the daemon dies under us: expected
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    started.wait()
    # The writes are applied locally first, then wait for b's answer.
    base_before = sha256_file(b.store / "base.img")
    wait_until(lambda: sha256_file(a.store / "base.img") != base_before, 5,
               "a's last writes to reach a's store")
    time.sleep(0.5)
    peer = peer_status(a.store, "b")
    assert peer["state"] == "connected", \
        f"a gave up on b before it was killed (the test needs a longer --peer-timeout): {peer}"
    kill9(a)
    lazy_unmount(a.mountpoint)
    for t in threads:
        t.join(10)
    a_dead = store_manifest(a.store)

    wait_until(lambda: (primary_entry(b.store) or {}).get("state") == "disconnected",
               READY_SECONDS, "b to see its primary a gone")
    b_before = store_manifest(b.store)
    assert a_dead["base.img"] != b_before["base.img"], \
        "b holds a's unacknowledged writes: nothing for the failback to undo"
    assert status_json(b.store)["consistent"] is True

    # --- failover on b ----------------------------------------------------
    b_mnt = cluster.dir("b.mnt")
    r = run_script("failover.sh", b.store, b_mnt)
    assert r.returncode == 0, f"failover.sh: {describe(r)}"
    assert f"{b.store} is now primary, mounted at {b_mnt}" in r.stdout, describe(r)
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    doc = status_json(b.store)
    assert doc["role"] == "primary" and doc["mountpoint"] == str(b_mnt), doc
    peer_a = peer_status(b.store, "a")
    assert peer_a is not None, f"the promoted b does not know the old primary a: {doc['peers']}"
    assert peer_a["endpoint"] == a.endpoint and peer_a["state"] != "connected", peer_a

    # The data as b had it, then b's own writes as primary.
    assert store_manifest(b.store) == b_before
    write_at(b_mnt / "base.img", b"B" * (64 * KiB), 0)
    write_at(b_mnt / "base.img", b"b" * 1000, 3 * MiB + 12345)   # inside a's lost write
    (b_mnt / "after-failover.txt").write_bytes(b"written by b as primary\n")
    os.rename(b_mnt / "dir" / "small.txt", b_mnt / "dir" / "renamed.txt")
    b_view = store_manifest(b.store)
    with open(b_mnt / "base.img", "rb") as f:
        b_image = f.read()

    # --- failback of a as secondary --------------------------------------
    r = run_script("failback.sh", a.store, a.endpoint, b.store)
    assert r.returncode == 0, f"failback.sh: {describe(r)}"
    a = adopt(cluster, "a", "serve", a.store, None, a.endpoint)
    wait_in_sync(b.store, "a", timeout=10)
    assert status_json(a.store)["consistent"] is True
    got = assert_same_manifest(b.store, a.store, "stores after the failback")
    assert got == b_view, f"b's data changed during the failback:\n{manifest_diff(b_view, got)}"
    with open(a.store / "base.img", "rb") as f:
        assert f.read() == b_image, "a's copy of base.img is not b's"

    # --- planned switch back: demote b, promote a --------------------------
    link.heal()     # a mirrors to b through the link again
    r = run_script("failback.sh", a.store, a.endpoint, b.store, a_mnt)
    assert r.returncode == 0, f"failback.sh (switch back): {describe(r)}"
    assert f"{a.store} is now primary, mounted at {a_mnt}" in r.stdout, describe(r)
    wait_until(lambda: not a.alive() and not b.alive(), READY_SECONDS,
               "the old daemons of a and b to exit")
    a = adopt(cluster, "a", "promote", a.store, a_mnt, a.endpoint)
    b = adopt(cluster, "b", "serve", b.store, None, b.endpoint)
    assert status_json(a.store)["role"] == "primary"
    assert status_json(b.store)["role"] == "secondary"
    wait_peer_state(a.store, "b", "connected")
    (a.mountpoint / "after-failback.txt").write_bytes(b"a is primary again\n")
    write_at(a.mountpoint / "base.img", b"A" * 4096, 5 * MiB)
    wait_flushed(a.store)
    final = assert_same_manifest(a.store, b.store, "stores after the switch back")
    assert set(final) - set(b_view) == {"after-failback.txt"}


def test_failover_script_refuses_while_the_primary_is_alive(cluster):
    b = cluster.serve("b")
    link = LinkProxy(b.endpoint)
    try:
        a = cluster.mount("a", peers=[("b", link.endpoint)], listen=True)
        wait_peer_state(a.store, "b", "connected")
        b_mnt = cluster.dir("b.mnt")

        # Connected: the script does not even run the health check.
        r = run_script("failover.sh", b.store, b_mnt)
        assert r.returncode == 1, f"failover.sh promoted next to a live primary: {describe(r)}"
        assert "still replicates to this node" in r.stderr, describe(r)

        # Partitioned: b no longer hears a, but a still answers on its
        # endpoint (the default health check) or a given check says up.
        link.cut()
        wait_until(lambda: (primary_entry(b.store) or {}).get("state") == "disconnected",
                   READY_SECONDS, "b to lose its primary behind the cut link")
        r = run_script("failover.sh", b.store, b_mnt)
        assert r.returncode == 1, f"failover.sh promoted while a answers: {describe(r)}"
        assert "succeeded: primary a is up" in r.stderr, describe(r)
        r = run_script("failover.sh", b.store, b_mnt, "true")
        assert r.returncode == 1, describe(r)
        assert "health check 'true' succeeded" in r.stderr, describe(r)

        # Wrong usage.
        r = run_script("failover.sh", b.store)
        assert r.returncode == 2 and "usage:" in r.stderr, describe(r)

        doc = status_json(b.store)
        assert doc["role"] == "secondary", doc
        assert b.alive() and not os.path.ismount(b_mnt)
        assert status_json(a.store)["role"] == "primary"
    finally:
        link.close()
