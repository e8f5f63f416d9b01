"""Pure parsers for the Bluetooth SIG health measurements: blood pressure, temperature, weight, heart rate.

Every parser takes the characteristic's value (``bytes``), returns a frozen dataclass, and raises
`BleParseError` (a `ValueError`) naming the missing or inconsistent field. No I/O, no clock, no
logging. All multi-byte fields are little-endian. The byte layouts are the tables below
(``*_LAYOUT``): a field is read when its flag bit is set (or clear, for ``when_set=False``);
``flag=0`` means always present. Numbers are exact `Decimal` values with UCUM unit strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.ble.glucose import BleParseError, DateTime  # shared package helpers
from gateway.ble.ieee11073 import NoValue, NoValueReason, decode_float, decode_sfloat

__all__ = [
    "BLOOD_PRESSURE_LAYOUT",
    "HEART_RATE_LAYOUT",
    "TEMPERATURE_LAYOUT",
    "WEIGHT_LAYOUT",
    "BleParseError",
    "BloodPressureMeasurement",
    "BloodPressureStatus",
    "DateTime",
    "FieldKind",
    "FieldSpec",
    "HeartRateMeasurement",
    "PulseRateRange",
    "SensorContact",
    "TemperatureMeasurement",
    "TemperatureType",
    "WeightMeasurement",
    "parse_blood_pressure",
    "parse_heart_rate",
    "parse_temperature",
    "parse_weight",
    "rr_seconds",
]


# ---------------------------------------------------------------------------------------------
# Byte layouts


class FieldKind(enum.Enum):
    """Wire format of one field; its size is in `FIELD_SIZE`."""

    U8 = 1
    U16 = 2
    SFLOAT = 3  # IEEE 11073-20601 16-bit
    FLOAT = 4  # IEEE 11073-20601 32-bit
    DATE_TIME = 5  # Date Time (0x2A08): year u16, month, day, hours, minutes, seconds u8


FIELD_SIZE: Mapping[FieldKind, int] = {
    FieldKind.U8: 1,
    FieldKind.U16: 2,
    FieldKind.SFLOAT: 2,
    FieldKind.FLOAT: 4,
    FieldKind.DATE_TIME: 7,
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a characteristic value, in wire order."""

    name: str
    kind: FieldKind
    flag: int = 0  # flag mask deciding presence; 0 = always present
    when_set: bool = True  # present when the flag bit is set (True) or clear (False)
    repeated: bool = False  # repeated until the end of the value (heart-rate RR intervals)


_F = FieldKind

# Blood Pressure Measurement 0x2A35 (Blood Pressure Service 0x1810).
BLOOD_PRESSURE_LAYOUT: tuple[FieldSpec, ...] = (
    FieldSpec("systolic", _F.SFLOAT),
    FieldSpec("diastolic", _F.SFLOAT),
    FieldSpec("mean_arterial_pressure", _F.SFLOAT),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("pulse_rate", _F.SFLOAT, flag=0x04),
    FieldSpec("user_id", _F.U8, flag=0x08),
    FieldSpec("measurement_status", _F.U16, flag=0x10),
)
# Temperature Measurement 0x2A1C (Health Thermometer Service 0x1809).
TEMPERATURE_LAYOUT: tuple[FieldSpec, ...] = (
    FieldSpec("temperature", _F.FLOAT),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("temperature_type", _F.U8, flag=0x04),
)
# Weight Measurement 0x2A9D (Weight Scale Service 0x181D).
WEIGHT_LAYOUT: tuple[FieldSpec, ...] = (
    FieldSpec("weight", _F.U16),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("user_id", _F.U8, flag=0x04),
    FieldSpec("bmi", _F.U16, flag=0x08),
    FieldSpec("height", _F.U16, flag=0x08),
)
# Heart Rate Measurement 0x2A37 (Heart Rate Service 0x180D).
HEART_RATE_LAYOUT: tuple[FieldSpec, ...] = (
    FieldSpec("heart_rate", _F.U8, flag=0x01, when_set=False),
    FieldSpec("heart_rate", _F.U16, flag=0x01),
    FieldSpec("energy_expended", _F.U16, flag=0x08),
    FieldSpec("rr_intervals", _F.U16, flag=0x10, repeated=True),
)

# Weight Scale resolutions, by the flags' unit bit (0 = SI, 1 = imperial): (exponent, multiplier, UCUM).
# The value is raw × multiplier × 10**exponent, built exactly.
_WEIGHT_SCALE = {False: (-3, 5, "kg"), True: (-2, 1, "[lb_av]")}  # 0.005 kg, 0.01 lb
_HEIGHT_SCALE = {False: (-3, 1, "m"), True: (-1, 1, "[in_i]")}  # 0.001 m, 0.1 in
_BMI_SCALE = (-1, 1, "kg/m2")  # 0.1 kg/m2
_WEIGHT_UNSUCCESSFUL = 0xFFFF


