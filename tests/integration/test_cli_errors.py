"""The command line's error contract (DESIGN.md): exit 2 with a message and
the usage on stderr for a wrong command line; exit 1 with a clear message for
an operation that fails; every verb of the contract listed in --help."""

import os
import re
import socket
from pathlib import Path

import pytest

from conftest import free_endpoint, is_mounted, mirrorfs, mirrorfs_pids

VERBS = ["mount", "serve", "stop", "status", "peer", "sync", "fracture", "verify",
         "promote", "demote", "resolve", "keygen"]


def assert_usage_error(r, *mentions):
    assert r.returncode == 2, f"exit {r.returncode}, want 2\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "usage" in r.stderr.lower(), f"no usage on stderr:\n{r.stderr}"
    assert r.stdout == "", f"a usage error must print nothing on stdout:\n{r.stdout}"
    for m in mentions:
        assert m in r.stderr, f"stderr does not mention {m!r}:\n{r.stderr}"


def assert_failed(r, *mentions):
    assert r.returncode == 1, f"exit {r.returncode}, want 1\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.stderr.strip(), "a failure must say why on stderr"
    for m in mentions:
        assert str(m) in r.stderr, f"stderr does not mention {m!r}:\n{r.stderr}"


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["mount"],
    ["mount", "/tmp/only-a-store"],
    ["serve", "/tmp/some-store"],          # --listen is required
    ["status"],
    ["stop"],
    ["status", "/tmp/x", "--no-such-flag"],
    ["serve", "/tmp/some-store", "--listen", "tcp://127.0.0.1:7790", "--busy-poll", "-1"],
    ["serve", "/tmp/some-store", "--listen", "tcp://127.0.0.1:7790", "--busy-poll", "20000"],
    ["serve", "/tmp/some-store", "--listen", "tcp://127.0.0.1:7790", "--busy-poll", "soon"],
])
def test_wrong_command_line_exits_2(args):
    assert_usage_error(mirrorfs(*args))


def test_bad_mode_value_exits_2(workdir):
    store, mnt = workdir / "s", workdir / "m"
    store.mkdir()
    mnt.mkdir()
    r = mirrorfs("mount", store, mnt, "--mode", "fast")
    assert_usage_error(r, "fast")
    assert not is_mounted(mnt)


def test_help_lists_every_verb():
    r = mirrorfs("--help")
    assert r.returncode == 0, r.stderr
    for verb in VERBS:
        assert verb in r.stdout, f"`mirrorfs --help` does not list {verb}:\n{r.stdout}"
    r = mirrorfs("peer", "--help")
    assert r.returncode == 0, r.stderr
    for sub in ("add", "remove", "list"):
        assert sub in r.stdout, f"`mirrorfs peer --help` does not list {sub}:\n{r.stdout}"


def test_version_is_the_projects():
    r = mirrorfs("--version")
    assert r.returncode == 0, r.stderr
    with open(Path(__file__).resolve().parents[2] / "CMakeLists.txt") as f:
        version = re.search(r"project\(mirrorfs VERSION ([0-9.]+)", f.read()).group(1)
    assert r.stdout.strip() == f"mirrorfs {version}", r.stdout


def test_status_without_daemon_exits_1(workdir):
    store = workdir / "idle"
    store.mkdir()
    assert_failed(mirrorfs("status", store), store)
    assert_failed(mirrorfs("status", store, "--json"), store)
    assert_failed(mirrorfs("stop", store), store)


def test_status_with_stale_socket_exits_1(workdir):
    # A control socket left behind by a crashed daemon: nobody listens.
    store = workdir / "crashed"
    (store / ".mirrorfs").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(store / ".mirrorfs" / "control.sock"))
    sock.close()
    assert_failed(mirrorfs("status", store, timeout=15), store)


def test_mount_missing_store_exits_1(cluster):
    store, mnt = cluster.root / "no-such-store", cluster.dir("m")
    assert_failed(mirrorfs("mount", store, mnt), store)
    assert not is_mounted(mnt)
    assert not mirrorfs_pids(cluster.root), "a daemon stayed behind after a failed mount"


