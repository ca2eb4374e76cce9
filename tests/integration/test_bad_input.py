"""Bad input on the secondary's replication port (DESIGN.md guarantee 9):
garbage, truncated frames, bad checksums, frames for another store or an old
session. The daemon stays up, logs one line per bad frame, answers a frame for
another store with an error frame, and its store does not change; the real
primary keeps mirroring afterwards.

Frames follow sync/WIRE_FORMAT.md: one ZeroMQ message is one frame, a 48-byte
little-endian header
    magic u32 'MFSW' | version u16 = 7 | type u16 | store_uuid 16 bytes |
    session u64 | seq u64 | payload_len u32 | crc32c u32
then the payload; the CRC-32C covers the header with the crc field zero, then
the payload. Only a write change has a second message part (its data)."""

import os
import socket
import struct
import time

import pytest

zmq = pytest.importorskip("zmq", reason="python3-zmq is needed to speak ZeroMQ")

from conftest import (POLL_SECONDS, assert_same_manifest, status_json, store_manifest,  # noqa: E402
                      wait_in_sync, wait_until)

MAGIC = 0x5753464D  # b"MFSW" little-endian
VERSION = 7
HEADER = struct.Struct("<IHH16sQQII")
assert HEADER.size == 48
T_HELLO, T_HELLO_REPLY, T_CHANGE, T_ACK, T_PING, T_PONG, T_ERROR = range(1, 8)


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(ftype, payload, store_uuid, session=1, seq=1, version=VERSION, magic=MAGIC,
          payload_len=None, crc_xor=0):
    """Encodes one frame; payload_len and crc_xor forge inconsistent ones."""
    plen = len(payload) if payload_len is None else payload_len
    head = HEADER.pack(magic, version, ftype, store_uuid, session, seq, plen, 0)
    crc = crc32c(head + payload) ^ crc_xor
    return HEADER.pack(magic, version, ftype, store_uuid, session, seq, plen, crc) + payload


def parse_header(data):
    magic, version, ftype, store_uuid, session, seq, plen, crc = HEADER.unpack_from(data)
    return dict(magic=magic, version=version, type=ftype, store_uuid=store_uuid,
                session=session, seq=seq, payload_len=plen, crc=crc)


