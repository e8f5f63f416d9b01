"""The wire contract between a gateway and the cloud bridge: readings, signed batches, topics, acks.

This is the only module the gateway and the bridge share. Everything here is pure: bytes in,
values out, so both sides and the test vectors in tests/vectors/ agree on the same code.

A batch on the wire (topic ``kiosk/{gateway_id}/up``, MQTT QoS 1) is the CBOR map
``{"p": payload, "s": signature}`` where ``signature`` is Ed25519 over the exact ``payload``
bytes and ``payload`` is the CBOR map

    {"v": 2, "gw": gateway_id, "no": batch number, "prev": sha256(previous payload),
     "seqs": [[first, last], ...], "n": count, "q": readings still waiting at the gateway,
     "z": zstd(CBOR [reading, ...])}

A batch holds any set of the gateway's sequence numbers (``seqs``: sorted, disjoint ranges), so
the gateway can send flagged readings before a backlog and hold ECG strips back on a metered
link. The batches themselves form a chain in the order the gateway made them (``no`` counts up,
``prev`` is the hash of the batch before): the bridge can prove that no batch was removed or
reordered, and it reports sequence numbers it has not seen yet as gaps. Version 1 batches (one
contiguous run ``"first"``..``"last"``, no number) are still accepted.

The bridge answers on ``kiosk/{gateway_id}/ack`` with ``{"v": 2, "head": hash, "no": number,
"acked": seq, "hash": answered batch, ...}``: ``head`` is the newest batch of the gateway's chain
it has durably stored, which also vouches for every batch before it. Only that ack lets a
gateway mark readings synced.

An ack is signed by the bridge (its own Ed25519 key, not a gateway's): the map then also holds
``"gw"`` (the gateway it answers) and ``"sig"``, Ed25519 over ``ACK_SIGNATURE_CONTEXT`` followed
by the canonical CBOR of every other member. A gateway that knows the bridge's key acts on no
other ack: whoever can publish on its ack topic (a broker misconfigured or broken into) can then
neither make it delete unsynced readings nor move its readings' times. A gateway without the key
reads the same map and ignores the two members.
"""

from __future__ import annotations

import array
import functools
import hashlib
import io
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import cbor2
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ACK_SIGNATURE_CONTEXT",
    "CONTRACT_VERSION",
    "GENESIS_HASH",
    "KINDS",
    "RESIDENT_ID_SYSTEMS",
    "TIME_QUALITIES",
    "Ack",
    "Batch",
    "ContractError",
    "DeviceRef",
    "Measurement",
    "Reading",
    "ResidentRef",
    "SignatureError",
    "Waveform",
    "ack_topic",
    "batch_hash",
    "decode_ack",
    "decode_batch",
    "decode_time_probe",
    "encode_ack",
    "encode_batch",
    "encode_batch_of_encoded",
    "encode_reading_parts",
    "encode_time_probe",
    "expand_ranges",
    "flags_cbor",
    "gateway_id_from_topic",
    "measurements_cbor",
    "peek_batch_gateway",
    "seq_ranges",
    "up_topic",
]

CONTRACT_VERSION = 2
BATCH_VERSIONS = (1, 2)  # what the bridge accepts: v1 from gateways not yet updated
GENESIS_HASH = bytes(32)
KINDS = ("bp", "glucose", "ecg", "spo2", "temperature", "weight", "heart_rate", "questionnaire")
# "questionnaire": a form's answers, as values and flags (contract/questionnaire.py)
TIME_QUALITIES = ("rtc", "ntp", "bridge", "unsynced")
# Identifier systems for residents (China county health communities): the resident health-record
# number and the resident identity-card number.
RESIDENT_ID_SYSTEMS = {
    "health-record": "urn:kiosk:sid:resident-health-record",
    "id-card": "urn:kiosk:sid:resident-id-card",
}
UP_TOPIC_FILTER = "kiosk/+/up"
_ZSTD_LEVEL = 3
_MAX_DECOMPRESSED = 64 * 1024 * 1024


class ContractError(ValueError):
    """A message that does not follow the wire contract."""


class SignatureError(ContractError):
    """A batch or an ack whose signature does not verify against the expected key."""


def up_topic(gateway_id: str) -> str:
    return f"kiosk/{gateway_id}/up"


def ack_topic(gateway_id: str) -> str:
    return f"kiosk/{gateway_id}/ack"


