"""Shared fixtures and helpers for the mirrorfs integration tests.

Every test gets a private folder (short, under /tmp, so that
STORE/.mirrorfs/control.sock fits in a Unix socket address), its own daemons
on free loopback ports, and a teardown that always runs: it stops the daemons,
unmounts every mount under the folder (`fusermount3 -u`, then lazily), kills
every mirrorfs process whose command line names the folder, and removes it.
When a test fails, the report gets a section with each daemon's captured
stdout/stderr and STORE/.mirrorfs/log. A foreground (-f) daemon logs to its
stderr, a daemonized one to STORE/.mirrorfs/log; `Node.log()` reads the right
one.

Waiting is always polling with a deadline (`wait_until`), never a fixed sleep.
Mirrors are proved by comparing whole-store manifests (`store_manifest`).

Environment:
  MIRRORFS_BIN       the mirrorfs binary (default: build/cli/mirrorfs)
  MFS_TESTMOUNT      optional test helper binary (set by ctest when built)
  MFS_TIMEOUT_SCALE  multiplies every readiness deadline (slow machines)
  MFS_KEEP_TMP=1     keep the per-test folders for inspection
"""

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.05
TIMEOUT_SCALE = float(os.environ.get("MFS_TIMEOUT_SCALE", "1"))
# Readiness of a daemon (mount visible / endpoint bound / peer connected).
READY_SECONDS = 30 * TIMEOUT_SCALE
# One CLI call that is not expected to block (status, stop, a failing mount).
CLI_SECONDS = 60 * TIMEOUT_SCALE
# mirrorfs's default intent extent (DESIGN.md).
INTENT_EXTENT_BYTES = 4 << 20


# --------------------------------------------------------------- basics ----

def mirrorfs_bin():
    """Path of the mirrorfs binary under test."""
    return os.environ.get("MIRRORFS_BIN", str(REPO / "build" / "cli" / "mirrorfs"))


def wait_until(predicate, timeout, what):
    """Polls predicate() every 50 ms until it returns a truthy value, which is
    returned. Raises AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(POLL_SECONDS)


_ports_handed_out = set()


def free_port():
    """A TCP port on 127.0.0.1 that is free now and not handed out before in
    this session."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def free_endpoint():
    return f"tcp://127.0.0.1:{free_port()}"


def _unescape_mount_field(field):
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints():
    """Mount points of this mount namespace, as strings, in mount order."""
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return [_unescape_mount_field(line.split()[1]) for line in f if line.strip()]


def is_mounted(path):
    return os.path.realpath(path) in mountpoints()


def run(args, timeout=CLI_SECONDS, **kwargs):
    """Runs a command, capturing text output. A command that outlives
    `timeout` fails the test instead of hanging it."""
    try:
        return subprocess.run(
            [str(a) for a in args], capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"command did not finish in {timeout} s: {' '.join(map(str, args))}\n"
                             f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None


def mirrorfs(*args, timeout=CLI_SECONDS):
    """Runs `mirrorfs ARGS...` and returns the CompletedProcess."""
    return run([mirrorfs_bin(), *args], timeout=timeout)


def status_json(store, timeout=CLI_SECONDS):
    """`mirrorfs status STORE --json`, checked: exit 0 and stdout exactly one
    JSON document. Returns it as a dict."""
    r = mirrorfs("status", store, "--json", timeout=timeout)
    assert r.returncode == 0, f"mirrorfs status {store} --json: exit {r.returncode}\n{r.stderr}"
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"status --json is not one JSON document ({e}):\n{r.stdout!r}") from None
    assert isinstance(doc, dict), f"status --json is not an object: {r.stdout!r}"
    return doc


def status_ok(store):
    """True when the daemon of `store` answers `status --json`."""
    r = mirrorfs("status", store, "--json", timeout=CLI_SECONDS)
    return r.returncode == 0


def peer_status(store, name):
    """The peers[] entry called `name` in the status of `store`, or None."""
    for peer in status_json(store).get("peers", []):
        if peer.get("name") == name:
            return peer
    return None


