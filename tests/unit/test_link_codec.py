"""Kiosk link codec: spec vectors on CPython, the same vectors on MicroPython, and properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import kiosk_link as link
from gateway import link_names
from tests.conftest import run_on_micropython

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


def unhex(text: str) -> bytes:
    out = bytearray()
    for part in text.split():
        if ".." in part:
            start, end = part.split("..")
            out.extend(range(int(start, 16), int(end, 16) + 1))
        else:
            out.extend(bytes.fromhex(part))
    return bytes(out)


def cases(name: str) -> list[dict]:
    return json.loads((VECTORS / name).read_text())["cases"]


@pytest.mark.parametrize("case", cases("crc16.json"))
def test_crc16_vectors(case: dict) -> None:
    data = case["data_ascii"].encode() if "data_ascii" in case else unhex(case["data_hex"])
    assert link.crc16(data) == int(case["crc"], 16)


@pytest.mark.parametrize("case", cases("cobs.json"))
def test_cobs_vectors(case: dict) -> None:
    assert link.cobs_encode(unhex(case["decoded"])) == unhex(case["encoded"])
    assert link.cobs_decode(unhex(case["encoded"])) == unhex(case["decoded"])


@pytest.mark.parametrize("case", cases("link_frames.json"), ids=lambda c: c["name"])
def test_frame_vectors(case: dict) -> None:
    frame = unhex(case["frame"])
    assert link.encode_frame(case["type"], case["seq"], unhex(case["payload"])) == frame
    assert link.cobs_decode(frame[:-1]) == unhex(case["body_with_crc"])
    assert link.decode_frame(frame[:-1]) == (case["type"], case["seq"], unhex(case["payload"]))


def test_reading_vector_decodes_to_its_fields() -> None:
    case = next(c for c in cases("link_frames.json") if c["name"] == "bp_reading")
    assert link.decode_reading(unhex(case["payload"])) == (
        link.KIND_BP,
        link.FLAG_IRREGULAR_PULSE,
        0,
        [
            (link.FIELD_SYSTOLIC, 128, 0),
            (link.FIELD_DIASTOLIC, 82, 0),
            (link.FIELD_MEAN_ARTERIAL, 97, 0),
            (link.FIELD_PULSE_RATE, 71, 0),
        ],
    )


def test_negative_mantissa_round_trips() -> None:
    case = next(c for c in cases("link_frames.json") if c["name"] == "negative_mantissa")
    assert link.decode_reading(unhex(case["payload"])) == (
        link.KIND_TEMPERATURE,
        0,
        1795564800,
        [(30, -5, -1)],
    )


def test_hello_vector() -> None:
    case = next(c for c in cases("link_frames.json") if c["name"] == "hello")
    assert link.decode_hello(unhex(case["payload"])) == (0x01020304, "bp-0001", "KX-BP100", "0.1.0")


@pytest.mark.parametrize("index", range(5))
def test_any_single_bit_flip_is_detected(index: int) -> None:
    frame = unhex(cases("link_frames.json")[3]["frame"])[:-1]
    for bit in range(8):
        damaged = bytearray(frame)
        damaged[index + 2] ^= 1 << bit
        if 0 in damaged:
            continue  # would be a delimiter on the wire: the splitter cuts there instead
        with pytest.raises(link.LinkError):
            link.decode_frame(bytes(damaged))


def test_truncated_reading_payload_is_refused() -> None:
    payload = link.encode_reading(link.KIND_BP, 0, 0, [(1, 120, 0)])
    with pytest.raises(link.LinkError, match="says 1 fields"):
        link.decode_reading(payload[:-1])


def test_oversize_garbage_is_dropped_until_next_delimiter() -> None:
    splitter = link.FrameSplitter(max_encoded=16)
    good = link.encode_frame(link.MSG_ACK, 3)
    assert splitter.feed(b"\x01" * 40 + b"\x00" + good) == [good[:-1]]
    assert splitter.dropped_bytes > 0


@given(st.binary(max_size=600))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = link.cobs_encode(data)
    assert 0 not in encoded
    assert link.cobs_decode(encoded) == data


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=link.MAX_PAYLOAD))
def test_frame_round_trip(msg_type: int, seq: int, payload: bytes) -> None:
    frame = link.encode_frame(msg_type, seq, payload)
    assert len(frame) <= link.MAX_ENCODED
    assert link.FrameSplitter().feed(frame) == [frame[:-1]]
    assert link.decode_frame(frame[:-1]) == (msg_type, seq, payload)


@pytest.mark.micropython
def test_same_vectors_on_micropython() -> None:
    assert "5 passed, 0 failed" in run_on_micropython("link_vectors.py")


def test_hello_capabilities_are_optional() -> None:
    with_caps = next(c for c in cases("link_frames.json") if c["name"] == "hello_with_capabilities")
    without = next(c for c in cases("link_frames.json") if c["name"] == "hello")
    assert link.decode_hello(unhex(with_caps["payload"])) == link.decode_hello(unhex(without["payload"]))
    assert link.decode_hello_capabilities(unhex(with_caps["payload"])) == (
        link.capability_of_kind(link.KIND_BP) | link.CAP_JOURNAL | link.CAP_TIME_SYNC | link.CAP_STATUS
    )
    assert link.decode_hello_capabilities(unhex(without["payload"])) == 0
    with pytest.raises(link.LinkError, match="trailing bytes"):
        link.decode_hello(unhex(without["payload"]) + b"\x01")


@pytest.mark.parametrize(
    ("prefix", "names"),
    [
        ("MSG_", link_names.MESSAGE_NAMES),
        ("KIND_", link_names.KIND_NAMES),
        ("FIELD_", link_names.FIELD_NAMES),
        ("FLAG_", link_names.FLAG_NAMES),
        ("ERROR_", link_names.ERROR_NAMES),
    ],
)
def test_every_link_code_has_a_name_for_the_gateway(prefix: str, names: dict[int, str]) -> None:
    codes = {value for key, value in vars(link).items() if key.startswith(prefix) and isinstance(value, int)}
    assert codes == set(names), f"{prefix}* codes without a name: {sorted(codes - set(names))}"
    assert len(set(names.values())) == len(names), f"two {prefix}* codes share a name"


def test_encode_frame_into_writes_the_same_bytes_as_encode_frame_at_an_offset() -> None:
    payload = bytes(range(256))[:250]  # zeros and a full 254-byte COBS block
    expected = link.encode_frame(link.MSG_ECG_CHUNK, 0xBEEF, payload)
    out = bytearray(b"\xaa" * (7 + len(expected) + 3))
    end = link.encode_frame_into(out, 7, link.MSG_ECG_CHUNK, 0xBEEF, payload)
    assert end == 7 + len(expected) <= 7 + link.frame_size(len(payload))
    assert bytes(out[7:end]) == expected
    assert out[:7] == b"\xaa" * 7 and out[end:] == b"\xaa" * 3  # nothing written outside the frame


@given(st.binary(max_size=link.MAX_PAYLOAD))
def test_frame_size_bounds_every_frame(payload: bytes) -> None:
    assert len(link.encode_frame(link.MSG_READING, 1, payload)) <= link.frame_size(len(payload))
