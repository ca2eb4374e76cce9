"""Full sync: a peer the primary knows nothing about (a brand-new empty store,
or a copy of unknown age under a new peer name) is brought in sync by
comparing BLAKE2b checksums of 64 KiB blocks and sending only the blocks
that differ (DESIGN.md guarantee 6, resync proportional to the damage)."""

import os
import random
import re
import subprocess

from conftest import (
    assert_same_manifest, assert_sync_wait, bytes_applied, peer_status, sha256_file,
    status_json, store_manifest, wait_flushed, wait_peer_state)

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB
SIZES = {"a.img": 16 * MiB, "b.img": 12 * MiB, "dir/c.img": 4 * MiB}   # 32 MiB


def fill(mountpoint, seed):
    rng = random.Random(seed)
    (mountpoint / "dir").mkdir(exist_ok=True)
    for rel, size in SIZES.items():
        with open(mountpoint / rel, "wb") as f:
            f.write(rng.randbytes(size))
    os.chmod(mountpoint / "dir" / "c.img", 0o600)
    os.symlink("a.img", mountpoint / "link")


def test_new_empty_peer_gets_a_full_sync(cluster):
    # The store gets its data while it has no peer at all.
    alone = cluster.mount("primary", listen=False)
    fill(alone.mountpoint, seed=1)
    cluster.stop(alone)
    before = store_manifest(alone.store)

    backup = cluster.serve("backup")
    assert not store_manifest(backup.store), "the new secondary's store is not empty"
    primary = cluster.mount("primary", store=alone.store, mountpoint=alone.mountpoint,
                            peers=[backup])
    assert_sync_wait(primary.store, peer="backup", timeout=60)
    peer = peer_status(primary.store, "backup")
    assert peer["state"] == "connected" and peer["in_sync"] is True, peer
    assert peer["full_sync_pending"] is False, peer
    assert_same_manifest(primary.store, backup.store, "stores after a full sync")
    assert store_manifest(primary.store) == before, "the primary's data changed"
    assert status_json(backup.store)["consistent"] is True
    applied = bytes_applied(backup.store)
    print(f"full sync applied {applied} bytes")
    total = sum(SIZES.values())
    assert total <= applied <= total + 2 * BLOCK, \
        f"full sync of {total} bytes onto an empty store applied {applied} bytes"
    assert "peer backup: resync done" in primary.log(), primary.log()


def test_stale_copy_under_a_new_name_sends_only_changed_blocks(cluster):
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    fill(primary.mountpoint, seed=2)
    wait_flushed(primary.store)
    assert_same_manifest(primary.store, backup.store, "stores before the stop")
    mountpoint, endpoint = primary.mountpoint, primary.endpoint
    cluster.stop(primary)
    cluster.stop(backup)

    # Yesterday's copy of the secondary, then changed behind mirrorfs's back.
    stale = cluster.root / "stale.store"
    r = subprocess.run(["cp", "-a", str(backup.store), str(stale)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    changed = [("a.img", 0), ("a.img", 100 * BLOCK), ("b.img", 37 * BLOCK),
               ("dir/c.img", 63 * BLOCK)]
    for rel, off in changed:
        with open(stale / rel, "r+b") as f:
            f.seek(off + 1000)
            f.write(os.urandom(3000))       # a few KiB inside one 64 KiB block
    (stale / "junk.img").write_bytes(b"j" * 5000)          # a file the primary lacks
    os.truncate(stale / "b.img", SIZES["b.img"] - 5 * BLOCK)  # and one that is too short
    assert store_manifest(stale) != store_manifest(backup.store)

    c = cluster.serve("c", store=stale)
    primary = cluster.mount("primary", store=primary.store, mountpoint=mountpoint,
                            listen=endpoint, peers=[c])
    assert_sync_wait(primary.store, peer="c", timeout=60)
    peer = peer_status(primary.store, "c")
    assert peer["state"] == "connected" and peer["in_sync"] is True, peer
    assert_same_manifest(primary.store, c.store, "primary and the stale copy after a full sync")
    assert sha256_file(c.store / "a.img") == sha256_file(primary.store / "a.img")
    applied = bytes_applied(c.store)
    print(f"full sync of the stale copy applied {applied} bytes")
    expect = (len(changed) + 5) * BLOCK          # changed blocks + the cut-off tail
    assert applied <= expect + 2 * BLOCK, \
        (f"full sync of a stale copy with {len(changed)} changed blocks and a "
         f"{5 * BLOCK}-byte short tail applied {applied} bytes (expected about {expect}; "
         f"the files hold {sum(SIZES.values())})")
    assert applied >= len(changed) * BLOCK, f"only {applied} bytes applied"
    # The log says what went over the wire, and what was only compared.
    done = re.findall(r"peer c: resync done, (\d+) bytes sent \((\d+) compared\)",
                      primary.log())
    assert done, primary.log()[-3000:]
    sent, compared = map(int, done[-1])
    assert sent <= expect + 2 * BLOCK, \
        f"the primary logged {sent} bytes sent for about {expect} bytes of differences"
    assert compared >= sum(SIZES.values()) - 5 * BLOCK, \
        f"the primary logged {compared} bytes compared of {sum(SIZES.values())}"
