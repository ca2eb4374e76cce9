"""Split brain (DESIGN.md guarantee 8): detected, never merged silently.

a (primary, with --listen) and b (its secondary) are in sync. a stops
cleanly; b is promoted and writes; then a is mounted again as primary and
writes too: both wrote as primary since their last common generation. When
they meet, both refuse to resync and report the split brain; nothing moves.
The operator picks b as the survivor: a is demoted, `resolve --discard-local`
saves a's changed files in a recovery folder, and the next connection from b
is a full sync: identical stores with b's data, a's version kept aside.
"""

import os
import subprocess
import time

from conftest import (
    adopt, kill9,
    READY_SECONDS, assert_same_manifest, assert_sync_wait, manifest_diff,
    mirrorfs, peer_status, sha256_file, status_json,
    store_manifest, wait_flushed, wait_peer_state, wait_until)

KiB = 1024
MiB = 1024 * KiB



def checked(*args, timeout=None):
    r = mirrorfs(*args) if timeout is None else mirrorfs(*args, timeout=timeout)
    assert r.returncode == 0, \
        f"mirrorfs {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def write_at(path, data, offset):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def split_brain_with(store):
    sb = status_json(store).get("split_brain")
    return sb.get("with") if isinstance(sb, dict) else None


def wait_split_brain_cleared(*stores):
    last = {}

    def check():
        for store in stores:
            doc = status_json(store)
            last[str(store)] = {"split_brain": doc.get("split_brain"),
                                "peers": [(p.get("name"), p.get("state"), p.get("role"))
                                          for p in doc.get("peers", [])]}
        return all(v["split_brain"] is False for v in last.values())
    try:
        wait_until(check, READY_SECONDS, "split_brain to clear (false) in the status of "
                   + " and ".join(map(str, stores)))
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last}") from None


def make_split_brain(cluster):
    """Returns (a, b, a_mnt, b_mnt, b_view, a_files): a primary and b
    primary that both wrote since their last common generation, and have
    met (both report the split brain)."""
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    a_mnt = a.mountpoint
    with open(a_mnt / "shared.img", "wb") as f:
        f.write(os.urandom(4 * MiB))
    (a_mnt / "common.txt").write_bytes(b"common history\n")
    (a_mnt / "dir").mkdir()
    (a_mnt / "dir" / "keep.txt").write_bytes(b"untouched by both\n")
    wait_flushed(a.store)
    assert_same_manifest(a.store, b.store, "stores before the split")

    # a goes away cleanly; b takes over and writes.
    cluster.stop(a)
    wait_until(lambda: all(p.get("state") != "connected"
                           for p in status_json(b.store)["peers"]),
               READY_SECONDS, "b to see its primary a gone")
    b_mnt = cluster.dir("b.mnt")
    r = checked("promote", b.store, "--mount", b_mnt)
    assert f"{b.store} is now primary, mounted at {b_mnt}" in r.stdout, r.stdout
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    write_at(b_mnt / "shared.img", b"B" * (64 * KiB), 0)
    write_at(b_mnt / "b-only.txt", b"written by b as primary\n", 0)
    b_view = store_manifest(b.store)

    # a comes back as primary (an operator mistake) and writes too.
    a = cluster.mount("a", store=a.store, mountpoint=a_mnt, listen=a.endpoint,
                      peers=[("b", b.endpoint)])
    write_at(a_mnt / "shared.img", b"A" * (128 * KiB), 1 * MiB)
    write_at(a_mnt / "common.txt", b"changed by a after the split\n", 0)
    write_at(a_mnt / "a-only.txt", b"written by a as primary\n", 0)
    a_files = {rel: (a.store / rel).read_bytes()
               for rel in ("shared.img", "common.txt", "a-only.txt")}

    # Both see it: a's session to b, b's listener (hello from a), and b's
    # session to a (b learned a as the primary that once fed it).
    peer = wait_peer_state(a.store, "b", "split-brain")
    assert peer["in_sync"] is False, peer
    wait_until(lambda: split_brain_with(a.store) == "b", READY_SECONDS,
               "a's status split_brain.with == b")
    wait_until(lambda: split_brain_with(b.store) == "a", READY_SECONDS,
               "b's status split_brain.with == a")
    wait_peer_state(b.store, "a", "split-brain")
    return a, b, a_mnt, b_mnt, b_view, a_files


