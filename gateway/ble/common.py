"""What every GATT health decoder shares: the parse error, field types, and the one layout reader.

A characteristic value is described by a layout: a tuple of `FieldSpec` rows in wire order, each with
the wire format of the field (`FieldKind`) and the bit of the leading ``flags`` field that makes it
present. `read_layout` walks such a table over the payload and returns the decoded fields by name;
a payload too short for a present field raises `BleParseError` naming the characteristic and that
field. All multi-byte fields are little-endian (Bluetooth Core Specification, Vol 3, Part G, 3.3.3.1).

Pure: bytes in, values out; no I/O, clock or logging.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

from gateway.ble.ieee11073 import NoValue, decode_float, decode_sfloat
from gateway.errors import GatewayError

__all__ = [
    "FIELD_SIZE",
    "BleParseError",
    "Bound",
    "DateTime",
    "FieldKind",
    "FieldSpec",
    "Measured",
    "decode_enum",
    "exact_decimal",
    "read_date_time",
    "read_layout",
    "reject_trailing",
    "shift_decimal",
]

Measured = Decimal | NoValue
"""A number the device sent: an exact decimal, or a special value that is not a number."""


class BleParseError(GatewayError, ValueError):
    """A GATT payload that cannot be decoded: which characteristic, which field, what is wrong."""

    def __init__(self, characteristic: str, field: str, problem: str) -> None:
        super().__init__(f"{characteristic}: field {field!r}: {problem}")
        self.characteristic = characteristic
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Bound:
    """The device says the true value lies beyond `limit` (FHIR Quantity.comparator '>' or '<').

    `limit` is the value the device reported, or None when it reported a special value instead.
    """

    comparator: Literal[">", "<"]
    limit: Decimal | None


@dataclass(frozen=True, slots=True)
class DateTime:
    """GATT Date Time 0x2A08 (7 bytes). 0 in year, month or day means "not known" (as the spec says)."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    def to_datetime(self) -> _dt.datetime | None:
        """The naive (device-local) datetime, or None when a part is unknown or out of range."""
        try:
            return _dt.datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)
        except ValueError:
            return None


def exact_decimal(mantissa: int, exponent: int) -> Decimal:
    """``mantissa × 10**exponent`` with that exponent, exact whatever the caller's decimal context."""
    return Decimal(f"{mantissa}E{exponent}")


def shift_decimal(value: Decimal, power: int) -> Decimal:
    """``value × 10**power``, exact (unlike `Decimal.scaleb`, which rounds to the context precision)."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity: never produced by the decoders
        raise ValueError(f"{value} is not a finite number")
    return Decimal((sign, digits, exponent + power))


# --------------------------------------------------------------------------- field types


def _uint(chunk: bytes) -> int:
    return int.from_bytes(chunk, "little")


def _sint(chunk: bytes) -> int:
    return int.from_bytes(chunk, "little", signed=True)


def read_date_time(chunk: bytes) -> DateTime:
    """Date Time 0x2A08: year u16, month, day, hours, minutes, seconds (u8 each)."""
    return DateTime(_uint(chunk[0:2]), chunk[2], chunk[3], chunk[4], chunk[5], chunk[6])


class FieldKind(enum.Enum):
    """Wire format of one field; its size is `FieldKind.size` (also in `FIELD_SIZE`)."""

    U8 = 1
    U16 = 2
    SFLOAT = 3  # IEEE 11073-20601 16-bit, decoded by gateway.ble.ieee11073
    FLOAT = 4  # IEEE 11073-20601 32-bit
    DATE_TIME = 5  # Date Time 0x2A08
    S16 = 6
    U24 = 7

    @property
    def size(self) -> int:
        return FIELD_SIZE[self]


# kind -> (size in bytes, decoder of exactly that many bytes)
_CODECS: Final[Mapping[FieldKind, tuple[int, Callable[[bytes], Any]]]] = {
    FieldKind.U8: (1, _uint),
    FieldKind.U16: (2, _uint),
    FieldKind.S16: (2, _sint),
    FieldKind.U24: (3, _uint),
    FieldKind.SFLOAT: (2, lambda chunk: decode_sfloat(_uint(chunk))),
    FieldKind.FLOAT: (4, lambda chunk: decode_float(_uint(chunk))),
    FieldKind.DATE_TIME: (7, read_date_time),
}
FIELD_SIZE: Final[Mapping[FieldKind, int]] = {kind: size for kind, (size, _) in _CODECS.items()}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One row of a layout: a field of a characteristic value, in wire order.

    A row with a `flag` is read only when that bit of the ``flags`` field (read by an earlier row named
    ``"flags"``) is set, or clear when `when_set` is False. A `repeated` row takes the rest of the payload
    as a tuple of values (Heart Rate RR intervals).
    """

    name: str
    kind: FieldKind
    flag: int = 0  # flag mask deciding presence; 0 = always present
    when_set: bool = True
    repeated: bool = False


def read_layout(
    characteristic: str, payload: bytes, layout: Sequence[FieldSpec], *, offset: int = 0
) -> tuple[dict[str, Any], int]:
    """Read the present fields of `layout` from `payload[offset:]`: (fields by name, offset after them).

    Bytes after the last field are left to the caller (see `reject_trailing`).
    """
    data = bytes(payload)
    fields: dict[str, Any] = {}
    at = offset
    for spec in layout:
        if spec.flag and bool(fields["flags"] & spec.flag) != spec.when_set:
            continue
        size, decode = _CODECS[spec.kind]
        if spec.repeated:
            rest = len(data) - at
            if rest % size:
                raise BleParseError(characteristic, spec.name, f"{rest} bytes left, not a multiple of {size}")
            fields[spec.name] = tuple(decode(data[i : i + size]) for i in range(at, len(data), size))
            at = len(data)
            continue
        if at + size > len(data):
            raise BleParseError(
                characteristic,
                spec.name,
                f"truncated: needs {size} byte(s) at offset {at}, {max(len(data) - at, 0)} left",
            )
        fields[spec.name] = decode(data[at : at + size])
        at += size
    return fields, at


def reject_trailing(characteristic: str, payload: bytes, end: int) -> None:
    """Raise when bytes follow the last field (for characteristics read strictly)."""
    if end != len(payload):
        raise BleParseError(
            characteristic, "end", f"{len(payload) - end} unexpected bytes after the last field"
        )


_E = TypeVar("_E", bound=enum.IntEnum)


def decode_enum(characteristic: str, field: str, enum_type: type[_E], value: int) -> _E:
    """`enum_type(value)`, or `BleParseError` naming the field when the value is reserved or unknown."""
    try:
        return enum_type(value)
    except ValueError:
        raise BleParseError(characteristic, field, f"reserved or unknown value {value:#04x}") from None