def wait_peer_state(store, name, states, timeout=READY_SECONDS):
    """Waits until peer `name` of `store` is in one of `states` (a string or
    a collection); returns its status entry."""
    if isinstance(states, str):
        states = (states,)
    last = {}

    def check():
        peer = peer_status(store, name)
        last["peer"] = peer
        return peer if peer is not None and peer.get("state") in states else None

    try:
        return wait_until(check, timeout, f"peer {name} of {store} in state {'/'.join(states)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last.get('peer')}") from None


def check_mirror_then_umount(store, mnt, backup, name, size):
    """For a primary mounted outside the harness (mount(8), the helper):
    peer `backup` connects, a file of `size` random bytes written through
    `mnt` reaches it, and umount(8) stops the primary cleanly."""
    wait_peer_state(store, backup.name, "connected")
    data = os.urandom(size)
    (mnt / name).write_bytes(data)
    wait_in_sync(store, backup.name)
    wait_same_manifest(store, backup.store)
    r = run(["umount", mnt])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: mirrorfs("status", store).returncode == 1, READY_SECONDS,
               "the primary to exit after umount")
    assert (backup.store / name).read_bytes() == data


def wait_in_sync(store, name, timeout=READY_SECONDS):
    def check():
        peer = peer_status(store, name)
        return peer if peer and peer.get("in_sync") is True else None
    return wait_until(check, timeout, f"peer {name} of {store} in sync")


# ------------------------------------------------------------ manifests ----

Entry = collections.namedtuple("Entry", "type mode size sha256 target")


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def store_manifest(root):
    """Maps each path under `root` (relative, excluding the top-level
    .mirrorfs folder) to Entry(type, mode, size, sha256, target): files have
    size and sha256, symlinks their target, directories only their mode."""
    root = str(root)
    manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".mirrorfs"]
            filenames = [f for f in filenames if f != ".mirrorfs"]
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                manifest[rel] = Entry("dir", mode, None, None, None)
            elif stat.S_ISREG(st.st_mode):
                manifest[rel] = Entry("file", mode, st.st_size, sha256_file(path), None)
            elif stat.S_ISLNK(st.st_mode):
                manifest[rel] = Entry("symlink", None, None, None, os.readlink(path))
            else:
                manifest[rel] = Entry(f"other:{stat.S_IFMT(st.st_mode):o}", mode, None, None, None)
    return manifest