def test_a_split_brain_fails_sync_wait_and_lists_each_peer_once(cluster):
    a, b, a_mnt, b_mnt, b_view, a_files = make_split_brain(cluster)
    for node, other in ((a, "b"), (b, "a")):
        peers = status_json(node.store)["peers"]
        assert [p["name"] for p in peers] == [other], peers
        entry = peers[0]
        assert entry["state"] == "split-brain" and entry["in_sync"] is False, entry
        assert entry["reason"].count("split brain") == 1, entry["reason"]
        assert entry.get("endpoint") and entry.get("uuid"), entry
    # Waiting cannot end a split brain: sync --wait says so (exit 1), it
    # does not run into its timeout (exit 3) or wait forever.
    t0 = time.monotonic()
    r = mirrorfs("sync", a.store, "--wait", "--timeout", "60", timeout=70)
    assert r.returncode == 1 and "split brain with b" in r.stderr, \
        f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert time.monotonic() - t0 < 30, "sync --wait waited out a split brain"
    assert store_manifest(b.store) == b_view


def test_split_brain_is_detected_and_resolved_by_discarding_the_loser(cluster):
    a, b, a_mnt, b_mnt, b_view, a_files = make_split_brain(cluster)

    # Nothing moves while the split brain lasts (observed for > 2 retries).
    a_view = store_manifest(a.store)
    assert "a-only.txt" in a_view and "b-only.txt" not in a_view
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert peer_status(a.store, "b")["state"] == "split-brain"
        assert split_brain_with(b.store) == "a"
        time.sleep(0.2)
    got = store_manifest(b.store)
    assert got == b_view, f"a's writes reached b during the split brain:\n{manifest_diff(b_view, got)}"
    got = store_manifest(a.store)
    assert got == a_view, f"b's writes reached a during the split brain:\n{manifest_diff(a_view, got)}"
    assert "split brain" in a.log().lower(), a.log()

    # The loser must be a secondary to discard its changes.
    r = mirrorfs("resolve", a.store, "--discard-local")
    assert r.returncode == 1 and "demote" in r.stderr, \
        f"resolve --discard-local on a primary: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert store_manifest(a.store) == a_view

    r = checked("demote", a.store)
    assert f"{a.store} is now secondary, serving {a.endpoint}" in r.stdout, r.stdout
    a.wait_exit()
    a = adopt(cluster, "a", "demote", a.store, None, a.endpoint)
    doc = status_json(a.store)
    assert doc["role"] == "secondary", doc
    # Still refused: a secondary does not follow a diverged primary.
    wait_until(lambda: split_brain_with(a.store) == "b", READY_SECONDS,
               "the demoted a to report its split brain with b")
    entry = [p for p in status_json(a.store)["peers"] if p.get("name") == "b"]
    assert entry and entry[0]["state"] == "split-brain", status_json(a.store)["peers"]
    # Every field of the contract, as for any peer: where b is, and when
    # it last asked.
    assert entry[0]["endpoint"] == b.endpoint and entry[0]["uuid"], entry[0]
    assert isinstance(entry[0]["last_seen_seconds_ago"], (int, float)), entry[0]
    text = checked("status", a.store).stdout
    assert "split brain with b: both wrote as primary" in text, text
    row = [line for line in text.splitlines() if line.startswith("b (primary)")]
    assert row and "split-brain" in row[0] and b.endpoint in row[0], text
    assert store_manifest(a.store) == a_view, "a's copy changed before the operator chose"
    # Promoting it back while b runs as primary would make two writable
    # mounts again: refused without --force, and a stays as it was.
    a2_mnt = cluster.dir("a2.mnt")
    r = mirrorfs("promote", a.store, "--mount", a2_mnt)
    assert r.returncode == 1 and "in split brain with b" in r.stderr and "--force" in r.stderr, \
        f"promote of a node in split brain: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert not os.path.ismount(a2_mnt) and a.alive()
    assert status_json(a.store)["role"] == "secondary"

    r = checked("resolve", a.store, "--discard-local")
    folder = status_json(a.store).get("recovery_folder")
    assert folder, f"no recovery_folder in a's status after resolve: {status_json(a.store)}"
    assert folder in r.stdout, f"resolve does not name the recovery folder {folder}:\n{r.stdout}"
    assert folder.startswith(str(a.store / ".mirrorfs" / "recovery") + "/"), folder
    listed = set((open(os.path.join(folder, "CHANGED-FILES")).read()).split("\n")) - {""}
    assert set(a_files) <= listed, f"CHANGED-FILES lists {sorted(listed)}"
    assert "dir/keep.txt" not in listed and "b-only.txt" not in listed, sorted(listed)
    for rel, data in a_files.items():
        with open(os.path.join(folder, rel), "rb") as f:
            assert f.read() == data, f"the recovery folder's {rel} is not a's version"

    # b's next connection wins: full sync; b's data everywhere.
    assert_sync_wait(b.store, peer="a", timeout=60)
    peer = peer_status(b.store, "a")
    assert peer["state"] == "connected" and peer["in_sync"] is True, peer
    wait_split_brain_cleared(b.store, a.store)
    assert status_json(a.store)["consistent"] is True
    got = assert_same_manifest(b.store, a.store, "stores after the resolution")
    assert got == b_view, f"b's data changed by the resolution:\n{manifest_diff(b_view, got)}"
    for rel, data in a_files.items():   # a's version survives, aside
        with open(os.path.join(folder, rel), "rb") as f:
            assert f.read() == data, f"the recovery folder's {rel} changed after the sync"

    # And the mirror works again.
    write_at(b_mnt / "after.txt", b"mirrored again\n", 0)
    wait_flushed(b.store)
    assert_same_manifest(b.store, a.store, "stores after a new write")
    assert sha256_file(a.store / "after.txt") == sha256_file(b.store / "after.txt")


