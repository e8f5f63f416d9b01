"""The wire contract between a gateway and the cloud bridge: readings, signed batches, topics, acks.

This is the only module the gateway and the bridge share. Everything here is pure: bytes in,
values out, so both sides and the test vectors in tests/vectors/ agree on the same code.

A batch on the wire (topic ``kiosk/{gateway_id}/up``, MQTT QoS 1) is the CBOR map
``{"p": payload, "s": signature}`` where ``signature`` is Ed25519 over the exact ``payload``
bytes and ``payload`` is the CBOR map

    {"v": 1, "gw": gateway_id, "first": seq, "last": seq, "prev": sha256(previous payload),
     "n": count, "z": zstd(CBOR [reading, ...])}

The chain of ``prev`` hashes lets the bridge prove that nothing was removed or reordered. The
bridge answers on ``kiosk/{gateway_id}/ack`` with ``{"v": 1, "acked": seq, "hash": ...}``: the
highest sequence it has durably stored; only that ack lets a gateway mark readings synced.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import cbor2
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
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
    "encode_ack",
    "encode_batch",
    "gateway_id_from_topic",
    "peek_batch_gateway",
    "up_topic",
]

CONTRACT_VERSION = 1
GENESIS_HASH = bytes(32)
KINDS = ("bp", "glucose", "ecg", "spo2", "temperature", "weight", "heart_rate")
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
    """A batch whose signature does not verify against the expected key."""


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
    return cbor2.dumps(reading.to_cbor_map(), canonical=True)


def decode_reading(data: bytes) -> Reading:
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise ContractError(f"reading is not CBOR: {exc}") from exc
    return Reading.from_cbor_map(raw)


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified, decoded batch: the readings and the facts needed to check the chain."""

    gateway_id: str
    first_seq: int
    last_seq: int
    prev_hash: bytes
    hash: bytes
    readings: tuple[Reading, ...]


def batch_hash(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def encode_batch(
    readings: list[Reading], *, prev_hash: bytes, signing_key: Ed25519PrivateKey
) -> tuple[bytes, bytes]:
    """Sign a contiguous run of readings -> (message bytes to publish, hash of this batch)."""
    if not readings:
        raise ContractError("empty batch")
    gateway_id = readings[0].gateway_id
    seqs = [r.seq for r in readings]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise ContractError(f"batch sequences are not contiguous: {seqs[0]}..{seqs[-1]}")
    if any(r.gateway_id != gateway_id for r in readings):
        raise ContractError("batch mixes gateways")
    body = cbor2.dumps([r.to_cbor_map() for r in readings], canonical=True)
    payload = cbor2.dumps(
        {
            "v": CONTRACT_VERSION,
            "gw": gateway_id,
            "first": seqs[0],
            "last": seqs[-1],
            "prev": prev_hash,
            "n": len(readings),
            "z": zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body),
        },
        canonical=True,
    )
    message = cbor2.dumps({"p": payload, "s": signing_key.sign(payload)}, canonical=True)
    return message, batch_hash(payload)


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
        if header["v"] != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {header['v']!r}")
        first, last, count, prev = header["first"], header["last"], header["n"], header["prev"]
        with zstandard.ZstdDecompressor().stream_reader(header["z"]) as reader:
            body = reader.read(_MAX_DECOMPRESSED + 1)
    except (KeyError, TypeError, zstandard.ZstdError) as exc:
        raise ContractError(f"malformed batch header: {exc!r}") from exc
    if len(body) > _MAX_DECOMPRESSED:
        raise ContractError("batch body too large")
    try:
        raw_readings = cbor2.loads(body)
    except Exception as exc:
        raise ContractError(f"batch body is not CBOR: {exc}") from exc
    if not isinstance(raw_readings, list):
        raise ContractError("batch body is not a list")
    readings = tuple(Reading.from_cbor_map(r) for r in raw_readings)
    seqs = [r.seq for r in readings]
    if len(readings) != count or seqs != list(range(first, last + 1)):
        raise ContractError(f"batch header {first}..{last} (n={count}) does not match its readings")
    if any(r.gateway_id != gateway_id for r in readings):
        raise ContractError("batch holds readings of another gateway")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise ContractError("batch prev hash must be 32 bytes")
    return Batch(gateway_id, first, last, prev, batch_hash(payload), readings)


@dataclass(frozen=True, slots=True)
class Ack:
    """The bridge's answer: `acked` is the highest sequence durably stored (0 = none yet).

    `error` is set when the bridge refused a batch; the gateway shows it to the operator and
    keeps the readings.
    """

    acked: int
    batch_hash: bytes | None = None
    error: str | None = None
    server_time_ms: int | None = None


def encode_ack(ack: Ack) -> bytes:
    return cbor2.dumps(
        {
            "v": CONTRACT_VERSION,
            "acked": ack.acked,
            "hash": ack.batch_hash,
            "err": ack.error,
            "now": ack.server_time_ms,
        },
        canonical=True,
    )


def decode_ack(data: bytes) -> Ack:
    try:
        raw = cbor2.loads(data)
        return Ack(
            acked=int(raw["acked"]),
            batch_hash=raw.get("hash"),
            error=raw.get("err"),
            server_time_ms=raw.get("now"),
        )
    except Exception as exc:
        raise ContractError(f"malformed ack: {exc!r}") from exc
