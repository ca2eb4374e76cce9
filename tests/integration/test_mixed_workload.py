"""A mixed workload through the mount while the peer is connected: concurrent
random pwrite/ftruncate/punch-hole on shared files, namespace operations in
parallel, a sparse 1 GiB image and a punched image. Afterwards the two stores
are identical file by file, and holes stayed holes on the peer."""

import ctypes
import os
import random
import threading

from conftest import (allocated_bytes, assert_same_manifest, wait_in_sync,
                      wait_same_manifest)

MiB = 1 << 20
GiB = 1 << 30
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def punch_hole(fd, offset, length):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE, {offset}, {length}): {os.strerror(err)}")


def run_threads(targets, timeout=300):
    """Runs each callable in its own thread; re-raises the first error."""
    errors = []

    def wrap(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return body

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"a workload thread did not finish in {timeout} s"
    if errors:
        raise errors[0]


def data_writer(paths, seed, ops=120, span=6 * MiB):
    """Random pwrites of 1 B .. 1 MiB (log-uniform), with some ftruncates and
    punched holes, on files shared with the other writers."""
    def work():
        rng = random.Random(seed)
        fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in paths]
        try:
            for _ in range(ops):
                fd = rng.choice(fds)
                dice = rng.random()
                if dice < 0.80:
                    size = max(1, int(2 ** rng.uniform(0, 20)))
                    offset = rng.randrange(0, span - size + 1)
                    assert os.pwrite(fd, rng.randbytes(size), offset) == size
                elif dice < 0.88:
                    os.ftruncate(fd, rng.randrange(0, span))
                else:
                    offset = rng.randrange(0, span)
                    punch_hole(fd, offset, rng.randrange(1, 2 * MiB))
        finally:
            for fd in fds:
                os.close(fd)
    return work


def namespace_worker(root, seed, ops=200):
    """create/rename/unlink/truncate/chmod/mkdir/rmdir/symlink in `root`,
    keeping its own model of what exists so every call is valid."""
    def work():
        rng = random.Random(seed)
        dirs = [root]
        files = []
        links = []
        n = 0
        for _ in range(ops):
            n += 1
            op = rng.choice(["create", "create", "mkdir", "rename", "unlink", "truncate",
                             "chmod", "symlink", "rmdir", "replace"])
            if op == "create" or not files and op in ("rename", "unlink", "truncate",
                                                      "chmod", "replace"):
                path = os.path.join(rng.choice(dirs), f"f{n}")
                with open(path, "wb") as f:
                    f.write(rng.randbytes(rng.randrange(0, 200_000)))
                files.append(path)
            elif op == "mkdir":
                path = os.path.join(rng.choice(dirs), f"d{n}")
                os.mkdir(path, 0o750)
                dirs.append(path)
            elif op == "rename":
                src = files.pop(rng.randrange(len(files)))
                dst = os.path.join(rng.choice(dirs), f"r{n}")
                os.rename(src, dst)
                files.append(dst)
            elif op == "replace" and len(files) >= 2:
                src, dst = rng.sample(files, 2)
                os.replace(src, dst)
                files.remove(src)
            elif op == "unlink":
                os.unlink(files.pop(rng.randrange(len(files))))
            elif op == "truncate":
                os.truncate(rng.choice(files), rng.randrange(0, 300_000))
            elif op == "chmod":
                os.chmod(rng.choice(files), rng.choice([0o600, 0o640, 0o644, 0o755, 0o700]))
            elif op == "symlink":
                path = os.path.join(rng.choice(dirs), f"l{n}")
                os.symlink(rng.choice(["../x", f"target-{n}", "/etc/hostname"]), path)
                links.append(path)
            elif op == "rmdir":
                empty = [d for d in dirs[1:] if not os.listdir(d)]
                if empty:
                    d = rng.choice(empty)
                    os.rmdir(d)
                    dirs.remove(d)
    return work


def fsync_tree(root):
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def test_mixed_workload(pair):
    cluster, primary, backup = pair
    mnt = primary.mountpoint
    (mnt / "data").mkdir()
    (mnt / "ns").mkdir()
    shared = [str(mnt / "data" / f"image{i}.img") for i in range(3)]

    workers = [data_writer(shared, seed=1000 + i) for i in range(4)]
    workers.append(namespace_worker(str(mnt / "ns"), seed=7))
    run_threads(workers)

    # A sparse 1 GiB image with data only at both ends.
    with open(mnt / "sparse.img", "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(GiB - MiB)
        f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    assert os.path.getsize(mnt / "sparse.img") == GiB

    # 8 MiB written, then 4 MiB punched out of the middle.
    with open(mnt / "holes.img", "wb") as f:
        f.write(os.urandom(8 * MiB))
        f.flush()
        punch_hole(f.fileno(), 2 * MiB, 4 * MiB)
        os.fsync(f.fileno())

    fsync_tree(mnt)
    wait_in_sync(primary.store, "backup")
    manifest = wait_same_manifest(primary.store, backup.store)
    assert_same_manifest(mnt, primary.store, "mount and store")
    # The workload really did something.
    assert sum(1 for e in manifest.values() if e.type == "file") >= 5
    assert any(e.type == "symlink" for e in manifest.values())

    for name, written in (("sparse.img", 2 * MiB), ("holes.img", 4 * MiB)):
        mine = allocated_bytes(primary.store / name)
        theirs = allocated_bytes(backup.store / name)
        assert abs(mine - theirs) <= MiB, \
            f"{name}: {mine} bytes allocated on the primary, {theirs} on the peer"
        assert theirs <= written + MiB, \
            f"{name}: peer allocated {theirs} bytes for {written} bytes of data: holes were filled"