def test_keep_local_on_the_survivor_makes_the_loser_discard(cluster):
    a, b, a_mnt, b_mnt, b_view, a_files = make_split_brain(cluster)

    # keep-local belongs on a primary; the loser is demoted first.
    r = checked("demote", a.store)
    a.wait_exit()
    a = adopt(cluster, "a", "demote", a.store, None, a.endpoint)
    wait_until(lambda: split_brain_with(a.store) == "b", READY_SECONDS,
               "the demoted a to report its split brain with b")
    r = mirrorfs("resolve", a.store, "--keep-local")
    assert r.returncode == 1, f"--keep-local accepted on a secondary:\n{r.stdout}\n{r.stderr}"

    r = checked("resolve", b.store, "--keep-local")
    assert "peer a" in r.stdout, r.stdout
    assert_sync_wait(b.store, peer="a", timeout=60)
    wait_split_brain_cleared(b.store, a.store)
    got = assert_same_manifest(b.store, a.store, "stores after keep-local")
    assert got == b_view, f"b's data changed by the resolution:\n{manifest_diff(b_view, got)}"
    folder = status_json(a.store).get("recovery_folder")
    assert folder, f"the loser saved nothing: {status_json(a.store)}"
    for rel, data in a_files.items():
        with open(os.path.join(folder, rel), "rb") as f:
            assert f.read() == data, f"the recovery folder's {rel} is not a's version"


def kill_primary_and_promote(cluster, a, b):
    """kill -9 of the primary a; its secondary b is promoted (waiting out
    the peer timeout) and writes 64 KiB at the start of disk.img. Returns
    b's new Node and its mountpoint."""
    kill9(a)
    subprocess.run(["fusermount3", "-uz", str(a.mountpoint)], capture_output=True, timeout=20)
    b_mnt = cluster.dir("b.mnt")
    checked("promote", b.store, "--mount", b_mnt, timeout=60)
    b.wait_exit()
    b = adopt(cluster, "b", "promote", b.store, b_mnt, b.endpoint)
    write_at(b_mnt / "disk.img", b"B" * (64 * KiB), 0)
    return b, b_mnt


