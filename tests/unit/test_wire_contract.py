"""Wire contract: the batch vector decodes to exactly these readings; tampering is refused."""

from __future__ import annotations

import dataclasses
import itertools
import json
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from contract.wire import (
    ABSENT_REASONS,
    GENESIS_HASH,
    KINDS,
    RESIDENT_ID_SYSTEMS,
    TIME_QUALITIES,
    Ack,
    ContractError,
    DeviceRef,
    Measurement,
    Reading,
    ResidentRef,
    SignatureError,
    Waveform,
    ack_topic,
    decode_ack,
    decode_batch,
    decode_reading,
    encode_ack,
    encode_batch,
    encode_batch_of_encoded,
    encode_reading,
    encode_reading_parts,
    expand_ranges,
    gateway_id_from_topic,
    measurements_cbor,
    seq_ranges,
    up_topic,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VECTOR = json.loads((VECTORS / "batch_v1.json").read_text())
VECTOR_V2 = json.loads((VECTORS / "batch_v2.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["signing_key_seed"]))
PUBLIC = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTOR["public_key"]))
DEVICE = DeviceRef("bp-0001", "KX-BP100", "0.1.0")
READING_1 = Reading(
    gateway_id="gw-vector",
    seq=1,
    device=DEVICE,
    kind="bp",
    values=(
        Measurement("systolic", Decimal(128), "mm[Hg]"),
        Measurement("diastolic", Decimal(82), "mm[Hg]"),
        Measurement("pulse_rate", Decimal(71), "/min"),
    ),
    measured_at_ms=1795564800000,
    time_quality="ntp",
    received_mono_ms=123456,
    resident=ResidentRef("health-record", "330781-2026-000123"),
    operator="doctor-wang",
    flags=("irregular_pulse",),
)
READING_2 = Reading(
    gateway_id="gw-vector",
    seq=2,
    device=DEVICE,
    kind="bp",
    values=(
        Measurement("systolic", Decimal("141.5"), "mm[Hg]"),
        Measurement("diastolic", Decimal(91), "mm[Hg]"),
    ),
    measured_at_ms=1795564860000,
    time_quality="unsynced",
    received_mono_ms=183456,
    resident=None,
    operator=None,
    flags=(),
)


def test_rfc8032_test1_key_and_signature() -> None:
    # RFC 8032 section 7.1, TEST 1: the empty message.
    assert KEY.public_key().public_bytes_raw().hex() == VECTOR["public_key"]
    assert KEY.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_vector_batch_decodes_to_the_readings() -> None:
    batch = decode_batch(bytes.fromhex(VECTOR["message"]), PUBLIC)
    assert batch.readings == (READING_1, READING_2)
    assert (batch.gateway_id, batch.first_seq, batch.last_seq) == ("gw-vector", 1, 2)
    assert batch.prev_hash == GENESIS_HASH
    assert batch.hash.hex() == VECTOR["hash"]


def test_reading_cbor_is_canonical_and_exact() -> None:
    assert encode_reading(READING_1).hex() == VECTOR["reading_cbor"]


def test_decimal_precision_survives() -> None:
    batch = decode_batch(bytes.fromhex(VECTOR["message"]), PUBLIC)
    systolic = batch.readings[1].value("systolic")
    assert systolic is not None and str(systolic.value) == "141.5"


def test_vector_v1_batch_still_decodes_as_one_run_without_a_number() -> None:
    batch = decode_batch(bytes.fromhex(VECTOR["message"]), PUBLIC)
    assert (batch.number, batch.seq_ranges, batch.waiting) == (None, ((1, 2),), None)


def test_encode_then_decode_round_trips() -> None:
    message, digest = encode_batch(
        [READING_1, READING_2], prev_hash=GENESIS_HASH, signing_key=KEY, number=1, waiting=7
    )
    batch = decode_batch(message, KEY.public_key())
    assert batch.readings == (READING_1, READING_2)
    assert batch.hash == digest
    assert (batch.number, batch.seq_ranges, batch.waiting) == (1, ((1, 2),), 7)


def test_vector_v2_batch_decodes_to_its_runs() -> None:
    batch = decode_batch(bytes.fromhex(VECTOR_V2["message"]), PUBLIC)
    assert batch.hash.hex() == VECTOR_V2["hash"]
    assert batch.number == VECTOR_V2["number"] and batch.waiting == VECTOR_V2["waiting"]
    assert [list(r) for r in batch.seq_ranges] == VECTOR_V2["seqs"]
    assert batch.readings == (READING_1, READING_2, dataclasses.replace(READING_2, seq=5))
    assert batch.describe() == "batch 3 (seq 1-2, 5)"


def test_v2_header_spelled_out() -> None:
    payload = cbor2.loads(cbor2.loads(bytes.fromhex(VECTOR_V2["message"]))["p"])
    assert {k: v for k, v in payload.items() if k != "z"} == {
        "v": 2, "gw": "gw-vector", "no": 3, "prev": bytes(range(32)),
        "seqs": [[1, 2], [5, 5]], "n": 3, "q": 4,
    }  # fmt: skip


def test_a_batch_may_skip_sequences_but_not_repeat_or_reorder_them() -> None:
    later = dataclasses.replace(READING_2, seq=9)
    message, _ = encode_batch([READING_1, later], prev_hash=GENESIS_HASH, signing_key=KEY, number=2)
    assert decode_batch(message, PUBLIC).seq_ranges == ((1, 1), (9, 9))
    for readings in ([later, READING_1], [READING_1, READING_1]):
        with pytest.raises(ContractError, match="increasing"):
            encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=KEY, number=2)