def gateway_id_from_topic(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "kiosk" or parts[2] not in ("up", "ack") or not parts[1]:
        raise ContractError(f"not a kiosk topic: {topic!r}")
    return parts[1]


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """The peripheral that took a reading."""

    id: str
    model: str
    firmware: str


@dataclass(frozen=True, slots=True)
class ResidentRef:
    """A resident identifier: `system` is a key of RESIDENT_ID_SYSTEMS."""

    system: str
    value: str

    def __post_init__(self) -> None:
        if self.system not in RESIDENT_ID_SYSTEMS:
            raise ContractError(f"unknown resident identifier system {self.system!r}")
        if not self.value:
            raise ContractError("empty resident identifier")


# Why a device sent a field without a number (IEEE 11073 special values and device statuses).
ABSENT_REASONS = ("nan", "nres", "+inf", "-inf", "reserved", "unsuccessful")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value with its UCUM unit; Decimal keeps the device's precision exactly.

    A device may send a field that holds no number (an SFLOAT NaN, NRes or infinity, a scale's
    "measurement unsuccessful"): then `value` is None and `absent_reason` (one of ABSENT_REASONS)
    says why, so the record shows "no value, and why", never a made-up number.
    """

    name: str
    value: Decimal | None
    unit: str
    absent_reason: str | None = None

    def __post_init__(self) -> None:
        if (self.value is None) != (self.absent_reason is not None):
            raise ContractError(f"{self.name}: a value or an absent reason, exactly one")
        if self.absent_reason is not None and self.absent_reason not in ABSENT_REASONS:
            raise ContractError(f"{self.name}: unknown absent reason {self.absent_reason!r}")
        if self.value is not None and not self.value.is_finite():
            raise ContractError(f"{self.name}: {self.value} is not a finite number")

    def to_cbor(self) -> list[Any]:
        """[name, value, unit], or [name, None, unit, reason]: the v1 layout for every number."""
        if self.value is None:
            return [self.name, None, self.unit, self.absent_reason]
        return [self.name, self.value, self.unit]

    @classmethod
    def from_cbor(cls, raw: Any) -> Measurement:
        if len(raw) == 3:
            name, value, unit = raw
            return cls(str(name), Decimal(value), str(unit))
        name, value, unit, reason = raw
        if value is not None:
            raise ContractError(f"{name}: a value and an absent reason")
        return cls(str(name), None, str(unit), str(reason))


@dataclass(frozen=True, slots=True)
class Waveform:
    """A sampled signal (ECG strip): integer samples per lead; value = sample * resolution_uv µV.

    On the wire each lead is delta-encoded little-endian int32 (the batch's zstd then shrinks
    the small deltas of a smooth signal to a fraction of raw 24-bit samples).
    """

    sample_rate_hz: int
    resolution_uv: Decimal
    leads: tuple[str, ...]
    first_sample: int
    samples: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.samples) != len(self.leads):
            raise ContractError(f"waveform has {len(self.leads)} leads but {len(self.samples)} sample series")
        if len({len(series) for series in self.samples}) > 1:
            raise ContractError("waveform leads have different lengths")
        if self.sample_rate_hz <= 0:
            raise ContractError("waveform sample rate must be positive")

    @property
    def sample_count(self) -> int:
        return len(self.samples[0]) if self.samples else 0

    def to_cbor(self) -> list[Any]:
        return [
            self.sample_rate_hz,
            self.resolution_uv,
            list(self.leads),
            self.first_sample,
            [_delta_encode(series) for series in self.samples],
        ]

    @classmethod
    def from_cbor(cls, raw: Any) -> Waveform:
        rate, resolution, leads, first, data = raw
        return cls(
            sample_rate_hz=int(rate),
            resolution_uv=Decimal(resolution),
            leads=tuple(str(lead) for lead in leads),
            first_sample=int(first),
            samples=tuple(_delta_decode(series) for series in data),
        )


def _delta_encode(series: tuple[int, ...]) -> bytes:
    deltas = array.array("i", (b - a for a, b in zip((0, *series[:-1]), series, strict=True)))
    if sys.byteorder != "little":
        deltas.byteswap()
    return deltas.tobytes()


def _delta_decode(data: bytes) -> tuple[int, ...]:
    if len(data) % 4:
        raise ContractError("waveform data is not a whole number of int32 deltas")
    deltas = array.array("i")
    deltas.frombytes(data)
    if sys.byteorder != "little":
        deltas.byteswap()
    return tuple(itertools.accumulate(deltas))


@dataclass(frozen=True, slots=True)
class Reading:
    """One accepted reading as the gateway stored it; (gateway_id, seq) is unique."""

    gateway_id: str
    seq: int
    device: DeviceRef
    kind: str
    values: tuple[Measurement, ...]
    measured_at_ms: int
    time_quality: str
    received_mono_ms: int
    resident: ResidentRef | None
    operator: str | None
    flags: tuple[str, ...] = field(default=())
    waveform: Waveform | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ContractError(f"unknown kind {self.kind!r}")
        if self.time_quality not in TIME_QUALITIES:
            raise ContractError(f"unknown time quality {self.time_quality!r}")
        if self.seq < 1:
            raise ContractError(f"sequence must be >= 1, got {self.seq}")

    def value(self, name: str) -> Measurement | None:
        return next((m for m in self.values if m.name == name), None)

    def to_cbor_map(self) -> dict[str, Any]:
        raw = {
            "gw": self.gateway_id,
            "seq": self.seq,
            "dev": [self.device.id, self.device.model, self.device.firmware],
            "k": self.kind,
            "val": [m.to_cbor() for m in self.values],
            "t": self.measured_at_ms,
            "tq": self.time_quality,
            "rx": self.received_mono_ms,
            "res": [self.resident.system, self.resident.value] if self.resident else None,
            "op": self.operator,
            "fl": list(self.flags),
        }
        if self.waveform is not None:  # absent for scalar readings: the v1 layout is unchanged
            raw["wf"] = self.waveform.to_cbor()
        return raw

    @classmethod
    def from_cbor_map(cls, raw: Any) -> Reading:
        try:
            dev = raw["dev"]
            res = raw["res"]
            return cls(
                gateway_id=str(raw["gw"]),
                seq=int(raw["seq"]),
                device=DeviceRef(id=str(dev[0]), model=str(dev[1]), firmware=str(dev[2])),
                kind=str(raw["k"]),
                values=tuple(Measurement.from_cbor(m) for m in raw["val"]),
                measured_at_ms=int(raw["t"]),
                time_quality=str(raw["tq"]),
                received_mono_ms=int(raw["rx"]),
                resident=ResidentRef(str(res[0]), str(res[1])) if res else None,
                operator=None if raw["op"] is None else str(raw["op"]),
                flags=tuple(str(f) for f in raw["fl"]),
                waveform=Waveform.from_cbor(raw["wf"]) if raw.get("wf") else None,
            )
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"malformed reading: {exc!r}") from exc


def encode_reading(reading: Reading) -> bytes:
    """The reading as canonical CBOR: `cbor2.dumps(reading.to_cbor_map(), canonical=True)`,
    written part by part (`encode_reading_parts`), which is several times faster."""
    return encode_reading_parts(
        gateway_id=reading.gateway_id,
        seq=reading.seq,
        device=reading.device,
        kind=reading.kind,
        values_cbor=measurements_cbor(reading.values),
        measured_at_ms=reading.measured_at_ms,
        time_quality=reading.time_quality,
        received_mono_ms=reading.received_mono_ms,
        resident=reading.resident,
        operator=reading.operator,
        flags_cbor=flags_cbor(reading.flags),
        waveform_cbor=None if reading.waveform is None else cbor2.dumps(reading.waveform.to_cbor()),
    )


@functools.lru_cache(maxsize=256)
def flags_cbor(flags: tuple[str, ...]) -> bytes:
    """A reading's flags as CBOR (a list); most readings share a few sets, often none."""
    return cbor2.dumps(list(flags))


def measurements_cbor(values: Sequence[Measurement]) -> bytes:
    """`cbor2.dumps([m.to_cbor() for m in values])`, byte for byte, each measurement's bytes
    cached: a kiosk's readings repeat the same few names, units and values, and cbor2 takes
    over a microsecond per Decimal. The cache keys a value by its text, never by the Decimal
    itself: 120 and 120.0 are equal and hash alike, but are different measurements."""
    if len(values) >= 24:
        return cbor2.dumps([m.to_cbor() for m in values])
    return bytes((0x80 | len(values),)) + b"".join(
        _measurement_cbor(m.name, None if m.value is None else str(m.value), m.unit, m.absent_reason)
        for m in values
    )


@functools.lru_cache(maxsize=8192)
def _measurement_cbor(name: str, value: str | None, unit: str, absent_reason: str | None) -> bytes:
    return cbor2.dumps(
        Measurement(name, None if value is None else Decimal(value), unit, absent_reason).to_cbor()
    )


def encode_reading_parts(
    *,
    gateway_id: str,
    seq: int,
    device: DeviceRef,
    kind: str,
    values_cbor: bytes,
    measured_at_ms: int,
    time_quality: str,
    received_mono_ms: int,
    resident: ResidentRef | None,
    operator: str | None,
    flags_cbor: bytes,
    waveform_cbor: bytes | None,
) -> bytes:
    """`encode_reading`, byte for byte, from fields of which three are CBOR already: the
    measurements (`[m.to_cbor() …]`), the flags (a list) and the waveform (`to_cbor()`), as the
    gateway's outbox keeps them. Forming a batch then decodes nothing: building `Reading`s from
    stored rows only to encode them again was most of a batch's cost.

    The map is written in canonical key order (shorter keys first, then bytewise), with each
    value canonical on its own; tests/unit/test_wire_contract.py holds it to `encode_reading`.
    """
    parts = [
        _MAP_OF_12 if waveform_cbor is not None else _MAP_OF_11,
        _KEY["k"], _cbor_of(kind),
        _KEY["t"], _cbor_int(measured_at_ms),
        _KEY["fl"], flags_cbor,
        _KEY["gw"], _cbor_of(gateway_id),
        _KEY["op"], _cbor_of(operator),
        _KEY["rx"], _cbor_int(received_mono_ms),
        _KEY["tq"], _cbor_of(time_quality),
    ]  # fmt: skip
    if waveform_cbor is not None:
        parts += (_KEY["wf"], waveform_cbor)
    parts += (
        _KEY["dev"], _cbor_of((device.id, device.model, device.firmware)),
        _KEY["res"], cbor2.dumps(None if resident is None else [resident.system, resident.value]),
        _KEY["seq"], _cbor_int(seq),
        _KEY["val"], values_cbor,
    )  # fmt: skip
    return b"".join(parts)


_KEY = {
    key: cbor2.dumps(key)
    for key in ("k", "t", "fl", "gw", "op", "rx", "tq", "wf", "dev", "res", "seq", "val")
}
_MAP_OF_11, _MAP_OF_12 = b"\xab", b"\xac"  # CBOR map headers (major type 5, 11 and 12 pairs)


@functools.lru_cache(maxsize=1024)
def _cbor_of(value: str | tuple[str, ...] | None) -> bytes:
    """CBOR of a value that recurs from reading to reading (a kind, a gateway, an operator, a
    device as a list), encoded once."""
    return cbor2.dumps(list(value) if isinstance(value, tuple) else value)


def _cbor_int(value: int) -> bytes:
    """CBOR of an integer (major type 0, shortest form), without cbor2's per-call dispatch."""
    if value < 0:
        return cbor2.dumps(value)
    if value < 24:
        return bytes((value,))
    for marker, size in ((0x18, 1), (0x19, 2), (0x1A, 4), (0x1B, 8)):
        if value < 1 << (8 * size):
            return bytes((marker,)) + value.to_bytes(size, "big")
    return cbor2.dumps(value)  # a bignum


def decode_reading(data: bytes) -> Reading:
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise ContractError(f"reading is not CBOR: {exc}") from exc
    return Reading.from_cbor_map(raw)


SeqRanges = tuple[tuple[int, int], ...]


def seq_ranges(seqs: Iterable[int]) -> SeqRanges:
    """Strictly increasing sequence numbers -> their runs as (first, last) pairs."""
    runs: list[list[int]] = []
    previous = 0
    for seq in seqs:
        if seq <= previous:
            raise ContractError(f"sequences must be positive and increasing: {seq} after {previous}")
        if runs and seq == previous + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
        previous = seq
    return tuple((first, last) for first, last in runs)


def expand_ranges(ranges: SeqRanges) -> Iterator[int]:
    for first, last in ranges:
        yield from range(first, last + 1)


def _check_ranges(raw: Any) -> SeqRanges:
    """Ranges as sent: sorted, disjoint, not touching (the encoder merges neighbours), >= 1."""
    if not isinstance(raw, list) or not raw:
        raise ContractError("batch seqs must be a non-empty list of [first, last] ranges")
    ranges: list[tuple[int, int]] = []
    previous_last = 0
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            raise ContractError(f"batch seq range {item!r} is not [first, last]")
        first, last = item
        if first < 1 or first > last or (ranges and first <= previous_last + 1):
            raise ContractError(f"batch seq ranges are not sorted, disjoint runs: {raw!r}")
        ranges.append((first, last))
        previous_last = last
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified, decoded batch: the readings and the facts needed to check the chain.

    `number` counts the gateway's batches in the order it made them (None for a v1 batch);
    `waiting` is how many readings the gateway still held, not yet batched, when it made this
    one (None for v1): the bridge tells a gap the gateway will fill from one it cannot.
    """

    gateway_id: str
    number: int | None
    seq_ranges: SeqRanges
    prev_hash: bytes
    hash: bytes
    readings: tuple[Reading, ...]
    waiting: int | None = None
    # Each reading's CBOR exactly as the gateway signed it (empty if the body was not a
    # definite-length list): the bridge stores these bytes rather than encoding the reading again.
    reading_bytes: tuple[bytes, ...] = ()

    @property
    def first_seq(self) -> int:
        return self.seq_ranges[0][0]

    @property
    def last_seq(self) -> int:
        return self.seq_ranges[-1][1]

    def describe(self) -> str:
        """`batch 7 (seq 120-130, 140)` for logs and refusals."""
        runs = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.seq_ranges)
        return f"batch {self.number if self.number is not None else '(v1)'} (seq {runs})"


def batch_hash(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def encode_batch(
    readings: Sequence[Reading],
    *,
    prev_hash: bytes,
    signing_key: Ed25519PrivateKey,
    number: int,
    waiting: int = 0,
) -> tuple[bytes, bytes]:
    """Sign readings (increasing sequence numbers, not necessarily contiguous) as batch `number`
    of the gateway's chain -> (message bytes to publish, hash of this batch)."""
    if not readings:
        raise ContractError("empty batch")
    if number < 1 or waiting < 0:
        raise ContractError(f"batch number must be >= 1 and waiting >= 0 (got {number}, {waiting})")
    gateway_id = readings[0].gateway_id
    if any(r.gateway_id != gateway_id for r in readings):
        raise ContractError("batch mixes gateways")
    return encode_batch_of_encoded(
        gateway_id,
        [(r.seq, encode_reading(r)) for r in readings],
        prev_hash=prev_hash,
        signing_key=signing_key,
        number=number,
        waiting=waiting,
    )


def encode_batch_of_encoded(
    gateway_id: str,
    encoded: Sequence[tuple[int, bytes]],
    *,
    prev_hash: bytes,
    signing_key: Ed25519PrivateKey,
    number: int,
    waiting: int = 0,
) -> tuple[bytes, bytes]:
    """`encode_batch` of readings already encoded (`encode_reading` or `encode_reading_parts`),
    given as (seq, bytes) in increasing seq: the same message, byte for byte."""
    if not encoded:
        raise ContractError("empty batch")
    if number < 1 or waiting < 0:
        raise ContractError(f"batch number must be >= 1 and waiting >= 0 (got {number}, {waiting})")
    ranges = seq_ranges(seq for seq, _ in encoded)
    # A CBOR array is its header followed by its items.
    body = _array_header(len(encoded)) + b"".join(data for _, data in encoded)
    payload = cbor2.dumps(
        {
            "v": CONTRACT_VERSION,
            "gw": gateway_id,
            "no": number,
            "prev": prev_hash,
            "seqs": [list(r) for r in ranges],
            "n": len(encoded),
            "q": waiting,
            "z": zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body),
        },
        canonical=True,
    )
    message = cbor2.dumps({"p": payload, "s": signing_key.sign(payload)}, canonical=True)
    return message, batch_hash(payload)


