"""The firmware-update messages of the kiosk link (firmware/link_update.py) on CPython.

The worked example is docs/wire-format.md 1.10.5; the board runs the same codec on MicroPython
(tests/micropython/link_update_board.py).
"""

from __future__ import annotations

import hashlib

import pytest

from firmware import kiosk_link as link
from firmware import link_update as codec

MANIFEST_SHA256 = bytes.fromhex("da0d3ffa306e0521") + bytes(24)


def test_update_id_is_the_manifest_hash_first_four_bytes_little_endian() -> None:
    assert codec.update_id(MANIFEST_SHA256) == 0xFA3F0DDA


def test_the_documented_chunk_and_reply_frames() -> None:
    chunk = codec.encode_chunk(0xFA3F0DDA, 2, 192, b"\x4d\x06")
    assert chunk == bytes.fromhex("da0d3ffa 02 c0000000 4d06")
    assert link.encode_frame(link.MSG_UPDATE_CHUNK, 41, chunk) == bytes.fromhex(
        "03 12 29 07 da 0d 3f fa 02 c0 01 01 05 4d 06 68 9d 00"
    )
    reply = codec.encode_reply(codec.UPDATE_OK, 2, 194)
    assert reply == bytes.fromhex("00 02 c2000000")
    assert link.encode_frame(link.MSG_UPDATE_REPLY, 41, reply) == bytes.fromhex(
        "03 14 29 01 03 02 c2 01 01 03 4d ef 00"
    )
    assert codec.decode_chunk_head(chunk) == (0xFA3F0DDA, 2, 192)
    assert codec.decode_reply(reply) == (codec.UPDATE_OK, 2, 194, "")


def test_every_request_round_trips() -> None:
    digest = hashlib.sha256(b"manifest").digest()
    assert codec.decode_offer(codec.encode_offer(digest, 25266, 11, "0.2.0")) == (digest, 25266, 11, "0.2.0")
    assert codec.decode_file(codec.encode_file(7, 8, 1158, "main.py")) == (7, 8, 1158, "main.py")
    assert codec.decode_commit(codec.encode_commit(0xFFFFFFFF)) == 0xFFFFFFFF
    detail = codec.encode_reply(codec.UPDATE_CHECK_FAILED, 0, 0, "bp_app.mpy")
    assert codec.decode_reply(detail) == (codec.UPDATE_CHECK_FAILED, 0, 0, "bp_app.mpy")
    largest = codec.encode_chunk(1, 0, 0, bytes(codec.MAX_CHUNK))
    assert len(largest) == link.MAX_PAYLOAD  # the largest chunk fills a frame exactly


@pytest.mark.parametrize(
    ("decode", "payload"),
    [
        (codec.decode_offer, bytes(37)),  # no version string
        (codec.decode_offer, bytes(37) + b"\x05abc"),  # string runs past the end
        (codec.decode_file, bytes(9)),
        (codec.decode_file, bytes(9) + b"\x01ab"),  # trailing byte
        (codec.decode_chunk_head, bytes(9)),  # no data
        (codec.decode_commit, bytes(5)),
        (codec.decode_reply, bytes(5)),
    ],
)
def test_a_payload_that_does_not_decode_is_a_link_error(decode: object, payload: bytes) -> None:
    with pytest.raises(link.LinkError):
        decode(payload)  # type: ignore[operator]


def test_the_encoder_refuses_what_would_not_fit() -> None:
    with pytest.raises(link.LinkError):
        codec.encode_chunk(1, 0, 0, bytes(codec.MAX_CHUNK + 1))
    with pytest.raises(link.LinkError):
        codec.encode_file(1, 0, 1, "x" * 64)
    with pytest.raises(link.LinkError):
        codec.encode_offer(bytes(31), 1, 1, "v")
