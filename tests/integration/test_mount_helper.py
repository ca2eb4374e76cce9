"""packaging/mount.mirrorfs, the mount(8) helper, as an fstab line uses it:
options in, the `mirrorfs mount` command line out, a real mount; and its
exit status, mount(8)'s: 1 incorrect invocation, 32 mount failure."""

import grp
import os
import re
import shlex
import socket
import subprocess
import time

from conftest import (READY_SECONDS, REPO, _unescape_mount_field, check_mirror_then_umount,
                      free_endpoint, is_mounted, mirrorfs, mirrorfs_bin, mirrorfs_pids, run,
                      status_json, wait_until)

HELPER = REPO / "packaging" / "mount.mirrorfs"


def helper(*args):
    env = dict(os.environ, MIRRORFS_BIN=mirrorfs_bin())
    return run(["bash", HELPER, *map(str, args)], env=env)


def mount_entry(mountpoint):
    """The /proc/self/mounts fields of `mountpoint` (unescaped), or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = [_unescape_mount_field(field) for field in line.split()]
            if fields[1] == str(mountpoint):
                return fields
    return None


def mount_options(mountpoint):
    entry = mount_entry(mountpoint)
    return entry[3].split(",") if entry else None


def fake(store, mnt, options):
    """The `mirrorfs mount` command line the helper makes of `options`
    (-f: nothing is mounted)."""
    r = helper(store, mnt, "-f", "-o", options)
    assert r.returncode == 0, (r.returncode, r.stderr)
    prefix = f"mount.mirrorfs: {mirrorfs_bin()} "
    lines = [line for line in r.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, r.stderr
    return lines[0][len(prefix):]


def test_fstab_options_become_a_mirrored_mount(cluster):
    backup = cluster.serve("backup")
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    listen = free_endpoint()
    # What mount(8) passes for the fstab line
    #   STORE MNT mirrorfs name=a,listen=..,peer=backup=..,_netdev,... 0 0
    options = ",".join([
        "defaults", "name=a", f"listen={listen}", f"peer=backup={backup.endpoint}",
        "mode=sync", "peer-timeout=3", "_netdev", "nofail", "x-systemd.automount",
        "allow_other",
    ])
    r = helper(store, mnt, "-o", options)
    assert r.returncode == 0, r.stderr
    assert is_mounted(mnt), f"the helper returned 0 but {mnt} is not mounted"

    status = status_json(store)
    assert status["node"] == "a"
    assert status["mode"] == "sync"
    assert status["mountpoint"] == str(mnt)
    assert [p["name"] for p in status["peers"]] == ["backup"]
    # Options that are not mirrorfs' go to FUSE; mount(8)'s own do not.
    opts = mount_options(mnt)
    assert "allow_other" in opts, opts
    assert not any(o.startswith(("_netdev", "x-", "nofail")) for o in opts), opts

    # umount(8) stops the primary cleanly.
    check_mirror_then_umount(store, mnt, backup, "disk.img", 3 << 20)
    cluster.stop(backup)


def test_fake_mount_prints_the_command_and_mounts_nothing(cluster):
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    r = helper(store, mnt, "-f", "-o",
               "name=a,peer=b=tcp://127.0.0.1:7790,cached-writes,busy-poll=50,ro,noauto")
    assert r.returncode == 0, r.stderr
    assert (f"mount.mirrorfs: {mirrorfs_bin()} mount {store} {mnt} --name a "
            f"--peer b=tcp://127.0.0.1:7790 --cached-writes --busy-poll 50 -o ro") in r.stderr, r.stderr
    assert not is_mounted(mnt)
    assert not (store / ".mirrorfs").exists(), "a fake mount must not touch the store"


def test_bad_options_fail_with_mirrorfs_message_and_mount_nothing(cluster):
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    # `mirrorfs mount` says the command line is wrong (2): for mount(8)
    # that is an incorrect invocation (1).
    r = helper(store, mnt, "-o", "name=a,mode=fastest")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "mode" in r.stderr and "fastest" in r.stderr, r.stderr
    assert not is_mounted(mnt)

    for args in ([store], [store, "-f"], [store, "-o", "name=a"], [store, mnt, "extra"]):
        r = helper(*args)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert "usage: mount.mirrorfs" in r.stderr, (args, r.stderr)
    assert not (store / ".mirrorfs").exists()

    # Options that cannot be honoured are refused, not dropped in silence.
    for option, words in (("name", "needs a value"), ("insecure=yes", "takes no value"),
                          ("user_xattr", "extended attributes"), ("acl", "ACL")):
        r = helper(store, mnt, "-o", f"name=a,{option}")
        assert r.returncode == 1, (option, r.returncode, r.stderr)
        assert words in r.stderr and option in r.stderr, (option, r.stderr)
        assert not is_mounted(mnt)
    assert not (store / ".mirrorfs").exists()


def test_a_failing_mount_exits_32(cluster):
    store = cluster.dir("primary.store")
    mnt = cluster.root / "no-such-mountpoint"
    r = helper(store, mnt, "-o", f"name=a,listen={free_endpoint()}")
    assert r.returncode == 32, (r.returncode, r.stderr)
    assert "no-such-mountpoint" in r.stderr, r.stderr

    # An option that neither mirrorfs nor libfuse knows fails the mount.
    mnt = cluster.dir("primary.mnt")
    r = helper(store, mnt, "-o", f"name=a,listen={free_endpoint()},no_such_option")
    assert r.returncode == 32, (r.returncode, r.stderr)
    assert "no_such_option" in r.stderr, r.stderr
    assert not is_mounted(mnt)

    r = helper(store, mnt, "-o", "remount,ro")
    assert r.returncode == 32, (r.returncode, r.stderr)
    assert "unmount" in r.stderr, r.stderr


def mount_flags():
    """{flag: takes a value} for every flag of `mirrorfs mount --help`
    but -h/--help/--help-all, -f and -o."""
    r = mirrorfs("mount", "--help")
    assert r.returncode == 0, r.stderr
    flags = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s+(?:-\w,)?--([a-z][a-z-]*)(\s+[A-Z]+\b)?", line)
        if m and m.group(1) not in ("help", "help-all", "foreground"):
            flags[m.group(1)] = m.group(2) is not None
    assert {"name", "listen", "peer", "insecure"} <= set(flags), r.stdout
    return flags


def test_every_mount_flag_has_an_option(cluster):
    """Each flag of `mirrorfs mount` can be given in fstab, as
    FLAG=VALUE or FLAG, and with _ for - as well."""
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    for flag, takes_value in mount_flags().items():
        for spelling in {flag, flag.replace("-", "_")}:
            option = f"{spelling}=v1" if takes_value else spelling
            want = f"--{flag} v1" if takes_value else f"--{flag}"
            command = fake(store, mnt, option)
            assert command == f"mount {store} {mnt} {want}", (option, command)

    # Repeatable --peer, old spellings, and what is not mirrorfs'.
    command = fake(store, mnt, ",".join([
        "defaults", "name=a", "peer=b=tcp://127.0.0.1:7790", "peer=c=tcp://127.0.0.1:7791",
        "peer_timeout=3", "authorized_keys=/k.auth", "key=/k", "cached_writes", "busy_poll=50",
        "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
        "diratime", "nodiratime", "noatime", "owner", "group", "user", "users", "nouser",
        "nobootwait", "nofail", "_netdev", "auto", "noauto", "comment=x", "x-systemd.automount",
        "X-mount.mkdir", "nouser_xattr", "noacl", "rw", "user=bob", "nosuid", "allow_other"]))
    assert command == (
        f"mount {store} {mnt} --name a --peer b=tcp://127.0.0.1:7790 "
        "--peer c=tcp://127.0.0.1:7791 --peer-timeout 3 --authorized-keys /k.auth --key /k "
        "--cached-writes --busy-poll 50 -o noatime,user=bob,nosuid,allow_other"), command


def test_new_options_reach_a_real_mount(cluster):
    """The flags fstab could not set before, and the options of mount(8)
    and fstab that FUSE refuses, on a real mount."""
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    options = ",".join([
        "name=a", f"listen={free_endpoint()}", "intent-extent=8M", "intent_budget=256M",
        "resync-rate=100M", "control-group=daemon", "cached-writes", "busy-poll=0",
        "peer-timeout=3",
        # mount(8)'s access-time options (libfuse 3.14 takes atime/noatime
        # only) and what only fstab, mount(8) or systemd read.
        "relatime", "nodiratime", "strictatime", "lazytime", "noatime",
        "owner", "group", "users", "nobootwait", "comment=x", "X-mount.mkdir",
        "nouser_xattr", "noacl", "defaults", "_netdev", "nosuid", "nodev",
    ])
    r = helper(store, mnt, "-o", options)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert is_mounted(mnt), f"the helper returned 0 but {mnt} is not mounted"

    status = status_json(store)
    assert status["node"] == "a"
    assert status["intent"]["extent_bytes"] == 8 << 20, status["intent"]
    assert status["intent"]["budget_bytes"] == 256 << 20, status["intent"]
    sock = store / ".mirrorfs" / "control.sock"
    assert os.stat(sock).st_gid == grp.getgrnam("daemon").gr_gid
    pids = mirrorfs_pids(store, verbs=("mount",))
    assert pids, "no mirrorfs mount daemon for the store"
    with open(f"/proc/{min(pids)}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    for flag, value in (("--resync-rate", "100M"), ("--busy-poll", "0"),
                        ("--peer-timeout", "3")):
        assert flag in argv and argv[argv.index(flag) + 1] == value, argv
    assert "--cached-writes" in argv, argv
    opts = mount_options(mnt)
    for gone in ("strictatime", "lazytime", "owner", "group", "users", "nobootwait",
                 "_netdev", "comment=x", "nouser_xattr"):
        assert gone not in opts, (gone, opts)
    assert "nosuid" in opts and "nodev" in opts, opts

    r = run(["umount", mnt])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: mirrorfs("status", store).returncode == 1, READY_SECONDS,
               "the primary to exit after umount")


def test_mount_source_is_the_store(cluster):
    """mount(8), df and findmnt show the store as the mount's source (the
    binary sets fsname; the helper passes no fsname of its own)."""
    store = cluster.dir("primary.store")
    mnt = cluster.dir("primary.mnt")
    r = helper(store, mnt, "-o", f"name=a,listen={free_endpoint()}")
    assert r.returncode == 0, (r.returncode, r.stderr)
    entry = mount_entry(mnt)
    assert entry is not None, f"{mnt} is not mounted"
    assert entry[0] == os.path.realpath(store), entry
    assert entry[2] == "fuse.mirrorfs", entry
    r = run(["umount", mnt])
    assert r.returncode == 0, r.stderr



def unit_command(verb, store, mountpoint, listen, options):
    """ExecStart of packaging/systemd/mirrorfs-VERB@.service, as systemd
    runs it for the instance of `store` with /etc/mirrorfs/INSTANCE.conf
    holding MOUNTPOINT, LISTEN and OPTIONS; and the unit's [Service]
    settings."""
    text = (REPO / "packaging" / "systemd" / f"mirrorfs-{verb}@.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith("#"))
    words = []
    for word in settings["ExecStart"].split():
        if word == "$OPTIONS":
            words += shlex.split(options)
        else:
            words.append(word.replace("/usr/bin/mirrorfs", mirrorfs_bin())
                         .replace("%f", str(store))
                         .replace("${MOUNTPOINT}", str(mountpoint or ""))
                         .replace("${LISTEN}", listen))
    return words, settings


def test_units_are_ready_once_the_node_is(cluster):
    """Both units are Type=notify: mirrorfs, run as their ExecStart says
    (-f, NOTIFY_SOCKET set), sends READY=1 once the mount is visible or the
    endpoint bound, and not before."""
    notify = cluster.root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    backup_listen = free_endpoint()
    runs = (("serve", cluster.dir("b.store"), None, backup_listen, "--name b"),
            ("mount", cluster.dir("a.store"), cluster.dir("a.mnt"), free_endpoint(),
             f"--name a --listen {free_endpoint()} --peer b={backup_listen}"))
    try:
        for verb, store, mountpoint, listen, options in runs:
            argv, settings = unit_command(verb, store, mountpoint, listen, options)
            assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main", settings
            assert "-f" in argv, argv
            log = open(cluster.root / "logs" / f"{verb}.unit.stderr", "wb")
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
            ready_at, deadline = None, time.monotonic() + READY_SECONDS
            while ready_at is None and time.monotonic() < deadline:
                assert proc.poll() is None, f"{argv} exited with {proc.returncode}"
                try:
                    message, _ = sock.recvfrom(4096)
                except socket.timeout:
                    continue
                if "READY=1" in message.decode(errors="replace").split("\n"):
                    ready_at = time.monotonic()
                    # Ready means usable: the mount is there, the node answers.
                    if mountpoint is not None:
                        assert is_mounted(mountpoint), "READY=1 before the mount was visible"
                    assert mirrorfs("status", store).returncode == 0
            assert ready_at is not None, f"no READY=1 from {argv} in {READY_SECONDS} s"
            assert proc.poll() is None, "the main process must stay (-f)"
        status = status_json(runs[1][1])
        assert [p["name"] for p in status["peers"]] == ["b"], status
    finally:
        sock.close()
        for _, store, _, _, _ in reversed(runs):
            mirrorfs("stop", store)
