"""POSIX parity: the same system calls on a mirrorfs mount and on a plain
folder must give the same results and the same errno.

The mount is made by the test driver tests/support/mfs_testmount (a Volume
with no peers); its path comes from $MFS_TESTMOUNT (default
build/tests/support/mfs_testmount). The store and the plain folder live side
by side in a private temporary folder, so that both are on the same file
system (st_blocks, SEEK_DATA/SEEK_HOLE and O_DIRECT behave alike).

Expected differences are listed in EXPECTED_DIFFERENCES and checked
explicitly, never skipped silently.
"""

import ctypes
import errno
import mmap
import os
import select
import shutil
import signal
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTMOUNT = os.environ.get(
    "MFS_TESTMOUNT", os.path.join(REPO, "build", "tests", "support", "mfs_testmount"))

# What the mount answers on purpose where a plain folder answers otherwise.
EXPECTED_DIFFERENCES = {
    # mirrorfs does not mirror hard links: link() is refused.
    "link": ("err", "EPERM"),
    # STORE/.mirrorfs is reserved: it cannot be created through the mount.
    "mkdir_state_dir": ("err", "EPERM"),
}

DEADLINE_S = 10.0
MiB = 1 << 20


def wait_until(cond, what, deadline_s=DEADLINE_S):
    """Polls `cond` until true or the deadline; fails the test naming `what`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    if not cond():
        pytest.fail("timed out after %.0f s waiting for %s" % (deadline_s, what))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Yields (mount, plain): two empty folders to run the same calls in."""
    if not os.path.exists(TESTMOUNT):
        pytest.skip("mfs_testmount not built at %s (set MFS_TESTMOUNT)" % TESTMOUNT)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")
    base = tmp_path_factory.mktemp("parity")
    store, mnt, plain = base / "store", base / "mnt", base / "plain"
    for d in (store, mnt, plain):
        d.mkdir()
    (store / ".mirrorfs").mkdir()
    (store / ".mirrorfs" / "state").write_text("node state")
    proc = subprocess.Popen([TESTMOUNT, str(store), str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            proc.kill()
            _, err = proc.communicate(timeout=DEADLINE_S)
            pytest.fail("mfs_testmount did not get ready: %r %r" % (line, err))
        wait_until(lambda: os.path.ismount(str(mnt)), "the mount to appear")
        yield str(mnt), str(plain)
    finally:
        # A file a failed test left open keeps the mount busy: detach then.
        if subprocess.run(["fusermount3", "-u", str(mnt)]).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=DEADLINE_S)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr.read()


@pytest.fixture
def pair(dirs, request):
    """A fresh subfolder per test on both sides."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    out = []
    for root in dirs:
        d = os.path.join(root, name)
        os.mkdir(d)
        out.append(d)
    yield out
    for d in out:
        shutil.rmtree(d, ignore_errors=True)


class Recorder:
    """Runs calls, recording ("ok", value) or ("err", "ENAME") per step."""

    def __init__(self, base):
        self.base = base
        self.steps = []

    def p(self, *names):
        return os.path.join(self.base, *names)

    def do(self, label, fn, *args, **kwargs):
        try:
            value = fn(*args, **kwargs)
            result = ("ok", value)
        except OSError as e:
            result = ("err", errno.errorcode.get(e.errno, str(e.errno)))
            value = None
        self.steps.append((label, result))
        return value


def stat_view(st, times=False):
    view = {"mode": oct(st.st_mode), "size": st.st_size, "nlink": st.st_nlink,
            "blocks": st.st_blocks}
    if times:
        view["atime_ns"] = st.st_atime_ns
        view["mtime_ns"] = st.st_mtime_ns
    return view


def run_both(pair, scenario):
    mount, plain = Recorder(pair[0]), Recorder(pair[1])
    scenario(mount)
    scenario(plain)
    return mount.steps, plain.steps


def assert_parity(pair, scenario):
    got, want = run_both(pair, scenario)
    assert [label for label, _ in got] == [label for label, _ in want]
    for (label, g), (_, w) in zip(got, want):
        if label in EXPECTED_DIFFERENCES:
            assert g == EXPECTED_DIFFERENCES[label], label
        else:
            assert g == w, "step %s: mount %r, plain folder %r" % (label, g, w)


libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def renameat2(old, new, flags):
    r = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                       ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fallocate(fd, mode, offset, length):
    r = libc.fallocate(ctypes.c_int(fd), ctypes.c_int(mode),
                       ctypes.c_long(offset), ctypes.c_long(length))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


# ---- scenarios ---------------------------------------------------------------

def test_create_exclusive(pair):
    def s(r):
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        fd = r.do("create", os.open, r.p("f"), flags, 0o640)
        r.do("close", os.close, fd)
        r.do("create_again", os.open, r.p("f"), flags, 0o640)
        r.do("stat", lambda: stat_view(os.stat(r.p("f"))))
        r.do("open_missing", os.open, r.p("missing"), os.O_RDONLY)
    assert_parity(pair, s)


def test_write_pwrite_pread(pair):
    def s(r):
        fd = os.open(r.p("f"), os.O_CREAT | os.O_RDWR, 0o644)
        r.do("write", os.write, fd, b"hello world")
        r.do("pwrite", os.pwrite, fd, b"XYZ", 20)
        r.do("pread_all", os.pread, fd, 100, 0)
        r.do("pread_mid", os.pread, fd, 5, 6)
        r.do("pread_eof", os.pread, fd, 5, 1000)
        r.do("fstat", lambda: stat_view(os.fstat(fd)))
        r.do("fsync", os.fsync, fd)
        r.do("fdatasync", os.fdatasync, fd)
        os.close(fd)
        fd = os.open(r.p("f"), os.O_WRONLY | os.O_APPEND)
        r.do("append", os.write, fd, b"tail")
        os.close(fd)
        r.do("content", read_file, r.p("f"))
        fd = os.open(r.p("f"), os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        r.do("after_o_trunc", lambda: os.stat(r.p("f")).st_size)
        fd = os.open(r.p("f"), os.O_RDONLY)
        r.do("read_only_write", os.write, fd, b"x")
        os.close(fd)
    assert_parity(pair, s)


def test_truncate_grow_and_shrink(pair):
    def s(r):
        with open(r.p("f"), "wb") as f:
            f.write(b"0123456789")
        r.do("grow", os.truncate, r.p("f"), 100 * 1024)
        r.do("stat_grown", lambda: stat_view(os.stat(r.p("f"))))
        r.do("content_grown", lambda: read_file(r.p("f"))[:16])
        r.do("shrink", os.truncate, r.p("f"), 4)
        r.do("content_shrunk", read_file, r.p("f"))
        fd = os.open(r.p("f"), os.O_RDWR)
        r.do("ftruncate", os.ftruncate, fd, 2)
        r.do("fstat", lambda: os.fstat(fd).st_size)
        os.close(fd)
        r.do("truncate_dir", os.truncate, r.base, 0)
    assert_parity(pair, s)


def test_directories(pair):
    def s(r):
        r.do("mkdir", os.mkdir, r.p("d"), 0o750)
        r.do("mkdir_again", os.mkdir, r.p("d"))
        r.do("stat_dir", lambda: oct(os.stat(r.p("d")).st_mode))
        with open(r.p("d", "x"), "w") as f:
            f.write("x")
        r.do("rmdir_not_empty", os.rmdir, r.p("d"))
        r.do("rmdir_file", os.rmdir, r.p("d", "x"))
        r.do("unlink_dir", os.unlink, r.p("d"))
        r.do("unlink", os.unlink, r.p("d", "x"))
        r.do("unlink_missing", os.unlink, r.p("d", "x"))
        r.do("rmdir", os.rmdir, r.p("d"))
        r.do("rmdir_missing", os.rmdir, r.p("d"))
        r.do("mkdir_in_missing", os.mkdir, r.p("no", "d"))
    assert_parity(pair, s)


def test_listdir_sorted(pair):
    def s(r):
        for name in ["b", "a", "c c", "ünïcode", ".hidden"]:
            with open(r.p(name), "w") as f:
                f.write(name)
        os.mkdir(r.p("sub"))
        for i in range(300):  # more than one readdir buffer
            open(r.p("sub", "entry-%03d" % i), "w").close()
        r.do("listdir", lambda: sorted(os.listdir(r.base)))
        r.do("listdir_many", lambda: sorted(os.listdir(r.p("sub"))))
        r.do("scandir_types", lambda: sorted(
            (e.name, e.is_dir(), e.is_file()) for e in os.scandir(r.base)))
    assert_parity(pair, s)


def test_rename(pair):
    def s(r):
        for name, data in (("a", "A"), ("b", "B"), ("c", "C")):
            with open(r.p(name), "w") as f:
                f.write(data)
        os.mkdir(r.p("d"))
        os.mkdir(r.p("e"))
        with open(r.p("e", "x"), "w") as f:
            f.write("x")
        r.do("rename_over", os.rename, r.p("a"), r.p("b"))
        r.do("content_b", read_file, r.p("b"))
        r.do("a_gone", os.stat, r.p("a"))
        r.do("noreplace", renameat2, r.p("b"), r.p("c"), RENAME_NOREPLACE)
        r.do("noreplace_free", renameat2, r.p("b"), r.p("b2"), RENAME_NOREPLACE)
        r.do("exchange", renameat2, r.p("b2"), r.p("c"), RENAME_EXCHANGE)
        r.do("after_exchange", lambda: (read_file(r.p("b2")), read_file(r.p("c"))))
        r.do("exchange_missing", renameat2, r.p("zz"), r.p("c"), RENAME_EXCHANGE)
        r.do("rename_into_dir", os.rename, r.p("c"), r.p("d", "c"))
        r.do("rename_dir", os.rename, r.p("d"), r.p("d2"))
        r.do("content_moved", read_file, r.p("d2", "c"))
        r.do("dir_over_nonempty", os.rename, r.p("d2"), r.p("e"))
        r.do("file_over_dir", os.rename, r.p("b2"), r.p("e"))
        r.do("dir_over_file", os.rename, r.p("d2"), r.p("b2"))
        r.do("missing", os.rename, r.p("nope"), r.p("x"))
        r.do("listdir", lambda: sorted(os.listdir(r.base)))
    assert_parity(pair, s)


def test_symlinks(pair):
    def s(r):
        with open(r.p("target"), "w") as f:
            f.write("data")
        r.do("symlink", os.symlink, "target", r.p("l"))
        r.do("symlink_again", os.symlink, "target", r.p("l"))
        r.do("readlink", os.readlink, r.p("l"))
        r.do("lstat", lambda: stat.S_ISLNK(os.lstat(r.p("l")).st_mode))
        r.do("follow", read_file, r.p("l"))
        r.do("dangling", os.symlink, "nowhere/" + "x" * 200, r.p("dangling"))
        r.do("readlink_dangling", os.readlink, r.p("dangling"))
        r.do("open_dangling", os.open, r.p("dangling"), os.O_RDONLY)
        r.do("readlink_file", os.readlink, r.p("target"))
        r.do("unlink_link", os.unlink, r.p("l"))
        r.do("target_kept", os.path.exists, r.p("target"))
    assert_parity(pair, s)


def test_chmod_and_utime(pair):
    def s(r):
        with open(r.p("f"), "w") as f:
            f.write("x")
        r.do("chmod", os.chmod, r.p("f"), 0o600)
        r.do("mode", lambda: oct(os.stat(r.p("f")).st_mode))
        r.do("chmod_suid", os.chmod, r.p("f"), 0o4755)
        r.do("mode_suid", lambda: oct(os.stat(r.p("f")).st_mode))
        r.do("utime_ns", os.utime, r.p("f"), ns=(1_000_000_123, 2_000_000_456))
        r.do("times", lambda: stat_view(os.stat(r.p("f")), times=True))
        fd = os.open(r.p("f"), os.O_RDONLY)
        r.do("futime", os.utime, fd, ns=(5_000_000_000, 6_000_000_789))
        os.close(fd)
        r.do("times_fd", lambda: stat_view(os.stat(r.p("f")), times=True))
        os.symlink("f", r.p("l"))
        r.do("utime_nofollow", os.utime, r.p("l"), ns=(7, 8), follow_symlinks=False)
        r.do("link_times", lambda: (os.lstat(r.p("l")).st_mtime_ns,
                                    os.stat(r.p("f")).st_mtime_ns))
        r.do("chown_same", os.chown, r.p("f"), os.getuid(), os.getgid())
        r.do("chmod_missing", os.chmod, r.p("missing"), 0o600)
    assert_parity(pair, s)


def test_holes_and_sparse_files(pair):
    def s(r):
        fd = os.open(r.p("f"), os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"\xab" * (4 * MiB))
        os.fsync(fd)
        r.do("punch", fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
             1 * MiB, 2 * MiB)
        r.do("size_after_punch", lambda: os.fstat(fd).st_size)
        r.do("blocks_after_punch", lambda: os.fstat(fd).st_blocks)
        r.do("seek_data_0", os.lseek, fd, 0, os.SEEK_DATA)
        r.do("seek_hole_0", os.lseek, fd, 0, os.SEEK_HOLE)
        r.do("seek_data_hole", os.lseek, fd, 1 * MiB, os.SEEK_DATA)
        r.do("seek_data_eof", os.lseek, fd, 8 * MiB, os.SEEK_DATA)
        r.do("hole_reads_zero", lambda: os.pread(fd, 16, 2 * MiB) == b"\0" * 16)
        r.do("allocate_keep_size", fallocate, fd, FALLOC_FL_KEEP_SIZE, 0, 8 * MiB)
        r.do("size_keep", lambda: os.fstat(fd).st_size)
        r.do("allocate_grow", fallocate, fd, 0, 0, 6 * MiB)
        r.do("size_grow", lambda: os.fstat(fd).st_size)
        os.close(fd)
        fd = os.open(r.p("sparse"), os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(fd, 100 * MiB)
        os.pwrite(fd, b"z" * 4096, 50 * MiB)
        os.fsync(fd)
        r.do("sparse_stat", lambda: stat_view(os.fstat(fd)))
        r.do("sparse_data", os.lseek, fd, 0, os.SEEK_DATA)
        r.do("sparse_hole", os.lseek, fd, 50 * MiB, os.SEEK_HOLE)
        os.close(fd)
    assert_parity(pair, s)


def test_o_direct_and_o_dsync(pair):
    def s(r):
        buf = mmap.mmap(-1, 2 * 4096)  # page aligned, as O_DIRECT wants
        buf.write(b"D" * 4096 + b"E" * 4096)
        fd = r.do("open_direct", os.open, r.p("direct"),
                  os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
        r.do("write_direct", os.write, fd, buf)
        rbuf = mmap.mmap(-1, 4096)
        r.do("read_direct", lambda: (os.preadv(fd, [rbuf], 4096), rbuf[:8]))
        r.do("fstat", lambda: os.fstat(fd).st_size)
        os.close(fd)
        r.do("content_direct", lambda: read_file(r.p("direct"))[4090:4100])
        fd = r.do("open_dsync", os.open, r.p("dsync"),
                  os.O_CREAT | os.O_WRONLY | os.O_DSYNC, 0o644)
        r.do("write_dsync", os.write, fd, b"durable")
        os.close(fd)
        fd = os.open(r.p("dsync"), os.O_WRONLY | os.O_SYNC)
        r.do("write_sync", os.pwrite, fd, b"!", 7)
        os.close(fd)
        r.do("content_dsync", read_file, r.p("dsync"))
    assert_parity(pair, s)


def test_hard_link_is_refused(pair):
    def s(r):
        with open(r.p("f"), "w") as f:
            f.write("x")
        r.do("link", os.link, r.p("f"), r.p("g"))
        r.do("nlink", lambda: os.stat(r.p("f")).st_nlink if not
             os.path.exists(r.p("g")) else "linked")
    got, want = run_both(pair, s)
    assert dict(want)["link"] == ("ok", None)  # a plain folder links
    assert dict(got)["link"] == EXPECTED_DIFFERENCES["link"]
    assert dict(got)["nlink"] == ("ok", 1)


def test_state_directory_is_invisible(dirs):
    mount, _ = dirs
    assert ".mirrorfs" not in os.listdir(mount)
    for call in (lambda: os.stat(os.path.join(mount, ".mirrorfs")),
                 lambda: os.access(os.path.join(mount, ".mirrorfs"), os.F_OK) or
                 (_ for _ in ()).throw(FileNotFoundError(errno.ENOENT, "x")),
                 lambda: os.listdir(os.path.join(mount, ".mirrorfs")),
                 lambda: open(os.path.join(mount, ".mirrorfs", "state"))):
        with pytest.raises(FileNotFoundError):
            call()
    with pytest.raises(PermissionError) as e:
        os.mkdir(os.path.join(mount, ".mirrorfs"))
    assert e.value.errno == errno.EPERM
    assert EXPECTED_DIFFERENCES["mkdir_state_dir"] == ("err", "EPERM")
    with pytest.raises(PermissionError):
        os.symlink("x", os.path.join(mount, ".mirrorfs"))
    with open(os.path.join(mount, "tmp-file"), "w") as f:
        f.write("x")
    with pytest.raises(PermissionError):
        os.rename(os.path.join(mount, "tmp-file"), os.path.join(mount, ".mirrorfs"))
    os.unlink(os.path.join(mount, "tmp-file"))
    # A subfolder may have its own .mirrorfs; only the root's is reserved.
    sub = os.path.join(mount, "sub-with-state-name")
    os.mkdir(sub)
    os.mkdir(os.path.join(sub, ".mirrorfs"))
    shutil.rmtree(sub)


def test_statfs(dirs):
    mount, plain = dirs
    a, b = os.statvfs(mount), os.statvfs(plain)
    assert (a.f_bsize, a.f_blocks, a.f_files) == (b.f_bsize, b.f_blocks, b.f_files)