def _array_header(length: int) -> bytes:
    """The head of a CBOR array of `length` items (major type 4, shortest length form)."""
    if length < 24:
        return bytes([0x80 | length])
    for marker, size in ((0x98, 1), (0x99, 2), (0x9A, 4)):
        if length < 1 << (8 * size):
            return bytes([marker]) + length.to_bytes(size, "big")
    raise ContractError(f"batch of {length} readings is too large")


def peek_batch_gateway(message: bytes) -> tuple[str, bytes, bytes]:
    """Unverified look at a batch -> (gateway_id, payload, signature), to pick the key to verify with."""
    try:
        outer = cbor2.loads(message)
        payload, signature = outer["p"], outer["s"]
        header = cbor2.loads(payload)
        gateway_id = header["gw"]
    except Exception as exc:
        raise ContractError(f"batch is not a CBOR envelope: {exc!r}") from exc
    if not isinstance(payload, bytes) or not isinstance(signature, bytes) or not isinstance(gateway_id, str):
        raise ContractError("batch envelope has wrong field types")
    return gateway_id, payload, signature


def decode_batch(message: bytes, public_key: Ed25519PublicKey) -> Batch:
    """Verify the signature over the exact payload bytes, then decode and check the header."""
    gateway_id, payload, signature = peek_batch_gateway(message)
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as exc:
        raise SignatureError(f"bad signature on batch from {gateway_id}") from exc
    header = cbor2.loads(payload)
    try:
        version = header["v"]
        if version not in BATCH_VERSIONS:
            raise ContractError(f"unsupported contract version {version!r}")
        if version == 1:
            first, last = header["first"], header["last"]
            if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last):
                raise ContractError(f"batch v1 range {first!r}..{last!r} is not a run of sequences")
            ranges: SeqRanges = ((first, last),)
            number, waiting = None, None
        else:
            ranges = _check_ranges(header["seqs"])
            number, waiting = header["no"], header["q"]
            if not (isinstance(number, int) and number >= 1 and isinstance(waiting, int) and waiting >= 0):
                raise ContractError(f"batch number {number!r} / waiting {waiting!r} out of range")
        count, prev = header["n"], header["prev"]
        with zstandard.ZstdDecompressor().stream_reader(header["z"]) as reader:
            body = reader.read(_MAX_DECOMPRESSED + 1)
    except (KeyError, TypeError, zstandard.ZstdError) as exc:
        raise ContractError(f"malformed batch header: {exc!r}") from exc
    if len(body) > _MAX_DECOMPRESSED:
        raise ContractError("batch body too large")
    try:
        raw_readings, reading_bytes = _items_with_bytes(body)
    except Exception as exc:
        raise ContractError(f"batch body is not CBOR: {exc}") from exc
    if not isinstance(raw_readings, list):
        raise ContractError("batch body is not a list")
    readings = tuple(Reading.from_cbor_map(r) for r in raw_readings)
    if len(readings) != count or [r.seq for r in readings] != list(expand_ranges(ranges)):
        raise ContractError(f"batch header (seqs {list(ranges)}, n={count}) does not match its readings")
    if any(r.gateway_id != gateway_id for r in readings):
        raise ContractError("batch holds readings of another gateway")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise ContractError("batch prev hash must be 32 bytes")
    return Batch(gateway_id, number, ranges, prev, batch_hash(payload), readings, waiting, reading_bytes)