def manifest_diff(a, b, limit=20):
    """Human-readable differences between two manifests ('' if equal)."""
    lines = []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            lines.append(f"  {rel}: {a.get(rel)} != {b.get(rel)}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def assert_same_manifest(path_a, path_b, what="stores"):
    a, b = store_manifest(path_a), store_manifest(path_b)
    diff = manifest_diff(a, b)
    assert not diff, f"{what} differ ({path_a} vs {path_b}):\n{diff}"
    return a


def wait_same_manifest(path_a, path_b, timeout=READY_SECONDS, what="stores"):
    """Waits until both manifests are equal; on timeout fails with the diff."""
    last = {}

    def check():
        a, b = store_manifest(path_a), store_manifest(path_b)
        last["diff"] = manifest_diff(a, b)
        return a if not last["diff"] else None
    try:
        return wait_until(check, timeout, f"{what} to become equal")
    except AssertionError as e:
        raise AssertionError(f"{e} ({path_a} vs {path_b}):\n{last.get('diff')}") from None


def allocated_bytes(path):
    """Bytes allocated on disk (st_blocks * 512) by a file, or by every file
    under a folder (excluding .mirrorfs)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if os.path.samefile(dirpath, path):
            dirnames[:] = [d for d in dirnames if d != ".mirrorfs"]
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# ------------------------------------------------------------- processes ----

def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # state is the field after the parenthesised command name.
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def mirrorfs_pids(under, verbs=("mount", "serve")):
    """Pids of live mirrorfs daemons (`mount`/`serve`) whose command line
    names a path under `under`."""
    under = str(under)
    name = os.path.basename(mirrorfs_bin())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = _cmdline(entry)
        if len(argv) < 2 or os.path.basename(argv[0]) != name:
            continue
        if verbs and not any(v in argv[1:3] for v in verbs):
            continue
        if any(a.startswith(under) for a in argv[1:]) and _pid_alive(entry):
            pids.append(int(entry))
    return pids


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path, lines=150):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()
    except OSError as e:
        return f"<{path}: {e.strerror}>"
    cut = f"... ({len(text) - lines} earlier lines)\n" if len(text) > lines else ""
    return cut + "\n".join(text[-lines:])


class Node:
    """One mirrorfs daemon started by a Cluster."""

    def __init__(self, cluster, name, verb, store, mountpoint, endpoint, foreground):
        self.cluster = cluster
        self.name = name
        self.verb = verb
        self.store = Path(store)
        self.mountpoint = Path(mountpoint) if mountpoint else None
        self.endpoint = endpoint
        self.foreground = foreground
        self.proc = None          # the Popen of a foreground (-f) daemon
        self.pids = set()         # every pid known to be this daemon
        n = len(cluster.nodes)
        self.stdout_path = cluster.root / "logs" / f"{n}-{name}-{verb}.stdout"
        self.stderr_path = cluster.root / "logs" / f"{n}-{name}-{verb}.stderr"

    def __repr__(self):
        return f"Node({self.name}, {self.verb}, {self.store})"

    @property
    def log_path(self):
        """Where this daemon's log lines go: its captured stderr in the
        foreground (-f), STORE/.mirrorfs/log when daemonized."""
        if self.foreground:
            return self.stderr_path
        return self.store_log_path

    @property
    def store_log_path(self):
        return self.store / ".mirrorfs" / "log"

    @property
    def pid(self):
        """The daemon's pid (the foreground process, or the daemonized one)."""
        if self.proc is not None:
            return self.proc.pid
        assert self.pids, f"{self}: daemon pid unknown"
        return min(self.pids)

    def log(self):
        """The daemon's log so far ('' if none yet)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def alive(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return any(_pid_alive(p) for p in self.pids)

    def status(self):
        return status_json(self.store)

    def peer(self, name):
        return peer_status(self.store, name)

    def signal(self, sig):
        for pid in self.live_pids():
            _signal(pid, sig)

    def live_pids(self):
        pids = set(p for p in self.pids if _pid_alive(p))
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return pids

    def wait_exit(self, timeout=READY_SECONDS):
        """Waits until the daemon has exited; returns the foreground exit
        status (None for a daemonized node)."""
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{self} still running after {timeout} s") from None
        wait_until(lambda: not self.alive(), timeout, f"{self} to exit")
        return None

    def describe(self):
        head = (f"--- node {self.name} ({self.verb}, "
                f"{'foreground' if self.foreground else 'daemonized'}) store={self.store}"
                f" mountpoint={self.mountpoint} endpoint={self.endpoint}"
                f" pids={sorted(self.pids | ({self.proc.pid} if self.proc else set()))}"
                f" alive={self.alive()}")
        if self.proc is not None and self.proc.poll() is not None:
            head += f" exit={self.proc.returncode}"
        return "\n".join([
            head,
            f"[stdout {self.stdout_path}]", _tail(self.stdout_path),
            f"[stderr {self.stderr_path}]", _tail(self.stderr_path),
            f"[log {self.store_log_path}]", _tail(self.store_log_path),
        ])


class Cluster:
    """Starts mirrorfs daemons for one test inside `root`, and tears them all
    down. Nodes can be foreground (`-f`, a Popen we own: for kill -9 and
    SIGSTOP) or daemonized (the user-facing form: the command returns once the
    node is ready)."""

    def __init__(self, root):
        self.root = Path(root)
        self.nodes = []
        (self.root / "logs").mkdir(parents=True, exist_ok=True)

    def dir(self, name):
        """Creates and returns root/name."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def tmpfs_dir(self, name, size):
        """Creates root/name as a tmpfs of `size` (mount's syntax, "24m"): a
        disk that fills up. Teardown unmounts it once the daemons are
        stopped. Skips the test when no tmpfs can be mounted."""
        path = self.dir(name)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        return path

    # -- starting ----------------------------------------------------------

    def serve(self, name="backup", store=None, listen=None, foreground=True,
              extra=(), name_flag=True):
        """Starts `mirrorfs serve STORE --listen EP [--name NAME]` and waits
        until it answers `status --json`. Returns the Node."""
        store = Path(store) if store else self.dir(f"{name}.store")
        listen = listen or free_endpoint()
        args = ["serve", store, "--listen", listen]
        if name_flag:
            args += ["--name", name]
        node = Node(self, name, "serve", store, None, listen, foreground)
        return self._start(node, args + list(extra))

    def mount(self, name="primary", store=None, mountpoint=None, peers=(),
              listen=True, mode=None, foreground=True, extra=(), name_flag=True):
        """Starts `mirrorfs mount STORE MNT [--name NAME] [--listen EP]
        [--peer P=EP]... [--mode M]` and waits until the mount is visible and
        the daemon answers `status --json`. `peers` holds Nodes or
        (name, endpoint) pairs; `listen` is an endpoint, True (a free one) or
        False (no --listen). Returns the Node."""
        store = Path(store) if store else self.dir(f"{name}.store")
        mountpoint = Path(mountpoint) if mountpoint else self.dir(f"{name}.mnt")
        endpoint = free_endpoint() if listen is True else (listen or None)
        args = ["mount", store, mountpoint]
        if name_flag:
            args += ["--name", name]
        if endpoint:
            args += ["--listen", endpoint]
        for peer in peers:
            pname, pep = (peer.name, peer.endpoint) if isinstance(peer, Node) else peer
            args += ["--peer", f"{pname}={pep}"]
        if mode:
            args += ["--mode", mode]
        node = Node(self, name, "mount", store, mountpoint, endpoint, foreground)
        return self._start(node, args + list(extra))

    def _start(self, node, args):
        self.nodes.append(node)
        argv = [mirrorfs_bin(), *map(str, args)]
        if node.foreground:
            argv.append("-f")
            with open(node.stdout_path, "wb") as out, open(node.stderr_path, "wb") as err:
                node.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=err, start_new_session=True)
            node.pids.add(node.proc.pid)
            # Reap it the moment it exits, as an interactive shell would: a
            # zombie still answers kill(pid, 0), so `mirrorfs stop` waiting for
            # the pid to vanish would wait for us instead.
            threading.Thread(target=node.proc.wait, daemon=True).start()
            self._wait_ready(node)
        else:
            # Files, not pipes: a daemon that keeps its parent's stdio open
            # must not make us wait for its end.
            with open(node.stdout_path, "wb") as out, open(node.stderr_path, "wb") as err:
                try:
                    rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, timeout=CLI_SECONDS).returncode
                except subprocess.TimeoutExpired:
                    raise AssertionError(
                        f"{' '.join(argv)} did not return in {CLI_SECONDS} s\n"
                        f"{node.describe()}") from None
            node.pids.update(mirrorfs_pids(node.store))
            assert rc == 0, f"{' '.join(argv)}: exit {rc}\n{node.describe()}"
            # The contract: it returns once the node is ready.
            if node.mountpoint is not None:
                assert is_mounted(node.mountpoint), \
                    f"mirrorfs mount returned 0 but {node.mountpoint} is not mounted\n{node.describe()}"
            r = mirrorfs("status", node.store, "--json")
            assert r.returncode == 0, \
                f"daemon started but `status --json` fails: {r.stderr}\n{node.describe()}"
            node.pids.update(mirrorfs_pids(node.store))
            assert node.pids, f"no mirrorfs daemon process found for {node.store}"
        return node

    def _wait_ready(self, node):
        def ready():
            if node.proc.poll() is not None:
                raise AssertionError(
                    f"{node} exited with status {node.proc.returncode} before it was ready\n"
                    f"{node.describe()}")
            if node.mountpoint is not None and not is_mounted(node.mountpoint):
                return False
            return status_ok(node.store)
        try:
            wait_until(ready, READY_SECONDS, f"{node} to be ready")
        except AssertionError as e:
            if "before it was ready" in str(e):
                raise
            raise AssertionError(f"{e}\n{node.describe()}") from None

    # -- stopping ----------------------------------------------------------

    def stop(self, node, timeout=CLI_SECONDS):
        """`mirrorfs stop STORE`, checked; waits until the daemon has exited
        and its mount (if any) is gone. Returns the CompletedProcess."""
        r = mirrorfs("stop", node.store, timeout=timeout)
        assert r.returncode == 0, f"mirrorfs stop {node.store}: exit {r.returncode}\n{r.stderr}"
        node.wait_exit(timeout=READY_SECONDS)
        if node.mountpoint is not None:
            wait_until(lambda: not is_mounted(node.mountpoint), READY_SECONDS,
                       f"{node.mountpoint} to be unmounted")
        return r

    def _unmount_all(self):
        root = str(self.root)
        # Deepest first, so stacked mounts come off in order.
        for mnt in sorted(set(m for m in mountpoints() if m.startswith(root)),
                          key=len, reverse=True):
            for cmd in (["fusermount3", "-u", mnt], ["fusermount3", "-uz", mnt],
                        ["umount", "-l", mnt]):
                try:
                    subprocess.run(cmd, capture_output=True, timeout=20,
                                   stdin=subprocess.DEVNULL)
                except (subprocess.TimeoutExpired, FileNotFoundError):
                    pass
                if not is_mounted(mnt):
                    break

    def teardown(self):
        """Stops everything this test started; never raises for a daemon that
        is already gone. Returns a list of problems (for the report)."""
        problems = []
        pids = set(mirrorfs_pids(self.root))
        for node in self.nodes:
            pids |= node.live_pids()
        # A SIGSTOPped peer would make every stop below wait.
        for pid in pids:
            _signal(pid, signal.SIGCONT)
        # Clean stop, newest node first (primaries were usually started last).
        for node in reversed(self.nodes):
            if node.alive():
                try:
                    run([mirrorfs_bin(), "stop", node.store], timeout=10)
                except AssertionError as e:
                    problems.append(str(e))
        self._unmount_all()
        pids |= set(mirrorfs_pids(self.root))
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(POLL_SECONDS)
        for pid in pids:
            if _pid_alive(pid):
                problems.append(f"pid {pid} ignored SIGTERM for 5 s; killed")
                _signal(pid, signal.SIGKILL)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    problems.append(f"{node}: foreground process {node.proc.pid} did not exit")
        # A killed FUSE daemon leaves "transport endpoint is not connected".
        self._unmount_all()
        left = [m for m in mountpoints() if m.startswith(str(self.root))]
        if left:
            problems.append(f"still mounted after teardown: {left}")
        return problems

    def describe(self):
        return "\n".join(n.describe() for n in self.nodes) or "(no mirrorfs daemons started)"


