"""The user flow of DESIGN.md: serve, mount with --peer, copy a file in, see it
on both stores; status (human and --json); stop; fusermount3 -u; remount
without --peer mirrors to the remembered peer."""

import os
import shutil
import socket
import time

from conftest import (INTENT_EXTENT_BYTES, assert_same_manifest, free_endpoint, is_mounted,
                      mirrorfs, peer_status, restart_serve, run, sha256_file, status_json,
                      wait_in_sync, wait_peer_state)

PEER_STATES = {"connected", "connecting", "disconnected", "syncing", "fractured", "split-brain"}


def write_source_files(folder):
    """A 3 MiB + 1 byte binary file (not extent aligned) and a text file,
    outside the mount."""
    big = folder / "source.img"
    with open(big, "wb") as f:
        f.write(os.urandom((3 << 20) + 1))
    text = folder / "notes.txt"
    text.write_text("mirrorfs keeps this line on two machines.\n")
    return big, text


def copy_in(src, dst):
    """cp + fsync, through the mount."""
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def check_status_document(doc, node, store, mountpoint, peer):
    assert doc["node"] == node
    assert isinstance(doc["uuid"], str) and doc["uuid"], doc
    assert doc["role"] == "primary"
    assert os.path.realpath(doc["store"]) == os.path.realpath(store)
    assert os.path.realpath(doc["mountpoint"]) == os.path.realpath(mountpoint)
    assert doc["mode"] == "sync"
    assert doc["consistent"] is True
    assert isinstance(doc["generation"], str) and doc["generation"], doc
    intent = doc["intent"]
    assert intent["extent_bytes"] == INTENT_EXTENT_BYTES
    assert isinstance(intent["active_extents"], int) and intent["active_extents"] >= 0
    peers = doc["peers"]
    assert isinstance(peers, list) and len(peers) == 1, peers
    p = peers[0]
    assert p["name"] == peer.name
    assert p["endpoint"] == peer.endpoint
    assert p["state"] in PEER_STATES
    assert p["state"] == "connected", p
    assert p["in_sync"] is True, p
    for key in ("fracture_bytes", "fracture_extents", "pending_namespace_ops"):
        assert p[key] == 0, (key, p)
    for key in ("total_bytes", "done_bytes", "bytes_per_second"):
        assert isinstance(p["resync"][key], (int, float)), p
    assert isinstance(p["last_seen_seconds_ago"], (int, float)), p
    assert p["last_seen_seconds_ago"] >= 0


def test_user_flow(cluster):
    # The daemonizing form, exactly as a user types it.
    backup = cluster.serve("backup", foreground=False)
    primary = cluster.mount("primary", peers=[backup], foreground=False)
    wait_peer_state(primary.store, "backup", "connected")

    big, text = write_source_files(cluster.dir("src"))
    copy_in(big, primary.mountpoint / "disk.img")
    copy_in(text, primary.mountpoint / "notes.txt")

    # Sync mode: once write() and fsync() returned, the peer has the data.
    for name, src in (("disk.img", big), ("notes.txt", text)):
        want = sha256_file(src)
        assert sha256_file(primary.mountpoint / name) == want
        assert sha256_file(primary.store / name) == want
        assert sha256_file(backup.store / name) == want
    manifest = assert_same_manifest(primary.store, backup.store)
    assert set(manifest) == {"disk.img", "notes.txt"}
    assert_same_manifest(primary.mountpoint, primary.store, "mount and store")
    assert not (primary.mountpoint / ".mirrorfs").exists(), "the mount must hide .mirrorfs"

    wait_in_sync(primary.store, "backup")
    check_status_document(status_json(primary.store), "primary", primary.store,
                          primary.mountpoint, backup)

    secondary = status_json(backup.store)
    assert secondary["role"] == "secondary"
    assert secondary["node"] == "backup"

    # Human output: short, names the node, its role and the peer.
    r = mirrorfs("status", primary.store)
    assert r.returncode == 0, r.stderr
    assert "primary" in r.stdout and "backup" in r.stdout, r.stdout
    assert not r.stdout.lstrip().startswith("{"), "human status must not be JSON"

    # Clean stop: unmounts, the daemon exits, status then fails.
    r = mirrorfs("stop", primary.store)
    assert r.returncode == 0, r.stderr
    primary.wait_exit()
    assert not is_mounted(primary.mountpoint)
    r = mirrorfs("status", primary.store)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip(), "status of a stopped node must say why on stderr"

    # The data survives on both sides.
    assert_same_manifest(primary.store, backup.store)
    cluster.stop(backup)


def test_fusermount_stops_primary(pair):
    cluster, primary, backup = pair
    (primary.mountpoint / "a.txt").write_text("before unmount\n")
    r = run(["fusermount3", "-u", primary.mountpoint])
    assert r.returncode == 0, r.stderr
    rc = primary.wait_exit()
    assert rc == 0, f"primary exit status {rc} after fusermount3 -u"
    r = mirrorfs("status", primary.store)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip()
    # The secondary is not affected and has the file.
    assert status_json(backup.store)["role"] == "secondary"
    assert_same_manifest(primary.store, backup.store)