def _check_ack_signature(raw: Any, bridge_key: Ed25519PublicKey, gateway_id: str | None) -> None:
    if not isinstance(raw, dict):
        raise ContractError("malformed ack: not a map")
    signature = raw.get("sig")
    if not isinstance(signature, bytes):
        raise SignatureError("ack is not signed by the bridge")
    if raw.get("gw") != gateway_id:
        raise SignatureError(f"ack was signed for gateway {raw.get('gw')!r}, not {gateway_id!r}")
    signed = cbor2.dumps({key: value for key, value in raw.items() if key != "sig"}, canonical=True)
    try:
        bridge_key.verify(signature, ACK_SIGNATURE_CONTEXT + signed)
    except InvalidSignature:
        raise SignatureError("ack signature does not verify against the bridge's key") from None


def _items_with_bytes(body: bytes) -> tuple[Any, tuple[bytes, ...]]:
    """The body's items, each with its own bytes: decoded one at a time, each by a decoder of its
    own (so an item can never lean on another's shared values), and cut where the decoder
    stopped. A body that is not a definite-length list is decoded whole, without the bytes."""
    count, start = _list_header(body)
    if count is None:
        return cbor2.loads(body), ()
    stream = io.BytesIO(body)
    stream.seek(start)
    items, cuts = [], []
    for _ in range(count):
        items.append(cbor2.CBORDecoder(stream).decode())
        end = stream.tell()
        cuts.append(body[start:end])
        start = end
    return items, tuple(cuts)


