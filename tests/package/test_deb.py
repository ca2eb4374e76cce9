"""The Debian package (scripts/package.sh) as an operator uses it: its
fields and files, then installed with dpkg, a mirror set up with the
installed binary and `mount -t mirrorfs`, and removed again.

Run by scripts/test.sh after the package is built:
  MIRRORFS_DEB=build-release/mirrorfs_0.1.0_amd64.deb python3 -m pytest tests/package
The install test leaves a mirrorfs package that is already installed alone
(it skips, saying so)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from conftest import (cluster, workdir, check_mirror_then_umount,  # noqa: E402,F401
                      free_endpoint, is_mounted, run, status_json)

DEB = os.environ.get("MIRRORFS_DEB", "")
INSTALLED_BIN = "/usr/bin/mirrorfs"

pytestmark = pytest.mark.skipif(not DEB, reason="MIRRORFS_DEB names no package")


def project_version():
    text = (REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(mirrorfs VERSION ([0-9.]+)", text).group(1)


def deb_field(name):
    r = run(["dpkg-deb", "-f", DEB, name])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def deb_file(path):
    """One file's content, read from the package."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", DEB], capture_output=True, check=True)
    r = subprocess.run(["tar", "-xOf", "-", f"./{path}"], input=tar.stdout,
                       capture_output=True, check=True)
    return r.stdout.decode()


def test_fields():
    assert deb_field("Package") == "mirrorfs"
    assert deb_field("Version") == project_version()
    depends = deb_field("Depends")
    # fuse3 for fusermount3; the shared libraries from dpkg-shlibdeps
    # (Debian's RocksDB CMake target is the static library).
    for dep in ("fuse3", "libfuse3-3", "libzmq5", "libsodium23"):
        assert dep in depends, f"Depends lacks {dep}: {depends}"


def test_files():
    r = run(["dpkg-deb", "-c", DEB])
    assert r.returncode == 0, r.stderr
    paths = {line.split()[-1].lstrip(".") for line in r.stdout.splitlines()}
    for want in ("/usr/bin/mirrorfs", "/usr/sbin/mount.mirrorfs",
                 "/usr/lib/systemd/system/mirrorfs-mount@.service",
                 "/usr/lib/systemd/system/mirrorfs-serve@.service",
                 "/usr/share/man/man1/mirrorfs.1",
                 "/usr/share/bash-completion/completions/mirrorfs",
                 "/usr/share/doc/mirrorfs/examples/failover.sh",
                 "/usr/share/doc/mirrorfs/README.md"):
        assert want in paths, f"{want} is not in the package:\n{r.stdout}"
    assert not any("/.mirrorfs" in p or "/build" in p for p in paths), paths
    unit = deb_file("usr/lib/systemd/system/mirrorfs-mount@.service")
    assert "ExecStart=/usr/bin/mirrorfs mount %f" in unit, unit
    # mirrorfs -f tells systemd when it is ready (sd_notify).
    assert "Type=notify" in unit and "NotifyAccess=main" in unit, unit


@pytest.fixture
def installed():
    state = run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "mirrorfs"]).stdout
    if state == "installed":
        pytest.skip("a mirrorfs package is installed already; not replacing it")
    r = run(["dpkg", "-i", DEB])
    assert r.returncode == 0, f"dpkg -i {DEB}:\n{r.stdout}\n{r.stderr}"
    try:
        yield
    finally:
        r = run(["dpkg", "--purge", "mirrorfs"])
        assert r.returncode == 0, r.stderr
        assert not Path(INSTALLED_BIN).exists()


def test_installed_package_mirrors_through_mount_t(installed, cluster, monkeypatch):
    monkeypatch.setenv("MIRRORFS_BIN", INSTALLED_BIN)
    r = run([INSTALLED_BIN, "--version"])
    assert r.stdout.strip() == f"mirrorfs {project_version()}", r.stdout
    if shutil.which("systemd-analyze"):
        # An instance of each template, as `systemctl enable` would load it.
        units = cluster.dir("units")
        for verb in ("mount", "serve"):
            unit = units / f"mirrorfs-{verb}@srv-images.service"
            shutil.copy(f"/usr/lib/systemd/system/mirrorfs-{verb}@.service", unit)
            r = run(["systemd-analyze", "verify", "--man=no", unit])
            assert r.returncode == 0 and not r.stderr.strip(), \
                f"systemd-analyze verify {unit.name}:\n{r.stdout}{r.stderr}"

    backup = cluster.serve("backup", foreground=False)
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    # mount(8) finds /sbin/mount.mirrorfs, which finds the installed binary.
    r = run(["mount", "-t", "mirrorfs", store, mnt, "-o",
             f"name=a,listen={free_endpoint()},peer=backup={backup.endpoint},_netdev"],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert r.returncode == 0, f"mount -t mirrorfs:\n{r.stdout}\n{r.stderr}"
    assert is_mounted(mnt)
    assert status_json(store)["node"] == "a"

    check_mirror_then_umount(store, mnt, backup, "vm.img", 5 << 20)
    cluster.stop(backup)
