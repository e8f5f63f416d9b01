"""Glucose Service 0x1808: Glucose Measurement 0x2A18 and Record Access Control Point 0x2A52.

Pure: bytes in, frozen dataclasses out; no I/O, clock or logging. A payload that cannot be read raises
`BleParseError` naming the characteristic and the field. Layouts are tables (`GLUCOSE_MEASUREMENT_LAYOUT`,
`RACP_*_LAYOUT`) read by `gateway.ble.common.read_layout`: one row per field, in wire order, with the
flag bit that makes it present. Bytes after the last field are ignored.

`BleParseError`, `Bound`, `DateTime` (from `gateway.ble.common`) and `NoValue` (from
`gateway.ble.ieee11073`) are re-exported here for the callers that import them from this module.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, IntFlag
from typing import Final, Literal

from gateway.ble.common import (
    BleParseError,
    Bound,
    DateTime,
    FieldKind,
    FieldSpec,
    Measured,
    decode_enum,
    read_layout,
    shift_decimal,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason

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

_F = FieldKind


# --------------------------------------------------------------------------- Glucose Measurement 0x2A18

_GM: Final = "Glucose Measurement 0x2A18"

FLAG_TIME_OFFSET: Final = 0x01
FLAG_CONCENTRATION: Final = 0x02
FLAG_UNITS_MOL_PER_L: Final = 0x04
FLAG_SENSOR_STATUS: Final = 0x08
FLAG_CONTEXT_FOLLOWS: Final = 0x10

GLUCOSE_MEASUREMENT_LAYOUT: Final[tuple[FieldSpec, ...]] = (
    FieldSpec("flags", _F.U8),
    FieldSpec("sequence_number", _F.U16),
    FieldSpec("base_time", _F.DATE_TIME),
    FieldSpec("time_offset", _F.S16, FLAG_TIME_OFFSET),  # minutes
    FieldSpec("concentration", _F.SFLOAT, FLAG_CONCENTRATION),  # kg/L or mol/L (flag bit 2)
    FieldSpec("type_sample_location", _F.U8, FLAG_CONCENTRATION),  # low nibble type, high nibble location
    FieldSpec("sensor_status", _F.U16, FLAG_SENSOR_STATUS),
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

    def user_facing_time(self) -> _dt.datetime | None:
        """Base Time + Time Offset: the device-local time the user saw, or None when the date is unknown."""
        base = self.base_time.to_datetime()
        if base is None:
            return None
        return base + _dt.timedelta(minutes=self.time_offset_minutes or 0)


def _scale(value: Measured, power: int) -> Measured:
    return value if isinstance(value, NoValue) else shift_decimal(value, power)


def _bounded(value: Measured, status: GlucoseSensorStatus | None) -> Value:
    high = bool(status and status & GlucoseSensorStatus.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS)
    low = bool(status and status & GlucoseSensorStatus.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS)
    if high and low:
        return NoValue(NoValueReason.CONTRADICTORY_RANGE)
    if not (high or low):
        return value
    return Bound(">" if high else "<", None if isinstance(value, NoValue) else value)


def parse_glucose_measurement(payload: bytes) -> GlucoseMeasurement:
    """Decode one Glucose Measurement 0x2A18 notification. Trailing bytes are ignored."""
    f, _end = read_layout(_GM, payload, GLUCOSE_MEASUREMENT_LAYOUT)
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
        sample_type = decode_enum(_GM, "type", GlucoseSampleType, nibbles & 0x0F)
        sample_location = decode_enum(_GM, "sample_location", GlucoseSampleLocation, nibbles >> 4)
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

RACP_HEADER_LAYOUT: Final[tuple[FieldSpec, ...]] = (FieldSpec("op_code", _F.U8), FieldSpec("operator", _F.U8))
RACP_NUMBER_OF_RECORDS_LAYOUT: Final[tuple[FieldSpec, ...]] = (FieldSpec("number_of_records", _F.U16),)
RACP_RESPONSE_CODE_LAYOUT: Final[tuple[FieldSpec, ...]] = (
    FieldSpec("request_op_code", _F.U8),
    FieldSpec("response_code_value", _F.U8),
)


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    count: int


@dataclass(frozen=True, slots=True)
class RacpResponse:
    request_op_code: RacpOpCode | int  # int: an op code this client does not know, echoed back
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
    header, end = read_layout(_RACP, payload, RACP_HEADER_LAYOUT)
    op_code: int = header["op_code"]
    if op_code == RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
        f, _end = read_layout(_RACP, payload, RACP_NUMBER_OF_RECORDS_LAYOUT, offset=end)
        return RacpNumberOfRecords(f["number_of_records"])
    if op_code == RacpOpCode.RESPONSE_CODE:
        f, _end = read_layout(_RACP, payload, RACP_RESPONSE_CODE_LAYOUT, offset=end)
        code = decode_enum(_RACP, "response_code_value", RacpResponseCode, f["response_code_value"])
        request: int = f["request_op_code"]
        if request not in RacpOpCode._value2member_map_ and code is RacpResponseCode.OP_CODE_NOT_SUPPORTED:
            # A meter answers an op code it does not know by echoing it with "op code not
            # supported" (e.g. one a later spec added): kept as the plain number.
            return RacpResponse(request, code)
        return RacpResponse(decode_enum(_RACP, "request_op_code", RacpOpCode, request), code)
    raise BleParseError(_RACP, "op_code", f"{op_code:#04x} is not a response op code")