# -------------------------------------------------------------- fixtures ----

@pytest.fixture
def workdir():
    """A private, short folder for one test (removed afterwards unless
    MFS_KEEP_TMP=1 or something is still mounted in it)."""
    path = Path(tempfile.mkdtemp(prefix="mfs-", dir="/tmp"))
    yield path
    if os.environ.get("MFS_KEEP_TMP") == "1":
        print(f"kept {path}")
        return
    if not any(m.startswith(str(path)) for m in mountpoints()):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(request, workdir):
    """A Cluster in the test's private folder; always torn down."""
    binary = mirrorfs_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"mirrorfs binary not found at {binary}: build it (scripts/build.sh) "
                    "or set MIRRORFS_BIN")
    c = Cluster(workdir)
    request.node.mfs_clusters = getattr(request.node, "mfs_clusters", []) + [c]
    yield c
    problems = c.teardown()
    if problems:
        print("teardown problems:\n  " + "\n  ".join(problems))


@pytest.fixture
def pair(cluster):
    """A connected mirror: secondary `backup` (foreground) and primary
    `primary` (foreground) mounted with --peer backup. Returns
    (cluster, primary, secondary)."""
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup])
    wait_peer_state(primary.store, "backup", "connected")
    return cluster, primary, backup


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for c in getattr(item, "mfs_clusters", []):
            try:
                text = c.describe()
            except Exception as e:  # the report must not hide the failure
                text = f"<cannot describe cluster: {e!r}>"
            report.sections.append((f"mirrorfs daemons ({report.when})", text))


