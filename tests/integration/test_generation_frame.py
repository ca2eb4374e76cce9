"""The `generation` frame (sync/WIRE_FORMAT.md), spoken by a hand-made
primary to a real secondary: a primary that starts a new generation while
a session is up tells the secondary in that session, ahead of any later
change. The secondary stores a generation that follows its own before it
answers (a kill -9 right after the answer keeps it), and refuses one that
does not follow its own: that ends the session, so nothing later in it is
applied."""

import os
import struct
import uuid

import pytest

pytest.importorskip("zmq", reason="python3-zmq is needed to speak ZeroMQ")

from conftest import kill9, restart_serve, status_json, wait_until  # noqa: E402
from test_bad_input import Probe, frame, parse_header  # noqa: E402

T_HELLO, T_HELLO_REPLY, T_ACK, T_PING, T_PONG = 1, 2, 4, 5, 6
T_GENERATION = 15
HELLO_CONSISTENT = 1


def wire_string(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def wire_generation(current, history):
    return current + struct.pack("<B", len(history)) + b"".join(history)


def hello(store_uuid, generation, history):
    return (wire_string("fake") + os.urandom(16) + store_uuid + struct.pack("<B", 1)
            + wire_generation(generation, history) + wire_string("")
            + struct.pack("<I", HELLO_CONSISTENT))


def text(u):
    return str(uuid.UUID(bytes=u))


class FakePrimary:
    """A DEALER that opens one session with the secondary and numbers its
    frames as a primary does."""

    def __init__(self, endpoint):
        self.probe = Probe(endpoint)
        self.store = os.urandom(16)
        self.session = int.from_bytes(os.urandom(8), "little") | 1
        self.seq = 0

    def send(self, ftype, payload):
        self.probe.send(frame(ftype, payload, self.store, session=self.session,
                              seq=self.seq))
        self.seq += 1
        return self.seq - 1

    def answer(self, ftype, timeout=20):
        """The next frame of this session of type `ftype` (others skipped)."""
        def next_one():
            reply = self.probe.recv(0.2)
            if reply is None:
                return None
            h = parse_header(reply)
            if h["session"] == self.session and h["type"] == ftype:
                return h, reply[48:]
            return None
        return wait_until(next_one, timeout, f"a frame of type {ftype} from the secondary")

    def ack(self, seq):
        _, payload = self.answer(T_ACK)
        got_seq, err, n = struct.unpack_from("<QiH", payload)
        assert got_seq == seq, (got_seq, seq)
        return err, payload[14:14 + n].decode()

    def close(self):
        self.probe.close()


def test_a_generation_is_stored_before_the_answer_and_a_foreign_one_ends_the_session(cluster):
    b = cluster.serve("b")
    g1, g2 = os.urandom(16), os.urandom(16)
    fake = FakePrimary(b.endpoint)
    try:
        fake.send(T_HELLO, hello(fake.store, g1, []))
        _, reply = fake.answer(T_HELLO_REPLY)
        assert reply[0] == 1, f"the secondary refused the hello: {reply!r}"
        assert status_json(b.store)["generation"] == text(g1)

        # The primary starts g2 (after g1): stored, then answered.
        seq = fake.send(T_GENERATION, wire_generation(g2, [g1]))
        assert fake.ack(seq) == (0, "")
        doc = status_json(b.store)
        assert doc["generation"] == text(g2) and text(g1) in doc["generation_history"], doc
        # The same one again changes nothing; nor does an older one of the
        # same history, announced late (a session that came up while the
        # primary started two).
        seq = fake.send(T_GENERATION, wire_generation(g2, [g1]))
        assert fake.ack(seq) == (0, "")
        seq = fake.send(T_GENERATION, wire_generation(g1, []))
        assert fake.ack(seq) == (0, "")
        assert status_json(b.store)["generation"] == text(g2)
        seq = fake.send(T_PING, struct.pack("<Q", 7))
        fake.answer(T_PONG)

        # One that does not descend from g2: refused, and the session ends.
        before = b.log_size()
        seq = fake.send(T_GENERATION, wire_generation(os.urandom(16), [os.urandom(16)]))
        err, message = fake.ack(seq)
        assert err != 0 and "does not follow this copy's " + text(g2) in message, message
        assert status_json(b.store)["generation"] == text(g2)
        fake.send(T_PING, struct.pack("<Q", 8))
        wait_until(lambda: "old or unknown session" in b.log_since(before), 20,
                   "the secondary to drop the ended session's next frame")
        assert b.alive()
    finally:
        fake.close()

    # On disk before it was answered: a kill -9 keeps it.
    kill9(b)
    b = restart_serve(cluster, b)
    doc = status_json(b.store)
    assert doc["generation"] == text(g2) and doc["generation_history"][0] == text(g1), doc