class Probe:
    """A DEALER socket on the secondary's endpoint."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, data):
        if isinstance(data, list):
            self.sock.send_multipart(data)
        else:
            self.sock.send(data)

    def recv(self, timeout):
        """The next reply, or None after `timeout` seconds."""
        if self.sock.poll(int(timeout * 1000)):
            return self.sock.recv()
        return None

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def send_and_expect_log_line(node, probe, data, what):
    """Sends one bad frame; waits for the log line it causes; returns it."""
    before = node.log_size()
    probe.send(data)
    text = wait_until(lambda: node.log_since(before).strip(), 20,
                      f"a log line about {what}")
    assert node.alive(), f"the secondary died on {what}"
    return text


def test_bad_frames_are_logged_and_change_nothing(pair):
    cluster, primary, backup = pair
    with open(primary.mountpoint / "before.bin", "wb") as f:
        f.write(os.urandom(300_000))
        f.flush()
        os.fsync(f.fileno())
    wait_in_sync(primary.store, "backup")
    manifest = assert_same_manifest(primary.store, backup.store)

    probe = Probe(backup.endpoint)
    try:
        log_start = backup.log_size()
        ping = struct.pack("<Q", 42)
        random_uuid = os.urandom(16)
        lines = {}
        lines["garbage"] = send_and_expect_log_line(backup, probe, os.urandom(200), "garbage")
        lines["short"] = send_and_expect_log_line(backup, probe, os.urandom(20),
                                                  "a frame shorter than a header")
        good_ping = frame(T_PING, ping, random_uuid, seq=99)
        lines["truncated"] = send_and_expect_log_line(
            backup, probe, frame(T_PING, ping, random_uuid, payload_len=64)[:48 + 8],
            "a truncated frame")
        lines["crc"] = send_and_expect_log_line(
            backup, probe, frame(T_PING, ping, random_uuid, crc_xor=0x1), "a bad checksum")
        assert "checksum" in lines["crc"].lower() or "crc" in lines["crc"].lower(), lines["crc"]
        lines["magic"] = send_and_expect_log_line(
            backup, probe, frame(T_PING, ping, random_uuid, magic=0x12345678), "a bad magic")
        lines["version"] = send_and_expect_log_line(
            backup, probe, frame(T_PING, ping, random_uuid, version=999), "an unknown version")

        # A change frame (random payload, valid checksum) for another store.
        lines["change"] = send_and_expect_log_line(
            backup, probe, frame(T_CHANGE, os.urandom(100), random_uuid, seq=7),
            "a change frame for another store")

        # A valid ping for another store is refused with an error frame that
        # carries this node's store UUID.
        before = backup.log_size()
        probe.send(good_ping)
        deadline = time.monotonic() + 20
        reply = None
        while time.monotonic() < deadline:
            reply = probe.recv(POLL_SECONDS * 4)
            if (reply is not None and len(reply) >= 48 and parse_header(reply)["type"] == T_ERROR
                    and parse_header(reply)["seq"] == 99):
                break
            reply = None
        assert reply is not None, "no error frame for a frame of another store"
        h = parse_header(reply)
        assert h["magic"] == MAGIC and h["payload_len"] == len(reply) - 48
        assert frame(T_ERROR, reply[48:], h["store_uuid"], h["session"], h["seq"]) == reply, \
            "the error frame's checksum is wrong"
        assert h["store_uuid"] != random_uuid
        wait_until(lambda: backup.log_since(before).strip(), 20,
                   "a log line about a frame for another store")

        # The right store but a session that is not the primary's: dropped.
        real_uuid = h["store_uuid"]
        lines["session"] = send_and_expect_log_line(
            backup, probe, frame(T_CHANGE, os.urandom(64), real_uuid, session=0xDEAD, seq=1),
            "a frame of an unknown session")

        # Raw TCP garbage that is not even ZMTP.
        host, port = backup.endpoint.rsplit("/", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(os.urandom(4096))

        new_lines = backup.log_since(log_start).splitlines()
        assert len(new_lines) <= 3 * 10, f"a flood of log lines for 10 bad frames:\n{new_lines}"
    finally:
        probe.close()

    assert backup.alive(), "the secondary died"
    assert status_json(backup.store)["role"] == "secondary"
    assert store_manifest(backup.store) == manifest, "bad frames changed the secondary's store"

    # The real primary still mirrors.
    with open(primary.mountpoint / "after.bin", "wb") as f:
        f.write(os.urandom(200_000))
        f.flush()
        os.fsync(f.fileno())
    wait_in_sync(primary.store, "backup")
    assert_same_manifest(primary.store, backup.store)


def test_messages_with_the_wrong_parts_are_refused(pair):
    """A frame is one message part; only a write change has a second one (its
    data). Anything else is dropped with a log line, and the store is kept."""
    cluster, primary, backup = pair
    with open(primary.mountpoint / "before.bin", "wb") as f:
        f.write(os.urandom(100_000))
    wait_in_sync(primary.store, "backup")
    manifest = assert_same_manifest(primary.store, backup.store)
    probe = Probe(backup.endpoint)
    try:
        ping = frame(T_PING, struct.pack("<Q", 1), os.urandom(16), seq=5)
        line = send_and_expect_log_line(backup, probe, [ping, b"data", b"more"],
                                        "a message of three parts")
        assert "3 parts" in line, line
        line = send_and_expect_log_line(backup, probe, [ping, os.urandom(64)],
                                        "a ping with a data part")
        assert "data part" in line, line
    finally:
        probe.close()
    assert backup.alive(), "the secondary died"
    assert store_manifest(backup.store) == manifest, "bad frames changed the secondary's store"
