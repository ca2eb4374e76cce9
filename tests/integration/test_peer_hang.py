"""A peer that hangs (SIGSTOP) never fails nor stalls the application
(DESIGN.md guarantee 5): with --peer-timeout 1, no write or fsync waits much
longer than the timeout, later writes run at local speed, the primary's log
names the dropped peer and its status shows the peer out of sync."""

import os
import signal
import threading
import time

from conftest import sha256_file, status_json, wait_peer_state, wait_until

PEER_TIMEOUT = 1.0
SLACK = 3.0
CHUNK = 64 * 1024


class TimedWriter:
    """Writes CHUNK-sized blocks (fsync every 8th) in a thread, recording
    how long each call took, until told to stop."""

    def __init__(self, path):
        self.path = path
        self.durations = []          # (start monotonic, seconds, what)
        self.error = None
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while not self.stop.is_set():
                    block = (b"%08d" % self.count) * (CHUNK // 8)
                    t0 = time.monotonic()
                    os.pwrite(fd, block, (self.count % 512) * CHUNK)
                    self.durations.append((t0, time.monotonic() - t0, "write"))
                    self.count += 1
                    # Paced, not a tight loop: 2 cores are shared with both daemons.
                    time.sleep(0.005)
                    if self.count % 8 == 0:
                        t0 = time.monotonic()
                        os.fsync(fd)
                        self.durations.append((t0, time.monotonic() - t0, "fsync"))
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            self.error = e

    def wait_count(self, n, timeout):
        wait_until(lambda: self.count >= n or self.error or not self.thread.is_alive(),
                   timeout, f"{n} writes")

    def finish(self, timeout):
        self.stop.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_hung_peer_does_not_stall_writes(cluster):
    backup = cluster.serve("backup")
    primary = cluster.mount("primary", peers=[backup],
                            extra=["--peer-timeout", str(int(PEER_TIMEOUT))])
    wait_peer_state(primary.store, "backup", "connected")

    writer = TimedWriter(str(primary.mountpoint / "busy.img"))
    writer.thread.start()
    stopped = False
    try:
        writer.wait_count(40, 30)
        assert writer.error is None, writer.error
        log_before = primary.log_size()
        stopped_at = time.monotonic()
        backup.signal(signal.SIGSTOP)
        stopped = True

        # Keep writing well past the timeout and the slack: the writes after
        # that show whether the application runs at local speed again.
        target = writer.count + 40
        window = PEER_TIMEOUT + SLACK + 2
        wait_until(lambda: (writer.count >= target and time.monotonic() - stopped_at > window)
                   or writer.error or not writer.thread.is_alive(),
                   30 + window, "writes to go on while the peer is stopped")
        assert writer.error is None, writer.error

        # The log names the dropped peer.
        wait_until(lambda: "backup" in primary.log_since(log_before), 10,
                   "the primary's log to name the dropped peer")
        # Status answers while the peer hangs, and shows it out of sync.
        peer = wait_peer_state(primary.store, "backup",
                               ("disconnected", "connecting", "fractured"), timeout=10)
        assert peer["in_sync"] is False, peer
        # The writes of the outage are logged for the peer.
        assert peer["fracture_bytes"] > 0, peer
        assert peer["fracture_extents"] > 0, peer
    finally:
        finished = writer.finish(timeout=3 * (PEER_TIMEOUT + SLACK))
        if stopped:
            backup.signal(signal.SIGCONT)
        if not finished:
            writer.thread.join(30)

    assert finished, "a write blocked for good while the peer was stopped"
    assert writer.error is None, writer.error
    worst = max(writer.durations, key=lambda d: d[1])
    assert worst[1] <= PEER_TIMEOUT + SLACK, \
        f"a {worst[2]} took {worst[1]:.2f} s with --peer-timeout {PEER_TIMEOUT:g}"
    # Once the peer is dropped, writes run at local speed.
    late = [d for d in writer.durations if d[0] > stopped_at + PEER_TIMEOUT + SLACK]
    assert len(late) >= 10, f"only {len(late)} writes after the peer was dropped"
    slow = [d for d in late if d[1] > 0.5]
    assert not slow, f"{len(slow)} writes still slow after the drop, e.g. {slow[:3]}"

    # The local copy is whole: the mount and the store agree.
    assert sha256_file(primary.mountpoint / "busy.img") == sha256_file(primary.store / "busy.img")
    assert status_json(primary.store)["role"] == "primary"
    assert backup.alive()
    cluster.stop(primary)