def _list_header(body: bytes) -> tuple[int | None, int]:
    """(item count, where the first item starts) of a CBOR array; (None, 0) for anything else."""
    if not body or body[0] >> 5 != 4:
        return None, 0
    info = body[0] & 0x1F
    if info < 24:
        return info, 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or len(body) < 1 + size:
        return None, 0  # indefinite length (or broken): the whole decode says what is wrong
    return int.from_bytes(body[1 : 1 + size], "big"), 1 + size


def encode_time_probe(gateway_id: str) -> bytes:
    """A gateway that has just connected asks for the bridge's clock (and its chain head).

    Published on the gateway's own up topic, which the broker lets only that gateway write; the
    bridge stores nothing for it and answers with an ack, so it needs no signature.
    """
    return cbor2.dumps({"v": CONTRACT_VERSION, "gw": gateway_id, "probe": True}, canonical=True)


def decode_time_probe(message: bytes) -> str | None:
    """The gateway id if `message` is a time probe, else None (a batch, or garbage)."""
    try:
        raw = cbor2.loads(message)
    except Exception:
        return None
    if isinstance(raw, dict) and raw.get("probe") is True and isinstance(raw.get("gw"), str):
        return raw["gw"]
    return None


@dataclass(frozen=True, slots=True)
class Ack:
    """The bridge's answer about one gateway's chain.

    `head_hash` is the newest batch of the chain the bridge has durably stored (None: it cannot
    say, e.g. it refused an unknown gateway); since the chain proves order, it vouches for every
    batch the gateway made before it. `head_number` is that batch's number, `acked` the highest
    sequence stored (both for display). `batch_hash` is the batch this message answers. `error` is
    set when the bridge refused it: the gateway shows that to the operator and keeps the readings.
    """

    head_hash: bytes | None
    head_number: int | None = None
    acked: int = 0
    batch_hash: bytes | None = None
    error: str | None = None
    server_time_ms: int | None = None


