"""Glucose Service 0x1808: Glucose Measurement 0x2A18 and Record Access Control Point 0x2A52.

Pure: bytes in, frozen dataclasses out; no I/O, clock or logging. A payload that cannot be read raises
`BleParseError` naming the characteristic and the field. Layouts are tables (`GLUCOSE_MEASUREMENT_LAYOUT`,
`RACP_*_LAYOUT`): one row per field, in wire order, with the flag bit that makes it present.

This module also holds the small shared helpers the PLX decoder uses (`BleParseError`, `NoValue`,
`DateTime`, `_read_layout`); SFLOAT values and `NoValue` come from `gateway.ble.ieee11073`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, IntFlag
from typing import Any, Final, Literal

from gateway.ble.ieee11073 import NoValue, NoValueReason, decode_sfloat
from gateway.errors import GatewayError

__all__ = [
    "GLUCOSE_MEASUREMENT_LAYOUT",
    "BleParseError",
    "Bound",
    "DateTime",
    "GlucoseConcentration",
    "GlucoseMeasurement",
    "GlucoseSampleLocation",
    "GlucoseSampleType",
    "GlucoseSensorStatus",
    "NoValue",
    "RacpNumberOfRecords",
    "RacpOpCode",
    "RacpOperator",
    "RacpResponse",
    "RacpResponseCode",
    "encode_abort",
    "encode_report_number_of_records",
    "encode_report_records_greater_or_equal",
    "parse_glucose_measurement",
    "parse_racp_response",
]


# --------------------------------------------------------------------------- shared helpers


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
    """GATT Date Time (7 bytes). 0 in year, month or day means "not known" (as the spec says)."""

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


# IEEE 11073-20601 SFLOAT special values (whole 16-bit word, exponent 0).
def _sfloat(raw: int) -> Decimal | NoValue:
    return decode_sfloat(raw)


def _uint(chunk: bytes) -> int:
    return int.from_bytes(chunk, "little")


def _sint(chunk: bytes) -> int:
    return int.from_bytes(chunk, "little", signed=True)


def _date_time(chunk: bytes) -> DateTime:
    return DateTime(_uint(chunk[0:2]), chunk[2], chunk[3], chunk[4], chunk[5], chunk[6])


# kind -> (size in bytes, decoder). All multi-byte fields are little-endian.
_KINDS: Final[dict[str, tuple[int, Callable[[bytes], Any]]]] = {
    "u8": (1, _uint),
    "u16": (2, _uint),
    "s16": (2, _sint),
    "u24": (3, _uint),
    "sfloat": (2, lambda chunk: _sfloat(_uint(chunk))),
    "datetime": (7, _date_time),
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str
    flag: int = 0  # bit of the leading "flags" field that makes this field present; 0 = always present


def _read_layout(
    characteristic: str, payload: bytes, layout: tuple[_Field, ...], offset: int = 0
) -> dict[str, Any]:
    """Read the fields of `layout` in order; a field with a flag is read only when that flag is set."""
    out: dict[str, Any] = {}
    for field in layout:
        if field.flag and not out["flags"] & field.flag:
            continue
        size, decode = _KINDS[field.kind]
        chunk = bytes(payload[offset : offset + size])
        if len(chunk) < size:
            raise BleParseError(
                characteristic,
                field.name,
                f"truncated: needs {size} byte(s) at offset {offset}, payload has {len(payload)}",
            )
        out[field.name] = decode(chunk)
        offset += size
    out["_end"] = offset
    return out


# --------------------------------------------------------------------------- Glucose Measurement 0x2A18

_GM: Final = "Glucose Measurement 0x2A18"

FLAG_TIME_OFFSET: Final = 0x01
FLAG_CONCENTRATION: Final = 0x02
FLAG_UNITS_MOL_PER_L: Final = 0x04
FLAG_SENSOR_STATUS: Final = 0x08
FLAG_CONTEXT_FOLLOWS: Final = 0x10

GLUCOSE_MEASUREMENT_LAYOUT: Final[tuple[_Field, ...]] = (
    _Field("flags", "u8"),
    _Field("sequence_number", "u16"),
    _Field("base_time", "datetime"),
    _Field("time_offset", "s16", FLAG_TIME_OFFSET),  # minutes
    _Field("concentration", "sfloat", FLAG_CONCENTRATION),  # kg/L or mol/L (flag bit 2)
    _Field("type_sample_location", "u8", FLAG_CONCENTRATION),  # low nibble type, high nibble location
    _Field("sensor_status", "u16", FLAG_SENSOR_STATUS),
)


class GlucoseSampleType(IntEnum):
    """Low nibble of the Type-Sample Location byte (0 and 11-15 are reserved)."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class GlucoseSampleLocation(IntEnum):
    """High nibble of the Type-Sample Location byte (0 and 6-14 are reserved)."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    SUBCUTANEOUS_TISSUE = 5  # GATT Specification Supplement (CGM); reserved in GLS 1.0
    NOT_AVAILABLE = 15


class GlucoseSensorStatus(IntFlag):
    """Sensor Status Annunciation (u16). Reserved bits 12-15 are kept as received."""

    DEVICE_BATTERY_LOW = 1 << 0
    SENSOR_MALFUNCTION = 1 << 1
    SAMPLE_SIZE_INSUFFICIENT = 1 << 2
    STRIP_INSERTION_ERROR = 1 << 3
    STRIP_TYPE_INCORRECT = 1 << 4
    RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS = 1 << 5
    RESULT_LOWER_THAN_DEVICE_CAN_PROCESS = 1 << 6
    TEMPERATURE_TOO_HIGH = 1 << 7
    TEMPERATURE_TOO_LOW = 1 << 8
    READ_INTERRUPTED = 1 << 9
    GENERAL_DEVICE_FAULT = 1 << 10
    TIME_FAULT = 1 << 11


# SI unit on the wire -> (clinical UCUM unit, power of ten from SI to clinical)
_UNITS: Final[dict[bool, tuple[Literal["kg/L", "mol/L"], Literal["mg/dL", "mmol/L"], int]]] = {
    False: ("kg/L", "mg/dL", 5),  # 1 kg/L = 10^6 mg / 10 dL = 10^5 mg/dL
    True: ("mol/L", "mmol/L", 3),  # 1 mol/L = 10^3 mmol/L
}

Value = Decimal | Bound | NoValue


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseConcentration:
    """The concentration as sent (`si_value` in `si_unit`) and converted exactly (`value` in `unit`).

    When the device says the result is beyond what it can process, both values are a `Bound`.
    """

    si_value: Value
    si_unit: Literal["kg/L", "mol/L"]
    value: Value
    unit: Literal["mg/dL", "mmol/L"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseMeasurement:
    sequence_number: int
    base_time: DateTime
    time_offset_minutes: int | None = None
    concentration: GlucoseConcentration | None = None
    sample_type: GlucoseSampleType | None = None  # present exactly when concentration is
    sample_location: GlucoseSampleLocation | None = None
    sensor_status: GlucoseSensorStatus | None = None  # None: field absent
    context_follows: bool = False


def _scale(value: Decimal | NoValue, power: int) -> Decimal | NoValue:
    return value if isinstance(value, NoValue) else value.scaleb(power)


def _bounded(value: Decimal | NoValue, status: GlucoseSensorStatus | None) -> Value:
    high = bool(status and status & GlucoseSensorStatus.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS)
    low = bool(status and status & GlucoseSensorStatus.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS)
    if high and low:
        return NoValue(NoValueReason.CONTRADICTORY_RANGE)
    if not (high or low):
        return value
    return Bound(">" if high else "<", None if isinstance(value, NoValue) else value)


def parse_glucose_measurement(payload: bytes) -> GlucoseMeasurement:
    """Decode one Glucose Measurement 0x2A18 notification. Trailing bytes are ignored."""
    f = _read_layout(_GM, payload, GLUCOSE_MEASUREMENT_LAYOUT)
    flags: int = f["flags"]
    status = GlucoseSensorStatus(f["sensor_status"]) if "sensor_status" in f else None
    concentration = sample_type = sample_location = None
    if flags & FLAG_CONCENTRATION:
        si_unit, unit, power = _UNITS[bool(flags & FLAG_UNITS_MOL_PER_L)]
        si = f["concentration"]
        concentration = GlucoseConcentration(
            si_value=_bounded(si, status),
            si_unit=si_unit,
            value=_bounded(_scale(si, power), status),
            unit=unit,
        )
        nibbles: int = f["type_sample_location"]
        try:
            sample_type = GlucoseSampleType(nibbles & 0x0F)
        except ValueError:
            raise BleParseError(_GM, "type", f"reserved value {nibbles & 0x0F}") from None
        try:
            sample_location = GlucoseSampleLocation(nibbles >> 4)
        except ValueError:
            raise BleParseError(_GM, "sample_location", f"reserved value {nibbles >> 4}") from None
    return GlucoseMeasurement(
        sequence_number=f["sequence_number"],
        base_time=f["base_time"],
        time_offset_minutes=f.get("time_offset"),
        concentration=concentration,
        sample_type=sample_type,
        sample_location=sample_location,
        sensor_status=status,
        context_follows=bool(flags & FLAG_CONTEXT_FOLLOWS),
    )


# --------------------------------------------------------------------------- RACP 0x2A52

_RACP: Final = "Record Access Control Point 0x2A52"


class RacpOpCode(IntEnum):
    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class RacpOperator(IntEnum):
    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL_TO = 0x02
    GREATER_THAN_OR_EQUAL_TO = 0x03
    WITHIN_RANGE_OF = 0x04
    FIRST_RECORD = 0x05
    LAST_RECORD = 0x06


class RacpResponseCode(IntEnum):
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


RACP_FILTER_SEQUENCE_NUMBER: Final = 0x01

RACP_HEADER_LAYOUT: Final[tuple[_Field, ...]] = (_Field("op_code", "u8"), _Field("operator", "u8"))
RACP_NUMBER_OF_RECORDS_LAYOUT: Final[tuple[_Field, ...]] = (_Field("number_of_records", "u16"),)
RACP_RESPONSE_CODE_LAYOUT: Final[tuple[_Field, ...]] = (
    _Field("request_op_code", "u8"),
    _Field("response_code_value", "u8"),
)


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    count: int


@dataclass(frozen=True, slots=True)
class RacpResponse:
    request_op_code: RacpOpCode
    response_code: RacpResponseCode


def _sequence_filter(sequence: int) -> bytes:
    if not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"sequence number {sequence} does not fit in a u16")
    return bytes([RACP_FILTER_SEQUENCE_NUMBER]) + sequence.to_bytes(2, "little")


def encode_report_records_greater_or_equal(sequence: int) -> bytes:
    """Report stored records with sequence number >= `sequence`."""
    header = bytes([RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO])
    return header + _sequence_filter(sequence)


def encode_report_number_of_records(*, greater_or_equal: int | None = None) -> bytes:
    """Report the number of stored records: all of them, or those with sequence number >= the given one."""
    if greater_or_equal is None:
        return bytes([RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.ALL_RECORDS])
    header = bytes([RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO])
    return header + _sequence_filter(greater_or_equal)


def encode_abort() -> bytes:
    """Abort operation: op code 0x03 with the Null operator and no operand."""
    return bytes([RacpOpCode.ABORT_OPERATION, RacpOperator.NULL])


def parse_racp_response(payload: bytes) -> RacpNumberOfRecords | RacpResponse:
    """Decode an RACP indication: a number-of-records response (0x05) or a response code (0x06).

    The operator byte (Null in both responses) is required but its value is not checked.
    """
    header = _read_layout(_RACP, payload, RACP_HEADER_LAYOUT)
    op_code: int = header["op_code"]
    if op_code == RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
        f = _read_layout(_RACP, payload, RACP_NUMBER_OF_RECORDS_LAYOUT, header["_end"])
        return RacpNumberOfRecords(f["number_of_records"])
    if op_code == RacpOpCode.RESPONSE_CODE:
        f = _read_layout(_RACP, payload, RACP_RESPONSE_CODE_LAYOUT, header["_end"])
        try:
            request = RacpOpCode(f["request_op_code"])
        except ValueError:
            value = f["request_op_code"]
            raise BleParseError(_RACP, "request_op_code", f"unknown op code {value:#04x}") from None
        try:
            code = RacpResponseCode(f["response_code_value"])
        except ValueError:
            value = f["response_code_value"]
            raise BleParseError(_RACP, "response_code_value", f"reserved value {value:#04x}") from None
        return RacpResponse(request, code)
    raise BleParseError(_RACP, "op_code", f"{op_code:#04x} is not a response op code")