def test_serve_on_busy_port_exits_1(cluster):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        store = cluster.dir("busy.store")
        r = mirrorfs("serve", store, "--listen", f"tcp://127.0.0.1:{port}", "--name", "b")
        assert_failed(r, port)
        assert not mirrorfs_pids(cluster.root), "a daemon stayed behind after a failed serve"
        assert mirrorfs("status", store).returncode == 1
    finally:
        holder.close()


def test_mount_on_busy_mountpoint_exits_1(cluster):
    first = cluster.mount("first", listen=False)
    other = cluster.dir("other.store")
    r = mirrorfs("mount", other, first.mountpoint, "--name", "other")
    assert_failed(r, first.mountpoint)
    # The first mount is untouched and still served by its daemon.
    (first.mountpoint / "still-here.txt").write_text("ok\n")
    assert (first.store / "still-here.txt").read_text() == "ok\n"
    assert mirrorfs("status", other).returncode == 1


def test_second_daemon_on_same_store_exits_1(cluster):
    first = cluster.mount("first", listen=False)
    mnt2 = cluster.dir("second.mnt")
    r = mirrorfs("mount", first.store, mnt2, "--name", "again")
    assert_failed(r, first.store)
    assert not is_mounted(mnt2)
    assert first.alive()
    assert os.path.ismount(first.mountpoint)


def _db_files(root):
    """The database's files and bytes, but RocksDB's own info log (LOG,
    LOG.old.*), which every open attempt writes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("LOG")}


@pytest.mark.parametrize("verb", ["mount", "serve"])
def test_corrupt_state_database_is_refused_and_loses_nothing(cluster, verb):
    # Guarantee 9: a corrupt state database gets a precise message and exit
    # 1; the daemon does not start on it, does not "repair" it and does not
    # touch the images. Moving it aside, as the message says, starts over.
    node = cluster.mount("a", listen=False)
    (node.mountpoint / "disk.img").write_bytes(os.urandom(1 << 20))
    cluster.stop(node)
    store, mnt = node.store, node.mountpoint
    image = (store / "disk.img").read_bytes()
    db = store / ".mirrorfs" / "db"
    manifest = next(db.glob("MANIFEST-*"))
    raw = bytearray(manifest.read_bytes())
    for i in range(16, min(len(raw), 116)):
        raw[i] ^= 0x5A
    manifest.write_bytes(bytes(raw))
    before = _db_files(db)

    if verb == "mount":
        r = mirrorfs("mount", store, mnt, "--name", "a")
    else:
        r = mirrorfs("serve", store, "--listen", free_endpoint(), "--name", "a")
    assert_failed(r, f"state database {db} is corrupt", "move it aside")
    assert not is_mounted(mnt)
    assert not mirrorfs_pids(cluster.root), "a daemon stayed behind on a corrupt database"
    assert mirrorfs("status", store).returncode == 1
    assert _db_files(db) == before, "the corrupt database was changed"
    assert (store / "disk.img").read_bytes() == image

    db.rename(db.with_name("db.corrupt"))
    again = cluster.mount("a", store=store, mountpoint=mnt, listen=False)
    assert (again.mountpoint / "disk.img").read_bytes() == image


def test_a_failed_start_leaves_the_stored_options_as_they_were(cluster):
    # The port asked for is taken: the mount fails, and its --listen and
    # --name are not remembered for the next start.
    node = cluster.mount("a", listen=False)
    cluster.stop(node)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        r = mirrorfs("mount", node.store, node.mountpoint, "--name", "renamed",
                     "--listen", f"tcp://127.0.0.1:{port}")
        assert_failed(r, port)
        assert not is_mounted(node.mountpoint)
    finally:
        holder.close()
    again = cluster.mount("a", store=node.store, mountpoint=node.mountpoint,
                          listen=False, name_flag=False)
    doc = again.status()
    assert doc["node"] == "a" and doc["listen"] == "", doc