# ------------------------------------------- outages and resync (issue 3) ----

def union_bytes(ranges):
    """Size of the union of (offset, length) byte ranges (one file)."""
    total, end = 0, None
    for off, length in sorted(r for r in ranges if r[1] > 0):
        if end is None or off > end:
            total += length
            end = off + length
        elif off + length > end:
            total += off + length - end
            end = off + length
    return total


def restart_serve(cluster, node, extra=()):
    """Starts the secondary `node` again after it died: same name, same
    store, same endpoint. Returns the new Node."""
    return cluster.serve(node.name, store=node.store, listen=node.endpoint,
                         foreground=node.foreground, extra=extra)


def kill9(node, timeout=READY_SECONDS):
    """SIGKILLs every process of `node` and waits until it is gone."""
    node.signal(signal.SIGKILL)
    node.wait_exit(timeout=timeout)


def sync_wait(store, peer=None, timeout=60):
    """`mirrorfs sync STORE [--peer NAME] --wait --timeout T`; returns the
    CompletedProcess (not checked) and the seconds it took."""
    args = ["sync", store] + (["--peer", peer] if peer else []) + \
           ["--wait", "--timeout", str(timeout)]
    t0 = time.monotonic()
    r = mirrorfs(*args, timeout=timeout + CLI_SECONDS)
    return r, time.monotonic() - t0