@pytest.mark.parametrize(
    ("seqs", "problem"),
    [
        ([[1, 2], [2, 3]], "not sorted"),  # overlapping
        ([[1, 2], [3, 3]], "not sorted"),  # touching: the encoder merges neighbours
        ([[5, 5], [1, 2]], "not sorted"),
        ([[3, 1]], "not sorted"),
        ([[0, 1]], "not sorted"),
        ([], "non-empty"),
        ([[1]], "not \\[first, last\\]"),
        ([[1, 2], [4, 5]], "does not match"),  # well formed, but not the readings it holds
    ],
)
def test_header_ranges_must_describe_the_readings(seqs: list[list[int]], problem: str) -> None:
    message = _resigned(VECTOR_V2["message"], seqs=seqs)
    with pytest.raises(ContractError, match=problem):
        decode_batch(message, PUBLIC)


def _resigned(hex_message: str, **changes: object) -> bytes:
    """The vector with header fields changed and signed again (as a buggy gateway would)."""
    payload = cbor2.loads(cbor2.loads(bytes.fromhex(hex_message))["p"])
    payload.update(changes)
    raw = cbor2.dumps(payload, canonical=True)
    return cbor2.dumps({"p": raw, "s": KEY.sign(raw)}, canonical=True)


@given(st.sets(st.integers(min_value=1, max_value=200), min_size=1))
def test_seq_ranges_round_trip(seqs: set[int]) -> None:
    ranges = seq_ranges(sorted(seqs))
    assert list(expand_ranges(ranges)) == sorted(seqs)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ranges))  # merged, never touching


def test_changed_byte_fails_signature() -> None:
    outer = cbor2.loads(bytes.fromhex(VECTOR["message"]))
    payload = bytearray(outer["p"])
    payload[-3] ^= 0x01
    forged = cbor2.dumps({"p": bytes(payload), "s": outer["s"]})
    with pytest.raises(SignatureError):
        decode_batch(forged, PUBLIC)


def test_other_key_fails_signature() -> None:
    with pytest.raises(SignatureError, match="gw-vector"):
        decode_batch(bytes.fromhex(VECTOR["message"]), Ed25519PrivateKey.generate().public_key())


def test_batch_number_must_be_positive() -> None:
    with pytest.raises(ContractError, match="batch number"):
        encode_batch([READING_1], prev_hash=GENESIS_HASH, signing_key=KEY, number=0)


def test_garbage_is_a_contract_error() -> None:
    with pytest.raises(ContractError):
        decode_batch(b"\xff\x00garbage", PUBLIC)


def test_unknown_kind_refused() -> None:
    with pytest.raises(ContractError, match="unknown kind"):
        Reading(**{**{f: getattr(READING_1, f) for f in READING_1.__slots__}, "kind": "bloodtype"})