def test_a_failover_after_the_primary_lost_another_peer_is_no_split_brain(cluster):
    """a mirrors to b and c; c dies, so a starts a new generation with its
    next write, mirrored to b. a dies right after that write returns; b
    takes over and writes; a comes back as a secondary. a wrote nothing b
    lacks: b must resync a, not call it a split brain. So b must hold a's
    new generation as soon as it holds a write made in it: a tells b in
    the session, ahead of that write (no reconnection to wait for)."""
    b = cluster.serve("b")
    c = cluster.serve("c")
    a = cluster.mount("a", peers=[b, c], listen=True)
    wait_peer_state(a.store, "b", "connected")
    wait_peer_state(a.store, "c", "connected")
    write_at(a.mountpoint / "disk.img", os.urandom(1 * MiB), 0)
    wait_flushed(a.store)

    kill9(c)
    wait_peer_state(a.store, "c", ("disconnected", "connecting"), timeout=30)
    before = status_json(a.store)["generation"]
    # A plain write (no fsync, which could outlast a reconnection): in sync
    # mode it returns once b applied it. a dies right then.
    fd = os.open(a.mountpoint / "disk.img", os.O_WRONLY)
    os.pwrite(fd, b"after c" * 1000, 64 * KiB)
    kill9(a)
    try:
        os.close(fd)
    except OSError:
        pass  # the mount's daemon is gone
    assert (b.store / "disk.img").read_bytes() == (a.store / "disk.img").read_bytes()
    started = status_json(b.store)["generation"]
    assert started != before and before in status_json(b.store)["generation_history"]

    b, b_mnt = kill_primary_and_promote(cluster, a, b)

    a = cluster.serve("a", store=a.store, listen=a.endpoint)
    assert_sync_wait(b.store, peer="a", timeout=60)
    peer = peer_status(b.store, "a")
    assert peer["state"] == "connected" and peer["in_sync"] is True, peer
    assert status_json(b.store)["split_brain"] is False
    assert status_json(a.store)["split_brain"] is False
    assert sha256_file(a.store / "disk.img") == sha256_file(b.store / "disk.img")


def test_an_old_primary_mounted_again_is_stale_until_it_writes(cluster):
    """a (primary) dies; b is promoted and writes; a is mounted again as
    primary (a boot script, say). Until a writes, nothing split: b fences a
    as stale and says how to bring it back. Once a writes, both did: a
    split brain."""
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    write_at(a.mountpoint / "disk.img", os.urandom(1 * MiB), 0)
    wait_flushed(a.store)
    a_mnt, a_endpoint = a.mountpoint, a.endpoint
    b, b_mnt = kill_primary_and_promote(cluster, a, b)

    a = cluster.mount("a", store=a.store, mountpoint=a_mnt, listen=a_endpoint,
                      peers=[("b", b.endpoint)])
    peer = wait_until_peer_reason(a.store, "b", "stale primary")
    assert peer["state"] != "split-brain", peer
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert split_brain_with(a.store) is None and split_brain_with(b.store) is None
        time.sleep(0.2)

    write_at(a_mnt / "a-only.txt", b"written by the stale primary\n", 0)
    wait_peer_state(a.store, "b", "split-brain")
    wait_until(lambda: split_brain_with(b.store) == "a", READY_SECONDS,
               "b's status split_brain.with == a")


def wait_until_peer_reason(store, name, text):
    seen = {}

    def check():
        seen["peer"] = peer_status(store, name) or {}
        return text in (seen["peer"].get("reason") or "")
    try:
        wait_until(check, READY_SECONDS, f"peer {name} of {store} to say {text!r}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {seen.get('peer')}") from None
    return seen["peer"]


def test_the_first_write_after_a_promotion_has_its_generation_on_disk(cluster):
    """b is promoted and writes once; kill -9 right after that write
    returns. b's new generation was stored before the write went ahead:
    started again, b still has it (a's is its ancestor), so b's writes
    count as a history of their own in any later comparison with a."""
    b = cluster.serve("b")
    a = cluster.mount("a", peers=[b], listen=True)
    wait_peer_state(a.store, "b", "connected")
    write_at(a.mountpoint / "disk.img", os.urandom(1 * MiB), 0)
    wait_flushed(a.store)
    common = status_json(a.store)["generation"]
    assert status_json(b.store)["generation"] == common

    b, b_mnt = kill_primary_and_promote(cluster, a, b)  # b's first write
    kill9(b)
    subprocess.run(["fusermount3", "-uz", str(b_mnt)], capture_output=True, timeout=20)
    b = cluster.mount("b", store=b.store, mountpoint=b_mnt, listen=b.endpoint)
    doc = status_json(b.store)
    assert doc["generation"] != common and common in doc["generation_history"], doc
    assert (b.store / "disk.img").read_bytes()[:64 * KiB] == b"B" * (64 * KiB)
