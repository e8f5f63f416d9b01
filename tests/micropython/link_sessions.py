"""Link session roll-over on the MicroPython unix port (run by tests/unit/test_link_sessions.py).

micropython tests/micropython/link_sessions.py REPO_ROOT
"""

import sys
import time

ROOT = sys.argv[1]
sys.path.insert(0, ROOT + "/firmware")
sys.path.insert(0, ROOT + "/tests/micropython")

import kiosk_link as link  # noqa: E402
from board_uart import BoardUart  # noqa: E402
from link_client import LinkClient  # noqa: E402
from mp_runner import run_tests  # noqa: E402

HELLO = link.encode_hello(0, "bp-1", "KX-BP100", "0.1.0")


def started_client():
    wire = BoardUart()
    client = LinkClient(wire, ring_size=4)
    client.hello(HELLO)
    [(msg_type, seq, payload)] = wire.take()
    assert msg_type == link.MSG_HELLO
    wire.reply(link.MSG_ACK, seq)
    client.poll()
    return wire, client


def test_nothing_before_the_hello_is_acked():
    wire = BoardUart()
    client = LinkClient(wire, ring_size=4)
    client.hello(HELLO)
    assert not client.has_room()
    assert client.send(link.MSG_READING, b"x") is None
    assert [m for m, _, _ in wire.take()] == [link.MSG_HELLO]


def test_roll_over_waits_for_the_drain_then_a_new_hello():
    wire, client = started_client()
    old_session = client.session_id
    client._session.next_seq = 0xFFFF - 32 - 2  # two data seqs left
    first = client.send(link.MSG_READING, b"a")
    second = client.send(link.MSG_READING, b"b")
    assert (first, second) == (0xFFFF - 34, 0xFFFF - 33)
    assert client.send(link.MSG_READING, b"c") is None  # used up, two still unacked
    assert [m for m, _, _ in wire.take()] == [link.MSG_READING, link.MSG_READING]
    # The gateway restarts and asks who we are: the hello stays in the old session.
    wire.reply(link.MSG_NAK, first, link.encode_nak(link.NAK_HELLO_REQUIRED))
    client.poll()
    [(msg_type, hello_seq, payload)] = [f for f in wire.take() if f[0] == link.MSG_HELLO]
    assert link.decode_hello(payload)[0] == old_session
    wire.reply(link.MSG_ACK, hello_seq)
    wire.reply(link.MSG_ACK, first)
    wire.reply(link.MSG_ACK, second)
    client.poll()
    wire.take()
    assert client.send(link.MSG_READING, b"c") is None  # drained: new session, its hello first
    [(msg_type, new_hello_seq, payload)] = wire.take()
    assert msg_type == link.MSG_HELLO and new_hello_seq == 1
    assert link.decode_hello(payload)[0] == client.session_id != old_session
    assert client.send(link.MSG_READING, b"c") is None  # still waiting for that hello's ack
    assert wire.take() == []
    wire.reply(link.MSG_ACK, new_hello_seq)
    client.poll()
    assert client.send(link.MSG_READING, b"c") == 2
    assert client.sessions_started == 1


def test_rejected_hello_backs_off():
    wire = BoardUart()
    client = LinkClient(wire, ring_size=4)
    client.hello(HELLO)
    [(_, seq, _)] = wire.take()
    wire.reply(link.MSG_NAK, seq, link.encode_nak(link.NAK_REJECTED))
    client.poll()
    assert wire.take() == []
    due_in = time.ticks_diff(client._due[client._size], time.ticks_ms())
    assert 55000 < due_in <= 60000, due_in  # asks again in a minute, not in a loop


run_tests(globals())
