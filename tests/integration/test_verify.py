"""`mirrorfs verify` compares per-block (64 KiB) checksums of every file with
each connected peer, online: identical copies under a steady write load give
no false alarm (exit 0); blocks changed behind mirrorfs's back on the
secondary are listed exactly (exit 1, "PEER PATH OFFSET LENGTH" or --json);
`--repair` logs them for the peer and resyncs, after which verify is clean
and the stores are identical. Sizes, entries only on one side, permission
bits, owners, symlink targets and files replaced behind the secondary's back
are found too, and repaired by sending only what differs."""

import json
import os
import random
import threading

from conftest import (
    READY_SECONDS, assert_same_manifest, assert_sync_wait, bytes_applied, mirrorfs, status_json,
    wait_flushed, wait_in_sync, wait_peer_state, wait_until)

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB
VERIFY_SECONDS = 120


def out(r):
    return f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def verify(store, *args):
    return mirrorfs("verify", store, *args, timeout=VERIFY_SECONDS)


def verify_json(store, *args):
    r = verify(store, "--json", *args)
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"verify --json is not one JSON document ({e}): {out(r)}") from None
    return r, doc


def start_pair(cluster):
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    return a, b


def fill(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


class Writer:
    """Writes 4 KiB blocks at random offsets of one file until stopped."""

    def __init__(self, path, size):
        self.path, self.size = path, size
        self.count, self.errors = 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(7)
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                while not self.stop.is_set():
                    off = rng.randrange(self.size // 4096) * 4096
                    os.pwrite(fd, rng.randbytes(4096), off)
                    self.count += 1
                    if self.count % 32 == 0:
                        os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.errors.append(e)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the writer is stuck"


def test_identical_copies_verify_clean_under_load(cluster):
    a, b = start_pair(cluster)
    fill(a.mountpoint / "busy.img", 16 * MiB, 1)
    fill(a.mountpoint / "quiet.img", 3 * MiB + 123, 2)      # a partial last block
    (a.mountpoint / "dir").mkdir()
    fill(a.mountpoint / "dir" / "small.bin", 1000, 3)
    (a.mountpoint / "empty").write_bytes(b"")
    wait_flushed(a.store)
    total = 16 * MiB + 3 * MiB + 123 + 1000

    with Writer(a.mountpoint / "busy.img", 16 * MiB) as w:
        wait_until(lambda: w.count > 50 or w.errors, READY_SECONDS, "the writer to start")
        for round_ in range(3):
            before = w.count
            r, doc = verify_json(a.store)
            during = w.count - before
            assert r.returncode == 0, f"verify round {round_} under load: {out(r)}"
            assert during > 0, "the writer made no progress while verify ran: not a load test"
            assert [p["name"] for p in doc["peers"]] == ["b"], doc
            peer = doc["peers"][0]
            assert peer["identical"] is True and peer["differences"] == [], doc
            assert peer["compared_bytes"] >= total, (total, doc)
        assert not w.errors, w.errors
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    r = verify(a.store)
    assert r.returncode == 0 and r.stdout == "", f"plain verify of identical copies: {out(r)}"
    r = verify(a.store, "--peer", "b")
    assert r.returncode == 0, out(r)


def test_blocks_changed_behind_mirrorfs_are_listed_exactly_and_repaired(cluster):
    a, b = start_pair(cluster)
    size = 4 * MiB
    fill(a.mountpoint / "disk.img", size, 11)
    fill(a.mountpoint / "other.img", 2 * MiB, 12)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    # Behind mirrorfs's back, on the secondary's store: three blocks.
    changes = [(100, 1), (5 * BLOCK + 10, 100), (20 * BLOCK + 65000, 30)]
    fd = os.open(b.store / "disk.img", os.O_WRONLY)
    try:
        for off, length in changes:
            with open(a.store / "disk.img", "rb") as f:
                f.seek(off)
                old = f.read(length)
            os.pwrite(fd, bytes(x ^ 0xFF for x in old), off)
    finally:
        os.close(fd)
    expected = {("disk.img", (off // BLOCK) * BLOCK, BLOCK) for off, _ in changes}
    assert len(expected) == 3

    def parse_lines(stdout):
        got = set()
        for line in stdout.splitlines():
            fields = line.split()
            assert len(fields) == 4 and fields[0] == "b", f"not 'PEER PATH OFFSET LENGTH': {line!r}"
            got.add((fields[1].lstrip("/"), int(fields[2]), int(fields[3])))
        return got

    r = verify(a.store)
    assert r.returncode == 1, f"verify of differing copies: {out(r)}"
    got = parse_lines(r.stdout)
    assert got == expected, f"verify listed {sorted(got)}, expected {sorted(expected)}\n{out(r)}"

    r, doc = verify_json(a.store, "--peer", "b")
    assert r.returncode == 1, out(r)
    assert isinstance(doc.get("peers"), list) and len(doc["peers"]) == 1, doc
    peer = doc["peers"][0]
    assert peer["name"] == "b" and peer["identical"] is False, doc
    assert peer["compared_bytes"] >= size + 2 * MiB, doc
    got = {(d["path"].lstrip("/"), d["offset"], d["length"]) for d in peer["differences"]}
    assert got == expected, f"verify --json listed {sorted(got)}, expected {sorted(expected)}"
    for d in peer["differences"]:
        assert set(d) >= {"path", "offset", "length"}, d

    # verify only reads: nothing was repaired.
    assert status_json(a.store)["peers"][0]["in_sync"] is True
    r = verify(a.store)
    assert r.returncode == 1 and parse_lines(r.stdout) == expected, out(r)

    r = verify(a.store, "--repair")
    assert r.returncode == 1, f"verify --repair reports what it found: {out(r)}"
    assert parse_lines(r.stdout) == expected, out(r)
    wait_in_sync(a.store, "b", timeout=READY_SECONDS)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store, "stores after verify --repair")
    r, doc = verify_json(a.store)
    assert r.returncode == 0 and doc["peers"][0]["identical"] is True, \
        f"verify after --repair: {out(r)}"


def test_repair_sends_the_differing_blocks_and_nothing_else(cluster):
    """Guarantee 6 for a repair: the resync it starts sends the blocks that
    differ, not also the peer's writes since its last store flush (the
    peer is asked to make those durable first, as for a fracture)."""
    a, b = start_pair(cluster)
    fill(a.mountpoint / "disk.img", 8 * MiB, 21)  # no wait for an epoch
    with open(a.store / "disk.img", "rb") as f:
        f.seek(3 * BLOCK)
        old = f.read(10)
    fd = os.open(b.store / "disk.img", os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(x ^ 0xFF for x in old), 3 * BLOCK)
    finally:
        os.close(fd)
    applied = bytes_applied(b.store)
    r = verify(a.store, "--repair")
    assert r.returncode == 1, out(r)
    wait_in_sync(a.store, "b", timeout=READY_SECONDS)
    assert_same_manifest(a.store, b.store, "stores after verify --repair")
    resent = bytes_applied(b.store) - applied
    assert resent == BLOCK, f"the repair sent {resent} bytes for one {BLOCK}-byte block"


def test_verify_errors(cluster):
    a, b = start_pair(cluster)
    (a.mountpoint / "f").write_bytes(b"x" * 1000)
    wait_flushed(a.store)
    r = verify(a.store, "--peer", "nosuch")
    assert r.returncode == 1 and r.stderr == "mirrorfs: no peer named nosuch\n", out(r)
    r = verify(b.store)
    assert r.returncode == 1 and r.stderr.startswith("mirrorfs: this node is a secondary"), \
        f"verify on a secondary: {out(r)}"
    r = mirrorfs("fracture", a.store, "b")
    assert r.returncode == 0, out(r)
    wait_peer_state(a.store, "b", "fractured")
    (a.mountpoint / "f").write_bytes(b"y" * 1000)
    r = verify(a.store)
    assert r.returncode == 1 and "mirrorfs: peer b: not in sync (fractured)" in r.stderr, \
        f"verify of a fractured peer: {out(r)}"
    # --json lists the peer it could not compare, so that a script does not
    # take it for one without differences.
    r = verify(a.store, "--json")
    assert r.returncode == 1, out(r)
    doc = json.loads(r.stdout)
    assert [p["name"] for p in doc["peers"]] == ["b"], doc
    peer = doc["peers"][0]
    assert peer["verified"] is False and peer["identical"] is None, peer
    assert "not in sync (fractured)" in peer["error"] and peer["differences"] == [], peer


# ---- What blocks alone do not show: sizes, names, replaced files ----------

def lines_of(r):
    """verify's stdout as a set of tuples of its fields."""
    return {tuple(line.split()) for line in r.stdout.splitlines()}


def repair_and_sync(a, b):
    """verify --repair (it reports what it found: exit 1), then `sync
    --wait`; the stores are then identical and verify is clean. Returns the
    bytes the repair sent (the secondary's bytes_applied)."""
    applied = bytes_applied(b.store)
    r = verify(a.store, "--repair")
    assert r.returncode == 1, f"verify --repair reports what it found: {out(r)}"
    assert_sync_wait(a.store)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store, "stores after verify --repair")
    r, doc = verify_json(a.store)
    assert r.returncode == 0 and doc["peers"][0]["identical"] is True, \
        f"verify after --repair and sync: {out(r)}"
    return bytes_applied(b.store) - applied


def test_a_file_longer_or_shorter_on_the_peer_is_found_and_repaired(cluster):
    a, b = start_pair(cluster)
    (a.mountpoint / "d").mkdir()
    (a.mountpoint / "d" / "x").write_bytes(b"abc")
    fill(a.mountpoint / "disk.img", 1 * MiB, 31)
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    # Behind mirrorfs's back: x extended (its 3 bytes unchanged), disk.img
    # cut in its 6th block.
    os.truncate(b.store / "d" / "x", 1 * MiB)
    os.truncate(b.store / "disk.img", 5 * BLOCK + 100)
    r = verify(a.store)
    assert r.returncode == 1, f"sizes differ: {out(r)}"
    assert lines_of(r) == {
        ("b", "d/x", "size", "3", str(1 * MiB)),
        ("b", "disk.img", "size", str(1 * MiB), str(5 * BLOCK + 100)),
        ("b", "disk.img", str(5 * BLOCK), str(1 * MiB - 5 * BLOCK)),
    }, out(r)
    r, doc = verify_json(a.store)
    assert r.returncode == 1, out(r)
    diffs = doc["peers"][0]["differences"]
    assert {"kind": "size", "path": "d/x", "offset": 3, "length": 1 * MiB - 3,
            "size": 3, "peer_size": 1 * MiB} in diffs, doc
    assert {d["kind"] for d in diffs} == {"size", "data"}, doc

    # Guarantee 6: the size is fixed, and only the blocks the peer lacks
    # travel.
    resent = repair_and_sync(a, b)
    assert resent == 1 * MiB - 5 * BLOCK, f"the repair sent {resent} bytes"
    assert os.path.getsize(b.store / "d" / "x") == 3


def test_entries_only_on_one_side_are_found_and_repaired(cluster):
    a, b = start_pair(cluster)
    fill(a.mountpoint / "disk.img", 2 * MiB, 41)
    fill(a.mountpoint / "gone.img", 3 * BLOCK + 5, 42)
    (a.mountpoint / "empty").write_bytes(b"")
    (a.mountpoint / "keep").mkdir()
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    (b.store / "extra").write_text("x\n")
    (b.store / "peerdir" / "sub").mkdir(parents=True)
    (b.store / "peerdir" / "sub" / "z").write_bytes(b"z" * 5000)
    os.symlink("disk.img", b.store / "keep" / "link")
    os.unlink(b.store / "gone.img")
    os.unlink(b.store / "empty")
    r = verify(a.store)
    assert r.returncode == 1, f"entries differ: {out(r)}"
    assert lines_of(r) == {
        ("b", "extra", "extra", "file"),
        ("b", "peerdir", "extra", "folder"),
        ("b", "peerdir/sub", "extra", "folder"),
        ("b", "peerdir/sub/z", "extra", "file"),
        ("b", "keep/link", "extra", "symlink"),
        ("b", "gone.img", "missing", "file"),
        ("b", "gone.img", "0", str(3 * BLOCK + 5)),
        ("b", "empty", "missing", "file"),
    }, out(r)
    r, doc = verify_json(a.store, "--peer", "b")
    assert r.returncode == 1, out(r)
    diffs = doc["peers"][0]["differences"]
    assert {"kind": "extra", "path": "peerdir/sub/z", "offset": 0, "length": 5000,
            "peer_type": "file"} in diffs, doc
    assert {"kind": "missing", "path": "empty", "offset": 0, "length": 0,
            "type": "file"} in diffs, doc

    # The resync removes what only the peer has and sends the missing file:
    # nothing else.
    resent = repair_and_sync(a, b)
    assert resent == 3 * BLOCK + 5, f"the repair sent {resent} bytes"
    assert not (b.store / "peerdir").exists() and not (b.store / "extra").exists()


def test_a_file_replaced_on_the_peer_is_compared_and_written_as_it_is_now(cluster):
    """The secondary holds its files open between changes; a file replaced
    behind its back must not be compared (nor written) as the old one."""
    a, b = start_pair(cluster)
    fill(a.mountpoint / "f.img", 4 * BLOCK, 51)
    with open(a.mountpoint / "f.img", "r+b") as f:  # b has it open now
        f.write(b"new")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)

    # Same size, other bytes in block 2: only the data can tell.
    data = bytearray((a.store / "f.img").read_bytes())
    data[2 * BLOCK + 7] ^= 0xFF
    os.unlink(b.store / "f.img")
    (b.store / "f.img").write_bytes(bytes(data))
    r = verify(a.store)
    assert r.returncode == 1, f"the replaced file differs: {out(r)}"
    assert lines_of(r) == {("b", "f.img", str(2 * BLOCK), str(BLOCK))}, out(r)

    resent = repair_and_sync(a, b)
    assert resent == BLOCK, f"the repair sent {resent} bytes"

    # Replaced again while b holds it open: live changes reach the new file
    # within a second (b checks its open files once a second, not at each
    # change, which cost small synchronous writes 12 %).
    os.unlink(b.store / "f.img")
    (b.store / "f.img").write_bytes((a.store / "f.img").read_bytes())
    marker = b"written after the replacement"

    def write_reaches_the_new_file():
        with open(a.mountpoint / "f.img", "r+b") as f:
            f.seek(BLOCK)
            f.write(marker)
        wait_flushed(a.store)
        return marker in (b.store / "f.img").read_bytes()
    wait_until(write_reaches_the_new_file, 10, "a write to reach b's replaced file")
    assert_same_manifest(a.store, b.store, "stores after a write to the replaced file")


def test_modes_owners_and_symlink_targets_changed_on_the_peer_are_found_and_repaired(cluster):
    a, b = start_pair(cluster)
    fill(a.mountpoint / "disk.img", 1 * MiB, 51)
    (a.mountpoint / "vm").mkdir(mode=0o755)
    os.chmod(a.mountpoint / "vm", 0o755)  # whatever the umask
    fill(a.mountpoint / "vm" / "base.img", 2 * BLOCK, 52)
    os.chmod(a.mountpoint / "disk.img", 0o640)
    os.chown(a.mountpoint / "vm" / "base.img", 1000, 100)
    os.symlink("vm/base.img", a.mountpoint / "current")
    os.symlink("disk.img", a.mountpoint / "alias")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store)
    r = verify(a.store)
    assert r.returncode == 0 and r.stdout == "", f"mirrored modes and owners: {out(r)}"

    # Behind mirrorfs's back, on the peer: the data stays identical.
    os.chmod(b.store / "disk.img", 0o644)
    os.chmod(b.store / "vm", 0o700)
    os.chown(b.store / "vm" / "base.img", 0, 0)
    os.unlink(b.store / "current")
    os.symlink("disk.img", b.store / "current")
    os.lchown(b.store / "alias", 1000, 1000)
    r = verify(a.store)
    assert r.returncode == 1, f"attributes differ: {out(r)}"
    assert lines_of(r) == {
        ("b", "disk.img", "mode", "0640", "0644"),
        ("b", "vm", "mode", "0755", "0700"),
        ("b", "vm/base.img", "owner", "1000:100", "0:0"),
        ("b", "current", "target", "vm/base.img", "disk.img"),
        ("b", "alias", "owner", "0:0", "1000:1000"),
    }, out(r)
    r, doc = verify_json(a.store)
    assert r.returncode == 1, out(r)
    diffs = doc["peers"][0]["differences"]
    assert {"kind": "mode", "path": "disk.img", "offset": 0, "length": 0,
            "mode": "0640", "peer_mode": "0644"} in diffs, doc
    assert {"kind": "owner", "path": "vm/base.img", "offset": 0, "length": 0,
            "uid": 1000, "gid": 100, "peer_uid": 0, "peer_gid": 0} in diffs, doc
    assert {"kind": "target", "path": "current", "offset": 0, "length": 0,
            "target": "vm/base.img", "peer_target": "disk.img"} in diffs, doc
    assert len(diffs) == 5, doc

    # The resync's namespace reconcile sets them back; no data travels.
    resent = repair_and_sync(a, b)
    assert resent == 0, f"the repair sent {resent} bytes"
    st = os.lstat(b.store / "vm" / "base.img")
    assert (st.st_uid, st.st_gid) == (1000, 100)
    assert os.readlink(b.store / "current") == "vm/base.img"
    assert os.lstat(b.store / "alias").st_uid == 0
    assert os.stat(b.store / "disk.img").st_mode & 0o7777 == 0o640