def test_a_secondary_that_stops_says_goodbye(pair):
    """A clean stop of the secondary tells the primary (wire frame goodbye):
    the primary drops it at once, with that reason, rather than finding the
    link gone when a send fails or the peer timeout passes; its changes
    are logged and a restart brings it back in sync."""
    cluster, primary, backup = pair
    (primary.mountpoint / "a.img").write_bytes(os.urandom(1 << 20))
    wait_in_sync(primary.store, "backup")
    cluster.stop(backup)
    wait_peer_state(primary.store, "backup", ("disconnected", "connecting"), timeout=5)
    assert "it left (the secondary is stopping)" in primary.log(), primary.log()[-2000:]
    (primary.mountpoint / "b.img").write_bytes(os.urandom(1 << 20))
    assert peer_status(primary.store, "backup")["fracture_bytes"] > 0
    backup = restart_serve(cluster, backup)
    wait_in_sync(primary.store, "backup")
    assert_same_manifest(primary.store, backup.store)


def test_an_ipc_endpoint_mirrors_and_its_socket_file_goes_with_the_daemon(cluster):
    """A peer on the same host over ipc:// (a Unix socket file): the mirror
    works, a second daemon cannot take the path over, and a clean stop
    removes the socket file (ZeroMQ leaves it), so that nothing stale is
    left in, say, /run; a restart binds it again."""
    sock = cluster.root / "backup.sock"
    backup = cluster.serve("backup", listen=f"ipc://{sock}")
    assert sock.is_socket(), f"{sock} is not a socket while the peer serves"
    # A second daemon on that path is refused, as a TCP port in use would be
    # (ZeroMQ alone would replace the socket file and strand the first).
    other = cluster.dir("other.store")
    r = mirrorfs("serve", other, "--listen", f"ipc://{sock}", "--name", "other")
    assert r.returncode == 1 and "in use" in r.stderr, (r.returncode, r.stderr)
    assert not (other / ".mirrorfs" / "control.sock").exists()
    assert status_json(backup.store)["role"] == "secondary"
    primary = cluster.mount("primary", peers=[backup], listen=False)
    data = os.urandom((1 << 20) + 7)
    with open(primary.mountpoint / "disk.img", "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    wait_in_sync(primary.store, "backup")
    assert_same_manifest(primary.store, backup.store)
    cluster.stop(backup)
    assert not os.path.lexists(sock), f"{sock} left after a clean stop"
    backup = restart_serve(cluster, backup)
    assert sock.is_socket()
    wait_in_sync(primary.store, "backup")
    cluster.stop(primary)
    cluster.stop(backup)
    assert not os.path.lexists(sock)
    assert sha256_file(backup.store / "disk.img") == sha256_file(primary.store / "disk.img")


def test_mount_does_not_wait_for_a_peer_whose_node_is_down(cluster):
    """A mount waits for its peers' first connection attempt, so that the
    first write is mirrored. A peer whose node is down refuses the
    connection, and the mount comes up at once rather than after the peer
    timeout (20 s here); the peer joins when it starts."""
    endpoint = free_endpoint()
    started = time.monotonic()
    primary = cluster.mount("primary", peers=[("backup", endpoint)], foreground=False,
                            extra=["--peer-timeout", "20"])
    took = time.monotonic() - started
    assert took < 10, f"mount took {took:.1f} s with its peer down"
    peer = peer_status(primary.store, "backup")
    assert peer["state"] == "connecting" and not peer["in_sync"], peer
    (primary.mountpoint / "early.img").write_bytes(os.urandom(1 << 20))

    backup = cluster.serve("backup", listen=endpoint)
    wait_in_sync(primary.store, "backup", timeout=60)
    assert_same_manifest(primary.store, backup.store)


def test_mount_waits_one_peer_timeout_for_all_silent_peers(cluster):
    """Peers that accept the connection and never answer (a hung node)
    hold the mount for one peer timeout in all, not one per peer: the
    first connection attempts run side by side."""
    silent = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        silent.append(s)
    try:
        peers = [(f"hung{i}", f"tcp://127.0.0.1:{s.getsockname()[1]}")
                 for i, s in enumerate(silent)]
        started = time.monotonic()
        primary = cluster.mount("primary", peers=peers, foreground=False,
                                extra=["--peer-timeout", "3"])
        took = time.monotonic() - started
        assert 2.5 < took < 6, f"mount took {took:.1f} s with 3 silent peers and a 3 s timeout"
        (primary.mountpoint / "a.img").write_bytes(os.urandom(1 << 16))
        for i in range(3):
            assert not peer_status(primary.store, f"hung{i}")["in_sync"]
    finally:
        for s in silent:
            s.close()


def test_fresh_secondary_shows_the_store_uuid_it_adopted(pair):
    cluster, primary, backup = pair
    store_uuid = status_json(primary.store)["store_uuid"]
    assert store_uuid
    # At once, not only after a restart; and it was made durable.
    assert status_json(backup.store)["store_uuid"] == store_uuid
    cluster.stop(backup)
    backup = restart_serve(cluster, backup)
    assert status_json(backup.store)["store_uuid"] == store_uuid


def test_remount_remembers_peer(cluster):
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    (primary.mountpoint / "first.txt").write_text("written with --peer\n")
    cluster.stop(primary)

    # Same store, same mountpoint, no --peer: the peer comes from the store.
    again = cluster.mount("primary", store=primary.store, mountpoint=primary.mountpoint)
    peer = wait_peer_state(again.store, "backup", "connected")
    assert peer["endpoint"] == backup.endpoint
    with open(again.mountpoint / "second.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    wait_in_sync(again.store, "backup")
    manifest = assert_same_manifest(again.store, backup.store)
    assert {"first.txt", "second.bin"} <= set(manifest)