def test_ack_round_trip() -> None:
    ack = Ack(bytes(range(32)), 7, 42, batch_hash=bytes(32), error=None, server_time_ms=1795564800000)
    assert decode_ack(encode_ack(ack)) == ack
    refusal = Ack(None, error="unknown gateway (not enrolled)", server_time_ms=1)
    assert decode_ack(encode_ack(refusal)) == refusal


ACK_VECTOR = json.loads((VECTORS / "ack_v2_signed.json").read_text())
VECTOR_ACK = Ack(
    bytes.fromhex(ACK_VECTOR["head"]),
    ACK_VECTOR["number"],
    ACK_VECTOR["acked"],
    bytes.fromhex(ACK_VECTOR["answers"]),
    None,
    ACK_VECTOR["server_time_ms"],
)


def test_signed_ack_matches_the_vector_byte_for_byte() -> None:
    gateway = ACK_VECTOR["gateway_id"]
    assert encode_ack(VECTOR_ACK, gateway_id=gateway, signing_key=KEY).hex() == ACK_VECTOR["message"]
    # What is signed, written out by hand: the context, then the canonical map without "sig".
    members = {
        "v": 2, "gw": gateway, "no": 3, "err": None, "now": ACK_VECTOR["server_time_ms"], "hash":
        bytes.fromhex(ACK_VECTOR["answers"]), "head": bytes.fromhex(ACK_VECTOR["head"]), "acked": 5,
    }  # fmt: skip
    signed = bytes.fromhex(ACK_VECTOR["signed_bytes"])
    assert signed == b"kiosk-edge ack v2\x00" + cbor2.dumps(members, canonical=True)
    PUBLIC.verify(bytes.fromhex(ACK_VECTOR["signature"]), signed)  # raises if it does not verify
    message = bytes.fromhex(ACK_VECTOR["message"])
    assert decode_ack(message, bridge_key=PUBLIC, gateway_id=gateway) == VECTOR_ACK
    assert decode_ack(message) == VECTOR_ACK  # a gateway without the bridge's key reads it too


def _changed_after_signing(message: bytes, **changes: object) -> bytes:
    """The signed ack with members changed and the old signature kept."""
    return cbor2.dumps({**cbor2.loads(message), **changes}, canonical=True)


def test_an_ack_changed_after_signing_is_refused() -> None:
    message = bytes.fromhex(ACK_VECTOR["message"])
    gateway = ACK_VECTOR["gateway_id"]
    for change in ({"acked": 6}, {"head": bytes(32)}, {"now": 0}, {"err": "x"}, {"v": 1}):
        with pytest.raises(SignatureError, match="does not verify"):
            decode_ack(_changed_after_signing(message, **change), bridge_key=PUBLIC, gateway_id=gateway)


def test_a_gateway_that_knows_the_bridge_key_refuses_any_other_ack() -> None:
    gateway = ACK_VECTOR["gateway_id"]
    message = bytes.fromhex(ACK_VECTOR["message"])
    with pytest.raises(SignatureError, match="not signed"):
        decode_ack(encode_ack(VECTOR_ACK), bridge_key=PUBLIC, gateway_id=gateway)
    with pytest.raises(SignatureError, match="signed for gateway 'gw-vector', not 'gw-other'"):
        decode_ack(message, bridge_key=PUBLIC, gateway_id="gw-other")
    forged = encode_ack(VECTOR_ACK, gateway_id=gateway, signing_key=Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="does not verify"):
        decode_ack(forged, bridge_key=PUBLIC, gateway_id=gateway)
    with pytest.raises(SignatureError, match="not signed"):
        decode_ack(_changed_after_signing(message, sig="text"), bridge_key=PUBLIC, gateway_id=gateway)
    with pytest.raises(ContractError, match="not a map"):
        decode_ack(cbor2.dumps([1, 2]), bridge_key=PUBLIC, gateway_id=gateway)


def test_a_signed_ack_names_its_gateway() -> None:
    with pytest.raises(ValueError, match="names the gateway"):
        encode_ack(VECTOR_ACK, signing_key=KEY)