# What an ack's signature covers first: it can never be taken for a signature over anything else.
ACK_SIGNATURE_CONTEXT = b"kiosk-edge ack v2\x00"


def encode_ack(
    ack: Ack, *, gateway_id: str | None = None, signing_key: Ed25519PrivateKey | None = None
) -> bytes:
    """The ack as canonical CBOR; with `signing_key` (the bridge's) signed for `gateway_id`."""
    fields: dict[str, Any] = {
        "v": CONTRACT_VERSION,
        "head": ack.head_hash,
        "no": ack.head_number,
        "acked": ack.acked,
        "hash": ack.batch_hash,
        "err": ack.error,
        "now": ack.server_time_ms,
    }
    if signing_key is None:
        return cbor2.dumps(fields, canonical=True)
    if not gateway_id:
        raise ValueError("a signed ack names the gateway it answers")
    fields["gw"] = gateway_id
    fields["sig"] = signing_key.sign(ACK_SIGNATURE_CONTEXT + cbor2.dumps(fields, canonical=True))
    return cbor2.dumps(fields, canonical=True)


def decode_ack(
    data: bytes, *, bridge_key: Ed25519PublicKey | None = None, gateway_id: str | None = None
) -> Ack:
    """The ack in `data`. With `bridge_key`, only an ack the bridge signed for `gateway_id`:
    anything else raises SignatureError (an unsigned ack too: a bridge that signs sends none)."""
    try:
        raw = cbor2.loads(data)
        if bridge_key is not None:
            _check_ack_signature(raw, bridge_key, gateway_id)
        if raw.get("v") == 1:  # a bridge not yet updated: its "hash" was the newest stored batch
            head = raw.get("hash")
            number = None
        else:
            head, number = raw["head"], raw.get("no")
        if head is not None and (not isinstance(head, bytes) or len(head) != 32):
            raise ContractError(f"ack head must be a 32-byte hash, got {head!r}")
        return Ack(
            head_hash=head,
            head_number=number,
            acked=int(raw["acked"]),
            batch_hash=raw.get("hash"),
            error=raw.get("err"),
            server_time_ms=raw.get("now"),
        )
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(f"malformed ack: {exc!r}") from exc