def _scaled(raw: int, scale: tuple[int, int, str]) -> Decimal:
    exponent, multiplier, _unit = scale
    return Decimal(f"{raw * multiplier}E{exponent}")


# ---------------------------------------------------------------------------------------------
# Shared field types


class PulseRateRange(enum.IntEnum):
    """Blood pressure measurement status, bits 3–4."""

    WITHIN_RANGE = 0
    EXCEEDS_UPPER_LIMIT = 1
    BELOW_LOWER_LIMIT = 2
    RESERVED = 3


@dataclass(frozen=True, slots=True)
class BloodPressureStatus:
    """Blood pressure measurement status (u16); bits 6–15 are reserved and kept in ``raw``."""

    body_movement: bool  # bit 0
    cuff_too_loose: bool  # bit 1
    irregular_pulse: bool  # bit 2
    pulse_rate_range: PulseRateRange  # bits 3–4
    improper_position: bool  # bit 5
    raw: int

    @classmethod
    def from_raw(cls, raw: int) -> BloodPressureStatus:
        return cls(
            body_movement=bool(raw & 0x01),
            cuff_too_loose=bool(raw & 0x02),
            irregular_pulse=bool(raw & 0x04),
            pulse_rate_range=PulseRateRange((raw >> 3) & 0x03),
            improper_position=bool(raw & 0x20),
            raw=raw,
        )


class TemperatureType(enum.IntEnum):
    """Temperature Type (0x2A1D) codes; 0 and 10–255 are reserved (kept as a plain int)."""

    ARMPIT = 1
    BODY = 2  # "Body (general)"
    EAR = 3  # "Ear (usually earlobe)"
    FINGER = 4
    GASTROINTESTINAL_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9  # "Tympanum (ear drum)"


class SensorContact(enum.IntEnum):
    """Heart rate flags bits 1–2 (values 0 and 1 both mean "not supported")."""

    NOT_SUPPORTED = 0
    NOT_DETECTED = 2
    DETECTED = 3


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodPressureMeasurement:
    systolic: Decimal | NoValue
    diastolic: Decimal | NoValue
    mean_arterial_pressure: Decimal | NoValue
    unit: str  # "mm[Hg]" or "kPa"
    time_stamp: DateTime | None = None
    pulse_rate: Decimal | NoValue | None = None  # unit "/min"
    user_id: int | None = None  # 0xFF = unknown user
    status: BloodPressureStatus | None = None
    pulse_rate_unit: str = "/min"


@dataclass(frozen=True, slots=True, kw_only=True)
class TemperatureMeasurement:
    temperature: Decimal | NoValue
    unit: str  # "Cel" or "[degF]"
    time_stamp: DateTime | None = None
    temperature_type: TemperatureType | int | None = None  # int only for reserved codes


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightMeasurement:
    weight: Decimal | NoValue  # NoValue(MEASUREMENT_UNSUCCESSFUL) for 0xFFFF
    unit: str  # "kg" or "[lb_av]"
    time_stamp: DateTime | None = None
    user_id: int | None = None  # 0xFF = unknown user
    bmi: Decimal | None = None  # unit "kg/m2"
    height: Decimal | None = None
    height_unit: str | None = None  # "m" or "[in_i]" when height is present
    bmi_unit: str = "kg/m2"


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartRateMeasurement:
    heart_rate: int  # unit "/min"
    sensor_contact: SensorContact
    energy_expended: int | None = None  # kilojoules (UCUM "kJ")
    rr_intervals_1024: tuple[int, ...] = ()  # raw, in 1/1024 s, oldest first
    unit: str = "/min"

    @property
    def rr_intervals(self) -> tuple[Decimal, ...]:
        """RR intervals in seconds ("s"), exact (n/1024 always has a finite decimal expansion)."""
        return tuple(rr_seconds(raw) for raw in self.rr_intervals_1024)


def rr_seconds(raw: int) -> Decimal:
    """Exact seconds for a raw RR interval in 1/1024 s (1/1024 = 0.0009765625)."""
    return Decimal(f"{raw * 9765625}E-10")


# ---------------------------------------------------------------------------------------------
# The walker


def _read_one(kind: FieldKind, data: bytes, at: int) -> Any:
    if kind is FieldKind.U8:
        return data[at]
    if kind is FieldKind.U16:
        return int.from_bytes(data[at : at + 2], "little")
    if kind is FieldKind.SFLOAT:
        return decode_sfloat(int.from_bytes(data[at : at + 2], "little"))
    if kind is FieldKind.FLOAT:
        return decode_float(int.from_bytes(data[at : at + 4], "little"))
    year = int.from_bytes(data[at : at + 2], "little")
    return DateTime(year, data[at + 2], data[at + 3], data[at + 4], data[at + 5], data[at + 6])