def test_a_v1_ack_names_its_batch_as_the_head() -> None:
    v1 = cbor2.dumps({"v": 1, "acked": 2, "hash": bytes(range(32)), "err": None, "now": 5})
    assert decode_ack(v1) == Ack(bytes(range(32)), None, 2, bytes(range(32)), None, 5)


def test_an_ack_head_must_be_a_hash() -> None:
    with pytest.raises(ContractError, match="32-byte"):
        decode_ack(cbor2.dumps({"v": 2, "head": b"short", "acked": 0}))


def test_topics() -> None:
    assert up_topic("gw-1") == "kiosk/gw-1/up"
    assert ack_topic("gw-1") == "kiosk/gw-1/ack"
    assert gateway_id_from_topic("kiosk/gw-1/up") == "gw-1"
    with pytest.raises(ContractError):
        gateway_id_from_topic("kiosk/gw-1/up/extra")


def test_a_value_the_device_sent_without_a_number_round_trips_with_its_reason() -> None:
    absent = Measurement("pulse_rate", None, "/min", "nan")
    reading = dataclasses.replace(READING_1, values=(absent,))
    raw = cbor2.loads(encode_reading(reading))
    assert raw["val"] == [["pulse_rate", None, "/min", "nan"]]  # numbers keep the 3-item v1 layout
    assert Reading.from_cbor_map(raw).values == (absent,)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(None, None), (Decimal(1), "nan"), (None, "unknown-reason"), (Decimal("NaN"), None)],
)
def test_a_measurement_is_a_finite_number_or_a_known_absent_reason(
    value: Decimal | None, reason: str | None
) -> None:
    with pytest.raises(ContractError):
        Measurement("pulse_rate", value, "/min", reason)


# --- readings encoded from their parts (the gateway's outbox) ------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


RESIDENTS = st.builds(ResidentRef, st.sampled_from(sorted(RESIDENT_ID_SYSTEMS)), TEXT.filter(bool))


@st.composite
def any_reading(draw: st.DrawFn) -> Reading:
    values = tuple(
        draw(
            st.lists(
                st.one_of(
                    st.builds(
                        Measurement,
                        TEXT,
                        st.decimals(allow_nan=False, allow_infinity=False, places=draw(st.integers(0, 3))),
                        TEXT,
                    ),
                    st.builds(lambda name, unit, why: Measurement(name, None, unit, why), TEXT, TEXT,
                              st.sampled_from(ABSENT_REASONS)),
                ),
                max_size=4,
            )
        )
    )  # fmt: skip
    wave = None
    if draw(st.booleans()):
        leads = tuple(draw(st.lists(TEXT, min_size=1, max_size=2)))
        length = draw(st.integers(1, 30))
        series = st.lists(st.integers(-(2**23), 2**23), min_size=length, max_size=length).map(tuple)
        wave = Waveform(draw(st.integers(1, 2000)), Decimal("2.4"), leads, draw(st.integers(0, 2**40)),
                        tuple(draw(series) for _ in leads))  # fmt: skip
    return Reading(
        gateway_id=draw(TEXT),
        seq=draw(st.integers(1, 2**62)),
        device=DeviceRef(draw(TEXT), draw(TEXT), draw(TEXT)),
        kind=draw(st.sampled_from(KINDS)),
        values=values,
        measured_at_ms=draw(st.integers(0, 2**50)),
        time_quality=draw(st.sampled_from(TIME_QUALITIES)),
        received_mono_ms=draw(st.integers(0, 2**40)),
        resident=draw(st.one_of(st.none(), RESIDENTS)),
        operator=draw(st.one_of(st.none(), TEXT)),
        flags=tuple(draw(st.lists(TEXT, max_size=3))),
        waveform=wave,
    )


@given(any_reading())
def test_a_reading_encoded_from_its_stored_parts_is_byte_for_byte_encode_reading(reading: Reading) -> None:
    parts = encode_reading_parts(
        gateway_id=reading.gateway_id,
        seq=reading.seq,
        device=reading.device,
        kind=reading.kind,
        values_cbor=cbor2.dumps([m.to_cbor() for m in reading.values]),  # as the outbox stores them
        measured_at_ms=reading.measured_at_ms,
        time_quality=reading.time_quality,
        received_mono_ms=reading.received_mono_ms,
        resident=reading.resident,
        operator=reading.operator,
        flags_cbor=cbor2.dumps(list(reading.flags)),
        waveform_cbor=cbor2.dumps(reading.waveform.to_cbor()) if reading.waveform else None,
    )
    assert parts == cbor2.dumps(reading.to_cbor_map(), canonical=True)
    assert encode_reading(reading) == parts