def assert_sync_wait(store, peer=None, timeout=60):
    r, took = sync_wait(store, peer, timeout)
    assert r.returncode == 0, (f"mirrorfs sync {store} {'--peer ' + peer if peer else ''} --wait "
                               f"--timeout {timeout}: exit {r.returncode} after {took:.1f} s\n"
                               f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr}")
    return r


def bytes_applied(secondary_store):
    """The secondary's bytes_applied (kWrite data applied since its process
    started), read from its status (peers[0] is the primary)."""
    peers = status_json(secondary_store).get("peers", [])
    assert peers, f"secondary {secondary_store} lists no primary in its status"
    assert "bytes_applied" in peers[0], f"no bytes_applied in {peers[0]}"
    return peers[0]["bytes_applied"]


def wait_flushed(primary_store, timeout=READY_SECONDS):
    """Waits until every peer is in sync and the write-intent journal has no
    active region: an epoch flush completed after the last write, so no peer
    holds writes that are not on its disk (guarantee 3's set is empty)."""
    def check():
        doc = status_json(primary_store)
        return (doc.get("intent", {}).get("active_extents") == 0
                and all(p.get("in_sync") for p in doc.get("peers", [])))
    wait_until(check, timeout, f"{primary_store}: peers in sync and no active write intents")


def adopt(cluster, name, verb, store, mountpoint, endpoint):
    """Registers a daemon started outside the Cluster (by `promote`,
    `demote` or an example script), so that the teardown stops it and the
    failure report shows its log."""
    node = Node(cluster, name, verb, store, mountpoint, endpoint, foreground=False)
    cluster.nodes.append(node)
    node.pids.update(mirrorfs_pids(store, verbs=()))
    assert node.pids, f"no mirrorfs daemon runs for {store}"
    return node