def _walk(characteristic: str, layout: tuple[FieldSpec, ...], payload: bytes) -> tuple[int, dict[str, Any]]:
    """Read flags then every present field; complain about truncation or trailing bytes."""
    data = bytes(payload)
    if not data:
        raise BleParseError(characteristic, "flags", "missing (empty value)")
    flags = data[0]
    at = 1
    fields: dict[str, Any] = {}
    for spec in layout:
        if spec.flag and bool(flags & spec.flag) != spec.when_set:
            continue
        size = FIELD_SIZE[spec.kind]
        if spec.repeated:
            rest = len(data) - at
            if rest % size:
                raise BleParseError(characteristic, spec.name, f"{rest} bytes left, not a multiple of {size}")
            fields[spec.name] = tuple(_read_one(spec.kind, data, i) for i in range(at, len(data), size))
            at = len(data)
            continue
        if at + size > len(data):
            have = len(data) - at
            raise BleParseError(
                characteristic, spec.name, f"missing: needs {size} bytes at offset {at}, {have} left"
            )
        fields[spec.name] = _read_one(spec.kind, data, at)
        at += size
    if at != len(data):
        raise BleParseError(characteristic, "end", f"{len(data) - at} unexpected bytes after the last field")
    return flags, fields


# ---------------------------------------------------------------------------------------------
# Parsers


def parse_blood_pressure(payload: bytes) -> BloodPressureMeasurement:
    """Blood Pressure Measurement (0x2A35)."""
    flags, f = _walk("blood pressure measurement", BLOOD_PRESSURE_LAYOUT, payload)
    status = f.get("measurement_status")
    return BloodPressureMeasurement(
        systolic=f["systolic"],
        diastolic=f["diastolic"],
        mean_arterial_pressure=f["mean_arterial_pressure"],
        unit="kPa" if flags & 0x01 else "mm[Hg]",
        time_stamp=f.get("time_stamp"),
        pulse_rate=f.get("pulse_rate"),
        user_id=f.get("user_id"),
        status=None if status is None else BloodPressureStatus.from_raw(status),
    )


def parse_temperature(payload: bytes) -> TemperatureMeasurement:
    """Temperature Measurement (0x2A1C)."""
    flags, f = _walk("temperature measurement", TEMPERATURE_LAYOUT, payload)
    code = f.get("temperature_type")
    kind: TemperatureType | int | None = code
    if code is not None and code in TemperatureType._value2member_map_:
        kind = TemperatureType(code)
    return TemperatureMeasurement(
        temperature=f["temperature"],
        unit="[degF]" if flags & 0x01 else "Cel",
        time_stamp=f.get("time_stamp"),
        temperature_type=kind,
    )


def parse_weight(payload: bytes) -> WeightMeasurement:
    """Weight Measurement (0x2A9D)."""
    flags, f = _walk("weight measurement", WEIGHT_LAYOUT, payload)
    imperial = bool(flags & 0x01)
    weight_scale = _WEIGHT_SCALE[imperial]
    raw_weight = f["weight"]
    weight: Decimal | NoValue = (
        NoValue(NoValueReason.MEASUREMENT_UNSUCCESSFUL)
        if raw_weight == _WEIGHT_UNSUCCESSFUL
        else _scaled(raw_weight, weight_scale)
    )
    has_bmi = "bmi" in f
    return WeightMeasurement(
        weight=weight,
        unit=weight_scale[2],
        time_stamp=f.get("time_stamp"),
        user_id=f.get("user_id"),
        bmi=_scaled(f["bmi"], _BMI_SCALE) if has_bmi else None,
        height=_scaled(f["height"], _HEIGHT_SCALE[imperial]) if has_bmi else None,
        height_unit=_HEIGHT_SCALE[imperial][2] if has_bmi else None,
    )


def parse_heart_rate(payload: bytes) -> HeartRateMeasurement:
    """Heart Rate Measurement (0x2A37)."""
    flags, f = _walk("heart rate measurement", HEART_RATE_LAYOUT, payload)
    contact_bits = (flags >> 1) & 0x03
    return HeartRateMeasurement(
        heart_rate=f["heart_rate"],
        sensor_contact=SensorContact.NOT_SUPPORTED if contact_bits < 2 else SensorContact(contact_bits),
        energy_expended=f.get("energy_expended"),
        rr_intervals_1024=f.get("rr_intervals", ()),
    )