@given(st.lists(any_reading(), min_size=1, max_size=30))
def test_a_batch_of_encoded_readings_is_byte_for_byte_encode_batch(readings: list[Reading]) -> None:
    readings = [dataclasses.replace(r, gateway_id="gw-1", seq=i) for i, r in enumerate(readings, start=1)]
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    expected = encode_batch(readings, prev_hash=bytes(32), signing_key=key, number=3, waiting=2)
    encoded = [(r.seq, encode_reading(r)) for r in readings]
    again = encode_batch_of_encoded(
        "gw-1", encoded, prev_hash=bytes(32), signing_key=key, number=3, waiting=2
    )
    assert again == expected


def test_a_batch_of_many_readings_has_a_long_array_header() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    readings = [dataclasses.replace(READING_1, seq=seq) for seq in range(1, 301)]
    message, _ = encode_batch(readings, prev_hash=bytes(32), signing_key=key, number=1)
    batch = decode_batch(message, key.public_key())
    assert batch.readings == tuple(readings)
    assert batch.reading_bytes == tuple(encode_reading(r) for r in readings)


@given(st.lists(any_reading(), min_size=1, max_size=30))
def test_each_readings_bytes_are_what_the_gateway_signed(readings: list[Reading]) -> None:
    """The bridge stores these instead of encoding again: they must be each reading's own CBOR,
    cut exactly (a decoder that read ahead would cut them wrong)."""
    readings = [dataclasses.replace(r, gateway_id="gw-1", seq=i) for i, r in enumerate(readings, start=1)]
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    message, _ = encode_batch(readings, prev_hash=bytes(32), signing_key=key, number=1)
    batch = decode_batch(message, key.public_key())
    assert batch.reading_bytes == tuple(encode_reading(r) for r in readings)
    assert tuple(decode_reading(body) for body in batch.reading_bytes) == batch.readings


def _batch_with_body(body: bytes, count: int) -> bytes:
    """A v2 batch of gw-1 whose compressed body is `body`, signed with the all-zero key."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    payload = cbor2.dumps(
        {"v": 2, "gw": "gw-1", "no": 1, "prev": bytes(32), "seqs": [[1, count]], "n": count, "q": 0,
         "z": zstandard.ZstdCompressor().compress(body)},
        canonical=True,
    )  # fmt: skip
    return cbor2.dumps({"p": payload, "s": key.sign(payload)}, canonical=True)


def test_a_body_that_is_not_a_definite_list_is_read_whole_without_bytes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    readings = [dataclasses.replace(READING_1, gateway_id="gw-1", seq=seq) for seq in (1, 2)]
    indefinite = b"\x9f" + b"".join(encode_reading(r) for r in readings) + b"\xff"
    batch = decode_batch(_batch_with_body(indefinite, 2), key.public_key())
    assert (batch.readings, batch.reading_bytes) == (tuple(readings), ())
    with pytest.raises(ContractError, match="not a list"):
        decode_batch(_batch_with_body(cbor2.dumps({"a": 1}), 1), key.public_key())
    with pytest.raises(ContractError, match="not CBOR"):
        decode_batch(_batch_with_body(b"\x82" + encode_reading(readings[0]), 2), key.public_key())


@given(st.lists(any_reading(), min_size=1, max_size=5))
def test_measurements_are_stored_as_cbor_of_their_wire_layout(readings: list[Reading]) -> None:
    for reading in readings:
        assert measurements_cbor(reading.values) == cbor2.dumps([m.to_cbor() for m in reading.values])


def test_equal_values_of_other_precision_stay_apart() -> None:
    whole, tenths = Measurement("t", Decimal("36"), "Cel"), Measurement("t", Decimal("36.0"), "Cel")
    assert measurements_cbor((whole,)) != measurements_cbor((tenths,))
    assert cbor2.loads(measurements_cbor((tenths,)))[0][1].as_tuple() == Decimal("36.0").as_tuple()
